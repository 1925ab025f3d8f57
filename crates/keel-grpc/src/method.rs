//! The service and method of a call, from its path, as bounded labels.

use std::sync::Arc;

/// The label of a service or method that is not registered.
pub const UNKNOWN: &str = "unknown";

/// The services a server registered: calls to others are labelled [`UNKNOWN`], so a client
/// cannot make a metric series per made-up path.
#[derive(Debug, Clone, Default)]
pub struct Known(Arc<[String]>);

impl Known {
    /// The registered service names (`symbols.v1.Symbols`).
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Self(names.into_iter().collect())
    }

    /// `(service, method)` of `path` (`/symbols.v1.Symbols/GetSymbol`), each [`UNKNOWN`] when the
    /// service is not registered.
    pub fn labels<'a>(&'a self, path: &'a str) -> (&'a str, &'a str) {
        match split(path) {
            Some((service, method)) if self.0.iter().any(|s| s == service) => (service, method),
            _ => (UNKNOWN, UNKNOWN),
        }
    }
}

/// `(service, method)` of a gRPC path.
///
/// ```
/// assert_eq!(keel_grpc::method::split("/a.b.S/M"), Some(("a.b.S", "M")));
/// assert_eq!(keel_grpc::method::split("/nope"), None);
/// ```
pub fn split(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some((service, method))
}
