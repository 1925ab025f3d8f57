//! The HTTP API: register, verify the address, sign in, rotate and revoke refresh tokens,
//! `GET /me`, the admin-only role change and user list, and account bans (moderators, admins).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use cityevents_api::auth::{
    AccountBanRequest as BanBody, EmailRequest as EmailBody, LoginRequest as LoginBody,
    PasswordChangeRequest as ChangeBody, PasswordReset, PasswordResetRequest as ResetBody,
    RefreshRequest as RefreshBody, RegisterRequest as RegisterBody, Registration, RoleRequest as RoleBody, Session,
    SessionList as Sessions, TokenPair, TokenRequest as TokenBody,
};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use keel::http::Problem;
use keel::http::client_ip::{IpNet, client_ip};
use keel::http::extract::{Json, Path, Query};
use keel::security::audit::Outcome;
use keel::security::jwt::{Auth, Claims, Jwt, RequireRole, Role};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::accounts::{
    Accounts, ManagedUser, User, UserFilter, UserRow, check_new_password, normalize_email, validate_name,
};
use crate::devices::DeviceTokens;
use crate::error::{
    FieldError, already_verified, invalid_credentials, invalid_refresh_token, invalid_token, locked, refresh_reused,
};
use crate::lockout::{Gate, Lockout, Source};
use crate::mail::{AccountMail, Purpose, contact_of};
use crate::metrics::{AuthMetrics, LoginOutcome, RefreshOutcome};
use crate::oidc::routes as oidc;
use crate::tokens::{MAX_TOKEN_LEN, RefreshTokens, Rotation};
use crate::whence::Whence;
use cityevents_api::limits::MAX_REASON as MAX_BAN_REASON;
use cityevents_api::params::UsersParams;
use cityevents_common::catalogue::{ACCOUNTS_TOPIC, AccountBanned, AccountUnbanned, Mail};
use cityevents_common::roles;
use keel::events::outbox::Outbox;
use keel::http::page::{Cursor, Page, Paginated};

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) accounts: Accounts,
    pub(crate) lockout: Lockout,
    /// Proof that a device signed in to an account before (see [`crate::devices`]).
    pub(crate) devices: DeviceTokens,
    pub(crate) refresh: RefreshTokens,
    pub(crate) mail: AccountMail,
    pub(crate) jwt: Jwt,
    /// `security.jwt.ttl` in seconds: the access token's `expires_in`.
    pub(crate) access_ttl: u64,
    /// `app.registration_floor`.
    pub(crate) registration_floor: Duration,
    pub(crate) metrics: AuthMetrics,
    pub(crate) trusted_proxies: Arc<[IpNet]>,
    /// Announces bans (`account.banned`, `account.unbanned`) in their transaction.
    pub(crate) outbox: Outbox,
    /// Password-reset requests for [`run_resets`].
    pub(crate) resets: tokio::sync::mpsc::Sender<ResetRequest>,
    /// `app.password_reset_mails_per_hour`.
    pub(crate) reset_mails_per_hour: u32,
    /// Avatars: the object store and the decoding pipeline.
    pub(crate) pictures: cityevents_media::Pictures,
    /// Sign-in with OpenID Connect providers (`app.oidc`).
    pub(crate) oidc: crate::oidc::Oidc,
}

/// The routes, under the same paths the gateway exposes.
pub(crate) fn router(state: AppState) -> Router {
    let jwt = state.jwt.clone();
    Router::new()
        .route("/api/v1/auth/register", post(register))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/refresh", post(refresh))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/verify-email", post(verify_email))
        .route("/api/v1/auth/verify-email/request", post(request_verification))
        .route("/api/v1/auth/password-reset/request", post(request_password_reset))
        .route("/api/v1/auth/password-reset", post(reset_password))
        .route("/api/v1/auth/password-reset/check", post(check_reset_token))
        .route("/api/v1/auth/password", post(change_password))
        .route("/api/v1/auth/logout-all", post(logout_all))
        .route("/api/v1/auth/sessions", get(sessions))
        .route("/api/v1/auth/sessions/{id}", delete(revoke_session))
        .route("/api/v1/auth/oidc/providers", get(oidc::providers))
        .route("/api/v1/auth/oidc/link", post(oidc::confirm_link))
        .route("/api/v1/auth/oidc/{provider}/start", post(oidc::start))
        .route("/api/v1/auth/oidc/{provider}/callback", post(oidc::callback))
        .route("/api/v1/auth/identities", get(oidc::identities))
        .route("/api/v1/auth/identities/{provider}", delete(oidc::unlink))
        .route("/api/v1/auth/identities/{provider}/start", post(oidc::start_link))
        .route("/api/v1/me", get(me))
        .route("/api/v1/admin/users", get(list_users))
        .route("/api/v1/users/names", get(names))
        .route("/api/v1/profiles/{id}", get(crate::profiles::show))
        .route("/api/v1/me/profile", axum::routing::patch(crate::profiles::update))
        .route(
            "/api/v1/me/avatar",
            axum::routing::put(crate::profiles::put_avatar)
                .delete(crate::profiles::delete_avatar)
                .layer(axum::extract::DefaultBodyLimit::max(cityevents_api::limits::MAX_PICTURE_REQUEST)),
        )
        .route("/api/v1/profiles/{id}/avatar/{hash}/{file}", get(crate::profiles::avatar))
        .route("/api/v1/admin/users/{id}/role", put(set_role))
        .route("/api/v1/admin/users/{id}/ban", post(ban_user).delete(unban_user))
        .route("/api/v1/admin/users/{id}/logout-all", post(end_user_sessions))
        .route("/api/v1/admin/users/{id}/avatar/remove", post(remove_avatar))
        // Every answer is about an account: its address, its tokens, its failures.
        .route_layer(cityevents_common::private::no_store())
        .layer(jwt.extension())
        .with_state(state)
}

/// The admin role, for [`RequireRole`].
struct Admin;

impl Role for Admin {
    const NAME: &'static str = roles::ADMIN;
}

/// A moderator or an admin (401 without a valid token, 403 otherwise): who bans accounts.
struct Moderating {
    id: Uuid,
    admin: bool,
}

impl FromRequestParts<AppState> for Moderating {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Response> {
        use keel::security::jwt::HasRoles as _;
        let Auth(claims) = Auth::<Claims>::from_request_parts(parts, s).await.map_err(IntoResponse::into_response)?;
        let admin = claims.has_role(roles::ADMIN);
        if !admin && !claims.has_role(roles::MODERATOR) {
            return Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
                .detail("this needs the role `moderator` or `admin`")
                .into_response());
        }
        let id = Uuid::parse_str(&claims.sub).map_err(|_| not_found().into_response())?;
        Ok(Self { id, admin })
    }
}

/// The client's address for the audit log (`http.trusted_proxies` may tell it).
pub(crate) struct ClientAddr(pub(crate) String);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| client_ip(c.0.ip(), &parts.headers, &s.trusted_proxies).to_string())
            .unwrap_or_default();
        Ok(Self(ip))
    }
}

pub(crate) fn user_target(id: &str) -> String {
    format!("user:{id}")
}

pub(crate) fn not_found() -> Problem {
    Problem::not_found().code("user_not_found").detail("no such account")
}

/// Tokens are secrets: no cache may keep the response.
pub(crate) fn token_response(pair: impl serde::Serialize) -> Response {
    let mut resp = axum::Json(pair).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An access token for `user_id`, carrying its current session version `sv` and its session
/// (refresh-token family) `sid`.
pub(crate) fn access_token(
    s: &AppState,
    user_id: &str,
    role: &str,
    verified: bool,
    sv: u64,
    sid: &str,
) -> Result<String, Problem> {
    s.jwt
        .issue(&s.jwt.claims(user_id).role(role).email_verified(verified).session_version(sv).session_id(sid))
        .map_err(|e| Problem::internal_error("issuing an access token", e))
}

/// Where a sign-in came from: its `User-Agent`, address and the time zone its body named.
pub(crate) fn whence(headers: &http::HeaderMap, ip: &str, time_zone: Option<&str>) -> Whence {
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    Whence::of(agent, ip, time_zone)
}

/// A new session for `row`, from `from`: its token pair; `None` when the row's sessions were
/// ended since it was read (a reset, a ban, sign-out everywhere), so it is no longer its state.
pub(crate) async fn new_session(
    s: &AppState,
    row: &UserRow,
    from: &Whence,
    device_token: Option<String>,
) -> Result<Option<TokenPair>, Problem> {
    let Some((refresh_token, family)) = s.refresh.issue(&row.id, row.session_version, from).await? else {
        return Ok(None);
    };
    let verified = row.email_verified_at.is_some();
    let access_token = access_token(s, &row.id, &row.role, verified, row.session_version, &family)?;
    Ok(Some(TokenPair {
        access_token,
        refresh_token,
        token_type: "Bearer".to_owned(),
        expires_in: s.access_ttl,
        device_token,
    }))
}

/// Registers an account. The answer is the same, 202 and the normalized address, whether the
/// address is new, taken, or looks like a taken one (the same UTS #39 skeleton): only its owner
/// learns which, from the mail each case sends (`verify_email`, `already_registered`,
/// `address_unavailable`). Every case hashes the password first, and an accepted registration
/// answers no sooner than `app.registration_floor` after it arrived, so neither the answer nor
/// its time tells.
async fn register(
    State(s): State<AppState>,
    ClientAddr(ip): ClientAddr,
    headers: http::HeaderMap,
    Json(b): Json<RegisterBody>,
) -> Result<Response, Problem> {
    let arrived = tokio::time::Instant::now();
    let floor = s.registration_floor;
    let answer = register_once(s, ip, &headers, b).await;
    if answer.is_ok() {
        tokio::time::sleep_until(arrived + floor).await;
    }
    answer.map(|(status, registration)| {
        let mut resp = (status, axum::Json(registration)).into_response();
        // A session's tokens are secrets: no cache may keep the answer.
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    })
}

async fn register_once(
    s: AppState,
    ip: String,
    headers: &http::HeaderMap,
    b: RegisterBody,
) -> Result<(StatusCode, Registration), Problem> {
    let email = normalize_email(&b.email)?;
    let name = validate_name(&b.name)?;
    time_zone_input(b.time_zone.as_deref())?;
    check_new_password(&s.accounts.policy, &b.password, &email)?;
    let phc = s.accounts.hasher.hash(&b.password).await?;
    let accepted = (StatusCode::ACCEPTED, Registration { email: email.clone(), session: None });
    let bidx = s.accounts.email_index(&email);
    if let Some(existing) = s.accounts.by_email_index(&bidx).await? {
        already_registered(&s, &existing, &ip).await?;
        return Ok(accepted);
    }
    if s.accounts.skeleton_taken(&s.accounts.skeleton_index(&email)).await? {
        let mut tx = s.accounts.db.begin_write().await?;
        if s.mail.claim_notice(&mut tx, &bidx).await? {
            // No account to name: the request's key is a fresh id, and the greeting is not the
            // name the request gave (anyone can send this to any address).
            s.mail.mail(&mut tx, Uuid::now_v7(), &email, "", Mail::AddressUnavailable).await?;
        }
        commit(&s, tx).await?;
        let details = json!({ "ip": ip, "reason": "look_alike" });
        s.accounts.audit("anonymous", "auth.register", "user:unknown", Outcome::Denied, details).await;
        return Ok(accepted);
    }
    let (user, mut tx) = match s.accounts.insert_hashed(&email, &name, &phc, roles::USER, false).await {
        Ok(created) => created,
        // Registered meanwhile (the UNIQUE indexes decide a race): as if it had been there.
        Err(crate::accounts::StoreError::Taken) => {
            if let Some(existing) = s.accounts.by_email_index(&bidx).await? {
                already_registered(&s, &existing, &ip).await?;
            }
            return Ok(accepted);
        }
        Err(e) => return Err(e.into()),
    };
    let id = user.id.to_string();
    let (token, expires_at) = s.mail.issue(&mut tx, &id, Purpose::Verify).await?;
    s.mail.contact(&mut tx, &contact_of(&user)).await?;
    s.mail.mail(&mut tx, user.id, &email, &name, Mail::VerifyEmail { token, expires_at }).await?;
    commit(&s, tx).await?;
    let target = user_target(&id);
    s.accounts.audit(&target, "auth.register", &target, Outcome::Success, json!({ "ip": ip })).await;
    if !b.sign_in {
        return Ok(accepted);
    }
    // Its first session, as a sign-in would give it (nothing can have ended its sessions yet).
    let row = s.accounts.by_id(user.id).await?.ok_or_else(not_found)?;
    let from = whence(headers, &ip, b.time_zone.as_deref());
    let Some(session) = new_session(&s, &row, &from, None).await? else { return Ok(accepted) };
    let target = user_target(&row.id);
    s.accounts.audit(&target, "auth.login", &target, Outcome::Success, json!({ "ip": ip, "registered": true })).await;
    Ok((StatusCode::CREATED, Registration { email, session: Some(session) }))
}

/// Tells the owner of `existing` that someone tried to register their address again (at most
/// once an hour: sign-ups must not flood an inbox).
async fn already_registered(s: &AppState, existing: &UserRow, ip: &str) -> Result<(), Problem> {
    let user = s.accounts.user(existing)?;
    let mut tx = s.accounts.db.begin_write().await?;
    if s.mail.claim_notice(&mut tx, &s.accounts.email_index(&user.email)).await? {
        s.mail.mail(&mut tx, user.id, &user.email, &user.name, Mail::AlreadyRegistered).await?;
    }
    commit(s, tx).await?;
    let target = user_target(&existing.id);
    let details = json!({ "ip": ip, "reason": "email_taken" });
    s.accounts.audit("anonymous", "auth.register", &target, Outcome::Denied, details).await;
    Ok(())
}

/// Commits `tx` and has the relay publish what it enqueued now.
pub(crate) async fn commit(s: &AppState, tx: sqlx::Transaction<'static, sqlx::Any>) -> Result<(), Problem> {
    s.accounts.db.commit(tx).await?;
    s.mail.wake();
    Ok(())
}

fn token_input(token: &str) -> Result<&str, FieldError> {
    if token.is_empty() {
        return Err(FieldError::new("token", "is required"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(FieldError::new("token", format!("must be at most {MAX_TOKEN_LEN} characters")));
    }
    Ok(token)
}

/// Mails the caller a new verification link (spending the previous one).
async fn request_verification(State(s): State<AppState>, Auth(claims): Auth<Claims>) -> Result<StatusCode, Problem> {
    let id = Uuid::parse_str(&claims.sub).map_err(|_| not_found())?;
    let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
    if row.email_verified_at.is_some() {
        return Err(already_verified());
    }
    let user = s.accounts.user(&row)?;
    let mut tx = s.accounts.db.begin_write().await?;
    let (token, expires_at) = s.mail.issue(&mut tx, &row.id, Purpose::Verify).await?;
    s.mail.mail(&mut tx, user.id, &user.email, &user.name, Mail::VerifyEmail { token, expires_at }).await?;
    commit(&s, tx).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Spends a verification token: the address is proven; the notifier hears of it.
async fn verify_email(
    State(s): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Json(b): Json<TokenBody>,
) -> Result<StatusCode, Problem> {
    let token = token_input(&b.token)?;
    let mut tx = s.accounts.db.begin_write().await?;
    let Some(user_id) = s.mail.spend(&mut tx, token, Purpose::Verify).await? else {
        return Err(invalid_token());
    };
    s.accounts.set_verified(&mut tx, &user_id).await?;
    let id = Uuid::parse_str(&user_id).map_err(|_| not_found())?;
    let row = s.accounts.by_id_on(&mut tx, id).await?.ok_or_else(not_found)?;
    s.mail.contact(&mut tx, &contact_of(&s.accounts.user(&row)?)).await?;
    commit(&s, tx).await?;
    let target = user_target(&user_id);
    s.accounts.audit(&target, "auth.email_verified", &target, Outcome::Success, json!({ "ip": ip })).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Takes a request for a password-reset link: answers 202 at once, whether or not the address
/// has an account, and leaves the rest to the `password-resets` task ([`run_resets`]), so that
/// neither the answer nor its timing tells which addresses have accounts. Requests past
/// [`RESET_QUEUE`] waiting are dropped (logged): the answer stays the same.
async fn request_password_reset(
    State(s): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Json(b): Json<EmailBody>,
) -> Result<StatusCode, Problem> {
    let email = normalize_email(&b.email)?;
    if s.resets.try_send(ResetRequest { email, ip }).is_err() {
        tracing::warn!("password-reset requests are arriving faster than they are handled: one dropped");
    }
    Ok(StatusCode::ACCEPTED)
}

/// Password-reset requests waiting for [`run_resets`] at most.
pub(crate) const RESET_QUEUE: usize = 1024;

/// A password-reset request waiting for [`run_resets`].
pub(crate) struct ResetRequest {
    email: String,
    ip: String,
}

/// The `password-resets` task: mails a link for each request whose address has an account
/// that is not banned, at most `app.password_reset_mails_per_hour` per account. Requests
/// still waiting at shutdown are handled before it returns.
pub(crate) async fn run_resets(
    s: AppState,
    mut requests: tokio::sync::mpsc::Receiver<ResetRequest>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let next = tokio::select! {
            next = requests.recv() => next,
            () = stop.cancelled() => {
                // No more arrive; what waits is still handled.
                requests.close();
                requests.recv().await
            }
        };
        let Some(request) = next else { return };
        // A failure (a write conflict, the database away for a moment) is tried again: each
        // attempt is one transaction, so none leaves half a link behind.
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=RESET_ATTEMPTS {
            match reset_requested(&s, &request).await {
                Ok(()) => break,
                Err(e) if attempt == RESET_ATTEMPTS => {
                    tracing::warn!(error = ?e, attempts = attempt, "cannot handle a password-reset request");
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}

/// Attempts at one password-reset request, 100 ms apart doubling (about 3 s in all).
const RESET_ATTEMPTS: u32 = 6;

async fn reset_requested(s: &AppState, r: &ResetRequest) -> Result<(), Problem> {
    let Some(row) = s.accounts.by_email_index(&s.accounts.email_index(&r.email)).await? else {
        return Ok(());
    };
    let target = user_target(&row.id);
    let (action, outcome, reason) = if row.banned() {
        ("auth.password_reset_requested", Outcome::Failure, Some("account_banned"))
    } else if mail_reset_link(s, &row).await? {
        ("auth.password_reset_requested", Outcome::Success, None)
    } else {
        ("auth.password_reset_requested", Outcome::Failure, Some("too_many_reset_mails"))
    };
    let details = match reason {
        Some(reason) => json!({ "ip": r.ip, "reason": reason }),
        None => json!({ "ip": r.ip }),
    };
    s.accounts.audit("anonymous", action, &target, outcome, details).await;
    Ok(())
}

/// Issues a reset link and requests its mail, unless the account was sent
/// `app.password_reset_mails_per_hour` already in the last hour; whether it did.
async fn mail_reset_link(s: &AppState, row: &crate::accounts::UserRow) -> Result<bool, Problem> {
    let user = s.accounts.user(row)?;
    let mut tx = s.accounts.db.begin_write().await?;
    // Issued first, counted after: the transaction writes before it reads, so SQLite takes its
    // write lock at once (waiting its turn) instead of failing to upgrade a read. Past the cap,
    // the rollback undoes the issue.
    let (token, expires_at) = s.mail.issue(&mut tx, &row.id, Purpose::Reset).await?;
    let sent = s.mail.issued_within(&mut tx, &row.id, Purpose::Reset, Duration::from_secs(3600)).await?;
    if sent > u64::from(s.reset_mails_per_hour) {
        return Ok(false);
    }
    s.mail.mail(&mut tx, user.id, &user.email, &user.name, Mail::ResetPassword { token, expires_at }).await?;
    commit(s, tx).await?;
    Ok(true)
}

/// `POST /api/v1/auth/password-reset/check` `{token}`: 204 while the reset link can still be
/// used (unspent, unexpired, its account not banned), else 400 `invalid_token`; nothing is
/// spent. The page of a link asks before it shows the new-password form. A POST, so the token
/// stays out of URLs and their logs.
async fn check_reset_token(State(s): State<AppState>, Json(b): Json<TokenBody>) -> Result<StatusCode, Problem> {
    let token = token_input(&b.token)?;
    let Some(user_id) = s.mail.owner(token, Purpose::Reset).await? else {
        return Err(invalid_token());
    };
    let id = Uuid::parse_str(&user_id).map_err(|_| invalid_token())?;
    match s.accounts.by_id(id).await? {
        Some(row) if !row.banned() => Ok(StatusCode::NO_CONTENT),
        _ => Err(invalid_token()),
    }
}

/// Spends a reset token and sets the new password: every session ends, the account's sign-in
/// delays are lifted, the address counts as verified (the mail reached its owner), and the
/// owner is told by mail.
async fn reset_password(
    State(s): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Json(b): Json<ResetBody>,
) -> Result<Response, Problem> {
    let token = token_input(&b.token)?;
    if b.password.is_empty() {
        return Err(FieldError::new("password", "is required").into());
    }
    let mut tx = s.accounts.db.begin_write().await?;
    let Some(user_id) = s.mail.spend(&mut tx, token, Purpose::Reset).await? else {
        return Err(invalid_token());
    };
    let id = Uuid::parse_str(&user_id).map_err(|_| not_found())?;
    let row = s.accounts.by_id_on(&mut tx, id).await?.ok_or_else(not_found)?;
    if row.banned() {
        // A link mailed before the ban: the ban ended it (the transaction rolls back).
        return Err(invalid_token());
    }
    let user = s.accounts.user(&row)?;
    // Refused before anything changes: the token stays unspent (the transaction rolls back).
    check_new_password(&s.accounts.policy, &b.password, &user.email)?;
    let phc = s.accounts.hasher.hash(&b.password).await?;
    s.accounts.set_password_hash_in(&mut tx, &row.id, &phc).await?;
    s.accounts.set_verified(&mut tx, &row.id).await?;
    let (sessions, _) = s.refresh.revoke_user(&mut tx, &row.id).await?;
    s.mail.revoke(&mut tx, &row.id, Purpose::Reset).await?;
    let bidx = s.accounts.email_index(&user.email);
    s.lockout.clear_account(&mut tx, &bidx).await?;
    s.mail.mail(&mut tx, user.id, &user.email, &user.name, Mail::PasswordChanged).await?;
    if row.email_verified_at.is_none() {
        let verified = crate::accounts::User { email_verified: true, ..user.clone() };
        s.mail.contact(&mut tx, &contact_of(&verified)).await?;
    }
    commit(&s, tx).await?;
    let target = user_target(&row.id);
    let details = json!({ "ip": ip, "revoked_tokens": sessions });
    s.accounts.audit(&target, "auth.password_reset", &target, Outcome::Success, details).await;
    // The mailbox is proven: this device signs in however many failures others cause.
    Ok(token_response(PasswordReset { device_token: s.devices.issue(&bidx) }))
}

/// Changes the caller's password (the current one required, throttled like a sign-in): every
/// session ends and the caller gets a fresh pair; the owner is told by mail.
async fn change_password(
    State(s): State<AppState>,
    Auth(claims): Auth<Claims>,
    ClientAddr(ip): ClientAddr,
    headers: http::HeaderMap,
    Json(b): Json<ChangeBody>,
) -> Result<Response, Problem> {
    if b.current_password.is_empty() {
        return Err(FieldError::new("current_password", "is required").into());
    }
    if b.current_password.len() > s.accounts.policy.max_length {
        let max = s.accounts.policy.max_length;
        return Err(FieldError::new("current_password", format!("must be at most {max} bytes")).into());
    }
    let id = Uuid::parse_str(&claims.sub).map_err(|_| not_found())?;
    let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
    if row.banned() {
        // A token from before the ban may still be accepted for a moment: it buys nothing.
        return Err(account_banned(&row));
    }
    if !row.has_password() {
        return Err(conflict(
            "no_password",
            "this account signs in with a provider and has no password yet: a password-reset link sets one",
        ));
    }
    let user = s.accounts.user(&row)?;
    check_new_password(&s.accounts.policy, &b.new_password, &user.email)
        .map_err(|e| FieldError::new("new_password", e.message))?;
    if !password_matches(&s, &row, &user.email, &b.current_password, &ip).await? {
        let target = user_target(&row.id);
        let details = json!({ "reason": "invalid_credentials", "ip": ip });
        s.accounts.audit(&target, "auth.password_change", &target, Outcome::Failure, details).await;
        return Err(FieldError::new("current_password", "is wrong").into());
    }
    let phc = s.accounts.hasher.hash(&b.new_password).await?;
    // The new session is the caller's, on the same device: where the old one came from (read
    // before the transaction, which holds a connection of its own).
    let from = match claims.sid.as_deref() {
        Some(sid) => s.refresh.whence(sid).await?,
        None => None,
    };
    let from = from.unwrap_or_else(|| whence(&headers, &ip, None));
    let mut tx = s.accounts.db.begin_write().await?;
    s.accounts.set_password_hash_in(&mut tx, &row.id, &phc).await?;
    let (_, sv) = s.refresh.revoke_user(&mut tx, &row.id).await?;
    // A reset link mailed before must not set another password over this one.
    s.mail.revoke(&mut tx, &row.id, Purpose::Reset).await?;
    // The caller's new session, under the new version and with the role as it is now (the row
    // is locked: a role change meanwhile has either committed or waits).
    let (refresh_token, family) = s.refresh.issue_in(&mut tx, &row.id, &from).await?;
    let now = s.accounts.by_id_on(&mut tx, id).await?.ok_or_else(not_found)?;
    if now.banned() {
        // Banned meanwhile (the row is locked now): nothing is changed, no token is given.
        return Err(account_banned(&now));
    }
    s.mail.mail(&mut tx, user.id, &user.email, &user.name, Mail::PasswordChanged).await?;
    commit(&s, tx).await?;
    let target = user_target(&row.id);
    s.accounts.audit(&target, "auth.password_change", &target, Outcome::Success, json!({ "ip": ip })).await;
    pair(&s, refresh_token, &family, &now.id, &now.role, now.email_verified_at.is_some(), sv)
}

/// Ends every session of the caller (every refresh-token family).
async fn logout_all(
    State(s): State<AppState>,
    Auth(claims): Auth<Claims>,
    ClientAddr(ip): ClientAddr,
) -> Result<StatusCode, Problem> {
    let id = Uuid::parse_str(&claims.sub).map_err(|_| not_found())?.to_string();
    let mut tx = s.accounts.db.begin_write().await?;
    let (revoked, _) = s.refresh.revoke_user(&mut tx, &id).await?;
    // A reset link is a way in too: signing out everywhere ends it.
    s.mail.revoke(&mut tx, &id, Purpose::Reset).await?;
    commit(&s, tx).await?;
    let target = user_target(&id);
    let details = json!({ "ip": ip, "revoked_tokens": revoked });
    s.accounts.audit(&target, "auth.logout_all", &target, Outcome::Success, details).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's live sessions, most recently used first.
async fn sessions(State(s): State<AppState>, Auth(claims): Auth<Claims>) -> Result<axum::Json<Sessions>, Problem> {
    let id = Uuid::parse_str(&claims.sub).map_err(|_| not_found())?.to_string();
    let items = s
        .refresh
        .sessions(&id)
        .await?
        .into_iter()
        .map(|f| Session {
            current: claims.sid.as_deref() == Some(f.family_id.as_str()),
            started_at: cityevents_common::time::from_micros(f.started),
            last_used_at: cityevents_common::time::from_micros(f.last),
            device: if f.device.is_empty() { "Unknown device".to_owned() } else { f.device },
            place: if f.place.is_empty() { "Unknown place".to_owned() } else { f.place },
            id: f.family_id,
        })
        .collect();
    Ok(axum::Json(Sessions { items }))
}

/// Ends one of the caller's sessions; 404 for an unknown one or someone else's.
async fn revoke_session(
    State(s): State<AppState>,
    Auth(claims): Auth<Claims>,
    ClientAddr(ip): ClientAddr,
    Path(session): Path<Uuid>,
) -> Result<StatusCode, Problem> {
    let session = session.to_string();
    let id = Uuid::parse_str(&claims.sub).map_err(|_| not_found())?.to_string();
    if !s.refresh.revoke_session(&id, &session).await? {
        return Err(Problem::not_found().code("session_not_found").detail("no such session"));
    }
    let target = user_target(&id);
    let details = json!({ "ip": ip, "family_id": session });
    s.accounts.audit(&target, "auth.session_revoked", &target, Outcome::Success, details).await;
    Ok(StatusCode::NO_CONTENT)
}

/// A password check that came to no verdict (refused at capacity, a dependency down): the
/// attempt [`Lockout::attempt`] counted is taken back, so refusals never lock anyone out.
/// Whether `password` is `row`'s (whose address is `email`), counted by the lockout like a
/// sign-in from `ip`: a wrong one delays the next attempts, a locked account or client is 429.
pub(crate) async fn password_matches(
    s: &AppState,
    row: &UserRow,
    email: &str,
    password: &str,
    ip: &str,
) -> Result<bool, Problem> {
    let (bidx, client) = (s.accounts.email_index(email), s.accounts.client_index(ip));
    let spent = match s.lockout.attempt(&bidx, Source::Client(&client)).await? {
        Gate::Open { spent } => spent,
        Gate::Locked { retry_after, .. } => return Err(locked(retry_after)),
    };
    let verified = match s.accounts.hasher.verify(password, &row.password_hash).await {
        Ok(v) => v,
        Err(e) => return Err(no_verdict(s, &bidx, Source::Client(&client), e.into()).await),
    };
    if verified {
        s.lockout.succeeded(&bidx, Source::Client(&client)).await?;
    } else {
        for scope in s.lockout.failed(&bidx, Source::Client(&client), spent).await? {
            s.metrics.throttled(scope);
        }
    }
    Ok(verified)
}

pub(crate) async fn no_verdict(s: &AppState, bidx: &str, source: Source<'_>, e: Problem) -> Problem {
    if let Err(undo) = s.lockout.undone(bidx, source).await {
        tracing::warn!(error = %undo, "cannot take back a sign-in attempt that came to no verdict");
    }
    e
}

fn login_input(s: &AppState, b: &LoginBody) -> Result<String, FieldError> {
    let email = normalize_email(&b.email)?;
    if b.password.is_empty() {
        return Err(FieldError::new("password", "is required"));
    }
    if b.password.len() > s.accounts.policy.max_length {
        return Err(FieldError::new("password", format!("must be at most {} bytes", s.accounts.policy.max_length)));
    }
    if b.device_token.as_ref().is_some_and(|t| t.len() > MAX_TOKEN_LEN) {
        return Err(FieldError::new("device_token", format!("must be at most {MAX_TOKEN_LEN} characters")));
    }
    time_zone_input(b.time_zone.as_deref())?;
    Ok(email)
}

/// The longest `time_zone` a sign-in takes (IANA names are far shorter).
const MAX_TIME_ZONE: usize = 64;

/// A sign-in's `time_zone`, bounded; a name the tz database does not know is only ignored.
pub(crate) fn time_zone_input(zone: Option<&str>) -> Result<(), FieldError> {
    if zone.is_some_and(|z| z.chars().count() > MAX_TIME_ZONE) {
        return Err(FieldError::new("time_zone", format!("must be at most {MAX_TIME_ZONE} characters")));
    }
    Ok(())
}

async fn login(
    State(s): State<AppState>,
    ClientAddr(ip): ClientAddr,
    headers: http::HeaderMap,
    body: Result<Json<LoginBody>, Problem>,
) -> Result<Response, Problem> {
    // A body that does not parse is an invalid attempt too: count it before refusing it.
    let Json(b) = body.inspect_err(|_| s.metrics.count(LoginOutcome::InvalidInput))?;
    let email = match login_input(&s, &b) {
        Ok(e) => e,
        Err(e) => {
            s.metrics.count(LoginOutcome::InvalidInput);
            return Err(e.into());
        }
    };
    let bidx = s.accounts.email_index(&email);
    let client = s.accounts.client_index(&ip);
    // A device that signed in to this account before is counted on its own.
    let device = b.device_token.as_deref().and_then(|t| s.devices.verify(&bidx, t));
    let source = device.map_or(Source::Client(&client), Source::Device);
    let anonymous_target = format!("email_index:{bidx}");
    // Before the account lookup and the password check: a delayed address gets the same quick
    // answer whether or not an account has it.
    let spent = match s.lockout.attempt(&bidx, source).await? {
        Gate::Open { spent } => spent,
        Gate::Locked { retry_after, scope } => {
            s.metrics.count(LoginOutcome::Locked);
            let details =
                json!({ "reason": "locked", "scope": scope.label(), "ip": ip, "known_device": device.is_some() });
            s.accounts.audit("anonymous", "auth.login", &anonymous_target, Outcome::Denied, details).await;
            return Err(locked(retry_after));
        }
    };
    let checked = async {
        let row = s.accounts.by_email_index(&bidx).await?;
        let verified = match &row {
            Some(r) if r.has_password() => s.accounts.hasher.verify(&b.password, &r.password_hash).await?,
            // The same Argon2 work as a real check, so timing does not tell which addresses exist
            // (or which accounts sign in only with a provider).
            _ => s.accounts.hasher.verify_dummy(&b.password).await?,
        };
        Ok::<_, Problem>((row, verified))
    };
    let (row, verified) = match checked.await {
        Ok(checked) => checked,
        Err(e) => return Err(no_verdict(&s, &bidx, source, e).await),
    };
    let row = match row {
        Some(r) if verified => r,
        other => {
            s.metrics.count(LoginOutcome::InvalidCredentials);
            let target = other.as_ref().map_or_else(|| anonymous_target.clone(), |r| user_target(&r.id));
            let details = json!({ "reason": "invalid_credentials", "ip": ip, "known_device": device.is_some() });
            s.accounts.audit("anonymous", "auth.login", &target, Outcome::Failure, details).await;
            // These counters now delay each further attempt they cover.
            for scope in s.lockout.failed(&bidx, source, spent).await? {
                s.metrics.throttled(scope);
                let details = json!({ "scope": scope.label(), "ip": ip });
                s.accounts.audit("system", "auth.lockout", &target, Outcome::Success, details).await;
            }
            return Err(invalid_credentials());
        }
    };
    s.lockout.succeeded(&bidx, source).await?;
    if row.banned() {
        s.metrics.count(LoginOutcome::Banned);
        let details = json!({ "reason": "account_banned", "ip": ip });
        s.accounts.audit("anonymous", "auth.login", &user_target(&row.id), Outcome::Denied, details).await;
        return Err(account_banned(&row));
    }
    if s.accounts.hasher.needs_rehash(&row.password_hash) {
        // Best effort: the sign-in succeeds either way.
        match s.accounts.hasher.hash(&b.password).await {
            Ok(phc) => {
                if let Err(e) = s.accounts.set_password_hash(&row.id, &phc).await {
                    tracing::warn!(error = %e, "cannot store the re-hashed password");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot re-hash the password"),
        }
    }
    // Its sessions were ended since the row was read (a reset, sign-out everywhere): the
    // password it checked may be the old one, so this sign-in does not count.
    let from = whence(&headers, &ip, b.time_zone.as_deref());
    let Some(pair) = new_session(&s, &row, &from, Some(s.devices.issue(&bidx))).await? else {
        return Err(invalid_credentials());
    };
    s.metrics.count(LoginOutcome::Success);
    let target = user_target(&row.id);
    let details = json!({ "ip": ip, "known_device": device.is_some() });
    s.accounts.audit(&target, "auth.login", &target, Outcome::Success, details).await;
    Ok(token_response(pair))
}

fn refresh_input(token: &str) -> Result<&str, FieldError> {
    if token.is_empty() {
        return Err(FieldError::new("refresh_token", "is required"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(FieldError::new("refresh_token", format!("must be at most {MAX_TOKEN_LEN} characters")));
    }
    Ok(token)
}

async fn refresh(
    State(s): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Json(b): Json<RefreshBody>,
) -> Result<Response, Problem> {
    let token = refresh_input(&b.refresh_token)?;
    match s.refresh.rotate(token).await? {
        Rotation::Rotated { family, token, user_id, role, verified, sv } => {
            s.metrics.refreshed(RefreshOutcome::Rotated);
            pair(&s, token, &family, &user_id, &role, verified, sv)
        }
        Rotation::Repeated { family, token, user_id, role, verified, sv } => {
            s.metrics.refreshed(RefreshOutcome::Repeated);
            tracing::debug!(user_id, "refresh token used again within the grace window: same successor");
            pair(&s, token, &family, &user_id, &role, verified, sv)
        }
        Rotation::Reused { user_id, family_id } => {
            s.metrics.refreshed(RefreshOutcome::Reused);
            let details = json!({ "reason": "refresh_reused", "family_id": family_id, "ip": ip });
            s.accounts.audit("anonymous", "auth.refresh", &user_target(&user_id), Outcome::Denied, details).await;
            Err(refresh_reused())
        }
        Rotation::Invalid => {
            s.metrics.refreshed(RefreshOutcome::Invalid);
            Err(invalid_refresh_token())
        }
    }
}

/// A fresh access token beside the refresh token `token` of family `family`.
fn pair(
    s: &AppState,
    token: String,
    family: &str,
    user_id: &str,
    role: &str,
    verified: bool,
    sv: u64,
) -> Result<Response, Problem> {
    let access = access_token(s, user_id, role, verified, sv, family)?;
    Ok(token_response(TokenPair {
        access_token: access,
        refresh_token: token,
        token_type: "Bearer".to_owned(),
        expires_in: s.access_ttl,
        device_token: None,
    }))
}

async fn logout(
    State(s): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Json(b): Json<RefreshBody>,
) -> Result<StatusCode, Problem> {
    let token = refresh_input(&b.refresh_token)?;
    if let Some((user_id, family_id)) = s.refresh.revoke(token).await? {
        let target = user_target(&user_id);
        let details = json!({ "family_id": family_id, "ip": ip });
        s.accounts.audit(&target, "auth.logout", &target, Outcome::Success, details).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn me(State(s): State<AppState>, Auth(claims): Auth<Claims>) -> Result<axum::Json<User>, Problem> {
    let id = Uuid::parse_str(&claims.sub).map_err(|_| not_found())?;
    let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
    Ok(axum::Json(s.accounts.user(&row)?))
}

async fn set_role(
    State(s): State<AppState>,
    admin: RequireRole<Admin>,
    ClientAddr(ip): ClientAddr,
    Path(id): Path<Uuid>,
    Json(b): Json<RoleBody>,
) -> Result<axum::Json<User>, Problem> {
    if ![roles::USER, roles::MODERATOR, roles::ADMIN].contains(&b.role.as_str()) {
        return Err(FieldError::new("role", "must be `user`, `moderator` or `admin`").into());
    }
    let mut row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
    if row.role != b.role {
        // The old role's tokens stop working everywhere; the user's next refresh carries the new one.
        // SQLite: the write lock first, as `FOR UPDATE` takes the admins' rows elsewhere.
        let mut tx = s.accounts.db.begin_write().await?;
        if row.role == roles::ADMIN {
            let admins = s.accounts.admins_locked(&mut tx).await?;
            if admins.iter().all(|a| *a == row.id) {
                // Nobody could manage roles or lift bans any more.
                return Err(conflict("last_admin", "the last admin keeps the role: make another admin first"));
            }
        }
        s.accounts.set_role_in(&mut tx, &row.id, &b.role).await?;
        s.refresh.end_access(&mut tx, &row.id).await?;
        commit(&s, tx).await?;
        let details = json!({ "from": row.role, "to": b.role, "ip": ip });
        let actor = user_target(&admin.claims().sub);
        s.accounts.audit(&actor, "auth.role_change", &user_target(&row.id), Outcome::Success, details).await;
        row.role = b.role;
    }
    Ok(axum::Json(s.accounts.user(&row)?))
}

/// 403 `account_banned`, with the reason the moderator gave.
pub(crate) fn account_banned(row: &UserRow) -> Problem {
    let why = row.ban_reason.as_deref().unwrap_or_default();
    Problem::new(StatusCode::FORBIDDEN, "account-banned", "Account banned")
        .code("account_banned")
        .detail(format!("this account is banned: {why}"))
}

pub(crate) fn conflict(code: &str, detail: &str) -> Problem {
    Problem::new(StatusCode::CONFLICT, "conflict", "Conflict").code(code).detail(detail)
}

/// Whether `who` may ban `target`: never an admin; a moderator only by an admin.
fn may_ban(who: &Moderating, target: &UserRow) -> Result<(), Problem> {
    if target.role == roles::ADMIN {
        return Err(conflict("cannot_ban_admin", "an admin cannot be banned; an admin can change their role first"));
    }
    if target.role == roles::MODERATOR && !who.admin {
        return Err(
            Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail("only an admin bans a moderator")
        );
    }
    Ok(())
}

/// `POST /api/v1/admin/users/{id}/logout-all` (admin): ends every session of the account, as
/// its owner's *Log out everywhere* does (refresh tokens and a pending reset link revoked, access
/// tokens refused everywhere through the session version), without banning it: the owner may
/// sign in again. For a stolen device or a shared computer. Audited (`auth.sessions_ended`).
async fn end_user_sessions(
    State(s): State<AppState>,
    admin: RequireRole<Admin>,
    ClientAddr(ip): ClientAddr,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, Problem> {
    let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
    let mut tx = s.accounts.db.begin_write().await?;
    let (revoked, _) = s.refresh.revoke_user(&mut tx, &row.id).await?;
    s.mail.revoke(&mut tx, &row.id, Purpose::Reset).await?;
    commit(&s, tx).await?;
    let details = json!({ "ip": ip, "revoked_tokens": revoked });
    let actor = user_target(&admin.claims().sub);
    s.accounts.audit(&actor, "auth.sessions_ended", &user_target(&row.id), Outcome::Success, details).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/admin/users/{id}/avatar/remove` `{reason}` (moderators, admins): takes down an
/// account's picture (204, also when it had none); audited with the reason. Its owner may upload
/// another, which is moderated the same way.
async fn remove_avatar(
    State(s): State<AppState>,
    who: Moderating,
    ClientAddr(ip): ClientAddr,
    Path(id): Path<Uuid>,
    Json(b): Json<BanBody>,
) -> Result<StatusCode, Problem> {
    let reason = cityevents_common::validate::text("reason", &b.reason, MAX_BAN_REASON)?;
    let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
    if (row.role == roles::ADMIN || row.role == roles::MODERATOR) && !who.admin {
        return Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
            .detail("only an admin takes down a moderator's or an admin's picture"));
    }
    let shown = crate::store::accounts::profile(&s.accounts.db, id).await?.and_then(|p| p.avatar);
    crate::store::accounts::set_avatar(&s.accounts.db, id, None).await?;
    crate::profiles::forget_files(&s, id, shown.as_deref()).await;
    let details = json!({ "ip": ip, "reason": reason });
    let actor = user_target(&who.id.to_string());
    s.accounts.audit(&actor, "moderation.avatar_remove", &user_target(&row.id), Outcome::Success, details).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether `target`'s ban was placed by someone who is an admin now.
async fn placed_by_admin(s: &AppState, target: &UserRow) -> Result<bool, Problem> {
    let Some(by) = target.banned_by.as_deref().and_then(|b| Uuid::parse_str(b).ok()) else {
        return Ok(false);
    };
    Ok(s.accounts.by_id(by).await?.is_some_and(|r| r.role == roles::ADMIN))
}

/// Whether `who` may lift `target`'s ban: a moderator's only an admin.
fn may_lift(who: &Moderating, target: &UserRow) -> Result<(), Problem> {
    if target.role == roles::MODERATOR && !who.admin {
        return Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
            .detail("only an admin lifts a moderator's ban"));
    }
    Ok(())
}

/// `POST /api/v1/admin/users/{id}/ban` `{reason}` (moderator or admin): the account cannot sign
/// in any more, every session ends at once (refresh tokens revoked, access tokens refused
/// everywhere through the session version), and `account.banned` tells the events service to
/// hide its events. A repeat answers the ban there is. Nobody bans themselves or an admin; only
/// an admin bans a moderator. Audited (`moderation.account_ban`).
async fn ban_user(
    State(s): State<AppState>,
    who: Moderating,
    ClientAddr(ip): ClientAddr,
    Path(id): Path<Uuid>,
    Json(b): Json<BanBody>,
) -> Result<axum::Json<ManagedUser>, Problem> {
    let reason = cityevents_common::validate::text("reason", &b.reason, MAX_BAN_REASON)?;
    let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
    if id == who.id {
        return Err(conflict("cannot_ban_self", "you cannot ban your own account"));
    }
    may_ban(&who, &row)?;
    if row.banned() {
        return Ok(axum::Json(s.accounts.managed(&row)?));
    }
    let at = cityevents_common::time::now();
    let mut tx = s.accounts.db.begin_write().await?;
    let by = who.id.to_string();
    if !s.accounts.ban_in(&mut tx, &row.id, &by, &reason, cityevents_common::time::to_micros(at)).await? {
        // Banned meanwhile: that ban stands.
        drop(tx);
        let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
        return Ok(axum::Json(s.accounts.managed(&row)?));
    }
    // The row is locked now: its role as it is (a promotion meanwhile makes this a refusal).
    let now = s.accounts.by_id_on(&mut tx, id).await?.ok_or_else(not_found)?;
    may_ban(&who, &now)?;
    let (revoked, _) = s.refresh.revoke_user(&mut tx, &row.id).await?;
    s.mail.revoke(&mut tx, &row.id, Purpose::Reset).await?;
    let version = now.ban_version;
    let banned = AccountBanned { user_id: id, by: who.id, reason: reason.clone(), at, version };
    s.outbox.enqueue_event(&mut tx, ACCOUNTS_TOPIC, &banned).await?;
    commit(&s, tx).await?;
    s.outbox.wake();
    let details = json!({ "reason": reason, "revoked_tokens": revoked, "ip": ip });
    s.accounts
        .audit(&user_target(&by), "moderation.account_ban", &user_target(&row.id), Outcome::Success, details)
        .await;
    let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
    Ok(axum::Json(s.accounts.managed(&row)?))
}

/// `DELETE /api/v1/admin/users/{id}/ban` (moderator or admin; a moderator's ban only by an
/// admin): the account may sign in again and its events show again (`account.unbanned`). 404
/// `ban_not_found` when it is not banned. Audited (`moderation.account_unban`).
async fn unban_user(
    State(s): State<AppState>,
    who: Moderating,
    ClientAddr(ip): ClientAddr,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<ManagedUser>, Problem> {
    let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
    if !row.banned() {
        return Err(Problem::not_found().code("ban_not_found").detail("the account is not banned"));
    }
    may_lift(&who, &row)?;
    if !who.admin && placed_by_admin(&s, &row).await? {
        return Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
            .detail("only an admin lifts a ban an admin placed"));
    }
    let mut tx = s.accounts.db.begin_write().await?;
    if !s.accounts.unban_in(&mut tx, &row.id).await? {
        return Err(Problem::not_found().code("ban_not_found").detail("the account is not banned"));
    }
    let now = s.accounts.by_id_on(&mut tx, id).await?.ok_or_else(not_found)?;
    may_lift(&who, &now)?;
    let version = now.ban_version;
    let lifted = AccountUnbanned { user_id: id, by: who.id, at: cityevents_common::time::now(), version };
    s.outbox.enqueue_event(&mut tx, ACCOUNTS_TOPIC, &lifted).await?;
    commit(&s, tx).await?;
    s.outbox.wake();
    let details = json!({ "was": row.ban_reason, "ip": ip });
    let actor = user_target(&who.id.to_string());
    s.accounts.audit(&actor, "moderation.account_unban", &user_target(&row.id), Outcome::Success, details).await;
    let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
    Ok(axum::Json(s.accounts.managed(&row)?))
}

/// Tag of the user list's cursors (a cursor of another list is refused).
const USERS_CURSOR: &str = "users";

/// The filter, the page size and the account to resume after.
type UsersRequest = (UserFilter, u32, Option<String>);

fn users_filter(q: UsersParams) -> Result<UsersRequest, Problem> {
    use cityevents_common::validate::invalid;
    let text = match q.q.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) if t.chars().count() > crate::accounts::MAX_EMAIL => {
            return Err(invalid("q", &format!("must be at most {} characters", crate::accounts::MAX_EMAIL)));
        }
        Some(t) => Some(t.to_owned()),
    };
    let role = match q.role.as_deref() {
        None | Some("") => None,
        Some(r) if [roles::USER, roles::MODERATOR, roles::ADMIN].contains(&r) => Some(r.to_owned()),
        Some(_) => return Err(invalid("role", "must be `user`, `moderator` or `admin`")),
    };
    let banned = match q.banned.as_deref() {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(invalid("banned", "must be `true` or `false`")),
    };
    let page = Page::parse(q.limit.as_deref(), q.cursor.as_deref())?;
    let after = match &page.after {
        None => None,
        Some(c) => Some(
            c.id.strip_prefix(USERS_CURSOR)
                .and_then(|id| id.strip_prefix('|'))
                .filter(|id| Uuid::parse_str(id).is_ok())
                .ok_or_else(|| invalid("cursor", "is not a cursor from this endpoint"))?
                .to_owned(),
        ),
    };
    Ok((UserFilter { q: text, role, banned }, page.limit, after))
}

/// `GET /api/v1/admin/users?q=&role=&banned=&limit=&cursor=` (admin): accounts newest first.
/// `q` holding `@` is an address, matched exactly (addresses are stored encrypted: only their
/// blind index can be compared); otherwise part of a name, case-insensitive.
async fn list_users(
    State(s): State<AppState>,
    _admin: RequireRole<Admin>,
    Query(q): Query<UsersParams>,
) -> Result<axum::Json<Paginated<ManagedUser>>, Problem> {
    let (filter, limit, after) = users_filter(q)?;
    let rows = s.accounts.list(&filter, after.as_deref(), limit).await?;
    let page = Paginated::from_rows(rows, limit, |r| Cursor::new(0, format!("{USERS_CURSOR}|{}", r.id)));
    let mut items = Vec::with_capacity(page.items.len());
    for row in &page.items {
        items.push(s.accounts.managed(row)?);
    }
    Ok(axum::Json(Paginated { items, next_cursor: page.next_cursor }))
}

/// `GET /api/v1/users/names` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamesQuery {
    ids: Option<String>,
}

/// Most ids one `GET /api/v1/users/names` takes (a list page's largest size).
const MAX_NAME_IDS: usize = keel::http::page::MAX_LIMIT as usize;

#[derive(Serialize)]
struct NameItem {
    id: String,
    name: String,
}

#[derive(Serialize)]
struct Names {
    items: Vec<NameItem>,
}

/// `GET /api/v1/users/names?ids=a,b,…` (signed in; the gateway's, not routed publicly): the
/// display names of up to 100 accounts, for the lists an organizer sees (participants,
/// waitlist, bans). Unknown ids are left out; nothing but the name is told.
async fn names(
    State(s): State<AppState>,
    Auth(_claims): Auth<Claims>,
    Query(q): Query<NamesQuery>,
) -> Result<axum::Json<Names>, Problem> {
    let ids = cityevents_common::validate::uuid_list("ids", q.ids.as_deref(), MAX_NAME_IDS)?;
    let items = s.accounts.names(&ids).await?.into_iter().map(|(id, name)| NameItem { id, name }).collect();
    Ok(axum::Json(Names { items }))
}
