//! The `events` table: one portable SQL dialect (`$n` placeholders rewritten by `Db::sql`) for
//! PostgreSQL, MySQL/MariaDB and SQLite through sqlx's `Any` driver.
//!
//! A change locks its row first with a no-op `UPDATE` in its transaction (a row lock on
//! PostgreSQL and MySQL, the database write lock on SQLite), then reads, checks and writes it:
//! concurrent changes of one event queue up and each decides on the state the previous one left.
//! The write is also conditional on the version read, as a second guard.

use keel::data::{Backend, DataError, Db};
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use uuid::Uuid;

use crate::list::{After, CitiesAsk, MineList, PublicList, Search, Sort};
use crate::model::{self, Event, Fields, Status};

const COLUMNS: &str = "id, organizer_id, title, description, city, category, venue, time_zone, starts_at, ends_at, capacity, \
     status, published_at, status_reason, version, created_at, updated_at, online_url, cover";

/// `hidden`: 1 when the event's organizer is banned (migration 0007), as a column.
const HIDDEN: &str = "CASE WHEN EXISTS (SELECT 1 FROM organizer_bans b WHERE b.user_id = events.organizer_id \
     AND b.banned = 1) THEN 1 ELSE 0 END AS hidden";

/// ` AND the organizer is not banned` (their events are hidden from lists).
const NOT_HIDDEN: &str =
    " AND NOT EXISTS (SELECT 1 FROM organizer_bans b WHERE b.user_id = events.organizer_id AND b.banned = 1)";

/// A value bound to a dynamic statement, in placeholder order.
enum Bind {
    Int(i64),
    Text(String),
}

/// Builds a statement with numbered placeholders, keeping the binds in step.
#[derive(Default)]
struct Query {
    text: String,
    binds: Vec<Bind>,
}

impl Query {
    fn push(&mut self, sql: &str) -> &mut Self {
        self.text.push_str(sql);
        self
    }

    /// Appends a placeholder bound to `value`.
    fn bind(&mut self, value: Bind) -> &mut Self {
        self.binds.push(value);
        let n = self.binds.len();
        self.text.push_str(&format!("${n}"));
        self
    }

    /// `q` with this statement's values bound, in order.
    fn bind_all(binds: Vec<Bind>, q: keel::data::BoundQuery) -> keel::data::BoundQuery {
        binds.into_iter().fold(q, |q, b| match b {
            Bind::Int(v) => q.bind(v),
            Bind::Text(v) => q.bind(v),
        })
    }

    async fn fetch_all(self, db: &Db) -> Result<Vec<AnyRow>, DataError> {
        let q = Self::bind_all(self.binds, sqlx::query(db.statement(&self.text)));
        let mut conn = db.acquire().await?;
        q.fetch_all(db.on(&mut *conn)).await.map_err(DataError::from)
    }

    async fn execute(self, db: &Db) -> Result<(), DataError> {
        let q = Self::bind_all(self.binds, sqlx::query(db.statement(&self.text)));
        let mut conn = db.acquire().await?;
        q.execute(db.on(&mut *conn)).await?;
        Ok(())
    }

    /// [`Query::fetch_all`], the statement cut off by the database after `limit`.
    async fn fetch_all_within(self, db: &Db, limit: std::time::Duration) -> Result<Vec<AnyRow>, DataError> {
        let binds = self.binds;
        db.fetch_all_within(&self.text, limit, |q| Self::bind_all(binds, q)).await
    }
}

fn uuid_column(row: &AnyRow, column: &str) -> Result<Uuid, sqlx::Error> {
    let text: String = row.try_get(column)?;
    Uuid::parse_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn from_row(row: &AnyRow) -> Result<Event, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(Event {
        id: uuid_column(row, "id")?,
        organizer_id: uuid_column(row, "organizer_id")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        city: row.try_get("city")?,
        category: row.try_get("category")?,
        venue: row.try_get("venue")?,
        time_zone: row.try_get("time_zone")?,
        online_url: row.try_get("online_url")?,
        cover: row.try_get("cover")?,
        starts_at: row.try_get("starts_at")?,
        ends_at: row.try_get("ends_at")?,
        capacity: row.try_get("capacity")?,
        status: Status::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown event status {status:?}").into()))?,
        published_at: row.try_get("published_at")?,
        status_reason: row.try_get("status_reason")?,
        // Only single-event reads ask; lists leave hidden events out.
        hidden: if row.columns().iter().any(|c| sqlx::Column::name(c) == "hidden") {
            row.try_get::<i64, _>("hidden")? != 0
        } else {
            false
        },
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn from_rows(db: &Db, rows: &[AnyRow]) -> Result<Vec<Event>, DataError> {
    rows.iter().map(from_row).collect::<Result<_, _>>().map_err(|e| db.observe(e))
}

/// Locks the event's row in `tx` and reads it; `None` when there is no such event.
pub async fn get_for_update(db: &Db, tx: &mut Transaction<'static, Any>, id: Uuid) -> Result<Option<Event>, DataError> {
    let lock = db.sql("UPDATE events SET version = version WHERE id = $1");
    sqlx::query(AssertSqlSafe(lock.into_owned())).bind(id.to_string()).execute(db.on(&mut **tx)).await?;
    let text = format!("SELECT {COLUMNS}, {HIDDEN} FROM events WHERE id = $1");
    let row = sqlx::query(db.statement(&text)).bind(id.to_string()).fetch_optional(db.on(&mut **tx)).await?;
    row.as_ref().map(from_row).transpose().map_err(|e| db.observe(e))
}

/// Inserts a new draft in `tx`.
pub async fn insert(db: &Db, tx: &mut Transaction<'static, Any>, event: &Event) -> Result<(), DataError> {
    let sql = db.sql(
        "INSERT INTO events (id, organizer_id, title, description, city, city_key, category, category_key, \
         starts_at, ends_at, capacity, status, published_at, version, created_at, updated_at, venue, time_zone, \
         status_reason, online_url) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
    );
    sqlx::query(AssertSqlSafe(sql.into_owned()))
        .bind(event.id.to_string())
        .bind(event.organizer_id.to_string())
        .bind(&event.title)
        .bind(&event.description)
        .bind(&event.city)
        .bind(model::key(&event.city))
        .bind(&event.category)
        .bind(model::key(&event.category))
        .bind(event.starts_at)
        .bind(event.ends_at)
        .bind(event.capacity)
        .bind(event.status.as_str())
        .bind(event.published_at)
        .bind(event.version)
        .bind(event.created_at)
        .bind(event.updated_at)
        .bind(&event.venue)
        .bind(&event.time_zone)
        .bind(event.status_reason.clone())
        .bind(event.online_url.clone())
        .execute(db.on(&mut **tx))
        .await?;
    if db.backend() == Backend::Sqlite {
        // Indexed here, now that this transaction holds the write lock (migrations 0005, 0008).
        let key = "INSERT INTO events_fts_rows (id) VALUES ($1)";
        let index = "INSERT INTO events_fts (rowid, title, city, venue, description) \
                     SELECT r.rowid, e.title, e.city, e.venue, e.description \
                     FROM events e JOIN events_fts_rows r ON r.id = e.id WHERE e.id = $1";
        for statement in [key, index] {
            sqlx::query(db.statement(statement)).bind(event.id.to_string()).execute(db.on(&mut **tx)).await?;
        }
    }
    Ok(())
}

/// One event by id.
pub async fn get(db: &Db, id: Uuid) -> Result<Option<Event>, DataError> {
    let mut q = Query::default();
    q.push(&format!("SELECT {COLUMNS}, {HIDDEN} FROM events WHERE id = ")).bind(Bind::Text(id.to_string()));
    let rows = q.fetch_all(db).await?;
    Ok(from_rows(db, &rows)?.into_iter().next())
}

/// The events among `ids` that exist (any order).
pub async fn get_many(db: &Db, ids: &[Uuid]) -> Result<Vec<Event>, DataError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = Query::default();
    q.push(&format!("SELECT {COLUMNS}, {HIDDEN} FROM events WHERE id IN ("));
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.bind(Bind::Text(id.to_string()));
    }
    q.push(")");
    let rows = q.fetch_all(db).await?;
    from_rows(db, &rows)
}

/// Writes `fields`, the status and its reason over `current` if the row is still at
/// `current.version`; the new row, or `None` when someone else changed it first.
pub async fn update(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    current: &Event,
    fields: &Fields,
    (status, status_reason): (Status, Option<String>),
    now: i64,
) -> Result<Option<Event>, DataError> {
    let sql = db.sql(
        "UPDATE events SET title = $1, description = $2, city = $3, city_key = $4, category = $5, \
         category_key = $6, starts_at = $7, ends_at = $8, capacity = $9, status = $10, published_at = $11, \
         version = $12, updated_at = $13, venue = $14, time_zone = $15, status_reason = $16, online_url = $17 \
         WHERE id = $18 AND version = $19",
    );
    let updated_at = now.max(current.updated_at);
    let published_at = match (status, current.published_at) {
        (Status::Published, None) => Some(now),
        (Status::Draft, _) => None,
        (_, at) => at,
    };
    let done = sqlx::query(AssertSqlSafe(sql.into_owned()))
        .bind(&fields.title)
        .bind(&fields.description)
        .bind(&fields.city)
        .bind(model::key(&fields.city))
        .bind(&fields.category)
        .bind(model::key(&fields.category))
        .bind(fields.starts_at)
        .bind(fields.ends_at)
        .bind(fields.capacity)
        .bind(status.as_str())
        .bind(published_at)
        .bind(current.version + 1)
        .bind(updated_at)
        .bind(&fields.venue)
        .bind(&fields.time_zone)
        .bind(status_reason.clone())
        .bind(fields.online_url.clone())
        .bind(current.id.to_string())
        .bind(current.version)
        .execute(db.on(&mut **tx))
        .await?;
    if done.rows_affected() != 1 {
        return Ok(None);
    }
    Ok(Some(Event {
        title: fields.title.clone(),
        description: fields.description.clone(),
        city: fields.city.clone(),
        category: fields.category.clone(),
        venue: fields.venue.clone(),
        time_zone: fields.time_zone.clone(),
        online_url: fields.online_url.clone(),
        starts_at: fields.starts_at,
        ends_at: fields.ends_at,
        capacity: fields.capacity,
        status,
        published_at,
        status_reason,
        version: current.version + 1,
        updated_at,
        ..current.clone()
    }))
}

/// Appends `(col > key OR (col = key AND id > id))` (or `<` when descending): the rows after a
/// cursor in a keyset order.
fn keyset(q: &mut Query, column: &str, descending: bool, after: After) {
    let op = if descending { "<" } else { ">" };
    q.push(&format!(" AND ({column} {op} ")).bind(Bind::Int(after.key));
    q.push(&format!(" OR ({column} = ")).bind(Bind::Int(after.key));
    q.push(&format!(" AND id {op} ")).bind(Bind::Text(after.id.to_string()));
    q.push("))");
}

fn order_by(q: &mut Query, column: &str, descending: bool, limit: u32) {
    let dir = if descending { "DESC" } else { "ASC" };
    q.push(&format!(" ORDER BY {column} {dir}, id {dir} LIMIT ")).bind(Bind::Int(i64::from(limit) + 1));
}

/// What one search may cost: `app.search.timeout` and `app.search.max_ranked`.
#[derive(Debug, Clone, Copy)]
pub struct SearchBounds {
    /// The statement's time limit.
    pub timeout: std::time::Duration,
    /// Matches ranked at most (the latest-starting ones when more match).
    pub max_ranked: u32,
}

/// Up to `limit + 1` published events matching `list`, in its order, each with its sort key
/// (the cursor's): the column's value, or the match's score for [`Sort::Relevance`].
///
/// A search (`q`) runs within `bounds.timeout`. Ranked by relevance, its cost is one pass over
/// the matches that pass the filters, each scored once, and at most `bounds.max_ranked` of them
/// (those starting latest) are scored and ordered: the candidates are chosen in a derived
/// table that nothing outside can flatten, and scored outside it. On SQLite the full-text index
/// drives the join (`CROSS JOIN` fixes the order): each match finds its event by primary key.
pub async fn list_public(db: &Db, list: &PublicList, bounds: SearchBounds) -> Result<Vec<(Event, i64)>, DataError> {
    let backend = db.backend();
    let sort: Sort = list.sort;
    let mut q = Query::default();
    let relevance = match (&list.search, sort) {
        (Some(search), Sort::Relevance) => Some(search),
        _ => None,
    };
    match relevance {
        Some(search) => ranked_candidates(&mut q, backend, search),
        None => {
            q.push(&format!("SELECT {COLUMNS} FROM events WHERE status = "));
        }
    }
    q.bind(Bind::Text(Status::Published.as_str().to_owned()));
    q.push(NOT_HIDDEN);
    // SQLite's ranked candidates come from the full-text match itself.
    if let Some(search) = &list.search
        && !(relevance.is_some() && backend == Backend::Sqlite)
    {
        matches(&mut q, backend, search);
    }
    if let Some(city) = &list.city {
        q.push(" AND city_key = ").bind(Bind::Text(city.clone()));
    }
    if let Some(category) = &list.category {
        q.push(" AND category_key = ").bind(Bind::Text(category.clone()));
    }
    if let Some(organizer) = &list.organizer {
        q.push(" AND organizer_id = ").bind(Bind::Text(organizer.to_string()));
    }
    if let Some(from) = list.from {
        q.push(" AND starts_at >= ").bind(Bind::Int(from));
    }
    if let Some(to) = list.to {
        q.push(" AND starts_at < ").bind(Bind::Int(to));
    }
    if let Some(now) = list.ends_after {
        q.push(" AND ends_at > ").bind(Bind::Int(now));
    }
    if relevance.is_some() {
        let prefix = if backend == Backend::Sqlite { "events." } else { "" };
        q.push(&format!(" ORDER BY {prefix}starts_at DESC, {prefix}id DESC LIMIT "))
            .bind(Bind::Int(i64::from(bounds.max_ranked)));
        q.push(match backend {
            // Scored outside the candidates' table, so only they are.
            Backend::Postgres => ") AS candidates) AS hits WHERE 1 = 1",
            Backend::MySql | Backend::Sqlite => ") AS hits WHERE 1 = 1",
        });
    }
    if let Some(after) = list.after {
        keyset(&mut q, sort.column(), sort.descending(), after);
    }
    order_by(&mut q, sort.column(), sort.descending(), list.limit);
    let rows = match &list.search {
        Some(_) => q.fetch_all_within(db, bounds.timeout).await?,
        None => q.fetch_all(db).await?,
    };
    rows.iter()
        .map(|row| {
            let event = from_row(row)?;
            let key = match sort.key_of(&event) {
                Some(k) => k,
                None => row.try_get::<i64, _>("rank_key")?,
            };
            Ok((event, key))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(|e| db.observe(e))
}

/// Opens a relevance search up to the status filter's value: the outer select of `rank_key`,
/// and the candidates' select, which the caller continues with its filters and closes.
fn ranked_candidates(q: &mut Query, backend: Backend, search: &Search) {
    q.push(&format!("SELECT {COLUMNS}, rank_key FROM ("));
    match backend {
        Backend::Postgres => {
            // ts_rank reads each row's tsvector: computed only over the candidates.
            q.push(&format!("SELECT {COLUMNS}, CAST(ts_rank(search, to_tsquery('simple', "))
                .bind(Bind::Text(tsquery(search)))
                .push(&format!(")) * 1000000 AS BIGINT) AS rank_key FROM (SELECT {COLUMNS}, search FROM events"));
        }
        Backend::MySql => {
            // InnoDB scores each match while it searches: selected with the candidates.
            q.push(&format!("SELECT {COLUMNS}, CAST(MATCH (title, city, venue, description) AGAINST ("))
                .bind(Bind::Text(boolean_query(search)))
                .push(" IN BOOLEAN MODE) * 1000000 AS SIGNED) AS rank_key FROM events");
        }
        Backend::Sqlite => {
            // bm25 is lower for better matches; weights title 10, city 5, venue 5, description 1.
            let columns = COLUMNS.split(", ").map(|c| format!("events.{c} AS {c}")).collect::<Vec<_>>().join(", ");
            q.push(&format!(
                "SELECT {columns}, CAST(-bm25(events_fts, 10.0, 5.0, 5.0, 1.0) * 1000000 AS INTEGER) AS rank_key \
                 FROM events_fts CROSS JOIN events_fts_rows r ON r.rowid = events_fts.rowid \
                 CROSS JOIN events ON events.id = r.id WHERE events_fts MATCH "
            ))
            .bind(Bind::Text(fts5_query(search)))
            .push(" AND events.status = ");
            return;
        }
    }
    q.push(" WHERE status = ");
}

pub use cityevents_api::events::CityCount;

/// The cities of published events ending after `now` whose name starts with `ask.prefix`, most
/// events first, then by name.
pub async fn cities(db: &Db, ask: &CitiesAsk, now: i64) -> Result<Vec<CityCount>, DataError> {
    let mut q = Query::default();
    q.push("SELECT MIN(city) AS city, COUNT(*) AS n FROM events WHERE status = ")
        .bind(Bind::Text(Status::Published.as_str().to_owned()));
    q.push(" AND ends_at > ").bind(Bind::Int(now));
    q.push(NOT_HIDDEN);
    // A prefix matches without accents (`sao` finds São Paulo), which no portable SQL folds: the
    // cities with upcoming events, busiest first and at most CITY_SCAN of them, are folded here.
    let scan = if ask.prefix.is_some() { CITY_SCAN } else { i64::from(ask.limit) };
    q.push(" GROUP BY city_key ORDER BY n DESC, city_key ASC LIMIT ").bind(Bind::Int(scan));
    let rows = q.fetch_all(db).await?;
    let prefix = ask.prefix.as_deref().map(cityevents_common::validate::fold);
    let mut out = Vec::new();
    for row in &rows {
        let city: String = row.try_get("city").map_err(|e| db.observe(e))?;
        if prefix.as_ref().is_some_and(|p| !cityevents_common::validate::fold(&city).starts_with(p.as_str())) {
            continue;
        }
        out.push(CityCount { city, events: row.try_get("n").map_err(|e| db.observe(e))? });
        if out.len() >= ask.limit as usize {
            break;
        }
    }
    Ok(out)
}

/// Most cities a prefix is matched against (the busiest).
const CITY_SCAN: i64 = 2000;

/// Appends ` AND <the row matches every word of search>` in `backend`'s full-text syntax. The
/// words hold only letters and digits ([`Search::parse`]), so nothing in them is syntax.
fn matches(q: &mut Query, backend: Backend, search: &Search) {
    match backend {
        Backend::Postgres => {
            q.push(" AND search @@ to_tsquery('simple', ").bind(Bind::Text(tsquery(search))).push(")");
        }
        Backend::Sqlite => {
            q.push(
                " AND events.id IN (SELECT r.id FROM events_fts CROSS JOIN events_fts_rows r \
                 ON r.rowid = events_fts.rowid WHERE events_fts MATCH ",
            )
            .bind(Bind::Text(fts5_query(search)))
            .push(")");
        }
        Backend::MySql => {
            q.push(" AND MATCH (title, city, venue, description) AGAINST (")
                .bind(Bind::Text(boolean_query(search)))
                .push(" IN BOOLEAN MODE)");
        }
    }
}

/// PostgreSQL: `jazz:* & lyon:*`.
fn tsquery(search: &Search) -> String {
    search.terms.iter().map(|t| format!("{t}:*")).collect::<Vec<_>>().join(" & ")
}

/// SQLite FTS5: `"jazz"* AND "lyon"*`.
fn fts5_query(search: &Search) -> String {
    search.terms.iter().map(|t| format!("\"{t}\"*")).collect::<Vec<_>>().join(" AND ")
}

/// MySQL/MariaDB boolean mode: `+jazz* +lyon*`.
fn boolean_query(search: &Search) -> String {
    search.terms.iter().map(|t| format!("+{t}*")).collect::<Vec<_>>().join(" ")
}

/// Up to `limit + 1` of the organizer's events, of one status or all, newest first.
pub async fn list_mine(db: &Db, organizer: Uuid, list: &MineList) -> Result<Vec<Event>, DataError> {
    let mut q = Query::default();
    q.push(&format!("SELECT {COLUMNS} FROM events WHERE organizer_id = ")).bind(Bind::Text(organizer.to_string()));
    if let Some(status) = list.status {
        q.push(" AND status = ").bind(Bind::Text(status.as_str().to_owned()));
    }
    if let Some(after) = list.after {
        keyset(&mut q, "created_at", true, after);
    }
    order_by(&mut q, "created_at", true, list.limit);
    let rows = q.fetch_all(db).await?;
    from_rows(db, &rows)
}

/// `INSERT` that skips rows whose key exists, on each backend, up to the column list.
fn insert_new(backend: Backend, table_and_columns: &str) -> String {
    match backend {
        Backend::Postgres | Backend::MySql => format!("INSERT INTO {table_and_columns} VALUES "),
        Backend::Sqlite => format!("INSERT OR IGNORE INTO {table_and_columns} VALUES "),
    }
}

/// What ends [`insert_new`]'s statement.
fn insert_new_end(backend: Backend, key_column: &str) -> String {
    match backend {
        Backend::Postgres => " ON CONFLICT DO NOTHING".to_owned(),
        Backend::MySql => format!(" ON DUPLICATE KEY UPDATE {key_column} = {key_column}"),
        Backend::Sqlite => String::new(),
    }
}

/// Day `day`'s salt: `fresh` stored unless one is already, then whichever is stored.
pub async fn day_salt(db: &Db, day: i64, fresh: &str) -> Result<String, DataError> {
    let backend = db.backend();
    let mut q = Query::default();
    q.push(&insert_new(backend, "signal_salts (day, salt)")).push("(").bind(Bind::Int(day)).push(", ");
    q.bind(Bind::Text(fresh.to_owned())).push(")").push(&insert_new_end(backend, "day"));
    q.execute(db).await?;
    find_salt(db, day).await?.ok_or_else(|| db.observe(sqlx::Error::RowNotFound))
}

/// Day `day`'s salt, if it is still stored.
pub async fn find_salt(db: &Db, day: i64) -> Result<Option<String>, DataError> {
    let mut read = Query::default();
    read.push("SELECT salt FROM signal_salts WHERE day = ").bind(Bind::Int(day));
    let rows = read.fetch_all(db).await?;
    rows.first().map(|row| row.try_get::<String, _>("salt")).transpose().map_err(|e| db.observe(e))
}

/// Records `(event, day, kind, actor)` signals; one already recorded is skipped.
pub async fn record_signals(db: &Db, rows: &[(Uuid, i64, i64, String)]) -> Result<(), DataError> {
    if rows.is_empty() {
        return Ok(());
    }
    let backend = db.backend();
    let mut q = Query::default();
    q.push(&insert_new(backend, "event_signals (event_id, day, kind, actor)"));
    for (i, (event, day, kind, actor)) in rows.iter().enumerate() {
        q.push(if i == 0 { "(" } else { ", (" }).bind(Bind::Text(event.to_string())).push(", ");
        q.bind(Bind::Int(*day)).push(", ").bind(Bind::Int(*kind)).push(", ").bind(Bind::Text(actor.clone())).push(")");
    }
    q.push(&insert_new_end(backend, "day"));
    q.execute(db).await
}

/// Published events of `city_key` (any city when `None`) that end after `now`, by their
/// signals since day `since` (views 1, joins [`crate::trend::JOIN_WEIGHT`]), best first.
pub async fn trending(
    db: &Db,
    since: i64,
    now: i64,
    city_key: Option<&str>,
    limit: u32,
) -> Result<Vec<Event>, DataError> {
    use crate::trend::{JOIN, JOIN_WEIGHT};
    let mut q = Query::default();
    q.push(&format!(
        "SELECT {COLUMNS} FROM events JOIN (SELECT event_id, \
         SUM(CASE WHEN kind = {JOIN} THEN {JOIN_WEIGHT} ELSE 1 END) AS score \
         FROM event_signals WHERE day >= "
    ))
    .bind(Bind::Int(since));
    q.push(" GROUP BY event_id) AS s ON s.event_id = events.id WHERE events.status = ")
        .bind(Bind::Text(Status::Published.as_str().to_owned()));
    q.push(" AND events.ends_at > ").bind(Bind::Int(now)).push(NOT_HIDDEN);
    if let Some(city) = city_key {
        q.push(" AND events.city_key = ").bind(Bind::Text(city.to_owned()));
    }
    q.push(" ORDER BY s.score DESC, events.starts_at, events.id LIMIT ").bind(Bind::Int(i64::from(limit)));
    from_rows(db, &q.fetch_all(db).await?)
}

/// What one person's suggestions are drawn from (see [`crate::trend`]).
#[derive(Debug, Clone)]
pub struct Suggest {
    /// Organizers they follow.
    pub organizers: Vec<Uuid>,
    /// Category names of events they joined.
    pub categories: Vec<String>,
    /// Their home city's key.
    pub city: Option<String>,
    /// Events left out.
    pub exclude: Vec<Uuid>,
    /// Now (micros): events that ended are left out.
    pub now: i64,
    /// Most events answered.
    pub limit: u32,
}

impl Suggest {
    /// Whether nothing could match.
    pub fn is_empty(&self) -> bool {
        self.organizers.is_empty() && self.categories.is_empty() && self.city.is_none()
    }
}

/// `column IN ($a, $b, …)` over `values`.
fn in_list(q: &mut Query, column: &str, values: &[String]) {
    q.push(column).push(" IN (");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.bind(Bind::Text(v.clone()));
    }
    q.push(")");
}

/// Events for `ask`: followed organizers' (4), in the home city (2), in joined categories (1),
/// best first, then soonest.
pub async fn suggestions(db: &Db, ask: &Suggest) -> Result<Vec<Event>, DataError> {
    let organizers: Vec<String> = ask.organizers.iter().map(Uuid::to_string).collect();
    let exclude: Vec<String> = ask.exclude.iter().map(Uuid::to_string).collect();
    let mut q = Query::default();
    q.push(&format!("SELECT {COLUMNS} FROM (SELECT {COLUMNS}, ("));
    if organizers.is_empty() {
        q.push("0");
    } else {
        q.push("CASE WHEN ");
        in_list(&mut q, "organizer_id", &organizers);
        q.push(" THEN 4 ELSE 0 END");
    }
    match &ask.city {
        Some(city) => {
            q.push(" + CASE WHEN city_key = ").bind(Bind::Text(city.clone())).push(" THEN 2 ELSE 0 END");
        }
        None => {
            q.push(" + 0");
        }
    }
    if !ask.categories.is_empty() {
        q.push(" + CASE WHEN ");
        in_list(&mut q, "category_key", &ask.categories);
        q.push(" THEN 1 ELSE 0 END");
    }
    q.push(") AS score FROM events WHERE status = ").bind(Bind::Text(Status::Published.as_str().to_owned()));
    q.push(" AND ends_at > ").bind(Bind::Int(ask.now)).push(NOT_HIDDEN);
    if !exclude.is_empty() {
        q.push(" AND NOT ");
        in_list(&mut q, "id", &exclude);
    }
    // Only events that match something (each value bound again: a placeholder is used once).
    q.push(" AND (");
    let mut first = true;
    if !organizers.is_empty() {
        first = false;
        in_list(&mut q, "organizer_id", &organizers);
    }
    if let Some(city) = &ask.city {
        q.push(if std::mem::take(&mut first) { "" } else { " OR " });
        q.push("city_key = ").bind(Bind::Text(city.clone()));
    }
    if !ask.categories.is_empty() {
        q.push(if first { "" } else { " OR " });
        in_list(&mut q, "category_key", &ask.categories);
    }
    q.push(")) AS s ORDER BY score DESC, starts_at, id LIMIT ").bind(Bind::Int(i64::from(ask.limit)));
    from_rows(db, &q.fetch_all(db).await?)
}

/// Deletes signals before day `keep_from` and salts before day `today`; returns how many of
/// each.
pub async fn prune_signals(db: &Db, keep_from: i64, today: i64) -> Result<(u64, u64), DataError> {
    let mut conn = db.acquire().await?;
    let signals = sqlx::query(db.statement("DELETE FROM event_signals WHERE day < $1"))
        .bind(keep_from)
        .execute(db.on(&mut *conn))
        .await?
        .rows_affected();
    let salts = sqlx::query(db.statement("DELETE FROM signal_salts WHERE day < $1"))
        .bind(today)
        .execute(db.on(&mut *conn))
        .await?
        .rows_affected();
    Ok((signals, salts))
}

/// Sets or clears event `id`'s cover (a content hash); whether the event exists. A cover is
/// how the event looks, not what it is: `version` stays, and no event goes out.
pub async fn set_cover(db: &Db, id: Uuid, cover: Option<&str>, now: i64) -> Result<bool, DataError> {
    let sql = db.sql("UPDATE events SET cover = $1, updated_at = $2 WHERE id = $3");
    let done = sqlx::query(AssertSqlSafe(sql.into_owned()))
        .bind(cover.map(str::to_owned))
        .bind(now)
        .bind(id.to_string())
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The cover hash of each of `ids` that exists (`None`: it has none); events not found are
/// left out.
pub async fn covers(db: &Db, ids: &[Uuid]) -> Result<std::collections::HashMap<Uuid, Option<String>>, DataError> {
    let mut out = std::collections::HashMap::new();
    for chunk in ids.chunks(100) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let text = format!("SELECT id, cover FROM events WHERE id IN ({})", marks.join(", "));
        let mut q = sqlx::query(AssertSqlSafe(db.sql(&text).into_owned()));
        for id in chunk {
            q = q.bind(id.to_string());
        }
        for row in q.fetch_all(db.pool()).await? {
            out.insert(uuid_column(&row, "id")?, row.try_get::<Option<String>, _>("cover")?);
        }
    }
    Ok(out)
}
