//! Seats in event lists: `GET /api/v1/events` and `GET /api/v1/me/events` are forwarded to the
//! events service, then each item gets `seats` from one joins call for the whole page
//! (`GET /api/v1/events/counts?ids=…`):
//!
//! ```json
//! "seats": { "capacity": 40, "taken": 38, "free": 2, "waitlisted": 0 }
//! ```
//!
//! `capacity` is the event's own (the events service owns it); `free` is `null` when it is
//! unlimited (`0`). An event the joins service has not heard of (a draft, or one published a
//! moment ago) has no one in it yet. Seats are not critical: when the joins service fails, the
//! page is still answered and every item's `seats` is `{"unavailable": true}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use keel::http::client;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::forward::{Gateway, relay};
use crate::routes::{Route, Upstream};

#[derive(Debug, Deserialize)]
struct Counts {
    event_id: Uuid,
    confirmed: i64,
    waitlisted: i64,
}

#[derive(Debug, Deserialize)]
struct CountsPage {
    items: Vec<Counts>,
}

/// Forwards a list `route` and adds `seats` to each item of a 200 answer.
pub(crate) async fn list(gw: Arc<Gateway>, route: &'static Route, req: Request) -> Response {
    let mut answer = match gw.send(route, req).await {
        Ok(Ok(answer)) if answer.status == StatusCode::OK => answer,
        Ok(other) => return relay(other),
        Err(refused) => return refused,
    };
    let Ok(mut page) = serde_json::from_slice::<Value>(&answer.body) else {
        tracing::warn!(path = route.path, "list answer is not JSON; relayed without seats");
        return relay(Ok(answer));
    };
    let Some(items) = page.get_mut("items").and_then(Value::as_array_mut) else {
        return relay(Ok(answer));
    };
    let ids: Vec<String> =
        items.iter().filter_map(|i| i.get("id").and_then(Value::as_str)).map(str::to_owned).collect();
    let counts = if ids.is_empty() { Some(HashMap::new()) } else { counts(&gw, &ids).await };
    for item in items.iter_mut() {
        let seats = match &counts {
            Some(counts) => seats(item, counts),
            None => json!({ "unavailable": true }),
        };
        if let Some(obj) = item.as_object_mut() {
            obj.insert("seats".to_owned(), seats);
        }
    }
    match serde_json::to_vec(&page) {
        Ok(body) => {
            answer.body = body.into();
            answer.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            relay(Ok(answer))
        }
        Err(e) => {
            tracing::warn!(error = %e, "list with seats did not serialise; relayed without seats");
            relay(Ok(answer))
        }
    }
}

/// Confirmed and waitlisted joins by event id, or `None` when the joins service failed.
async fn counts(gw: &Gateway, ids: &[String]) -> Option<HashMap<Uuid, (i64, i64)>> {
    let joins = gw.client(Upstream::Joins).ok()?;
    let req = gw.timed(
        client::Request::new(Method::GET, format!("/api/v1/events/counts?ids={}", ids.join(",")))
            .header(header::ACCEPT, HeaderValue::from_static("application/json")),
        &Method::GET,
    );
    let result = gw.bounded(joins.send(req)).await;
    let page = match result {
        Ok(r) if r.status == StatusCode::OK => r.json::<CountsPage>(),
        Ok(r) => {
            tracing::warn!(status = r.status.as_u16(), "seat counts failed; marked unavailable");
            return None;
        }
        Err(e) => Err(e),
    };
    match page {
        Ok(page) => Some(page.items.into_iter().map(|c| (c.event_id, (c.confirmed, c.waitlisted))).collect()),
        Err(e) => {
            tracing::warn!(error = %e, "seat counts failed; marked unavailable");
            None
        }
    }
}

/// One item's `seats`.
fn seats(item: &Value, counts: &HashMap<Uuid, (i64, i64)>) -> Value {
    let id = item.get("id").and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok());
    let capacity = item.get("capacity").and_then(Value::as_i64).unwrap_or(0);
    let (taken, waitlisted) = id.and_then(|id| counts.get(&id).copied()).unwrap_or((0, 0));
    let free = if capacity == 0 { Value::Null } else { json!((capacity - taken).max(0)) };
    json!({ "capacity": capacity, "taken": taken, "free": free, "waitlisted": waitlisted })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_follow_the_events_capacity() {
        let id = Uuid::now_v7();
        let counts = HashMap::from([(id, (38, 3))]);
        let item = json!({ "id": id.to_string(), "capacity": 40 });
        assert_eq!(seats(&item, &counts), json!({ "capacity": 40, "taken": 38, "free": 2, "waitlisted": 3 }));
        // A capacity cut below the seats taken: none free, never negative.
        let item = json!({ "id": id.to_string(), "capacity": 30 });
        assert_eq!(seats(&item, &counts)["free"], json!(0));
        let item = json!({ "id": id.to_string(), "capacity": 0 });
        assert_eq!(seats(&item, &counts)["free"], Value::Null, "unlimited");
        let unknown = json!({ "id": Uuid::now_v7().to_string(), "capacity": 10 });
        assert_eq!(seats(&unknown, &counts), json!({ "capacity": 10, "taken": 0, "free": 10, "waitlisted": 0 }));
    }
}
