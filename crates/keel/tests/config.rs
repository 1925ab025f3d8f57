//! Configuration loading: layers, interpolation, secrets, every error class, production rules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::time::Duration;

use keel::app::{Loaded, Loader};
use keel::config::{ConfigError, MASK, NoConfig, ProblemKind, Profile, Secret, Section, Source, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct App {
    greeting: String,
    retries: u32,
    api_key: Option<Secret>,
    limit: Option<u32>,
    #[serde(with = "keel::config::duration")]
    poll: Duration,
}

impl Section for App {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.retries > 10 {
            v.invalid("retries", "at most 10");
        }
    }
}

fn yaml(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn load(
    profile: Profile,
    file: Option<&tempfile::NamedTempFile>,
    env: &[(&str, &str)],
) -> Result<Loaded<App>, ConfigError> {
    let mut l = Loader::new("svc", profile).env(env.iter().copied());
    if let Some(f) = file {
        l = l.file(f.path());
    }
    l.load::<App>()
}

fn problem<'a>(e: &'a ConfigError, path: &str) -> &'a keel::config::Problem {
    e.problems.iter().find(|p| p.path == path).unwrap_or_else(|| panic!("no problem at {path}: {e}"))
}

/// A production config that passes every rule, to which tests add one fault at a time.
const PROD_OK: &[(&str, &str)] = &[("SVC__CORS__ALLOWED_ORIGINS", "https://app.example.com")];

#[test]
fn defaults_per_profile() {
    let dev = load(Profile::Development, None, &[]).unwrap();
    let k = &dev.config.keel;
    assert_eq!(k.http.port, 8080);
    assert_eq!(k.log.level, "info");
    assert_eq!(k.log.format, keel::telemetry::LogFormat::Pretty);
    assert_eq!(k.shutdown.drain_delay, Duration::ZERO);
    assert_eq!(k.shutdown.timeout, Duration::from_secs(30));
    assert_eq!(k.http.body_limit, 1 << 20);
    assert_eq!(k.management_addr().unwrap().to_string(), "127.0.0.1:9080");
    let prod = load(Profile::Production, None, PROD_OK).unwrap();
    assert_eq!(prod.config.keel.log.format, keel::telemetry::LogFormat::Json);
    assert_eq!(prod.config.keel.shutdown.drain_delay, Duration::from_secs(5));
}

#[test]
fn file_then_env_precedence() {
    let f = yaml(
        "http:\n  port: 7000\n  request_timeout: 250ms\nlog:\n  level: warn\napp:\n  greeting: from-file\n  retries: 2\n  poll: 1m\n",
    );
    let l = load(Profile::Test, Some(&f), &[("SVC__HTTP__PORT", "9000"), ("SVC__APP__GREETING", "from-env")]).unwrap();
    let c = &l.config;
    assert_eq!(c.keel.http.port, 9000, "env beats file");
    assert_eq!(c.keel.http.request_timeout, Duration::from_millis(250), "file beats default");
    assert_eq!(c.keel.log.level, "warn");
    assert_eq!(c.app.greeting, "from-env");
    assert_eq!(c.app.retries, 2);
    assert_eq!(c.app.poll, Duration::from_secs(60));
    assert_eq!(l.sources["http.port"], Source::Env("SVC__HTTP__PORT".into()));
    assert!(matches!(&l.sources["http.request_timeout"], Source::File { interpolated: false, .. }));
    // Lists from env are comma-separated; booleans and numbers are typed by the setting.
    let l = load(
        Profile::Test,
        None,
        &[
            ("SVC__CORS__ALLOWED_ORIGINS", "https://a.example, https://b.example"),
            ("SVC__CORS__ALLOW_CREDENTIALS", "true"),
        ],
    )
    .unwrap();
    assert_eq!(l.config.keel.cors.allowed_origins, vec!["https://a.example", "https://b.example"]);
    assert!(l.config.keel.cors.allow_credentials);
    // A numeric-looking string setting stays a string.
    let l = load(Profile::Test, None, &[("SVC__APP__GREETING", "12345")]).unwrap();
    assert_eq!(l.config.app.greeting, "12345");
}

#[test]
fn interpolation() {
    let f = yaml(
        "http:\n  port: ${PORT}\n  addr: ${ADDR:-127.0.0.1}\napp:\n  greeting: \"hi ${WHO:-there}, $${LITERAL}\"\n  retries: ${RETRIES:-3}\n",
    );
    let l = load(Profile::Test, Some(&f), &[("PORT", "8181")]).unwrap();
    assert_eq!(l.config.keel.http.port, 8181);
    assert_eq!(l.config.keel.http.addr.to_string(), "127.0.0.1");
    assert_eq!(l.config.app.greeting, "hi there, ${LITERAL}");
    assert_eq!(l.config.app.retries, 3);
    assert!(matches!(&l.sources["http.port"], Source::File { interpolated: true, .. }));
    // Unset without default: an error naming the variable and the key, with the rest still reported.
    let f = yaml("http:\n  port: ${NOPE}\n  request_timeout: ${ALSO_NOPE}\n");
    let e = load(Profile::Test, Some(&f), &[]).unwrap_err();
    let p = problem(&e, "http.port");
    assert_eq!(p.kind, ProblemKind::Interpolation);
    assert!(p.message.contains("NOPE"), "{e}");
    assert!(e.to_string().contains(&f.path().display().to_string()), "names the file: {e}");
    assert!(e.problems.iter().any(|p| p.path == "http.request_timeout" && p.message.contains("ALSO_NOPE")), "{e}");
}

/// Found by the `config` fuzz target: a value taken from the environment through `${VAR}` (it
/// may be a secret under the wrong key) was quoted in the problem, and so in the start-up log.
#[test]
fn an_interpolated_value_is_never_quoted_in_a_problem() {
    const SECRET: &str = "fuzz-secret-value-7f3a9c";
    let f = yaml(
        "http:\n  port: ${S}\nsecurity:\n  jwt:\n    keys:\n      k1:\n        algorithm: HS2 ${S}\napp:\n  poll: ${S}\n  retries: \"${N}\"\n",
    );
    let e = load(Profile::Test, Some(&f), &[("S", SECRET), ("N", "x1")]).unwrap_err();
    let said = e.to_string();
    assert!(!said.contains(SECRET) && !said.contains("x1"), "{said}");
    for path in ["http.port", "security.jwt.keys.k1.algorithm", "app.poll", "app.retries"] {
        let p = problem(&e, path);
        assert!(matches!(p.source, Some(Source::File { interpolated: true, .. })), "{p:?}");
        assert!(p.message.contains(MASK), "says where the value was, not what: {p:?}");
    }
    // A value written in the file itself is still quoted: the reader has it anyway.
    let f = yaml("app:\n  poll: soon\n");
    assert!(problem(&load(Profile::Test, Some(&f), &[]).unwrap_err(), "app.poll").message.contains("`soon`"));
}

#[test]
fn unknown_keys_name_key_and_source() {
    let f = yaml("http:\n  prot: 1\n  port: 8000\nhtpp:\n  port: 1\napp:\n  greting: x\n");
    let e = load(Profile::Test, Some(&f), &[("SVC__LOG__LEVL", "info")]).unwrap_err();
    let file = f.path().display().to_string();
    for (path, from) in [
        ("http.prot", file.as_str()),
        ("htpp", file.as_str()),
        ("app.greting", file.as_str()),
        ("log.levl", "env SVC__LOG__LEVL"),
    ] {
        let p = problem(&e, path);
        assert_eq!(p.kind, ProblemKind::UnknownKey);
        let text = p.to_string();
        assert!(text.contains(&format!("unknown key `{path}`")) && text.contains(from), "{text}");
    }
    assert_eq!(e.problems.len(), 4, "all of them, not just the first: {e}");
}

#[test]
fn type_errors_name_every_path() {
    let f = yaml("http:\n  prot: 1\n  port: lots\n  request_timeout: 5\n  compression: maybe\napp:\n  retries: many\n");
    let e = load(Profile::Test, Some(&f), &[("SVC__SHUTDOWN__TIMEOUT", "soon")]).unwrap_err();
    for path in ["http.port", "http.request_timeout", "http.compression", "app.retries", "shutdown.timeout"] {
        assert_eq!(problem(&e, path).kind, ProblemKind::Type, "{e}");
    }
    assert!(problem(&e, "http.request_timeout").message.contains("has no unit"), "{e}");
    // An unknown key in a section that also has a type error is still reported.
    assert_eq!(problem(&e, "http.prot").kind, ProblemKind::UnknownKey, "{e}");
    assert!(problem(&e, "shutdown.timeout").to_string().contains("env SVC__SHUTDOWN__TIMEOUT"), "{e}");
}

#[test]
fn invalid_values_are_all_reported() {
    let e = load(
        Profile::Test,
        None,
        &[
            ("SVC__TELEMETRY__SAMPLING_RATIO", "1.5"),
            ("SVC__TELEMETRY__OTLP__ENDPOINT", "not a url"),
            ("SVC__CORS__ALLOWED_ORIGINS", "https://ok.example,example.com,https://x.example/path"),
            ("SVC__LOG__LEVEL", "loud"),
            ("SVC__HTTP__MAX_IN_FLIGHT", "0"),
            ("SVC__APP__RETRIES", "11"),
            ("SVC__HEALTH__TTL", "1s"),
        ],
    )
    .unwrap_err();
    for path in [
        "telemetry.sampling_ratio",
        "telemetry.otlp.endpoint",
        "cors.allowed_origins[1]",
        "cors.allowed_origins[2]",
        "log.level",
        "http.max_in_flight",
        "app.retries",
        "health.ttl",
    ] {
        assert_eq!(problem(&e, path).kind, ProblemKind::Invalid, "{path}: {e}");
    }
    // The connection limits and HTTP/2 settings are bounded.
    let e = load(
        Profile::Test,
        None,
        &[
            ("SVC__HTTP__MAX_CONNECTIONS_PER_IP", "0"),
            ("SVC__HTTP__HTTP2__IDLE_TIMEOUT", "0s"),
            ("SVC__HTTP__HTTP2__KEEP_ALIVE_INTERVAL", "0s"),
            ("SVC__HTTP__HTTP2__KEEP_ALIVE_TIMEOUT", "0s"),
            ("SVC__HTTP__HTTP2__MAX_CONCURRENT_STREAMS", "0"),
            ("SVC__HTTP__HTTP2__MAX_HEADER_LIST_SIZE", "32MiB"),
        ],
    )
    .unwrap_err();
    for path in [
        "http.max_connections_per_ip",
        "http.http2.idle_timeout",
        "http.http2.keep_alive_interval",
        "http.http2.keep_alive_timeout",
        "http.http2.max_concurrent_streams",
        "http.http2.max_header_list_size",
    ] {
        assert_eq!(problem(&e, path).kind, ProblemKind::Invalid, "{path}: {e}");
    }
    let e = load(Profile::Test, None, &[("SVC__HTTP__HTTP2__MAX_HEADER_LIST_SIZE", "512")]).unwrap_err();
    assert!(problem(&e, "http.http2.max_header_list_size").message.contains("1KiB"), "{e}");
    // `*` with credentials is refused in every profile.
    let e = load(
        Profile::Development,
        None,
        &[("SVC__CORS__ALLOWED_ORIGINS", "*"), ("SVC__CORS__ALLOW_CREDENTIALS", "true")],
    )
    .unwrap_err();
    assert!(problem(&e, "cors.allowed_origins").message.contains("credentials"));
    // Bad YAML and a missing file are file problems.
    let f = yaml("http: [unclosed\n");
    let e = load(Profile::Test, Some(&f), &[]).unwrap_err();
    assert_eq!(e.problems[0].kind, ProblemKind::File);
    let e = Loader::new("svc", Profile::Test).file("/no/such/keel.yaml").load::<App>().unwrap_err();
    assert!(e.to_string().contains("/no/such/keel.yaml"));
}

#[test]
fn production_rules_list_every_violation() {
    let f = yaml("management:\n  admin_token: inline-secret-value-123456\napp:\n  api_key: also-inline\n");
    let e = load(
        Profile::Production,
        Some(&f),
        &[("SVC__LOG__LEVEL", "trace"), ("SVC__CORS__ALLOWED_ORIGINS", "https://ok.example,*")],
    )
    .unwrap_err();
    let text = e.to_string();
    for path in ["management.admin_token", "app.api_key", "log.level", "cors.allowed_origins"] {
        assert_eq!(problem(&e, path).kind, ProblemKind::Production, "{text}");
    }
    assert!(!text.contains("inline-secret-value") && !text.contains("also-inline"), "secrets never printed: {text}");
    // Empty allowlist in production.
    let e = load(Profile::Production, None, &[]).unwrap_err();
    assert_eq!(problem(&e, "cors.allowed_origins").kind, ProblemKind::Production);
    // RUST_LOG=trace counts too.
    let mut env = PROD_OK.to_vec();
    env.push(("RUST_LOG", "info,hyper=trace"));
    let e = load(Profile::Production, None, &env).unwrap_err();
    assert_eq!(problem(&e, "RUST_LOG").kind, ProblemKind::Production);
    // The same file is fine in development.
    assert!(load(Profile::Development, Some(&f), &[]).is_ok());
}

#[test]
fn secrets_from_env_interpolation_and_files_are_accepted_in_production() {
    let secret_file = yaml("from-a-file-0123456789\n");
    let f = yaml("management:\n  admin_token: ${ADMIN_TOKEN}\n");
    let mut env = PROD_OK.to_vec();
    env.push(("ADMIN_TOKEN", "from-interpolation-0123"));
    let path = secret_file.path().display().to_string();
    env.push(("SVC__APP__API_KEY_FILE", &path));
    let l = load(Profile::Production, Some(&f), &env).unwrap();
    assert_eq!(l.config.keel.management.admin_token.as_ref().unwrap().expose(), "from-interpolation-0123");
    assert_eq!(l.config.app.api_key.as_ref().unwrap().expose(), "from-a-file-0123456789", "trailing newline removed");
    assert_eq!(l.sources["app.api_key"], Source::SecretFile(secret_file.path().to_path_buf()));
    // The effective YAML masks every secret.
    let y = l.to_yaml();
    assert!(!y.contains("from-interpolation") && !y.contains("from-a-file"), "{y}");
    assert_eq!(y.matches(MASK).count(), 2, "{y}");
    assert!(y.contains("addr: 127.0.0.1:9080"), "management address resolved: {y}");
    // `_file` in YAML works too; an unreadable file and a double definition are errors.
    let f = yaml(&format!("app:\n  api_key_file: {path}\n"));
    assert!(load(Profile::Test, Some(&f), &[]).unwrap().config.app.api_key.is_some());
    let e = load(Profile::Test, None, &[("SVC__APP__API_KEY_FILE", "/no/such/secret")]).unwrap_err();
    assert_eq!(problem(&e, "app.api_key_file").kind, ProblemKind::SecretFile);
    let e = load(Profile::Test, None, &[("SVC__APP__API_KEY_FILE", &path), ("SVC__APP__API_KEY", "x")]).unwrap_err();
    assert_eq!(problem(&e, "app.api_key").kind, ProblemKind::SecretFile);
}

/// A map entry's secrets (`upstreams.<name>.proxy_secret`) come from `<key>_file` as any
/// other's, in the file and in env; `http.proxy_secret` must be long enough.
#[test]
fn secrets_of_map_entries_and_the_proxy_secret_come_from_files() {
    let secret_file = yaml("a-proxy-secret-of-forty-characters-0123\n");
    let path = secret_file.path().display().to_string();
    let f = yaml(&format!(
        "upstreams:\n  auth:\n    base_url: http://auth:8081\n    proxy_secret_file: {path}\nhttp:\n  proxy_secret_file: {path}\n"
    ));
    let l = load(Profile::Test, Some(&f), &[]).unwrap();
    let auth = &l.config.keel.upstreams["auth"];
    assert_eq!(auth.proxy_secret.as_ref().unwrap().expose(), "a-proxy-secret-of-forty-characters-0123");
    assert_eq!(auth.base_url, "http://auth:8081");
    assert!(l.config.keel.http.proxy_secret.is_some());
    let env = [
        ("SVC__UPSTREAMS__EVENTS__BASE_URL", "http://events:8082"),
        ("SVC__UPSTREAMS__EVENTS__PROXY_SECRET_FILE", &path),
    ];
    let l = load(Profile::Test, None, &env).unwrap();
    assert!(l.config.keel.upstreams["events"].proxy_secret.is_some(), "from env");
    let e = load(Profile::Test, None, &[("SVC__HTTP__PROXY_SECRET", "short")]).unwrap_err();
    assert!(problem(&e, "http.proxy_secret").message.contains("32 characters"), "{e}");
}

#[test]
fn profile_from_keel_env() {
    assert!(Profile::parse(Some("staging")).unwrap_err().to_string().contains("KEEL_ENV"));
    assert_eq!(Profile::parse(Some("test")).unwrap(), Profile::Test);
    let _ = NoConfig::default();
}

#[test]
fn env_text_is_kept_verbatim_unless_the_setting_wants_a_number() {
    let l = load(
        Profile::Test,
        None,
        &[("SVC__APP__API_KEY", "0x1f"), ("SVC__APP__LIMIT", "5"), ("SVC__TELEMETRY__OTLP__ENDPOINT", "http://c:4317")],
    )
    .unwrap();
    assert_eq!(l.config.app.api_key.as_ref().unwrap().expose(), "0x1f", "a secret is never reinterpreted");
    assert_eq!(l.config.app.limit, Some(5), "an optional number still reads from env");
    for raw in ["null", "~", "1e5", "+123", "True", "00123456789012345678901234"] {
        let l = load(Profile::Test, None, &[("SVC__APP__API_KEY", raw)]).unwrap();
        assert_eq!(l.config.app.api_key.as_ref().unwrap().expose(), raw);
    }
    let e = load(Profile::Test, None, &[("SVC__APP__LIMIT", "lots")]).unwrap_err();
    assert_eq!(problem(&e, "app.limit").kind, ProblemKind::Type);
}

#[test]
fn an_interpolation_default_is_still_an_inline_secret_in_production() {
    let f = yaml("management:\n  admin_token: ${ADMIN_TOKEN:-hunter2hunter2}\n");
    let e = load(Profile::Production, Some(&f), PROD_OK).unwrap_err();
    assert_eq!(problem(&e, "management.admin_token").kind, ProblemKind::Production);
    let mut env = PROD_OK.to_vec();
    env.push(("ADMIN_TOKEN", "from-the-environment-0123"));
    assert!(load(Profile::Production, Some(&f), &env).is_ok(), "set from env: fine");
}

#[test]
fn a_bad_feature_flags_file_is_a_config_error() {
    let flags = yaml("checkout: {enabled: true, strategy: percentage, rules: {percentage: 150}}\n");
    let path = flags.path().to_str().unwrap();
    let e = load(Profile::Test, None, &[("SVC__FEATURES__FILE", path)]).unwrap_err();
    let p = problem(&e, "features.file");
    assert_eq!(p.kind, ProblemKind::Invalid);
    assert!(p.message.contains("checkout.rules.percentage"), "{p}");
    let e = load(Profile::Test, None, &[("SVC__FEATURES__FILE", "/nonexistent/flags.yaml")]).unwrap_err();
    assert!(problem(&e, "features.file").message.contains("cannot read"));
    let e = load(Profile::Test, None, &[("SVC__FEATURES__POLL_INTERVAL", "0s")]).unwrap_err();
    problem(&e, "features.poll_interval");

    let good = yaml("checkout: {enabled: true}\n");
    let l = load(Profile::Test, None, &[("SVC__FEATURES__FILE", good.path().to_str().unwrap())]).unwrap();
    assert_eq!(l.config.keel.features.file.as_deref(), Some(good.path()));
    assert!(l.config.keel.features.reload);
}

#[test]
fn outbox_batch_size_is_bounded() {
    for (value, ok) in [("0", false), ("1", true), ("10000", true), ("10001", false)] {
        let r = load(Profile::Development, None, &[("SVC__OUTBOX__BATCH_SIZE", value)]);
        match (r, ok) {
            (Ok(_), true) => {}
            (Err(e), false) => assert!(problem(&e, "outbox.batch_size").message.contains("must be at"), "{e}"),
            (r, _) => panic!("outbox.batch_size {value}: {:?}", r.err()),
        }
    }
}

#[test]
fn outbox_lease_is_long_enough_to_renew() {
    for (value, ok) in [("199ms", false), ("200ms", true), ("2s", true), ("5m", true)] {
        let r = load(Profile::Development, None, &[("SVC__OUTBOX__LEASE", value)]);
        match (r, ok) {
            (Ok(l), true) => assert_eq!(l.config.keel.outbox.lease, keel::config::duration::parse(value).unwrap()),
            (Err(e), false) => assert!(problem(&e, "outbox.lease").message.contains("at least 200ms"), "{e}"),
            (r, _) => panic!("outbox.lease {value}: {:?}", r.err()),
        }
    }
}

#[test]
fn rate_limit_instances_are_bounded() {
    for (value, ok) in [("0", false), ("1", true), ("6", true), ("10000", true), ("10001", false)] {
        let r = load(Profile::Development, None, &[("SVC__RATE_LIMITS__API__INSTANCES", value)]);
        match (r, ok) {
            (Ok(l), true) => assert_eq!(l.config.keel.rate_limits["api"].instances.to_string(), value),
            (Err(e), false) => {
                assert!(problem(&e, "rate_limits.api.instances").message.contains("from 1 to 10000"), "{e}");
            }
            (r, _) => panic!("rate_limits.api.instances {value}: {:?}", r.err()),
        }
    }
}

#[test]
fn rate_limit_rules_report_every_problem() {
    let f = yaml(
        "rate_limits:
  api:
    backend: redis
    on_backend_error: fail_closed
    rules:
      reads:
        methods: [GET, GTE]
        paths: [\"/api/v1/**\", \"api/v1/events\", \"/api/v1/ev*\"]
        on_backend_error: fallback_local
      everything: {}
      also_reads:
        methods: [get]
        paths: [\"/api/v1/events/{id}\"]
        burst: 3
        limit: 0
  small:
    backend: local
    on_backend_error: fallback_local
",
    );
    let e = load(Profile::Test, Some(&f), &[]).unwrap_err();
    let text = e.to_string();
    for (path, says) in [
        ("rate_limits.api.rules.reads.methods[1]", "`GTE` is not an HTTP method"),
        ("rate_limits.api.rules.reads.paths[1]", "must start with /"),
        ("rate_limits.api.rules.reads.paths[2]", "whole segments"),
        ("rate_limits.api.rules.everything", "matches every request"),
        ("rate_limits.api.rules.also_reads.limit", "at least 1"),
        ("rate_limits.api.rules.also_reads.burst", "local backend only"),
        ("rate_limits.small.on_backend_error", "needs backend: redis"),
    ] {
        let p = problem(&e, path);
        assert!(p.message.contains(says), "{path}: {} ({text})", p.message);
        assert_eq!(p.kind, ProblemKind::Invalid, "{path}");
    }

    // Overlapping rules: the second (by name) names the first.
    let f = yaml(
        "rate_limits:
  api:
    backend: redis
    rules:
      a_reads: { methods: [GET], paths: [\"/api/**\"] }
      b_event: { paths: [\"/api/v1/events/{id}\"], on_backend_error: fail_closed }
      c_writes: { methods: [POST], paths: [\"/api/v1/auth/login\"], limit: 5 }
",
    );
    let e = load(Profile::Test, Some(&f), &[]).unwrap_err();
    assert!(problem(&e, "rate_limits.api.rules.b_event").message.contains("overlaps rule `a_reads`"), "{e}");
    assert!(
        e.problems.iter().all(|p| p.path != "rate_limits.api.rules.c_writes"),
        "POST /api/v1/auth/login overlaps neither: {e}"
    );
    let b = e.problems.iter().find(|p| p.path == "rate_limits.api.rules.b_event").unwrap();
    assert!(b.message.contains("overlaps rule `a_reads`") && !b.message.contains("c_writes"), "{e}");
}

#[test]
fn rate_limit_unknown_mode_is_a_type_error_naming_the_choices() {
    let e = load(
        Profile::Test,
        None,
        &[
            ("SVC__RATE_LIMITS__API__BACKEND", "redis"),
            ("SVC__RATE_LIMITS__API__RULES__READS__METHODS", "GET,HEAD"),
            ("SVC__RATE_LIMITS__API__RULES__READS__ON_BACKEND_ERROR", "fallback"),
        ],
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("rate_limits.api"), "{text}");
    assert!(text.contains("`fallback`") && text.contains("fallback_local"), "{text}");
}

#[test]
fn rate_limit_rules_from_env_and_production_refuses_failing_open_on_writes() {
    let env = [
        ("SVC__RATE_LIMITS__API__BACKEND", "redis"),
        ("SVC__RATE_LIMITS__API__KEY", "user"),
        ("SVC__RATE_LIMITS__API__ON_BACKEND_ERROR", "fail_closed"),
        ("SVC__RATE_LIMITS__API__RULES__READS__METHODS", "GET,HEAD"),
        ("SVC__RATE_LIMITS__API__RULES__READS__PATHS", "/api/v1/**"),
        ("SVC__RATE_LIMITS__API__RULES__READS__ON_BACKEND_ERROR", "fallback_local"),
        ("SVC__RATE_LIMITS__API__RULES__LOGIN__METHODS", "POST"),
        ("SVC__RATE_LIMITS__API__RULES__LOGIN__PATHS", "/api/v1/auth/login"),
        ("SVC__RATE_LIMITS__API__RULES__LOGIN__LIMIT", "10"),
        ("SVC__RATE_LIMITS__API__RULES__LOGIN__WINDOW", "5m"),
    ];
    let mut prod: Vec<(&str, &str)> = PROD_OK.to_vec();
    prod.extend(env);
    let loaded = load(Profile::Production, None, &prod).unwrap();
    let api = &loaded.config.keel.rate_limits["api"];
    let reads = &api.rules["reads"];
    assert_eq!(reads.methods, ["GET", "HEAD"]);
    assert_eq!(reads.on_backend_error, Some(keel::resilience::rate_limit::OnBackendError::FallbackLocal));
    assert!(!reads.counts_separately(), "only the failure mode changes: one budget with the policy");
    let login = &api.rules["login"];
    assert_eq!((login.limit, login.window), (Some(10), Some(Duration::from_secs(300))));
    assert!(login.counts_separately());
    let specs = api.limiter_specs("api", keel::resilience::rate_limit::OnBackendError::FailClosed).unwrap();
    let names: Vec<(&str, &str)> = specs.iter().map(|s| (s.name.as_str(), s.counter.as_str())).collect();
    assert_eq!(names, [("api", "api"), ("api.login", "api.login"), ("api.reads", "api")]);

    // Failing open: refused in production where writes are covered, allowed for reads only.
    let mut open = prod.clone();
    open.push(("SVC__RATE_LIMITS__API__RULES__LOGIN__ON_BACKEND_ERROR", "fail_open"));
    open.push(("SVC__RATE_LIMITS__API__RULES__READS__ON_BACKEND_ERROR", "fail_open"));
    let e = load(Profile::Production, None, &open).unwrap_err();
    let p = problem(&e, "rate_limits.api.rules.login.on_backend_error");
    assert_eq!(p.kind, ProblemKind::Production);
    assert!(p.message.contains("writes through unlimited"), "{e}");
    assert!(e.problems.iter().all(|p| p.path != "rate_limits.api.rules.reads.on_backend_error"), "{e}");
    let mut open_policy = prod.clone();
    open_policy.push(("SVC__RATE_LIMITS__API__ON_BACKEND_ERROR", "fail_open"));
    let e = load(Profile::Production, None, &open_policy).unwrap_err();
    assert_eq!(problem(&e, "rate_limits.api.on_backend_error").kind, ProblemKind::Production);
    let dev: Vec<(&str, &str)> = open.iter().copied().filter(|(k, _)| k.starts_with("SVC__RATE")).collect();
    load(Profile::Development, None, &dev).expect("failing open is allowed outside production");
}

/// Found by the `config` fuzz target: under a key written with a dot the value is not where
/// its path leads, and was quoted; `$${` alone takes nothing from the environment.
#[test]
fn a_value_under_a_dotted_key_is_masked_too() {
    const SECRET: &str = "fuzz-secret-value-7f3a9c";
    let f = yaml("production host: \"$${literal}\"\nsecurity:\n  jwt:\n    keys:\n      k1.algorithm: HS2 ${S}\n");
    let e = load(Profile::Test, Some(&f), &[("S", SECRET)]).unwrap_err();
    assert!(!e.to_string().contains(SECRET), "{e}");
    assert!(problem(&e, "security.jwt.keys.k1.algorithm").message.contains(MASK), "{e}");
    let literal = problem(&e, "production host");
    assert!(matches!(literal.source, Some(Source::File { interpolated: false, .. })), "{literal:?}");
    // Two settings on one path, the one written in the file last: still masked.
    let f = yaml("security:\n  jwt:\n    keys:\n      k1.algorithm: ${S}\n      k1:\n        algorithm: HS2\n");
    let e = load(Profile::Test, Some(&f), &[("S", SECRET)]).unwrap_err();
    assert!(!e.to_string().contains(SECRET), "{e}");
    // A message quoting a part of a value that also holds a default written in the file.
    let f = yaml("log:\n  level: \"x ${S},${U:-y}\"\n");
    let e = load(Profile::Test, Some(&f), &[("S", SECRET)]).unwrap_err();
    assert!(!e.to_string().contains(SECRET) && problem(&e, "log.level").message.contains(MASK), "{e}");
}
