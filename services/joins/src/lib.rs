//! City Events joins: capacity under concurrency, FIFO waitlists, idempotent joins; consumes
//! `event.*`, emits `join.*`.
//!
//! * **Capacity** is enforced in one transaction per join: the event's `event_capacity` row is
//!   locked first (`SELECT … FOR UPDATE` on PostgreSQL and MySQL; on SQLite the transaction
//!   starts with a write to that row, so the write lock is taken up front), then the join is
//!   confirmed or waitlisted, the idempotency record stored and `join.*` enqueued in the outbox
//!   before commit. Every change to an event's joins takes the same lock, so the counters on the
//!   row are exact and the waitlist is served strictly first in, first out.
//! * **Idempotency**: `POST …/join` needs an `Idempotency-Key`; a retry with the same key by the
//!   same user answers the stored status and body, even after the state changed.
//! * **Events in** (`cityevents.events`, group `joins`, with an inbox so a redelivery is applied
//!   once): `event.published` creates the capacity row, `event.updated` changes it (a larger
//!   capacity promotes waitlisted users), `event.canceled` cancels every join.
//!
//! See `docs/cityevents.md` for the platform contract.

mod api;
mod consumer;
mod error;
mod feeds;
pub mod metrics;
mod store;

use std::time::Duration;

use keel::config::{Section, Validation};
use serde::{Deserialize, Serialize};

pub use consumer::EventsHandler;

/// The joins service's `app` section (env `CITYEVENTS_JOINS__APP__…`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct JoinsConfig {
    /// How long an `Idempotency-Key` is remembered (a retry after that is a new request).
    /// Default `24h`; 1 minute to 30 days.
    #[serde(with = "keel::config::duration")]
    pub idempotency_ttl: Duration,
    /// `event.*` messages handled at once. Default `1`. More handles several events in
    /// parallel; snapshots carry the event's version, so one arriving after a newer one is
    /// ignored either way. 1 to 256.
    pub consumer_concurrency: usize,
    /// The topic `event.*` is consumed from. Default `cityevents.events` (the catalogue's); only
    /// isolated test or staging set-ups change it.
    pub events_topic: String,
    /// The topic `join.*` is published to. Default `cityevents.joins` (the catalogue's).
    pub joins_topic: String,
    /// Joins changed per transaction when an event is canceled or its capacity grows. The
    /// message's own transaction changes this many; the settle worker does the rest, batch by
    /// batch, so no transaction or lock grows with an event's size. Default `500`; 1 to 10000.
    pub change_batch: usize,
    /// How often the settle worker looks for events left with joins to change. Default `5s`;
    /// 50ms to 10m.
    #[serde(with = "keel::config::duration")]
    pub settle_interval: Duration,
}

impl Default for JoinsConfig {
    fn default() -> Self {
        Self {
            idempotency_ttl: Duration::from_secs(24 * 3600),
            consumer_concurrency: 1,
            events_topic: cityevents_common::catalogue::EVENTS_TOPIC.to_owned(),
            joins_topic: cityevents_common::catalogue::JOINS_TOPIC.to_owned(),
            change_batch: 500,
            settle_interval: Duration::from_secs(5),
        }
    }
}

impl Section for JoinsConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if !(Duration::from_secs(60)..=Duration::from_secs(30 * 24 * 3600)).contains(&self.idempotency_ttl) {
            v.invalid("idempotency_ttl", "must be between 1m and 30d");
        }
        if !(1..=256).contains(&self.consumer_concurrency) {
            v.invalid("consumer_concurrency", "must be between 1 and 256");
        }
        if !(1..=10_000).contains(&self.change_batch) {
            v.invalid("change_batch", "must be between 1 and 10000");
        }
        if !(Duration::from_millis(50)..=Duration::from_secs(600)).contains(&self.settle_interval) {
            v.invalid("settle_interval", "must be between 50ms and 10m");
        }
        for (key, topic) in [("events_topic", &self.events_topic), ("joins_topic", &self.joins_topic)] {
            if let Err(e) = keel::events::validate_name(topic) {
                v.invalid(key, e.to_string());
            }
        }
    }
}

/// The service's migrations, one set per backend; the shared `organizer_bans` table comes in its own
/// set, Keel's outbox and inbox tables in Keel's.
pub fn migrations() -> keel::data::Migrations {
    keel::data::migrations!()
        .with(cityevents_common::organizer_bans::migrations())
        .with(keel::events::outbox::migrations())
}

/// The service, ready for [`keel::run`] (its own binary) or the all-in-one launcher.
pub fn service() -> keel::Service<JoinsConfig> {
    cityevents_common::services::JOINS.service::<JoinsConfig>(keel::build_info!()).migrations(migrations()).setup(|s| {
        let cfg = s.config().clone();
        let db = s.database()?;
        s.product_figures(cityevents_common::figures::Counted::new(
            db.clone(),
            vec![("joins", "SELECT COUNT(*) FROM joins WHERE created_at >= $1")],
        ));
        let bus = s.bus()?;
        let outbox = s.outbox(&db)?;
        let metrics = metrics::JoinMetrics::register(s.metrics())?;
        let handler = EventsHandler::new(outbox.clone(), cfg.joins_topic.clone())
            .change_batch(cfg.change_batch)
            .metrics(metrics.clone());
        // Keel's retry defaults (16 deliveries, 1 s doubling to 5 min: over half an hour)
        // outlast an event that arrives before its `event.published`; a database outage
        // pauses the consumer and spends no attempt.
        let options = keel::events::ConsumerOptions::default().concurrency(cfg.consumer_concurrency);
        s.consume(
            keel::events::Consumer::new(bus, cfg.events_topic.clone(), "joins", handler)
                .inbox(db.clone())
                .options(options),
        )?;
        // A banned organizer's events take no new joins (cityevents_common::organizer_bans).
        let bans = cityevents_common::organizer_bans::OrganizerBansHandler::new(db.clone());
        let accounts = cityevents_common::catalogue::ACCOUNTS_TOPIC;
        let accounts_bus = s.bus()?;
        s.consume(keel::events::Consumer::new(accounts_bus, accounts, "joins", bans).inbox(db.clone()))?;
        s.worker(store::idempotency_pruner(db.clone(), cfg.idempotency_ttl))?;
        s.worker(store::settle_pending(
            db.clone(),
            (outbox.clone(), cfg.joins_topic.clone()),
            i64::try_from(cfg.change_batch).unwrap_or(i64::MAX),
            cfg.settle_interval,
            metrics.clone(),
        ))?;
        let jwt = cityevents_common::sessions::follow(s, cityevents_common::services::JOINS.name, s.jwt()?)?;
        let state = api::Shared::new(db, outbox, &cfg, metrics);
        Ok(api::router(state).layer(jwt.extension()))
    })
}

#[cfg(test)]
mod tests {
    use keel::app::Loader;
    use keel::config::Profile;

    use super::JoinsConfig;

    fn load(vars: &[(&str, &str)]) -> Result<JoinsConfig, String> {
        Loader::new(cityevents_common::services::JOINS.name, Profile::Test)
            .env(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
            .load::<JoinsConfig>()
            .map(|l| l.config.app.clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_limits() {
        let cfg = load(&[]).unwrap();
        assert_eq!(cfg.idempotency_ttl, std::time::Duration::from_secs(24 * 3600));
        assert_eq!(cfg.events_topic, "cityevents.events");
        assert_eq!(cfg.joins_topic, "cityevents.joins");
        let set = |k: &str, v: &str| load(&[(&format!("CITYEVENTS_JOINS__APP__{k}"), v)]);
        assert!(set("IDEMPOTENCY_TTL", "1h").is_ok());
        assert_eq!((cfg.change_batch, cfg.settle_interval), (500, std::time::Duration::from_secs(5)));
        for (k, v) in [
            ("IDEMPOTENCY_TTL", "1s"),
            ("CONSUMER_CONCURRENCY", "0"),
            ("EVENTS_TOPIC", "a b"),
            ("CHANGE_BATCH", "0"),
            ("SETTLE_INTERVAL", "1ms"),
        ] {
            let err = set(k, v).err().unwrap_or_default();
            assert!(err.contains(&k.to_lowercase()), "{k}={v}: {err}");
        }
    }
}
