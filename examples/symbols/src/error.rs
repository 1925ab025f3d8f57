//! The one error type of the symbol operations, and how it leaves each edge: an RFC 9457
//! problem over HTTP, a status over gRPC. Both come from the same [`Class`], so the two APIs
//! can never disagree on what a failure is; neither ever carries internal error text (that is
//! logged, with the request id).

use http::StatusCode;
use keel::data::{DataError, RetryKind};
use keel::events::outbox::OutboxError;
use keel::http::Problem;

use crate::model::FieldError;

/// Why a symbol operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// The request is malformed: every invalid field.
    #[error("invalid request: {}", describe(.0))]
    Invalid(Vec<FieldError>),
    /// No live symbol with this id in this project.
    #[error("no such symbol")]
    NotFound,
    /// A live symbol of the project already has this name.
    #[error("a symbol with this name already exists in the project")]
    NameTaken,
    /// The symbol is not at the version the caller expected.
    #[error("the symbol is at version {current}, not the expected one")]
    VersionMismatch {
        /// Its version now.
        current: i64,
    },
    /// The database failed or is unavailable.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The outbox refused the event (an oversized or unencodable event: a bug).
    #[error("the event could not be enqueued: {0}")]
    Outbox(String),
}

fn describe(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
}

impl SymbolError {
    /// One invalid field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError { field: field.to_owned(), message: message.into() }])
    }
}

impl From<OutboxError> for SymbolError {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::Data(d) => Self::Data(d),
            OutboxError::Sql(s) => Self::Data(DataError::Sql(s)),
            other => Self::Outbox(other.to_string()),
        }
    }
}

/// What kind of failure an error is, whichever edge reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The request is malformed: 400, `INVALID_ARGUMENT`.
    Invalid,
    /// 404, `NOT_FOUND`.
    NotFound,
    /// The name is taken: 409, `ALREADY_EXISTS`.
    AlreadyExists,
    /// A concurrent change won: 409, `ABORTED`.
    Aborted,
    /// A dependency is down or overloaded; retry after this many seconds: 503, `UNAVAILABLE`.
    Unavailable(u64),
    /// A bug or an unexpected database error: 500, `INTERNAL`.
    Internal,
}

impl SymbolError {
    /// The error's class.
    pub fn class(&self) -> Class {
        match self {
            Self::Invalid(_) => Class::Invalid,
            Self::NotFound => Class::NotFound,
            Self::NameTaken => Class::AlreadyExists,
            Self::VersionMismatch { .. } => Class::Aborted,
            Self::Data(e) => match e.retry_kind() {
                // Two transactions collided: the client may simply retry.
                Some(RetryKind::Serialization | RetryKind::Deadlock | RetryKind::LockTimeout) => Class::Aborted,
                Some(kind) => Class::Unavailable(kind.retry_after()),
                None if matches!(e, DataError::Sql(sqlx::Error::RowNotFound)) => Class::NotFound,
                None => Class::Internal,
            },
            Self::Outbox(_) => Class::Internal,
        }
    }

    /// What a client is told (never internal details).
    fn public_message(&self) -> String {
        match (self, self.class()) {
            (Self::Invalid(errors), _) => describe(errors),
            (_, Class::Aborted) if matches!(self, Self::Data(_)) => {
                "the request conflicted with a concurrent one; retry it".to_owned()
            }
            (_, Class::Unavailable(_)) => "a dependency of this service is unavailable; retry later".to_owned(),
            (_, Class::Internal) => "internal error".to_owned(),
            _ => self.to_string(),
        }
    }

    /// Logs what the client is not told.
    fn log(&self) {
        match self.class() {
            Class::Internal => tracing::error!(error = %self, "symbol operation failed"),
            Class::Unavailable(_) => tracing::warn!(error = %self, "symbol operation refused: dependency unavailable"),
            _ => {}
        }
    }

    /// The HTTP answer: a problem document (`code` says which failure).
    pub fn to_problem(&self) -> Problem {
        self.log();
        let message = self.public_message();
        match self.class() {
            Class::Invalid => {
                let mut p = Problem::bad_request(message).code("invalid_input");
                if let Self::Invalid(errors) = self {
                    for e in errors {
                        p = p.field(e.field.clone(), e.message.clone());
                    }
                }
                p
            }
            Class::NotFound => Problem::not_found().detail(message).code("not_found"),
            Class::AlreadyExists => {
                Problem::new(StatusCode::CONFLICT, "name-taken", "Name taken").detail(message).code("name_taken")
            }
            Class::Aborted => {
                let code = if matches!(self, Self::VersionMismatch { .. }) { "version_mismatch" } else { "conflict" };
                Problem::new(StatusCode::CONFLICT, "conflict", "Conflict").detail(message).code(code)
            }
            Class::Unavailable(secs) => Problem::unavailable(message, secs).code("unavailable"),
            Class::Internal => Problem::internal(),
        }
    }

    /// The gRPC answer. An outage carries `grpc-retry-pushback-ms` (gRFC A6), as HTTP carries
    /// `Retry-After`.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::{Code, Status};
        self.log();
        let message = self.public_message();
        match self.class() {
            Class::Invalid => Status::invalid_argument(message),
            Class::NotFound => Status::not_found(message),
            Class::AlreadyExists => Status::already_exists(message),
            Class::Aborted => Status::aborted(message),
            Class::Unavailable(secs) => {
                let mut s = Status::new(Code::Unavailable, message);
                if let Ok(v) = (secs * 1000).to_string().parse() {
                    s.metadata_mut().insert("grpc-retry-pushback-ms", v);
                }
                s
            }
            Class::Internal => Status::internal(message),
        }
    }
}

impl axum::response::IntoResponse for SymbolError {
    fn into_response(self) -> axum::response::Response {
        self.to_problem().into_response()
    }
}

impl From<SymbolError> for tonic::Status {
    fn from(e: SymbolError) -> Self {
        e.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_answers_the_same_on_both_edges() {
        let cases: Vec<(SymbolError, u16, tonic::Code)> = vec![
            (SymbolError::invalid("name", "is required"), 400, tonic::Code::InvalidArgument),
            (SymbolError::NotFound, 404, tonic::Code::NotFound),
            (SymbolError::NameTaken, 409, tonic::Code::AlreadyExists),
            (SymbolError::VersionMismatch { current: 3 }, 409, tonic::Code::Aborted),
            (
                SymbolError::Data(DataError::Unavailable { reason: "connection refused at 10.0.0.1".into() }),
                503,
                tonic::Code::Unavailable,
            ),
            (SymbolError::Data(DataError::AcquireTimeout), 503, tonic::Code::Unavailable),
            (
                SymbolError::Data(DataError::Sql(sqlx::Error::Protocol("secret detail".into()))),
                503,
                tonic::Code::Unavailable,
            ),
            (SymbolError::Data(DataError::Config("table symbols is missing".into())), 500, tonic::Code::Internal),
            (SymbolError::Outbox("event too large".into()), 500, tonic::Code::Internal),
        ];
        for (e, http, grpc) in cases {
            let p = e.to_problem();
            let s = e.to_status();
            assert_eq!(p.status_code().as_u16(), http, "{e:?}");
            assert_eq!(s.code(), grpc, "{e:?}");
            // Internals never leave the service.
            for text in [s.message(), p.detail_text().unwrap_or_default()] {
                for secret in ["10.0.0.1", "secret detail", "table symbols", "too large"] {
                    assert!(!text.contains(secret), "{text}");
                }
            }
        }
    }

    #[test]
    fn invalid_names_every_field() {
        let e = SymbolError::Invalid(vec![
            FieldError { field: "name".into(), message: "is required".into() },
            FieldError { field: "kind".into(), message: "is required".into() },
        ]);
        let p = e.to_problem();
        assert_eq!(p.code_str(), Some("invalid_input"));
        assert_eq!(p.field_errors().len(), 2);
        assert_eq!(e.to_status().message(), "name: is required; kind: is required");
    }

    #[test]
    fn an_outage_asks_grpc_clients_to_back_off() {
        let s = SymbolError::Data(DataError::Unavailable { reason: String::new() }).to_status();
        assert_eq!(s.metadata().get("grpc-retry-pushback-ms").and_then(|v| v.to_str().ok()), Some("5000"));
    }
}
