//! `refresh_tokens`, by hash, and what rotation reads of their owners in `users`.

use keel::data::{DataError, Db};
use sqlx::{Any, Transaction};

use super::accounts::role_sql;

/// The owner's role as one value, for queries joining `users u`.
const OWNER_ROLE: &str = role_sql!("u.");

/// What an access token beside a refresh token says of its owner.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub(crate) role: String,
    pub(crate) email_verified_at: Option<i64>,
    pub(crate) session_version: i64,
}

/// A token just spent: its family and its owner.
#[derive(Debug, Clone)]
pub(crate) struct SpentOwner {
    pub(crate) family_id: String,
    pub(crate) user_id: String,
    pub(crate) owner: Owner,
    pub(crate) banned_at: Option<i64>,
}

/// A token as a second use of it reads it.
#[derive(Debug, Clone)]
pub(crate) struct TokenRow {
    pub(crate) family_id: String,
    pub(crate) user_id: String,
    pub(crate) used_at: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) expires_at: i64,
    /// The successor, sealed with the field keyring; wiped after the grace window.
    pub(crate) successor_ciphertext: Option<String>,
}

/// A new unspent token of family `family_id`.
#[derive(Debug)]
pub(crate) struct NewToken<'a> {
    pub(crate) token_hash: &'a str,
    pub(crate) family_id: &'a str,
    pub(crate) user_id: &'a str,
    pub(crate) expires_at: i64,
    pub(crate) created_at: i64,
}

/// Inserts a token in `tx`.
pub(crate) async fn insert(db: &Db, tx: &mut Transaction<'static, Any>, token: &NewToken<'_>) -> Result<(), DataError> {
    sqlx::query(db.statement(
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at, used_at, revoked_at, created_at) \
         VALUES ($1, $2, $3, $4, NULL, NULL, $5)",
    ))
    .bind(token.token_hash)
    .bind(token.family_id)
    .bind(token.user_id)
    .bind(token.expires_at)
    .bind(token.created_at)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(())
}

/// The token's owner and their session version, read without a lock.
pub(crate) async fn owner_version(db: &Db, token_hash: &str) -> Result<Option<(String, i64)>, DataError> {
    let mut conn = db.acquire().await?;
    sqlx::query_as(db.statement(
        "SELECT r.user_id, u.session_version FROM refresh_tokens r JOIN users u ON u.id = r.user_id \
         WHERE r.token_hash = $1",
    ))
    .bind(token_hash)
    .fetch_optional(db.on(&mut *conn))
    .await
    .map_err(DataError::from)
}

/// Spends the token at `now`, sealing `successor` in its row, if it is unspent, unrevoked and
/// unexpired; whether it was. One conditional `UPDATE`: of two concurrent uses exactly one wins.
pub(crate) async fn spend(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    token_hash: &str,
    successor: &str,
    now: i64,
) -> Result<bool, DataError> {
    let spent = sqlx::query(db.statement(
        "UPDATE refresh_tokens SET used_at = $1, successor_ciphertext = $2 \
         WHERE token_hash = $3 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $4",
    ))
    .bind(now)
    .bind(successor)
    .bind(token_hash)
    .bind(now)
    .execute(db.on(&mut **tx))
    .await?
    .rows_affected();
    Ok(spent == 1)
}

/// The family and owner of the token [`spend`] just spent in `tx`.
pub(crate) async fn spent_owner(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    token_hash: &str,
) -> Result<Option<SpentOwner>, DataError> {
    type Row = (String, String, String, Option<i64>, i64, Option<i64>);
    let row: Option<Row> = sqlx::query_as(db.statement(&format!(
        "SELECT r.family_id, r.user_id, {OWNER_ROLE}, u.email_verified_at, u.session_version, u.banned_at \
             FROM refresh_tokens r JOIN users u ON u.id = r.user_id WHERE r.token_hash = $1"
    )))
    .bind(token_hash)
    .fetch_optional(db.on(&mut **tx))
    .await?;
    Ok(row.map(|(family_id, user_id, role, email_verified_at, session_version, banned_at)| SpentOwner {
        family_id,
        user_id,
        owner: Owner { role, email_verified_at, session_version },
        banned_at,
    }))
}

/// The token's row.
pub(crate) async fn get(db: &Db, token_hash: &str) -> Result<Option<TokenRow>, DataError> {
    type Row = (String, String, Option<i64>, Option<i64>, i64, Option<String>);
    let mut conn = db.acquire().await?;
    let row: Option<Row> = sqlx::query_as(db.statement(
        "SELECT family_id, user_id, used_at, revoked_at, expires_at, successor_ciphertext \
         FROM refresh_tokens WHERE token_hash = $1",
    ))
    .bind(token_hash)
    .fetch_optional(db.on(&mut *conn))
    .await?;
    Ok(row.map(|(family_id, user_id, used_at, revoked_at, expires_at, successor_ciphertext)| TokenRow {
        family_id,
        user_id,
        used_at,
        revoked_at,
        expires_at,
        successor_ciphertext,
    }))
}

/// The owner of the token if it can still be spent at `now` (unspent, unrevoked, unexpired, its
/// owner not banned).
pub(crate) async fn live_owner(db: &Db, token_hash: &str, now: i64) -> Result<Option<Owner>, DataError> {
    let mut conn = db.acquire().await?;
    let row: Option<(String, Option<i64>, i64)> = sqlx::query_as(db.statement(&format!(
        "SELECT {OWNER_ROLE}, u.email_verified_at, u.session_version FROM refresh_tokens r \
         JOIN users u ON u.id = r.user_id \
         WHERE r.token_hash = $1 AND r.used_at IS NULL AND r.revoked_at IS NULL AND r.expires_at > $2 \
         AND u.banned_at IS NULL"
    )))
    .bind(token_hash)
    .bind(now)
    .fetch_optional(db.on(&mut *conn))
    .await?;
    Ok(row.map(|(role, email_verified_at, session_version)| Owner { role, email_verified_at, session_version }))
}

/// `(family id, user id)` of the token.
pub(crate) async fn family_of(db: &Db, token_hash: &str) -> Result<Option<(String, String)>, DataError> {
    let mut conn = db.acquire().await?;
    sqlx::query_as(db.statement("SELECT family_id, user_id FROM refresh_tokens WHERE token_hash = $1"))
        .bind(token_hash)
        .fetch_optional(db.on(&mut *conn))
        .await
        .map_err(DataError::from)
}

/// The live families (with an unspent, unrevoked token unexpired at `now`) of `user_id`, each
/// with its first and last token's creation: `(family id, started, last used)`, in no order.
/// A live session: its family, when it started and was last used (microseconds), and where
/// it came from (empty for a family started before that was recorded).
pub(crate) struct LiveFamily {
    pub(crate) family_id: String,
    pub(crate) started: i64,
    pub(crate) last: i64,
    pub(crate) device: String,
    pub(crate) place: String,
}

pub(crate) async fn live_families(db: &Db, user_id: &str, now: i64) -> Result<Vec<LiveFamily>, DataError> {
    let mut conn = db.acquire().await?;
    let live: Vec<(String,)> = sqlx::query_as(db.statement(
        "SELECT family_id FROM refresh_tokens \
         WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2",
    ))
    .bind(user_id)
    .bind(now)
    .fetch_all(db.on(&mut *conn))
    .await?;
    let mut out = Vec::with_capacity(live.len());
    for (family,) in live {
        let (started, last): (i64, i64) = sqlx::query_as(
            db.statement("SELECT MIN(created_at), MAX(created_at) FROM refresh_tokens WHERE family_id = $1"),
        )
        .bind(&family)
        .fetch_one(db.on(&mut *conn))
        .await?;
        let (device, place) = whence_on(db, &mut conn, &family).await?.unwrap_or_default();
        out.push(LiveFamily { family_id: family, started, last, device, place });
    }
    Ok(out)
}

/// Whether family `family_id` is `user_id`'s and not revoked.
pub(crate) async fn is_unrevoked_family_of(db: &Db, family_id: &str, user_id: &str) -> Result<bool, DataError> {
    let mut conn = db.acquire().await?;
    let owner: Option<(String,)> = sqlx::query_as(db.statement(
        "SELECT user_id FROM refresh_tokens WHERE family_id = $1 AND user_id = $2 AND revoked_at IS NULL LIMIT 1",
    ))
    .bind(family_id)
    .bind(user_id)
    .fetch_optional(db.on(&mut *conn))
    .await?;
    Ok(owner.is_some())
}

/// Revokes the unrevoked tokens of `user_id` at `at`, wiping their sealed successors; returns
/// how many.
pub(crate) async fn revoke_user(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    user_id: &str,
    at: i64,
) -> Result<u64, DataError> {
    revoke_where(db, tx, "user_id", user_id, at).await
}

/// [`revoke_user`] for the tokens of family `family_id`.
pub(crate) async fn revoke_family(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    family_id: &str,
    at: i64,
) -> Result<u64, DataError> {
    revoke_where(db, tx, "family_id", family_id, at).await
}

async fn revoke_where(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    column: &'static str,
    value: &str,
    at: i64,
) -> Result<u64, DataError> {
    let text = format!(
        "UPDATE refresh_tokens SET revoked_at = $1, successor_ciphertext = NULL \
         WHERE {column} = $2 AND revoked_at IS NULL"
    );
    let done = sqlx::query(db.statement(&text)).bind(at).bind(value).execute(db.on(&mut **tx)).await?;
    Ok(done.rows_affected())
}

/// How many tokens are unspent, unrevoked and unexpired at `now`.
pub(crate) async fn count_live(db: &Db, now: i64) -> Result<i64, DataError> {
    let mut conn = db.acquire().await?;
    sqlx::query_scalar(db.statement(
        "SELECT COUNT(*) FROM refresh_tokens WHERE used_at IS NULL AND revoked_at IS NULL AND expires_at > $1",
    ))
    .bind(now)
    .fetch_one(db.on(&mut *conn))
    .await
    .map_err(DataError::from)
}

/// Deletes the tokens expired at `now` and wipes the successors of tokens spent before
/// `spent_before`; returns how many rows were deleted.
pub(crate) async fn prune(db: &Db, now: i64, spent_before: i64) -> Result<u64, DataError> {
    let mut conn = db.acquire().await?;
    let done = sqlx::query(db.statement("DELETE FROM refresh_tokens WHERE expires_at <= $1"))
        .bind(now)
        .execute(db.on(&mut *conn))
        .await?;
    sqlx::query(db.statement(
        "UPDATE refresh_tokens SET successor_ciphertext = NULL \
         WHERE successor_ciphertext IS NOT NULL AND used_at < $1",
    ))
    .bind(spent_before)
    .execute(db.on(&mut *conn))
    .await?;
    // Where a session came from goes with its last token.
    sqlx::query(db.statement(
        "DELETE FROM session_whence WHERE NOT EXISTS \
         (SELECT 1 FROM refresh_tokens t WHERE t.family_id = session_whence.family_id)",
    ))
    .execute(db.on(&mut *conn))
    .await?;
    Ok(done.rows_affected())
}

/// Where family `family_id` was started from.
pub(crate) async fn whence(db: &Db, family_id: &str) -> Result<Option<crate::whence::Whence>, DataError> {
    let mut conn = db.acquire().await?;
    let row = whence_on(db, &mut conn, family_id).await?;
    Ok(row.map(|(device, place)| crate::whence::Whence { device, place }))
}

/// `(device, place)` of family `family_id`, on `conn`.
async fn whence_on(
    db: &Db,
    conn: &mut sqlx::pool::PoolConnection<Any>,
    family_id: &str,
) -> Result<Option<(String, String)>, DataError> {
    let row = sqlx::query_as(db.statement("SELECT device, place FROM session_whence WHERE family_id = $1"))
        .bind(family_id)
        .fetch_optional(db.on(&mut **conn))
        .await?;
    Ok(row)
}

/// Records where family `family_id` of `user_id` was started from.
pub(crate) async fn insert_whence(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    family_id: &str,
    user_id: &str,
    whence: &crate::whence::Whence,
    now: i64,
) -> Result<(), DataError> {
    sqlx::query(db.statement(
        "INSERT INTO session_whence (family_id, user_id, device, place, created_at) VALUES ($1, $2, $3, $4, $5)",
    ))
    .bind(family_id)
    .bind(user_id)
    .bind(&whence.device)
    .bind(&whence.place)
    .bind(now)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(())
}
