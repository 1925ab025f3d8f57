//! Sign-in lockout per e-mail blind index, for existing and unknown addresses alike.
//!
//! A row in `login_failures` counts failures since `window_started_at`; a failure after the
//! window has passed starts a new window. An attempt is counted before its password is checked
//! (so concurrent attempts cannot exceed the budget); reaching `max_failures` sets `locked_until`
//! and clears the count, so after the lock a fresh window begins. While locked, attempts are
//! refused before any password check and are not counted. A success deletes the row.
//!
//! Every step is a single-row statement inside one transaction that starts with a write, so
//! concurrent failures serialize on the row (and SQLite takes its write lock up front instead
//! of failing a read-to-write upgrade).

use std::time::Duration;

use keel::data::{Backend, DataError, Db};

use crate::accounts::sql;
use crate::config::LockoutConfig;
use crate::error::Observe;
use cityevents_common::time::{now, to_micros};

/// Whether an address may try to sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// It may.
    Open,
    /// It is locked; retry after this many seconds.
    Locked(u64),
}

/// The lockout rules over `login_failures`.
#[derive(Debug, Clone)]
pub(crate) struct Lockout {
    db: Db,
    cfg: LockoutConfig,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// `Locked`, rounded up: a client that waits exactly this long is let in.
fn locked_for(until: i64, now: i64) -> Gate {
    let secs = (until - now).div_euclid(1_000_000) + 1;
    Gate::Locked(u64::try_from(secs).unwrap_or(1))
}

impl Lockout {
    pub(crate) fn new(db: Db, cfg: LockoutConfig) -> Self {
        Self { db, cfg }
    }

    /// Starts a sign-in attempt for `bidx`: refused while locked; otherwise counted **before**
    /// the password is checked, so concurrent attempts cannot all pass the gate and together
    /// try more than `max_failures` passwords. A success then deletes the count ([`Self::reset`]).
    pub(crate) async fn attempt(&self, bidx: &str) -> Result<Gate, DataError> {
        let db = &self.db;
        let now = to_micros(now());
        let window_start = now.saturating_sub(micros(self.cfg.window));
        let until = now.saturating_add(micros(self.cfg.duration));
        let max = i64::from(self.cfg.max_failures);
        let mut tx = db.begin().await?;
        let ensure = match db.backend() {
            Backend::MySql => {
                "INSERT INTO login_failures (email_bidx, failures, window_started_at, locked_until) \
                 VALUES ($1, 0, $2, NULL) ON DUPLICATE KEY UPDATE email_bidx = email_bidx"
            }
            Backend::Postgres | Backend::Sqlite => {
                "INSERT INTO login_failures (email_bidx, failures, window_started_at, locked_until) \
                 VALUES ($1, 0, $2, NULL) ON CONFLICT (email_bidx) DO NOTHING"
            }
        };
        sqlx::query(sql(db, ensure)).bind(bidx).bind(now).execute(&mut *tx).await.obs(db)?;
        // Locks the row whatever its state, so the read below sees every concurrent attempt.
        sqlx::query(sql(db, "UPDATE login_failures SET failures = failures WHERE email_bidx = $1"))
            .bind(bidx)
            .execute(&mut *tx)
            .await
            .obs(db)?;
        sqlx::query(sql(
            db,
            "UPDATE login_failures SET failures = 0, window_started_at = $1 \
             WHERE email_bidx = $2 AND window_started_at <= $3 AND (locked_until IS NULL OR locked_until <= $4)",
        ))
        .bind(now)
        .bind(bidx)
        .bind(window_start)
        .bind(now)
        .execute(&mut *tx)
        .await
        .obs(db)?;
        let (failures, locked_until): (i64, Option<i64>) =
            sqlx::query_as(sql(db, "SELECT failures, locked_until FROM login_failures WHERE email_bidx = $1"))
                .bind(bidx)
                .fetch_one(&mut *tx)
                .await
                .obs(db)?;
        let gate = match locked_until {
            Some(t) if t > now => locked_for(t, now),
            _ if failures >= max => {
                // Every allowed attempt of the window is taken (some may still be in flight).
                sqlx::query(sql(
                    db,
                    "UPDATE login_failures SET locked_until = $1, failures = 0, window_started_at = $2 \
                     WHERE email_bidx = $3",
                ))
                .bind(until)
                .bind(now)
                .bind(bidx)
                .execute(&mut *tx)
                .await
                .obs(db)?;
                locked_for(until, now)
            }
            _ => {
                sqlx::query(sql(db, "UPDATE login_failures SET failures = failures + 1 WHERE email_bidx = $1"))
                    .bind(bidx)
                    .execute(&mut *tx)
                    .await
                    .obs(db)?;
                Gate::Open
            }
        };
        tx.commit().await.obs(db)?;
        Ok(gate)
    }

    /// Records that the attempt [`Self::attempt`] counted failed; `true` when the address is
    /// now locked (this was the last allowed failure).
    pub(crate) async fn record_failure(&self, bidx: &str) -> Result<bool, DataError> {
        let db = &self.db;
        let now = to_micros(now());
        let until = now.saturating_add(micros(self.cfg.duration));
        let mut conn = db.acquire().await?;
        let locked = sqlx::query(sql(
            db,
            "UPDATE login_failures SET locked_until = $1, failures = 0, window_started_at = $2 \
             WHERE email_bidx = $3 AND failures >= $4 AND (locked_until IS NULL OR locked_until <= $5)",
        ))
        .bind(until)
        .bind(now)
        .bind(bidx)
        .bind(i64::from(self.cfg.max_failures))
        .bind(now)
        .execute(&mut *conn)
        .await
        .obs(db)?
        .rows_affected()
            > 0;
        Ok(locked)
    }

    /// Forgets the failures of `bidx` (after a successful sign-in).
    pub(crate) async fn reset(&self, bidx: &str) -> Result<(), DataError> {
        let db = &self.db;
        let mut conn = db.acquire().await?;
        sqlx::query(sql(db, "DELETE FROM login_failures WHERE email_bidx = $1"))
            .bind(bidx)
            .execute(&mut *conn)
            .await
            .obs(db)?;
        Ok(())
    }

    /// Deletes rows whose window and lock are both over; returns how many.
    pub(crate) async fn prune(&self) -> Result<u64, DataError> {
        let db = &self.db;
        let now = to_micros(now());
        let mut conn = db.acquire().await?;
        let done = sqlx::query(sql(
            db,
            "DELETE FROM login_failures WHERE window_started_at <= $1 \
             AND (locked_until IS NULL OR locked_until <= $2)",
        ))
        .bind(now.saturating_sub(micros(self.cfg.window)))
        .bind(now)
        .execute(&mut *conn)
        .await
        .obs(db)?;
        Ok(done.rows_affected())
    }
}
