//! Embedded migrations, per backend, run as a separate step in production.

use std::borrow::Cow;

use sqlx::migrate::{Migrate as _, Migrator};
use sqlx::{AnyPool, Connection};

use super::{Backend, DataError};

/// A [`Migrations`] from the calling crate's `migrations/postgres`, `migrations/mysql` and
/// `migrations/sqlite` folders, embedded at compile time by `sqlx::migrate!` (the crate depends
/// on sqlx with its `migrate` feature). This is Keel's layout for a service's SQL and for a
/// library's own set:
///
/// ```ignore
/// let service = keel::data::migrations!();
/// let library = keel::data::migrations!(library "keel_events");
/// ```
#[macro_export]
macro_rules! migrations {
    () => {
        $crate::migrations!(in $crate::Migrations::new())
    };
    (library $name:literal) => {
        $crate::migrations!(in $crate::Migrations::library($name))
    };
    (in $set:expr) => {
        $set.postgres(::sqlx::migrate!("migrations/postgres"))
            .mysql(::sqlx::migrate!("migrations/mysql"))
            .sqlite(::sqlx::migrate!("migrations/sqlite"))
    };
}

/// The table sqlx records a service's own migrations in.
const SERVICE_TABLE: &str = "_sqlx_migrations";

/// A service's migrations: one set per backend it supports (SQL dialects differ), and the
/// libraries' sets applied before them.
///
/// ```ignore
/// let migrations = keel_data::Migrations::new()
///     .postgres(sqlx::migrate!("migrations/postgres"))
///     .sqlite(sqlx::migrate!("migrations/sqlite"));
/// ```
///
/// A library that keeps tables in the service's database (Keel's outbox and inbox) ships its
/// own set, made with [`Migrations::library`] and added with [`Migrations::with`]: its versions
/// are its own and are recorded in a table of its own, so a service never copies a library's SQL
/// and a library upgrade never renumbers the service's files.
#[derive(Debug)]
pub struct Migrations {
    library: Option<&'static str>,
    table: Cow<'static, str>,
    postgres: Option<Migrator>,
    mysql: Option<Migrator>,
    sqlite: Option<Migrator>,
    adopts: Vec<(&'static str, i64)>,
    libraries: Vec<Migrations>,
}

impl Default for Migrations {
    fn default() -> Self {
        Self {
            library: None,
            table: Cow::Borrowed(SERVICE_TABLE),
            postgres: None,
            mysql: None,
            sqlite: None,
            adopts: Vec::new(),
            libraries: Vec::new(),
        }
    }
}

/// One migration's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    /// The library whose set it belongs to; `None` for the service's own.
    pub library: Option<&'static str>,
    /// Version (the file's numeric prefix), within its set.
    pub version: i64,
    /// Description (the file's name after the version).
    pub description: String,
    /// Whether it has been applied to this database.
    pub applied: bool,
    /// It was started and failed part-way (sqlx marks it `success = false`): the database
    /// needs repair before migrating on.
    pub failed: bool,
}

impl std::fmt::Display for MigrationState {
    /// `version description`, with the library's name before a library's.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.library {
            Some(l) => write!(f, "{l} {} ({})", self.version, self.description),
            None => write!(f, "{} ({})", self.version, self.description),
        }
    }
}

impl Migrations {
    /// No migrations.
    pub fn new() -> Self {
        Self::default()
    }

    /// A library's set, recorded in `_<name>_migrations` (`name`: lowercase letters, digits and
    /// `_`, e.g. `keel_events`).
    pub fn library(name: &'static str) -> Self {
        Self { library: Some(name), table: Cow::Owned(format!("_{name}_migrations")), ..Self::default() }
    }

    /// Migrations for PostgreSQL.
    pub fn postgres(mut self, m: Migrator) -> Self {
        self.postgres = Some(self.owned(m));
        self
    }

    /// Migrations for MySQL and MariaDB.
    pub fn mysql(mut self, m: Migrator) -> Self {
        self.mysql = Some(self.owned(m));
        self
    }

    /// Migrations for SQLite.
    pub fn sqlite(mut self, m: Migrator) -> Self {
        self.sqlite = Some(self.owned(m));
        self
    }

    /// `m`, recording in this set's table.
    fn owned(&self, mut m: Migrator) -> Migrator {
        if self.library.is_some() {
            m.dangerous_set_table_name(self.table.clone());
        }
        m
    }

    /// For a library's set: a database where the service's own migrations applied a copy of
    /// this set's `version` (a file whose name gave sqlx `description`, e.g. `keel events 2`
    /// from `0006_keel_events_2.sql`) takes that version as applied. The first `migrate` moves
    /// the service's record of it to this set's table, in one transaction, so the copy can be
    /// deleted from the service and nothing runs twice.
    pub fn adopt(mut self, description: &'static str, version: i64) -> Self {
        self.adopts.push((description, version));
        self
    }

    /// Adds a library's set, applied before the service's own (sets in the order added). A set
    /// of a library already added is ignored.
    pub fn with(mut self, library: Migrations) -> Self {
        if !self.libraries.iter().any(|l| l.library == library.library) {
            self.libraries.push(library);
        }
        self
    }

    /// The service's own set for `backend`.
    pub fn for_backend(&self, backend: Backend) -> Option<&Migrator> {
        match backend {
            Backend::Postgres => self.postgres.as_ref(),
            Backend::MySql => self.mysql.as_ref(),
            Backend::Sqlite => self.sqlite.as_ref(),
        }
    }

    /// Whether any set, the service's or a library's, has migrations for `backend`.
    pub fn covers(&self, backend: Backend) -> bool {
        self.for_backend(backend).is_some() || self.libraries.iter().any(|l| l.covers(backend))
    }

    /// Whether no set is declared.
    pub fn is_empty(&self) -> bool {
        self.postgres.is_none() && self.mysql.is_none() && self.sqlite.is_none() && self.libraries.is_empty()
    }

    /// Applies every pending migration, the libraries' sets first; returns how many. A backend
    /// a set ships no migrations for has nothing to apply.
    ///
    /// Safe when several instances run it at once: the run holds a lock for its whole duration —
    /// an advisory lock on PostgreSQL, a checked `GET_LOCK` on MySQL/MariaDB (sqlx's own ignores
    /// a failed or timed-out lock), and an OS file lock beside a SQLite file (sqlx takes none). A
    /// connection whose run failed is closed, not returned to the pool, so no session lock
    /// outlives the run.
    pub fn run<'a>(
        &'a self,
        pool: &'a AnyPool,
        backend: Backend,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, DataError>> + Send + 'a>> {
        // Boxed with an explicit `Send`: sqlx's generic migration code otherwise trips the
        // compiler's higher-ranked `Send` inference in callers that spawn this future.
        Box::pin(async move {
            if !self.covers(backend) {
                return Ok(0);
            }
            let mut conn = pool.acquire().await?;
            let _file_lock = match backend {
                Backend::Sqlite => Some(sqlite_lock(pool).await?),
                _ => None,
            };
            let result = async {
                lock(&mut conn, backend).await?;
                let mut applied = 0;
                for set in self.libraries.iter().chain(std::iter::once(self)) {
                    applied += set.run_set(&mut conn, backend).await?;
                }
                unlock(&mut conn, backend).await?;
                Ok::<_, DataError>(applied)
            }
            .await;
            if result.is_err() {
                // The session may still hold a migration lock: never give it back to the pool.
                let _ = conn.detach().close().await;
            }
            result
        })
    }

    /// Applies this set's pending migrations (after adopting what the service's copies applied).
    async fn run_set(
        &self,
        conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
        backend: Backend,
    ) -> Result<usize, DataError> {
        let Some(m) = self.for_backend(backend) else { return Ok(0) };
        self.adopt_copies(conn, backend, m).await?;
        // A read only (no DDL), so it cannot race another instance creating the table.
        let before = applied_rows(conn, backend, &self.table).await?;
        m.run_direct(None, &mut **conn, false).await?;
        let after = applied_rows(conn, backend, &self.table).await?;
        let ok = |rows: &[(i64, bool)]| rows.iter().filter(|r| r.1).count();
        Ok(ok(&after).saturating_sub(ok(&before)))
    }

    /// Moves the service's records of this library's versions (see [`Migrations::adopt`]) to
    /// this set's table, in one transaction.
    async fn adopt_copies(
        &self,
        conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
        backend: Backend,
        m: &Migrator,
    ) -> Result<(), DataError> {
        if self.adopts.is_empty() {
            return Ok(());
        }
        let service = described_rows(conn, SERVICE_TABLE).await?;
        let copies: Vec<(i64, &sqlx::migrate::Migration)> = service
            .iter()
            .filter_map(|(old, description)| {
                let (_, version) = self.adopts.iter().find(|(d, _)| d == description)?;
                let mig = m.iter().find(|x| x.version == *version && x.migration_type.is_up_migration())?;
                Some((*old, mig))
            })
            .collect();
        if copies.is_empty() {
            return Ok(());
        }
        // DDL (an implicit commit on MySQL), so before the transaction.
        conn.ensure_migrations_table(&self.table).await?;
        let mine = applied_rows(conn, backend, &self.table).await?;
        let (insert, delete) = match backend {
            Backend::Postgres => (
                format!(
                    "INSERT INTO {} (version, description, success, checksum, execution_time) \
                     VALUES ($1, $2, TRUE, $3, 0)",
                    self.table
                ),
                format!("DELETE FROM {SERVICE_TABLE} WHERE version = $1"),
            ),
            Backend::MySql | Backend::Sqlite => (
                format!(
                    "INSERT INTO {} (version, description, success, checksum, execution_time) \
                     VALUES (?, ?, TRUE, ?, 0)",
                    self.table
                ),
                format!("DELETE FROM {SERVICE_TABLE} WHERE version = ?"),
            ),
        };
        let mut tx = Connection::begin(&mut **conn).await?;
        for (old, mig) in &copies {
            if !mine.iter().any(|(v, _)| *v == mig.version) {
                // The table name is this set's own (a library name from code), never input.
                sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                    .bind(mig.version)
                    .bind(mig.description.to_string())
                    .bind(mig.checksum.to_vec())
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(sqlx::AssertSqlSafe(delete.as_str())).bind(*old).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        tracing::info!(
            library = self.library.unwrap_or_default(),
            versions = copies.len(),
            "took over the migrations the service's copies had applied"
        );
        Ok(())
    }

    /// Every known migration, applied, failed or pending: the libraries' sets first, each in
    /// version order. Reads only (no DDL): before the first `migrate` every migration is
    /// pending.
    ///
    /// # Errors
    ///
    /// SQL errors other than "the migrations table does not exist yet".
    pub async fn status(&self, pool: &AnyPool, backend: Backend) -> Result<Vec<MigrationState>, DataError> {
        let mut conn = pool.acquire().await?;
        // A version the service's copy applied counts as applied: `migrate` only moves its record.
        let copies = if self.libraries.iter().any(|l| !l.adopts.is_empty()) {
            described_rows(&mut conn, SERVICE_TABLE).await?
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        for set in self.libraries.iter().chain(std::iter::once(self)) {
            let Some(m) = set.for_backend(backend) else { continue };
            let rows = applied_rows(&mut conn, backend, &set.table).await?;
            out.extend(m.iter().filter(|x| x.migration_type.is_up_migration()).map(|x| {
                let row = rows.iter().find(|r| r.0 == x.version);
                let copied = set
                    .adopts
                    .iter()
                    .any(|(d, v)| *v == x.version && copies.iter().any(|(_, description)| description == d));
                MigrationState {
                    library: set.library,
                    version: x.version,
                    description: x.description.to_string(),
                    applied: row.is_some_and(|r| r.1) || (row.is_none() && copied),
                    failed: row.is_some_and(|r| !r.1),
                }
            }));
        }
        Ok(out)
    }

    /// The ones not (successfully) applied.
    pub async fn pending(&self, pool: &AnyPool, backend: Backend) -> Result<Vec<MigrationState>, DataError> {
        Ok(self.status(pool, backend).await?.into_iter().filter(|s| !s.applied).collect())
    }
}

/// Takes the lock a whole run holds (see [`Migrations::run`]); SQLite's is a file lock.
async fn lock(conn: &mut sqlx::pool::PoolConnection<sqlx::Any>, backend: Backend) -> Result<(), DataError> {
    match backend {
        Backend::Postgres => {
            // Distinct from sqlx's own per-set lock, which is taken inside it.
            // `IS NULL`: the Any driver cannot decode the function's `void`.
            sqlx::query("SELECT (pg_advisory_lock(hashtext('keel_migrate_' || current_database())) IS NULL)")
                .execute(&mut **conn)
                .await?;
        }
        Backend::MySql => {
            let got: (i64,) = sqlx::query_as("SELECT GET_LOCK(CONCAT('keel_migrate_', DATABASE()), ?)")
                .bind(LOCK_WAIT_SECS)
                .fetch_one(&mut **conn)
                .await?;
            if got.0 != 1 {
                return Err(DataError::Config(format!("another migration held the lock for {LOCK_WAIT_SECS} s")));
            }
        }
        Backend::Sqlite => {}
    }
    Ok(())
}

async fn unlock(conn: &mut sqlx::pool::PoolConnection<sqlx::Any>, backend: Backend) -> Result<(), DataError> {
    let sql = match backend {
        Backend::Postgres => "SELECT pg_advisory_unlock(hashtext('keel_migrate_' || current_database()))",
        Backend::MySql => "SELECT RELEASE_LOCK(CONCAT('keel_migrate_', DATABASE()))",
        Backend::Sqlite => return Ok(()),
    };
    sqlx::query(sql).execute(&mut **conn).await?;
    Ok(())
}

/// `(version, success)` of every row of the migrations table `table`; none if it does not exist.
async fn applied_rows(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
    backend: Backend,
    table: &str,
) -> Result<Vec<(i64, bool)>, DataError> {
    let sql = match backend {
        Backend::Postgres => {
            format!("SELECT version, CASE WHEN success THEN 1::BIGINT ELSE 0::BIGINT END FROM {table}")
        }
        Backend::MySql => format!("SELECT version, CAST(success AS SIGNED) FROM {table}"),
        Backend::Sqlite => format!("SELECT version, CAST(success AS INTEGER) FROM {table}"),
    };
    // `table` is `_sqlx_migrations` or a library's, named in code, never input.
    match sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(sql)).fetch_all(&mut **conn).await {
        Ok(rows) => Ok(rows.into_iter().map(|(v, ok)| (v, ok != 0)).collect()),
        // No table yet: nothing applied.
        Err(sqlx::Error::Database(_)) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// `(version, description)` of the rows of `table` that succeeded; none if it does not exist.
async fn described_rows(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
    table: &str,
) -> Result<Vec<(i64, String)>, DataError> {
    let sql = format!("SELECT version, description FROM {table} WHERE success");
    match sqlx::query_as::<_, (i64, String)>(sqlx::AssertSqlSafe(sql)).fetch_all(&mut **conn).await {
        Ok(rows) => Ok(rows),
        Err(sqlx::Error::Database(_)) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// How long a `migrate` waits for another instance's migration to finish.
const LOCK_WAIT_SECS: i64 = 300;

/// An exclusive OS lock on `<database file>.migrate-lock`, held until dropped.
async fn sqlite_lock(pool: &AnyPool) -> Result<std::fs::File, DataError> {
    let url = pool.connect_options().database_url.clone();
    let path = url.path().to_owned();
    let host = url.host_str().unwrap_or_default().to_owned();
    // `sqlite://data/x.db` parses with `data` as the host; `sqlite:///abs/x.db` has none.
    let file = if host.is_empty() { path } else { format!("{host}{path}") };
    let lock_path = format!("{file}.migrate-lock");
    tokio::task::spawn_blocking(move || {
        let mut o = std::fs::OpenOptions::new();
        o.create(true).truncate(false).write(true);
        // Owner only, like the database file beside it.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let f = o.open(&lock_path)?;
        f.lock()?;
        Ok::<_, std::io::Error>(f)
    })
    .await
    .map_err(|e| DataError::Config(format!("migration lock task failed: {e}")))?
    .map_err(|e| DataError::Config(format!("cannot lock the SQLite file for migrating: {e}")))
}
