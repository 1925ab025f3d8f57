//! The live checks and their rules.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use regex::Regex;
use reqwest::{Client, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::LiveOptions;
use super::client::{self, Answer, Base, LIVENESS, METRICS, READINESS, STARTUP};
use super::service::{Exit, Service};
use crate::{Area, AuditError, Collector, Rule, Severity};

macro_rules! rule {
    ($name:ident, $id:literal, $sev:ident, $area:ident, $seed:literal, $title:literal, $why:literal, $fix:literal) => {
        pub(crate) static $name: Rule = Rule {
            id: $id,
            title: $title,
            severity: Severity::$sev,
            area: Area::$area,
            seed: $seed,
            why: $why,
            fix: $fix,
        };
    };
}

rule!(
    NO_LIVENESS,
    "live/no-liveness",
    Critical,
    Health,
    "seed 000 #1, seed 004 (health check endpoint inconsistency)",
    "The service answers a liveness probe",
    "Without a liveness endpoint the orchestrator cannot tell a hung process from a working one: it is never restarted, or it is probed on a path that proves nothing.",
    "Serve `GET /livez` (or `/health/live`): 200 while the process can serve at all, without touching dependencies."
);
rule!(
    NO_READINESS,
    "live/no-readiness",
    Critical,
    Health,
    "seed 000 #1, seed 003 P0 (readiness endpoints), seed 004",
    "The service answers a readiness probe",
    "Without a readiness endpoint traffic reaches instances that are starting, draining or cut off from their database, and every such request fails.",
    "Serve `GET /readyz` (or `/health/ready`): 200 only when the dependencies needed to serve are reachable, 503 otherwise."
);
rule!(
    NO_STARTUP,
    "live/no-startup-probe",
    Low,
    Health,
    "",
    "The service answers a startup probe",
    "Without a startup endpoint a slow start (migrations checked, caches warmed) must be covered by a long liveness delay, which also delays restarting a hung instance.",
    "Serve `GET /health/startup` (or `/startupz`): 503 until start-up completes, then 200."
);
rule!(
    READINESS_IGNORES_DEPENDENCY,
    "live/readiness-ignores-dependency",
    High,
    Health,
    "seed 004 (readiness probes check database connectivity)",
    "Readiness drops when a dependency is cut",
    "A readiness probe that stays green while the database is unreachable keeps routing traffic to an instance that can only fail it.",
    "Make readiness check each required dependency (a cached, bounded check), so it turns 503 within seconds of losing one."
);
rule!(
    LIVENESS_FOLLOWS_DEPENDENCY,
    "live/liveness-follows-dependency",
    High,
    Health,
    "seed 004 (liveness probes are lightweight; health checks don't depend on other services)",
    "Liveness stays up while a dependency is down",
    "A liveness probe that fails with a dependency makes the orchestrator restart every replica during a database outage: a partial outage becomes a total one, and restarts storm the database when it returns.",
    "Keep liveness about the process alone; report dependencies through readiness."
);
rule!(
    NO_RECOVERY,
    "live/readiness-no-recovery",
    Medium,
    Health,
    "seed 000 #3 (database connection not retried)",
    "Readiness recovers when the dependency returns",
    "A service that does not reconnect stays out of rotation after the dependency is back, until someone restarts it.",
    "Reconnect with backoff (a pool that re-dials, a managed connection) and let readiness follow the connection's state."
);
rule!(
    NO_METRICS,
    "live/no-metrics",
    High,
    Observability,
    "seed 003 P0 (Prometheus metrics), seed 000 #6",
    "The service serves /metrics",
    "Without metrics, errors and latency are invisible until users complain, and no alert can fire.",
    "Expose Prometheus metrics on `/metrics` (on the management port if you have one)."
);
rule!(
    METRICS_INVALID,
    "live/metrics-invalid",
    High,
    Observability,
    "",
    "/metrics is valid Prometheus exposition",
    "Prometheus drops a scrape that does not parse: every metric of the instance disappears at once.",
    "Use a Prometheus client library's encoder rather than writing the text by hand, and check it with `promtool check metrics`."
);
rule!(
    METRICS_NO_RED,
    "live/metrics-no-red",
    Medium,
    Observability,
    "seed 003 (metrics), seed 001 NEW-2",
    "/metrics has request rate, errors and duration (RED)",
    "Process metrics alone cannot say whether requests fail or slow down; SLOs and burn-rate alerts need a request counter by status and a duration histogram.",
    "Count requests by route, method and status (`http_server_requests_total`) and observe durations in a histogram (`http_server_request_duration_seconds`)."
);
rule!(
    SECURITY_HEADERS,
    "live/security-headers",
    Medium,
    Security,
    "seed 002 (security hardening measures)",
    "Responses carry security headers",
    "Without `X-Content-Type-Options`, frame protection and a referrer policy, browsers sniff content types, frame the pages and leak URLs to other sites.",
    "Set `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` (or CSP `frame-ancestors 'none'`) and `Referrer-Policy: no-referrer` on every response."
);
rule!(
    SERVER_BANNER,
    "live/server-banner",
    Low,
    Security,
    "",
    "Responses do not advertise the server and its version",
    "`X-Powered-By` and versioned `Server` headers tell an attacker which exploits to try first.",
    "Remove `X-Powered-By` (`app.disable('x-powered-by')`) and the version from `Server`."
);
rule!(
    CORS_LOOKALIKE,
    "live/cors-lookalike-origin",
    High,
    Security,
    "seed 000 #5, seed 004 (validate CORS in production)",
    "CORS refuses origins that are not listed, look-alikes included",
    "An API that answers `Access-Control-Allow-Origin` with `*` or with whatever origin asks (a look-alike of the real one included) can be called from any web page in a user's browser.",
    "Compare the `Origin` exactly against a configured list; never reflect it, never use `*` for an API with user data."
);
rule!(
    ERROR_LEAK,
    "live/error-leak",
    Medium,
    Security,
    "seed 004 (error responses don't leak internal details), seed 001 P2-1",
    "Error responses carry no internals (stack traces, SQL, paths)",
    "Stack traces, SQL errors and file paths in responses show an attacker the code, the database and the layout behind the API.",
    "Answer errors with a generic problem document (RFC 9457) and the request id; log the details server-side."
);
rule!(
    BAD_INPUT_500,
    "live/bad-input-500",
    Medium,
    Resilience,
    "seed 004 (input validation on all endpoints)",
    "Malformed requests get a 4xx, not a 500",
    "A 500 on malformed input means the input reached code that did not expect it: a crash, an exception or a query built from it, and an error budget spent by any client.",
    "Validate at the edge: reject malformed JSON, bad encodings and oversized URLs with 400/414 before they reach handlers."
);
rule!(
    NO_BODY_LIMIT,
    "live/no-body-limit",
    Medium,
    Resilience,
    "seed 001 P1-2 (missing response size limits)",
    "Request bodies are bounded",
    "A server that reads a 64 MiB body it did not ask for lets any client fill its memory with a few concurrent uploads.",
    "Limit request bodies (a few MiB at most, less per route) and answer 413 as soon as `Content-Length` says too much."
);
rule!(
    NO_RATE_LIMIT,
    "live/no-rate-limit",
    Medium,
    Security,
    "seed 000 #7, seed 001 P0-3, seed 003 P1",
    "Bursts from one client are rate limited",
    "Without a rate limit one client (a bug, a scraper, an attacker) takes the capacity every other client needs.",
    "Limit requests per client (and globally) and answer 429 with `Retry-After`."
);
rule!(
    SLOWLORIS,
    "live/slowloris",
    High,
    Resilience,
    "seed 000 #14 (timeouts)",
    "Slow headers are cut off (header read timeout)",
    "A client that sends headers a byte at a time holds a connection, and a worker, forever: a few hundred such clients take the service down (slowloris).",
    "Set a header read timeout (`ReadHeaderTimeout`, `headersTimeout`, Keel's `http.header_read_timeout`) of a few seconds."
);
rule!(
    BODY_TIMEOUT,
    "live/slow-body",
    Medium,
    Resilience,
    "seed 000 #14 (timeouts)",
    "Slow request bodies are cut off (request timeout)",
    "A body that trickles in holds the request, its memory and its handler open for as long as the client likes.",
    "Bound the whole request (`ReadTimeout`, `requestTimeout`, a request timeout layer) and answer 408."
);
rule!(
    IDLE,
    "live/idle-connections",
    Low,
    Resilience,
    "",
    "Idle keep-alive connections are closed",
    "Connections left open forever by idle clients pile up until the server or the load balancer runs out of file descriptors.",
    "Set an idle timeout (`IdleTimeout`, `keepAliveTimeout`, Keel's `http.idle_timeout`) shorter than the load balancer's."
);
rule!(
    LOGS_NOT_JSON,
    "live/logs-not-json",
    Medium,
    Observability,
    "seed 004 (structured JSON logging in production)",
    "Logs are JSON lines",
    "Plain-text logs cannot be filtered by field, joined on a request id or turned into alerts by the log pipeline.",
    "Log one JSON object per line to stdout, with timestamp, level, message and the request's ids."
);
rule!(
    NO_REQUEST_ID,
    "live/no-request-id",
    Low,
    Observability,
    "seed 001 NEW-5 (no request ID propagation)",
    "Requests carry an id, echoed and logged",
    "Without a request id a user's report cannot be matched to the log lines of the request that failed.",
    "Take `X-Request-Id` from the request (or make one), return it in the response and put it on every log line of the request."
);
rule!(
    NO_TRACE,
    "live/no-trace-propagation",
    Medium,
    Observability,
    "seed 000 #13, seed 000 #20 (context propagation not tested), seed 001 NEW-1",
    "Trace context (traceparent) is taken up",
    "A service that ignores the caller's `traceparent` starts a new trace: the request cannot be followed across services.",
    "Extract W3C trace context from incoming requests, continue the trace, and write the trace id into the logs."
);
rule!(
    ABRUPT_SHUTDOWN,
    "live/abrupt-shutdown",
    High,
    Resilience,
    "seed 000 #14, seed 004 (no graceful shutdown)",
    "SIGTERM drains in-flight requests and exits 0",
    "Each deploy sends SIGTERM: a service that dies on it, or drops the requests it is serving, fails users on every rollout.",
    "Handle SIGTERM: stop accepting, finish in-flight requests, close dependencies, exit 0."
);
rule!(
    SLOW_SHUTDOWN,
    "live/slow-shutdown",
    Medium,
    Resilience,
    "",
    "Shutdown completes within its bound",
    "A service still running long after SIGTERM is killed by the orchestrator (SIGKILL after the grace period), losing whatever it was finishing.",
    "Bound the drain (a shutdown timeout shorter than `terminationGracePeriodSeconds`) and close idle connections at once."
);

pub(crate) const RULES: &[&Rule] = &[
    &NO_LIVENESS,
    &NO_READINESS,
    &NO_STARTUP,
    &READINESS_IGNORES_DEPENDENCY,
    &LIVENESS_FOLLOWS_DEPENDENCY,
    &NO_RECOVERY,
    &NO_METRICS,
    &METRICS_INVALID,
    &METRICS_NO_RED,
    &SECURITY_HEADERS,
    &SERVER_BANNER,
    &CORS_LOOKALIKE,
    &ERROR_LEAK,
    &BAD_INPUT_500,
    &NO_BODY_LIMIT,
    &NO_RATE_LIMIT,
    &SLOWLORIS,
    &BODY_TIMEOUT,
    &IDLE,
    &LOGS_NOT_JSON,
    &NO_REQUEST_ID,
    &NO_TRACE,
    &ABRUPT_SHUTDOWN,
    &SLOW_SHUTDOWN,
];

/// Ids sent with requests, looked for later in the logs.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    pub(crate) request_id: String,
    pub(crate) request_id_echoed: bool,
    pub(crate) trace_id: String,
    pub(crate) trace_echoed: bool,
}

static LEAK: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)traceback \(most recent call last\)|goroutine \d+ \[|panicked at|\n\s+at [\w.<>$]+ \(|Exception in thread|\bSQLSTATE\b|syntax error at or near|You have an error in your SQL syntax|ORA-\d{5}|/usr/src/app/|/home/\w+/|node_modules/|\w\.go:\d+|\.py", line \d+|\.rs:\d+:\d+|\.java:\d+\)"#,
    )
    .ok()
});

fn ok(a: &Option<Answer>) -> bool {
    a.as_ref().is_some_and(|a| (200..300).contains(&a.status))
}

fn hex(n: usize) -> String {
    let mut s = String::new();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut x = seed as u64 ^ 0x9e37_79b9_7f4a_7c15;
    while s.len() < n {
        // xorshift: ids only need to be unlikely to appear by chance.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(n);
    s
}

/// Every request-level check, then the dependency cuts, `/metrics` and the rate limit.
pub(crate) async fn all(
    c: &Client,
    base: &Base,
    opts: &LiveOptions,
    proxies: &[(String, keel_testing::FaultProxy)],
    mut svc: Option<&mut Service>,
    out: &mut Collector,
) -> Result<Sent, AuditError> {
    let (live, ready) = probes(c, base, out).await;
    alive(&mut svc, "the probe checks")?;
    headers(c, base, opts, out).await;
    cors(c, base, opts, out).await;
    errors(c, base, opts, out).await;
    alive(&mut svc, "the error checks")?;
    body_limit(base, opts, out).await;
    alive(&mut svc, "the body-limit check")?;
    let sent = ids(c, base, opts, svc.is_some(), out).await;
    for (name, proxy) in proxies {
        cut(c, name, proxy, live.as_deref(), ready.as_deref(), opts.bound, out).await;
        alive(&mut svc, &format!("the {name} cut"))?;
    }
    metrics(c, base, out).await;
    rate_limit(c, base, opts, out).await;
    alive(&mut svc, "the rate-limit check")?;
    Ok(sent)
}

/// Fails the audit when the started service has exited: what follows would judge a dead
/// service (every request failing), and a crash is not a finding to score but the news.
pub(crate) fn alive(svc: &mut Option<&mut Service>, during: &str) -> Result<(), AuditError> {
    if let Some(s) = svc.as_deref_mut()
        && let Some(exit) = s.try_exit()
    {
        return Err(AuditError::Live(format!(
            "the service exited ({exit:?}) during {during}; its last output:\n{}",
            s.tail(20)
        )));
    }
    Ok(())
}

async fn probes(c: &Client, base: &Base, out: &mut Collector) -> (Option<String>, Option<String>) {
    for r in [&NO_LIVENESS, &NO_READINESS, &NO_STARTUP] {
        out.checked(r);
    }
    let live = client::find(c, base, LIVENESS).await;
    let ready = client::find(c, base, READINESS).await;
    match &live {
        None => out.find(&NO_LIVENESS, "", None, format!("none of {} answers", LIVENESS.join(", "))),
        Some((u, a)) if !(200..300).contains(&a.status) => {
            out.find(&NO_LIVENESS, "", None, format!("GET {u} answers {} while the service runs", a.status))
        }
        Some(_) => {}
    }
    match &ready {
        None => out.find(&NO_READINESS, "", None, format!("none of {} answers", READINESS.join(", "))),
        Some((u, a)) if !(200..300).contains(&a.status) => out.find(
            &NO_READINESS,
            "",
            None,
            format!("GET {u} answers {} with every dependency up: {}", a.status, crate::checks::excerpt(&a.body)),
        ),
        Some(_) => {}
    }
    if client::find(c, base, STARTUP).await.is_none() {
        out.find(&NO_STARTUP, "", None, format!("none of {} answers", STARTUP.join(", ")));
    }
    (live.map(|(u, _)| u), ready.map(|(u, _)| u))
}

async fn headers(c: &Client, base: &Base, opts: &LiveOptions, out: &mut Collector) {
    let Some(a) = client::get(c, &base.url(&opts.path)).await else { return };
    out.checked(&SECURITY_HEADERS);
    out.checked(&SERVER_BANNER);
    let mut missing = Vec::new();
    if !a.header("x-content-type-options").is_some_and(|v| v.eq_ignore_ascii_case("nosniff")) {
        missing.push("X-Content-Type-Options: nosniff");
    }
    let frame = a.header("x-frame-options").is_some()
        || a.header("content-security-policy").is_some_and(|v| v.contains("frame-ancestors"));
    if !frame {
        missing.push("X-Frame-Options or CSP frame-ancestors");
    }
    if a.header("referrer-policy").is_none() {
        missing.push("Referrer-Policy");
    }
    if !missing.is_empty() {
        out.find(&SECURITY_HEADERS, "", None, format!("GET {} ({}) lacks {}", opts.path, a.status, missing.join(", ")));
    }
    let mut banner = Vec::new();
    if let Some(p) = a.header("x-powered-by") {
        banner.push(format!("X-Powered-By: {p}"));
    }
    if let Some(s) = a.header("server").filter(|s| s.chars().any(|c| c.is_ascii_digit())) {
        banner.push(format!("Server: {s}"));
    }
    if !banner.is_empty() {
        out.find(&SERVER_BANNER, "", None, banner.join(", "));
    }
}

/// Origins no allow-list should accept: unrelated, `null`, and look-alikes of `allowed`.
fn lookalikes(allowed: Option<&str>) -> Vec<String> {
    let mut v = vec!["https://keel-audit.invalid".to_owned(), "null".to_owned()];
    if let Some(o) = allowed {
        let (scheme, host) = o.split_once("://").unwrap_or(("https", o));
        let host = host.trim_end_matches('/');
        let bare = host.split(':').next().unwrap_or(host);
        v.push(format!("{scheme}://{bare}.keel-audit.invalid"));
        v.push(format!("{scheme}://evil{bare}"));
        v.push(format!("{scheme}://{bare}:1"));
        if scheme == "https" {
            v.push(format!("http://{host}"));
        }
    }
    v
}

async fn cors(c: &Client, base: &Base, opts: &LiveOptions, out: &mut Collector) {
    let url = base.url(&opts.path);
    let mut checked = false;
    let mut bad = Vec::new();
    for origin in lookalikes(opts.origin.as_deref()) {
        let simple = client::send(c, Method::GET, &url, &[("origin", &origin)], None).await;
        let pre = client::send(
            c,
            Method::OPTIONS,
            &url,
            &[("origin", &origin), ("access-control-request-method", "POST")],
            None,
        )
        .await;
        for (kind, a) in [("GET", simple), ("preflight", pre)] {
            let Some(a) = a else { continue };
            checked = true;
            let creds = a.header("access-control-allow-credentials") == Some("true");
            match a.header("access-control-allow-origin") {
                Some("*") => bad.push(format!("{kind} from {origin}: Access-Control-Allow-Origin: *")),
                Some(v) if v == origin => bad
                    .push(format!("{kind} from {origin}: reflected{}", if creds { ", with credentials" } else { "" })),
                _ => {}
            }
        }
    }
    if checked {
        out.checked(&CORS_LOOKALIKE);
    }
    bad.dedup();
    if !bad.is_empty() {
        out.find(&CORS_LOOKALIKE, "", None, bad.join("; "));
    }
}

/// A request of the error checks: what it is, method, path, headers, body.
type Try<'a> = (String, Method, String, &'a [(&'a str, &'a str)], Option<Vec<u8>>);

async fn errors(c: &Client, base: &Base, opts: &LiveOptions, out: &mut Collector) {
    let missing = format!("/keel-audit-missing-{}", hex(8));
    let long = format!("{}?q={}", opts.path, "a".repeat(16 * 1024));
    let json = [("content-type", "application/json")];
    let xml = [("content-type", "application/xml")];
    let tries: Vec<Try<'_>> = vec![
        ("an unknown path".into(), Method::GET, missing, &[], None),
        ("malformed JSON".into(), Method::POST, opts.path.clone(), &json, Some(br#"{"name": "#.to_vec())),
        (
            "JSON of the wrong shape".into(),
            Method::POST,
            opts.path.clone(),
            &json,
            Some(br#"[1, {"a": null}, "x"]"#.to_vec()),
        ),
        ("an unexpected content type".into(), Method::POST, opts.path.clone(), &xml, Some(b"<a><b>".to_vec())),
        ("a bad percent-encoding".into(), Method::GET, "/%ff%fe/..%2f..%2fetc%2fpasswd".into(), &[], None),
        ("a 16 KiB query".into(), Method::GET, long, &[], None),
    ];
    let leak = LEAK.as_ref();
    let mut fives = Vec::new();
    let mut leaks = Vec::new();
    let mut answered = false;
    for (what, method, path, headers, body) in tries {
        let Some(a) = client::send(c, method.clone(), &base.url(&path), headers, body).await else { continue };
        answered = true;
        if a.status >= 500 && a.status != 503 {
            fives.push(format!("{what} ({method}): {}", a.status));
        }
        if let Some(m) = leak.and_then(|r| r.find(&a.body)) {
            leaks.push(format!("{what} ({method}): `{}`", m.as_str().trim()));
        }
    }
    if answered {
        out.checked(&ERROR_LEAK);
        out.checked(&BAD_INPUT_500);
    }
    if !fives.is_empty() {
        out.find(&BAD_INPUT_500, "", None, fives.join("; "));
    }
    if !leaks.is_empty() {
        out.find(&ERROR_LEAK, "", None, leaks.join("; "));
    }
}

/// Sends a 64 MiB body and watches whether the server reads it all before answering.
async fn body_limit(base: &Base, opts: &LiveOptions, out: &mut Collector) {
    const SIZE: usize = 64 << 20;
    let path = &opts.path;
    let Some(s) = client::connect(base.addr).await else { return };
    let (mut r, mut w) = s.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: keel-audit\r\n{extra}Content-Type: application/json\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n",
        base.host,
        extra = base.extra
    );
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(60), r.read(&mut buf)).await.ok()?.ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        text.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).map(|st| (st, Instant::now()))
    });
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    let mut closed = w.write_all(head.as_bytes()).await.is_err();
    // A server reading slowly is given a minute for the whole body.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !closed && sent < SIZE {
        if reader.is_finished() || Instant::now() > deadline {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(10), w.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => closed = true,
        }
    }
    let done = Instant::now();
    let answer = reader.await.ok().flatten();
    out.checked(&NO_BODY_LIMIT);
    match answer {
        Some((413, _)) => {}
        // Answered before the whole body was sent: nothing was buffered.
        Some((_, at)) if sent < SIZE || at < done => {}
        Some((status, _)) => {
            out.find(&NO_BODY_LIMIT, "", None, format!("POST {path} with a 64 MiB body: read whole, then {status}"))
        }
        None if closed || sent < SIZE => {}
        None => out.find(&NO_BODY_LIMIT, "", None, format!("POST {path} with a 64 MiB body: read whole, no answer")),
    }
}

/// Sends a request id and a traceparent; the logs are searched for them after the run.
async fn ids(c: &Client, base: &Base, opts: &LiveOptions, running: bool, out: &mut Collector) -> Sent {
    let request_id = format!("keel-audit-{}", hex(16));
    let trace_id = hex(32);
    let traceparent = format!("00-{trace_id}-{}-01", hex(16));
    let a = client::send(
        c,
        Method::GET,
        &base.url(&opts.path),
        &[("x-request-id", &request_id), ("traceparent", &traceparent)],
        None,
    )
    .await;
    let request_id_echoed =
        a.as_ref().is_some_and(|a| a.headers.iter().any(|(_, v)| v.to_str().is_ok_and(|v| v.contains(&request_id))));
    let trace_echoed =
        a.as_ref().is_some_and(|a| a.headers.iter().any(|(_, v)| v.to_str().is_ok_and(|v| v.contains(&trace_id))));
    if !running {
        // Without the service's output only what comes back can be judged.
        out.checked(&NO_REQUEST_ID);
        if !request_id_echoed {
            out.find(
                &NO_REQUEST_ID,
                "",
                None,
                "the X-Request-Id sent is not echoed (the logs are read only with --run)",
            );
        }
        out.note("live/no-trace-propagation and live/logs-not-json need --run (the service's output)");
    }
    Sent { request_id, request_id_echoed, trace_id, trace_echoed }
}

/// After the run: JSON log lines, and the ids sent found in them (the trace id also among the
/// spans exported to the audit's OTLP receiver).
pub(crate) fn logs(svc: &Service, sent: &Sent, sink: Option<&super::otlp::Sink>, out: &mut Collector) {
    let all: Vec<String> = svc.lines().into_iter().filter(|l| !l.trim().is_empty()).collect();
    let is_json = |l: &str| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v.is_object());
    // Lines before the first JSON one are a wrapper's or a runtime's banner (`> app@1.0.0
    // start`, `Compiling …`), written before the service's logger exists: not counted.
    let lines: Vec<String> = match all.iter().position(|l| is_json(l)) {
        Some(first) => all[first..].to_vec(),
        None => all,
    };
    for r in [&LOGS_NOT_JSON, &NO_REQUEST_ID, &NO_TRACE] {
        out.checked(r);
    }
    let json =
        lines.iter().filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v.is_object())).count();
    if lines.is_empty() {
        out.find(&LOGS_NOT_JSON, "", None, "the service wrote no log line at all");
    } else if json * 10 < lines.len() * 9 {
        let sample =
            lines.iter().find(|l| serde_json::from_str::<serde_json::Value>(l).is_err()).cloned().unwrap_or_default();
        out.find(
            &LOGS_NOT_JSON,
            "",
            None,
            format!("{json} of {} lines are JSON objects; e.g. `{}`", lines.len(), crate::checks::excerpt(&sample)),
        );
    }
    let logged = |id: &str| lines.iter().any(|l| l.contains(id));
    if !logged(&sent.request_id) {
        out.find(
            &NO_REQUEST_ID,
            "",
            None,
            format!(
                "the X-Request-Id sent is not in the logs{}",
                if sent.request_id_echoed { " (it is echoed)" } else { " nor echoed" }
            ),
        );
    }
    let exported = sink.is_some_and(|s| s.saw(&sent.trace_id));
    if !sent.trace_echoed && !logged(&sent.trace_id) && !exported {
        out.find(
            &NO_TRACE,
            "",
            None,
            "the trace id of the traceparent sent is in no response header, log line or exported span",
        );
    }
}

/// Cuts one dependency: readiness must drop within the bound while liveness stays up, then
/// recover once the dependency is back.
async fn cut(
    c: &Client,
    name: &str,
    proxy: &keel_testing::FaultProxy,
    live: Option<&str>,
    ready: Option<&str>,
    bound: Duration,
    out: &mut Collector,
) {
    let Some(ready) = ready else {
        out.note(format!("{name}: the cut was not tried, the service has no readiness endpoint"));
        return;
    };
    if !ok(&client::get(c, ready).await) {
        out.note(format!("{name}: the cut was not tried, {ready} was not 2xx before it"));
        return;
    }
    for r in [&READINESS_IGNORES_DEPENDENCY, &LIVENESS_FOLLOWS_DEPENDENCY, &NO_RECOVERY] {
        out.checked(r);
    }
    proxy.take_down();
    let start = Instant::now();
    // Each request bounded by what is left of the bound (at most 2 s).
    let within = |since: Instant| {
        bound.saturating_sub(since.elapsed()).clamp(Duration::from_millis(100), Duration::from_secs(2))
    };
    let mut dropped = None;
    let mut live_failed = None;
    while start.elapsed() < bound {
        if dropped.is_none() && !ok(&client::send_within(c, Method::GET, ready, &[], None, within(start)).await) {
            dropped = Some(start.elapsed());
        }
        if let Some(l) = live
            && live_failed.is_none()
        {
            let a = client::send_within(c, Method::GET, l, &[], None, within(start)).await;
            if !ok(&a) {
                live_failed = Some(a.map_or("no answer".to_owned(), |a| a.status.to_string()));
            }
        }
        // Liveness is watched a few seconds past the drop: a restart loop shows up there.
        if dropped.is_some_and(|d| start.elapsed() > d + Duration::from_secs(3)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if dropped.is_none() {
        out.find(
            &READINESS_IGNORES_DEPENDENCY,
            "",
            None,
            format!("{name} cut: {ready} stayed 2xx for {}s", bound.as_secs()),
        );
    }
    if let Some(status) = live_failed {
        out.find(
            &LIVENESS_FOLLOWS_DEPENDENCY,
            "",
            None,
            format!("{name} cut: liveness {} answered {status}", live.unwrap_or_default()),
        );
    }
    proxy.restore();
    let back = Instant::now();
    let mut recovered = false;
    while back.elapsed() < bound {
        if ok(&client::send_within(c, Method::GET, ready, &[], None, within(back)).await) {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !recovered {
        out.find(&NO_RECOVERY, "", None, format!("{name} restored: {ready} not 2xx again within {}s", bound.as_secs()));
    }
}

async fn metrics(c: &Client, base: &Base, out: &mut Collector) {
    out.checked(&NO_METRICS);
    // A catch-all page (HTML) on /metrics is not metrics.
    let text =
        |a: &Answer| a.header("content-type").is_none_or(|t| t.starts_with("text/plain") || t.contains("openmetrics"));
    let Some((url, a)) = client::find(c, base, METRICS).await.filter(|(_, a)| a.status == 200 && text(a)) else {
        out.find(&NO_METRICS, "", None, format!("none of {} answers 200", METRICS.join(", ")));
        return;
    };
    out.checked(&METRICS_INVALID);
    out.checked(&METRICS_NO_RED);
    // Validity is promtool's word (Prometheus's own parser); its lint remarks are not errors.
    match promtool_metrics(&a.body).await {
        Ok(()) => {}
        Err(Some(e)) => {
            out.find(&METRICS_INVALID, "", None, format!("{url}: {}", crate::checks::excerpt(&e)));
            return;
        }
        Err(None) => out.note(
            "promtool is not installed: /metrics was read but not validated (install Debian's `prometheus` package)",
        ),
    }
    let families = exposition_families(&a.body);
    const STATUS: &[&str] =
        &["code", "status", "status_code", "http_status_code", "http_response_status_code", "response_code"];
    let mut counter = false;
    let mut duration = false;
    // The client libraries' own families (`promhttp_metric_handler_requests_total`,
    // `go_gc_duration_seconds`) say nothing about the service's requests.
    const RUNTIME: &[&str] =
        &["go_", "process_", "promhttp_", "nodejs_", "python_", "jvm_", "dotnet_", "ruby_", "tokio_"];
    for (name, (kind, labels)) in &families {
        let n = name.to_ascii_lowercase();
        if RUNTIME.iter().any(|p| n.starts_with(p)) {
            continue;
        }
        let http = n.contains("http") || n.contains("request") || n.contains("grpc_server");
        if kind == "counter" && http && labels.iter().any(|l| STATUS.contains(&l.as_str())) {
            counter = true;
        }
        if (kind == "histogram" || kind == "summary")
            && http
            && (n.contains("duration") || n.contains("latency") || n.contains("seconds"))
        {
            duration = true;
        }
    }
    let mut missing = Vec::new();
    if !counter {
        missing.push("a request counter with a status label");
    }
    if !duration {
        missing.push("a request-duration histogram");
    }
    if !missing.is_empty() {
        out.find(&METRICS_NO_RED, "", None, format!("{url}: no {}", missing.join(", no ")));
    }
}

/// `promtool check metrics` on an exposition: `Err(Some(why))` when it does not parse,
/// `Err(None)` when promtool is not installed.
async fn promtool_metrics(text: &str) -> Result<(), Option<String>> {
    let child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else { return Err(None) };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(text.as_bytes()).await;
    }
    let Ok(Ok(o)) = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await else {
        return Err(Some("promtool check metrics did not finish within 10 s".into()));
    };
    let said = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    // Exit 1 and a parsing error: not valid. Exit 3: lint remarks on a valid exposition.
    if o.status.code() == Some(1) || said.contains("parsing error") {
        return Err(Some(
            said.lines().find(|l| l.contains("error")).unwrap_or("promtool check metrics failed").to_owned(),
        ));
    }
    Ok(())
}

/// The metric families of a Prometheus text exposition: name → (type, label names), from the
/// `# TYPE` lines and the samples' label names (a sample `x_bucket`, `x_sum` or `x_count`
/// belongs to `x`). Enough to look for RED families; validity is promtool's.
fn exposition_families(text: &str) -> std::collections::BTreeMap<String, (String, std::collections::BTreeSet<String>)> {
    let mut families: std::collections::BTreeMap<String, (String, std::collections::BTreeSet<String>)> =
        Default::default();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                families.entry(name.to_owned()).or_default().0 = kind.to_ascii_lowercase();
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains_key(*f)))
            .unwrap_or(name)
            .to_owned();
        let labels = families.entry(family).or_default();
        if line[name_end..].starts_with('{') {
            labels.1.extend(label_names(&line[name_end + 1..]));
        }
    }
    families
}

/// The label names of `a="x",b="y"}…`: names before `=`, quoted values skipped.
fn label_names(s: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut name = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '}' => break,
            '=' => {
                names.push(std::mem::take(&mut name).trim().trim_start_matches(',').trim().to_owned());
                // The quoted value, escapes included.
                if chars.next() == Some('"') {
                    let mut escaped = false;
                    for v in chars.by_ref() {
                        if escaped {
                            escaped = false;
                        } else if v == '\\' {
                            escaped = true;
                        } else if v == '"' {
                            break;
                        }
                    }
                }
            }
            c => name.push(c),
        }
    }
    names
}

async fn rate_limit(c: &Client, base: &Base, opts: &LiveOptions, out: &mut Collector) {
    let url = base.url(&opts.path);
    let mut statuses = Vec::new();
    let mut left = opts.burst;
    while left > 0 {
        let n = left.min(50);
        left -= n;
        let batch = (0..n).map(|_| {
            let (c, url) = (c.clone(), url.clone());
            async move { client::get(&c, &url).await }
        });
        statuses.extend(
            futures_join(batch).await.into_iter().flatten().map(|a| (a.status, a.header("retry-after").is_some())),
        );
        if statuses.iter().any(|(s, _)| *s == 429) {
            break;
        }
    }
    if statuses.is_empty() {
        return;
    }
    out.checked(&NO_RATE_LIMIT);
    if !statuses.iter().any(|(s, _)| *s == 429) {
        out.find(&NO_RATE_LIMIT, "", None, format!("{} GET {} in bursts of 50: no 429", statuses.len(), opts.path));
    }
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut v = Vec::new();
    for h in handles {
        if let Ok(o) = h.await {
            v.push(o);
        }
    }
    v
}

/// SIGTERM with a request in flight: it must complete, and the process exit 0 within the bound
/// (measured from the signal).
pub(crate) async fn drain(c: &Client, base: &Base, opts: &LiveOptions, svc: &mut Service, out: &mut Collector) {
    out.checked(&ABRUPT_SHUTDOWN);
    out.checked(&SLOW_SHUTDOWN);
    // In flight: headers sent and 5 of the body's 8 bytes (`{"a":` now, ` 1}` after SIGTERM).
    if let Some(exit) = svc.try_exit() {
        out.note(format!("live/abrupt-shutdown: the service had already exited ({exit:?}) before SIGTERM"));
        return;
    }
    let mut inflight = match client::connect(base.addr).await {
        Some(mut s) => {
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: keel-audit\r\n{extra}Content-Type: application/json\r\nContent-Length: 8\r\nConnection: close\r\n\r\n{{\"a\":",
                opts.path,
                base.host,
                extra = base.extra
            );
            if s.write_all(head.as_bytes()).await.is_ok() { Some(s) } else { None }
        }
        None => None,
    };
    let slow = opts.slow_path.as_ref().map(|p| {
        let c = c.clone();
        let url = base.url(p);
        let within = opts.bound + Duration::from_secs(1);
        tokio::spawn(async move { client::send_within(&c, Method::GET, &url, &[], None, within).await })
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A server that answered before the body was complete did not keep the request in flight:
    // the check then proves nothing about draining (a --slow-path or a --path whose handler
    // reads the body does).
    let mut early = [0u8; 1];
    let answered_early = match inflight.as_mut() {
        Some(s) => {
            matches!(tokio::time::timeout(Duration::from_millis(50), s.peek(&mut early)).await, Ok(Ok(n)) if n > 0)
        }
        None => false,
    };
    if answered_early {
        inflight = None;
        if slow.is_none() {
            out.note(format!(
                "live/abrupt-shutdown: POST {} was answered before its body was complete, so no request was in flight at SIGTERM; give --slow-path or a --path whose handler reads the body",
                opts.path
            ));
        }
    }
    if !svc.terminate() {
        out.note("live/abrupt-shutdown: could not send SIGTERM");
        return;
    }
    let signalled = Instant::now();
    let left = || opts.bound.saturating_sub(signalled.elapsed());
    let mut problems = Vec::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(s) = inflight.as_mut() {
        let mut buf = vec![0u8; 1024];
        let finished = s.write_all(b" 1}").await.is_ok();
        let n = if finished {
            tokio::time::timeout(left(), s.read(&mut buf)).await.ok().and_then(Result::ok).unwrap_or(0)
        } else {
            0
        };
        let status = String::from_utf8_lossy(&buf[..n]).split_whitespace().nth(1).and_then(|v| v.parse::<u16>().ok());
        match status {
            None => {
                problems.push(format!("a POST {} in flight at SIGTERM got no response (connection closed)", opts.path))
            }
            Some(st @ 502..=504) => {
                problems.push(format!("a POST {} in flight at SIGTERM was refused ({st})", opts.path))
            }
            Some(_) => {}
        }
    }
    if let Some(h) = slow {
        match tokio::time::timeout(left(), h).await.ok().and_then(Result::ok).flatten() {
            Some(a) if (200..300).contains(&a.status) => {}
            Some(a) => problems.push(format!("the slow request in flight at SIGTERM answered {}", a.status)),
            None => problems.push("the slow request in flight at SIGTERM got no response".to_owned()),
        }
    }
    let exit = svc.wait(left()).await;
    // A wrapper may exit and leave what it started running: the group must be gone too.
    if exit.is_some() {
        while svc.group_alive() && !left().is_zero() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if svc.group_alive() {
            out.find(
                &SLOW_SHUTDOWN,
                "",
                None,
                format!(
                    "the command exited but a process it started still ran {}s after SIGTERM (killed)",
                    opts.bound.as_secs()
                ),
            );
            svc.kill().await;
        }
    }
    match exit {
        Some((Exit::Code(0), _)) => {}
        Some((Exit::Code(code), _)) => problems.push(format!("exited {code}")),
        Some((Exit::Signal(sig), _)) => problems.push(format!("killed by signal {sig}: no SIGTERM handler")),
        None => {
            out.find(
                &SLOW_SHUTDOWN,
                "",
                None,
                format!("still running {}s after SIGTERM (killed)", opts.bound.as_secs()),
            );
            svc.kill().await;
        }
    }
    if !problems.is_empty() {
        out.find(&ABRUPT_SHUTDOWN, "", None, problems.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leak_pattern_compiles_and_matches_traces() {
        let re = LEAK.as_ref();
        assert!(re.is_some());
        for body in [
            "Traceback (most recent call last):\n  File \"app.py\", line 3",
            "Error: boom\n    at Object.<anonymous> (/usr/src/app/index.js:3:9)",
            "goroutine 1 [running]:",
            "ERROR: syntax error at or near \"FROM\" (SQLSTATE 42601)",
            "thread 'main' panicked at src/main.rs:3:5",
        ] {
            assert!(re.is_some_and(|r| r.is_match(body)), "{body}");
        }
        assert!(!re.is_some_and(|r| {
            r.is_match(r#"{"type":"about:blank","title":"Not Found","status":404,"request_id":"r-1"}"#)
        }));
    }

    #[tokio::test]
    async fn promtool_judges_the_exposition_and_ignores_its_lint() {
        if std::process::Command::new("promtool").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "promtool is required under CI=true (.ci/promtool.sh)");
            return;
        }
        assert_eq!(
            promtool_metrics("# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 1\n").await,
            Ok(())
        );
        // Lint remarks only (no _total suffix, no help): still valid.
        assert_eq!(promtool_metrics("# TYPE foo counter\nfoo 1\n").await, Ok(()));
        assert!(matches!(promtool_metrics("garbage{{ 1\n").await, Err(Some(e)) if e.contains("parsing error")));
    }

    #[test]
    fn exposition_families_with_types_and_label_names() {
        let text = "# HELP http_server_requests_total Requests.\n# TYPE http_server_requests_total counter\nhttp_server_requests_total{route=\"/a,{b}\",status=\"200\"} 3\n# TYPE http_server_request_duration_seconds histogram\nhttp_server_request_duration_seconds_bucket{route=\"/a\",le=\"0.1\"} 1\nhttp_server_request_duration_seconds_sum{route=\"/a\"} 0.2\nup 1\n";
        let f = exposition_families(text);
        assert_eq!(f["http_server_requests_total"].0, "counter");
        assert_eq!(
            f["http_server_requests_total"].1.iter().map(String::as_str).collect::<Vec<_>>(),
            ["route", "status"]
        );
        assert_eq!(f["http_server_request_duration_seconds"].0, "histogram");
        assert!(f["http_server_request_duration_seconds"].1.contains("le"));
        assert!(f.contains_key("up"));
    }

    #[test]
    fn lookalikes_of_an_allowed_origin() {
        let v = lookalikes(Some("https://app.example"));
        assert!(v.contains(&"https://app.example.keel-audit.invalid".to_owned()));
        assert!(v.contains(&"https://evilapp.example".to_owned()));
        assert!(v.contains(&"http://app.example".to_owned()));
        assert!(!v.contains(&"https://app.example".to_owned()));
    }
}
