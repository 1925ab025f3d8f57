//! Browser sign-in to the management listener's `/admin/*` pages: a signed session cookie, and
//! one-time sign-in links that set it.
//!
//! A browser cannot send a bearer token, so `POST /admin/login` with the admin token, or a
//! one-time link (`GET /admin/login?code=…`, printed by a launcher), sets the cookie
//! [`COOKIE`]: `<expiry>.<HMAC-SHA256 over it keyed by the admin token>`, `HttpOnly`,
//! `SameSite=Strict`, `Path=/admin`, for [`SESSION_TTL`]. It holds no secret and needs no
//! server-side state: every listener with the same admin token accepts it (cookies are per host,
//! not per port, so one sign-in covers every service of an all-in-one process), and changing
//! the token ends every session. It is not `Secure` because the management listener speaks plain
//! HTTP (reach it through a tunnel or a port-forward, never across a network in the clear).
//!
//! The cookie is accepted for reading (`GET`, `HEAD`) only; a change (`PUT /admin/log-level`)
//! needs the bearer token, so no page a browser visits can make one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::digest::KeyInit as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use keel_config::Secret;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "keel_admin";
/// How long a browser session lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a one-time sign-in link works (once).
pub(crate) const LINK_TTL: Duration = Duration::from_secs(3600);
/// Codes kept at most (older ones are dropped first).
const MAX_CODES: usize = 64;

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn mac(token: &Secret, expiry: u64) -> Vec<u8> {
    // The key is the admin token itself: any length is a valid HMAC key.
    let mut m = match Hmac::<Sha256>::new_from_slice(token.expose().as_bytes()) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    m.update(b"keel-admin-session:");
    m.update(expiry.to_string().as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// A new session cookie's value, valid for [`SESSION_TTL`].
pub(crate) fn issue(token: &Secret) -> String {
    let expiry = unix_now() + SESSION_TTL.as_secs();
    format!("{expiry}.{}", URL_SAFE_NO_PAD.encode(mac(token, expiry)))
}

/// The `Set-Cookie` header value for `value` (or one that clears the cookie).
pub(crate) fn set_cookie(value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{COOKIE}={v}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_TTL.as_secs()),
        None => format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

/// Whether `value` is a session cookie this token signed that has not expired. The MAC is
/// compared in constant time.
pub(crate) fn verify(token: &Secret, value: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let Some((expiry, tag)) = value.split_once('.') else { return false };
    let Ok(expiry) = expiry.parse::<u64>() else { return false };
    if expiry <= unix_now() || expiry > unix_now() + SESSION_TTL.as_secs() {
        return false;
    }
    let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else { return false };
    let want = mac(token, expiry);
    !want.is_empty() && bool::from(want.ct_eq(&tag))
}

/// The session cookie of a request's `Cookie` headers, if any.
pub(crate) fn from_headers(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// One-time sign-in codes of one management listener; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct SignInCodes {
    codes: Arc<Mutex<HashMap<String, Instant>>>,
}

impl SignInCodes {
    /// A new code, valid once for [`LINK_TTL`].
    pub(crate) fn issue(&self) -> String {
        let code = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
        let mut codes = self.codes.lock().unwrap_or_else(PoisonError::into_inner);
        codes.retain(|_, at| at.elapsed() < LINK_TTL);
        if codes.len() >= MAX_CODES
            && let Some(oldest) = codes.iter().min_by_key(|(_, at)| **at).map(|(c, _)| c.clone())
        {
            codes.remove(&oldest);
        }
        codes.insert(code.clone(), Instant::now());
        code
    }

    /// Whether `code` was issued here and not used or expired; it is spent either way.
    pub(crate) fn redeem(&self, code: &str) -> bool {
        let mut codes = self.codes.lock().unwrap_or_else(PoisonError::into_inner);
        codes.remove(code).is_some_and(|at| at.elapsed() < LINK_TTL)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_cookie_verifies_under_its_token_only_and_not_tampered() {
        let (a, b) = (Secret::new("token-a".to_owned()), Secret::new("token-b".to_owned()));
        let c = issue(&a);
        assert!(verify(&a, &c));
        assert!(!verify(&b, &c), "another token");
        let (expiry, tag) = c.split_once('.').unwrap();
        let later = expiry.parse::<u64>().unwrap() + 1;
        assert!(!verify(&a, &format!("{later}.{tag}")), "a moved expiry");
        assert!(!verify(&a, &format!("{expiry}.{}x", tag)), "a changed tag");
        let past = unix_now() - 1;
        assert!(!verify(&a, &format!("{past}.{}", URL_SAFE_NO_PAD.encode(mac(&a, past)))), "expired");
        for junk in ["", ".", "x.y", "1.", "99999999999999999999.abc"] {
            assert!(!verify(&a, junk), "{junk}");
        }
    }

    #[test]
    fn a_code_works_once() {
        let codes = SignInCodes::default();
        let c = codes.issue();
        assert!(!codes.redeem("unknown"));
        assert!(codes.redeem(&c));
        assert!(!codes.redeem(&c), "spent");
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; keel_admin=v.t; b=2".parse().unwrap());
        assert_eq!(from_headers(&h), Some("v.t"));
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, "keel_adminx=1".parse().unwrap());
        assert_eq!(from_headers(&h), None);
    }
}
