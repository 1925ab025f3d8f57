//! NATS JetStream backend.
//!
//! * A topic `joins.created` is a file-backed stream `joins_created` (limits retention, 7 days)
//!   on subject `joins.created`; its DLQ is the stream `joins_created_dlq` on `joins.created.dlq`.
//! * A consumer group is a durable pull consumer with explicit acks; `retry` is a NAK with a
//!   delay, a delivery dropped unsettled is NAKed at once, a dead letter is published to the DLQ
//!   subject (confirmed) and then terminated. The attempt number is JetStream's delivery count.
//! * Publishes carry `Nats-Msg-Id` = event id, so a relay retrying after a lost confirmation
//!   does not store the event twice (within the stream's 2-minute duplicate window).
//! * A fan-out subscription is an ephemeral pull consumer delivering what is published from
//!   then on; the server deletes it a minute after its last pull.
//! * Max deliveries are enforced by the consumer (`max_attempts`, then DLQ) rather than by
//!   JetStream's `max_deliver`, which would drop the message silently.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;

use super::{Acker as BusAcker, BusError, DeadLetter, Delivery, Envelope, SubscribeOptions};
use keel_health::sanitize;
use keel_resilience::backoff::{Backoff, Jitter};

const MSG_ID: &str = "Nats-Msg-Id";
const REPLAY_GROUP: &str = "Keel-Replay-Group";
const DEAD_GROUP: &str = "Keel-Group";
const DEAD_REASON: &str = "Keel-Reason";
const DEAD_ATTEMPTS: &str = "Keel-Attempts";

fn broker(e: impl std::fmt::Display) -> BusError {
    BusError::Broker(sanitize(&e.to_string()))
}

/// A publish that got no confirmation (the connection broke, or JetStream did not answer in
/// time), found no stream listening (`no stream found for given subject`: JetStream is off, as
/// in the seconds of a server's graceful shutdown, since Keel made the stream before its first
/// publish) or was refused for too many unacknowledged publishes says the broker is away or
/// busy, not that the message is bad: the outbox then pauses instead of spending the row's
/// attempts. Any other refusal is the broker's answer about this message.
fn publish_error(e: jetstream::context::PublishError) -> BusError {
    use jetstream::context::PublishErrorKind;
    match e.kind() {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            BusError::Unavailable(sanitize(&format!("no confirmation from JetStream: {e}")))
        }
        PublishErrorKind::StreamNotFound | PublishErrorKind::MaxAckPending => {
            BusError::Unavailable(sanitize(&format!("JetStream is not taking publishes: {e}")))
        }
        _ => broker(e),
    }
}

/// Creating a stream failed: unreachable when JetStream did not answer, else the broker's answer.
fn stream_error(e: jetstream::context::CreateStreamError) -> BusError {
    use jetstream::context::CreateStreamErrorKind;
    match e.kind() {
        CreateStreamErrorKind::JetStreamUnavailable | CreateStreamErrorKind::TimedOut => {
            BusError::Unavailable(sanitize(&format!("JetStream did not answer: {e}")))
        }
        _ => broker(e),
    }
}

fn stream_name(topic: &str) -> String {
    topic.replace('.', "_")
}

/// The wait before reconnection attempt `attempts` (1-based): none for the first, then 100 ms
/// doubling to 1 s with equal jitter (jitter spreads a fleet's reconnections; the half-base
/// floor keeps a lone client from dialling in a tight loop). The client's default grows to 4 s,
/// so it found a returning server up to 4 s late.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
        .jitter(Jitter::Equal)
        .delay(u32::try_from(attempts - 1).unwrap_or(u32::MAX))
}

pub(super) struct Conn {
    client: async_nats::Client,
    js: jetstream::Context,
    ready: Mutex<HashSet<String>>,
}

impl Conn {
    pub(super) async fn connect(url: &str) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("keel")
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .connect(url)
            .await
            .map_err(|e| BusError::Unavailable(sanitize(&e.to_string())))?;
        let js = jetstream::new(client.clone());
        Ok(Self { client, js, ready: Mutex::new(HashSet::new()) })
    }

    pub(super) fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    pub(super) async fn close(&self) {
        let _ = self.client.drain().await;
    }

    /// The topic's stream (created, with its DLQ stream, if need be).
    async fn stream(&self, topic: &str) -> Result<stream::Stream, BusError> {
        self.ensure(topic).await?;
        self.js.get_stream(stream_name(topic)).await.map_err(broker)
    }

    /// Creates the topic's stream and its DLQ stream once per process; after that it costs a
    /// set lookup, not a round trip (publishing must not ask the server about the stream).
    async fn ensure(&self, topic: &str) -> Result<(), BusError> {
        let name = stream_name(topic);
        let known = self.ready.lock().map(|r| r.contains(topic)).unwrap_or(false);
        if known {
            return Ok(());
        }
        self.js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![topic.to_owned()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                max_age: Duration::from_secs(7 * 24 * 3600),
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(stream_error)?;
        self.js
            .get_or_create_stream(stream::Config {
                name: format!("{name}_dlq"),
                subjects: vec![format!("{topic}.dlq")],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                ..Default::default()
            })
            .await
            .map_err(stream_error)?;
        if let Ok(mut r) = self.ready.lock() {
            r.insert(topic.to_owned());
        }
        Ok(())
    }

    /// Drops `topic` from the streams known to exist: the next [`Self::ensure`] asks again.
    fn forget(&self, topic: &str) {
        if let Ok(mut r) = self.ready.lock() {
            r.remove(topic);
        }
    }

    pub(super) async fn publish(
        &self,
        topic: &str,
        envelope: &Envelope,
        payload: Vec<u8>,
        replay_group: Option<(&str, String)>,
    ) -> Result<(), BusError> {
        self.ensure(topic).await?;
        let mut headers = HeaderMap::new();
        match &replay_group {
            // A replay is a new message (the original id is inside the duplicate window).
            Some((group, msg_id)) => {
                headers.insert(MSG_ID, msg_id.as_str());
                headers.insert(REPLAY_GROUP, *group);
            }
            None => headers.insert(MSG_ID, envelope.id.as_str()),
        }
        let ack =
            self.js.publish_with_headers(topic.to_owned(), headers, payload.into()).await.map_err(publish_error)?;
        if let Err(e) = ack.await {
            if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound {
                // Made again before the next publish, should it really be gone (deleted by hand).
                self.forget(topic);
            }
            return Err(publish_error(e));
        }
        Ok(())
    }

    async fn consumer(
        &self,
        topic: &str,
        group: &str,
        options: &SubscribeOptions,
    ) -> Result<consumer::PullConsumer, BusError> {
        let stream = self.stream(topic).await?;
        let durable = group.replace('.', "_");
        stream
            .get_or_create_consumer(
                &durable,
                consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: options.ack_wait,
                    max_deliver: -1,
                    filter_subject: topic.to_owned(),
                    ..Default::default()
                },
            )
            .await
            .map_err(broker)
    }

    pub(super) async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: &SubscribeOptions,
    ) -> Result<Subscription, BusError> {
        let consumer = if options.fan_out {
            // Ephemeral: the server deletes it once no one has pulled for the expiry.
            let stream = self.stream(topic).await?;
            stream
                .create_consumer(consumer::pull::Config {
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: options.ack_wait,
                    max_deliver: -1,
                    filter_subject: topic.to_owned(),
                    deliver_policy: consumer::DeliverPolicy::New,
                    inactive_threshold: super::FAN_OUT_EXPIRY,
                    ..Default::default()
                })
                .await
                .map_err(broker)?
        } else {
            self.consumer(topic, group, options).await?
        };
        let messages =
            consumer.stream().max_messages_per_batch(usize::from(options.prefetch)).messages().await.map_err(broker)?;
        Ok(Subscription { messages, js: self.js.clone(), topic: topic.to_owned() })
    }

    pub(super) async fn lag(&self, topic: &str, group: &str) -> Result<u64, BusError> {
        let mut c = self.consumer(topic, group, &SubscribeOptions::default()).await?;
        let info = c.info().await.map_err(broker)?;
        // Not delivered yet, and delivered but not acknowledged: in progress, or waiting out
        // a retry's delay (a NAK keeps a message pending until it is acknowledged).
        Ok(info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX))
    }

    async fn dlq_stream(&self, topic: &str) -> Result<stream::Stream, BusError> {
        self.ensure(topic).await?;
        self.js.get_stream(format!("{}_dlq", stream_name(topic))).await.map_err(broker)
    }

    /// The DLQ's stored messages, oldest first, with their sequence numbers.
    async fn dead_letters(&self, topic: &str, limit: usize) -> Result<Vec<(u64, DeadLetter)>, BusError> {
        let mut s = self.dlq_stream(topic).await?;
        let state = s.info().await.map_err(broker)?.state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return Ok(out);
        }
        for seq in state.first_sequence..=state.last_sequence {
            if out.len() >= limit {
                break;
            }
            let Ok(m) = s.get_raw_message(seq).await else { continue };
            let header = |k: &str| m.headers.get(k).map(|v| v.as_str().to_owned());
            let envelope = match Envelope::from_bytes(&m.payload) {
                Ok(e) => e,
                Err(_) => continue,
            };
            out.push((
                seq,
                DeadLetter {
                    envelope,
                    group: header(DEAD_GROUP).unwrap_or_default(),
                    reason: header(DEAD_REASON).unwrap_or_default(),
                    attempts: header(DEAD_ATTEMPTS).and_then(|a| a.parse().ok()).unwrap_or(0),
                },
            ));
        }
        Ok(out)
    }

    pub(super) async fn dlq_list(&self, topic: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        Ok(self.dead_letters(topic, limit).await?.into_iter().map(|(_, d)| d).collect())
    }

    pub(super) async fn dlq_replay(&self, topic: &str, id: Option<&str>) -> Result<usize, BusError> {
        let s = self.dlq_stream(topic).await?;
        let mut n = 0;
        for (seq, d) in self.dead_letters(topic, usize::MAX).await? {
            if id.is_some_and(|id| id != d.envelope.id) {
                continue;
            }
            let payload = d.envelope.to_bytes()?;
            let msg_id = format!("{}:replay:{seq}", d.envelope.id);
            let group = (!d.group.is_empty()).then_some(d.group.as_str());
            match group {
                Some(g) => self.publish(topic, &d.envelope, payload, Some((g, msg_id))).await?,
                None => self.publish(topic, &d.envelope, payload, None).await?,
            }
            s.delete_message(seq).await.map_err(broker)?;
            n += 1;
        }
        Ok(n)
    }

    pub(super) async fn dlq_discard(&self, topic: &str, id: &str) -> Result<usize, BusError> {
        let s = self.dlq_stream(topic).await?;
        let mut n = 0;
        for (seq, d) in self.dead_letters(topic, usize::MAX).await? {
            if d.envelope.id == id {
                s.delete_message(seq).await.map_err(broker)?;
                n += 1;
            }
        }
        Ok(n)
    }

    pub(super) async fn dlq_purge(&self, topic: &str) -> Result<usize, BusError> {
        let s = self.dlq_stream(topic).await?;
        let purged = s.purge().await.map_err(broker)?.purged;
        Ok(usize::try_from(purged).unwrap_or(usize::MAX))
    }
}

pub(super) struct Subscription {
    messages: consumer::pull::Stream,
    js: jetstream::Context,
    topic: String,
}

impl Subscription {
    pub(super) async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        let m = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(broker(e))),
        };
        let attempt = m.info().map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX)).unwrap_or(1);
        let stream_seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        let replay_group = m.headers.as_ref().and_then(|h| h.get(REPLAY_GROUP)).map(|v| v.as_str().to_owned());
        let (msg, acker) = m.split();
        let payload = Envelope::from_bytes(&msg.payload);
        let acker = Acker { acker: Some(acker), js: self.js.clone(), topic: self.topic.clone(), stream_seq };
        Some(Ok(Delivery::new(payload, attempt, replay_group, BusAcker::Nats(acker))))
    }
}

pub(super) struct Acker {
    acker: Option<jetstream::message::Acker>,
    js: jetstream::Context,
    topic: String,
    /// The message's position in the topic's stream: a replay is a new message, so a replayed
    /// letter that dies again is a new dead letter, not a duplicate of the first.
    stream_seq: u64,
}

impl Acker {
    async fn send(mut self, kind: AckKind) -> Result<(), BusError> {
        match self.acker.take() {
            Some(a) => a.ack_with(kind).await.map_err(broker),
            None => Ok(()),
        }
    }

    pub(super) async fn ack(self) -> Result<(), BusError> {
        self.send(AckKind::Ack).await
    }

    /// Restarts the message's `ack_wait` (JetStream `+WPI`); may be sent any number of times.
    pub(super) async fn in_progress(&self) -> Result<(), BusError> {
        match &self.acker {
            Some(a) => a.ack_with(AckKind::Progress).await.map_err(broker),
            None => Ok(()),
        }
    }

    pub(super) async fn retry(self, delay: Duration) -> Result<(), BusError> {
        self.send(AckKind::Nak(Some(delay))).await
    }

    pub(super) async fn dead_letter(self, dead: DeadLetter) -> Result<(), BusError> {
        let mut headers = HeaderMap::new();
        // Deduplicated per delivery of one stream message (a dead-letter publish retried after
        // a lost confirmation), never across messages: the same event replayed and dead again
        // within the duplicate window must not vanish as a duplicate.
        let msg_id = format!("{}:dead:{}:{}", dead.envelope.id, dead.group, self.stream_seq);
        headers.insert(MSG_ID, msg_id.as_str());
        headers.insert(DEAD_GROUP, dead.group.as_str());
        headers.insert(DEAD_REASON, dead.reason.replace(['\r', '\n'], " ").as_str());
        headers.insert(DEAD_ATTEMPTS, dead.attempts.to_string().as_str());
        let payload = dead.envelope.to_bytes()?;
        let ack = self
            .js
            .publish_with_headers(format!("{}.dlq", self.topic), headers, payload.into())
            .await
            .map_err(broker)?;
        // If the DLQ did not confirm, `self` drops unsettled and the message comes back.
        ack.await.map_err(broker)?;
        self.send(AckKind::Term).await
    }

    fn nak_now(&mut self) {
        if let (Some(a), Ok(rt)) = (self.acker.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = a.ack_with(AckKind::Nak(None)).await;
            });
        }
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        self.nak_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_stay_within_a_second() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        for attempts in 2..200 {
            let d = reconnect_delay(attempts);
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_secs(1), "{attempts}: {d:?}");
        }
        assert!(reconnect_delay(50) >= Duration::from_millis(500), "backed off at the cap");
    }
}
