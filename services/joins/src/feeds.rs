//! Personal calendar feeds: a secret, revocable address per user that a calendar application
//! subscribes to (`GET /api/v1/calendars/{token}/events.ics` on the gateway, which asks this
//! service for the events behind the secret and the events service for their details).
//!
//! The secret is 32 random bytes (base64url, 43 characters) shown once when made; only its
//! SHA-256 is stored, so a database leak gives no feed away. Making a new one replaces the old
//! (the old address stops working at once); revoking deletes it.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cityevents_api::joins::{CalendarFeed, FeedItem, FeedItems, FeedToken, NewCalendarFeed};
use cityevents_common::caller::Caller;
use cityevents_common::time::{from_micros, now, to_micros};
use http::StatusCode;
use keel::Problem;
use keel::data::DataError;
use keel::http::extract::Json as JsonBody;
use sha2::{Digest, Sha256};

use crate::api::Shared;
use crate::error::not_found;
use crate::store::feeds;

/// How far back a feed reaches: events that ended in the last 30 days stay in subscribers'
/// calendars.
const PAST: time::Duration = time::Duration::days(30);

/// Length of a secret (base64url of 32 bytes).
pub(crate) const TOKEN_LEN: usize = 43;

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET /api/v1/me/calendar-feed`.
pub(crate) async fn show(State(st): State<Shared>, caller: Caller) -> Result<Json<CalendarFeed>, Problem> {
    let created = feeds::created_at(&st.0.db, caller.id).await.map_err(DataError::from)?;
    Ok(Json(CalendarFeed { active: created.is_some(), created_at: created.map(from_micros) }))
}

/// `POST /api/v1/me/calendar-feed`: a new secret address, replacing any other.
pub(crate) async fn create(State(st): State<Shared>, caller: Caller) -> Result<Response, Problem> {
    let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let at = now();
    feeds::replace(&st.0.db, caller.id, &hash(&token), to_micros(at)).await.map_err(DataError::from)?;
    let path = format!("/api/v1/calendars/{token}/events.ics");
    Ok((StatusCode::CREATED, Json(NewCalendarFeed { token, path, created_at: at })).into_response())
}

/// `DELETE /api/v1/me/calendar-feed`: the address stops working.
pub(crate) async fn revoke(State(st): State<Shared>, caller: Caller) -> Result<StatusCode, Problem> {
    if feeds::revoke(&st.0.db, caller.id).await.map_err(DataError::from)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found("you have no calendar feed"))
    }
}

/// `POST /api/v1/calendar-feeds/resolve`: the events behind a secret.
pub(crate) async fn items(
    State(st): State<Shared>,
    JsonBody(FeedToken { token }): JsonBody<FeedToken>,
) -> Result<Json<FeedItems>, Problem> {
    // Anything but a secret of ours is unknown, without a query.
    if token.len() != TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(not_found("no such calendar feed"));
    }
    let Some(user) = feeds::owner(&st.0.db, &hash(&token)).await.map_err(DataError::from)? else {
        return Err(not_found("no such calendar feed"));
    };
    let at = now();
    let items = feeds::items(&st.0.db, user, (to_micros(at - PAST), to_micros(at))).await.map_err(DataError::from)?;
    Ok(Json(FeedItems { items: items.into_iter().map(|(event_id, status)| FeedItem { event_id, status }).collect() }))
}
