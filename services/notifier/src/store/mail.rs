//! The mail tables: `mail_contacts` (each user's address, encrypted by the caller),
//! `mail_preferences` (the kinds of mail a user turned off or on) and `mail_log` (the mail
//! requests handled). MySQL has no `ON CONFLICT`: its upserts are spelled its own way.

use cityevents_common::time::{now, to_micros};
use keel::data::{Backend, DataError, Db};
use uuid::Uuid;

use super::Tx;

/// A row of `mail_contacts`, the address still encrypted.
pub(crate) struct ContactRow {
    pub(crate) email_ciphertext: String,
    pub(crate) name: String,
    pub(crate) verified: bool,
}

/// Inserts the contact of `user` in `tx`, or replaces the stored one if that is not newer than
/// `version` (auth's, strictly increasing per user): applied out of order, an older contact
/// changes nothing.
pub(crate) async fn upsert_contact(
    tx: &mut Tx,
    db: &Db,
    user: Uuid,
    c: &ContactRow,
    version: i64,
) -> Result<(), DataError> {
    let text = match db.backend() {
        // Assignments run left to right, each seeing the ones before: `version` goes last.
        Backend::MySql => {
            "INSERT INTO mail_contacts (user_id, email_ciphertext, name, verified, updated_at, version) \
             VALUES ($1, $2, $3, $4, $5, $6) ON DUPLICATE KEY UPDATE \
             email_ciphertext = IF(version <= VALUES(version), VALUES(email_ciphertext), email_ciphertext), \
             name = IF(version <= VALUES(version), VALUES(name), name), \
             verified = IF(version <= VALUES(version), VALUES(verified), verified), \
             updated_at = IF(version <= VALUES(version), VALUES(updated_at), updated_at), \
             version = GREATEST(version, VALUES(version))"
        }
        _ => {
            "INSERT INTO mail_contacts (user_id, email_ciphertext, name, verified, updated_at, version) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id) DO UPDATE SET \
             email_ciphertext = excluded.email_ciphertext, name = excluded.name, \
             verified = excluded.verified, updated_at = excluded.updated_at, version = excluded.version \
             WHERE mail_contacts.version <= excluded.version"
        }
    };
    sqlx::query(db.statement(text))
        .bind(user.to_string())
        .bind(&c.email_ciphertext)
        .bind(&c.name)
        .bind(i64::from(c.verified))
        .bind(to_micros(now()))
        .bind(version)
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}

/// The contact of `user`, if there is one.
pub(crate) async fn contact(db: &Db, user: Uuid) -> Result<Option<ContactRow>, DataError> {
    let mut conn = db.acquire().await?;
    let row: Option<(String, String, i64)> =
        sqlx::query_as(db.statement("SELECT email_ciphertext, name, verified FROM mail_contacts WHERE user_id = $1"))
            .bind(user.to_string())
            .fetch_optional(db.on(&mut *conn))
            .await?;
    Ok(row.map(|(email_ciphertext, name, verified)| ContactRow { email_ciphertext, name, verified: verified != 0 }))
}

/// The preferences `user` has set: each kind, and whether its mail is sent.
pub(crate) async fn preferences(db: &Db, user: &str) -> Result<Vec<(String, bool)>, DataError> {
    let mut conn = db.acquire().await?;
    let rows: Vec<(String, i64)> =
        sqlx::query_as(db.statement("SELECT kind, enabled FROM mail_preferences WHERE user_id = $1"))
            .bind(user)
            .fetch_all(db.on(&mut *conn))
            .await?;
    Ok(rows.into_iter().map(|(kind, enabled)| (kind, enabled != 0)).collect())
}

/// Sets one preference of `user` in `tx`.
pub(crate) async fn set_preference(tx: &mut Tx, db: &Db, user: &str, kind: &str, on: bool) -> Result<(), DataError> {
    let text = match db.backend() {
        Backend::MySql => {
            "INSERT INTO mail_preferences (user_id, kind, enabled, updated_at) VALUES ($1, $2, $3, $4) \
             ON DUPLICATE KEY UPDATE enabled = VALUES(enabled), updated_at = VALUES(updated_at)"
        }
        _ => {
            "INSERT INTO mail_preferences (user_id, kind, enabled, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, kind) DO UPDATE SET enabled = excluded.enabled, updated_at = excluded.updated_at"
        }
    };
    sqlx::query(db.statement(text))
        .bind(user)
        .bind(kind)
        .bind(i64::from(on))
        .bind(to_micros(now()))
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}

/// The outcome recorded of a request being sent, until it is sent.
const SENDING: &str = "sending";

/// Whether the mail request `message_id` was handled (sent or skipped; one being sent is not).
pub(crate) async fn logged(db: &Db, message_id: &str) -> Result<bool, DataError> {
    let mut conn = db.acquire().await?;
    let found: Option<String> = sqlx::query_scalar(db.statement("SELECT outcome FROM mail_log WHERE message_id = $1"))
        .bind(message_id)
        .fetch_optional(db.on(&mut *conn))
        .await?;
    Ok(found.is_some_and(|o| o != SENDING))
}

/// What [`claim_send`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendClaim {
    /// This instance may send it: the record says so until the lease ends.
    Claimed,
    /// It was sent or skipped already.
    Done,
    /// Another sender holds it for this many more microseconds.
    Held(i64),
}

/// Records the request `message_id` as being sent by this instance until `lease_until`
/// (microseconds), unless it was handled or another sender's lease still holds.
pub(crate) async fn claim_send(
    db: &Db,
    message_id: &str,
    template: &str,
    at: i64,
    lease_until: i64,
) -> Result<SendClaim, DataError> {
    let insert = match db.backend() {
        Backend::MySql => {
            "INSERT IGNORE INTO mail_log (message_id, template, outcome, created_at, lease_until) \
             VALUES ($1, $2, $3, $4, $5)"
        }
        _ => {
            "INSERT INTO mail_log (message_id, template, outcome, created_at, lease_until) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id) DO NOTHING"
        }
    };
    let mut conn = db.acquire().await?;
    let made = sqlx::query(db.statement(insert))
        .bind(message_id)
        .bind(template)
        .bind(SENDING)
        .bind(at)
        .bind(lease_until)
        .execute(db.on(&mut *conn))
        .await?;
    if made.rows_affected() == 1 {
        return Ok(SendClaim::Claimed);
    }
    let row: Option<(String, i64)> =
        sqlx::query_as(db.statement("SELECT outcome, lease_until FROM mail_log WHERE message_id = $1"))
            .bind(message_id)
            .fetch_optional(db.on(&mut *conn))
            .await?;
    let Some((outcome, held_until)) = row else {
        // Pruned between the two statements: as good as handled long ago.
        return Ok(SendClaim::Done);
    };
    if outcome != SENDING {
        return Ok(SendClaim::Done);
    }
    if held_until > at {
        return Ok(SendClaim::Held(held_until - at));
    }
    // Its sender died (or lost its database) mid-send: take the lease over, unless another
    // instance just did (the lease read is the condition).
    let taken = sqlx::query(db.statement(
        "UPDATE mail_log SET lease_until = $1, created_at = $2 WHERE message_id = $3 AND outcome = $4 \
         AND lease_until = $5",
    ))
    .bind(lease_until)
    .bind(at)
    .bind(message_id)
    .bind(SENDING)
    .bind(held_until)
    .execute(db.on(&mut *conn))
    .await?;
    Ok(if taken.rows_affected() == 1 { SendClaim::Claimed } else { SendClaim::Held(lease_until - at) })
}

/// Records the request `message_id`, claimed with [`claim_send`], as sent.
pub(crate) async fn sent(db: &Db, message_id: &str) -> Result<(), DataError> {
    let mut conn = db.acquire().await?;
    sqlx::query(db.statement("UPDATE mail_log SET outcome = 'sent', lease_until = 0 WHERE message_id = $1"))
        .bind(message_id)
        .execute(db.on(&mut *conn))
        .await?;
    Ok(())
}

/// Drops the claim on `message_id` after a failed send, so a retry may send it at once.
pub(crate) async fn unclaim(db: &Db, message_id: &str) -> Result<(), DataError> {
    let mut conn = db.acquire().await?;
    sqlx::query(db.statement("DELETE FROM mail_log WHERE message_id = $1 AND outcome = $2"))
        .bind(message_id)
        .bind(SENDING)
        .execute(db.on(&mut *conn))
        .await?;
    Ok(())
}

/// Records the mail request `message_id` as handled (a second record of it changes nothing).
pub(crate) async fn log(db: &Db, message_id: &str, template: &str, outcome: &str) -> Result<(), DataError> {
    let text = match db.backend() {
        Backend::MySql => {
            "INSERT IGNORE INTO mail_log (message_id, template, outcome, created_at) VALUES ($1, $2, $3, $4)"
        }
        _ => {
            "INSERT INTO mail_log (message_id, template, outcome, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (message_id) DO NOTHING"
        }
    };
    let mut conn = db.acquire().await?;
    sqlx::query(db.statement(text))
        .bind(message_id)
        .bind(template)
        .bind(outcome)
        .bind(to_micros(now()))
        .execute(db.on(&mut *conn))
        .await?;
    Ok(())
}

/// Records that the server refused the mail request `message_id` for good (a second record of
/// it changes nothing); the operator page counts these.
pub(crate) async fn failed(db: &Db, message_id: &str, template: &str) -> Result<(), DataError> {
    let text = match db.backend() {
        Backend::MySql => "INSERT IGNORE INTO mail_failures (message_id, template, created_at) VALUES ($1, $2, $3)",
        _ => {
            "INSERT INTO mail_failures (message_id, template, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (message_id) DO NOTHING"
        }
    };
    let mut conn = db.acquire().await?;
    sqlx::query(db.statement(text))
        .bind(message_id)
        .bind(template)
        .bind(to_micros(now()))
        .execute(db.on(&mut *conn))
        .await?;
    Ok(())
}

/// Deletes the records of requests handled, or refused, before `cutoff` (microseconds); how
/// many.
pub(crate) async fn prune_log(db: &Db, cutoff: i64) -> Result<u64, DataError> {
    let mut conn = db.acquire().await?;
    let mut pruned = 0;
    for table in ["mail_log", "mail_failures"] {
        let sql = format!("DELETE FROM {table} WHERE created_at < $1");
        let done = sqlx::query(db.statement(&sql)).bind(cutoff).execute(db.on(&mut *conn)).await?;
        pruned += done.rows_affected();
    }
    Ok(pruned)
}
