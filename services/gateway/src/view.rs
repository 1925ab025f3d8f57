//! `GET /api/v1/events/{id}/view`: the event, the caller's participation and the seat counts,
//! fetched in parallel. The event is critical (its error is the answer); the other two are not:
//! when their service fails they are `{"unavailable": true}` and the page still renders. A page
//! answered is a view of the event (`crate::views`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};
use keel::http::Problem;
use keel::http::client::{self, ClientError};
use keel::http::extract::Path;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::edge;
use crate::forward::{Gateway, relay};
use crate::routes::{Access, Upstream};

/// What a non-critical part becomes.
fn part(result: Option<Result<client::Response, ClientError>>, what: &str) -> Value {
    match result {
        None => Value::Null,
        Some(Ok(r)) if r.status == StatusCode::OK => r.json::<Value>().unwrap_or_else(|e| {
            tracing::warn!(part = what, error = %e, "unreadable answer; marked unavailable");
            json!({ "unavailable": true })
        }),
        Some(Ok(r)) if r.status == StatusCode::NOT_FOUND => Value::Null,
        Some(Ok(r)) => {
            tracing::warn!(part = what, status = r.status.as_u16(), "part failed; marked unavailable");
            json!({ "unavailable": true })
        }
        Some(Err(e)) => {
            tracing::warn!(part = what, error = %e, "part failed; marked unavailable");
            json!({ "unavailable": true })
        }
    }
}

/// The page of event `id` as JSON (`{event, participation, counts}`), with the caller's
/// `authorization` when signed in (else no participation call is made); `Err` is the events
/// service's answer when it is not the event.
pub(crate) async fn assemble(
    gw: &Gateway,
    id: &uuid::Uuid,
    authorization: Option<HeaderValue>,
) -> Result<Value, Result<client::Response, ClientError>> {
    let events = gw.client(Upstream::Events).map_err(|_| Err(unavailable(Upstream::Events)))?;
    let joins = gw.client(Upstream::Joins).map_err(|_| Err(unavailable(Upstream::Joins)))?;
    let get = |path: String, with_token: bool| {
        let mut r = gw.timed(
            client::Request::new(Method::GET, path)
                .header(header::ACCEPT, HeaderValue::from_static("application/json")),
            &Method::GET,
        );
        if let (true, Some(a)) = (with_token, &authorization) {
            r = r.header(header::AUTHORIZATION, a.clone());
        }
        r
    };
    let event = events.send(get(format!("/api/v1/events/{id}"), true));
    // Only a signed-in caller has a participation; without a token it is `null`, no call made.
    let participation = async {
        match &authorization {
            Some(_) => Some(joins.send(get(format!("/api/v1/events/{id}/join"), true)).await),
            None => None,
        }
    };
    let counts = async { Some(joins.send(get(format!("/api/v1/events/{id}/counts"), false)).await) };
    let (event, participation, counts) = gw.bounded(async { tokio::join!(event, participation, counts) }).await;
    let event = match event {
        Ok(r) if r.status == StatusCode::OK => match r.json::<Value>() {
            Ok(v) => v,
            Err(e) => return Err(Err(e)),
        },
        other => return Err(other),
    };
    Ok(json!({
        "event": event,
        "participation": part(participation, "participation"),
        "counts": part(counts, "counts"),
    }))
}

/// A client the gateway was set up without (never expected: set-up makes one per upstream).
fn unavailable(upstream: Upstream) -> ClientError {
    ClientError::Unreachable { upstream: upstream.name().to_owned(), message: "no client".to_owned() }
}

pub(crate) async fn view(gw: Arc<Gateway>, req: Request) -> Result<Response, Problem> {
    let (mut parts, _) = req.into_parts();
    let claims = edge::authorize(&mut parts, Access::Public).await?;
    // The id goes into upstream paths: only a UUID may (a decoded `/` would change the path).
    let Path(id) = Path::<Uuid>::from_request_parts(&mut parts, &()).await?;
    let user = claims.as_ref().and_then(|c| Uuid::parse_str(&c.sub).ok());
    let authorization = claims.and(parts.headers.get(header::AUTHORIZATION).cloned());
    let signed_in = authorization.is_some();
    let view = match assemble(&gw, &id, authorization).await {
        Ok(view) => view,
        Err(failed) => return Ok(relay(failed)),
    };
    gw.views.note_request(id, (&parts.method, &parts.headers), user, gw.client_ip(&parts));
    let mut resp = Json(view).into_response();
    if signed_in {
        // The caller's own participation is in it.
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    Ok(resp)
}
