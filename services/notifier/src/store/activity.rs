//! What the notifier follows of each event (`event_info`, `event_participants`) and what it has
//! yet to tell about it (`pending_notices`, `organizer_digests`). What to write when is
//! `crate::activity`'s.

use cityevents_common::catalogue::EventSnapshot;
use cityevents_common::time::{now, to_micros};
use keel::data::{BoundQuery, DataError, Db};
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::Tx;
use crate::activity::Place;

/// An event as recorded: where and when its participants were last told it is, and the events
/// service's version that said so.
pub(crate) struct RecordedEvent {
    pub(crate) place: Place,
    pub(crate) version: i64,
}

/// The recorded event `event_id`, if it is known.
pub(crate) async fn recorded_event(tx: &mut Tx, db: &Db, event_id: Uuid) -> Result<Option<RecordedEvent>, DataError> {
    let row = sqlx::query(db.statement(
        "SELECT starts_at, ends_at, venue, time_zone, version, link_tag FROM event_info WHERE event_id = $1",
    ))
    .bind(event_id.to_string())
    .fetch_optional(db.on(&mut **tx))
    .await?;
    let Some(row) = row else { return Ok(None) };
    let place = Place {
        starts_at: row.try_get(0)?,
        ends_at: row.try_get(1)?,
        venue: row.try_get(2)?,
        time_zone: row.try_get(3)?,
        link_tag: row.try_get(5)?,
    };
    Ok(Some(RecordedEvent { place, version: row.try_get(4)? }))
}

/// The status `event_info` keeps: `published`, `canceled` or `draft` (anything else reads as
/// a draft: no reminders for it).
fn status_of(status: &str) -> &'static str {
    match status {
        "published" => "published",
        "canceled" => "canceled",
        _ => "draft",
    }
}

/// Records that `event_id` was canceled or went back to draft (`status`) at `version`, unless a
/// newer version is recorded; an event not recorded yet is left for its snapshot.
pub(crate) async fn set_event_status(
    tx: &mut Tx,
    db: &Db,
    event_id: Uuid,
    status: &str,
    version: i64,
) -> Result<(), DataError> {
    // Version 0 means unknown: applied, as the catalogue says (and the version kept).
    let (set, at_most) = if version == 0 { (None, i64::MAX) } else { (Some(version), version) };
    sqlx::query(db.statement(
        "UPDATE event_info SET status = $1, version = COALESCE($2, version) WHERE event_id = $3 AND version <= $4",
    ))
    .bind(status_of(status))
    .bind(set)
    .bind(event_id.to_string())
    .bind(at_most)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(())
}

/// A reminder due: who, for which event and start.
#[derive(Debug, Clone)]
pub(crate) struct DueReminder {
    pub(crate) event_id: String,
    pub(crate) user_id: String,
    pub(crate) title: String,
    pub(crate) starts_at: i64,
}

/// Up to `limit` reminders `lead` before their event that are due at `now` and not sent: people
/// holding a seat (since before the reminder's time: who joined later was just told) in a
/// published event starting after `now + after` and at most `now + lead` (a later, shorter
/// reminder covers what a longer one missed).
pub(crate) async fn due_reminders(
    db: &Db,
    now: i64,
    (lead, after): (i64, i64),
    limit: i64,
) -> Result<Vec<DueReminder>, DataError> {
    let mut conn = db.acquire().await?;
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(db.statement(
        "SELECT p.event_id, p.user_id, e.title, e.starts_at FROM event_participants p \
         JOIN event_info e ON e.event_id = p.event_id \
         WHERE e.status = 'published' AND e.starts_at > $1 AND e.starts_at <= $2 \
         AND p.active = 1 AND p.seated = 1 AND p.at <= e.starts_at - $3 \
         AND NOT EXISTS (SELECT 1 FROM reminders_sent r WHERE r.event_id = p.event_id \
         AND r.user_id = p.user_id AND r.lead_seconds = $4 AND r.starts_at = e.starts_at) \
         ORDER BY e.starts_at, p.event_id, p.user_id LIMIT $5",
    ))
    .bind(now + after)
    .bind(now + lead)
    .bind(lead)
    .bind(lead / 1_000_000)
    .bind(limit)
    .fetch_all(db.on(&mut *conn))
    .await?;
    Ok(rows
        .into_iter()
        .map(|(event_id, user_id, title, starts_at)| DueReminder { event_id, user_id, title, starts_at })
        .collect())
}

/// Records reminder `r` (`lead_seconds` before) as sent in `tx`; `false` when it already was
/// (another instance sent it first: that one's transaction holds or held the row).
pub(crate) async fn claim_reminder(
    tx: &mut Tx,
    db: &Db,
    r: &DueReminder,
    lead_seconds: i64,
    now: i64,
) -> Result<bool, DataError> {
    let text = match db.backend() {
        keel::data::Backend::MySql => {
            "INSERT IGNORE INTO reminders_sent (event_id, user_id, lead_seconds, starts_at, sent_at) \
             VALUES ($1, $2, $3, $4, $5)"
        }
        _ => {
            "INSERT INTO reminders_sent (event_id, user_id, lead_seconds, starts_at, sent_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id, user_id, lead_seconds, starts_at) DO NOTHING"
        }
    };
    let done = sqlx::query(db.statement(text))
        .bind(&r.event_id)
        .bind(&r.user_id)
        .bind(lead_seconds)
        .bind(r.starts_at)
        .bind(now)
        .execute(db.on(&mut **tx))
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Forgets reminders sent before `before` (their events are long over); how many.
pub(crate) async fn prune_reminders(db: &Db, before: i64) -> Result<u64, DataError> {
    let mut conn = db.acquire().await?;
    let done = sqlx::query(db.statement("DELETE FROM reminders_sent WHERE sent_at < $1"))
        .bind(before)
        .execute(db.on(&mut *conn))
        .await?;
    Ok(done.rows_affected())
}

/// What a mail about an event says of it: as last recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventFacts {
    pub(crate) title: String,
    pub(crate) place: Place,
    pub(crate) city: String,
    pub(crate) version: i64,
    /// `published`, `canceled` or `draft`.
    pub(crate) status: String,
}

/// The recorded facts of `event_id`, if it is known.
pub(crate) async fn event_facts(db: &Db, event_id: Uuid) -> Result<Option<EventFacts>, DataError> {
    let mut conn = db.acquire().await?;
    let row = sqlx::query(db.statement(
        "SELECT title, starts_at, ends_at, venue, time_zone, link_tag, city, version, status FROM event_info \
         WHERE event_id = $1",
    ))
    .bind(event_id.to_string())
    .fetch_optional(db.on(&mut *conn))
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(EventFacts {
        title: row.try_get(0)?,
        place: Place {
            starts_at: row.try_get(1)?,
            ends_at: row.try_get(2)?,
            venue: row.try_get(3)?,
            time_zone: row.try_get(4)?,
            link_tag: row.try_get(5)?,
        },
        city: row.try_get(6)?,
        version: row.try_get(7)?,
        status: row.try_get(8)?,
    }))
}

/// Whether `user_id` holds a seat in `event_id` as last recorded.
pub(crate) async fn holds_seat(db: &Db, event_id: Uuid, user_id: Uuid) -> Result<bool, DataError> {
    let mut conn = db.acquire().await?;
    let seated: Option<i64> = sqlx::query_scalar(
        db.statement("SELECT seated FROM event_participants WHERE event_id = $1 AND user_id = $2 AND active = 1"),
    )
    .bind(event_id.to_string())
    .bind(user_id.to_string())
    .fetch_optional(db.on(&mut *conn))
    .await?;
    Ok(seated == Some(1))
}

/// Records `s`, an event not known yet, at `version`.
pub(crate) async fn insert_event(tx: &mut Tx, db: &Db, s: &EventSnapshot, version: i64) -> Result<(), DataError> {
    let sql = db.sql(
        "INSERT INTO event_info (event_id, organizer_id, title, starts_at, ends_at, venue, city, time_zone, \
         link_tag, status, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    );
    let q = sqlx::query(AssertSqlSafe(sql.into_owned())).bind(s.event_id.to_string()).bind(s.organizer_id.to_string());
    with_details(q, s, version).execute(db.on(&mut **tx)).await?;
    Ok(())
}

/// Records `s` over what is recorded of its event, at `version`.
pub(crate) async fn update_event(tx: &mut Tx, db: &Db, s: &EventSnapshot, version: i64) -> Result<(), DataError> {
    let sql = db.sql(
        "UPDATE event_info SET title = $1, starts_at = $2, ends_at = $3, venue = $4, city = $5, time_zone = $6, \
         link_tag = $7, status = $8, version = $9 WHERE event_id = $10",
    );
    let q = with_details(sqlx::query(AssertSqlSafe(sql.into_owned())), s, version);
    q.bind(s.event_id.to_string()).execute(db.on(&mut **tx)).await?;
    Ok(())
}

/// `q` with `s`'s title, time and place and `version` bound: the run both writes of
/// `event_info` take in this order.
fn with_details(q: BoundQuery, s: &EventSnapshot, version: i64) -> BoundQuery {
    let place = Place::of(s);
    q.bind(&s.title)
        .bind(place.starts_at)
        .bind(place.ends_at)
        .bind(&place.venue)
        .bind(&s.city)
        .bind(&place.time_zone)
        .bind(place.link_tag)
        .bind(status_of(&s.status))
        .bind(version)
}

/// A participant of an event as of one join change.
pub(crate) struct Participant {
    pub(crate) event_id: Uuid,
    pub(crate) user_id: Uuid,
    /// Holds a seat or waits for one.
    pub(crate) active: bool,
    /// Holds a seat (reminders go to these).
    pub(crate) seated: bool,
    /// The change's time (microseconds).
    pub(crate) at: i64,
}

/// When `p`'s participation last changed, if it is known.
pub(crate) async fn participant_at(tx: &mut Tx, db: &Db, p: &Participant) -> Result<Option<i64>, DataError> {
    let at = sqlx::query_scalar(db.statement("SELECT at FROM event_participants WHERE event_id = $1 AND user_id = $2"))
        .bind(p.event_id.to_string())
        .bind(p.user_id.to_string())
        .fetch_optional(db.on(&mut **tx))
        .await?;
    Ok(at)
}

/// Records `p`, a participant not known yet.
pub(crate) async fn insert_participant(tx: &mut Tx, db: &Db, p: &Participant) -> Result<(), DataError> {
    let text = "INSERT INTO event_participants (active, seated, at, event_id, user_id) VALUES ($1, $2, $3, $4, $5)";
    write_participant(tx, db, text, p).await
}

/// Records `p` over what is recorded of that participant, unless what is recorded is newer (a
/// later change another instance applied since it was read).
pub(crate) async fn update_participant(tx: &mut Tx, db: &Db, p: &Participant) -> Result<(), DataError> {
    let text = "UPDATE event_participants SET active = $1, seated = $2, at = $3 \
                WHERE event_id = $4 AND user_id = $5 AND at <= $6";
    sqlx::query(db.statement(text))
        .bind(i64::from(p.active))
        .bind(i64::from(p.seated))
        .bind(p.at)
        .bind(p.event_id.to_string())
        .bind(p.user_id.to_string())
        .bind(p.at)
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}

/// Runs `text`, an insert or update binding `p` in one order.
async fn write_participant(tx: &mut Tx, db: &Db, text: &str, p: &Participant) -> Result<(), DataError> {
    sqlx::query(db.statement(text))
        .bind(i64::from(p.active))
        .bind(i64::from(p.seated))
        .bind(p.at)
        .bind(p.event_id.to_string())
        .bind(p.user_id.to_string())
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}

/// Up to `limit` active participants of `event_id` after `after`, in user id order.
pub(crate) async fn participants_after(
    tx: &mut Tx,
    db: &Db,
    event_id: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<String>, DataError> {
    let sql = db.sql(
        "SELECT user_id FROM event_participants WHERE event_id = $1 AND active = 1 AND user_id > $2 \
         ORDER BY user_id LIMIT $3",
    );
    let users = sqlx::query_scalar(AssertSqlSafe(sql.into_owned()))
        .bind(event_id)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(db.on(&mut **tx))
        .await?;
    Ok(users)
}

/// A notice queued for an event's participants.
pub(crate) struct PendingNotice {
    pub(crate) id: String,
    pub(crate) event_id: String,
    pub(crate) kind: String,
    pub(crate) message: String,
    /// The last participant written to (empty before the first).
    pub(crate) after_user: String,
    /// [`PARTICIPANTS`] or [`FOLLOWERS`].
    pub(crate) audience: String,
    /// The mail each recipient is also sent (JSON), if any.
    pub(crate) mail: Option<String>,
    /// When it was queued (micros): followers are those who followed by then.
    pub(crate) created_at: i64,
}

/// A notice for an event's active participants.
pub(crate) const PARTICIPANTS: &str = "participants";
/// A notice for the followers of an event's organizer.
pub(crate) const FOLLOWERS: &str = "followers";

/// Queues one `kind` notice saying `text` for `audience` of `event_id`, each recipient also
/// sent `mail` (JSON) when given.
pub(crate) async fn queue_notice_for(
    tx: &mut Tx,
    db: &Db,
    (event_id, audience): (Uuid, &str),
    kind: &str,
    text: &str,
    mail: Option<&str>,
) -> Result<(), DataError> {
    let sql = db.sql(
        "INSERT INTO pending_notices (id, event_id, kind, message, after_user, created_at, audience, mail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    );
    sqlx::query(AssertSqlSafe(sql.into_owned()))
        .bind(Uuid::now_v7().to_string())
        .bind(event_id.to_string())
        .bind(kind)
        .bind(text)
        .bind("")
        .bind(to_micros(now()))
        .bind(audience)
        .bind(mail)
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}

/// The 16 oldest queued notices.
pub(crate) async fn oldest_notices(db: &Db) -> Result<Vec<PendingNotice>, DataError> {
    let sql = db.sql(
        "SELECT id, event_id, kind, message, after_user, audience, mail, created_at FROM pending_notices \
         ORDER BY created_at, id LIMIT 16",
    );
    let rows = sqlx::query(AssertSqlSafe(sql.into_owned())).fetch_all(db.exec()).await?;
    let notice = |row: &sqlx::any::AnyRow| -> Result<PendingNotice, sqlx::Error> {
        Ok(PendingNotice {
            id: row.try_get(0)?,
            event_id: row.try_get(1)?,
            kind: row.try_get(2)?,
            message: row.try_get(3)?,
            after_user: row.try_get(4)?,
            audience: row.try_get(5)?,
            mail: row.try_get(6)?,
            created_at: row.try_get(7)?,
        })
    };
    Ok(rows.iter().map(notice).collect::<Result<_, _>>()?)
}

/// Locks `notice`'s row for the rest of `tx` with a write that changes nothing.
pub(crate) async fn lock_notice(tx: &mut Tx, db: &Db, notice: &PendingNotice) -> Result<(), DataError> {
    // Its count is not read: MySQL counts a row that did not change as not affected.
    sqlx::query(db.statement("UPDATE pending_notices SET after_user = after_user WHERE id = $1"))
        .bind(&notice.id)
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}

/// Moves `notice` on to `last`; `false` when someone moved it on since it was read.
pub(crate) async fn advance_notice(
    tx: &mut Tx,
    db: &Db,
    notice: &PendingNotice,
    last: &str,
) -> Result<bool, DataError> {
    unless_moved(
        tx,
        db,
        sqlx::query(db.statement("UPDATE pending_notices SET after_user = $1 WHERE id = $2 AND after_user = $3"))
            .bind(last),
        notice,
    )
    .await
}

/// Deletes `notice`, written to all; `false` when someone moved it on since it was read.
pub(crate) async fn finish_notice(tx: &mut Tx, db: &Db, notice: &PendingNotice) -> Result<bool, DataError> {
    unless_moved(
        tx,
        db,
        sqlx::query(db.statement("DELETE FROM pending_notices WHERE id = $1 AND after_user = $2")),
        notice,
    )
    .await
}

/// Runs `q` with `notice`'s id and the position read bound last (its condition); whether it
/// changed the notice.
async fn unless_moved(tx: &mut Tx, db: &Db, q: BoundQuery, notice: &PendingNotice) -> Result<bool, DataError> {
    let done = q.bind(&notice.id).bind(&notice.after_user).execute(db.on(&mut **tx)).await?;
    Ok(done.rows_affected() == 1)
}

/// One join change's count in its event's digest.
pub(crate) struct Tally<'a> {
    pub(crate) event_id: Uuid,
    /// `None` in messages from before the organizer was carried.
    pub(crate) organizer_id: Option<Uuid>,
    pub(crate) title: &'a str,
    pub(crate) joined: i64,
    pub(crate) left: i64,
}

/// Adds `t` to its event's digest (and its title, and its organizer if the digest had none);
/// `false` when the event has no digest yet.
pub(crate) async fn count_in_digest(tx: &mut Tx, db: &Db, t: &Tally<'_>) -> Result<bool, DataError> {
    let sql = db.sql(
        "UPDATE organizer_digests SET joined = joined + $1, left_count = left_count + $2, title = $3, \
         organizer_id = COALESCE(organizer_id, $4) WHERE event_id = $5",
    );
    let done = sqlx::query(AssertSqlSafe(sql.into_owned()))
        .bind(t.joined)
        .bind(t.left)
        .bind(t.title)
        .bind(t.organizer_id.map(|o| o.to_string()))
        .bind(t.event_id.to_string())
        .execute(db.on(&mut **tx))
        .await?;
    Ok(done.rows_affected() != 0)
}

/// Starts its event's digest with `t`, since now.
pub(crate) async fn start_digest(tx: &mut Tx, db: &Db, t: &Tally<'_>) -> Result<(), DataError> {
    let sql = db.sql(
        "INSERT INTO organizer_digests (event_id, organizer_id, title, joined, left_count, since) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    );
    sqlx::query(AssertSqlSafe(sql.into_owned()))
        .bind(t.event_id.to_string())
        .bind(t.organizer_id.map(|o| o.to_string()))
        .bind(t.title)
        .bind(t.joined)
        .bind(t.left)
        .bind(to_micros(now()))
        .execute(db.on(&mut **tx))
        .await?;
    Ok(())
}

/// A digest due to be sent, with its organizer (the digest's, else the recorded event's).
pub(crate) struct DueDigest {
    pub(crate) event_id: String,
    pub(crate) joined: i64,
    pub(crate) left: i64,
    pub(crate) organizer_id: Option<String>,
    pub(crate) title: String,
    /// When its first count came (microseconds).
    pub(crate) since: i64,
}

/// Up to `limit` digests begun at `due` or before, oldest first; of those whose organizer is
/// unknown, only the ones begun at `orphaned` or before.
pub(crate) async fn due_digests(db: &Db, due: i64, orphaned: i64, limit: i64) -> Result<Vec<DueDigest>, DataError> {
    let sql = db.sql(
        "SELECT d.event_id, d.joined, d.left_count, COALESCE(d.organizer_id, i.organizer_id), d.title, d.since \
         FROM organizer_digests d LEFT JOIN event_info i ON i.event_id = d.event_id \
         WHERE d.since <= $1 AND (d.organizer_id IS NOT NULL OR i.organizer_id IS NOT NULL OR d.since <= $2) \
         ORDER BY d.since LIMIT $3",
    );
    let rows =
        sqlx::query(AssertSqlSafe(sql.into_owned())).bind(due).bind(orphaned).bind(limit).fetch_all(db.exec()).await?;
    let digest = |row: &sqlx::any::AnyRow| -> Result<DueDigest, sqlx::Error> {
        Ok(DueDigest {
            event_id: row.try_get(0)?,
            joined: row.try_get(1)?,
            left: row.try_get(2)?,
            organizer_id: row.try_get(3)?,
            title: row.try_get(4)?,
            since: row.try_get(5)?,
        })
    };
    Ok(rows.iter().map(digest).collect::<Result<_, _>>()?)
}

/// Deletes `d` if its organizer is still unknown and it is still the digest read (same `since`);
/// whether it did.
pub(crate) async fn drop_orphan_digest(db: &Db, d: &DueDigest) -> Result<bool, DataError> {
    let done = sqlx::query(
        db.statement("DELETE FROM organizer_digests WHERE event_id = $1 AND organizer_id IS NULL AND since = $2"),
    )
    .bind(&d.event_id)
    .bind(d.since)
    .execute(db.exec())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes `d` in `tx` if its counts are still the ones read; `false` when it grew meanwhile
/// (or another instance took it).
pub(crate) async fn take_digest(tx: &mut Tx, db: &Db, d: &DueDigest) -> Result<bool, DataError> {
    let done = sqlx::query(
        db.statement("DELETE FROM organizer_digests WHERE event_id = $1 AND joined = $2 AND left_count = $3"),
    )
    .bind(&d.event_id)
    .bind(d.joined)
    .bind(d.left)
    .execute(db.on(&mut **tx))
    .await?;
    Ok(done.rows_affected() == 1)
}
