//! What the services' integration tests share (cargo feature `testing`; enable it from a
//! service's `[dev-dependencies]` only):
//!
//! * [`TestKey`] — an HS256 key with the platform's issuer and audience: the settings that make a
//!   service trust it, and tokens signed with it as auth would issue them;
//! * [`TestEnv`] — a service's environment for a test: its keys named with the service's prefix,
//!   listening on `127.0.0.1` port 0, later settings replacing earlier ones;
//! * [`TestService`] — a service started in this process (`keel::app::start`) and ready, with its
//!   base URL and an HTTP [`client`];
//! * [`database`] — a private PostgreSQL or MariaDB database or SQLite file, or a skip;
//! * [`eventually`] — polls until something holds;
//! * [`check_binary_cli`] — a service binary's `--version` and exit codes;
//! * [`on_every_backend!`](crate::on_every_backend) — one test per SQL backend.
//!
//! ```no_run
//! # async fn example(service: keel::Service<keel::config::NoConfig>) {
//! use cityevents_common::testing::{Backend, TestEnv, TestKey, TestService, database};
//!
//! const KEY: TestKey = TestKey::new("k1", "a-test-only-hs256-secret-0123456789abcdef");
//! let Some(db) = database(Backend::Sqlite).await else { return };
//! let env = TestEnv::new("cityevents-events").trust(&KEY).set("DATABASE__URL", db.url());
//! let svc = TestService::start(service, env.load()).await;
//! let token = KEY.token("0190b8f0-0000-7000-8000-000000000000", "user");
//! let resp = svc.http.get(svc.url("/api/v1/me/events")).bearer_auth(token).send().await.unwrap();
//! svc.stop().await;
//! # }
//! ```
//!
//! Everything here panics on failure: it runs inside tests, where a panic is the report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::borrow::Cow;
use std::future::Future;
use std::time::Duration;

use keel::app::{Loaded, Loader, StartError};
use keel::config::{Profile, Secret, Section};
pub use keel::data::Backend;
use keel::security::jwt::{Jwt, JwtKey};
use keel::testing::{self, TestDatabase};
use keel::{Running, Service};

/// The `iss` of every City Events access token.
pub const ISSUER: &str = "cityevents";
/// The `aud` of every City Events access token.
pub const AUDIENCE: &str = "cityevents";
/// How long [`TestService::start`] waits for `/health/ready`.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// An HS256 JWT key (id and secret) shared by a test and the services it starts.
#[derive(Debug, Clone)]
pub struct TestKey {
    kid: Cow<'static, str>,
    secret: Cow<'static, str>,
}

impl TestKey {
    /// The key `kid` with this secret (a test-only value; at least 32 bytes).
    pub const fn new(kid: &'static str, secret: &'static str) -> Self {
        Self { kid: Cow::Borrowed(kid), secret: Cow::Borrowed(secret) }
    }

    /// The key `kid` with a fresh random secret.
    pub fn random(kid: &str) -> Self {
        Self { kid: Cow::Owned(kid.to_owned()), secret: Cow::Owned(keel::security::crypto::generate_key()) }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The shared secret.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Signs with this key and verifies tokens signed with it, with the platform's issuer and
    /// audience — what auth and every service use.
    pub fn jwt(&self) -> Jwt {
        Jwt::builder()
            .issuer(ISSUER)
            .audience([AUDIENCE])
            .key(JwtKey::hs256(self.kid(), &Secret::new(self.secret())).expect("a valid HS256 key"))
            .sign_with(self.kid())
            .build()
            .expect("a valid JWT configuration")
    }

    /// An access token for `sub` with `role` and a verified address, as auth would issue it.
    pub fn token(&self, sub: &str, role: &str) -> String {
        let jwt = self.jwt();
        jwt.issue(&jwt.claims(sub).role(role).email_verified(true)).expect("a token")
    }

    /// An access token for `sub` with `role` whose address is not verified yet.
    pub fn unverified_token(&self, sub: &str, role: &str) -> String {
        let jwt = self.jwt();
        jwt.issue(&jwt.claims(sub).role(role).email_verified(false)).expect("a token")
    }
}

/// A service's environment variables for a test. Starts listening on `127.0.0.1` port 0 (a free
/// port); [`TestEnv::set`] and [`TestEnv::var`] replace an earlier value of the same variable.
#[derive(Debug, Clone)]
pub struct TestEnv {
    service: String,
    prefix: String,
    vars: Vec<(String, String)>,
}

impl TestEnv {
    /// The environment of the service Keel knows as `service` (e.g.
    /// [`services::EVENTS`](crate::services::EVENTS)`.name`).
    pub fn new(service: &str) -> Self {
        let prefix = Loader::new(service, Profile::Test).env_prefix();
        // The service's own body limit, as its binary's defaults give it.
        Self { service: service.to_owned(), prefix, vars: Vec::new() }
            .set("HTTP__PORT", "0")
            .set("HTTP__ADDR", "127.0.0.1")
            .set("HTTP__BODY_LIMIT", crate::services::by_name(service).map_or("8KiB", |m| m.body_limit))
    }

    /// Sets the configuration key `key` written as the service's variable without its prefix:
    /// `DATABASE__URL`, `APP__JOINS_TOPIC`.
    #[must_use]
    pub fn set(self, key: &str, value: impl Into<String>) -> Self {
        let name = format!("{}__{key}", self.prefix);
        self.var(name, value)
    }

    /// Sets the variable `name`, written in full (`CITYEVENTS_GATEWAY__HTTP__BODY_LIMIT`).
    #[must_use]
    pub fn var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.vars.retain(|(n, _)| *n != name);
        self.vars.push((name, value.into()));
        self
    }

    /// Makes the service verify tokens signed with `key` (`security.jwt.issuer`, `audience` and
    /// `keys.<kid>`), as every service verifies auth's.
    #[must_use]
    pub fn trust(self, key: &TestKey) -> Self {
        let kid = key.kid().to_ascii_uppercase();
        self.set("SECURITY__JWT__ISSUER", ISSUER)
            .set("SECURITY__JWT__AUDIENCE", AUDIENCE)
            .set(&format!("SECURITY__JWT__KEYS__{kid}__ALGORITHM"), "HS256")
            .set(&format!("SECURITY__JWT__KEYS__{kid}__SECRET"), key.secret())
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The variables, in the order they were set.
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// The variables, for a `keel::app::Loader` of another profile.
    pub fn into_vars(self) -> Vec<(String, String)> {
        self.vars
    }

    /// The service's configuration from these variables, under the `test` profile.
    pub fn load<C: Section>(&self) -> Loaded<C> {
        Loader::new(&self.service, Profile::Test)
            .env(self.vars.iter().cloned())
            .load()
            .unwrap_or_else(|e| panic!("{}: invalid test configuration: {e}", self.service))
    }
}

/// A service running in this process, ready (`/health/ready` answered 200).
#[derive(Debug)]
pub struct TestService {
    running: Running,
    /// `http://127.0.0.1:<port>` of its public listener.
    pub base: String,
    /// A client for it (see [`client`]).
    pub http: reqwest::Client,
}

impl TestService {
    /// Starts `service` with `loaded` and waits until it is ready.
    pub async fn start<C: Section>(service: Service<C>, loaded: Loaded<C>) -> Self {
        Self::try_start(service, loaded).await.expect("the service starts")
    }

    /// Like [`TestService::start`], but a service that refuses to start is an error (for tests
    /// of what it refuses).
    pub async fn try_start<C: Section>(service: Service<C>, loaded: Loaded<C>) -> Result<Self, StartError> {
        let running = keel::app::start(service, loaded).await?;
        let svc = Self { base: format!("http://{}", running.http_addr()), http: client(), running };
        svc.wait_ready().await;
        Ok(svc)
    }

    /// Until its probes say ready (databases migrated, consumers subscribed).
    async fn wait_ready(&self) {
        let url = self.url("/health/ready");
        eventually("the service to be ready", READY_WITHIN, || async {
            let r = self.http.get(&url).send().await.ok()?;
            (r.status() == reqwest::StatusCode::OK).then_some(())
        })
        .await;
    }

    /// The URL of `path` (with its query) on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The URL of `path` on the management listener (`/metrics`).
    pub fn management_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.management_addr())
    }

    /// The running service.
    pub fn running(&self) -> &Running {
        &self.running
    }

    /// Shuts it down and waits until it stopped cleanly.
    pub async fn stop(self) {
        self.running.shutdown(std::future::pending()).await.expect("clean shutdown");
    }
}

/// An HTTP client for services under test: no proxy, a 30 s timeout, Keel's TLS provider
/// installed.
pub fn client() -> reqwest::Client {
    keel::http::client::install_tls_provider();
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("an HTTP client")
}

/// A private database on `backend` for one test, or `None` when its server is not running here
/// (the test skips, except under `CI=true`, where it fails).
pub async fn database(backend: Backend) -> Option<TestDatabase> {
    Some(match backend {
        Backend::Sqlite => TestDatabase::sqlite().expect("a SQLite file"),
        Backend::Postgres => {
            if !testing::require("PostgreSQL", &testing::postgres_url()) {
                return None;
            }
            TestDatabase::postgres(&testing::postgres_url()).await.expect("a PostgreSQL database")
        }
        Backend::MySql => {
            if !testing::require("MariaDB", &testing::mysql_url()) {
                return None;
            }
            TestDatabase::mysql(&testing::mysql_url()).await.expect("a MariaDB database")
        }
    })
}

/// Calls `check` every 25 ms until it returns `Some`, and returns that; fails the test, naming
/// `what` it waited for, after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// For each `async fn name(backend: Backend)` listed, a module `name` with one multi-threaded
/// `#[tokio::test]` per SQL backend: `name::sqlite`, `name::postgres`, `name::mysql`. The test
/// function calls [`database`] (or similar) itself, so a server that is not running skips.
///
/// ```ignore
/// async fn joins_and_leaves(backend: Backend) { /* … */ }
/// cityevents_common::on_every_backend!(joins_and_leaves);
/// ```
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::testing::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::testing::Backend::Postgres).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mysql() {
                super::$name($crate::testing::Backend::MySql).await;
            }
        }
    )+};
}

/// Runs the service binary `bin` (from `env!("CARGO_BIN_EXE_<name>")`) the way an operator
/// would and checks what every Keel binary promises: `--version`, `-V` and `version` print its
/// name, version, commit and build profile and exit 0; an invalid configuration exits 78
/// (`EX_CONFIG`) under `config check` and `serve`; an unknown option exits 64 (`EX_USAGE`).
pub fn check_binary_cli(bin: &str, name: &str) {
    use std::process::{Command, Output};
    let run = |args: &[&str], env: &[(&str, &str)]| -> Output {
        let mut cmd = Command::new(bin);
        cmd.args(args).env_remove("KEEL_ENV").env_remove("KEEL_CONFIG").env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    for flag in ["--version", "-V", "version"] {
        let out = run(&[flag], &[]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{name} {flag}: {out:?}");
        assert!(text.starts_with(&format!("name: {name}\nversion: ")), "{name} {flag}: {text}");
        assert!(text.contains("\ncommit: ") && text.contains("\nbuild: "), "{name} {flag}: {text}");
    }
    let port = format!("{}__HTTP__PORT", keel::config::env_prefix(name));
    for args in [&["config", "check"][..], &["serve"][..]] {
        let out = run(args, &[(port.as_str(), "not-a-port")]);
        assert_eq!(out.status.code(), Some(78), "{name} {args:?} with a bad config: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("http.port"), "{name} {args:?}: {out:?}");
    }
    let out = run(&["--no-such-option"], &[]);
    assert_eq!(out.status.code(), Some(64), "{name} with a bad command line: {out:?}");
}

/// A real SMTP server for a test (aiosmtpd, from PyPI), on a port of its own, writing each
/// accepted message to a directory the test reads. Stopped on drop.
///
/// Recipients whose local part starts with `reject` are refused for good (550), with `defer`
/// refused for now (451). Each stored message starts with `X-Sink-Rcpt-To`, `X-Sink-Tls` and
/// `X-Sink-Auth` lines saying how it arrived.
pub struct SmtpSink {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

/// How an [`SmtpSink`] is reached.
#[derive(Debug, Default, Clone)]
pub struct SmtpOptions {
    /// STARTTLS (required) with this certificate and key (PEM files).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// AUTH required with this user and password.
    pub auth: Option<(String, String)>,
    /// Listen on this port (default: a free one).
    pub port: Option<u16>,
}

impl SmtpSink {
    /// Starts the server, or `None` when python3 with aiosmtpd is missing (skipped; a failure
    /// under `CI=true`).
    #[allow(clippy::expect_used)]
    pub fn start(options: &SmtpOptions) -> Option<Self> {
        if !testing::require_command("python3", &["-c", "import aiosmtpd"]) {
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let script = dir.path().join("smtp_sink.py");
        std::fs::write(&script, include_str!("testing_support/smtp_sink.py")).expect("the sink script");
        let mail = dir.path().join("mail");
        std::fs::create_dir(&mail).expect("the mail directory");
        let port = options.port.unwrap_or_else(free_port);
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script).arg(port.to_string()).arg(&mail);
        if let Some((cert, key)) = &options.tls {
            cmd.arg("--tls").arg(cert).arg(key);
        }
        if let Some((user, password)) = &options.auth {
            cmd.arg("--auth").arg(user).arg(password);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("python3 starts");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("the sink's first line");
        assert_eq!(line.trim(), "ready", "the SMTP sink did not start");
        Some(Self { child, dir, port })
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every message received so far, oldest first, as text.
    pub fn messages(&self) -> Vec<String> {
        eml_files(&self.dir.path().join("mail"))
    }

    /// Waits (20 s at most) until a message to `to` satisfies `what`, and returns it.
    pub async fn wait_for(&self, to: &str, what: impl Fn(&str) -> bool) -> String {
        let header = format!("X-Sink-Rcpt-To: {to}\r\n");
        eventually(&format!("a mail to {to}"), Duration::from_secs(20), || async {
            self.messages().into_iter().find(|m| m.starts_with(&header) && what(m))
        })
        .await
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port nobody listens on right now.
#[allow(clippy::expect_used)]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Decodes a whole message's quoted-printable parts (what lettre uses for text that is not
/// plain ASCII lines), so tests can search it for what the user reads.
pub fn decode_quoted_printable(text: &str) -> String {
    match quoted_printable::decode(text, quoted_printable::ParseMode::Robust) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => text.to_owned(),
    }
}

/// The `.eml` files of `dir` (a mail directory), oldest name first, as text; none when the
/// directory does not exist yet.
pub fn eml_files(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect()
}
