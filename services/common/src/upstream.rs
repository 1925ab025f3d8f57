//! The HTTP client a service uses to call another one (`upstreams.<name>`).

use keel::Setup;
use keel::app::SetupError;
use keel::config::{ConfigError, Profile};
use keel::http::client::{Client, UpstreamConfig};

use crate::services::Module;

/// The client for the calling service's upstream `to` (a row of the module table, named by its
/// short name): `upstreams.<short>` when configured; in development only,
/// `http://127.0.0.1:<port>` of that service with one retry; otherwise a set-up
/// error (exit 78) naming the missing key and its variable. Its readiness check (with
/// `health_path`) only degrades the caller's readiness: a down upstream fails the calls that need
/// it quickly (its breaker) while everything else goes on.
pub fn client<C: keel::config::Section>(s: &mut Setup<C>, to: &Module) -> Result<Client, SetupError> {
    let name = to.short;
    if s.keel().upstreams.contains_key(name) {
        return s.http_client_optional(name);
    }
    let cfg = development(s, name, to.port)?;
    tracing::warn!(upstream = name, base_url = %cfg.base_url, "upstream not configured; using the development default");
    let breaker = s.breakers()?.get_or_create(name, &cfg.breaker);
    Ok(Client::new(name, &cfg, breaker, None)?)
}

/// A second client of upstream `to` ([`client`]'s settings), called `alias`, for one class of
/// calls: its own breaker and bulkhead (`bulkhead` replaces the upstream's), and no retries,
/// since what it carries is expensive. Its failures never open the breaker of the upstream's
/// other calls.
pub fn client_for<C: keel::config::Section>(
    s: &mut Setup<C>,
    alias: &str,
    to: &Module,
    bulkhead: keel::resilience::bulkhead::BulkheadConfig,
) -> Result<Client, SetupError> {
    let mut cfg = match s.keel().upstreams.get(to.short) {
        Some(cfg) => cfg.clone(),
        None => development(s, to.short, to.port)?,
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
