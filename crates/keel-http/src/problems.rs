//! Makes every error response a problem document with the request id.
//!
//! Sits just above the routes. A [`Problem`] returned by a handler gets the request id filled
//! in. A bare error from the framework — axum's plain-text extractor rejections (bad JSON → 400,
//! wrong content type → 415, a JSON body of the wrong shape → 422 naming the field, bad path or
//! query parameters → 400, body over the limit → 413), an unmatched route (404) or method (405) —
//! is rewritten as a problem whose `detail` is the framework's message. The text of a bare 5xx
//! is logged, not sent, because it may describe internals.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::response::Response;
use http::{Request, StatusCode, header};
use http_body::Body as _;
use pin_project_lite::pin_project;

use crate::middleware::{InnerFuture, Middleware};

use super::problem::Problem;
use super::request_id::RequestId;

/// Largest bare error body that is turned into `detail`; bigger ones are left alone.
const MAX_TEXT: u64 = 8 * 1024;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemsLayer {
    body_limit: Option<usize>,
}

impl ProblemsLayer {
    /// The layer, saying no limit in its 413 problems.
    pub fn new() -> Self {
        Self::default()
    }

    /// The request body limit in force (`http.body_limit`): put in each request's extensions
    /// as [`BodyLimit`] (for extractors that refuse a body themselves) and named in the 413
    /// problem of a body over it.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = Some(bytes);
        self
    }
}

/// The request body limit in force for a request (a request extension): the stack's
/// `http.body_limit`. [`body_too_large`] says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit(pub usize);

/// The 413 problem of every Keel service for a body over `limit`: `code` `body_too_large`,
/// field `body`, and the limit in `detail` when known.
pub fn body_too_large(limit: Option<BodyLimit>) -> Problem {
    let detail = match limit {
        Some(BodyLimit(n)) if n >= 1024 && n % 1024 == 0 => {
            format!("the request body is larger than this endpoint accepts: at most {} KiB ({n} bytes)", n / 1024)
        }
        Some(BodyLimit(n)) => format!("the request body is larger than this endpoint accepts: at most {n} bytes"),
        None => "the request body is larger than this endpoint accepts".to_owned(),
    };
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Request body too large")
        .code("body_too_large")
        .detail(detail)
        .field("body", "is too large")
}

crate::layer_with_config!(ProblemsLayer => Problems);

/// Whether an answer with `status` goes through [`normalize`].
fn is_error(status: StatusCode) -> bool {
    status.as_u16() >= 400
}

pub(crate) type BoxFut = Pin<Box<dyn Future<Output = Response> + Send>>;

impl<ReqB, F> Middleware<ReqB, F> for ProblemsLayer {
    type Future = ResponseFuture<F>;

    fn call(&self, mut req: Request<ReqB>, inner: impl FnOnce(Request<ReqB>) -> F) -> Self::Future {
        let id = RequestId::from_extensions(req.extensions());
        let route = req.extensions().get::<MatchedPath>().cloned();
        if let Some(n) = self.body_limit
            && req.extensions().get::<BodyLimit>().is_none()
        {
            req.extensions_mut().insert(BodyLimit(n));
        }
        let limit = req.extensions().get::<BodyLimit>().copied();
        ResponseFuture { inner: inner(req), id, route, limit, rewriting: None }
    }
}

pin_project! {
    /// Response future of [`Problems`]: success responses pass straight through; only an error
    /// response that needs rewriting allocates.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<RequestId>,
        route: Option<MatchedPath>,
        limit: Option<BodyLimit>,
        rewriting: Option<BoxFut>,
    }
}

impl<F: InnerFuture<Body = Body>> Future for ResponseFuture<F> {
    type Output = Result<Response, F::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(fut) = this.rewriting.as_mut() {
            return fut.as_mut().poll(cx).map(Ok);
        }
        let resp = std::task::ready!(this.inner.poll(cx))?;
        if !is_error(resp.status()) {
            return Poll::Ready(Ok(resp));
        }
        let mut fut: BoxFut = Box::pin(normalize(resp, this.id.take(), this.route.take(), *this.limit));
        match fut.as_mut().poll(cx) {
            Poll::Ready(resp) => Poll::Ready(Ok(resp)),
            Poll::Pending => {
                *this.rewriting = Some(fut);
                Poll::Pending
            }
        }
    }
}

/// The answer with its error made a problem document, if it needs it (`resp` is an error).
async fn normalize(
    resp: Response,
    id: Option<RequestId>,
    route: Option<MatchedPath>,
    limit: Option<BodyLimit>,
) -> Response {
    let id = id.as_ref().map(RequestId::as_str);
    if let Some(p) = Problem::of_response(&resp) {
        if p.request_id().is_some() || id.is_none() {
            return resp;
        }
        let p = p.clone();
        let (parts, _) = resp.into_parts();
        let mut fresh = p.into_response_with_id(id);
        for (k, v) in &parts.headers {
            if !fresh.headers().contains_key(k) {
                fresh.headers_mut().insert(k.clone(), v.clone());
            }
        }
        return fresh;
    }
    let status = resp.status();
    if !is_error(status) {
        return resp;
    }
    let ct = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let bare = ct.is_empty() || ct.starts_with("text/plain");
    if !bare || resp.body().size_hint().upper().is_none_or(|n| n > MAX_TEXT) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, MAX_TEXT as usize).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let mut problem = if status == StatusCode::PAYLOAD_TOO_LARGE {
        body_too_large(limit)
    } else {
        from_status(status, &text, route.as_ref().map(MatchedPath::as_str))
    };
    if status.is_server_error() && !text.is_empty() {
        tracing::error!(status = status.as_u16(), error = %text, "handler returned a bare server error");
        problem.set_detail(None);
    }
    let mut fresh = problem.into_response_with_id(id);
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH && !fresh.headers().contains_key(k) {
            fresh.headers_mut().insert(k.clone(), v.clone());
        }
    }
    fresh
}

/// A problem for a bare framework error of `status` whose body said `text`.
fn from_status(status: StatusCode, text: &str, route: Option<&str>) -> Problem {
    let (slug, title) = match status {
        StatusCode::BAD_REQUEST => ("bad-request", "Bad request"),
        StatusCode::UNAUTHORIZED => ("unauthorized", "Unauthorized"),
        StatusCode::FORBIDDEN => ("forbidden", "Forbidden"),
        StatusCode::NOT_FOUND => ("not-found", "Not found"),
        StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "Method not allowed"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "Request body too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported-media-type", "Unsupported media type"),
        StatusCode::UNPROCESSABLE_ENTITY => ("validation", "Request body is invalid"),
        StatusCode::TOO_MANY_REQUESTS => ("rate-limited", "Too many requests"),
        s if s.is_server_error() => ("internal", "Internal server error"),
        s => ("error", s.canonical_reason().unwrap_or("Error")),
    };
    let mut p = Problem::new(status, slug, title);
    if !text.is_empty() {
        p.set_detail(Some(text.to_owned()));
        if let Some((field, message)) = json_field(text).or_else(|| param_field(text, route)) {
            p = p.field(field, message);
        }
    }
    p
}

/// axum's query and path rejections: `Failed to deserialize query string: ms: invalid digit…`,
/// `Invalid URL: Cannot parse `id` with value `x` to a `u32``, or (one unnamed parameter)
/// `Invalid URL: Cannot parse `x` to a `u32``, where the route template names it.
fn param_field(text: &str, route: Option<&str>) -> Option<(String, String)> {
    if let Some(rest) = text.strip_prefix("Failed to deserialize query string: ") {
        return match rest.split_once(": ") {
            Some((field, message)) if !field.contains(' ') => Some((field.to_owned(), message.to_owned())),
            _ => {
                let start = rest.find("missing field `")? + "missing field `".len();
                let end = rest[start..].find('`')? + start;
                Some((rest[start..end].to_owned(), rest.to_owned()))
            }
        };
    }
    let rest = text.strip_prefix("Invalid URL: ")?;
    if let Some(named) = rest.strip_prefix("Cannot parse `")
        && let Some((name, tail)) = named.split_once("` with value `")
    {
        return Some((name.to_owned(), format!("cannot parse `{tail}")));
    }
    let params: Vec<&str> =
        route?.split('/').filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
    match params.as_slice() {
        [only] => Some(((*only).trim_start_matches('*').to_owned(), rest.to_owned())),
        _ => None,
    }
}

/// axum's JSON data errors read `Failed to deserialize the JSON body into the target type:
/// <path>: <message>`; pull out the field path.
fn json_field(text: &str) -> Option<(String, String)> {
    let rest = text.strip_prefix("Failed to deserialize the JSON body into the target type: ")?;
    if let Some((path, message)) = rest.split_once(": ")
        && !path.contains(' ')
        && path != "."
    {
        return Some((path.to_owned(), message.to_owned()));
    }
    // A missing field has no path of its own: `missing field `name` at line 1 column 2`.
    let start = rest.find("missing field `")? + "missing field `".len();
    let end = rest[start..].find('`')? + start;
    Some((rest[start..end].to_owned(), rest.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_field_paths() {
        assert_eq!(
            json_field(
                "Failed to deserialize the JSON body into the target type: age: invalid type: string \"x\", expected u32 at line 1 column 9"
            ),
            Some(("age".into(), "invalid type: string \"x\", expected u32 at line 1 column 9".into()))
        );
        assert_eq!(
            json_field(
                "Failed to deserialize the JSON body into the target type: missing field `name` at line 1 column 2"
            )
            .map(|f| f.0),
            Some("name".into())
        );
        assert_eq!(json_field("something else"), None);
        assert_eq!(
            param_field("Failed to deserialize query string: ms: invalid digit found in string", None).map(|f| f.0),
            Some("ms".into())
        );
        assert_eq!(
            param_field("Invalid URL: Cannot parse `id` with value `x` to a `u32`", None).map(|f| f.0),
            Some("id".into())
        );
        assert_eq!(
            param_field("Invalid URL: Cannot parse `x` to a `u32`", Some("/items/{id}")).map(|f| f.0),
            Some("id".into())
        );
        assert_eq!(param_field("Invalid URL: Cannot parse `x` to a `u32`", Some("/a/{x}/{y}")), None);
    }
}
