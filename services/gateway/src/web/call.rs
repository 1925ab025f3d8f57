//! Calls from the pages to the services, through the gateway's own clients (the same
//! timeouts, retries, breakers and deadline as the API routes), and what a failed one tells a
//! person.

use std::collections::BTreeMap;

use cityevents_api::gateway::Problem;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use keel::http::client::{self, ClientError};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Site;
use crate::routes::Upstream;

/// A call that did not succeed, as the page shows it.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// The status the page answers with.
    pub(crate) status: StatusCode,
    /// The service's problem, when it sent one.
    pub(crate) problem: Option<Box<Problem>>,
    /// Which service, for "… is not available" messages.
    upstream: Upstream,
}

impl Failure {
    pub(crate) fn from_answer(upstream: Upstream, r: &client::Response) -> Self {
        let problem = serde_json::from_slice::<Problem>(&r.body).ok().map(Box::new);
        Self { status: r.status, problem, upstream }
    }

    pub(crate) fn from_error(upstream: Upstream, e: ClientError) -> Self {
        use axum::response::IntoResponse as _;
        // Keel's mapping (logged there): 503 for down or open breaker, 504 for slow, 502 for
        // broken.
        Self { status: e.into_response().status(), problem: None, upstream }
    }

    /// An answer that was not what the contract says (a 502).
    pub(crate) fn unreadable(upstream: Upstream) -> Self {
        Self { status: StatusCode::BAD_GATEWAY, problem: None, upstream }
    }

    /// A form the site refuses itself (400), saying `detail`.
    pub(crate) fn bad_request(upstream: Upstream, detail: &str) -> Self {
        Self::refusal(upstream, StatusCode::BAD_REQUEST, "Bad request", detail)
    }

    /// An upload the site refuses itself (413), saying `detail`.
    pub(crate) fn too_large(upstream: Upstream, detail: &str) -> Self {
        Self::refusal(upstream, StatusCode::PAYLOAD_TOO_LARGE, "Payload too large", detail)
    }

    fn refusal(upstream: Upstream, status: StatusCode, title: &str, detail: &str) -> Self {
        let problem = Problem {
            kind: "urn:cityevents:problem:invalid".into(),
            title: title.into(),
            status: status.as_u16(),
            detail: Some(detail.into()),
            instance: None,
            request_id: None,
            code: None,
            errors: None,
        };
        Self { status, problem: Some(Box::new(problem)), upstream }
    }

    /// A refusal the site makes itself, saying `detail`.
    pub(crate) fn forbidden(upstream: Upstream, detail: &str) -> Self {
        let problem = Problem {
            kind: "urn:cityevents:problem:forbidden".into(),
            title: "Forbidden".into(),
            status: 403,
            detail: Some(detail.into()),
            instance: None,
            request_id: None,
            code: None,
            errors: None,
        };
        Self { status: StatusCode::FORBIDDEN, problem: Some(Box::new(problem)), upstream }
    }

    /// The problem's `code`, when it has one.
    pub(crate) fn code(&self) -> Option<&str> {
        self.problem.as_ref().and_then(|p| p.code.as_deref())
    }

    /// The request id to quote when asking for help.
    pub(crate) fn request_id(&self) -> Option<&str> {
        self.problem.as_ref().and_then(|p| p.request_id.as_deref())
    }

    /// Messages by form field (`errors` of a 400/422 problem).
    pub(crate) fn fields(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for e in self.problem.iter().flat_map(|p| p.errors.iter().flatten()) {
            out.entry(e.field.clone()).or_insert_with(|| sentence(&e.message));
        }
        out
    }

    /// One sentence for a person.
    pub(crate) fn message(&self) -> String {
        let service = match self.upstream {
            Upstream::Auth => "The accounts service",
            Upstream::Events => "The events service",
            Upstream::Joins => "The sign-up service",
            Upstream::Notifier => "The notifications service",
            Upstream::Gateway => "The site",
        };
        match self.status {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => {
                format!("{service} is not available right now. Try again in a moment.")
            }
            StatusCode::GATEWAY_TIMEOUT => format!("{service} took too long to answer. Try again in a moment."),
            // Auth's sign-in delay says how long; the rate limiter's words are for programs.
            StatusCode::TOO_MANY_REQUESTS => {
                match self.problem.as_ref().filter(|p| p.code.as_deref() == Some("locked")) {
                    Some(p) => sentence(p.detail.as_deref().unwrap_or(&p.title)),
                    None => "You have done that too often. Wait a little and try again.".to_owned(),
                }
            }
            StatusCode::UNAUTHORIZED => "Your session has ended. Log in again.".to_owned(),
            s if s.is_server_error() => "Something went wrong on our side. Try again in a moment.".to_owned(),
            _ => match self.problem.as_ref() {
                Some(p) => sentence(p.detail.as_deref().unwrap_or(&p.title)),
                None => "That did not work. Check what you entered and try again.".to_owned(),
            },
        }
    }
}

/// The services' names for fields, as a person reads them in a sentence.
const FIELD_WORDS: &[(&str, &str)] = &[
    ("starts_at", "the start time"),
    ("ends_at", "the end time"),
    ("time_zone", "the time zone"),
    ("online_url", "the online join link"),
    ("current_password", "your current password"),
    ("new_password", "the new password"),
    ("expires_at", "the expiry time"),
    ("refresh_token", "your session"),
    ("confirm_capacity", "the seat confirmation"),
    ("display_name", "the name"),
];

/// `text` with the services' internal names made human: a known field name becomes its words
/// (`must be after starts_at` → `must be after the start time`), any other `snake_case` word
/// its words with spaces, and code quotes (`` `user` ``) are dropped.
pub(crate) fn human(text: &str) -> String {
    let text = text.replace('`', "");
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    // The character before the word: a word of an address is left as it is.
    let mut before: Option<char> = None;
    let flush = |word: &mut String, out: &mut String, before: Option<char>, after: Option<char>| {
        let in_address = before == Some('@') || after == Some('@');
        if word.contains('_') && !in_address {
            let trimmed = word.trim_matches('_');
            match FIELD_WORDS.iter().find(|(k, _)| *k == trimmed) {
                Some((_, words)) => out.push_str(words),
                None => out.push_str(&trimmed.replace('_', " ")),
            }
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            let start = before;
            flush(&mut word, &mut out, start, Some(c));
            out.push(c);
            before = Some(c);
        }
    }
    flush(&mut word, &mut out, before, None);
    out
}

/// `text` as a sentence for a person: internal names made [`human`], capitalised, ending with
/// a full stop.
pub(crate) fn sentence(text: &str) -> String {
    let text = human(text);
    let text = text.trim();
    let mut chars = text.chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => return String::new(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

impl Site {
    /// Sends one call; a 2xx answer is `Ok`, anything else a [`Failure`].
    #[allow(clippy::too_many_arguments)] // a call's every part, as the API routes send them
    pub(crate) async fn send(
        &self,
        upstream: Upstream,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        address: &HeaderValue,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<client::Response, Failure> {
        let body = match body.map(serde_json::to_vec).transpose() {
            Ok(b) => b.map(|b| (HeaderValue::from_static("application/json"), axum::body::Bytes::from(b))),
            Err(_) => return Err(Failure { status: StatusCode::INTERNAL_SERVER_ERROR, problem: None, upstream }),
        };
        self.send_bytes(upstream, method, path, token, body, address, extra).await
    }

    /// [`Site::send`] with a body of any type: `(content type, bytes)` (an upload's form).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send_bytes(
        &self,
        upstream: Upstream,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(HeaderValue, axum::body::Bytes)>,
        address: &HeaderValue,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<client::Response, Failure> {
        let client = self.gw.client_for(upstream, &method, path).map_err(|_| Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            problem: None,
            upstream,
        })?;
        let mut req = client::Request::new(method.clone(), path)
            .header(header::ACCEPT, HeaderValue::from_static("application/json"))
            .header(HeaderName::from_static("x-forwarded-for"), address.clone());
        if let Some(token) = token
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            req = req.header(header::AUTHORIZATION, v);
        }
        for (name, value) in extra {
            req = req.header(name.clone(), value.clone());
        }
        if let Some((content_type, bytes)) = body {
            req = req.header(header::CONTENT_TYPE, content_type).body(bytes);
        }
        let req = self.gw.timed(req, &method);
        match self.gw.call(upstream, client, req).await {
            Ok(r) if r.status.is_success() => Ok(r),
            Ok(r) => {
                if r.status == StatusCode::UNAUTHORIZED
                    && let Some(token) = token
                {
                    self.sessions.forget_access(token).await;
                }
                Err(Failure::from_answer(upstream, &r))
            }
            Err(e) => Err(Failure::from_error(upstream, e)),
        }
    }

    /// Passes a page's upload form on as `PUT path`: the body read whole (at most
    /// `MAX_PICTURE_REQUEST`), a multipart form only; what the site refuses itself is a 413 or
    /// 400 [`Failure`] saying why.
    pub(crate) async fn send_upload(
        &self,
        upstream: Upstream,
        path: &str,
        token: &str,
        content_type: Option<HeaderValue>,
        body: axum::body::Body,
        address: &HeaderValue,
    ) -> Result<client::Response, Failure> {
        let Ok(bytes) = axum::body::to_bytes(body, cityevents_api::limits::MAX_PICTURE_REQUEST).await else {
            return Err(Failure::too_large(upstream, "The picture is larger than 5 MB. Choose a smaller one."));
        };
        let Some(content_type) = content_type.filter(|v| v.as_bytes().starts_with(b"multipart/form-data")) else {
            return Err(Failure::bad_request(upstream, "Choose a picture to upload."));
        };
        self.send_bytes(upstream, Method::PUT, path, Some(token), Some((content_type, bytes)), address, &[]).await
    }

    pub(crate) fn read<T: DeserializeOwned>(upstream: Upstream, r: &client::Response) -> Result<T, Failure> {
        r.json::<T>().map_err(|e| {
            tracing::warn!(upstream = upstream.name(), error = %e, "a page's call answered unreadable JSON");
            Failure::unreadable(upstream)
        })
    }

    /// `GET path` as `T`.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        upstream: Upstream,
        path: &str,
        token: Option<&str>,
        address: &HeaderValue,
    ) -> Result<T, Failure> {
        let r = self.send(upstream, Method::GET, path, token, None, address, &[]).await?;
        Self::read(upstream, &r)
    }

    /// `POST path` with a JSON `body`, the answer as `T`.
    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        upstream: Upstream,
        path: &str,
        token: Option<&str>,
        body: &Value,
        address: &HeaderValue,
    ) -> Result<T, Failure> {
        let r = self.send(upstream, Method::POST, path, token, Some(body), address, &[]).await?;
        Self::read(upstream, &r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(status: u16, detail: &str, errors: Value) -> Failure {
        let p: Problem = serde_json::from_value(serde_json::json!({
            "type": "urn:x", "title": "Bad", "status": status, "detail": detail,
            "code": "invalid_input", "request_id": "r-1", "errors": errors,
        }))
        .unwrap();
        Failure { status: StatusCode::from_u16(status).unwrap(), problem: Some(Box::new(p)), upstream: Upstream::Auth }
    }

    #[test]
    fn problems_become_sentences_and_field_messages() {
        let f = problem(
            400,
            "the password is too short",
            serde_json::json!([
                {"field": "password", "message": "must be at least 12 characters"},
                {"field": "password", "message": "second"},
            ]),
        );
        assert_eq!(f.message(), "The password is too short.");
        assert_eq!(f.fields()["password"], "Must be at least 12 characters.");
        assert_eq!(f.code(), Some("invalid_input"));
        assert_eq!(f.request_id(), Some("r-1"));
    }

    #[test]
    fn errors_never_show_internal_names() {
        let f = problem(
            400,
            "ends_at must be after starts_at",
            serde_json::json!([
                {"field": "ends_at", "message": "must be after starts_at"},
                {"field": "online_url", "message": "must be an https URL"},
                {"field": "role", "message": "must be `user`, `moderator` or `admin`"},
                {"field": "x", "message": "must be a local time in time_zone (2030-05-01T19:00)"},
                {"field": "y", "message": "is not like some_other_field"},
            ]),
        );
        assert_eq!(f.message(), "The end time must be after the start time.");
        let fields = f.fields();
        assert_eq!(fields["ends_at"], "Must be after the start time.");
        assert_eq!(fields["role"], "Must be user, moderator or admin.");
        assert_eq!(fields["x"], "Must be a local time in the time zone (2030-05-01T19:00).");
        assert_eq!(fields["y"], "Is not like some other field.");
        assert_eq!(human("john_doe@example.com is taken"), "john_doe@example.com is taken");
        for message in fields.values() {
            assert!(!message.contains('_') && !message.contains('`'), "{message}");
        }
    }

    #[test]
    fn failures_of_the_platform_never_show_their_details() {
        let f = problem(500, "pool timed out at db.rs:12", Value::Null);
        assert_eq!(f.message(), "Something went wrong on our side. Try again in a moment.");
        let down = Failure { status: StatusCode::SERVICE_UNAVAILABLE, problem: None, upstream: Upstream::Joins };
        assert!(down.message().starts_with("The sign-up service is not available"), "{}", down.message());
        assert_eq!(sentence(" ok! "), "Ok!");
        assert_eq!(sentence(""), "");
    }
}
