//! What happens around an event that its people are told about, beyond each one's own joins:
//!
//! * **Changes of time or place.** The notifier keeps each event's time, zone and venue
//!   (`event_info`, from `event.published` and `event.updated`, newer versions only) and who holds
//!   a seat or waits in it (`event_participants`, from `join.*`). An `event.updated` that moves the
//!   start or the end or changes the venue gives each of them an `event.changed` notification
//!   saying what it is now, in the event's time zone. The consumer only queues the notice
//!   (`pending_notices`); the `event-notices` worker writes it to the participants a batch at a
//!   time, so an event of any size never holds one long transaction.
//! * **New events, for followers.** The first `event.published` of an event (marked in
//!   `event_info.followers_told`, so a republished event is not announced again) queues an
//!   `event.followed` notice for the followers of its organizer (`follows`): each gets it in the
//!   app and a `followed_published` mail request (sent unless they turned that mail off), written
//!   by the same `event-notices` worker a batch at a time.
//! * **Joins and leaves, for the organizer.** Each new join (`join.confirmed`, `join.waitlisted`)
//!   and each participant who leaves (`join.canceled` without a reason) is counted in the event's
//!   digest (`organizer_digests`); the `organizer-digests` worker turns a digest that is
//!   `app.digest_interval` old into one `event.activity` notification for the organizer
//!   ("Jazz night: 3 joined, 1 left") — one per event and interval however busy it is.
//!
//! Everything the consumers write is written in their inbox transaction; each worker batch in a
//! transaction of its own that also records how far it got.

use crate::metrics::NotificationMetrics;
use crate::store::Tx;
use crate::store::activity as store;
use crate::store::{follows, notifications};
use cityevents_common::catalogue::{MAIL_TOPIC, Mail, MailRequested};
use keel::events::outbox::Outbox;
use std::time::Duration;

use cityevents_common::catalogue::{EventSnapshot, JoinChange, JoinConfirmed, JoinWaitlisted};
use cityevents_common::time::{now, to_micros};
use cityevents_common::zone::Zone;
use keel::data::{DataError, Db};
use keel::events::Event;
use keel::workers::Worker;

/// The notification kind of a change of time or place.
pub(crate) const CHANGED: &str = "event.changed";
/// The notification kind of an organizer's digest of joins and leaves.
pub(crate) const ACTIVITY: &str = "event.activity";
/// The notification kind of a new event by an organizer the user follows.
pub(crate) const FOLLOWED: &str = "event.followed";
/// The notification kind of a reminder before an event the user holds a seat in.
pub(crate) const REMINDER: &str = "event.reminder";
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
    /// The join link's fingerprint; empty when not online.
    pub(crate) link_tag: String,
}

impl Place {
    /// Where and when `s` says the event is.
    pub(crate) fn of(s: &EventSnapshot) -> Self {
        Self {
            starts_at: to_micros(s.starts_at),
            ends_at: to_micros(s.ends_at),
            venue: s.venue.clone(),
            time_zone: s.time_zone.clone(),
            link_tag: s.link_tag.clone(),
        }
    }
}

/// `2030-03-01 19:00` in `zone`.
pub(crate) fn local(zone: &Zone, micros: i64) -> String {
    zone.local(micros).map(|t| t.get(..16).unwrap_or(&t).replacen('T', " ", 1)).unwrap_or_default()
}

/// What `event.changed` says when `old` became `new`; `None` when neither the time, the venue
/// nor the join link changed (a new title or capacity is not worth a notification).
pub(crate) fn change_text(event_title: &str, old: &Place, new: &Place) -> Option<String> {
    let moved = old.starts_at != new.starts_at || old.ends_at != new.ends_at || old.time_zone != new.time_zone;
    let relocated = old.venue.trim() != new.venue.trim();
    let relinked = old.link_tag != new.link_tag;
    if !moved && !relocated && !relinked {
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
    if relinked {
        parts.push(
            match (old.link_tag.is_empty(), new.link_tag.is_empty()) {
                (_, true) => "no longer online",
                (true, false) => "now online: the join link is on its page",
                (false, false) => "a new join link is on its page",
            }
            .to_owned(),
        );
    }
    Some(format!("{} changed: {}", title(event_title), parts.join(", ")))
}

/// Records `s` (when newer than what is recorded) and returns the place participants were told
/// before, when this is a change of a known event.
pub(crate) async fn record_event(tx: &mut Tx, db: &Db, s: &EventSnapshot) -> Result<Option<Place>, DataError> {
    let version = i64::try_from(s.version).unwrap_or(i64::MAX);
    let Some(seen) = store::recorded_event(tx, db, s.event_id).await? else {
        store::insert_event(tx, db, s, version).await?;
        return Ok(None);
    };
    // Version 0 means unknown: applied, as the catalogue says.
    if version != 0 && version <= seen.version {
        return Ok(None);
    }
    store::update_event(tx, db, s, version.max(seen.version)).await?;
    Ok(Some(seen.place))
}

/// What followers are told of a new event: `New from Olive: Jazz night, 2031-06-20 21:00
/// (Europe/Lisbon)` (without the name when the notifier does not know it).
pub(crate) fn followed_text(organizer: Option<&str>, event_title: &str, when: &str) -> String {
    match organizer.map(title).filter(|n| !n.is_empty()) {
        Some(name) => format!("New from {name}: {}, {when}", title(event_title)),
        None => format!("New event by an organizer you follow: {}, {when}", title(event_title)),
    }
}

/// On the first publication of `s`, queues its organizer's followers' notice and mail (see the
/// module's docs); nothing on a republication or a redelivery.
pub(crate) async fn announce_to_followers(tx: &mut Tx, db: &Db, s: &EventSnapshot) -> Result<(), DataError> {
    if !follows::mark_told(tx, db, s.event_id).await? {
        return Ok(());
    }
    let zone = Zone::named(&s.time_zone).unwrap_or_else(Zone::utc);
    let when = format!("{} ({})", local(&zone, to_micros(s.starts_at)), zone.name());
    let organizer = follows::name_of(tx, db, s.organizer_id).await?;
    let text = followed_text(organizer.as_deref(), &s.title, &when);
    let mail = Mail::FollowedPublished { event_id: s.event_id, title: title(&s.title), organizer, when };
    let mail = serde_json::to_string(&mail).map_err(|e| DataError::from(sqlx::Error::Protocol(e.to_string())))?;
    store::queue_notice_for(tx, db, (s.event_id, store::FOLLOWERS), FOLLOWED, &text, Some(&mail)).await
}

/// The `event-notices` worker: writes queued notices to their events' active participants,
/// [`NOTICE_BATCH`] users (in id order) per transaction, recording the last one written; a batch
/// that another instance wrote first is skipped.
pub(crate) fn notice_worker(db: Db, outbox: Outbox, metrics: NotificationMetrics) -> Worker {
    Worker::periodic("event-notices", NOTICES_EVERY, move |ctx| {
        let (db, outbox, metrics) = (db.clone(), outbox.clone(), metrics.clone());
        async move {
            if !db.is_available() {
                return Ok::<(), sqlx::Error>(());
            }
            loop {
                match write_notices(&db, &outbox, &metrics).await {
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
async fn write_notices(db: &Db, outbox: &Outbox, metrics: &NotificationMetrics) -> Result<usize, DataError> {
    let mut written = 0;
    for notice in store::oldest_notices(db).await? {
        let mut tx = db.begin_write().await?;
        // Write first: the row lock is held before the reads, so a writer committing meanwhile
        // cannot fail this transaction's later write (SQLite's write lock is taken by the BEGIN).
        store::lock_notice(&mut tx, db, &notice).await?;
        let users = if notice.audience == store::FOLLOWERS {
            let of = (notice.event_id.as_str(), notice.created_at);
            follows::followers_after(&mut tx, db, of, &notice.after_user, NOTICE_BATCH).await?
        } else {
            store::participants_after(&mut tx, db, &notice.event_id, &notice.after_user, NOTICE_BATCH).await?
        };
        // Claim the batch: only if nobody moved this notice on since it was read.
        let claimed = match users.last() {
            Some(last) if users.len() == NOTICE_BATCH => store::advance_notice(&mut tx, db, &notice, last).await?,
            // The last batch: done.
            _ => store::finish_notice(&mut tx, db, &notice).await?,
        };
        if !claimed {
            continue;
        }
        if !users.is_empty() {
            notifications::insert_many(&mut tx, db, &users, &notice.event_id, &notice.kind, &notice.message).await?;
        }
        // A mail that no longer reads (never expected: this service wrote it) is logged and
        // the in-app notices still go out.
        let mail = notice.mail.as_deref().and_then(|m| {
            serde_json::from_str::<Mail>(m)
                .inspect_err(
                    |e| tracing::warn!(notice = %notice.id, error = %e, "a queued notice's mail is unreadable"),
                )
                .ok()
        });
        if let Some(mail) = mail {
            for user in users.iter().filter_map(|u| uuid::Uuid::parse_str(u).ok()) {
                request_mail(&mut tx, outbox, user, mail.clone()).await?;
            }
        }
        db.commit(tx).await?;
        metrics.in_app(&notice.kind, users.len() as u64);
        written += 1;
    }
    Ok(written)
}

/// Enqueues a mail request for `user` in `tx` (sent to their verified address unless they
/// turned its kind off).
pub(crate) async fn request_mail(tx: &mut Tx, outbox: &Outbox, user: uuid::Uuid, mail: Mail) -> Result<(), DataError> {
    let request = MailRequested { user_id: user, to: None, name: None, mail };
    outbox.enqueue_event(tx, MAIL_TOPIC, &request).await.map_err(|e| match e {
        keel::events::outbox::OutboxError::Data(d) => d,
        other => DataError::from(sqlx::Error::Protocol(other.to_string())),
    })?;
    Ok(())
}

/// Follows a join change: who is active in the event, and the organizer's digest (a new join
/// counts as joined, a participant's own leave as left).
pub(crate) async fn track_join(tx: &mut Tx, db: &Db, kind: &str, c: &JoinChange) -> Result<(), DataError> {
    let p = store::Participant {
        event_id: c.event_id,
        user_id: c.user_id,
        active: c.status != "canceled",
        seated: c.status == "confirmed",
        at: to_micros(c.at),
    };
    // A change older than the one recorded (a late message) changes nothing.
    match store::participant_at(tx, db, &p).await? {
        None => store::insert_participant(tx, db, &p).await?,
        Some(seen) if seen <= p.at => store::update_participant(tx, db, &p).await?,
        Some(_) => {}
    }
    let (joined, left) = match kind {
        JoinConfirmed::TYPE | JoinWaitlisted::TYPE => (1_i64, 0_i64),
        "join.canceled" if c.reason.is_none() => (0, 1),
        _ => return Ok(()),
    };
    let tally =
        store::Tally { event_id: c.event_id, organizer_id: c.organizer_id, title: &c.event_title, joined, left };
    if !store::count_in_digest(tx, db, &tally).await? {
        // A concurrent first count makes this fail; the message is then handled again.
        store::start_digest(tx, db, &tally).await?;
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
    let due = to_micros(now()) - i64::try_from(interval.as_micros()).unwrap_or(i64::MAX);
    let orphaned = to_micros(now()) - i64::try_from(ORPHAN_DIGEST.as_micros()).unwrap_or(i64::MAX);
    let mut sent = 0;
    for digest in store::due_digests(db, due, orphaned, DIGESTS_PER_ROUND).await? {
        let Some(organizer) = &digest.organizer_id else {
            // Only day-old orphans are selected without an organizer; one that learned its
            // organizer since it was read is kept.
            if store::drop_orphan_digest(db, &digest).await? {
                tracing::warn!(event_id = %digest.event_id, "a digest's organizer stayed unknown for a day; dropped");
            }
            continue;
        };
        let mut tx = db.begin_write().await?;
        // Only the counts read: a digest that grew meanwhile (or another instance sent) is left.
        if !store::take_digest(&mut tx, db, &digest).await? {
            continue;
        }
        let text = digest_text(&digest.title, digest.joined, digest.left);
        notifications::insert_many(&mut tx, db, std::slice::from_ref(organizer), &digest.event_id, ACTIVITY, &text)
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
        Place {
            starts_at: micros(start),
            ends_at: micros(end),
            venue: venue.into(),
            time_zone: zone.into(),
            link_tag: String::new(),
        }
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
        let online = Place { link_tag: "a1b2".into(), ..old.clone() };
        assert_eq!(
            change_text("Jazz", &old, &online).as_deref(),
            Some("Jazz changed: now online: the join link is on its page")
        );
        let relinked = Place { link_tag: "c3d4".into(), ..old.clone() };
        assert_eq!(
            change_text("Jazz", &online, &relinked).as_deref(),
            Some("Jazz changed: a new join link is on its page")
        );
        assert_eq!(change_text("Jazz", &online, &old).as_deref(), Some("Jazz changed: no longer online"));
    }

    #[test]
    fn followers_are_told_who_published_what_and_when() {
        let when = "2031-06-20 21:00 (Europe/Lisbon)";
        assert_eq!(
            followed_text(Some("Olive"), "Jazz", when),
            "New from Olive: Jazz, 2031-06-20 21:00 (Europe/Lisbon)"
        );
        assert_eq!(
            followed_text(None, "Jazz", when),
            "New event by an organizer you follow: Jazz, 2031-06-20 21:00 (Europe/Lisbon)"
        );
        assert_eq!(followed_text(Some(" "), "Jazz", when), followed_text(None, "Jazz", when));
    }

    #[test]
    fn digests_count_in_words() {
        assert_eq!(digest_text("Jazz", 3, 1), "Jazz: 3 people joined, 1 participant left");
        assert_eq!(digest_text("Jazz", 1, 0), "Jazz: 1 person joined");
        assert_eq!(digest_text("Jazz", 0, 2), "Jazz: 2 participants left");
    }
}
