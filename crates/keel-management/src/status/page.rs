//! The operator page and its sign-in page, from the askama templates in `templates/admin/`
//! (auto-escaped: every value from outside the code — names, errors, flag descriptions,
//! configuration — is text, never markup). The stylesheet is `assets/admin.css`, served at
//! [`STYLESHEET`]; the pages load nothing else and run no script.

use std::time::Duration;

use askama::Template;

use super::traffic::Percentile;
use super::{PageDoc, StatusDoc};
use keel_health::{Report, Status};

/// Where the management listener serves `assets/admin.css`.
pub(crate) const STYLESHEET: &str = "/admin/static/admin.css";
/// The stylesheet.
pub(crate) const CSS: &str = include_str!("../../assets/admin.css");

struct Badge {
    class: &'static str,
    text: String,
}

fn badge(class: &'static str, text: impl Into<String>) -> Badge {
    Badge { class, text: text.into() }
}

fn status_badge(s: Status) -> Badge {
    match s {
        Status::Up => badge("up", "up"),
        Status::Degraded => badge("degraded", "degraded"),
        Status::Down => badge("down", "down"),
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Seconds from a metric as a duration: negative, NaN or past `Duration`'s range reads as 0 or
/// the largest.
fn secs(v: f64) -> Duration {
    Duration::try_from_secs_f64(v.max(0.0)).unwrap_or(Duration::MAX)
}

fn ms(v: Option<u64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v} ms"))
}

fn rate(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else if v < 0.1 {
        format!("{v:.3}")
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

fn seconds(s: f64) -> String {
    if s < 1.0 { format!("{} ms", (s * 1000.0 * 10.0).round() / 10.0) } else { format!("{s} s") }
}

/// A percentile as the bucket it lies in: `≤ 5 ms`, `5 ms – 25 ms`, `> 2.5 s`; `–` without one.
fn range(p: Option<&Percentile>) -> String {
    match p {
        None => "–".to_owned(),
        Some(Percentile { at_most_seconds: None, above_seconds, .. }) => format!("> {}", seconds(*above_seconds)),
        Some(Percentile { at_most_seconds: Some(top), above_seconds, .. }) if *above_seconds <= 0.0 => {
            format!("≤ {}", seconds(*top))
        }
        Some(Percentile { at_most_seconds: Some(top), above_seconds, .. }) => {
            format!("{} – {}", seconds(*above_seconds), seconds(*top))
        }
    }
}

/// The p99 of `latency`, as its bucket.
fn p99(latency: &[Percentile]) -> String {
    range(latency.iter().find(|p| p.quantile >= 0.99))
}

/// Each percentile of `latency`: `p50 ≤ 5 ms · p90 5 ms – 25 ms · p99 …`.
fn percentiles(latency: &[Percentile]) -> String {
    if latency.is_empty() {
        return "–".to_owned();
    }
    latency
        .iter()
        .map(|p| format!("p{} {}", (p.quantile * 100.0).round(), range(Some(p))))
        .collect::<Vec<_>>()
        .join(" · ")
}

struct CheckRow {
    name: String,
    status: Badge,
    required: &'static str,
    age: String,
    latency: String,
    error: String,
}

struct ProbeView {
    title: &'static str,
    status: Badge,
    reason: String,
    checks: Vec<CheckRow>,
}

fn probe(title: &'static str, r: &Report) -> ProbeView {
    ProbeView {
        title,
        status: status_badge(r.status),
        reason: r.reason.clone().unwrap_or_default(),
        checks: r
            .checks
            .iter()
            .map(|(name, c)| CheckRow {
                name: name.clone(),
                status: status_badge(c.status),
                required: if c.required { "yes" } else { "no" },
                age: ms(c.age_ms),
                latency: ms(c.latency_ms),
                error: c.error.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

struct RouteRow {
    method: String,
    route: String,
    rps: String,
    errors: String,
    p99: String,
}

struct UpstreamRow {
    name: String,
    base_url: String,
    breaker: Badge,
    attempts: u64,
    failed: u64,
}

struct WorkerRow {
    name: String,
    schedule: String,
    health: Badge,
    state: Badge,
    last_run: String,
    outcome: Option<Badge>,
    last_success: String,
    runs: u64,
    failures: u64,
    panics: u64,
    restarts: u64,
    skipped: u64,
    error: String,
}

struct ConsumerRow {
    topic: String,
    group: String,
    state: Badge,
    lag: String,
    handled: String,
}

struct RateLimitRow {
    name: String,
    backend: String,
    limit: u32,
    window: String,
    key: String,
    on_error: String,
    in_force: Badge,
}

struct FlagRow {
    key: String,
    enabled: Badge,
    strategy: String,
    rules: String,
    description: String,
    tags: String,
}

struct ReloadRow {
    at: String,
    what: String,
    outcome: Badge,
    ok: bool,
    detail: String,
}

struct OutboxView {
    pending: i64,
    oldest: String,
    published: u64,
    failures: u64,
    dead: u64,
    relay: Badge,
}

/// One service, ready for the template.
struct ServiceView {
    /// The id prefix of its sections (`<name>-health`, …).
    id: String,
    name: String,
    ready: Badge,
    uptime: String,
    facts: Vec<(&'static str, String)>,
    summary: Vec<(String, String)>,
    yaml: String,
    probes: Vec<ProbeView>,
    window: String,
    rps: String,
    errors: String,
    p99: String,
    /// p50, p90 and p99 as their buckets.
    latency: String,
    routes: Vec<RouteRow>,
    upstreams: Vec<UpstreamRow>,
    workers: Vec<WorkerRow>,
    workers_healthy: String,
    consumers: Vec<ConsumerRow>,
    lag: String,
    outbox: Option<OutboxView>,
    breakers: Vec<(String, Badge)>,
    rate_limits: Vec<RateLimitRow>,
    flags_source: String,
    flags: Vec<FlagRow>,
    reloads: Vec<ReloadRow>,
    /// Server errors since start, and the last ones.
    failures_total: u64,
    failures: Vec<keel_http::failures::Failure>,
    /// Its product figures, when it counts some.
    product: Option<super::ProductInfo>,
}

fn label<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn view(d: &StatusDoc) -> ServiceView {
    let s = &d.service;
    let t = &d.traffic;
    let mut facts = vec![
        ("version", s.version.clone()),
        ("commit", s.commit.clone()),
        ("build", s.build.clone()),
        ("profile", s.profile.to_owned()),
        ("started", s.started_at.clone()),
        ("uptime", human(Duration::from_secs(s.uptime_seconds))),
        ("log level", s.log_level.clone().unwrap_or_else(|| "–".to_owned())),
    ];
    if let Some(l) = &d.listeners {
        facts.push(("API listener", l.http.clone()));
        facts.push(("management listener", l.management.clone()));
        if let Some(g) = &l.grpc {
            facts.push(("gRPC listener", g.clone()));
        }
    }
    let workers: Vec<WorkerRow> = d
        .workers
        .iter()
        .map(|w| WorkerRow {
            name: w.name.clone(),
            schedule: match w.interval_ms {
                Some(i) => format!("every {}", humantime::format_duration(Duration::from_millis(i))),
                None => "continuous".to_owned(),
            },
            health: if w.healthy { badge("up", "healthy") } else { badge("down", "unhealthy") },
            state: match (w.alive, w.running) {
                (false, _) => badge("down", "stopped"),
                (true, true) => badge("on", "running"),
                (true, false) => badge("none", "idle"),
            },
            last_run: w.last_run_started.clone().unwrap_or_else(|| "–".to_owned()),
            outcome: w.last_outcome.map(|o| {
                let class = match o.as_str() {
                    "ok" => "ok",
                    "panic" => "panic",
                    "skipped" => "skipped",
                    _ => "error",
                };
                badge(class, o.as_str())
            }),
            last_success: w.last_success.clone().unwrap_or_else(|| "–".to_owned()),
            runs: w.runs,
            failures: w.failures,
            panics: w.panics,
            restarts: w.restarts,
            skipped: w.skipped_ticks,
            error: [w.health.as_deref(), w.last_error.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(" — "),
        })
        .collect();
    let healthy = d.workers.iter().filter(|w| w.healthy).count();
    let lag: i64 = d.consumers.iter().filter_map(|c| c.lag).sum();
    ServiceView {
        id: s.name.clone(),
        name: s.name.clone(),
        ready: status_badge(d.health.readiness.status),
        uptime: human(Duration::from_secs(s.uptime_seconds)),
        facts,
        summary: d.config.summary.clone(),
        yaml: d.config.yaml.clone(),
        probes: vec![
            probe("Liveness", &d.health.liveness),
            probe("Readiness", &d.health.readiness),
            probe("Startup", &d.health.startup),
        ],
        window: human(secs(t.window_seconds)),
        rps: rate(t.requests_per_second),
        errors: rate(t.server_errors_per_second),
        p99: p99(&t.latency),
        latency: percentiles(&t.latency),
        routes: t
            .routes
            .iter()
            .map(|r| RouteRow {
                method: r.method.clone(),
                route: r.route.clone(),
                rps: rate(r.requests_per_second),
                errors: rate(r.server_errors_per_second),
                p99: p99(&r.latency),
            })
            .collect(),
        upstreams: d
            .upstreams
            .iter()
            .map(|u| UpstreamRow {
                name: u.name.clone(),
                base_url: u.base_url.clone(),
                breaker: badge(
                    match u.breaker {
                        "closed" => "closed",
                        "open" => "open",
                        "half_open" => "half_open",
                        _ => "none",
                    },
                    u.breaker,
                ),
                attempts: u.attempts,
                failed: u.failed,
            })
            .collect(),
        workers_healthy: format!("{healthy}/{}", d.workers.len()),
        workers,
        consumers: d
            .consumers
            .iter()
            .map(|c| ConsumerRow {
                topic: c.topic.clone(),
                group: c.group.clone(),
                state: if c.paused { badge("degraded", "paused") } else { badge("up", "taking") },
                lag: c.lag.map_or_else(|| "–".to_owned(), |l| l.to_string()),
                handled: c.handled.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
            })
            .collect(),
        lag: if d.consumers.is_empty() { "–".to_owned() } else { lag.to_string() },
        outbox: d.outbox.as_ref().map(|o| OutboxView {
            pending: o.pending,
            oldest: human(secs(o.oldest_pending_age_seconds)),
            published: o.published,
            failures: o.publish_failures,
            dead: o.dead,
            relay: if o.relay_paused { badge("degraded", "paused: bus down") } else { badge("up", "relaying") },
        }),
        breakers: d
            .breakers
            .iter()
            .map(|b| {
                let class = match b.state {
                    "open" => "open",
                    "half_open" => "half_open",
                    _ => "closed",
                };
                (b.name.clone(), badge(class, b.state))
            })
            .collect(),
        rate_limits: d
            .rate_limits
            .iter()
            .map(|r| {
                use keel_rate_limit::InForce;
                let p = &r.policy;
                RateLimitRow {
                    name: r.name.clone(),
                    backend: label(&p.backend),
                    limit: p.limit,
                    window: humantime::format_duration(p.window).to_string(),
                    key: p.key.iter().map(ToString::to_string).collect::<Vec<_>>().join(" + "),
                    on_error: label(&r.on_backend_error),
                    in_force: match r.in_force {
                        InForce::Backend => badge("up", r.active_backend),
                        InForce::LocalFallback => badge("degraded", "local fallback"),
                        InForce::FailureMode => badge("down", "failure mode"),
                    },
                }
            })
            .collect(),
        flags_source: format!(
            "{} · loaded {} · default environment {}",
            d.flags.file.as_deref().unwrap_or("no flags file"),
            d.flags.loaded_at,
            d.flags.environment
        ),
        flags: d
            .flags
            .flags
            .iter()
            .map(|f| {
                let rules = serde_json::to_string(&f.def.rules).unwrap_or_default();
                FlagRow {
                    key: f.key.clone(),
                    enabled: if f.def.enabled { badge("on", "on") } else { badge("off", "off") },
                    strategy: f.def.strategy.as_str().to_owned(),
                    rules: if rules == "{}" { String::new() } else { rules },
                    description: f.def.description.clone(),
                    tags: f.def.tags.join(", "),
                }
            })
            .collect(),
        failures_total: d.recent_failures.total,
        failures: d.recent_failures.items.clone(),
        product: d.product.clone(),
        reloads: d
            .reloads
            .iter()
            .map(|r| ReloadRow {
                at: r.at.clone(),
                what: r.what.clone(),
                outcome: if r.ok { badge("ok", "applied") } else { badge("error", "rejected") },
                ok: r.ok,
                detail: r.detail.clone(),
            })
            .collect(),
    }
}

#[derive(Template)]
#[template(path = "admin/status.html")]
struct StatusPage {
    title: String,
    stylesheet: &'static str,
    services: Vec<ServiceView>,
    /// This service keeps an audit log: the header links to it.
    audit: bool,
    /// Seconds between reloads of the page; `None`: it does not reload.
    refresh: Option<u32>,
    /// Every service's product figures in one line per period, at the top.
    product: Vec<(&'static str, String)>,
}

/// The figures of every service, for the top of the page: `("Last hour", "sign-ups: 3 · joins: 12")`.
fn product_lines(services: &[ServiceView]) -> Vec<(&'static str, String)> {
    let figures: Vec<&crate::ops::Figure> =
        services.iter().filter_map(|s| s.product.as_ref()).flat_map(|p| &p.figures).collect();
    if figures.is_empty() {
        return Vec::new();
    }
    let line = |n: fn(&crate::ops::Figure) -> u64| {
        figures.iter().map(|f| format!("{}: {}", f.name, n(f))).collect::<Vec<_>>().join(" · ")
    };
    vec![("Last hour", line(|f| f.last_hour)), ("Last 24 hours", line(|f| f.last_day))]
}

/// How often the status page reloads itself unless asked otherwise (`?refresh=`).
pub(crate) const REFRESH: u32 = 15;

/// The reload period `?refresh=` asks for: `off`, or 5 to 300 seconds; [`REFRESH`] otherwise.
pub(crate) fn refresh(asked: Option<&str>) -> Option<u32> {
    match asked {
        Some("off") => None,
        Some(n) => Some(n.parse::<u32>().map_or(REFRESH, |n| n.clamp(5, 300))),
        None => Some(REFRESH),
    }
}

#[derive(Template)]
#[template(path = "admin/login.html")]
struct LoginPage<'a> {
    stylesheet: &'static str,
    service: &'a str,
    error: Option<&'a str>,
    token_setting: &'a str,
}

/// The operator page: this service first, then the others of the process.
pub(crate) fn render_html(doc: &PageDoc, audit: bool, refresh: Option<u32>) -> Result<String, askama::Error> {
    let services: Vec<ServiceView> = std::iter::once(&doc.this).chain(&doc.process).map(view).collect();
    let title = if services.len() > 1 {
        format!("{} and {} more · status", doc.this.service.name, services.len() - 1)
    } else {
        format!("{} · status", doc.this.service.name)
    };
    let product = product_lines(&services);
    StatusPage { title, stylesheet: STYLESHEET, services, audit, refresh, product }.render()
}

/// The sign-in form; `error` says why the last attempt failed.
pub(crate) fn render_login(service: &str, token_setting: &str, error: Option<&str>) -> Result<String, askama::Error> {
    LoginPage { stylesheet: STYLESHEET, service, error, token_setting }.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_reloads_every_15_s_unless_asked() {
        assert_eq!(refresh(None), Some(15));
        assert_eq!(refresh(Some("off")), None);
        assert_eq!(refresh(Some("60")), Some(60));
        assert_eq!(refresh(Some("1")), Some(5), "not faster than every 5 s");
        assert_eq!(refresh(Some("99999")), Some(300));
        assert_eq!(refresh(Some("soon")), Some(15));
    }

    #[test]
    fn percentiles_read_as_their_buckets() {
        let p = |above, at_most, quantile| Percentile { quantile, above_seconds: above, at_most_seconds: at_most };
        assert_eq!(range(None), "–");
        assert_eq!(range(Some(&p(0.0, Some(0.005), 0.5))), "≤ 5 ms");
        assert_eq!(range(Some(&p(0.005, Some(0.025), 0.9))), "5 ms – 25 ms");
        assert_eq!(range(Some(&p(0.5, Some(1.0), 0.99))), "500 ms – 1 s");
        assert_eq!(range(Some(&p(2.5, None, 0.99))), "> 2.5 s");
        assert_eq!(range(Some(&p(0.0, Some(0.0005), 0.5))), "≤ 0.5 ms");
        let all = [p(0.0, Some(0.005), 0.5), p(0.005, Some(0.025), 0.9), p(0.025, Some(0.1), 0.99)];
        assert_eq!(percentiles(&all), "p50 ≤ 5 ms · p90 5 ms – 25 ms · p99 25 ms – 100 ms");
        assert_eq!(p99(&all), "25 ms – 100 ms");
        assert_eq!(percentiles(&[]), "–");
    }
}
