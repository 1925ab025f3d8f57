//! `users.session_version` and `users.session_changed_at`: the session versions.
//!
//! [`raise`] and [`raised_since`] answer `sqlx::Error`: their callers report failures as the
//! outbox's errors, which tell a failed statement (`OutboxError::Sql`) from the rest.

use keel::data::{Backend, DataError, Db};
use sqlx::{Any, Transaction};

/// A raise of a user's session version.
#[derive(Debug, Clone)]
pub(crate) struct Raise {
    pub(crate) user_id: String,
    pub(crate) version: i64,
}

/// Raises the session version of `user_id`, noting the change at `at`.
pub(crate) async fn raise(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    user_id: &str,
    at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        db.statement("UPDATE users SET session_version = session_version + 1, session_changed_at = $1 WHERE id = $2"),
    )
    .bind(at)
    .bind(user_id)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(())
}

/// The session version of `user_id`; `None` for an unknown user.
pub(crate) async fn version(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    user_id: &str,
) -> Result<Option<i64>, DataError> {
    select_version(db, tx, VERSION, user_id).await
}

/// [`version`], the user's row locked until `tx` ends.
pub(crate) async fn version_locked(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    user_id: &str,
) -> Result<Option<i64>, DataError> {
    let select = match db.backend() {
        Backend::Sqlite => {
            // No `FOR UPDATE`: a write takes SQLite's one write lock for the transaction.
            sqlx::query(db.statement("UPDATE users SET session_version = session_version WHERE id = $1"))
                .bind(user_id)
                .execute(db.on(&mut **tx))
                .await?;
            VERSION
        }
        _ => "SELECT session_version FROM users WHERE id = $1 FOR UPDATE",
    };
    select_version(db, tx, select, user_id).await
}

const VERSION: &str = "SELECT session_version FROM users WHERE id = $1";

async fn select_version(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    select: &str,
    user_id: &str,
) -> Result<Option<i64>, DataError> {
    let v: Option<(i64,)> = sqlx::query_as(db.statement(select)).bind(user_id).fetch_optional(db.on(&mut **tx)).await?;
    Ok(v.map(|(v,)| v))
}

/// Up to `limit` raises since `since`, the most recent first.
pub(crate) async fn raised_since(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    since: i64,
    limit: u32,
) -> Result<Vec<Raise>, sqlx::Error> {
    let text = format!(
        "SELECT id, session_version FROM users WHERE session_changed_at >= $1 \
         ORDER BY session_changed_at DESC LIMIT {limit}"
    );
    let rows: Vec<(String, i64)> = sqlx::query_as(db.statement(&text)).bind(since).fetch_all(db.on(&mut **tx)).await?;
    Ok(rows.into_iter().map(|(user_id, version)| Raise { user_id, version }).collect())
}
