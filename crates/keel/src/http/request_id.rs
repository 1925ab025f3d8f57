//! Request ids: accept a well-formed `X-Request-ID`, otherwise make one (UUIDv7), and echo it.
//!
//! An incoming id is kept only when it is 1–128 characters of `[A-Za-z0-9._:-]`; anything else
//! (too long, spaces, control characters, log-injection attempts) is replaced. The id is put in
//! the request extensions as [`RequestId`] (also an axum extractor), on the response, and — by
//! the trace layer — in the request span, so every log line of the request carries it.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// `x-request-id`.
pub static HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming id that is kept.
pub const MAX_LEN: usize = 128;

/// The current request's id.
///
/// ```
/// async fn handler(id: keel::http::RequestId) -> String {
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
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(parts.extensions.get::<RequestId>().cloned().unwrap_or_else(RequestId::generate))
    }
}

/// The request's id: the one already decided for it, else a valid incoming `X-Request-ID`,
/// else a new one. Records the decision in the request's extensions (and in its header when one
/// was sent but not kept as it was), so every layer that asks gets the same id; the catch-panic
/// layer, outside this one, asks first.
pub(crate) fn ensure<B>(req: &mut Request<B>) -> RequestId {
    if let Some(id) = req.extensions().get::<RequestId>() {
        return id.clone();
    }
    let values = req.headers().get_all(&HEADER);
    let first = values.iter().next().and_then(RequestId::parse);
    let sent = values.iter().count();
    settle(req, first, sent)
}

/// [`ensure`] for a caller that has already read the request's `X-Request-ID` values:
/// `first` is the first of them made an id (`None` if it is not a valid one), `sent` how many
/// there were. The same decision, without looking the header up again.
fn settle<B>(req: &mut Request<B>, first: Option<RequestId>, sent: usize) -> RequestId {
    if let Some(id) = req.extensions().get::<RequestId>() {
        return id.clone();
    }
    let id = match (first, sent) {
        (Some(id), 1) => id,
        // None sent: the new id is in the extensions, where handlers and layers read it (as
        // `RequestId`); writing it into the request's headers too cost more than the rest of
        // the decision.
        (None, 0) => RequestId::generate(),
        // Replaced when invalid; duplicates dropped, so a header that is there says what the
        // request id is, and code reading the raw header never sees an unchecked value.
        (kept, _) => {
            let id = kept.unwrap_or_else(RequestId::generate);
            req.headers_mut().insert(HEADER.clone(), id.0.clone());
            id
        }
    };
    req.extensions_mut().insert(id.clone());
    id
}

/// Adds [`RequestId`]s; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = SetRequestId<S>;
    fn layer(&self, inner: S) -> SetRequestId<S> {
        SetRequestId { inner }
    }
}

/// The service made by [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct SetRequestId<S> {
    inner: S,
}

impl<S, B, ResB> Service<Request<B>> for SetRequestId<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = ensure(&mut req);
        ResponseFuture { inner: self.inner.call(req), id: Some(id.0) }
    }
}

pin_project! {
    /// Response future of [`SetRequestId`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, ResB, E> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            resp.headers_mut().insert(HEADER.clone(), id);
        }
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
