//! The live audit: starts the service from a command (or takes its URL) and checks what it does,
//! not what its files say: probes and what they mean when a dependency is cut (through a fault
//! proxy run here), `/metrics`, headers, CORS with look-alike origins, error bodies, limits on
//! slow and idle clients and on bodies, rate limiting, JSON logs with request and trace ids (or
//! spans exported to an OTLP receiver run here), and draining on SIGTERM.
//!
//! Checks run in an order that keeps them apart: requests first, then the dependency cut, then
//! the slow-client checks together (each holds one connection for at most its bound), and the
//! SIGTERM drain last, since it ends the service.

mod checks;
mod client;
mod hold;
mod otlp;
mod service;

use std::net::SocketAddr;
use std::time::Duration;

use crate::{AuditError, Collector};

pub(crate) use checks::RULES;
pub use otlp::OtlpProtocol;

/// A dependency the service reaches through the auditor's fault proxy.
#[derive(Clone, Debug)]
pub struct Dependency {
    /// A name: `postgres`; the command sees the proxy's address as `KEEL_AUDIT_POSTGRES_ADDR`.
    pub name: String,
    /// Where the real dependency listens.
    pub target: SocketAddr,
}

impl Dependency {
    /// Parses `NAME=HOST:PORT` (`postgres=127.0.0.1:5432`).
    pub fn parse(s: &str) -> Result<Dependency, String> {
        let (name, target) = s.split_once('=').ok_or_else(|| format!("`{s}`: NAME=HOST:PORT"))?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(format!("`{name}`: a dependency name is letters, digits, `-` and `_`"));
        }
        let target = std::net::ToSocketAddrs::to_socket_addrs(target)
            .map_err(|e| format!("`{target}`: {e}"))?
            .next()
            .ok_or_else(|| format!("`{target}`: no address"))?;
        Ok(Dependency { name: name.to_owned(), target })
    }

    /// The variable holding the proxy's `host:port` for the command.
    pub fn env_var(&self) -> String {
        format!("KEEL_AUDIT_{}_ADDR", self.name.to_ascii_uppercase().replace('-', "_"))
    }
}

/// What the live audit talks to and how long it waits.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// The service's base URL (`http://127.0.0.1:8080`).
    pub url: String,
    /// Where its management endpoints (`/metrics`, probes) are, when not on `url`.
    pub management_url: Option<String>,
    /// A shell command that starts the service; without it the service must already run (and
    /// the log, trace and drain checks are skipped).
    pub run: Option<String>,
    /// Dependencies put behind the fault proxy.
    pub dependencies: Vec<Dependency>,
    /// An origin the service allows, to derive look-alikes from.
    pub origin: Option<String>,
    /// How long the service may take to answer after it is started.
    pub startup_timeout: Duration,
    /// The bound for slow clients, readiness reacting to a cut, and draining.
    pub bound: Duration,
    /// The bound for closing an idle keep-alive connection.
    pub idle_bound: Duration,
    /// Requests sent at once to look for rate limiting.
    pub burst: usize,
    /// The path used for the rate-limit, body-limit and trace checks.
    pub path: String,
    /// A path whose request takes a while, started before SIGTERM to prove it completes.
    pub slow_path: Option<String>,
    /// Headers sent with every request (`Authorization: Bearer …` for a service behind auth).
    pub headers: Vec<(String, String)>,
    /// The OTLP transport the started service is told to export spans with (the receiver
    /// serves every one).
    pub otlp_protocol: OtlpProtocol,
}

impl LiveOptions {
    /// Defaults for `url`: 60 s to start, 45 s bounds (past the common 30 s request timeout),
    /// 120 s idle, a burst of 200 on `/`, spans over OTLP `http/protobuf`.
    pub fn new(url: impl Into<String>) -> LiveOptions {
        LiveOptions {
            url: url.into(),
            management_url: None,
            run: None,
            dependencies: Vec::new(),
            origin: None,
            startup_timeout: Duration::from_secs(60),
            bound: Duration::from_secs(45),
            idle_bound: Duration::from_secs(120),
            burst: 200,
            path: "/".to_owned(),
            slow_path: None,
            headers: Vec::new(),
            otlp_protocol: OtlpProtocol::default(),
        }
    }
}

/// Runs the live audit, adding its findings to `out`.
pub(crate) async fn run(opts: &LiveOptions, out: &mut Collector) -> Result<(), AuditError> {
    let base = client::Base::parse(&opts.url, opts.management_url.as_deref(), &opts.headers)?;
    let mut proxies = Vec::new();
    let mut env = Vec::new();
    for d in &opts.dependencies {
        let proxy = keel_testing::FaultProxy::start(d.target, keel_testing::Mode::Forward)
            .await
            .map_err(|e| AuditError::Live(format!("fault proxy for {}: {e}", d.name)))?;
        env.push((d.env_var(), proxy.host_port()));
        proxies.push((d.name.clone(), proxy));
    }
    // With --run, spans the service exports come here (OTEL_EXPORTER_OTLP_* in its environment).
    let sink = match &opts.run {
        Some(_) => Some(otlp::Sink::start(opts.otlp_protocol).await?),
        None => None,
    };
    if let Some(s) = &sink {
        env.extend(s.env());
    }
    let mut svc = match &opts.run {
        Some(cmd) => Some(service::Service::start(cmd, &env)?),
        None => None,
    };
    let http = client::http(&opts.headers)?;
    let ready = client::wait_until_up(&http, &base, opts.startup_timeout, svc.as_mut()).await;
    if let Err(e) = ready {
        if let Some(s) = svc.as_mut() {
            s.kill().await;
        }
        return Err(e);
    }
    let sent = checks::all(&http, &base, opts, &proxies, svc.as_mut(), out).await?;
    hold::all(&base, opts, out).await;
    checks::alive(&mut svc.as_mut(), "the slow-client checks")?;
    if let Some(s) = svc.as_mut() {
        checks::drain(&http, &base, opts, s, out).await;
        // After the exit, so the lines written while draining are in.
        checks::logs(s, &sent, sink.as_ref(), out);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_parse_and_name_their_variable() {
        let d = Dependency::parse("postgres=127.0.0.1:5432");
        assert!(d.as_ref().is_ok_and(|d| d.env_var() == "KEEL_AUDIT_POSTGRES_ADDR" && d.target.port() == 5432));
        assert!(
            Dependency::parse("redis-cache=127.0.0.1:6379").is_ok_and(|d| d.env_var() == "KEEL_AUDIT_REDIS_CACHE_ADDR")
        );
        for bad in ["postgres", "=127.0.0.1:1", "pg sql=127.0.0.1:1", "pg=nowhere", "pg=127.0.0.1"] {
            assert!(Dependency::parse(bad).is_err(), "{bad}");
        }
    }
}
