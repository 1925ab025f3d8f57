//! `users`: the accounts, their roles and bans, and the look-alike index.

use keel::data::{DataError, Db};
use sqlx::{Any, AnyConnection, Transaction};
use uuid::Uuid;

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

impl UserRow {
    /// Whether the account is banned.
    pub(crate) fn banned(&self) -> bool {
        self.banned_at.is_some()
    }

    /// Whether the account has a password (an account made by a sign-in with an OpenID Connect
    /// provider has none, an empty `password_hash`, until a reset link sets one).
    pub(crate) fn has_password(&self) -> bool {
        !self.password_hash.is_empty()
    }
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
const ROLE_SQL: &str = role_sql!("");

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

/// How `role` is stored: the `role` column (`user` or `admin`) and the `moderator` flag.
fn stored_role(role: &str) -> (&'static str, i16) {
    match role {
        cityevents_common::roles::ADMIN => ("admin", 0),
        cityevents_common::roles::MODERATOR => ("user", 1),
        _ => ("user", 0),
    }
}

/// A new account, its address already encrypted and indexed.
#[derive(Debug)]
pub(crate) struct NewUser<'a> {
    pub(crate) id: Uuid,
    pub(crate) email_ciphertext: &'a str,
    pub(crate) email_bidx: &'a str,
    pub(crate) skeleton_bidx: &'a str,
    pub(crate) password_hash: &'a str,
    pub(crate) name: &'a str,
    pub(crate) role: &'a str,
    pub(crate) created_at: i64,
    pub(crate) email_verified_at: Option<i64>,
}

/// What [`list`] looks for in an account.
#[derive(Debug)]
pub(crate) enum Text<'a> {
    /// The address with this blind index.
    EmailIndex(String),
    /// A name containing this (case-insensitive).
    NamePart(&'a str),
}

/// Which accounts [`list`] selects.
#[derive(Debug, Default)]
pub(crate) struct Listing<'a> {
    pub(crate) text: Option<Text<'a>>,
    pub(crate) role: Option<&'a str>,
    pub(crate) banned: Option<bool>,
    /// Only accounts older than this id (the cursor).
    pub(crate) after: Option<&'a str>,
}

/// The account whose address has blind index `bidx`.
pub(crate) async fn by_email_index(db: &Db, bidx: &str) -> Result<Option<UserRow>, DataError> {
    let mut conn = db.acquire().await?;
    user_where(db, &mut conn, "email_bidx", bidx).await
}

/// The account `id`.
pub(crate) async fn by_id(db: &Db, id: Uuid) -> Result<Option<UserRow>, DataError> {
    let mut conn = db.acquire().await?;
    user_where(db, &mut conn, "id", &id.to_string()).await
}

/// [`by_id`] in `tx`, to see its own writes.
pub(crate) async fn by_id_in(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    id: Uuid,
) -> Result<Option<UserRow>, DataError> {
    user_where(db, tx, "id", &id.to_string()).await
}

/// The account whose `column` (a unique one) is `value`.
async fn user_where(
    db: &Db,
    conn: &mut AnyConnection,
    column: &'static str,
    value: &str,
) -> Result<Option<UserRow>, DataError> {
    let row: Option<RowTuple> =
        sqlx::query_as(db.statement(&format!("SELECT {USER_COLUMNS} FROM users WHERE {column} = $1")))
            .bind(value)
            .fetch_optional(db.on(&mut *conn))
            .await?;
    Ok(row.map(UserRow::from))
}

/// Up to `limit` accounts whose contact was never sent (`contact_sent_at` unset), in id order.
pub(crate) async fn without_contact(db: &Db, limit: u32) -> Result<Vec<UserRow>, DataError> {
    let mut conn = db.acquire().await?;
    let text = format!("SELECT {USER_COLUMNS} FROM users WHERE contact_sent_at IS NULL ORDER BY id LIMIT {limit}");
    let rows: Vec<RowTuple> =
        sqlx::query_as(db.statement(&text)).fetch_all(db.on(&mut *conn)).await.map_err(DataError::from)?;
    Ok(rows.into_iter().map(UserRow::from).collect())
}

/// Whether an account has the look-alike index `skeleton_bidx`.
pub(crate) async fn skeleton_taken(db: &Db, skeleton_bidx: &str) -> Result<bool, DataError> {
    let mut conn = db.acquire().await?;
    let found: Option<String> = sqlx::query_scalar(db.statement("SELECT id FROM users WHERE email_skeleton_bidx = $1"))
        .bind(skeleton_bidx)
        .fetch_optional(db.on(&mut *conn))
        .await?;
    Ok(found.is_some())
}

/// The next 200 `(id, email ciphertext)` of accounts without a look-alike index, after id `after`.
pub(crate) async fn without_skeleton(db: &Db, after: &str) -> Result<Vec<(String, String)>, DataError> {
    let mut conn = db.acquire().await?;
    sqlx::query_as(db.statement(
        "SELECT id, email_ciphertext FROM users WHERE email_skeleton_bidx IS NULL AND id > $1 ORDER BY id LIMIT 200",
    ))
    .bind(after)
    .fetch_all(db.on(&mut *conn))
    .await
    .map_err(DataError::from)
}

/// Gives account `id` its look-alike index unless it has one; `false` when another account has
/// that index (the `UNIQUE` constraint refused).
pub(crate) async fn set_skeleton(db: &Db, id: &str, skeleton_bidx: &str) -> Result<bool, DataError> {
    let mut conn = db.acquire().await?;
    let updated = sqlx::query(
        db.statement("UPDATE users SET email_skeleton_bidx = $1 WHERE id = $2 AND email_skeleton_bidx IS NULL"),
    )
    .bind(skeleton_bidx)
    .bind(id)
    .execute(db.on(&mut *conn))
    .await;
    unique(updated)
}

/// Inserts the account in `tx`; `false` when its address or a look-alike is taken (the `UNIQUE`
/// constraints decide a race).
pub(crate) async fn insert(db: &Db, tx: &mut Transaction<'static, Any>, user: &NewUser<'_>) -> Result<bool, DataError> {
    let inserted = sqlx::query(db.statement(
        "INSERT INTO users (id, email_ciphertext, email_bidx, email_skeleton_bidx, password_hash, name, role, \
         created_at, email_verified_at, name_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    ))
    .bind(user.id.to_string())
    .bind(user.email_ciphertext)
    .bind(user.email_bidx)
    .bind(user.skeleton_bidx)
    .bind(user.password_hash)
    .bind(user.name)
    .bind(user.role)
    .bind(user.created_at)
    .bind(user.email_verified_at)
    .bind(user.name.to_lowercase())
    .execute(db.on(&mut **tx))
    .await;
    unique(inserted)
}

/// Whether the statement ran: `false` when a `UNIQUE` constraint refused it.
fn unique<T>(done: Result<T, sqlx::Error>) -> Result<bool, DataError> {
    match done {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(DataError::from(e)),
    }
}

/// Marks the address of `id` verified at `at`, unless it is already.
pub(crate) async fn set_verified(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    id: &str,
    at: i64,
) -> Result<(), DataError> {
    sqlx::query(db.statement("UPDATE users SET email_verified_at = $1 WHERE id = $2 AND email_verified_at IS NULL"))
        .bind(at)
        .bind(id)
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}

/// Sets the role of account `id`.
pub(crate) async fn set_role(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    id: &str,
    role: &str,
) -> Result<(), DataError> {
    let (column, moderator) = stored_role(role);
    sqlx::query(db.statement("UPDATE users SET role = $1, moderator = $2 WHERE id = $3"))
        .bind(column)
        .bind(moderator)
        .bind(id)
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}

/// Bans account `id` unless it is banned already (then `false`).
pub(crate) async fn ban(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    id: &str,
    by: &str,
    reason: &str,
    at: i64,
) -> Result<bool, DataError> {
    let done = sqlx::query(db.statement(
        "UPDATE users SET banned_at = $1, banned_by = $2, ban_reason = $3, ban_version = ban_version + 1 \
         WHERE id = $4 AND banned_at IS NULL",
    ))
    .bind(at)
    .bind(by)
    .bind(reason)
    .bind(id)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Lifts the ban of account `id`; `false` when it was not banned.
pub(crate) async fn unban(db: &Db, tx: &mut Transaction<'static, Any>, id: &str) -> Result<bool, DataError> {
    let done = sqlx::query(db.statement(
        "UPDATE users SET banned_at = NULL, banned_by = NULL, ban_reason = NULL, ban_version = ban_version + 1 \
         WHERE id = $1 AND banned_at IS NOT NULL",
    ))
    .bind(id)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The admins' ids, their rows locked until `tx` ends (PostgreSQL, MySQL/MariaDB; SQLite lets
/// one writer at a time anyway).
pub(crate) async fn admins_locked(db: &Db, tx: &mut Transaction<'static, Any>) -> Result<Vec<String>, DataError> {
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

/// `(id, display name)` of the accounts among `ids` (any order; unknown ids left out).
pub(crate) async fn names(db: &Db, ids: &[Uuid]) -> Result<Vec<(String, String)>, DataError> {
    let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let text = format!("SELECT id, name FROM users WHERE id IN ({})", marks.join(", "));
    let mut query = sqlx::query_as::<_, (String, String)>(db.statement(&text));
    for id in ids {
        query = query.bind(id.to_string());
    }
    let mut conn = db.acquire().await?;
    query.fetch_all(db.on(&mut *conn)).await.map_err(DataError::from)
}

/// Up to `limit + 1` accounts matching `listing`, newest first.
pub(crate) async fn list(db: &Db, listing: &Listing<'_>, limit: u32) -> Result<Vec<UserRow>, DataError> {
    let mut conditions = Vec::new();
    let mut binds: Vec<String> = Vec::new();
    let bind = |value: String, binds: &mut Vec<String>| {
        binds.push(value);
        format!("${}", binds.len())
    };
    match &listing.text {
        Some(Text::EmailIndex(bidx)) => conditions.push(format!("email_bidx = {}", bind(bidx.clone(), &mut binds))),
        Some(Text::NamePart(part)) => {
            // `!` escapes (a backslash means something else in MySQL string literals). The key
            // is Rust's Unicode lowercase; rows from before it existed fall back to SQL's.
            let escaped = part.to_lowercase().replace('!', "!!").replace('%', "!%").replace('_', "!_");
            let pattern = bind(format!("%{escaped}%"), &mut binds);
            conditions.push(format!("COALESCE(name_key, LOWER(name)) LIKE {pattern} ESCAPE '!'"));
        }
        None => {}
    }
    if let Some(role) = listing.role {
        conditions.push(format!("{ROLE_SQL} = {}", bind(role.to_owned(), &mut binds)));
    }
    match listing.banned {
        Some(true) => conditions.push("banned_at IS NOT NULL".into()),
        Some(false) => conditions.push("banned_at IS NULL".into()),
        None => {}
    }
    if let Some(after) = listing.after {
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

/// Replaces the password hash of account `id`.
pub(crate) async fn set_password_hash(db: &Db, id: &str, phc: &str) -> Result<(), DataError> {
    let mut conn = db.acquire().await?;
    set_password_hash_on(db, &mut conn, id, phc).await
}

/// [`set_password_hash`] in `tx`.
pub(crate) async fn set_password_hash_in(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    id: &str,
    phc: &str,
) -> Result<(), DataError> {
    set_password_hash_on(db, tx, id, phc).await
}

async fn set_password_hash_on(db: &Db, conn: &mut AnyConnection, id: &str, phc: &str) -> Result<(), DataError> {
    sqlx::query(db.statement("UPDATE users SET password_hash = $1 WHERE id = $2"))
        .bind(phc)
        .bind(id)
        .execute(db.on(&mut *conn))
        .await?;
    Ok(())
}

/// A person's public profile.
pub(crate) struct ProfileRow {
    pub(crate) name: String,
    pub(crate) bio: String,
    pub(crate) city: String,
    pub(crate) created_at: i64,
    pub(crate) banned: bool,
    /// The avatar's content hash.
    pub(crate) avatar: Option<String>,
}

/// The columns of a [`ProfileRow`].
const PROFILE_SQL: &str = "SELECT name, bio, city, created_at, banned_at, avatar FROM users WHERE id = $1";

type ProfileTuple = (String, String, String, i64, Option<i64>, Option<String>);

impl From<ProfileTuple> for ProfileRow {
    fn from((name, bio, city, created_at, banned, avatar): ProfileTuple) -> Self {
        Self { name, bio, city, created_at, banned: banned.is_some(), avatar }
    }
}

/// Sets or clears `id`'s avatar (a content hash); whether the account exists.
pub(crate) async fn set_avatar(db: &Db, id: Uuid, avatar: Option<&str>) -> Result<bool, DataError> {
    let mut conn = db.acquire().await?;
    let done = sqlx::query(db.statement("UPDATE users SET avatar = $1 WHERE id = $2"))
        .bind(avatar.map(str::to_owned))
        .bind(id.to_string())
        .execute(db.on(&mut *conn))
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The avatar hash of each of `ids` that exists (`None`: none); unknown ids are left out.
pub(crate) async fn avatars(
    db: &Db,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Option<String>>, DataError> {
    let mut out = std::collections::HashMap::new();
    let mut conn = db.acquire().await?;
    for chunk in ids.chunks(100) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let text = format!("SELECT id, avatar FROM users WHERE id IN ({})", marks.join(", "));
        let mut q = sqlx::query_as::<_, (String, Option<String>)>(db.statement(&text));
        for id in chunk {
            q = q.bind(id.to_string());
        }
        for (id, avatar) in q.fetch_all(db.on(&mut *conn)).await? {
            if let Ok(id) = Uuid::parse_str(&id) {
                out.insert(id, avatar);
            }
        }
    }
    Ok(out)
}

/// `id`'s public profile.
pub(crate) async fn profile(db: &Db, id: Uuid) -> Result<Option<ProfileRow>, DataError> {
    let mut conn = db.acquire().await?;
    let row: Option<ProfileTuple> =
        sqlx::query_as(db.statement(PROFILE_SQL)).bind(id.to_string()).fetch_optional(db.on(&mut *conn)).await?;
    Ok(row.map(ProfileRow::from))
}

/// `id`'s public profile read in `tx`, its row locked for the rest of it (PostgreSQL and MySQL;
/// a SQLite write transaction holds the database's write lock already), so two changes of
/// different fields do not undo each other.
pub(crate) async fn profile_for_update(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    id: Uuid,
) -> Result<Option<ProfileRow>, DataError> {
    let lock = if db.backend() == keel::data::Backend::Sqlite { "" } else { " FOR UPDATE" };
    let text = format!("{PROFILE_SQL}{lock}");
    let row: Option<ProfileTuple> =
        sqlx::query_as(db.statement(&text)).bind(id.to_string()).fetch_optional(db.on(&mut **tx)).await?;
    Ok(row.map(ProfileRow::from))
}

/// Sets the name, bio and city of `id` in `tx`.
pub(crate) async fn set_profile(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    id: Uuid,
    (name, bio, city): (&str, &str, &str),
) -> Result<(), DataError> {
    sqlx::query(db.statement("UPDATE users SET name = $1, bio = $2, city = $3 WHERE id = $4"))
        .bind(name)
        .bind(bio)
        .bind(city)
        .bind(id.to_string())
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}
