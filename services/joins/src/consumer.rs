//! What the joins service does with `event.*` (topic `cityevents.events`, group `joins`).
//!
//! The consumer runs with an inbox: [`apply_event`] writes in the inbox transaction, so the
//! message id is recorded together with the effect and a redelivery is acknowledged without
//! applying it twice. Like every writer, it locks the event's capacity row first.
//!
//! | type | effect |
//! |---|---|
//! | `event.published` | creates the capacity row (a repeat updates it like `event.updated`) |
//! | `event.updated` | new title, times, capacity; free seats go to the oldest waitlisted users (`join.promoted`); a smaller capacity bumps no one |
//! | `event.canceled` | the event is closed; every confirmed or waitlisted join is canceled (`join.canceled`, reason `event_canceled`, the reason given as `note`) |
//! | `event.unpublished` | the event is closed until published again; every active join is canceled (`join.canceled`, reason `event_unpublished`, `note`) |
//!
//! Snapshots carry the event's version: one older than (or equal to) the version already
//! applied is acknowledged and ignored, so a retried or reordered `event.updated` never rolls
//! an event back. A cancel or capacity increase changes at most `change_batch` joins in the
//! message's transaction; the rest is finished by the service's settle worker
//! (`store::settle_pending`), batch by batch, each batch announced as it commits.
//!
//! An update or cancel for an event not known yet is retried (its `event.published` may still
//! be on its way); a payload that does not decode, or an unknown schema version, goes to the
//! DLQ at once. Other `event.*` types are acknowledged and ignored.

use cityevents_common::catalogue::{EventCanceled, EventPublished, EventSnapshot, EventUnpublished, EventUpdated};
use cityevents_common::time::{now, to_micros};
use keel::events::outbox::Outbox;
use keel::events::{Envelope, Event, Failure, Handler, Message};
use sqlx::{Any, Transaction};

use crate::metrics::{JoinMetrics, Tally};
use crate::store::{self, EventRow, event_status};

/// The `event.*` handler the service registers (group `joins`, with the inbox).
#[derive(Debug, Clone)]
pub struct EventsHandler {
    outbox: Outbox,
    joins_topic: String,
    batch: i64,
    metrics: JoinMetrics,
}

impl EventsHandler {
    /// A handler writing to the database of `outbox`, announcing `join.*` through it on
    /// `joins_topic`.
    pub fn new(outbox: Outbox, joins_topic: impl Into<String>) -> Self {
        Self {
            outbox,
            joins_topic: joins_topic.into(),
            batch: store::DEFAULT_CHANGE_BATCH,
            metrics: JoinMetrics::none(),
        }
    }

    /// Counts the joins it changes in `metrics` (`joins_changes_total`).
    pub fn metrics(mut self, metrics: JoinMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Joins changed in the message's own transaction when an event is canceled or its
    /// capacity grows (default 500); the rest is left `pending` for the service's settle
    /// worker, which must use the same database.
    pub fn change_batch(mut self, batch: usize) -> Self {
        self.batch = i64::try_from(batch).unwrap_or(i64::MAX).max(1);
        self
    }
}

impl Handler for EventsHandler {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        let envelope = msg.envelope().clone();
        let tx = msg.tx().ok_or_else(|| Failure::permanent("the joins consumer must run with an inbox"))?;
        let tally = apply_event(tx, self, &envelope).await?;
        self.metrics.count(tally);
        Ok(())
    }
}

/// Applies one `event.*` envelope in `tx` (the inbox transaction), enqueueing the `join.*` it
/// causes. The caller commits. Returns what the joins did.
pub(crate) async fn apply_event(
    tx: &mut Transaction<'static, Any>,
    to: &EventsHandler,
    envelope: &Envelope,
) -> Result<Tally, Failure> {
    match envelope.ty.as_str() {
        EventPublished::TYPE => {
            let EventPublished(snapshot) = envelope.decode().map_err(Failure::permanent)?;
            apply_snapshot(tx, to, &snapshot, true).await
        }
        EventUpdated::TYPE => {
            let EventUpdated(snapshot) = envelope.decode().map_err(Failure::permanent)?;
            apply_snapshot(tx, to, &snapshot, false).await
        }
        EventCanceled::TYPE => {
            let canceled: EventCanceled = envelope.decode().map_err(Failure::permanent)?;
            apply_cancel(tx, to, &canceled).await
        }
        EventUnpublished::TYPE => {
            let unpublished: EventUnpublished = envelope.decode().map_err(Failure::permanent)?;
            apply_unpublish(tx, to, &unpublished).await
        }
        other => {
            tracing::debug!(ty = %other, "not an event the joins service acts on; acknowledged");
            Ok(Tally::default())
        }
    }
}

fn version_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Whether a payload at `incoming` is older than (or the same as) what the row has applied.
fn is_stale(ev: &EventRow, incoming: u64) -> bool {
    incoming != 0 && version_of(incoming) <= ev.source_version
}

fn row_from(s: &EventSnapshot) -> Result<EventRow, Failure> {
    if ![event_status::PUBLISHED, event_status::CANCELED, event_status::DRAFT].contains(&s.status.as_str()) {
        return Err(Failure::permanent(format!("event {}: unknown status {:?}", s.event_id, s.status)));
    }
    Ok(EventRow {
        event_id: s.event_id,
        organizer_id: s.organizer_id,
        title: s.title.clone(),
        starts_at: to_micros(s.starts_at),
        ends_at: to_micros(s.ends_at),
        capacity: i64::from(s.capacity),
        status: s.status.clone(),
        confirmed: 0,
        waitlisted: 0,
        next_seq: 0,
        source_version: version_of(s.version),
        note: None,
    })
}

async fn apply_snapshot(
    tx: &mut Transaction<'static, Any>,
    to: &EventsHandler,
    s: &EventSnapshot,
    published: bool,
) -> Result<Tally, Failure> {
    let fresh = row_from(s)?;
    let now_us = to_micros(now());
    let Some(mut ev) = store::lock_event(tx, to.outbox.db(), s.event_id).await? else {
        if !published {
            return Err(Failure::retry(format!(
                "event {} is not known yet (its event.published may still be on its way)",
                s.event_id
            )));
        }
        store::insert_event(tx, to.outbox.db(), &fresh, now_us).await?;
        tracing::info!(event_id = %s.event_id, capacity = s.capacity, "event opened for joins");
        return Ok(Tally::default());
    };
    if is_stale(&ev, s.version) {
        tracing::info!(
            event_id = %s.event_id, version = s.version, applied = ev.source_version,
            "an older snapshot of the event arrived after a newer one; ignored"
        );
        return Ok(Tally::default());
    }
    if ev.status == event_status::DRAFT && fresh.status == event_status::PUBLISHED && ev.unsettled() {
        // Reopened before the settle worker canceled every join of the unpublish: wait for it,
        // or some of those joins would stay and the others not.
        return Err(Failure::retry(format!(
            "event {} still has joins to cancel from its unpublish; it reopens once they are",
            s.event_id
        )));
    }
    ev.title = fresh.title;
    ev.starts_at = fresh.starts_at;
    ev.ends_at = fresh.ends_at;
    ev.capacity = fresh.capacity;
    ev.source_version = ev.source_version.max(fresh.source_version);
    // Canceled is final; otherwise the snapshot's status holds (a republished draft reopens).
    if ev.status != event_status::CANCELED && ev.status != fresh.status {
        ev.status = fresh.status;
        ev.note = None;
    }
    // A larger (or unlimited) capacity frees seats; a smaller one leaves confirmed joins be.
    let (changed, tally) =
        store::settle(tx, to.outbox.db(), (&to.outbox, &to.joins_topic), &mut ev, now_us, to.batch).await?;
    if changed > 0 || ev.unsettled() {
        tracing::info!(event_id = %ev.event_id, changed, pending = ev.unsettled(), "event change moved joins");
    }
    Ok(tally)
}

async fn apply_unpublish(
    tx: &mut Transaction<'static, Any>,
    to: &EventsHandler,
    u: &EventUnpublished,
) -> Result<Tally, Failure> {
    let now_us = to_micros(now());
    let mut fresh = row_from(&u.event)?;
    fresh.status = event_status::DRAFT.to_owned();
    fresh.note.clone_from(&u.reason);
    let Some(mut ev) = store::lock_event(tx, to.outbox.db(), u.event.event_id).await? else {
        // Never opened here (its event.published may come later, and older): a closed row
        // whose version makes that late publish stale.
        store::insert_event(tx, to.outbox.db(), &fresh, now_us).await?;
        return Ok(Tally::default());
    };
    if is_stale(&ev, u.event.version) || ev.status == event_status::CANCELED {
        return Ok(Tally::default());
    }
    ev.status = fresh.status;
    ev.note = fresh.note;
    ev.title = fresh.title;
    ev.starts_at = fresh.starts_at;
    ev.ends_at = fresh.ends_at;
    ev.capacity = fresh.capacity;
    ev.source_version = ev.source_version.max(fresh.source_version);
    let (canceled, tally) =
        store::settle(tx, to.outbox.db(), (&to.outbox, &to.joins_topic), &mut ev, now_us, to.batch).await?;
    tracing::info!(event_id = %ev.event_id, canceled, pending = ev.unsettled(), "event unpublished; its joins are canceled");
    Ok(tally)
}

async fn apply_cancel(
    tx: &mut Transaction<'static, Any>,
    to: &EventsHandler,
    c: &EventCanceled,
) -> Result<Tally, Failure> {
    let now_us = to_micros(now());
    let Some(mut ev) = store::lock_event(tx, to.outbox.db(), c.event_id).await? else {
        return Err(Failure::retry(format!(
            "event {} is not known yet (its event.published may still be on its way)",
            c.event_id
        )));
    };
    if ev.status == event_status::CANCELED {
        return Ok(Tally::default());
    }
    ev.status = event_status::CANCELED.to_owned();
    ev.title = c.title.clone();
    ev.note.clone_from(&c.reason);
    // Canceled is final: a newer version only records that older snapshots are now stale.
    ev.source_version = ev.source_version.max(version_of(c.version));
    let (canceled, tally) =
        store::settle(tx, to.outbox.db(), (&to.outbox, &to.joins_topic), &mut ev, now_us, to.batch).await?;
    tracing::info!(event_id = %ev.event_id, canceled, pending = ev.unsettled(), "event canceled; its joins are canceled");
    Ok(tally)
}
