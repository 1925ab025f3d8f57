//! Recovery within a second of the dependency, and transient database errors classified right.
//!
//! Each test that stops a dependency starts its own instance of it (own port, own data
//! directory) and stops only that one: a PostgreSQL cluster made with `initdb` and run with
//! `pg_ctl` as user `postgres`, a `redis-server`, a `nats-server -js`. The dependency is marked
//! down by using it while it is down; nothing but the re-probe on use can clear the mark (no
//! health loop runs here, and the check interval would be 30 s), so "the first call succeeds
//! within a bounded wait" is the behaviour under test. Without the programs the tests skip (and
//! fail under `CI=true`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use keel::config::Secret;
use keel::data::DatabaseConfig;
use keel::data::{Db, RetryKind};
use keel::events::{Bus, Envelope};
use keel::events::{BusBackend, BusConfig};
use keel::redis::RedisConfig;
use keel::telemetry::Metrics;
use keel::testing;
use sqlx::{Connection, Executor};
use tokio_util::sync::CancellationToken;

/// One own-server test at a time: two PostgreSQL clusters at once would only slow each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Well under the 30 s a periodic check would take, and the bound of every recovery here.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A PostgreSQL cluster of this test's own, run as user `postgres`.
struct OwnPostgres {
    dir: PathBuf,
    port: u16,
}

impl OwnPostgres {
    fn start() -> Option<Self> {
        if !testing::require_program("PostgreSQL 15 (initdb)", &format!("{PG_BIN}/initdb")) {
            return None;
        }
        let port = common::free_port();
        let dir = std::env::temp_dir().join(format!("keel-recovery-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run(Command::new("chown").arg("postgres:postgres").arg(&dir));
        let data = dir.join("data");
        run(Command::new("runuser").args(["-u", "postgres", "--", &format!("{PG_BIN}/initdb")]).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-D",
            data.to_str().unwrap(),
        ]));
        let pg = Self { dir, port };
        pg.up();
        Some(pg)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.join("data");
        run(Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/pg_ctl"), "-D", data.to_str().unwrap()])
            .args(args)
            .stdout(Stdio::null()));
    }

    fn up(&self) {
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.display());
        let log = self.dir.join("log");
        self.pg_ctl(&["-w", "-l", log.to_str().unwrap(), "-o", &opts, "start"]);
    }

    fn down(&self) {
        self.pg_ctl(&["-w", "-m", "fast", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/pg_ctl"), "-D", data.to_str().unwrap()])
            .args(["-w", "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server process of this test's own (redis-server, nats-server), restartable on its port.
struct OwnServer {
    program: &'static str,
    args: Vec<String>,
    port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl OwnServer {
    fn start(program: &'static str, args: impl Fn(u16, &Path) -> Vec<String>) -> Option<Self> {
        if !testing::require_program(program, program) {
            return None;
        }
        let port = common::free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut s = Self { program, args: args(port, dir.path()), port, child: None, _dir: dir };
        s.up();
        Some(s)
    }

    fn up(&mut self) {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{} did not listen on {}", self.program, self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.down();
    }
}

fn db_config() -> DatabaseConfig {
    let mut cfg = DatabaseConfig::default();
    cfg.auto_migrate = false;
    cfg.pool.max_connections = 4;
    cfg.pool.acquire_timeout = Duration::from_secs(2);
    cfg.connect.attempt_timeout = Duration::from_secs(2);
    cfg
}

async fn connected_db(url: &str) -> Db {
    let db = Db::new("recovery", url, &db_config(), None, &Metrics::new()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), db.clone().connect_in_background(CancellationToken::new()))
        .await
        .expect("connects");
    assert!(db.is_available());
    db
}

async fn select_one(db: &Db) -> Result<(), keel::data::DataError> {
    let mut conn = db.acquire().await?;
    conn.execute("SELECT 1").await.map(|_| ()).map_err(|e| db.observe(e))
}

/// Calls `f` every 20 ms until it succeeds; the time it took, or a panic past the bound.
async fn first_success<F, Fut, T, E>(what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    loop {
        match f().await {
            Ok(_) => return started.elapsed(),
            Err(e) => {
                assert!(started.elapsed() < RECOVERY_BOUND, "{what}: no success within {RECOVERY_BOUND:?}: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn postgres_marked_down_is_reprobed_on_use_and_recovers_at_once() {
    let _serial = SERIAL.lock().await;
    let Some(pg) = OwnPostgres::start() else { return };
    let db = connected_db(&pg.url()).await;
    select_one(&db).await.unwrap();

    pg.down();
    // Using it while down marks it down; callers then fail fast.
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.is_available() {
        assert!(Instant::now() < deadline, "never marked down");
        let _ = select_one(&db).await;
    }
    let refused = select_one(&db).await.unwrap_err();
    assert!(matches!(refused, keel::data::DataError::Unavailable { .. }), "{refused}");

    pg.up();
    let took = first_success("PostgreSQL", || select_one(&db)).await;
    eprintln!("PostgreSQL: first success {took:?} after the server was back");
    assert!(db.is_available());
}

/// The finding: during a PostgreSQL stop, 11 of 109 joins waited out the pool's 2 s acquire
/// timeout before their 503 (the pool retries a refused connection until then). A wait with
/// room in the pool now starts one direct connection attempt after 50 ms; its failure marks
/// the database down, which ends every wait for a connection at once, and `Db::lost` (which
/// set-up turns into a readiness re-check) completes. Here no call waits out a 10 s timeout,
/// even when a probe ran just before the stop.
#[tokio::test]
async fn calls_waiting_for_a_connection_fail_fast_once_postgres_is_gone() {
    let _serial = SERIAL.lock().await;
    let Some(pg) = OwnPostgres::start() else { return };
    let mut cfg = db_config();
    cfg.pool.acquire_timeout = Duration::from_secs(10);
    cfg.pool.max_connections = 8;
    let db = Db::new("recovery", &pg.url(), &cfg, None, &Metrics::new()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), db.clone().connect_in_background(CancellationToken::new()))
        .await
        .expect("connects");
    select_one(&db).await.unwrap();
    let d = db.clone();
    let lost = tokio::spawn(async move { d.lost().await });

    // The slow start CI once hit: a wait on a full pool probes reachability just before the
    // stop, so the first probe the calls below want is not due yet; they must ask again.
    let held: Vec<_> = futures_util::future::try_join_all((0..8).map(|_| db.acquire())).await.unwrap();
    let waiting = tokio::spawn({
        let db = db.clone();
        async move { db.acquire().await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(held);
    waiting.await.unwrap().unwrap();

    pg.down();
    let started = Instant::now();
    let calls = futures_util::future::join_all((0..8).map(|_| {
        let db = db.clone();
        async move {
            let began = Instant::now();
            (select_one(&db).await, began.elapsed())
        }
    }))
    .await;
    let slowest = calls.iter().map(|(_, took)| *took).max().unwrap();
    eprintln!("PostgreSQL gone: 8 calls answered, the slowest after {slowest:?}");
    for (result, _) in &calls {
        let e = result.as_ref().unwrap_err();
        assert!(e.is_retryable(), "a 503 with Retry-After: {e}");
    }
    assert!(slowest < Duration::from_secs(5), "no call waits out the 10 s acquire timeout: {slowest:?}");
    tokio::time::timeout(Duration::from_secs(5), lost).await.expect("Db::lost completes").unwrap();
    assert!(!db.is_available());
    assert!(started.elapsed() < Duration::from_secs(10));
    pg.up();
    first_success("PostgreSQL", || select_one(&db)).await;
}

#[tokio::test]
async fn redis_marked_down_is_reprobed_on_use_and_recovers_at_once() {
    let _serial = SERIAL.lock().await;
    let Some(mut server) = OwnServer::start("/usr/bin/redis-server", |port, dir| {
        ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"]
            .iter()
            .map(|s| (*s).to_owned())
            .chain([dir.display().to_string()])
            .collect()
    }) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", server.port);
    let mut cfg = RedisConfig::default();
    cfg.url = Some(Secret::new(url.clone()));
    cfg.connect.attempt_timeout = Duration::from_secs(1);
    let redis = keel::redis::Redis::new("recovery", &url, &cfg, &Metrics::new()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), redis.clone().connect_in_background(CancellationToken::new()))
        .await
        .expect("connects");
    let ping = || async { redis.query::<String>(&keel::redis::driver::cmd("PING")).await };
    ping().await.unwrap();

    server.down();
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.is_available() {
        assert!(Instant::now() < deadline, "never marked down");
        let _ = ping().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(ping().await, Err(keel::redis::RedisError::Unavailable { .. })));

    server.up();
    let took = first_success("Redis", ping).await;
    eprintln!("Redis: first success {took:?} after the server was back");
}

/// A `nats-server -js` of this test's own, and a bus connected to it (publishes time out after
/// a second).
async fn own_nats() -> Option<(OwnServer, Bus)> {
    let server = OwnServer::start("/usr/sbin/nats-server", |port, dir| {
        vec![
            "-js".into(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-sd".into(),
            dir.display().to_string(),
        ]
    })?;
    let mut cfg = BusConfig::default();
    cfg.backend = BusBackend::Nats;
    cfg.url = Some(Secret::new(format!("nats://127.0.0.1:{}", server.port)));
    cfg.publish_timeout = Duration::from_secs(1);
    let bus = Bus::new(&cfg).unwrap();
    // The port accepts before the server greets: on a busy machine the first INFO can be late.
    let mut tries = 0;
    while let Err(e) = bus.connect().await {
        tries += 1;
        assert!(tries < 50, "the test's own NATS did not greet within 5 s: {e:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some((server, bus))
}

#[tokio::test]
async fn nats_reconnects_within_a_bounded_wait_after_a_long_outage() {
    let _serial = SERIAL.lock().await;
    let Some((mut server, bus)) = own_nats().await else { return };
    let topic = testing::unique_topic("recovery");
    let publish = || async {
        let env = Envelope::raw("recovery", "recovery.ping", 1, serde_json::json!({}));
        bus.publish(&topic, &env).await
    };
    publish().await.unwrap();

    server.down();
    // Long enough for the client's reconnection waits to reach their cap (1 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    while bus.is_connected() {
        assert!(Instant::now() < deadline, "never saw the connection lost");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(12)).await;

    server.up();
    let started = Instant::now();
    while !bus.is_connected() {
        assert!(started.elapsed() < Duration::from_millis(1500), "not reconnected within 1.5 s of NATS answering");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("NATS: reconnected {:?} after the server was back", started.elapsed());
    first_success("NATS publish", publish).await;
}

/// The finding: during a NATS server's graceful shutdown JetStream stops first, and a publish
/// meanwhile got `no stream found for given subject`, which the outbox took for the broker's
/// answer about the message and spent one of the row's attempts on. A server without JetStream
/// answers the same, so it stands in: every such publish is `Unavailable` (the outbox pauses,
/// nothing spent), and once JetStream is back the stream is made again if it must be and the
/// publish goes through.
#[tokio::test]
async fn a_nats_server_without_jetstream_is_unavailable_not_a_refusal() {
    let _serial = SERIAL.lock().await;
    let Some((mut server, bus)) = own_nats().await else { return };
    let topic = testing::unique_topic("nojs");
    let publish = || async {
        let env = Envelope::raw("recovery", "recovery.ping", 1, serde_json::json!({}));
        bus.publish(&topic, &env).await
    };
    publish().await.unwrap();

    // The same port, JetStream off.
    server.down();
    let with_js = std::mem::take(&mut server.args);
    server.args = with_js.iter().filter(|a| *a != "-js").cloned().collect();
    server.up();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bus.is_connected() {
        assert!(Instant::now() < deadline, "not reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first publish finds no stream listening; the next ask for the stream again, which
    // JetStream does not answer: each says the broker is away. (Just after the reconnection a
    // publish may time out instead while the client resubscribes its replies: an outage too.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let err = publish().await.unwrap_err();
        if matches!(err, keel::events::BusError::Timeout(_)) && seen.is_empty() && Instant::now() < deadline {
            continue;
        }
        assert!(matches!(err, keel::events::BusError::Unavailable(_)), "publish {}: {err:?}", seen.len());
        seen.push(err.to_string());
    }
    assert!(seen[0].contains("no stream found"), "{seen:?}");

    server.down();
    server.args = with_js;
    server.up();
    first_success("NATS publish once JetStream is back", publish).await;
}

/// The error a query on `conn`'s terminated backend gets: SQLSTATE 57P01.
#[tokio::test]
async fn postgres_admin_shutdown_is_a_503_that_marks_down_and_recovers() {
    let _serial = SERIAL.lock().await;
    let Some(pg) = OwnPostgres::start() else { return };
    let db = connected_db(&pg.url()).await;
    let mut conn = db.acquire().await.unwrap();
    let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()").fetch_one(&mut *conn).await.unwrap();
    let mut admin = sqlx::AnyConnection::connect(&pg.url()).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&mut admin).await.unwrap();
    let e = conn.execute("SELECT 1").await.unwrap_err();
    drop(conn);
    let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
    let e = db.observe(e);
    assert_eq!(code.as_deref(), Some("57P01"), "{e}");
    assert_eq!(e.retry_kind(), Some(RetryKind::Shutdown));
    assert!(!db.is_available(), "a shutdown marks the database down");
    let resp = e.into_response();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key(http::header::RETRY_AFTER));
    // The server is still up: the re-probe finds it at once.
    first_success("PostgreSQL after 57P01", || select_one(&db)).await;
}

#[tokio::test]
async fn postgres_read_only_and_serialization_failures_are_503s_that_do_not_mark_down() {
    let _serial = SERIAL.lock().await;
    let Some(pg) = OwnPostgres::start() else { return };
    let db = connected_db(&pg.url()).await;
    let mut conn = db.acquire().await.unwrap();
    conn.execute("CREATE TABLE acct (k INT PRIMARY KEY, v INT NOT NULL)").await.unwrap();
    conn.execute("INSERT INTO acct VALUES (1, 10), (2, 10)").await.unwrap();

    // 25006: a write in a read-only session.
    conn.execute("SET default_transaction_read_only = on").await.unwrap();
    let e = db.observe(conn.execute("INSERT INTO acct VALUES (3, 0)").await.unwrap_err());
    assert_eq!(e.retry_kind(), Some(RetryKind::ReadOnly), "{e}");
    assert!(db.is_available(), "a read-only server is not down");
    assert_eq!(e.into_response().status(), 503);
    conn.execute("SET default_transaction_read_only = off").await.unwrap();

    // 40001: write skew between two serializable transactions.
    let mut other = db.acquire().await.unwrap();
    for c in [&mut conn, &mut other] {
        c.execute("BEGIN ISOLATION LEVEL SERIALIZABLE").await.unwrap();
        c.execute("SELECT sum(v) FROM acct").await.unwrap();
    }
    conn.execute("UPDATE acct SET v = v - 15 WHERE k = 1").await.unwrap();
    other.execute("UPDATE acct SET v = v - 15 WHERE k = 2").await.unwrap();
    conn.execute("COMMIT").await.unwrap();
    let e = db.observe(other.execute("COMMIT").await.unwrap_err());
    assert_eq!(e.retry_kind(), Some(RetryKind::Serialization), "{e}");
    assert!(db.is_available(), "a conflict does not mark the database down");
    let resp = e.into_response();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()[http::header::RETRY_AFTER], "1");
}

#[tokio::test]
async fn mariadb_read_only_transaction_is_a_503_that_does_not_mark_down() {
    if !testing::require("MariaDB", &testing::mysql_url()) {
        return;
    }
    let tdb = testing::TestDatabase::mysql(&testing::mysql_url()).await.unwrap();
    let db = connected_db(tdb.url()).await;
    let mut conn = db.acquire().await.unwrap();
    conn.execute("CREATE TABLE ro (k INT PRIMARY KEY)").await.unwrap();
    conn.execute("START TRANSACTION READ ONLY").await.unwrap();
    let e = conn.execute("INSERT INTO ro VALUES (1)").await.unwrap_err();
    let _ = conn.execute("ROLLBACK").await;
    let e = db.observe(e);
    assert_eq!(e.retry_kind(), Some(RetryKind::ReadOnly), "{e}");
    assert!(db.is_available());
    let resp = e.into_response();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key(http::header::RETRY_AFTER));
}

/// An upstream whose breaker opened: trial calls start as soon as its readiness path answers
/// 2xx, not after `open_wait` (60 s here).
#[tokio::test]
async fn an_open_breaker_half_opens_when_the_upstream_readiness_returns() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::routing::get;
    use keel::http::client::{Client, ClientError};
    use keel::resilience::breaker::{CircuitBreaker, State};

    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let answer = move || {
        let up = h.load(Ordering::SeqCst);
        async move { if up { (http::StatusCode::OK, "ok") } else { (http::StatusCode::SERVICE_UNAVAILABLE, "down") } }
    };
    let app = axum::Router::new().route("/work", get(answer.clone())).route("/health/ready", get(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut cfg = keel::http::client::UpstreamConfig::default();
    cfg.base_url = format!("http://{addr}");
    cfg.health_path = Some("/health/ready".into());
    cfg.retry.max_attempts = 1;
    cfg.breaker.minimum_calls = 2;
    cfg.breaker.half_open_calls = 1;
    cfg.breaker.open_wait = Duration::from_secs(60);
    let breaker = Arc::new(CircuitBreaker::new("work", cfg.breaker.clone()));
    let client = Client::new("work", &cfg, breaker.clone(), None).unwrap();
    for _ in 0..2 {
        assert_eq!(client.get("/work").await.unwrap().status, 503);
    }
    assert_eq!(breaker.state(), State::Open);
    assert!(matches!(client.get("/work").await, Err(ClientError::BreakerOpen { .. })));

    healthy.store(true, Ordering::SeqCst);
    let took = first_success("upstream behind an open breaker", || async {
        match client.get("/work").await {
            Ok(r) if r.status.is_success() => Ok(()),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    eprintln!("breaker: first success {took:?} after the upstream was ready");
    assert_eq!(breaker.state(), State::Closed);
}
