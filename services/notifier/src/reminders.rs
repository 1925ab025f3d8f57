//! Reminders before an event, to each person holding a seat in it: by default 24 hours and 1
//! hour before it starts (`app.reminders.before`), in the app (`event.reminder`) and by mail
//! (`reminder`, unless the user turned that kind of mail off).
//!
//! The `reminders` worker looks every `app.reminders.check_every` for reminders that are due
//! (see [`store::due_reminders`]) from what the notifier already keeps: each event's start and
//! status (`event_info`) and who holds a seat (`event_participants`). Each reminder is recorded
//! in `reminders_sent` under (event, user, lead, the start it was for) in the transaction that
//! writes its notification and enqueues its mail, and only if that row was not there: with
//! several notifier instances, and across restarts, each reminder is sent exactly once. An event
//! that moves has a new start, so its reminders are due again for it; a canceled event (or one
//! back to draft) and a person who left or was removed get none. A lead whose time passed while
//! no instance ran is skipped when a shorter one is due (who needs "tomorrow" an hour before?);
//! one sent late says how soon the event really is.

use std::time::Duration;

use cityevents_common::catalogue::Mail;
use cityevents_common::time::{now, to_micros};
use keel::config::Validation;
use keel::data::{DataError, Db};
use keel::events::outbox::Outbox;
use keel::workers::Worker;
use serde::{Deserialize, Serialize};

use crate::activity::REMINDER;
use crate::metrics::NotificationMetrics;
use crate::store::activity::{self as store, DueReminder};
use crate::store::notifications;

/// Reminders handled per transaction.
const BATCH: i64 = 200;
/// How long sent reminders are remembered (their events are over by then).
const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// One lead time (`24h`), as the config writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Lead(#[serde(with = "keel::config::duration")] pub Duration);

/// `app.reminders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemindersConfig {
    /// How long before an event each reminder goes out. Default `[24h, 1h]`; at most 4, each
    /// between 5m and 14d, no two the same; empty: no reminders.
    pub before: Vec<Lead>,
    /// How often the worker looks for reminders that are due. Default `30s` (1s–10m): a
    /// reminder goes out at most this late.
    #[serde(with = "keel::config::duration")]
    pub check_every: Duration,
}

impl Default for RemindersConfig {
    fn default() -> Self {
        Self {
            before: vec![Lead(Duration::from_secs(24 * 3600)), Lead(Duration::from_secs(3600))],
            check_every: Duration::from_secs(30),
        }
    }
}

impl RemindersConfig {
    /// Checks every key (paths under `app`).
    pub(crate) fn validate(&self, v: &mut Validation<'_>) {
        for (key, message) in self.problems() {
            v.invalid(key, message);
        }
    }

    /// What is wrong with the settings: `(key, why)`.
    fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if self.before.len() > 4 {
            out.push(("reminders.before", "must list at most 4 lead times"));
        }
        let range = Duration::from_secs(300)..=Duration::from_secs(14 * 24 * 3600);
        if self.before.iter().any(|l| !range.contains(&l.0)) {
            out.push(("reminders.before", "each must be between 5m and 14d"));
        }
        let mut seen: Vec<Duration> = self.before.iter().map(|l| l.0).collect();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != self.before.len() {
            out.push(("reminders.before", "must not list a lead time twice"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.check_every) {
            out.push(("reminders.check_every", "must be between 1s and 10m"));
        }
        out
    }

    /// Each lead with the next shorter one (0 after the shortest), longest first, in
    /// microseconds.
    fn windows(&self) -> Vec<(i64, i64)> {
        let mut leads: Vec<i64> =
            self.before.iter().map(|l| i64::try_from(l.0.as_micros()).unwrap_or(i64::MAX)).collect();
        leads.sort_unstable_by(|a, b| b.cmp(a));
        leads.iter().enumerate().map(|(i, lead)| (*lead, leads.get(i + 1).copied().unwrap_or(0))).collect()
    }
}

/// How soon an event starts, `left` before it, as a person says it: days from a day and a
/// half, hours from an hour and a half, `in 1 hour` from 55 minutes, minutes below (each
/// rounded). Said from the time left when it is sent, not from the lead: a reminder sent late
/// (its event known only lately, or no instance running at its time) still says the truth.
fn soon(left: Duration) -> String {
    let minutes = (left.as_secs() + 30) / 60;
    let plural = |n: u64, unit: &str| format!("in {n} {unit}{}", if n == 1 { "" } else { "s" });
    match minutes {
        m if m >= 36 * 60 => plural((m + 12 * 60) / (24 * 60), "day"),
        m if m >= 20 * 60 => plural(1, "day"),
        m if m >= 90 => plural((m + 30) / 60, "hour"),
        m if m >= 55 => plural(1, "hour"),
        m => plural(m.max(1), "minute"),
    }
}

/// The notification a reminder writes, `left` before its event: `Soon: Fado night starts in 1
/// hour`.
pub(crate) fn reminder_text(title: &str, left: Duration) -> String {
    let title: String = title.trim().chars().filter(|c| !c.is_control()).take(200).collect();
    format!("Soon: {title} starts {}", soon(left))
}

/// The `reminders` worker (see the module's docs); also forgets reminders sent long ago.
pub(crate) fn worker(db: Db, outbox: Outbox, cfg: RemindersConfig, metrics: NotificationMetrics) -> Worker {
    Worker::periodic("reminders", cfg.check_every, move |ctx| {
        let (db, outbox, cfg, metrics) = (db.clone(), outbox.clone(), cfg.clone(), metrics.clone());
        async move {
            if !db.is_available() || cfg.before.is_empty() {
                return Ok::<(), sqlx::Error>(());
            }
            loop {
                match send_due(&db, &outbox, &cfg, &metrics).await {
                    Ok(0) => break,
                    Ok(_) if ctx.is_cancelled() => return Ok(()),
                    Ok(_) => ctx.heartbeat(),
                    Err(e) => {
                        tracing::warn!(error = %keel::health::sanitize(&e.to_string()), "sending reminders failed");
                        return Ok(());
                    }
                }
            }
            let before = to_micros(now()) - i64::try_from(RETENTION.as_micros()).unwrap_or(i64::MAX);
            if let Err(e) = store::prune_reminders(&db, before).await {
                tracing::debug!(error = %e, "forgetting old reminders failed; tried again next round");
            }
            Ok(())
        }
    })
}

/// Sends one batch of each lead's due reminders; how many it sent.
async fn send_due(
    db: &Db,
    outbox: &Outbox,
    cfg: &RemindersConfig,
    metrics: &NotificationMetrics,
) -> Result<usize, DataError> {
    let mut sent = 0;
    for (lead, after) in cfg.windows() {
        let at = to_micros(now());
        let due = store::due_reminders(db, at, (lead, after), BATCH).await?;
        if due.is_empty() {
            continue;
        }
        let mut tx = db.begin_write().await?;
        let mut written = Vec::with_capacity(due.len());
        for r in &due {
            // Another instance's transaction holding or having written the row: it sends it.
            if store::claim_reminder(&mut tx, db, r, lead / 1_000_000, at).await? {
                written.push(r);
            }
        }
        for r in &written {
            let left = Duration::from_micros(u64::try_from(r.starts_at - at).unwrap_or(0));
            remind(&mut tx, db, outbox, r, left).await?;
        }
        db.commit(tx).await?;
        metrics.in_app(REMINDER, written.len() as u64);
        tracing::debug!(lead_seconds = lead / 1_000_000, sent = written.len(), due = due.len(), "reminders sent");
        sent += written.len();
    }
    Ok(sent)
}

/// Writes reminder `r`'s notification and enqueues its mail in `tx`, `left` before its event.
async fn remind(
    tx: &mut crate::store::Tx,
    db: &Db,
    outbox: &Outbox,
    r: &DueReminder,
    left: Duration,
) -> Result<(), DataError> {
    let text = reminder_text(&r.title, left);
    notifications::insert_many(tx, db, std::slice::from_ref(&r.user_id), &r.event_id, REMINDER, &text).await?;
    let (Ok(user_id), Ok(event_id)) = (uuid::Uuid::parse_str(&r.user_id), uuid::Uuid::parse_str(&r.event_id)) else {
        return Ok(());
    };
    let mail = Mail::Reminder { event_id, title: r.title.clone(), soon: soon(left) };
    crate::activity::request_mail(tx, outbox, user_id, mail).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_reads_as_people_say_it() {
        let m = |minutes: u64| soon(Duration::from_secs(minutes * 60));
        assert_eq!(reminder_text("Fado night", Duration::from_secs(3600)), "Soon: Fado night starts in 1 hour");
        assert_eq!(m(24 * 60), "in 1 day");
        assert_eq!(m(23 * 60 + 30), "in 1 day");
        assert_eq!(m(3 * 24 * 60), "in 3 days");
        assert_eq!(m(3 * 60 - 1), "in 3 hours");
        assert_eq!(m(59), "in 1 hour");
        assert_eq!(m(40), "in 40 minutes");
        assert_eq!(soon(Duration::from_secs(2399)), "in 40 minutes");
        assert_eq!(soon(Duration::ZERO), "in 1 minute");
    }

    #[test]
    fn each_lead_covers_up_to_the_next_shorter_one() {
        let cfg = RemindersConfig::default();
        let (day, hour) = (24 * 3600 * 1_000_000_i64, 3600 * 1_000_000_i64);
        assert_eq!(cfg.windows(), [(day, hour), (hour, 0)]);
        let cfg = RemindersConfig { before: vec![Lead(Duration::from_secs(3600))], ..RemindersConfig::default() };
        assert_eq!(cfg.windows(), [(hour, 0)]);
    }

    #[test]
    fn bad_settings_are_refused_naming_the_key() {
        let hour = Lead(Duration::from_secs(3600));
        for (cfg, key) in [
            (
                RemindersConfig { before: vec![Lead(Duration::from_secs(60))], ..RemindersConfig::default() },
                "reminders.before",
            ),
            (RemindersConfig { before: vec![hour; 2], ..RemindersConfig::default() }, "reminders.before"),
            (RemindersConfig { before: vec![hour; 5], ..RemindersConfig::default() }, "reminders.before"),
            (RemindersConfig { check_every: Duration::ZERO, ..RemindersConfig::default() }, "reminders.check_every"),
        ] {
            let problems = cfg.problems();
            assert!(problems.iter().any(|(k, _)| *k == key), "{cfg:?}: {problems:?}");
        }
        assert!(RemindersConfig::default().problems().is_empty());
        assert!(RemindersConfig { before: Vec::new(), ..RemindersConfig::default() }.problems().is_empty());
    }
}
