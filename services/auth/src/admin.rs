//! Administrators: there are no default users anywhere; an operator creates (or promotes) an
//! admin from the command line: `cityevents-auth admin create --email … [--name …]` creates one
//! (refused for an address that has an account), `admin create --promote --email …` promotes an
//! existing account.

use std::sync::Arc;
use std::time::Duration;

use keel::app::Loaded;
use keel::config::Profile;
use keel::data::{DataError, Db};
use keel::security::audit::{AuditKeys, AuditLog, Outcome};
use keel::security::crypto::{BlindIndex, CryptoError};
use keel::security::keys::{DataKeys, KeyError};
use keel::security::password::{PasswordError, PasswordHasher, PasswordPolicy};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::accounts::{Accounts, StoreError, check_new_password, normalize_email, validate_name};
use crate::config::AuthConfig;
use crate::error::FieldError;
use cityevents_common::roles;

/// The audit actor of command-line administration.
const CLI_ACTOR: &str = "system:cli";
/// How long the command waits for the database when `database.connect.max_elapsed` is 0.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// Why an admin could not be created. Messages never contain the password or the address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// An input is invalid (the password policy included).
    #[error("{0}")]
    Invalid(#[from] FieldError),
    /// The configuration cannot be used (keys, database URL).
    #[error("configuration: {0}")]
    Config(String),
    /// The database failed.
    #[error("{0}")]
    Database(#[from] DataError),
    /// The database did not connect (and migrate, where automatic) in time.
    #[error("the database was not ready within {}", humanize(*.0))]
    Unreachable(Duration),
    /// Migrations are pending and `database.auto_migrate` is off.
    #[error("database migrations are pending: run `cityevents-auth migrate` first")]
    MigrationsPending,
    /// Hashing failed.
    #[error("password hashing: {0}")]
    Password(#[from] PasswordError),
    /// Encrypting the address failed.
    #[error("field encryption: {0}")]
    Crypto(#[from] CryptoError),
    /// Someone registered the address at the same moment.
    #[error("the e-mail address was registered meanwhile; promote it with `admin create --promote --email …`")]
    Raced,
    /// `admin create` without `--promote` for an address that has an account: nothing changed
    /// (its password is not replaced by the one given).
    #[error(
        "an account with this e-mail address exists{}; nothing changed. To make it an admin, keeping its \
         password, run `admin create --promote --email …`",
        if *.0 { " and is already an admin" } else { "" }
    )]
    Exists(bool),
    /// `admin create --promote` for an address that has no account.
    #[error("no account has this e-mail address; drop --promote to create one")]
    NoAccount,
}

fn humanize(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Taken => Self::Raced,
            StoreError::Data(e) => e.into(),
            StoreError::Crypto(e) => e.into(),
            StoreError::Password(e) => e.into(),
        }
    }
}

/// What [`create_admin`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCreated {
    /// A new account with role `admin`.
    Created(Uuid),
    /// An existing account was made `admin` (its name and password are unchanged).
    Promoted(Uuid),
    /// The account was already an admin; nothing changed.
    AlreadyAdmin(Uuid),
}

impl AdminCreated {
    /// The account's id.
    pub fn id(self) -> Uuid {
        match self {
            Self::Created(id) | Self::Promoted(id) | Self::AlreadyAdmin(id) => id,
        }
    }
}

/// Creates an account with role `admin` (the password must pass the policy); refuses with
/// [`AdminError::Exists`] when the address has an account (its password is never replaced).
/// Audited (`auth.admin_create`) with actor `system:cli`.
pub async fn create_admin(
    accounts: &Accounts,
    email: &str,
    name: &str,
    password: &str,
) -> Result<AdminCreated, AdminError> {
    let email = normalize_email(email)?;
    if let Some(row) = accounts.by_email_index(&accounts.email_index(&email)).await? {
        return Err(AdminError::Exists(row.role == roles::ADMIN));
    }
    let name = validate_name(name)?;
    check_new_password(&accounts.policy, password, &email)?;
    // The operator vouches for the address. Its contact reaches the notifier through the
    // service's `account-contacts` worker (this command has no outbox relay).
    let (user, tx) = accounts.insert(&email, &name, password, roles::ADMIN, true).await?;
    accounts.db.commit(tx).await?;
    let target = format!("user:{}", user.id);
    accounts.audit(CLI_ACTOR, "auth.admin_create", &target, Outcome::Success, json!({ "role": roles::ADMIN })).await;
    Ok(AdminCreated::Created(user.id))
}

/// Makes the existing account with this address an admin, its name and password unchanged
/// (audited as `auth.role_change` with actor `system:cli`); [`AdminError::NoAccount`] when there
/// is none.
pub async fn promote_admin(accounts: &Accounts, email: &str) -> Result<AdminCreated, AdminError> {
    let email = normalize_email(email)?;
    let Some(row) = accounts.by_email_index(&accounts.email_index(&email)).await? else {
        return Err(AdminError::NoAccount);
    };
    let id =
        Uuid::parse_str(&row.id).map_err(|_| AdminError::Config("a users row has an id that is not a UUID".into()))?;
    if row.role == roles::ADMIN {
        return Ok(AdminCreated::AlreadyAdmin(id));
    }
    accounts.set_role(&row.id, roles::ADMIN).await?;
    let details = json!({ "from": row.role, "to": roles::ADMIN });
    accounts.audit(CLI_ACTOR, "auth.role_change", &format!("user:{id}"), Outcome::Success, details).await;
    Ok(AdminCreated::Promoted(id))
}

/// What `admin create` does.
#[derive(Debug, Clone, Copy)]
pub enum AdminAction<'a> {
    /// A new admin account ([`create_admin`]).
    Create {
        /// Display name.
        name: &'a str,
        /// Password (checked against the policy).
        password: &'a str,
    },
    /// `--promote`: an existing account becomes admin ([`promote_admin`]).
    Promote,
}

/// `cityevents-auth admin create`: builds what [`create_admin`] needs from the loaded
/// configuration (database, keys, password settings), connects — applying migrations when
/// `database.auto_migrate` is on, else refusing while any is pending — and creates the admin or
/// promotes the account (`action`). Returns what it did.
pub async fn run_admin_create(
    loaded: &Loaded<AuthConfig>,
    email: &str,
    action: AdminAction<'_>,
) -> Result<AdminCreated, AdminError> {
    let keel = &loaded.config.keel;
    let service = cityevents_common::services::AUTH.name;
    let config = |e: &dyn std::fmt::Display| AdminError::Config(e.to_string());
    let index = BlindIndex::from_config(&keel.security.encryption).map_err(|e| config(&e))?;
    let hasher = PasswordHasher::from_config(&keel.security.passwords).map_err(|e| config(&e))?;
    let policy = PasswordPolicy::from_config(&keel.security.passwords);
    let audit_keys = AuditKeys::from_config(&keel.security.audit).map_err(|e| config(&e))?;
    if loaded.profile == Profile::Production && audit_keys.active().is_none() {
        return Err(AdminError::Config("security.audit.active_key: production needs an audit chain key".into()));
    }
    let url = keel::data::resolve_url(&keel.database, service, loaded.profile == Profile::Production)
        .map_err(|e| config(&e))?;
    let migrations = Arc::new(crate::migrations());
    let db = Db::new(service, &url, &keel.database, Some(migrations.clone()), &keel::telemetry::Metrics::new())
        .map_err(|e| config(&e))?;
    let result = async {
        let wait = match keel.database.connect.max_elapsed {
            d if d.is_zero() => DEFAULT_WAIT,
            d => d,
        };
        // Connects with backoff and, when `auto_migrate` is on, migrates.
        tokio::time::timeout(wait, db.clone().connect_in_background(CancellationToken::new()))
            .await
            .map_err(|_| AdminError::Unreachable(wait))?;
        if !keel.database.auto_migrate && !migrations.pending(db.pool(), db.backend()).await?.is_empty() {
            return Err(AdminError::MigrationsPending);
        }
        // The database's data keys too: an account may be encrypted with a rotated key.
        let keys = DataKeys::new(&db, &keel.security.encryption, []).map_err(|e| config(&e))?;
        keys.refresh().await.map_err(|e| match e {
            KeyError::Sql(e) => AdminError::Database(DataError::from(e)),
            other => config(&other),
        })?;
        let keyring = keys.keyring();
        let audit = AuditLog::from_db(&db).mask_fields(keel.log.mask_fields.iter()).with_keys(audit_keys);
        let accounts = Accounts::new(db.clone(), keyring, index, hasher, policy, audit);
        match action {
            AdminAction::Create { name, password } => create_admin(&accounts, email, name, password).await,
            AdminAction::Promote => promote_admin(&accounts, email).await,
        }
    }
    .await;
    db.close().await;
    result
}
