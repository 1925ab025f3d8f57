//! The distributed platform for an experiment: `deploy/local/run-distributed.sh` with this build,
//! on the experiment's own PostgreSQL, Redis and broker, every service on a free port.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::servers::Postgres;
use super::{free_port, repo_root};

pub const SERVICES: [&str; 5] = ["auth", "events", "joins", "notifier", "gateway"];

/// Where the platform's bus is.
#[derive(Clone)]
pub struct Bus {
    pub backend: &'static str,
    pub url: String,
}

pub struct Platform {
    child: Child,
    pub base: String,
    pub prefix: String,
    /// Each service's public port.
    pub ports: Vec<(&'static str, u16)>,
    env: Vec<(String, String)>,
    /// Every line the script and the services printed so far.
    pub lines: Arc<Mutex<Vec<String>>>,
    _state: tempfile::TempDir,
}

impl Platform {
    /// Starts the script with `replicas` instances of every service (mail to the SMTP server on
    /// `smtp_port`, if given) and waits for `run-distributed: ready`.
    pub fn start(pg: &Postgres, redis_url: &str, bus: &Bus, replicas: u32, smtp_port: Option<u16>) -> Self {
        let state = tempfile::Builder::new().prefix("ce-faults-state-").tempdir().unwrap();
        let prefix = super::unique("ce_faults_");
        let mut env: Vec<(String, String)> = vec![
            ("CITYEVENTS_BIN".into(), env!("CARGO_BIN_EXE_cityevents").into()),
            ("STATE".into(), state.path().join("state").display().to_string()),
            ("CITYEVENTS_DB_PREFIX".into(), prefix.clone()),
            ("CITYEVENTS_BUS_NAMESPACE".into(), prefix.clone()),
            ("PGHOST".into(), "127.0.0.1".into()),
            ("PGPORT".into(), pg.port.to_string()),
            ("PGUSER".into(), "postgres".into()),
            ("CITYEVENTS_REDIS_URL".into(), redis_url.into()),
            ("CITYEVENTS_BUS_BACKEND".into(), bus.backend.into()),
            ("CITYEVENTS_BUS_URL".into(), bus.url.clone()),
            ("CITYEVENTS_ORIGIN".into(), "http://127.0.0.1:3000".into()),
            ("CITYEVENTS_REPLICAS".into(), replicas.to_string()),
            // The load is many users from one address; the limiter is not what is tested here.
            ("CITYEVENTS_RATE_LIMIT".into(), "1000000".into()),
            ("CITYEVENTS_IP_RATE_LIMIT".into(), "1000000".into()),
            ("CITYEVENTS_STRICT_RATE_LIMIT".into(), "1000000".into()),
            // The load's organizers are fresh accounts; verifying their addresses is not what is
            // tested here (the end-to-end test does it through the mail).
            ("CITYEVENTS_EVENTS__APP__REQUIRE_VERIFIED_EMAIL".into(), "false".into()),
        ];
        if let Some(port) = smtp_port {
            env.push(("CITYEVENTS_SMTP_PORT".into(), port.to_string()));
        }
        let mut gateway = 0;
        let mut ports = Vec::new();
        for svc in SERVICES {
            let up = svc.to_ascii_uppercase();
            let port = free_port();
            ports.push((svc, port));
            env.push((format!("CITYEVENTS_{up}_PORT"), port.to_string()));
            env.push((format!("CITYEVENTS_{up}__MANAGEMENT__ADDR"), format!("127.0.0.1:{}", free_port())));
            if bus.backend == "kafka" {
                // As the script sets them, for the CLI commands run beside it (`dlq list`).
                env.push((format!("CITYEVENTS_{up}__BUS__KAFKA__ALLOW_PLAINTEXT"), "true".into()));
                env.push((format!("CITYEVENTS_{up}__BUS__KAFKA__REPLICATION_FACTOR"), "1".into()));
                env.push((format!("CITYEVENTS_{up}__BUS__KAFKA__PARTITIONS"), "4".into()));
                // Kafka's own default (45 s, KIP-735), past the 30 s outage: the groups keep
                // their members and fetching goes on where it was. With Keel's 10 s the groups
                // rebalance on recovery and resume from committed offsets, which can fall inside
                // a record batch; tansu 0.6 then answers from the next batch on (its fetch
                // returns batches whose base offset is at or past the one asked for, where Kafka
                // returns the batch holding it), and the rest of that batch is never delivered.
                env.push((format!("CITYEVENTS_{up}__BUS__KAFKA__SESSION_TIMEOUT"), "45s".into()));
            }
            if svc == "gateway" {
                gateway = port;
            }
        }
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("deploy/local/run-distributed.sh"))
            .env_remove("RUST_LOG")
            .env_remove("KEEL_ENV")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let base = format!("http://127.0.0.1:{gateway}");
        let mut p = Self { child, base, prefix, ports, env, lines, _state: state };
        p.wait_for_line("run-distributed: ready", Duration::from_secs(180));
        p
    }

    pub fn wait_for_line(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.lines.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("run-distributed.sh exited with {status} before `{needle}`");
            }
            assert!(Instant::now() < deadline, "no `{needle}` within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Lines containing `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    /// Whether the script is still running.
    pub fn script_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn database(&self, svc: &str) -> String {
        format!("{}_{svc}", self.prefix)
    }

    /// The pid of a `cityevents serve <svc>` started by this script (a descendant of it).
    pub fn service_pid(&self, svc: &str) -> Option<u32> {
        self.service_pids(svc).into_iter().next()
    }

    /// The pids of every `cityevents serve <svc>` started by this script, lowest first.
    pub fn service_pids(&self, svc: &str) -> Vec<u32> {
        let script = self.child.id();
        let bin = env!("CARGO_BIN_EXE_cityevents");
        let mut found = Vec::new();
        let Ok(proc) = std::fs::read_dir("/proc") else { return found };
        for entry in proc.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_it = args.len() >= 3
                && args[0] == bin.as_bytes()
                && args[1] == b"serve".as_slice()
                && args[2] == svc.as_bytes();
            if is_it && descends_from(pid, script) {
                found.push(pid);
            }
        }
        found.sort_unstable();
        found
    }

    /// Sends `signal` (`TERM`, `KILL`) to the service's process; its pid.
    pub fn signal(&self, svc: &str, signal: &str) -> u32 {
        let pid = self.service_pid(svc).unwrap_or_else(|| panic!("no running {svc} process"));
        let ok = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
        assert!(ok.success(), "kill -{signal} {pid}");
        pid
    }

    /// Asks the script to replace `svc` (SIGHUP to its supervisor, the service's parent): a new
    /// instance beside it, the old one stopped once the new one is ready. The old pid.
    pub fn replace(&self, svc: &str) -> u32 {
        let pid = self.service_pid(svc).unwrap_or_else(|| panic!("no running {svc} process"));
        let supervisor = parent_of(pid).unwrap_or_else(|| panic!("no parent of {svc} ({pid})"));
        assert!(supervisor != self.child.id(), "{svc}'s parent is the script itself, not its supervisor");
        let ok = Command::new("kill").arg("-HUP").arg(supervisor.to_string()).status().unwrap();
        assert!(ok.success(), "kill -HUP {supervisor}");
        pid
    }

    /// Dead letters on the broker for `topic` (`cityevents <svc> dlq list`, one JSON line each).
    pub fn dead_letters(&self, topic: &str) -> usize {
        let out = self.cli("notifier", &["dlq", "list", topic, "--limit", "100000"]);
        assert!(out.status.success(), "dlq list {topic}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
    }

    /// `cityevents <svc> --config deploy/config/<svc>.yaml <args>` with the script's settings.
    fn cli(&self, svc: &str, args: &[&str]) -> std::process::Output {
        let state = PathBuf::from(&self.env.iter().find(|(k, _)| k == "STATE").unwrap().1);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cityevents"));
        cmd.current_dir(repo_root())
            .arg(svc)
            .arg("--config")
            .arg(format!("deploy/config/{svc}.yaml"))
            .args(args)
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("KEEL_ENV", "production")
            .env("CITYEVENTS_JWT_PUBLIC_KEY_FILE", state.join("jwt-public.pem"))
            // What deploy/config/notifier.yaml reads besides, as the script sets it.
            .env("CITYEVENTS_NOTIFIER_MASTER_KEY_FILE", state.join("notifier-master.key"))
            .env(
                "CITYEVENTS_NOTIFIER_DATA_KEY",
                std::fs::read_to_string(state.join("notifier-data-key")).unwrap_or_default().trim(),
            )
            .env("CITYEVENTS_SMTP_HOST", "127.0.0.1")
            .env("CITYEVENTS_PUBLIC_URL", "http://127.0.0.1:8080");
        let (host, port) = (self.var("PGHOST"), self.var("PGPORT"));
        for s in ["auth", "events", "joins", "notifier"] {
            let up = s.to_ascii_uppercase();
            cmd.env(
                format!("CITYEVENTS_{up}_DATABASE_URL"),
                format!("postgres://postgres@{host}:{port}/{}", self.database(s)),
            );
        }
        // The CLI does not serve: its management listener is not bound, but keep it off the
        // running service's port anyway.
        cmd.env(format!("CITYEVENTS_{}__MANAGEMENT__ADDR", svc.to_ascii_uppercase()), "127.0.0.1:0");
        cmd.output().unwrap()
    }

    fn var(&self, name: &str) -> String {
        self.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
    }

    /// The last `n` lines of output, for a failure report.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap();
        let lines: Vec<&str> =
            lines.iter().filter(|l| !l.contains("\"request finished\"")).map(String::as_str).collect();
        let from = lines.len().saturating_sub(n);
        lines[from..].join("\n")
    }

    /// SIGTERM to the script (which stops the services), then waits; SIGKILL to whatever is
    /// left after 60 s.
    pub fn stop(&mut self) {
        // Known before the script goes: once it exits, its services are no longer its children.
        let pids: Vec<u32> = SERVICES.iter().filter_map(|s| self.service_pid(s)).collect();
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let bin = env!("CARGO_BIN_EXE_cityevents").as_bytes();
        for pid in pids {
            // Still the same program (a pid is not reused that fast, but check).
            if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(bin)) {
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- platform output (last 200 lines but access lines)\n{}", self.tail(200));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// Whether `pid`'s ancestors include `ancestor`.
/// The parent of `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`: comm may hold spaces, so split after the last `)`.
    stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
}

fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut p = pid;
    for _ in 0..64 {
        let Some(ppid) = parent_of(p) else { return false };
        if ppid == ancestor {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        p = ppid;
    }
    false
}
