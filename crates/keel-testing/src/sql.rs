//! Per-test SQL databases.

use sqlx::{AnyConnection, Connection, Executor};

/// A database that exists for one test: a fresh PostgreSQL or MariaDB database, or a SQLite file
/// in a temporary directory. Dropped (with its connections) when this value is dropped.
pub struct TestDatabase {
    url: String,
    cleanup: Option<(String, String)>,
    _dir: Option<TempDir>,
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase").field("url", &self.url).finish_non_exhaustive()
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

impl TestDatabase {
    /// A new PostgreSQL database on the server of `admin_url` (see `testing::postgres_url`).
    pub async fn postgres(admin_url: &str) -> Result<Self, sqlx::Error> {
        Self::create(admin_url, "WITH (FORCE)").await
    }

    /// A new MariaDB/MySQL database on the server of `admin_url` (see `testing::mysql_url`).
    pub async fn mysql(admin_url: &str) -> Result<Self, sqlx::Error> {
        Self::create(admin_url, "").await
    }

    async fn create(admin_url: &str, drop_options: &str) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let name = unique("keel_test");
        let mut admin = AnyConnection::connect(admin_url).await?;
        // The name is generated here (letters, digits, _), never input.
        admin.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))).await?;
        let _ = admin.close().await;
        let drop_sql = format!("DROP DATABASE IF EXISTS {name} {drop_options}");
        Ok(Self { url: replace_db(admin_url, &name), cleanup: Some((admin_url.to_owned(), drop_sql)), _dir: None })
    }

    /// A SQLite file in a new temporary directory.
    pub fn sqlite() -> Result<Self, std::io::Error> {
        let dir = std::env::temp_dir().join(unique("keel-test"));
        std::fs::create_dir_all(&dir)?;
        let url = format!("sqlite://{}?mode=rwc", dir.join("test.db").display());
        Ok(Self { url, cleanup: None, _dir: Some(TempDir(dir)) })
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, drop_sql)) = self.cleanup.take() else { return };
        // MySQL has no `DROP DATABASE … WITH (FORCE)`: its sessions are ended first, so a
        // connection a test left inside a transaction cannot hold the drop on a metadata lock.
        let mysql = admin_url.starts_with("mysql:").then(|| db_name(&self.url));
        // Drop runs outside any runtime guarantee: do the cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok(mut admin) = AnyConnection::connect(&admin_url).await {
                    if let Some(name) = mysql.as_deref() {
                        force_mysql(&mut admin, name).await;
                    }
                    let _ = admin.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(drop_sql))).await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// The database part of `scheme://user@host:port/<db>?query`.
fn db_name(url: &str) -> String {
    let base = url.split_once('?').map_or(url, |(b, _)| b);
    base.rsplit_once('/').map_or("", |(_, d)| d).to_owned()
}

/// Ends every other session on database `name` and bounds how long the drop may wait for a
/// lock, so cleanup never hangs a test run.
async fn force_mysql(admin: &mut AnyConnection, name: &str) {
    let _ = admin.execute(sqlx::raw_sql("SET SESSION lock_wait_timeout = 20")).await;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(id AS SIGNED) FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
    )
    .bind(name)
    .fetch_all(&mut *admin)
    .await
    .unwrap_or_default();
    for id in ids {
        // Ids come from the server, never input.
        let _ = admin.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}")))).await;
    }
}

/// `scheme://user@host:port/<db>?query` with the database replaced.
fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database() {
        assert_eq!(super::replace_db("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(super::replace_db("mysql://root@h:3306", "x"), "mysql://root@h:3306/x");
        assert_eq!(super::replace_db("postgres://u@h/p?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
        assert_eq!(super::db_name("mysql://root@h:3306/keel_test_1?ssl-mode=disabled"), "keel_test_1");
    }
}
