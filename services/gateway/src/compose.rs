//! Lists the gateway completes from a second service, one call per page:
//!
//! * **Seats** — each item of `GET /api/v1/events` and `GET /api/v1/me/events` gets `seats`
//!   from joins (`GET /api/v1/events/counts?ids=…`):
//!   `{"capacity": 40, "taken": 38, "free": 2, "waitlisted": 0}`. `capacity` is the event's own
//!   (the events service owns it); `free` is `null` when it is unlimited (`0`). An event joins
//!   has not heard of (a draft, or one published a moment ago) has no one in it yet. When joins
//!   fails, every item's `seats` is `{"unavailable": true}`.
//! * **Names** — each item of `GET /api/v1/events/{id}/participants`, `…/waitlist` and `…/bans`
//!   gets the user's display `name` from auth (`GET /api/v1/users/names?ids=…`, with the
//!   caller's token); `null` for an account auth does not know, or for every item when auth
//!   fails.
//!
//! The list itself is the critical part: its service's answer other than 200 is relayed as it
//! is, and a failing second call never fails the page.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use keel::http::client;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::forward::{Gateway, relay};
use crate::routes::{Route, Upstream};

/// How a list is completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completion {
    /// `seats` from joins, by the item's `id`.
    Seats,
    /// `name` from auth, by the item's `user_id`.
    Names,
}

/// Forwards a list `route` and completes each item of a 200 answer as `how` says.
pub(crate) async fn list(gw: Arc<Gateway>, route: &'static Route, how: Completion, req: Request) -> Response {
    let authorization = req.headers().get(header::AUTHORIZATION).cloned();
    let mut answer = match gw.send(route, req).await {
        Ok(Ok(answer)) if answer.status == StatusCode::OK => answer,
        Ok(other) => return relay(other),
        Err(refused) => return refused,
    };
    let Ok(mut page) = serde_json::from_slice::<Value>(&answer.body) else {
        tracing::warn!(path = route.path, "list answer is not JSON; relayed as it is");
        return relay(Ok(answer));
    };
    let Some(items) = page.get_mut("items").and_then(Value::as_array_mut) else {
        return relay(Ok(answer));
    };
    match how {
        Completion::Seats => seats(&gw, items).await,
        Completion::Names => names(&gw, authorization, items).await,
    }
    match serde_json::to_vec(&page) {
        Ok(body) => {
            answer.body = body.into();
            answer.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            relay(Ok(answer))
        }
        Err(e) => {
            tracing::warn!(error = %e, "completed list did not serialise; relayed as it was");
            relay(Ok(answer))
        }
    }
}

/// The distinct values of `field` in `items`, in order.
fn ids(items: &[Value], field: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for id in items.iter().filter_map(|i| i.get(field).and_then(Value::as_str)) {
        if !ids.iter().any(|seen| seen == id) {
            ids.push(id.to_owned());
        }
    }
    ids
}

/// One `GET` of `path` on `upstream` (with `authorization` when given), its body as `T`, or
/// `None` (logged) when it failed in any way.
async fn fetch<T: DeserializeOwned>(
    gw: &Gateway,
    upstream: Upstream,
    path: String,
    authorization: Option<HeaderValue>,
) -> Option<T> {
    let client = gw.client(upstream).ok()?;
    let mut req =
        client::Request::new(Method::GET, path).header(header::ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(a) = authorization {
        req = req.header(header::AUTHORIZATION, a);
    }
    let req = gw.timed(req, &Method::GET);
    match gw.bounded(client.send(req)).await {
        Ok(r) if r.status == StatusCode::OK => match r.json::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(upstream = upstream.name(), error = %e, "unreadable answer; list left incomplete");
                None
            }
        },
        Ok(r) => {
            tracing::warn!(upstream = upstream.name(), status = r.status.as_u16(), "call failed; list left incomplete");
            None
        }
        Err(e) => {
            tracing::warn!(upstream = upstream.name(), error = %e, "call failed; list left incomplete");
            None
        }
    }
}

#[derive(Debug, Deserialize)]
struct Counts {
    event_id: Uuid,
    confirmed: i64,
    waitlisted: i64,
}

#[derive(Debug, Deserialize)]
struct Items<T> {
    items: Vec<T>,
}

/// Completes each of `items` with its `seats` (one joins call).
pub(crate) async fn seats(gw: &Gateway, items: &mut [Value]) {
    let ids = ids(items, "id");
    let counts: Option<HashMap<Uuid, (i64, i64)>> = if ids.is_empty() {
        Some(HashMap::new())
    } else {
        let path = format!("/api/v1/events/counts?ids={}", ids.join(","));
        fetch::<Items<Counts>>(gw, Upstream::Joins, path, None)
            .await
            .map(|page| page.items.into_iter().map(|c| (c.event_id, (c.confirmed, c.waitlisted))).collect())
    };
    for item in items.iter_mut() {
        let seats = match &counts {
            Some(counts) => seats_of(item, counts),
            None => json!({ "unavailable": true }),
        };
        if let Some(obj) = item.as_object_mut() {
            obj.insert("seats".to_owned(), seats);
        }
    }
}

/// One item's `seats`.
fn seats_of(item: &Value, counts: &HashMap<Uuid, (i64, i64)>) -> Value {
    let id = item.get("id").and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok());
    let capacity = item.get("capacity").and_then(Value::as_i64).unwrap_or(0);
    let (taken, waitlisted) = id.and_then(|id| counts.get(&id).copied()).unwrap_or((0, 0));
    let free = if capacity == 0 { Value::Null } else { json!((capacity - taken).max(0)) };
    json!({ "capacity": capacity, "taken": taken, "free": free, "waitlisted": waitlisted })
}

#[derive(Debug, Deserialize)]
struct Name {
    id: String,
    name: String,
}

/// Completes each of `items` with its user's display `name` (one auth call).
pub(crate) async fn names(gw: &Gateway, authorization: Option<HeaderValue>, items: &mut [Value]) {
    let ids = ids(items, "user_id");
    let names: HashMap<String, String> = if ids.is_empty() {
        HashMap::new()
    } else {
        let path = format!("/api/v1/users/names?ids={}", ids.join(","));
        fetch::<Items<Name>>(gw, Upstream::Auth, path, authorization)
            .await
            .map(|page| page.items.into_iter().map(|n| (n.id, n.name)).collect())
            .unwrap_or_default()
    };
    for item in items.iter_mut() {
        let name = item.get("user_id").and_then(Value::as_str).and_then(|id| names.get(id)).cloned();
        if let Some(obj) = item.as_object_mut() {
            obj.insert("name".to_owned(), name.map_or(Value::Null, Value::String));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_follow_the_events_capacity() {
        let id = Uuid::now_v7();
        let counts = HashMap::from([(id, (38, 3))]);
        let item = json!({ "id": id.to_string(), "capacity": 40 });
        assert_eq!(seats_of(&item, &counts), json!({ "capacity": 40, "taken": 38, "free": 2, "waitlisted": 3 }));
        // A capacity cut below the seats taken: none free, never negative.
        let item = json!({ "id": id.to_string(), "capacity": 30 });
        assert_eq!(seats_of(&item, &counts)["free"], json!(0));
        let item = json!({ "id": id.to_string(), "capacity": 0 });
        assert_eq!(seats_of(&item, &counts)["free"], Value::Null, "unlimited");
        let unknown = json!({ "id": Uuid::now_v7().to_string(), "capacity": 10 });
        assert_eq!(seats_of(&unknown, &counts), json!({ "capacity": 10, "taken": 0, "free": 10, "waitlisted": 0 }));
    }

    #[test]
    fn ids_are_distinct_and_in_order() {
        let items = [json!({"user_id": "b"}), json!({"user_id": "a"}), json!({"user_id": "b"}), json!({"x": 1})];
        assert_eq!(ids(&items, "user_id"), ["b", "a"]);
    }
}
