//! What is trending, and what suits one person.
//!
//! **Signals.** A view (sent by the gateway in batches, `POST /api/v1/events/views`) or a join
//! (`join.confirmed` / `join.waitlisted` on the joins topic, consumer group `events-trend`) is
//! one row of `event_signals`: event, UTC day, kind and actor. The actor is a
//! salted SHA-256 of who it was (a user id, or for an anonymous viewer the address the gateway
//! saw), so a person counts once per event, kind and day however often they reload or leave and
//! join again: one client cannot inflate an event. The day's salt is random, shared by every
//! instance through `signal_salts`, and deleted once the day is over; from then on that day's
//! actors cannot be linked to anyone.
//!
//! **Trending** (`GET /api/v1/events/trending`): published events that have not ended, scored by
//! distinct viewers plus [`JOIN_WEIGHT`] × distinct joiners over [`WINDOW_DAYS`] UTC days (today
//! and yesterday), highest first; events nobody looked at are left out.
//!
//! **Suggestions** (`POST /api/v1/events/suggestions`): published events that have not ended
//! by organizers the person follows (scored 4), in their home city (2) or in the categories of
//! events they joined (1), best first, then soonest; the gateway gathers those inputs from the
//! services that own them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::response::IntoResponse as _;
use cityevents_api::events::{Event as EventView, EventList, SuggestionRequest, ViewBatch};
use cityevents_common::catalogue::{JoinConfirmed, JoinWaitlisted};
use cityevents_common::time::{now, to_micros};
use cityevents_common::validate;
use http::StatusCode;
use keel::data::{DataError, Db};
use keel::events::{Event as _, Failure, Handler, Message};
use keel::http::Problem;
use keel::http::extract::{Json, Query};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::api::AppState;
use crate::store;

/// A view's kind in `event_signals`.
pub const VIEW: i64 = 1;
/// A join's kind.
pub const JOIN: i64 = 2;
/// What one joiner weighs against one viewer.
pub const JOIN_WEIGHT: i64 = 3;
/// The trending window: today and the days before it, in UTC days.
pub const WINDOW_DAYS: i64 = 2;
/// Most views one batch carries.
pub const MAX_VIEWS: usize = cityevents_api::limits::MAX_VIEW_BATCH;
/// Longest viewer key the gateway sends.
const MAX_VIEWER: usize = 100;
/// How often old signals and salts are deleted.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

const DAY_MICROS: i64 = 86_400_000_000;

/// The UTC day of `micros`.
pub fn day_of(micros: i64) -> i64 {
    micros.div_euclid(DAY_MICROS)
}

/// The salted actor hash of `who` for one event and kind: 32 hex characters. The event and
/// kind are in it so that one person's rows for different events (or their view and their join
/// of one event) share nothing: a row cannot be tied to the same person's other rows.
fn actor(salt: &str, event: &uuid::Uuid, kind: i64, who: &str) -> String {
    let digest = Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update([0])
        .chain_update(event.as_bytes())
        .chain_update(kind.to_be_bytes())
        .chain_update(who.as_bytes())
        .finalize();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The day's salt, kept by this instance once read.
#[derive(Clone, Default)]
pub struct Salts(Arc<Mutex<Option<(i64, String)>>>);

impl Salts {
    /// Today's salt (`day` is today): the one this instance holds, the one stored, or a new one
    /// (the first instance to store it wins; the rest read it).
    pub async fn today(&self, db: &Db, day: i64) -> Result<String, DataError> {
        if let Some(salt) = self.held(day) {
            return Ok(salt);
        }
        let fresh: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
        let salt = store::day_salt(db, day, &fresh).await?;
        if let Ok(mut g) = self.0.lock() {
            *g = Some((day, salt.clone()));
        }
        Ok(salt)
    }

    /// An earlier day's salt while it is still stored; never made anew (a day that is over
    /// gets no new salt: its people would count again under it).
    pub async fn earlier(&self, db: &Db, day: i64) -> Result<Option<String>, DataError> {
        match self.held(day) {
            Some(salt) => Ok(Some(salt)),
            None => store::find_salt(db, day).await,
        }
    }

    fn held(&self, day: i64) -> Option<String> {
        self.0.lock().ok().and_then(|g| g.clone()).filter(|(d, _)| *d == day).map(|(_, salt)| salt)
    }
}

/// `POST /api/v1/events/views` (the gateway's, not exposed): `{views: [{event_id, viewer}]}`,
/// 1–500 views. Each distinct viewer counts once per event and day; a view of an event that is
/// not public is stored but never counted (the trending query reads published events only), and
/// pruned with the rest. 204.
pub async fn views(State(st): State<AppState>, Json(body): Json<ViewBatch>) -> Result<StatusCode, Problem> {
    if body.views.is_empty() || body.views.len() > MAX_VIEWS {
        return Err(validate::invalid("views", &format!("must hold 1 to {MAX_VIEWS} views")));
    }
    let now = to_micros(now());
    let day = day_of(now);
    let salt = st.salts.today(&st.db, day).await?;
    let mut rows = Vec::with_capacity(body.views.len());
    for v in &body.views {
        let viewer = validate::text("viewer", &v.viewer, MAX_VIEWER)?;
        rows.push((v.event_id, day, VIEW, actor(&salt, &v.event_id, VIEW, &viewer)));
    }
    store::record_signals(&st.db, &rows).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Most trending answers kept at once (one per `city` and `limit` asked); past it the oldest
/// half is dropped.
const CACHED: usize = 256;

/// What a trending answer is asked by: the city's key and the limit.
type TrendingKey = (Option<String>, u32);

/// The answers kept, each with when it was made.
type Kept = std::collections::HashMap<TrendingKey, (std::time::Instant, Arc<EventList>)>;

/// Trending answers by [`TrendingKey`], each kept `ttl`.
#[derive(Clone)]
pub struct TrendingCache {
    ttl: Duration,
    kept: Arc<Mutex<Kept>>,
}

impl TrendingCache {
    /// A cache keeping each answer `ttl` (`0s`: none).
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, kept: Arc::default() }
    }

    fn get(&self, key: &TrendingKey) -> Option<Arc<EventList>> {
        let kept = self.kept.lock().ok()?;
        kept.get(key).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, list)| list.clone())
    }

    fn put(&self, key: TrendingKey, list: Arc<EventList>) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut kept) = self.kept.lock() else { return };
        if kept.len() >= CACHED {
            kept.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if kept.len() >= CACHED {
                kept.clear();
            }
        }
        kept.insert(key, (std::time::Instant::now(), list));
    }
}

/// `?limit=&city=` of the trending list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrendingParams {
    limit: Option<String>,
    city: Option<String>,
}

/// `GET /api/v1/events/trending?limit=&city=`: up to `limit` (1–50, default 20) trending events,
/// kept `app.trending_cache` by this instance.
pub async fn trending(
    State(st): State<AppState>,
    Query(q): Query<TrendingParams>,
) -> Result<axum::response::Response, Problem> {
    let limit = validate::feed_limit(q.limit.as_deref())?;
    let city = match q.city.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(c) => Some(crate::model::key(&validate::text("city", c, crate::model::MAX_CITY)?)),
    };
    let key = (city, limit);
    let list = match st.trending.get(&key) {
        Some(list) => list,
        None => {
            let now = to_micros(now());
            let since = day_of(now) - (WINDOW_DAYS - 1);
            let events = store::trending(&st.db, since, now, key.0.as_deref(), limit).await?;
            let list = Arc::new(EventList { items: events.iter().map(|e| e.view()).collect() });
            st.trending.put(key, list.clone());
            list
        }
    };
    let mut resp = JsonResponse(list.as_ref().clone()).into_response();
    let age = format!("public, max-age={}", st.trending.ttl.as_secs());
    if let Ok(value) = http::HeaderValue::from_str(&age) {
        resp.headers_mut().insert(http::header::CACHE_CONTROL, value);
    }
    Ok(resp)
}

/// `POST /api/v1/events/suggestions` (the gateway's): events for one person, from what they
/// follow, where they live and what they joined.
pub async fn suggestions(
    State(st): State<AppState>,
    Json(body): Json<SuggestionRequest>,
) -> Result<JsonResponse<EventList>, Problem> {
    use cityevents_api::limits::{MAX_BATCH, MAX_FEED};
    let limit = body.limit.unwrap_or(cityevents_api::limits::DEFAULT_LIMIT);
    if !(1..=MAX_FEED).contains(&limit) {
        return Err(validate::invalid("limit", &format!("must be 1 to {MAX_FEED}")));
    }
    if body.organizers.len() > MAX_BATCH {
        return Err(validate::invalid("organizers", &format!("must list at most {MAX_BATCH}")));
    }
    if body.exclude.len() > MAX_BATCH {
        return Err(validate::invalid("exclude", &format!("must list at most {MAX_BATCH}")));
    }
    if body.categories.len() > MAX_BATCH {
        return Err(validate::invalid("categories", &format!("must list at most {MAX_BATCH}")));
    }
    let categories: Vec<String> = body
        .categories
        .iter()
        .filter_map(|c| cityevents_api::events::category_name(c).map(str::to_owned))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let city = match body.city.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(c) => Some(crate::model::key(&validate::text("city", c, crate::model::MAX_CITY)?)),
    };
    let ask = store::Suggest {
        organizers: body.organizers.clone(),
        categories,
        city,
        exclude: body.exclude.clone(),
        now: to_micros(now()),
        limit,
    };
    let events = if ask.is_empty() { Vec::new() } else { store::suggestions(&st.db, &ask).await? };
    Ok(JsonResponse(EventList { items: events.iter().map(crate::model::Event::view).collect::<Vec<EventView>>() }))
}

/// Records joins as signals: `join.confirmed` and `join.waitlisted` (new interest; a promotion
/// or a leave is not). A message delivered again inserts nothing new (the row is its own key),
/// so it needs no inbox.
#[derive(Clone)]
pub struct JoinSignals {
    db: Db,
    salts: Salts,
}

impl JoinSignals {
    /// A handler writing to `db`.
    pub fn new(db: Db, salts: Salts) -> Self {
        Self { db, salts }
    }
}

impl Handler for JoinSignals {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        let change = match msg.envelope().ty.as_str() {
            JoinConfirmed::TYPE => msg.decode::<JoinConfirmed>()?.0,
            JoinWaitlisted::TYPE => msg.decode::<JoinWaitlisted>()?.0,
            _ => return Ok(()),
        };
        let day = day_of(to_micros(change.at));
        let today = day_of(to_micros(now()));
        // A join from earlier in the window (a consumer behind at midnight) counts under its day's
        // salt while that is kept; older ones, or a day whose salt is gone, no longer can.
        let salt = if day >= today {
            Some(self.salts.today(&self.db, today).await)
        } else if day > today - WINDOW_DAYS {
            self.salts.earlier(&self.db, day).await.transpose()
        } else {
            None
        };
        let Some(salt) = salt.transpose().map_err(|e| Failure::transient(&e))? else { return Ok(()) };
        let day = day.min(today);
        let row = (change.event_id, day, JOIN, actor(&salt, &change.event_id, JOIN, &format!("u:{}", change.user_id)));
        store::record_signals(&self.db, &[row]).await.map_err(|e| Failure::transient(&e))?;
        Ok(())
    }
}

/// Deletes signals older than the window and salts of days that are over.
pub async fn prune(db: Db) -> Result<(), DataError> {
    if !db.is_available() {
        return Ok(());
    }
    let today = day_of(to_micros(now()));
    let (signals, salts) = store::prune_signals(&db, today - (WINDOW_DAYS - 1), today).await?;
    if signals + salts > 0 {
        tracing::debug!(signals, salts, "old trend signals deleted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn trending_answers_are_kept_for_their_ttl_and_bounded() {
        let list = || Arc::new(EventList { items: Vec::new() });
        let off = TrendingCache::new(Duration::ZERO);
        off.put((None, 20), list());
        assert!(off.get(&(None, 20)).is_none(), "0s keeps nothing");
        let on = TrendingCache::new(Duration::from_secs(60));
        on.put((Some("lyon".into()), 20), list());
        assert!(on.get(&(Some("lyon".into()), 20)).is_some());
        assert!(on.get(&(Some("lyon".into()), 10)).is_none(), "per limit");
        assert!(on.get(&(None, 20)).is_none(), "per city");
        for i in 0..CACHED as u32 + 10 {
            on.put((None, i), list());
        }
        assert!(on.kept.lock().unwrap().len() <= CACHED, "bounded");
        let short = TrendingCache::new(Duration::from_millis(1));
        short.put((None, 1), list());
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.get(&(None, 1)).is_none(), "expired");
    }

    #[test]
    fn days_are_utc_and_actors_depend_on_the_salt() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_MICROS - 1), 0);
        assert_eq!(day_of(-1), -1);
        let (e, f) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        assert_eq!(actor("a", &e, VIEW, "u:1"), actor("a", &e, VIEW, "u:1"));
        assert_ne!(actor("a", &e, VIEW, "u:1"), actor("b", &e, VIEW, "u:1"), "the salt");
        assert_ne!(actor("a", &e, VIEW, "u:1"), actor("a", &e, VIEW, "u:2"), "the person");
        assert_ne!(actor("a", &e, VIEW, "u:1"), actor("a", &f, VIEW, "u:1"), "the event");
        assert_ne!(actor("a", &e, VIEW, "u:1"), actor("a", &e, JOIN, "u:1"), "the kind");
        assert_eq!(actor("a", &e, VIEW, "u:1").len(), 32);
    }
}
