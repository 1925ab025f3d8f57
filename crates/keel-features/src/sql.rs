//! [`SqlStore`]: flag overrides in the service's own database (feature `sql`).

use std::collections::BTreeMap;

use keel_data::{Backend, Db};
use sqlx::Row;

use super::FlagDef;
use super::store::{FlagChange, FlagStore, Override, Overrides, StoreError, StoreFuture, bounded, now_ms, readable};

/// Tries of [`FlagStore::set`] when two writers race on one flag (a duplicate key, a deadlock).
const ATTEMPTS: u32 = 3;

/// The overrides' tables, `keel_flag_overrides` and `keel_flag_changes`, as a migration set of
/// Keel's own (recorded in `_keel_flags_migrations`) for every backend; keel-app applies it with
/// the migrations of every service that has a database.
///
/// ```
/// let m = keel_features::migrations();
/// assert_eq!(m.for_backend(keel_data::Backend::Sqlite).unwrap().iter().count(), 1);
/// ```
pub fn migrations() -> keel_data::Migrations {
    keel_data::migrations!(library "keel_flags")
}

/// Overrides in the service's database, seen by every replica that shares it. Its tables come
/// from [`migrations`].
#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Db,
}

impl SqlStore {
    /// The store in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    async fn set_once(
        &self,
        key: &str,
        def: Option<&FlagDef>,
        actor: &str,
        reason: &str,
    ) -> Result<Option<FlagChange>, Failure> {
        let db = &self.db;
        let mut tx = db.begin_write().await.map_err(|e| Failure::Fatal(unavailable(e)))?;
        // First, so writers queue here: versions follow commit order, and the override read
        // below is the one the previous writer committed.
        sqlx::query(db.statement("UPDATE keel_flag_version SET version = version + 1 WHERE id = 1"))
            .execute(db.on(&mut *tx))
            .await?;
        let id: i64 = sqlx::query_scalar(db.statement("SELECT version FROM keel_flag_version WHERE id = 1"))
            .fetch_one(db.on(&mut *tx))
            .await?;
        let lock = match db.backend() {
            Backend::Sqlite => "",
            Backend::Postgres | Backend::MySql => " FOR UPDATE",
        };
        let before: Option<String> = sqlx::query_scalar(
            db.statement(&format!("SELECT definition FROM keel_flag_overrides WHERE flag_key = $1{lock}")),
        )
        .bind(key)
        .fetch_optional(db.on(&mut *tx))
        .await?;
        if before.is_none() && def.is_none() {
            // Nothing to record: the rollback returns the version.
            return Ok(None);
        }
        let before = before.map(|text| decode(key, &text)).transpose().map_err(Failure::Fatal)?;
        let encode = |d: &FlagDef| serde_json::to_string(d).map_err(|e| Failure::Fatal(unavailable(e)));
        let after_text = def.map(encode).transpose()?;
        let before_text = before.as_ref().map(encode).transpose()?;
        let (actor, reason, at_ms) = (bounded(actor), bounded(reason), now_ms());
        sqlx::query(db.statement(
            "INSERT INTO keel_flag_changes (id, flag_key, before_definition, after_definition, actor, reason, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        ))
        .bind(id)
        .bind(key)
        .bind(before_text)
        .bind(after_text.clone())
        .bind(actor)
        .bind(reason)
        .bind(at_ms)
        .execute(db.on(&mut *tx))
        .await?;
        sqlx::query(db.statement("DELETE FROM keel_flag_overrides WHERE flag_key = $1"))
            .bind(key)
            .execute(db.on(&mut *tx))
            .await?;
        if let Some(text) = &after_text {
            sqlx::query(db.statement(
                "INSERT INTO keel_flag_overrides (flag_key, definition, change_id, updated_by, updated_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            ))
            .bind(key)
            .bind(text)
            .bind(id)
            .bind(actor)
            .bind(at_ms)
            .execute(db.on(&mut *tx))
            .await?;
        }
        tx.commit().await?;
        Ok(Some(FlagChange {
            id,
            key: key.to_owned(),
            before,
            after: def.cloned(),
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            at_ms,
        }))
    }
}

/// Why one try of [`SqlStore::set`] failed.
enum Failure {
    /// A statement failed: perhaps a race with another writer, worth another try.
    Sql(sqlx::Error),
    /// Anything else.
    Fatal(StoreError),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Self::Sql(e)
    }
}

fn decode(key: &str, text: &str) -> Result<FlagDef, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { key: key.to_owned(), why: e.to_string() })
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(keel_health::sanitize(&e.to_string()))
}

impl FlagStore for SqlStore {
    fn kind(&self) -> &'static str {
        "database"
    }

    fn ready(&self) -> bool {
        self.db.is_available() && self.db.migrations_current()
    }

    fn version(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            sqlx::query_scalar(self.db.statement("SELECT version FROM keel_flag_version WHERE id = 1"))
                .fetch_one(self.db.exec())
                .await
                .map_err(unavailable)
        })
    }

    fn load(&self) -> StoreFuture<'_, Overrides> {
        Box::pin(async move {
            // The version first: a change landing in between is then loaded again on the next poll,
            // never missed.
            let version = self.version().await?;
            let rows = sqlx::query(
                self.db.statement("SELECT flag_key, definition, updated_by, updated_at FROM keel_flag_overrides"),
            )
            .fetch_all(self.db.exec())
            .await
            .map_err(unavailable)?;
            let mut flags = BTreeMap::new();
            for row in rows {
                let key: String = row.try_get(0).map_err(unavailable)?;
                let text: String = row.try_get(1).map_err(unavailable)?;
                let Some(def) = readable(decode(&key, &text)) else { continue };
                let updated_by: String = row.try_get(2).map_err(unavailable)?;
                let updated_at_ms: i64 = row.try_get(3).map_err(unavailable)?;
                flags.insert(key, Override { def, updated_by, updated_at_ms });
            }
            Ok(Overrides { version, flags })
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        def: Option<&'a FlagDef>,
        actor: &'a str,
        reason: &'a str,
    ) -> StoreFuture<'a, Option<FlagChange>> {
        Box::pin(async move {
            let mut attempt = 1;
            loop {
                match self.set_once(key, def, actor, reason).await {
                    Ok(change) => return Ok(change),
                    // Another replica changed the same flag at the same moment: read again.
                    Err(Failure::Sql(sqlx::Error::Database(_))) if attempt < ATTEMPTS => attempt += 1,
                    Err(Failure::Sql(e)) => return Err(unavailable(e)),
                    Err(Failure::Fatal(e)) => return Err(e),
                }
            }
        })
    }

    fn history<'a>(&'a self, key: Option<&'a str>, limit: u32) -> StoreFuture<'a, Vec<FlagChange>> {
        Box::pin(async move {
            let columns =
                "SELECT id, flag_key, before_definition, after_definition, actor, reason, at FROM keel_flag_changes";
            let rows = match key {
                Some(k) => {
                    sqlx::query(self.db.statement(&format!("{columns} WHERE flag_key = $1 ORDER BY id DESC LIMIT $2")))
                        .bind(k)
                        .bind(i64::from(limit))
                        .fetch_all(self.db.exec())
                        .await
                }
                None => {
                    sqlx::query(self.db.statement(&format!("{columns} ORDER BY id DESC LIMIT $1")))
                        .bind(i64::from(limit))
                        .fetch_all(self.db.exec())
                        .await
                }
            }
            .map_err(unavailable)?;
            rows.into_iter()
                .map(|row| {
                    let key: String = row.try_get(1).map_err(unavailable)?;
                    let before: Option<String> = row.try_get(2).map_err(unavailable)?;
                    let after: Option<String> = row.try_get(3).map_err(unavailable)?;
                    Ok(FlagChange {
                        id: row.try_get(0).map_err(unavailable)?,
                        before: before.map(|t| decode(&key, &t)).transpose()?,
                        after: after.map(|t| decode(&key, &t)).transpose()?,
                        actor: row.try_get(4).map_err(unavailable)?,
                        reason: row.try_get(5).map_err(unavailable)?,
                        at_ms: row.try_get(6).map_err(unavailable)?,
                        key,
                    })
                })
                .collect()
        })
    }
}
