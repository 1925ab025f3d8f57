//! `login_throttle`: one row per sign-in failure counter, keyed by its bucket.

use keel::data::{Backend, DataError, Db};
use sqlx::{Any, Transaction};

/// A counter's failures and the time of its last one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failures {
    pub(crate) failures: i64,
    pub(crate) last_failure_at: i64,
}

/// Makes the counter's row `key`, with no failures, unless it exists.
pub(crate) async fn ensure(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    key: &str,
    email: Option<&str>,
    now: i64,
) -> Result<(), DataError> {
    let sql = match db.backend() {
        Backend::MySql => {
            "INSERT INTO login_throttle (bucket, email_bidx, failures, last_failure_at) \
             VALUES ($1, $2, 0, $3) ON DUPLICATE KEY UPDATE bucket = bucket"
        }
        Backend::Postgres | Backend::Sqlite => {
            "INSERT INTO login_throttle (bucket, email_bidx, failures, last_failure_at) \
             VALUES ($1, $2, 0, $3) ON CONFLICT (bucket) DO NOTHING"
        }
    };
    sqlx::query(db.statement(sql)).bind(key).bind(email).bind(now).execute(db.on(&mut **tx)).await?;
    Ok(())
}

/// Forgets the failures of a counter whose last one is older than the window (`stale`).
/// As a write, it also locks the row, so a read after it sees every concurrent attempt.
pub(crate) async fn forget_if_stale(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    key: &str,
    stale: i64,
) -> Result<(), DataError> {
    sqlx::query(db.statement(
        "UPDATE login_throttle SET failures = CASE WHEN last_failure_at <= $1 THEN 0 ELSE failures END \
         WHERE bucket = $2",
    ))
    .bind(stale)
    .bind(key)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(())
}

/// The counter `key` (made by [`ensure`]).
pub(crate) async fn read(db: &Db, tx: &mut Transaction<'static, Any>, key: &str) -> Result<Failures, DataError> {
    let (failures, last_failure_at): (i64, i64) =
        sqlx::query_as(db.statement("SELECT failures, last_failure_at FROM login_throttle WHERE bucket = $1"))
            .bind(key)
            .fetch_one(db.on(&mut **tx))
            .await?;
    Ok(Failures { failures, last_failure_at })
}

/// One more failure on the counter `key`, at `now`.
pub(crate) async fn count_failure(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    key: &str,
    now: i64,
) -> Result<(), DataError> {
    sqlx::query(
        db.statement("UPDATE login_throttle SET failures = failures + 1, last_failure_at = $1 WHERE bucket = $2"),
    )
    .bind(now)
    .bind(key)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(())
}

/// Deletes the counter `key`.
pub(crate) async fn delete(db: &Db, key: &str) -> Result<(), DataError> {
    let mut conn = db.acquire().await?;
    sqlx::query(db.statement("DELETE FROM login_throttle WHERE bucket = $1"))
        .bind(key)
        .execute(db.on(&mut *conn))
        .await?;
    Ok(())
}

/// Takes one failure back from the counter `key` (none below zero).
pub(crate) async fn take_back(db: &Db, key: &str) -> Result<(), DataError> {
    let mut conn = db.acquire().await?;
    sqlx::query(db.statement("UPDATE login_throttle SET failures = failures - 1 WHERE bucket = $1 AND failures > 0"))
        .bind(key)
        .execute(db.on(&mut *conn))
        .await?;
    Ok(())
}

/// Deletes every counter of the account with address index `bidx`; returns how many.
pub(crate) async fn delete_account(db: &Db, tx: &mut Transaction<'static, Any>, bidx: &str) -> Result<u64, DataError> {
    let done = sqlx::query(db.statement("DELETE FROM login_throttle WHERE email_bidx = $1"))
        .bind(bidx)
        .execute(db.on(&mut **tx))
        .await?;
    Ok(done.rows_affected())
}

/// Deletes the counters whose last failure is at or before `before`; returns how many.
pub(crate) async fn prune(db: &Db, before: i64) -> Result<u64, DataError> {
    let mut conn = db.acquire().await?;
    let done = sqlx::query(db.statement("DELETE FROM login_throttle WHERE last_failure_at <= $1"))
        .bind(before)
        .execute(db.on(&mut *conn))
        .await?;
    Ok(done.rows_affected())
}
