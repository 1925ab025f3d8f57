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
use crate::store::tokens::{self as store, NewToken, Owner};
use crate::whence::Whence;
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
        /// Its family (the session's id).
        family: String,
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
        /// Its family (the session's id).
        family: String,
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
    pub(crate) async fn issue(
        &self,
        user_id: &str,
        sv: u64,
        whence: &Whence,
    ) -> Result<Option<(String, String)>, Problem> {
        let db = &self.db;
        let mut tx = db.begin_write().await?;
        if !self.sessions.hold(&mut tx, user_id, sv).await? {
            return Ok(None);
        }
        let issued = self.issue_in(&mut tx, user_id, whence).await?;
        db.commit(tx).await?;
        Ok(Some(issued))
    }

    /// Starts a new family for `user_id` in `tx`, recording where it came from; returns the
    /// token and the family's id.
    pub(crate) async fn issue_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        user_id: &str,
        whence: &Whence,
    ) -> Result<(String, String), DataError> {
        let token = generate();
        let now = to_micros(now());
        let family_id = Uuid::now_v7().to_string();
        let new = NewToken {
            token_hash: &hash(&token),
            family_id: &family_id,
            user_id,
            expires_at: self.expiry(now),
            created_at: now,
        };
        store::insert(&self.db, tx, &new).await?;
        store::insert_whence(&self.db, tx, &family_id, user_id, whence, now).await?;
        Ok((token, family_id))
    }

    /// Spends `token` and issues its successor in the same family, or says why not.
    pub(crate) async fn rotate(&self, token: &str) -> Result<Rotation, Problem> {
        let token_hash = hash(token);
        // The owner's row is locked first, under the version read here, as every path that ends
        // sessions locks it first: a revocation running meanwhile either waits for this
        // rotation (and then revokes the successor too) or makes it try again.
        for _ in 0..3 {
            let db = &self.db;
            let Some((user_id, sv)) = store::owner_version(db, &token_hash).await? else {
                return Ok(Rotation::Invalid);
            };
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
        if store::spend(db, &mut tx, token_hash, &sealed, now).await? {
            // A banned account's tokens were revoked with the ban; never mint one regardless.
            let Some(spent) = store::spent_owner(db, &mut tx, token_hash).await?.filter(|s| s.banned_at.is_none())
            else {
                return Ok(Rotation::Invalid);
            };
            let new = NewToken {
                token_hash: &hash(&next),
                family_id: &spent.family_id,
                user_id: &spent.user_id,
                expires_at: self.expiry(now),
                created_at: now,
            };
            store::insert(db, &mut tx, &new).await?;
            db.commit(tx).await?;
            let owner = spent.owner;
            return Ok(Rotation::Rotated {
                family: spent.family_id.clone(),
                token: next,
                user_id: spent.user_id,
                role: owner.role,
                verified: owner.email_verified_at.is_some(),
                sv: version(owner.session_version),
            });
        }
        drop(tx);
        // Not spendable. A concurrent winner has committed by now: its UPDATE held the row.
        let Some(found) = store::get(db, token_hash).await? else { return Ok(Rotation::Invalid) };
        let Some(used_at) = found.used_at else { return Ok(Rotation::Invalid) };
        if found.expires_at <= now {
            return Ok(Rotation::Invalid);
        }
        let (family_id, user_id) = (found.family_id, found.user_id);
        let in_grace = found.revoked_at.is_none() && now.saturating_sub(used_at) <= Self::micros(self.grace);
        if in_grace
            && let Some(sealed) = found.successor_ciphertext
            && let Some((token, owner)) = self.live_successor(&sealed, now).await?
        {
            let (role, verified, sv) = (owner.role, owner.email_verified_at.is_some(), version(owner.session_version));
            return Ok(Rotation::Repeated { family: family_id, token, user_id, role, verified, sv });
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
        let owner = store::live_owner(&self.db, &hash(&token), now).await?;
        Ok(owner.map(|o| (token, o)))
    }

    /// Revokes the family of `token` (sign-out); returns its owner, or `None` when the token is
    /// unknown.
    pub(crate) async fn revoke(&self, token: &str) -> Result<Option<(String, String)>, Problem> {
        let Some((family_id, user_id)) = store::family_of(&self.db, &hash(token)).await? else { return Ok(None) };
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
        let revoked = store::revoke_user(&self.db, tx, user_id, to_micros(now())).await?;
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
    pub(crate) async fn sessions(&self, user_id: &str) -> Result<Vec<store::LiveFamily>, DataError> {
        let mut out = store::live_families(&self.db, user_id, to_micros(now())).await?;
        out.sort_by(|a, b| b.last.cmp(&a.last).then_with(|| b.family_id.cmp(&a.family_id)));
        Ok(out)
    }

    /// Where family `family_id` was started from, if that was recorded.
    pub(crate) async fn whence(&self, family_id: &str) -> Result<Option<Whence>, DataError> {
        store::whence(&self.db, family_id).await
    }

    /// Revokes family `family_id` if it is `user_id`'s and live; whether it was.
    pub(crate) async fn revoke_session(&self, user_id: &str, family_id: &str) -> Result<bool, Problem> {
        if !store::is_unrevoked_family_of(&self.db, family_id, user_id).await? {
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
        let revoked = store::revoke_family(db, &mut tx, family_id, to_micros(now())).await?;
        if revoked == 0 {
            return Ok(0);
        }
        db.commit(tx).await?;
        self.sessions.wake();
        Ok(revoked)
    }

    /// Sessions that can still be refreshed: the unspent, unrevoked, unexpired head of each
    /// token family.
    pub(crate) async fn active(&self) -> Result<i64, DataError> {
        store::count_live(&self.db, to_micros(now())).await
    }

    /// Deletes expired tokens (an expired token is refused the same whether or not its row
    /// exists) and wipes the successors of rows spent longer ago than the grace window; returns
    /// how many rows were deleted.
    pub(crate) async fn prune(&self) -> Result<u64, DataError> {
        let now = to_micros(now());
        store::prune(&self.db, now, now.saturating_sub(Self::micros(self.grace))).await
    }
}

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
