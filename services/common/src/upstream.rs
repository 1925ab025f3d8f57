//! The HTTP client a service uses to call another one (`upstreams.<name>`).

use keel::Setup;
use keel::app::SetupError;
use keel::config::{ConfigError, Profile};
use keel::http::client::{Client, UpstreamConfig};

/// The client for upstream `name` of the calling service: `upstreams.<name>` when configured; in
/// development only, `http://127.0.0.1:<port>` of that service with one retry; otherwise a set-up
/// error (exit 78) naming the missing key and its variable. Its readiness check (with
/// `health_path`) only degrades the caller's readiness: a down upstream fails the calls that need
/// it quickly (its breaker) while everything else goes on.
pub fn client<C: keel::config::Section>(s: &mut Setup<C>, name: &str, port: u16) -> Result<Client, SetupError> {
    if s.keel().upstreams.contains_key(name) {
        return s.http_client_optional(name);
    }
    if s.profile() != Profile::Development {
        let prefix = keel::config::env_prefix(s.name());
        return Err(Box::new(ConfigError::invalid(
            format!("upstreams.{name}.base_url"),
            format!(
                "is not configured: this service calls the {name} service (env {prefix}__UPSTREAMS__{}__BASE_URL)",
                name.to_uppercase()
            ),
        )));
    }
    let mut cfg = UpstreamConfig::default();
    cfg.base_url = format!("http://127.0.0.1:{port}");
    cfg.retry.max_attempts = 2;
    tracing::warn!(upstream = name, base_url = %cfg.base_url, "upstream not configured; using the development default");
    let breaker = s.breakers()?.get_or_create(name, &cfg.breaker);
    Ok(Client::new(name, &cfg, breaker, None)?)
}
