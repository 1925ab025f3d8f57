//! Live updates for open pages: `GET /live` on the site, a stream of server-sent events telling a
//! page the seat count of the event it shows, the viewer's place there (going, waitlisted and
//! their number) and the viewer's unread notifications, as they change.
//!
//! Each gateway instance follows `cityevents.joins` with a fan-out subscription of its own
//! (group `gateway-live.<suffix>`: every instance hears every change), so a page connected to
//! any instance hears of a join made through any other. A join change marks its event; every
//! [`FLUSH_EVERY`] the instance asks joins for the marked events' counts in one call and
//! broadcasts them to its streams, however many changes came in between. A stream asks for the
//! viewer's place when their event's counts change or their own participation does, and for the
//! unread count when a change of theirs arrives and every [`UNREAD_EVERY`].
//!
//! Every event carries the whole state it tells (never a difference), so a client that
//! reconnects (`EventSource` does, after `retry`, sending `Last-Event-ID`) is sent the current
//! state at once and has missed nothing. A stream ends after [`LIFETIME`] (the client reconnects,
//! spreading long-lived connections over the instances), when the session's access token is
//! refused (it expired: the reconnect gets a fresh one through the session middleware), and
//! when the instance begins to drain (Keel's [`keel::server::Draining`]), so it never holds up a
//! shutdown; one opened while the instance drains is told to retry in 10 s and ends at once. At most
//! [`MAX_PER_USER`] streams per signed-in user and [`MAX_PER_ADDRESS`] per client address are
//! open on one instance; past them the answer is 429.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cityevents_api::gateway::{SeatCounts, Seats};
use cityevents_api::joins::{Counts, Join};
use cityevents_common::catalogue::{JOINS_TOPIC, JoinChange};
use futures_util::Stream;
use http::StatusCode;
use keel::events::consumer::{ConsumerOptions, Failure, Handler, Message};
use keel::events::{Consumer, SubscribeOptions};
use keel::http::extract::Query;
use serde::Deserialize;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::routes::Upstream;
use crate::web::{Page, Site};

/// How often marked events' counts are fetched and told.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How often a signed-in stream re-reads the unread count (notifications not caused by a join).
pub(crate) const UNREAD_EVERY: Duration = Duration::from_secs(20);
/// Longest a stream lasts before the client reconnects.
pub(crate) const LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Heartbeat (a comment line), so proxies keep the connection and clients see it alive.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(15);
/// Streams one signed-in user may hold open on one instance.
pub(crate) const MAX_PER_USER: usize = 8;
/// Streams one client address may hold open on one instance.
pub(crate) const MAX_PER_ADDRESS: usize = 32;
/// Events whose counts are fetched in one call (the joins batch limit).
const BATCH: usize = 100;
/// Signals held for a slow stream before it is told to read everything again.
const BUFFER: usize = 1024;

/// What the instance hears and tells its streams.
#[derive(Debug, Clone)]
enum Signal {
    /// An event's counts, fresh from joins.
    Counts(Uuid, Counts),
    /// A user's participation in an event changed.
    Changed { user: Uuid, event: Uuid },
}

/// The hub of one instance's streams.
#[derive(Debug)]
pub(crate) struct Live {
    tx: broadcast::Sender<Signal>,
    marked: Mutex<HashSet<Uuid>>,
    open: Mutex<HashMap<String, usize>>,
}

impl Live {
    pub(crate) fn new() -> Arc<Self> {
        let (tx, _) = broadcast::channel(BUFFER);
        Arc::new(Self { tx, marked: Mutex::default(), open: Mutex::default() })
    }

    /// The subscription that feeds the hub (fan-out: each instance its own).
    pub(crate) fn consumer(self: &Arc<Self>, bus: keel::events::Bus) -> Consumer<Feed> {
        Consumer::new(bus, JOINS_TOPIC, "gateway-live", Feed(self.clone()))
            .options(ConsumerOptions::default().subscribe(SubscribeOptions::default().fan_out()))
    }

    /// Fetches the marked events' counts and tells the streams; runs every [`FLUSH_EVERY`].
    pub(crate) async fn flush(&self, gw: &crate::forward::Gateway) {
        let batch: Vec<Uuid> = {
            let mut marked = self.marked.lock().unwrap_or_else(PoisonError::into_inner);
            let batch: Vec<Uuid> = marked.iter().take(BATCH).copied().collect();
            for id in &batch {
                marked.remove(id);
            }
            batch
        };
        if batch.is_empty() || self.tx.receiver_count() == 0 {
            return;
        }
        #[derive(Deserialize)]
        struct Item {
            event_id: Uuid,
            #[serde(flatten)]
            counts: Counts,
        }
        #[derive(Deserialize)]
        struct Items {
            items: Vec<Item>,
        }
        let ids: Vec<String> = batch.iter().map(Uuid::to_string).collect();
        let path = format!("/api/v1/events/counts?ids={}", ids.join(","));
        match crate::compose::fetch::<Items>(gw, Upstream::Joins, path, None).await {
            Some(items) => {
                for item in items.items {
                    let _ = self.tx.send(Signal::Counts(item.event_id, item.counts));
                }
            }
            // Told at the next change; a page still shows what it showed.
            None => tracing::debug!(events = batch.len(), "live counts unavailable"),
        }
    }

    /// Takes one of `key`'s streams if under `max`; the guard gives it back.
    fn admit(self: &Arc<Self>, keys: Vec<(String, usize)>) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.iter().any(|(k, max)| open.get(k).copied().unwrap_or(0) >= *max) {
            return None;
        }
        for (k, _) in &keys {
            *open.entry(k.clone()).or_default() += 1;
        }
        Some(Admitted { live: self.clone(), keys: keys.into_iter().map(|(k, _)| k).collect() })
    }
}

/// One admitted stream's place in the caps.
struct Admitted {
    live: Arc<Live>,
    keys: Vec<String>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.live.open.lock().unwrap_or_else(PoisonError::into_inner);
        for k in &self.keys {
            if let Some(n) = open.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(k);
                }
            }
        }
    }
}

/// The consumer's handler: marks each changed event and tells who changed.
pub(crate) struct Feed(Arc<Live>);

impl Handler for Feed {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        // Every join.* carries a JoinChange; what cannot be read is not this feed's concern.
        let Ok(c) = serde_json::from_value::<JoinChange>(msg.envelope().data.clone()) else { return Ok(()) };
        self.0.marked.lock().unwrap_or_else(PoisonError::into_inner).insert(c.event_id);
        let _ = self.0.tx.send(Signal::Changed { user: c.user_id, event: c.event_id });
        Ok(())
    }
}

/// `GET /live` query.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LiveQuery {
    /// The event the page shows.
    event: Option<Uuid>,
}

/// What the seats of an event say (as its page does).
fn seats_text(c: &Counts) -> (String, bool) {
    let free = u64::try_from((c.capacity - c.confirmed).max(0)).unwrap_or(0);
    crate::web::seats_line(&Seats::Known(SeatCounts {
        capacity: u32::try_from(c.capacity).unwrap_or(0),
        taken: u64::try_from(c.confirmed).unwrap_or(0),
        free: (c.capacity > 0).then_some(free),
        waitlisted: u64::try_from(c.waitlisted).unwrap_or(0),
    }))
}

/// What the viewer's place says (as the event page does); empty when they have none.
pub(crate) fn place_text(j: Option<&Join>) -> String {
    match j {
        Some(j) if j.status == "confirmed" => "You are going.".to_owned(),
        Some(j) if j.status == "waitlisted" => match j.position {
            Some(n) => format!("You are on the waitlist, number {n}. We will tell you when a seat frees up."),
            None => "You are on the waitlist. We will tell you when a seat frees up.".to_owned(),
        },
        Some(j) if j.status == "kicked" => "The organizer removed you from this event.".to_owned(),
        _ => String::new(),
    }
}

/// `GET /live`: the stream (see the module docs).
pub(crate) async fn stream(
    State(site): State<Arc<Site>>,
    page: Page,
    draining: Option<Extension<keel::server::Draining>>,
    query: Result<Query<LiveQuery>, keel::http::Problem>,
) -> Response {
    let Ok(Query(query)) = query else { return StatusCode::BAD_REQUEST.into_response() };
    let live = site.live.clone();
    let user = page.viewer.user().map(|u| u.id);
    let mut keys = vec![(format!("ip:{}", page.address.to_str().unwrap_or_default()), MAX_PER_ADDRESS)];
    if let Some(u) = user {
        keys.push((format!("user:{u}"), MAX_PER_USER));
    }
    let Some(admitted) = live.admit(keys) else {
        let mut resp = (StatusCode::TOO_MANY_REQUESTS, "too many live connections").into_response();
        resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("30"));
        return resp;
    };
    let rx = live.tx.subscribe();
    let state = StreamState {
        site,
        page,
        event: query.event,
        user,
        rx,
        draining: draining.map(|Extension(d)| d),
        _admitted: admitted,
        next_id: 0,
        ends: tokio::time::Instant::now() + LIFETIME,
        unread_tick: tokio::time::interval_at(tokio::time::Instant::now() + UNREAD_EVERY, UNREAD_EVERY),
        expired: false,
        waiting: false,
    };
    Sse::new(events(state)).keep_alive(KeepAlive::new().interval(HEARTBEAT)).into_response()
}

struct StreamState {
    site: Arc<Site>,
    page: Page,
    event: Option<Uuid>,
    user: Option<Uuid>,
    rx: broadcast::Receiver<Signal>,
    draining: Option<keel::server::Draining>,
    _admitted: Admitted,
    next_id: u64,
    ends: tokio::time::Instant,
    unread_tick: tokio::time::Interval,
    /// The session's access token was refused (it expired): the stream ends, and the browser's
    /// reconnect goes through the session middleware, which gets a fresh one.
    expired: bool,
    /// Whether the viewer was last seen on the event's waitlist: only then do counts move their
    /// place.
    waiting: bool,
}

impl StreamState {
    fn event(&mut self, name: &str, data: serde_json::Value) -> SseEvent {
        self.next_id += 1;
        SseEvent::default().event(name).id(self.next_id.to_string()).data(data.to_string())
    }

    async fn seats(&mut self) -> Option<SseEvent> {
        let event = self.event?;
        let path = format!("/api/v1/events/{event}/counts");
        let counts: Counts = self.site.get(Upstream::Joins, &path, None, &self.page.address).await.ok()?;
        Some(self.seats_event(event, &counts))
    }

    fn seats_event(&mut self, event: Uuid, counts: &Counts) -> SseEvent {
        let (text, full) = seats_text(counts);
        self.event("seats", serde_json::json!({ "event_id": event, "text": text, "full": full }))
    }

    async fn place(&mut self) -> Option<SseEvent> {
        let (event, token) = (self.event?, self.page.token()?.to_owned());
        let path = format!("/api/v1/events/{event}/join");
        let join = match self
            .site
            .send(Upstream::Joins, http::Method::GET, &path, Some(&token), None, &self.page.address, &[])
            .await
        {
            Ok(r) => r.json::<Join>().ok(),
            Err(f) if f.status == StatusCode::NOT_FOUND => None,
            Err(f) => {
                self.expired |= f.status == StatusCode::UNAUTHORIZED;
                return None;
            }
        };
        self.waiting = join.as_ref().is_some_and(|j| j.status == "waitlisted");
        let text = place_text(join.as_ref());
        Some(self.event("place", serde_json::json!({ "event_id": event, "text": text })))
    }

    async fn unread(&mut self) -> Option<SseEvent> {
        #[derive(Deserialize)]
        struct Unread {
            unread: u64,
        }
        let token = self.page.token()?.to_owned();
        let path = "/api/v1/me/notifications/unread-count";
        let u: Unread = match self.site.get(Upstream::Notifier, path, Some(&token), &self.page.address).await {
            Ok(u) => u,
            Err(f) => {
                self.expired |= f.status == StatusCode::UNAUTHORIZED;
                return None;
            }
        };
        Some(self.event("unread", serde_json::json!({ "unread": u.unread })))
    }

    /// Everything the stream tells, as it is now.
    async fn snapshot(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        out.extend(self.seats().await);
        out.extend(self.place().await);
        out.extend(self.unread().await);
        out
    }
}

/// What a stream does next.
enum Step {
    /// Tell these.
    Tell(Vec<SseEvent>),
    /// Nothing to tell this time.
    Quiet,
    /// Done: the lifetime passed, the drain began, or the hub is gone.
    End,
}

impl StreamState {
    /// Waits for the next thing to tell.
    async fn next(&mut self) -> Step {
        if self.expired {
            return Step::End;
        }
        let draining = self.draining.clone();
        let ends = self.ends;
        let signal = tokio::select! {
            () = tokio::time::sleep_until(ends) => return Step::End,
            () = async {
                match &draining {
                    Some(d) => d.cancelled().await,
                    None => std::future::pending().await,
                }
            } => return Step::End,
            _ = self.unread_tick.tick() => return Step::Tell(self.unread().await.into_iter().collect()),
            signal = self.rx.recv() => signal,
        };
        match signal {
            Ok(Signal::Counts(event, counts)) if Some(event) == self.event => {
                let mut out = vec![self.seats_event(event, &counts)];
                // A waitlisted viewer's number moves when the counts do; nobody else's place.
                if self.waiting {
                    out.extend(self.place().await);
                }
                Step::Tell(out)
            }
            Ok(Signal::Changed { user, event }) if Some(user) == self.user => {
                let mut out = Vec::new();
                if Some(event) == self.event {
                    out.extend(self.place().await);
                }
                // The notifier writes the notification a moment after the change.
                tokio::time::sleep(Duration::from_millis(500)).await;
                out.extend(self.unread().await);
                Step::Tell(out)
            }
            Ok(_) => Step::Quiet,
            // Too slow to keep up: tell everything again.
            Err(broadcast::error::RecvError::Lagged(_)) => Step::Tell(self.snapshot().await),
            Err(broadcast::error::RecvError::Closed) => Step::End,
        }
    }
}

fn events(s: StreamState) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    // Opened while the instance drains: tell the browser to come back later (elsewhere) and end
    // without asking the services anything.
    let draining = s.draining.as_ref().is_some_and(keel::server::Draining::is_draining);
    let retry = if draining { Duration::from_secs(10) } else { Duration::from_secs(3) };
    let first = vec![SseEvent::default().retry(retry)];
    futures_util::stream::unfold(
        (s, std::collections::VecDeque::from(first), !draining),
        move |(mut s, mut queue, mut fresh)| async move {
            loop {
                if let Some(e) = queue.pop_front() {
                    return Some((Ok(e), (s, queue, fresh)));
                }
                if fresh {
                    fresh = false;
                    queue.extend(s.snapshot().await);
                    continue;
                }
                if draining {
                    return None;
                }
                match s.next().await {
                    Step::Tell(events) => queue.extend(events),
                    Step::Quiet => {}
                    Step::End => return None,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(status: &str, position: Option<i64>) -> Join {
        Join {
            join_id: Uuid::nil(),
            event_id: Uuid::nil(),
            user_id: Uuid::nil(),
            status: status.into(),
            position,
            reason: None,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_stream_says_what_the_page_says() {
        assert_eq!(
            seats_text(&Counts { capacity: 10, confirmed: 7, waitlisted: 0 }),
            ("3 of 10 seats free".into(), false)
        );
        assert_eq!(
            seats_text(&Counts { capacity: 2, confirmed: 2, waitlisted: 3 }),
            ("Full · 3 on the waitlist".into(), true)
        );
        assert_eq!(seats_text(&Counts { capacity: 0, confirmed: 9, waitlisted: 0 }).0, "Open to everyone");
        assert_eq!(place_text(Some(&join("confirmed", None))), "You are going.");
        assert!(place_text(Some(&join("waitlisted", Some(2)))).starts_with("You are on the waitlist, number 2."));
        assert_eq!(place_text(Some(&join("canceled", None))), "");
        assert_eq!(place_text(None), "");
    }

    #[test]
    fn streams_are_capped_per_key_and_given_back() {
        let live = Live::new();
        let keys = || vec![("ip:1".to_owned(), 2), ("user:a".to_owned(), 1)];
        let first = live.admit(keys()).unwrap();
        assert!(live.admit(keys()).is_none(), "the user's cap");
        let other = live.admit(vec![("ip:1".to_owned(), 2)]).unwrap();
        assert!(live.admit(vec![("ip:1".to_owned(), 2)]).is_none(), "the address's cap");
        drop(first);
        drop(other);
        assert!(live.open.lock().unwrap().is_empty(), "every slot given back");
        assert!(live.admit(keys()).is_some());
    }
}
