//! `account_tokens` (single-use mail tokens, by hash), `registration_notices` (one mail per
//! address and hour about a sign-up that made no account) and `users.contact_sent_at`.

use keel::data::{Backend, DataError, Db};
use sqlx::{Any, Transaction};

/// Stores an account token by its hash, unused.
pub(crate) async fn insert_token(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    token_hash: &str,
    user_id: &str,
    purpose: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), DataError> {
    sqlx::query(db.statement(
        "INSERT INTO account_tokens (token_hash, user_id, purpose, created_at, expires_at, used_at) \
         VALUES ($1, $2, $3, $4, $5, NULL)",
    ))
    .bind(token_hash)
    .bind(user_id)
    .bind(purpose)
    .bind(now)
    .bind(expires_at)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(())
}

/// Marks the unused tokens of `user_id` for `purpose` used at `at`; returns how many.
pub(crate) async fn spend_unused(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    user_id: &str,
    purpose: &str,
    at: i64,
) -> Result<u64, DataError> {
    let done = sqlx::query(
        db.statement("UPDATE account_tokens SET used_at = $1 WHERE user_id = $2 AND purpose = $3 AND used_at IS NULL"),
    )
    .bind(at)
    .bind(user_id)
    .bind(purpose)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(done.rows_affected())
}

/// How many tokens of `user_id` for `purpose` were made after `since`.
pub(crate) async fn count_since(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    user_id: &str,
    purpose: &str,
    since: i64,
) -> Result<i64, DataError> {
    sqlx::query_scalar(
        db.statement("SELECT COUNT(*) FROM account_tokens WHERE user_id = $1 AND purpose = $2 AND created_at > $3"),
    )
    .bind(user_id)
    .bind(purpose)
    .bind(since)
    .fetch_one(db.on(&mut **tx))
    .await
    .map_err(DataError::from)
}

/// Marks the token used at `now` if it is for `purpose`, unused and unexpired; whether it was.
/// One conditional `UPDATE`: of two concurrent uses exactly one wins.
pub(crate) async fn spend(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    token_hash: &str,
    purpose: &str,
    now: i64,
) -> Result<bool, DataError> {
    let spent = sqlx::query(db.statement(
        "UPDATE account_tokens SET used_at = $1 \
         WHERE token_hash = $2 AND purpose = $3 AND used_at IS NULL AND expires_at > $4",
    ))
    .bind(now)
    .bind(token_hash)
    .bind(purpose)
    .bind(now)
    .execute(db.on(&mut **tx))
    .await?
    .rows_affected();
    Ok(spent == 1)
}

/// The account of an unspent, unexpired token for `purpose` (nothing is changed: a link is
/// checked before its form is shown).
pub(crate) async fn live_owner(
    db: &Db,
    token_hash: &str,
    purpose: &str,
    now: i64,
) -> Result<Option<String>, DataError> {
    let mut conn = db.acquire().await?;
    sqlx::query_scalar(db.statement(
        "SELECT user_id FROM account_tokens \
         WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3",
    ))
    .bind(token_hash)
    .bind(purpose)
    .bind(now)
    .fetch_optional(db.on(&mut *conn))
    .await
    .map_err(DataError::from)
}

/// The account the token was issued for.
pub(crate) async fn token_owner(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    token_hash: &str,
) -> Result<Option<String>, DataError> {
    sqlx::query_scalar(db.statement("SELECT user_id FROM account_tokens WHERE token_hash = $1"))
        .bind(token_hash)
        .fetch_optional(db.on(&mut **tx))
        .await
        .map_err(DataError::from)
}

/// Records that the contact of `user_id` was sent at `at`.
pub(crate) async fn contact_sent(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    user_id: &str,
    at: i64,
) -> Result<(), DataError> {
    sqlx::query(db.statement("UPDATE users SET contact_sent_at = $1 WHERE id = $2"))
        .bind(at)
        .bind(user_id)
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}

/// Records that a contact of `user_id` is being sent at `at` and returns its version: the time,
/// or just after the previous contact's if that is later, so versions strictly increase per user
/// whatever the clocks of auth's instances. The update locks the user's row until `tx` ends, so
/// versions follow the order contacts commit in. `None` when there is no such user.
pub(crate) async fn next_contact_version(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    user_id: &str,
    at: i64,
) -> Result<Option<i64>, DataError> {
    // Each placeholder once, in order (MySQL and SQLite take `?` positionally).
    sqlx::query(db.statement(
        "UPDATE users SET contact_sent_at = CASE WHEN contact_sent_at IS NOT NULL AND contact_sent_at >= $1 \
         THEN contact_sent_at + 1 ELSE $2 END WHERE id = $3",
    ))
    .bind(at)
    .bind(at)
    .bind(user_id)
    .execute(db.on(&mut **tx))
    .await?;
    let version: Option<Option<i64>> =
        sqlx::query_scalar(db.statement("SELECT contact_sent_at FROM users WHERE id = $1"))
            .bind(user_id)
            .fetch_optional(db.on(&mut **tx))
            .await?;
    Ok(version.flatten())
}

/// Deletes tokens that expired and notices sent before `cutoff`; returns how many rows.
pub(crate) async fn prune(db: &Db, cutoff: i64) -> Result<u64, DataError> {
    let mut conn = db.acquire().await?;
    let mut pruned = 0;
    for table in
        ["DELETE FROM account_tokens WHERE expires_at < $1", "DELETE FROM registration_notices WHERE sent_at < $1"]
    {
        let done =
            sqlx::query(db.statement(table)).bind(cutoff).execute(db.on(&mut *conn)).await.map_err(DataError::from)?;
        pruned += done.rows_affected();
    }
    Ok(pruned)
}

/// Makes the notice row of the address `bidx`, never sent, unless it exists.
pub(crate) async fn ensure_notice(db: &Db, tx: &mut Transaction<'static, Any>, bidx: &str) -> Result<(), DataError> {
    let ensure = match db.backend() {
        Backend::MySql => {
            "INSERT INTO registration_notices (email_bidx, sent_at) VALUES ($1, 0) \
             ON DUPLICATE KEY UPDATE email_bidx = email_bidx"
        }
        _ => {
            "INSERT INTO registration_notices (email_bidx, sent_at) VALUES ($1, 0) ON CONFLICT (email_bidx) DO NOTHING"
        }
    };
    sqlx::query(db.statement(ensure)).bind(bidx).execute(db.on(&mut **tx)).await.map_err(DataError::from)?;
    Ok(())
}

/// Marks the notice of the address `bidx` sent at `now` if the last one was before `before`
/// (made by [`ensure_notice`]); whether it was.
pub(crate) async fn claim_notice(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    bidx: &str,
    now: i64,
    before: i64,
) -> Result<bool, DataError> {
    let claimed = sqlx::query(
        db.statement("UPDATE registration_notices SET sent_at = $1 WHERE email_bidx = $2 AND sent_at < $3"),
    )
    .bind(now)
    .bind(bidx)
    .bind(before)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(claimed.rows_affected() == 1)
}
