//! The two consumers: `join.*` → a notification for the participant, `event.canceled` → one for
//! the organizer. Each writes in the inbox transaction, so a redelivery is acknowledged without
//! writing again; what can never be handled (bad payload, unknown type, unsupported version) is a
//! permanent failure and goes to the dead-letter queue.

use crate::metrics::NotificationMetrics;
use cityevents_common::catalogue::{
    EventCanceled, EventPublished, EventUnpublished, EventUpdated, JoinCanceled, JoinChange, JoinConfirmed, JoinKicked,
    JoinPromoted, JoinWaitlisted, MAIL_TOPIC, Mail, MailRequested, ReportResolved,
};
use cityevents_common::time::{now, to_micros};
use keel::data::{DataError, Db};
use keel::events::outbox::Outbox;
use keel::events::{Event, Failure, Handler, Message};
use uuid::Uuid;

/// Longest title quoted in a message (characters); the catalogue does not bound it.
const MAX_TITLE: usize = 200;
/// Longest reason quoted in a message (characters; the events service allows 500).
const MAX_NOTE: usize = 500;

/// `text` followed by the reason given, when there is one (`Jazz was canceled: storm warning`).
pub(crate) fn with_note(text: String, note: Option<&str>) -> String {
    match note.map(|n| n.trim().chars().filter(|c| !c.is_control()).take(MAX_NOTE).collect::<String>()) {
        Some(n) if !n.is_empty() => format!("{text}: {n}"),
        _ => text,
    }
}

/// What one notification says, by event type; `None` for a type that makes no notification.
///
/// ```
/// use cityevents_notifier::notification_text;
/// assert_eq!(notification_text("join.confirmed", "Jazz", None).as_deref(), Some("You're in: Jazz"));
/// assert_eq!(notification_text("join.canceled", "Jazz", Some("event_canceled")).as_deref(), Some("Jazz was canceled"));
/// ```
pub fn notification_text(kind: &str, title: &str, reason: Option<&str>) -> Option<String> {
    let title: String = title.trim().chars().take(MAX_TITLE).collect();
    Some(match kind {
        JoinConfirmed::TYPE => format!("You're in: {title}"),
        JoinWaitlisted::TYPE => format!("You're on the waitlist for {title}"),
        JoinPromoted::TYPE => format!("A seat opened up: you're in for {title}"),
        JoinCanceled::TYPE if reason == Some("event_canceled") => format!("{title} was canceled"),
        JoinCanceled::TYPE if reason == Some("event_unpublished") => format!("{title} was unpublished"),
        JoinCanceled::TYPE => format!("You left {title}"),
        JoinKicked::TYPE => format!("You were removed from {title}"),
        EventCanceled::TYPE => format!("Your event {title} was canceled"),
        EventUnpublished::TYPE => format!("Your event {title} was unpublished"),
        _ => return None,
    })
}

/// Inserts one notification with the inbox transaction of `msg`, dated `at` (when what it tells
/// of happened; the feed is ordered by it).
async fn notify(
    db: &Db,
    msg: &mut Message,
    (user_id, kind, event_id): (Uuid, &str, Uuid),
    text: String,
    at: time::OffsetDateTime,
) -> Result<(), Failure> {
    // Without the inbox transaction the write would not be exactly-once: refuse rather than guess.
    let tx = msg.tx().ok_or_else(|| Failure::permanent("the consumer has no inbox"))?;
    crate::store::notifications::insert(tx, db, (user_id, kind, event_id), text, to_micros(at))
        .await
        // A lost connection marks the database down and pauses the consumer (no attempt spent).
        .map_err(|e| Failure::transient(&e))
}

/// Handles `join.*` on the joins topic: one notification for the participant each, and, with
/// [`JoinsHandler::mail`], a mail request for the changes worth a mail (a seat taken, a canceled
/// event, a waitlist promotion, a removal), enqueued in the same inbox transaction.
#[derive(Debug, Clone)]
pub struct JoinsHandler {
    db: Db,
    mail: Option<Outbox>,
    metrics: NotificationMetrics,
}

impl JoinsHandler {
    /// A handler writing to `db`.
    pub fn new(db: Db) -> Self {
        Self { db, mail: None, metrics: NotificationMetrics::none() }
    }

    /// Counts what it writes in `metrics`.
    #[must_use]
    pub fn metrics(mut self, metrics: NotificationMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Also requests mail, through `outbox` (on the same database) to the mail topic.
    #[must_use]
    pub fn mail(mut self, outbox: Outbox) -> Self {
        self.mail = Some(outbox);
        self
    }
}

/// The mail a join change is worth, if any: a seat taken (with the event for the calendar), a
/// canceled event, a waitlist promotion, a removal; not a place on the waitlist or a leave.
fn mail_for(kind: &str, c: &JoinChange) -> Option<Mail> {
    let (event_id, title) = (c.event_id, c.event_title.clone());
    match kind {
        JoinConfirmed::TYPE => Some(Mail::Joined { event_id, title }),
        JoinCanceled::TYPE if matches!(c.reason.as_deref(), Some("event_canceled" | "event_unpublished")) => {
            Some(Mail::EventCanceled { event_id, title, reason: c.note.clone() })
        }
        JoinPromoted::TYPE => Some(Mail::WaitlistPromoted { event_id, title }),
        JoinKicked::TYPE => Some(Mail::Removed { event_id, title }),
        _ => None,
    }
}

fn change(msg: &Message) -> Result<JoinChange, Failure> {
    // `decode` checks type and version: a mismatch is permanent (it would fail every time).
    Ok(match msg.envelope().ty.as_str() {
        JoinConfirmed::TYPE => msg.decode::<JoinConfirmed>()?.0,
        JoinWaitlisted::TYPE => msg.decode::<JoinWaitlisted>()?.0,
        JoinPromoted::TYPE => msg.decode::<JoinPromoted>()?.0,
        JoinCanceled::TYPE => msg.decode::<JoinCanceled>()?.0,
        JoinKicked::TYPE => msg.decode::<JoinKicked>()?.0,
        other => return Err(Failure::permanent(format!("unknown event type on the joins topic: {other:.64}"))),
    })
}

impl Handler for JoinsHandler {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        let c = change(msg)?;
        let kind = msg.envelope().ty.clone();
        let text = notification_text(&kind, &c.event_title, c.reason.as_deref())
            .ok_or_else(|| Failure::permanent(format!("no notification for {kind}")))?;
        let text = with_note(text, c.note.as_deref());
        // Dated by the change, not by when it arrived: with several notifier instances one
        // participation's changes can be applied out of order, and the feed still shows them in
        // the order they happened.
        notify(&self.db, msg, (c.user_id, &kind, c.event_id), text, c.at).await?;
        let tx = msg.tx().ok_or_else(|| Failure::permanent("the consumer has no inbox"))?;
        crate::activity::track_join(tx, &self.db, &kind, &c).await.map_err(|e| Failure::transient(&e))?;
        if let (Some(outbox), Some(mail)) = (&self.mail, mail_for(&kind, &c)) {
            let request = MailRequested { user_id: c.user_id, to: None, name: None, mail };
            let tx = msg.tx().ok_or_else(|| Failure::permanent("the consumer has no inbox"))?;
            outbox.enqueue_event(tx, MAIL_TOPIC, &request).await.map_err(|e| match e {
                keel::events::outbox::OutboxError::Data(d) => Failure::transient(&d),
                keel::events::outbox::OutboxError::Sql(s) => Failure::transient(&DataError::from(s)),
                other => Failure::permanent(other),
            })?;
        }
        tracing::debug!(kind = %kind, event_id = %c.event_id, "notification written");
        self.metrics.in_app(&kind, 1);
        Ok(())
    }
}

/// Handles the events topic: `event.canceled` and `event.unpublished` tell the organizer (with
/// the reason given); `event.published` and `event.updated` are recorded, and an update that
/// moves the event or changes its venue tells its participants (see `activity.rs`).
#[derive(Debug, Clone)]
pub struct EventsHandler {
    db: Db,
    metrics: NotificationMetrics,
}

impl EventsHandler {
    /// A handler writing to `db`.
    pub fn new(db: Db) -> Self {
        Self { db, metrics: NotificationMetrics::none() }
    }

    /// Counts what it writes in `metrics`.
    #[must_use]
    pub fn metrics(mut self, metrics: NotificationMetrics) -> Self {
        self.metrics = metrics;
        self
    }
}

impl Handler for EventsHandler {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        let snapshot = match msg.envelope().ty.as_str() {
            EventPublished::TYPE => Some((msg.decode::<EventPublished>()?.0, false)),
            EventUpdated::TYPE => Some((msg.decode::<EventUpdated>()?.0, true)),
            _ => None,
        };
        if let Some((s, updated)) = snapshot {
            let db = &self.db;
            let tx = msg.tx().ok_or_else(|| Failure::permanent("the consumer has no inbox"))?;
            let failed = |e: DataError| Failure::transient(&e);
            let before = crate::activity::record_event(tx, db, &s).await.map_err(failed)?;
            if !updated {
                crate::activity::announce_to_followers(tx, db, &s).await.map_err(failed)?;
            }
            let change = before
                .filter(|_| updated)
                .and_then(|old| crate::activity::change_text(&s.title, &old, &crate::activity::Place::of(&s)));
            if let Some(text) = change {
                // Mailed too: what changed, and the event as it is now for the calendar.
                let mail = Mail::EventChanged { event_id: s.event_id, title: s.title.clone(), change: text.clone() };
                let mail = serde_json::to_string(&mail).map_err(Failure::permanent)?;
                let audience = (s.event_id, crate::store::activity::PARTICIPANTS);
                crate::store::activity::queue_notice_for(
                    tx,
                    db,
                    audience,
                    crate::activity::CHANGED,
                    &text,
                    Some(&mail),
                )
                .await
                .map_err(failed)?;
                tracing::info!(event_id = %s.event_id, "participants to be told of a change of time or place");
            }
            return Ok(());
        }
        let (kind, organizer, event, title, reason, version) = match msg.envelope().ty.as_str() {
            EventCanceled::TYPE => {
                let e = msg.decode::<EventCanceled>()?;
                (EventCanceled::TYPE, e.organizer_id, e.event_id, e.title, e.reason, e.version)
            }
            EventUnpublished::TYPE => {
                let e = msg.decode::<EventUnpublished>()?;
                let version = e.event.version;
                (EventUnpublished::TYPE, e.event.organizer_id, e.event.event_id, e.event.title, e.reason, version)
            }
            _ => return Ok(()),
        };
        // No reminders for it any more (see `reminders.rs`).
        let status = if kind == EventCanceled::TYPE { "canceled" } else { "draft" };
        let tx = msg.tx().ok_or_else(|| Failure::permanent("the consumer has no inbox"))?;
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        crate::store::activity::set_event_status(tx, &self.db, event, status, version)
            .await
            .map_err(|e| Failure::transient(&e))?;
        let text = notification_text(kind, &title, None)
            .ok_or_else(|| Failure::permanent(format!("no notification for {kind}")))?;
        let text = with_note(text, reason.as_deref());
        notify(&self.db, msg, (organizer, kind, event), text, now()).await?;
        self.metrics.in_app(kind, 1);
        Ok(())
    }
}

/// What a reporter reads once their report is resolved.
///
/// ```
/// use cityevents_notifier::report_text;
/// assert_eq!(
///     report_text("Jazz", "canceled"),
///     "Your report about Jazz was reviewed: the event is canceled. Thank you."
/// );
/// ```
pub fn report_text(subject: &str, outcome: &str) -> String {
    let subject: String = subject.trim().chars().take(MAX_TITLE).collect();
    let done = match outcome {
        "unpublished" => "the event is taken down",
        "canceled" => "the event is canceled",
        "banned" => "the account is banned",
        "picture_removed" => "the picture is taken down",
        _ => "the moderators found nothing against the rules",
    };
    format!("Your report about {subject} was reviewed: {done}. Thank you.")
}

/// Handles `report.resolved` on the moderation topic: the reporter is told the outcome (an
/// in-app notification; for an event, it links to it).
#[derive(Debug, Clone)]
pub struct ReportsHandler {
    db: Db,
    metrics: NotificationMetrics,
}

impl ReportsHandler {
    /// A handler writing to `db`, counting in `metrics`.
    pub fn new(db: Db, metrics: NotificationMetrics) -> Self {
        Self { db, metrics }
    }
}

impl Handler for ReportsHandler {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        // The topic's other messages (`moderation.recorded`) are the audit log's.
        if msg.envelope().ty != ReportResolved::TYPE {
            return Ok(());
        }
        let r = msg.decode::<ReportResolved>()?;
        let text = report_text(&r.subject, &r.outcome);
        // A report about an account links nowhere: the nil id says so (see the web's list).
        let about = r.event_id.unwrap_or(Uuid::nil());
        notify(&self.db, msg, (r.reporter_id, ReportResolved::TYPE, about), text, r.at).await?;
        self.metrics.in_app(ReportResolved::TYPE, 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_join_type_has_a_message() {
        for (kind, want) in [
            ("join.confirmed", "You're in: Jazz"),
            ("join.waitlisted", "You're on the waitlist for Jazz"),
            ("join.promoted", "A seat opened up: you're in for Jazz"),
            ("join.canceled", "You left Jazz"),
            ("join.kicked", "You were removed from Jazz"),
            ("event.canceled", "Your event Jazz was canceled"),
        ] {
            assert_eq!(notification_text(kind, "Jazz", None).as_deref(), Some(want), "{kind}");
        }
        assert_eq!(notification_text("event.published", "Jazz", None), None);
        let long = "x".repeat(1000);
        assert!(notification_text("join.kicked", &long, None).unwrap().chars().count() < 260);
    }
}
