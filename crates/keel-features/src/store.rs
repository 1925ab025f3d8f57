//! Where runtime overrides of flags live, so every replica of a service sees the same set.
//!
//! The flags file is the reviewed default; an override replaces one flag's definition (or adds a
//! flag the file does not have) until it is removed. A [`FlagStore`] keeps the overrides and the
//! history of their changes. [`Flags::sync`](crate::Flags::sync) polls the store's version (one
//! cheap read) and reloads the overrides when it moved, so a change made on one replica is in
//! effect on every other within one poll interval.
//!
//! Three stores come with Keel: [`MemoryStore`], the default, which only the process sees; with
//! the `sql` feature, `SqlStore` in the service's database; with the `redis` feature,
//! `RedisStore` in its Redis.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::FlagDef;

/// Longest actor or reason stored with a change.
pub const MAX_TEXT: usize = 255;

/// The overrides in a store, at one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Grows with every change; 0 for a store that never changed.
    pub version: i64,
    /// The override of each overridden flag.
    pub flags: BTreeMap<String, Override>,
}

/// One flag's override.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Override {
    /// The definition in effect instead of the file's.
    pub def: FlagDef,
    /// Who set it.
    pub updated_by: String,
    /// When (milliseconds since the Unix epoch).
    pub updated_at_ms: i64,
}

/// One change of an override, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagChange {
    /// Its place in the store's history (the store's version once it was made).
    pub id: i64,
    /// The flag.
    pub key: String,
    /// The override before (`None`: the flag followed the file).
    pub before: Option<FlagDef>,
    /// The override after (`None`: removed, the flag follows the file again).
    pub after: Option<FlagDef>,
    /// Who made it.
    pub actor: String,
    /// Why, as they said.
    pub reason: String,
    /// When (milliseconds since the Unix epoch).
    pub at_ms: i64,
}

/// Why a store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store is unreachable or failed; nothing was changed.
    #[error("the flag store is unavailable: {0}")]
    Unavailable(String),
    /// The store holds a definition this version cannot read.
    #[error("the flag store holds an unreadable definition of `{key}`: {why}")]
    Corrupt {
        /// The flag.
        key: String,
        /// Why.
        why: String,
    },
}

/// What a store's calls return.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Keeps overrides and their history; shared by every replica of a service.
pub trait FlagStore: Send + Sync + 'static {
    /// What it is, for `/admin/flags` (`memory`, `database`, `redis`).
    fn kind(&self) -> &'static str;
    /// Whether it can be read yet: a store whose connection or tables are still being set up
    /// is not polled (its service's readiness says why), rather than reported failing.
    fn ready(&self) -> bool {
        true
    }
    /// The current version: a cheap read, polled.
    fn version(&self) -> StoreFuture<'_, i64>;
    /// Every override, with the version they are at.
    fn load(&self) -> StoreFuture<'_, Overrides>;
    /// Sets (`Some`) or removes (`None`) `key`'s override and records the change, atomically.
    /// Removing a flag that has no override records nothing and returns `None`.
    fn set<'a>(
        &'a self,
        key: &'a str,
        def: Option<&'a FlagDef>,
        actor: &'a str,
        reason: &'a str,
    ) -> StoreFuture<'a, Option<FlagChange>>;
    /// The newest `limit` changes, of `key` or of every flag, newest first.
    fn history<'a>(&'a self, key: Option<&'a str>, limit: u32) -> StoreFuture<'a, Vec<FlagChange>>;
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `decoded`, or `None` with an error line: one stored override this version cannot read
/// (written by hand, or by a newer version) is skipped, never allowed to stop the others.
#[cfg(any(feature = "sql", feature = "redis"))]
pub(crate) fn readable<T>(decoded: Result<T, StoreError>) -> Option<T> {
    decoded.map_err(|e| tracing::error!(error = %e, "skipping a flag override this version cannot read")).ok()
}

/// Cuts `text` to [`MAX_TEXT`] bytes on a character boundary.
pub(crate) fn bounded(text: &str) -> &str {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Overrides in this process only: lost on restart and not seen by other replicas. The store of
/// a service without a database.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<(Overrides, Vec<FlagChange>)>,
}

/// Most changes [`MemoryStore`] remembers.
const MEMORY_HISTORY: usize = 1000;

impl FlagStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn version(&self) -> StoreFuture<'_, i64> {
        let v = self.state.lock().unwrap_or_else(PoisonError::into_inner).0.version;
        Box::pin(async move { Ok(v) })
    }

    fn load(&self) -> StoreFuture<'_, Overrides> {
        let o = self.state.lock().unwrap_or_else(PoisonError::into_inner).0.clone();
        Box::pin(async move { Ok(o) })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        def: Option<&'a FlagDef>,
        actor: &'a str,
        reason: &'a str,
    ) -> StoreFuture<'a, Option<FlagChange>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (overrides, history) = &mut *state;
        let before = overrides.flags.get(key).map(|o| o.def.clone());
        let change = if before.is_none() && def.is_none() {
            None
        } else {
            overrides.version += 1;
            let at_ms = now_ms();
            match def {
                Some(d) => {
                    overrides.flags.insert(
                        key.to_owned(),
                        Override { def: d.clone(), updated_by: bounded(actor).to_owned(), updated_at_ms: at_ms },
                    );
                }
                None => {
                    overrides.flags.remove(key);
                }
            }
            let change = FlagChange {
                id: overrides.version,
                key: key.to_owned(),
                before,
                after: def.cloned(),
                actor: bounded(actor).to_owned(),
                reason: bounded(reason).to_owned(),
                at_ms,
            };
            history.push(change.clone());
            if history.len() > MEMORY_HISTORY {
                history.remove(0);
            }
            Some(change)
        };
        Box::pin(async move { Ok(change) })
    }

    fn history<'a>(&'a self, key: Option<&'a str>, limit: u32) -> StoreFuture<'a, Vec<FlagChange>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let out =
            state.1.iter().rev().filter(|c| key.is_none_or(|k| c.key == k)).take(limit as usize).cloned().collect();
        Box::pin(async move { Ok(out) })
    }
}
