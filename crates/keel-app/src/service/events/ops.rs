//! A consumer as the operator console acts on it ([`ConsumerOps`]), over its bus.

use keel_events::{Bus, ConsumerControl, DeadLetter};
use keel_management::ops::{ConsumerOps, Letter, MAX_DATA, OpsFuture};

pub(super) struct Operated {
    pub(super) topic: String,
    pub(super) group: String,
    pub(super) control: ConsumerControl,
    pub(super) bus: Bus,
}

fn letter(d: DeadLetter) -> Letter {
    let mut data = serde_json::to_string_pretty(&d.envelope.data).unwrap_or_default();
    if data.len() > MAX_DATA {
        let cut = (0..=MAX_DATA).rev().find(|i| data.is_char_boundary(*i)).unwrap_or(0);
        data.truncate(cut);
        data.push_str("\n… (cut)");
    }
    Letter {
        id: d.envelope.id,
        kind: d.envelope.ty,
        time: d.envelope.time,
        group: d.group,
        reason: d.reason,
        attempts: d.attempts,
        data,
    }
}

impl ConsumerOps for Operated {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn group(&self) -> &str {
        &self.group
    }

    fn paused(&self) -> Option<String> {
        self.control.paused()
    }

    fn pause(&self, why: &str) -> bool {
        self.control.pause(why)
    }

    fn resume(&self) -> bool {
        self.control.resume()
    }

    fn dead_letters(&self, limit: usize) -> OpsFuture<'_, Vec<Letter>> {
        Box::pin(async move {
            let list = self.bus.dlq_list(&self.topic, limit).await.map_err(|e| e.to_string())?;
            Ok(list.into_iter().map(letter).collect())
        })
    }

    fn replay(&self, id: Option<&str>) -> OpsFuture<'_, usize> {
        let id = id.map(str::to_owned);
        Box::pin(async move { self.bus.dlq_replay(&self.topic, id.as_deref()).await.map_err(|e| e.to_string()) })
    }

    fn discard(&self, id: &str) -> OpsFuture<'_, usize> {
        let id = id.to_owned();
        Box::pin(async move { self.bus.dlq_discard(&self.topic, &id).await.map_err(|e| e.to_string()) })
    }

    fn purge(&self) -> OpsFuture<'_, usize> {
        Box::pin(async move { self.bus.dlq_purge(&self.topic).await.map_err(|e| e.to_string()) })
    }
}
