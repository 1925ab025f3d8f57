//! Accounts: input rules, encrypted e-mail addresses and the audit trail (the `users` table's
//! statements are in [`crate::store::accounts`]).
//!
//! An address is stored only encrypted (`Keyring`, AES-256-GCM) beside its keyed blind index
//! (`BlindIndex::email`, HMAC-SHA256 of the address as [`normalize_email`] makes it: NFC, lower
//! case, the domain mapped with IDNA), which is what every lookup and the `UNIQUE` constraint
//! use. Passwords are Argon2id PHC strings.

use keel::data::{DataError, Db};
use keel::security::audit::{AuditLog, Outcome};
use keel::security::crypto::{BlindIndex, CryptoError, Keyring};
use keel::security::password::{PasswordError, PasswordHasher, PasswordPolicy, PolicyViolation};
use sqlx::{Any, Transaction};
use unicode_normalization::UnicodeNormalization as _;
use unicode_security::{GeneralSecurityProfile as _, MixedScript as _};
use uuid::Uuid;

use crate::error::FieldError;
use crate::store::accounts as store;
use cityevents_common::time::{from_micros, now, to_micros};

/// Longest e-mail address accepted (RFC 5321's path limit), in characters.
pub const MAX_EMAIL: usize = cityevents_api::limits::MAX_EMAIL;
/// Longest display name accepted, in characters.
pub const MAX_NAME: usize = cityevents_api::limits::MAX_NAME;
/// Longest local part of an address (RFC 5321).
const MAX_LOCAL: usize = 64;

pub use cityevents_api::auth::{AccountBan as Ban, ManagedUser, User};

pub(crate) use crate::store::accounts::UserRow;

/// Which accounts `GET /api/v1/admin/users` lists.
#[derive(Debug, Clone, Default)]
pub(crate) struct UserFilter {
    /// An address (exact, through the blind index) or part of a name (case-insensitive).
    pub(crate) q: Option<String>,
    /// Only this role.
    pub(crate) role: Option<String>,
    /// Only banned (`true`) or not banned (`false`) accounts.
    pub(crate) banned: Option<bool>,
}

/// Why an account could not be stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The address, or one that looks like it, belongs to an account.
    #[error("the e-mail address is taken")]
    Taken,
    /// The database refused or failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// An address could not be encrypted or decrypted.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The password could not be hashed.
    #[error(transparent)]
    Password(#[from] PasswordError),
}

impl From<StoreError> for keel::http::Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Taken => crate::error::email_taken(),
            StoreError::Data(e) => e.into(),
            StoreError::Crypto(e) => e.into(),
            StoreError::Password(e) => e.into(),
        }
    }
}

/// Everything account operations need: the database, the keyring and blind index for e-mail
/// addresses, the password hasher and policy, and the audit log. Cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    pub(crate) db: Db,
    keyring: Keyring,
    index: BlindIndex,
    pub(crate) hasher: PasswordHasher,
    pub(crate) policy: PasswordPolicy,
    audit: AuditLog,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").field("db", &self.db).finish_non_exhaustive()
    }
}

impl Accounts {
    /// Bundles what account operations use (`Setup::database`, `Setup::keyring`,
    /// `Setup::blind_index`, `Setup::passwords`, `Setup::audit_log` in a service).
    pub fn new(
        db: Db,
        keyring: Keyring,
        index: BlindIndex,
        hasher: PasswordHasher,
        policy: PasswordPolicy,
        audit: AuditLog,
    ) -> Self {
        Self { db, keyring, index, hasher, policy, audit }
    }

    /// The blind index of a normalized address.
    pub(crate) fn email_index(&self, email: &str) -> String {
        self.index.email(email)
    }

    /// The blind index of a client IP (sign-in throttling keeps no clear address).
    pub(crate) fn client_index(&self, ip: &str) -> String {
        self.index.exact(&format!("client-ip:{ip}"))
    }

    pub(crate) async fn by_email_index(&self, bidx: &str) -> Result<Option<UserRow>, DataError> {
        store::by_email_index(&self.db, bidx).await
    }

    pub(crate) async fn by_id(&self, id: Uuid) -> Result<Option<UserRow>, DataError> {
        store::by_id(&self.db, id).await
    }

    /// Up to `limit` accounts whose contact the notifier never heard (`contact_sent_at` unset),
    /// in id order.
    pub(crate) async fn without_contact(&self, limit: u32) -> Result<Vec<UserRow>, DataError> {
        store::without_contact(&self.db, limit).await
    }

    /// [`Accounts::by_id`] in `tx`, to see its own writes.
    pub(crate) async fn by_id_on(
        &self,
        tx: &mut Transaction<'static, Any>,
        id: Uuid,
    ) -> Result<Option<UserRow>, DataError> {
        store::by_id_in(&self.db, tx, id).await
    }

    /// The blind index of the UTS #39 skeleton of `email` (normalized): the same for addresses
    /// that look alike (`аре@` in Cyrillic, `ape@` in Latin; `paypa1`, `paypal`).
    pub(crate) fn skeleton_index(&self, email: &str) -> String {
        let skeleton: String = unicode_security::skeleton(email).collect();
        // Domain-separated from the address index under the same key.
        self.index.exact(&format!("skeleton\u{1f}{skeleton}"))
    }

    /// Whether an account exists whose address looks like one with this skeleton index.
    pub(crate) async fn skeleton_taken(&self, skeleton_bidx: &str) -> Result<bool, DataError> {
        store::skeleton_taken(&self.db, skeleton_bidx).await
    }

    /// Fills in the skeleton index of accounts made before it existed, a page at a time.
    /// When two of them look alike, the later keeps none (both exist already; logged).
    /// Returns how many were filled in.
    pub async fn backfill_skeletons(&self) -> Result<u64, StoreError> {
        let db = &self.db;
        let (mut after, mut filled) = (String::new(), 0_u64);
        loop {
            let page = store::without_skeleton(db, &after).await?;
            let Some((last, _)) = page.last() else { return Ok(filled) };
            after = last.clone();
            for (id, ciphertext) in page {
                let skeleton = self.skeleton_index(&self.keyring.decrypt_str(&ciphertext)?);
                if store::set_skeleton(db, &id, &skeleton).await? {
                    filled += 1;
                } else {
                    tracing::warn!(user_id = %id, "an older account's address looks like another's; left as is");
                }
            }
        }
    }

    /// Hashes the password, encrypts the address and inserts the account in a transaction it
    /// returns, uncommitted, so the caller can enqueue what announces it. `verified`: whether
    /// the address counts as proven (an admin made by the operator). The inputs must be
    /// validated already.
    pub(crate) async fn insert(
        &self,
        email: &str,
        name: &str,
        password: &str,
        role: &str,
        verified: bool,
    ) -> Result<(User, Transaction<'static, Any>), StoreError> {
        let password_hash = self.hasher.hash(password).await?;
        self.insert_hashed(email, name, &password_hash, role, verified).await
    }

    /// [`Accounts::insert`] with the password already hashed (a PHC string).
    pub(crate) async fn insert_hashed(
        &self,
        email: &str,
        name: &str,
        password_hash: &str,
        role: &str,
        verified: bool,
    ) -> Result<(User, Transaction<'static, Any>), StoreError> {
        let email_ciphertext = self.keyring.encrypt_str(email)?;
        let (id, created_at) = (Uuid::now_v7(), now());
        let db = &self.db;
        let mut tx = db.begin_write().await?;
        let row = store::NewUser {
            id,
            email_ciphertext: &email_ciphertext,
            email_bidx: &self.email_index(email),
            skeleton_bidx: &self.skeleton_index(email),
            password_hash,
            name,
            role,
            created_at: to_micros(created_at),
            email_verified_at: verified.then(|| to_micros(created_at)),
        };
        if !store::insert(db, &mut tx, &row).await? {
            return Err(StoreError::Taken);
        }
        // Round through storage precision so the answer equals what `GET /me` shows later.
        let created_at = from_micros(to_micros(created_at));
        let user = User {
            id,
            email: email.to_owned(),
            name: name.to_owned(),
            role: role.to_owned(),
            email_verified: verified,
            created_at,
        };
        Ok((user, tx))
    }

    /// Marks the address of `id` verified (once: a second call changes nothing).
    pub(crate) async fn set_verified(&self, tx: &mut Transaction<'static, Any>, id: &str) -> Result<(), DataError> {
        store::set_verified(&self.db, tx, id, to_micros(now())).await
    }

    /// Sets the role of an existing account in `tx` (the caller ends its sessions with it).
    pub(crate) async fn set_role_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        id: &str,
        role: &str,
    ) -> Result<(), DataError> {
        store::set_role(&self.db, tx, id, role).await
    }

    /// Bans the account in `tx` unless it is banned already (then `false`: a concurrent ban won);
    /// its sessions are ended by the caller in the same transaction.
    pub(crate) async fn ban_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        id: &str,
        by: &str,
        reason: &str,
        at: i64,
    ) -> Result<bool, DataError> {
        store::ban(&self.db, tx, id, by, reason, at).await
    }

    /// The admins' ids, their rows locked in `tx` until it ends (PostgreSQL, MySQL/MariaDB;
    /// SQLite lets one writer at a time anyway): two admins stepping down at once cannot both
    /// count the other as the one who stays.
    pub(crate) async fn admins_locked(&self, tx: &mut Transaction<'static, Any>) -> Result<Vec<String>, DataError> {
        store::admins_locked(&self.db, tx).await
    }

    /// Lifts the account's ban in `tx`; `false` when it was not banned (a concurrent lift won).
    pub(crate) async fn unban_in(&self, tx: &mut Transaction<'static, Any>, id: &str) -> Result<bool, DataError> {
        store::unban(&self.db, tx, id).await
    }

    /// `(id, display name)` of the accounts among `ids` (any order; unknown ids left out).
    pub(crate) async fn names(&self, ids: &[Uuid]) -> Result<Vec<(String, String)>, DataError> {
        store::names(&self.db, ids).await
    }

    /// Up to `limit` accounts matching `filter`, newest first, after the account `after`.
    pub(crate) async fn list(
        &self,
        filter: &UserFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserRow>, DataError> {
        let text = match &filter.q {
            Some(q) if q.contains('@') => match normalize_email(q) {
                Ok(email) => Some(store::Text::EmailIndex(self.email_index(&email))),
                // Not an address: nothing has it.
                Err(_) => return Ok(Vec::new()),
            },
            Some(q) => Some(store::Text::NamePart(q)),
            None => None,
        };
        let listing = store::Listing { text, role: filter.role.as_deref(), banned: filter.banned, after };
        store::list(&self.db, &listing, limit).await
    }

    /// Sets the role of an existing account (a promotion from the command line: it takes no
    /// power away, so no session has to end).
    pub(crate) async fn set_role(&self, id: &str, role: &str) -> Result<(), DataError> {
        let mut tx = self.db.begin_write().await?;
        self.set_role_in(&mut tx, id, role).await?;
        self.db.commit(tx).await
    }

    /// Replaces the password hash (after a cost change, on the next successful sign-in).
    pub(crate) async fn set_password_hash(&self, id: &str, phc: &str) -> Result<(), DataError> {
        store::set_password_hash(&self.db, id, phc).await
    }

    /// Replaces the password hash in `tx` (a reset or a change).
    pub(crate) async fn set_password_hash_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        id: &str,
        phc: &str,
    ) -> Result<(), DataError> {
        store::set_password_hash_in(&self.db, tx, id, phc).await
    }

    /// The API view of a row (decrypts the address).
    pub(crate) fn user(&self, row: &UserRow) -> Result<User, keel::http::Problem> {
        let id = Uuid::parse_str(&row.id).map_err(|_| {
            keel::http::Problem::internal_error("reading an account", "a users row has an id that is not a UUID")
        })?;
        Ok(User {
            id,
            email: self.keyring.decrypt_str(&row.email_ciphertext)?,
            name: row.name.clone(),
            role: row.role.clone(),
            email_verified: row.email_verified_at.is_some(),
            created_at: from_micros(row.created_at),
        })
    }

    /// The account and its ban, as moderators and admins see it.
    pub(crate) fn managed(&self, row: &UserRow) -> Result<ManagedUser, keel::http::Problem> {
        let ban = match (row.banned_at, &row.ban_reason) {
            (Some(at), reason) => Some(Ban {
                reason: reason.clone().unwrap_or_default(),
                banned_by: row.banned_by.as_deref().and_then(|b| Uuid::parse_str(b).ok()),
                banned_at: from_micros(at),
            }),
            (None, _) => None,
        };
        Ok(ManagedUser { user: self.user(row)?, ban })
    }

    /// Appends to the audit log. A failed append is logged, not returned: the action it
    /// records has already happened and the caller must still get its answer.
    pub(crate) async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        outcome: Outcome,
        details: serde_json::Value,
    ) {
        if let Err(e) = self.audit.record(actor, action, target, outcome, details).await {
            tracing::error!(error = %e, action, "cannot append to the audit log");
        }
    }
}

/// Normalizes an address and checks its length, syntax and characters: trimmed, Unicode NFC,
/// lowercased, the domain validated and mapped with IDNA (UTS #46) and kept in its canonical
/// Unicode form; a local part or domain label that mixes scripts (`pаypal` with a Cyrillic `а`)
/// or holds a character Unicode does not allow in identifiers (invisible joiners, symbols) is
/// refused, so look-alike addresses cannot be registered.
pub fn normalize_email(raw: &str) -> Result<String, FieldError> {
    let invalid = || FieldError::new("email", "is not an e-mail address");
    // Checked on the input (bounds the work below) and on the result (IDNA mapping may lengthen).
    let too_long = |e: &str| {
        (e.chars().count() > MAX_EMAIL)
            .then(|| FieldError::new("email", format!("must be at most {MAX_EMAIL} characters")))
    };
    let email: String = raw.trim().nfc().collect::<String>().to_lowercase();
    if email.is_empty() {
        return Err(FieldError::new("email", "is required"));
    }
    if let Some(e) = too_long(&email) {
        return Err(e);
    }
    let Some((local, domain)) = email.split_once('@') else { return Err(invalid()) };
    if !plausible_local(local) {
        return Err(invalid());
    }
    // UTS #46 (non-transitional, as browsers and registries now use): validates the labels and
    // maps them; the Unicode form of the ASCII one is canonical.
    // Strict: letters, digits and inner hyphens only, DNS lengths; a host needs a dot.
    let ascii = idna::domain_to_ascii_strict(domain).map_err(|_| invalid())?;
    if ascii.split('.').count() < 2 || ascii.split('.').any(str::is_empty) {
        return Err(invalid());
    }
    let (domain, checked) = idna::domain_to_unicode(&ascii);
    checked.map_err(|_| invalid())?;
    for part in std::iter::once(local).chain(domain.split('.')) {
        if !part.chars().all(|c| c.is_ascii() || c.identifier_allowed()) || !part.is_single_script() {
            return Err(FieldError::new("email", "mixes scripts or has characters not allowed in an address"));
        }
    }
    let email = format!("{local}@{domain}");
    match too_long(&email) {
        Some(e) => Err(e),
        None => Ok(email),
    }
}

/// The local part: no spaces, quotes or brackets, no leading, trailing or doubled dot.
/// Deliberately not the whole of RFC 5322: deliverability is for a confirmation mail.
fn plausible_local(local: &str) -> bool {
    let bad = |c: char| c.is_whitespace() || c.is_control() || "\"(),:;<>[\\]@".contains(c);
    !local.is_empty()
        && local.chars().count() <= MAX_LOCAL
        && !local.chars().any(bad)
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
}

/// Checks a display name is at most [`MAX_NAME`] characters as sent, not blank and without
/// control characters; answers it trimmed.
pub fn validate_name(raw: &str) -> Result<String, FieldError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(FieldError::new("name", "is required"));
    }
    if raw.chars().count() > MAX_NAME {
        return Err(FieldError::new("name", format!("must be at most {MAX_NAME} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(FieldError::new("name", "must not contain control characters"));
    }
    Ok(name.to_owned())
}

/// Checks a new password against the policy (length, not the address, not a common password).
pub fn check_new_password(policy: &PasswordPolicy, password: &str, email: &str) -> Result<(), FieldError> {
    policy.check(password, Some(email)).map_err(|v| {
        let message = match v {
            PolicyViolation::TooShort(n) => format!("must be at least {n} characters"),
            PolicyViolation::TooLong(n) => format!("must be at most {n} bytes"),
            PolicyViolation::SameAsEmail => "must not be the e-mail address".to_owned(),
            PolicyViolation::Common => "is too common".to_owned(),
            other => other.to_string(),
        };
        FieldError::new("password", message)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The document states the default password policy.
    #[test]
    fn the_document_states_the_default_password_policy() {
        let policy = keel::security::PasswordPolicy::default();
        assert_eq!(
            (policy.min_length, policy.max_length),
            (cityevents_api::limits::MIN_PASSWORD, cityevents_api::limits::MAX_PASSWORD)
        );
    }

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(normalize_email("  Alice@Example.COM ").unwrap(), "alice@example.com");
        assert_eq!(normalize_email("a.b+tag@sub.example.co").unwrap(), "a.b+tag@sub.example.co");
        for bad in [
            "",
            "   ",
            "alice",
            "alice@",
            "@example.com",
            "a@b",
            "a b@example.com",
            "a@@example.com",
            "a@exa mple.com",
            "a@-example.com",
            "a@example..com",
            ".a@example.com",
            "a\"b@example.com",
            "a@example.com.",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@{}.com", "a".repeat(64), "b".repeat(186));
        assert_eq!(long.len(), 255);
        assert_eq!(normalize_email(&long).unwrap_err().field, "email");
        assert!(normalize_email(&format!("{}@example.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn unicode_addresses_have_one_form_and_look_alikes_are_refused() {
        // NFC, lower case, and the domain in its canonical Unicode form, however it was typed.
        let canonical = "ádmin@exämple.com";
        for typed in ["ÁDMIN@EXÄMPLE.COM", "a\u{301}dmin@exa\u{308}mple.com", "ádmin@xn--exmple-cua.com"] {
            assert_eq!(normalize_email(typed).unwrap(), canonical, "{typed:?}");
        }
        assert_eq!(normalize_email("Иван@Пример.рф").unwrap(), "иван@пример.рф");
        for look_alike in [
            "p\u{430}ypal@example.com",  // Cyrillic а among Latin letters
            "paypal@p\u{430}ypal.com",   // … in the domain
            "ad\u{200d}min@example.com", // an invisible joiner
            "\u{ff41}dmin@example.com",  // a full-width letter
            "admin\u{2060}@example.com", // a word joiner
        ] {
            let e = normalize_email(look_alike).unwrap_err();
            assert_eq!(e.field, "email", "{look_alike:?}");
        }
    }

    #[test]
    fn names_are_bounded() {
        assert_eq!(validate_name("  Ada  ").unwrap(), "Ada");
        assert!(validate_name(" ").is_err());
        assert!(validate_name(&"é".repeat(100)).is_ok());
        assert!(validate_name(&"é".repeat(101)).is_err());
        assert!(validate_name("a\u{7}b").is_err());
    }

    #[test]
    fn policy_messages_name_the_password() {
        let p = PasswordPolicy::default();
        let e = check_new_password(&p, "short", "a@example.com").unwrap_err();
        assert_eq!((e.field, e.message.as_str()), ("password", "must be at least 12 characters"));
        assert!(check_new_password(&p, "plum-harbor-velvet-42", "a@example.com").is_ok());
    }
}
