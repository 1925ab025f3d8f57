//! What happens around an event that its people are told about, beyond each one's own joins:
//!
//! * **Changes of time or place.** The notifier keeps each event's time, zone and venue
//!   (`event_info`, from `event.published` and `event.updated`, newer versions only) and who holds
//!   a seat or waits in it (`event_participants`, from `join.*`). An `event.updated` that moves the
//!   start or the end or changes the venue gives each of them an `event.changed` notification
//!   saying what it is now, in the event's time zone. The consumer only queues the notice
//!   (`pending_notices`); the `event-notices` worker writes it to the participants a batch at a
//!   time, so an event of any size never holds one long transaction.
//! * **Joins and leaves, for the organizer.** Each new join (`join.confirmed`, `join.waitlisted`)
//!   and each participant who leaves (`join.canceled` without a reason) is counted in the event's
//!   digest (`organizer_digests`); the `organizer-digests` worker turns a digest that is
//!   `app.digest_interval` old into one `event.activity` notification for the organizer
//!   ("Jazz night: 3 joined, 1 left") — one per event and interval however busy it is.
//!
//! Everything the consumers write is written in their inbox transaction; each worker batch in a
//! transaction of its own that also records how far it got.

use crate::metrics::NotificationMetrics;
use std::time::Duration;

use cityevents_common::catalogue::{EventSnapshot, JoinChange, JoinConfirmed, JoinWaitlisted};
use cityevents_common::time::{now, to_micros};
use cityevents_common::zone::Zone;
use keel::data::{Backend, DataError, Db};
use keel::events::Event;
use keel::workers::Worker;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use uuid::Uuid;

/// The notification kind of a change of time or place.
pub(crate) const CHANGED: &str = "event.changed";
/// The notification kind of an organizer's digest of joins and leaves.
pub(crate) const ACTIVITY: &str = "event.activity";
/// Participants told per `event-notices` transaction (written by one statement).
const NOTICE_BATCH: usize = 200;
/// How often the `event-notices` worker looks for queued notices.
const NOTICES_EVERY: Duration = Duration::from_millis(500);
/// A digest whose organizer is still unknown this long after it began is dropped.
const ORPHAN_DIGEST: Duration = Duration::from_secs(24 * 3600);
/// Digests sent per worker round (the rest wait for the next).
const DIGESTS_PER_ROUND: i64 = 100;
/// Longest title quoted (characters).
const MAX_TITLE: usize = 200;

type Tx = Transaction<'static, Any>;

fn statement(backend: Backend, text: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(backend.sql(text).into_owned())
}

fn title(t: &str) -> String {
    t.trim().chars().filter(|c| !c.is_control()).take(MAX_TITLE).collect()
}

/// What participants are told of, as last recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) starts_at: i64,
    pub(crate) ends_at: i64,
    pub(crate) venue: String,
    pub(crate) time_zone: String,
}

impl Place {
    /// Where and when `s` says the event is.
    pub(crate) fn of(s: &EventSnapshot) -> Self {
        Self {
            starts_at: to_micros(s.starts_at),
            ends_at: to_micros(s.ends_at),
            venue: s.venue.clone(),
            time_zone: s.time_zone.clone(),
        }
    }
}

/// `2030-03-01 19:00` in `zone`.
fn local(zone: &Zone, micros: i64) -> String {
    zone.local(micros).map(|t| t.get(..16).unwrap_or(&t).replacen('T', " ", 1)).unwrap_or_default()
}

/// What `event.changed` says when `old` became `new`; `None` when neither the time nor the venue
/// changed (a new title or capacity is not worth a notification).
pub(crate) fn change_text(event_title: &str, old: &Place, new: &Place) -> Option<String> {
    let moved = old.starts_at != new.starts_at || old.ends_at != new.ends_at || old.time_zone != new.time_zone;
    let relocated = old.venue.trim() != new.venue.trim();
    if !moved && !relocated {
        return None;
    }
    let zone = Zone::named(&new.time_zone).unwrap_or_else(Zone::utc);
    let mut parts = Vec::new();
    if moved {
        parts.push(format!("now {} to {} ({})", local(&zone, new.starts_at), local(&zone, new.ends_at), zone.name()));
    }
    if relocated {
        let venue = new.venue.trim();
        parts.push(if venue.is_empty() { "no venue given any more".to_owned() } else { format!("at {venue}") });
    }
    Some(format!("{} changed: {}", title(event_title), parts.join(", ")))
}

/// Records `s` (when newer than what is recorded) and returns the place participants were told
/// before, when this is a change of a known event.
pub(crate) async fn record_event(tx: &mut Tx, db: &Db, s: &EventSnapshot) -> Result<Option<Place>, sqlx::Error> {
    let backend = db.backend();
    let id = s.event_id.to_string();
    let version = i64::try_from(s.version).unwrap_or(i64::MAX);
    let row = sqlx::query(statement(
        backend,
        "SELECT starts_at, ends_at, venue, time_zone, version FROM event_info WHERE event_id = $1",
    ))
    .bind(&id)
    .fetch_optional(db.on(&mut **tx))
    .await?;
    let new = Place::of(s);
    match row {
        None => {
            sqlx::query(statement(
                backend,
                "INSERT INTO event_info (event_id, organizer_id, title, starts_at, ends_at, venue, time_zone, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            ))
            .bind(&id)
            .bind(s.organizer_id.to_string())
            .bind(&s.title)
            .bind(new.starts_at)
            .bind(new.ends_at)
            .bind(&new.venue)
            .bind(&new.time_zone)
            .bind(version)
            .execute(db.on(&mut **tx))
            .await?;
            Ok(None)
        }
        Some(row) => {
            let seen: i64 = row.try_get(4)?;
            // Version 0 means unknown: applied, as the catalogue says.
            if version != 0 && version <= seen {
                return Ok(None);
            }
            let old = Place {
                starts_at: row.try_get(0)?,
                ends_at: row.try_get(1)?,
                venue: row.try_get(2)?,
                time_zone: row.try_get(3)?,
            };
            sqlx::query(statement(
                backend,
                "UPDATE event_info SET title = $1, starts_at = $2, ends_at = $3, venue = $4, time_zone = $5, \
                 version = $6 WHERE event_id = $7",
            ))
            .bind(&s.title)
            .bind(new.starts_at)
            .bind(new.ends_at)
            .bind(&new.venue)
            .bind(&new.time_zone)
            .bind(version.max(seen))
            .bind(&id)
            .execute(db.on(&mut **tx))
            .await?;
            Ok(Some(old))
        }
    }
}

/// Queues one `kind` notification saying `text` for each active participant of `event_id` (the
/// `event-notices` worker writes them).
pub(crate) async fn queue_notice(
    tx: &mut Tx,
    db: &Db,
    event_id: Uuid,
    kind: &str,
    text: &str,
) -> Result<(), sqlx::Error> {
    let backend = db.backend();
    sqlx::query(statement(
        backend,
        "INSERT INTO pending_notices (id, event_id, kind, message, after_user, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    ))
    .bind(Uuid::now_v7().to_string())
    .bind(event_id.to_string())
    .bind(kind)
    .bind(text)
    .bind("")
    .bind(to_micros(now()))
    .execute(db.on(&mut **tx))
    .await?;
    Ok(())
}

/// The `event-notices` worker: writes queued notices to their events' active participants,
/// [`NOTICE_BATCH`] users (in id order) per transaction, recording the last one written; a batch
/// that another instance wrote first is skipped.
pub(crate) fn notice_worker(db: Db, metrics: NotificationMetrics) -> Worker {
    Worker::periodic("event-notices", NOTICES_EVERY, move |ctx| {
        let (db, metrics) = (db.clone(), metrics.clone());
        async move {
            if !db.is_available() {
                return Ok::<(), sqlx::Error>(());
            }
            loop {
                match write_notices(&db, &metrics).await {
                    Ok(0) => return Ok(()),
                    Ok(_) if ctx.is_cancelled() => return Ok(()),
                    Ok(_) => ctx.heartbeat(),
                    Err(e) => {
                        tracing::warn!(error = %keel::health::sanitize(&e.to_string()), "writing event notices failed");
                        return Ok(());
                    }
                }
            }
        }
    })
}

/// Writes one batch of each of up to 16 queued notices; returns how many batches it wrote.
async fn write_notices(db: &Db, metrics: &NotificationMetrics) -> Result<usize, DataError> {
    let backend = db.backend();
    let pending = sqlx::query(statement(
        backend,
        "SELECT id, event_id, kind, message, after_user FROM pending_notices ORDER BY created_at, id LIMIT 16",
    ))
    .fetch_all(db.exec())
    .await?;
    let mut written = 0;
    for row in pending {
        let (id, event, kind, message, after): (String, String, String, String, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
        let mut tx = db.begin_write().await?;
        // Write first: the row lock is held before the reads, so a writer committing meanwhile
        // cannot fail this transaction's later write (SQLite's write lock is taken by the BEGIN).
        // (Its count is not read: MySQL counts a row that did not change as not affected.)
        sqlx::query(statement(backend, "UPDATE pending_notices SET after_user = after_user WHERE id = $1"))
            .bind(&id)
            .execute(db.on(&mut *tx))
            .await?;
        let users: Vec<String> = sqlx::query_scalar(statement(
            backend,
            "SELECT user_id FROM event_participants WHERE event_id = $1 AND active = 1 AND user_id > $2 \
             ORDER BY user_id LIMIT $3",
        ))
        .bind(&event)
        .bind(&after)
        .bind(i64::try_from(NOTICE_BATCH).unwrap_or(i64::MAX))
        .fetch_all(db.on(&mut *tx))
        .await?;
        // Claim the batch: only if nobody moved this notice on since it was read.
        let claimed = match users.last() {
            Some(last) if users.len() == NOTICE_BATCH => sqlx::query(statement(
                backend,
                "UPDATE pending_notices SET after_user = $1 WHERE id = $2 AND after_user = $3",
            ))
            .bind(last)
            .bind(&id)
            .bind(&after)
            .execute(db.on(&mut *tx))
            .await?
            .rows_affected(),
            // The last batch: done.
            _ => sqlx::query(statement(backend, "DELETE FROM pending_notices WHERE id = $1 AND after_user = $2"))
                .bind(&id)
                .bind(&after)
                .execute(db.on(&mut *tx))
                .await?
                .rows_affected(),
        };
        if claimed != 1 {
            continue;
        }
        if !users.is_empty() {
            insert_notifications(&mut tx, db, &users, (&event, &kind, &message)).await?;
        }
        db.commit(tx).await?;
        metrics.in_app(&kind, users.len() as u64);
        written += 1;
    }
    Ok(written)
}

/// One statement writing a `kind` notification saying `message` about `event` to each of `users`.
async fn insert_notifications(
    tx: &mut Tx,
    db: &Db,
    users: &[String],
    (event, kind, message): (&str, &str, &str),
) -> Result<(), sqlx::Error> {
    let backend = db.backend();
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
    let mut q = sqlx::query(statement(backend, &text));
    for user in users {
        q = q.bind(Uuid::now_v7().to_string()).bind(user.clone()).bind(kind).bind(event).bind(message).bind(at);
    }
    q.execute(db.on(&mut **tx)).await?;
    Ok(())
}

/// Follows a join change: who is active in the event, and the organizer's digest (a new join
/// counts as joined, a participant's own leave as left).
pub(crate) async fn track_join(tx: &mut Tx, db: &Db, kind: &str, c: &JoinChange) -> Result<(), sqlx::Error> {
    let backend = db.backend();
    let (event, user) = (c.event_id.to_string(), c.user_id.to_string());
    let active = i64::from(c.status != "canceled");
    let at = to_micros(c.at);
    let seen: Option<i64> = sqlx::query_scalar(statement(
        backend,
        "SELECT at FROM event_participants WHERE event_id = $1 AND user_id = $2",
    ))
    .bind(&event)
    .bind(&user)
    .fetch_optional(db.on(&mut **tx))
    .await?;
    let text = match seen {
        None => Some("INSERT INTO event_participants (active, at, event_id, user_id) VALUES ($1, $2, $3, $4)"),
        Some(s) if s <= at => {
            Some("UPDATE event_participants SET active = $1, at = $2 WHERE event_id = $3 AND user_id = $4")
        }
        Some(_) => None,
    };
    if let Some(text) = text {
        sqlx::query(statement(backend, text))
            .bind(active)
            .bind(at)
            .bind(&event)
            .bind(&user)
            .execute(db.on(&mut **tx))
            .await?;
    }
    let (joined, left) = match kind {
        JoinConfirmed::TYPE | JoinWaitlisted::TYPE => (1_i64, 0_i64),
        "join.canceled" if c.reason.is_none() => (0, 1),
        _ => return Ok(()),
    };
    let organizer = c.organizer_id.map(|o| o.to_string());
    let bumped = sqlx::query(statement(
        backend,
        "UPDATE organizer_digests SET joined = joined + $1, left_count = left_count + $2, title = $3, \
         organizer_id = COALESCE(organizer_id, $4) WHERE event_id = $5",
    ))
    .bind(joined)
    .bind(left)
    .bind(&c.event_title)
    .bind(organizer.clone())
    .bind(&event)
    .execute(db.on(&mut **tx))
    .await?;
    if bumped.rows_affected() == 0 {
        // A concurrent first count makes this fail; the message is then handled again.
        sqlx::query(statement(
            backend,
            "INSERT INTO organizer_digests (event_id, organizer_id, title, joined, left_count, since) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        ))
        .bind(&event)
        .bind(organizer)
        .bind(&c.event_title)
        .bind(joined)
        .bind(left)
        .bind(to_micros(now()))
        .execute(db.on(&mut **tx))
        .await?;
    }
    Ok(())
}

/// What an organizer's digest says.
pub(crate) fn digest_text(event_title: &str, joined: i64, left: i64) -> String {
    let plural = |n: i64, one: &str, many: &str| if n == 1 { format!("1 {one}") } else { format!("{n} {many}") };
    let mut parts = Vec::new();
    if joined > 0 {
        parts.push(format!("{} joined", plural(joined, "person", "people")));
    }
    if left > 0 {
        parts.push(format!("{} left", plural(left, "participant", "participants")));
    }
    format!("{}: {}", title(event_title), parts.join(", "))
}

/// The `organizer-digests` worker: every `interval / 4` (250 ms to 1 min), each digest at least
/// `interval` old becomes one notification for its event's organizer. A digest whose organizer
/// is not known yet waits (a day at most, then it is dropped); one that grew while it was read
/// is sent next round.
pub(crate) fn digest_worker(db: Db, interval: Duration, metrics: NotificationMetrics) -> Worker {
    let every = (interval / 4).clamp(Duration::from_millis(250), Duration::from_secs(60));
    Worker::periodic("organizer-digests", every, move |_ctx| {
        let (db, metrics) = (db.clone(), metrics.clone());
        async move {
            if !db.is_available() {
                return Ok::<(), sqlx::Error>(());
            }
            if let Err(e) = send_digests(&db, interval, &metrics).await {
                tracing::warn!(error = %keel::health::sanitize(&e.to_string()), "sending organizer digests failed");
            }
            Ok(())
        }
    })
}

async fn send_digests(db: &Db, interval: Duration, metrics: &NotificationMetrics) -> Result<usize, DataError> {
    let backend = db.backend();
    let due = to_micros(now()) - i64::try_from(interval.as_micros()).unwrap_or(i64::MAX);
    let orphaned = to_micros(now()) - i64::try_from(ORPHAN_DIGEST.as_micros()).unwrap_or(i64::MAX);
    let rows = sqlx::query(statement(
        backend,
        "SELECT d.event_id, d.joined, d.left_count, COALESCE(d.organizer_id, i.organizer_id), d.title, d.since \
         FROM organizer_digests d LEFT JOIN event_info i ON i.event_id = d.event_id \
         WHERE d.since <= $1 AND (d.organizer_id IS NOT NULL OR i.organizer_id IS NOT NULL OR d.since <= $2) \
         ORDER BY d.since LIMIT $3",
    ))
    .bind(due)
    .bind(orphaned)
    .bind(DIGESTS_PER_ROUND)
    .fetch_all(db.exec())
    .await?;
    let mut sent = 0;
    for row in rows {
        let (event, joined, left): (String, i64, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let (organizer, event_title, since): (Option<String>, String, i64) =
            (row.try_get(3)?, row.try_get(4)?, row.try_get(5)?);
        let Some(organizer) = organizer else {
            // Only day-old orphans are selected without an organizer; one that learned its
            // organizer since it was read is kept.
            let dropped = sqlx::query(statement(
                backend,
                "DELETE FROM organizer_digests WHERE event_id = $1 AND organizer_id IS NULL AND since = $2",
            ))
            .bind(&event)
            .bind(since)
            .execute(db.exec())
            .await?;
            if dropped.rows_affected() == 1 {
                tracing::warn!(event_id = %event, "a digest's organizer stayed unknown for a day; dropped");
            }
            continue;
        };
        let mut tx = db.begin_write().await?;
        // Only the counts read: a digest that grew meanwhile (or another instance sent) is left.
        let taken = sqlx::query(statement(
            backend,
            "DELETE FROM organizer_digests WHERE event_id = $1 AND joined = $2 AND left_count = $3",
        ))
        .bind(&event)
        .bind(joined)
        .bind(left)
        .execute(db.on(&mut *tx))
        .await?;
        if taken.rows_affected() != 1 {
            continue;
        }
        sqlx::query(statement(
            backend,
            "INSERT INTO notifications (id, user_id, kind, event_id, message, created_at, read_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        ))
        .bind(Uuid::now_v7().to_string())
        .bind(&organizer)
        .bind(ACTIVITY)
        .bind(&event)
        .bind(digest_text(&event_title, joined, left))
        .bind(to_micros(now()))
        .execute(db.on(&mut *tx))
        .await?;
        db.commit(tx).await?;
        metrics.in_app(ACTIVITY, 1);
        sent += 1;
    }
    if sent > 0 {
        tracing::debug!(sent, "organizer digests sent");
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(start: &str, end: &str, venue: &str, zone: &str) -> Place {
        let micros = |t: &str| {
            to_micros(time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap_or(now()))
        };
        Place { starts_at: micros(start), ends_at: micros(end), venue: venue.into(), time_zone: zone.into() }
    }

    #[test]
    fn changes_of_time_or_venue_are_told_in_the_events_zone() {
        let old = place("2030-07-01T17:00:00Z", "2030-07-01T19:00:00Z", "Hot Clube", "Europe/Lisbon");
        let moved = place("2030-07-02T18:00:00Z", "2030-07-02T20:00:00Z", "Hot Clube", "Europe/Lisbon");
        assert_eq!(
            change_text("Jazz", &old, &moved).as_deref(),
            Some("Jazz changed: now 2030-07-02 19:00 to 2030-07-02 21:00 (Europe/Lisbon)")
        );
        let relocated = place("2030-07-01T17:00:00Z", "2030-07-01T19:00:00Z", "Casa da Música", "Europe/Lisbon");
        assert_eq!(change_text("Jazz", &old, &relocated).as_deref(), Some("Jazz changed: at Casa da Música"));
        assert_eq!(change_text("Jazz", &old, &old.clone()), None, "a new title or capacity tells no one");
    }

    #[test]
    fn digests_count_in_words() {
        assert_eq!(digest_text("Jazz", 3, 1), "Jazz: 3 people joined, 1 participant left");
        assert_eq!(digest_text("Jazz", 1, 0), "Jazz: 1 person joined");
        assert_eq!(digest_text("Jazz", 0, 2), "Jazz: 2 participants left");
    }
}
