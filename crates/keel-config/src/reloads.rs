//! A short history of run-time configuration changes (log level, feature flags), for the admin
//! status page: an operator asking "did my change apply?" should not have to search logs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::Serialize;

/// How many reloads [`ReloadLog`] keeps; older ones are dropped.
pub const RELOAD_LOG_CAPACITY: usize = 20;

/// One reload attempt.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReloadEvent {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// What was reloaded (`log level`, `feature flags`).
    pub what: String,
    /// Whether it applied.
    pub ok: bool,
    /// The new value or a summary when it applied, the reason when it did not.
    pub detail: String,
}

/// The last [`RELOAD_LOG_CAPACITY`] reloads, newest first. Cheap to clone; clones share.
///
/// ```
/// let log = keel_config::ReloadLog::default();
/// log.record("log level", true, "debug");
/// assert_eq!(log.recent()[0].detail, "debug");
/// ```
#[derive(Debug, Clone, Default)]
pub struct ReloadLog {
    events: Arc<Mutex<VecDeque<ReloadEvent>>>,
}

impl ReloadLog {
    /// Records an attempt.
    pub fn record(&self, what: &str, ok: bool, detail: impl Into<String>) {
        let event = ReloadEvent {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            what: what.to_owned(),
            ok,
            detail: detail.into(),
        };
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if events.len() >= RELOAD_LOG_CAPACITY {
            events.pop_back();
        }
        events.push_front(event);
    }

    /// The recorded attempts, newest first.
    pub fn recent(&self) -> Vec<ReloadEvent> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_is_bounded() {
        let log = ReloadLog::default();
        for i in 0..(RELOAD_LOG_CAPACITY + 5) {
            log.record("x", i % 2 == 0, i.to_string());
        }
        let r = log.recent();
        assert_eq!(r.len(), RELOAD_LOG_CAPACITY);
        assert_eq!(r[0].detail, (RELOAD_LOG_CAPACITY + 4).to_string());
        assert_eq!(r[RELOAD_LOG_CAPACITY - 1].detail, "5");
    }
}
