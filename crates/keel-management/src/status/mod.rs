//! `GET /admin/status`: what an operator wants to see at a glance, for every service of the
//! process: build and configuration summary, listeners, health checks, traffic, upstreams and
//! their breakers, rate limits, workers, consumers and their lag, the outbox, feature flags and
//! recent reloads. HTML from compile-checked templates ([`page`]) or JSON.
//!
//! A service run alone shows itself. Services run together in one process (keel-app's `Group`)
//! register in one [`Process`]: each of their management listeners shows all of them, this one
//! first.

mod page;
mod traffic;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use keel_config::{Profile, ReloadEvent, ReloadLog, Secret};
use keel_features::{Flags, FlagsReport};
use keel_health::{Health, Kind, Report};
use keel_http::failures::{Failure, RecentFailures};

use crate::ops::{Figure, ProductFigures};
use keel_rate_limit::{RateLimitPolicy, RateLimiter};
use keel_resilience::breaker;
use keel_telemetry::Metrics;
use keel_workers::{WorkerStatus, Workers};

pub(crate) use page::{CSS, STYLESHEET, refresh, render_html, render_login};
use traffic::{ConsumerInfo, Families, OutboxInfo, TrafficInfo, UpstreamInfo};
pub use traffic::{SAMPLE_EVERY, Traffic};

/// Which service and build a page is about.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The service's name: the page's title and the admin token's variable prefix.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The git commit it was built from.
    pub commit: String,
    /// `debug` or `release`.
    pub build: String,
}

/// The bound listeners a page names.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The public HTTP listener.
    pub http: SocketAddr,
    /// The management listener (the public one when they share it).
    pub management: SocketAddr,
    /// The gRPC listener, when the service serves gRPC.
    pub grpc: Option<SocketAddr>,
}

/// Everything the status page reads of one service; built once at start-up, cheap to clone.
#[derive(Clone)]
pub struct Sources {
    /// The service and its build.
    pub identity: Identity,
    /// The configuration profile it runs under.
    pub profile: Profile,
    /// When it started, for the page's start time.
    pub started_at: SystemTime,
    /// When it started, for its uptime.
    pub started: Instant,
    /// Its health registry.
    pub health: Health,
    /// Its circuit breakers, if it has upstreams.
    pub breakers: Option<breaker::Registry>,
    /// Its rate limiters.
    pub limiters: Vec<Arc<RateLimiter>>,
    /// Its background workers.
    pub workers: Workers,
    /// Its feature flags.
    pub flags: Flags,
    /// Its recent configuration and log-level reloads.
    pub reloads: ReloadLog,
    /// Its metrics registry, read for traffic, upstream, consumer and outbox figures.
    pub metrics: Metrics,
    /// The last server errors its API answered.
    pub failures: RecentFailures,
    /// What it counts of its product, when it counts something ([`ProductFigures`]).
    pub product: Option<Product>,
    /// Its traffic rates (see [`Traffic::sample`]).
    pub traffic: Traffic,
    /// `(name, base URL)` of each upstream.
    pub upstreams: Vec<(String, String)>,
    /// The settings worth a glance, secrets masked.
    pub summary: Vec<(String, String)>,
    /// The effective configuration as `config check` prints it (secrets as `***`).
    pub config_yaml: String,
    /// The bound listeners, once bound.
    pub listeners: Arc<OnceLock<Bound>>,
}

/// The services of one process whose status pages show each other — those with the same admin
/// token: whoever may see one may see them all; cheap to clone.
#[derive(Clone, Default)]
pub struct Process {
    members: Arc<RwLock<Vec<Member>>>,
}

/// A member of a [`Process`] and its admin token.
type Member = (Sources, Option<Secret>);

impl Process {
    /// Adds a service, shown to the members with the same `admin_token`.
    pub fn join(&self, sources: Sources, admin_token: Option<Secret>) {
        self.members.write().unwrap_or_else(PoisonError::into_inner).push((sources, admin_token));
    }

    /// Every member but `name` whose admin token is `token`, in start order.
    fn others(&self, name: &str, token: Option<&Secret>) -> Vec<Sources> {
        let Some(token) = token else { return Vec::new() };
        let members = self.members.read().unwrap_or_else(PoisonError::into_inner);
        members
            .iter()
            .filter(|(m, t)| m.identity.name != name && t.as_ref().is_some_and(|t| t.expose() == token.expose()))
            .map(|(m, _)| m.clone())
            .collect()
    }
}

/// How often the page reads a service's [`ProductFigures`] at most.
pub const FIGURES_EVERY: Duration = Duration::from_secs(60);
/// How long a read of them may take before the page shows it as failed.
pub const FIGURES_TIMEOUT: Duration = Duration::from_secs(2);

/// A service's [`ProductFigures`] and the last reading of them; cheap to clone.
#[derive(Clone)]
pub struct Product {
    source: Arc<dyn ProductFigures>,
    last: Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, ProductInfo)>>>,
}

impl Product {
    /// Reads `source` for the page.
    pub fn new(source: Arc<dyn ProductFigures>) -> Self {
        Self { source, last: Arc::default() }
    }

    /// The figures, read again when the last reading is older than [`FIGURES_EVERY`]: a page
    /// reloading every 15 s, or several operators, do not query the database each time.
    async fn info(&self) -> ProductInfo {
        let mut last = self.last.lock().await;
        if let Some((at, info)) = last.as_ref()
            && at.elapsed() < FIGURES_EVERY
        {
            return info.clone();
        }
        let info = match tokio::time::timeout(FIGURES_TIMEOUT, self.source.figures()).await {
            Ok(Ok(figures)) => ProductInfo { figures, error: None, read_at: now_rfc3339() },
            Ok(Err(e)) => ProductInfo { figures: Vec::new(), error: Some(e), read_at: now_rfc3339() },
            Err(_) => ProductInfo {
                figures: Vec::new(),
                error: Some(format!("not read within {} s", FIGURES_TIMEOUT.as_secs())),
                read_at: now_rfc3339(),
            },
        };
        // A failed reading is tried again at the next view, not a minute later.
        if info.error.is_none() {
            *last = Some((tokio::time::Instant::now(), info.clone()));
        }
        info
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// A service's product figures as the page shows them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProductInfo {
    pub(crate) figures: Vec<Figure>,
    /// Why they could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// When they were read (RFC 3339, UTC).
    pub(crate) read_at: String,
}

/// The last server errors of a service.
#[derive(Debug, Serialize)]
struct FailuresInfo {
    /// Since start.
    total: u64,
    /// The last ones, newest first.
    items: Vec<Failure>,
}

/// The status of one service.
#[derive(Debug, Serialize)]
pub(crate) struct StatusDoc {
    service: ServiceInfo,
    listeners: Option<Listeners>,
    config: ConfigInfo,
    health: HealthInfo,
    traffic: TrafficInfo,
    /// The last server errors, newest first, and how many since start.
    recent_failures: FailuresInfo,
    /// Its product figures, when it counts some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) product: Option<ProductInfo>,
    upstreams: Vec<UpstreamInfo>,
    workers: Vec<WorkerStatus>,
    consumers: Vec<ConsumerInfo>,
    outbox: Option<OutboxInfo>,
    breakers: Vec<BreakerInfo>,
    rate_limits: Vec<RateLimitInfo>,
    flags: FlagsReport,
    reloads: Vec<ReloadEvent>,
}

/// `GET /admin/status` as JSON: this service's status (its fields at the top level), and the
/// other services of the process under `process`.
#[derive(Debug, Serialize)]
pub(crate) struct PageDoc {
    #[serde(flatten)]
    this: StatusDoc,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    process: Vec<StatusDoc>,
}

#[derive(Debug, Serialize)]
struct ServiceInfo {
    name: String,
    version: String,
    commit: String,
    build: String,
    profile: &'static str,
    started_at: String,
    uptime_seconds: u64,
    log_level: Option<String>,
}

#[derive(Debug, Serialize)]
struct Listeners {
    http: String,
    management: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc: Option<String>,
}

#[derive(Debug, Serialize)]
struct ConfigInfo {
    summary: Vec<(String, String)>,
    yaml: String,
}

#[derive(Debug, Serialize)]
struct HealthInfo {
    liveness: Report,
    readiness: Report,
    startup: Report,
}

#[derive(Debug, Serialize)]
struct BreakerInfo {
    name: String,
    state: &'static str,
}

#[derive(Debug, Serialize)]
struct RateLimitInfo {
    name: String,
    /// The effective failure mode (the policy's, else the profile's default).
    on_backend_error: keel_rate_limit::OnBackendError,
    /// What decides now: `backend`, `local_fallback` or `failure_mode`.
    in_force: keel_rate_limit::InForce,
    /// The backend deciding now: `redis`, `local`, or `none` (the failure mode).
    active_backend: &'static str,
    policy: RateLimitPolicy,
}

impl Sources {
    pub(crate) fn snapshot(&self) -> StatusDoc {
        let families = Families::gather(&self.metrics);
        let breakers: Vec<BreakerInfo> = self
            .breakers
            .as_ref()
            .map(|b| b.states().into_iter().map(|(name, s)| BreakerInfo { name, state: s.as_str() }).collect())
            .unwrap_or_default();
        let upstreams = self
            .upstreams
            .iter()
            .map(|(name, base_url)| {
                let (attempts, failed) = families.upstream_calls(name);
                UpstreamInfo {
                    name: name.clone(),
                    base_url: base_url.clone(),
                    breaker: breakers.iter().find(|b| b.name == *name).map_or("none", |b| b.state),
                    attempts,
                    failed,
                }
            })
            .collect();
        StatusDoc {
            service: ServiceInfo {
                name: self.identity.name.clone(),
                version: self.identity.version.clone(),
                commit: self.identity.commit.clone(),
                build: self.identity.build.clone(),
                profile: self.profile.as_str(),
                started_at: humantime::format_rfc3339_seconds(self.started_at).to_string(),
                uptime_seconds: self.started.elapsed().as_secs(),
                log_level: keel_telemetry::log_level(),
            },
            listeners: self.listeners.get().map(|b| Listeners {
                http: b.http.to_string(),
                management: b.management.to_string(),
                grpc: b.grpc.map(|g| g.to_string()),
            }),
            config: ConfigInfo { summary: self.summary.clone(), yaml: self.config_yaml.clone() },
            health: HealthInfo {
                liveness: self.health.report(Kind::Liveness),
                readiness: self.health.report(Kind::Readiness),
                startup: self.health.report(Kind::Startup),
            },
            traffic: self.traffic.info(&families),
            recent_failures: FailuresInfo { total: self.failures.total(), items: self.failures.list() },
            product: None,
            upstreams,
            workers: self.workers.statuses(),
            consumers: families.consumers(),
            outbox: families.outbox(),
            breakers,
            rate_limits: self
                .limiters
                .iter()
                .map(|l| RateLimitInfo {
                    name: l.name().to_owned(),
                    on_backend_error: l.on_backend_error(),
                    in_force: l.in_force(),
                    active_backend: l.active_backend(),
                    policy: l.policy().clone(),
                })
                .collect(),
            flags: self.flags.report(),
            reloads: self.reloads.recent(),
        }
    }

    /// This service's status and, in a group, the other services' that share its admin `token`.
    #[cfg(test)]
    pub(crate) fn page(&self, process: &Process, token: Option<&Secret>) -> PageDoc {
        let others = process.others(&self.identity.name, token);
        PageDoc { this: self.snapshot(), process: others.iter().map(Self::snapshot).collect() }
    }

    /// [`Sources::page`] with each service's product figures.
    pub(crate) async fn page_with_product(&self, process: &Process, token: Option<&Secret>) -> PageDoc {
        let others = process.others(&self.identity.name, token);
        let mut doc = PageDoc { this: self.snapshot(), process: others.iter().map(Self::snapshot).collect() };
        let all = std::iter::once(self).chain(others.iter());
        let infos = futures_util::future::join_all(all.map(|s| async move {
            match &s.product {
                Some(p) => Some(p.info().await),
                None => None,
            }
        }))
        .await;
        let mut infos = infos.into_iter();
        doc.this.product = infos.next().flatten();
        for (d, info) in doc.process.iter_mut().zip(infos) {
            d.product = info;
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::time::Duration;

    use super::*;

    fn sources(name: &str, health: Health, flags: Flags) -> Sources {
        let metrics = Metrics::new();
        Sources {
            identity: Identity {
                name: name.into(),
                version: "1.0".into(),
                commit: "abc".into(),
                build: "debug".into(),
            },
            profile: Profile::Test,
            started_at: SystemTime::now(),
            started: Instant::now(),
            health,
            breakers: None,
            limiters: Vec::new(),
            workers: Workers::new(None, None).unwrap(),
            flags,
            reloads: ReloadLog::default(),
            failures: RecentFailures::default(),
            product: None,
            traffic: Traffic::new(metrics.clone()),
            metrics,
            upstreams: vec![("up<1>".into(), "http://x/<y>".into())],
            summary: vec![("database".into(), "postgres://app:***@db/<x>".into())],
            config_yaml: "app:\n  name: \"<script>alert(1)</script>\"\n".into(),
            listeners: Arc::default(),
        }
    }

    #[tokio::test]
    async fn dynamic_text_is_escaped_in_the_page() {
        let health = Health::new(Duration::from_secs(5), Duration::from_secs(15), None);
        health.add(keel_health::Check::new("<script>x</script>", Kind::Readiness, || async {
            keel_health::Outcome::down("<img src=x onerror=alert(1)>")
        }));
        health.run_all().await;
        let flags = Flags::from_yaml(
            "f: {enabled: true, description: \"<b>bold</b>\"}",
            keel_features::FlagsOptions::default(),
        )
        .unwrap();
        let process = Process::default();
        let token = Secret::new("t".to_owned());
        let this = sources("svc<1>", health, flags.clone());
        process.join(this.clone(), Some(token.clone()));
        let other = |name: &str| {
            sources(name, Health::new(Duration::from_secs(5), Duration::from_secs(15), None), flags.clone())
        };
        process.join(other("other\"svc"), Some(token.clone()));
        process.join(other("foreign"), Some(Secret::new("another".to_owned())));
        process.join(other("tokenless"), None);
        let html = render_html(&this.page(&process, Some(&token)), false, None).unwrap();
        assert!(!html.contains("foreign") && !html.contains("tokenless"), "only members with the same token");
        for raw in ["<script>", "<img", "<b>bold", "svc<1>", "up<1>", "<y>", "<x>", "other\"svc"] {
            assert!(!html.contains(raw), "unescaped {raw}");
        }
        assert!(html.contains("&#60;script&#62;x&#60;/script&#62;"), "askama escapes with numeric entities");
        assert!(html.contains("&#60;b&#62;bold&#60;/b&#62;"));
        assert_eq!(html.matches("<article class=\"service\"").count(), 2, "both members are on the page");
        assert!(html.contains("<h2>Overview</h2>"));
        assert!(!html.contains("style="), "no inline style: the CSP allows the stylesheet only");
        let json = serde_json::to_value(this.page(&process, Some(&token))).unwrap();
        assert_eq!(json["service"]["name"], "svc<1>", "this service at the top level");
        assert_eq!(json["process"][0]["service"]["name"], "other\"svc", "the others under process");
    }

    /// Counts its reads; fails while `fail`, never answers while `hang`.
    #[derive(Default)]
    struct Counter {
        reads: std::sync::atomic::AtomicU32,
        fail: std::sync::atomic::AtomicBool,
        hang: std::sync::atomic::AtomicBool,
    }

    impl ProductFigures for Arc<Counter> {
        fn figures(&self) -> crate::ops::OpsFuture<'_, Vec<Figure>> {
            use std::sync::atomic::Ordering::SeqCst;
            let n = self.reads.fetch_add(1, SeqCst) + 1;
            let (fail, hang) = (self.fail.load(SeqCst), self.hang.load(SeqCst));
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                if fail {
                    return Err("database unavailable".to_owned());
                }
                Ok(vec![Figure { name: "sign-ups".into(), last_hour: u64::from(n), last_day: 10 }])
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn product_figures_are_read_once_a_minute_and_failures_are_not_kept() {
        use std::sync::atomic::Ordering::SeqCst;
        let counter = Arc::new(Counter::default());
        let product = Product::new(Arc::new(counter.clone()));
        let first = product.info().await;
        assert_eq!((first.figures[0].last_hour, first.error.as_deref()), (1, None));
        assert_eq!(product.info().await.figures[0].last_hour, 1, "kept for a minute");
        tokio::time::advance(FIGURES_EVERY).await;
        assert_eq!(product.info().await.figures[0].last_hour, 2, "read again after it");

        tokio::time::advance(FIGURES_EVERY).await;
        counter.fail.store(true, SeqCst);
        let failed = product.info().await;
        assert_eq!((failed.figures.len(), failed.error.as_deref()), (0, Some("database unavailable")));
        counter.fail.store(false, SeqCst);
        assert_eq!(product.info().await.figures[0].last_hour, 4, "a failure is read again at once");

        tokio::time::advance(FIGURES_EVERY).await;
        counter.hang.store(true, SeqCst);
        let slow = product.info().await;
        assert!(slow.error.as_deref().is_some_and(|e| e.contains("not read within 2 s")), "{slow:?}");
    }
}
