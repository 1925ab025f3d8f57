//! The in-process bus: the zero-setup default. Bounded queues per topic and consumer group with
//! the brokers' semantics (ack, retry after a delay, dead-letter, redelivery of a delivery
//! dropped unsettled), so code and tests behave as they will on NATS or RabbitMQ. Not durable:
//! what is queued is lost with the process, which is why production refuses it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::{Acker as BusAcker, BusError, DeadLetter, Delivery, Envelope};

struct Msg {
    envelope: Envelope,
    /// Deliveries made so far.
    deliveries: u32,
    replay_group: Option<String>,
}

#[derive(Default)]
struct GroupState {
    ready: VecDeque<Msg>,
    /// Delivered and not settled, or waiting out a retry delay.
    held: usize,
}

struct Group {
    topic: String,
    name: String,
    /// A fan-out subscriber's own group: removed when its subscription drops.
    fan_out: bool,
    state: Mutex<GroupState>,
    notify: Notify,
    broker: std::sync::Weak<Broker>,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, msg: Msg, front: bool) {
        {
            let mut s = self.lock();
            if front {
                s.ready.push_front(msg);
            } else {
                s.ready.push_back(msg);
            }
        }
        // Waiters register (`Notified::enable`) before looking at the queue: none is missed.
        self.notify.notify_waiters();
    }

    fn settle(&self) {
        let mut s = self.lock();
        s.held = s.held.saturating_sub(1);
    }

    fn len(&self) -> usize {
        let s = self.lock();
        s.ready.len() + s.held
    }
}

#[derive(Default)]
struct Topic {
    groups: HashMap<String, Arc<Group>>,
    /// Published before any group subscribed; handed to the first group (as a stream would).
    backlog: VecDeque<Envelope>,
    dlq: VecDeque<DeadLetter>,
}

/// The broker: topics by name.
pub(super) struct Broker {
    topics: Mutex<HashMap<String, Topic>>,
    capacity: usize,
    me: std::sync::Weak<Broker>,
}

impl Broker {
    pub(super) fn new(capacity: usize) -> Arc<Self> {
        Arc::new_cyclic(|me| Self { topics: Mutex::new(HashMap::new()), capacity: capacity.max(1), me: me.clone() })
    }

    fn topics(&self) -> MutexGuard<'_, HashMap<String, Topic>> {
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `envelope` for every group of `topic` (or only `only_group`), all or nothing.
    pub(super) fn publish(&self, topic: &str, envelope: &Envelope, only_group: Option<&str>) -> Result<(), BusError> {
        let mut topics = self.topics();
        let t = topics.entry(topic.to_owned()).or_default();
        // Until a durable group exists the backlog keeps the message for it (fan-out
        // subscribers only see what is published while they are there).
        let backlog = !t.groups.values().any(|g| !g.fan_out);
        let fan_out_only = backlog && !t.groups.is_empty();
        if backlog && t.backlog.len() >= self.capacity {
            if !fan_out_only {
                return Err(BusError::Full(topic.to_owned()));
            }
            // Fan-out subscribers are served; only a durable group that never subscribed in
            // this process loses its oldest message, rather than every publish failing.
            t.backlog.pop_front();
            tracing::warn!(topic, "in-process backlog full with no durable group: oldest message dropped");
        }
        let targets: Vec<&Arc<Group>> = t.groups.values().filter(|g| only_group.is_none_or(|o| o == g.name)).collect();
        if targets.iter().any(|g| g.len() >= self.capacity) {
            return Err(BusError::Full(topic.to_owned()));
        }
        if backlog {
            t.backlog.push_back(envelope.clone());
        }
        for g in targets {
            let replay_group = only_group.map(str::to_owned);
            g.push(Msg { envelope: envelope.clone(), deliveries: 0, replay_group }, false);
        }
        Ok(())
    }

    pub(super) fn subscribe(&self, topic: &str, group: &str, fan_out: bool) -> Subscription {
        let mut topics = self.topics();
        let t = topics.entry(topic.to_owned()).or_default();
        let first = !fan_out && !t.groups.values().any(|g| !g.fan_out);
        let g = t
            .groups
            .entry(group.to_owned())
            .or_insert_with(|| {
                Arc::new(Group {
                    topic: topic.to_owned(),
                    name: group.to_owned(),
                    fan_out,
                    state: Mutex::new(GroupState::default()),
                    notify: Notify::new(),
                    broker: self.me.clone(),
                })
            })
            .clone();
        if first {
            for envelope in t.backlog.drain(..) {
                g.push(Msg { envelope, deliveries: 0, replay_group: None }, false);
            }
        }
        Subscription { group: g }
    }

    pub(super) fn lag(&self, topic: &str, group: &str) -> u64 {
        let topics = self.topics();
        let Some(t) = topics.get(topic) else { return 0 };
        match t.groups.get(group) {
            // Delivered and not settled (in progress, or waiting out a retry's delay) too.
            Some(g) => g.len() as u64,
            None => t.backlog.len() as u64,
        }
    }

    fn dead_letter(&self, dead: DeadLetter, topic: &str) -> Result<(), BusError> {
        let mut topics = self.topics();
        let t = topics.entry(topic.to_owned()).or_default();
        if t.dlq.len() >= self.capacity {
            return Err(BusError::Full(format!("{topic}.dlq")));
        }
        t.dlq.push_back(dead);
        Ok(())
    }

    pub(super) fn dlq_list(&self, topic: &str, limit: usize) -> Vec<DeadLetter> {
        self.topics().get(topic).map(|t| t.dlq.iter().take(limit).cloned().collect()).unwrap_or_default()
    }

    pub(super) fn dlq_replay(&self, topic: &str, id: Option<&str>) -> Result<usize, BusError> {
        let taken: Vec<DeadLetter> = {
            let mut topics = self.topics();
            let Some(t) = topics.get_mut(topic) else { return Ok(0) };
            let (take, keep): (VecDeque<DeadLetter>, VecDeque<DeadLetter>) =
                t.dlq.drain(..).partition(|d| id.is_none_or(|id| d.envelope.id == id));
            t.dlq = keep;
            take.into_iter().collect()
        };
        let mut replayed = 0;
        let mut failed = Vec::new();
        for d in taken {
            match self.publish(topic, &d.envelope, Some(&d.group)) {
                Ok(()) => replayed += 1,
                Err(_) => failed.push(d),
            }
        }
        if !failed.is_empty() {
            let n = failed.len();
            if let Some(t) = self.topics().get_mut(topic) {
                t.dlq.extend(failed);
            }
            return Err(BusError::Full(format!("{topic}: {n} dead letters could not be replayed and stay in the DLQ")));
        }
        Ok(replayed)
    }

    pub(super) fn dlq_discard(&self, topic: &str, id: &str) -> usize {
        let mut topics = self.topics();
        let Some(t) = topics.get_mut(topic) else { return 0 };
        let before = t.dlq.len();
        t.dlq.retain(|d| d.envelope.id != id);
        before - t.dlq.len()
    }

    pub(super) fn dlq_purge(&self, topic: &str) -> usize {
        self.topics().get_mut(topic).map(|t| t.dlq.drain(..).count()).unwrap_or(0)
    }
}

/// One group's subscription.
pub(super) struct Subscription {
    group: Arc<Group>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.group.fan_out {
            return;
        }
        if let Some(broker) = self.group.broker.upgrade()
            && let Some(t) = broker.topics().get_mut(&self.group.topic)
        {
            t.groups.remove(&self.group.name);
        }
    }
}

impl Subscription {
    pub(super) async fn next(&mut self) -> Option<Delivery> {
        loop {
            let notified = self.group.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let msg = {
                let mut s = self.group.lock();
                let m = s.ready.pop_front();
                if m.is_some() {
                    s.held += 1;
                }
                m
            };
            if let Some(mut m) = msg {
                m.deliveries += 1;
                let attempt = m.deliveries;
                let replay_group = m.replay_group.clone();
                let envelope = m.envelope.clone();
                let acker = BusAcker::InProcess(Acker { group: self.group.clone(), msg: Some(m) });
                return Some(Delivery::new(Ok(envelope), attempt, replay_group, acker));
            }
            notified.await;
        }
    }
}

/// Settles an in-process delivery.
pub(super) struct Acker {
    group: Arc<Group>,
    msg: Option<Msg>,
}

impl Acker {
    pub(super) fn ack(mut self) {
        self.msg = None;
        self.group.settle();
    }

    pub(super) fn retry(mut self, delay: Duration) {
        let Some(mut msg) = self.msg.take() else { return };
        msg.replay_group = None;
        let group = self.group.clone();
        // The slot stays held while the delay runs, so capacity counts it.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    group.settle();
                    group.push(msg, false);
                });
            }
            Err(_) => {
                group.settle();
                group.push(msg, false);
            }
        }
    }

    pub(super) fn dead_letter(mut self, dead: DeadLetter) -> Result<(), BusError> {
        let Some(broker) = self.group.broker.upgrade() else {
            return Err(BusError::Unavailable("the in-process bus is gone".into()));
        };
        match broker.dead_letter(dead, &self.group.topic) {
            Ok(()) => {
                self.msg = None;
                self.group.settle();
                Ok(())
            }
            // `self` drops with the message still held: it is redelivered, not lost.
            Err(e) => Err(e),
        }
    }

    /// Dropped unsettled: back to the front of the queue, as a broker redelivers after a crash.
    fn requeue(&mut self) {
        if let Some(msg) = self.msg.take() {
            self.group.settle();
            self.group.push(msg, true);
        }
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        self.requeue();
    }
}
