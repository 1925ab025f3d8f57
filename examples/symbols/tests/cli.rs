//! The binaries as an operator meets them: a configuration that cannot work is refused with exit
//! 78 and the keys at fault — never a panic — and nothing is written or dialled to say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};

const API: &str = env!("CARGO_BIN_EXE_symbols");
const WORKER: &str = env!("CARGO_BIN_EXE_symbols-worker");

/// Runs `bin` with only `env` (plus `PATH`) in an empty directory: exit code, stdout, stderr.
fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("symbols-cli-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(bin)
        .args(args)
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let left = std::fs::read_dir(&dir).unwrap().count();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(left, 0, "{args:?} wrote files");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn both_binaries_say_who_they_are() {
    for (bin, name) in [(API, "symbols"), (WORKER, "symbols-worker")] {
        let (code, out, err) = run(bin, &["version"], &[]);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with(&format!("name: {name}\n")), "{out}");
        let (code, out, _) = run(bin, &["--help"], &[]);
        assert_eq!(code, 0);
        assert!(out.contains("healthcheck") && out.contains("migrate"), "{out}");
    }
    let (_, out, _) = run(WORKER, &["--help"], &[]);
    assert!(out.contains("dlq"), "the worker manages its dead letters: {out}");
}

#[test]
fn production_refuses_what_cannot_work_with_exit_78_and_no_panic() {
    // Nothing set: every missing production setting at once.
    let (code, out, err) = run(API, &["config", "check"], &[("KEEL_ENV", "production")]);
    assert_eq!(code, 78, "{out}{err}");
    assert!(format!("{out}{err}").contains("cors.allowed_origins"), "{out}{err}");
    // A CORS wildcard.
    let (code, out, err) = run(API, &["serve"], &[("KEEL_ENV", "production"), ("SYMBOLS__CORS__ALLOWED_ORIGINS", "*")]);
    assert_eq!(code, 78, "{out}{err}");
    assert!(err.contains("cors.allowed_origins"), "{err}");
    // A sound configuration but no database URL: refused before binding, one JSON line.
    let env = [
        ("KEEL_ENV", "production"),
        ("SYMBOLS__CORS__ALLOWED_ORIGINS", "https://app.example"),
        ("SYMBOLS__BUS__BACKEND", "rabbitmq"),
        ("SYMBOLS__BUS__URL", "amqp://symbols:a-long-broker-password@broker.invalid:5672/%2f"),
    ];
    let (code, out, err) = run(API, &["serve"], &env);
    assert_eq!(code, 78, "{out}{err}");
    assert!(err.contains("database"), "{err}");
    // The broker's password never shows.
    assert!(!format!("{out}{err}").contains("a-long-broker-password"));
    for text in [&out, &err] {
        assert!(!text.contains("panicked"), "{text}");
    }
    // The worker: the in-process bus loses events on restart, so production refuses it.
    let env = [
        ("KEEL_ENV", "production"),
        ("SYMBOLS_WORKER__CORS__ALLOWED_ORIGINS", "https://app.example"),
        ("SYMBOLS_WORKER__DATABASE__URL", "mysql://symbols:a-long-database-password@db.invalid:3306/symbols"),
        ("SYMBOLS_WORKER__APP__MAX_ATTEMPTS", "0"),
    ];
    let (code, out, err) = run(WORKER, &["config", "check"], &env);
    assert_eq!(code, 78, "{out}{err}");
    let all = format!("{out}{err}");
    assert!(all.contains("app.max_attempts"), "{all}");
    assert!(!all.contains("a-long-database-password") && !all.contains("panicked"), "{all}");
}

/// One HTTP/1.1 request to 127.0.0.1:`port` with `Connection: close`: the status and body.
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() {
        req.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

/// With nothing set up (development profile), `symbols token issue` and the service share a key
/// made on first use in `data/` (owner-only): the issued token writes, no token does not.
#[test]
fn a_development_token_writes_with_no_setup() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("symbols-dev-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = |c: &mut Command| {
        c.current_dir(&dir).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    };
    let mut issue = Command::new(API);
    base(&mut issue);
    let out = issue.args(["token", "issue", "alice", "--role", symbols::WRITE_ROLE, "--ttl", "10m"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let mode = std::fs::metadata(dir.join(symbols::DEV_KEY_FILE)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key is the owner's only");
    // More than a day is refused: a token cannot be taken back.
    let mut long = Command::new(API);
    base(&mut long);
    let out = long.args(["token", "issue", "alice", "--ttl", "25h"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut serve = Command::new(API);
    base(&mut serve);
    let mut child = serve
        .arg("serve")
        .env("SYMBOLS__HTTP__PORT", port.to_string())
        .env("SYMBOLS__MANAGEMENT__ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while http(port, "GET", "/health/ready", None, None).map(|r| r.0) != Some(200) {
        assert!(std::time::Instant::now() < deadline, "the service did not get ready");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let body = r#"{"name":"dev","kind":"k"}"#;
    let anonymous = http(port, "POST", "/v1/projects/dev/symbols", None, Some(body)).unwrap();
    let signed = http(port, "POST", "/v1/projects/dev/symbols", Some(&token), Some(body)).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(anonymous.0, 401, "{}", anonymous.1);
    assert_eq!(signed.0, 201, "{}", signed.1);
}

/// `config/symbols.yaml`, the production file, is valid with its secret files mounted, prints
/// none of them, and refuses to start without the token key.
#[test]
fn the_production_file_is_valid_with_its_secret_files() {
    let secrets = std::env::temp_dir().join(format!("symbols-secrets-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&secrets).unwrap();
    let file = |name: &str, text: &str| {
        let p = secrets.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let db = file("db", "mysql://symbols:db-password-0123456789@db.invalid:3306/symbols");
    let bus = file("bus", "amqp://symbols:bus-password-0123456789@mq.invalid:5672/%2f");
    let admin = file("admin", "admin-token-0123456789abcdefghijklmn");
    let jwt = file("jwt", "jwt-key-0123456789abcdefghijklmnopqr");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/symbols.yaml");
    let mut env = vec![
        ("KEEL_ENV", "production"),
        ("SYMBOLS_ORIGIN", "https://app.example"),
        ("SYMBOLS_DATABASE_URL_FILE", db.as_str()),
        ("SYMBOLS_BUS_URL_FILE", bus.as_str()),
        ("SYMBOLS_ADMIN_TOKEN_FILE", admin.as_str()),
        ("SYMBOLS_JWT_KEY_FILE", jwt.as_str()),
    ];
    let (code, out, err) = run(API, &["--config", config, "config", "check"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("signing_key: main"), "{out}");
    for secret in ["db-password", "bus-password", "admin-token-0123", "jwt-key-0123"] {
        assert!(!format!("{out}{err}").contains(secret), "{secret} printed: {out}{err}");
    }
    env.retain(|(k, _)| *k != "SYMBOLS_JWT_KEY_FILE");
    env.push(("SYMBOLS_JWT_KEY_FILE", "/nonexistent/symbols-jwt-key"));
    let (code, out, err) = run(API, &["--config", config, "config", "check"], &env);
    std::fs::remove_dir_all(&secrets).unwrap();
    assert_eq!(code, 78, "{out}{err}");
    assert!(err.contains("security.jwt.keys.main.secret"), "{err}");
}
