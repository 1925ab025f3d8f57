//! The notifier's HTTP API: the caller's notifications, newest first, and marking one read; the
//! caller's mail preferences; following organizers ([`crate::follows`]).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use cityevents_api::notifications::{Marked, Notification, UnreadCount};
use cityevents_api::params::NotificationsParams;
use cityevents_common::catalogue::MAIL_PREFERENCES;
use cityevents_common::validate;
use http::StatusCode;
use keel::data::Db;
use keel::http::Problem;
use keel::http::extract::{Json as JsonBody, Path, Query};
use keel::http::page::{Cursor, Page, Paginated};
use keel::security::jwt::{Auth, Claims};
use uuid::Uuid;

use crate::mail::handler::Contacts;
use crate::store::notifications as store;

/// The routes; the caller adds the JWT extension.
pub(crate) fn router(db: Db, contacts: Contacts) -> Router {
    let preferences = Router::new()
        .route("/api/v1/me/mail-preferences", get(get_preferences).put(put_preferences))
        .with_state(contacts);
    Router::new()
        .route("/api/v1/me/notifications", get(list))
        .route("/api/v1/me/notifications/{id}/read", post(mark_read))
        .route("/api/v1/me/notifications/unread-count", get(unread_count))
        .route("/api/v1/me/notifications/read-all", post(mark_all_read))
        .route(
            "/api/v1/organizers/{id}/follow",
            get(crate::follows::show).put(crate::follows::follow).delete(crate::follows::unfollow),
        )
        .route("/api/v1/me/following", get(crate::follows::following))
        .with_state(db.clone())
        .merge(preferences)
        .route_layer(cityevents_common::private::no_store())
        // Public: how many follow an organizer.
        .merge(Router::new().route("/api/v1/organizers/{id}/followers", get(crate::follows::followers)).with_state(db))
}

/// `{"event_canceled": true, "waitlist_promoted": true, "removed": false}`.
type Preferences = BTreeMap<&'static str, bool>;

async fn get_preferences(State(c): State<Contacts>, Auth(claims): Auth<Claims>) -> Result<Json<Preferences>, Problem> {
    let prefs = c.preferences(&claims.sub).await?;
    Ok(Json(prefs.into_iter().collect()))
}

/// Sets the kinds named in the body (the others stay as they are); answers all of them.
async fn put_preferences(
    State(c): State<Contacts>,
    Auth(claims): Auth<Claims>,
    JsonBody(body): JsonBody<BTreeMap<String, serde_json::Value>>,
) -> Result<Json<Preferences>, Problem> {
    if body.is_empty() {
        return Err(validate::invalid("body", &format!("must name at least one of {}", MAIL_PREFERENCES.join(", "))));
    }
    let mut changes = Vec::with_capacity(body.len());
    for (key, value) in &body {
        let Some(kind) = MAIL_PREFERENCES.iter().find(|k| **k == key.as_str()) else {
            let known = MAIL_PREFERENCES.join(", ");
            let field: String = key.chars().take(64).collect();
            return Err(validate::invalid(&field, &format!("is not a mail preference (known: {known})")));
        };
        let Some(on) = value.as_bool() else {
            return Err(validate::invalid(kind, "must be true or false"));
        };
        changes.push((*kind, on));
    }
    c.set_preferences(&claims.sub, &changes).await?;
    get_preferences(State(c), Auth(claims)).await
}

/// `?limit=&cursor=&unread=`, read as text so a bad value is a 400 naming the field.
fn parse_query(q: NotificationsParams) -> Result<(Page, bool), Problem> {
    // An empty value is the parameter left out, as on every list.
    let unread = match q.unread.as_deref() {
        None | Some("" | "false") => false,
        Some("true") => true,
        Some(_) => return Err(validate::invalid("unread", "must be true or false")),
    };
    Ok((Page::parse(q.limit.as_deref(), q.cursor.as_deref())?, unread))
}

async fn list(
    State(db): State<Db>,
    Auth(claims): Auth<Claims>,
    Query(q): Query<NotificationsParams>,
) -> Result<Json<Paginated<Notification>>, Problem> {
    let (page, unread) = parse_query(q)?;
    let rows = store::list(&db, &claims.sub, &page, unread).await?;
    let page = Paginated::from_rows(rows, page.limit, |(k, item)| Cursor::new(*k, item.id.to_string()));
    Ok(Json(page.map(|(_, item)| item)))
}

/// `{"unread": n}`: the caller's notifications not yet read.
async fn unread_count(State(db): State<Db>, Auth(claims): Auth<Claims>) -> Result<Json<UnreadCount>, Problem> {
    Ok(Json(UnreadCount { unread: store::unread(&db, &claims.sub).await? }))
}

/// Marks every unread notification of the caller read: `{"marked": n}` (0 when none was).
async fn mark_all_read(State(db): State<Db>, Auth(claims): Auth<Claims>) -> Result<Json<Marked>, Problem> {
    Ok(Json(Marked { marked: store::mark_all_read(&db, &claims.sub).await? }))
}

/// 204 when marked or already read; 404 when the caller has no such notification, whoever
/// owns it.
async fn mark_read(
    State(db): State<Db>,
    Auth(claims): Auth<Claims>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, Problem> {
    if store::mark_read(&db, &claims.sub, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found().detail("no such notification"))
    }
}
