//! City Events events: organizer CRUD, publish and cancel, public listing; emits `event.*`
//! through the outbox.
//!
//! Routes (all under the paths the gateway exposes):
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /api/v1/events` | any user | a new draft (201) |
//! | `GET /api/v1/events/{id}` | anyone | public events (published, or canceled after publication); a draft only to its organizer (else 404) |
//! | `PATCH /api/v1/events/{id}` | organizer | partial update; not once canceled (409 `event_canceled`) or over (409 `event_ended`) |
//! | `POST /api/v1/events/{id}/publish` | organizer | a draft starting in the future becomes public (else 409 `not_publishable`) |
//! | `POST /api/v1/events/{id}/cancel` | organizer; moderator, admin (with a reason) | calls the event off; optional `{reason}` (≤ 500 characters) |
//! | `POST /api/v1/events/{id}/unpublish` | organizer (nobody joined); moderator, admin (with a reason) | back to draft (`event.unpublished`) |
//! | `GET /api/v1/events` | anyone | published events: `city`, `category`, `from`, `to`, `sort`, `limit`, `cursor` |
//! | `POST /api/v1/events/batch` | anyone | `{ids: […1–100]}` → `{"events": {id: event}}`, only those visible |
//! | `GET /api/v1/me/events` | any user | the caller's events, every status, newest first |
//! | `GET /api/v1/events/trending` | anyone | `limit` (1–50), `city`: events scored by distinct viewers and joiners today and yesterday (see [`trend`]) |
//! | `POST /api/v1/events/views` | the gateway | `{views: [{event_id, viewer}]}`: views to count (not exposed) |
//! | `POST /api/v1/events/suggestions` | the gateway | one person's for-you events from what they follow, live in and joined (not exposed) |
//! | `PUT /api/v1/events/{id}/cover` | organizer | a cover picture (multipart `file`: JPEG, PNG or WebP, ≤ 5 MiB), see [`covers`] |
//! | `DELETE /api/v1/events/{id}/cover` | organizer | no cover (204) |
//! | `GET /api/v1/events/{id}/cover/{hash}/{card,wide}.jpg` | anyone | a cover's 640×360 or 1280×720 JPEG, cacheable for good |
//! | `GET /api/v1/events/{id}/online-link` | organizer, moderator, admin; a user who holds a seat (joins is asked) | an online event's join link `{url}` (403 `seat_required` otherwise) |
//! | `POST /api/v1/reports`, `GET /api/v1/moderation/reports`, `POST /api/v1/moderation/reports/resolve` | any user; moderator, admin | reports to the moderators, see [`reports`] |
//!
//! Events carry a venue and an IANA `time_zone` (the bundled tz database, see
//! `cityevents_common::zone`): times are stored as UTC instants, accepted as RFC 3339 or as local
//! times in the zone, and answered both in UTC and in the zone (`starts_at_local`).
//!
//! A banned organizer's events are hidden from everyone but them and moderators: the service
//! follows `account.banned`/`account.unbanned` (consumer group `events`, with the inbox; see
//! `cityevents_common::organizer_bans`). A moderator's cancel or unpublish is recorded for auth's
//! audit log (`moderation.recorded`, in the change's transaction).
//!
//! Someone else's draft answers 404 (they may not know it exists); someone else's public event
//! answers 403 to a change. Events (`cityevents_common::catalogue`, topic `cityevents.events`,
//! keyed by event id) are enqueued in the transaction of the change: `event.published` on
//! publish, `event.updated` on a change to a published event, `event.canceled` when a published
//! event is canceled (a canceled draft was never public: nothing is sent, and it stays visible
//! to its organizer only).
//!
//! Configuration: `upstreams.joins` (Keel's HTTP client; in development
//! `http://127.0.0.1:8083`), Keel's `database.*`, `bus.*`, `outbox.*` and `security.jwt.*` (verify only:
//! `issuer` and `audience` `cityevents`, the keys auth signs with) and `app.require_verified_email`
//! (default `true`: a caller whose token does not say `email_verified` gets 403 `email_unverified`
//! when creating an event; admins are exempt).

pub mod api;
pub mod covers;
pub mod list;
pub mod metrics;
pub mod model;
pub mod reports;
pub mod store;
pub mod trend;

use keel::config::Section;
use serde::{Deserialize, Serialize};

/// The service's `app` section. The API's limits are part of its contract (see [`model`] and
/// [`api::MAX_BATCH`]), not something to tune per deployment; `search` bounds what one search
/// may cost this instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Only users whose address is verified create events. Default `true`.
    pub require_verified_email: bool,
    /// Full-text search (`GET /api/v1/events?q=`).
    pub search: SearchConfig,
    /// How long this instance keeps a trending answer (`GET /api/v1/events/trending`, per
    /// `city` and `limit`) before it sums the signals again: the query reads every signal in the
    /// window, too much for every call of a public route. `0s` keeps nothing. Default `30s`, at
    /// most `10m`.
    #[serde(with = "keel::config::duration")]
    pub trending_cache: std::time::Duration,
    /// Cover pictures: decoding and clean-up (see [`covers`]).
    pub pictures: cityevents_media::PicturesConfig,
    /// Reports to the moderators (see [`reports`]).
    pub reports: reports::ReportsConfig,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            require_verified_email: true,
            search: SearchConfig::default(),
            trending_cache: std::time::Duration::from_secs(30),
            pictures: cityevents_media::PicturesConfig::default(),
            reports: reports::ReportsConfig::default(),
        }
    }
}

impl Section for EventsConfig {
    fn validate(&self, v: &mut keel::config::Validation<'_>) {
        v.section("search", &self.search);
        v.section("pictures", &self.pictures);
        v.section("reports", &self.reports);
        if self.trending_cache > std::time::Duration::from_secs(600) {
            v.invalid("trending_cache", "must be at most 10m: trending is about the last day or two");
        }
    }
}

/// `app.search.*`: what one full-text search may cost. Searches have their own concurrency
/// limit, so however many arrive, the rest of the API keeps its database connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Searches this instance runs at once. Default `4`.
    pub max_concurrent: usize,
    /// Searches waiting for one of those; past it a search answers 503 `search-busy` at once.
    /// Default `16`.
    pub max_queue: usize,
    /// Longest wait in that queue, then 503 `search-busy`. Default `1s`.
    #[serde(with = "keel::config::duration")]
    pub queue_timeout: std::time::Duration,
    /// Longest a search statement may run before the database cuts it off (503
    /// `query-timeout`). Default `2s`.
    #[serde(with = "keel::config::duration")]
    pub timeout: std::time::Duration,
    /// Matches ranked by relevance at most: when more match, the `max_ranked` that start
    /// latest are ranked and the others left out. Default `1000`.
    pub max_ranked: u32,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            max_queue: 16,
            queue_timeout: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(2),
            max_ranked: 1000,
        }
    }
}

impl Section for SearchConfig {
    fn validate(&self, v: &mut keel::config::Validation<'_>) {
        if self.max_concurrent == 0 {
            v.invalid("max_concurrent", "must be at least 1");
        }
        if self.queue_timeout.is_zero() {
            v.invalid("queue_timeout", "must be more than 0s");
        }
        if self.timeout.is_zero() {
            v.invalid("timeout", "must be more than 0s, or a search could run for ever");
        }
        if self.max_ranked == 0 {
            v.invalid("max_ranked", "must be at least 1");
        }
    }
}

/// The migrations, one set per backend: the `events` table and its search; the shared
/// `organizer_bans` table comes in its own set, Keel's outbox/inbox tables in Keel's.
pub fn migrations() -> keel::data::Migrations {
    keel::data::migrations!()
        .with(cityevents_common::organizer_bans::migrations())
        .with(keel::events::outbox::migrations())
}

/// The service, ready for [`keel::run`] (its own binary) or the all-in-one launcher.
pub fn service() -> keel::Service<EventsConfig> {
    cityevents_common::services::EVENTS.service::<EventsConfig>(keel::build_info!()).migrations(migrations()).setup(
        |s| {
            let db = s.database()?;
            let outbox = s.outbox(&db)?;
            let jwt = cityevents_common::sessions::follow(s, cityevents_common::services::EVENTS.name, s.jwt()?)?;
            let require_verified_email = s.config().require_verified_email;
            let search = api::Searches::new(&s.config().search);
            let joins = cityevents_common::upstream::client(s, &cityevents_common::services::JOINS)?;
            // Banned organizers' events are hidden (cityevents_common::organizer_bans).
            let handler = cityevents_common::organizer_bans::OrganizerBansHandler::new(db.clone());
            let bus = s.bus()?;
            let accounts = cityevents_common::catalogue::ACCOUNTS_TOPIC;
            s.consume(keel::events::Consumer::new(bus, accounts, "events", handler).inbox(db.clone()))?;
            // Joins are trend signals (see `trend`); the writes are idempotent, no inbox needed.
            let salts = trend::Salts::default();
            let joins_topic = cityevents_common::catalogue::JOINS_TOPIC;
            let signals = trend::JoinSignals::new(db.clone(), salts.clone());
            let joins_bus = s.bus()?;
            s.consume(
                keel::events::Consumer::new(joins_bus, joins_topic, "events-trend", signals).depends_on(db.clone()),
            )?;
            let pruned = db.clone();
            s.worker(keel::workers::Worker::periodic("signals-prune", trend::PRUNE_EVERY, move |_ctx| {
                trend::prune(pruned.clone())
            }))?;
            let metrics = metrics::EventMetrics::register(s.metrics())?;
            let trending = trend::TrendingCache::new(s.config().trending_cache);
            // Cover pictures in the object store (`storage.*`), swept of what no event shows.
            let pictures = s.config().pictures.clone();
            let objects = s.storage()?;
            let covers = cityevents_media::Pictures::new(objects.clone(), &pictures);
            let swept = db.clone();
            s.worker(keel::workers::Worker::periodic("covers-sweep", pictures.sweep_every, move |_ctx| {
                covers::sweep(swept.clone(), objects.clone(), pictures.sweep_grace)
            }))?;
            let reports = s.config().reports.clone();
            let state = api::AppState {
                db,
                outbox,
                require_verified_email,
                joins,
                metrics,
                search,
                salts,
                trending,
                covers,
                reports,
            };
            Ok(api::router(state).layer(jwt.extension()))
        },
    )
}
