//! A join of an event published a moment ago.
//!
//! Joins hears of an event from the events service's outbox, so for a short while after
//! `POST /api/v1/events/{id}/publish` has answered (milliseconds on one machine; longer while the
//! bus or joins' consumer lags) the event is listed and shown, but joins does not know it yet and
//! answers 404 `event_not_found`. A person who joins then must not be told the event does not
//! exist. On that answer the gateway asks the events service (anonymously, as anyone would see
//! it) whether the event is published; if it is, it sends the same join again after
//! [`PAUSES`] (the `Idempotency-Key` every join carries makes a repeat safe) until joins knows
//! it, and answers 503 `event_not_ready` with `Retry-After: 1` if it still does not before the
//! pauses run out or the request's deadline (`app.upstream_timeouts.total`) would pass. An event
//! the events service does not show as published (unknown, a draft, gone) keeps joins' 404, and
//! an events service that does not answer changes nothing either.

use std::time::Duration;

use axum::body::Bytes;
use cityevents_api::events::EventStatus;
use cityevents_api::gateway::Problem as Answer;
use http::{HeaderValue, Method, StatusCode, header};
use keel::http::client::{self, Client, ClientError};
use keel::http::context;
use serde::Deserialize;

use crate::forward::Gateway;
use crate::routes::Upstream;

/// The waits before each repeated join: 1.55 s in all, well past the bus's usual lag and
/// within the default `app.upstream_timeouts.total`.
pub(crate) const PAUSES: [Duration; 5] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

/// The event id of `POST /api/v1/events/{id}/join` to joins, if `target` is one.
pub(crate) fn join_of<'a>(upstream: Upstream, method: &Method, target: &'a str) -> Option<&'a str> {
    if upstream != Upstream::Joins || method != Method::POST {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let id = path.strip_prefix("/api/v1/events/")?.strip_suffix("/join")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Whether joins answered that it does not know the event.
fn unknown_event(answer: &client::Response) -> bool {
    answer.status == StatusCode::NOT_FOUND
        && serde_json::from_slice::<Answer>(&answer.body).is_ok_and(|p| p.code.as_deref() == Some("event_not_found"))
}

#[derive(Deserialize)]
struct Shown {
    status: EventStatus,
}

/// Whether the events service shows event `id` as published.
async fn published(gw: &Gateway, id: &str) -> bool {
    let Ok(events) = gw.client(Upstream::Events) else { return false };
    let req = client::Request::new(Method::GET, format!("/api/v1/events/{id}"))
        .header(header::ACCEPT, HeaderValue::from_static("application/json"));
    match events.send(gw.timed(req, &Method::GET)).await {
        Ok(r) if r.status == StatusCode::OK => {
            serde_json::from_slice::<Shown>(&r.body).is_ok_and(|e| e.status == EventStatus::Published)
        }
        _ => false,
    }
}

/// Sends the join `req` to joins (`client`) and, while joins does not know event `id` that the
/// events service shows as published, again after each of [`PAUSES`].
pub(crate) async fn join(
    gw: &Gateway,
    client: &Client,
    req: client::Request,
    id: &str,
) -> Result<client::Response, ClientError> {
    let mut answer = client.send(req.clone()).await?;
    if !unknown_event(&answer) || !published(gw, id).await {
        return Ok(answer);
    }
    let deadline = context::current().and_then(|c| c.deadline);
    for pause in PAUSES {
        // A repeat that could not finish before the deadline would only turn into a 504.
        if deadline.is_some_and(|d| tokio::time::Instant::now() + pause * 2 >= d) {
            break;
        }
        tokio::time::sleep(pause).await;
        answer = client.send(req.clone()).await?;
        if !unknown_event(&answer) {
            tracing::debug!(event = id, "joins caught up with a new event");
            return Ok(answer);
        }
    }
    tracing::warn!(event = id, "joins has not heard of a published event yet");
    Ok(not_ready(answer))
}

/// `answer` turned into the 503 `event_not_ready` problem.
fn not_ready(mut answer: client::Response) -> client::Response {
    let request_id = context::current().and_then(|c| c.request_id).map(|id| id.as_str().to_owned());
    let problem = keel::Problem::new(StatusCode::SERVICE_UNAVAILABLE, "event-not-ready", "Event not ready")
        .code("event_not_ready")
        .detail("the event was published a moment ago and cannot take joins yet; try again in a moment");
    let mut body = serde_json::to_value(&problem).unwrap_or_default();
    if let (Some(fields), Some(id)) = (body.as_object_mut(), request_id) {
        fields.insert("request_id".to_owned(), id.into());
    }
    answer.status = StatusCode::SERVICE_UNAVAILABLE;
    answer.body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    answer.headers.clear();
    answer.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    answer.headers.insert(header::RETRY_AFTER, HeaderValue::from(1_u64));
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_post_of_a_join_is_a_join() {
        let id = "0190a1b2-0000-7000-8000-000000000001";
        let path = format!("/api/v1/events/{id}/join");
        assert_eq!(join_of(Upstream::Joins, &Method::POST, &path), Some(id));
        assert_eq!(join_of(Upstream::Joins, &Method::POST, &format!("{path}?x=1")), Some(id));
        assert_eq!(join_of(Upstream::Joins, &Method::DELETE, &path), None);
        assert_eq!(join_of(Upstream::Events, &Method::POST, &path), None);
        assert_eq!(join_of(Upstream::Joins, &Method::POST, "/api/v1/events//join"), None);
        assert_eq!(join_of(Upstream::Joins, &Method::POST, "/api/v1/events/a/b/join"), None);
        assert_eq!(join_of(Upstream::Joins, &Method::POST, "/api/v1/events/x/participants"), None);
    }
}
