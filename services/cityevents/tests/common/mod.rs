//! Starting City Events for end-to-end tests: the all-in-one binary, or the distributed script
//! (five processes on PostgreSQL, Redis and NATS), each on free ports with its own data.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod idp;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const SERVICES: [&str; 5] = ["auth", "events", "joins", "notifier", "gateway"];

pub fn unique(base: &str) -> String {
    format!("{base}{}", uuid::Uuid::now_v7().simple().to_string().get(20..).unwrap())
}

/// A running platform; stopped (SIGTERM, then waited for) on drop.
pub struct Platform {
    child: Child,
    pub base: String,
    /// The services behind the gateway: name (`auth` …) and base URL.
    pub upstreams: Vec<(String, String)>,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    _dir: tempfile::TempDir,
    databases: Vec<String>,
}

impl Platform {
    /// `cityevents` with no arguments, in a fresh directory (its `data/` is new).
    pub fn all_in_one(extra_env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cityevents"));
        cmd.current_dir(dir.path()).env("KEEL_ENV", "development").env_remove("RUST_LOG");
        let (mut gateway, upstreams) = ports(&mut cmd, false);
        // The scenario is many users from one address: the per-IP policies are set out of its way.
        // Organizers' digests of joins and leaves every second, so the scenario sees one.
        cmd.env("CITYEVENTS_NOTIFIER__APP__DIGEST_INTERVAL", "1s");
        cmd.env("CITYEVENTS_GATEWAY__RATE_LIMITS__API__LIMIT", "300")
            .env("CITYEVENTS_GATEWAY__RATE_LIMITS__API__KEY", "user,ip")
            .env("CITYEVENTS_GATEWAY__RATE_LIMITS__IP__LIMIT", "100000")
            .env("CITYEVENTS_GATEWAY__RATE_LIMITS__STRICT__LIMIT", "1000");
        for (k, v) in extra_env {
            cmd.env(k, v);
            // A test that must know the site's address first (a provider's redirect URI).
            if *k == "CITYEVENTS_GATEWAY__HTTP__PORT" {
                gateway = v.parse().unwrap();
            }
        }
        Self::spawn(cmd, dir, (gateway, upstreams), "City Events is running", Vec::new())
    }

    /// The messages the file transport wrote (all-in-one: `data/mail/*.eml`), as text.
    pub fn mails(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self._dir.path().join("data/mail")) else { return Vec::new() };
        dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect()
    }

    /// The distributed script on `site` (its databases and secrets kept between runs); drops
    /// `own` databases when dropped.
    pub fn distributed_at(site: &Site, extra_env: &[(&str, &str)], dir: tempfile::TempDir, own: Vec<String>) -> Self {
        let mut cmd = site.command(extra_env);
        let ports = ports(&mut cmd, true);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, dir, ports, "run-distributed: ready", own)
    }

    fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        (gateway, upstreams): (u16, Vec<(String, String)>),
        ready: &str,
        databases: Vec<String>,
    ) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let (tx, rx) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut platform = Self {
            child,
            base: format!("http://127.0.0.1:{gateway}"),
            upstreams,
            lines: rx,
            seen: Vec::new(),
            _dir: dir,
            databases,
        };
        platform.wait_for_line(ready, Duration::from_secs(240));
        platform
    }

    pub fn wait_for_line(&mut self, needle: &str, within: Duration) -> String {
        self.wait_for(needle, |l| l.contains(needle), within)
    }

    /// The first output line (already seen or to come within `within`) that `matches`.
    pub fn wait_for(&mut self, needle: &str, matches: impl Fn(&str) -> bool, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.seen.iter().find(|l| matches(l.as_str())) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(l) => self.seen.push(l),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        self.drain();
                        panic!("exited with {status} before `{needle}`:\n{}", self.seen.join("\n"));
                    }
                }
                Err(_) => {
                    self.drain();
                    panic!("no `{needle}` within {within:?}:\n{}", self.seen.join("\n"));
                }
            }
        }
    }

    fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    /// The working directory (the all-in-one mode keeps `data/` there).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then wait; the output so far.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain();
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("did not stop within 60 s:\n{}", self.seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.drain();
            let from = self.seen.len().saturating_sub(300);
            eprintln!("--- platform output (last {} lines)\n{}", self.seen.len() - from, self.seen[from..].join("\n"));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for db in &self.databases {
            let _ = Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
                .arg(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Where a distributed platform keeps its state: the database prefix (also its bus namespace
/// and Redis key prefix) and the secrets directory.
pub struct Site {
    pub prefix: String,
    pub state: PathBuf,
}

impl Site {
    /// `deploy/local/run-distributed.sh` with this build on this site (arguments to add).
    pub fn command(&self, extra_env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("deploy/local/run-distributed.sh"))
            .current_dir(repo_root())
            .env("CITYEVENTS_BIN", env!("CARGO_BIN_EXE_cityevents"))
            .env("STATE", &self.state)
            .env("CITYEVENTS_DB_PREFIX", &self.prefix)
            .env("CITYEVENTS_BUS_NAMESPACE", &self.prefix)
            .env("CITYEVENTS_GATEWAY__REDIS__KEY_PREFIX", format!("{}:", self.prefix))
            .env("CITYEVENTS_RATE_LIMIT", "300")
            .env("CITYEVENTS_IP_RATE_LIMIT", "100000")
            .env("CITYEVENTS_STRICT_RATE_LIMIT", "1000")
            .env("CITYEVENTS_NOTIFIER__APP__DIGEST_INTERVAL", "1s")
            .env_remove("RUST_LOG")
            .env_remove("KEEL_ENV");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// `<prefix>_<service>` for each service with a database.
    pub fn databases(&self) -> Vec<String> {
        ["auth", "events", "joins", "notifier"].iter().map(|s| format!("{}_{s}", self.prefix)).collect()
    }
}

/// Free ports for every service (management listeners on ephemeral ports); returns the
/// gateway's port and the upstreams' base URLs. `distributed`: the script's variables, else
/// Keel's per-service ones.
fn ports(cmd: &mut Command, distributed: bool) -> (u16, Vec<(String, String)>) {
    let mut gateway = 0;
    let mut urls = Vec::new();
    // Below the ephemeral range: an ephemeral port released here could be taken by another
    // service's management listener (`:0`) or an outgoing connection before its service binds
    // it, and the gateway would then call the wrong listener.
    for svc in SERVICES {
        let port = keel::testing::unused_port();
        let up = svc.to_ascii_uppercase();
        cmd.env(format!("CITYEVENTS_{up}__MANAGEMENT__ADDR"), "127.0.0.1:0");
        if distributed {
            cmd.env(format!("CITYEVENTS_{up}_PORT"), port.to_string());
        } else {
            cmd.env(format!("CITYEVENTS_{up}__HTTP__PORT"), port.to_string());
        }
        if svc == "gateway" {
            gateway = port;
        } else {
            urls.push((up, port));
        }
    }
    // All-in-one, the launcher points the gateway and the events service at these ports itself.
    let upstreams = urls.into_iter().map(|(up, port)| (up.to_ascii_lowercase(), format!("http://127.0.0.1:{port}")));
    (gateway, upstreams.collect())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The program's path on `PATH` (or its bare name when not found, which then fails the check).
pub fn which(program: &str) -> String {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file()))
        .map_or_else(|| program.to_owned(), |p| p.display().to_string())
}
