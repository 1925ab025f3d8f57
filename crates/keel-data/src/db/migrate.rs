//! Embedded migrations, per backend, run as a separate step in production.

use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Connection};

use super::{Backend, DataError};

/// A service's migrations: one set per backend it supports (SQL dialects differ).
///
/// ```ignore
/// let migrations = keel_data::Migrations::new()
///     .postgres(sqlx::migrate!("migrations/postgres"))
///     .sqlite(sqlx::migrate!("migrations/sqlite"));
/// ```
#[derive(Debug, Default)]
pub struct Migrations {
    postgres: Option<Migrator>,
    mysql: Option<Migrator>,
    sqlite: Option<Migrator>,
}

/// One migration's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    /// Version (the file's numeric prefix).
    pub version: i64,
    /// Description (the file's name after the version).
    pub description: String,
    /// Whether it has been applied to this database.
    pub applied: bool,
    /// It was started and failed part-way (sqlx marks it `success = false`): the database
    /// needs repair before migrating on.
    pub failed: bool,
}

impl Migrations {
    /// No migrations.
    pub fn new() -> Self {
        Self::default()
    }

    /// Migrations for PostgreSQL.
    pub fn postgres(mut self, m: Migrator) -> Self {
        self.postgres = Some(m);
        self
    }

    /// Migrations for MySQL and MariaDB.
    pub fn mysql(mut self, m: Migrator) -> Self {
        self.mysql = Some(m);
        self
    }

    /// Migrations for SQLite.
    pub fn sqlite(mut self, m: Migrator) -> Self {
        self.sqlite = Some(m);
        self
    }

    /// The set for `backend`.
    pub fn for_backend(&self, backend: Backend) -> Option<&Migrator> {
        match backend {
            Backend::Postgres => self.postgres.as_ref(),
            Backend::MySql => self.mysql.as_ref(),
            Backend::Sqlite => self.sqlite.as_ref(),
        }
    }

    /// Whether any set is declared.
    pub fn is_empty(&self) -> bool {
        self.postgres.is_none() && self.mysql.is_none() && self.sqlite.is_none()
    }

    /// Applies every pending migration; returns how many. A backend the service ships no
    /// migrations for has nothing to apply.
    ///
    /// Safe when several instances run it at once: the run holds a lock for its whole duration —
    /// PostgreSQL's advisory lock (taken by sqlx), a checked `GET_LOCK` on MySQL/MariaDB (sqlx's
    /// ignores a failed or timed-out lock), and an OS file lock beside a SQLite file (sqlx takes
    /// none). A connection whose run failed is closed, not returned to the pool, so no session
    /// lock outlives the run.
    pub fn run<'a>(
        &'a self,
        pool: &'a AnyPool,
        backend: Backend,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, DataError>> + Send + 'a>> {
        // Boxed with an explicit `Send`: sqlx's generic migration code otherwise trips the
        // compiler's higher-ranked `Send` inference in callers that spawn this future.
        Box::pin(async move {
            let Some(m) = self.for_backend(backend) else { return Ok(0) };
            let mut conn = pool.acquire().await?;
            let _file_lock = match backend {
                Backend::Sqlite => Some(sqlite_lock(pool).await?),
                _ => None,
            };
            if backend == Backend::MySql {
                let got: (i64,) = sqlx::query_as("SELECT GET_LOCK(CONCAT('keel_migrate_', DATABASE()), ?)")
                    .bind(LOCK_WAIT_SECS)
                    .fetch_one(&mut *conn)
                    .await?;
                if got.0 != 1 {
                    return Err(DataError::Config(format!("another migration held the lock for {LOCK_WAIT_SECS} s")));
                }
            }
            // A read only (no DDL), so it cannot race another instance creating the table; on
            // PostgreSQL it precedes sqlx's lock and only affects the count reported.
            let before = applied_rows(&mut conn, backend).await?;
            let result = m.run_direct(None, &mut *conn, false).await;
            if let Err(e) = result {
                // The session may still hold a migration lock: never give it back to the pool.
                let _ = conn.detach().close().await;
                return Err(e.into());
            }
            let after = applied_rows(&mut conn, backend).await?;
            if backend == Backend::MySql {
                let _ =
                    sqlx::query("SELECT RELEASE_LOCK(CONCAT('keel_migrate_', DATABASE()))").execute(&mut *conn).await;
            }
            let ok = |rows: &[(i64, bool)]| rows.iter().filter(|r| r.1).count();
            Ok(ok(&after).saturating_sub(ok(&before)))
        })
    }

    /// Every known migration, applied, failed or pending, in version order. Reads only (no
    /// DDL): before the first `migrate` every migration is pending.
    ///
    /// # Errors
    ///
    /// SQL errors other than "the migrations table does not exist yet".
    pub async fn status(&self, pool: &AnyPool, backend: Backend) -> Result<Vec<MigrationState>, DataError> {
        let Some(m) = self.for_backend(backend) else { return Ok(Vec::new()) };
        let mut conn = pool.acquire().await?;
        let rows = applied_rows(&mut conn, backend).await?;
        Ok(m.iter()
            .filter(|x| x.migration_type.is_up_migration())
            .map(|x| {
                let row = rows.iter().find(|r| r.0 == x.version);
                MigrationState {
                    version: x.version,
                    description: x.description.to_string(),
                    applied: row.is_some_and(|r| r.1),
                    failed: row.is_some_and(|r| !r.1),
                }
            })
            .collect())
    }

    /// The ones not (successfully) applied.
    pub async fn pending(&self, pool: &AnyPool, backend: Backend) -> Result<Vec<MigrationState>, DataError> {
        Ok(self.status(pool, backend).await?.into_iter().filter(|s| !s.applied).collect())
    }
}

/// `(version, success)` of every row of sqlx's migrations table; none if it does not exist.
async fn applied_rows(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
    backend: Backend,
) -> Result<Vec<(i64, bool)>, DataError> {
    let sql = match backend {
        Backend::Postgres => {
            "SELECT version, CASE WHEN success THEN 1::BIGINT ELSE 0::BIGINT END FROM _sqlx_migrations"
        }
        Backend::MySql => "SELECT version, CAST(success AS SIGNED) FROM _sqlx_migrations",
        Backend::Sqlite => "SELECT version, CAST(success AS INTEGER) FROM _sqlx_migrations",
    };
    match sqlx::query_as::<_, (i64, i64)>(sql).fetch_all(&mut **conn).await {
        Ok(rows) => Ok(rows.into_iter().map(|(v, ok)| (v, ok != 0)).collect()),
        // No table yet: nothing applied.
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
