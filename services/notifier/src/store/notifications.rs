//! The `notifications` table: what the consumers and workers write and the API reads and marks.

use cityevents_api::notifications::Notification;
use cityevents_common::time::{from_micros, now, to_micros};
use keel::data::{DataError, Db};
use keel::http::page::Page;
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use uuid::Uuid;

/// Inserts one unread notification in `tx` (a consumer's inbox transaction), dated `at`
/// (microseconds).
pub(crate) async fn insert(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    (user_id, kind, event_id): (Uuid, &str, Uuid),
    text: String,
    at: i64,
) -> Result<(), DataError> {
    let sql = db.sql(
        "INSERT INTO notifications (id, user_id, kind, event_id, message, created_at, read_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    );
    sqlx::query(AssertSqlSafe(sql.into_owned()))
        .bind(Uuid::now_v7().to_string())
        .bind(user_id.to_string())
        .bind(kind)
        .bind(event_id.to_string())
        .bind(text)
        .bind(at)
        .bind(None::<i64>)
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}

/// Inserts one unread `kind` notification about `event_id` saying `message` for each of `users`
/// in `tx`, in one statement (a batch of participants, or a digest's organizer).
pub(crate) async fn insert_many(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    users: &[String],
    event_id: &str,
    kind: &str,
    message: &str,
) -> Result<(), DataError> {
    // Every placeholder once, in order (MySQL's are positional).
    let rows: Vec<String> = (0..users.len())
        .map(|i| {
            let b = i * 6;
            format!("(${}, ${}, ${}, ${}, ${}, ${}, NULL)", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6)
        })
        .collect();
    let text = format!(
        "INSERT INTO notifications (id, user_id, kind, event_id, message, created_at, read_at) VALUES {}",
        rows.join(", ")
    );
    let at = to_micros(now());
    let mut q = sqlx::query(db.statement(&text));
    for user in users {
        q = q.bind(Uuid::now_v7().to_string()).bind(user.clone()).bind(kind).bind(event_id).bind(message).bind(at);
    }
    q.execute(db.on(&mut **tx)).await?;
    Ok(())
}

/// A page of `user`'s notifications (only the unread with `unread`), newest first, each with
/// its `created_at` in microseconds (the page's cursor key); one more than `page.limit` when
/// there are more.
pub(crate) async fn list(
    db: &Db,
    user: &str,
    page: &Page,
    unread: bool,
) -> Result<Vec<(i64, Notification)>, DataError> {
    let mut sql =
        String::from("SELECT id, kind, event_id, message, created_at, read_at FROM notifications WHERE user_id = $1");
    if unread {
        sql.push_str(" AND read_at IS NULL");
    }
    if page.after.is_some() {
        sql.push_str(" AND (created_at < $2 OR (created_at = $3 AND id < $4))");
    }
    sql.push_str(" ORDER BY created_at DESC, id DESC LIMIT ");
    sql.push_str(&(i64::from(page.limit) + 1).to_string());
    let mut query = sqlx::query(db.statement(&sql)).bind(user.to_owned());
    if let Some(after) = &page.after {
        // Each placeholder once and in order (MySQL and SQLite take `?` positionally).
        query = query.bind(after.key).bind(after.key).bind(after.id.clone());
    }
    let mut conn = db.acquire().await?;
    let rows = query.fetch_all(db.on(&mut *conn)).await?;
    rows.iter().map(notification).collect::<Result<_, _>>().map_err(|e| db.observe(e))
}

/// A row of [`list`], decoded.
fn notification(row: &AnyRow) -> Result<(i64, Notification), sqlx::Error> {
    let created: i64 = row.try_get("created_at")?;
    let read: Option<i64> = row.try_get("read_at")?;
    let item = Notification {
        id: uuid_column(row, "id")?,
        kind: row.try_get("kind")?,
        event_id: uuid_column(row, "event_id")?,
        message: row.try_get("message")?,
        created_at: from_micros(created),
        read_at: read.map(from_micros),
    };
    Ok((created, item))
}

/// A UUID column as text.
fn uuid_column(row: &AnyRow, column: &str) -> Result<Uuid, sqlx::Error> {
    let text: String = row.try_get(column)?;
    Uuid::parse_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// How many of `user`'s notifications are unread.
pub(crate) async fn unread(db: &Db, user: &str) -> Result<u64, DataError> {
    let mut conn = db.acquire().await?;
    let n: i64 =
        sqlx::query_scalar(db.statement("SELECT COUNT(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL"))
            .bind(user)
            .fetch_one(db.on(&mut *conn))
            .await?;
    Ok(u64::try_from(n).unwrap_or_default())
}

/// Marks every unread notification of `user` read; how many were.
pub(crate) async fn mark_all_read(db: &Db, user: &str) -> Result<u64, DataError> {
    let mut conn = db.acquire().await?;
    let done =
        sqlx::query(db.statement("UPDATE notifications SET read_at = $1 WHERE user_id = $2 AND read_at IS NULL"))
            .bind(to_micros(now()))
            .bind(user)
            .execute(db.on(&mut *conn))
            .await?;
    Ok(done.rows_affected())
}

/// Marks `user`'s notification `id` read; `false` when `user` has no such notification (an
/// already read one is `true`: marking is idempotent).
pub(crate) async fn mark_read(db: &Db, user: &str, id: Uuid) -> Result<bool, DataError> {
    let id = id.to_string();
    let mut conn = db.acquire().await?;
    let done = sqlx::query(
        db.statement("UPDATE notifications SET read_at = $1 WHERE id = $2 AND user_id = $3 AND read_at IS NULL"),
    )
    .bind(to_micros(now()))
    .bind(&id)
    .bind(user)
    .execute(db.on(&mut *conn))
    .await?;
    if done.rows_affected() > 0 {
        return Ok(true);
    }
    // Nothing changed: already read, or not the caller's (whoever owns it).
    let found = sqlx::query(db.statement("SELECT 1 FROM notifications WHERE id = $1 AND user_id = $2"))
        .bind(&id)
        .bind(user)
        .fetch_optional(db.on(&mut *conn))
        .await?;
    Ok(found.is_some())
}
