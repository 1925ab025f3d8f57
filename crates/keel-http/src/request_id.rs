//! Request ids: accept a well-formed `X-Request-ID`, otherwise make one (UUIDv7), and echo it.
//!
//! An incoming id is kept only when it is 1–128 characters of `[A-Za-z0-9._:-]`; anything else
//! (too long, spaces, control characters, log-injection attempts) is replaced, and of several
//! `X-Request-ID` headers only the first is kept. [`RequestIdLayer`] is that check
//! ([`ValidateRequestIdLayer`]) in front of `tower_http::request_id`'s `SetRequestIdLayer` (which
//! makes the missing ids with [`MakeRequestIdV7`]) and `PropagateRequestIdLayer` (which echoes
//! the id on the response). Handlers and layers read the id as [`RequestId`] (also an axum
//! extractor); the trace layer puts it in the request span, so every log line of the request
//! carries it.
//!
//! ```
//! use axum::{Router, routing::get};
//! use keel_http::{RequestId, request_id::RequestIdLayer};
//!
//! let app: Router = Router::new()
//!     .route("/", get(|id: RequestId| async move { format!("your request is {id}") }))
//!     .layer(RequestIdLayer);
//! ```

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use http::request::Parts;
use http::{Extensions, HeaderName, HeaderValue, Request};
use tower::Layer;
use tower::layer::util::Stack;

use crate::middleware::Middleware;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, SetRequestIdLayer};

/// `x-request-id`.
pub static HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming id that is kept.
pub const MAX_LEN: usize = 128;

/// The current request's id.
///
/// ```
/// async fn handler(id: keel_http::RequestId) -> String {
///     format!("your request is {id}")
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub(crate) HeaderValue);

impl RequestId {
    /// A new UUIDv7 id: time-ordered to the millisecond, so ids sort by arrival, with random
    /// bits after that.
    pub fn generate() -> Self {
        // `Uuid::now_v7` orders ids within a millisecond too, through a process-wide mutex that
        // every worker thread would take on every request; the millisecond is order enough.
        let ts = uuid::Timestamp::now(uuid::NoContext);
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid::Uuid::new_v7(ts).hyphenated().encode_lower(&mut buf);
        // The id is shared by the request's extensions, the response header and the log
        // context: owned by one reference-counted allocation from the start. A copied slice
        // would take a second allocation when first shared.
        Self(
            HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
        )
    }

    /// Keeps `value` if it is a well-formed id.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        let b = value.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_LEN
            && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'));
        ok.then(|| Self(value.clone()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value, e.g. to send it on to another service; cloning it shares the
    /// id's bytes instead of copying them.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// The id `tower_http::request_id` recorded in these extensions (a request's, after
    /// [`RequestIdLayer`]), if any.
    pub fn from_extensions(extensions: &Extensions) -> Option<Self> {
        extensions.get::<tower_http::request_id::RequestId>().map(|id| Self(id.header_value().clone()))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(RequestId::from_extensions(&parts.extensions).unwrap_or_else(RequestId::generate))
    }
}

/// Makes the ids of requests that came without a (valid) one: [`RequestId::generate`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeRequestIdV7;

impl MakeRequestId for MakeRequestIdV7 {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<tower_http::request_id::RequestId> {
        Some(tower_http::request_id::RequestId::new(RequestId::generate().0))
    }
}

/// Keel's request ids: [`ValidateRequestIdLayer`], then `tower_http`'s set and propagate
/// layers for `x-request-id`; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

type Layers = Stack<PropagateRequestIdLayer, Stack<SetRequestIdLayer<MakeRequestIdV7>, ValidateRequestIdLayer>>;

impl<S> Layer<S> for RequestIdLayer {
    type Service = <Layers as Layer<S>>::Service;
    fn layer(&self, inner: S) -> Self::Service {
        let layers: Layers = Stack::new(
            PropagateRequestIdLayer::new(HEADER.clone()),
            Stack::new(SetRequestIdLayer::new(HEADER.clone(), MakeRequestIdV7), ValidateRequestIdLayer),
        );
        layers.layer(inner)
    }
}

/// Removes an `X-Request-ID` that is not a well-formed id, and all but the first of several,
/// so a header that is there says what the request id is and code reading the raw header
/// never sees an unchecked value.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidateRequestIdLayer;

crate::layer_with_config!(ValidateRequestIdLayer => ValidateRequestId);

impl<B, F> Middleware<B, F> for ValidateRequestIdLayer {
    type Future = F;

    fn call(&self, mut req: Request<B>, inner: impl FnOnce(Request<B>) -> F) -> F {
        validate(req.headers_mut());
        inner(req)
    }
}

fn validate(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(&HEADER).iter();
    let first = values.next().map(|v| RequestId::parse(v).is_some());
    let more = values.next().is_some();
    match (first, more) {
        (None, _) | (Some(true), false) => {}
        (Some(true), true) => {
            if let Some(v) = headers.get(&HEADER).cloned() {
                headers.insert(HEADER.clone(), v);
            }
        }
        (Some(false), _) => {
            headers.remove(&HEADER);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(values: &[&str]) -> (Option<String>, String) {
        let svc = RequestIdLayer.layer(tower::service_fn(|req: Request<()>| async move {
            let id = RequestId::from_extensions(req.extensions()).map(|i| i.to_string());
            let raw: Vec<String> =
                req.headers().get_all(&HEADER).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
            assert!(raw.len() <= 1, "one header at most reaches the handler: {raw:?}");
            assert_eq!(raw.first(), id.as_ref(), "the header and the extension agree");
            Ok::<_, Infallible>(http::Response::new(id))
        }));
        let mut req = Request::new(());
        for v in values {
            req.headers_mut().append(HEADER.clone(), HeaderValue::from_str(v).unwrap());
        }
        let resp = futures_util::FutureExt::now_or_never(tower::ServiceExt::oneshot(svc, req)).unwrap().unwrap();
        let echoed = resp.headers()[&HEADER].to_str().unwrap().to_owned();
        (resp.into_body(), echoed)
    }

    #[test]
    fn a_valid_id_is_kept_and_echoed() {
        let (seen, echoed) = served(&["abc-123"]);
        assert_eq!(seen.as_deref(), Some("abc-123"));
        assert_eq!(echoed, "abc-123");
    }

    #[test]
    fn a_missing_or_invalid_id_is_replaced_by_a_v7() {
        for sent in [&[][..], &["has space"], &["<script>"], &["a".repeat(129).as_str()]] {
            let (seen, echoed) = served(sent);
            let seen = seen.unwrap();
            assert_eq!(uuid::Uuid::parse_str(&seen).unwrap().get_version_num(), 7, "{sent:?}");
            assert_eq!(echoed, seen);
        }
    }

    #[test]
    fn of_several_ids_the_first_valid_one_is_kept() {
        assert_eq!(served(&["first", "second"]).0.as_deref(), Some("first"));
        let (seen, _) = served(&["bad id", "second"]);
        assert_ne!(seen.as_deref(), Some("second"), "an invalid first id is replaced, not skipped");
    }

    #[test]
    fn validation() {
        let ok = HeaderValue::from_static("abc-123_x.y:z");
        assert!(RequestId::parse(&ok).is_some());
        assert!(RequestId::parse(&HeaderValue::from_static("has space")).is_none());
        assert!(RequestId::parse(&HeaderValue::from_static("")).is_none());
        let long = HeaderValue::from_str(&"a".repeat(129)).unwrap();
        assert!(RequestId::parse(&long).is_none());
        let max = HeaderValue::from_str(&"a".repeat(128)).unwrap();
        assert!(RequestId::parse(&max).is_some());
        let id = RequestId::generate();
        let id = id.as_str();
        assert_eq!(id.len(), 36);
        let parsed = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(parsed.hyphenated().to_string(), id, "lower-case and hyphenated");
    }

    #[test]
    fn generated_ids_are_uuid_v7_in_time_order() {
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        let ids: Vec<uuid::Uuid> =
            (0..200).map(|_| uuid::Uuid::parse_str(RequestId::generate().as_str()).unwrap()).collect();
        let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        for id in &ids {
            assert_eq!(id.get_version(), Some(uuid::Version::SortRand));
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            let millis = u128::from(secs) * 1000 + u128::from(nanos / 1_000_000);
            assert!((before..=after).contains(&millis), "{millis} not in {before}..={after}");
        }
        // Ordered to the millisecond, random after it.
        let millis = |id: &uuid::Uuid| id.as_u128() >> 80;
        assert!(ids.windows(2).all(|w| millis(&w[0]) <= millis(&w[1])));
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
