//! `GET /admin/status`: what an operator wants to see at a glance — build, uptime, probes,
//! workers, breakers, rate limits, flags and recent reloads — as one self-contained HTML page
//! (no scripts, no external assets, inline CSS) or as JSON.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::BuildInfo;
use keel_config::{Profile, ReloadEvent, ReloadLog};
use keel_features::{Flags, FlagsReport};
use keel_health::{Health, Kind, Report, Status};
use keel_rate_limit::{RateLimitPolicy, RateLimiter};
use keel_resilience::breaker;
use keel_workers::{WorkerStatus, Workers};

/// Everything the status page reads; built once at start-up, cheap to clone.
#[derive(Clone)]
pub(crate) struct Sources {
    pub(crate) build: BuildInfo,
    pub(crate) profile: Profile,
    pub(crate) started_at: SystemTime,
    pub(crate) started: Instant,
    pub(crate) health: Health,
    pub(crate) breakers: Option<breaker::Registry>,
    pub(crate) limiters: Vec<Arc<RateLimiter>>,
    pub(crate) workers: Workers,
    pub(crate) flags: Flags,
    pub(crate) reloads: ReloadLog,
}

#[derive(Debug, Serialize)]
pub(crate) struct StatusDoc {
    service: ServiceInfo,
    health: HealthInfo,
    workers: Vec<WorkerStatus>,
    breakers: Vec<BreakerInfo>,
    rate_limits: Vec<RateLimitInfo>,
    flags: FlagsReport,
    reloads: Vec<ReloadEvent>,
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
        StatusDoc {
            service: ServiceInfo {
                name: self.build.name.clone(),
                version: self.build.version.clone(),
                commit: self.build.commit.clone(),
                build: self.build.profile.clone(),
                profile: self.profile.as_str(),
                started_at: humantime::format_rfc3339_seconds(self.started_at).to_string(),
                uptime_seconds: self.started.elapsed().as_secs(),
                log_level: keel_telemetry::log_level(),
            },
            health: HealthInfo {
                liveness: self.health.report(Kind::Liveness),
                readiness: self.health.report(Kind::Readiness),
                startup: self.health.report(Kind::Startup),
            },
            workers: self.workers.statuses(),
            breakers: self
                .breakers
                .as_ref()
                .map(|b| b.states().into_iter().map(|(name, s)| BreakerInfo { name, state: s.as_str() }).collect())
                .unwrap_or_default(),
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
}

/// Escapes text for HTML element content and double-quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:20px;margin:0}header span{opacity:.8}
main{padding:8px 24px 32px;max-width:1400px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;margin:16px 0;padding:4px 16px 12px}
h2{font-size:16px;margin:12px 0 8px}h3{font-size:14px;margin:10px 0 4px;color:#4a5163}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceef2;vertical-align:top}
th{font-weight:600;color:#4a5163;font-size:12px;text-transform:uppercase;letter-spacing:.03em}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.b{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.up,.ok,.closed,.on{background:#dff5e3;color:#17692b}.degraded,.half_open,.skipped{background:#fff1cc;color:#7a5600}
.down,.error,.open,.panic{background:#fde0e0;color:#9b1c1c}.off,.none{background:#eceef2;color:#4a5163}
.muted{color:#7a8194}.err{color:#9b1c1c;font-size:12px;word-break:break-word}code{font-size:12px}
";

fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"b {}\">{}</span>", escape(class), escape(text))
}

fn status_badge(s: Status) -> String {
    let t = match s {
        Status::Up => "up",
        Status::Degraded => "degraded",
        Status::Down => "down",
    };
    badge(t, t)
}

/// A limiter's decider now: its backend (up), the local fallback or the failure mode (degraded).
fn in_force_badge(now: keel_rate_limit::InForce, backend: &str) -> String {
    use keel_rate_limit::InForce;
    match now {
        InForce::Backend => badge("up", backend),
        InForce::LocalFallback => badge("degraded", "local fallback"),
        InForce::FailureMode => badge("down", "failure mode"),
    }
}

fn opt(v: Option<&str>) -> String {
    v.map_or_else(|| "<span class=\"muted\">–</span>".to_owned(), escape)
}

fn ms(v: Option<u64>) -> String {
    v.map_or_else(|| "<span class=\"muted\">–</span>".to_owned(), |v| format!("{v} ms"))
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn empty_row(out: &mut String, cols: usize, text: &str) {
    let _ = write!(out, "<tr><td colspan=\"{cols}\" class=\"muted\">{}</td></tr>", escape(text));
}

/// The page. Every value from outside the code (names, errors, flag descriptions) is escaped.
pub(crate) fn render_html(doc: &StatusDoc) -> String {
    let s = &doc.service;
    let mut o = String::with_capacity(16 * 1024);
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width,initial-scale=1\"><title>{name} · status</title><style>{STYLE}</style></head><body>\
         <header><h1>{name}</h1><span>version {version}</span><span>commit <code>{commit}</code></span>\
         <span>profile {profile}</span><span>up {uptime}</span><span>ready {ready}</span></header><main>",
        name = escape(&s.name),
        version = escape(&s.version),
        commit = escape(&s.commit),
        profile = escape(s.profile),
        uptime = escape(&human(Duration::from_secs(s.uptime_seconds))),
        ready = status_badge(doc.health.readiness.status),
    );

    o.push_str("<section id=\"service\"><h2>Service</h2><table><tbody>");
    for (k, v) in [
        ("name", s.name.as_str()),
        ("version", &s.version),
        ("commit", &s.commit),
        ("build", &s.build),
        ("profile", s.profile),
        ("started", &s.started_at),
        ("log level", s.log_level.as_deref().unwrap_or("–")),
    ] {
        let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    }
    let _ = write!(o, "<tr><th>uptime</th><td>{}</td></tr>", escape(&human(Duration::from_secs(s.uptime_seconds))));
    o.push_str("</tbody></table></section>");

    o.push_str("<section id=\"health\"><h2>Health checks</h2>");
    for (title, r) in
        [("Liveness", &doc.health.liveness), ("Readiness", &doc.health.readiness), ("Startup", &doc.health.startup)]
    {
        let reason = r.reason.as_deref().map(|r| format!(" <span class=\"muted\">{}</span>", escape(r)));
        let _ = write!(o, "<h3>{title} {}{}</h3>", status_badge(r.status), reason.unwrap_or_default());
        o.push_str(
            "<table><thead><tr><th>check</th><th>status</th><th>required</th><th>age</th><th>latency</th>\
             <th>error</th></tr></thead><tbody>",
        );
        if r.checks.is_empty() {
            empty_row(&mut o, 6, "no checks");
        }
        for (name, c) in &r.checks {
            let _ = write!(
                o,
                "<tr class=\"check\"><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"err\">{}</td></tr>",
                escape(name),
                status_badge(c.status),
                if c.required { "yes" } else { "no" },
                ms(c.age_ms),
                ms(c.latency_ms),
                c.error.as_deref().map(escape).unwrap_or_default(),
            );
        }
        o.push_str("</tbody></table>");
    }
    o.push_str("</section>");

    o.push_str(
        "<section id=\"workers\"><h2>Workers</h2><table><thead><tr><th>worker</th><th>schedule</th><th>health</th>\
         <th>state</th><th>last run</th><th>last outcome</th><th>last success</th><th>runs</th><th>failures</th>\
         <th>panics</th><th>restarts</th><th>skipped</th><th>last error</th></tr></thead><tbody>",
    );
    if doc.workers.is_empty() {
        empty_row(&mut o, 13, "no workers");
    }
    for w in &doc.workers {
        let schedule = match w.interval_ms {
            Some(i) => format!("every {}", human_ms(i)),
            None => "continuous".to_owned(),
        };
        let health = if w.healthy { badge("up", "healthy") } else { badge("down", "unhealthy") };
        let state = match (w.alive, w.running) {
            (false, _) => badge("down", "stopped"),
            (true, true) => badge("on", "running"),
            (true, false) => badge("none", "idle"),
        };
        let outcome = w.last_outcome.map(|o| badge(o.as_str(), o.as_str())).unwrap_or_else(|| opt(None));
        let error =
            [w.health.as_deref(), w.last_error.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(" — ");
        let _ = write!(
            o,
            "<tr class=\"worker\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"err\">{}</td></tr>",
            escape(&w.name),
            escape(&schedule),
            health,
            state,
            opt(w.last_run_started.as_deref()),
            outcome,
            opt(w.last_success.as_deref()),
            w.runs,
            w.failures,
            w.panics,
            w.restarts,
            w.skipped_ticks,
            escape(&error),
        );
    }
    o.push_str("</tbody></table></section>");

    o.push_str(
        "<section id=\"breakers\"><h2>Circuit breakers</h2><table><thead><tr><th>breaker</th><th>state</th></tr></thead><tbody>",
    );
    if doc.breakers.is_empty() {
        empty_row(&mut o, 2, "no circuit breakers");
    }
    for b in &doc.breakers {
        let _ =
            write!(o, "<tr class=\"breaker\"><td>{}</td><td>{}</td></tr>", escape(&b.name), badge(b.state, b.state));
    }
    o.push_str("</tbody></table></section>");

    o.push_str(
        "<section id=\"rate-limits\"><h2>Rate limits</h2><table><thead><tr><th>policy</th><th>backend</th><th>limit</th>\
         <th>window</th><th>key</th><th>on backend error</th><th>in force</th></tr></thead><tbody>",
    );
    if doc.rate_limits.is_empty() {
        empty_row(&mut o, 7, "no rate-limit policies in use");
    }
    for r in &doc.rate_limits {
        let p = &r.policy;
        let key = p.key.iter().map(ToString::to_string).collect::<Vec<_>>().join(" + ");
        let backend =
            serde_json::to_value(p.backend).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let on_error = serde_json::to_value(r.on_backend_error)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = write!(
            o,
            "<tr class=\"rate-limit\"><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"in-force\">{}</td></tr>",
            escape(&r.name),
            escape(&backend),
            p.limit,
            escape(&humantime::format_duration(p.window).to_string()),
            escape(&key),
            escape(&on_error),
            in_force_badge(r.in_force, r.active_backend),
        );
    }
    o.push_str("</tbody></table></section>");

    let f = &doc.flags;
    let _ = write!(
        o,
        "<section id=\"flags\"><h2>Feature flags</h2><p class=\"muted\">{} · loaded {} · default environment {}</p>\
         <table><thead><tr><th>flag</th><th>enabled</th><th>strategy</th><th>rules</th><th>description</th><th>tags</th>\
         </tr></thead><tbody>",
        escape(f.file.as_deref().unwrap_or("no flags file")),
        escape(&f.loaded_at),
        escape(&f.environment),
    );
    if f.flags.is_empty() {
        empty_row(&mut o, 6, "no feature flags");
    }
    for flag in &f.flags {
        let rules = serde_json::to_string(&flag.def.rules).unwrap_or_default();
        let rules = if rules == "{}" { String::new() } else { rules };
        let _ = write!(
            o,
            "<tr class=\"flag\"><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            escape(&flag.key),
            if flag.def.enabled { badge("on", "on") } else { badge("off", "off") },
            escape(flag.def.strategy.as_str()),
            escape(&rules),
            escape(&flag.def.description),
            escape(&flag.def.tags.join(", ")),
        );
    }
    o.push_str("</tbody></table></section>");

    o.push_str(
        "<section id=\"reloads\"><h2>Recent configuration reloads</h2><table><thead><tr><th>when</th><th>what</th>\
         <th>outcome</th><th>detail</th></tr></thead><tbody>",
    );
    if doc.reloads.is_empty() {
        empty_row(&mut o, 4, "no reloads since start");
    }
    for r in &doc.reloads {
        let _ = write!(
            o,
            "<tr class=\"reload\"><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            escape(&r.at),
            escape(&r.what),
            if r.ok { badge("ok", "applied") } else { badge("error", "rejected") },
            if r.ok { "" } else { "err" },
            escape(&r.detail),
        );
    }
    o.push_str("</tbody></table></section></main></body></html>");
    o
}

fn human_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
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
        let sources = Sources {
            build: BuildInfo::new("svc<1>", "1.0", Some("abc"), "debug"),
            profile: Profile::Test,
            started_at: SystemTime::now(),
            started: Instant::now(),
            health,
            breakers: None,
            limiters: Vec::new(),
            workers: Workers::new(None, None).unwrap(),
            flags,
            reloads: ReloadLog::default(),
        };
        let html = render_html(&sources.snapshot());
        for raw in ["<script>", "<img", "<b>bold", "svc<1>"] {
            assert!(!html.contains(raw), "unescaped {raw}");
        }
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(html.contains("&lt;b&gt;bold&lt;/b&gt;"));
    }
}
