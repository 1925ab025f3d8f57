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
//!
//! The page's text is kept as the service wrote it and each item's field is spliced in before
//! the item's closing brace: only the keys the completion needs are read, no tree of the page
//! is built (that tree was a tenth of the gateway's CPU on a browse). A page of another shape,
//! or an item that already has the field, is completed as a parsed tree instead.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use keel::http::{Problem, client};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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
pub(crate) async fn list(
    gw: Arc<Gateway>,
    route: &'static Route,
    how: Completion,
    req: Request,
) -> Result<Response, Problem> {
    let authorization = req.headers().get(header::AUTHORIZATION).cloned();
    let mut answer = match gw.send(route, req).await {
        Ok(Ok(answer)) if answer.status == StatusCode::OK => answer,
        Ok(other) => return Ok(relay(other)),
        Err(refused) => return Err(refused),
    };
    // The page's text with each item's field spliced in: no tree of the page is built.
    if let Some(body) = splice_list(&gw, &answer.body, how, authorization.clone()).await {
        answer.body = body.into();
        answer.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(relay(Ok(answer)));
    }
    let Ok(mut page) = serde_json::from_slice::<Value>(&answer.body) else {
        tracing::warn!(path = route.path, "list answer is not JSON; relayed as it is");
        return Ok(relay(Ok(answer)));
    };
    let Some(items) = page.get_mut("items").and_then(Value::as_array_mut) else {
        return Ok(relay(Ok(answer)));
    };
    match how {
        Completion::Seats => seats(&gw, items).await,
        Completion::Names => names(&gw, authorization, items).await,
    }
    match serde_json::to_vec(&page) {
        Ok(body) => {
            answer.body = body.into();
            answer.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(relay(Ok(answer)))
        }
        Err(e) => {
            tracing::warn!(error = %e, "completed list did not serialise; relayed as it was");
            Ok(relay(Ok(answer)))
        }
    }
}

/// The top level of a list page: only `items` is read, each item kept as its text.
#[derive(Deserialize)]
struct RawPage<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

/// What completing an item with `seats` reads of it.
#[derive(Deserialize)]
struct SeatKeys<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    capacity: Option<Value>,
    seats: Option<IgnoredAny>,
}

/// What completing an item with `name` reads of it.
#[derive(Deserialize)]
struct NameKeys<'a> {
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
    name: Option<IgnoredAny>,
}

/// Each item of `page` (the text of `{"items": [{…}, …], …}`) with its byte range in `page`,
/// or `None` when the page has another shape: then the caller completes a parsed tree.
fn raw_items(page: &str) -> Option<Vec<(std::ops::Range<usize>, &str)>> {
    let parsed: RawPage<'_> = serde_json::from_str(page).ok()?;
    let base = page.as_ptr() as usize;
    parsed
        .items
        .into_iter()
        .map(|item| {
            let text = item.get();
            // A borrowed raw value is a slice of `page`: its place is where its bytes are.
            let start = (text.as_ptr() as usize).checked_sub(base)?;
            let end = start.checked_add(text.len()).filter(|&end| end <= page.len())?;
            (text.starts_with('{') && text.ends_with('}')).then_some((start..end, text))
        })
        .collect()
}

/// `page` with `"field": value` added as the last member of each item (`additions[i]` for the
/// i-th, already JSON), the rest of the text byte for byte as it was.
fn splice(page: &str, items: &[(std::ops::Range<usize>, &str)], field: &str, additions: &[String]) -> Vec<u8> {
    let added: usize = additions.iter().map(|a| a.len() + field.len() + 4).sum();
    let mut out = Vec::with_capacity(page.len() + added);
    let mut from = 0;
    for ((range, text), addition) in items.iter().zip(additions) {
        let close = range.end - 1;
        out.extend_from_slice(&page.as_bytes()[from..close]);
        let empty = text[1..text.len() - 1].trim().is_empty();
        if !empty {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(addition.as_bytes());
        from = close;
    }
    out.extend_from_slice(&page.as_bytes()[from..]);
    out
}

/// Each item's keys as `K`, or `None` when one does not read as `K` or `has_field` says it
/// already has the field being added.
fn keys_of<'a, K: Deserialize<'a>>(
    items: &[(std::ops::Range<usize>, &'a str)],
    has_field: impl Fn(&K) -> bool,
) -> Option<Vec<K>> {
    items.iter().map(|(_, text)| serde_json::from_str::<K>(text).ok().filter(|k| !has_field(k))).collect()
}

/// Completes the list page `body` as `how` says by splicing into its text, or `None` when
/// the page is not plain enough for that (not UTF-8, not `{"items": [objects]}`, an item
/// that already has the field or whose keys are not as expected).
async fn splice_list(
    gw: &Gateway,
    body: &[u8],
    how: Completion,
    authorization: Option<HeaderValue>,
) -> Option<Vec<u8>> {
    let page = std::str::from_utf8(body).ok()?;
    let items = raw_items(page)?;
    match how {
        Completion::Seats => {
            let keys: Vec<SeatKeys<'_>> = keys_of(&items, |k: &SeatKeys<'_>| k.seats.is_some())?;
            let ids = distinct(keys.iter().filter_map(|k| k.id.as_deref()));
            let counts = counts(gw, &ids).await;
            let additions = keys
                .iter()
                .map(|k| {
                    let capacity = k.capacity.as_ref().and_then(Value::as_i64);
                    seats_json(k.id.as_deref(), capacity, counts.as_ref())
                })
                .collect::<Option<Vec<_>>>()?;
            Some(splice(page, &items, "seats", &additions))
        }
        Completion::Names => {
            let keys: Vec<NameKeys<'_>> = keys_of(&items, |k: &NameKeys<'_>| k.name.is_some())?;
            let ids = distinct(keys.iter().filter_map(|k| k.user_id.as_deref()));
            let names = user_names(gw, authorization, &ids).await;
            let additions = keys
                .iter()
                .map(|k| {
                    let name = k.user_id.as_deref().and_then(|id| names.get(id));
                    serde_json::to_string(&name).ok()
                })
                .collect::<Option<Vec<_>>>()?;
            Some(splice(page, &items, "name", &additions))
        }
    }
}

/// The distinct values of `field` in `items`, in order.
fn ids(items: &[Value], field: &str) -> Vec<String> {
    distinct(items.iter().filter_map(|i| i.get(field).and_then(Value::as_str)))
}

/// `ids` without repeats, in order.
fn distinct<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for id in ids {
        if !seen.iter().any(|s| s == id) {
            seen.push(id.to_owned());
        }
    }
    seen
}

/// One `GET` of `path` on `upstream` (with `authorization` when given), its body as `T`, or
/// `None` (logged) when it failed in any way.
pub(crate) async fn fetch<T: DeserializeOwned>(
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

/// One item's `seats`. An event joins has not heard of has no one in it yet.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct Seats {
    capacity: i64,
    taken: i64,
    /// `None` (`null`) when the capacity is unlimited (`0`).
    free: Option<i64>,
    waitlisted: i64,
}

/// Seats taken and waitlisted per event, from joins (one call), or `None` when it failed.
async fn counts(gw: &Gateway, ids: &[String]) -> Option<HashMap<Uuid, (i64, i64)>> {
    if ids.is_empty() {
        return Some(HashMap::new());
    }
    let path = format!("/api/v1/events/counts?ids={}", ids.join(","));
    fetch::<Items<Counts>>(gw, Upstream::Joins, path, None)
        .await
        .map(|page| page.items.into_iter().map(|c| (c.event_id, (c.confirmed, c.waitlisted))).collect())
}

/// The seats of the event `id` with `capacity` (absent: `0`).
fn seats_of(id: Option<&str>, capacity: Option<i64>, counts: &HashMap<Uuid, (i64, i64)>) -> Seats {
    let capacity = capacity.unwrap_or(0);
    let id = id.and_then(|s| Uuid::parse_str(s).ok());
    let (taken, waitlisted) = id.and_then(|id| counts.get(&id).copied()).unwrap_or((0, 0));
    let free = (capacity != 0).then_some((capacity - taken).max(0));
    Seats { capacity, taken, free, waitlisted }
}

/// An item's `seats` as JSON text: its counts, or `{"unavailable":true}` when joins failed.
fn seats_json(id: Option<&str>, capacity: Option<i64>, counts: Option<&HashMap<Uuid, (i64, i64)>>) -> Option<String> {
    match counts {
        Some(counts) => serde_json::to_string(&seats_of(id, capacity, counts)).ok(),
        None => Some(UNAVAILABLE.to_owned()),
    }
}

const UNAVAILABLE: &str = r#"{"unavailable":true}"#;

/// Completes each of `items` with its `seats` (one joins call).
pub(crate) async fn seats(gw: &Gateway, items: &mut [Value]) {
    let counts = counts(gw, &ids(items, "id")).await;
    for item in items.iter_mut() {
        let seats = match &counts {
            Some(counts) => {
                let id = item.get("id").and_then(Value::as_str);
                let capacity = item.get("capacity").and_then(Value::as_i64);
                serde_json::to_value(seats_of(id, capacity, counts)).unwrap_or(Value::Null)
            }
            None => json!({ "unavailable": true }),
        };
        if let Some(obj) = item.as_object_mut() {
            obj.insert("seats".to_owned(), seats);
        }
    }
}

#[derive(Debug, Deserialize)]
struct Name {
    id: String,
    name: String,
}

/// Display names by user id, from auth (one call with the caller's token); empty when it
/// failed.
async fn user_names(gw: &Gateway, authorization: Option<HeaderValue>, ids: &[String]) -> HashMap<String, String> {
    if ids.is_empty() {
        return HashMap::new();
    }
    let path = format!("/api/v1/users/names?ids={}", ids.join(","));
    fetch::<Items<Name>>(gw, Upstream::Auth, path, authorization)
        .await
        .map(|page| page.items.into_iter().map(|n| (n.id, n.name)).collect())
        .unwrap_or_default()
}

/// Completes each of `items` with its user's display `name` (one auth call).
pub(crate) async fn names(gw: &Gateway, authorization: Option<HeaderValue>, items: &mut [Value]) {
    let names = user_names(gw, authorization, &ids(items, "user_id")).await;
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
        let id = id.to_string();
        let seats = |id: &str, capacity| serde_json::to_value(seats_of(Some(id), Some(capacity), &counts)).unwrap();
        assert_eq!(seats(&id, 40), json!({ "capacity": 40, "taken": 38, "free": 2, "waitlisted": 3 }));
        // A capacity cut below the seats taken: none free, never negative.
        assert_eq!(seats(&id, 30)["free"], json!(0));
        assert_eq!(seats(&id, 0)["free"], Value::Null, "unlimited");
        let unknown = Uuid::now_v7().to_string();
        assert_eq!(seats(&unknown, 10), json!({ "capacity": 10, "taken": 0, "free": 10, "waitlisted": 0 }));
        assert_eq!(seats_of(None, None, &counts), Seats { capacity: 0, taken: 0, free: None, waitlisted: 0 });
    }

    #[test]
    fn ids_are_distinct_and_in_order() {
        let items = [json!({"user_id": "b"}), json!({"user_id": "a"}), json!({"user_id": "b"}), json!({"x": 1})];
        assert_eq!(ids(&items, "user_id"), ["b", "a"]);
    }

    /// The spliced page against the same page completed as a tree.
    fn spliced_as_tree(page: &str, field: &str, value: &Value) {
        let items = raw_items(page).expect("a plain page");
        let additions: Vec<String> = items.iter().map(|_| value.to_string()).collect();
        let spliced = splice(page, &items, field, &additions);
        let spliced: Value = serde_json::from_slice(&spliced).expect("the spliced page is JSON");
        let mut tree: Value = serde_json::from_str(page).unwrap();
        for item in tree["items"].as_array_mut().unwrap() {
            item.as_object_mut().unwrap().insert(field.to_owned(), value.clone());
        }
        assert_eq!(spliced, tree, "{page}");
    }

    #[test]
    fn splicing_gives_what_the_tree_gives() {
        let seats = json!({ "capacity": 4, "taken": 1, "free": 3, "waitlisted": 0 });
        for page in [
            r#"{"items":[],"next":null}"#,
            r#"{"items":[{"id":"a","capacity":4}],"next":"x"}"#,
            r#"{"next":"x","items":[{"id":"a"},{"id":"b","tags":["}","{"],"o":{"k":{}}}]}"#,
            "{ \"items\" : [ {} , { \"id\" : \"a\" } ] , \"n\" : [ { } ] }",
            r#"{"items":[{"title":"caf\u00e9 \"}\"","id":"\u0061"}],"total":2}"#,
            "{\"items\":[{\"t\":\"ünïcödé ✓\"}]}",
        ] {
            spliced_as_tree(page, "seats", &seats);
            spliced_as_tree(page, "name", &json!("Zoë \"Z\""));
            spliced_as_tree(page, "name", &Value::Null);
        }
    }

    #[test]
    fn pages_of_another_shape_are_left_to_the_tree() {
        for page in ["[]", r#"{"items":{}}"#, r#"{"items":[1]}"#, r#"{"items":[[]]}"#, r#"{"next":1}"#, "{", ""] {
            assert!(raw_items(page).is_none(), "{page}");
        }
        // Keys the splice cannot read as expected: the tree path decides.
        let keys = |text| serde_json::from_str::<SeatKeys<'_>>(text).ok().filter(|k| k.seats.is_none());
        assert!(keys(r#"{"id":1}"#).is_none());
        assert!(keys(r#"{"id":"a","seats":{}}"#).is_none());
        let read = keys(r#"{"id":"a\u0062","capacity":7.5,"x":[{"id":2}]}"#).expect("readable");
        assert_eq!(read.id.as_deref(), Some("ab"));
        assert_eq!(read.capacity.as_ref().and_then(Value::as_i64), None, "as the tree reads it: no integer");
    }
}
