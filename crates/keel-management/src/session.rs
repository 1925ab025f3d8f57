//! Browser sign-in to the management listener's `/admin/*` pages: a signed session cookie, and
//! one-time sign-in links that set it.
//!
//! A browser cannot send a bearer token, so `POST /admin/login` with the admin token, or a
//! one-time link (`GET /admin/login?code=…`, printed by a launcher), sets the cookie
//! [`COOKIE`]: `<expiry>.<session id>.<HMAC-SHA256 over both keyed by the admin token>`,
//! `HttpOnly`, `SameSite=Strict`, `Path=/admin`, for [`SESSION_TTL`]. It holds no secret: every
//! listener with the same admin token accepts it (cookies are per host, not per port, so one
//! sign-in covers every service of an all-in-one process), and changing the token ends every
//! session. Signing out (`POST /admin/logout`) ends the session server-side too: its id is kept
//! in a process-wide list of ended sessions until it would have expired, so a copy of the cookie
//! stops working on every listener of the process at once (on another replica of the service,
//! rotate the token to end sessions there). It is not `Secure` because the management listener
//! speaks plain HTTP (reach it through a tunnel or a port-forward, never across a network in the
//! clear).
//!
//! The cookie is accepted for reading (`GET`, `HEAD`), and for the console's forms
//! (`POST /admin/console/…`) only with the session's CSRF token and a ticked confirmation; any
//! other change (`PUT /admin/log-level`, `PUT /admin/flags/{key}`) needs the bearer token, so no
//! page a browser visits can make one.

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
/// Ended sessions remembered at most: past it, the ones closest to expiring are forgotten first
/// (each entry needs a sign-in with the admin token, so only an operator can fill it).
const MAX_ENDED: usize = 10_000;

/// Ended sessions of this process (id → expiry), shared by its management listeners as the
/// cookie is.
fn ended() -> &'static Mutex<HashMap<String, u64>> {
    static ENDED: std::sync::OnceLock<Mutex<HashMap<String, u64>>> = std::sync::OnceLock::new();
    ENDED.get_or_init(Mutex::default)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn mac(token: &Secret, expiry: u64, id: &str) -> Vec<u8> {
    keyed(token, &[b"keel-admin-session:", expiry.to_string().as_bytes(), b":", id.as_bytes()])
}

/// HMAC-SHA256 of `parts` under the admin token (empty if it could not be made).
fn keyed(token: &Secret, parts: &[&[u8]]) -> Vec<u8> {
    // The key is the admin token itself: any length is a valid HMAC key.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(token.expose().as_bytes()) else { return Vec::new() };
    for part in parts {
        m.update(part);
    }
    m.finalize().into_bytes().to_vec()
}

/// The CSRF token of the console's forms for the session `value`, when it is a live session:
/// the same on every listener sharing the admin token, and useless without the session.
pub(crate) fn csrf(token: &Secret, value: &str) -> Option<String> {
    verify(token, value).then(|| URL_SAFE_NO_PAD.encode(keyed(token, &[b"keel-admin-csrf:", value.as_bytes()])))
}

/// The id of the session `value` (never its secret parts), when it is a live session.
pub(crate) fn id(token: &Secret, value: &str) -> Option<String> {
    signed(token, value).map(|(id, _)| id).filter(|_| verify(token, value))
}

/// A new session cookie's value, valid for [`SESSION_TTL`].
pub(crate) fn issue(token: &Secret) -> String {
    let expiry = unix_now() + SESSION_TTL.as_secs();
    let id = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
    format!("{expiry}.{id}.{}", URL_SAFE_NO_PAD.encode(mac(token, expiry, &id)))
}

/// The `Set-Cookie` header value for `value` (or one that clears the cookie).
pub(crate) fn set_cookie(value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{COOKIE}={v}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_TTL.as_secs()),
        None => format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

/// The session `value` names (its id and expiry) when this token signed it and it has not
/// expired; whether it was ended is not asked. The MAC is compared in constant time.
fn signed(token: &Secret, value: &str) -> Option<(String, u64)> {
    use subtle::ConstantTimeEq as _;
    let mut parts = value.split('.');
    let (expiry, id, tag) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let expiry = expiry.parse::<u64>().ok()?;
    if expiry <= unix_now() || expiry > unix_now() + SESSION_TTL.as_secs() {
        return None;
    }
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    let want = mac(token, expiry, id);
    (!want.is_empty() && bool::from(want.ct_eq(&tag))).then(|| (id.to_owned(), expiry))
}

/// Whether `value` is a session cookie this token signed that has not expired or been ended.
pub(crate) fn verify(token: &Secret, value: &str) -> bool {
    signed(token, value)
        .is_some_and(|(id, _)| !ended().lock().unwrap_or_else(PoisonError::into_inner).contains_key(&id))
}

/// Ends the session of `value` (when this token signed it) on every listener of the process.
pub(crate) fn end(token: &Secret, value: &str) {
    let Some((id, expiry)) = signed(token, value) else { return };
    let mut ended = ended().lock().unwrap_or_else(PoisonError::into_inner);
    let now = unix_now();
    ended.retain(|_, until| *until > now);
    if ended.len() >= MAX_ENDED
        && let Some(soonest) = ended.iter().min_by_key(|(_, until)| **until).map(|(id, _)| id.clone())
    {
        ended.remove(&soonest);
    }
    ended.insert(id, expiry);
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
pub struct SignInCodes {
    codes: Arc<Mutex<HashMap<String, Instant>>>,
}

impl SignInCodes {
    /// A new code, valid once for an hour: `/admin/login?code=<code>` signs a browser in.
    pub fn issue(&self) -> String {
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
        let mut parts = c.split('.');
        let (expiry, id, tag) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let later = expiry.parse::<u64>().unwrap() + 1;
        assert!(!verify(&a, &format!("{later}.{id}.{tag}")), "a moved expiry");
        assert!(!verify(&a, &format!("{expiry}.{id}x.{tag}")), "another id");
        assert!(!verify(&a, &format!("{expiry}.{id}.{tag}x")), "a changed tag");
        let past = unix_now() - 1;
        assert!(!verify(&a, &format!("{past}.{id}.{}", URL_SAFE_NO_PAD.encode(mac(&a, past, id)))), "expired");
        for junk in ["", ".", "x.y", "1.", "1.2.3.4", "99999999999999999999.abc.def"] {
            assert!(!verify(&a, junk), "{junk}");
        }
    }

    #[test]
    fn an_ended_session_is_refused_and_others_are_not() {
        let a = Secret::new("token-ended".to_owned());
        let (one, two) = (issue(&a), issue(&a));
        end(&Secret::new("another".to_owned()), &one);
        assert!(verify(&a, &one), "only its own token can end a session");
        end(&a, &one);
        assert!(!verify(&a, &one), "ended");
        assert!(verify(&a, &two), "a session of its own");
        end(&a, "garbage");
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
