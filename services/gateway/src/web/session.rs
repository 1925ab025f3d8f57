//! Who is looking at a page, and the checks every form passes.
//!
//! * **The session cookie** holds the refresh token auth gave at sign-in, and nothing else:
//!   `HttpOnly`, `SameSite=Lax`, `Path=/`, and `Secure` with the `__Host-` prefix outside the
//!   development profile (`app.web.secure_cookies`). The access token never reaches the browser:
//!   it is kept in this gateway's memory, keyed by a SHA-256 digest of the refresh token, until a
//!   minute before it expires, and, when the gateway has Redis, in Redis for every gateway
//!   instance: under another digest of the refresh token, sealed (AES-256-GCM) with a key derived
//!   from it, so what Redis holds is of no use without the browser's cookie. A page whose session
//!   is in neither (an expired access token, Redis away) refreshes it at auth, which rotates the
//!   refresh token: the answer carries the new cookie. Two tabs refreshing at once get the same successor (auth's
//!   `refresh_reuse_grace`). A session auth refuses is cleared; one auth cannot check right now
//!   is kept, and the page is shown signed out with a note.
//! * **CSRF** — every form carries a `csrf` field (an upload's multipart form: in its action's
//!   query) equal to the `ce_csrf` cookie (a random token set on the first page; `__Host-` and
//!   `Secure` like the session's): a POST without both, or with two that differ, is refused
//!   with 403 before any handler runs (double submit; the `__Host-` prefix stops a sibling
//!   subdomain from planting the cookie). A POST the browser marks `Sec-Fetch-Site:
//!   cross-site` is refused too.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, Generate, Payload};
use aes_gcm::{Aes256Gcm, Key, KeyInit, Nonce};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cityevents_api::auth::{TokenPair, User};
use cookie::{Cookie, SameSite};
use http::{HeaderValue, Method, StatusCode, header};
use keel::http::client_ip::client_ip;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::time::Instant;

use super::Site;
use super::call::Failure;
use crate::routes::Upstream;

/// Largest form body read (a form's fields are short; an event's description is the longest).
pub(crate) const FORM_LIMIT: usize = 32 * 1024;

/// How long a session cookie lives in the browser: auth's default refresh-token lifetime. A
/// token auth has expired sooner is refused at the next refresh, and the cookie cleared.
const SESSION_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The device cookie's lifetime: that of auth's device tokens (`app.lockout.device_ttl`'s
/// default); auth ignores a token past its own setting.
const DEVICE_MAX_AGE: Duration = Duration::from_secs(180 * 24 * 3600);

/// How long the refresh mark lives: the redirect that follows it comes at once.
const REFRESH_MARK_AGE: Duration = Duration::from_secs(60);

/// Most sessions whose access token is kept in memory; past it the one expiring first goes.
const MAX_CACHED: usize = 20_000;

/// Kept this much less than the access token's own lifetime, so a page never sends one that
/// expires in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// The signed-in person a page is for.
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    /// Their access token, sent to the services as a bearer token.
    pub(crate) access: String,
    /// Their account as auth last said.
    pub(crate) user: User,
    /// Their refresh token (the cookie's value), for signing out.
    pub(crate) refresh: String,
}

/// Who a page is for (a request extension set by [`middleware`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Viewer {
    /// `None`: signed out.
    pub(crate) signed: Option<Signed>,
    /// The session could not be checked (auth did not answer): shown signed out, cookie kept.
    pub(crate) unchecked: bool,
}

impl Viewer {
    /// The access token, if signed in.
    pub(crate) fn token(&self) -> Option<&str> {
        self.signed.as_ref().map(|s| s.access.as_str())
    }

    /// The account, if signed in.
    pub(crate) fn user(&self) -> Option<&User> {
        self.signed.as_ref().map(|s| &s.user)
    }
}

/// This request's CSRF token, for the forms of its page (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct Csrf(pub(crate) String);

/// The client's address as the gateway resolved it, for the services (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct ClientAddress(pub(crate) HeaderValue);

/// The device token auth gave this browser at an earlier sign-in or reset (a request extension):
/// sent with sign-ins so that failures from elsewhere do not delay them.
#[derive(Debug, Clone)]
pub(crate) struct KnownDevice(pub(crate) Option<String>);

/// A device token to keep in the device cookie (a response extension).
#[derive(Debug, Clone)]
struct RememberDevice(String);

/// What a handler did to the session (a response extension the middleware turns into cookies).
#[derive(Debug, Clone)]
pub(crate) enum SessionChange {
    /// Signed in: a new refresh token.
    Start(String),
    /// Signed out: clear the cookie.
    End,
    /// A service refused the viewer's access token (a role change, a ban, a password change
    /// elsewhere): the kept copy is dropped so the next request refreshes it at auth. Refused
    /// again right after a refresh, the session is ended and the browser sent to log in, so a
    /// refusal can never turn into a redirect loop.
    Refused,
}

#[derive(Debug, Clone)]
struct Cached {
    access: String,
    user: User,
    until: Instant,
    /// Its key in Redis, when it is shared there.
    shared: Option<String>,
}

/// A session's access token as the gateway instances share it in Redis.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedSession {
    access: String,
    user: User,
}

/// The session settings and the access tokens kept in memory (and in Redis, shared).
#[derive(Debug)]
pub(crate) struct Sessions {
    secure: bool,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    shared: Option<keel::redis::Redis>,
}

impl Sessions {
    pub(crate) fn new(secure: bool) -> Self {
        Self { secure, cache: Mutex::new(HashMap::new()), shared: None }
    }

    /// Shares the kept access tokens with the other gateway instances through `redis`.
    pub(crate) fn shared(mut self, redis: keel::redis::Redis) -> Self {
        self.shared = Some(redis);
        self
    }

    /// The Redis key of `refresh`'s session and the key it is sealed with: two digests of the
    /// refresh token (256 random bits), apart so that the one does not give the other.
    fn shared_names(redis: &keel::redis::Redis, refresh: &str) -> (String, Key<Aes256Gcm>) {
        let digest = |label: &[u8]| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(label);
            h.update(refresh.as_bytes());
            h.finalize().into()
        };
        let id: String = digest(b"cityevents web session id\0").iter().map(|b| format!("{b:02x}")).collect();
        (redis.key(&format!("web-session:{id}")), Key::<Aes256Gcm>::from(digest(b"cityevents web session key\0")))
    }

    /// Stores what `keep` kept for `refresh` in Redis for `lifetime`; a failure only costs other
    /// instances a refresh at auth.
    async fn share(&self, refresh: &str, access: &str, user: &User, lifetime: Duration) {
        let Some(redis) = &self.shared else { return };
        let (name, key) = Self::shared_names(redis, refresh);
        let Ok(plain) = serde_json::to_vec(&SharedSession { access: access.to_owned(), user: user.clone() }) else {
            return;
        };
        let nonce = Nonce::generate();
        let Ok(sealed) = Aes256Gcm::new(&key).encrypt(&nonce, Payload { msg: &plain, aad: name.as_bytes() }) else {
            return;
        };
        let mut value = nonce.to_vec();
        value.extend_from_slice(&sealed);
        let cmd =
            keel::redis::driver::cmd("SET").arg(&name).arg(value).arg("EX").arg(lifetime.as_secs().max(1)).clone();
        match redis.query::<()>(&cmd).await {
            Ok(()) => {
                if let Ok(mut cache) = self.cache.lock()
                    && let Some(c) = cache.get_mut(&Self::digest(refresh))
                {
                    c.shared = Some(name);
                }
            }
            Err(e) => tracing::debug!(error = %e, "a web session could not be shared; other gateways refresh it"),
        }
    }

    /// The session another instance shared for `refresh`, kept here too; none when there is
    /// none, it cannot be read, or Redis does not answer.
    async fn shared_lookup(&self, refresh: &str) -> Option<Cached> {
        let redis = self.shared.as_ref()?;
        let (name, key) = Self::shared_names(redis, refresh);
        let cmd = keel::redis::driver::cmd("GET").arg(&name).clone();
        let pipe = keel::redis::driver::pipe().add_command(cmd).cmd("TTL").arg(&name).clone();
        let (value, ttl): (Option<Vec<u8>>, i64) = match redis.pipeline(&pipe).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "shared web sessions cannot be read; refreshing at auth");
                return None;
            }
        };
        let value = value?;
        if value.len() < 12 || ttl <= 0 {
            return None;
        }
        let (nonce, sealed) = value.split_at(12);
        let nonce = Nonce::try_from(nonce).ok()?;
        let plain = Aes256Gcm::new(&key).decrypt(&nonce, Payload { msg: sealed, aad: name.as_bytes() }).ok()?;
        let s: SharedSession = serde_json::from_slice(&plain).ok()?;
        let until = Instant::now() + Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
        let c = Cached { access: s.access, user: s.user, until, shared: Some(name) };
        self.insert(refresh, c.clone());
        Some(c)
    }

    /// Drops the shared copy named `name`, if any.
    async fn unshare(&self, name: Option<String>) {
        let (Some(redis), Some(name)) = (&self.shared, name) else { return };
        if let Err(e) = redis.query::<()>(keel::redis::driver::cmd("DEL").arg(&name)).await {
            tracing::debug!(error = %e, "a shared web session could not be dropped; it ends with its access token");
        }
    }

    /// The session cookie's name.
    pub(crate) fn session_cookie(&self) -> &'static str {
        if self.secure { "__Host-ce_session" } else { "ce_session" }
    }

    /// The CSRF cookie's name.
    pub(crate) fn csrf_cookie(&self) -> &'static str {
        if self.secure { "__Host-ce_csrf" } else { "ce_csrf" }
    }

    /// The cookie that makes the next request refresh its session at auth (set when a service
    /// refused the kept access token).
    pub(crate) fn refresh_cookie(&self) -> &'static str {
        if self.secure { "__Host-ce_refresh" } else { "ce_refresh" }
    }

    /// The cookie that holds a sign-in's `state` while the browser is at the provider (see
    /// `oidc.rs`): the provider's redirect back must come to the browser that started it.
    pub(crate) fn oidc_cookie(&self) -> &'static str {
        if self.secure { "__Host-ce_oidc" } else { "ce_oidc" }
    }

    /// The device cookie's name: it outlives sign-outs (it proves the device, not a session).
    pub(crate) fn device_cookie(&self) -> &'static str {
        if self.secure { "__Host-ce_device" } else { "ce_device" }
    }

    pub(crate) fn cookie(&self, name: &'static str, value: String, max_age: Duration) -> HeaderValue {
        let c = Cookie::build((name, value))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .max_age(cookie::time::Duration::seconds(i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX)))
            .build();
        // A cookie of our own making (base64url values) is always a valid header.
        HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn digest(refresh: &str) -> [u8; 32] {
        Sha256::digest(refresh.as_bytes()).into()
    }

    fn cached(&self, refresh: &str) -> Option<Cached> {
        let cache = self.cache.lock().ok()?;
        cache.get(&Self::digest(refresh)).filter(|c| c.until > Instant::now()).cloned()
    }

    /// Keeps `pair`'s access token for `refresh` until a minute before it expires; the lifetime
    /// kept (zero: too short-lived to keep).
    fn keep(&self, refresh: &str, pair: &TokenPair, user: &User) -> Duration {
        let lifetime = Duration::from_secs(pair.expires_in).saturating_sub(EXPIRY_MARGIN);
        if lifetime.is_zero() {
            return lifetime;
        }
        let cached = Cached {
            access: pair.access_token.clone(),
            user: user.clone(),
            until: Instant::now() + lifetime,
            shared: None,
        };
        self.insert(refresh, cached);
        lifetime
    }

    fn insert(&self, refresh: &str, cached: Cached) {
        let Ok(mut cache) = self.cache.lock() else { return };
        let now = Instant::now();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.until > now);
        }
        if cache.len() >= MAX_CACHED
            && let Some(first) = cache.iter().min_by_key(|(_, c)| c.until).map(|(k, _)| *k)
        {
            cache.remove(&first);
        }
        cache.insert(Self::digest(refresh), cached);
    }

    /// Drops what is kept for `refresh` (signed out, or the account changed), here and shared.
    pub(crate) async fn forget(&self, refresh: &str) {
        let removed = self.cache.lock().ok().and_then(|mut cache| cache.remove(&Self::digest(refresh)));
        let name = match (&self.shared, removed.and_then(|c| c.shared)) {
            (_, Some(name)) => Some(name),
            (Some(redis), None) => Some(Self::shared_names(redis, refresh).0),
            (None, None) => None,
        };
        self.unshare(name).await;
    }

    /// Drops the session whose access token is `access`, here and shared: a service refused it
    /// (a role change, a ban, a password change elsewhere), so the next page refreshes it at
    /// auth, which gives one that says what the account may do now, or ends the session.
    pub(crate) async fn forget_access(&self, access: &str) {
        let mut shared = Vec::new();
        if let Ok(mut cache) = self.cache.lock() {
            // Rare (a refusal), so a scan rather than a second index.
            cache.retain(|_, c| {
                let keep = c.access != access;
                if !keep && let Some(name) = &c.shared {
                    shared.push(name.clone());
                }
                keep
            });
        }
        for name in shared {
            self.unshare(Some(name)).await;
        }
    }

    /// Keeps a pair auth just gave (sign-in, password change) with its account.
    pub(crate) async fn started(
        &self,
        site: &Site,
        pair: &TokenPair,
        address: &HeaderValue,
    ) -> Result<Signed, Failure> {
        let user: User = site.get(Upstream::Auth, "/api/v1/me", Some(&pair.access_token), address).await?;
        let lifetime = self.keep(&pair.refresh_token, pair, &user);
        if !lifetime.is_zero() {
            self.share(&pair.refresh_token, &pair.access_token, &user, lifetime).await;
        }
        Ok(Signed { access: pair.access_token.clone(), user, refresh: pair.refresh_token.clone() })
    }

    /// The viewer of a request whose session cookie is `refresh`, and how the cookie changes.
    async fn resolve(
        &self,
        site: &Site,
        refresh: Option<&str>,
        address: &HeaderValue,
        fresh: bool,
    ) -> (Viewer, Option<SessionChange>) {
        let Some(refresh) = refresh else { return (Viewer::default(), None) };
        // `fresh`: a service refused the kept token on the last page; whatever copy another
        // instance or Redis still holds, this one asks auth.
        let kept = match self.cached(refresh) {
            _ if fresh => None,
            Some(c) => Some(c),
            None => self.shared_lookup(refresh).await,
        };
        if let Some(c) = kept {
            let signed = Signed { access: c.access, user: c.user, refresh: refresh.to_owned() };
            return (Viewer { signed: Some(signed), unchecked: false }, None);
        }
        let body = json!({ "refresh_token": refresh });
        let pair: TokenPair = match site.post(Upstream::Auth, "/api/v1/auth/refresh", None, &body, address).await {
            Ok(pair) => pair,
            Err(f) if f.status == StatusCode::UNAUTHORIZED || f.status == StatusCode::BAD_REQUEST => {
                return (Viewer::default(), Some(SessionChange::End));
            }
            Err(f) => {
                tracing::warn!(status = f.status.as_u16(), "a session could not be refreshed; page shown signed out");
                return (Viewer { signed: None, unchecked: true }, None);
            }
        };
        match self.started(site, &pair, address).await {
            Ok(signed) => {
                (Viewer { signed: Some(signed), unchecked: false }, Some(SessionChange::Start(pair.refresh_token)))
            }
            // The refresh went through: the new cookie must be kept whatever happens next.
            Err(_) => (Viewer { signed: None, unchecked: true }, Some(SessionChange::Start(pair.refresh_token))),
        }
    }
}

/// A fresh random token (session-independent: CSRF).
fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Whether `token` looks like one of ours (43 base64url characters).
pub(crate) fn well_formed(token: &str) -> bool {
    token.len() == 43 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie_value(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// Resolves the viewer, checks a POST's CSRF token, and sets the cookies on the way out.
pub(crate) async fn middleware(State(site): State<Arc<Site>>, req: Request, next: Next) -> Response {
    // Files and the API's 404s are the same for everyone: no session to resolve.
    if req.uri().path().starts_with("/static/") || super::is_api(req.uri().path()) {
        return next.run(req).await;
    }
    let sessions = &site.sessions;
    let csrf_cookie = cookie_value(req.headers(), sessions.csrf_cookie()).filter(|t| well_formed(t));
    let csrf = csrf_cookie.clone().unwrap_or_else(random_token);
    let peer =
        req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let ip = client_ip(peer, req.headers(), &site.gw.trusted_proxies);
    let address = HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("0.0.0.0"));

    let req = if req.method() == Method::POST {
        match checked_form(req, csrf_cookie.as_deref()).await {
            Ok(req) => req,
            Err(why) => {
                let mut resp = super::pages::refused(&site, StatusCode::FORBIDDEN, why, &csrf);
                set_csrf(&site, &mut resp, csrf_cookie.is_none(), &csrf);
                return resp;
            }
        }
    } else {
        req
    };
    let session = cookie_value(req.headers(), sessions.session_cookie());
    let must_refresh = cookie_value(req.headers(), sessions.refresh_cookie()).is_some();
    let (viewer, change) = sessions.resolve(&site, session.as_deref(), &address, must_refresh).await;
    let mut req = req;
    req.extensions_mut().insert(viewer);
    req.extensions_mut().insert(Csrf(csrf.clone()));
    req.extensions_mut().insert(ClientAddress(address));
    // Bounded like a token: anything longer is not one of auth's.
    let device = cookie_value(req.headers(), sessions.device_cookie()).filter(|d| d.len() <= 256);
    req.extensions_mut().insert(KnownDevice(device));
    let mut resp = next.run(req).await;
    if let Some(RememberDevice(token)) = resp.extensions_mut().remove::<RememberDevice>() {
        let c = sessions.cookie(sessions.device_cookie(), token, DEVICE_MAX_AGE);
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    let refreshed = matches!(change, Some(SessionChange::Start(_)));
    if must_refresh {
        // Spent: this request asked auth (or had no session to ask for).
        let c = sessions.cookie(sessions.refresh_cookie(), String::new(), Duration::ZERO);
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    let change = match resp.extensions_mut().remove::<SessionChange>() {
        Some(SessionChange::Refused) if refreshed => {
            tracing::info!("a just-refreshed session was refused by a service; signing the browser out");
            to_login(&mut resp);
            Some(SessionChange::End)
        }
        Some(SessionChange::Refused) => {
            if let Some(refresh) = &session {
                sessions.forget(refresh).await;
            }
            // The next request refreshes at auth whatever copy survives elsewhere (another
            // instance's memory, Redis that did not take the delete): refused then, it ends.
            let c = sessions.cookie(sessions.refresh_cookie(), "1".to_owned(), REFRESH_MARK_AGE);
            resp.headers_mut().append(header::SET_COOKIE, c);
            change
        }
        handler => handler.or(change),
    };
    match change {
        Some(SessionChange::Start(refresh)) => {
            let c = sessions.cookie(sessions.session_cookie(), refresh, SESSION_MAX_AGE);
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        Some(SessionChange::End) => {
            let c = sessions.cookie(sessions.session_cookie(), String::new(), Duration::ZERO);
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        Some(SessionChange::Refused) | None => {}
    }
    set_csrf(&site, &mut resp, csrf_cookie.is_none(), &csrf);
    resp
}

/// Points a redirect at the log-in page, which then sends the browser on to where it pointed.
fn to_login(resp: &mut Response) {
    let to = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("/").to_owned();
    if let Ok(v) = HeaderValue::from_str(&super::pages::login_then(&to)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
}

fn set_csrf(site: &Site, resp: &mut Response, new: bool, csrf: &str) {
    if new {
        let sessions = &site.sessions;
        let c = sessions.cookie(sessions.csrf_cookie(), csrf.to_owned(), SESSION_MAX_AGE);
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
}

/// Why a form was refused before its handler.
const CROSS_SITE: &str = "This form was sent from another site, so it was not accepted.";
const EXPIRED: &str = "This form has expired. Go back, reload the page and send it again.";
const TOO_LARGE: &str = "This form is larger than the site accepts.";

/// `req` with its body read back in, when its `csrf` field matches the cookie.
async fn checked_form(req: Request, cookie: Option<&str>) -> Result<Request, &'static str> {
    let cross_site = req.headers().get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site");
    if cross_site {
        return Err(CROSS_SITE);
    }
    let same = |sent: Option<String>| match (cookie, sent) {
        (Some(cookie), Some(sent)) => bool::from(cookie.as_bytes().ct_eq(sent.as_bytes())),
        _ => false,
    };
    // An upload's form (a picture): its token is in the action's query, so the body (megabytes)
    // is checked before it is read, and streams on to its handler.
    let multipart =
        req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"multipart/form-data"));
    if multipart {
        let query = req.uri().query().unwrap_or_default().as_bytes();
        let sent = form_urlencoded::parse(query).find(|(k, _)| k == "csrf").map(|(_, v)| v.into_owned());
        if same(sent) {
            return Ok(req);
        }
        // Read and dropped as it comes (bounded): refused mid-upload, the browser would show
        // a reset connection instead of the refusal.
        super::drain(req.into_body(), cityevents_api::limits::MAX_PICTURE_REQUEST).await;
        return Err(EXPIRED);
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, FORM_LIMIT).await.map_err(|_| TOO_LARGE)?;
    let sent = form_urlencoded::parse(&bytes).find(|(k, _)| k == "csrf").map(|(_, v)| v.into_owned());
    if !same(sent) {
        return Err(EXPIRED);
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// A response that signs the browser in with `refresh`.
pub(crate) fn start(mut resp: Response, refresh: String) -> Response {
    resp.extensions_mut().insert(SessionChange::Start(refresh));
    resp
}

/// A response that keeps `device_token` (auth's, from a sign-in or reset) in the device cookie.
pub(crate) fn remember_device(mut resp: Response, device_token: Option<String>) -> Response {
    // Auth's tokens are ASCII without `;` or spaces: anything else is not kept.
    if let Some(token) = device_token.filter(|t| t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')) {
        resp.extensions_mut().insert(RememberDevice(token));
    }
    resp
}

/// A response to a request whose access token a service refused (see [`SessionChange::Refused`]).
pub(crate) fn refused(resp: impl IntoResponse) -> Response {
    let mut resp = resp.into_response();
    resp.extensions_mut().insert(SessionChange::Refused);
    resp
}

/// A response that signs the browser out.
pub(crate) fn end(resp: impl IntoResponse) -> Response {
    let mut resp = resp.into_response();
    resp.extensions_mut().insert(SessionChange::End);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_session_is_sent_to_log_in_and_then_back() {
        let mut resp = axum::response::Redirect::to("/events/7?x=1").into_response();
        to_login(&mut resp);
        assert_eq!(resp.headers()[header::LOCATION], "/login?next=%2Fevents%2F7%3Fx%3D1");
    }

    #[test]
    fn tokens_are_random_and_well_formed() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert!(well_formed(&a), "{a}");
        assert!(!well_formed("short"));
        assert!(!well_formed(&format!("{}=", &a[..42])));
    }

    #[test]
    fn cookies_are_http_only_lax_and_secure_outside_development() {
        let secure = Sessions::new(true);
        let c = secure.cookie(secure.session_cookie(), "abc".into(), SESSION_MAX_AGE);
        let c = c.to_str().unwrap();
        for part in ["__Host-ce_session=abc", "HttpOnly", "SameSite=Lax", "Secure", "Path=/", "Max-Age=2592000"] {
            assert!(c.contains(part), "{part} not in {c}");
        }
        assert!(!c.contains("Domain"), "{c}");
        let plain = Sessions::new(false);
        let c = plain.cookie(plain.csrf_cookie(), "abc".into(), Duration::ZERO);
        let c = c.to_str().unwrap();
        assert!(c.starts_with("ce_csrf=abc") && c.contains("Max-Age=0") && !c.contains("Secure"), "{c}");
    }

    #[test]
    fn only_auths_device_tokens_are_kept() {
        let kept = |t: &str| {
            remember_device(Response::new(Body::empty()), Some(t.to_owned()))
                .extensions()
                .get::<RememberDevice>()
                .is_some()
        };
        assert!(kept("1764000000.0123456789abcdef0123456789abcdef.00ff"));
        for bad in ["a; Domain=evil.example", "a b", "a\u{e9}", "a,b"] {
            assert!(!kept(bad), "{bad}");
        }
        assert!(remember_device(Response::new(Body::empty()), None).extensions().get::<RememberDevice>().is_none());
        let secure = Sessions::new(true);
        assert_eq!(secure.device_cookie(), "__Host-ce_device");
    }

    #[test]
    fn the_cookie_header_is_read_by_name() {
        let mut h = http::HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; ce_session=tok; b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("ce_csrf=x"));
        assert_eq!(cookie_value(&h, "ce_session").as_deref(), Some("tok"));
        assert_eq!(cookie_value(&h, "ce_csrf").as_deref(), Some("x"));
        assert_eq!(cookie_value(&h, "none"), None);
    }

    fn pair(expires_in: u64) -> TokenPair {
        TokenPair {
            device_token: None,
            access_token: "access".into(),
            refresh_token: "refresh".into(),
            token_type: "Bearer".into(),
            expires_in,
        }
    }

    fn user() -> User {
        User {
            id: uuid::Uuid::now_v7(),
            email: "a@example.com".into(),
            name: "A".into(),
            role: "user".into(),
            email_verified: true,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn access_tokens_are_kept_until_a_minute_before_they_expire() {
        let s = Sessions::new(false);
        s.keep("r1", &pair(900), &user());
        assert_eq!(s.cached("r1").map(|c| c.access).as_deref(), Some("access"));
        assert!(s.cached("r2").is_none());
        tokio::time::advance(Duration::from_secs(839)).await;
        assert!(s.cached("r1").is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.cached("r1").is_none(), "past expiry less the margin");
        s.keep("r3", &pair(30), &user());
        assert!(s.cached("r3").is_none(), "a token too short-lived to keep");
        s.keep("r4", &pair(900), &user());
        s.forget("r4").await;
        assert!(s.cached("r4").is_none());
    }

    /// Two gateway instances on one Redis: a session one of them kept is found by the other
    /// without a refresh at auth; Redis holds it sealed by the cookie; signing out or a refused
    /// token on one instance ends it for the others.
    #[tokio::test]
    async fn gateway_instances_share_sessions_through_redis_sealed_by_the_cookie() {
        let url = keel::testing::redis_url();
        if !keel::testing::require("Redis", &url) {
            return;
        }
        let keys = keel::testing::TestRedis::new(&url);
        let mut cfg = keel::redis::RedisConfig::default();
        cfg.key_prefix = Some(keys.prefix().to_owned());
        let redis = keel::redis::Redis::new("t", &url, &cfg, &keel::telemetry::Metrics::new()).unwrap();
        redis.clone().connect_in_background(tokio_util::sync::CancellationToken::new()).await;
        let instance = || Sessions::new(false).shared(redis.clone());
        let (a, b) = (instance(), instance());
        let refresh = random_token();
        let lifetime = a.keep(&refresh, &pair(900), &user());
        a.share(&refresh, "access", &user(), lifetime).await;
        let found = b.shared_lookup(&refresh).await.expect("the other instance finds it");
        assert_eq!(found.access, "access");
        assert!(b.cached(&refresh).is_some(), "and keeps it in memory too");
        assert!(b.shared_lookup(&random_token()).await.is_none(), "another cookie finds nothing");

        // Sealed: neither the token nor the address is readable in Redis.
        let (name, _) = Sessions::shared_names(&redis, &refresh);
        let raw: Vec<u8> = redis.query(keel::redis::driver::cmd("GET").arg(&name)).await.unwrap();
        assert!(!raw.is_empty());
        assert!(!raw.windows(6).any(|w| w == b"access") && !raw.windows(11).any(|w| w == b"example.com"));
        let ttl: i64 = redis.query(keel::redis::driver::cmd("TTL").arg(&name)).await.unwrap();
        assert!((1..=840).contains(&ttl), "expires with the access token, less the margin: {ttl}");

        // Signed out on one instance: a third finds nothing.
        a.forget(&refresh).await;
        assert!(instance().shared_lookup(&refresh).await.is_none());

        // A token a service refused is dropped from Redis too.
        let other = random_token();
        let refused = TokenPair { access_token: "refused".into(), ..pair(900) };
        let lifetime = b.keep(&other, &refused, &user());
        b.share(&other, "refused", &user(), lifetime).await;
        // Refused on the instance that found it shared.
        let c = instance();
        assert!(c.shared_lookup(&other).await.is_some());
        c.forget_access("refused").await;
        assert!(instance().shared_lookup(&other).await.is_none());
    }

    #[tokio::test]
    async fn a_refused_access_token_is_dropped_so_the_next_page_refreshes() {
        let s = Sessions::new(false);
        s.keep("r1", &pair(900), &user());
        let other = TokenPair { access_token: "other".into(), ..pair(900) };
        s.keep("r2", &other, &user());
        s.forget_access("access").await;
        assert!(s.cached("r1").is_none());
        assert_eq!(s.cached("r2").map(|c| c.access).as_deref(), Some("other"));
    }
}
