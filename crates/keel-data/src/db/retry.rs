//! Transactions run again after a conflict: [`Transient`], [`TxRetry`] and
//! [`transaction!`](crate::transaction).
//!
//! Two transactions that touch the same rows can fail without either being wrong: a
//! serialization failure or a deadlock victim (PostgreSQL `40001`/`40P01`, MySQL 1213), a lock
//! not granted in time, a busy SQLite. The database undid the loser's work; running it again
//! from the start, after a short pause, is the documented remedy, and it belongs in one place
//! rather than in each handler.

use std::time::Duration;

use keel_resilience::Backoff;
use keel_resilience::backoff::Jitter;

use super::error::{DataError, RetryKind, retry_kind};

/// Whether a transaction that failed with this error may succeed if run again from the start.
///
/// `DataError` and `sqlx::Error` say so for a serialization failure, a deadlock and a lock not
/// granted in time ([`RetryKind`]). A service's own error type implements it by asking its
/// database error, and may add conflicts of its own (a unique key another transaction took
/// first, whose row the next run will see).
pub trait Transient {
    /// See the [trait docs](Transient).
    fn is_transient(&self) -> bool;
}

impl Transient for sqlx::Error {
    fn is_transient(&self) -> bool {
        matches!(retry_kind(self), Some(RetryKind::Serialization | RetryKind::Deadlock | RetryKind::LockTimeout))
    }
}

impl Transient for DataError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Sql(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// How many times [`transaction!`](crate::transaction) runs a transaction that conflicted, and
/// the pauses between the runs.
///
/// The default: six runs at most, pauses from 25 ms growing by half up to 125 ms, each drawn
/// from the upper half of its base (so a conflict is never run again at once, and two losers
/// do not collide again in step): at most 330 ms of pauses in all.
#[derive(Debug, Clone)]
pub struct TxRetry {
    attempts: u32,
    backoff: Backoff,
}

impl Default for TxRetry {
    fn default() -> Self {
        Self::new(
            6,
            Backoff::new(Duration::from_millis(25), Duration::from_millis(125)).multiplier(1.5).jitter(Jitter::Equal),
        )
    }
}

impl TxRetry {
    /// At most `attempts` runs in all (at least one), paused by `backoff` between them.
    pub fn new(attempts: u32, backoff: Backoff) -> Self {
        Self { attempts: attempts.max(1), backoff }
    }

    /// Runs at most once: a conflict is the caller's to answer.
    pub fn never() -> Self {
        Self::new(1, Backoff::new(Duration::ZERO, Duration::ZERO))
    }

    /// The most runs in all.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// A fresh sequence of the pauses between runs.
    pub fn pauses(&self) -> Backoff {
        self.backoff.clone()
    }

    /// Whether run `attempt` (1 for the first) failing with `error` is run again; if so, waits
    /// the next pause of `pauses` first.
    #[doc(hidden)]
    pub async fn again<E: Transient + std::fmt::Debug>(&self, attempt: u32, error: &E, pauses: &mut Backoff) -> bool {
        if attempt >= self.attempts || !error.is_transient() {
            return false;
        }
        tracing::debug!(attempt, ?error, "transient conflict; running the transaction again");
        tokio::time::sleep(pauses.next_delay()).await;
        true
    }
}

/// Runs `$body` in a writing transaction of `$db` ([`Db::begin_write`](crate::Db::begin_write)):
/// commits when it answers `Ok`, rolls back when it answers `Err`, and runs it all again while
/// the error is [`Transient`], as [`TxRetry`] (`$retry`, else its default) allows. It awaits,
/// so it is used inside an `async` function, and evaluates to the `Result`.
///
/// `$body` is an expression that uses `$tx` (a mutable binding of the
/// `Transaction<'static, Any>`) and yields a future of `Result<T, E>`, where `E:
/// From<DataError> + Transient + Debug`; a failed `BEGIN` or `COMMIT` becomes an `E` (counted,
/// as a statement run through [`Db::on`](crate::Db::on) is where it fails). Each run
/// starts a new transaction and evaluates `$body` again, so it must not consume what a second
/// run needs. A macro rather than a function taking a closure: a closure's future that borrows
/// both the transaction and the handler's state cannot be proven `Send` for an axum handler
/// (rustc's "implementation of `Send` is not general enough").
///
/// # Cancel safety
///
/// Dropping the future part-way drops the open transaction, which rolls it back.
///
/// ```ignore
/// async fn rename_tx(tx: &mut Transaction<'static, Any>, db: &Db, id: Uuid, name: &str) -> Result<(), DataError> {
///     let sql = db.sql("UPDATE items SET name = $1 WHERE id = $2").into_owned();
///     sqlx::query(sqlx::AssertSqlSafe(sql)).bind(name).bind(id.to_string()).execute(db.on(&mut **tx)).await?;
///     Ok(())
/// }
///
/// keel::data::transaction!(&db, |tx| rename_tx(&mut tx, &db, id, &name))?;
/// ```
#[macro_export]
macro_rules! transaction {
    ($db:expr, |$tx:ident| $body:expr) => {
        $crate::transaction!($db, &$crate::TxRetry::default(), |$tx| $body)
    };
    ($db:expr, $retry:expr, |$tx:ident| $body:expr) => {{
        let db: &$crate::Db = $db;
        let retry: &$crate::TxRetry = $retry;
        let mut pauses = retry.pauses();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = match db.begin_write().await {
                Ok(mut $tx) => {
                    let result = $body.await;
                    db.finish($tx, result).await
                }
                Err(e) => Err(::core::convert::From::from(e)),
            };
            match result {
                Err(e) => {
                    if retry.again(attempt, &e, &mut pauses).await {
                        continue;
                    }
                    break Err(e);
                }
                done => break done,
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pauses_stay_short_and_never_zero() {
        let retry = TxRetry::default();
        assert_eq!(retry.attempts(), 6);
        for _ in 0..200 {
            let mut b = retry.pauses();
            let pauses: Vec<Duration> = (1..retry.attempts()).map(|_| b.next_delay()).collect();
            assert!(pauses[0] >= Duration::from_micros(12_500) && pauses[0] <= Duration::from_millis(25), "{pauses:?}");
            assert!(pauses.iter().all(|p| *p <= Duration::from_millis(125)), "{pauses:?}");
            assert!(pauses.iter().sum::<Duration>() <= Duration::from_millis(330), "{pauses:?}");
        }
        assert_eq!(TxRetry::never().attempts(), 1);
    }

    #[test]
    fn only_conflicts_are_transient() {
        assert!(!DataError::AcquireTimeout.is_transient(), "a full pool is answered, not retried");
        assert!(!DataError::Config("x".into()).is_transient());
        assert!(!sqlx::Error::RowNotFound.is_transient());
    }
}
