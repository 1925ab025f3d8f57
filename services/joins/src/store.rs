//! The joins service's tables and the statements on them, for all three SQL backends.
//!
//! Every change to an event's joins runs in a transaction that first locks the event's
//! `event_capacity` row ([`lock_event`]); the row's `confirmed` / `waitlisted` counters and its
//! `next_seq` (the FIFO ticket dispenser) are read under that lock, changed in memory and
//! written back with [`save_event`] before commit. Because every writer of an event takes the same
//! lock first, the counters cannot drift and two joins can never both take the last seat.
//!
//! Bulk changes (an event canceled, a capacity raised) touch at most `change_batch` joins per
//! transaction, so no transaction — and no lock on a busy event — grows with the number of
//! joins. The row is then left `pending`, and [`settle_pending`] finishes it in further
//! transactions of the same size.

use std::time::Duration;

use cityevents_common::catalogue::{JoinCanceled, JoinChange, JoinConfirmed, JoinKicked, JoinPromoted, JoinWaitlisted};
use cityevents_common::time::{from_micros, now, to_micros};
use keel::data::{Backend, Db};
use keel::events::outbox::{Outbox, OutboxError};
use keel::events::{Envelope, Event};
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use uuid::Uuid;

use crate::metrics::{JoinMetrics, Tally};

/// A transaction on the service database.
pub(crate) type Tx = Transaction<'static, Any>;

/// Join statuses.
pub(crate) mod status {
    /// Has a seat.
    pub(crate) const CONFIRMED: &str = "confirmed";
    /// In the FIFO queue for a seat.
    pub(crate) const WAITLISTED: &str = "waitlisted";
    /// Left, or the event was canceled.
    pub(crate) const CANCELED: &str = "canceled";
    /// Removed by the organizer (and maybe banned).
    pub(crate) const KICKED: &str = "kicked";
}

/// Event statuses (as the events service publishes them).
pub(crate) mod event_status {
    /// Open for joins (until it ends).
    pub(crate) const PUBLISHED: &str = "published";
    /// Closed for good.
    pub(crate) const CANCELED: &str = "canceled";
    /// Taken back to draft: closed until published again.
    pub(crate) const DRAFT: &str = "draft";
}

/// Joins changed per transaction when an event changes in bulk (the `change_batch` default).
pub(crate) const DEFAULT_CHANGE_BATCH: i64 = 500;

/// `text` with placeholders for `backend`, marked as built from constants.
pub(crate) fn sql(backend: Backend, text: &str) -> AssertSqlSafe<String> {
    backend.statement(text)
}

fn uuid_at(row: &AnyRow, idx: usize) -> Result<Uuid, sqlx::Error> {
    let text: String = row.try_get(idx)?;
    Uuid::parse_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// What the service knows about an event, and its live counters.
#[derive(Debug, Clone)]
pub(crate) struct EventRow {
    pub(crate) event_id: Uuid,
    pub(crate) organizer_id: Uuid,
    pub(crate) title: String,
    pub(crate) starts_at: i64,
    pub(crate) ends_at: i64,
    /// Seats; `0` = unlimited.
    pub(crate) capacity: i64,
    pub(crate) status: String,
    pub(crate) confirmed: i64,
    pub(crate) waitlisted: i64,
    /// The last FIFO ticket handed out.
    pub(crate) next_seq: i64,
    /// The events service's version of the last snapshot applied (`0` = unknown).
    pub(crate) source_version: i64,
    /// Why it was canceled, as given (passed on in each `join.canceled`).
    pub(crate) note: Option<String>,
}

const EVENT_COLUMNS: &str = "event_id, organizer_id, title, starts_at, ends_at, capacity, status, confirmed, waitlisted, next_seq, source_version, note";

impl EventRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            event_id: uuid_at(row, 0)?,
            organizer_id: uuid_at(row, 1)?,
            title: row.try_get(2)?,
            starts_at: row.try_get(3)?,
            ends_at: row.try_get(4)?,
            capacity: row.try_get(5)?,
            status: row.try_get(6)?,
            confirmed: row.try_get(7)?,
            waitlisted: row.try_get(8)?,
            next_seq: row.try_get(9)?,
            source_version: row.try_get(10)?,
            note: row.try_get(11)?,
        })
    }

    /// Whether joins still have to change to match the event: a canceled event with active
    /// joins, or free seats while someone waits. Such a row is saved `pending`.
    pub(crate) fn unsettled(&self) -> bool {
        if self.closing_reason().is_some() {
            return self.confirmed > 0 || self.waitlisted > 0;
        }
        self.status == event_status::PUBLISHED && self.waitlisted > 0 && self.has_free_seat()
    }

    /// Why every active join must end, when the event is canceled (`event_canceled`) or back to
    /// draft (`event_unpublished`).
    pub(crate) fn closing_reason(&self) -> Option<&'static str> {
        match self.status.as_str() {
            event_status::CANCELED => Some("event_canceled"),
            event_status::DRAFT => Some("event_unpublished"),
            _ => None,
        }
    }

    /// Whether a new join gets a seat now (a shrunk capacity keeps its confirmed joins but
    /// confirms no one new until enough leave).
    pub(crate) fn has_free_seat(&self) -> bool {
        self.capacity == 0 || self.confirmed < self.capacity
    }

    /// Whether joins are accepted at `now_us`: published and not over.
    pub(crate) fn is_open(&self, now_us: i64) -> bool {
        self.status == event_status::PUBLISHED && self.ends_at > now_us
    }

    /// Whether `user` may manage the event: its organizer, or a moderator or admin.
    pub(crate) fn may_manage(&self, user: Uuid, moderator: bool) -> bool {
        moderator || self.organizer_id == user
    }
}

/// Locks the event's row for the rest of `tx` and returns it; `None` when the event is unknown.
///
/// PostgreSQL and MySQL: `SELECT … FOR UPDATE`. SQLite has no row locks: the transaction starts
/// with a write to the row, which takes the database's write lock up front (a read first and a
/// write later could deadlock two writers upgrading their locks); `busy_timeout` queues the rest.
pub(crate) async fn lock_event(tx: &mut Tx, db: &Db, event_id: Uuid) -> Result<Option<EventRow>, sqlx::Error> {
    let backend = db.backend();
    let id = event_id.to_string();
    // SQLite has no row locks: a write takes the database's. The bump and the read are one
    // statement: every statement of a writing transaction is a turn the writer waits for.
    let text = if backend == Backend::Sqlite {
        format!("UPDATE event_capacity SET version = version + 1 WHERE event_id = $1 RETURNING {EVENT_COLUMNS}")
    } else {
        format!("SELECT {EVENT_COLUMNS} FROM event_capacity WHERE event_id = $1 FOR UPDATE")
    };
    let row = sqlx::query(sql(backend, &text)).bind(&id).fetch_optional(db.on(&mut **tx)).await?;
    row.as_ref().map(EventRow::from_row).transpose()
}

/// The event, read without a lock (for reads and authorization).
pub(crate) async fn load_event(db: &Db, event_id: Uuid) -> Result<Option<EventRow>, sqlx::Error> {
    let text = format!("SELECT {EVENT_COLUMNS} FROM event_capacity WHERE event_id = $1");
    let row = sqlx::query(sql(db.backend(), &text)).bind(event_id.to_string()).fetch_optional(db.exec()).await?;
    row.as_ref().map(EventRow::from_row).transpose()
}

/// The rows of the `ids` this service knows, in no particular order.
pub(crate) async fn counts_of(db: &Db, ids: &[Uuid]) -> Result<Vec<EventRow>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let text = format!("SELECT {EVENT_COLUMNS} FROM event_capacity WHERE event_id IN ({})", marks.join(", "));
    let mut query = sqlx::query(sql(db.backend(), &text));
    for id in ids {
        query = query.bind(id.to_string());
    }
    let rows = query.fetch_all(db.exec()).await?;
    rows.iter().map(EventRow::from_row).collect()
}

/// Inserts a new event row (its status, no joins).
pub(crate) async fn insert_event(tx: &mut Tx, db: &Db, ev: &EventRow, now_us: i64) -> Result<(), sqlx::Error> {
    let backend = db.backend();
    sqlx::query(sql(
        backend,
        "INSERT INTO event_capacity (event_id, organizer_id, title, starts_at, ends_at, capacity, status, confirmed, \
         waitlisted, next_seq, version, source_version, pending, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, 0, 0, $8, 0, $9, $10)",
    ))
    .bind(ev.event_id.to_string())
    .bind(ev.organizer_id.to_string())
    .bind(&ev.title)
    .bind(ev.starts_at)
    .bind(ev.ends_at)
    .bind(ev.capacity)
    .bind(&ev.status)
    .bind(ev.source_version)
    .bind(now_us)
    .bind(now_us)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(())
}

/// Writes back a locked event row: details, status, counters, the FIFO ticket, the source
/// version, and whether joins are left to settle ([`EventRow::unsettled`]).
pub(crate) async fn save_event(tx: &mut Tx, db: &Db, ev: &EventRow, now_us: i64) -> Result<(), sqlx::Error> {
    let backend = db.backend();
    sqlx::query(sql(
        backend,
        "UPDATE event_capacity SET title = $1, starts_at = $2, ends_at = $3, capacity = $4, status = $5, confirmed = $6, \
         waitlisted = $7, next_seq = $8, source_version = $9, pending = $10, updated_at = $11, note = $12 \
         WHERE event_id = $13",
    ))
    .bind(&ev.title)
    .bind(ev.starts_at)
    .bind(ev.ends_at)
    .bind(ev.capacity)
    .bind(&ev.status)
    .bind(ev.confirmed)
    .bind(ev.waitlisted)
    .bind(ev.next_seq)
    .bind(ev.source_version)
    .bind(i64::from(ev.unsettled()))
    .bind(now_us)
    .bind(ev.note.clone())
    .bind(ev.event_id.to_string())
    .execute(db.on(&mut **tx))
    .await?;
    Ok(())
}

/// One user's participation in one event.
#[derive(Debug, Clone)]
pub(crate) struct JoinRow {
    pub(crate) id: Uuid,
    pub(crate) event_id: Uuid,
    pub(crate) user_id: Uuid,
    pub(crate) status: String,
    pub(crate) reason: Option<String>,
    /// FIFO ticket: lower joined earlier.
    pub(crate) queue_seq: i64,
    pub(crate) queued_at: i64,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

const JOIN_COLUMNS: &str = "id, event_id, user_id, status, reason, queue_seq, queued_at, created_at, updated_at";

impl JoinRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Self::from_row_at(row, 0)
    }

    /// From [`JOIN_COLUMNS`] starting at column `at`.
    fn from_row_at(row: &AnyRow, at: usize) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: uuid_at(row, at)?,
            event_id: uuid_at(row, at + 1)?,
            user_id: uuid_at(row, at + 2)?,
            status: row.try_get(at + 3)?,
            reason: row.try_get(at + 4)?,
            queue_seq: row.try_get(at + 5)?,
            queued_at: row.try_get(at + 6)?,
            created_at: row.try_get(at + 7)?,
            updated_at: row.try_get(at + 8)?,
        })
    }

    /// Whether it holds a seat or a place in the queue.
    pub(crate) fn is_active(&self) -> bool {
        self.status == status::CONFIRMED || self.status == status::WAITLISTED
    }
}

/// The user's row for the event, whatever its status.
pub(crate) async fn find_join<'c, E>(
    exec: E,
    backend: Backend,
    event_id: Uuid,
    user_id: Uuid,
) -> Result<Option<JoinRow>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    let text = format!("SELECT {JOIN_COLUMNS} FROM joins WHERE event_id = $1 AND user_id = $2");
    let row = sqlx::query(sql(backend, &text))
        .bind(event_id.to_string())
        .bind(user_id.to_string())
        .fetch_optional(exec)
        .await?;
    row.as_ref().map(JoinRow::from_row).transpose()
}

/// What a join needs to know besides its event, read under the event's lock.
#[derive(Debug)]
pub(crate) struct JoinContext {
    /// The user is banned from the event now.
    pub(crate) banned: bool,
    /// The event's organizer's account is banned.
    pub(crate) organizer_banned: bool,
    /// The user's record of the idempotency key, and when it was made (live or expired).
    pub(crate) key: Option<(StoredResponse, i64)>,
    /// The user's row for the event, whatever its status.
    pub(crate) join: Option<JoinRow>,
}

/// [`JoinContext`] in one statement (each table by its key, so one row): each statement of a
/// writing transaction is one more turn that every join queued behind it waits for.
pub(crate) async fn join_context(
    tx: &mut Tx,
    db: &Db,
    ev: &EventRow,
    user_id: Uuid,
    key: &str,
    now_us: i64,
) -> Result<JoinContext, sqlx::Error> {
    // Written once: it runs in every join's critical section.
    static TEXT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let joined = JOIN_COLUMNS.split(", ").map(|c| format!("j.{c}")).collect::<Vec<_>>().join(", ");
        format!(
            "SELECT b.user_id, ob.banned, k.fingerprint, k.status_code, k.response, k.created_at, {joined} \
             FROM (SELECT 1 AS one) AS one \
             LEFT JOIN bans b ON b.event_id = $1 AND b.user_id = $2 AND (b.expires_at IS NULL OR b.expires_at > $3) \
             LEFT JOIN organizer_bans ob ON ob.user_id = $4 \
             LEFT JOIN idempotency_keys k ON k.user_id = $5 AND k.idem_key = $6 \
             LEFT JOIN joins j ON j.event_id = $7 AND j.user_id = $8"
        )
    });
    let (event, user) = (ev.event_id.to_string(), user_id.to_string());
    let row = sqlx::query(sql(db.backend(), &TEXT))
        .bind(&event)
        .bind(&user)
        .bind(now_us)
        .bind(ev.organizer_id.to_string())
        .bind(&user)
        .bind(key)
        .bind(&event)
        .bind(&user)
        .fetch_one(db.on(&mut **tx))
        .await?;
    let banned = row.try_get::<Option<String>, _>(0)?.is_some();
    let organizer_banned = row.try_get::<Option<i64>, _>(1)?.is_some_and(|b| b != 0);
    let key = match row.try_get::<Option<String>, _>(2)? {
        Some(fingerprint) => {
            Some((StoredResponse::new(fingerprint, row.try_get(3)?, row.try_get(4)?), row.try_get::<i64, _>(5)?))
        }
        None => None,
    };
    let join = match row.try_get::<Option<String>, _>(6)? {
        Some(_) => Some(JoinRow::from_row_at(&row, 6)?),
        None => None,
    };
    Ok(JoinContext { banned, organizer_banned, key, join })
}

/// Stores a new participation: inserts the row, or (rejoin after leaving or a kick) gives the
/// user's existing row a new id, status and FIFO ticket.
pub(crate) async fn put_join(tx: &mut Tx, db: &Db, j: &JoinRow, reuse: bool) -> Result<(), sqlx::Error> {
    let backend = db.backend();
    let text = if reuse {
        "UPDATE joins SET id = $1, status = $2, reason = NULL, queue_seq = $3, queued_at = $4, created_at = $5, \
         updated_at = $6 WHERE event_id = $7 AND user_id = $8"
    } else {
        "INSERT INTO joins (id, status, queue_seq, queued_at, created_at, updated_at, event_id, user_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    };
    sqlx::query(sql(backend, text))
        .bind(j.id.to_string())
        .bind(&j.status)
        .bind(j.queue_seq)
        .bind(j.queued_at)
        .bind(j.created_at)
        .bind(j.updated_at)
        .bind(j.event_id.to_string())
        .bind(j.user_id.to_string())
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}

/// The time of a participation's change at `now_us`, after the one before it (`prev`): strictly
/// increasing per participation whatever the clocks, so `JoinChange::at` orders one user's
/// changes in one event for whoever applies them (the notifier's feed is ordered by it).
pub(crate) fn changed_at(prev: i64, now_us: i64) -> i64 {
    now_us.max(prev.saturating_add(1))
}

/// SQL for [`changed_at`] of the `updated_at` column: `$n` and `$n+1` both bound to the time now
/// (placeholders are positional on MySQL and SQLite).
fn changed_at_sql(n: usize) -> String {
    format!("CASE WHEN updated_at >= ${n} THEN updated_at + 1 ELSE ${} END", n + 1)
}

/// Ends a participation (`canceled` or `kicked`), keeping the event's counters in step.
pub(crate) async fn end_join(
    tx: &mut Tx,
    db: &Db,
    ev: &mut EventRow,
    j: &mut JoinRow,
    new_status: &str,
    reason: Option<&str>,
    now_us: i64,
) -> Result<(), sqlx::Error> {
    let backend = db.backend();
    let at = changed_at(j.updated_at, now_us);
    sqlx::query(sql(backend, "UPDATE joins SET status = $1, reason = $2, updated_at = $3 WHERE id = $4"))
        .bind(new_status)
        .bind(reason)
        .bind(at)
        .bind(j.id.to_string())
        .execute(db.on(&mut **tx))
        .await?;
    match j.status.as_str() {
        status::CONFIRMED => ev.confirmed -= 1,
        status::WAITLISTED => ev.waitlisted -= 1,
        _ => {}
    }
    j.status = new_status.to_owned();
    j.reason = reason.map(str::to_owned);
    j.updated_at = at;
    Ok(())
}

/// Gives free seats to the oldest waitlisted joins, in FIFO order, until the event is full, the
/// waitlist empty or `limit` joins are promoted; returns the promoted joins. Runs under the
/// event lock (`ev` is locked).
pub(crate) async fn promote(
    tx: &mut Tx,
    db: &Db,
    ev: &mut EventRow,
    now_us: i64,
    limit: i64,
) -> Result<Vec<JoinRow>, sqlx::Error> {
    let backend = db.backend();
    let mut promoted = Vec::new();
    // The event lock already serializes writers; SKIP LOCKED keeps a picker from ever waiting
    // on a row some other statement holds.
    let lock = if backend == Backend::Sqlite { "" } else { " FOR UPDATE SKIP LOCKED" };
    let pick = format!(
        "SELECT {JOIN_COLUMNS} FROM joins WHERE event_id = $1 AND status = 'waitlisted' ORDER BY queue_seq LIMIT $2{lock}"
    );
    let mut left = limit;
    while left > 0 && ev.status == event_status::PUBLISHED && ev.waitlisted > 0 && ev.has_free_seat() {
        let want = if ev.capacity == 0 { left } else { (ev.capacity - ev.confirmed).min(left) };
        let rows = sqlx::query(sql(backend, &pick))
            .bind(ev.event_id.to_string())
            .bind(want)
            .fetch_all(db.on(&mut **tx))
            .await?;
        let mut batch = rows.iter().map(JoinRow::from_row).collect::<Result<Vec<_>, _>>()?;
        if batch.is_empty() {
            // The counter said someone waits but nobody does: trust the rows.
            ev.waitlisted = 0;
            break;
        }
        let ids = (0..batch.len()).map(|i| format!("${}", i + 4)).collect::<Vec<_>>().join(", ");
        let text = format!("UPDATE joins SET status = $1, updated_at = {} WHERE id IN ({ids})", changed_at_sql(2));
        let mut q = sqlx::query(sql(backend, &text)).bind(status::CONFIRMED).bind(now_us).bind(now_us);
        for j in &batch {
            q = q.bind(j.id.to_string());
        }
        q.execute(db.on(&mut **tx)).await?;
        let n = i64::try_from(batch.len()).unwrap_or(i64::MAX);
        ev.confirmed += n;
        ev.waitlisted -= n;
        left -= n;
        for j in &mut batch {
            j.status = status::CONFIRMED.to_owned();
            j.updated_at = changed_at(j.updated_at, now_us);
        }
        promoted.extend(batch);
    }
    Ok(promoted)
}

/// Cancels up to `limit` confirmed or waitlisted joins of a closed event with `reason`, oldest
/// first; returns them (canceled). Runs under the event lock (`ev` is locked).
pub(crate) async fn cancel_some(
    tx: &mut Tx,
    db: &Db,
    ev: &mut EventRow,
    (now_us, reason): (i64, &str),
    limit: i64,
) -> Result<Vec<JoinRow>, sqlx::Error> {
    let backend = db.backend();
    let text = format!(
        "SELECT {JOIN_COLUMNS} FROM joins WHERE event_id = $1 AND status IN ('confirmed', 'waitlisted') \
         ORDER BY queue_seq LIMIT $2"
    );
    let rows =
        sqlx::query(sql(backend, &text)).bind(ev.event_id.to_string()).bind(limit).fetch_all(db.on(&mut **tx)).await?;
    let mut joins = rows.iter().map(JoinRow::from_row).collect::<Result<Vec<_>, _>>()?;
    if joins.is_empty() {
        // The counters said someone is left but nobody is: trust the rows.
        ev.confirmed = 0;
        ev.waitlisted = 0;
        return Ok(joins);
    }
    let ids = (0..joins.len()).map(|i| format!("${}", i + 5)).collect::<Vec<_>>().join(", ");
    let text =
        format!("UPDATE joins SET status = $1, reason = $2, updated_at = {} WHERE id IN ({ids})", changed_at_sql(3));
    let mut q = sqlx::query(sql(backend, &text)).bind(status::CANCELED).bind(reason).bind(now_us).bind(now_us);
    for j in &joins {
        q = q.bind(j.id.to_string());
    }
    q.execute(db.on(&mut **tx)).await?;
    for j in &mut joins {
        if j.status == status::CONFIRMED {
            ev.confirmed -= 1;
        } else {
            ev.waitlisted -= 1;
        }
        j.status = status::CANCELED.to_owned();
        j.reason = Some(reason.to_owned());
        j.updated_at = changed_at(j.updated_at, now_us);
    }
    ev.confirmed = ev.confirmed.max(0);
    ev.waitlisted = ev.waitlisted.max(0);
    Ok(joins)
}

/// Moves the joins of a locked event towards what it needs by at most `limit` joins — cancels
/// them when the event is canceled or back to draft, promotes waitlisted ones into free seats (reason
/// `capacity_increased`) when it is published — then writes the row back (`pending` if more is
/// left) and enqueues the announcements through `outbox` on `topic`. Returns how many joins
/// changed, and how.
pub(crate) async fn settle(
    tx: &mut Tx,
    db: &Db,
    (outbox, topic): (&Outbox, &str),
    ev: &mut EventRow,
    now_us: i64,
    limit: i64,
) -> Result<(usize, Tally), OutboxError> {
    let items: Vec<_> = if let Some(reason) = ev.closing_reason() {
        let canceled = cancel_some(tx, db, ev, (now_us, reason), limit).await?;
        canceled.iter().map(|j| (Announce::Canceled, change(ev, j, Some(reason)))).collect()
    } else {
        let promoted = promote(tx, db, ev, now_us, limit).await?;
        promoted.iter().map(|j| (Announce::Promoted, change(ev, j, Some("capacity_increased")))).collect()
    };
    save_event(tx, db, ev, now_us).await?;
    let n = items.len();
    let tally = announce(tx, outbox, topic, items).await?;
    Ok((n, tally))
}

/// A worker finishing the events left `pending` by a bulk change, `batch` joins per
/// transaction, each transaction announcing its own changes through `outbox` on `topic`.
/// Runs every `interval` and then until nothing is pending.
pub(crate) fn settle_pending(
    db: Db,
    (outbox, topic): (Outbox, String),
    batch: i64,
    interval: Duration,
    metrics: JoinMetrics,
) -> keel::workers::Worker {
    keel::workers::Worker::periodic("joins-settle", interval, move |ctx| {
        let (db, outbox, topic, metrics) = (db.clone(), outbox.clone(), topic.clone(), metrics.clone());
        async move {
            if !db.is_available() {
                return Ok::<_, OutboxError>(());
            }
            let pick = db.backend().sql("SELECT event_id FROM event_capacity WHERE pending = 1 LIMIT 32").into_owned();
            loop {
                let ids: Vec<String> = sqlx::query_scalar(AssertSqlSafe(pick.clone())).fetch_all(db.exec()).await?;
                if ids.is_empty() {
                    return Ok(());
                }
                for id in ids {
                    if ctx.is_cancelled() {
                        return Ok(());
                    }
                    let id = Uuid::parse_str(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                    metrics.count(settle_one(&db, &outbox, &topic, id, batch).await?);
                    ctx.heartbeat();
                }
            }
        }
    })
}

/// Settles one batch of `event_id` in its own transaction; what changed once committed.
async fn settle_one(db: &Db, outbox: &Outbox, topic: &str, event_id: Uuid, batch: i64) -> Result<Tally, OutboxError> {
    let mut tx = db.begin_write().await?;
    let Some(mut ev) = lock_event(&mut tx, db, event_id).await? else {
        return Ok(Tally::default());
    };
    let (n, tally) = settle(&mut tx, db, (outbox, topic), &mut ev, to_micros(now()), batch).await?;
    db.commit(tx).await?;
    outbox.wake();
    tracing::debug!(%event_id, changed = n, left = ev.unsettled(), "settled pending joins");
    Ok(tally)
}

/// The 1-based waitlist position of the join with ticket `queue_seq`.
pub(crate) async fn waitlist_position<'c, E>(
    exec: E,
    backend: Backend,
    event_id: Uuid,
    queue_seq: i64,
) -> Result<i64, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    let ahead: i64 = sqlx::query_scalar(sql(
        backend,
        "SELECT COUNT(*) FROM joins WHERE event_id = $1 AND status = 'waitlisted' AND queue_seq < $2",
    ))
    .bind(event_id.to_string())
    .bind(queue_seq)
    .fetch_one(exec)
    .await?;
    Ok(ahead + 1)
}

/// Whether the user is banned from the event at `now_us` (an expired ban does not count).
pub(crate) async fn is_banned<'c, E>(
    exec: E,
    backend: Backend,
    event_id: Uuid,
    user_id: Uuid,
    now_us: i64,
) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    Ok(find_ban(exec, backend, event_id, user_id, now_us).await?.is_some())
}

/// One ban of an event.
#[derive(Debug, Clone)]
pub(crate) struct BanRow {
    pub(crate) user_id: Uuid,
    pub(crate) banned_by: Uuid,
    pub(crate) created_at: i64,
    pub(crate) reason: Option<String>,
    /// Until when (micros); `None`: for good.
    pub(crate) expires_at: Option<i64>,
}

const BAN_COLUMNS: &str = "user_id, banned_by, created_at, reason, expires_at";

impl BanRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            user_id: uuid_at(row, 0)?,
            banned_by: uuid_at(row, 1)?,
            created_at: row.try_get(2)?,
            reason: row.try_get(3)?,
            expires_at: row.try_get(4)?,
        })
    }
}

/// What a new ban says.
#[derive(Debug, Clone)]
pub(crate) struct NewBan {
    pub(crate) by: Uuid,
    pub(crate) reason: Option<String>,
    pub(crate) expires_at: Option<i64>,
}

/// Records a ban of `user_id`, replacing an expired one; returns it.
pub(crate) async fn ban(
    tx: &mut Tx,
    db: &Db,
    (event_id, user_id): (Uuid, Uuid),
    new: &NewBan,
    now_us: i64,
) -> Result<BanRow, sqlx::Error> {
    let backend = db.backend();
    sqlx::query(sql(backend, "DELETE FROM bans WHERE event_id = $1 AND user_id = $2"))
        .bind(event_id.to_string())
        .bind(user_id.to_string())
        .execute(db.on(&mut **tx))
        .await?;
    sqlx::query(sql(
        backend,
        "INSERT INTO bans (event_id, user_id, banned_by, created_at, reason, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
    ))
    .bind(event_id.to_string())
    .bind(user_id.to_string())
    .bind(new.by.to_string())
    .bind(now_us)
    .bind(new.reason.clone())
    .bind(new.expires_at)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(BanRow {
        user_id,
        banned_by: new.by,
        created_at: now_us,
        reason: new.reason.clone(),
        expires_at: new.expires_at,
    })
}

/// `user_id`'s ban from the event in force at `now_us`, if any.
pub(crate) async fn find_ban<'c, E>(
    exec: E,
    backend: Backend,
    event_id: Uuid,
    user_id: Uuid,
    now_us: i64,
) -> Result<Option<BanRow>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    let text = format!(
        "SELECT {BAN_COLUMNS} FROM bans WHERE event_id = $1 AND user_id = $2 AND (expires_at IS NULL OR expires_at > $3)"
    );
    let row = sqlx::query(sql(backend, &text))
        .bind(event_id.to_string())
        .bind(user_id.to_string())
        .bind(now_us)
        .fetch_optional(exec)
        .await?;
    row.as_ref().map(BanRow::from_row).transpose()
}

/// Lifts a ban in force at `now_us` (an expired one is removed too); `false` when none was in force.
pub(crate) async fn lift_ban(
    tx: &mut Tx,
    db: &Db,
    (event_id, user_id): (Uuid, Uuid),
    now_us: i64,
) -> Result<bool, sqlx::Error> {
    let backend = db.backend();
    let in_force = find_ban(db.on(&mut **tx), backend, event_id, user_id, now_us).await?.is_some();
    sqlx::query(sql(backend, "DELETE FROM bans WHERE event_id = $1 AND user_id = $2"))
        .bind(event_id.to_string())
        .bind(user_id.to_string())
        .execute(db.on(&mut **tx))
        .await?;
    Ok(in_force)
}

/// Up to `limit + 1` of the event's bans in force at `now_us`, oldest first, after the cursor
/// `(created_at, user_id)`.
pub(crate) async fn event_bans(
    db: &Db,
    event_id: Uuid,
    after: Option<&keel::http::page::Cursor>,
    (limit, now_us): (u32, i64),
) -> Result<Vec<BanRow>, sqlx::Error> {
    let keyset = if after.is_some() { " AND (created_at > $3 OR (created_at = $4 AND user_id > $5))" } else { "" };
    let lim = if after.is_some() { "$6" } else { "$3" };
    let text = format!(
        "SELECT {BAN_COLUMNS} FROM bans WHERE event_id = $1 AND (expires_at IS NULL OR expires_at > $2){keyset} \
         ORDER BY created_at, user_id LIMIT {lim}"
    );
    let mut q = sqlx::query(sql(db.backend(), &text)).bind(event_id.to_string()).bind(now_us);
    if let Some(c) = after {
        q = q.bind(c.key).bind(c.key).bind(c.id.clone());
    }
    let rows = q.bind(i64::from(limit) + 1).fetch_all(db.exec()).await?;
    rows.iter().map(BanRow::from_row).collect()
}

/// A stored answer to an idempotent request.
#[derive(Debug, Clone)]
pub(crate) struct StoredResponse {
    /// `METHOD path` of the request that made it.
    pub(crate) fingerprint: String,
    /// HTTP status.
    pub(crate) status: u16,
    /// JSON body.
    pub(crate) body: String,
}

impl StoredResponse {
    /// From its stored columns: fingerprint, status code, response.
    fn new(fingerprint: String, status: i64, body: String) -> Self {
        Self { fingerprint, status: u16::try_from(status).unwrap_or(500), body }
    }
}

/// The user's live record for `key` (made at or after `not_before`, in microseconds).
pub(crate) async fn find_idempotency<'c, E>(
    exec: E,
    backend: Backend,
    user_id: Uuid,
    key: &str,
    not_before: i64,
) -> Result<Option<StoredResponse>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    let row = sqlx::query(sql(
        backend,
        "SELECT fingerprint, status_code, response FROM idempotency_keys \
         WHERE user_id = $1 AND idem_key = $2 AND created_at >= $3",
    ))
    .bind(user_id.to_string())
    .bind(key)
    .bind(not_before)
    .fetch_optional(exec)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(StoredResponse::new(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
}

/// Stores the answer for `key`; `expired`: the user has an expired record of the key (read under
/// the lock the transaction holds), deleted first.
#[allow(clippy::too_many_arguments)] // the record's every part
pub(crate) async fn store_idempotency(
    tx: &mut Tx,
    db: &Db,
    user_id: Uuid,
    key: &str,
    stored: &StoredResponse,
    not_before: i64,
    now_us: i64,
    expired: bool,
) -> Result<(), sqlx::Error> {
    let backend = db.backend();
    if expired {
        sqlx::query(sql(
            backend,
            "DELETE FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2 AND created_at < $3",
        ))
        .bind(user_id.to_string())
        .bind(key)
        .bind(not_before)
        .execute(db.on(&mut **tx))
        .await?;
    }
    sqlx::query(sql(
        backend,
        "INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, status_code, response, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    ))
    .bind(user_id.to_string())
    .bind(key)
    .bind(&stored.fingerprint)
    .bind(i64::from(stored.status))
    .bind(&stored.body)
    .bind(now_us)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(())
}

/// Microseconds of `ttl` before now: records older than this are forgotten.
pub(crate) fn idempotency_cutoff(ttl: Duration) -> i64 {
    to_micros(now()).saturating_sub(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX))
}

/// A worker deleting idempotency records older than `ttl`, every 10 minutes.
pub(crate) fn idempotency_pruner(db: Db, ttl: Duration) -> keel::workers::Worker {
    keel::workers::Worker::periodic("idempotency-prune", Duration::from_secs(600), move |_ctx| {
        let db = db.clone();
        async move {
            // Not connected yet (or down): nothing to prune, and not this worker's failure.
            if !db.is_available() {
                return Ok::<_, sqlx::Error>(());
            }
            let done = sqlx::query(sql(db.backend(), "DELETE FROM idempotency_keys WHERE created_at < $1"))
                .bind(idempotency_cutoff(ttl))
                .execute(db.exec())
                .await?;
            if done.rows_affected() > 0 {
                tracing::debug!(rows = done.rows_affected(), "pruned expired idempotency keys");
            }
            Ok(())
        }
    })
}

/// Which `join.*` event a change is announced as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Announce {
    /// `join.confirmed`.
    Confirmed,
    /// `join.waitlisted`.
    Waitlisted,
    /// `join.promoted`.
    Promoted,
    /// `join.canceled`.
    Canceled,
    /// `join.kicked`.
    Kicked,
}

/// The `join.*` payload for a join of `ev` as it is now. Per the catalogue the status is
/// `confirmed`, `waitlisted` or `canceled` (a kicked join is `canceled` with reason `kicked` or
/// `banned`).
pub(crate) fn change(ev: &EventRow, j: &JoinRow, reason: Option<&str>) -> JoinChange {
    let status = if j.status == status::KICKED { status::CANCELED } else { j.status.as_str() };
    JoinChange {
        join_id: j.id,
        event_id: ev.event_id,
        user_id: j.user_id,
        event_title: ev.title.clone(),
        status: status.to_owned(),
        reason: reason.map(str::to_owned),
        note: if matches!(reason, Some("event_canceled" | "event_unpublished")) { ev.note.clone() } else { None },
        organizer_id: Some(ev.organizer_id),
        at: from_micros(j.updated_at),
    }
}

fn envelope<E: Event>(event: &E) -> Result<Envelope, OutboxError> {
    Ok(Envelope::new(cityevents_common::services::JOINS.name, event)?)
}

/// Enqueues the announcements in `tx` (published only if it commits), in order.
pub(crate) async fn announce(
    tx: &mut Tx,
    outbox: &Outbox,
    topic: &str,
    items: Vec<(Announce, JoinChange)>,
) -> Result<Tally, OutboxError> {
    let mut tally = Tally::default();
    if items.is_empty() {
        return Ok(tally);
    }
    for (kind, c) in &items {
        tally.add(*kind, c.reason.as_deref());
    }
    let envelopes = items
        .into_iter()
        .map(|(kind, c)| {
            let subject = c.join_id.to_string();
            let env = match kind {
                Announce::Confirmed => envelope(&JoinConfirmed(c)),
                Announce::Waitlisted => envelope(&JoinWaitlisted(c)),
                Announce::Promoted => envelope(&JoinPromoted(c)),
                Announce::Canceled => envelope(&JoinCanceled(c)),
                Announce::Kicked => envelope(&JoinKicked(c)),
            }?;
            Ok(env.with_subject(subject))
        })
        .collect::<Result<Vec<_>, OutboxError>>()?;
    outbox.enqueue_all(tx, topic, &envelopes).await?;
    Ok(tally)
}

/// One line of a user's joins list.
#[derive(Debug, Clone)]
pub(crate) struct UserJoin {
    pub(crate) join: JoinRow,
    pub(crate) title: String,
    pub(crate) starts_at: i64,
    pub(crate) ends_at: i64,
    pub(crate) event_status: String,
}

/// The user's joins, newest first (`created_at`, then id, descending), after `after`; fetches
/// `limit + 1` rows.
pub(crate) async fn user_joins(
    db: &Db,
    user_id: Uuid,
    after: Option<&keel::http::page::Cursor>,
    limit: u32,
) -> Result<Vec<UserJoin>, sqlx::Error> {
    let cols = "j.id, j.event_id, j.user_id, j.status, j.reason, j.queue_seq, j.queued_at, j.created_at, j.updated_at, \
                e.title, e.starts_at, e.ends_at, e.status";
    let keyset = if after.is_some() { " AND (j.created_at < $2 OR (j.created_at = $3 AND j.id < $4))" } else { "" };
    let lim = if after.is_some() { "$5" } else { "$2" };
    let text = format!(
        "SELECT {cols} FROM joins j JOIN event_capacity e ON e.event_id = j.event_id \
         WHERE j.user_id = $1{keyset} ORDER BY j.created_at DESC, j.id DESC LIMIT {lim}"
    );
    let mut q = sqlx::query(sql(db.backend(), &text)).bind(user_id.to_string());
    if let Some(c) = after {
        q = q.bind(c.key).bind(c.key).bind(c.id.clone());
    }
    let rows = q.bind(i64::from(limit) + 1).fetch_all(db.exec()).await?;
    rows.iter()
        .map(|r| {
            Ok(UserJoin {
                join: JoinRow::from_row(r)?,
                title: r.try_get(9)?,
                starts_at: r.try_get(10)?,
                ends_at: r.try_get(11)?,
                event_status: r.try_get(12)?,
            })
        })
        .collect()
}

/// The event's joins with `status`, in FIFO order (ticket, then id), after `after`; fetches
/// `limit + 1` rows.
pub(crate) async fn event_joins(
    db: &Db,
    event_id: Uuid,
    join_status: &str,
    after: Option<&keel::http::page::Cursor>,
    limit: u32,
) -> Result<Vec<JoinRow>, sqlx::Error> {
    let keyset = if after.is_some() { " AND (queue_seq > $3 OR (queue_seq = $4 AND id > $5))" } else { "" };
    let lim = if after.is_some() { "$6" } else { "$3" };
    let text = format!(
        "SELECT {JOIN_COLUMNS} FROM joins WHERE event_id = $1 AND status = $2{keyset} ORDER BY queue_seq, id LIMIT {lim}"
    );
    let mut q = sqlx::query(sql(db.backend(), &text)).bind(event_id.to_string()).bind(join_status);
    if let Some(c) = after {
        q = q.bind(c.key).bind(c.key).bind(c.id.clone());
    }
    let rows = q.bind(i64::from(limit) + 1).fetch_all(db.exec()).await?;
    rows.iter().map(JoinRow::from_row).collect()
}

/// How many of the event's joins are in each status.
pub(crate) async fn status_counts(db: &Db, event_id: Uuid) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(sql(db.backend(), "SELECT status, COUNT(*) FROM joins WHERE event_id = $1 GROUP BY status"))
        .bind(event_id.to_string())
        .fetch_all(db.exec())
        .await
}

#[cfg(test)]
mod tests {
    /// A participation's changes are dated strictly after each other even when the clock says
    /// the same time or goes back (another replica's clock).
    #[test]
    fn a_change_is_dated_after_the_one_before() {
        assert_eq!(super::changed_at(100, 200), 200);
        assert_eq!(super::changed_at(200, 200), 201);
        assert_eq!(super::changed_at(500, 200), 501);
        assert_eq!(super::changed_at(i64::MAX, 0), i64::MAX);
    }

    /// The statuses the document states are the ones the service stores and answers.
    #[test]
    fn the_document_lists_every_join_status() {
        use super::status::{CANCELED, CONFIRMED, KICKED, WAITLISTED};
        assert_eq!(cityevents_api::joins::JOIN_STATUSES, [CONFIRMED, WAITLISTED, CANCELED, KICKED]);
    }
}

/// Personal calendar feeds: one secret address per user, kept as its SHA-256.
pub(crate) mod feeds {
    use keel::data::Db;
    use sqlx::Row as _;
    use uuid::Uuid;

    use super::{event_status, sql, status};

    /// Most events a feed lists.
    pub(crate) const MAX_ITEMS: i64 = 100;

    /// When the user's feed address was made, if they have one.
    pub(crate) async fn created_at(db: &Db, user_id: Uuid) -> Result<Option<i64>, sqlx::Error> {
        let row = sqlx::query(sql(db.backend(), "SELECT created_at FROM calendar_feeds WHERE user_id = $1"))
            .bind(user_id.to_string())
            .fetch_optional(db.exec())
            .await?;
        row.map(|r| r.try_get(0)).transpose()
    }

    /// Makes `token_hash` the user's only feed address. A concurrent replacement by the same
    /// user is run again once (the loser of the race then replaces the winner's).
    pub(crate) async fn replace(db: &Db, user_id: Uuid, token_hash: &str, now: i64) -> Result<(), sqlx::Error> {
        let mut last = None;
        for _ in 0..2 {
            match try_replace(db, user_id, token_hash, now).await {
                Ok(()) => return Ok(()),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => last = Some(sqlx::Error::Database(e)),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(sqlx::Error::RowNotFound))
    }

    async fn try_replace(db: &Db, user_id: Uuid, token_hash: &str, now: i64) -> Result<(), sqlx::Error> {
        let mut tx = db.begin_write().await.map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        sqlx::query(sql(db.backend(), "DELETE FROM calendar_feeds WHERE user_id = $1"))
            .bind(user_id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql(
            db.backend(),
            "INSERT INTO calendar_feeds (user_id, token_hash, created_at) VALUES ($1, $2, $3)",
        ))
        .bind(user_id.to_string())
        .bind(token_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// Revokes the user's feed address; whether there was one.
    pub(crate) async fn revoke(db: &Db, user_id: Uuid) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(sql(db.backend(), "DELETE FROM calendar_feeds WHERE user_id = $1"))
            .bind(user_id.to_string())
            .execute(db.exec())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The owner of the feed whose secret hashes to `token_hash`.
    pub(crate) async fn owner(db: &Db, token_hash: &str) -> Result<Option<Uuid>, sqlx::Error> {
        let row = sqlx::query(sql(db.backend(), "SELECT user_id FROM calendar_feeds WHERE token_hash = $1"))
            .bind(token_hash)
            .fetch_optional(db.exec())
            .await?;
        row.map(|r| super::uuid_at(&r, 0)).transpose()
    }

    /// The user's events for a feed: those they hold a seat at or wait for, and those canceled
    /// while they did (so subscribers see the cancellation), ending after `since`; those not over
    /// at `now` first (soonest first), then the past ones, so the cap never drops an upcoming one
    /// for a past one.
    pub(crate) async fn items(
        db: &Db,
        user_id: Uuid,
        (since, now): (i64, i64),
    ) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
        let text = "SELECT j.event_id, j.status, e.status FROM joins j JOIN event_capacity e ON e.event_id = j.event_id \
                    WHERE j.user_id = $1 AND e.ends_at > $2 AND (j.status IN ($3, $4) OR (j.status = $5 AND j.reason = $6)) \
                    ORDER BY CASE WHEN e.ends_at > $7 THEN 0 ELSE 1 END, e.starts_at, j.event_id LIMIT $8";
        let rows = sqlx::query(sql(db.backend(), text))
            .bind(user_id.to_string())
            .bind(since)
            .bind(status::CONFIRMED)
            .bind(status::WAITLISTED)
            .bind(status::CANCELED)
            .bind("event_canceled")
            .bind(now)
            .bind(MAX_ITEMS)
            .fetch_all(db.exec())
            .await?;
        rows.iter()
            .map(|r| {
                let join_status: String = r.try_get(1)?;
                let event: String = r.try_get(2)?;
                let shown = if event == event_status::CANCELED { status::CANCELED.to_owned() } else { join_status };
                Ok((super::uuid_at(r, 0)?, shown))
            })
            .collect()
    }
}
