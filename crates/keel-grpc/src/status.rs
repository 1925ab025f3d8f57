//! Keel's errors as gRPC statuses, and the trailers-only answers the stack gives itself.
//!
//! Keel's errors (and an application's) already know their HTTP answer: an RFC 9457 problem
//! whose detail is written for clients, never internals. [`status`] turns such an answer into a
//! [`Status`] with the code gRPC's HTTP mapping gives its status (or the gRPC code the problem's
//! `code` names, where one HTTP status stands for several: a 409 with code `ALREADY_EXISTS`) and
//! the problem's detail as message, so a handler shared by the HTTP and gRPC sides reports
//! failures the same way:
//!
//! ```
//! use keel_grpc::status::{Code, status};
//! use keel_http::Problem;
//!
//! let s = status(Problem::not_found().detail("no symbol 42"));
//! assert_eq!(s.code(), Code::NotFound);
//! assert_eq!(s.message(), "no symbol 42");
//!
//! // A 500 says only that it failed.
//! let s = status(Problem::internal());
//! assert_eq!(s.code(), Code::Internal);
//! ```

use axum::response::IntoResponse;
use http::{HeaderMap, StatusCode};
use keel_http::Problem;
use keel_http::request_id::RequestId;

pub use tonic::{Code, Status};

/// The header a status code travels in (trailers, or headers of a trailers-only answer).
pub const GRPC_STATUS: &str = "grpc-status";
/// gRFC A6 server pushback: how long a client should wait before retrying, in milliseconds.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// The gRPC status for `error`'s HTTP answer (see the module docs). A problem's `Retry-After`
/// becomes `grpc-retry-pushback-ms` metadata; its field errors are listed in the message.
pub fn status(error: impl IntoResponse) -> Status {
    let resp = error.into_response();
    let code = code_for_http(resp.status());
    let Some(problem) = Problem::of_response(&resp) else {
        return Status::new(code, resp.status().canonical_reason().unwrap_or("error"));
    };
    // A problem whose code names a gRPC code says which it is (409 can be either).
    let code = problem.code_str().and_then(code_named).unwrap_or(code);
    let mut message = problem.detail_text().unwrap_or(problem.title()).to_owned();
    for f in problem.field_errors() {
        message.push_str(&format!("; {}: {}", f.field, f.message));
    }
    let mut s = Status::new(code, message);
    if let Some(secs) = resp.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok())
        && let Ok(secs) = secs.parse::<u64>()
    {
        s.metadata_mut().insert(RETRY_PUSHBACK, pushback(secs.saturating_mul(1000)));
    }
    s
}

/// The code gRPC's HTTP mapping gives an HTTP status, with the usual refinements for the
/// statuses Keel's problems use (409 → `ABORTED`, 412 → `FAILED_PRECONDITION`, 422 →
/// `INVALID_ARGUMENT`, 501 → `UNIMPLEMENTED`).
pub fn code_for_http(status: StatusCode) -> Code {
    match status.as_u16() {
        200..=299 => Code::Ok,
        400 | 413 | 414 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        408 | 504 => Code::DeadlineExceeded,
        409 => Code::Aborted,
        412 => Code::FailedPrecondition,
        429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        501 => Code::Unimplemented,
        502 | 503 => Code::Unavailable,
        500 => Code::Internal,
        _ => Code::Unknown,
    }
}

/// The code named `name` (`ALREADY_EXISTS`), as [`crate::metrics::code_label`] writes it.
pub fn code_named(name: &str) -> Option<Code> {
    (0..=16).map(Code::from_i32).find(|c| crate::metrics::code_label(*c) == name)
}

/// The code in a `grpc-status` header of `headers`, if there is one.
pub fn code_in(headers: &HeaderMap) -> Option<Code> {
    headers.get(GRPC_STATUS).map(|v| Code::from_bytes(v.as_bytes()))
}

/// Codes that mean the server failed (OpenTelemetry's gRPC server conventions): an error span
/// and an `error` log line; the rest are the caller's.
pub fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// A trailers-only answer carrying `status`, with the request's id.
pub fn response(status: Status, id: Option<&RequestId>) -> http::Response<axum::body::Body> {
    let mut resp = status.into_http::<axum::body::Body>();
    if let Some(id) = id {
        resp.headers_mut().insert(keel_http::request_id::HEADER.clone(), id.header_value().clone());
    }
    resp
}

/// `grpc-retry-pushback-ms` for `millis`.
pub(crate) fn pushback(millis: u64) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    tonic::metadata::MetadataValue::from(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_keep_their_class_and_detail_and_never_more() {
        let s = status(Problem::bad_request("name is required").field("name", "must not be empty"));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "name is required; name: must not be empty");
        let s = status(Problem::unavailable("the database is down", 5));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(RETRY_PUSHBACK).unwrap(), "5000");
        let s = status(Problem::internal());
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("panicked"), "{}", s.message());
        assert_eq!(status(StatusCode::CONFLICT).code(), Code::Aborted);
        let taken = Problem::new(StatusCode::CONFLICT, "taken", "Name taken").code("ALREADY_EXISTS");
        assert_eq!(status(taken).code(), Code::AlreadyExists);
        let other = Problem::new(StatusCode::CONFLICT, "x", "X").code("SOMETHING_ELSE");
        assert_eq!(status(other).code(), Code::Aborted);
        assert_eq!(code_for_http(StatusCode::TOO_MANY_REQUESTS), Code::ResourceExhausted);
        assert_eq!(code_for_http(StatusCode::IM_A_TEAPOT), Code::Unknown);
    }
}
