//! `POST /api/v1/reports`: a report about an account reaches the events service only once auth
//! knows the account, by its public profile (`GET /api/v1/profiles/{id}`, 404 for an account
//! that does not exist or is banned). The events service keeps no list of accounts (only of
//! banned organizers, from the bus) and calls no one but joins, so the gateway, which every
//! report passes, asks: an unknown account is 404 `target_not_found`, as an event the caller
//! cannot see is the events service's. Any other report, or a body the events service will
//! refuse anyway, is forwarded as it came.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use keel::http::Problem;
use keel::http::client;
use serde::Deserialize;
use uuid::Uuid;

use crate::edge;
use crate::forward::Gateway;
use crate::routes::{Route, Upstream};

/// The account a report is about: `None` for an event, or a body that is not a report.
fn reported_account(body: &[u8]) -> Option<Uuid> {
    #[derive(Deserialize)]
    struct Target {
        kind: String,
        target_id: Uuid,
    }
    serde_json::from_slice::<Target>(body).ok().filter(|t| t.kind == "user").map(|t| t.target_id)
}

/// 404 `target_not_found`.
fn account_not_found() -> Problem {
    Problem::not_found().code("target_not_found").detail("there is no such account")
}

/// Whether auth has a public profile for `id`: `Ok(false)` when it answers 404, `Err` the
/// problem to answer when it cannot say.
async fn account_exists(gw: &Gateway, id: Uuid) -> Result<bool, Problem> {
    let client = gw.client(Upstream::Auth)?;
    let req = client::Request::new(Method::GET, format!("/api/v1/profiles/{id}"))
        .header(header::ACCEPT, HeaderValue::from_static("application/json"));
    let req = gw.timed(req, &Method::GET);
    let resp = gw.call(Upstream::Auth, client, req).await?;
    match resp.status {
        StatusCode::OK => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        other => {
            tracing::warn!(status = other.as_u16(), "auth could not say whether a reported account exists");
            Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "service-degraded", "Service unavailable")
                .code("SERVICE_DEGRADED")
                .detail("whether the account exists cannot be checked right now; try again shortly"))
        }
    }
}

/// `POST /api/v1/reports`: the edge's checks, then auth is asked about a reported account,
/// then the report is forwarded with the body as it came.
pub(crate) async fn create(gw: Arc<Gateway>, route: &'static Route, req: Request) -> Result<Response, Problem> {
    let (mut parts, body) = req.into_parts();
    // Refused at the edge first: auth is asked for signed-in callers only.
    edge::authorize(&mut parts, route.access).await?;
    let bytes: Bytes = keel::http::extract::body(Request::from_parts(parts.clone(), body), &()).await?;
    if let Some(account) = reported_account(&bytes)
        && !account_exists(&gw, account).await?
    {
        return Err(account_not_found());
    }
    gw.forward(route, Request::from_parts(parts, Body::from(bytes))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_report_about_an_account_names_one() {
        let id = Uuid::now_v7();
        let about = |kind: &str| format!(r#"{{"kind":"{kind}","target_id":"{id}","reason":"spam"}}"#);
        assert_eq!(reported_account(about("user").as_bytes()), Some(id));
        assert_eq!(reported_account(about("event").as_bytes()), None);
        for body in ["", "{}", "[]", r#"{"kind":"user","target_id":"nope"}"#, r#"{"kind":"user"}"#] {
            assert_eq!(reported_account(body.as_bytes()), None, "{body}");
        }
    }
}
