//! City Events auth: accounts, access and refresh tokens, lockout, audit log.
//!
//! | route | does |
//! |---|---|
//! | `POST /api/v1/auth/register` `{email, password, name}` | 202 `{email}` whatever the address's state; the mail says what happened (a verification link for a new account) |
//! | `POST /api/v1/auth/verify-email/request` (bearer) | 202; a new verification mail (the previous link stops working); 409 `already_verified` |
//! | `POST /api/v1/auth/verify-email` `{token}` | 204: the address is verified; 400 `invalid_token` (unknown, used, replaced or expired) |
//! | `POST /api/v1/auth/password-reset/request` `{email}` | 202 whether or not an account has the address (the same time: the link is made after the answer); its owner gets a reset mail |
//! | `POST /api/v1/auth/password-reset` `{token, password}` | 204: password set, every session ended, sign-in delays lifted, address verified, owner told; 400 `invalid_token` |
//! | `POST /api/v1/auth/password` `{current_password, new_password}` (bearer) | a new token pair; every session ended; owner told; a wrong current password counts as a failed sign-in |
//! | `POST /api/v1/auth/logout-all` (bearer) | 204; revokes every family of the caller |
//! | `GET /api/v1/auth/sessions` (bearer) | `{items: [{id, started_at, last_used_at}]}`: live families, most recently used first |
//! | `DELETE /api/v1/auth/sessions/{id}` (bearer) | 204; 404 `session_not_found` for an unknown or someone else's |
//! | `POST /api/v1/auth/login` `{email, password}` | `{access_token, refresh_token, token_type, expires_in}`; 401 `invalid_credentials`; 429 `locked` |
//! | `POST /api/v1/auth/refresh` `{refresh_token}` | a new pair in the same family; 401 `refresh_reused` / `invalid_refresh_token` |
//! | `POST /api/v1/auth/logout` `{refresh_token}` | 204; revokes the token's family |
//! | `GET /api/v1/me` (bearer) | `{id, email, name, role, email_verified, created_at}` |
//! | `PUT /api/v1/admin/users/{id}/role` `{role}` (role `admin`) | the user with the new role (`user`, `moderator`, `admin`) |
//! | `GET /api/v1/admin/users?q=&role=&banned=&limit=&cursor=` (role `admin`) | accounts, newest first, with their bans |
//! | `POST /api/v1/admin/users/{id}/ban` `{reason}` (`moderator`, `admin`) | bans the account: sessions end, sign-in refused (403 `account_banned`), `account.banned` |
//! | `DELETE /api/v1/admin/users/{id}/ban` (`moderator`, `admin`) | lifts it (`account.unbanned`); 404 `ban_not_found` |
//! | `POST /api/v1/admin/users/{id}/avatar/remove` `{reason}` (`moderator`, `admin`) | 204: the account's picture is taken down, its files deleted at once (`moderation.avatar_remove`); 403 for a moderator's or an admin's unless by an admin |
//! | `/api/v1/auth/oidc/*`, `/api/v1/auth/identities` | logging in with OpenID Connect providers: see [`oidc`](crate::oidc) |
//!
//! * **Accounts**: addresses are normalized ([`normalize_email`]: NFC, lower case, IDNA domain;
//!   look-alikes mixing scripts refused), stored encrypted
//!   (`security.encryption.*`) with a keyed blind index for lookups; passwords pass
//!   `security.passwords.*`'s policy and are hashed with Argon2id. Everyone registers as `user`;
//!   admins come only from [`create_admin`] (the `admin create` command).
//! * **Access tokens** are JWTs (`security.jwt.*`, which must name a `signing_key`): `sub` = user
//!   id, `role`, `email_verified`, the configured `iss`/`aud`, lifetime `security.jwt.ttl`.
//! * **Mail** ([`mail`](crate::mail)): accounts start unverified; registration requests a
//!   verification mail with a single-use token (`app.email_verification_ttl`, stored hashed;
//!   reset tokens likewise, `app.password_reset_ttl`),
//!   through the outbox (`bus.*`, `outbox.*`) to the notifier, which also hears each account's
//!   contact (`account.contact`); the `account-contacts` worker announces accounts made before.
//! * **Refresh tokens** are opaque, stored as SHA-256, rotated on every use; reusing a spent
//!   one revokes its whole family (all its tokens stop working), except within
//!   `app.refresh_reuse_grace` of its rotation, when the same successor is returned (two tabs).
//! * **Sign-in throttling** (`app.lockout.*`), for existing and unknown addresses alike: failures
//!   are counted per account and client IP, per client IP and per account; past a counter's free
//!   failures each further attempt waits a delay that doubles with every failure (429 `locked`
//!   with `Retry-After`). A client IP with no failures of its own for an account is delayed only
//!   when the account-wide count is far above normal, so an attacker cannot lock the owner out.
//!   Unknown addresses cost one dummy Argon2 verification, so timing does not reveal accounts.
//! * **Audit log** (`audit_log` table, chained under `security.audit.keys` and checkpointed):
//!   registrations, sign-ins and failures, lockouts, sign-outs, refresh-token reuse, role
//!   changes, account bans — never a password or a clear address — and the platform's
//!   moderation done elsewhere (`moderation.recorded` on `cityevents.moderation`, consumer group
//!   `auth-audit`, recorded once per message).
//! * **Metrics**: `auth_login_attempts_total{outcome}` (`success`, `invalid_credentials`,
//!   `locked`, `invalid_input`, `banned`); `auth_refresh_total{outcome}` (`rotated`, `repeated`, `reused`,
//!   `invalid`); `auth_login_throttled_total{scope}` (`account_ip`, `ip`, `account`);
//!   `auth_oidc_sign_ins_total{provider,outcome}`.

mod accounts;
mod admin;
mod cli;
mod config;
mod devices;
mod error;
mod lockout;
mod mail;
mod metrics;
mod moderation;
mod oidc;
mod profiles;
mod routes;
mod sessions;
mod store;
mod tokens;
mod whence;

use std::sync::Arc;
use std::time::Duration;

use cityevents_common::catalogue::{MODERATION_TOPIC, SESSIONS_TOPIC};
use keel::app::SetupError;
use keel::events::Consumer;
use keel::workers::{RunError, Worker};

pub use accounts::{
    Accounts, Ban, MAX_EMAIL, MAX_NAME, ManagedUser, StoreError, User, check_new_password, normalize_email,
    validate_name,
};
pub use admin::{AdminAction, AdminCreated, AdminError, create_admin, promote_admin, run_admin_create};
pub use config::{AuthConfig, LockoutConfig};
pub use error::FieldError;

/// How often expired refresh tokens and stale failure counters are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often `auth_active_sessions` is counted.
const SESSION_COUNT_EVERY: Duration = Duration::from_secs(15);

/// How often accounts without a look-alike index, or whose contact the notifier never heard,
/// are looked for (cheap once there are none).
const BACKFILL_EVERY: Duration = Duration::from_secs(60);

/// The service's migrations (PostgreSQL, MySQL/MariaDB, SQLite): `users`, `refresh_tokens`,
/// `login_throttle`, the look-alike index, `account_tokens`; then Keel's own sets, the outbox's
/// and the audit log's.
pub fn migrations() -> keel::data::Migrations {
    keel::data::migrations!()
        .with(keel::events::outbox::migrations())
        .with(keel::security::audit::migrations())
        .with(keel::security::keys::migrations())
}

/// The columns that hold values of the keyring: moved to each new data key in the background.
pub const ENCRYPTED: [(&str, &str, &str); 2] =
    [("users", "id", "email_ciphertext"), ("refresh_tokens", "token_hash", "successor_ciphertext")];

/// The service, ready for [`keel::run`] (its own binary) or the all-in-one launcher.
pub fn service() -> keel::Service<AuthConfig> {
    cityevents_common::services::AUTH
        .service::<AuthConfig>(keel::build_info!())
        .migrations(migrations())
        .keeps_audit_log()
        .rotates_data_keys(ENCRYPTED)
        .command(cli::admin_command(), cli::run_admin)
        .setup(setup)
}

fn setup(s: &mut keel::Setup<AuthConfig>) -> Result<axum::Router, SetupError> {
    if s.keel().security.jwt.signing_key.is_none() {
        return Err("cityevents-auth issues access tokens: set security.jwt.signing_key and that key under \
                    security.jwt.keys"
            .into());
    }
    let http = &s.keel().http;
    if !http.trusted_proxies.is_empty() && http.proxy_secret.is_none() {
        // Lockout and the audit log key on the client's address: an address shared with other
        // callers (loopback, a pod network) must not let them pick it.
        return Err("cityevents-auth trusts http.trusted_proxies to tell the client's address: set \
                    http.proxy_secret too, the value the gateway sends as upstreams.auth.proxy_secret"
            .into());
    }
    let jwt = s.jwt()?;
    // Fail at start-up, not at the first sign-in, when the signing key cannot sign.
    jwt.issue(&jwt.claims("start-up-check")).map_err(|e| format!("security.jwt cannot sign: {e}"))?;
    let jwt = cityevents_common::sessions::follow(s, cityevents_common::services::AUTH.name, jwt)?;
    let (hasher, policy) = s.passwords()?;
    let index = s.blind_index()?;
    let devices = devices::DeviceTokens::new(index.clone(), s.config().lockout.device_ttl);
    let db = s.database()?;
    let keyring = s.data_keys(&db)?;
    s.product_figures(cityevents_common::figures::Counted::new(
        db.clone(),
        vec![("sign-ups", "SELECT COUNT(*) FROM users WHERE created_at >= $1")],
    ));
    let outbox = s.outbox(&db)?;
    let audit = s.audit_log(&db)?;
    let cfg = s.config().clone();
    let auth_metrics = metrics::AuthMetrics::register(s.metrics(), cfg.oidc.providers.keys().map(String::as_str))?;
    let accounts = Accounts::new(db.clone(), keyring.clone(), index, hasher, policy, audit.clone());
    let lockout = lockout::Lockout::new(db.clone(), cfg.lockout.clone());
    let mail = mail::AccountMail::new(db.clone(), outbox.clone(), cfg.email_verification_ttl, cfg.password_reset_ttl);
    let jwt_cfg = &s.keel().security.jwt;
    // A sync reaches back as far as an access token from before a raise can still be accepted.
    let window = jwt_cfg.ttl + jwt_cfg.leeway + Duration::from_secs(60);
    let sessions = sessions::Sessions::new(db.clone(), outbox.clone(), window);
    let sync = sessions.clone();
    let consumer = Consumer::new(s.bus()?, SESSIONS_TOPIC, "auth-sessions", sessions::SyncHandler(sessions.clone()))
        // Its handler reads the database: take nothing while it is down (or still connecting).
        .depends_on(db.clone())
        // Auth (re)subscribed: followers may have asked while it was away.
        .on_subscribed(move || sync.repeat_in_background());
    s.consume(consumer)?;
    let audit_consumer =
        Consumer::new(s.bus()?, MODERATION_TOPIC, moderation::GROUP, moderation::AuditHandler(audit.clone()))
            .depends_on(db.clone());
    s.consume(audit_consumer)?;
    let refresh = tokens::RefreshTokens::new(db, keyring, cfg.refresh_ttl, cfg.refresh_reuse_grace, sessions);
    let oidc = oidc::Oidc::new(cfg.oidc.clone(), accounts.db.clone())?;
    let (l, r, m, o) = (lockout.clone(), refresh.clone(), mail.clone(), oidc.clone());
    s.worker(Worker::periodic("auth-prune", PRUNE_EVERY, move |_ctx| {
        prune(l.clone(), r.clone(), m.clone(), o.clone())
    }))?;
    let (r, gauge) = (refresh.clone(), auth_metrics.clone());
    s.worker(Worker::periodic("session-count", SESSION_COUNT_EVERY, move |_ctx| {
        let (r, gauge) = (r.clone(), gauge.clone());
        async move {
            gauge.set_sessions(r.active().await?);
            Ok::<_, keel::data::DataError>(())
        }
    }))?;
    let a = accounts.clone();
    s.worker(Worker::periodic("email-skeletons", BACKFILL_EVERY, move |_ctx| backfill_skeletons(a.clone())))?;
    let (a, m) = (accounts.clone(), mail.clone());
    s.worker(Worker::periodic("account-contacts", BACKFILL_EVERY, move |_ctx| {
        announce_contacts(a.clone(), m.clone())
    }))?;
    // Avatars in the object store (`storage.*`), swept of what no account shows.
    let objects = s.storage()?;
    let pictures = cityevents_media::Pictures::new(objects.clone(), &cfg.pictures);
    let (swept, grace) = (accounts.db.clone(), cfg.pictures.sweep_grace);
    s.worker(Worker::periodic("avatars-sweep", cfg.pictures.sweep_every, move |_ctx| {
        profiles::sweep(swept.clone(), objects.clone(), grace)
    }))?;
    let (resets, reset_requests) = tokio::sync::mpsc::channel(routes::RESET_QUEUE);
    let state = routes::AppState {
        accounts,
        lockout,
        devices,
        refresh,
        mail,
        jwt,
        access_ttl: s.keel().security.jwt.ttl.as_secs(),
        registration_floor: cfg.registration_floor,
        metrics: auth_metrics,
        trusted_proxies: Arc::from(s.keel().http.trusted_proxies.clone()),
        outbox: outbox.clone(),
        resets,
        reset_mails_per_hour: cfg.password_reset_mails_per_hour,
        pictures,
        oidc,
    };
    let worker = state.clone();
    s.task("password-resets", move |stop| routes::run_resets(worker, reset_requests, stop));
    Ok(routes::router(state))
}

/// Gives accounts made before look-alike checks their skeleton index (see
/// [`Accounts::backfill_skeletons`]). Best effort, like [`prune`]: the next round tries again.
async fn backfill_skeletons(accounts: Accounts) -> Result<(), RunError> {
    // Not connected yet (start-up) or away: the next round.
    if !accounts.db.is_available() {
        return Ok(());
    }
    match accounts.backfill_skeletons().await {
        Ok(0) => {}
        Ok(filled) => tracing::info!(filled, "look-alike index filled in for older accounts"),
        Err(e) => tracing::warn!(error = %e, "filling in the look-alike index failed"),
    }
    Ok(())
}

/// Announces to the notifier the contacts of accounts it never heard of (see
/// [`mail::AccountMail::announce_missing`]). Best effort, like [`prune`].
async fn announce_contacts(accounts: Accounts, mail: mail::AccountMail) -> Result<(), RunError> {
    if !accounts.db.is_available() {
        return Ok(());
    }
    match mail.announce_missing(&accounts).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(announced = n, "contacts of older accounts sent to the notifier"),
        Err(e) => tracing::warn!(error = ?e, "announcing contacts failed"),
    }
    Ok(())
}

/// Deletes expired refresh and account tokens and finished failure counters. Best effort: a
/// failure (the database is down) is logged and the next round tries again; the worker itself
/// never fails.
async fn prune(
    lockout: lockout::Lockout,
    refresh: tokens::RefreshTokens,
    mail: mail::AccountMail,
    oidc: oidc::Oidc,
) -> Result<(), RunError> {
    match (refresh.prune().await, lockout.prune().await, mail.prune().await, oidc.prune().await) {
        (Ok(tokens), Ok(counters), Ok(account_tokens), Ok(flows)) => {
            if tokens + counters + account_tokens + flows > 0 {
                tracing::debug!(tokens, counters, account_tokens, flows, "pruned expired tokens and failure counters");
            }
        }
        (Err(e), _, _, _) | (_, Err(e), _, _) | (_, _, Err(e), _) | (_, _, _, Err(e)) => {
            tracing::warn!(error = %e, "pruning tokens or failure counters failed");
        }
    }
    Ok(())
}
