//! Session revocation for stateless access tokens.
//!
//! An access token is valid until it expires, so ending a session (sign-out everywhere, a password
//! reset, a role change) needs one more check. The issuer keeps a **session version** per subject,
//! bumps it when every earlier token of that subject must stop working, writes it into new tokens
//! as the `sv` claim, and announces the bump. Every verifier records the announcements in a
//! [`Revocations`] and refuses a token whose `sv` is below the subject's recorded version
//! ([`JwtError::Revoked`](crate::jwt::JwtError::Revoked)); a token without `sv` counts as
//! version 0.
//!
//! How announcements travel is the application's choice (City Events sends them over its event
//! bus to every instance); this module only keeps and checks them.
//!
//! An entry matters only while tokens issued before the bump can still be unexpired, so entries
//! are kept for a retention (set it to at least the access-token lifetime plus the leeway) and
//! the map holds at most a bounded number of subjects: past it, the oldest entries go first.
//!
//! ```
//! use std::time::Duration;
//! use keel_security::sessions::Revocations;
//!
//! let revoked = Revocations::new(Duration::from_secs(600), 100_000);
//! revoked.revoke("user-1", 3);
//! assert!(revoked.is_revoked("user-1", None));
//! assert!(revoked.is_revoked("user-1", Some(2)));
//! assert!(!revoked.is_revoked("user-1", Some(3)));
//! assert!(!revoked.is_revoked("user-2", None));
//! ```

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The lowest session version still accepted, per subject. Cheap to clone (shared).
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

struct Inner {
    retention: Duration,
    capacity: usize,
    map: RwLock<HashMap<String, Entry>>,
}

#[derive(Clone, Copy)]
struct Entry {
    version: u64,
    at: Instant,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("retention", &self.inner.retention)
            .field("capacity", &self.inner.capacity)
            .field("subjects", &self.len())
            .finish()
    }
}

impl Revocations {
    /// Keeps each subject's entry for `retention` after its last bump, for at most `capacity`
    /// subjects (at least 1).
    pub fn new(retention: Duration, capacity: usize) -> Self {
        Self { inner: Arc::new(Inner { retention, capacity: capacity.max(1), map: RwLock::new(HashMap::new()) }) }
    }

    /// Records that tokens of `subject` with a session version below `version` are refused.
    /// An older or repeated announcement changes nothing (announcements may arrive twice or out
    /// of order). Returns whether the minimum rose.
    pub fn revoke(&self, subject: &str, version: u64) -> bool {
        let now = Instant::now();
        let mut map = self.inner.map.write().unwrap_or_else(PoisonError::into_inner);
        let raised = match map.get_mut(subject) {
            Some(e) if e.version >= version => {
                if e.version == version {
                    e.at = now;
                }
                false
            }
            Some(e) => {
                *e = Entry { version, at: now };
                true
            }
            None => {
                map.insert(subject.to_owned(), Entry { version, at: now });
                true
            }
        };
        if map.len() > self.inner.capacity {
            self.prune(&mut map, now);
        }
        raised
    }

    /// Whether a token of `subject` carrying session version `version` (`None`: no `sv` claim)
    /// is refused.
    pub fn is_revoked(&self, subject: &str, version: Option<u64>) -> bool {
        let map = self.inner.map.read().unwrap_or_else(PoisonError::into_inner);
        match map.get(subject) {
            Some(e) if e.at.elapsed() <= self.inner.retention => version.unwrap_or(0) < e.version,
            _ => false,
        }
    }

    /// Subjects with an entry (expired ones included until the next prune).
    pub fn len(&self) -> usize {
        self.inner.map.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no subject has an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops expired entries, then the oldest ones until the map is within its capacity.
    fn prune(&self, map: &mut HashMap<String, Entry>, now: Instant) {
        map.retain(|_, e| now.duration_since(e.at) <= self.inner.retention);
        let excess = map.len().saturating_sub(self.inner.capacity);
        if excess > 0 {
            let mut ages: Vec<(Instant, String)> = map.iter().map(|(k, e)| (e.at, k.clone())).collect();
            ages.sort_unstable();
            for (_, k) in ages.into_iter().take(excess) {
                map.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_only_rises() {
        let r = Revocations::new(Duration::from_secs(60), 10);
        assert!(r.revoke("u", 5));
        assert!(!r.revoke("u", 3), "an older announcement arriving late changes nothing");
        assert!(!r.revoke("u", 5));
        assert!(r.is_revoked("u", Some(4)));
        assert!(!r.is_revoked("u", Some(5)));
        assert!(!r.is_revoked("u", Some(6)));
    }

    #[test]
    fn entries_expire_after_the_retention() {
        let r = Revocations::new(Duration::ZERO, 10);
        r.revoke("u", 1);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!r.is_revoked("u", None), "past the retention every token it covered has expired");
    }

    #[test]
    fn the_map_stays_within_its_capacity_oldest_first() {
        let r = Revocations::new(Duration::from_secs(60), 3);
        for (i, s) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            r.revoke(s, 1);
            if i < 4 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        assert_eq!(r.len(), 3);
        assert!(!r.is_revoked("a", None) && !r.is_revoked("b", None), "the oldest went first");
        assert!(r.is_revoked("c", None) && r.is_revoked("d", None) && r.is_revoked("e", None));
    }
}
