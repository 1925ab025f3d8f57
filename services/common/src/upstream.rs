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
    let cfg = development(s, name, port)?;
    tracing::warn!(upstream = name, base_url = %cfg.base_url, "upstream not configured; using the development default");
    let breaker = s.breakers()?.get_or_create(name, &cfg.breaker);
    Ok(Client::new(name, &cfg, breaker, None)?)
}

/// A second client of upstream `name` ([`client`]'s settings), called `alias`, for one class of
/// calls: its own breaker and bulkhead (`bulkhead` replaces the upstream's), and no retries,
/// since what it carries is expensive. Its failures never open the breaker of the upstream's
/// other calls.
pub fn client_for<C: keel::config::Section>(
    s: &mut Setup<C>,
    alias: &str,
    (name, port): (&str, u16),
    bulkhead: keel::resilience::bulkhead::BulkheadConfig,
) -> Result<Client, SetupError> {
    let mut cfg = match s.keel().upstreams.get(name) {
        Some(cfg) => cfg.clone(),
        None => development(s, name, port)?,
    };
    cfg.retry.max_attempts = 1;
    cfg.bulkhead = bulkhead;
    s.http_client_for(alias, &cfg)
}

/// `http://127.0.0.1:<port>` with one retry, in development only; elsewhere the error naming
/// the missing `upstreams.<name>.base_url`.
fn development<C: keel::config::Section>(s: &Setup<C>, name: &str, port: u16) -> Result<UpstreamConfig, SetupError> {
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
    Ok(cfg)
}
