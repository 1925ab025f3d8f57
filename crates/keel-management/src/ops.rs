//! What the console acts on beyond this crate's own state: a service's message consumers and
//! the dead letters of their topics. keel-app implements [`ConsumerOps`] over `keel-events` for
//! each consumer a service runs and hands them to [`Admin::with_consumers`](crate::Admin::with_consumers),
//! so this crate needs no broker client.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;

/// A boxed future of a broker operation; the error is a message for the operator.
pub type OpsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// A dead letter as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    /// The event's id (what replay and discard name).
    pub id: String,
    /// Its type.
    pub kind: String,
    /// When it happened (RFC 3339), as the event says.
    pub time: String,
    /// The consumer group that gave up on it.
    pub group: String,
    /// Why (the handler's last error, sanitized).
    pub reason: String,
    /// Deliveries made before giving up.
    pub attempts: u32,
    /// The event's data, as indented JSON, cut at [`MAX_DATA`] bytes.
    pub data: String,
}

/// The most bytes of an event's data the console shows.
pub const MAX_DATA: usize = 4096;

/// One consumer of the service, as the console pauses it and reads its topic's dead letters.
pub trait ConsumerOps: Send + Sync + 'static {
    /// The topic it consumes.
    fn topic(&self) -> &str;
    /// Its consumer group.
    fn group(&self) -> &str;
    /// Why an operator paused it, when one did.
    fn paused(&self) -> Option<String>;
    /// Pauses it (it takes no new message); whether it was running.
    fn pause(&self, why: &str) -> bool;
    /// Resumes it; whether it was paused.
    fn resume(&self) -> bool;
    /// Up to `limit` dead letters of its topic, oldest first.
    fn dead_letters(&self, limit: usize) -> OpsFuture<'_, Vec<Letter>>;
    /// Replays its topic's dead letters (all, or the one with event id `id`) to the groups that
    /// gave up on them; how many.
    fn replay(&self, id: Option<&str>) -> OpsFuture<'_, usize>;
    /// Deletes the dead letter `id` of its topic without replaying it (every group's copy); how
    /// many.
    fn discard(&self, id: &str) -> OpsFuture<'_, usize>;
    /// Deletes every dead letter of its topic; how many.
    fn purge(&self) -> OpsFuture<'_, usize>;
}

/// A product figure: how often something users do happened lately (`sign-ups`, `joins`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Figure {
    /// What is counted, for people (`mails failed`).
    pub name: String,
    /// In the last hour.
    pub last_hour: u64,
    /// In the last 24 hours.
    pub last_day: u64,
}

/// What a service counts of its product for the operator page (City Events: sign-ups, joins,
/// promotions, mails sent and failed). Read at most once a minute per page
/// ([`FIGURES_EVERY`](crate::status::FIGURES_EVERY)) and given [`FIGURES_TIMEOUT`](crate::status::FIGURES_TIMEOUT).
pub trait ProductFigures: Send + Sync + 'static {
    /// The figures now; the error is a message for the operator.
    fn figures(&self) -> OpsFuture<'_, Vec<Figure>>;
}

/// One field-encryption data key as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRow {
    /// Its id (`v1:<kid>:…`).
    pub kid: String,
    /// `configuration` or `database`.
    pub source: String,
    /// `active`, `pending`, `superseded` or `retired`.
    pub state: String,
    /// When it became (or becomes) active, RFC 3339 (database keys).
    pub active_from: Option<String>,
    /// Values encrypted with it at the last count (none before the first).
    pub values: Option<u64>,
}

/// A service's field-encryption keys and the progress of re-encryption.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeysView {
    /// The key new values are encrypted with.
    pub active: String,
    /// Every key.
    pub keys: Vec<KeyRow>,
    /// The encrypted columns (`table.column`).
    pub columns: Vec<String>,
    /// Values still on an older key.
    pub pending_values: Option<u64>,
    /// Values no key decrypts, at the last pass.
    pub unreadable_values: u64,
    /// Values this instance moved to the active key.
    pub reencrypted: u64,
    /// When the values were last counted, RFC 3339.
    pub counted_at: Option<String>,
    /// When the next scheduled rotation is due, RFC 3339 (none: only on request).
    pub next_rotation_at: Option<String>,
}

/// A service's rotating data keys (keel-app implements it over `keel_security::keys`).
pub trait DataKeyOps: Send + Sync + 'static {
    /// The keys and the progress as this instance last saw them.
    fn view(&self) -> KeysView;
    /// Makes a new data key now (active once every instance knows it); its id.
    fn rotate(&self) -> OpsFuture<'_, String>;
}
