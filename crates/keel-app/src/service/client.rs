//! [`Setup`]'s outbound HTTP clients, one per `upstreams` entry (feature `client`).

use keel_config::Section;

use super::{Setup, SetupError, misconfigured};

impl<C: Section> Setup<C> {
    /// A client for the upstream `upstreams.<name>`, with its breaker, bulkhead, retries,
    /// timeouts and size cap; adds the readiness check `upstream:<name>` when `health_path` is set.
    pub fn http_client(&mut self, name: &str) -> Result<keel_http::client::Client, SetupError> {
        self.client(name, true)
    }

    /// [`Setup::http_client`] whose readiness check (with `health_path` set) never fails this
    /// service's readiness, whatever `upstreams.<name>.required` says: it reports `degraded`.
    /// For a caller that stays useful while the upstream is down, because the upstream's
    /// breaker answers its calls with a quick 503 — a gateway, whose other routes still work.
    /// The breaker's recovery probe of `health_path` is unchanged.
    pub fn http_client_optional(&mut self, name: &str) -> Result<keel_http::client::Client, SetupError> {
        self.client(name, false)
    }

    /// A client named `name` (its breaker, bulkhead and metrics labels) for `cfg`, which need
    /// not be a section of `upstreams`: a second client of an upstream for one class of calls,
    /// so that their failures open a breaker of their own and their concurrency has its own
    /// bulkhead (a gateway's full-text searches next to the rest of a service's API). It adds
    /// no readiness check.
    ///
    /// ```ignore
    /// let mut cfg = s.keel().upstreams["events"].clone();
    /// cfg.retry.max_attempts = 1;
    /// let searches = s.http_client_for("events_search", &cfg)?;
    /// ```
    pub fn http_client_for(
        &mut self,
        name: &str,
        cfg: &keel_http::client::UpstreamConfig,
    ) -> Result<keel_http::client::Client, SetupError> {
        if let Some(c) = self.clients.get(name) {
            return Ok(c.clone());
        }
        let breaker = self.breakers()?.get_or_create(name, &cfg.breaker);
        if self.client_metrics.is_none() {
            self.client_metrics = Some(keel_http::client::ClientMetrics::new(&self.metrics)?);
        }
        let client = keel_http::client::Client::new(name, cfg, breaker, self.client_metrics.clone())?;
        self.clients.insert(name.to_owned(), client.clone());
        Ok(client)
    }

    /// The `upstreams.<name>` section, or the error naming it.
    pub(super) fn upstream(&self, name: &str) -> Result<keel_http::client::UpstreamConfig, SetupError> {
        self.config
            .keel
            .upstreams
            .get(name)
            .cloned()
            .ok_or_else(|| misconfigured(&format!("upstreams.{name}"), "is not configured"))
    }

    fn client(&mut self, name: &str, may_fail_readiness: bool) -> Result<keel_http::client::Client, SetupError> {
        if let Some(c) = self.clients.get(name) {
            return Ok(c.clone());
        }
        let mut cfg = self.upstream(name)?;
        cfg.required &= may_fail_readiness;
        let breaker = self.breakers()?.get_or_create(name, &cfg.breaker);
        if self.client_metrics.is_none() {
            self.client_metrics = Some(keel_http::client::ClientMetrics::new(&self.metrics)?);
        }
        let client = keel_http::client::Client::new(name, &cfg, breaker, self.client_metrics.clone())?;
        if let Some(check) = client.health_check() {
            self.health.add(check);
        }
        self.clients.insert(name.to_owned(), client.clone());
        Ok(client)
    }
}
