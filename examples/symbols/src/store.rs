//! The symbol operations: the one place that validates input, reads and writes the `symbols`
//! table and enqueues `symbol.*` events. The HTTP handlers ([`crate::http`]) and the gRPC
//! service ([`crate::grpc`]) only translate to and from it, so both APIs behave the same.
//!
//! SQL is written once with `$n` placeholders ([`Db::sql`] rewrites them per backend) and runs
//! on MariaDB/MySQL and SQLite through sqlx's `Any` driver, always through [`Db::on`], so each
//! statement of a traced request is a span in its trace.
//!
//! A change runs in one transaction: it locks the symbol's row first with a no-op `UPDATE` (a
//! row lock on MariaDB, the write lock on SQLite), then reads, checks and writes it, and enqueues
//! its event in the outbox in the same transaction, so the event is published if and only if the
//! change commits. Writes use `READ COMMITTED` on MariaDB: the read after the lock sees the
//! latest committed row, and inserts take no gap locks that could deadlock with each other.

use keel::data::{DataError, Db};
use keel::events::Event;
use keel::events::outbox::Outbox;
use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use crate::error::SymbolError;
use crate::events::{SymbolChange, SymbolCreated, SymbolDeleted, SymbolUpdated, TOPIC};
use crate::model::{self, Check, NewSymbol, PageRequest, Symbol, SymbolPage, SymbolPatch, now_micros};

const COLUMNS: &str = "id, project_id, name, kind, data, version, created_at, updated_at, deleted_at";

/// The symbol operations on one database and its outbox. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Symbols {
    db: Db,
    outbox: Outbox,
}

impl Symbols {
    /// The operations on `db`, publishing through `outbox` (on the same database).
    pub fn new(db: Db, outbox: Outbox) -> Self {
        Self { db, outbox }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Creates a symbol in `project_id`; `symbol.created` is enqueued with it.
    pub async fn create(&self, project_id: &str, input: NewSymbol) -> Result<Symbol, SymbolError> {
        let mut c = Check::default();
        let project_id = model::project_id(&mut c, project_id);
        let name = model::name(&mut c, &input.name);
        let kind = model::kind(&mut c, &input.kind);
        let data = model::data(&mut c, input.data.unwrap_or_default());
        c.finish(()).map_err(SymbolError::Invalid)?;

        let now = now_micros();
        let symbol = Symbol {
            id: Uuid::now_v7(),
            project_id,
            name,
            kind,
            data,
            version: 1,
            created_at: now,
            updated_at: now,
            deleted_at: None,
        };
        let mut tx = self.db.begin_read_committed().await?;
        let insert = self.db.statement(
            "INSERT INTO symbols (id, project_id, name, live_key, kind, data, version, created_at, updated_at, deleted_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        );
        sqlx::query(insert)
            .bind(symbol.id.to_string())
            .bind(&symbol.project_id)
            .bind(&symbol.name)
            .bind(model::name_key(&symbol.name))
            .bind(&symbol.kind)
            .bind(encode(&symbol.data)?)
            .bind(symbol.version)
            .bind(symbol.created_at)
            .bind(symbol.updated_at)
            .bind(None::<i64>)
            .execute(self.db.on(&mut *tx))
            .await
            .map_err(|e| self.write_error(e))?;
        self.publish(&mut tx, &SymbolCreated(SymbolChange::of(&symbol, now))).await?;
        self.commit(tx).await?;
        tracing::info!(symbol_id = %symbol.id, project_id = %symbol.project_id, "symbol created");
        Ok(symbol)
    }

    /// The live symbol `id` of `project_id`.
    pub async fn get(&self, project_id: &str, id: &str) -> Result<Symbol, SymbolError> {
        let (project_id, id) = ids(project_id, id)?;
        let sql = format!("SELECT {COLUMNS} FROM symbols WHERE id = $1 AND project_id = $2 AND deleted_at IS NULL");
        let mut conn = self.db.acquire().await?;
        let row = sqlx::query(self.db.statement(&sql))
            .bind(id.to_string())
            .bind(&project_id)
            .fetch_optional(self.db.on(&mut *conn))
            .await
            .map_err(DataError::from)?;
        row.as_ref().map(|r| self.decode(r)).transpose()?.ok_or(SymbolError::NotFound)
    }

    /// Changes the fields `patch` sets (at `patch.expected_version`, when given); enqueues
    /// `symbol.updated` when something changed. A patch that changes nothing returns the symbol
    /// as it is: no new version, no event.
    pub async fn update(&self, project_id: &str, id: &str, patch: SymbolPatch) -> Result<Symbol, SymbolError> {
        let mut c = Check::default();
        let project_id = model::project_id(&mut c, project_id);
        let id = model::symbol_id(&mut c, id);
        let name = patch.name.as_deref().map(|n| model::name(&mut c, n));
        let kind = patch.kind.as_deref().map(|k| model::kind(&mut c, k));
        let data = patch.data.map(|d| model::data(&mut c, d));
        let expected = model::expected_version(&mut c, patch.expected_version);
        if name.is_none() && kind.is_none() && data.is_none() {
            c.invalid("name", "or kind or data must be given: there is nothing to change");
        }
        c.finish(()).map_err(SymbolError::Invalid)?;

        let mut tx = self.db.begin_read_committed().await?;
        let current = self.lock(&mut tx, &project_id, id).await?;
        check_version(&current, expected)?;
        let next = Symbol {
            name: name.unwrap_or_else(|| current.name.clone()),
            kind: kind.unwrap_or_else(|| current.kind.clone()),
            data: data.unwrap_or_else(|| current.data.clone()),
            ..current.clone()
        };
        if next == current {
            return Ok(current);
        }
        let now = now_micros();
        let next = Symbol { version: current.version + 1, updated_at: now.max(current.updated_at), ..next };
        let update = self.db.statement(
            "UPDATE symbols SET name = $1, live_key = $2, kind = $3, data = $4, version = $5, updated_at = $6 \
             WHERE id = $7 AND version = $8",
        );
        let done = sqlx::query(update)
            .bind(&next.name)
            .bind(model::name_key(&next.name))
            .bind(&next.kind)
            .bind(encode(&next.data)?)
            .bind(next.version)
            .bind(next.updated_at)
            .bind(id.to_string())
            .bind(current.version)
            .execute(self.db.on(&mut *tx))
            .await
            .map_err(|e| self.write_error(e))?;
        // The row is locked: only a bug could make this miss.
        if done.rows_affected() != 1 {
            return Err(SymbolError::VersionMismatch { current: current.version });
        }
        self.publish(&mut tx, &SymbolUpdated(SymbolChange::of(&next, now))).await?;
        self.commit(tx).await?;
        tracing::info!(symbol_id = %id, version = next.version, "symbol updated");
        Ok(next)
    }

    /// Soft-deletes the live symbol `id` (at `expected_version`, when given): it is no longer
    /// returned, and its name is free again. Enqueues `symbol.deleted`.
    pub async fn delete(&self, project_id: &str, id: &str, expected_version: Option<i64>) -> Result<(), SymbolError> {
        let mut c = Check::default();
        let project_id = model::project_id(&mut c, project_id);
        let id = model::symbol_id(&mut c, id);
        let expected = model::expected_version(&mut c, expected_version);
        c.finish(()).map_err(SymbolError::Invalid)?;

        let mut tx = self.db.begin_read_committed().await?;
        let current = self.lock(&mut tx, &project_id, id).await?;
        check_version(&current, expected)?;
        let now = now_micros().max(current.updated_at);
        let deleted = Symbol { version: current.version + 1, updated_at: now, deleted_at: Some(now), ..current };
        let update = self.db.statement(
            "UPDATE symbols SET live_key = NULL, deleted_at = $1, version = $2, updated_at = $3 \
             WHERE id = $4 AND version = $5",
        );
        sqlx::query(update)
            .bind(now)
            .bind(deleted.version)
            .bind(now)
            .bind(id.to_string())
            .bind(deleted.version - 1)
            .execute(self.db.on(&mut *tx))
            .await
            .map_err(DataError::from)?;
        self.publish(&mut tx, &SymbolDeleted(SymbolChange::of(&deleted, now))).await?;
        self.commit(tx).await?;
        tracing::info!(symbol_id = %id, "symbol deleted");
        Ok(())
    }

    /// A page of the live symbols of `project_id`, oldest first, with their total count. Both
    /// are read in one transaction, so they agree.
    pub async fn list(&self, project_id: &str, page: PageRequest) -> Result<SymbolPage, SymbolError> {
        let mut c = Check::default();
        let project_id = model::project_id(&mut c, project_id);
        let page = model::page(&mut c, page);
        c.finish(()).map_err(SymbolError::Invalid)?;

        let mut tx = self.db.begin_write().await?;
        let count = self.db.statement("SELECT COUNT(*) AS n FROM symbols WHERE project_id = $1 AND deleted_at IS NULL");
        let total_count: i64 = sqlx::query(count)
            .bind(&project_id)
            .fetch_one(self.db.on(&mut *tx))
            .await
            .and_then(|r| r.try_get("n"))
            .map_err(DataError::from)?;
        let sql = format!(
            "SELECT {COLUMNS} FROM symbols WHERE project_id = $1 AND deleted_at IS NULL \
             ORDER BY created_at, id LIMIT $2 OFFSET $3"
        );
        let rows = sqlx::query(self.db.statement(&sql))
            .bind(&project_id)
            .bind(i64::from(page.limit))
            .bind(i64::from(page.offset))
            .fetch_all(self.db.on(&mut *tx))
            .await
            .map_err(DataError::from)?;
        self.db.commit(tx).await?;
        let items = rows.iter().map(|r| self.decode(r)).collect::<Result<Vec<_>, _>>()?;
        let has_next = i64::from(page.offset) + (items.len() as i64) < total_count;
        Ok(SymbolPage { items, total_count, page, has_next })
    }

    /// Locks the symbol's row in `tx` and reads it: [`SymbolError::NotFound`] when it does not
    /// exist, belongs to another project or is deleted.
    async fn lock(
        &self,
        tx: &mut Transaction<'static, Any>,
        project_id: &str,
        id: Uuid,
    ) -> Result<Symbol, SymbolError> {
        sqlx::query(self.db.statement("UPDATE symbols SET version = version WHERE id = $1"))
            .bind(id.to_string())
            .execute(self.db.on(&mut **tx))
            .await
            .map_err(DataError::from)?;
        let sql = format!("SELECT {COLUMNS} FROM symbols WHERE id = $1");
        let row = sqlx::query(self.db.statement(&sql))
            .bind(id.to_string())
            .fetch_optional(self.db.on(&mut **tx))
            .await
            .map_err(DataError::from)?;
        match row.as_ref().map(|r| self.decode(r)).transpose()? {
            Some(s) if s.project_id == project_id && s.deleted_at.is_none() => Ok(s),
            _ => Err(SymbolError::NotFound),
        }
    }

    async fn publish<E: Event>(&self, tx: &mut Transaction<'static, Any>, event: &E) -> Result<(), SymbolError> {
        self.outbox.enqueue_event(tx, TOPIC, event).await?;
        Ok(())
    }

    /// Commits, then tells the relay there is something to publish.
    async fn commit(&self, tx: Transaction<'static, Any>) -> Result<(), SymbolError> {
        self.db.commit(tx).await?;
        self.outbox.wake();
        Ok(())
    }

    /// A write's error: the unique index on live names means the name is taken.
    fn write_error(&self, e: sqlx::Error) -> SymbolError {
        match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => SymbolError::NameTaken,
            _ => SymbolError::Data(DataError::from(e)),
        }
    }

    fn decode(&self, row: &AnyRow) -> Result<Symbol, SymbolError> {
        decode(row).map_err(|e| SymbolError::Data(self.db.observe(e)))
    }
}

fn ids(project_id: &str, id: &str) -> Result<(String, Uuid), SymbolError> {
    let mut c = Check::default();
    let project_id = model::project_id(&mut c, project_id);
    let id = model::symbol_id(&mut c, id);
    c.finish((project_id, id)).map_err(SymbolError::Invalid)
}

fn check_version(current: &Symbol, expected: Option<i64>) -> Result<(), SymbolError> {
    match expected {
        Some(v) if v != current.version => Err(SymbolError::VersionMismatch { current: current.version }),
        _ => Ok(()),
    }
}

fn encode(data: &Map<String, Value>) -> Result<String, SymbolError> {
    serde_json::to_string(data).map_err(|e| SymbolError::Data(DataError::Sql(sqlx::Error::Encode(Box::new(e)))))
}

fn decode(row: &AnyRow) -> Result<Symbol, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let data: String = row.try_get("data")?;
    Ok(Symbol {
        id: Uuid::parse_str(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        project_id: row.try_get("project_id")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        data: serde_json::from_str(&data).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        deleted_at: row.try_get("deleted_at")?,
    })
}
