//! Service level objectives, declared in one file per service, turned into Prometheus recording
//! rules and multi-window, multi-burn-rate alerts, beside alerts on what Keel itself exports.
//!
//! This is `keel-slo`, re-exported by `keel` as `keel::slo` and run by every Keel binary as
//! `<binary> slo rules FILE...`; of Keel's crates it depends on `keel-config` alone.
//!
//! ```yaml
//! service: gateway              # the `service` label of every rule, and the default selector
//! selector: job="gateway"       # PromQL label matchers of the service's series (default job="<service>")
//! objectives:
//!   - name: availability
//!     sli: availability         # answers that are not 5xx, over http_server_requests_total
//!     objective: 0.999          # over the 30-day window
//!   - name: latency
//!     sli: latency              # answers within `threshold`, over http_server_request_duration_seconds
//!     objective: 0.99
//!     threshold: 500ms          # one of Keel's histogram bucket bounds
//!     routes: ["/api/v1/events", "/api/v1/events/{id}"]   # optional: only these route templates
//! alerts:                       # optional: thresholds of the Keel alerts (defaults shown in docs)
//!   outbox_oldest_pending_age: 5m
//! ```
//!
//! For each objective, [`rules`] records the error ratio (`slo:sli_error:ratio_rate<window>`)
//! over 5m, 30m, 1h, 2h, 6h, 1d and 3d, and alerts when the error budget burns at the SRE
//! workbook's pairs of windows: 1h and 5m at 14.4× or 6h and 30m at 6× (`severity: page`), 1d
//! and 2h at 3× or 3d and 6h at 1× (`severity: ticket`). Probes (`/health/*`, `/healthz`,
//! `/livez`, `/readyz`) and unmatched paths are never part of an SLI. Every alert carries a
//! `runbook_url`. See `docs/alerts.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The upper bounds of `http_server_request_duration_seconds`'s buckets, in seconds: a latency
/// threshold must be one of them, since the SLI reads that bucket.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Where runbooks are when `--runbooks` is not given: `docs/runbooks/` of Keel's repository.
pub const DEFAULT_RUNBOOKS: &str = concat!(env!("CARGO_PKG_REPOSITORY"), "/blob/main/docs/runbooks");

/// The window an objective is met over (the error budget's period).
pub const SLO_PERIOD: &str = "30d";

/// The route templates an SLI leaves out: probes and paths no route matched.
const EXCLUDED_ROUTES: &str = "unmatched|/health/.*|/healthz|/livez|/readyz";

/// The windows error ratios are recorded over.
const WINDOWS: &[&str] = &["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// The SRE workbook's burn-rate alert: (long window, short window, burn rate) pairs, any of
/// which fires it.
struct BurnAlert {
    suffix: &'static str,
    severity: &'static str,
    pairs: &'static [(&'static str, &'static str, f64)],
    meaning: &'static str,
}

const BURN_ALERTS: &[BurnAlert] = &[
    BurnAlert {
        suffix: "Fast",
        severity: "page",
        pairs: &[("1h", "5m", 14.4), ("6h", "30m", 6.0)],
        meaning: "at this rate the 30-day error budget is gone in under 5 days (2 % of it in one hour, or 5 % in six)",
    },
    BurnAlert {
        suffix: "Slow",
        severity: "ticket",
        pairs: &[("1d", "2h", 3.0), ("3d", "6h", 1.0)],
        meaning: "at this rate the 30-day error budget runs out before the period ends (10 % of it in a day, or in three)",
    },
];

/// One service's SLO file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SloFile {
    /// The service's name: the `service` label of every rule.
    pub service: String,
    /// PromQL label matchers selecting the service's series (`job="gateway"`); default
    /// `job="<service>"`.
    #[serde(default)]
    pub selector: Option<String>,
    /// The objectives.
    #[serde(default)]
    pub objectives: Vec<Objective>,
    /// Thresholds of the Keel alerts for this service.
    #[serde(default)]
    pub alerts: AlertThresholds,
}

/// One objective.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// `[a-z0-9_]+`, unique in the file: the `slo` label.
    pub name: String,
    /// What is measured.
    pub sli: Sli,
    /// The fraction of good events over the 30-day window, strictly between 0 and 1 (`0.999`).
    pub objective: f64,
    /// For `latency`: an answer is good when it comes within this (a bucket bound of
    /// [`LATENCY_BUCKETS`]).
    #[serde(default, with = "keel_config::duration::option")]
    pub threshold: Option<Duration>,
    /// Only these route templates (`/items/{id}`); default every route but probes and unmatched
    /// paths. HTTP objectives only.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Only these gRPC services (`symbols.v1.Symbols`); default every registered service but
    /// health and reflection. gRPC objectives only.
    #[serde(default)]
    pub services: Vec<String>,
    /// Only these gRPC methods (`GetSymbol`), of the services above; default every method.
    /// gRPC objectives only.
    #[serde(default)]
    pub methods: Vec<String>,
    /// A sentence for people, shown in the alerts.
    #[serde(default)]
    pub description: Option<String>,
}

/// What an objective measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sli {
    /// Answers that are not 5xx, of all answers.
    Availability,
    /// Answers within the threshold, of all answers.
    Latency,
    /// gRPC calls that did not fail on the server's side (`UNKNOWN`, `DEADLINE_EXCEEDED`,
    /// `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`), of all calls.
    GrpcAvailability,
    /// gRPC calls that ended within the threshold, of all calls (list unary methods: a
    /// stream's time is its whole life).
    GrpcLatency,
}

impl Sli {
    fn is_grpc(self) -> bool {
        matches!(self, Self::GrpcAvailability | Self::GrpcLatency)
    }

    fn is_latency(self) -> bool {
        matches!(self, Self::Latency | Self::GrpcLatency)
    }
}

/// Thresholds of the Keel alerts (each has a default; see `docs/alerts.md`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertThresholds {
    /// `KeelOutboxBacklogAging`: the oldest unpublished outbox row is older than this.
    #[serde(with = "keel_config::duration")]
    pub outbox_oldest_pending_age: Duration,
    /// `KeelConsumerLagHigh`: more messages than this wait for a consumer group.
    pub consumer_lag_messages: u64,
    /// `KeelDbPoolAcquireTimeouts`: acquire timeouts per second over 5 minutes.
    pub db_acquire_timeouts_per_second: f64,
    /// `KeelRateLimitBackendErrors`: backend errors per second over 5 minutes.
    pub rate_limit_backend_errors_per_second: f64,
    /// `KeelLoadShedding` and `KeelGrpcLoadShedding`: shed requests (calls) per second over 5
    /// minutes.
    pub shed_requests_per_second: f64,
    /// `KeelTlsCertificateExpiring`: a TLS listener's certificate expires sooner than this.
    #[serde(with = "keel_config::duration")]
    pub tls_certificate_expiry: Duration,
    /// `KeelAuditCheckpointStale`: the audit log's last checkpoint is older than this (keep it
    /// well above `security.audit.checkpoint_interval`).
    #[serde(with = "keel_config::duration")]
    pub audit_checkpoint_age: Duration,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        Self {
            outbox_oldest_pending_age: Duration::from_secs(300),
            consumer_lag_messages: 1000,
            db_acquire_timeouts_per_second: 0.1,
            rate_limit_backend_errors_per_second: 0.1,
            shed_requests_per_second: 1.0,
            tls_certificate_expiry: Duration::from_secs(14 * 86_400),
            audit_checkpoint_age: Duration::from_secs(900),
        }
    }
}

/// Why a file cannot be turned into rules: every problem found, each naming its place.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct SloError {
    /// `path: what is wrong`, one per problem.
    pub problems: Vec<String>,
}

/// A Prometheus rule file (`groups:`), as `promtool check rules` reads it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleFile {
    /// The groups, each evaluated on Prometheus's global interval.
    pub groups: Vec<Group>,
}

/// A rule group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// Unique in the file.
    pub name: String,
    /// Recording rules and alerts.
    pub rules: Vec<Rule>,
}

/// A recording rule or an alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Rule {
    /// `record:`.
    Record {
        /// The recorded series' name.
        record: String,
        /// PromQL.
        expr: String,
        /// Labels added to the result.
        labels: BTreeMap<String, String>,
    },
    /// `alert:`.
    Alert {
        /// The alert's name.
        alert: String,
        /// PromQL.
        expr: String,
        /// How long the condition must hold first.
        #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
        for_: Option<String>,
        /// `severity`, `service`, and for SLOs `slo`.
        labels: BTreeMap<String, String>,
        /// `summary`, `description`, `runbook_url`.
        annotations: BTreeMap<String, String>,
    },
}

/// Reads and checks an SLO file's text (`source` names it in problems).
pub fn parse(source: &str, text: &str) -> Result<SloFile, SloError> {
    let file: SloFile =
        serde_norway::from_str(text).map_err(|e| SloError { problems: vec![format!("{source}: {e}")] })?;
    let problems = validate(&file);
    if problems.is_empty() {
        Ok(file)
    } else {
        Err(SloError { problems: problems.into_iter().map(|p| format!("{source}: {p}")).collect() })
    }
}

/// Every problem of `file`, each as `path: what is wrong`.
pub fn validate(file: &SloFile) -> Vec<String> {
    let mut problems = Vec::new();
    if !is_name(&file.service.replace('-', "_")) {
        problems.push(format!("service: `{}` is not a service name (a-z, 0-9, _ and -)", file.service));
    }
    if let Some(sel) = &file.selector
        && !is_selector(sel)
    {
        problems.push(format!(
            "selector: `{sel}` is not a list of label matchers such as job=\"gateway\" (no braces, no `}}`)"
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, o) in file.objectives.iter().enumerate() {
        let at = format!("objectives[{i}]");
        if !is_name(&o.name) {
            problems.push(format!("{at}.name: `{}` is not a name of a-z, 0-9 and _", o.name));
        } else if !seen.insert(o.name.clone()) {
            problems.push(format!("{at}.name: `{}` is used twice", o.name));
        }
        if !(o.objective > 0.0 && o.objective < 1.0) {
            problems.push(format!(
                "{at}.objective: {} is not a fraction strictly between 0 and 1 (write 0.999 for 99.9 %)",
                o.objective
            ));
        }
        match (o.sli.is_latency(), o.threshold) {
            (true, None) => problems.push(format!("{at}.threshold: a latency objective needs one")),
            (true, Some(t)) if bucket(t).is_none() => problems.push(format!(
                "{at}.threshold: {} is not a bucket bound of the duration histograms ({})",
                humantime::format_duration(t),
                LATENCY_BUCKETS.iter().map(|b| format!("{b}s")).collect::<Vec<_>>().join(", ")
            )),
            (false, Some(_)) => {
                problems.push(format!("{at}.threshold: only a latency objective has one"));
            }
            _ => {}
        }
        if o.sli.is_grpc() && !o.routes.is_empty() {
            problems.push(format!("{at}.routes: a gRPC objective selects services and methods, not routes"));
        }
        let selects_grpc = !o.services.is_empty() || !o.methods.is_empty();
        if !o.sli.is_grpc() && selects_grpc {
            problems.push(format!("{at}.services: only a gRPC objective (grpc_availability, grpc_latency) has them"));
        }
        for (field, list) in [("services", &o.services), ("methods", &o.methods)] {
            for (j, n) in list.iter().enumerate() {
                let ok = !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_');
                if !ok {
                    problems.push(format!("{at}.{field}[{j}]: `{n}` is not a gRPC name such as symbols.v1.Symbols"));
                }
            }
        }
        for (j, r) in o.routes.iter().enumerate() {
            if !r.starts_with('/') || r.contains('"') || r.contains('\\') {
                problems.push(format!("{at}.routes[{j}]: `{r}` is not a route template such as /items/{{id}}"));
            }
        }
    }
    let a = &file.alerts;
    if a.outbox_oldest_pending_age.is_zero() {
        problems.push("alerts.outbox_oldest_pending_age: must be above zero".into());
    }
    if a.tls_certificate_expiry.is_zero() {
        problems.push("alerts.tls_certificate_expiry: must be above zero".into());
    }
    if a.audit_checkpoint_age.is_zero() {
        problems.push("alerts.audit_checkpoint_age: must be above zero".into());
    }
    for (key, v) in [
        ("db_acquire_timeouts_per_second", a.db_acquire_timeouts_per_second),
        ("rate_limit_backend_errors_per_second", a.rate_limit_backend_errors_per_second),
        ("shed_requests_per_second", a.shed_requests_per_second),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            problems.push(format!("alerts.{key}: {v} is not a rate of zero or more"));
        }
    }
    problems
}

/// The rule file for `files` (already checked by [`parse`]), with `runbooks` as the base of every
/// `runbook_url` (`<runbooks>/<AlertName>.md`).
pub fn rules(files: &[SloFile], runbooks: &str) -> RuleFile {
    let runbooks = runbooks.trim_end_matches('/');
    let mut groups = Vec::new();
    for f in files {
        let selector = f.selector.clone().unwrap_or_else(|| format!("job=\"{}\"", f.service));
        if !f.objectives.is_empty() {
            groups.push(Group {
                name: format!("slo:{}:recording", f.service),
                rules: f.objectives.iter().flat_map(|o| recording(&f.service, &selector, o)).collect(),
            });
            groups.push(Group {
                name: format!("slo:{}:alerts", f.service),
                rules: f.objectives.iter().flat_map(|o| burn_alerts(&f.service, o, runbooks)).collect(),
            });
        }
        groups.push(Group { name: format!("keel:{}:alerts", f.service), rules: keel_alerts(f, &selector, runbooks) });
    }
    RuleFile { groups }
}

/// The header [`to_yaml`] is given by `<binary> slo rules FILE...`.
pub fn header(binary: &str, files: &[String]) -> String {
    format!("Generated by `{binary} slo rules {}`: edit the SLO files, not this file.", files.join(" "))
}

/// The rule file as YAML, with a header saying how it was made.
pub fn to_yaml(file: &RuleFile, header: &str) -> Result<String, SloError> {
    let body = serde_norway::to_string(file).map_err(|e| SloError { problems: vec![e.to_string()] })?;
    let mut out = String::new();
    for line in header.lines() {
        let _ = writeln!(out, "# {line}");
    }
    out.push_str(&body);
    Ok(out)
}

/// gRPC services that are never part of an SLI: health checks, reflection, unregistered ones.
const EXCLUDED_GRPC_SERVICES: &str = "unknown|grpc[.]health[.]v1[.]Health|grpc[.]reflection[.]v1[.]ServerReflection|grpc[.]reflection[.]v1alpha[.]ServerReflection";

/// The codes of calls that failed on the server's side.
const GRPC_SERVER_ERRORS: &str = "UNKNOWN|DEADLINE_EXCEEDED|UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS";

/// The label matchers of a gRPC objective's calls.
fn grpc_matchers(o: &Objective) -> String {
    let names = |list: &[String]| list.iter().map(|n| n.replace('.', "[.]")).collect::<Vec<_>>().join("|");
    let services = if o.services.is_empty() {
        format!("grpc_service!~\"{EXCLUDED_GRPC_SERVICES}\"")
    } else {
        format!("grpc_service=~\"{}\"", names(&o.services))
    };
    let methods = if o.methods.is_empty() {
        "grpc_method!=\"unknown\"".to_owned()
    } else {
        format!("grpc_method=~\"{}\"", names(&o.methods))
    };
    format!("{services},{methods}")
}

fn recording(service: &str, selector: &str, o: &Objective) -> Vec<Rule> {
    if o.sli.is_grpc() {
        return grpc_recording(service, selector, o);
    }
    let routes = if o.routes.is_empty() {
        format!("route!~\"{EXCLUDED_ROUTES}\"")
    } else {
        let list: Vec<String> = o.routes.iter().map(|r| regex_escape(r)).collect();
        format!("route=~\"{}\"", list.join("|"))
    };
    let m = format!("{selector},{routes}");
    let labels = slo_labels(service, o);
    let mut out: Vec<Rule> = WINDOWS
        .iter()
        .map(|w| {
            let expr = match o.sli {
                Sli::Availability => format!(
                    "(sum(rate(http_server_requests_total{{{m},status=~\"5..\"}}[{w}])) or vector(0))\n/\nsum(rate(http_server_requests_total{{{m}}}[{w}]))"
                ),
                _ => {
                    let le = o.threshold.and_then(bucket).map(le_label).unwrap_or_default();
                    format!(
                        "1 - (\n  sum(rate(http_server_request_duration_seconds_bucket{{{m},le=\"{le}\"}}[{w}]))\n  /\n  sum(rate(http_server_request_duration_seconds_count{{{m}}}[{w}]))\n)"
                    )
                }
            };
            Rule::Record { record: format!("slo:sli_error:ratio_rate{w}"), expr, labels: labels.clone() }
        })
        .collect();
    out.push(Rule::Record { record: "slo:objective:ratio".into(), expr: format!("vector({})", o.objective), labels });
    out
}

/// [`recording`] of a gRPC objective, over `grpc_server_handled_total` and
/// `grpc_server_handling_seconds`.
fn grpc_recording(service: &str, selector: &str, o: &Objective) -> Vec<Rule> {
    let m = format!("{selector},{}", grpc_matchers(o));
    let labels = slo_labels(service, o);
    let mut out: Vec<Rule> = WINDOWS
        .iter()
        .map(|w| {
            let expr = if o.sli == Sli::GrpcAvailability {
                format!(
                    "(sum(rate(grpc_server_handled_total{{{m},grpc_code=~\"{GRPC_SERVER_ERRORS}\"}}[{w}])) or vector(0))\n/\nsum(rate(grpc_server_handled_total{{{m}}}[{w}]))"
                )
            } else {
                let le = o.threshold.and_then(bucket).map(le_label).unwrap_or_default();
                format!(
                    "1 - (\n  sum(rate(grpc_server_handling_seconds_bucket{{{m},le=\"{le}\"}}[{w}]))\n  /\n  sum(rate(grpc_server_handling_seconds_count{{{m}}}[{w}]))\n)"
                )
            };
            Rule::Record { record: format!("slo:sli_error:ratio_rate{w}"), expr, labels: labels.clone() }
        })
        .collect();
    out.push(Rule::Record { record: "slo:objective:ratio".into(), expr: format!("vector({})", o.objective), labels });
    out
}

fn burn_alerts(service: &str, o: &Objective, runbooks: &str) -> Vec<Rule> {
    let budget = 1.0 - o.objective;
    let sel = format!("service=\"{service}\",slo=\"{}\"", o.name);
    let kind = if o.sli.is_latency() { "Latency" } else { "Availability" };
    BURN_ALERTS
        .iter()
        .map(|b| {
            let expr = b
                .pairs
                .iter()
                .map(|(long, short, rate)| {
                    let limit = rate * budget;
                    format!(
                        "(\n  slo:sli_error:ratio_rate{long}{{{sel}}} > {limit}\nand\n  slo:sli_error:ratio_rate{short}{{{sel}}} > {limit}\n)"
                    )
                })
                .collect::<Vec<_>>()
                .join("\nor\n");
            let alert = format!("Slo{kind}BurnRate{}", b.suffix);
            let threshold = o.threshold.map(|t| humantime::format_duration(t).to_string()).unwrap_or_default();
            let what = match o.sli {
                Sli::Availability => "answers that are 5xx".to_owned(),
                Sli::Latency => format!("answers slower than {threshold}"),
                Sli::GrpcAvailability => "gRPC calls that failed on the server's side".to_owned(),
                Sli::GrpcLatency => format!("gRPC calls slower than {threshold}"),
            };
            let mut labels = slo_labels(service, o);
            labels.insert("severity".into(), b.severity.into());
            let mut annotations = BTreeMap::new();
            annotations.insert(
                "summary".into(),
                format!("{service}: SLO {} is burning its error budget ({})", o.name, b.suffix.to_lowercase()),
            );
            annotations.insert(
                "description".into(),
                format!(
                    "{}The share of {what} is above {} times the budget of the {:.4} % objective: {}.",
                    o.description.as_deref().map(|d| format!("{d} ")).unwrap_or_default(),
                    b.pairs.iter().map(|p| p.2.to_string()).collect::<Vec<_>>().join(" or "),
                    o.objective * 100.0,
                    b.meaning
                ),
            );
            annotations.insert("runbook_url".into(), format!("{runbooks}/{alert}.md"));
            Rule::Alert { alert, expr, for_: None, labels, annotations }
        })
        .collect()
}

fn keel_alerts(f: &SloFile, sel: &str, runbooks: &str) -> Vec<Rule> {
    let a = &f.alerts;
    let s = &f.service;
    let age = a.outbox_oldest_pending_age.as_secs_f64();
    let list: Vec<(&str, String, &str, &str, String, String)> = vec![
        (
            "KeelTargetDown",
            format!("up{{{sel}}} == 0"),
            "2m",
            "page",
            format!("{s}: an instance cannot be scraped"),
            "Prometheus has not reached the management listener's /metrics for 2 minutes: the instance is down, \
             restarting, or unreachable."
                .into(),
        ),
        (
            "KeelReadinessCheckDown",
            format!("min by (job, instance, check) (health_check_up{{{sel},check!~\"worker:.*\"}}) == 0"),
            "5m",
            "ticket",
            format!("{s}: a health check is down"),
            "A health check has reported down for 5 minutes; while a readiness check is down the instance \
             takes no traffic. /admin/status on the management port says why."
                .into(),
        ),
        (
            "KeelWorkerStale",
            format!("min by (job, instance, check) (health_check_up{{{sel},check=~\"worker:.*\"}}) == 0"),
            "5m",
            "ticket",
            format!("{s}: a background worker is stale or failing"),
            "The worker has had no success within its staleness limit (2 × its interval unless set) for 5 \
             minutes."
                .into(),
        ),
        (
            "KeelOutboxBacklogAging",
            // The outbox is the service's: every replica reads the same age, so one alert per job.
            format!("max by (job) (outbox_oldest_pending_age_seconds{{{sel}}}) > {age}"),
            "5m",
            "page",
            format!("{s}: outbox rows wait too long to be published"),
            format!(
                "Events wait in the outbox longer than {}: the relay is paused, failing, or cannot keep up.",
                humantime::format_duration(a.outbox_oldest_pending_age)
            ),
        ),
        (
            "KeelOutboxRelayPaused",
            format!("max by (job, instance) (outbox_relay_paused{{{sel}}}) == 1"),
            "5m",
            "ticket",
            format!("{s}: the outbox relay has waited for the broker for 5 minutes"),
            "The relay publishes nothing while the bus is not connected; rows keep while it waits.".into(),
        ),
        (
            "KeelOutboxDeadRows",
            format!("sum by (job) (increase(outbox_dead_total{{{sel}}}[15m])) > 0"),
            "",
            "ticket",
            format!("{s}: outbox rows were marked dead"),
            "Rows used up outbox.max_attempts and will not be published without an operator.".into(),
        ),
        (
            "KeelConsumerLagHigh",
            // Summed over a Kafka topic's partitions on each instance, then the instance that
            // sees the most (they all read the group's lag from the broker).
            format!(
                "max by (job, topic, group) (sum without (partition) (consumer_lag_messages{{{sel}}})) > {}",
                a.consumer_lag_messages
            ),
            "10m",
            "ticket",
            format!("{s}: a consumer group is falling behind"),
            format!(
                "More than {} messages have waited for the consumer group for 10 minutes.",
                a.consumer_lag_messages
            ),
        ),
        (
            "KeelConsumerPaused",
            format!("max by (job, topic, group) (consumer_paused{{{sel}}}) == 1"),
            "10m",
            "ticket",
            format!("{s}: a consumer is paused"),
            "The consumer has taken no message for 10 minutes because a dependency it needs is unavailable.".into(),
        ),
        (
            "KeelDeadLettersGrowing",
            format!(
                "sum by (job, topic, group) (increase(consumer_messages_total{{{sel},outcome=\"dead\"}}[15m])) > 0"
            ),
            "",
            "ticket",
            format!("{s}: messages went to a dead-letter queue"),
            "A handler gave up on messages after its retries; they wait in <topic>.dlq for `dlq replay`.".into(),
        ),
        (
            "KeelCircuitBreakerOpen",
            format!("max by (job, name) (circuit_breaker_state{{{sel}}}) == 1"),
            "5m",
            "ticket",
            format!("{s}: a circuit breaker has been open for 5 minutes"),
            "Calls to the dependency fail fast: it failed too often and has not recovered.".into(),
        ),
        (
            "KeelDbPoolAcquireTimeouts",
            format!(
                "sum by (job, pool) (rate(db_pool_acquire_timeouts_total{{{sel}}}[5m])) > {}",
                a.db_acquire_timeouts_per_second
            ),
            "5m",
            "ticket",
            format!("{s}: requests time out waiting for a database connection"),
            "The pool is exhausted: queries are slow, connections leak, or database.pool.max_connections is too \
             low for the load."
                .into(),
        ),
        (
            "KeelRateLimitBackendErrors",
            format!(
                "sum by (job, policy) (rate(rate_limit_backend_errors_total{{{sel}}}[5m])) > {}",
                a.rate_limit_backend_errors_per_second
            ),
            "5m",
            "ticket",
            format!("{s}: a rate-limit policy cannot reach its backend"),
            "Decisions fall back to the policy's failure mode (local limiter, allow or deny).".into(),
        ),
        (
            "KeelLoadShedding",
            format!(
                "sum by (job) (rate(http_server_requests_shed_total{{{sel}}}[5m])) > {}",
                a.shed_requests_per_second
            ),
            "5m",
            "ticket",
            format!("{s} is shedding load"),
            "Requests are refused with 503 because http.max_in_flight is reached.".into(),
        ),
        (
            "KeelGrpcLoadShedding",
            format!("sum by (job) (rate(grpc_server_calls_shed_total{{{sel}}}[5m])) > {}", a.shed_requests_per_second),
            "5m",
            "ticket",
            format!("{s} is shedding gRPC calls"),
            "gRPC calls are refused with RESOURCE_EXHAUSTED because grpc.max_in_flight is reached.".into(),
        ),
        (
            "KeelTlsCertificateExpiring",
            format!(
                "min by (job, instance, listener) (tls_certificate_expiry_timestamp_seconds{{{sel}}}) - time() < {}",
                a.tls_certificate_expiry.as_secs()
            ),
            "10m",
            "ticket",
            format!("{s}: a TLS listener's certificate expires soon"),
            format!(
                "The certificate a TLS listener serves expires in less than {}: its renewal (cert-manager, Vault \
                 agent) has not reached the files, or the files are no longer read.",
                humantime::format_duration(a.tls_certificate_expiry)
            ),
        ),
        (
            "KeelAuditLogTampered",
            format!("sum by (job, instance) (increase(audit_log_tamper_detected_total{{{sel}}}[15m])) > 0"),
            "",
            "page",
            format!("{s}: the audit log was truncated or rewritten"),
            "A checkpoint found the audit log's table no longer holding the previous checkpoint: rows were \
             deleted from its end, or the chain was rewritten."
                .into(),
        ),
        (
            "KeelAuditCheckpointStale",
            format!(
                "time() - max by (job, instance) (audit_log_checkpoint_timestamp_seconds{{{sel}}} > 0) > {}",
                a.audit_checkpoint_age.as_secs()
            ),
            "5m",
            "ticket",
            format!("{s}: the audit log has not been checkpointed"),
            format!(
                "No audit checkpoint for more than {}: the database is unreachable or the checkpoint fails, so \
                 truncation would go unnoticed.",
                humantime::format_duration(a.audit_checkpoint_age)
            ),
        ),
        (
            "KeelDataKeysRefreshFailing",
            format!("sum by (job, instance) (increase(data_keys_refresh_failures_total{{{sel}}}[10m])) > 0"),
            "10m",
            "ticket",
            format!("{s}: an instance cannot reread its data keys"),
            "An instance keeps failing to reread its data keys (the database is unreachable, or a stored key \
             does not unwrap with its master key): it keeps the keys it read last, cannot decrypt values under \
             a newer key, and what it encrypts with an older key becomes unreadable once that key is retired."
                .into(),
        ),
        (
            "KeelDataKeysUnreadable",
            format!("max by (job) (data_keys_unreadable_values{{{sel}}}) > 0"),
            "15m",
            "ticket",
            format!("{s}: encrypted values that no data key decrypts"),
            "The re-encryption pass found values in an encrypted column that no key of the ring decrypts: \
             altered, written under a key that was retired or is not configured, or not encrypted at all."
                .into(),
        ),
    ];
    list.into_iter()
        .map(|(alert, expr, for_, severity, summary, description)| {
            let mut labels = BTreeMap::new();
            labels.insert("severity".into(), severity.into());
            labels.insert("service".into(), f.service.clone());
            let mut annotations = BTreeMap::new();
            annotations.insert("summary".into(), summary);
            annotations.insert("description".into(), description);
            annotations.insert("runbook_url".into(), format!("{runbooks}/{alert}.md"));
            Rule::Alert {
                alert: alert.into(),
                expr,
                for_: (!for_.is_empty()).then(|| for_.to_owned()),
                labels,
                annotations,
            }
        })
        .collect()
}

/// Every alert name [`rules`] can produce, for docs and runbook checks.
pub fn alert_names() -> Vec<String> {
    let mut names: Vec<String> = ["Availability", "Latency"]
        .iter()
        .flat_map(|k| BURN_ALERTS.iter().map(move |b| format!("Slo{k}BurnRate{}", b.suffix)))
        .collect();
    let probe =
        SloFile { service: "x".into(), selector: None, objectives: Vec::new(), alerts: AlertThresholds::default() };
    for r in keel_alerts(&probe, "job=\"x\"", "") {
        if let Rule::Alert { alert, .. } = r {
            names.push(alert);
        }
    }
    names
}

fn slo_labels(service: &str, o: &Objective) -> BTreeMap<String, String> {
    BTreeMap::from([("service".to_owned(), service.to_owned()), ("slo".to_owned(), o.name.clone())])
}

fn bucket(t: Duration) -> Option<f64> {
    let secs = t.as_secs_f64();
    LATENCY_BUCKETS.iter().copied().find(|b| (b - secs).abs() < 1e-9)
}

/// A bucket bound as the Prometheus client writes its `le` label (`0.5`, `1`, `30`).
fn le_label(b: f64) -> String {
    format!("{b}")
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `name="v"`, `name=~"v"`, … separated by commas; no braces (they are added around it).
fn is_selector(s: &str) -> bool {
    !s.trim().is_empty() && !s.contains('{') && !s.contains('}') && s.contains('=')
}

/// A route template as a literal in a PromQL regex (`{id}` and `.` escaped).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
