//! RFC 9457 `application/problem+json` error responses.
//!
//! This is `keel-problem`, re-exported by `keel-http` as `keel_http::problem` (and by `keel` as
//! `keel::http::problem`). It sits at the bottom of Keel's crates beside `keel-config`, so that a
//! crate that only needs to say how its errors answer (`keel-data`, `keel-redis`) does not depend
//! on the HTTP stack.
//!
//! Every error Keel produces (and every error a handler returns as a [`Problem`]) leaves the
//! service as a problem document carrying the request id. Bodies never hold stack traces, panic
//! messages or internal error texts: those go to the log.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// Seconds a client is asked to wait (503 `Retry-After`) when a dependency (SQL, Redis) is
/// unavailable.
pub const DEPENDENCY_RETRY_AFTER_SECS: u64 = 5;

/// The media type of problem documents.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// Marks an answer refused at capacity before any work was done ([`Problem::overloaded`]):
/// the service is alive and answered at once, so Keel's client does not count the answer
/// against its circuit breaker. Named after Envoy's `x-envoy-overloaded`.
pub const OVERLOADED: http::HeaderName = http::HeaderName::from_static("keel-overloaded");

/// An RFC 9457 problem document.
///
/// ```
/// use axum::response::IntoResponse;
/// use keel_problem::Problem;
///
/// async fn handler() -> Result<&'static str, Problem> {
///     Err(Problem::new(http::StatusCode::CONFLICT, "already-joined", "Already joined")
///         .detail("you have already joined this event"))
/// }
/// let resp = Problem::not_found().into_response();
/// assert_eq!(resp.status(), 404);
/// assert_eq!(resp.headers()["content-type"], "application/problem+json");
/// ```
#[derive(Debug, Clone)]
pub struct Problem(Box<ProblemBody>);

/// The fields of a [`Problem`], boxed so `Result<T, Problem>` stays small.
#[derive(Debug, Clone, Serialize)]
struct ProblemBody {
    #[serde(rename = "type")]
    type_: String,
    title: String,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
    #[serde(skip)]
    retry_after: Option<u64>,
    #[serde(skip)]
    overloaded: bool,
    /// `WWW-Authenticate` (RFC 6750's challenge of a 401 or 403).
    #[serde(skip)]
    challenge: Option<std::borrow::Cow<'static, str>>,
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// One invalid field.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// The field (`email`, `items[2].qty`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Problem {
    /// A problem with status, type slug and title.
    pub fn new(status: StatusCode, slug: &str, title: impl Into<String>) -> Self {
        Self(Box::new(ProblemBody {
            type_: format!("urn:keel:problem:{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: None,
            code: None,
            request_id: None,
            errors: Vec::new(),
            retry_after: None,
            overloaded: false,
            challenge: None,
        }))
    }

    /// Adds a detail line.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    /// Adds a stable code.
    pub fn code(mut self, code: impl Into<String>) -> Self {
        self.0.code = Some(code.into());
        self
    }

    /// Adds a field error.
    pub fn field(mut self, field: impl Into<String>, message: impl Into<String>) -> Self {
        self.0.errors.push(FieldError { field: field.into(), message: message.into() });
        self
    }

    /// Asks the client to retry after `secs` seconds.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.0.retry_after = Some(secs);
        self
    }

    /// 400 `invalid_input` for one invalid field: `field` names it as the client sent it
    /// (`email`, `items[2].qty`, a query parameter, a path parameter), `message` says what is
    /// wrong without echoing the value.
    ///
    /// ```
    /// use keel_problem::Problem;
    ///
    /// let p = Problem::invalid("email", "must be an email address");
    /// assert_eq!(p.status_code(), 400);
    /// assert_eq!(p.code_str(), Some("invalid_input"));
    /// assert_eq!(p.field_errors()[0].field, "email");
    /// ```
    pub fn invalid(field: &str, message: &str) -> Self {
        Self::bad_request(format!("{field} {message}")).code("invalid_input").field(field, message)
    }

    /// Answers with `WWW-Authenticate: <challenge>`, as a 401 must (RFC 9110 §11.6.1), e.g.
    /// `Bearer error="invalid_token"`.
    pub fn challenge(mut self, challenge: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.0.challenge = Some(challenge.into());
        self
    }

    /// Replaces the detail line, or removes it.
    pub fn set_detail(&mut self, detail: Option<String>) {
        self.0.detail = detail;
    }

    /// 400.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request").detail(detail)
    }

    /// 404.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found")
    }

    /// 500, with nothing about the cause.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error")
            .detail("the server failed to handle the request; quote the request id when reporting it")
    }

    /// 500 for a failure that is the server's own: logs `error` at ERROR with `context` (what
    /// was being done) and answers [`Problem::internal`], so the cause never reaches the client.
    ///
    /// ```
    /// let p = keel_problem::Problem::internal_error("issuing an access token", "no signing key");
    /// assert_eq!(p.status_code(), http::StatusCode::INTERNAL_SERVER_ERROR);
    /// assert!(!p.detail_text().unwrap_or_default().contains("signing key"));
    /// ```
    pub fn internal_error(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!(error = %error, "{context} failed");
        Self::internal()
    }

    /// Says the request was refused at capacity before any work was done (a full queue, a
    /// bulkhead, load shedding): the answer carries [`OVERLOADED`], and a Keel client calling
    /// this service passes it on without counting it against its circuit breaker. A breaker
    /// is for a dependency that fails or hangs; one that answers "busy" at once needs no
    /// protection from, and opening the breaker would refuse everyone else's calls too (a
    /// burst of sign-ins would end every sign-in for the breaker's open time). Use it only
    /// for such refusals: a 503 for a dependency that is down or slow must stay a failure.
    ///
    /// ```
    /// use axum::response::IntoResponse;
    /// use keel_problem::Problem;
    ///
    /// let resp = Problem::new(http::StatusCode::SERVICE_UNAVAILABLE, "search-busy", "Too many searches")
    ///     .retry_after(1)
    ///     .overloaded()
    ///     .into_response();
    /// assert_eq!(resp.headers()[keel_problem::OVERLOADED], "true");
    /// ```
    pub fn overloaded(mut self) -> Self {
        self.0.overloaded = true;
        self
    }

    /// 503 with `Retry-After`: the service is at capacity ([`Problem::overloaded`]).
    pub fn unavailable(detail: impl Into<String>, retry_after: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable")
            .detail(detail)
            .retry_after(retry_after)
            .overloaded()
    }

    /// The status as a `StatusCode`.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The `type` URI.
    pub fn type_uri(&self) -> &str {
        &self.0.type_
    }

    /// The title.
    pub fn title(&self) -> &str {
        &self.0.title
    }

    /// The detail, if any.
    pub fn detail_text(&self) -> Option<&str> {
        self.0.detail.as_deref()
    }

    /// The stable code, if any.
    pub fn code_str(&self) -> Option<&str> {
        self.0.code.as_deref()
    }

    /// The request id, once the stack filled it in.
    pub fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }

    /// The field errors.
    pub fn field_errors(&self) -> &[FieldError] {
        &self.0.errors
    }

    /// The problem a response rendered from one carries (so another protocol, gRPC, can answer
    /// the same failure its own way), or `None` for any other response.
    ///
    /// ```
    /// use axum::response::IntoResponse;
    /// use keel_problem::Problem;
    ///
    /// let resp = Problem::not_found().detail("no such item").into_response();
    /// assert_eq!(Problem::of_response(&resp).and_then(Problem::detail_text), Some("no such item"));
    /// ```
    pub fn of_response<B>(resp: &http::Response<B>) -> Option<&Self> {
        resp.extensions().get::<Rendered>().map(|r| &r.0)
    }

    /// Renders the response, with `request_id` when known.
    pub fn into_response_with_id(mut self, request_id: Option<&str>) -> Response {
        if self.0.request_id.is_none() {
            self.0.request_id = request_id.map(str::to_owned);
        }
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = self.status_code();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(secs) = self.0.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.0.overloaded {
            resp.headers_mut().insert(OVERLOADED, HeaderValue::from_static("true"));
        }
        if let Some(v) = self.0.challenge.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp.extensions_mut().insert(Rendered(self));
        resp
    }
}

/// Marks a response whose body is a problem document, so the stack can add the request id.
#[derive(Debug, Clone)]
struct Rendered(Problem);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        self.into_response_with_id(None)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0.status, self.0.title)?;
        if let Some(d) = &self.0.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}
