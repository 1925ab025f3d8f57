//! The routes of sign-in with providers (called by the gateway's web pages):
//!
//! | route | does |
//! |---|---|
//! | `GET /api/v1/auth/oidc/providers` | `{items: [{id, name}]}` |
//! | `POST /api/v1/auth/oidc/{provider}/start` `{next}` | `{authorization_url, state}`; 503 `provider_unavailable` |
//! | `POST /api/v1/auth/oidc/{provider}/callback` `{state, browser_state, code, time_zone}` | an [`Outcome`]: `signed_in`, `linked` or `confirm_link`; 400 `oidc_refused`, 403 `account_banned`, 409 `identity_taken` / `email_unverified` / `address_unavailable` |
//! | `POST /api/v1/auth/oidc/link` `{offer, password, time_zone}` | `signed_in` once the password is right; 400 `invalid_token`, 401 `invalid_credentials`, 429 `locked` |
//! | `GET /api/v1/auth/identities` (bearer) | the caller's linked providers, whether they have a password, the providers not linked |
//! | `POST /api/v1/auth/identities/{provider}/start` (bearer) `{next, password}` | a flow whose callback links the provider to the caller, if the caller's sessions have not ended since; `password` required when the account has one (counted like a sign-in); 400 `validation_failed`, 429 `locked` |
//! | `DELETE /api/v1/auth/identities/{provider}` (bearer) | 204; 409 `last_sign_in_method` when it is the only way left to sign in |
//!
//! A provider's account signs in to the account it is linked to. Unlinked, its address decides:
//! no account has it → an account is made (verified when the provider says so; without a
//! password); an account has it and the provider verified it → the owner is offered to link,
//! and confirms with the account's password (counted like a sign-in by the lockout); an
//! unverified address never links. Every link mails the owner (`sign_in_added`).

use axum::extract::State;
use axum::response::Response;
use cityevents_api::auth::TokenPair;
use cityevents_api::oidc::{
    CallbackRequest, Identities, Identity as IdentityItem, LinkRequest, LinkStartRequest, Outcome, Provider, Providers,
    Start, StartRequest,
};
use cityevents_common::roles;
use cityevents_common::time::{from_micros, now, to_micros};
use http::StatusCode;
use keel::http::Problem;
use keel::http::extract::{Json, Path};
use keel::security::audit::Outcome as Audited;
use keel::security::jwt::{Auth, Claims};
use serde_json::json;
use uuid::Uuid;

use super::{OidcError, Verified};
use crate::accounts::{StoreError, UserRow, normalize_email, validate_name};
use crate::error::{FieldError, invalid_credentials, invalid_token};
use crate::mail::{Purpose, contact_of};
use crate::metrics::OidcOutcome;
use crate::routes::{
    AppState, ClientAddr, account_banned, commit, conflict, new_session, not_found, password_matches, time_zone_input,
    token_response, user_target, whence,
};
use crate::store::oidc as store;
use crate::tokens::MAX_TOKEN_LEN;
use cityevents_common::catalogue::Mail;

/// The longest `state` and `code` taken (providers' codes are far shorter).
const MAX_PARAM: usize = 2048;

/// `GET /api/v1/auth/oidc/providers`.
pub(crate) async fn providers(State(s): State<AppState>) -> axum::Json<Providers> {
    let items = s.oidc.providers().map(|(id, name)| Provider { id: id.to_owned(), name: name.to_owned() }).collect();
    axum::Json(Providers { items })
}

fn refused(provider: &str, why: impl std::fmt::Display) -> Problem {
    tracing::info!(provider, why = %why, "sign-in with a provider refused");
    Problem::new(StatusCode::BAD_REQUEST, "oidc-refused", "Sign-in not completed")
        .code("oidc_refused")
        .detail("the sign-in with the provider could not be completed; start it again")
}

/// The problem an [`OidcError`] answers, counted.
fn problem(s: &AppState, provider: &str, e: OidcError) -> Problem {
    match e {
        OidcError::UnknownProvider(_) => {
            Problem::not_found().code("provider_not_found").detail("no sign-in provider has this id")
        }
        OidcError::Unavailable { why, .. } => {
            s.metrics.oidc(provider, OidcOutcome::Unavailable);
            tracing::warn!(provider, why, "sign-in provider unavailable");
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "provider-unavailable", "Provider unavailable")
                .code("provider_unavailable")
                .detail("the sign-in provider cannot be reached; try again later or sign in another way")
                .retry_after(30)
        }
        OidcError::Refused(why) => {
            s.metrics.oidc(provider, OidcOutcome::Refused);
            refused(provider, why)
        }
        OidcError::Data(e) => e.into(),
    }
}

fn next_input(next: Option<&str>) -> String {
    match next {
        // A site path only: never another origin (`//host`, `/\host`), nor one a browser may
        // read otherwise than it is written (it drops tabs and newlines: `/\t/host`).
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && n.len() <= 512
                && !n.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// `POST /api/v1/auth/oidc/{provider}/start`.
pub(crate) async fn start(
    State(s): State<AppState>,
    Path(provider): Path<String>,
    Json(b): Json<StartRequest>,
) -> Result<Response, Problem> {
    let next = next_input(b.next.as_deref());
    let (authorization_url, state) =
        s.oidc.start(&provider, None, &next).await.map_err(|e| problem(&s, &provider, e))?;
    Ok(token_response(Start { authorization_url, state }))
}

/// `POST /api/v1/auth/identities/{provider}/start` (bearer): a flow that links, bound to the
/// caller's session version (signing out everywhere, or a new password, ends it). An account
/// with a password must give it: a stolen session alone adds no way in.
pub(crate) async fn start_link(
    State(s): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Auth(claims): Auth<Claims>,
    Path(provider): Path<String>,
    Json(b): Json<LinkStartRequest>,
) -> Result<Response, Problem> {
    let next = next_input(b.next.as_deref());
    let password = b.password.as_deref().unwrap_or_default();
    if password.len() > s.accounts.policy.max_length {
        let max = s.accounts.policy.max_length;
        return Err(FieldError::new("password", format!("must be at most {max} bytes")).into());
    }
    if !s.oidc.providers().any(|(p, _)| p == provider) {
        return Err(problem(&s, &provider, OidcError::UnknownProvider(provider.clone())));
    }
    let id = Uuid::parse_str(&claims.sub).map_err(|_| not_found())?;
    let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
    if row.banned() {
        return Err(account_banned(&row));
    }
    if row.has_password() {
        if password.is_empty() {
            return Err(FieldError::new("password", "is required: the account's password").into());
        }
        let user = s.accounts.user(&row)?;
        if !password_matches(&s, &row, &user.email, password, &ip).await? {
            let target = user_target(&row.id);
            let details = json!({ "reason": "invalid_credentials", "ip": ip, "provider": provider });
            s.accounts.audit(&target, "auth.identity_linked", &target, Audited::Failure, details).await;
            return Err(FieldError::new("password", "is wrong").into());
        }
    }
    let sv = i64::try_from(row.session_version).unwrap_or(i64::MAX);
    let (authorization_url, state) =
        s.oidc.start(&provider, Some((row.id.clone(), sv)), &next).await.map_err(|e| problem(&s, &provider, e))?;
    Ok(token_response(Start { authorization_url, state }))
}

fn callback_input(b: &CallbackRequest) -> Result<(), FieldError> {
    for (field, value) in [("state", &b.state), ("browser_state", &b.browser_state), ("code", &b.code)] {
        if value.is_empty() || value.len() > MAX_PARAM {
            return Err(FieldError::new(field, format!("is required, at most {MAX_PARAM} bytes")));
        }
    }
    time_zone_input(b.time_zone.as_deref())
}

/// A browser's sign-in context: its headers, address and time zone.
struct From<'a> {
    headers: &'a http::HeaderMap,
    ip: &'a str,
    time_zone: Option<&'a str>,
}

/// `POST /api/v1/auth/oidc/{provider}/callback`.
pub(crate) async fn callback(
    State(s): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Path(provider): Path<String>,
    headers: http::HeaderMap,
    Json(b): Json<CallbackRequest>,
) -> Result<Response, Problem> {
    callback_input(&b)?;
    let verified =
        s.oidc.finish(&provider, &b.state, &b.browser_state, &b.code).await.map_err(|e| problem(&s, &provider, e))?;
    let from = From { headers: &headers, ip: &ip, time_zone: b.time_zone.as_deref() };
    let outcome = match &verified.link_user_id {
        Some(user) => link_signed_in(&s, &verified, user, &ip).await,
        None => sign_in(&s, &verified, &from).await,
    };
    if outcome.is_err() {
        s.metrics.oidc(&provider, OidcOutcome::Refused);
    }
    Ok(token_response(outcome?))
}

/// A signed-in user's link flow came back: the provider's account joins theirs.
async fn link_signed_in(s: &AppState, v: &Verified, user_id: &str, ip: &str) -> Result<Outcome, Problem> {
    let id = Uuid::parse_str(user_id).map_err(|_| not_found())?;
    let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
    if row.banned() {
        return Err(account_banned(&row));
    }
    if v.link_session_version != i64::try_from(row.session_version).ok() {
        return Err(problem(s, &v.provider, OidcError::Refused("the session that started the link has ended".into())));
    }
    link(s, v, &row, None, v.link_session_version).await?;
    let target = user_target(&row.id);
    let details = json!({ "provider": v.provider, "ip": ip });
    s.accounts.audit(&target, "auth.identity_linked", &target, Audited::Success, details).await;
    s.metrics.oidc(&v.provider, OidcOutcome::Linked);
    Ok(Outcome::Linked { provider: v.provider.clone(), next: v.next.clone() })
}

/// Links `v`'s account to `row` (spending `offer` in the same transaction when given). With
/// `sessions_at`, only while the account's session version is still that one, checked with the
/// account's row locked: a "log out everywhere" or password change committed meanwhile ends the
/// link, however close the two are.
async fn link(
    s: &AppState,
    v: &Verified,
    row: &UserRow,
    offer: Option<&str>,
    sessions_at: Option<i64>,
) -> Result<(), Problem> {
    let db = &s.accounts.db;
    let mut tx = db.begin_write().await?;
    if let Some(expected) = sessions_at {
        let current =
            crate::store::sessions::version_locked(db, &mut tx, &row.id.to_string()).await?.ok_or_else(not_found)?;
        if current != expected {
            return Err(problem(
                s,
                &v.provider,
                OidcError::Refused("the session that started the link has ended".into()),
            ));
        }
    }
    if let Some(offer) = offer
        && !store::spend_offer(db, &mut tx, offer).await?
    {
        return Err(invalid_token());
    }
    let key = (v.issuer.as_str(), v.subject.as_str(), v.provider.as_str());
    let name = s.oidc.name(&v.provider).unwrap_or(&v.provider).to_owned();
    if !store::link(db, &mut tx, key, &row.id, to_micros(now())).await? {
        return Err(identity_taken(&name));
    }
    // The owner hears of every new way in, in the same transaction (the outbox).
    let user = s.accounts.user(row)?;
    s.mail.mail(&mut tx, user.id, &user.email, &user.name, Mail::SignInAdded { provider: name }).await?;
    db.commit(tx).await?;
    s.mail.wake();
    Ok(())
}

fn identity_taken(name: &str) -> Problem {
    conflict(
        "identity_taken",
        &format!(
            "this {name} account is linked to another account already, or this account has another {name} account \
             linked: unlink it first"
        ),
    )
}

/// Signs in with `v`: the linked account, a new one, or an offer to link.
async fn sign_in(s: &AppState, v: &Verified, from: &From<'_>) -> Result<Outcome, Problem> {
    if let Some(user_id) = store::user_of(&s.accounts.db, &v.issuer, &v.subject).await? {
        let id = Uuid::parse_str(&user_id).map_err(|_| not_found())?;
        let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
        if row.banned() {
            audit_login(s, &row, v, from, Audited::Denied).await;
            return Err(account_banned(&row));
        }
        store::touch(&s.accounts.db, &v.issuer, &v.subject, to_micros(now())).await?;
        let session = session(s, &row, from).await?;
        audit_login(s, &row, v, from, Audited::Success).await;
        s.metrics.oidc(&v.provider, OidcOutcome::SignedIn);
        return Ok(Outcome::SignedIn { session, next: v.next.clone(), created: false });
    }
    let Some(raw) = v.email.as_deref() else {
        return Err(refused(&v.provider, "the provider shared no e-mail address (is the `email` scope granted?)"));
    };
    // An address the provider has not verified neither makes nor links an account, and the
    // answer is the same whether an account has it: nobody takes an address they do not hold.
    if !v.email_verified {
        let name = s.oidc.name(&v.provider).unwrap_or(&v.provider);
        return Err(conflict(
            "email_unverified",
            &format!(
                "{name} has not verified this address: verify it there, or sign up with a password (an account \
                 that has the address links {name} from its account page)"
            ),
        ));
    }
    let email =
        normalize_email(raw).map_err(|e| refused(&v.provider, format!("its address is not usable: {}", e.message)))?;
    let bidx = s.accounts.email_index(&email);
    if let Some(row) = s.accounts.by_email_index(&bidx).await? {
        return offer(s, v, &row, email).await;
    }
    if s.accounts.skeleton_taken(&s.accounts.skeleton_index(&email)).await? {
        return Err(conflict(
            "address_unavailable",
            "this address looks like one an account already uses; sign up with another address",
        ));
    }
    create(s, v, &email, from).await
}

/// An account has the provider's (verified) address: offer its owner to link.
async fn offer(s: &AppState, v: &Verified, row: &UserRow, email: String) -> Result<Outcome, Problem> {
    let name = s.oidc.name(&v.provider).unwrap_or(&v.provider).to_owned();
    if row.banned() {
        return Err(account_banned(row));
    }
    let token = crate::tokens::generate();
    let offer = store::Offer {
        user_id: row.id.clone(),
        provider: v.provider.clone(),
        issuer: v.issuer.clone(),
        subject: v.subject.clone(),
        next_path: v.next.clone(),
        expires_at: to_micros(now()) + s.oidc.link_ttl_micros(),
    };
    store::insert_offer(&s.accounts.db, &crate::tokens::hash(&token), &offer).await?;
    s.metrics.oidc(&v.provider, OidcOutcome::Offered);
    Ok(Outcome::ConfirmLink {
        offer: token,
        email,
        provider_name: name,
        has_password: row.has_password(),
        next: v.next.clone(),
    })
}

/// A display name for a new account: the provider's, else the address's local part.
fn display_name(v: &Verified, email: &str) -> String {
    let local = email.split('@').next().unwrap_or_default();
    [v.name.as_deref(), Some(local)]
        .into_iter()
        .flatten()
        .find_map(|n| validate_name(n).ok())
        .unwrap_or_else(|| "Member".to_owned())
}

/// Makes an account for `v`'s person (no password; the address the provider verified), linked.
async fn create(s: &AppState, v: &Verified, email: &str, from: &From<'_>) -> Result<Outcome, Problem> {
    let name = display_name(v, email);
    let (user, mut tx) = match s.accounts.insert_hashed(email, &name, "", roles::USER, v.email_verified).await {
        Ok(made) => made,
        Err(StoreError::Taken) => return Err(refused(&v.provider, "an account with the address was made meanwhile")),
        Err(e) => return Err(e.into()),
    };
    let id = user.id.to_string();
    let db = &s.accounts.db;
    let key = (v.issuer.as_str(), v.subject.as_str(), v.provider.as_str());
    if !store::link(db, &mut tx, key, &id, to_micros(now())).await? {
        return Err(refused(&v.provider, "the provider's account was linked meanwhile"));
    }
    s.mail.contact(&mut tx, &contact_of(&user)).await?;
    if !v.email_verified {
        let (token, expires_at) = s.mail.issue(&mut tx, &id, Purpose::Verify).await?;
        s.mail.mail(&mut tx, user.id, email, &name, Mail::VerifyEmail { token, expires_at }).await?;
    }
    commit(s, tx).await?;
    let target = user_target(&id);
    let details = json!({ "ip": from.ip, "provider": v.provider, "email_verified": v.email_verified });
    s.accounts.audit(&target, "auth.register", &target, Audited::Success, details).await;
    let row = s.accounts.by_id(user.id).await?.ok_or_else(not_found)?;
    let session = session(s, &row, from).await?;
    audit_login(s, &row, v, from, Audited::Success).await;
    s.metrics.oidc(&v.provider, OidcOutcome::Created);
    Ok(Outcome::SignedIn { session, next: v.next.clone(), created: true })
}

async fn audit_login(s: &AppState, row: &UserRow, v: &Verified, from: &From<'_>, outcome: Audited) {
    let target = user_target(&row.id);
    let actor = if outcome == Audited::Success { target.as_str() } else { "anonymous" };
    let details = json!({ "ip": from.ip, "provider": v.provider });
    s.accounts.audit(actor, "auth.login", &target, outcome, details).await;
}

/// A new session of `row`, as a sign-in gives it.
async fn session(s: &AppState, row: &UserRow, from: &From<'_>) -> Result<TokenPair, Problem> {
    let place = whence(from.headers, from.ip, from.time_zone);
    // Its sessions were ended since the row was read (a ban, sign-out everywhere).
    new_session(s, row, &place, None)
        .await?
        .ok_or_else(|| refused("-", "the account's sessions were ended during the sign-in"))
}

/// `POST /api/v1/auth/oidc/link`: the owner confirms an offer with the account's password.
pub(crate) async fn confirm_link(
    State(s): State<AppState>,
    ClientAddr(ip): ClientAddr,
    headers: http::HeaderMap,
    Json(b): Json<LinkRequest>,
) -> Result<Response, Problem> {
    if b.offer.is_empty() || b.offer.len() > MAX_TOKEN_LEN {
        return Err(FieldError::new("offer", format!("is required, at most {MAX_TOKEN_LEN} characters")).into());
    }
    if b.password.is_empty() || b.password.len() > s.accounts.policy.max_length {
        return Err(FieldError::new("password", "is required").into());
    }
    time_zone_input(b.time_zone.as_deref())?;
    let offer_hash = crate::tokens::hash(&b.offer);
    let offer = store::offer(&s.accounts.db, &offer_hash).await?;
    let offer = offer.filter(|o| o.expires_at >= to_micros(now())).ok_or_else(invalid_token)?;
    let id = Uuid::parse_str(&offer.user_id).map_err(|_| not_found())?;
    let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
    if !row.has_password() {
        return Err(conflict("no_password", "this account has no password: sign in with a provider linked to it"));
    }
    let user = s.accounts.user(&row)?;
    let target = user_target(&row.id);
    if !password_matches(&s, &row, &user.email, &b.password, &ip).await? {
        let details = json!({ "reason": "invalid_credentials", "ip": ip, "provider": offer.provider });
        s.accounts.audit("anonymous", "auth.identity_linked", &target, Audited::Failure, details).await;
        return Err(invalid_credentials());
    }
    if row.banned() {
        return Err(account_banned(&row));
    }
    let v = Verified {
        provider: offer.provider.clone(),
        issuer: offer.issuer,
        subject: offer.subject,
        email: Some(user.email),
        email_verified: true,
        name: None,
        link_user_id: Some(row.id.clone()),
        link_session_version: None,
        next: offer.next_path,
    };
    link(&s, &v, &row, Some(&offer_hash), None).await?;
    let details = json!({ "provider": v.provider, "ip": ip, "confirmed_by": "password" });
    s.accounts.audit(&target, "auth.identity_linked", &target, Audited::Success, details).await;
    s.metrics.oidc(&v.provider, OidcOutcome::Linked);
    let from = From { headers: &headers, ip: &ip, time_zone: b.time_zone.as_deref() };
    let session = session(&s, &row, &from).await?;
    audit_login(&s, &row, &v, &from, Audited::Success).await;
    Ok(token_response(Outcome::SignedIn { session, next: v.next, created: false }))
}

/// `GET /api/v1/auth/identities`.
pub(crate) async fn identities(State(s): State<AppState>, Auth(claims): Auth<Claims>) -> Result<Response, Problem> {
    let id = Uuid::parse_str(&claims.sub).map_err(|_| not_found())?;
    let row = s.accounts.by_id(id).await?.ok_or_else(not_found)?;
    let linked = store::identities(&s.accounts.db, &row.id).await?;
    let items: Vec<IdentityItem> = linked
        .iter()
        .map(|i| IdentityItem {
            name: s.oidc.name(&i.provider).unwrap_or(&i.provider).to_owned(),
            provider: i.provider.clone(),
            linked_at: from_micros(i.created_at),
            last_used_at: from_micros(i.last_used_at),
        })
        .collect();
    let available = s
        .oidc
        .providers()
        .filter(|(p, _)| !linked.iter().any(|i| i.provider == *p))
        .map(|(id, name)| Provider { id: id.to_owned(), name: name.to_owned() })
        .collect();
    Ok(token_response(Identities { items, has_password: row.has_password(), available }))
}

/// `DELETE /api/v1/auth/identities/{provider}`: never the last way to sign in.
pub(crate) async fn unlink(
    State(s): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Auth(claims): Auth<Claims>,
    Path(provider): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = Uuid::parse_str(&claims.sub).map_err(|_| not_found())?;
    let db = &s.accounts.db;
    let mut tx = db.begin_write().await?;
    // The account's row locked: two unlinks at once cannot both leave it without a way in.
    crate::store::sessions::version_locked(db, &mut tx, &id.to_string()).await?.ok_or_else(not_found)?;
    let row = crate::store::accounts::by_id_in(db, &mut tx, id).await?.ok_or_else(not_found)?;
    // Only providers still configured are ways in: one taken out of the configuration counts not.
    let others = store::linked_providers(db, &mut tx, &row.id)
        .await?
        .into_iter()
        .filter(|p| *p != provider && s.oidc.name(p).is_some())
        .count();
    if !row.has_password() && others == 0 {
        return Err(conflict(
            "last_sign_in_method",
            "this is the account's only way to sign in: set a password (a reset link does) or link another provider first",
        ));
    }
    if !store::unlink(db, &mut tx, &row.id, &provider).await? {
        return Err(Problem::not_found().code("identity_not_found").detail("no such provider is linked"));
    }
    db.commit(tx).await?;
    let target = user_target(&row.id);
    let details = json!({ "provider": provider, "ip": ip });
    s.accounts.audit(&target, "auth.identity_unlinked", &target, Audited::Success, details).await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_site_path_or_the_home_page() {
        assert_eq!(next_input(Some("/events/42?x=1")), "/events/42?x=1");
        for bad in [
            None,
            Some(""),
            Some("https://evil.example/"),
            Some("//evil.example"),
            Some("/\\evil.example"),
            Some("/\t/evil.example"),
            Some("/\n/evil.example"),
            Some("/ /evil.example"),
            Some("/\u{a0}/evil.example"),
        ] {
            assert_eq!(next_input(bad), "/", "{bad:?}");
        }
        assert_eq!(next_input(Some(&format!("/{}", "a".repeat(600)))), "/");
    }
}
