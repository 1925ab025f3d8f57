//! The mail consumers, and [`Contacts`]: the addresses (encrypted) and preferences they read,
//! through `store::mail`.
//!
//! * [`ContactsHandler`] (`account.contact` on the accounts topic, with the inbox): keeps each
//!   user's address (encrypted with the notifier's keyring), name and verified flag.
//! * [`MailHandler`] (`mail.requested` on the mail topic, group `notifier-mail`): finds the
//!   address (the request's own for account-security mail; else the user's verified contact, if
//!   the user has not turned the kind off), renders, sends. No inbox transaction is held while
//!   the server talks: a handled request is recorded in `mail_log` afterwards, so a redelivery
//!   is not mailed again (a crash between sending and recording can send one twice: mail is at
//!   least once).

use crate::metrics::NotificationMetrics;
use cityevents_common::catalogue::{AccountContact, MAIL_PREFERENCES, MailRequested};
use cityevents_common::time::{now, to_micros};
use keel::data::{DataError, Db};
use keel::events::{Failure, Handler, Message};
use keel::security::crypto::{CryptoError, Keyring};
use lettre::message::Mailbox;
use uuid::Uuid;

use super::{Mailer, SendError, render};
use crate::store::Tx;
use crate::store::mail as store;
use crate::store::mail::SendClaim;
use std::time::Duration;

/// How long handled mail requests are remembered (redeliveries come much sooner).
pub(crate) const MAIL_LOG_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Contacts and mail preferences in the notifier's database.
#[derive(Clone)]
pub struct Contacts {
    db: Db,
    keyring: Keyring,
}

impl std::fmt::Debug for Contacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contacts").field("db", &self.db).finish_non_exhaustive()
    }
}

/// A user's contact, decrypted.
pub(crate) struct Contact {
    pub(crate) email: String,
    pub(crate) name: String,
    pub(crate) verified: bool,
}

impl Contacts {
    /// The store on `db`, encrypting addresses with `keyring`.
    pub fn new(db: Db, keyring: Keyring) -> Self {
        Self { db, keyring }
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// Inserts or replaces a contact, its address encrypted, in `tx` (an older version than the
    /// stored one changes nothing).
    async fn upsert(&self, tx: &mut Tx, c: &AccountContact) -> Result<(), Failure> {
        let ciphertext = self.keyring.encrypt_str(&c.email).map_err(|e| Failure::retry(&e))?;
        let row = store::ContactRow { email_ciphertext: ciphertext, name: c.name.clone(), verified: c.verified };
        store::upsert_contact(tx, &self.db, c.user_id, &row, c.version.unwrap_or(0))
            .await
            .map_err(|e| Failure::transient(&e))
    }

    /// The contact of `user`, if auth told of one.
    pub(crate) async fn contact(&self, user: Uuid) -> Result<Option<Contact>, Failure> {
        let row = store::contact(&self.db, user).await.map_err(|e| Failure::transient(&e))?;
        let Some(row) = row else { return Ok(None) };
        let email = self.keyring.decrypt_str(&row.email_ciphertext).map_err(|e| match &e {
            // A rotated key this instance has not read yet arrives with its next reread.
            CryptoError::UnknownKey(kid) if kid.starts_with(keel::security::ROTATED_KID_PREFIX) => Failure::retry(&e),
            // A configured key gone from the keyring will not come back by retrying.
            _ => Failure::permanent(e),
        })?;
        Ok(Some(Contact { email, name: row.name, verified: row.verified }))
    }

    /// Each preference of `user`: whether mail of that kind is sent (on unless turned off).
    pub(crate) async fn preferences(&self, user: &str) -> Result<Vec<(&'static str, bool)>, DataError> {
        let rows = store::preferences(&self.db, user).await?;
        Ok(MAIL_PREFERENCES
            .iter()
            .map(|k| (*k, rows.iter().find(|(kind, _)| kind == k).is_none_or(|(_, on)| *on)))
            .collect())
    }

    /// Sets the given preferences of `user` (kinds from [`MAIL_PREFERENCES`]), all or none.
    pub(crate) async fn set_preferences(&self, user: &str, changes: &[(&str, bool)]) -> Result<(), DataError> {
        let db = &self.db;
        let mut tx = db.begin_write().await?;
        for (kind, on) in changes {
            store::set_preference(&mut tx, db, user, kind, *on).await?;
        }
        db.commit(tx).await?;
        Ok(())
    }

    async fn handled(&self, message_id: &str) -> Result<bool, Failure> {
        store::logged(&self.db, message_id).await.map_err(|e| Failure::transient(&e))
    }

    /// Records `message_id` as being sent by this instance for `lease` (see
    /// [`store::claim_send`]).
    async fn claim_send(&self, message_id: &str, template: &str, lease: Duration) -> Result<SendClaim, Failure> {
        let at = to_micros(now());
        let until = at.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        store::claim_send(&self.db, message_id, template, at, until).await.map_err(|e| Failure::transient(&e))
    }

    async fn record(&self, message_id: &str, template: &str, outcome: &str) -> Result<(), Failure> {
        store::log(&self.db, message_id, template, outcome).await.map_err(|e| Failure::transient(&e))
    }

    /// Forgets handled requests older than [`MAIL_LOG_RETENTION`]; returns how many.
    pub(crate) async fn prune(&self) -> Result<u64, DataError> {
        let cutoff = to_micros(now()).saturating_sub(i64::try_from(MAIL_LOG_RETENTION.as_micros()).unwrap_or(i64::MAX));
        store::prune_log(&self.db, cutoff).await
    }
}

/// Handles `account.contact` on the accounts topic (with the inbox: applied once). Other types
/// are acknowledged and ignored.
#[derive(Debug, Clone)]
pub struct ContactsHandler {
    contacts: Contacts,
}

impl ContactsHandler {
    /// A handler writing to `contacts`.
    pub fn new(contacts: Contacts) -> Self {
        Self { contacts }
    }
}

impl Handler for ContactsHandler {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        if msg.envelope().ty != <AccountContact as keel::events::Event>::TYPE {
            return Ok(());
        }
        let c = msg.decode::<AccountContact>()?;
        let tx = msg.tx().ok_or_else(|| Failure::permanent("the consumer has no inbox"))?;
        self.contacts.upsert(tx, &c).await
    }
}

/// Handles `mail.requested` on the mail topic: renders and sends.
#[derive(Debug, Clone)]
pub struct MailHandler {
    contacts: Contacts,
    mailer: Mailer,
    metrics: NotificationMetrics,
}

impl MailHandler {
    /// A handler reading `contacts` and sending with `mailer`.
    pub fn new(contacts: Contacts, mailer: Mailer) -> Self {
        Self { contacts, mailer, metrics: NotificationMetrics::none() }
    }

    /// Counts each mail sent in `metrics` (`channel="email"`).
    #[must_use]
    pub fn metrics(mut self, metrics: NotificationMetrics) -> Self {
        self.metrics = metrics;
        self
    }
}

impl Handler for MailHandler {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        let req = msg.decode::<MailRequested>()?;
        let id = msg.envelope().id.clone();
        let template = req.mail.template();
        if self.contacts.handled(&id).await? {
            return Ok(());
        }
        let contact =
            if req.to.is_some() && req.name.is_some() { None } else { self.contacts.contact(req.user_id).await? };
        let (to, name) = match (&req.to, contact) {
            (Some(to), c) => (to.clone(), req.name.clone().or(c.map(|c| c.name)).unwrap_or_default()),
            // Mail other than account security goes only to an address its owner proved.
            (None, Some(c)) if c.verified => (c.email, req.name.clone().unwrap_or(c.name)),
            (None, _) => return self.skip(&id, template, "no verified address").await,
        };
        if let Some(kind) = req.mail.preference() {
            let prefs = self.contacts.preferences(&req.user_id.to_string()).await?;
            if prefs.iter().any(|(k, on)| *k == kind && !on) {
                return self.skip(&id, template, "turned off").await;
            }
        }
        let to: Mailbox = match to.parse() {
            Ok(m) => m,
            Err(_) => {
                self.mailer.count(template, "rejected");
                self.refused(&id, template).await;
                return Err(Failure::permanent(format!("{template}: the address is not a mailbox")));
            }
        };
        // The event as the notifier knows it now (what, when, where, and its calendar file).
        let event = match req.mail.event_id() {
            Some(event_id) => crate::store::activity::event_facts(self.contacts.db(), event_id)
                .await
                .map_err(|e| Failure::transient(&e))?,
            None => None,
        };
        // A calendar invitation only to who holds a seat as the notifier knows it now.
        let going = match req.mail.event_id() {
            Some(event_id) if event.is_some() => {
                crate::store::activity::holds_seat(self.contacts.db(), event_id, req.user_id)
                    .await
                    .map_err(|e| Failure::transient(&e))?
            }
            _ => false,
        };
        let rendered =
            render(&self.mailer, to, &name, &req.mail, &id, event.as_ref(), going).map_err(Failure::permanent)?;
        // Recorded as being sent before the SMTP transaction: another instance handed the same
        // request (a redelivery after this one's ack was lost) sends it only once the lease ends.
        match self.contacts.claim_send(&id, template, self.mailer.send_bound()).await? {
            SendClaim::Claimed => {}
            SendClaim::Done => return Ok(()),
            SendClaim::Held(left) => {
                let wait = Duration::from_micros(u64::try_from(left).unwrap_or(0)).max(Duration::from_secs(1));
                return Err(Failure::retry_after(format!("{template}: being sent by another instance"), wait));
            }
        }
        let result = self.mailer.send(&rendered.message, &rendered.link).await;
        if result.is_err() {
            // Not accepted: a retry may send it at once. (If the record stays, its lease ends.)
            if let Err(e) = store::unclaim(self.contacts.db(), &id).await {
                tracing::warn!(error = %e, template, "cannot drop the record of a mail being sent");
            }
        }
        match result {
            Ok(()) => {
                self.mailer.count(template, "sent");
                self.metrics.email(template);
                tracing::debug!(template, user_id = %req.user_id, "mail sent");
                store::sent(self.contacts.db(), &id).await.map_err(|e| Failure::transient(&e))
            }
            Err(SendError::Permanent(e)) => {
                self.mailer.count(template, "rejected");
                self.refused(&id, template).await;
                Err(Failure::permanent(format!("{template}: {e}")))
            }
            Err(e @ SendError::Unavailable(_)) => {
                self.mailer.count(template, "failed");
                Err(Failure::unavailable(e))
            }
            Err(e @ SendError::Transient(_)) => {
                self.mailer.count(template, "failed");
                Err(Failure::retry(e))
            }
        }
    }
}

impl MailHandler {
    /// Counts a refusal for the operator page; the request still goes to the DLQ if this
    /// write fails (it is a figure, not the record of the message).
    async fn refused(&self, id: &str, template: &str) {
        if let Err(e) = store::failed(self.contacts.db(), id, template).await {
            tracing::warn!(error = %e, template, "cannot record a refused mail for the operator page");
        }
    }

    async fn skip(&self, id: &str, template: &str, why: &str) -> Result<(), Failure> {
        self.mailer.count(template, "skipped");
        tracing::debug!(template, why, "mail not sent");
        self.contacts.record(id, template, "skipped").await
    }
}
