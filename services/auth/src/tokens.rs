//! Refresh tokens: opaque, random, stored only as their SHA-256, rotated on every use, and
//! grouped in families (one per sign-in) so that a stolen token's reuse signs out the family.
//!
//! * **Rotation** spends the presented token with one conditional `UPDATE … WHERE used_at IS
//!   NULL AND revoked_at IS NULL AND expires_at > now`: of two concurrent uses exactly one wins.
//! * **Reuse**: presenting a spent token revokes every token of its family — the thief's and
//!   the rightful client's newest — and is answered `refresh_reused`.
//! * **Two tabs**: the spent row keeps its successor, encrypted with the field keyring. A second
//!   use within the grace window (`app.refresh_reuse_grace`, two tabs refreshing at once) gets
//!   that same successor back, as long as it is itself unspent and the family is not revoked;
//!   after the window the successor is wiped and a second use is reuse.
//! * Unknown, expired and revoked tokens are all `invalid_refresh_token`.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel::data::{DataError, Db};
use keel::security::crypto::Keyring;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::sessions::Sessions;
use cityevents_common::time::{now, to_micros};
use keel::http::Problem;

/// Longest refresh token accepted as input (ours are 43 characters).
pub(crate) const MAX_TOKEN_LEN: usize = cityevents_api::limits::MAX_TOKEN;

/// A fresh token: 32 random bytes (the thread RNG is a CSPRNG), base64url without padding.
pub(crate) fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a token: SHA-256, hex. The token has 256 bits of entropy, so a fast
/// unsalted hash is enough (nothing to brute-force).
pub(crate) fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What rotating a token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rotation {
    /// Spent; here is its successor.
    Rotated {
        /// The new token (in clear, for the client).
        token: String,
        /// Its owner.
        user_id: String,
        /// The owner's current role.
        role: String,
        /// Whether the owner's address is verified.
        verified: bool,
        /// The owner's session version.
        sv: u64,
    },
    /// Spent within the grace window: here is the successor it was given then.
    Repeated {
        /// The successor (in clear, for the client).
        token: String,
        /// Its owner.
        user_id: String,
        /// The owner's current role.
        role: String,
        /// Whether the owner's address is verified.
        verified: bool,
        /// The owner's session version.
        sv: u64,
    },
    /// A spent token came back after the grace window: its family is now revoked.
    Reused {
        /// The family's owner.
        user_id: String,
        /// The family.
        family_id: String,
    },
    /// Unknown, expired or revoked.
    Invalid,
}

/// The `refresh_tokens` table.
#[derive(Debug, Clone)]
pub(crate) struct RefreshTokens {
    db: Db,
    keyring: Keyring,
    ttl: Duration,
    grace: Duration,
    /// Every revocation also ends the owner's access tokens.
    sessions: Sessions,
}

/// The owner's role, whether the address is verified, and the session version.
type Owner = (String, Option<i64>, i64);

/// A spent token's family and owner: family, user, role, verified at, session version, banned at.
type SpentOwner = (String, String, String, Option<i64>, i64, Option<i64>);

/// The owner's role as one value, for queries joining `users u`.
const OWNER_ROLE: &str = crate::accounts::role_sql!("u.");

fn version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl RefreshTokens {
    /// Tokens living `ttl`; a spent one is answered with its successor for `grace`.
    pub(crate) fn new(db: Db, keyring: Keyring, ttl: Duration, grace: Duration, sessions: Sessions) -> Self {
        Self { db, keyring, ttl, grace, sessions }
    }

    fn micros(d: Duration) -> i64 {
        i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
    }

    fn expiry(&self, now: i64) -> i64 {
        now.saturating_add(Self::micros(self.ttl))
    }

    /// Starts a new family for `user_id` (a sign-in) if its session version is still `sv`
    /// (the one the access token beside it carries); returns the token, or `None` when the
    /// user's sessions were ended meanwhile.
    pub(crate) async fn issue(&self, user_id: &str, sv: u64) -> Result<Option<String>, Problem> {
        let db = &self.db;
        let mut tx = db.begin_write().await?;
        if !self.sessions.hold(&mut tx, user_id, sv).await? {
            return Ok(None);
        }
        let token = self.issue_in(&mut tx, user_id).await?;
        db.commit(tx).await?;
        Ok(Some(token))
    }

    /// Starts a new family for `user_id` in `tx`; returns the token.
    pub(crate) async fn issue_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        user_id: &str,
    ) -> Result<String, DataError> {
        let db = &self.db;
        let token = generate();
        let now = to_micros(now());
        sqlx::query(db.statement(INSERT))
            .bind(hash(&token))
            .bind(Uuid::now_v7().to_string())
            .bind(user_id)
            .bind(self.expiry(now))
            .bind(now)
            .execute(db.on(&mut **tx))
            .await
            .map_err(DataError::from)?;
        Ok(token)
    }

    /// Spends `token` and issues its successor in the same family, or says why not.
    pub(crate) async fn rotate(&self, token: &str) -> Result<Rotation, Problem> {
        let token_hash = hash(token);
        // The owner's row is locked first, under the version read here, as every path that ends
        // sessions locks it first: a revocation running meanwhile either waits for this
        // rotation (and then revokes the successor too) or makes it try again.
        for _ in 0..3 {
            let db = &self.db;
            let mut conn = db.acquire().await?;
            let owner: Option<(String, i64)> = sqlx::query_as(db.statement(
                "SELECT r.user_id, u.session_version FROM refresh_tokens r JOIN users u ON u.id = r.user_id \
                 WHERE r.token_hash = $1",
            ))
            .bind(&token_hash)
            .fetch_optional(db.on(&mut *conn))
            .await
            .map_err(DataError::from)?;
            drop(conn);
            let Some((user_id, sv)) = owner else { return Ok(Rotation::Invalid) };
            let mut tx = db.begin_write().await?;
            if !self.sessions.hold(&mut tx, &user_id, version(sv)).await? {
                continue;
            }
            return self.rotate_in(tx, &token_hash).await;
        }
        Err(Problem::internal_error("refreshing a session", "the session version kept changing"))
    }

    /// [`RefreshTokens::rotate`] once the owner's row is held in `tx`.
    async fn rotate_in(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
        token_hash: &str,
    ) -> Result<Rotation, Problem> {
        let db = &self.db;
        let now = to_micros(now());
        let next = generate();
        let sealed = self.keyring.encrypt_str(&next)?;
        let token_hash = token_hash.to_owned();
        let spent = sqlx::query(db.statement(
            "UPDATE refresh_tokens SET used_at = $1, successor_ciphertext = $2 \
             WHERE token_hash = $3 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $4",
        ))
        .bind(now)
        .bind(&sealed)
        .bind(&token_hash)
        .bind(now)
        .execute(db.on(&mut *tx))
        .await
        .map_err(DataError::from)?
        .rows_affected();
        if spent == 1 {
            let owner: Option<SpentOwner> = sqlx::query_as(db.statement(&format!(
                "SELECT r.family_id, r.user_id, {OWNER_ROLE}, u.email_verified_at, u.session_version, u.banned_at \
                     FROM refresh_tokens r JOIN users u ON u.id = r.user_id WHERE r.token_hash = $1"
            )))
            .bind(&token_hash)
            .fetch_optional(db.on(&mut *tx))
            .await
            .map_err(DataError::from)?;
            // A banned account's tokens were revoked with the ban; never mint one regardless.
            let Some((family_id, user_id, role, verified_at, sv, None)) = owner else {
                return Ok(Rotation::Invalid);
            };
            sqlx::query(db.statement(INSERT))
                .bind(hash(&next))
                .bind(&family_id)
                .bind(&user_id)
                .bind(self.expiry(now))
                .bind(now)
                .execute(db.on(&mut *tx))
                .await
                .map_err(DataError::from)?;
            db.commit(tx).await?;
            return Ok(Rotation::Rotated {
                token: next,
                user_id,
                role,
                verified: verified_at.is_some(),
                sv: version(sv),
            });
        }
        drop(tx);
        // Not spendable. A concurrent winner has committed by now: its UPDATE held the row.
        let mut conn = db.acquire().await?;
        let found: Option<SpentRow> = sqlx::query_as(db.statement(
            "SELECT family_id, user_id, used_at, revoked_at, expires_at, successor_ciphertext \
             FROM refresh_tokens WHERE token_hash = $1",
        ))
        .bind(&token_hash)
        .fetch_optional(db.on(&mut *conn))
        .await
        .map_err(DataError::from)?;
        drop(conn);
        let Some((family_id, user_id, Some(used_at), revoked_at, expires_at, successor)) = found else {
            return Ok(Rotation::Invalid);
        };
        if expires_at <= now {
            return Ok(Rotation::Invalid);
        }
        let in_grace = revoked_at.is_none() && now.saturating_sub(used_at) <= Self::micros(self.grace);
        if in_grace
            && let Some(sealed) = successor
            && let Some((token, (role, verified_at, sv))) = self.live_successor(&sealed, now).await?
        {
            return Ok(Rotation::Repeated { token, user_id, role, verified: verified_at.is_some(), sv: version(sv) });
        }
        self.revoke_family(&family_id, &user_id).await?;
        Ok(Rotation::Reused { user_id, family_id })
    }

    /// The successor sealed in a spent row and its [`Owner`], when it can still be spent.
    async fn live_successor(&self, sealed: &str, now: i64) -> Result<Option<(String, Owner)>, DataError> {
        let token = match self.keyring.decrypt_str(sealed) {
            Ok(t) => t,
            Err(e) => {
                // Its data key left the keyring: the second use counts as reuse.
                tracing::warn!(error = %e, "cannot open a spent refresh token's successor");
                return Ok(None);
            }
        };
        let db = &self.db;
        let mut conn = db.acquire().await?;
        let owner: Option<Owner> = sqlx::query_as(db.statement(&format!(
            "SELECT {OWNER_ROLE}, u.email_verified_at, u.session_version FROM refresh_tokens r \
             JOIN users u ON u.id = r.user_id \
             WHERE r.token_hash = $1 AND r.used_at IS NULL AND r.revoked_at IS NULL AND r.expires_at > $2 \
             AND u.banned_at IS NULL"
        )))
        .bind(hash(&token))
        .bind(now)
        .fetch_optional(db.on(&mut *conn))
        .await
        .map_err(DataError::from)?;
        Ok(owner.map(|o| (token, o)))
    }

    /// Revokes the family of `token` (sign-out); returns its owner, or `None` when the token is
    /// unknown.
    pub(crate) async fn revoke(&self, token: &str) -> Result<Option<(String, String)>, Problem> {
        let db = &self.db;
        let mut conn = db.acquire().await?;
        let found: Option<(String, String)> =
            sqlx::query_as(db.statement("SELECT family_id, user_id FROM refresh_tokens WHERE token_hash = $1"))
                .bind(hash(token))
                .fetch_optional(db.on(&mut *conn))
                .await
                .map_err(DataError::from)?;
        drop(conn);
        let Some((family_id, user_id)) = found else { return Ok(None) };
        self.revoke_family(&family_id, &user_id).await?;
        Ok(Some((user_id, family_id)))
    }

    /// Revokes every family of `user_id` (sign out everywhere, a new password) in `tx` and ends
    /// its access tokens; returns how many refresh tokens were revoked and the new session
    /// version.
    pub(crate) async fn revoke_user(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        user_id: &str,
    ) -> Result<(u64, u64), Problem> {
        // The users row first (see `rotate`), then the tokens.
        let sv = self.sessions.end_all(tx, user_id).await?;
        let revoked = self.revoke_where(tx, "user_id", user_id).await?;
        Ok((revoked, sv))
    }

    /// Ends the access tokens of `user_id` in `tx` (a role change), keeping its refresh tokens:
    /// the next refresh gives tokens that say what the user may do now. Returns the new session
    /// version.
    pub(crate) async fn end_access(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        user_id: &str,
    ) -> Result<u64, Problem> {
        Ok(self.sessions.end_all(tx, user_id).await?)
    }

    /// The live sessions (families with an unspent, unrevoked, unexpired token) of `user_id`,
    /// most recently used first: `(family id, started, last used)` in microseconds.
    pub(crate) async fn sessions(&self, user_id: &str) -> Result<Vec<(String, i64, i64)>, DataError> {
        let db = &self.db;
        let now = to_micros(now());
        let mut conn = db.acquire().await?;
        let live: Vec<(String,)> = sqlx::query_as(db.statement(
            "SELECT family_id FROM refresh_tokens \
             WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2",
        ))
        .bind(user_id)
        .bind(now)
        .fetch_all(db.on(&mut *conn))
        .await
        .map_err(DataError::from)?;
        let mut out = Vec::with_capacity(live.len());
        for (family,) in live {
            let (started, last): (i64, i64) = sqlx::query_as(
                db.statement("SELECT MIN(created_at), MAX(created_at) FROM refresh_tokens WHERE family_id = $1"),
            )
            .bind(&family)
            .fetch_one(db.on(&mut *conn))
            .await
            .map_err(DataError::from)?;
            out.push((family, started, last));
        }
        out.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| b.0.cmp(&a.0)));
        Ok(out)
    }

    /// Revokes family `family_id` if it is `user_id`'s and live; whether it was.
    pub(crate) async fn revoke_session(&self, user_id: &str, family_id: &str) -> Result<bool, Problem> {
        let db = &self.db;
        let mut conn = db.acquire().await?;
        let owner: Option<(String,)> = sqlx::query_as(db.statement(
            "SELECT user_id FROM refresh_tokens WHERE family_id = $1 AND user_id = $2 AND revoked_at IS NULL LIMIT 1",
        ))
        .bind(family_id)
        .bind(user_id)
        .fetch_optional(db.on(&mut *conn))
        .await
        .map_err(DataError::from)?;
        drop(conn);
        if owner.is_none() {
            return Ok(false);
        }
        Ok(self.revoke_family(family_id, user_id).await? > 0)
    }

    /// Revokes a family of `user_id` and, when it was live, ends the user's access tokens (a
    /// token cannot say which family it came with).
    async fn revoke_family(&self, family_id: &str, user_id: &str) -> Result<u64, Problem> {
        let db = &self.db;
        let mut tx = db.begin_write().await?;
        // The users row first (see `rotate`); rolled back when the family was not live.
        self.sessions.end_all(&mut tx, user_id).await?;
        let revoked = self.revoke_where(&mut tx, "family_id", family_id).await?;
        if revoked == 0 {
            return Ok(0);
        }
        db.commit(tx).await?;
        self.sessions.wake();
        Ok(revoked)
    }

    /// Revokes the live tokens whose `column` (`user_id` or `family_id`) is `value`, wiping their
    /// sealed successors; returns how many.
    async fn revoke_where(
        &self,
        conn: &mut sqlx::AnyConnection,
        column: &'static str,
        value: &str,
    ) -> Result<u64, DataError> {
        let db = &self.db;
        let text = format!(
            "UPDATE refresh_tokens SET revoked_at = $1, successor_ciphertext = NULL \
             WHERE {column} = $2 AND revoked_at IS NULL"
        );
        let done = sqlx::query(db.statement(&text))
            .bind(to_micros(now()))
            .bind(value)
            .execute(db.on(&mut *conn))
            .await
            .map_err(DataError::from)?;
        Ok(done.rows_affected())
    }

    /// Sessions that can still be refreshed: the unspent, unrevoked, unexpired head of each
    /// token family.
    pub(crate) async fn active(&self) -> Result<i64, DataError> {
        let db = &self.db;
        let mut conn = db.acquire().await?;
        sqlx::query_scalar(db.statement(
            "SELECT COUNT(*) FROM refresh_tokens WHERE used_at IS NULL AND revoked_at IS NULL AND expires_at > $1",
        ))
        .bind(to_micros(now()))
        .fetch_one(db.on(&mut *conn))
        .await
        .map_err(DataError::from)
    }

    /// Deletes expired tokens (an expired token is refused the same whether or not its row
    /// exists) and wipes the successors of rows spent longer ago than the grace window; returns
    /// how many rows were deleted.
    pub(crate) async fn prune(&self) -> Result<u64, DataError> {
        let db = &self.db;
        let now = to_micros(now());
        let mut conn = db.acquire().await?;
        let done = sqlx::query(db.statement("DELETE FROM refresh_tokens WHERE expires_at <= $1"))
            .bind(now)
            .execute(db.on(&mut *conn))
            .await
            .map_err(DataError::from)?;
        sqlx::query(db.statement(
            "UPDATE refresh_tokens SET successor_ciphertext = NULL \
             WHERE successor_ciphertext IS NOT NULL AND used_at < $1",
        ))
        .bind(now.saturating_sub(Self::micros(self.grace)))
        .execute(db.on(&mut *conn))
        .await
        .map_err(DataError::from)?;
        Ok(done.rows_affected())
    }
}

/// A refresh-token row as the second use of a token reads it: family, owner, `used_at`,
/// `revoked_at`, `expires_at`, sealed successor.
type SpentRow = (String, String, Option<i64>, Option<i64>, i64, Option<String>);

const INSERT: &str = "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at, used_at, revoked_at, created_at) \
                      VALUES ($1, $2, $3, $4, NULL, NULL, $5)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed_to_hex() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        let h = hash(&a);
        assert_eq!(h.len(), 64);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
