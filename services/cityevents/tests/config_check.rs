//! `config check` and `serve` agree: every configuration `serve` refuses before it binds is
//! refused by `config check` with the same exit code. A production gateway started on its own
//! gets no loopback upstreams from the launcher and no per-instance limiter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cityevents");
const GW: &str = "CITYEVENTS_GATEWAY";

type Vars = Vec<(String, String)>;

/// A production gateway configuration that passes, as variables.
fn gateway() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = [
        ("CORS__ALLOWED_ORIGINS", "https://app.example"),
        ("SECURITY__JWT__KEYS__t__ALGORITHM", "HS256"),
        ("SECURITY__JWT__KEYS__t__SECRET", "cityevents-gateway-test-hs256-secret-0123456789"),
        // Nothing listens there: neither command may connect before it binds.
        ("REDIS__URL", "redis://127.0.0.1:1/0"),
        ("BUS__BACKEND", "nats"),
        ("BUS__URL", "nats://127.0.0.1:1"),
        ("UPSTREAMS__AUTH__BASE_URL", "http://auth:8081"),
        ("UPSTREAMS__EVENTS__BASE_URL", "http://events:8082"),
        ("UPSTREAMS__JOINS__BASE_URL", "http://joins:8083"),
        ("UPSTREAMS__NOTIFIER__BASE_URL", "http://notifier:8084"),
        ("HTTP__PORT", "0"),
        ("MANAGEMENT__ADDR", "127.0.0.1:0"),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{GW}__{k}"), v.to_owned()))
    .collect();
    for policy in ["API", "IP", "STRICT"] {
        vars.push((format!("{GW}__RATE_LIMITS__{policy}__LIMIT"), "100".into()));
        vars.push((format!("{GW}__RATE_LIMITS__{policy}__BACKEND"), "redis".into()));
    }
    vars
}

fn without(mut vars: Vec<(String, String)>, prefix: &str) -> Vec<(String, String)> {
    vars.retain(|(k, _)| !k.starts_with(prefix));
    vars
}

fn with(mut vars: Vec<(String, String)>, key: &str, value: &str) -> Vec<(String, String)> {
    vars.retain(|(k, _)| k != key);
    vars.push((key.to_owned(), value.to_owned()));
    vars
}

fn command(dir: &std::path::Path, vars: &[(String, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KEEL_ENV", "production")
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null());
    cmd
}

/// `config check`'s exit code and stderr.
fn check(dir: &std::path::Path, service: &str, vars: &[(String, String)]) -> (i32, String) {
    let out = command(dir, vars, &[service, "config", "check"]).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `serve`'s exit code and stderr; a serve still running after 30 s is stopped and reported.
fn serve(dir: &std::path::Path, service: &str, vars: &[(String, String)]) -> (i32, String) {
    let mut child =
        command(dir, vars, &["serve", service]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("serve {service} kept running: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn config_check_refuses_what_serve_refuses_with_the_same_code() {
    let dir = tempfile::tempdir().unwrap();
    let events = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = [
            ("CORS__ALLOWED_ORIGINS", "https://app.example"),
            ("SECURITY__JWT__KEYS__t__ALGORITHM", "HS256"),
            ("SECURITY__JWT__KEYS__t__SECRET", "cityevents-gateway-test-hs256-secret-0123456789"),
            ("DATABASE__URL", "postgres://nobody@127.0.0.1:1/none"),
            ("HTTP__PORT", "0"),
            ("MANAGEMENT__ADDR", "127.0.0.1:0"),
            ("STORAGE__URL", "s3://cityevents-media"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .map(|(k, v)| (format!("CITYEVENTS_EVENTS__{k}"), v.to_owned()))
        .collect();
        v.sort();
        v
    };
    let auth = vec![
        ("CITYEVENTS_AUTH__CORS__ALLOWED_ORIGINS".to_owned(), "https://app.example".to_owned()),
        ("CITYEVENTS_AUTH__DATABASE__URL".into(), "postgres://nobody@127.0.0.1:1/none".into()),
        ("CITYEVENTS_AUTH__STORAGE__URL".into(), "s3://cityevents-avatars".into()),
        ("CITYEVENTS_AUTH__BUS__BACKEND".into(), "nats".into()),
        ("CITYEVENTS_AUTH__BUS__URL".into(), "nats://127.0.0.1:1".into()),
        ("CITYEVENTS_AUTH__SECURITY__JWT__KEYS__t__ALGORITHM".into(), "HS256".into()),
        (
            "CITYEVENTS_AUTH__SECURITY__JWT__KEYS__t__SECRET".into(),
            "cityevents-auth-test-hs256-secret-0123456789".into(),
        ),
        ("CITYEVENTS_AUTH__HTTP__PORT".into(), "0".into()),
        ("CITYEVENTS_AUTH__MANAGEMENT__ADDR".into(), "127.0.0.1:0".into()),
    ];
    let cases: Vec<(&str, &str, Vars, &str)> = vec![
        ("no upstreams", "gateway", without(gateway(), &format!("{GW}__UPSTREAMS__")), "upstreams.auth.base_url"),
        ("no rate_limits.api", "gateway", without(gateway(), &format!("{GW}__RATE_LIMITS__API__")), "rate_limits.api"),
        (
            "a per-instance limiter",
            "gateway",
            with(gateway(), &format!("{GW}__RATE_LIMITS__IP__BACKEND"), "local"),
            "rate_limits.ip.backend",
        ),
        (
            "an in-process bus",
            "events",
            events(&[("BUS__BACKEND", "in_process"), ("UPSTREAMS__JOINS__BASE_URL", "http://joins:8083")]),
            "bus.backend",
        ),
        (
            "events without the joins service",
            "events",
            events(&[("BUS__BACKEND", "nats"), ("BUS__URL", "nats://127.0.0.1:1")]),
            "upstreams.joins.base_url",
        ),
        (
            "events without an object store",
            "events",
            without(
                events(&[
                    ("BUS__BACKEND", "nats"),
                    ("BUS__URL", "nats://127.0.0.1:1"),
                    ("UPSTREAMS__JOINS__BASE_URL", "http://joins:8083"),
                ]),
                "CITYEVENTS_EVENTS__STORAGE__",
            ),
            "storage.url",
        ),
        ("auth without a signing key", "auth", auth, "signing_key"),
    ];
    for (what, service, vars, names) in cases {
        let (checked, check_err) = check(dir.path(), service, &vars);
        let (served, serve_err) = serve(dir.path(), service, &vars);
        assert_ne!(checked, 0, "{what}: config check passed what serve refuses ({serve_err})");
        assert_eq!(checked, served, "{what}: config check {checked} ({check_err}), serve {served} ({serve_err})");
        assert!(check_err.contains(names), "{what}: the error names {names}: {check_err}");
    }
    // What neither refuses, config check passes without connecting to anything.
    let (code, err) = check(dir.path(), "gateway", &gateway());
    assert_eq!(code, 0, "{err}");
    let complete = events(&[
        ("BUS__BACKEND", "nats"),
        ("BUS__URL", "nats://127.0.0.1:1"),
        ("UPSTREAMS__JOINS__BASE_URL", "http://joins:8083"),
    ]);
    let (code, err) = check(dir.path(), "events", &complete);
    assert_eq!(code, 0, "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "config check wrote files: {left:?}");
}

#[test]
fn config_check_in_development_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for service in ["auth", "events", "joins", "notifier", "gateway"] {
        let mut cmd = command(dir.path(), &[], &[service, "config", "check"]);
        let out = cmd.env("KEEL_ENV", "development").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{service}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // No data/, no dev-secrets.json, no SQLite file, no mail directory.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "config check wrote files: {left:?}");
}

/// The Kafka settings of `deploy/k8s/components/kafka` (its `kafka-*` settings, each service's
/// SASL user and password file) pass a production `config check`; Kafka without TLS does not,
/// unless stated (`bus.kafka.allow_plaintext`).
#[test]
fn the_kafka_components_settings_pass_a_production_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let component = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/components/kafka");
    let text = std::fs::read_to_string(component.join("kustomization.yaml")).unwrap();
    let doc: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let literals: Vec<(String, String)> = doc["configMapGenerator"][0]["literals"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str().unwrap().split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let setting = |key: &str| literals.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(setting("bus-backend"), "kafka");
    let password = dir.path().join("kafka-password");
    std::fs::write(&password, "a-long-sasl-scram-password-0123456789").unwrap();
    let kafka = |protocol: &str| -> Vars {
        let mut vars = with(gateway(), &format!("{GW}__BUS__BACKEND"), "kafka");
        vars = with(vars, &format!("{GW}__BUS__URL"), "kafka://127.0.0.1:1,127.0.0.1:2");
        for (var, value) in [
            ("CLIENT_ID", "cityevents-gateway".to_owned()),
            ("SECURITY_PROTOCOL", protocol.to_owned()),
            ("SASL_MECHANISM", setting("kafka-sasl-mechanism")),
            ("PARTITIONS", setting("kafka-partitions")),
            ("REPLICATION_FACTOR", setting("kafka-replication-factor")),
            ("SASL_USERNAME", "cityevents-gateway".to_owned()),
            ("SASL_PASSWORD_FILE", password.display().to_string()),
        ] {
            vars.push((format!("{GW}__BUS__KAFKA__{var}"), value));
        }
        vars
    };
    let (code, err) = check(dir.path(), "gateway", &kafka(&setting("kafka-security-protocol")));
    assert_eq!(code, 0, "{err}");
    let (code, err) = check(dir.path(), "gateway", &kafka("sasl_plaintext"));
    assert_ne!(code, 0, "SASL without TLS in production");
    assert!(err.contains("allow_plaintext"), "{err}");
    let stated = with(kafka("sasl_plaintext"), &format!("{GW}__BUS__KAFKA__ALLOW_PLAINTEXT"), "true");
    let (code, err) = check(dir.path(), "gateway", &stated);
    assert_eq!(code, 0, "{err}");
}
