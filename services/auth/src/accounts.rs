//! Accounts: input rules, the `users` table, encrypted e-mail addresses and the audit trail.
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
use cityevents_common::time::{from_micros, now, to_micros};

/// Longest e-mail address accepted (RFC 5321's path limit), in characters.
pub const MAX_EMAIL: usize = cityevents_api::limits::MAX_EMAIL;
/// Longest display name accepted, in characters.
pub const MAX_NAME: usize = cityevents_api::limits::MAX_NAME;
/// Longest local part of an address (RFC 5321).
const MAX_LOCAL: usize = 64;

pub use cityevents_api::auth::{AccountBan as Ban, ManagedUser, User};

/// A `users` row.
#[derive(Debug, Clone)]
pub(crate) struct UserRow {
    pub(crate) id: String,
    pub(crate) email_ciphertext: String,
    pub(crate) password_hash: String,
    pub(crate) name: String,
    /// The role as one value: `admin`, else `moderator` (the `moderator` flag), else `user`.
    pub(crate) role: String,
    pub(crate) created_at: i64,
    pub(crate) email_verified_at: Option<i64>,
    /// Access tokens carry it as `sv` (see [`crate::sessions`]).
    pub(crate) session_version: u64,
    /// Set while the account is banned.
    pub(crate) banned_at: Option<i64>,
    pub(crate) banned_by: Option<String>,
    pub(crate) ban_reason: Option<String>,
    /// Grows with every ban and lift (`account.banned`/`account.unbanned` carry it).
    pub(crate) ban_version: u64,
}

type RowTuple =
    (String, String, String, String, String, i64, Option<i64>, i64, Option<i64>, Option<String>, Option<String>, i64);

/// The role the `role` column and the `moderator` flag make together (migration 0010), as SQL
/// over `users` (columns prefixed with `$table`, e.g. `"u."`).
macro_rules! role_sql {
    ($table:literal) => {
        concat!(
            "CASE WHEN ",
            $table,
            "role = 'admin' THEN 'admin' WHEN ",
            $table,
            "moderator = 1 THEN 'moderator' ELSE 'user' END"
        )
    };
}
pub(crate) use role_sql;

/// [`role_sql!`] over `users` itself.
pub(crate) const ROLE_SQL: &str = role_sql!("");

/// The columns of a [`RowTuple`], in order.
const USER_COLUMNS: &str = concat!(
    "id, email_ciphertext, password_hash, name, ",
    role_sql!(""),
    " AS role, created_at, email_verified_at, session_version, banned_at, banned_by, ban_reason, ban_version"
);

impl From<RowTuple> for UserRow {
    fn from(
        (
            id,
            email_ciphertext,
            password_hash,
            name,
            role,
            created_at,
            email_verified_at,
            sv,
            banned_at,
            banned_by,
            ban_reason,
            ban_version,
        ): RowTuple,
    ) -> Self {
        let session_version = u64::try_from(sv).unwrap_or(0);
        let ban_version = u64::try_from(ban_version).unwrap_or(0);
        Self {
            id,
            email_ciphertext,
            password_hash,
            name,
            role,
            created_at,
            email_verified_at,
            session_version,
            banned_at,
            banned_by,
            ban_reason,
            ban_version,
        }
    }
}

impl UserRow {
    /// Whether the account is banned.
    pub(crate) fn banned(&self) -> bool {
        self.banned_at.is_some()
    }
}

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
        let db = &self.db;
        let mut conn = db.acquire().await?;
        let row: Option<RowTuple> =
            sqlx::query_as(db.statement(&format!("SELECT {USER_COLUMNS} FROM users WHERE email_bidx = $1")))
                .bind(bidx)
                .fetch_optional(db.on(&mut *conn))
                .await
                .map_err(DataError::from)?;
        Ok(row.map(UserRow::from))
    }

    pub(crate) async fn by_id(&self, id: Uuid) -> Result<Option<UserRow>, DataError> {
        let mut conn = self.db.acquire().await?;
        self.by_id_on(&mut conn, id).await
    }

    /// Up to `limit` accounts whose contact the notifier never heard (`contact_sent_at` unset),
    /// in id order.
    pub(crate) async fn without_contact(&self, limit: u32) -> Result<Vec<UserRow>, DataError> {
        let db = &self.db;
        let mut conn = db.acquire().await?;
        let text = format!("SELECT {USER_COLUMNS} FROM users WHERE contact_sent_at IS NULL ORDER BY id LIMIT {limit}");
        let rows: Vec<RowTuple> =
            sqlx::query_as(db.statement(&text)).fetch_all(db.on(&mut *conn)).await.map_err(DataError::from)?;
        Ok(rows.into_iter().map(UserRow::from).collect())
    }

    /// [`Accounts::by_id`] on `conn` (a transaction's, to see its own writes).
    pub(crate) async fn by_id_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        id: Uuid,
    ) -> Result<Option<UserRow>, DataError> {
        let db = &self.db;
        let row: Option<RowTuple> =
            sqlx::query_as(db.statement(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1")))
                .bind(id.to_string())
                .fetch_optional(db.on(&mut *conn))
                .await
                .map_err(DataError::from)?;
        Ok(row.map(UserRow::from))
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
        let db = &self.db;
        let mut conn = db.acquire().await?;
        let found: Option<String> =
            sqlx::query_scalar(db.statement("SELECT id FROM users WHERE email_skeleton_bidx = $1"))
                .bind(skeleton_bidx)
                .fetch_optional(db.on(&mut *conn))
                .await
                .map_err(DataError::from)?;
        Ok(found.is_some())
    }

    /// Fills in the skeleton index of accounts made before it existed, a page at a time.
    /// When two of them look alike, the later keeps none (both exist already; logged).
    /// Returns how many were filled in.
    pub async fn backfill_skeletons(&self) -> Result<u64, StoreError> {
        let db = &self.db;
        let (mut after, mut filled) = (String::new(), 0_u64);
        loop {
            let page: Vec<(String, String)> = {
                let mut conn = db.acquire().await?;
                sqlx::query_as(db.statement(
                    "SELECT id, email_ciphertext FROM users WHERE email_skeleton_bidx IS NULL AND id > $1 \
                     ORDER BY id LIMIT 200",
                ))
                .bind(&after)
                .fetch_all(db.on(&mut *conn))
                .await
                .map_err(DataError::from)?
            };
            let Some((last, _)) = page.last() else { return Ok(filled) };
            after = last.clone();
            for (id, ciphertext) in page {
                let skeleton = self.skeleton_index(&self.keyring.decrypt_str(&ciphertext)?);
                let mut conn = db.acquire().await?;
                let updated = sqlx::query(db.statement(
                    "UPDATE users SET email_skeleton_bidx = $1 WHERE id = $2 AND email_skeleton_bidx IS NULL",
                ))
                .bind(&skeleton)
                .bind(&id)
                .execute(db.on(&mut *conn))
                .await;
                match updated {
                    Ok(_) => filled += 1,
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        tracing::warn!(user_id = %id, "an older account's address looks like another's; left as is");
                    }
                    Err(e) => return Err(DataError::from(e).into()),
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
        let inserted = sqlx::query(db.statement(
            "INSERT INTO users (id, email_ciphertext, email_bidx, email_skeleton_bidx, password_hash, name, role, \
             created_at, email_verified_at, name_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        ))
        .bind(id.to_string())
        .bind(&email_ciphertext)
        .bind(self.email_index(email))
        .bind(self.skeleton_index(email))
        .bind(password_hash)
        .bind(name)
        .bind(role)
        .bind(to_micros(created_at))
        .bind(verified.then(|| to_micros(created_at)))
        .bind(name.to_lowercase())
        .execute(db.on(&mut *tx))
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Err(StoreError::Taken),
            Err(e) => return Err(DataError::from(e).into()),
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
        let db = &self.db;
        sqlx::query(
            db.statement("UPDATE users SET email_verified_at = $1 WHERE id = $2 AND email_verified_at IS NULL"),
        )
        .bind(to_micros(now()))
        .bind(id)
        .execute(db.on(&mut **tx))
        .await
        .map_err(DataError::from)?;
        Ok(())
    }

    /// Sets the role of an existing account in `tx` (the caller ends its sessions with it).
    pub(crate) async fn set_role_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        id: &str,
        role: &str,
    ) -> Result<(), DataError> {
        let db = &self.db;
        let (column, moderator) = stored_role(role);
        sqlx::query(db.statement("UPDATE users SET role = $1, moderator = $2 WHERE id = $3"))
            .bind(column)
            .bind(moderator)
            .bind(id)
            .execute(db.on(&mut **tx))
            .await
            .map_err(DataError::from)?;
        Ok(())
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
        let db = &self.db;
        let done = sqlx::query(db.statement(
            "UPDATE users SET banned_at = $1, banned_by = $2, ban_reason = $3, ban_version = ban_version + 1 \
             WHERE id = $4 AND banned_at IS NULL",
        ))
        .bind(at)
        .bind(by)
        .bind(reason)
        .bind(id)
        .execute(db.on(&mut **tx))
        .await
        .map_err(DataError::from)?;
        Ok(done.rows_affected() == 1)
    }

    /// Lifts the account's ban in `tx`; `false` when it was not banned (a concurrent lift won).
    /// The admins' ids, their rows locked in `tx` until it ends (PostgreSQL, MySQL/MariaDB;
    /// SQLite lets one writer at a time anyway): two admins stepping down at once cannot both
    /// count the other as the one who stays.
    pub(crate) async fn admins_locked(&self, tx: &mut Transaction<'static, Any>) -> Result<Vec<String>, DataError> {
        let db = &self.db;
        let sql = match db.backend() {
            keel::data::Backend::Sqlite => "SELECT id FROM users WHERE role = $1",
            _ => "SELECT id FROM users WHERE role = $1 FOR UPDATE",
        };
        sqlx::query_scalar(db.statement(sql))
            .bind(stored_role(cityevents_common::roles::ADMIN).0)
            .fetch_all(db.on(&mut **tx))
            .await
            .map_err(DataError::from)
    }

    pub(crate) async fn unban_in(&self, tx: &mut Transaction<'static, Any>, id: &str) -> Result<bool, DataError> {
        let db = &self.db;
        let done = sqlx::query(db.statement(
            "UPDATE users SET banned_at = NULL, banned_by = NULL, ban_reason = NULL, ban_version = ban_version + 1 \
             WHERE id = $1 AND banned_at IS NOT NULL",
        ))
        .bind(id)
        .execute(db.on(&mut **tx))
        .await
        .map_err(DataError::from)?;
        Ok(done.rows_affected() == 1)
    }

    /// `(id, display name)` of the accounts among `ids` (any order; unknown ids left out).
    pub(crate) async fn names(&self, ids: &[Uuid]) -> Result<Vec<(String, String)>, DataError> {
        let db = &self.db;
        let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let text = format!("SELECT id, name FROM users WHERE id IN ({})", marks.join(", "));
        let mut query = sqlx::query_as::<_, (String, String)>(db.statement(&text));
        for id in ids {
            query = query.bind(id.to_string());
        }
        let mut conn = db.acquire().await?;
        query.fetch_all(db.on(&mut *conn)).await.map_err(DataError::from)
    }

    /// Up to `limit` accounts matching `filter`, newest first, after the account `after`.
    pub(crate) async fn list(
        &self,
        filter: &UserFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserRow>, DataError> {
        let db = &self.db;
        let mut conditions = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let bind = |value: String, binds: &mut Vec<String>| {
            binds.push(value);
            format!("${}", binds.len())
        };
        if let Some(q) = &filter.q {
            if q.contains('@') {
                let bidx = match normalize_email(q) {
                    Ok(email) => self.email_index(&email),
                    // Not an address: nothing has it.
                    Err(_) => return Ok(Vec::new()),
                };
                conditions.push(format!("email_bidx = {}", bind(bidx, &mut binds)));
            } else {
                // `!` escapes (a backslash means something else in MySQL string literals). The
                // key is Rust's Unicode lowercase; rows from before it existed fall back to SQL's.
                let escaped = q.to_lowercase().replace('!', "!!").replace('%', "!%").replace('_', "!_");
                let pattern = bind(format!("%{escaped}%"), &mut binds);
                conditions.push(format!("COALESCE(name_key, LOWER(name)) LIKE {pattern} ESCAPE '!'"));
            }
        }
        if let Some(role) = &filter.role {
            conditions.push(format!("{ROLE_SQL} = {}", bind(role.clone(), &mut binds)));
        }
        match filter.banned {
            Some(true) => conditions.push("banned_at IS NOT NULL".into()),
            Some(false) => conditions.push("banned_at IS NULL".into()),
            None => {}
        }
        if let Some(after) = after {
            conditions.push(format!("id < {}", bind(after.to_owned(), &mut binds)));
        }
        let mut text = format!("SELECT {USER_COLUMNS} FROM users");
        if !conditions.is_empty() {
            text.push_str(" WHERE ");
            text.push_str(&conditions.join(" AND "));
        }
        text.push_str(&format!(" ORDER BY id DESC LIMIT {}", u64::from(limit) + 1));
        let mut conn = db.acquire().await?;
        let mut query = sqlx::query_as::<_, RowTuple>(db.statement(&text));
        for b in binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(db.on(&mut *conn)).await.map_err(DataError::from)?;
        Ok(rows.into_iter().map(UserRow::from).collect())
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
        let db = &self.db;
        let mut conn = db.acquire().await?;
        sqlx::query(db.statement("UPDATE users SET password_hash = $1 WHERE id = $2"))
            .bind(phc)
            .bind(id)
            .execute(db.on(&mut *conn))
            .await
            .map_err(DataError::from)?;
        Ok(())
    }

    /// Replaces the password hash in `tx` (a reset or a change).
    pub(crate) async fn set_password_hash_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        id: &str,
        phc: &str,
    ) -> Result<(), DataError> {
        let db = &self.db;
        sqlx::query(db.statement("UPDATE users SET password_hash = $1 WHERE id = $2"))
            .bind(phc)
            .bind(id)
            .execute(db.on(&mut **tx))
            .await
            .map_err(DataError::from)?;
        Ok(())
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

/// How `role` is stored: the `role` column (`user` or `admin`) and the `moderator` flag.
fn stored_role(role: &str) -> (&'static str, i16) {
    match role {
        cityevents_common::roles::ADMIN => ("admin", 0),
        cityevents_common::roles::MODERATOR => ("user", 1),
        _ => ("user", 0),
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
