//! SQL (PostgreSQL, MariaDB, SQLite) and Redis against the real local servers: start-up with the
//! dependency away, outages mid-run, degraded mode, pool metrics, migrations, transactions.
//!
//! Every test gets its own database (or SQLite file, or Redis key prefix) and its own fault
//! proxy, so they run in parallel. A test whose server is not running is skipped with a message,
//! except under `CI=true`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Fixture, Proc, client, eventually, run_cli};
use keel::config::Profile;
use keel::testing::{
    FaultProxy, Mode, TestDatabase, TestRedis, host_port, mysql_url, postgres_url, redis_url, require,
};
use serde_json::Value;

#[derive(Clone, Copy, Debug)]
enum Dep {
    Postgres,
    MariaDb,
    Redis,
}

impl Dep {
    fn name(self) -> &'static str {
        match self {
            Dep::Postgres => "PostgreSQL",
            Dep::MariaDb => "MariaDB",
            Dep::Redis => "Redis",
        }
    }
    fn admin_url(self) -> String {
        match self {
            Dep::Postgres => postgres_url(),
            Dep::MariaDb => mysql_url(),
            Dep::Redis => redis_url(),
        }
    }
    /// The check in /health/ready and a route that uses the dependency.
    fn check(self) -> &'static str {
        if matches!(self, Dep::Redis) { "redis" } else { "database" }
    }
    fn route(self) -> &'static str {
        if matches!(self, Dep::Redis) { "/cache/k" } else { "/db/items" }
    }
}

/// A dependency behind a fault proxy, plus what it takes to point the fixture at it.
struct Setup {
    proxy: FaultProxy,
    env: Vec<(String, String)>,
    _db: Option<TestDatabase>,
    _redis: Option<TestRedis>,
}

/// Fast checks and retries so outages show within a second.
const FAST: &[(&str, &str)] = &[
    ("FIXTURE__HEALTH__INTERVAL", "100ms"),
    ("FIXTURE__HEALTH__TTL", "1s"),
    ("FIXTURE__DATABASE__CONNECT__INITIAL_DELAY", "50ms"),
    ("FIXTURE__DATABASE__CONNECT__MAX_DELAY", "200ms"),
    ("FIXTURE__DATABASE__CONNECT__ATTEMPT_TIMEOUT", "1s"),
    ("FIXTURE__DATABASE__CHECK_TIMEOUT", "500ms"),
    ("FIXTURE__DATABASE__POOL__ACQUIRE_TIMEOUT", "500ms"),
    ("FIXTURE__REDIS__CONNECT__INITIAL_DELAY", "50ms"),
    ("FIXTURE__REDIS__CONNECT__MAX_DELAY", "200ms"),
    ("FIXTURE__REDIS__CONNECT__ATTEMPT_TIMEOUT", "1s"),
    ("FIXTURE__REDIS__COMMAND_TIMEOUT", "500ms"),
];

async fn setup(dep: Dep, mode: Mode) -> Option<Setup> {
    if !require(dep.name(), &dep.admin_url()) {
        return None;
    }
    let target = host_port(&dep.admin_url()).unwrap();
    let proxy = FaultProxy::start(target, mode).await.unwrap();
    let mut env: Vec<(String, String)> = FAST.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    let db = match dep {
        Dep::Postgres => Some(TestDatabase::postgres(&postgres_url()).await.unwrap()),
        Dep::MariaDb => Some(TestDatabase::mysql(&mysql_url()).await.unwrap()),
        Dep::Redis => None,
    };
    match (&db, dep) {
        (Some(db), _) => {
            let url = db.url().replace(&target.to_string(), &proxy.host_port());
            env.push(("FIXTURE__APP__DATABASE".into(), "true".into()));
            env.push(("FIXTURE__DATABASE__URL".into(), url));
        }
        (None, _) => {
            let keys = TestRedis::new(&redis_url());
            env.push(("FIXTURE__APP__REDIS".into(), "true".into()));
            env.push(("FIXTURE__REDIS__URL".into(), format!("redis://{}", proxy.host_port())));
            env.push(("FIXTURE__REDIS__KEY_PREFIX".into(), keys.prefix().to_owned()));
            return Some(Setup { proxy, env, _db: None, _redis: Some(keys) });
        }
    }
    Some(Setup { proxy, env, _db: db, _redis: None })
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

async fn ready(f: &Fixture) -> (u16, Value) {
    let resp = client().get(f.url("/health/ready")).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Exercises the dependency's route: write then read.
async fn use_it(f: &Fixture, dep: Dep) -> u16 {
    let c = client();
    match dep {
        Dep::Redis => {
            let put = c.put(f.url("/cache/k")).body("v").send().await.unwrap().status().as_u16();
            if put != 204 {
                return put;
            }
            c.get(f.url("/cache/k")).send().await.unwrap().status().as_u16()
        }
        _ => {
            let post = c.post(f.url("/db/items")).json(&serde_json::json!({"name": "x"})).send().await.unwrap();
            if post.status() != 201 {
                return post.status().as_u16();
            }
            c.get(f.url("/db/items")).send().await.unwrap().status().as_u16()
        }
    }
}

async fn start_away_then_recover_and_survive_an_outage(dep: Dep) {
    let Some(s) = setup(dep, Mode::Refuse).await else { return };
    let f = Fixture::start(&pairs(&s.env)).await;
    // Unreachable at start: alive, not ready, with the reason.
    assert_eq!(client().get(f.url("/health/live")).send().await.unwrap().status(), 200);
    eventually("a first failed attempt", || async {
        let (_, body) = ready(&f).await;
        body["checks"][dep.check()]["error"].as_str().is_some_and(|e| e.contains("connecting (attempt"))
    })
    .await;
    let (status, body) = ready(&f).await;
    assert_eq!(status, 503, "{body}");
    // Reachable: ready without a restart.
    s.proxy.restore();
    eventually("ready after the dependency came up", || async { ready(&f).await.0 == 200 }).await;
    assert_eq!(use_it(&f, dep).await, 200);
    // Cut mid-run: readiness goes down; restored: back up, and the dependency works again.
    s.proxy.take_down();
    eventually("not ready during the outage", || async { ready(&f).await.0 == 503 }).await;
    assert_eq!(
        client().get(f.url("/health/live")).send().await.unwrap().status(),
        200,
        "liveness never follows a dependency"
    );
    s.proxy.restore();
    eventually("ready after the outage", || async { ready(&f).await.0 == 200 }).await;
    eventually("usable after the outage", || async { use_it(&f, dep).await == 200 }).await;
    let text = f.running().metrics().render();
    match dep {
        Dep::Redis => {
            assert!(metric(&text, "redis_commands_total{outcome=\"ok\"}").unwrap() >= 4.0, "{text}");
            assert!(metric(&text, "redis_command_duration_seconds_count").unwrap() >= 4.0, "{text}");
        }
        _ => {
            assert!(metric(&text, "db_pool_acquire_duration_seconds_count{pool=\"fixture\"}").unwrap() >= 4.0, "{text}")
        }
    }
    f.stop().await;
}

#[tokio::test]
async fn postgres_start_away_recover_outage() {
    start_away_then_recover_and_survive_an_outage(Dep::Postgres).await;
}

#[tokio::test]
async fn mariadb_start_away_recover_outage() {
    start_away_then_recover_and_survive_an_outage(Dep::MariaDb).await;
}

#[tokio::test]
async fn redis_start_away_recover_outage() {
    start_away_then_recover_and_survive_an_outage(Dep::Redis).await;
}

async fn degraded_mode_fails_fast(dep: Dep, stall: bool) {
    let Some(s) = setup(dep, Mode::Forward).await else { return };
    let mut env = s.env.clone();
    let key = if matches!(dep, Dep::Redis) { "FIXTURE__REDIS__REQUIRED" } else { "FIXTURE__DATABASE__REQUIRED" };
    env.push((key.into(), "false".into()));
    let f = Fixture::start(&pairs(&env)).await;
    // Optional: ready (degraded) even before it connects, so wait for "up".
    eventually("up", || async { ready(&f).await.1["status"] == "up" }).await;
    assert_eq!(use_it(&f, dep).await, 200);
    // The dependency hangs (stall) or vanishes: still ready, as degraded…
    if stall {
        s.proxy.set_mode(Mode::Stall);
    } else {
        s.proxy.set_mode(Mode::Refuse);
    }
    s.proxy.cut();
    eventually("degraded", || async {
        let (status, body) = ready(&f).await;
        status == 200 && body["status"] == "degraded"
    })
    .await;
    // …its routes answer 503 at once (not after a pool or command timeout)…
    let started = Instant::now();
    let resp = client().get(f.url(dep.route())).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "SERVICE_DEGRADED", "{body}");
    assert!(took < Duration::from_millis(300), "fast 503, took {took:?}");
    // …and routes that do not need it still work.
    assert_eq!(client().get(f.url("/hello")).send().await.unwrap().status(), 200);
    s.proxy.restore();
    eventually("usable again", || async { use_it(&f, dep).await == 200 }).await;
    f.stop().await;
}

#[tokio::test]
async fn postgres_degraded_mode() {
    degraded_mode_fails_fast(Dep::Postgres, false).await;
}

#[tokio::test]
async fn mariadb_degraded_mode_when_the_server_hangs() {
    degraded_mode_fails_fast(Dep::MariaDb, true).await;
}

#[tokio::test]
async fn redis_degraded_mode() {
    degraded_mode_fails_fast(Dep::Redis, false).await;
}

#[tokio::test]
async fn redis_degraded_mode_when_the_server_hangs() {
    degraded_mode_fails_fast(Dep::Redis, true).await;
}

#[tokio::test]
async fn startup_probe_gives_up_after_max_elapsed_and_recovers() {
    let Some(s) = setup(Dep::Postgres, Mode::Refuse).await else { return };
    let mut env = s.env.clone();
    env.push(("FIXTURE__DATABASE__CONNECT__MAX_ELAPSED".into(), "300ms".into()));
    let f = Fixture::start(&pairs(&env)).await;
    eventually("startup probe down after giving up", || async {
        let resp = client().get(f.url("/health/startup")).send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        status == 503 && body["checks"]["database_connect"]["error"].as_str().is_some_and(|e| e.contains("max_elapsed"))
    })
    .await;
    s.proxy.restore();
    eventually("startup probe up once connected", || async {
        client().get(f.url("/health/startup")).send().await.unwrap().status() == 200
    })
    .await;
    eventually("ready", || async { ready(&f).await.0 == 200 }).await;
    f.stop().await;
}

#[tokio::test]
async fn redis_keys_carry_the_service_prefix() {
    let Some(s) = setup(Dep::Redis, Mode::Forward).await else { return };
    let f = Fixture::start(&pairs(&s.env)).await;
    eventually("up", || async { ready(&f).await.1["status"] == "up" }).await;
    assert_eq!(use_it(&f, Dep::Redis).await, 200);
    let prefix = s.env.iter().find(|(k, _)| k == "FIXTURE__REDIS__KEY_PREFIX").unwrap().1.clone();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let raw: Option<String> = redis::cmd("GET").arg(format!("{prefix}k")).query_async(&mut conn).await.unwrap();
    assert_eq!(raw.as_deref(), Some("v"));
    let bare: Option<String> = redis::cmd("GET").arg("k").query_async(&mut conn).await.unwrap();
    assert_eq!(bare, None);
    f.stop().await;
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn postgres_pool_metrics_move_under_load() {
    pool_metrics_move_under_load(Dep::Postgres).await;
}

#[tokio::test]
async fn mariadb_pool_metrics_move_under_load() {
    pool_metrics_move_under_load(Dep::MariaDb).await;
}

async fn pool_metrics_move_under_load(dep: Dep) {
    let Some(s) = setup(dep, Mode::Forward).await else { return };
    let mut env = s.env.clone();
    env.push(("FIXTURE__DATABASE__POOL__MAX_CONNECTIONS".into(), "3".into()));
    env.push(("FIXTURE__DATABASE__POOL__ACQUIRE_TIMEOUT".into(), "200ms".into()));
    let f = Fixture::start(&pairs(&env)).await;
    eventually("ready", || async { ready(&f).await.0 == 200 }).await;
    let holds: Vec<_> = (0..5).map(|_| tokio::spawn(client().get(f.url("/db/hold?ms=700")).send())).collect();
    let m = f.running().metrics().clone();
    eventually("3 connections in use", || {
        let m = m.clone();
        async move { metric(&m.render(), "db_pool_connections{pool=\"fixture\",state=\"in_use\"}") == Some(3.0) }
    })
    .await;
    let text = m.render();
    assert_eq!(metric(&text, "db_pool_max_connections{pool=\"fixture\"}"), Some(3.0));
    // A saturated pool is not a dead database: readiness stays 200, reporting "degraded".
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (status, body) = ready(&f).await;
    assert_eq!(status, 200, "{body}");
    let statuses: Vec<u16> = futures_util::future::join_all(holds)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap().status().as_u16())
        .collect();
    // Pool of 3, five holders for 700 ms, 200 ms acquire timeout: two time out with 503.
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 2, "{statuses:?}");
    let text = m.render();
    assert_eq!(metric(&text, "db_pool_acquire_timeouts_total{pool=\"fixture\"}"), Some(2.0), "{text}");
    assert!(metric(&text, "db_pool_acquire_duration_seconds_count{pool=\"fixture\"}").unwrap() >= 3.0);
    assert!(metric(&text, "db_errors_total{kind=\"pool_timeout\",pool=\"fixture\"}").unwrap() >= 2.0, "{text}");
    eventually("connections returned", || {
        let m = m.clone();
        async move { metric(&m.render(), "db_pool_connections{pool=\"fixture\",state=\"in_use\"}") == Some(0.0) }
    })
    .await;
    f.stop().await;
}

fn migrate_cli(args: &[&str], url: &str) -> (i32, String, String) {
    run_cli(
        args,
        &[
            ("KEEL_ENV", "production"),
            ("FIXTURE__DATABASE__URL", url),
            ("FIXTURE__CORS__ALLOWED_ORIGINS", "https://a.example"),
        ],
    )
}

async fn migrate_and_status(db: TestDatabase) {
    let url = db.url().to_owned();
    let (code, out, err) = migrate_cli(&["migrate", "status"], &url);
    assert_eq!(code, 0, "{out}{err}");
    // The fixture's three, Keel's flag overrides (one), events tables (three), audit log (its
    // table, its indexes) and data keys (one).
    assert!(out.contains("pending") && out.contains("0 applied, 10 pending"), "{out}");
    // Two instances migrating at once: both succeed, each migration applied once.
    let (a, b) = {
        let u1 = url.clone();
        let u2 = url.clone();
        let t1 = std::thread::spawn(move || migrate_cli(&["migrate"], &u1));
        let t2 = std::thread::spawn(move || migrate_cli(&["migrate"], &u2));
        (t1.join().unwrap(), t2.join().unwrap())
    };
    assert_eq!((a.0, b.0), (0, 0), "{a:?} {b:?}");
    let (code, out, _) = migrate_cli(&["migrate", "status"], &url);
    assert_eq!(code, 0);
    assert!(out.contains("10 applied, 0 pending"), "{out}");
    assert_eq!(out.matches("applied ").count(), 10, "{out}");
}

#[tokio::test]
async fn postgres_migrate_and_status() {
    if !require("PostgreSQL", &postgres_url()) {
        return;
    }
    migrate_and_status(TestDatabase::postgres(&postgres_url()).await.unwrap()).await;
}

#[tokio::test]
async fn mariadb_migrate_and_status() {
    if !require("MariaDB", &mysql_url()) {
        return;
    }
    migrate_and_status(TestDatabase::mysql(&mysql_url()).await.unwrap()).await;
}

#[tokio::test]
async fn sqlite_migrate_and_status() {
    migrate_and_status(TestDatabase::sqlite().unwrap()).await;
}

/// A database migrated before Keel owned its tables: the fixture's own migrations with copies of
/// the first `copied` steps of keel-events' as the versions after them (descriptions as from the
/// files `000N_keel_events.sql`, `…_keel_events_2.sql`, `…_keel_events_3.sql`), exactly the rows
/// sqlx recorded from such files.
fn migrations_with_copies(backend: keel::data::Backend, copied: usize) -> keel::data::Migrations {
    use sqlx::SqlSafeStr as _;
    use sqlx::migrate::{Migration, Migrator};
    let own = keel_fixture::migrations();
    let lib = keel::events::outbox::migrations();
    let mut list: Vec<Migration> = own.for_backend(backend).unwrap().iter().cloned().collect();
    let first = list.len() as i64 + 1;
    let names = ["keel events", "keel events 2", "keel events 3"];
    for (i, step) in lib.for_backend(backend).unwrap().iter().take(copied).enumerate() {
        let sql = sqlx::AssertSqlSafe(step.sql.as_str().to_owned()).into_sql_str();
        list.push(Migration::new(first + i as i64, names[i].into(), step.migration_type, sql, false));
    }
    let m = Migrator::with_migrations(list);
    match backend {
        keel::data::Backend::Postgres => keel::data::Migrations::new().postgres(m),
        keel::data::Backend::MySql => keel::data::Migrations::new().mysql(m),
        keel::data::Backend::Sqlite => keel::data::Migrations::new().sqlite(m),
    }
}

/// Rows of a migrations table, `(version, description)`, in version order.
async fn recorded(pool: &sqlx::AnyPool, table: &str) -> Vec<(i64, String)> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT version, description FROM {table} ORDER BY version")))
        .fetch_all(pool)
        .await
        .unwrap()
}

/// A database whose service carried copies of keel-events' migrations upgrades: Keel takes the
/// copies' records over, runs nothing twice, keeps the rows, and applies the steps the copies
/// lacked.
async fn upgrades_from_copied_events_tables(backend: keel::data::Backend, make: impl AsyncFn() -> TestDatabase) {
    let new = keel_fixture::migrations().with(keel::events::outbox::migrations());
    let own_n = keel_fixture::migrations().for_backend(backend).unwrap().iter().count();
    for copied in [3, 2] {
        let db = make().await;
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(db.url()).await.unwrap();
        assert_eq!(migrations_with_copies(backend, copied).run(&pool, backend).await.unwrap(), own_n + copied);
        sqlx::query("INSERT INTO keel_outbox (event_id, topic, payload, created_at, next_attempt_at) VALUES ('e1', 't', '{}', 1, 1)")
            .execute(&pool)
            .await
            .unwrap();
        // Before `migrate`, the copies count as Keel's versions: only what they lacked is pending.
        let pending: Vec<i64> = new.pending(&pool, backend).await.unwrap().iter().map(|s| s.version).collect();
        assert_eq!(pending, (copied as i64 + 1..=3).collect::<Vec<_>>(), "{backend:?} with {copied} copied");

        assert_eq!(new.run(&pool, backend).await.unwrap(), 3 - copied, "{backend:?} with {copied} copied");
        let keel = recorded(&pool, "_keel_events_migrations").await;
        assert_eq!(keel.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3], "{keel:?}");
        assert_eq!(keel[0].1, "outbox and inbox");
        let own = recorded(&pool, "_sqlx_migrations").await;
        assert_eq!(
            own.iter().map(|r| r.0).collect::<Vec<_>>(),
            (1..=own_n as i64).collect::<Vec<_>>(),
            "the copies' records moved: {own:?}"
        );
        assert!(new.pending(&pool, backend).await.unwrap().is_empty());
        assert_eq!(new.run(&pool, backend).await.unwrap(), 0, "a second run applies nothing");
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keel_outbox").fetch_one(&pool).await.unwrap();
        assert_eq!(rows, 1, "the outbox kept its rows");
        // Step 3 is in place whoever applied it: waiting rows are read from its index.
        let held = match backend {
            keel::data::Backend::Postgres => "SELECT COUNT(*) FROM pg_indexes WHERE indexname = 'keel_outbox_held'",
            keel::data::Backend::MySql => {
                "SELECT COUNT(DISTINCT index_name) FROM information_schema.statistics \
                 WHERE table_schema = DATABASE() AND index_name = 'keel_outbox_held'"
            }
            keel::data::Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE name = 'keel_outbox_held'",
        };
        let n: i64 = sqlx::query_scalar(held).fetch_one(&pool).await.unwrap();
        assert_eq!(n, 1, "{backend:?}: keel_outbox_held");
        pool.close().await;
    }
}

#[tokio::test]
async fn postgres_upgrades_from_copied_events_tables() {
    if !require("PostgreSQL", &postgres_url()) {
        return;
    }
    upgrades_from_copied_events_tables(keel::data::Backend::Postgres, async || {
        TestDatabase::postgres(&postgres_url()).await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn mariadb_upgrades_from_copied_events_tables() {
    if !require("MariaDB", &mysql_url()) {
        return;
    }
    upgrades_from_copied_events_tables(keel::data::Backend::MySql, async || {
        TestDatabase::mysql(&mysql_url()).await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn sqlite_upgrades_from_copied_events_tables() {
    upgrades_from_copied_events_tables(keel::data::Backend::Sqlite, async || TestDatabase::sqlite().unwrap()).await;
}

#[tokio::test]
async fn postgres_production_serve_never_migrates() {
    if !require("PostgreSQL", &postgres_url()) {
        return;
    }
    production_serve_never_migrates_and_waits_for_migrate(TestDatabase::postgres(&postgres_url()).await.unwrap()).await;
}

#[tokio::test]
async fn mariadb_production_serve_never_migrates() {
    if !require("MariaDB", &mysql_url()) {
        return;
    }
    production_serve_never_migrates_and_waits_for_migrate(TestDatabase::mysql(&mysql_url()).await.unwrap()).await;
}

async fn production_serve_never_migrates_and_waits_for_migrate(db: TestDatabase) {
    let mut env: Vec<(&str, &str)> = FAST.to_vec();
    env.extend([
        ("FIXTURE__APP__DATABASE", "true"),
        ("FIXTURE__DATABASE__URL", db.url()),
        ("FIXTURE__CORS__ALLOWED_ORIGINS", "https://a.example"),
        ("FIXTURE__SHUTDOWN__DRAIN_DELAY", "0s"),
    ]);
    // Production keeps no audit log without a chain key.
    let loaded = keel::app::Loader::new("fixture", Profile::Production)
        .env(env.iter().chain(&[("FIXTURE__HTTP__PORT", "0")]).map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
        .load()
        .unwrap();
    let Err(refused) = keel::app::start(keel_fixture::service(), loaded).await else {
        panic!("started in production without an audit key");
    };
    assert!(refused.to_string().contains("security.audit.active_key"), "{refused}");
    env.extend([
        ("FIXTURE__SECURITY__AUDIT__ACTIVE_KEY", "a1"),
        ("FIXTURE__SECURITY__AUDIT__KEYS__A1__SECRET", "YXVkaXQta2V5LWZvci10aGUtZml4dHVyZS10ZXN0cy0xMjM="),
    ]);
    let f = Fixture::start_profile(Profile::Production, &env).await;
    eventually("migrations reported pending", || async {
        let (status, body) = ready(&f).await;
        status == 503
            && body["checks"]["database"]["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("migrations pending: run 'fixture migrate'"))
    })
    .await;
    let (code, out, err) = migrate_cli(&["migrate"], db.url());
    assert_eq!(code, 0, "{out}{err}");
    eventually("ready once migrated", || async { ready(&f).await.0 == 200 }).await;
    let dep = if db.url().starts_with("mysql") { Dep::MariaDb } else { Dep::Postgres };
    assert_eq!(use_it(&f, dep).await, 200);
    f.stop().await;
    // And production refuses auto_migrate outright.
    let (code, _, err) = run_cli(
        &["config", "check"],
        &[
            ("KEEL_ENV", "production"),
            ("FIXTURE__DATABASE__AUTO_MIGRATE", "true"),
            ("FIXTURE__CORS__ALLOWED_ORIGINS", "https://a.example"),
        ],
    );
    assert_eq!(code, 78);
    assert!(err.contains("database.auto_migrate"), "{err}");
}

#[test]
fn sqlite_works_with_zero_setup() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::spawn_in(
        Some(dir.path()),
        &[("KEEL_ENV", "development"), ("FIXTURE__APP__DATABASE", "true"), ("FIXTURE__LOG__FORMAT", "json")],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ok = std::process::Command::new(common::bin())
            .env_clear()
            .env("FIXTURE__HTTP__PORT", p.http.unwrap().port().to_string())
            .args(["healthcheck", "--ready"])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(dir.path().join("data/fixture.db").exists());
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), 0);
}

#[tokio::test]
async fn transactions_roll_back_on_error_and_on_drop() {
    let db = TestDatabase::sqlite().unwrap();
    // The URL comes from a secret file (database.url_file), as in Kubernetes.
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("database-url");
    std::fs::write(&url_file, format!("{}\n", db.url())).unwrap();
    let f = Fixture::start(&[
        ("FIXTURE__APP__DATABASE", "true"),
        ("FIXTURE__DATABASE__URL_FILE", url_file.to_str().unwrap()),
        FAST[0],
        FAST[1],
    ])
    .await;
    eventually("ready", || async { ready(&f).await.0 == 200 }).await;
    let c = client();
    let resp = c.post(f.url("/db/items/rollback")).json(&serde_json::json!({"name": "ghost"})).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "true", "the closure failed");
    let items: Value = c.get(f.url("/db/items")).send().await.unwrap().json().await.unwrap();
    assert_eq!(items, serde_json::json!([]), "rolled back on error");
    f.stop().await;

    // Dropped without commit: rolled back too.
    let metrics = keel::telemetry::Metrics::new();
    let cfg = keel::data::DatabaseConfig::default();
    let kdb = keel::data::Db::new("t", db.url(), &cfg, None, &metrics).unwrap();
    kdb.clone().connect_in_background(tokio_util::sync::CancellationToken::new()).await;
    {
        let mut tx = kdb.begin().await.unwrap();
        sqlx::query("INSERT INTO items (name) VALUES ('dropped')").execute(&mut *tx).await.unwrap();
    }
    let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM items").fetch_one(kdb.pool()).await.unwrap();
    assert_eq!(n.0, 0);
    // A transaction() whose future is dropped part-way (a cancelled request) rolls back.
    let stuck = kdb.transaction(|tx| {
        Box::pin(async move {
            sqlx::query("INSERT INTO items (name) VALUES ('cancelled')").execute(&mut **tx).await?;
            std::future::pending::<()>().await;
            Ok::<_, keel::data::DataError>(())
        })
    });
    assert!(tokio::time::timeout(Duration::from_millis(100), stuck).await.is_err());
    let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM items").fetch_one(kdb.pool()).await.unwrap();
    assert_eq!(n.0, 0);
    kdb.close().await;
}

/// A test that leaves a MariaDB connection inside a transaction must not hang the test run when
/// its database is dropped: the drop ends the database's other sessions first.
#[tokio::test]
async fn mariadb_test_database_drops_despite_an_open_transaction() {
    use sqlx::{Connection, Executor};
    if !require("MariaDB", &mysql_url()) {
        return;
    }
    let db = TestDatabase::mysql(&mysql_url()).await.unwrap();
    let name = db.url().rsplit_once('/').unwrap().1.to_owned();
    let mut open = sqlx::AnyConnection::connect(db.url()).await.unwrap();
    open.execute("CREATE TABLE t (x INT)").await.unwrap();
    open.execute("BEGIN").await.unwrap();
    open.execute("INSERT INTO t VALUES (1)").await.unwrap();
    let dropped = tokio::task::spawn_blocking(move || drop(db));
    tokio::time::timeout(Duration::from_secs(60), dropped).await.expect("the drop does not hang").unwrap();
    let mut admin = sqlx::AnyConnection::connect(&mysql_url()).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, 0, "{name} is gone");
    drop(open);
}

/// `Db::fetch_all_within`: the database cuts a statement off past its limit (a typed 503 error,
/// counted), the setting does not outlive the statement on the pooled connection, and a
/// statement within its limit answers as usual.
async fn statement_time_limit(db: TestDatabase, slow: &str, leaked: Option<&str>) {
    let metrics = keel::telemetry::Metrics::new();
    let mut cfg = keel::data::DatabaseConfig::default();
    cfg.pool.max_connections = 1;
    // SQLite's cut-off statement ends on its own (seconds on a slow machine) before the one
    // connection is free for the next call: that wait is not what is tested.
    cfg.pool.acquire_timeout = Duration::from_secs(60);
    let kdb = keel::data::Db::new("t", db.url(), &cfg, None, &metrics).unwrap();
    kdb.clone().connect_in_background(tokio_util::sync::CancellationToken::new()).await;
    let limit = Duration::from_millis(200);
    let Err(err) = kdb.fetch_all_within(slow, limit, |q| q).await else { panic!("not cut off") };
    assert!(matches!(err, keel::data::DataError::StatementTimeout { after } if after == limit), "{err:?}");
    assert_eq!(err.kind(), "statement_timeout");
    let resp = axum::response::IntoResponse::into_response(err);
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let text = metrics.render();
    assert!(text.contains(r#"db_errors_total{kind="statement_timeout",pool="t"} 1"#), "{text}");
    // Within its limit, with a bound value.
    let rows = kdb.fetch_all_within("SELECT $1 AS n", Duration::from_secs(5), |q| q.bind(7_i64)).await.unwrap();
    assert_eq!(sqlx::Row::get::<i64, _>(&rows[0], "n"), 7);
    // The one pooled connection has no limit left on it.
    if let Some(leaked) = leaked {
        let mut conn = kdb.acquire().await.unwrap();
        let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(leaked)).fetch_one(&mut *conn).await.unwrap();
        assert!(["0", "0.000000"].contains(&value.as_str()), "{leaked} = {value}");
    }
}

#[tokio::test]
async fn postgres_statement_time_limit() {
    if !require("PostgreSQL", &postgres_url()) {
        return;
    }
    let db = TestDatabase::postgres(&postgres_url()).await.unwrap();
    statement_time_limit(db, "SELECT 1 AS n FROM pg_sleep(5)", Some("SHOW statement_timeout")).await;
}

#[tokio::test]
async fn mariadb_statement_time_limit() {
    if !require("MariaDB", &mysql_url()) {
        return;
    }
    let db = TestDatabase::mysql(&mysql_url()).await.unwrap();
    let leaked = "SELECT CAST(@@max_statement_time AS CHAR)";
    statement_time_limit(db, "SELECT SLEEP(5) AS n", Some(leaked)).await;
}

#[tokio::test]
async fn sqlite_statement_time_limit() {
    let db = TestDatabase::sqlite().unwrap();
    // Seconds of work (1 to 3.5 s on the machines seen): SQLite has no interrupt through `Any`,
    // so the call stops waiting.
    let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000000) \
                SELECT COUNT(*) AS n FROM c";
    statement_time_limit(db, slow, None).await;
}

/// A statement run through `Db::exec` or `Db::on` is counted where it fails, once, whether it
/// streams rows (`fetch_all`) or not (`fetch_optional`, `execute`), and converting its error
/// with `?` counts nothing more. An error from outside them is counted by `Db::observe`.
#[tokio::test]
async fn statement_errors_are_counted_once_where_they_fail() {
    let db = TestDatabase::sqlite().unwrap();
    let metrics = keel::telemetry::Metrics::new();
    let kdb = keel::data::Db::new("t", db.url(), &keel::data::DatabaseConfig::default(), None, &metrics).unwrap();
    kdb.clone().connect_in_background(tokio_util::sync::CancellationToken::new()).await;
    let counted = |kind: &str| -> f64 {
        let kind = format!("kind=\"{kind}\"");
        metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("db_errors_total{") && l.contains(&kind) && l.contains("pool=\"t\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    async fn list(db: &keel::data::Db) -> Result<Vec<(i64,)>, keel::data::DataError> {
        Ok(sqlx::query_as("SELECT n FROM missing").fetch_all(db.exec()).await?)
    }
    assert!(matches!(list(&kdb).await, Err(keel::data::DataError::Sql(_))));
    assert_eq!(counted("database"), 1.0, "the stream's error, once");
    let mut conn = kdb.acquire().await.unwrap();
    let one: Result<Option<(i64,)>, _> =
        sqlx::query_as("SELECT n FROM missing").fetch_optional(kdb.on(&mut *conn)).await;
    assert!(one.is_err());
    let done = sqlx::query("DELETE FROM missing").execute(kdb.on(&mut *conn)).await;
    assert!(done.is_err());
    assert_eq!(counted("database"), 3.0, "one each");
    // "No row" is an answer, not a failure.
    let none: Result<(i64,), _> = sqlx::query_as("SELECT 1 WHERE 0").fetch_one(kdb.on(&mut *conn)).await;
    assert!(matches!(none, Err(sqlx::Error::RowNotFound)));
    assert_eq!(counted("row_not_found"), 0.0);
    // Outside the executor nothing counts on its own; `observe` does.
    let bare = sqlx::query("SELECT n FROM missing").execute(&mut *conn).await.unwrap_err();
    assert_eq!(counted("database"), 3.0);
    assert!(matches!(kdb.observe(bare), keel::data::DataError::Sql(_)));
    assert_eq!(counted("database"), 4.0);
    drop(conn);
    kdb.close().await;
}

/// The finding behind it: 50 sign-ins at once on the all-in-one's SQLite got 500s where another
/// writer held the file past `busy_timeout` ("database is locked", code 5). A busy or locked
/// SQLite is a conflict that clears: 503 with `Retry-After: 1`, never an internal error.
#[tokio::test]
async fn sqlite_busy_is_a_503_that_clears() {
    use axum::response::IntoResponse as _;
    use keel::data::sqlx::{self, ConnectOptions as _, Connection as _};
    let db = TestDatabase::sqlite().unwrap();
    let opts = |busy_ms: u64| {
        db.url()
            .parse::<sqlx::sqlite::SqliteConnectOptions>()
            .unwrap()
            .busy_timeout(Duration::from_millis(busy_ms))
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
    };
    let mut holder = opts(1000).connect().await.unwrap();
    sqlx::query("CREATE TABLE t (n INTEGER)").execute(&mut holder).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut holder).await.unwrap();
    let mut other = opts(50).connect().await.unwrap();
    let e = sqlx::query("INSERT INTO t (n) VALUES (1)").execute(&mut other).await.unwrap_err();
    assert_eq!(keel::data::retry_kind(&e), Some(keel::data::RetryKind::LockTimeout), "{e:?}");
    let resp = keel::data::DataError::Sql(e).into_response();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    sqlx::query("INSERT INTO t (n) VALUES (1)").execute(&mut other).await.unwrap();
    holder.close().await.unwrap();
}

/// Two transactions that each read and then write, their reads before either writes: begun
/// deferred (`Db::begin`), the second writer fails at once on SQLite (its snapshot is stale, code
/// 517, which no busy timeout retries: a 503 to its client); begun with `Db::begin_write` the
/// second waits for the first and both commit.
#[tokio::test]
async fn sqlite_writing_transactions_wait_for_each_other_instead_of_failing() {
    let db = TestDatabase::sqlite().unwrap();
    let metrics = keel::telemetry::Metrics::new();
    let cfg = keel::data::DatabaseConfig::default();
    let kdb = keel::data::Db::new("t", db.url(), &cfg, None, &metrics).unwrap();
    kdb.clone().connect_in_background(tokio_util::sync::CancellationToken::new()).await;
    sqlx::query("CREATE TABLE counter (n INTEGER NOT NULL)").execute(kdb.pool()).await.unwrap();
    sqlx::query("INSERT INTO counter (n) VALUES (0)").execute(kdb.pool()).await.unwrap();
    async fn read(tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> i64 {
        sqlx::query_as::<_, (i64,)>("SELECT n FROM counter").fetch_one(&mut **tx).await.unwrap().0
    }
    let increment = "UPDATE counter SET n = n + 1";

    // Deferred: both read, the first writes and commits, the second's write fails at once.
    let mut first = kdb.begin().await.unwrap();
    let mut second = kdb.begin().await.unwrap();
    read(&mut first).await;
    read(&mut second).await;
    sqlx::query(increment).execute(&mut *first).await.unwrap();
    first.commit().await.unwrap();
    let e = sqlx::query(increment).execute(&mut *second).await.unwrap_err();
    let e = keel::data::DataError::Sql(e);
    assert_eq!(axum::response::IntoResponse::into_response(e).status(), 503, "a stale snapshot is retryable");
    drop(second);

    // Writing transactions: the second begins once the first has committed, and sees its write.
    let mut first = kdb.begin_write().await.unwrap();
    let before = read(&mut first).await;
    let waiting = {
        let kdb = kdb.clone();
        tokio::spawn(async move {
            let mut second = kdb.begin_write().await.unwrap();
            let seen = read(&mut second).await;
            sqlx::query(increment).execute(&mut *second).await.unwrap();
            second.commit().await.unwrap();
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the second writer waits for the first");
    sqlx::query(increment).execute(&mut *first).await.unwrap();
    first.commit().await.unwrap();
    assert_eq!(waiting.await.unwrap(), before + 1, "and reads what the first committed");
    let n: (i64,) = sqlx::query_as("SELECT n FROM counter").fetch_one(kdb.pool()).await.unwrap();
    assert_eq!(n.0, before + 2, "both committed");
    kdb.close().await;
}

/// Writing transactions on a SQLite file queue for the writer's connection and begin in the
/// order they asked, each as soon as the one before commits. Queued in SQLite's busy handler
/// instead, a waiting writer sleeps between tries (1, 2, 5 … 100 ms) and whichever wakes first
/// wins: 50 joins at once on the all-in-one waited up to 200 ms, in no particular order.
#[tokio::test]
async fn sqlite_writers_take_turns_in_the_order_they_came() {
    let db = TestDatabase::sqlite().unwrap();
    let metrics = keel::telemetry::Metrics::new();
    let mut cfg = keel::data::DatabaseConfig::default();
    cfg.pool.max_connections = 16;
    let kdb = keel::data::Db::new("t", db.url(), &cfg, None, &metrics).unwrap();
    kdb.clone().connect_in_background(tokio_util::sync::CancellationToken::new()).await;
    sqlx::query("CREATE TABLE turns (n INTEGER NOT NULL)").execute(kdb.pool()).await.unwrap();
    let first = kdb.begin_write().await.unwrap();
    let mut writers = Vec::new();
    for n in 0..12_i64 {
        let kdb = kdb.clone();
        writers.push(tokio::spawn(async move {
            let mut tx = kdb.begin_write().await.unwrap();
            sqlx::query("INSERT INTO turns (n) VALUES ($1)").bind(n).execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }));
        // Ordering only: each writer asks after the one before.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long enough for busy-handler sleeps to reach 100 ms, so their order would be the wakers'.
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.commit().await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let order: Vec<i64> = sqlx::query_as::<_, (i64,)>("SELECT n FROM turns ORDER BY rowid")
        .fetch_all(kdb.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(order, (0..12).collect::<Vec<_>>(), "writers began in the order they asked");
    kdb.close().await;
}

/// Two `transaction!`s that lock the same two rows in opposite orders deadlock; the database
/// undoes one of them (PostgreSQL `40P01`, InnoDB 1213), which the macro runs again once the
/// other committed: both changes land exactly once. An error that is not a conflict is not run
/// again, and rolls back.
async fn conflicting_transactions_run_again(db: TestDatabase) {
    use std::sync::atomic::{AtomicU32, Ordering};
    let metrics = keel::telemetry::Metrics::new();
    let kdb = keel::data::Db::new("t", db.url(), &keel::data::DatabaseConfig::default(), None, &metrics).unwrap();
    kdb.clone().connect_in_background(tokio_util::sync::CancellationToken::new()).await;
    for sql in ["CREATE TABLE pair (id INT PRIMARY KEY, n INT NOT NULL)", "INSERT INTO pair VALUES (1, 0), (2, 0)"] {
        sqlx::query(sql).execute(kdb.pool()).await.unwrap();
    }
    let runs = AtomicU32::new(0);
    // Both transactions hold their first row before either asks for its second.
    let both_hold = tokio::sync::Barrier::new(2);
    async fn bump(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        db: &keel::data::Db,
        (first, second): (i32, i32),
        runs: &AtomicU32,
        both_hold: &tokio::sync::Barrier,
    ) -> Result<(), keel::data::DataError> {
        let run = runs.fetch_add(1, Ordering::SeqCst);
        let update = db.sql("UPDATE pair SET n = n + 1 WHERE id = $1").into_owned();
        sqlx::query(sqlx::AssertSqlSafe(update.clone())).bind(first).execute(&mut **tx).await?;
        if run < 2 {
            both_hold.wait().await;
        }
        sqlx::query(sqlx::AssertSqlSafe(update)).bind(second).execute(&mut **tx).await?;
        Ok(())
    }
    let (a, b) = tokio::join!(
        async { keel::data::transaction!(&kdb, |tx| bump(&mut tx, &kdb, (1, 2), &runs, &both_hold)) },
        async { keel::data::transaction!(&kdb, |tx| bump(&mut tx, &kdb, (2, 1), &runs, &both_hold)) },
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 3, "the deadlock's victim ran once more");
    let rows: Vec<(i32, i32)> =
        sqlx::query_as("SELECT id, n FROM pair ORDER BY id").fetch_all(kdb.pool()).await.unwrap();
    assert_eq!(rows, [(1, 2), (2, 2)], "each transaction's two updates landed once");

    // Not a conflict: one run, rolled back.
    let runs = AtomicU32::new(0);
    let failed: Result<(), keel::data::DataError> = keel::data::transaction!(&kdb, |tx| async {
        runs.fetch_add(1, Ordering::SeqCst);
        sqlx::query("UPDATE pair SET n = 100").execute(&mut *tx).await?;
        Err(keel::data::DataError::Config("deliberate".into()))
    });
    assert!(failed.is_err());
    assert_eq!(runs.load(Ordering::SeqCst), 1, "a failure that is not a conflict is not run again");
    let rows: Vec<(i32, i32)> =
        sqlx::query_as("SELECT id, n FROM pair ORDER BY id").fetch_all(kdb.pool()).await.unwrap();
    assert_eq!(rows, [(1, 2), (2, 2)], "rolled back");

    // A statement that fails through `Db::on` is counted where it fails, once: `?` and the
    // macro add nothing.
    let errors = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("db_errors_total{") && l.contains("pool=\"t\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = errors(&metrics.render());
    let failed: Result<(), keel::data::DataError> = keel::data::transaction!(&kdb, |tx| async {
        sqlx::query("SELECT n FROM no_such_table").execute(kdb.on(&mut *tx)).await?;
        Ok(())
    });
    assert!(matches!(failed, Err(keel::data::DataError::Sql(_))), "{failed:?}");
    assert_eq!(errors(&metrics.render()) - before, 1.0, "{}", metrics.render());
    kdb.close().await;
}

#[tokio::test]
async fn postgres_conflicting_transactions_run_again() {
    if !require("PostgreSQL", &postgres_url()) {
        return;
    }
    conflicting_transactions_run_again(TestDatabase::postgres(&postgres_url()).await.unwrap()).await;
}

#[tokio::test]
async fn mariadb_conflicting_transactions_run_again() {
    if !require("MariaDB", &mysql_url()) {
        return;
    }
    conflicting_transactions_run_again(TestDatabase::mysql(&mysql_url()).await.unwrap()).await;
}
