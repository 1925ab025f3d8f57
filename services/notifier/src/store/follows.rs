//! `follows`: who follows which organizer.

use keel::data::{DataError, Db};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use super::Tx;

/// When `follower` started following `organizer`, if they do.
pub(crate) async fn since(db: &Db, organizer: Uuid, follower: Uuid) -> Result<Option<i64>, DataError> {
    let sql = db.sql("SELECT created_at FROM follows WHERE organizer_id = $1 AND follower_id = $2");
    Ok(sqlx::query_scalar(AssertSqlSafe(sql.into_owned()))
        .bind(organizer.to_string())
        .bind(follower.to_string())
        .fetch_optional(db.exec())
        .await?)
}

/// Records that `follower` follows `organizer` from `at`; `false` when they already did (a
/// concurrent follow of the same pair is the database's unique key: the caller reads again).
pub(crate) async fn follow(db: &Db, organizer: Uuid, follower: Uuid, at: i64) -> Result<bool, DataError> {
    let sql = db.sql("INSERT INTO follows (organizer_id, follower_id, created_at) VALUES ($1, $2, $3)");
    match sqlx::query(AssertSqlSafe(sql.into_owned()))
        .bind(organizer.to_string())
        .bind(follower.to_string())
        .bind(at)
        .execute(db.exec())
        .await
    {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Stops `follower` following `organizer`.
pub(crate) async fn unfollow(db: &Db, organizer: Uuid, follower: Uuid) -> Result<(), DataError> {
    let sql = db.sql("DELETE FROM follows WHERE organizer_id = $1 AND follower_id = $2");
    sqlx::query(AssertSqlSafe(sql.into_owned()))
        .bind(organizer.to_string())
        .bind(follower.to_string())
        .execute(db.exec())
        .await?;
    Ok(())
}

/// How many people follow `organizer`.
pub(crate) async fn count(db: &Db, organizer: Uuid) -> Result<i64, DataError> {
    let sql = db.sql("SELECT COUNT(*) FROM follows WHERE organizer_id = $1");
    Ok(sqlx::query_scalar(AssertSqlSafe(sql.into_owned())).bind(organizer.to_string()).fetch_one(db.exec()).await?)
}

/// Up to `limit + 1` organizers `follower` follows, newest first, after the keyset `after`
/// (`(created_at, organizer_id)`): `(organizer_id, created_at)`.
pub(crate) async fn following(
    db: &Db,
    follower: Uuid,
    after: Option<(i64, String)>,
    limit: u32,
) -> Result<Vec<(String, i64)>, DataError> {
    let keyset = if after.is_some() { " AND (created_at < $2 OR (created_at = $3 AND organizer_id < $4))" } else { "" };
    let lim = if after.is_some() { "$5" } else { "$2" };
    let text = format!(
        "SELECT organizer_id, created_at FROM follows WHERE follower_id = $1{keyset} \
         ORDER BY created_at DESC, organizer_id DESC LIMIT {lim}"
    );
    let sql = db.sql(&text);
    let mut q = sqlx::query_as(AssertSqlSafe(sql.into_owned())).bind(follower.to_string());
    if let Some((key, id)) = after {
        q = q.bind(key).bind(key).bind(id);
    }
    Ok(q.bind(i64::from(limit) + 1).fetch_all(db.exec()).await?)
}

/// Whether the notifier knows an event by `organizer` (someone who has published one).
pub(crate) async fn is_organizer(db: &Db, organizer: Uuid) -> Result<bool, DataError> {
    let sql = db.sql("SELECT event_id FROM event_info WHERE organizer_id = $1 LIMIT 1");
    let found: Option<String> = sqlx::query_scalar(AssertSqlSafe(sql.into_owned()))
        .bind(organizer.to_string())
        .fetch_optional(db.exec())
        .await?;
    Ok(found.is_some())
}

/// Marks the followers of `event_id`'s organizer as told of its publication; `false` when they
/// were told before (a republication, a redelivery).
pub(crate) async fn mark_told(tx: &mut Tx, db: &Db, event_id: Uuid) -> Result<bool, DataError> {
    let done = sqlx::query(
        db.statement("UPDATE event_info SET followers_told = 1 WHERE event_id = $1 AND followers_told = 0"),
    )
    .bind(event_id.to_string())
    .execute(db.on(&mut **tx))
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Up to `limit` followers of `event_id`'s organizer after `after`, in user id order, who
/// followed by `by` (micros: when the publication was queued).
pub(crate) async fn followers_after(
    tx: &mut Tx,
    db: &Db,
    (event_id, by): (&str, i64),
    after: &str,
    limit: usize,
) -> Result<Vec<String>, DataError> {
    let sql = db.sql(
        "SELECT f.follower_id FROM follows f JOIN event_info e ON e.organizer_id = f.organizer_id \
         WHERE e.event_id = $1 AND f.created_at <= $2 AND f.follower_id > $3 ORDER BY f.follower_id LIMIT $4",
    );
    Ok(sqlx::query_scalar(AssertSqlSafe(sql.into_owned()))
        .bind(event_id)
        .bind(by)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(db.on(&mut **tx))
        .await?)
}

/// The name the notifier was told for `user` (from `account.contact`).
pub(crate) async fn name_of(tx: &mut Tx, db: &Db, user: Uuid) -> Result<Option<String>, DataError> {
    let sql = db.sql("SELECT name FROM mail_contacts WHERE user_id = $1");
    Ok(sqlx::query_scalar(AssertSqlSafe(sql.into_owned()))
        .bind(user.to_string())
        .fetch_optional(db.on(&mut **tx))
        .await?)
}
