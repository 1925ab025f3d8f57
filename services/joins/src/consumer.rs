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
//! | `event.canceled` | the event is closed; every confirmed or waitlisted join is canceled (`join.canceled`, reason `event_canceled`) |
//!
//! An update or cancel for an event not known yet is retried (its `event.published` may still
//! be on its way); a payload that does not decode, or an unknown schema version, goes to the
//! DLQ at once. Other `event.*` types are acknowledged and ignored.

use cityevents_common::catalogue::{EventCanceled, EventPublished, EventSnapshot, EventUpdated};
use cityevents_common::time::{now, to_micros};
use keel::data::Backend;
use keel::events::outbox::Outbox;
use keel::events::{Envelope, Event, Failure, Handler, Message};
use sqlx::{Any, Transaction};

use crate::store::{self, Announce, EventRow, event_status};

/// The `event.*` handler the service registers (group `joins`, with the inbox).
#[derive(Debug, Clone)]
pub struct EventsHandler {
    backend: Backend,
    outbox: Outbox,
    joins_topic: String,
}

impl EventsHandler {
    /// A handler for a database of `backend`, announcing `join.*` through `outbox` on
    /// `joins_topic`.
    pub fn new(backend: Backend, outbox: Outbox, joins_topic: impl Into<String>) -> Self {
        Self { backend, outbox, joins_topic: joins_topic.into() }
    }
}

impl Handler for EventsHandler {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        let envelope = msg.envelope().clone();
        let tx = msg.tx().ok_or_else(|| Failure::permanent("the joins consumer must run with an inbox"))?;
        apply_event(tx, self.backend, &self.outbox, &self.joins_topic, &envelope).await
    }
}

/// Applies one `event.*` envelope in `tx` (the inbox transaction), enqueueing the `join.*` it
/// causes through `outbox` on `joins_topic`. The caller commits.
pub async fn apply_event(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    outbox: &Outbox,
    joins_topic: &str,
    envelope: &Envelope,
) -> Result<(), Failure> {
    match envelope.ty.as_str() {
        EventPublished::TYPE => {
            let EventPublished(snapshot) = envelope.decode().map_err(Failure::permanent)?;
            apply_snapshot(tx, backend, outbox, joins_topic, &snapshot, true).await
        }
        EventUpdated::TYPE => {
            let EventUpdated(snapshot) = envelope.decode().map_err(Failure::permanent)?;
            apply_snapshot(tx, backend, outbox, joins_topic, &snapshot, false).await
        }
        EventCanceled::TYPE => {
            let canceled: EventCanceled = envelope.decode().map_err(Failure::permanent)?;
            apply_cancel(tx, backend, outbox, joins_topic, &canceled).await
        }
        other => {
            tracing::debug!(ty = %other, "not an event the joins service acts on; acknowledged");
            Ok(())
        }
    }
}

fn row_from(s: &EventSnapshot) -> Result<EventRow, Failure> {
    if s.status != event_status::PUBLISHED && s.status != event_status::CANCELED {
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
    })
}

async fn apply_snapshot(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    outbox: &Outbox,
    topic: &str,
    s: &EventSnapshot,
    published: bool,
) -> Result<(), Failure> {
    let fresh = row_from(s)?;
    let now_us = to_micros(now());
    let Some(mut ev) = store::lock_event(tx, backend, s.event_id).await? else {
        if !published {
            return Err(Failure::retry(format!(
                "event {} is not known yet (its event.published may still be on its way)",
                s.event_id
            )));
        }
        store::insert_event(tx, backend, &fresh, now_us).await?;
        tracing::info!(event_id = %s.event_id, capacity = s.capacity, "event opened for joins");
        return Ok(());
    };
    ev.title = fresh.title;
    ev.starts_at = fresh.starts_at;
    ev.ends_at = fresh.ends_at;
    ev.capacity = fresh.capacity;
    let mut items = Vec::new();
    if fresh.status == event_status::CANCELED {
        if ev.status != event_status::CANCELED {
            ev.status = event_status::CANCELED.to_owned();
            for j in store::cancel_all(tx, backend, &mut ev, now_us).await? {
                items.push((Announce::Canceled, store::change(&ev, &j, Some("event_canceled"))));
            }
        }
    } else if ev.status == event_status::PUBLISHED {
        // A larger (or unlimited) capacity frees seats; a smaller one leaves confirmed joins be.
        for j in store::promote(tx, backend, &mut ev, now_us).await? {
            items.push((Announce::Promoted, store::change(&ev, &j, Some("capacity_increased"))));
        }
    }
    store::save_event(tx, backend, &ev, now_us).await?;
    if !items.is_empty() {
        tracing::info!(event_id = %ev.event_id, changed = items.len(), "event change moved joins");
    }
    store::announce(tx, outbox, topic, items).await?;
    Ok(())
}

async fn apply_cancel(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    outbox: &Outbox,
    topic: &str,
    c: &EventCanceled,
) -> Result<(), Failure> {
    let now_us = to_micros(now());
    let Some(mut ev) = store::lock_event(tx, backend, c.event_id).await? else {
        return Err(Failure::retry(format!(
            "event {} is not known yet (its event.published may still be on its way)",
            c.event_id
        )));
    };
    if ev.status == event_status::CANCELED {
        return Ok(());
    }
    ev.status = event_status::CANCELED.to_owned();
    ev.title = c.title.clone();
    let canceled = store::cancel_all(tx, backend, &mut ev, now_us).await?;
    let items: Vec<_> =
        canceled.iter().map(|j| (Announce::Canceled, store::change(&ev, j, Some("event_canceled")))).collect();
    store::save_event(tx, backend, &ev, now_us).await?;
    tracing::info!(event_id = %ev.event_id, canceled = items.len(), "event canceled; its joins are canceled");
    store::announce(tx, outbox, topic, items).await?;
    Ok(())
}
