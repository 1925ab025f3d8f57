//! The Grafana dashboards in `deploy/grafana/`: each is what `build.py` writes, has a
//! `datasource` variable that every query uses, and every query parses as PromQL (checked by
//! Prometheus's own `promtool`) and reads only series that exist: a metric in
//! `docs/metrics.md`, a recording rule of `deploy/prometheus/rules.yaml`, or `up`.
//!
//! One test starts Prometheus against a running all-in-one and runs every rule and query there.
//!
//! promtool and prometheus (Debian's `prometheus`) and python3 are needed; without them the
//! tests skip with a message, except under `CI=true`, where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn have(program: &str) -> bool {
    keel::testing::require_command(program, &["--version"])
}

fn dashboards() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(root().join("deploy/grafana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let v =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 6, "an overview and one dashboard per service");
    out
}

/// Every (dashboard, panel title, expr).
fn queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (name, d) in dashboards() {
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((
                    name.clone(),
                    p["title"].as_str().unwrap().to_owned(),
                    t["expr"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

/// The expression with Grafana's variables replaced by what Prometheus accepts.
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
}

/// Metric names in `docs/metrics.md` tables (first column, in backticks, `a` / `b` included).
fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let first = line.split('|').nth(1).unwrap_or_default();
        for part in first.split('`').skip(1).step_by(2) {
            names.insert(part.to_owned());
        }
    }
    names
}

/// Recording rules in the committed rule file.
fn recorded() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("deploy/prometheus/rules.yaml")).unwrap();
    text.lines().filter_map(|l| l.trim().strip_prefix("- record: ").map(str::to_owned)).collect()
}

/// The metric names an expression reads: identifiers outside strings, label matchers, ranges and
/// grouping clauses, that are not functions, keywords or numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const WORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        // Aggregation operators may be followed by `by (…)` rather than their parenthesis.
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    let mut cleaned = String::new();
    let mut chars = expr.chars().peekable();
    let mut skip_group = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(n) = chars.next() {
                    if n == '\\' {
                        chars.next();
                    } else if n == '"' {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                for n in chars.by_ref() {
                    if n == close {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            '(' if skip_group => {
                for n in chars.by_ref() {
                    if n == ')' {
                        break;
                    }
                }
                skip_group = false;
                cleaned.push(' ');
            }
            _ => {
                cleaned.push(c);
                let word: String =
                    cleaned.chars().rev().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
                let word: String = word.chars().rev().collect();
                if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&word.as_str())
                    && chars.peek().is_some_and(|n| !n.is_alphanumeric() && *n != '_')
                {
                    skip_group = true;
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    let bytes: Vec<char> = cleaned.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_alphabetic() || bytes[i] == '_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_' || bytes[i] == ':') {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let next = bytes[i..].iter().find(|c| !c.is_whitespace());
            let is_call = next == Some(&'(');
            if !is_call && !WORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_committed_dashboards_are_what_build_py_writes() {
    if !have("python3") {
        return;
    }
    let out =
        Command::new("python3").arg("deploy/grafana/build.py").arg("--check").current_dir(root()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_dashboard_has_a_datasource_variable_that_every_query_uses() {
    let mut uids = BTreeSet::new();
    for (name, d) in dashboards() {
        assert!(uids.insert(d["uid"].as_str().unwrap().to_owned()), "{name}: uid used twice");
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource"), "{name}");
        for p in d["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{name}: {}", p["title"]);
            assert!(!p["targets"].as_array().unwrap().is_empty(), "{name}: {} has no query", p["title"]);
        }
    }
}

#[test]
fn every_query_reads_only_series_that_exist() {
    let known: BTreeSet<String> = documented().into_iter().chain(recorded()).chain(["up".to_owned()]).collect();
    let mut unknown = Vec::new();
    for (board, panel, expr) in queries() {
        for name in metric_names(&concrete(&expr)) {
            let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
            if !known.contains(&name) && !known.contains(base) {
                unknown.push(format!("{board} / {panel}: `{name}` in {expr}"));
            }
        }
    }
    assert!(unknown.is_empty(), "series neither in docs/metrics.md nor recorded:\n{}", unknown.join("\n"));
}

#[test]
fn the_name_finder_sees_metrics_and_not_labels_or_functions() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (job, le) (rate(http_server_request_duration_seconds_bucket{route!~"a|b"}[5m]))) / on (service, slo) group_left () (1 - slo:objective:ratio) and up"#,
    );
    let want: BTreeSet<String> =
        ["http_server_request_duration_seconds_bucket", "slo:objective:ratio", "up"].map(str::to_owned).into();
    assert_eq!(names, want);
}

#[test]
fn every_query_parses_as_promql() {
    if !have("promtool") {
        return;
    }
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, (_, _, expr)) in queries().iter().enumerate() {
        let _ = writeln!(
            rules,
            "      - record: dashboard:query:{i}\n        expr: {}",
            serde_json::to_string(&concrete(expr)).unwrap()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("queries.yaml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool").args(["check", "rules"]).arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "a dashboard query does not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus started here scrapes a running all-in-one (five jobs, as the deployments name
/// them) with the committed rules loaded, after a little traffic through the gateway: every
/// recording and alerting rule evaluates without error, every dashboard query runs, and every
/// metric a dashboard reads is one the platform exports (or a recording rule's output).
#[test]
fn every_query_runs_in_a_prometheus_scraping_the_platform() {
    let redis = keel::testing::redis_url();
    if !have("prometheus") || !keel::testing::require("Redis", &redis) {
        return;
    }
    // The gateway's API limits on Redis, as deployed, so its Redis series exist too.
    let mut env = vec![
        ("CITYEVENTS_GATEWAY__REDIS__URL".to_owned(), redis),
        ("CITYEVENTS_GATEWAY__REDIS__KEY_PREFIX".to_owned(), format!("{}:", common::unique("ce_dash_"))),
        ("CITYEVENTS_GATEWAY__RATE_LIMITS__API__BACKEND".to_owned(), "redis".to_owned()),
        // A sign-in provider, as deployed, so its series exist (never called: nobody uses it).
        ("CITYEVENTS_AUTH__APP__OIDC__REDIRECT_BASE".to_owned(), "http://127.0.0.1:8080".to_owned()),
        ("CITYEVENTS_AUTH__APP__OIDC__PROVIDERS__CORP__NAME".to_owned(), "Corp".to_owned()),
        ("CITYEVENTS_AUTH__APP__OIDC__PROVIDERS__CORP__ISSUER".to_owned(), "https://login.corp.example".to_owned()),
        ("CITYEVENTS_AUTH__APP__OIDC__PROVIDERS__CORP__CLIENT_ID".to_owned(), "cityevents".to_owned()),
        ("CITYEVENTS_AUTH__APP__OIDC__PROVIDERS__CORP__CLIENT_SECRET".to_owned(), "dashboards-test-secret".to_owned()),
    ];
    let mut jobs = Vec::new();
    for svc in common::SERVICES {
        let port = keel::testing::unused_port();
        env.push((format!("CITYEVENTS_{}__MANAGEMENT__ADDR", svc.to_ascii_uppercase()), format!("127.0.0.1:{port}")));
        jobs.push((svc, port));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let platform = common::Platform::all_in_one(&env);

    let rt = tokio::runtime::Runtime::new().unwrap();
    keel::http::client::install_tls_provider();
    let http = reqwest::Client::builder().no_proxy().timeout(std::time::Duration::from_secs(30)).build().unwrap();
    rt.block_on(traffic(&http, &platform.base));

    let dir = tempfile::tempdir().unwrap();
    let mut config = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
    let _ = writeln!(config, "rule_files: [{:?}]", root().join("deploy/prometheus/rules.yaml").display().to_string());
    config.push_str("scrape_configs:\n");
    for (svc, port) in &jobs {
        let _ = writeln!(config, "  - job_name: {svc}\n    static_configs: [{{targets: [\"127.0.0.1:{port}\"]}}]");
    }
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = keel::testing::unused_port();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api = format!("http://127.0.0.1:{port}/api/v1");

    rt.block_on(async {
        // Every target up, then scraped again after more traffic, so that `rate()` has two samples.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(up) = query(&http, &api, "sum(up)").await
                && up.first().and_then(|s| s["value"][1].as_str()) == Some("5")
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the five targets were not all up within 60 s");
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        traffic(&http, &platform.base).await;
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;

        let rules: Value = http.get(format!("{api}/rules")).send().await.unwrap().json().await.unwrap();
        let mut evaluated = 0;
        for group in rules["data"]["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                assert_ne!(rule["health"], "err", "{}: {}", rule["name"], rule["lastError"]);
                evaluated += 1;
            }
        }
        assert!(evaluated >= 88, "only {evaluated} rules loaded");

        let names: Value = http.get(format!("{api}/label/__name__/values")).send().await.unwrap().json().await.unwrap();
        let exported: BTreeSet<String> =
            names["data"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_owned()).collect();
        let mut failed = Vec::new();
        let mut absent = BTreeSet::new();
        for (board, panel, expr) in queries() {
            if let Err(e) = query(&http, &api, &concrete(&expr)).await {
                failed.push(format!("{board} / {panel}: {e}"));
            }
            for name in metric_names(&concrete(&expr)) {
                if name != "up" && !exported.contains(&name) {
                    absent.insert(name);
                }
            }
        }
        assert!(failed.is_empty(), "dashboard queries Prometheus refused:\n{}", failed.join("\n"));
        assert!(absent.is_empty(), "series the dashboards read and the running platform does not export: {absent:?}");
    });
}

/// Kills Prometheus when the test ends, failed or not.
struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An instant query's result, or Prometheus's error.
async fn query(http: &reqwest::Client, api: &str, q: &str) -> Result<Vec<Value>, String> {
    let mut url = reqwest::Url::parse(&format!("{api}/query")).map_err(|e| e.to_string())?;
    url.query_pairs_mut().append_pair("query", q);
    let r = http.get(url).send().await.map_err(|e| e.to_string())?;
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Some of what users do, through the gateway: pages, lists, a sign-up, a sign-in (a wrong one
/// too), a request refused.
async fn traffic(http: &reqwest::Client, base: &str) {
    let email = format!("{}@example.com", common::unique("metrics"));
    let password = "a long enough password 1";
    for path in ["/", "/api/v1/events", "/api/v1/events?city=Lyon", "/api/v1/meta/cities", "/no-such-page"] {
        http.get(format!("{base}{path}")).send().await.unwrap();
    }
    let r = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&serde_json::json!({"email": email, "password": password, "name": "Metrics"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "register: {}", r.status());
    for pw in ["wrong password, wrong", password] {
        http.post(format!("{base}/api/v1/auth/login"))
            .json(&serde_json::json!({"email": email, "password": pw}))
            .send()
            .await
            .unwrap();
    }
    http.post(format!("{base}/api/v1/events")).json(&serde_json::json!({})).send().await.unwrap();
}
