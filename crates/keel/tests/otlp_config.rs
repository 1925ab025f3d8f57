//! `config check` of the `telemetry` section: the standard `OTEL_*` variables beneath Keel's own
//! keys, each problem naming the variable or the key it came from, and OTLP header values as
//! secrets (loaded through `keel::app::Loader`, as every binary does).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use keel::config::Profile;
use keel::telemetry::OtlpProtocol;

const TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";

fn load(
    file: Option<&Path>,
    vars: &[(&str, &str)],
) -> Result<keel::app::Loaded<keel::config::NoConfig>, keel::config::ConfigError> {
    let mut loader = keel::app::Loader::new("svc", Profile::Test).env(vars.iter().copied());
    if let Some(f) = file {
        loader = loader.file(f);
    }
    loader.load::<keel::config::NoConfig>()
}

#[test]
fn config_check_names_the_variable_or_the_key() {
    let e = load(None, &[(TRACES_SAMPLER, "sometimes"), ("SVC__TELEMETRY__OTLP__PROTOCOL", "http/json")]).unwrap_err();
    let sampler = e.problems.iter().find(|p| p.path == TRACES_SAMPLER).expect("sampler problem");
    assert_eq!(sampler.source, Some(keel::config::Source::Env(TRACES_SAMPLER.into())));
    assert_eq!(sampler.kind, keel::config::ProblemKind::Invalid);
    assert!(e.problems.iter().any(|p| p.path == "telemetry.otlp.protocol"), "{e}");

    let e = load(None, &[(ENDPOINT, "http://c:4317"), (CERTIFICATE, "/nonexistent/ca.pem")]).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].path, CERTIFICATE);
    // Keel's key wins: the variable is not read.
    assert!(load(None, &[(TRACES_SAMPLER, "sometimes"), ("SVC__TELEMETRY__SAMPLING_RATIO", "0.5")]).is_ok());
    let loaded =
        load(None, &[("SVC__TELEMETRY__SAMPLING_RATIO", "0.5"), ("SVC__TELEMETRY__OTLP__TIMEOUT", "2s")]).unwrap();
    assert_eq!(loaded.config.keel.telemetry.sampling_ratio, Some(0.5));
    assert_eq!(loaded.config.keel.telemetry.otlp.timeout, Some(Duration::from_secs(2)));
}

#[test]
fn header_values_are_secrets_and_may_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "s3cr3t-from-file\n").unwrap();
    let file = dir.path().join("svc.yaml");
    let yaml = format!(
        "telemetry:\n  otlp:\n    endpoint: https://c:4317\n    protocol: http/protobuf\n    headers:\n      x-api-key_file: {}\n      x-tenant: acme\n",
        key.display()
    );
    std::fs::write(&file, yaml).unwrap();
    let loaded = load(Some(&file), &[]).unwrap();
    let h = &loaded.config.keel.telemetry.otlp.headers;
    assert_eq!(h.get("x-api-key").map(keel::config::Secret::expose), Some("s3cr3t-from-file"));
    assert_eq!(h.get("x-tenant").map(keel::config::Secret::expose), Some("acme"));
    assert_eq!(loaded.config.keel.telemetry.otlp.protocol, Some(OtlpProtocol::HttpProtobuf));
    let shown = loaded.to_yaml();
    assert!(!shown.contains("s3cr3t") && !shown.contains("acme"), "{shown}");

    let missing = dir.path().join("bad.yaml");
    std::fs::write(&missing, "telemetry:\n  otlp:\n    headers:\n      x-api-key_file: /nonexistent/key\n").unwrap();
    let e = load(Some(&missing), &[]).unwrap_err();
    assert_eq!(e.problems[0].path, "telemetry.otlp.headers.x-api-key_file", "{e}");
}
