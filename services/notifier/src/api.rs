//! The notifier's HTTP API: the caller's notifications, newest first, and marking one read; the
//! caller's mail preferences.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use cityevents_api::notifications::{Marked, Notification, UnreadCount};
use cityevents_api::params::NotificationsParams;
use cityevents_common::catalogue::MAIL_PREFERENCES;
use cityevents_common::time::from_micros;
use cityevents_common::validate;
use http::StatusCode;
use keel::data::{DataError, Db};
use keel::http::Problem;
use keel::http::extract::{Json as JsonBody, Path, Query};
use keel::http::page::{Cursor, Page, Paginated};
use keel::security::jwt::{Auth, Claims};
use sqlx::Row;
use uuid::Uuid;

use crate::mail::handler::Contacts;

/// The routes; the caller adds the JWT extension.
pub(crate) fn router(db: Db, contacts: Contacts) -> Router {
    let preferences = Router::new()
        .route("/api/v1/me/mail-preferences", get(get_preferences).put(put_preferences))
        .with_state(contacts);
    Router::new()
        .route("/api/v1/me/notifications", get(list))
        .route("/api/v1/me/notifications/{id}/read", post(mark_read))
        .route("/api/v1/me/notifications/unread-count", get(unread_count))
        .route("/api/v1/me/notifications/read-all", post(mark_all_read))
        .with_state(db)
        .merge(preferences)
        .route_layer(cityevents_common::private::no_store())
}

/// `{"event_canceled": true, "waitlist_promoted": true, "removed": false}`.
type Preferences = BTreeMap<&'static str, bool>;

async fn get_preferences(State(c): State<Contacts>, Auth(claims): Auth<Claims>) -> Result<Json<Preferences>, Problem> {
    let prefs = c.preferences(&claims.sub).await?;
    Ok(Json(prefs.into_iter().collect()))
}

/// Sets the kinds named in the body (the others stay as they are); answers all of them.
async fn put_preferences(
    State(c): State<Contacts>,
    Auth(claims): Auth<Claims>,
    JsonBody(body): JsonBody<BTreeMap<String, serde_json::Value>>,
) -> Result<Json<Preferences>, Problem> {
    if body.is_empty() {
        return Err(validate::invalid("body", &format!("must name at least one of {}", MAIL_PREFERENCES.join(", "))));
    }
    let mut changes = Vec::with_capacity(body.len());
    for (key, value) in &body {
        let Some(kind) = MAIL_PREFERENCES.iter().find(|k| **k == key.as_str()) else {
            let known = MAIL_PREFERENCES.join(", ");
            let field: String = key.chars().take(64).collect();
            return Err(validate::invalid(&field, &format!("is not a mail preference (known: {known})")));
        };
        let Some(on) = value.as_bool() else {
            return Err(validate::invalid(kind, "must be true or false"));
        };
        changes.push((*kind, on));
    }
    c.set_preferences(&claims.sub, &changes).await?;
    get_preferences(State(c), Auth(claims)).await
}

/// A UUID column as text.
fn uuid_column(row: &sqlx::any::AnyRow, column: &str) -> Result<Uuid, sqlx::Error> {
    let text: String = row.try_get(column)?;
    Uuid::parse_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// `?limit=&cursor=&unread=`, read as text so a bad value is a 400 naming the field.
fn parse_query(q: NotificationsParams) -> Result<(Page, bool), Problem> {
    // An empty value is the parameter left out, as on every list.
    let unread = match q.unread.as_deref() {
        None | Some("" | "false") => false,
        Some("true") => true,
        Some(_) => return Err(validate::invalid("unread", "must be true or false")),
    };
    Ok((Page::parse(q.limit.as_deref(), q.cursor.as_deref())?, unread))
}

/// A column that does not decode: counted as `decode` (statements are counted where they fail).
fn db_error(db: &Db, e: sqlx::Error) -> Problem {
    db.observe(e).into()
}

async fn list(
    State(db): State<Db>,
    Auth(claims): Auth<Claims>,
    Query(q): Query<NotificationsParams>,
) -> Result<Json<Paginated<Notification>>, Problem> {
    let (page, unread) = parse_query(q)?;
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
    let sql = db.sql(&sql).into_owned();
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(claims.sub.clone());
    if let Some(after) = &page.after {
        // Each placeholder once and in order (MySQL and SQLite take `?` positionally).
        query = query.bind(after.key).bind(after.key).bind(after.id.clone());
    }
    let mut conn = db.acquire().await?;
    let rows = query.fetch_all(db.on(&mut *conn)).await.map_err(|e| Problem::from(DataError::from(e)))?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let created: i64 = row.try_get("created_at").map_err(|e| db_error(&db, e))?;
        let read: Option<i64> = row.try_get("read_at").map_err(|e| db_error(&db, e))?;
        items.push((
            created,
            Notification {
                id: uuid_column(&row, "id").map_err(|e| db_error(&db, e))?,
                kind: row.try_get("kind").map_err(|e| db_error(&db, e))?,
                event_id: uuid_column(&row, "event_id").map_err(|e| db_error(&db, e))?,
                message: row.try_get("message").map_err(|e| db_error(&db, e))?,
                created_at: from_micros(created),
                read_at: read.map(from_micros),
            },
        ));
    }
    let page = Paginated::from_rows(items, page.limit, |(k, item)| Cursor::new(*k, item.id.to_string()));
    Ok(Json(page.map(|(_, item)| item)))
}

/// `{"unread": n}`: the caller's notifications not yet read.
async fn unread_count(State(db): State<Db>, Auth(claims): Auth<Claims>) -> Result<Json<UnreadCount>, Problem> {
    let count = db.sql("SELECT COUNT(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL");
    let mut conn = db.acquire().await?;
    let unread: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count.into_owned()))
        .bind(&claims.sub)
        .fetch_one(db.on(&mut *conn))
        .await
        .map_err(|e| Problem::from(DataError::from(e)))?;
    Ok(Json(UnreadCount { unread: u64::try_from(unread).unwrap_or_default() }))
}

/// Marks every unread notification of the caller read: `{"marked": n}` (0 when none was).
async fn mark_all_read(State(db): State<Db>, Auth(claims): Auth<Claims>) -> Result<Json<Marked>, Problem> {
    let now = cityevents_common::time::to_micros(cityevents_common::time::now());
    let update = db.sql("UPDATE notifications SET read_at = $1 WHERE user_id = $2 AND read_at IS NULL");
    let mut conn = db.acquire().await?;
    let done = sqlx::query(sqlx::AssertSqlSafe(update.into_owned()))
        .bind(now)
        .bind(&claims.sub)
        .execute(db.on(&mut *conn))
        .await
        .map_err(|e| Problem::from(DataError::from(e)))?;
    Ok(Json(Marked { marked: done.rows_affected() }))
}

async fn mark_read(
    State(db): State<Db>,
    Auth(claims): Auth<Claims>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, Problem> {
    let id = id.to_string();
    let now = cityevents_common::time::to_micros(cityevents_common::time::now());
    let mut conn = db.acquire().await?;
    let update = db.sql("UPDATE notifications SET read_at = $1 WHERE id = $2 AND user_id = $3 AND read_at IS NULL");
    let done = sqlx::query(sqlx::AssertSqlSafe(update.into_owned()))
        .bind(now)
        .bind(&id)
        .bind(&claims.sub)
        .execute(db.on(&mut *conn))
        .await
        .map_err(|e| db_error(&db, e))?;
    if done.rows_affected() > 0 {
        return Ok(StatusCode::NO_CONTENT);
    }
    // Nothing changed: already read (idempotent 204), or not the caller's (404, whoever owns it).
    let exists = db.sql("SELECT 1 FROM notifications WHERE id = $1 AND user_id = $2");
    let found = sqlx::query(sqlx::AssertSqlSafe(exists.into_owned()))
        .bind(&id)
        .bind(&claims.sub)
        .fetch_optional(db.on(&mut *conn))
        .await
        .map_err(|e| db_error(&db, e))?;
    match found {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(Problem::not_found().detail("no such notification")),
    }
}
