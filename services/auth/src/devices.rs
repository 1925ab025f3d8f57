//! Device tokens: proof that a device signed in to an account before, so that its sign-ins are
//! counted apart from the account's other failures (see [`crate::lockout`]).
//!
//! A token is `{issued}.{nonce}.{mac}`: when it was issued (Unix seconds), 16 random bytes
//! (hex) and an HMAC-SHA256 (the blind-index key, hex) over the account's address index, the
//! time and the nonce. It needs no storage, is bound to one account, and is valid for
//! `app.lockout.device_ttl`. It authenticates nothing: it only decides which counters an
//! attempt with the right account's password still has to pass.

use std::time::Duration;

use keel::security::crypto::BlindIndex;
use subtle::ConstantTimeEq as _;

/// Issues and checks device tokens.
#[derive(Clone)]
pub(crate) struct DeviceTokens {
    key: BlindIndex,
    ttl: Duration,
}

impl std::fmt::Debug for DeviceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTokens").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// Longer values are not ours: refused before any work (10 + 1 + 32 + 1 + 64 characters).
pub(crate) const MAX_LEN: usize = 128;

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl DeviceTokens {
    pub(crate) fn new(key: BlindIndex, ttl: Duration) -> Self {
        Self { key, ttl }
    }

    fn mac(&self, bidx: &str, issued: u64, nonce: &str) -> String {
        // Never a valid address (no `@`): no other blind index of the key can collide with it.
        self.key.exact(&format!("device-token:{bidx}:{issued}:{nonce}"))
    }

    /// A new token for the account whose address index is `bidx`.
    pub(crate) fn issue(&self, bidx: &str) -> String {
        let issued = unix_now();
        let nonce: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
        let mac = self.mac(bidx, issued, &nonce);
        format!("{issued}.{nonce}.{mac}")
    }

    /// The nonce of `token` when it is a token of the account `bidx` still within its lifetime;
    /// `None` for anything else (another account's, expired, forged, malformed).
    pub(crate) fn verify<'t>(&self, bidx: &str, token: &'t str) -> Option<&'t str> {
        if token.len() > MAX_LEN {
            return None;
        }
        let mut parts = token.split('.');
        let (issued, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || nonce.len() != 32
            || !nonce.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let issued: u64 = issued.parse().ok()?;
        let now = unix_now();
        // A minute of clock skew between replicas; nothing from further in the future.
        if issued > now + 60 || now.saturating_sub(issued) > self.ttl.as_secs() {
            return None;
        }
        let expected = self.mac(bidx, issued, nonce);
        bool::from(expected.as_bytes().ct_eq(mac.as_bytes())).then_some(nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(ttl: Duration) -> DeviceTokens {
        let key = keel::config::Secret::new("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_owned());
        DeviceTokens::new(BlindIndex::new(&key).unwrap(), ttl)
    }

    #[test]
    fn a_token_is_valid_for_its_account_only() {
        let t = tokens(Duration::from_secs(3600));
        let token = t.issue("aa");
        let nonce = t.verify("aa", &token).unwrap();
        assert_eq!(nonce.len(), 32);
        assert_ne!(t.issue("aa"), token, "each sign-in gets its own");
        assert_eq!(t.verify("bb", &token), None, "another account's");
        let mut forged = token.clone();
        forged.replace_range(forged.len() - 1.., if token.ends_with('0') { "1" } else { "0" });
        assert_eq!(t.verify("aa", &forged), None);
        for bad in ["", "1.2", "x.y.z", &format!("{token}.x"), &"9".repeat(200)] {
            assert_eq!(t.verify("aa", bad), None, "{bad}");
        }
    }

    #[test]
    fn a_token_ends_with_its_lifetime() {
        let t = tokens(Duration::from_secs(3600));
        let (_, rest) = t.issue("aa").split_once('.').map(|(a, b)| (a.to_owned(), b.to_owned())).unwrap();
        let (nonce, _) = rest.split_once('.').unwrap();
        let old = unix_now() - 3601;
        let stale = format!("{old}.{nonce}.{}", t.mac("aa", old, nonce));
        assert_eq!(t.verify("aa", &stale), None);
        let future = unix_now() + 3600;
        assert_eq!(t.verify("aa", &format!("{future}.{nonce}.{}", t.mac("aa", future, nonce))), None);
        let recent = unix_now() - 3500;
        assert!(t.verify("aa", &format!("{recent}.{nonce}.{}", t.mac("aa", recent, nonce))).is_some());
    }
}
