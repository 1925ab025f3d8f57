//! City Events notifier: turns `join.*` and `event.canceled` into per-user notifications.
//!
//! * **Consumers** (group `notifier`, with Keel's inbox): every `join.*` on
//!   [`catalogue::JOINS_TOPIC`] becomes a notification for the participant; `event.canceled` on
//!   [`catalogue::EVENTS_TOPIC`] becomes one for the organizer. The notification is written in the
//!   inbox transaction ([`keel::events::Message::tx`]), so a redelivered message is never applied
//!   twice. A payload that cannot be decoded, an unknown type on the joins topic or an unsupported
//!   schema version fails permanently and lands in `<topic>.dlq`.
//! * **API**: `GET /api/v1/me/notifications` (keyset-paged, newest first, `?unread=true`) and
//!   `POST /api/v1/me/notifications/{id}/read` (204, idempotent; 404 for someone else's).
//!
//! Config (`app`): `concurrency` (messages handled at once per consumer, default 8) and
//! `max_attempts` (deliveries of a message failing for a reason of its own before it is
//! dead-lettered, default 16, Keel's default: more than half an hour of retries). A database
//! outage spends no attempt: the consumers pause until the database is back. The topics are the
//! catalogue's; `bus.namespace` keeps environments (and test runs) apart on one broker.

mod api;
mod consumers;

use cityevents_common::catalogue;
use keel::config::{Section, Validation};
use keel::events::{Consumer, ConsumerOptions};
use serde::{Deserialize, Serialize};

pub use consumers::{EventsHandler, JoinsHandler, notification_text};

/// The consumer group of both consumers.
pub const GROUP: &str = "notifier";

/// The notifier's `app` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifierConfig {
    /// Messages handled at once by each consumer. Default `8`.
    pub concurrency: usize,
    /// Deliveries of a message that keeps failing for a reason of its own before it goes to the
    /// dead-letter queue (a database outage pauses the consumers and spends none). Default `16`:
    /// retries 1 s apart doubling to 5 min, more than half an hour in all.
    pub max_attempts: u32,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        let consumer = ConsumerOptions::default();
        Self { concurrency: consumer.concurrency, max_attempts: consumer.max_attempts }
    }
}

impl Section for NotifierConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if !(1..=256).contains(&self.concurrency) {
            v.invalid("concurrency", "must be between 1 and 256");
        }
        if !(1..=100).contains(&self.max_attempts) {
            v.invalid("max_attempts", "must be between 1 and 100");
        }
    }
}

/// The notifier's migrations (its table plus Keel's outbox/inbox tables), one set per backend.
pub fn migrations() -> keel::data::Migrations {
    keel::data::Migrations::new()
        .postgres(sqlx::migrate!("migrations/postgres"))
        .mysql(sqlx::migrate!("migrations/mysql"))
        .sqlite(sqlx::migrate!("migrations/sqlite"))
}

/// The service, ready for [`keel::run`] (its own binary) or the all-in-one launcher.
pub fn service() -> keel::Service<NotifierConfig> {
    keel::Service::new(keel::build_info!())
        .name(cityevents_common::services::NOTIFIER.0)
        .config_defaults(cityevents_common::services::defaults(cityevents_common::services::NOTIFIER))
        .with_config::<NotifierConfig>()
        .migrations(migrations())
        .setup(|s| {
            let db = s.database()?;
            let bus = s.bus()?;
            let options =
                ConsumerOptions::default().concurrency(s.config().concurrency).max_attempts(s.config().max_attempts);
            s.consume(
                Consumer::new(bus.clone(), catalogue::JOINS_TOPIC, GROUP, JoinsHandler::new(db.clone()))
                    .inbox(db.clone())
                    .options(options.clone()),
            )?;
            s.consume(
                Consumer::new(bus, catalogue::EVENTS_TOPIC, GROUP, EventsHandler::new(db.clone()))
                    .inbox(db.clone())
                    .options(options),
            )?;
            let jwt = s.jwt()?;
            Ok(api::router(db).layer(jwt.extension()))
        })
}
