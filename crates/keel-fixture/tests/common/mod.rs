//! Shared helpers: start the fixture in-process, or as a child process, on ephemeral ports.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use keel::app::Loader;
use keel::config::Profile;

pub mod otlp;

/// The fixture started in this process.
pub struct Fixture {
    pub running: Option<keel::Running>,
    pub base: String,
    pub mgmt: String,
}

impl Fixture {
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_profile(Profile::Test, env).await
    }

    pub async fn start_profile(profile: Profile, env: &[(&str, &str)]) -> Self {
        let mut vars: Vec<(String, String)> =
            vec![("FIXTURE__HTTP__PORT".into(), "0".into()), ("FIXTURE__HTTP__ADDR".into(), "127.0.0.1".into())];
        vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let loaded = Loader::new("fixture", profile).env(vars).load().expect("valid config");
        let running = keel::app::start(keel_fixture::service(), loaded).await.expect("starts");
        let base = format!("http://{}", running.http_addr());
        let mgmt = format!("http://{}", running.management_addr());
        Self { running: Some(running), base, mgmt }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn running(&self) -> &keel::Running {
        self.running.as_ref().expect("running")
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(std::future::pending()).await.expect("clean shutdown");
        }
    }
}

pub fn client() -> reqwest::Client {
    // reqwest is built without a bundled TLS provider (one provider per process: ring).
    keel::http::client::install_tls_provider();
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().expect("client")
}

/// Polls until `f` is true or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The fixture binary running as a child process, with its stdout lines collected.
pub struct Proc {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    pub http: Option<SocketAddr>,
    pub mgmt: Option<SocketAddr>,
}

/// A port that was free a moment ago, and not handed out before by this test binary: the
/// kernel may give a port just released again, and two tests running in parallel would then
/// start their fixtures on one port (one fails to bind, and the other's readiness check is
/// answered by the wrong process).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_keel-fixture")
}

impl Proc {
    /// Starts `keel-fixture serve` with `env` (and KEEL_ENV=test unless given) on two free
    /// ports, and waits until it accepts connections.
    pub fn spawn(env: &[(&str, &str)]) -> Self {
        Self::spawn_in(None, env)
    }

    /// [`Proc::spawn`] with a working directory.
    pub fn spawn_in(dir: Option<&std::path::Path>, env: &[(&str, &str)]) -> Self {
        Self::spawn_at(dir, free_port(), free_port(), env)
    }

    /// [`Proc::spawn`] on given ports (a second process on a first one's, with
    /// `http.reuse_port`).
    #[allow(dead_code)] // not every test binary uses it
    pub fn spawn_on(http_port: u16, mgmt_port: u16, env: &[(&str, &str)]) -> Self {
        Self::spawn_at(None, http_port, mgmt_port, env)
    }

    fn spawn_at(dir: Option<&std::path::Path>, http_port: u16, mgmt_port: u16, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KEEL_ENV", "test")
            .env("FIXTURE__HTTP__PORT", http_port.to_string())
            .env("FIXTURE__HTTP__ADDR", "127.0.0.1")
            .env("FIXTURE__MANAGEMENT__ADDR", format!("127.0.0.1:{mgmt_port}"))
            .envs(env.iter().copied())
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        let mut child = cmd.spawn().expect("spawn fixture");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {line}"));
            }
        });
        let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().expect("addr");
        let mgmt: SocketAddr = format!("127.0.0.1:{mgmt_port}").parse().expect("addr");
        let mut p = Self { child, lines: rx, seen: Vec::new(), http: Some(http), mgmt: Some(mgmt) };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&http, Duration::from_millis(100)).is_err() {
            if let Some(status) = p.child.try_wait().expect("try_wait") {
                p.drain();
                panic!("fixture exited with {status} before listening:\n{}", p.seen.join("\n"));
            }
            assert!(std::time::Instant::now() < deadline, "fixture never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http.expect("http addr"))
    }

    /// A URL on the management listener (`/metrics`, probes, admin).
    #[allow(dead_code)] // not every test binary uses it
    pub fn management_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.mgmt.expect("management addr"))
    }

    /// Waits for a stdout/stderr line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Reads whatever arrived so far.
    pub fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().expect("kill");
        assert!(ok.success());
    }

    /// Waits for exit; returns the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.drain();
                return status.code().unwrap_or(-1);
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the fixture binary with arguments to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run fixture");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
