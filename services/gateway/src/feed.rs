//! The for-you feed (`GET /api/v1/me/feed`, and the site's `/feed/for-you`): events a signed-in
//! person may like, composed from the services that know them. In parallel: the organizers they
//! follow (notifier, first 100), the events they joined (joins, latest 100) and their home city
//! (auth, their profile); then the joined events' categories (events, one batch), and the
//! events service's suggestions from all of that (`POST /api/v1/events/suggestions`: followed
//! organizers first, then the home city, then those categories; events they joined left out),
//! each item completed with `seats` like every event list.
//!
//! Only the suggestions are critical: a service that cannot say what someone follows, joined or
//! where they live leaves that part out, and the feed is made of the rest.

use std::sync::Arc;

use axum::Json;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use cityevents_api::events::{BatchResponse, SuggestionRequest};
use cityevents_api::joins::JoinPage;
use cityevents_api::notifications::FollowPage;
use http::{HeaderValue, Method, StatusCode, header};
use keel::http::Problem;
use keel::http::client::{self, ClientError};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crate::edge;
use crate::forward::{Gateway, relay};
use crate::routes::{Access, Upstream};

/// Follows and joins read (one page each).
const READ: u32 = 100;

/// `?limit=` of the feed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedParams {
    limit: Option<String>,
}

/// `GET` of `path` on `upstream` with `authorization`, read as `T`; `None` when it fails.
async fn read<T: DeserializeOwned>(
    gw: &Gateway,
    upstream: Upstream,
    path: String,
    authorization: &HeaderValue,
) -> Option<T> {
    let client = gw.client(upstream).ok()?;
    let req = gw.timed(
        client::Request::new(Method::GET, path)
            .header(header::ACCEPT, HeaderValue::from_static("application/json"))
            .header(header::AUTHORIZATION, authorization.clone()),
        &Method::GET,
    );
    match gw.bounded(client.send(req)).await {
        Ok(r) if r.status == StatusCode::OK => r
            .json()
            .map_err(|e| tracing::warn!(upstream = upstream.name(), error = %e, "unreadable; left out of the feed"))
            .ok(),
        Ok(r) => {
            tracing::warn!(upstream = upstream.name(), status = r.status.as_u16(), "left out of the for-you feed");
            None
        }
        Err(e) => {
            tracing::warn!(upstream = upstream.name(), error = %e, "left out of the for-you feed");
            None
        }
    }
}

/// The categories of `ids` (one batch of the events service); empty when it fails.
async fn categories(gw: &Gateway, ids: &[Uuid]) -> Vec<String> {
    if ids.is_empty() {
        return Vec::new();
    }
    let Ok(events) = gw.client(Upstream::Events) else { return Vec::new() };
    let Ok(req) = client::Request::new(Method::POST, "/api/v1/events/batch").json(&serde_json::json!({ "ids": ids }))
    else {
        return Vec::new();
    };
    match gw.bounded(events.send(gw.timed(req, &Method::POST))).await {
        Ok(r) if r.status == StatusCode::OK => r
            .json::<BatchResponse>()
            .map(|b| b.events.into_values().map(|e| e.category).collect::<std::collections::BTreeSet<_>>())
            .map(|set| set.into_iter().collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The for-you events of `user` (bearer `authorization`) as `{items: [event + seats]}`, at most
/// `limit`; `Err` is the events service's answer when the suggestions fail.
pub(crate) async fn for_you(
    gw: &Gateway,
    user: Uuid,
    authorization: &HeaderValue,
    limit: u32,
) -> Result<Value, Result<client::Response, ClientError>> {
    let (follows, joins, profile) = tokio::join!(
        read::<FollowPage>(gw, Upstream::Notifier, format!("/api/v1/me/following?limit={READ}"), authorization),
        read::<JoinPage>(gw, Upstream::Joins, format!("/api/v1/me/joins?limit={READ}"), authorization),
        read::<cityevents_api::auth::Profile>(gw, Upstream::Auth, format!("/api/v1/profiles/{user}"), authorization),
    );
    let joined: Vec<Uuid> = joins.map(|j| j.items.into_iter().map(|i| i.event_id).collect()).unwrap_or_default();
    let ask = SuggestionRequest {
        organizers: follows.map(|f| f.items.into_iter().map(|f| f.organizer_id).collect()).unwrap_or_default(),
        categories: categories(gw, &joined).await,
        city: profile.map(|p| p.city).filter(|c| !c.trim().is_empty()),
        exclude: joined,
        limit: Some(limit),
    };
    let events = gw.client(Upstream::Events).map_err(|_| Err(no_client()))?;
    let req = client::Request::new(Method::POST, "/api/v1/events/suggestions")
        .header(header::ACCEPT, HeaderValue::from_static("application/json"))
        .json(&ask)
        .map_err(|e| Err(ClientError::Unreachable { upstream: "events".into(), message: e.to_string() }))?;
    let mut answer = match gw.bounded(events.send(gw.timed(req, &Method::POST))).await {
        Ok(r) if r.status == StatusCode::OK => r.json::<Value>().map_err(Err)?,
        other => return Err(other),
    };
    if let Some(items) = answer.get_mut("items").and_then(Value::as_array_mut) {
        crate::compose::seats(gw, items).await;
    }
    Ok(answer)
}

fn no_client() -> ClientError {
    ClientError::Unreachable { upstream: Upstream::Events.name().to_owned(), message: "no client".to_owned() }
}

/// `GET /api/v1/me/feed?limit=`: the caller's for-you feed (1–50 events, default 20).
pub(crate) async fn route(gw: Arc<Gateway>, req: Request) -> Result<Response, Problem> {
    let (mut parts, _) = req.into_parts();
    let unauthorized = || Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized");
    let claims = edge::authorize(&mut parts, Access::User).await?.ok_or_else(unauthorized)?;
    let user = Uuid::parse_str(&claims.sub).map_err(|_| unauthorized())?;
    let params: FeedParams = keel::http::extract::query::parse(parts.uri.query().unwrap_or_default())?;
    let limit = cityevents_common::validate::feed_limit(params.limit.as_deref())?;
    let Some(authorization) = parts.headers.get(header::AUTHORIZATION).cloned() else {
        return Err(unauthorized());
    };
    match for_you(&gw, user, &authorization, limit).await {
        Ok(feed) => {
            let mut resp = Json(feed).into_response();
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
            Ok(resp)
        }
        Err(failed) => Ok(relay(failed)),
    }
}
