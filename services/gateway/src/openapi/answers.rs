//! The error answers every operation shares (`components/responses`), and which of them a route
//! can give: those the gateway itself sends follow from the route (its access, whether it takes
//! a body or a path id, whether a service answers it); the others the operation names.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, Ref, Response, ResponseBuilder};

use crate::routes::{Access, EVENT_CALENDAR_PATH, FEED_CALENDAR_PATH, Route, Upstream, VIEW_PATH};

/// One shared error answer: an RFC 9457 problem.
pub(crate) struct Failure {
    /// The status.
    pub(crate) status: u16,
    /// Its name under `components/responses`.
    pub(crate) name: &'static str,
    description: &'static str,
    /// Headers sent with it: name, description, whether an integer (else a string).
    headers: &'static [(&'static str, &'static str, bool)],
}

const RETRY_AFTER: (&str, &str, bool) = ("Retry-After", "Seconds to wait before retrying.", true);

/// Every shared error answer.
pub(crate) const FAILURES: &[Failure] = &[
    Failure {
        status: 400,
        name: "BadRequest",
        description: "Invalid input (`code: invalid_input`, the field named in `errors`), or a query parameter the \
                      operation does not declare.",
        headers: &[],
    },
    Failure {
        status: 401,
        name: "Unauthorized",
        description: "No valid bearer token.",
        headers: &[("WWW-Authenticate", "The `Bearer` challenge, with the reason.", false)],
    },
    Failure { status: 403, name: "Forbidden", description: "The caller may not do this.", headers: &[] },
    Failure {
        status: 404,
        name: "NotFound",
        description: "It does not exist, or the caller may not know it exists.",
        headers: &[],
    },
    Failure {
        status: 405,
        name: "MethodNotAllowed",
        description: "The path exists but not with this method; `Allow` lists the methods it takes. Sent for any \
                      method an operation of the path does not declare.",
        headers: &[("Allow", "The path's methods.", false)],
    },
    Failure { status: 409, name: "Conflict", description: "A state conflict; `code` says which.", headers: &[] },
    Failure {
        status: 413,
        name: "PayloadTooLarge",
        description: "The body is larger than the gateway accepts.",
        headers: &[],
    },
    Failure {
        status: 415,
        name: "UnsupportedMediaType",
        description: "The body is not sent as `Content-Type: application/json` (`code: unsupported_media_type`).",
        headers: &[],
    },
    Failure {
        status: 429,
        name: "TooManyRequests",
        description: "Rate limited (`code: RATE_LIMITED`): per user, else per client IP.",
        headers: &[
            RETRY_AFTER,
            ("RateLimit-Limit", "Requests allowed per window.", true),
            ("RateLimit-Remaining", "Requests left in the window.", true),
            ("RateLimit-Reset", "Seconds until the quota is whole again.", true),
        ],
    },
    Failure { status: 502, name: "BadGateway", description: "A service did not answer properly.", headers: &[] },
    Failure {
        status: 503,
        name: "ServiceUnavailable",
        description: "A service is unavailable or its circuit is open (`code: SERVICE_DEGRADED`).",
        headers: &[RETRY_AFTER],
    },
    Failure { status: 504, name: "GatewayTimeout", description: "A service did not answer in time.", headers: &[] },
];

impl Failure {
    /// The answer under `components/responses`.
    pub(crate) fn response(&self) -> Response {
        let problem = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
        let mut b = ResponseBuilder::new().description(self.description).content("application/problem+json", problem);
        for &(name, description, integer) in self.headers {
            let kind = if integer { Type::Integer } else { Type::String };
            let header = HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(kind)))
                .description(Some(description));
            b = b.header(name, header.build());
        }
        b.build()
    }

    /// The reference to it.
    pub(crate) fn reference(&self) -> Ref {
        Ref::from_response_name(self.name)
    }
}

/// The shared answer for `status`.
pub(crate) fn failure(status: u16) -> Option<&'static Failure> {
    FAILURES.iter().find(|f| f.status == status)
}

/// The errors any request to `route` can get from the gateway itself, whatever the operation:
/// 400 for a query parameter it does not declare; 401 for a bad token (except where tokens are
/// dropped unread); 404 for an id no resource has; 413 and 415 for a body; 429 from the rate
/// limits; 502–504 from the services behind it.
pub(crate) fn inherent(route: &Route, takes_body: bool) -> Vec<u16> {
    let mut out = vec![400, 429];
    if route.access != Access::Anonymous {
        out.push(401);
    }
    if route.path.contains('{') {
        out.push(404);
    }
    if takes_body {
        out.extend([413, 415]);
    }
    // The gateway's own routes that call services: an event's view, its calendar, a feed.
    if route.upstream != Upstream::Gateway || [VIEW_PATH, EVENT_CALENDAR_PATH, FEED_CALENDAR_PATH].contains(&route.path)
    {
        out.extend([502, 503, 504]);
    }
    out
}
