//! What auth tells the notifier: each account's contact (`account.contact`) and the mail an
//! account flow needs (`mail.requested`), both through the outbox in the transaction of the
//! change; and the single-use tokens those mails carry.
//!
//! * **Account tokens** are 256-bit random strings, stored only as their SHA-256 with their
//!   purpose and expiry (`account_tokens`). Issuing one spends every earlier unused token of the
//!   same purpose for the account; spending one is a single conditional `UPDATE`, so of two
//!   concurrent uses exactly one wins.
//! * **Contacts**: `users.contact_sent_at` records when the address was last announced. Accounts
//!   that have none (made before the mail channel) are announced by the `account-contacts`
//!   worker, a page at a time.

use std::time::Duration;

use cityevents_common::catalogue::{ACCOUNTS_TOPIC, AccountContact, MAIL_TOPIC, Mail, MailRequested};
use cityevents_common::time::{from_micros, now, to_micros};
use keel::data::{DataError, Db};
use keel::events::outbox::Outbox;
use sqlx::{Any, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::accounts::Accounts;
use crate::store::mail as store;
use crate::tokens::{generate, hash};
use keel::http::Problem;

/// At most one mail about a sign-up that made no account, per address, in this time.
pub(crate) const NOTICE_EVERY: Duration = Duration::from_secs(3600);

/// What an account token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Proves the address (`POST /auth/verify-email`).
    Verify,
    /// Sets a new password (`POST /auth/password-reset`).
    Reset,
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Reset => "reset",
        }
    }
}

/// Account tokens and the outbox that carries contacts and mail requests.
#[derive(Clone)]
pub(crate) struct AccountMail {
    db: Db,
    outbox: Outbox,
    verify_ttl: Duration,
    reset_ttl: Duration,
}

impl AccountMail {
    pub(crate) fn new(db: Db, outbox: Outbox, verify_ttl: Duration, reset_ttl: Duration) -> Self {
        Self { db, outbox, verify_ttl, reset_ttl }
    }

    fn ttl(&self, purpose: Purpose) -> Duration {
        match purpose {
            Purpose::Verify => self.verify_ttl,
            Purpose::Reset => self.reset_ttl,
        }
    }

    /// Issues a token for `user_id` in `tx`, spending the account's earlier unused ones of the
    /// same purpose; returns it (in clear) and its expiry.
    pub(crate) async fn issue(
        &self,
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
        purpose: Purpose,
    ) -> Result<(String, OffsetDateTime), DataError> {
        let now = to_micros(now());
        self.revoke(tx, user_id, purpose).await?;
        let token = generate();
        let expires = now.saturating_add(i64::try_from(self.ttl(purpose).as_micros()).unwrap_or(i64::MAX));
        store::insert_token(&self.db, tx, &hash(&token), user_id, purpose.label(), now, expires).await?;
        Ok((token, from_micros(expires)))
    }

    /// Ends the account's unused tokens of `purpose` in `tx`; returns how many. A mailed link must
    /// not outlive a new one, a password change or reset, signing out everywhere, or a ban.
    pub(crate) async fn revoke(
        &self,
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
        purpose: Purpose,
    ) -> Result<u64, DataError> {
        store::spend_unused(&self.db, tx, user_id, purpose.label(), to_micros(now())).await
    }

    /// How many tokens of `purpose` were issued for the account in the last `within` (spent or
    /// not: [`AccountMail::prune`] keeps them a day past their expiry, longer than any window
    /// asked here).
    pub(crate) async fn issued_within(
        &self,
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
        purpose: Purpose,
        within: Duration,
    ) -> Result<u64, DataError> {
        let since = to_micros(now()).saturating_sub(i64::try_from(within.as_micros()).unwrap_or(i64::MAX));
        let n = store::count_since(&self.db, tx, user_id, purpose.label(), since).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Spends `token` for `purpose` in `tx`: its account's id, or `None` when it is unknown,
    /// used, replaced or expired.
    pub(crate) async fn spend(
        &self,
        tx: &mut Transaction<'static, Any>,
        token: &str,
        purpose: Purpose,
    ) -> Result<Option<String>, DataError> {
        let now = to_micros(now());
        let token_hash = hash(token);
        if !store::spend(&self.db, tx, &token_hash, purpose.label(), now).await? {
            return Ok(None);
        }
        store::token_owner(&self.db, tx, &token_hash).await
    }

    /// The account `token` was mailed to for `purpose`, while it can still be spent (nothing
    /// changes).
    pub(crate) async fn owner(&self, token: &str, purpose: Purpose) -> Result<Option<String>, DataError> {
        store::live_owner(&self.db, &hash(token), purpose.label(), to_micros(now())).await
    }

    /// Enqueues `account.contact` for the account, with its next version, and records that it
    /// was sent.
    pub(crate) async fn contact(
        &self,
        tx: &mut Transaction<'static, Any>,
        contact: &AccountContact,
    ) -> Result<(), Problem> {
        let version = store::next_contact_version(&self.db, tx, &contact.user_id.to_string(), to_micros(now())).await?;
        let contact = AccountContact { version, ..contact.clone() };
        self.outbox.enqueue_event(tx, ACCOUNTS_TOPIC, &contact).await?;
        Ok(())
    }

    /// Enqueues a mail for `user_id` at `to`.
    pub(crate) async fn mail(
        &self,
        tx: &mut Transaction<'static, Any>,
        user_id: Uuid,
        to: &str,
        name: &str,
        mail: Mail,
    ) -> Result<(), Problem> {
        let request = MailRequested { user_id, to: Some(to.to_owned()), name: Some(name.to_owned()), mail };
        self.outbox.enqueue_event(tx, MAIL_TOPIC, &request).await?;
        Ok(())
    }

    /// Tells the relay to publish now (after a commit).
    pub(crate) fn wake(&self) {
        self.outbox.wake();
    }

    /// Deletes account tokens that expired more than a day ago and registration notices older
    /// than a day; returns how many rows.
    pub(crate) async fn prune(&self) -> Result<u64, DataError> {
        let cutoff = to_micros(now()).saturating_sub(86_400_000_000);
        store::prune(&self.db, cutoff).await
    }

    /// Whether the address with blind index `bidx` may be mailed now about a sign-up that made
    /// no account: at most once per [`NOTICE_EVERY`]. Claims the slot in `tx`.
    pub(crate) async fn claim_notice(&self, tx: &mut Transaction<'static, Any>, bidx: &str) -> Result<bool, DataError> {
        store::ensure_notice(&self.db, tx, bidx).await?;
        let now = to_micros(now());
        let every = i64::try_from(NOTICE_EVERY.as_micros()).unwrap_or(i64::MAX);
        store::claim_notice(&self.db, tx, bidx, now, now.saturating_sub(every)).await
    }

    /// Announces the contacts of accounts that never had theirs sent, a page at a time;
    /// returns how many.
    pub(crate) async fn announce_missing(&self, accounts: &Accounts) -> Result<u64, Problem> {
        let db = &self.db;
        let mut announced = 0_u64;
        loop {
            let rows = accounts.without_contact(100).await?;
            if rows.is_empty() {
                if announced > 0 {
                    self.wake();
                }
                return Ok(announced);
            }
            let mut tx = db.begin_write().await?;
            for row in &rows {
                if Uuid::parse_str(&row.id).is_ok() {
                    self.contact(&mut tx, &contact_of(&accounts.user(row)?)).await?;
                } else {
                    // A broken id cannot be announced: never look at it again.
                    store::contact_sent(db, &mut tx, &row.id, to_micros(now())).await?;
                }
            }
            db.commit(tx).await?;
            announced += rows.len() as u64;
        }
    }
}

/// The `account.contact` of a user.
pub(crate) fn contact_of(user: &crate::accounts::User) -> AccountContact {
    AccountContact {
        user_id: user.id,
        email: user.email.clone(),
        name: user.name.clone(),
        verified: user.email_verified,
        // Given when it is sent (`AccountMail::contact`).
        version: None,
    }
}
