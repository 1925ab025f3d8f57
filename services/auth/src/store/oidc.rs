//! `oidc_identities`, `oidc_flows` and `oidc_link_offers`: sign-in with OpenID Connect
//! providers (migration 0014).

use keel::data::{DataError, Db};
use sqlx::{Any, Transaction};

/// A sign-in started at a provider: what its callback needs.
#[derive(Debug, Clone)]
pub(crate) struct Flow {
    pub(crate) provider: String,
    pub(crate) nonce: String,
    pub(crate) pkce_verifier: String,
    /// Set when a signed-in user links the provider to their account.
    pub(crate) link_user_id: Option<String>,
    /// That account's session version when the link started: a session ended since ends it.
    pub(crate) link_session_version: Option<i64>,
    pub(crate) next_path: String,
    pub(crate) expires_at: i64,
}

/// An offer to link a provider's account to the account with its verified address.
#[derive(Debug, Clone)]
pub(crate) struct Offer {
    pub(crate) user_id: String,
    pub(crate) provider: String,
    pub(crate) issuer: String,
    pub(crate) subject: String,
    pub(crate) next_path: String,
    pub(crate) expires_at: i64,
}

/// A provider account linked to an account.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) provider: String,
    pub(crate) created_at: i64,
    pub(crate) last_used_at: i64,
}

pub(crate) async fn insert_flow(db: &Db, state_hash: &str, flow: &Flow) -> Result<(), DataError> {
    sqlx::query(db.statement(
        "INSERT INTO oidc_flows \
         (state_hash, provider, nonce, pkce_verifier, link_user_id, link_session_version, next_path, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    ))
    .bind(state_hash)
    .bind(&flow.provider)
    .bind(&flow.nonce)
    .bind(&flow.pkce_verifier)
    .bind(flow.link_user_id.as_deref())
    .bind(flow.link_session_version)
    .bind(&flow.next_path)
    .bind(flow.expires_at)
    .execute(db.on(&mut *db.acquire().await?))
    .await?;
    Ok(())
}

/// Takes the flow of `state_hash` (deleting it: a callback is answered once), if any.
pub(crate) async fn take_flow(db: &Db, state_hash: &str) -> Result<Option<Flow>, DataError> {
    let mut tx = db.begin_write().await?;
    type Row = (String, String, String, Option<String>, Option<i64>, String, i64);
    let row: Option<Row> = sqlx::query_as(db.statement(
        "SELECT provider, nonce, pkce_verifier, link_user_id, link_session_version, next_path, expires_at \
         FROM oidc_flows WHERE state_hash = $1",
    ))
    .bind(state_hash)
    .fetch_optional(db.on(&mut *tx))
    .await?;
    let deleted = sqlx::query(db.statement("DELETE FROM oidc_flows WHERE state_hash = $1"))
        .bind(state_hash)
        .execute(db.on(&mut *tx))
        .await?
        .rows_affected();
    db.commit(tx).await?;
    // Another callback with the same state took it between the read and the delete.
    if deleted == 0 {
        return Ok(None);
    }
    Ok(row.map(|(provider, nonce, pkce_verifier, link_user_id, link_session_version, next_path, expires_at)| Flow {
        provider,
        nonce,
        pkce_verifier,
        link_user_id,
        link_session_version,
        next_path,
        expires_at,
    }))
}

/// The account the provider account `(issuer, subject)` signs in to.
pub(crate) async fn user_of(db: &Db, issuer: &str, subject: &str) -> Result<Option<String>, DataError> {
    let row: Option<(String,)> =
        sqlx::query_as(db.statement("SELECT user_id FROM oidc_identities WHERE issuer = $1 AND subject = $2"))
            .bind(issuer)
            .bind(subject)
            .fetch_optional(db.on(&mut *db.acquire().await?))
            .await?;
    Ok(row.map(|(u,)| u))
}

/// Links `(issuer, subject)` to `user_id` in `tx`; false when either side is linked already (the
/// provider account to anyone, or this account to another account of the provider).
pub(crate) async fn link(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    (issuer, subject, provider): (&str, &str, &str),
    user_id: &str,
    at: i64,
) -> Result<bool, DataError> {
    let taken: Option<(String,)> = sqlx::query_as(db.statement(
        "SELECT user_id FROM oidc_identities WHERE (issuer = $1 AND subject = $2) OR (user_id = $3 AND provider = $4)",
    ))
    .bind(issuer)
    .bind(subject)
    .bind(user_id)
    .bind(provider)
    .fetch_optional(db.on(&mut **tx))
    .await?;
    if taken.is_some() {
        return Ok(false);
    }
    let inserted = sqlx::query(db.statement(
        "INSERT INTO oidc_identities (issuer, subject, provider, user_id, created_at, last_used_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    ))
    .bind(issuer)
    .bind(subject)
    .bind(provider)
    .bind(user_id)
    .bind(at)
    .bind(at)
    .execute(db.on(&mut **tx))
    .await;
    match inserted {
        Ok(_) => Ok(true),
        // Linked meanwhile: the primary key or the (user, provider) index decided.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn touch(db: &Db, issuer: &str, subject: &str, at: i64) -> Result<(), DataError> {
    sqlx::query(db.statement("UPDATE oidc_identities SET last_used_at = $1 WHERE issuer = $2 AND subject = $3"))
        .bind(at)
        .bind(issuer)
        .bind(subject)
        .execute(db.on(&mut *db.acquire().await?))
        .await?;
    Ok(())
}

/// The providers linked to `user_id`, by provider id.
pub(crate) async fn identities(db: &Db, user_id: &str) -> Result<Vec<Identity>, DataError> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(db.statement(
        "SELECT provider, created_at, last_used_at FROM oidc_identities WHERE user_id = $1 ORDER BY provider",
    ))
    .bind(user_id)
    .fetch_all(db.on(&mut *db.acquire().await?))
    .await?;
    Ok(rows
        .into_iter()
        .map(|(provider, created_at, last_used_at)| Identity { provider, created_at, last_used_at })
        .collect())
}

/// Unlinks `provider` from `user_id` in `tx`; false when it was not linked.
pub(crate) async fn unlink(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    user_id: &str,
    provider: &str,
) -> Result<bool, DataError> {
    let done = sqlx::query(db.statement("DELETE FROM oidc_identities WHERE user_id = $1 AND provider = $2"))
        .bind(user_id)
        .bind(provider)
        .execute(db.on(&mut **tx))
        .await?;
    Ok(done.rows_affected() > 0)
}

/// How many providers `user_id` has linked, counted in `tx` (with its row locked by the caller).
/// The providers linked to `user_id` (in the caller's transaction, which holds its row).
pub(crate) async fn linked_providers(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    user_id: &str,
) -> Result<Vec<String>, DataError> {
    let rows: Vec<(String,)> =
        sqlx::query_as(db.statement("SELECT provider FROM oidc_identities WHERE user_id = $1 ORDER BY provider"))
            .bind(user_id)
            .fetch_all(db.on(&mut **tx))
            .await?;
    Ok(rows.into_iter().map(|(p,)| p).collect())
}

pub(crate) async fn insert_offer(db: &Db, offer_hash: &str, offer: &Offer) -> Result<(), DataError> {
    sqlx::query(db.statement(
        "INSERT INTO oidc_link_offers (offer_hash, user_id, provider, issuer, subject, next_path, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    ))
    .bind(offer_hash)
    .bind(&offer.user_id)
    .bind(&offer.provider)
    .bind(&offer.issuer)
    .bind(&offer.subject)
    .bind(&offer.next_path)
    .bind(offer.expires_at)
    .execute(db.on(&mut *db.acquire().await?))
    .await?;
    Ok(())
}

/// The offer of `offer_hash`, if any (the caller checks its expiry).
pub(crate) async fn offer(db: &Db, offer_hash: &str) -> Result<Option<Offer>, DataError> {
    let row: Option<(String, String, String, String, String, i64)> = sqlx::query_as(db.statement(
        "SELECT user_id, provider, issuer, subject, next_path, expires_at FROM oidc_link_offers WHERE offer_hash = $1",
    ))
    .bind(offer_hash)
    .fetch_optional(db.on(&mut *db.acquire().await?))
    .await?;
    Ok(row.map(|(user_id, provider, issuer, subject, next_path, expires_at)| Offer {
        user_id,
        provider,
        issuer,
        subject,
        next_path,
        expires_at,
    }))
}

/// Spends the offer of `offer_hash` in `tx`; false when it was spent already.
pub(crate) async fn spend_offer(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    offer_hash: &str,
) -> Result<bool, DataError> {
    let done = sqlx::query(db.statement("DELETE FROM oidc_link_offers WHERE offer_hash = $1"))
        .bind(offer_hash)
        .execute(db.on(&mut **tx))
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Deletes flows and offers that expired before `now`; how many.
pub(crate) async fn prune(db: &Db, now: i64) -> Result<u64, DataError> {
    let mut n = 0;
    for table in ["oidc_flows", "oidc_link_offers"] {
        let text = format!("DELETE FROM {table} WHERE expires_at < $1");
        n +=
            sqlx::query(db.statement(&text)).bind(now).execute(db.on(&mut *db.acquire().await?)).await?.rows_affected();
    }
    Ok(n)
}
