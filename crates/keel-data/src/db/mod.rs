//! The pool, its health check and its errors (feature `sql`); see the crate docs.

mod error;
mod metrics;
mod migrate;
mod retry;
mod sqlite_file;
mod trace;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::any::{AnyArguments, AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::query::Query;
use sqlx::{Any, AnyPool, AssertSqlSafe, Connection, SqlSafeStr, Transaction};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::DatabaseConfig;
pub use error::{
    DataError, RETRY_AFTER_SECS, RETRYABLE, RetryKind, RetryableCode, lookup as lookup_retryable, retry_kind,
};
pub use migrate::{MigrationState, Migrations};
pub use retry::{Transient, TxRetry};
pub use sqlite_file::prepare_sqlite_file;
pub use sqlx;
pub use trace::Traced;

use keel_health::connect::{ConnectTracker, ConnectionCheck, Connects, Phase};
use keel_health::{CheckFuture, Outcome};
use keel_resilience::Backoff;
use keel_resilience::reprobe::Availability;
use keel_telemetry::Metrics;

/// Which SQL dialect a [`Db`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
    /// SQLite.
    Sqlite,
}

impl Backend {
    /// The backend a URL names.
    pub fn from_url(url: &str) -> Option<Self> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => Some(Self::Postgres),
            "mysql" | "mariadb" => Some(Self::MySql),
            "sqlite" => Some(Self::Sqlite),
            _ => None,
        }
    }
}

impl Backend {
    /// `sql` with PostgreSQL-style placeholders (`$1`, `$2`, …, each used once, in order)
    /// rewritten for this backend: MySQL and SQLite through `Any` take `?`. Text inside quotes
    /// is left alone.
    ///
    /// ```
    /// use keel_data::Backend;
    /// let q = "INSERT INTO t (a, b) VALUES ($1, '$2 stays') RETURNING $2";
    /// assert_eq!(Backend::Postgres.sql(q), q);
    /// assert_eq!(Backend::Sqlite.sql("SELECT * FROM t WHERE a = $1 AND b = $2"), "SELECT * FROM t WHERE a = ? AND b = ?");
    /// assert_eq!(Backend::MySql.sql("x = '$1' AND y = $1"), "x = '$1' AND y = ?");
    /// ```
    pub fn sql<'a>(&self, sql: &'a str) -> std::borrow::Cow<'a, str> {
        if *self == Self::Postgres || !sql.contains('$') {
            return std::borrow::Cow::Borrowed(sql);
        }
        let mut out = String::with_capacity(sql.len());
        let mut quote: Option<char> = None;
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            match (quote, c) {
                (Some(q), c) if c == q => {
                    quote = None;
                    out.push(c);
                }
                (Some(_), c) => out.push(c),
                (None, '\'' | '"' | '`') => {
                    quote = Some(c);
                    out.push(c);
                }
                (None, '$') if chars.peek().is_some_and(char::is_ascii_digit) => {
                    while chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                    out.push('?');
                }
                (None, c) => out.push(c),
            }
        }
        std::borrow::Cow::Owned(out)
    }

    /// [`Backend::sql`] as the statement `sqlx::query` takes. For statement text made by the
    /// program (placeholders bind every value), never from input.
    pub fn statement(&self, sql: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(self.sql(sql).into_owned())
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Postgres => "PostgreSQL",
            Self::MySql => "MySQL/MariaDB",
            Self::Sqlite => "SQLite",
        })
    }
}

struct Inner {
    pool: AnyPool,
    /// A SQLite file's writing transactions' own connection (see [`Db::new`]).
    writer: Option<AnyPool>,
    options: AnyConnectOptions,
    backend: Backend,
    service: String,
    config: DatabaseConfig,
    connect: ConnectTracker,
    available: Availability,
    migrations: Option<Arc<Migrations>>,
    migrations_checked: AtomicBool,
    metrics: metrics::DbMetrics,
    /// A reachability probe of a slow acquire is running, and when the last one started.
    probing: AtomicBool,
    last_probe: std::sync::Mutex<Option<Instant>>,
    /// MySQL backend only: whether the server is MariaDB (asked on the first connection).
    mariadb: std::sync::OnceLock<bool>,
    /// Where the pool connects, for the statements' spans.
    target: trace::Target,
}

/// A pool of at most `max` connections with the pool settings and, on SQLite, the pragmas every
/// connection needs.
fn pool_options(backend: Backend, p: &crate::config::PoolConfig, max: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max)
        .min_connections(p.min_connections.min(max))
        .acquire_timeout(p.acquire_timeout)
        .idle_timeout(Some(p.idle_timeout))
        .max_lifetime(Some(p.max_lifetime))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    // Readers do not block the writer; writers wait instead of failing.
                    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
}

/// A SQLite URL of an in-memory database (each connection its own, unless shared-cache).
fn in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// How long a wait for a connection, with room in the pool, goes before one direct connection
/// attempt checks that the database is reachable (see [`Db::acquire`]).
const PROBE_SLOW_ACQUIRE: Duration = Duration::from_millis(50);
/// The shortest time between two such attempts.
const REACHABILITY_PROBE_EVERY: Duration = Duration::from_secs(1);

/// A statement of the program's with its values bound (see [`Db::fetch_all_within`]).
pub type BoundQuery = Query<'static, Any, AnyArguments>;

/// `SET TRANSACTION` and `START TRANSACTION` in one round trip (see [`Db::begin_with`]).
const MYSQL_READ_COMMITTED: &str = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION";

/// SQLite's transaction that takes the write lock as it begins (see [`Db::begin_write`]).
const SQLITE_WRITE: &str = "BEGIN IMMEDIATE";

/// `sql` with MySQL's per-statement time limit: the `MAX_EXECUTION_TIME(ms)` optimizer hint right
/// after its leading `SELECT` (MySQL reads hints only there; other statements are left as they are).
fn mysql_execution_hint(sql: &str, ms: u64) -> String {
    let trimmed = sql.trim_start();
    match trimmed.get(..6) {
        Some(head) if head.eq_ignore_ascii_case("select") => {
            format!("SELECT /*+ MAX_EXECUTION_TIME({ms}) */{}", &trimmed[6..])
        }
        _ => sql.to_owned(),
    }
}

/// A service's database handle. Cheap to clone; share it with handlers through router state.
///
/// # Traced statements
///
/// Run statements through [`Db::exec`] (on the pool) or [`Db::on`] (on a connection or a
/// transaction) rather than on [`Db::pool`] or the connection itself: while spans are exported
/// and the request is sampled, each statement is then an OpenTelemetry client span in the
/// request's trace, named after its operation and table (`SELECT events`), with the database
/// conventions' attributes and the statement's text, never a bound value. Otherwise the
/// statement goes to the executor untouched.
///
/// ```no_run
/// # async fn f(db: keel_data::Db) -> Result<(), keel_data::DataError> {
/// let names: Vec<(String,)> = sqlx::query_as("SELECT name FROM items").fetch_all(db.exec()).await?;
/// let mut tx = db.begin().await?;
/// sqlx::query(db.statement("INSERT INTO items (name) VALUES ($1)")).bind("a").execute(db.on(&mut *tx)).await?;
/// db.commit(tx).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("backend", &self.inner.backend).finish_non_exhaustive()
    }
}

/// The URL to use: `database.url`, else (outside production) a SQLite file under `data/`.
pub fn resolve_url(cfg: &DatabaseConfig, service: &str, production: bool) -> Result<String, DataError> {
    match &cfg.url {
        Some(url) => Ok(url.expose().replacen("mariadb://", "mysql://", 1)),
        None if production => Err(DataError::Config(
            "database.url is required in production (env <SERVICE>__DATABASE__URL or database.url_file)".into(),
        )),
        None => {
            sqlite_file::create_private_dir(std::path::Path::new("data"))?;
            Ok(format!("sqlite://data/{service}.db?mode=rwc"))
        }
    }
}

impl Db {
    /// A pool for `url` that connects lazily: nothing is dialled until [`Db::connect_in_background`]
    /// or the first query. Registers the pool metrics in `metrics`.
    pub fn new(
        service: &str,
        url: &str,
        config: &DatabaseConfig,
        migrations: Option<Arc<Migrations>>,
        metrics: &Metrics,
    ) -> Result<Self, DataError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)
            .ok_or_else(|| DataError::Config("database.url must be postgres://, mysql:// or sqlite:".into()))?;
        let options: AnyConnectOptions = url.parse().map_err(DataError::Sql)?;
        if backend == Backend::Sqlite {
            prepare_sqlite_file(url)?;
        }
        let p = &config.pool;
        let pool = pool_options(backend, p, p.max_connections).connect_lazy_with(options.clone());
        // One connection of its own for a SQLite file's writing transactions: they queue for it
        // in the pool's first-come order and each starts the moment the last commits. Queued in
        // SQLite's busy handler instead, a writer sleeps 1, 2, 5 … up to 100 ms between tries
        // whenever the lock is taken: 50 joins at once waited up to 200 ms. An in-memory
        // database is one per connection, so it has none (its pool is its only writer).
        let writer = (backend == Backend::Sqlite && !in_memory(url))
            .then(|| pool_options(backend, p, 1).connect_lazy_with(options.clone()));
        let metrics = metrics::DbMetrics::register(metrics, service, &pool, p.max_connections)
            .map_err(|e| DataError::Config(format!("cannot register database metrics: {e}")))?;
        let target = trace::Target::of(backend, &options);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                writer,
                options,
                backend,
                service: service.to_owned(),
                config: config.clone(),
                connect: ConnectTracker::new("database", config.connect.clone()),
                available: Availability::default(),
                migrations,
                migrations_checked: AtomicBool::new(false),
                metrics,
                probing: AtomicBool::new(false),
                last_probe: std::sync::Mutex::new(None),
                mariadb: std::sync::OnceLock::new(),
                target,
            }),
        })
    }

    /// The dialect.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// [`Backend::sql`] for this database: write queries with `$1, $2, …`.
    pub fn sql<'a>(&self, sql: &'a str) -> std::borrow::Cow<'a, str> {
        self.inner.backend.sql(sql)
    }

    /// [`Db::sql`] as the statement `sqlx::query` takes. For statement text made by the program
    /// (placeholders bind every value), never from input.
    pub fn statement(&self, sql: &str) -> sqlx::AssertSqlSafe<String> {
        self.inner.backend.statement(sql)
    }

    /// The pool, for queries. Calls through it skip the fail-fast check and the acquire metrics:
    /// prefer [`Db::acquire`] and [`Db::begin`] in request handlers. Statements run on it are
    /// not traced: run them on [`Db::exec`].
    pub fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// The pool as an executor whose statements are traced (see [Traced statements](Db#traced-statements)).
    ///
    /// ```no_run
    /// # async fn f(db: keel_data::Db) -> Result<(), sqlx::Error> {
    /// let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items").fetch_one(db.exec()).await?;
    /// # Ok(()) }
    /// ```
    pub fn exec(&self) -> Traced<'_, &AnyPool> {
        Traced::new(self, &self.inner.pool)
    }

    /// `executor` (a connection, `&mut *conn`, or a transaction's, `&mut *tx`; any
    /// `sqlx::Executor` of `Any`) with its statements traced (see
    /// [Traced statements](Db#traced-statements)). Costs nothing when they are not.
    ///
    /// ```no_run
    /// # async fn f(db: keel_data::Db) -> Result<(), keel_data::DataError> {
    /// let mut conn = db.acquire().await?;
    /// sqlx::query("DELETE FROM items").execute(db.on(&mut *conn)).await?;
    /// let mut tx = db.begin().await?;
    /// sqlx::query("DELETE FROM items").execute(db.on(&mut *tx)).await?;
    /// db.commit(tx).await?;
    /// # Ok(()) }
    /// ```
    pub fn on<'c, X>(&self, executor: X) -> Traced<'_, X>
    where
        X: sqlx::Executor<'c, Database = Any>,
    {
        Traced::new(self, executor)
    }

    /// Whether the service's tables are known to be in place: its migrations were applied or
    /// found current (always true for a database without migrations). Libraries that keep
    /// tables in it wait for this before they read them.
    pub fn migrations_current(&self) -> bool {
        let needs = self.inner.migrations.as_ref().is_some_and(|m| m.covers(self.inner.backend) && !m.is_empty());
        !needs || self.inner.migrations_checked.load(Ordering::Relaxed)
    }

    /// Whether the database is believed reachable (last connection attempt or check succeeded).
    pub fn is_available(&self) -> bool {
        self.inner.available.is_up()
    }

    /// Completes when a re-probe next finds the database back (set-up re-runs the health
    /// checks then, so readiness follows at once).
    pub async fn recovered(&self) {
        self.inner.available.recovered().await;
    }

    /// Completes when a call next finds the database gone (a lost connection, or a connection
    /// that cannot be opened): set-up re-runs the health checks then, so readiness follows at
    /// once instead of at the next periodic check.
    pub async fn lost(&self) {
        self.inner.available.lost().await;
    }

    /// While the database is down after a lost connection: starts one background re-probe if it
    /// is due (one in flight at most, backed off), a fresh connection bounded by
    /// `database.check_timeout`. A success marks it available at once.
    fn reprobe(&self) {
        let db = self.clone();
        self.inner.available.spawn_probe(async move {
            let limit = db.inner.config.check_timeout.min(db.inner.config.connect.attempt_timeout);
            let ok = matches!(tokio::time::timeout(limit, db.try_connect()).await, Ok(Ok(())));
            if ok {
                tracing::info!(backend = %db.inner.backend, "database answers again (re-probe)");
            }
            db.inner.available.probed(ok);
        });
    }

    /// One connection attempt in the background, bounded by `database.check_timeout`; a
    /// failure marks the database down (waking every call waiting for a connection). At most
    /// one at a time and one a second, so a pool saturated by load costs the database little.
    ///
    /// Returns when the next attempt is due if this call could not start one (one ran less
    /// than a second ago, or is running), so a wait that goes on asks again then.
    fn probe_reachability(&self) -> Option<Duration> {
        // A file cannot be unreachable the way a server can, and a second connection to it
        // would contend with the ones in use.
        if self.inner.backend == Backend::Sqlite {
            return None;
        }
        {
            let mut last = self.inner.last_probe.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(at) = *last {
                let since = at.elapsed();
                if since < REACHABILITY_PROBE_EVERY {
                    return Some(REACHABILITY_PROBE_EVERY - since);
                }
            }
            if self.inner.probing.swap(true, std::sync::atomic::Ordering::AcqRel) {
                return Some(REACHABILITY_PROBE_EVERY);
            }
            *last = Some(Instant::now());
        }
        let db = self.clone();
        tokio::spawn(async move {
            let limit = db.inner.config.check_timeout.min(db.inner.config.connect.attempt_timeout);
            if !matches!(tokio::time::timeout(limit, db.try_connect()).await, Ok(Ok(()))) && db.is_available() {
                tracing::warn!(backend = %db.inner.backend, "the database cannot be reached; calls fail fast until it answers");
                db.inner.metrics.error("connection_lost");
                db.inner.available.lose();
            }
            db.inner.probing.store(false, std::sync::atomic::Ordering::Release);
        });
        Some(REACHABILITY_PROBE_EVERY)
    }

    fn unavailable(&self) -> DataError {
        DataError::Unavailable { reason: self.inner.connect.reason() }
    }

    /// Counts statement error `e`: `db_errors_total` by kind ("no row" excepted), and a lost
    /// connection marks the database unavailable at once. A statement run through [`Db::exec`]
    /// or [`Db::on`], and [`Db::commit`], are counted already; this is for one that was not (a
    /// bare connection, a column that does not decode).
    pub fn count_error(&self, e: &sqlx::Error) {
        // "No row" is an answer, not a failure of the database.
        if !matches!(e, sqlx::Error::RowNotFound) {
            self.inner.metrics.error(error::sql_kind(e));
        }
        if error::is_connection_error(e) {
            self.inner.available.lose();
        }
    }

    /// [`Db::count_error`], then `e` as a [`DataError`]: for an error that did not come through
    /// [`Db::exec`] or [`Db::on`] (those are counted where they fail: convert them with `?` or
    /// `DataError::from`, or they count twice).
    pub fn observe(&self, e: sqlx::Error) -> DataError {
        self.count_error(&e);
        DataError::from(e)
    }

    /// Counts `result`'s error, if any ([`Traced`]'s untraced path).
    pub(crate) fn count_failed<T>(&self, result: &Result<T, sqlx::Error>) {
        if let Err(e) = result {
            self.count_error(e);
        }
    }

    /// A connection from the pool, or at once [`DataError::Unavailable`] when the database is
    /// known to be down; waits at most `database.pool.acquire_timeout`. On a server database, a
    /// wait that lasts 50 ms (the pool may be retrying a refused connection until the timeout)
    /// starts a direct connection attempt, at most one a second; if that fails, the database
    /// is marked down and every call waiting for a connection fails at once.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future gives up the wait.
    pub async fn acquire(&self) -> Result<PoolConnection<Any>, DataError> {
        if !self.is_available() {
            self.inner.metrics.error("unavailable");
            self.reprobe();
            return Err(self.unavailable());
        }
        let started = Instant::now();
        let result = {
            let acquire = self.inner.pool.acquire();
            tokio::pin!(acquire);
            let probe_after = tokio::time::sleep(PROBE_SLOW_ACQUIRE);
            tokio::pin!(probe_after);
            let mut probing = true;
            loop {
                tokio::select! {
                    r = &mut acquire => break r,
                    // Another call found the database gone: no use waiting out the timeout.
                    () = self.inner.available.lost() => {
                        self.inner.metrics.acquired(started.elapsed());
                        self.inner.metrics.error("unavailable");
                        return Err(self.unavailable());
                    }
                    // Slow: the pool may be retrying a refused connection until the timeout (its
                    // size counts connections still being opened, so it cannot tell). One
                    // direct attempt tells at once. One may have run just before this wait
                    // began (while the database still answered): ask again when the next is due.
                    () = &mut probe_after, if probing => {
                        match self.probe_reachability() {
                            Some(due) => probe_after.as_mut().reset(tokio::time::Instant::now() + due),
                            None => probing = false,
                        }
                    }
                }
            }
        };
        // Failed waits are recorded too: a saturated pool shows in the latency, not as a gap.
        self.inner.metrics.acquired(started.elapsed());
        match result {
            Ok(c) => Ok(c),
            Err(sqlx::Error::PoolTimedOut) if !self.pool_busy() => {
                // The pool had room but could not open a connection in time (sqlx retries a
                // refused connection until the deadline): the database is unreachable, not busy.
                self.inner.metrics.error("connection_lost");
                self.inner.available.lose();
                let t = humantime::format_duration(self.inner.config.pool.acquire_timeout);
                Err(DataError::Unavailable { reason: format!("no connection could be opened within {t}") })
            }
            Err(e) => {
                if matches!(e, sqlx::Error::PoolTimedOut) {
                    self.inner.metrics.timeout();
                }
                Err(self.observe(e))
            }
        }
    }

    /// The writer's connection, waiting up to the pool's `acquire_timeout` behind the writing
    /// transactions before it (503 `pool_timeout` past it). The main pool's fail-fast check
    /// applies; a SQLite file has no reachability probe.
    async fn acquire_writer(&self, writer: &AnyPool) -> Result<PoolConnection<Any>, DataError> {
        if !self.is_available() {
            self.inner.metrics.error("unavailable");
            return Err(self.unavailable());
        }
        let started = Instant::now();
        let result = writer.acquire().await;
        self.inner.metrics.acquired(started.elapsed());
        result.map_err(|e| {
            if matches!(e, sqlx::Error::PoolTimedOut) {
                self.inner.metrics.timeout();
            }
            self.observe(e)
        })
    }

    /// Whether every connection the pool may open is open and in use.
    fn pool_busy(&self) -> bool {
        let p = &self.inner.pool;
        p.size() >= self.inner.config.pool.max_connections && p.num_idle() == 0
    }

    /// Begins a transaction. Dropping it without [`Transaction::commit`] rolls it back.
    pub async fn begin(&self) -> Result<Transaction<'static, Any>, DataError> {
        self.start(None, false).await
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), waiting up to the busy timeout for another writer: a deferred
    /// transaction that reads and then writes fails at once (`SQLITE_BUSY_SNAPSHOT`, which no
    /// busy timeout retries) when another connection wrote in between. Elsewhere it is
    /// [`Db::begin`]; row locks (`FOR UPDATE`) do the rest there.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, DataError> {
        match self.inner.backend {
            Backend::Sqlite => self.start(Some(SQLITE_WRITE.into_sql_str()), true).await,
            Backend::Postgres | Backend::MySql => self.begin().await,
        }
    }

    /// Begins a transaction with `statement` instead of the backend's plain `BEGIN`, such as
    /// MySQL's `SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION`. Both go in
    /// one round trip: a `SET TRANSACTION` sent on its own would stay pending on the pooled
    /// connection, for whatever transaction comes next, if the start failed or the task were
    /// cancelled in between.
    pub async fn begin_with(&self, statement: &'static str) -> Result<Transaction<'static, Any>, DataError> {
        self.start(Some(statement.into_sql_str()), false).await
    }

    /// Begins a transaction at `READ COMMITTED`: each statement sees what was committed before
    /// it, and InnoDB locks only the rows a statement takes, not the gaps between them. MySQL/
    /// MariaDB's default (`REPEATABLE READ`) reads a transaction's first snapshot, so a plain
    /// `SELECT` after a locking write can miss a row a concurrent transaction just committed,
    /// and its gap locks make concurrent inserts deadlock. PostgreSQL's default is already
    /// `READ COMMITTED`; SQLite has one writer, so it begins as [`Db::begin_write`] there.
    pub async fn begin_read_committed(&self) -> Result<Transaction<'static, Any>, DataError> {
        match self.inner.backend {
            Backend::MySql => self.begin_with(MYSQL_READ_COMMITTED).await,
            Backend::Postgres | Backend::Sqlite => self.begin_write().await,
        }
    }

    /// A transaction on a pooled connection (the writer's when `write` and there is one), begun
    /// with `statement` or the plain `BEGIN` (a traced statement, as those run through
    /// [`Db::on`]).
    async fn start(
        &self,
        statement: Option<sqlx::SqlStr>,
        write: bool,
    ) -> Result<Transaction<'static, Any>, DataError> {
        let conn = match &self.inner.writer {
            Some(writer) if write => self.acquire_writer(writer).await?,
            _ => self.acquire().await?,
        };
        let Some(span) = self.span_if_traced(statement.as_ref().map_or("BEGIN", sqlx::SqlStr::as_str)) else {
            return Transaction::begin(conn, statement).await.map_err(|e| self.observe(e));
        };
        let begun = Transaction::begin(conn, statement).instrument(span.clone()).await;
        begun.map_err(|e| {
            trace::record_error(&span, &e);
            self.observe(e)
        })
    }

    /// Commits `tx` (from [`Db::begin`] or [`Db::begin_write`]) as a traced `COMMIT`, counted
    /// on the database's metrics and availability when it fails, as a statement through
    /// [`Db::on`] is: call it rather than `tx.commit()`.
    pub async fn commit(&self, tx: Transaction<'static, Any>) -> Result<(), DataError> {
        let Some(span) = self.span_if_traced("COMMIT") else {
            return tx.commit().await.map_err(|e| self.observe(e));
        };
        tx.commit().instrument(span.clone()).await.map_err(|e| {
            trace::record_error(&span, &e);
            self.observe(e)
        })
    }

    /// Runs `f` in a writing transaction ([`Db::begin_write`]): commits when it returns `Ok`,
    /// rolls back when it returns `Err` (and when the future is dropped part-way).
    ///
    /// ```ignore
    /// db.transaction(|tx| Box::pin(async move {
    ///     sqlx::query("INSERT INTO items (name) VALUES ($1)").bind("a").execute(&mut **tx).await?;
    ///     Ok::<_, keel_data::DataError>(())
    /// })).await?;
    /// ```
    pub async fn transaction<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: for<'c> FnOnce(&'c mut Transaction<'static, Any>) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>,
        E: From<DataError>,
    {
        let mut tx = self.begin_write().await?;
        let result = f(&mut tx).await;
        self.finish(tx, result).await
    }

    /// Ends `tx` as `result` says: commits it (a traced `COMMIT`) on `Ok`, which then answers
    /// the commit's failure if it fails, and rolls it back on `Err`. For a transaction begun by
    /// hand; [`Db::transaction`] and [`transaction!`](crate::transaction) call it.
    pub async fn finish<T, E: From<DataError>>(
        &self,
        tx: Transaction<'static, Any>,
        result: Result<T, E>,
    ) -> Result<T, E> {
        match result {
            Ok(v) => {
                self.commit(tx).await?;
                Ok(v)
            }
            Err(e) => {
                if let Err(rb) = tx.rollback().await {
                    tracing::warn!(error = %rb, "rollback failed; the connection is discarded");
                }
                Err(e)
            }
        }
    }

    /// The rows of `sql` (statement text made by the program, with `$n` placeholders whose
    /// values `bind` binds in order), the statement cut off after `limit`:
    /// [`DataError::StatementTimeout`] then, a 503. Meant for reads whose cost depends on the
    /// input, such as a full-text search, so that one expensive request cannot hold a
    /// connection, and the database's CPU, for long.
    ///
    /// How each backend cuts it off:
    /// - PostgreSQL: `SET LOCAL statement_timeout` in a transaction of its own (cancelled
    ///   server-side, SQLSTATE `57014`);
    /// - MariaDB: `SET STATEMENT max_statement_time = … FOR …` (error 1969); MySQL: the
    ///   `MAX_EXECUTION_TIME` optimizer hint after the leading `SELECT` (error 3024);
    /// - SQLite: through `Any` no interrupt reaches the connection, so the call stops waiting
    ///   after `limit` and the statement finishes on its connection before that one serves
    ///   again. Bound the statement's cost in its SQL as well (a `LIMIT` on what it ranks).
    ///
    /// ```ignore
    /// let rows = db
    ///     .fetch_all_within("SELECT id FROM events WHERE title LIKE $1", Duration::from_secs(2), |q| q.bind(pattern))
    ///     .await?;
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future rolls back PostgreSQL's transaction and returns the
    /// connection; no setting outlives the statement.
    pub async fn fetch_all_within<F>(&self, sql: &str, limit: Duration, bind: F) -> Result<Vec<AnyRow>, DataError>
    where
        F: FnOnce(BoundQuery) -> BoundQuery,
    {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
        match self.inner.backend {
            Backend::Postgres => {
                let mut tx = self.begin().await?;
                sqlx::query(AssertSqlSafe(format!("SET LOCAL statement_timeout = {ms}")))
                    .execute(self.on(&mut *tx))
                    .await?;
                let rows = bind(self.query_of(sql))
                    .fetch_all(self.on(&mut *tx))
                    .await
                    .map_err(|e| Self::timed_out(e, limit))?;
                self.commit(tx).await?;
                Ok(rows)
            }
            Backend::MySql => {
                let mut conn = self.acquire().await?;
                let text = self.sql(sql);
                let text = if self.is_mariadb(&mut conn).await? {
                    // Seconds, to the millisecond.
                    format!("SET STATEMENT max_statement_time = {}.{:03} FOR {text}", ms / 1000, ms % 1000)
                } else {
                    mysql_execution_hint(&text, ms)
                };
                bind(sqlx::query(AssertSqlSafe(text)))
                    .fetch_all(self.on(&mut *conn))
                    .await
                    .map_err(|e| Self::timed_out(e, limit))
            }
            Backend::Sqlite => {
                let mut conn = self.acquire().await?;
                match tokio::time::timeout(limit, bind(self.query_of(sql)).fetch_all(self.on(&mut *conn))).await {
                    Ok(rows) => rows.map_err(DataError::from),
                    Err(_) => {
                        self.inner.metrics.error("statement_timeout");
                        Err(DataError::StatementTimeout { after: limit })
                    }
                }
            }
        }
    }

    fn query_of(&self, sql: &str) -> BoundQuery {
        sqlx::query(self.statement(sql))
    }

    /// `e` as a [`DataError`] (counted where it failed, as `statement_timeout` when the server
    /// cut the statement off for its time), that case as [`DataError::StatementTimeout`].
    fn timed_out(e: sqlx::Error, after: Duration) -> DataError {
        if error::is_statement_timeout(&e) {
            return DataError::StatementTimeout { after };
        }
        DataError::from(e)
    }

    /// Whether the MySQL-protocol server on `conn` is MariaDB (asked once per pool).
    async fn is_mariadb(&self, conn: &mut PoolConnection<Any>) -> Result<bool, DataError> {
        if let Some(known) = self.inner.mariadb.get() {
            return Ok(*known);
        }
        let version: String =
            sqlx::query_scalar("SELECT VERSION()").fetch_one(&mut **conn).await.map_err(|e| self.observe(e))?;
        let mariadb = version.to_ascii_lowercase().contains("mariadb");
        Ok(*self.inner.mariadb.get_or_init(|| mariadb))
    }

    /// Connects in the background until the first success, with backoff; then, if
    /// `auto_migrate`, applies pending migrations. Stops early when `stop` is cancelled.
    pub async fn connect_in_background(self, stop: CancellationToken) {
        let attempt = || async {
            self.try_connect().await.map_err(|e| (error::sql_kind(&e), keel_health::sanitize(&e.to_string())))
        };
        let Some(attempts) = self.inner.connect.connect(&stop, attempt, |kind| self.inner.metrics.error(kind)).await
        else {
            return;
        };
        tracing::info!(backend = %self.inner.backend, attempts, "database connected");
        if self.inner.config.auto_migrate
            && let Some(m) = self.inner.migrations.clone()
            && !m.is_empty()
        {
            // A failed run (a blip mid-migration) is retried with backoff; readiness says why.
            let mut backoff = Backoff::from_config(&self.inner.config.connect);
            loop {
                let run = m.run(&self.inner.pool, self.inner.backend);
                let result = tokio::select! {
                    () = stop.cancelled() => return,
                    r = run => r,
                };
                match result {
                    Ok(n) => {
                        tracing::info!(applied = n, "migrations applied");
                        self.inner.migrations_checked.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        let e = keel_health::sanitize(&e.to_string());
                        tracing::error!(error = %e, "migrations failed; readiness stays down; retrying");
                        self.inner.connect.set(Phase::Failed(format!("migration failed: {e}")));
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
        self.inner.connect.set(Phase::Connected);
        self.inner.available.set_up();
    }

    async fn try_connect(&self) -> Result<(), sqlx::Error> {
        let mut conn = sqlx::AnyConnection::connect_with(&self.inner.options).await?;
        if self.inner.backend == Backend::MySql && self.inner.mariadb.get().is_none() {
            // Which server it is, for the spans' `db.system.name`: asked once, on the first
            // connection; a failure here leaves it to the first statement that needs it.
            if let Ok(version) = sqlx::query_scalar::<_, String>("SELECT VERSION()").fetch_one(&mut conn).await {
                let _ = self.inner.mariadb.set(version.to_ascii_lowercase().contains("mariadb"));
            }
        }
        conn.close().await
    }

    /// `SELECT 1` within `database.check_timeout`, then (once, unless migrating automatically)
    /// whether migrations are pending. Updates availability.
    async fn check(&self) -> Outcome {
        match self.inner.connect.phase() {
            Phase::Connecting { .. } => return Outcome::Down(self.unavailable().to_string()),
            Phase::Failed(e) => return Outcome::Down(e),
            Phase::Connected => {}
        }
        let ping =
            tokio::time::timeout(self.inner.config.check_timeout, sqlx::query("SELECT 1").execute(&self.inner.pool));
        let busy = || self.pool_busy();
        match ping.await {
            Ok(Ok(_)) => {}
            // Every connection is in use: the database answers, the pool is the bottleneck.
            // Say so without failing readiness or the fail-fast flag.
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) if busy() => {
                return Outcome::degraded(format!(
                    "pool busy: all {} connections in use",
                    self.inner.config.pool.max_connections
                ));
            }
            Ok(Err(e)) => {
                self.inner.available.lose();
                self.inner.metrics.error(error::sql_kind(&e));
                return Outcome::Down(keel_health::sanitize(&e.to_string()));
            }
            Err(_) => {
                self.inner.available.lose();
                self.inner.metrics.error("timeout");
                let t = humantime::format_duration(self.inner.config.check_timeout);
                return Outcome::Down(format!("SELECT 1 did not answer within {t}"));
            }
        }
        if let Some(m) = &self.inner.migrations
            && m.covers(self.inner.backend)
            && !self.inner.migrations_checked.load(Ordering::Relaxed)
        {
            match m.pending(&self.inner.pool, self.inner.backend).await {
                Ok(p) if p.is_empty() => self.inner.migrations_checked.store(true, Ordering::Relaxed),
                Ok(p) if p.iter().any(|s| s.failed) => {
                    self.inner.available.set_down();
                    let v = p.iter().find(|s| s.failed).map(ToString::to_string).unwrap_or_default();
                    return Outcome::Down(format!(
                        "migration {v} failed part-way: repair the database, then run '{} migrate'",
                        self.inner.service
                    ));
                }
                Ok(p) => {
                    self.inner.available.set_down();
                    return Outcome::Down(format!(
                        "migrations pending: run '{} migrate' ({} pending, first {})",
                        self.inner.service,
                        p.len(),
                        p[0]
                    ));
                }
                Err(e) => {
                    return Outcome::Down(format!(
                        "cannot read migration state: {}",
                        keel_health::sanitize(&e.to_string())
                    ));
                }
            }
        }
        self.inner.available.set_up();
        Outcome::Up
    }

    /// The readiness check (`database`): required unless `database.required: false`.
    pub fn readiness_check(&self) -> DbCheck {
        ConnectionCheck::readiness(self.clone())
    }

    /// The startup check (`database_connect`): down once `database.connect.max_elapsed` passed
    /// without a first connection.
    pub fn startup_check(&self) -> DbCheck {
        ConnectionCheck::startup(self.clone())
    }

    /// Closes the pool (waits for connections in use to be returned).
    pub async fn close(&self) {
        if let Some(writer) = &self.inner.writer {
            writer.close().await;
        }
        self.inner.pool.close().await;
    }
}

/// A [`Db`]'s health check; see [`Db::readiness_check`] and [`Db::startup_check`].
pub type DbCheck = ConnectionCheck<Db>;

impl Connects for Db {
    const READINESS: &'static str = "database";
    const STARTUP: &'static str = "database_connect";
    fn connection(&self) -> &ConnectTracker {
        &self.inner.connect
    }
    fn required(&self) -> bool {
        self.inner.config.required
    }
    fn timeout(&self) -> Duration {
        // The check bounds its own query; this only guards against a stuck migration-state read.
        self.inner.config.check_timeout * 3
    }
    fn ready(&self) -> CheckFuture<'_> {
        Box::pin(self.check())
    }
}

#[cfg(test)]
mod tests {
    use super::Backend;

    proptest::proptest! {
        /// PostgreSQL text is never touched; for the others the rewrite only shortens `$n` to
        /// `?` (no quote added or lost) and a second rewrite changes nothing. The fuzz target
        /// `sql_placeholders` checks placeholder by placeholder.
        #[test]
        fn placeholders_are_rewritten_once_and_quotes_kept(sql in "[a-z $0-9'\"`?,()=]{0,60}") {
            proptest::prop_assert_eq!(Backend::Postgres.sql(&sql), sql.as_str());
            let quotes = |s: &str| s.matches(['\'', '"', '`']).count();
            for b in [Backend::MySql, Backend::Sqlite] {
                let once = b.sql(&sql);
                proptest::prop_assert_eq!(b.sql(&once), once.clone());
                proptest::prop_assert_eq!(quotes(&once), quotes(&sql));
                proptest::prop_assert!(once.len() <= sql.len());
                proptest::prop_assert!(once.matches('?').count() >= sql.matches('?').count());
            }
        }
    }
}
