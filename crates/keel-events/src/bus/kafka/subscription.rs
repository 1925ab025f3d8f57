//! A Kafka subscription: a consumer polled on a thread of its own, its partitions' messages
//! buffered here, handed out one key at a time, and their offsets stored once settled.
//!
//! Each assigned partition's messages come through a queue of its own (librdkafka's partition
//! queues), which the poll thread reads only while the partition's buffer here has room. While
//! the service takes nothing (a paused consumer) the thread goes on serving the consumer's own
//! queue (rebalances, errors), so the group keeps the member, and librdkafka stops fetching a
//! partition once its own queue is full (`queued.max.messages.kbytes`): back-pressure without
//! pausing, whose purge and re-fetch would start a fetch in the middle of a record batch. A
//! rebalance runs on that thread, which may block there until the deliveries of the partitions
//! being revoked are settled.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{Conn, REPLAY_GROUP, broker, header, kafka_error};
use crate::bus::{Acker as BusAcker, BusError, DeadLetter, Delivery, Envelope, SubscribeOptions};
use keel_health::sanitize;

/// The longest the poll thread sleeps without being woken (by a queue turning non-empty or a
/// settled delivery) before it looks at its queues and the stop flag again.
const IDLE: Duration = Duration::from_millis(100);

struct Pending {
    msg: OwnedMessage,
    attempt: u32,
    /// Not to be handed out before (a retry's delay).
    due: Option<Instant>,
}

impl Pending {
    fn key(&self) -> Option<&[u8]> {
        self.msg.key()
    }
}

/// One assigned partition's state.
struct Part {
    /// Which assignment this is: a delivery of an earlier one settles nothing here.
    generation: u64,
    /// Received, not handed out (or handed back to wait out a retry's delay), in offset order.
    queue: VecDeque<Pending>,
    /// Keys of the messages handed out and not settled: their next message waits.
    busy: HashSet<Vec<u8>>,
    /// Offsets received and not settled: the committed position stays at the lowest.
    unsettled: BTreeSet<i64>,
    /// Handed out and not settled.
    handed: usize,
    /// Just past the last offset received.
    next: i64,
    /// The position last stored for commit.
    stored: i64,
}

impl Part {
    fn new(generation: u64) -> Self {
        Self {
            generation,
            queue: VecDeque::new(),
            busy: HashSet::new(),
            unsettled: BTreeSet::new(),
            handed: 0,
            next: -1,
            stored: -1,
        }
    }

    /// Puts a message back in offset order.
    fn requeue(&mut self, p: Pending) {
        let at = self.queue.partition_point(|q| q.msg.offset() < p.msg.offset());
        self.queue.insert(at, p);
    }

    /// The position to commit: the oldest message not settled, or just past the last received.
    fn position(&self) -> i64 {
        self.unsettled.first().copied().unwrap_or(self.next)
    }
}

#[derive(Default)]
struct State {
    parts: HashMap<i32, Part>,
    generation: u64,
    /// Where `take` starts looking, so no partition starves the others.
    turn: usize,
}

pub(super) struct Shared {
    topic: String,
    state: Mutex<State>,
    /// Signalled when a delivery is settled (a rebalance waits on it).
    settled: Condvar,
    /// Wakes `next` when something may be ready.
    ready: tokio::sync::Notify,
    stop: AtomicBool,
    /// The poll thread ended (the subscription is over).
    ended: AtomicBool,
    /// How long a rebalance waits for the deliveries of revoked partitions.
    ack_wait: Duration,
    /// Messages buffered per partition before its fetching pauses.
    buffer: usize,
    /// A fan-out reader: no group, nothing committed.
    fan_out: bool,
    /// Set (and the poll thread woken) when a queue turns non-empty or a buffer gets room.
    work: Mutex<bool>,
    woken: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes the poll thread. Called from librdkafka's threads too: takes no other lock.
    fn wake(&self) {
        *self.work.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.woken.notify_one();
    }

    /// Sleeps until woken or `IDLE` passed.
    fn idle(&self) {
        let mut work = self.work.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !*work {
            work = self.woken.wait_timeout(work, IDLE).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
        *work = false;
    }

    /// Messages partition `p`'s buffer can take now (0 if it is not assigned).
    fn room(&self, p: i32) -> usize {
        self.lock().parts.get(&p).map_or(0, |part| self.buffer.saturating_sub(part.queue.len()))
    }

    /// Buffers a message just received; dropped if its partition is no longer assigned here.
    fn receive(&self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let (p, offset) = (m.partition(), m.offset());
        let mut st = self.lock();
        let Some(part) = st.parts.get_mut(&p) else { return };
        if offset >= part.next {
            part.next = offset + 1;
            part.unsettled.insert(offset);
            part.queue.push_back(Pending { msg: m.detach(), attempt: 1, due: None });
        }
        drop(st);
        self.ready.notify_one();
    }

    /// Stores `part`'s position for the next commit if it moved.
    fn store(&self, consumer: &BaseConsumer<Ctx>, partition: i32, part: &mut Part) {
        let pos = part.position();
        if pos > part.stored && pos > 0 {
            // librdkafka commits the stored offset + 1.
            match consumer.store_offset(&self.topic, partition, pos - 1) {
                Ok(()) => part.stored = pos,
                Err(e) => tracing::debug!(topic = %self.topic, partition, error = %e, "cannot store offset"),
            }
        }
    }
}

/// The consumer's context: rebalances wait for settling and commit.
pub(super) struct Ctx {
    shared: Arc<Shared>,
    quiet: super::Quiet,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error("Kafka consumer error", &error, reason);
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let shared = &self.shared;
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut st = shared.lock();
                st.generation += 1;
                let generation = st.generation;
                for e in tpl.elements_for_topic(&shared.topic) {
                    st.parts.insert(e.partition(), Part::new(generation));
                }
                tracing::info!(topic = %shared.topic, partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "Kafka partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                let revoked: Vec<i32> = tpl.elements_for_topic(&shared.topic).iter().map(|e| e.partition()).collect();
                let deadline = Instant::now() + shared.ack_wait;
                let mut st = shared.lock();
                // Finish what the service is handling before the partitions go (unless it
                // is stopping: then what it holds goes back to the group).
                while !shared.stop.load(Ordering::SeqCst)
                    && revoked.iter().any(|p| st.parts.get(p).is_some_and(|part| part.handed > 0))
                {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        tracing::warn!(topic = %shared.topic, waited = ?shared.ack_wait, "rebalance: deliveries still unsettled; they will be delivered again");
                        break;
                    }
                    st = shared.settled.wait_timeout(st, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
                }
                for p in &revoked {
                    if let Some(mut part) = st.parts.remove(p) {
                        shared.store(consumer, *p, &mut part);
                    }
                }
                // The poll thread drops the revoked partitions' queues.
                st.generation += 1;
                drop(st);
                if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                    tracing::debug!(topic = %shared.topic, error = %e, "commit before rebalance");
                }
                tracing::info!(topic = %shared.topic, partitions = ?revoked, "Kafka partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(topic = %shared.topic, error = %e, "Kafka rebalance failed"),
        }
    }
}

pub(in crate::bus) struct Subscription {
    shared: Arc<Shared>,
    consumer: Arc<BaseConsumer<Ctx>>,
    conn: Arc<Conn>,
}

impl Subscription {
    /// Creates the consumer (a group member, or for fan-out the reader of every partition from
    /// its end) and its poll thread. Blocking: run off the async threads.
    pub(super) fn start(
        conn: Arc<Conn>,
        topic: String,
        group: String,
        options: SubscribeOptions,
    ) -> Result<Self, BusError> {
        let shared = Arc::new(Shared {
            topic: topic.clone(),
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
            ready: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            ack_wait: options.ack_wait,
            buffer: usize::from(options.prefetch).max(1),
            fan_out: options.fan_out,
            work: Mutex::new(false),
            woken: Condvar::new(),
        });
        let mut config = conn.client.clone();
        config
            .set("group.id", &group)
            // Offsets are stored once settled (below the oldest unsettled) and committed every second.
            .set("enable.auto.commit", if options.fan_out { "false" } else { "true" })
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            // A new group reads what was published before it existed: nothing is lost to a
            // consumer deployed after its producer.
            .set("auto.offset.reset", if options.fan_out { "latest" } else { "earliest" })
            .set("session.timeout.ms", conn.kafka.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (conn.kafka.session_timeout.as_millis() / 3).max(100).to_string())
            .set("queued.max.messages.kbytes", "8192")
            .set("allow.auto.create.topics", "false");
        let mut consumer: BaseConsumer<Ctx> = config
            .create_with_context(Ctx { shared: shared.clone(), quiet: super::Quiet::default() })
            .map_err(|e| BusError::Config(sanitize(&format!("Kafka consumer: {e}"))))?;
        let s = shared.clone();
        consumer.set_nonempty_callback(move || s.wake());
        let consumer = Arc::new(consumer);
        if options.fan_out {
            // Outside any group: every partition from where it ends now.
            let mut tpl = TopicPartitionList::new();
            let mut st = shared.lock();
            st.generation = 1;
            for p in Conn::partitions(consumer.client(), &topic)? {
                let (_, high) = consumer.fetch_watermarks(&topic, p, super::REQUEST_TIMEOUT).map_err(kafka_error)?;
                tpl.add_partition_offset(&topic, p, Offset::Offset(high)).map_err(broker)?;
                st.parts.insert(p, Part::new(1));
            }
            drop(st);
            consumer.assign(&tpl).map_err(kafka_error)?;
        } else {
            consumer.subscribe(&[&topic]).map_err(kafka_error)?;
        }
        let (c, s) = (consumer.clone(), shared.clone());
        std::thread::Builder::new()
            .name("keel-kafka".into())
            .spawn(move || poll_loop(&c, &s))
            .map_err(|e| BusError::Broker(format!("cannot start the Kafka poll thread: {e}")))?;
        Ok(Self { shared, consumer, conn })
    }

    pub(in crate::bus) async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        loop {
            let notified = self.shared.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.ended.load(Ordering::SeqCst) {
                return None;
            }
            let due = match self.take() {
                Ok(d) => return Some(Ok(d)),
                Err(due) => due,
            };
            match due {
                Some(at) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The next message that may be handed out: due, and the first of its key not settled.
    /// Otherwise when the earliest held one is due.
    fn take(&self) -> Result<Delivery, Option<Instant>> {
        let now = Instant::now();
        let mut st = self.shared.lock();
        let mut partitions: Vec<i32> = st.parts.keys().copied().collect();
        partitions.sort_unstable();
        let n = partitions.len();
        let start = st.turn;
        st.turn = st.turn.wrapping_add(1);
        let mut earliest: Option<Instant> = None;
        for i in 0..n {
            let p = partitions[(start + i) % n];
            let Some(part) = st.parts.get_mut(&p) else { continue };
            let mut waiting: Vec<&[u8]> = Vec::new();
            let mut found = None;
            for (at, pending) in part.queue.iter().enumerate() {
                let key = pending.key();
                if let Some(k) = key
                    && (part.busy.contains(k) || waiting.contains(&k))
                {
                    continue;
                }
                if let Some(due) = pending.due
                    && due > now
                {
                    earliest = Some(earliest.map_or(due, |e| e.min(due)));
                    if let Some(k) = key {
                        waiting.push(k);
                    }
                    continue;
                }
                found = Some(at);
                break;
            }
            let Some(at) = found else { continue };
            let Some(pending) = part.queue.remove(at) else { continue };
            if let Some(k) = pending.key() {
                part.busy.insert(k.to_vec());
            }
            part.handed += 1;
            let generation = part.generation;
            drop(st);
            // The buffer has room again.
            self.shared.wake();
            return Ok(self.delivery(p, generation, pending));
        }
        Err(earliest)
    }

    fn delivery(&self, partition: i32, generation: u64, pending: Pending) -> Delivery {
        let payload = Envelope::from_bytes(pending.msg.payload().unwrap_or_default());
        let replay_group = header(&pending.msg, REPLAY_GROUP);
        let attempt = pending.attempt;
        let acker = Acker {
            shared: self.shared.clone(),
            consumer: self.consumer.clone(),
            conn: self.conn.clone(),
            partition,
            generation,
            pending: Some(pending),
        };
        Delivery::new(payload, attempt, replay_group, BusAcker::Kafka(acker))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.settled.notify_all();
        self.shared.wake();
    }
}

/// Polls until the subscription is dropped: the consumer's own queue first (rebalances,
/// errors, and messages fetched before their partition got a queue of its own), then each
/// partition's queue as far as its buffer has room; then commits and leaves the group.
fn poll_loop(consumer: &Arc<BaseConsumer<Ctx>>, shared: &Arc<Shared>) {
    let mut queues: HashMap<i32, PartitionQueue<Ctx>> = HashMap::new();
    let mut split_at = 0;
    let mut failing = false;
    while !shared.stop.load(Ordering::SeqCst) {
        let mut busy = false;
        loop {
            match consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    failing = false;
                    busy = true;
                    shared.receive(&m);
                }
                Some(Err(e)) => {
                    // librdkafka reconnects by itself; say so once per outage, not per poll.
                    if !failing {
                        tracing::warn!(topic = %shared.topic, error = %e, "Kafka consumer cannot fetch; retrying");
                    }
                    failing = true;
                    break;
                }
            }
        }
        // After an assignment (which deactivates earlier partition queues) or a revocation:
        // a queue per assigned partition, then the consumer's queue drained again, since it
        // may hold messages fetched before the split, older than any in the new queues.
        let (generation, assigned) = {
            let st = shared.lock();
            (st.generation, st.parts.keys().copied().collect::<Vec<_>>())
        };
        if generation != split_at {
            split_at = generation;
            queues.clear();
            for p in assigned {
                if let Some(mut q) = consumer.split_partition_queue(&shared.topic, p) {
                    let s = shared.clone();
                    q.set_nonempty_callback(move || s.wake());
                    queues.insert(p, q);
                }
            }
            continue;
        }
        for (p, q) in &queues {
            for _ in 0..shared.room(*p) {
                match q.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(m)) => {
                        busy = true;
                        shared.receive(&m);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(topic = %shared.topic, partition = p, error = %e, "Kafka partition queue");
                        break;
                    }
                }
            }
        }
        if !busy {
            shared.idle();
        }
    }
    drop(queues);
    let mut st = shared.lock();
    let parts: Vec<i32> = st.parts.keys().copied().collect();
    for p in parts {
        if let Some(part) = st.parts.get_mut(&p) {
            shared.store(consumer, p, part);
        }
    }
    drop(st);
    if !shared.fan_out {
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(topic = %shared.topic, error = %e, "final commit");
        }
        consumer.unsubscribe();
    }
    shared.ended.store(true, Ordering::SeqCst);
    shared.ready.notify_waiters();
}

/// What a settled delivery does to its partition.
enum Settle {
    /// Done: its offset may be committed.
    Done,
    /// Back into the buffer, with the attempt count one higher, due after the delay.
    Again(Option<Duration>),
}

pub(in crate::bus) struct Acker {
    shared: Arc<Shared>,
    consumer: Arc<BaseConsumer<Ctx>>,
    conn: Arc<Conn>,
    partition: i32,
    generation: u64,
    pending: Option<Pending>,
}

impl Acker {
    /// Settles the delivery; an error when its partition was given up meanwhile (the group's
    /// new owner gets it again).
    fn settle(&mut self, how: Settle) -> Result<(), BusError> {
        let Some(mut pending) = self.pending.take() else { return Ok(()) };
        let shared = &self.shared;
        let mut st = shared.lock();
        let Some(part) = st.parts.get_mut(&self.partition).filter(|p| p.generation == self.generation) else {
            return Err(BusError::Unavailable(
                "the partition was reassigned: the message will be delivered again".into(),
            ));
        };
        part.handed = part.handed.saturating_sub(1);
        if let Some(k) = pending.key() {
            part.busy.remove(k);
        }
        match how {
            Settle::Done => {
                part.unsettled.remove(&pending.msg.offset());
                shared.store(&self.consumer, self.partition, part);
            }
            Settle::Again(delay) => {
                pending.attempt = pending.attempt.saturating_add(1);
                pending.due = delay.map(|d| Instant::now() + d);
                part.requeue(pending);
            }
        }
        drop(st);
        shared.settled.notify_all();
        shared.ready.notify_one();
        shared.wake();
        Ok(())
    }

    pub(in crate::bus) fn ack(mut self) -> Result<(), BusError> {
        self.settle(Settle::Done)
    }

    pub(in crate::bus) fn retry(mut self, delay: Duration) -> Result<(), BusError> {
        self.settle(Settle::Again(Some(delay)))
    }

    pub(in crate::bus) async fn dead_letter(mut self, dead: DeadLetter) -> Result<(), BusError> {
        // If the DLQ does not confirm, `self` drops unsettled and the message comes back.
        let topic = self.shared.topic.clone();
        self.conn.send_dead_letter(&topic, &dead).await?;
        self.settle(Settle::Done)
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        // Dropped unsettled: handed out again at once (as if its consumer had crashed).
        let _ = self.settle(Settle::Again(None));
    }
}
