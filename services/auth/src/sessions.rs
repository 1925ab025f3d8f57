//! Session versions: how an ended session stops every access token, not only refresh tokens.
//!
//! Access tokens carry the user's `users.session_version` as `sv`. Ending sessions (sign-out,
//! sign-out everywhere, a password reset or change, a role change, a refresh family revoked for
//! reuse) raises it and, in the same transaction, puts `session.revoked` in the outbox for
//! [`SESSIONS_TOPIC`]. Every service that verifies tokens follows that topic
//! ([`cityevents_common::sessions`]) and refuses tokens with a lower `sv` once the message
//! arrives. A follower that (re)subscribes sends `session.sync_requested`; auth answers by
//! repeating the raises recent enough for an access token from before them to be unexpired.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

use cityevents_common::catalogue::{SESSIONS_TOPIC, SessionRevoked, SessionSyncRequested};
use cityevents_common::time::{now, to_micros};
use keel::data::{DataError, Db};
use keel::events::Envelope;
use keel::events::consumer::{Failure, Handler, Message};
use keel::events::outbox::{Outbox, OutboxError};
use sqlx::{Any, Transaction};
use uuid::Uuid;

use crate::store::sessions as store;

/// At most this many raises are repeated for one sync request (the most recent ones).
const SYNC_LIMIT: u32 = 10_000;

/// Raises session versions and repeats recent raises.
#[derive(Debug, Clone)]
pub(crate) struct Sessions {
    db: Db,
    outbox: Outbox,
    /// How far back a sync request reaches: the access-token lifetime plus its leeway.
    window: Duration,
    /// When the last repeat began: a request sent before it is answered by it already.
    last_repeat: Arc<Mutex<Option<OffsetDateTime>>>,
}

/// Clock difference between services tolerated when coalescing sync requests.
const SKEW: time::Duration = time::Duration::seconds(2);

impl Sessions {
    pub(crate) fn new(db: Db, outbox: Outbox, window: Duration) -> Self {
        Self { db, outbox, window, last_repeat: Arc::new(Mutex::new(None)) }
    }

    /// Whether a sync request sent at `sent` is already answered by a repeat begun after it.
    fn answered(&self, sent: OffsetDateTime) -> bool {
        let last = *self.last_repeat.lock().unwrap_or_else(PoisonError::into_inner);
        last.is_some_and(|began| began > sent + SKEW)
    }

    /// Ends every access token of `user_id` issued so far, in `tx`: raises its session version
    /// and announces the new one. Returns it (new tokens carry it).
    pub(crate) async fn end_all(&self, tx: &mut Transaction<'static, Any>, user_id: &str) -> Result<u64, OutboxError> {
        store::raise(&self.db, tx, user_id, to_micros(now())).await?;
        let version = self.version_on(tx, user_id).await?;
        let revoked = SessionRevoked { user_id: parse(user_id)?, version };
        self.outbox.enqueue_event(tx, SESSIONS_TOPIC, &revoked).await?;
        Ok(version)
    }

    /// Locks the user's row in `tx` and says whether its session version is still `expected`:
    /// a refresh token is only issued under the version the access token beside it carries, so
    /// one issued during a revocation cannot outlive it. The lock is the first one every path
    /// that ends or starts sessions takes (the users row, then refresh tokens).
    pub(crate) async fn hold(
        &self,
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
        expected: u64,
    ) -> Result<bool, DataError> {
        let v = store::version_locked(&self.db, tx, user_id).await?;
        Ok(v.is_some_and(|v| u64::try_from(v).ok() == Some(expected)))
    }

    /// Has the outbox relay publish now (after a commit that ended sessions).
    pub(crate) fn wake(&self) {
        self.outbox.wake();
    }

    /// The current session version of `user_id` (0 for an unknown user).
    pub(crate) async fn version_on(&self, tx: &mut Transaction<'static, Any>, user_id: &str) -> Result<u64, DataError> {
        let v = store::version(&self.db, tx, user_id).await?;
        Ok(v.map_or(0, |v| u64::try_from(v).unwrap_or(0)))
    }

    /// Announces again, through the outbox, every raise within the window; returns how many.
    pub(crate) async fn repeat_recent(&self) -> Result<usize, OutboxError> {
        let db = &self.db;
        *self.last_repeat.lock().unwrap_or_else(PoisonError::into_inner) = Some(OffsetDateTime::now_utc());
        let since = to_micros(now()).saturating_sub(i64::try_from(self.window.as_micros()).unwrap_or(i64::MAX));
        let mut tx = db.begin_write().await?;
        let rows = store::raised_since(db, &mut tx, since, SYNC_LIMIT).await?;
        if rows.len() >= SYNC_LIMIT as usize {
            tracing::warn!(
                limit = SYNC_LIMIT,
                "more users ended sessions within the token lifetime than a sync repeats: a service \
                 (re)subscribing now may accept the oldest of those tokens until they expire"
            );
        }
        let mut envelopes = Vec::with_capacity(rows.len());
        for raise in &rows {
            let revoked =
                SessionRevoked { user_id: parse(&raise.user_id)?, version: u64::try_from(raise.version).unwrap_or(0) };
            envelopes.push(Envelope::new(cityevents_common::services::AUTH.name, &revoked)?);
        }
        if !envelopes.is_empty() {
            self.outbox.enqueue_all(&mut tx, SESSIONS_TOPIC, &envelopes).await?;
        }
        db.commit(tx).await?;
        self.outbox.wake();
        Ok(envelopes.len())
    }
}

impl Sessions {
    /// [`Sessions::repeat_recent`] in a task of its own (for a synchronous callback).
    pub(crate) fn repeat_in_background(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let this = self.clone();
        rt.spawn(async move {
            if !this.db.is_available() {
                tracing::info!(
                    "database not available yet: recent session revocations are repeated on the next sync request"
                );
                return;
            }
            if let Err(e) = this.repeat_recent().await {
                tracing::warn!(error = %e, "cannot repeat recent session revocations");
            }
        });
    }
}

fn parse(id: &str) -> Result<Uuid, OutboxError> {
    Uuid::parse_str(id).map_err(|_| OutboxError::Invalid(format!("users.id `{id}` is not a UUID")))
}

/// Answers `session.sync_requested` (consumer group `auth-sessions`); ignores the rest of the
/// topic (auth's own raises).
#[derive(Debug, Clone)]
pub(crate) struct SyncHandler(pub(crate) Sessions);

impl Handler for SyncHandler {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        if msg.envelope().ty != <SessionSyncRequested as keel::events::Event>::TYPE {
            return Ok(());
        }
        let request: SessionSyncRequested = msg.decode()?;
        let sent = OffsetDateTime::parse(&msg.envelope().time, &time::format_description::well_known::Rfc3339).ok();
        if sent.is_some_and(|t| self.0.answered(t)) {
            tracing::debug!(from = %request.service, "sync request already answered by a later repeat");
            return Ok(());
        }
        match self.0.repeat_recent().await {
            Ok(n) => {
                tracing::debug!(from = %request.service, repeated = n, "session versions repeated for a follower");
                Ok(())
            }
            Err(e) => Err(Failure::retry(e)),
        }
    }
}
