//! The generated rules, checked by Prometheus's own `promtool`: `check rules` parses every
//! expression, and `test rules` fires each alert from synthetic series (and keeps the SLO
//! alerts quiet while the error budget holds). The committed `deploy/prometheus/rules.yaml`
//! must be what `slo rules` makes of `deploy/slo/*.yaml` today.
//!
//! promtool comes with Debian's `prometheus` package (`.ci/run` installs it). Without it these
//! tests skip with a message, except under `CI=true`, where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use keel_slo::{Rule, RuleFile};

const SHOP: &str = r#"
service: shop
objectives:
  - name: availability
    sli: availability
    objective: 0.99
  - name: latency
    sli: latency
    objective: 0.99
    threshold: 500ms
  - name: grpc_availability
    sli: grpc_availability
    objective: 0.99
  - name: grpc_latency
    sli: grpc_latency
    objective: 0.99
    threshold: 500ms
    services: [shop.v1.Shop]
    methods: [Get]
"#;

fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if found {
        return Some("promtool");
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("promtool is required (Debian package `prometheus`) and CI=true: tests may not skip");
    }
    eprintln!("skipped: promtool is not installed (apt-get install prometheus)");
    None
}

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new("promtool").args(args).current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The annotations the generated rule gives `alert` (of objective `slo`, when given; promtool
/// compares them too).
fn annotations(rules: &RuleFile, alert: &str, slo: Option<&str>) -> BTreeMap<String, String> {
    rules
        .groups
        .iter()
        .flat_map(|g| &g.rules)
        .find_map(|r| match r {
            Rule::Alert { alert: a, annotations, labels, .. }
                if a == alert && slo.is_none_or(|s| labels.get("slo").map(String::as_str) == Some(s)) =>
            {
                Some(annotations.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no alert {alert}"))
}

/// One `alert_rule_test`: `series` (promtool notation), evaluated at `at`, expecting `alert`
/// with exactly `labels` (plus `alertname`), or nothing when `labels` is `None`.
struct Case {
    series: Vec<(&'static str, &'static str)>,
    at: &'static str,
    alert: &'static str,
    labels: Option<Vec<(&'static str, &'static str)>>,
}

fn case(
    series: &[(&'static str, &'static str)],
    at: &'static str,
    alert: &'static str,
    labels: &[(&'static str, &'static str)],
) -> Case {
    Case { series: series.to_vec(), at, alert, labels: Some(labels.to_vec()) }
}

const OK: &str = r#"http_server_requests_total{job="shop",instance="a:9",method="GET",route="/items",status="200"}"#;
const ERR: &str = r#"http_server_requests_total{job="shop",instance="a:9",method="GET",route="/items",status="500"}"#;
const PROBE_ERR: &str =
    r#"http_server_requests_total{job="shop",instance="a:9",method="GET",route="/health/ready",status="503"}"#;
const FAST: &str = r#"http_server_request_duration_seconds_bucket{job="shop",instance="a:9",method="GET",route="/items",status="200",le="0.5"}"#;
const ALL: &str =
    r#"http_server_request_duration_seconds_count{job="shop",instance="a:9",method="GET",route="/items",status="200"}"#;

const GRPC_OK: &str = r#"grpc_server_handled_total{job="shop",instance="a:9",grpc_service="shop.v1.Shop",grpc_method="Get",grpc_code="OK"}"#;
const GRPC_DOWN: &str = r#"grpc_server_handled_total{job="shop",instance="a:9",grpc_service="shop.v1.Shop",grpc_method="Get",grpc_code="UNAVAILABLE"}"#;
const GRPC_NOT_FOUND: &str = r#"grpc_server_handled_total{job="shop",instance="a:9",grpc_service="shop.v1.Shop",grpc_method="Get",grpc_code="NOT_FOUND"}"#;
const GRPC_HEALTH_DOWN: &str = r#"grpc_server_handled_total{job="shop",instance="a:9",grpc_service="grpc.health.v1.Health",grpc_method="Check",grpc_code="UNAVAILABLE"}"#;
const GRPC_FAST: &str = r#"grpc_server_handling_seconds_bucket{job="shop",instance="a:9",grpc_service="shop.v1.Shop",grpc_method="Get",le="0.5"}"#;
const GRPC_ALL: &str =
    r#"grpc_server_handling_seconds_count{job="shop",instance="a:9",grpc_service="shop.v1.Shop",grpc_method="Get"}"#;

fn cases() -> Vec<Case> {
    let slo = |slo: &'static str, severity: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![("service", "shop"), ("slo", slo), ("severity", severity)]
    };
    let keel = |extra: &[(&'static str, &'static str)], severity: &'static str| {
        let mut l = vec![("service", "shop"), ("severity", severity)];
        l.extend_from_slice(extra);
        l
    };
    let inst = [("job", "shop"), ("instance", "a:9")];
    vec![
        // Half the answers are 5xx for two hours: both burn-rate alerts fire.
        case(
            &[(OK, "0+60x120"), (ERR, "0+60x120")],
            "60m",
            "SloAvailabilityBurnRateFast",
            &slo("availability", "page"),
        ),
        case(
            &[(OK, "0+60x120"), (ERR, "0+60x120")],
            "120m",
            "SloAvailabilityBurnRateSlow",
            &slo("availability", "ticket"),
        ),
        // 0.5 % errors, inside a 1 % budget, and failing probes (never part of the SLI): quiet.
        Case {
            series: vec![(OK, "0+199x120"), (ERR, "0+1x120"), (PROBE_ERR, "0+60x120")],
            at: "120m",
            alert: "SloAvailabilityBurnRateFast",
            labels: None,
        },
        Case {
            series: vec![(OK, "0+199x120"), (ERR, "0+1x120"), (PROBE_ERR, "0+60x120")],
            at: "120m",
            alert: "SloAvailabilityBurnRateSlow",
            labels: None,
        },
        // Five in six answers slower than 500 ms.
        case(&[(FAST, "0+10x120"), (ALL, "0+60x120")], "60m", "SloLatencyBurnRateFast", &slo("latency", "page")),
        case(&[(FAST, "0+10x120"), (ALL, "0+60x120")], "120m", "SloLatencyBurnRateSlow", &slo("latency", "ticket")),
        Case {
            series: vec![(FAST, "0+60x120"), (ALL, "0+60x120")],
            at: "120m",
            alert: "SloLatencyBurnRateFast",
            labels: None,
        },
        // Half the gRPC calls UNAVAILABLE: the gRPC objective burns.
        case(
            &[(GRPC_OK, "0+60x120"), (GRPC_DOWN, "0+60x120")],
            "60m",
            "SloAvailabilityBurnRateFast",
            &slo("grpc_availability", "page"),
        ),
        // Callers' errors (NOT_FOUND) and failing health checks never spend the budget.
        Case {
            series: vec![(GRPC_OK, "0+60x120"), (GRPC_NOT_FOUND, "0+60x120"), (GRPC_HEALTH_DOWN, "0+60x120")],
            at: "120m",
            alert: "SloAvailabilityBurnRateFast",
            labels: None,
        },
        case(
            &[(GRPC_FAST, "0+10x120"), (GRPC_ALL, "0+60x120")],
            "60m",
            "SloLatencyBurnRateFast",
            &slo("grpc_latency", "page"),
        ),
        case(&[(r#"up{job="shop",instance="a:9"}"#, "0x10")], "5m", "KeelTargetDown", &keel(&inst, "page")),
        case(
            &[(r#"health_check_up{job="shop",instance="a:9",check="database"}"#, "0x10")],
            "6m",
            "KeelReadinessCheckDown",
            &keel(&[("job", "shop"), ("instance", "a:9"), ("check", "database")], "ticket"),
        ),
        case(
            &[(r#"health_check_up{job="shop",instance="a:9",check="worker:cleanup"}"#, "0x10")],
            "6m",
            "KeelWorkerStale",
            &keel(&[("job", "shop"), ("instance", "a:9"), ("check", "worker:cleanup")], "ticket"),
        ),
        case(
            &[(r#"audit_log_tamper_detected_total{job="shop",instance="a:9"}"#, "0 0 1 2 2")],
            "4m",
            "KeelAuditLogTampered",
            &keel(&inst, "page"),
        ),
        case(
            // The last checkpoint at 0s; 15 minutes later plus 5 it is stale.
            &[(r#"audit_log_checkpoint_timestamp_seconds{job="shop",instance="a:9"}"#, "1x30")],
            "21m",
            "KeelAuditCheckpointStale",
            &keel(&inst, "ticket"),
        ),
        Case {
            // Checkpointed every minute: quiet.
            series: vec![(r#"audit_log_checkpoint_timestamp_seconds{job="shop",instance="a:9"}"#, "60+60x30")],
            at: "21m",
            alert: "KeelAuditCheckpointStale",
            labels: None,
        },
        case(
            &[(r#"data_keys_refresh_failures_total{job="shop",instance="a:9"}"#, "0+1x20")],
            "15m",
            "KeelDataKeysRefreshFailing",
            &keel(&inst, "ticket"),
        ),
        Case {
            // One failed reread long ago: quiet.
            series: vec![(r#"data_keys_refresh_failures_total{job="shop",instance="a:9"}"#, "0 1x30")],
            at: "25m",
            alert: "KeelDataKeysRefreshFailing",
            labels: None,
        },
        case(
            // Two replicas count the same table: one alert for the job.
            &[
                (r#"data_keys_unreadable_values{job="shop",instance="a:9"}"#, "1x20"),
                (r#"data_keys_unreadable_values{job="shop",instance="b:9"}"#, "1x20"),
            ],
            "16m",
            "KeelDataKeysUnreadable",
            &keel(&[("job", "shop")], "ticket"),
        ),
        case(
            // Two replicas read the same shared outbox: one alert for the job, not one each.
            &[
                (r#"outbox_oldest_pending_age_seconds{job="shop",instance="a:9"}"#, "600x10"),
                (r#"outbox_oldest_pending_age_seconds{job="shop",instance="b:9"}"#, "600x10"),
            ],
            "6m",
            "KeelOutboxBacklogAging",
            &keel(&[("job", "shop")], "page"),
        ),
        case(
            &[(r#"outbox_relay_paused{job="shop",instance="a:9"}"#, "1x10")],
            "6m",
            "KeelOutboxRelayPaused",
            &keel(&inst, "ticket"),
        ),
        case(
            &[(r#"outbox_dead_total{job="shop",instance="a:9"}"#, "0 0 1 2 2")],
            "4m",
            "KeelOutboxDeadRows",
            &keel(&[("job", "shop")], "ticket"),
        ),
        case(
            &[(r#"consumer_lag_messages{job="shop",instance="a:9",topic="t",group="g"}"#, "2000x15")],
            "11m",
            "KeelConsumerLagHigh",
            &keel(&[("job", "shop"), ("topic", "t"), ("group", "g")], "ticket"),
        ),
        // Kafka's partitions (on two instances, which read the same group lag): each under
        // the threshold, their sum over it.
        case(
            &[
                (r#"consumer_lag_messages{job="shop",instance="a:9",topic="t",group="g",partition="0"}"#, "600x15"),
                (r#"consumer_lag_messages{job="shop",instance="a:9",topic="t",group="g",partition="1"}"#, "600x15"),
                (r#"consumer_lag_messages{job="shop",instance="b:9",topic="t",group="g",partition="0"}"#, "600x15"),
                (r#"consumer_lag_messages{job="shop",instance="b:9",topic="t",group="g",partition="1"}"#, "600x15"),
            ],
            "11m",
            "KeelConsumerLagHigh",
            &keel(&[("job", "shop"), ("topic", "t"), ("group", "g")], "ticket"),
        ),
        case(
            &[(r#"consumer_paused{job="shop",instance="a:9",topic="t",group="g"}"#, "1x15")],
            "11m",
            "KeelConsumerPaused",
            &keel(&[("job", "shop"), ("topic", "t"), ("group", "g")], "ticket"),
        ),
        case(
            &[(r#"consumer_messages_total{job="shop",instance="a:9",topic="t",group="g",outcome="dead"}"#, "0 1 2 3")],
            "3m",
            "KeelDeadLettersGrowing",
            &keel(&[("job", "shop"), ("topic", "t"), ("group", "g")], "ticket"),
        ),
        case(
            &[(r#"circuit_breaker_state{job="shop",instance="a:9",name="payments"}"#, "1x10")],
            "6m",
            "KeelCircuitBreakerOpen",
            &keel(&[("job", "shop"), ("name", "payments")], "ticket"),
        ),
        case(
            &[(r#"db_pool_acquire_timeouts_total{job="shop",instance="a:9",pool="shop"}"#, "0+60x15")],
            "11m",
            "KeelDbPoolAcquireTimeouts",
            &keel(&[("job", "shop"), ("pool", "shop")], "ticket"),
        ),
        case(
            &[(r#"rate_limit_backend_errors_total{job="shop",instance="a:9",policy="api"}"#, "0+60x15")],
            "11m",
            "KeelRateLimitBackendErrors",
            &keel(&[("job", "shop"), ("policy", "api")], "ticket"),
        ),
        case(
            &[(r#"http_server_requests_shed_total{job="shop",instance="a:9"}"#, "0+120x15")],
            "11m",
            "KeelLoadShedding",
            &keel(&[("job", "shop")], "ticket"),
        ),
        case(
            &[(r#"grpc_server_calls_shed_total{job="shop",instance="a:9"}"#, "0+120x15")],
            "11m",
            "KeelGrpcLoadShedding",
            &keel(&[("job", "shop")], "ticket"),
        ),
        // A certificate 7 days from its end (the clock starts at 0 here).
        case(
            &[(r#"tls_certificate_expiry_timestamp_seconds{job="shop",instance="a:9",listener="grpc"}"#, "604800x30")],
            "15m",
            "KeelTlsCertificateExpiring",
            &keel(&[("job", "shop"), ("instance", "a:9"), ("listener", "grpc")], "ticket"),
        ),
        Case {
            // 60 days left: quiet.
            series: vec![(
                r#"tls_certificate_expiry_timestamp_seconds{job="shop",instance="a:9",listener="http"}"#,
                "5184000x30",
            )],
            at: "15m",
            alert: "KeelTlsCertificateExpiring",
            labels: None,
        },
        // A gauge under its threshold fires nothing.
        Case {
            series: vec![(r#"consumer_lag_messages{job="shop",instance="a:9",topic="t",group="g"}"#, "10x15")],
            at: "11m",
            alert: "KeelConsumerLagHigh",
            labels: None,
        },
    ]
}

fn yaml_str(s: &str) -> String {
    serde_norway::to_string(s).unwrap().trim_end().to_owned()
}

fn test_file(rules: &RuleFile) -> String {
    let mut out = String::from("rule_files: [rules.yaml]\nevaluation_interval: 1m\ntests:\n");
    for c in cases() {
        out.push_str("  - interval: 1m\n    input_series:\n");
        for (series, values) in &c.series {
            let _ = writeln!(out, "      - series: {}\n        values: {}", yaml_str(series), yaml_str(values));
        }
        let _ = writeln!(out, "    alert_rule_test:\n      - eval_time: {}\n        alertname: {}", c.at, c.alert);
        match &c.labels {
            None => out.push_str("        exp_alerts: []\n"),
            Some(labels) => {
                out.push_str("        exp_alerts:\n          - exp_labels:\n");
                for (k, v) in labels {
                    let _ = writeln!(out, "              {k}: {}", yaml_str(v));
                }
                out.push_str("            exp_annotations:\n");
                let slo = labels.iter().find(|(k, _)| *k == "slo").map(|(_, v)| *v);
                for (k, v) in annotations(rules, c.alert, slo) {
                    let _ = writeln!(out, "              {k}: {}", yaml_str(&v));
                }
            }
        }
    }
    out
}

#[test]
fn promtool_parses_the_rules_and_every_alert_fires_from_synthetic_series() {
    let Some(_) = promtool() else { return };
    let file = keel_slo::parse("shop.yaml", SHOP).unwrap();
    let rules = keel_slo::rules(&[file], "https://runbooks.example");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), keel_slo::to_yaml(&rules, "test").unwrap()).unwrap();
    std::fs::write(dir.path().join("tests.yaml"), test_file(&rules)).unwrap();
    run(dir.path(), &["check", "rules", "rules.yaml"]);
    run(dir.path(), &["test", "rules", "tests.yaml"]);

    // Every alert the generator can make is exercised above.
    let tested: std::collections::BTreeSet<&str> = cases().iter().map(|c| c.alert).collect();
    for name in keel_slo::alert_names() {
        assert!(tested.contains(name.as_str()), "{name} has no promtool case");
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_committed_rules_are_generated_from_the_slo_files() {
    let root = repo();
    let mut names: Vec<String> = std::fs::read_dir(root.join("deploy/slo"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("deploy/slo/{n}"))
        .collect();
    names.sort();
    let files: Vec<_> =
        names.iter().map(|n| keel_slo::parse(n, &std::fs::read_to_string(root.join(n)).unwrap()).unwrap()).collect();
    let want = keel_slo::to_yaml(
        &keel_slo::rules(&files, keel_slo::DEFAULT_RUNBOOKS),
        &keel_slo::header("cityevents-gateway", &names),
    )
    .unwrap();
    let have = std::fs::read_to_string(root.join("deploy/prometheus/rules.yaml")).unwrap();
    assert!(
        have == want,
        "deploy/prometheus/rules.yaml is out of date: run\n  cargo run -p cityevents -- gateway slo rules {} > deploy/prometheus/rules.yaml",
        names.join(" ")
    );
    if promtool().is_some() {
        run(&root, &["check", "rules", "deploy/prometheus/rules.yaml"]);
    }
}

#[test]
fn every_alert_has_a_runbook() {
    let root = repo();
    for name in keel_slo::alert_names() {
        let path = root.join(format!("docs/runbooks/{name}.md"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} is missing", path.display()));
        for heading in ["## Meaning", "## Impact", "## Diagnosis", "## Mitigation"] {
            assert!(text.contains(heading), "{} has no `{heading}` section", path.display());
        }
    }
}
