//! JSON Web Tokens: issue and verify, with typed claims and axum extractors.
//!
//! * **Algorithms** — HS256 (secret of at least 32 bytes), RS256 (verify only) and EdDSA. Each key pins its
//!   algorithm: a token whose header names another one (including `none`, and HS256 signed
//!   with an RSA public key as the secret — algorithm confusion) is refused.
//! * **Rotation** — several verification keys, chosen by the token header's `kid`; an unknown
//!   `kid` is refused. New tokens are signed with the one signing key.
//! * **Claims** — `exp` is required; `iss` and `aud` are required and checked when configured;
//!   `exp`/`nbf` get a small leeway. Claims are a serde type, so a claim of the wrong type
//!   (a number for `sub`, an array for `role`, a null `email`) fails to verify: it is a 401, never
//!   a panic and never a silently half-filled identity.
//! * **Revocation** — [`Jwt::with_revocations`] also refuses tokens of ended sessions (an `sv`
//!   claim below the subject's recorded session version, see [`crate::sessions`]).
//! * **Extractors** — [`Auth<C>`] (401 problem without a valid token), `Option<Auth<C>>` (no
//!   `Authorization` header → `None`; a bad token is still a 401) and [`RequireRole<R, C>`] (403
//!   without the role). Every 401 carries `WWW-Authenticate: Bearer`.
//! * **Layer** — [`RequireRoleLayer`] guards a whole router with a role and hands the verified
//!   claims to handlers as an `Extension<C>`.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use keel_config::Secret;
//! use keel_security::jwt::{Auth, Claims, Jwt, JwtKey, RequireRole, Role};
//!
//! struct Admin;
//! impl Role for Admin {
//!     const NAME: &'static str = "admin";
//! }
//!
//! let jwt = Jwt::builder()
//!     .issuer("https://auth.example")
//!     .key(JwtKey::hs256("2025-01", &Secret::new("0123456789abcdef0123456789abcdef-not-this")).unwrap())
//!     .sign_with("2025-01")
//!     .build()
//!     .unwrap();
//! let token = jwt.issue(&jwt.claims("user-1").role("admin")).unwrap();
//! let claims: Claims = jwt.verify(&token).unwrap();
//! assert_eq!(claims.sub, "user-1");
//!
//! let app: Router = Router::new()
//!     .route("/me", get(|Auth(c): Auth| async move { c.sub }))
//!     .route("/admin", get(|_: RequireRole<Admin>| async { "hi admin" }))
//!     .layer(jwt.extension());
//! ```

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{StatusCode, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::{JwtAlgorithm, JwtConfig};
use crate::sessions::Revocations;
use keel_config::Secret;
use keel_http::Problem;

/// Shortest HS256 secret accepted: the hash size, as RFC 7518 §3.2 requires.
pub const MIN_HS256_SECRET: usize = 32;

/// Why a token was refused, or a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    Missing,
    /// The `Authorization` header uses another scheme (`Basic …`): no bearer token was sent.
    #[error("not a bearer token")]
    NotBearer,
    /// Not a JWT, or its header is unreadable or names an unsupported algorithm (`none`).
    #[error("malformed token")]
    Malformed,
    /// The header's `kid` names no known key (or the token has none and several keys exist).
    #[error("unknown key id")]
    UnknownKey,
    /// The header names an algorithm other than the one pinned for its key.
    #[error("algorithm not allowed for this key")]
    WrongAlgorithm,
    /// The signature does not verify.
    #[error("invalid signature")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` names none of the configured audiences.
    #[error("wrong audience")]
    WrongAudience,
    /// A required claim is missing, or a claim has the wrong type.
    #[error("invalid claims: {0}")]
    Claims(String),
    /// A key could not be loaded (bad PEM, short secret), or signing failed.
    #[error("key error: {0}")]
    Key(String),
    /// Signing was asked of a verify-only configuration.
    #[error("no signing key is configured")]
    NoSigningKey,
    /// The token's session was ended: its `sv` is below the subject's current session version
    /// (see [`crate::sessions`]).
    #[error("session revoked")]
    Revoked,
}

impl JwtError {
    fn from_lib(e: &jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidAlgorithmName => {
                Self::Malformed
            }
            ErrorKind::InvalidSignature => Self::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::UnsupportedAlgorithm => {
                Self::WrongAlgorithm
            }
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) => Self::Claims(format!("`{c}` is required")),
            ErrorKind::InvalidClaimFormat(c) => Self::Claims(format!("`{c}` has the wrong type")),
            // serde's message names the claim and the type it wanted; it never quotes values.
            ErrorKind::Json(err) => Self::Claims(err.to_string()),
            _ => Self::Key(e.to_string()),
        }
    }

    /// Whether the token was at fault (401) rather than the server's keys (500).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Self::Key(_) | Self::NoSigningKey)
    }
}

/// One key, with its `kid` and pinned algorithm.
#[derive(Clone)]
pub struct JwtKey {
    kid: String,
    alg: Algorithm,
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl JwtKey {
    /// An HS256 key; the secret must be at least [`MIN_HS256_SECRET`] bytes.
    pub fn hs256(kid: impl Into<String>, secret: &Secret) -> Result<Self, JwtError> {
        let bytes = secret.expose().as_bytes();
        if bytes.len() < MIN_HS256_SECRET {
            return Err(JwtError::Key(format!("an HS256 secret needs at least {MIN_HS256_SECRET} bytes")));
        }
        Ok(Self {
            kid: kid.into(),
            alg: Algorithm::HS256,
            decoding: DecodingKey::from_secret(bytes),
            encoding: Some(EncodingKey::from_secret(bytes)),
        })
    }

    /// An RS256 key from a PEM public key: it verifies tokens and never signs them.
    ///
    /// The `rsa` crate behind RS256 does not compute with a private key in constant time
    /// (RUSTSEC-2023-0071, the Marvin attack), so Keel does not sign with RSA: issue tokens with
    /// [`JwtKey::eddsa`] (or [`JwtKey::hs256`]) and keep RS256 for verifying tokens that an
    /// identity provider signed. Verification uses the public key only, which has nothing to leak.
    pub fn rs256(kid: impl Into<String>, public_pem: &str) -> Result<Self, JwtError> {
        let decoding = DecodingKey::from_rsa_pem(public_pem.as_bytes()).map_err(|e| JwtError::Key(e.to_string()))?;
        Ok(Self { kid: kid.into(), alg: Algorithm::RS256, decoding, encoding: None })
    }

    /// An EdDSA (Ed25519) key from a PEM public key, and the PEM private key where tokens are
    /// issued.
    pub fn eddsa(kid: impl Into<String>, public_pem: &str, private_pem: Option<&Secret>) -> Result<Self, JwtError> {
        let decoding = DecodingKey::from_ed_pem(public_pem.as_bytes()).map_err(|e| JwtError::Key(e.to_string()))?;
        let encoding = private_pem
            .map(|p| EncodingKey::from_ed_pem(p.expose().as_bytes()))
            .transpose()
            .map_err(|e| JwtError::Key(e.to_string()))?;
        Ok(Self { kid: kid.into(), alg: Algorithm::EdDSA, decoding, encoding })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// Builds a [`Jwt`].
#[derive(Debug, Default)]
pub struct JwtBuilder {
    keys: Vec<JwtKey>,
    signing: Option<String>,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway: Option<Duration>,
    ttl: Option<Duration>,
}

impl JwtBuilder {
    /// Adds a verification key (rotation: keep the old key listed until its tokens expired).
    pub fn key(mut self, key: JwtKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Signs new tokens with the key `kid`.
    pub fn sign_with(mut self, kid: impl Into<String>) -> Self {
        self.signing = Some(kid.into());
        self
    }

    /// Requires and checks `iss`; issued tokens carry it.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Requires `aud` to name one of these; issued tokens carry them.
    pub fn audience<S: Into<String>>(mut self, audience: impl IntoIterator<Item = S>) -> Self {
        self.audience = audience.into_iter().map(Into::into).collect();
        self
    }

    /// Clock skew tolerated on `exp` and `nbf`. Default 30 s.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = Some(leeway);
        self
    }

    /// Lifetime of issued tokens. Default 5 min.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The verifier, or why the keys do not fit together.
    pub fn build(self) -> Result<Jwt, JwtError> {
        let leeway = self.leeway.unwrap_or(Duration::from_secs(30)).as_secs();
        let mut keys = HashMap::with_capacity(self.keys.len());
        let mut signing = None;
        for k in self.keys {
            // One algorithm per key: the header's `alg` must equal it (see `Jwt::verify`).
            let mut v = Validation::new(k.alg);
            v.leeway = leeway;
            v.validate_nbf = true;
            let mut required = vec!["exp"];
            if let Some(iss) = &self.issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            if self.audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&self.audience);
                required.push("aud");
            }
            v.set_required_spec_claims(&required);
            if self.signing.as_deref() == Some(k.kid.as_str()) {
                let enc = k.encoding.clone().ok_or_else(|| {
                    JwtError::Key(if k.alg == Algorithm::RS256 {
                        format!("signing key `{}` is RS256, which verifies only: sign with EdDSA or HS256", k.kid)
                    } else {
                        format!("signing key `{}` has no private key or secret", k.kid)
                    })
                })?;
                signing = Some((k.kid.clone(), k.alg, enc));
            }
            if keys.insert(k.kid.clone(), (k.alg, k.decoding, v)).is_some() {
                return Err(JwtError::Key(format!("key id `{}` is listed twice", k.kid)));
            }
        }
        if let Some(kid) = &self.signing
            && signing.is_none()
        {
            return Err(JwtError::Key(format!("signing key `{kid}` is not among the keys")));
        }
        let only = if keys.len() == 1 { keys.keys().next().cloned() } else { None };
        Ok(Jwt {
            revocations: None,
            inner: Arc::new(Inner {
                keys,
                only,
                signing,
                issuer: self.issuer,
                audience: self.audience,
                ttl: self.ttl.unwrap_or(Duration::from_secs(300)),
            }),
        })
    }
}

struct Inner {
    keys: HashMap<String, (Algorithm, DecodingKey, Validation)>,
    /// The kid used for tokens without one, when exactly one key is configured.
    only: Option<String>,
    signing: Option<(String, Algorithm, EncodingKey)>,
    issuer: Option<String>,
    audience: Vec<String>,
    ttl: Duration,
}

/// Issues and verifies tokens. Cheap to clone; handlers find it through [`Jwt::extension`].
#[derive(Clone)]
pub struct Jwt {
    inner: Arc<Inner>,
    revocations: Option<Revocations>,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.inner.keys.keys().collect();
        kids.sort();
        f.debug_struct("Jwt")
            .field("kids", &kids)
            .field("signing", &self.inner.signing.as_ref().map(|s| &s.0))
            .finish_non_exhaustive()
    }
}

impl Jwt {
    /// A builder.
    pub fn builder() -> JwtBuilder {
        JwtBuilder::default()
    }

    /// The verifier `security.jwt.*` describes.
    pub fn from_config(cfg: &JwtConfig) -> Result<Self, JwtError> {
        let mut b = Jwt::builder().leeway(cfg.leeway).ttl(cfg.ttl).audience(cfg.audience.iter().cloned());
        if let Some(iss) = &cfg.issuer {
            b = b.issuer(iss.clone());
        }
        if let Some(kid) = &cfg.signing_key {
            b = b.sign_with(kid.clone());
        }
        for (kid, k) in &cfg.keys {
            let missing = |what: &str| JwtError::Key(format!("security.jwt.keys.{kid}: {what} is required"));
            let key = match k.algorithm {
                Some(JwtAlgorithm::HS256) => JwtKey::hs256(kid, k.secret.as_ref().ok_or_else(|| missing("secret"))?)?,
                Some(JwtAlgorithm::RS256) => {
                    if k.private_key.is_some() {
                        return Err(JwtError::Key(format!(
                            "security.jwt.keys.{kid}.private_key: RS256 keys verify only; sign with EdDSA"
                        )));
                    }
                    JwtKey::rs256(kid, k.public_key.as_deref().ok_or_else(|| missing("public_key"))?)?
                }
                Some(JwtAlgorithm::EdDSA) => JwtKey::eddsa(
                    kid,
                    k.public_key.as_deref().ok_or_else(|| missing("public_key"))?,
                    k.private_key.as_ref(),
                )?,
                None => return Err(missing("algorithm")),
            };
            b = b.key(key);
        }
        b.build()
    }

    /// This verifier, also refusing tokens whose session `revocations` records as ended
    /// ([`JwtError::Revoked`]).
    pub fn with_revocations(mut self, revocations: Revocations) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// The revocations this verifier checks, if any.
    pub fn revocations(&self) -> Option<&Revocations> {
        self.revocations.as_ref()
    }

    /// An `axum::Extension` carrying this verifier, for the extractors: `router.layer(jwt.extension())`.
    pub fn extension(&self) -> axum::Extension<Jwt> {
        axum::Extension(self.clone())
    }

    /// Standard claims for `sub`: `iat` now, `exp` after the configured lifetime, and the
    /// configured `iss` and `aud`.
    pub fn claims(&self, sub: impl Into<String>) -> Claims {
        let now = now();
        Claims {
            sub: sub.into(),
            exp: now + self.inner.ttl.as_secs(),
            iat: Some(now),
            nbf: None,
            iss: self.inner.issuer.clone(),
            aud: self.inner.audience.clone(),
            role: None,
            roles: Vec::new(),
            email: None,
            email_verified: None,
            sv: None,
            sid: None,
        }
    }

    /// Signs `claims` with the signing key; the header carries its `kid`.
    pub fn issue<C: Serialize>(&self, claims: &C) -> Result<String, JwtError> {
        let (kid, alg, key) = self.inner.signing.as_ref().ok_or(JwtError::NoSigningKey)?;
        let mut header = Header::new(*alg);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, claims, key).map_err(|e| JwtError::Key(e.to_string()))
    }

    /// Verifies `token` and returns its claims as `C`. Never panics, whatever the token holds.
    pub fn verify<C: DeserializeOwned>(&self, token: &str) -> Result<C, JwtError> {
        // A header that does not parse (including `"alg":"none"`, which no key accepts) is malformed.
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let kid = match (&header.kid, &self.inner.only) {
            (Some(kid), _) => kid,
            (None, Some(only)) => only,
            (None, None) => return Err(JwtError::UnknownKey),
        };
        let (alg, key, validation) = self.inner.keys.get(kid).ok_or(JwtError::UnknownKey)?;
        if header.alg != *alg {
            return Err(JwtError::WrongAlgorithm);
        }
        let claims =
            jsonwebtoken::decode::<C>(token, key, validation).map(|d| d.claims).map_err(|e| JwtError::from_lib(&e))?;
        if let Some(revoked) = self.revocations.as_ref().filter(|r| !r.is_empty()) {
            let session = session_of(token)?;
            if revoked.is_revoked(&session.sub, session.sv) {
                return Err(JwtError::Revoked);
            }
        }
        Ok(claims)
    }
}

/// The claims a revocation check reads, whatever the application's claims type.
#[derive(Deserialize)]
struct Session {
    sub: String,
    #[serde(default)]
    sv: Option<u64>,
}

/// Reads `sub` and `sv` from a token whose signature has just been verified (the same bytes).
fn session_of(token: &str) -> Result<Session, JwtError> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).ok_or(JwtError::Malformed)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&json).map_err(|e| JwtError::Claims(e.to_string()))
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// The registered claims plus the common identity ones. Use your own type for more.
///
/// Optional string claims may be absent, but a `null` or a value of another type is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: who the token is about.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub iss: Option<String>,
    /// Audience (one string or an array on the wire).
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    /// A single role.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub role: Option<String>,
    /// Several roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub email: Option<String>,
    /// Whether the subject proved the e-mail address is theirs (OpenID Connect's
    /// `email_verified`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    /// The subject's session version when the token was issued (see [`crate::sessions`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sv: Option<u64>,
    /// The session the token was issued for (OpenID Connect's `sid`): lets a service tell the
    /// caller's own session in a list of them.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub sid: Option<String>,
}

impl Claims {
    /// Sets `role`.
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.role = Some(role.into());
        self
    }

    /// Sets `email`.
    pub fn email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self
    }

    /// Sets `email_verified`.
    pub fn email_verified(mut self, verified: bool) -> Self {
        self.email_verified = Some(verified);
        self
    }

    /// Sets the session version `sv`.
    pub fn session_version(mut self, version: u64) -> Self {
        self.sv = Some(version);
        self
    }

    /// Sets the session id `sid`.
    pub fn session_id(mut self, id: impl Into<String>) -> Self {
        self.sid = Some(id.into());
        self
    }
}

/// Absent → `None` (through `#[serde(default)]`); present must be a string, never `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Claims that carry roles, for [`RequireRole`].
pub trait HasRoles {
    /// Whether the subject has `role`.
    fn has_role(&self, role: &str) -> bool;
}

impl HasRoles for Claims {
    fn has_role(&self, role: &str) -> bool {
        self.role.as_deref() == Some(role) || self.roles.iter().any(|r| r == role)
    }
}

/// A role, named at the type level for [`RequireRole`].
pub trait Role: Send + Sync + 'static {
    /// The role's name as it appears in the claims.
    const NAME: &'static str;
}

/// The verified claims of the request's bearer token. Rejects with a 401 problem.
#[derive(Debug, Clone)]
pub struct Auth<C = Claims>(pub C);

/// The verified claims, when the subject has the role `R`. Rejects with 401 without a valid
/// token and 403 without the role.
#[derive(Debug, Clone)]
pub struct RequireRole<R, C = Claims>(pub C, PhantomData<fn() -> R>);

impl<R, C> RequireRole<R, C> {
    /// The verified claims.
    pub fn claims(&self) -> &C {
        &self.0
    }

    /// The verified claims, owned.
    pub fn into_inner(self) -> C {
        self.0
    }
}

/// Why an extractor refused the request.
#[derive(Debug)]
pub struct AuthRejection {
    status: StatusCode,
    error: JwtError,
    role: Option<Arc<str>>,
}

impl AuthRejection {
    /// The token error behind the rejection.
    pub fn error(&self) -> &JwtError {
        &self.error
    }
}

impl From<AuthRejection> for Problem {
    /// The 401 or 403 problem, with its `WWW-Authenticate` challenge (RFC 6750 §3).
    fn from(r: AuthRejection) -> Self {
        let (problem, challenge) = match (r.status, &r.error) {
            (StatusCode::FORBIDDEN, _) => (
                Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
                    .detail(format!("this needs the role `{}`", r.role.as_deref().unwrap_or_default())),
                "Bearer error=\"insufficient_scope\"",
            ),
            (StatusCode::UNAUTHORIZED, JwtError::Missing) => (
                Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
                    .detail("send a bearer token in the Authorization header"),
                "Bearer",
            ),
            // No token was sent (RFC 6750 §3.1: no error code), so none was refused.
            (StatusCode::UNAUTHORIZED, JwtError::NotBearer) => (
                Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized").detail(
                    "expected a Bearer token: the Authorization header uses another scheme \
                     (send `Authorization: Bearer <access token>`)",
                ),
                "Bearer",
            ),
            (StatusCode::UNAUTHORIZED, e) => (
                Problem::new(StatusCode::UNAUTHORIZED, "invalid-token", "Unauthorized")
                    .detail(format!("the bearer token was refused: {}", public_reason(e))),
                "Bearer error=\"invalid_token\"",
            ),
            _ => (Problem::internal(), ""),
        };
        if challenge.is_empty() { problem } else { problem.challenge(challenge) }
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}

/// What a client is told: the class of failure, never serde's text about the token's contents.
fn public_reason(e: &JwtError) -> &'static str {
    match e {
        JwtError::Expired => "expired",
        JwtError::NotYetValid => "not yet valid",
        JwtError::Claims(_) => "its claims are missing or of the wrong type",
        JwtError::WrongIssuer | JwtError::WrongAudience => "issued for another service",
        JwtError::Revoked => "its session was ended (sign in again, or refresh it)",
        _ => "malformed or not signed by a trusted key",
    }
}

fn bearer(headers: &http::HeaderMap) -> Result<Option<&str>, JwtError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| JwtError::Malformed)?;
    match keel_http::bearer_token(value) {
        Some(token) => Ok(Some(token)),
        None => {
            let scheme = value.trim_start().split(' ').next().unwrap_or_default();
            Err(if scheme.eq_ignore_ascii_case("bearer") { JwtError::Malformed } else { JwtError::NotBearer })
        }
    }
}

fn reject(error: JwtError) -> AuthRejection {
    let status = if error.is_client_error() { StatusCode::UNAUTHORIZED } else { StatusCode::INTERNAL_SERVER_ERROR };
    AuthRejection { status, error, role: None }
}

fn authenticate<C: DeserializeOwned>(parts: &Parts) -> Result<Option<C>, AuthRejection> {
    let Some(jwt) = parts.extensions.get::<Jwt>() else {
        // Only a refusal if there is a token to verify.
        bearer(&parts.headers).map_err(reject)?.map_or(Ok(()), |_| {
            tracing::error!("Auth extractor used on a route without the Jwt extension (router.layer(jwt.extension()))");
            Err(reject(JwtError::NoSigningKey))
        })?;
        return Ok(None);
    };
    jwt.authenticate(&parts.headers)
}

impl Jwt {
    /// The claims of the bearer token in `headers`' `Authorization` (HTTP headers, or gRPC
    /// metadata as headers), `Ok(None)` when there is none; a refusal is the extractors' own
    /// (`Missing` never: that is `Ok(None)`), whose answer is the 401 problem they give.
    pub fn authenticate<C: DeserializeOwned>(&self, headers: &http::HeaderMap) -> Result<Option<C>, AuthRejection> {
        let Some(token) = bearer(headers).map_err(reject)? else { return Ok(None) };
        match self.verify::<C>(token) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                tracing::debug!(error = %e, "bearer token refused");
                Err(reject(e))
            }
        }
    }
}

impl AuthRejection {
    /// No credentials where they are required: 401.
    pub fn missing() -> Self {
        Self { status: StatusCode::UNAUTHORIZED, error: JwtError::Missing, role: None }
    }

    /// Valid credentials without `role`: 403.
    pub fn forbidden(role: impl Into<Arc<str>>) -> Self {
        Self { status: StatusCode::FORBIDDEN, error: JwtError::Missing, role: Some(role.into()) }
    }
}

impl<S: Send + Sync, C: DeserializeOwned + Send + 'static> FromRequestParts<S> for Auth<C> {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match authenticate(parts)? {
            Some(c) => Ok(Auth(c)),
            None => Err(AuthRejection { status: StatusCode::UNAUTHORIZED, error: JwtError::Missing, role: None }),
        }
    }
}

impl<S: Send + Sync, C: DeserializeOwned + Send + 'static> OptionalFromRequestParts<S> for Auth<C> {
    type Rejection = AuthRejection;

    /// No `Authorization` header: `None`. A header with a bad token is still refused: a client
    /// that sends credentials must learn they failed rather than silently act anonymously.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(authenticate(parts)?.map(Auth))
    }
}

/// Guards every route below it: a valid bearer token whose claims have the role, else the same
/// 401/403 problems as the extractors. The claims are inserted as an `Extension<C>`.
///
/// ```
/// use axum::{Extension, Router, routing::get};
/// use keel_security::jwt::{Claims, RequireRoleLayer};
///
/// # fn admin_routes(jwt: keel_security::jwt::Jwt) -> Router {
/// Router::new()
///     .route("/admin/users", get(|Extension(c): Extension<Claims>| async move { c.sub }))
///     .layer(RequireRoleLayer::<Claims>::new("admin"))
///     .layer(jwt.extension()) // outermost: the guard needs the verifier
/// # }
/// ```
pub struct RequireRoleLayer<C = Claims> {
    role: Arc<str>,
    _claims: PhantomData<fn() -> C>,
}

impl<C> RequireRoleLayer<C> {
    /// Requires `role`.
    pub fn new(role: impl Into<Arc<str>>) -> Self {
        Self { role: role.into(), _claims: PhantomData }
    }
}

impl<C> Clone for RequireRoleLayer<C> {
    fn clone(&self) -> Self {
        Self { role: self.role.clone(), _claims: PhantomData }
    }
}

impl<C> std::fmt::Debug for RequireRoleLayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireRoleLayer").field("role", &self.role).finish()
    }
}

impl<S, C> tower::Layer<S> for RequireRoleLayer<C> {
    type Service = RequireRoleService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireRoleService { inner, role: self.role.clone(), _claims: PhantomData }
    }
}

/// The service of [`RequireRoleLayer`].
pub struct RequireRoleService<S, C = Claims> {
    inner: S,
    role: Arc<str>,
    _claims: PhantomData<fn() -> C>,
}

impl<S: Clone, C> Clone for RequireRoleService<S, C> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), role: self.role.clone(), _claims: PhantomData }
    }
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for RequireRoleService<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireRoleService").field("inner", &self.inner).field("role", &self.role).finish()
    }
}

impl<S, C, B> tower::Service<http::Request<B>> for RequireRoleService<S, C>
where
    S: tower::Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    C: DeserializeOwned + HasRoles + Clone + Send + Sync + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let verdict = match authenticate::<C>(&parts) {
            Ok(Some(c)) if c.has_role(&self.role) => Ok(c),
            Ok(Some(_)) => Err(AuthRejection {
                status: StatusCode::FORBIDDEN,
                error: JwtError::Missing,
                role: Some(self.role.clone()),
            }),
            Ok(None) => Err(AuthRejection { status: StatusCode::UNAUTHORIZED, error: JwtError::Missing, role: None }),
            Err(r) => Err(r),
        };
        match verdict {
            Ok(claims) => {
                parts.extensions.insert(claims);
                // The clone that was polled ready serves this call; a fresh clone waits its turn.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(http::Request::from_parts(parts, body)).await })
            }
            Err(rejection) => Box::pin(async move { Ok(rejection.into_response()) }),
        }
    }
}

impl<S, R, C> FromRequestParts<S> for RequireRole<R, C>
where
    S: Send + Sync,
    R: Role,
    C: DeserializeOwned + HasRoles + Send + 'static,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Auth(claims) = <Auth<C> as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        if claims.has_role(R::NAME) {
            Ok(RequireRole(claims, PhantomData))
        } else {
            Err(AuthRejection {
                status: StatusCode::FORBIDDEN,
                error: JwtError::Missing,
                role: Some(Arc::from(R::NAME)),
            })
        }
    }
}
