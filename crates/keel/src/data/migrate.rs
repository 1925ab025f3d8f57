//! Embedded migrations, per backend, run as a separate step in production.

use sqlx::migrate::{Migrate, Migrator};
use sqlx::{Acquire, AnyPool};

use super::{Backend, DataError};

/// A service's migrations: one set per backend it supports (SQL dialects differ).
///
/// ```ignore
/// let migrations = keel::data::Migrations::new()
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

    /// Applies every pending migration. Safe when several instances run it at once: the run
    /// holds a lock for its whole duration — PostgreSQL's advisory lock (taken by sqlx), a
    /// checked `GET_LOCK` on MySQL/MariaDB (sqlx's ignores a failed or timed-out lock), and an OS
    /// file lock beside a SQLite file (sqlx takes none).
    pub fn run<'a>(
        &'a self,
        pool: &'a AnyPool,
        backend: Backend,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, DataError>> + Send + 'a>> {
        // Boxed with an explicit `Send`: sqlx's generic `Migrator::run` otherwise trips the
        // compiler's higher-ranked `Send` inference in callers that spawn this future.
        Box::pin(async move {
            let m = self.for_backend(backend).ok_or(DataError::NoMigrations(backend))?;
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
            let result = match pending_on(&mut conn, m).await {
                Ok(before) => match m.run_direct(None, &mut *conn, false).await {
                    Ok(()) => Ok(before),
                    Err(e) => Err(DataError::from(e)),
                },
                Err(e) => Err(e),
            };
            if backend == Backend::MySql {
                let _ =
                    sqlx::query("SELECT RELEASE_LOCK(CONCAT('keel_migrate_', DATABASE()))").execute(&mut *conn).await;
            }
            result
        })
    }

    /// Every known migration, applied or pending, in version order.
    ///
    /// # Errors
    ///
    /// [`DataError::NoMigrations`] when none are declared for `backend`; SQL errors otherwise.
    pub async fn status(&self, pool: &AnyPool, backend: Backend) -> Result<Vec<MigrationState>, DataError> {
        let m = self.for_backend(backend).ok_or(DataError::NoMigrations(backend))?;
        let mut conn = pool.acquire().await?;
        let conn = conn.acquire().await?;
        conn.ensure_migrations_table("_sqlx_migrations").await?;
        let applied = conn.list_applied_migrations("_sqlx_migrations").await?;
        Ok(m.iter()
            .filter(|x| x.migration_type.is_up_migration())
            .map(|x| MigrationState {
                version: x.version,
                description: x.description.to_string(),
                applied: applied.iter().any(|a| a.version == x.version),
            })
            .collect())
    }

    /// The pending ones.
    pub async fn pending(&self, pool: &AnyPool, backend: Backend) -> Result<Vec<MigrationState>, DataError> {
        Ok(self.status(pool, backend).await?.into_iter().filter(|s| !s.applied).collect())
    }
}

/// How long a `migrate` waits for another instance's migration to finish.
const LOCK_WAIT_SECS: i64 = 300;

async fn pending_on(conn: &mut sqlx::pool::PoolConnection<sqlx::Any>, m: &Migrator) -> Result<usize, DataError> {
    let c = conn.acquire().await?;
    c.ensure_migrations_table("_sqlx_migrations").await?;
    let applied = c.list_applied_migrations("_sqlx_migrations").await?;
    Ok(m.iter()
        .filter(|x| x.migration_type.is_up_migration() && !applied.iter().any(|a| a.version == x.version))
        .count())
}

/// An exclusive OS lock on `<database file>.migrate-lock`, held until dropped.
async fn sqlite_lock(pool: &AnyPool) -> Result<std::fs::File, DataError> {
    let url = pool.connect_options().database_url.clone();
    let path = url.path().to_owned();
    let host = url.host_str().unwrap_or_default().to_owned();
    // `sqlite://data/x.db` parses with `data` as the host; `sqlite:///abs/x.db` has none.
    let file = if host.is_empty() { path } else { format!("{host}{path}") };
    let lock_path = format!("{file}.migrate-lock");
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
        f.lock()?;
        Ok::<_, std::io::Error>(f)
    })
    .await
    .map_err(|e| DataError::Config(format!("migration lock task failed: {e}")))?
    .map_err(|e| DataError::Config(format!("cannot lock the SQLite file for migrating: {e}")))
}
