//! The suite's own dependency servers: PostgreSQL, Redis, NATS JetStream, RabbitMQ and a Kafka
//! broker, each on a free port with its own data directory, so stopping one never touches the
//! shared servers (5432, 6379, 4222, 5672, 9092) other tests use. Each is stopped the way its
//! package stops it and started again on the same port and data (the Kafka broker is cut off
//! at a fault proxy instead, see [`Kafka`]); dropping one kills it and removes its directory.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel::testing::{FaultProxy, Mode};

use super::{free_port, port_open, run, which};

/// A program the suite needs, or `None` (skipped; a failure under `CI=true`).
pub fn tool(name: &str, path: &str) -> Option<String> {
    keel::testing::require_program(name, path).then(|| path.to_owned())
}

/// Waits until `port` accepts connections (or panics after `within`).
fn wait_port(what: &str, port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while !port_open(port) {
        assert!(Instant::now() < deadline, "{what} did not listen on {port} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, then waits up to `within` (then SIGKILL).
fn terminate(child: &mut Child, within: Duration) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + within;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A directory the service user `owner` may write (tests run as root; PostgreSQL and RabbitMQ
/// refuse to run as root or run as their own user).
fn owned_dir(owner: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("ce-faults-").tempdir().unwrap();
    if let Some(owner) = owner {
        run(Command::new("chown").arg(format!("{owner}:{owner}")).arg(dir.path()));
    }
    dir
}

// ---------------------------------------------------------------------------------------------

/// A PostgreSQL cluster of its own (`initdb`, `pg_ctl`), run as the `postgres` user.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub running: bool,
}

impl Postgres {
    /// The newest `/usr/lib/postgresql/<v>/bin` with `initdb`.
    fn bin() -> PathBuf {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .collect();
        versions.sort();
        versions.pop().map_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"), |(_, p)| p)
    }

    pub fn available() -> bool {
        let bin = Self::bin();
        tool("initdb", &bin.join("initdb").display().to_string()).is_some()
            && tool("pg_ctl", &bin.join("pg_ctl").display().to_string()).is_some()
            && tool("runuser", &which("runuser")).is_some()
            && tool("psql", &which("psql")).is_some()
    }

    pub fn start() -> Self {
        let bin = Self::bin();
        let dir = owned_dir(Some("postgres"));
        let pg = Self { port: free_port(), bin, dir, running: false };
        pg.as_postgres(
            &pg.bin.join("initdb"),
            &["-D", &pg.data().display().to_string(), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
        );
        let mut pg = pg;
        pg.up();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn as_postgres(&self, program: &Path, args: &[&str]) {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program).args(args).current_dir(self.dir.path());
        run(&mut cmd);
    }

    /// `pg_ctl start -w` on the same port and data directory.
    pub fn up(&mut self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=300 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data().display().to_string(), "-l", &log, "-o", &opts, "-w", "-t", "60", "start"],
        );
        wait_port("PostgreSQL", self.port, Duration::from_secs(30));
        self.running = true;
    }

    /// `pg_ctl stop -m fast`: what the package's service stop does (active sessions get 57P01).
    pub fn stop(&mut self) {
        self.stop_mode("fast");
    }

    fn stop_mode(&mut self, mode: &str) {
        self.as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data().display().to_string(), "-m", mode, "-w", "-t", "60", "stop"],
        );
        self.running = false;
    }

    /// `psql -tA` as `postgres` on database `db`: the rows, fields separated by `|`.
    pub fn query(&self, db: &str, sql: &str) -> Vec<Vec<String>> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-q", "-t", "-A", "-F", "|", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env_remove("PGPASSWORD")
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {db}: {sql}\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_owned).collect())
            .collect()
    }

    /// A single number.
    pub fn count(&self, db: &str, sql: &str) -> i64 {
        let rows = self.query(db, sql);
        rows.first().and_then(|r| r.first()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{sql}: {rows:?}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running || port_open(self.port) {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["-D", &self.data().display().to_string(), "-m", "immediate", "-w", "-t", "30", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// A Redis of its own without persistence (`--save ""`).
pub struct Redis {
    pub port: u16,
    bin: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    pub fn available() -> bool {
        tool("redis-server", &which("redis-server")).is_some()
    }

    pub fn start() -> Self {
        let mut r = Self { port: free_port(), bin: which("redis-server"), dir: owned_dir(None), child: None };
        r.up();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn up(&mut self) {
        let log = self.dir.path().join("redis.log");
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_port("Redis", self.port, Duration::from_secs(20));
    }

    /// SIGTERM (what the package's service stop sends; without persistence it just exits).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(20));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// A NATS server of its own with JetStream on a file store (`-js -sd`), so streams survive a
/// restart as they do on a packaged server.
pub struct Nats {
    pub port: u16,
    bin: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Nats {
    pub fn available() -> bool {
        tool("nats-server", &which("nats-server")).is_some()
    }

    pub fn start() -> Self {
        let mut n = Self { port: free_port(), bin: which("nats-server"), dir: owned_dir(None), child: None };
        n.up();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn up(&mut self) {
        let child = Command::new(&self.bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.path().join("js"))
            .arg("-l")
            .arg(self.dir.path().join("nats.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_port("NATS", self.port, Duration::from_secs(20));
    }

    /// SIGTERM: a graceful shutdown, as the package's service stop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(30));
        }
    }

    /// Subscribes (core NATS, beside JetStream) to `subject` and returns, through the
    /// receiver, the Unix time in ms at which the first message on it arrived. Subscribed
    /// before this returns, so a publish after that is seen; it measures when a publisher's
    /// message reached the server, which the publisher's own records only show once it has
    /// written them (the outbox records a batch when every row of it is confirmed).
    pub fn first_message(&self, subject: &str) -> mpsc::Receiver<i64> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("INFO "), "NATS greeted with {line:?}");
        write!(conn, "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {subject} 1\r\nPING\r\n").unwrap();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            assert!(!line.starts_with("-ERR"), "NATS refused the subscription: {line}");
            if line.starts_with("PONG") {
                break;
            }
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line.starts_with("PING") => {
                        if conn.write_all(b"PONG\r\n").is_err() {
                            return;
                        }
                    }
                    Ok(_) if line.starts_with("MSG ") || line.starts_with("HMSG ") => {
                        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
                        let _ = tx.send(i64::try_from(now).unwrap());
                        return;
                    }
                    Ok(_) => {}
                }
            }
        });
        rx
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// A Kafka-protocol broker of its own: tansu (`.ci/tools.sh` installs it) on a private port,
/// reached through a [`FaultProxy`] on the port it advertises. tansu 0.6's one storage that
/// outlives a restart, SQLite, panics under the platform's load ("more or less than one row"),
/// so the broker keeps its log in memory and "down" is the network's: the proxy refuses
/// connections and resets the open ones, as a stopped broker's host would, while the broker
/// keeps its topics, records and committed offsets as a Kafka cluster keeps them on disk.
pub struct Kafka {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
    proxy: FaultProxy,
}

impl Kafka {
    pub fn available() -> bool {
        tool("tansu", &which("tansu")).is_some()
    }

    /// Called on the runtime's thread in `block_in_place` (the proxy is a task of it).
    pub fn start() -> Self {
        let inner = free_port();
        let proxy = tokio::runtime::Handle::current()
            .block_on(FaultProxy::start(([127, 0, 0, 1], inner).into(), Mode::Forward))
            .unwrap();
        let port = proxy.addr().port();
        let dir = owned_dir(None);
        let log = std::fs::File::create(dir.path().join("tansu.log")).unwrap();
        let child = Command::new(which("tansu"))
            .args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{inner}")])
            // The broker's metadata sends clients to the proxy.
            .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{port}")])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_port("Kafka (tansu)", inner, Duration::from_secs(30));
        Self { port, dir, child, proxy }
    }

    pub fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }

    /// The broker unreachable: connections refused, the open ones reset.
    pub fn stop(&mut self) {
        self.proxy.take_down();
    }

    /// The broker reachable again.
    pub fn up(&mut self) {
        self.proxy.restore();
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- tansu log (last 40 lines)\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// A RabbitMQ node of its own (`RABBITMQ_NODENAME`, ports, Mnesia and log directories, no
/// plugins, so the management plugin's port is not taken), started through the package's
/// `rabbitmq-server` and stopped with `rabbitmqctl -n <node> stop`. Its user is created with
/// `rabbitmqctl` (production refuses guest/guest).
pub struct Rabbit {
    pub port: u16,
    dist_port: u16,
    node: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub url: String,
}

impl Rabbit {
    pub fn available() -> bool {
        tool("rabbitmq-server", &which("rabbitmq-server")).is_some()
            && tool("rabbitmqctl", &which("rabbitmqctl")).is_some()
    }

    pub fn start() -> Self {
        let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout).unwrap();
        let node = format!("{}@{}", super::unique("ce_faults_"), host.trim());
        let dir = owned_dir(Some("rabbitmq"));
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(dir.path().join("rabbitmq.conf"), "loopback_users = none\n").unwrap();
        run(Command::new("chown").arg("-R").arg("rabbitmq:rabbitmq").arg(dir.path()));
        let mut r = Self { port: free_port(), dist_port: free_port(), node, dir, child: None, url: String::new() };
        r.up();
        let user = super::unique("ce-faults-");
        let password = format!("{}", uuid::Uuid::now_v7().simple());
        r.ctl(&["add_user", &user, &password]);
        r.ctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
        r.url = format!("amqp://{user}:{password}@127.0.0.1:{}/%2f", r.port);
        r
    }

    fn ctl(&self, args: &[&str]) {
        run(Command::new(which("rabbitmqctl")).args(["-n", &self.node]).args(args));
    }

    pub fn up(&mut self) {
        let d = self.dir.path();
        let child = Command::new(which("rabbitmq-server"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("rabbit.pid"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        // `await_startup` fails at once while the node has not registered with epmd yet.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ok = Command::new(which("rabbitmqctl"))
                .args(["-n", &self.node, "await_startup", "--timeout", "60"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "RabbitMQ node {} did not start within 120 s", self.node);
            std::thread::sleep(Duration::from_millis(500));
        }
        wait_port("RabbitMQ", self.port, Duration::from_secs(60));
    }

    /// `rabbitmqctl -n <node> stop`: the package's way.
    pub fn stop(&mut self) {
        self.ctl(&["stop"]);
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        if self.child.is_some() || port_open(self.port) {
            let _ = Command::new(which("rabbitmqctl"))
                .args(["-n", &self.node, "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
