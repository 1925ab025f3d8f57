//! City Events notifier: turns `join.*` and `event.*` into per-user notifications.
//!
//! * **Consumers** (group `notifier`, with Keel's inbox): every `join.*` on
//!   [`catalogue::JOINS_TOPIC`] becomes a notification for the participant; `event.canceled` on
//!   [`catalogue::EVENTS_TOPIC`] becomes one for the organizer. The notification is written in the
//!   inbox transaction ([`keel::events::Message::tx`]), so a redelivered message is never applied
//!   twice. A payload that cannot be decoded, an unknown type on the joins topic or an unsupported
//!   schema version fails permanently and lands in `<topic>.dlq`. Changes of an event's time or
//!   venue reach its participants, and its organizer gets a digest of joins and leaves every
//!   `app.digest_interval` (`activity.rs`). Who holds a seat is reminded before the event
//!   starts, exactly once per reminder ([`reminders`]).
//! * **API**: `GET /api/v1/me/notifications` (keyset-paged, newest first, `?unread=true`) and
//!   `POST /api/v1/me/notifications/{id}/read` (204, idempotent; 404 for someone else's).
//!
//! * **Mail** ([`mail`]): a canceled event, a waitlist promotion and a removal also request a
//!   mail (through the notifier's outbox, in the same inbox transaction, to
//!   [`catalogue::MAIL_TOPIC`]); auth requests account mail there too. The mail consumer (group
//!   `notifier-mail`) renders each request and sends it over SMTP or, in development, into
//!   `data/mail/`. `account.contact` on [`catalogue::ACCOUNTS_TOPIC`] tells it each user's
//!   address (stored encrypted: `security.encryption.*`). `GET`/`PUT
//!   /api/v1/me/mail-preferences` turn each kind of non-security mail off or on.
//!
//! Config (`app`): `concurrency` (messages handled at once per consumer, default 8),
//! `max_attempts` (deliveries of a message failing for a reason of its own before it is
//! dead-lettered, default 16, Keel's default: more than half an hour of retries), `mail.*`
//! ([`mail::MailConfig`]) and `reminders.*` ([`reminders::RemindersConfig`]). A database outage spends no attempt: the consumers pause until the
//! database is back, and the mail consumer pauses likewise while the mail server cannot be
//! reached. The topics are the catalogue's; `bus.namespace` keeps environments (and test runs)
//! apart on one broker.

mod activity;
mod api;
mod consumers;
mod follows;
pub mod mail;
pub mod metrics;
pub mod reminders;
mod store;

use std::time::Duration;

use cityevents_common::catalogue;
use keel::config::{Profile, Section, Validation};
use keel::events::{Consumer, ConsumerOptions};
use keel::workers::Worker;
use serde::{Deserialize, Serialize};

pub use consumers::{EventsHandler, JoinsHandler, ReportsHandler, notification_text, report_text};
pub use mail::handler::{Contacts, ContactsHandler, MailHandler};

/// The consumer group of the notification and contact consumers.
pub const GROUP: &str = "notifier";
/// The consumer group of the mail consumer.
pub const MAIL_GROUP: &str = "notifier-mail";
/// The consumer group of the moderation topic's `report.resolved` (the reporters are told).
pub const REPORTS_GROUP: &str = "notifier-reports";

/// How often handled mail requests older than their retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

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
    /// How long joins and leaves are gathered before the organizer is told of them in one
    /// notification per event. Default `10m` (1s–1d).
    #[serde(with = "keel::config::duration")]
    pub digest_interval: Duration,
    /// Mail delivery.
    pub mail: mail::MailConfig,
    /// Reminders before an event (`reminders.rs`).
    pub reminders: reminders::RemindersConfig,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        let consumer = ConsumerOptions::default();
        Self {
            concurrency: consumer.concurrency,
            max_attempts: consumer.max_attempts,
            digest_interval: Duration::from_secs(600),
            mail: mail::MailConfig::default(),
            reminders: reminders::RemindersConfig::default(),
        }
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
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&self.digest_interval) {
            v.invalid("digest_interval", "must be between 1s and 1d");
        }
        self.mail.validate(v);
        self.reminders.validate(v);
    }
}

/// The notifier's migrations, one set per backend (Keel's outbox and inbox tables come in Keel's set).
pub fn migrations() -> keel::data::Migrations {
    keel::data::migrations!().with(keel::events::outbox::migrations()).with(keel::security::keys::migrations())
}

/// The service, ready for [`keel::run`] (its own binary) or the all-in-one launcher.
pub fn service() -> keel::Service<NotifierConfig> {
    cityevents_common::services::NOTIFIER
        .service::<NotifierConfig>(keel::build_info!())
        .migrations(migrations())
        .rotates_data_keys([("mail_contacts", "user_id", "email_ciphertext")])
        .setup(setup)
}

fn setup(s: &mut keel::Setup<NotifierConfig>) -> Result<axum::Router, keel::app::SetupError> {
    let cfg = s.config().clone();
    if s.profile() == Profile::Production && cfg.mail.transport == mail::Transport::File {
        return Err(Box::new(keel::config::ConfigError::invalid(
            "app.mail.transport",
            "file keeps mail on this machine's disk; production needs smtp (app.mail.smtp.host)",
        )));
    }
    let db = s.database()?;
    s.product_figures(cityevents_common::figures::Counted::new(
        db.clone(),
        vec![
            ("promotions", "SELECT COUNT(*) FROM notifications WHERE kind = 'join.promoted' AND created_at >= $1"),
            ("mails sent", "SELECT COUNT(*) FROM mail_log WHERE outcome = 'sent' AND created_at >= $1"),
            ("mails failed", "SELECT COUNT(*) FROM mail_failures WHERE created_at >= $1"),
        ],
    ));
    let bus = s.bus()?;
    let outbox = s.outbox(&db)?;
    let keyring = s.data_keys(&db)?;
    let mailer = mail::Mailer::new(&cfg.mail, s.metrics(), !s.checking()).map_err(|e| match e {
        // Its message names the key (`app.mail.<key>: …`).
        mail::MailError::Config(m) => {
            Box::new(keel::config::ConfigError::invalid("app.mail", m)) as keel::app::SetupError
        }
        other => other.to_string().into(),
    })?;
    let contacts = Contacts::new(db.clone(), keyring);
    let sent = metrics::NotificationMetrics::register(s.metrics())?;
    let options = ConsumerOptions::default().concurrency(cfg.concurrency).max_attempts(cfg.max_attempts);
    s.consume(
        Consumer::new(
            bus.clone(),
            catalogue::JOINS_TOPIC,
            GROUP,
            JoinsHandler::new(db.clone()).mail(outbox.clone()).metrics(sent.clone()),
        )
        .inbox(db.clone())
        .options(options.clone()),
    )?;
    s.consume(
        Consumer::new(
            bus.clone(),
            catalogue::EVENTS_TOPIC,
            GROUP,
            EventsHandler::new(db.clone()).metrics(sent.clone()),
        )
        .inbox(db.clone())
        .options(options.clone()),
    )?;
    s.consume(
        Consumer::new(
            bus.clone(),
            catalogue::MODERATION_TOPIC,
            REPORTS_GROUP,
            ReportsHandler::new(db.clone(), sent.clone()),
        )
        .inbox(db.clone())
        .options(options.clone()),
    )?;
    s.consume(
        Consumer::new(bus.clone(), catalogue::ACCOUNTS_TOPIC, GROUP, ContactsHandler::new(contacts.clone()))
            .inbox(db.clone())
            .options(options.clone()),
    )?;
    s.consume(
        Consumer::new(
            bus,
            catalogue::MAIL_TOPIC,
            MAIL_GROUP,
            MailHandler::new(contacts.clone(), mailer.clone()).metrics(sent.clone()),
        )
        .depends_on(db.clone())
        .depends_on(mailer.health())
        .options(options),
    )?;
    let c = contacts.clone();
    s.worker(Worker::periodic("mail-log-prune", PRUNE_EVERY, move |_ctx| prune(c.clone())))?;
    s.worker(activity::digest_worker(db.clone(), cfg.digest_interval, sent.clone()))?;
    s.worker(activity::notice_worker(db.clone(), outbox.clone(), sent.clone()))?;
    s.worker(reminders::worker(db.clone(), outbox, cfg.reminders.clone(), sent))?;
    let jwt = cityevents_common::sessions::follow(s, cityevents_common::services::NOTIFIER.name, s.jwt()?)?;
    Ok(api::router(db, contacts).layer(jwt.extension()))
}

/// Forgets old handled mail requests. Best effort: a failure is logged and retried next round.
async fn prune(contacts: Contacts) -> Result<(), keel::workers::RunError> {
    if !contacts.db().is_available() {
        return Ok(());
    }
    match contacts.prune().await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(deleted = n, "forgot old handled mail requests"),
        Err(e) => tracing::warn!(error = %e, "pruning the mail log failed"),
    }
    Ok(())
}
