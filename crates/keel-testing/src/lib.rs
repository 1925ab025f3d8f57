//! Test support (cargo feature `test-util`): take dependencies away and bring them back, and
//! give every test its own database, schema or key prefix so tests run in parallel.
//!
//! This is `keel-testing`, re-exported by `keel` as `keel::testing`; of Keel's crates it depends on
//! `keel-data` and `keel-events`.
//!
//! * [`FaultProxy`] — a TCP proxy that forwards, refuses, stalls or cuts connections on command.
//! * [`require`] — whether a local service is reachable; a test skips (with a message) when it
//!   is not, except under `CI=true`, where the test fails. [`require_program`] does the same for
//!   an external program (Chromium).
//! * [`TestDatabase`] — a fresh PostgreSQL or MariaDB database, or SQLite file, dropped after.
//! * [`redis_prefix`] — a unique Redis key prefix.
//! * [`test_pki`] — a throwaway CA and a server certificate it signed.
//! * [`browser::chromium`] — a page in headless Chromium: its DOM and console messages.
//!
//! Server addresses default to the local services on 127.0.0.1 and can be moved with
//! `KEEL_TEST_POSTGRES_URL`, `KEEL_TEST_MYSQL_URL`, `KEEL_TEST_REDIS_URL`, `KEEL_TEST_NATS_URL` and
//! `KEEL_TEST_RABBITMQ_URL`.

pub mod browser;
mod proxy;
#[cfg(feature = "sql")]
mod sql;
mod tls;

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

pub use proxy::{FaultProxy, Mode};
#[cfg(feature = "sql")]
pub use sql::TestDatabase;
pub use tls::{TestPki, test_pki};

/// PostgreSQL admin URL for tests.
pub fn postgres_url() -> String {
    std::env::var("KEEL_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// MariaDB/MySQL admin URL for tests.
pub fn mysql_url() -> String {
    std::env::var("KEEL_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/mysql".into())
}

/// Redis URL for tests.
pub fn redis_url() -> String {
    std::env::var("KEEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// NATS (JetStream) URL for tests.
pub fn nats_url() -> String {
    std::env::var("KEEL_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// RabbitMQ URL for tests.
pub fn rabbitmq_url() -> String {
    std::env::var("KEEL_TEST_RABBITMQ_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Kafka bootstrap URL for tests (a Kafka-protocol broker; CI runs `tansu`).
pub fn kafka_url() -> String {
    std::env::var("KEEL_TEST_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

/// A topic (or stream, or queue) name no other test uses: `<base>_<uuid>`.
pub fn unique_topic(base: &str) -> String {
    format!("{base}_{}", uuid::Uuid::now_v7().simple())
}

/// `host:port` of a URL such as `postgres://user@host:5432/db`.
pub fn host_port(url: &str) -> Option<SocketAddr> {
    let after = url.split_once("://")?.1;
    let authority = after.split(['/', '?']).next()?;
    let hostport = authority.rsplit('@').next()?;
    hostport.to_socket_addrs().ok()?.next()
}

/// Whether `name` answers at the address of `url`. When it does not: under `CI=true` this
/// panics (the test fails: CI must have every service); otherwise it prints why the test is
/// skipped and returns `false`.
///
/// ```no_run
/// if !keel_testing::require("PostgreSQL", &keel_testing::postgres_url()) {
///     return;
/// }
/// ```
pub fn require(name: &str, url: &str) -> bool {
    let reachable =
        host_port(url).is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    if reachable {
        return true;
    }
    let at = host_port(url).map_or_else(|| "an unparsable address".to_owned(), |a| a.to_string());
    unavailable(
        &format!("{name} is required but not reachable at {at}"),
        &format!("{name} is not reachable at {at}; start it (see README) to run this test"),
    )
}

/// Whether the program `name` exists at `path` (an external tool such as Chromium). When it
/// does not: under `CI=true` this panics (CI must install it); otherwise it prints why the test is
/// skipped and returns `false` — the same rule as [`require`].
///
/// ```no_run
/// if !keel_testing::require_program("Chromium", "/usr/bin/chromium") {
///     return;
/// }
/// ```
pub fn require_program(name: &str, path: &str) -> bool {
    if std::path::Path::new(path).is_file() {
        return true;
    }
    unavailable(
        &format!("{name} is required but {path} does not exist"),
        &format!("{name} is not installed at {path}; install it (see README) to run this test"),
    )
}

/// Whether `program` (looked up on `PATH`) runs with `args` and exits 0, e.g.
/// `("promtool", &["--version"])`. When it does not: the same rule as [`require`].
///
/// ```no_run
/// if !keel_testing::require_command("kubectl", &["version", "--client"]) {
///     return;
/// }
/// ```
pub fn require_command(program: &str, args: &[&str]) -> bool {
    if std::process::Command::new(program).args(args).output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    let run = [program].iter().chain(args).copied().collect::<Vec<_>>().join(" ");
    unavailable(
        &format!("{program} is required but `{run}` did not succeed"),
        &format!("{program} is not installed (`{run}` did not succeed); install it (see README) to run this test"),
    )
}

/// A missing server or tool: under `CI=true` the test fails (`required`), otherwise it is
/// skipped with `skipped` on stderr.
#[allow(clippy::panic)]
fn unavailable(required: &str, skipped: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{required} (CI=true: tests may not skip)");
    }
    eprintln!("SKIPPED: {skipped}");
    false
}

/// A loopback TCP port for a server a test starts, below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), so no `bind(…:0)` and no outgoing connection can take it
/// between this call and the server's bind; free when checked, and never given twice in one
/// process.
pub fn unused_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    // Below the ephemeral range and above the well-known and common service ports.
    let (from, to) = if low > 20_000 { (15_000, low) } else { (49_152, 65_535) };
    loop {
        let port = rand::random_range(from..to);
        let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if free && given.insert(port) {
            return port;
        }
    }
}

/// A key prefix no other test uses.
pub fn redis_prefix() -> String {
    format!("keeltest:{}:", uuid::Uuid::now_v7().simple())
}

/// A Redis key prefix for one test; every key under it is deleted when this is dropped.
#[cfg(feature = "redis")]
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    prefix: String,
}

#[cfg(feature = "redis")]
impl TestRedis {
    /// A fresh prefix on the server of `url` (see [`redis_url`]).
    pub fn new(url: &str) -> Self {
        Self { url: url.to_owned(), prefix: redis_prefix() }
    }

    /// The prefix (`keeltest:<uuid>:`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

#[cfg(feature = "redis")]
impl Drop for TestRedis {
    fn drop(&mut self) {
        let (url, pattern) = (self.url.clone(), format!("{}*", self.prefix));
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(url) else { return };
            let Ok(mut conn) = client.get_connection() else { return };
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn).unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        })
        .join();
    }
}

/// Creates Keel's events tables (`keel_outbox`, `keel_inbox`) in `db` by applying
/// [`keel_events::outbox::migrations`], for tests and benchmarks that declare no migrations.
#[cfg(all(feature = "events", feature = "sql"))]
pub async fn create_events_tables(db: &keel_data::Db) -> Result<(), keel_data::DataError> {
    keel_events::outbox::migrations().run(db.pool(), db.backend()).await.map(drop)
}
