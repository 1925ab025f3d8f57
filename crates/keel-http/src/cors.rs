//! CORS from configuration, built on `tower_http::cors`.
//!
//! Origins are compared **exactly** on scheme, host and port after normalisation (lower case,
//! default ports dropped), never by suffix: an allowlist of `https://example.com` does not admit
//! `https://evil-example.com` or `https://example.com.evil.io`. Credentials are only ever sent
//! with an explicit origin list. Preflights are answered by this layer and cached by browsers
//! for `cors.max_age`.

use std::str::FromStr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};
use tower_http::cors::AllowOrigin;
pub use tower_http::cors::CorsLayer;

use keel_config::{Profile, Section, Validation};

/// `cors.*`: which browser origins may call the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`, scheme + host + port). In env, comma-separated.
    /// Empty: no cross-origin access (refused in production). `*` is refused in production and
    /// never combines with credentials.
    pub allowed_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true`. Default `false`.
    pub allow_credentials: bool,
    /// Methods allowed cross-origin.
    pub allowed_methods: Vec<String>,
    /// Request headers allowed cross-origin.
    pub allowed_headers: Vec<String>,
    /// Response headers readable cross-origin.
    pub exposed_headers: Vec<String>,
    /// How long browsers may cache a preflight answer. Default `10m`.
    #[serde(with = "keel_config::duration")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            allowed_origins: Vec::new(),
            allow_credentials: false,
            allowed_methods: s(&["GET", "POST", "PUT", "PATCH", "DELETE"]),
            allowed_headers: s(&["authorization", "content-type", "idempotency-key", "traceparent", "x-request-id"]),
            exposed_headers: s(&[
                "x-request-id",
                "retry-after",
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
            ]),
            max_age: Duration::from_secs(600),
        }
    }
}

impl Section for CorsConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        let prod = v.profile() == Profile::Production;
        let mut wildcard = false;
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            if origin == "*" {
                wildcard = true;
            } else if let Err(e) = normalize_origin(origin) {
                v.invalid(&format!("allowed_origins[{i}]"), e);
            }
        }
        if wildcard && self.allow_credentials {
            v.invalid("allowed_origins", "`*` cannot be combined with allow_credentials: list the origins");
        }
        for (i, m) in self.allowed_methods.iter().enumerate() {
            if http::Method::from_bytes(m.as_bytes()).is_err() {
                v.invalid(&format!("allowed_methods[{i}]"), format!("`{m}` is not an HTTP method"));
            }
        }
        for (field, list) in [("allowed_headers", &self.allowed_headers), ("exposed_headers", &self.exposed_headers)] {
            for (i, h) in list.iter().enumerate() {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    v.invalid(&format!("{field}[{i}]"), format!("`{h}` is not a header name"));
                }
            }
        }
        if prod && self.allowed_origins.is_empty() {
            v.production("allowed_origins", "production needs the list of browser origins allowed to call the API");
        }
        if prod && wildcard {
            v.production("allowed_origins", "`*` lets any site call the API: list the origins in production");
        }
    }
}

/// Why a CORS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid CORS configuration: {0}")]
pub struct CorsError(String);

/// Normalises an origin to `scheme://host[:port]`, or explains why it is not one.
///
/// ```
/// use keel_http::cors::normalize_origin;
/// assert_eq!(normalize_origin("HTTPS://App.Example.com:443").unwrap(), "https://app.example.com");
/// assert_eq!(normalize_origin("http://localhost:5173").unwrap(), "http://localhost:5173");
/// assert!(normalize_origin("https://example.com/path").is_err());
/// assert!(normalize_origin("example.com").is_err());
/// ```
pub fn normalize_origin(origin: &str) -> Result<String, String> {
    let bad = |why: &str| format!("`{origin}` is not an origin ({why}); write scheme://host[:port]");
    let uri = http::Uri::from_str(origin.trim()).map_err(|_| bad("does not parse"))?;
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase).ok_or_else(|| bad("no scheme"))?;
    if scheme != "http" && scheme != "https" {
        return Err(bad("scheme must be http or https"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("has user info"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("has a path or query"));
    }
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() || host.contains('*') {
        return Err(bad("no host, or a wildcard host"));
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    Ok(match authority.port_u16() {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Builds the layer, or says why the configuration is unusable (instead of panicking as
/// `tower_http` would on `*` with credentials).
pub fn layer(cfg: &CorsConfig) -> Result<CorsLayer, CorsError> {
    let wildcard = cfg.allowed_origins.iter().any(|o| o == "*");
    if wildcard && cfg.allow_credentials {
        return Err(CorsError("`*` cannot be combined with credentials".into()));
    }
    let origin = if wildcard {
        AllowOrigin::any()
    } else {
        let list = cfg
            .allowed_origins
            .iter()
            .map(|o| {
                let n = normalize_origin(o).map_err(CorsError)?;
                HeaderValue::from_str(&n).map_err(|e| CorsError(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    let methods = cfg
        .allowed_methods
        .iter()
        .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| CorsError(format!("`{m}` is not a method"))))
        .collect::<Result<Vec<_>, _>>()?;
    let names = |list: &[String]| {
        list.iter()
            .map(|h| HeaderName::from_bytes(h.as_bytes()).map_err(|_| CorsError(format!("`{h}` is not a header name"))))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(tower_http::cors::CorsLayer::new()
        .allow_origin(origin)
        .allow_methods(methods)
        .allow_headers(names(&cfg.allowed_headers)?)
        .expose_headers(names(&cfg.exposed_headers)?)
        .allow_credentials(cfg.allow_credentials)
        .max_age(cfg.max_age))
}
