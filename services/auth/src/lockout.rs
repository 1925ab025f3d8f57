//! Sign-in throttling: failures are counted per account and client IP, per client IP and per
//! account, for existing and unknown addresses alike, and answered with progressive delays; a
//! device that signed in to the account before is counted apart, so that attackers cannot turn
//! the account's delays on its owner (OWASP's "device cookies").
//!
//! Each counter is a row of `login_throttle`: its failures and when the last one happened; it is
//! forgotten `window` after its last failure. Once a counter holds its free failures, the next
//! attempt must wait `base_delay`, then twice as long after each further failure, up to
//! `max_delay`. The counters, and why each exists:
//!
//! * **account and IP** (`free_failures`, default 5): someone guessing one account's password
//!   from one place. It never delays the owner signing in from another address.
//! * **IP** (`ip_free_failures`, default 50): one place trying many accounts (password spraying).
//! * **account** (`account_free_failures`, default 100): an account attacked from many
//!   addresses at once: a limit on the guesses all unknown devices together get.
//! * **device** (`free_failures`): an attempt that carries a valid device token of the account
//!   (see [`DeviceTokens`]) is counted only against that device. The account's delays do not
//!   apply to it, so the owner signs in from a device that succeeded before however many
//!   addresses attack the account; a stolen device token buys `free_failures` guesses.
//!
//! An owner without such a device proves control of the mailbox instead: a password reset ends
//! the account's delays and hands the resetting device a token.
//!
//! The counters an attempt is subject to gate it in one transaction that locks their rows in a
//! fixed order (account, pair, IP). The first-hand counter (account and IP, or the device)
//! counts the attempt **before** its password is checked, so concurrent guesses at one account
//! from one place cannot exceed its budget; a success deletes it. The others count failures
//! once known: many people signing in at once from one address (an office, a test) must not
//! look like failures while in flight. While a delay runs, attempts are refused before any
//! password check and are not counted.

use std::time::Duration;

use keel::data::{DataError, Db, RetryKind};

use crate::config::LockoutConfig;
use crate::store::lockout as store;
use cityevents_common::time::{now, to_micros};

/// Which counter: the `scope` of audit entries and of `auth_login_throttled_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One account from one client IP.
    AccountIp,
    /// One client IP, any account.
    Ip,
    /// One account, any client IP, from devices without a device token of it.
    Account,
    /// One device that signed in to the account before (a valid device token).
    Device,
}

impl Scope {
    pub(crate) const ALL: [Self; 4] = [Self::AccountIp, Self::Ip, Self::Account, Self::Device];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::AccountIp => "account_ip",
            Self::Ip => "ip",
            Self::Account => "account",
            Self::Device => "device",
        }
    }
}

/// Where a sign-in attempt comes from, as the counters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source<'a> {
    /// A client IP (its blind index), with no valid device token for the account.
    Client(&'a str),
    /// A device that signed in to the account before: the nonce of its valid device token.
    Device(&'a str),
}

/// Whether a sign-in attempt may go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Gate {
    /// It may, and is counted. `spent`: this attempt brought the account-and-IP counter to its
    /// free failures; if it fails, the next attempt is delayed.
    Open { spent: bool },
    /// A delay runs; retry after this many seconds.
    Locked { retry_after: u64, scope: Scope },
}

/// One counter: its scope, its row's key, the account it belongs to (deleted with the
/// account's counters) and its free failures.
type Counter<'a> = (Scope, String, Option<&'a str>, u32);

/// The counters one attempt touches, in the order their rows are locked, and which of them is
/// first-hand (counted before the password check, deleted by a success).
struct Counters<'a> {
    keys: Vec<Counter<'a>>,
    first_hand: usize,
}

impl<'a> Counters<'a> {
    fn new(cfg: &LockoutConfig, bidx: &'a str, source: Source<'_>) -> Self {
        match source {
            Source::Client(client) => Self {
                keys: vec![
                    (Scope::Account, format!("a:{bidx}"), Some(bidx), cfg.account_free_failures),
                    (Scope::AccountIp, format!("p:{bidx}:{client}"), Some(bidx), cfg.free_failures),
                    (Scope::Ip, format!("i:{client}"), None, cfg.ip_free_failures),
                ],
                first_hand: 1,
            },
            // 2 + 64 + 1 + 32 characters: within the column's 160.
            Source::Device(nonce) => Self {
                keys: vec![(Scope::Device, format!("d:{bidx}:{nonce}"), Some(bidx), cfg.free_failures)],
                first_hand: 0,
            },
        }
    }

    fn first_hand(&self) -> &Counter<'a> {
        &self.keys[self.first_hand]
    }
}

/// Tries for a transaction that loses a conflict (deadlock, serialization failure) before the
/// error is answered (503 with `Retry-After`).
const TRIES: u32 = 3;

/// Runs the transaction `f` again while it loses to a concurrent one (a deadlock or a
/// serialization failure), [`TRIES`] times in all.
async fn retrying<T, Fut: std::future::Future<Output = Result<T, DataError>>>(
    f: impl Fn() -> Fut,
) -> Result<T, DataError> {
    let mut tries = 1;
    loop {
        match f().await {
            Err(e)
                if tries < TRIES && matches!(e.retry_kind(), Some(RetryKind::Deadlock | RetryKind::Serialization)) =>
            {
                tries += 1;
            }
            done => return done,
        }
    }
}

/// The throttling rules over `login_throttle`.
#[derive(Debug, Clone)]
pub(crate) struct Lockout {
    db: Db,
    cfg: LockoutConfig,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// How long after its last failure a counter holding `failures` makes the next attempt wait.
fn delay(cfg: &LockoutConfig, failures: i64, free: u32) -> Duration {
    let Some(over) = failures.checked_sub(i64::from(free)).filter(|o| *o >= 0) else {
        return Duration::ZERO;
    };
    let factor = 1u32 << u32::try_from(over.min(30)).unwrap_or(30);
    cfg.base_delay.saturating_mul(factor).min(cfg.max_delay)
}

impl Lockout {
    pub(crate) fn new(db: Db, cfg: LockoutConfig) -> Self {
        Self { db, cfg }
    }

    /// Starts a sign-in attempt for the address `bidx` (a blind index) from `source`: refused
    /// while a delay of any counter it is subject to runs; otherwise counted in its first-hand
    /// counter before the password is checked. Then [`Self::failed`] or [`Self::succeeded`].
    pub(crate) async fn attempt(&self, bidx: &str, source: Source<'_>) -> Result<Gate, DataError> {
        retrying(|| self.try_attempt(bidx, source)).await
    }

    async fn try_attempt(&self, bidx: &str, source: Source<'_>) -> Result<Gate, DataError> {
        let db = &self.db;
        let now = to_micros(now());
        let stale = now.saturating_sub(micros(self.cfg.window));
        let counters = Counters::new(&self.cfg, bidx, source);
        // READ COMMITTED: the read after the locking write must see concurrent attempts' rows.
        let mut tx = db.begin_read_committed().await?;
        let mut counts = Vec::with_capacity(counters.keys.len());
        for (scope, key, email, free) in &counters.keys {
            store::ensure(db, &mut tx, key, *email, now).await?;
            store::forget_if_stale(db, &mut tx, key, stale).await?;
            let read = store::read(db, &mut tx, key).await?;
            counts.push((*scope, read.failures, read.last_failure_at, *free));
        }
        let refused = counts
            .iter()
            .filter_map(|&(scope, failures, last, free)| {
                let wait = delay(&self.cfg, failures, free);
                let until = last.saturating_add(micros(wait));
                // `last` may be a concurrent attempt's, a little after this one's `now`.
                (!wait.is_zero() && until > now).then_some((until, scope))
            })
            .max_by_key(|(until, _)| *until);
        if let Some((until, scope)) = refused {
            db.commit(tx).await?;
            // Rounded up: a client that waits exactly this long is let in.
            let secs = (until - now).div_euclid(1_000_000) + 1;
            return Ok(Gate::Locked { retry_after: u64::try_from(secs).unwrap_or(1), scope });
        }
        store::count_failure(db, &mut tx, &counters.first_hand().1, now).await?;
        db.commit(tx).await?;
        let (_, failures, _, free) = counts[counters.first_hand];
        Ok(Gate::Open { spent: failures + 1 == i64::from(free) })
    }

    /// The attempt [`Self::attempt`] let in failed: counted in the other counters it is
    /// subject to. Returns the counters it brought to their free failures (each further attempt
    /// they cover is delayed), the first-hand one first when `attempt` said so.
    pub(crate) async fn failed(
        &self,
        bidx: &str,
        source: Source<'_>,
        first_hand_spent: bool,
    ) -> Result<Vec<Scope>, DataError> {
        retrying(|| self.try_failed(bidx, source, first_hand_spent)).await
    }

    async fn try_failed(
        &self,
        bidx: &str,
        source: Source<'_>,
        first_hand_spent: bool,
    ) -> Result<Vec<Scope>, DataError> {
        let db = &self.db;
        let now = to_micros(now());
        let stale = now.saturating_sub(micros(self.cfg.window));
        let counters = Counters::new(&self.cfg, bidx, source);
        let mut spent = Vec::new();
        if first_hand_spent {
            spent.push(counters.first_hand().0);
        }
        if counters.keys.len() == 1 {
            return Ok(spent);
        }
        // READ COMMITTED: the read after the locking write must see concurrent attempts' rows.
        let mut tx = db.begin_read_committed().await?;
        for (i, (scope, key, email, free)) in counters.keys.iter().enumerate() {
            if i == counters.first_hand {
                continue;
            }
            // Made by `attempt`, unless pruned since.
            store::ensure(db, &mut tx, key, *email, now).await?;
            store::forget_if_stale(db, &mut tx, key, stale).await?;
            store::count_failure(db, &mut tx, key, now).await?;
            let read = store::read(db, &mut tx, key).await?;
            if read.failures == i64::from(*free) {
                spent.push(*scope);
            }
        }
        db.commit(tx).await?;
        Ok(spent)
    }

    /// The attempt [`Self::attempt`] let in succeeded: its first-hand counter is deleted.
    pub(crate) async fn succeeded(&self, bidx: &str, source: Source<'_>) -> Result<(), DataError> {
        let counters = Counters::new(&self.cfg, bidx, source);
        store::delete(&self.db, &counters.first_hand().1).await
    }

    /// The attempt [`Self::attempt`] let in came to no verdict (the password check was refused
    /// at capacity, or a dependency failed): it is taken back from the first-hand counter.
    /// Otherwise a sign-in storm that fills the hashing queue would count the owner's refused
    /// attempts as failures, and lock them out without one wrong password.
    pub(crate) async fn undone(&self, bidx: &str, source: Source<'_>) -> Result<(), DataError> {
        let counters = Counters::new(&self.cfg, bidx, source);
        store::take_back(&self.db, &counters.first_hand().1).await
    }

    /// Deletes every counter of the account with address index `bidx`, whatever the client IP
    /// (a password reset proved the owner: their delays end). Per-IP counters stay.
    pub(crate) async fn clear_account(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        bidx: &str,
    ) -> Result<u64, DataError> {
        store::delete_account(&self.db, tx, bidx).await
    }

    /// Deletes counters whose last failure is older than the window (no delay can still run:
    /// `max_delay` is at most `window`); returns how many.
    pub(crate) async fn prune(&self) -> Result<u64, DataError> {
        let now = to_micros(now());
        store::prune(&self.db, now.saturating_sub(micros(self.cfg.window))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_after_the_free_failures_and_double_up_to_the_cap() {
        let cfg = LockoutConfig {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            ..LockoutConfig::default()
        };
        let secs = |n| delay(&cfg, n, 5).as_secs();
        assert_eq!([secs(0), secs(4)], [0, 0]);
        assert_eq!([secs(5), secs(6), secs(7), secs(10)], [1, 2, 4, 32]);
        assert_eq!([secs(11), secs(40), secs(i64::MAX)], [60, 60, 60]);
    }
}
