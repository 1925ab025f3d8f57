//! Responses that carry personal data must not be stored by a browser or a shared cache.

use http::{HeaderValue, header};
use tower_http::set_header::SetResponseHeaderLayer;

/// `Cache-Control: no-store` on every response of the routes it wraps that sets no
/// `Cache-Control` of its own: a user's account, tokens, joins and notifications, and problems
/// about them. Apply it with `Router::route_layer` after the personal routes only, so that
/// public answers (listings, seat counts) stay cacheable.
pub fn no_store() -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}
