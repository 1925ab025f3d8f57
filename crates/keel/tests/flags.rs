//! Runtime flag overrides in a real database, shared by two instances as by two replicas.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel::data::{Backend, DatabaseConfig, Db};
use keel::features::{EvalContext, FlagDef, Flags, FlagsOptions, SqlStore, StoreConfig};
use keel::redis::{Redis, RedisConfig};
use keel::telemetry::Metrics;
use keel::testing::{TestDatabase, TestRedis, mysql_url, postgres_url, redis_url, require};
use tokio_util::sync::CancellationToken;

const FILE: &str = "feed.live: {enabled: false, description: the live feed}\n";

async fn replica(url: &str) -> (Flags, Db) {
    let db = Db::new("flags-test", url, &DatabaseConfig::default(), None, &Metrics::new()).unwrap();
    db.clone().connect_in_background(CancellationToken::new()).await;
    let flags = Flags::from_yaml(FILE, FlagsOptions::new("production")).unwrap();
    flags.attach(Arc::new(SqlStore::new(db.clone())));
    (flags, db)
}

fn on() -> FlagDef {
    FlagDef { enabled: true, ..Default::default() }
}

async fn on_sql(url: &str) {
    sqlx::any::install_default_drivers();
    let backend = Backend::from_url(url).unwrap();
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(url).await.unwrap();
    keel::features::migrations().run(&pool, backend).await.unwrap();
    pool.close().await;
    let (a, _da) = replica(url).await;
    let (b, _db) = replica(url).await;
    shared_overrides(&a, &b, "database").await;

    // A row this version cannot read (written by hand) is skipped; the others still apply.
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(url).await.unwrap();
    sqlx::query(
        "INSERT INTO keel_flag_overrides (flag_key, definition, change_id, updated_by, updated_at) \
         VALUES ('broken.flag', '{\"enabled\": tru', 0, 'hand', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    a.set_override("feed.live", on(), "ops", "after the bad row").await.unwrap();
    b.refresh().await.unwrap();
    assert!(b.is_enabled("feed.live", &EvalContext::new()), "the readable override applies");
    assert!(!b.is_enabled("broken.flag", &EvalContext::new()));
    assert!(b.report().store.error.is_none(), "{:?}", b.report().store.error);
}

/// Two instances with their own store handles on one store, as two replicas.
async fn shared_overrides(a: &Flags, b: &Flags, kind: &str) {
    a.refresh().await.unwrap();
    b.refresh().await.unwrap();
    let stop = CancellationToken::new();
    // The default poll interval: the bound is one second from change to effect.
    let every = StoreConfig::default().poll_interval;
    tokio::spawn(b.clone().sync(every, stop.clone()));
    let user = EvalContext::new().user("u1");
    assert!(!b.is_enabled("feed.live", &user));

    let mut changes = b.subscribe();
    let started = Instant::now();
    a.set_override("feed.live", on(), "ops", "launch").await.unwrap().unwrap();
    assert!(a.is_enabled("feed.live", &user), "the writer applies it at once");
    while !b.is_enabled("feed.live", &user) {
        assert!(started.elapsed() < Duration::from_secs(1), "the other instance did not follow within 1 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let event = tokio::time::timeout(Duration::from_secs(1), changes.recv()).await.unwrap().unwrap();
    assert_eq!(event.key, "feed.live");

    // Removal follows the same way, and the file's definition is back.
    a.remove_override("feed.live", "ops", "rollback").await.unwrap().unwrap();
    let started = Instant::now();
    while b.is_enabled("feed.live", &user) {
        assert!(started.elapsed() < Duration::from_secs(1), "the removal did not follow within 1 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.report().flags[0].def.description, "the live feed");

    // Both write the same flag at once: every change lands, in one history, and both end on the
    // same definition.
    let writes = (0..10).map(|i| {
        let f = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            let def = FlagDef { enabled: true, description: format!("write {i}"), ..Default::default() };
            f.set_override("race.flag", def, &format!("writer-{i}"), "race").await.unwrap().unwrap()
        })
    });
    let mut ids = Vec::new();
    for w in writes {
        ids.push(w.await.unwrap().id);
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 10, "every change has its own place in the history");
    let history = a.history(Some("race.flag"), 100).await.unwrap();
    assert_eq!(history.len(), 10);
    // Each change's `before` is the one it replaced: the history is a chain.
    for pair in history.windows(2) {
        assert_eq!(pair[0].before.as_ref(), pair[1].after.as_ref(), "{:?} follows {:?}", pair[0].id, pair[1].id);
    }
    a.refresh().await.unwrap();
    b.refresh().await.unwrap();
    let (ra, rb) = (a.report_under("race"), b.report_under("race"));
    assert_eq!(ra.flags[0].def, rb.flags[0].def);
    assert_eq!(ra.flags[0].def, history[0].after.clone().unwrap(), "the newest change is in effect");
    assert_eq!(ra.store.kind, kind);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overrides_are_shared_on_sqlite() {
    let db = TestDatabase::sqlite().unwrap();
    on_sql(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overrides_are_shared_on_postgres() {
    if !require("PostgreSQL", &postgres_url()) {
        return;
    }
    let db = TestDatabase::postgres(&postgres_url()).await.unwrap();
    on_sql(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overrides_are_shared_on_mariadb() {
    if !require("MariaDB", &mysql_url()) {
        return;
    }
    let db = TestDatabase::mysql(&mysql_url()).await.unwrap();
    on_sql(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overrides_are_shared_on_redis() {
    let url = redis_url();
    if !require("Redis", &url) {
        return;
    }
    let keys = TestRedis::new(&url);
    let replica = || async {
        let mut cfg = RedisConfig::default();
        cfg.key_prefix = Some(keys.prefix().to_owned());
        let redis = Redis::new("flags-test", &url, &cfg, &Metrics::new()).unwrap();
        redis.clone().connect_in_background(CancellationToken::new()).await;
        let flags = Flags::from_yaml(FILE, FlagsOptions::new("production")).unwrap();
        flags.attach(Arc::new(keel::features::RedisStore::new(redis)));
        flags
    };
    let (a, b) = (replica().await, replica().await);
    shared_overrides(&a, &b, "redis").await;

    // An entry this version cannot read (written by hand) is skipped; the others still apply.
    let mut cfg = RedisConfig::default();
    cfg.key_prefix = Some(keys.prefix().to_owned());
    let raw = Redis::new("flags-test", &url, &cfg, &Metrics::new()).unwrap();
    raw.clone().connect_in_background(CancellationToken::new()).await;
    let _: i64 = raw
        .query(keel::redis::driver::cmd("HSET").arg(raw.key("flags:overrides")).arg("broken.flag").arg("{\"def\": tru"))
        .await
        .unwrap();
    a.set_override("feed.live", on(), "ops", "after the bad entry").await.unwrap();
    b.refresh().await.unwrap();
    assert!(b.is_enabled("feed.live", &EvalContext::new()), "the readable override applies");
    assert!(b.report().store.error.is_none(), "{:?}", b.report().store.error);
}
