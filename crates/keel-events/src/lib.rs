//! Events: a message bus with four backends, a transactional outbox, and idempotent consumers
//! with retries and dead-letter queues.
//!
//! * [`Envelope`] — CloudEvents attributes plus schema version, `traceparent` and `request_id`.
//! * [`Bus`] — publish with broker confirmation, subscribe as a consumer group, dead letters.
//!   Backends: in-process (default, feature `events`), NATS JetStream (`nats`), RabbitMQ
//!   (`rabbitmq`), Kafka (`kafka`). All four give the same semantics: at-least-once delivery, ack / retry with a
//!   delay / dead-letter, a delivery dropped without settling is redelivered, and dead letters go
//!   to `<topic>.dlq` with the reason and attempt count.
//! * [`outbox::Outbox`] (with `sql`) — `enqueue(&mut tx, …)` in the same transaction as the state
//!   change; a relay publishes with confirms, retries with clamped jittered backoff, marks rows
//!   dead after `outbox.max_attempts`, and is safe to run on several instances.
//! * [`consumer::Consumer`] — a handler per topic and group, bounded concurrency, retries then
//!   DLQ, an inbox table (with `sql`) so redelivery never applies an effect twice, the producer's
//!   trace continued and its request id on every log line, graceful stop.
//!
//! See `docs/events.md` for configuration, metrics and the `dlq` command.
//!
//! This is `keel-events`, re-exported by `keel` as `keel::events`. Without the `events` feature
//! it holds just the `bus` and `outbox` sections, so a config file loads the same in every build.

#![forbid(unsafe_code)]

#[cfg(feature = "events")]
mod bus;
mod config;

#[cfg(feature = "events")]
pub use bus::*;
pub use config::{BusBackend, BusConfig, KafkaConfig, KafkaSecurity, OutboxConfig, SaslMechanism};
