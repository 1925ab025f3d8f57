//! Views of event pages, counted for the trending feed: each view of the site's event page
//! (`/events/{id}`) or of the API's composed page (`GET /api/v1/events/{id}/view`) is noted here,
//! keyed by who looked (`u:<user id>` when signed in, else `a:<client address>`, an IPv6
//! address cut to its /56, a block one subscriber commonly holds whole), and sent to the events service in
//! batches (`POST /api/v1/events/views`, up to 500 a call) every [`FLUSH_EVERY`] by the
//! `event-views` worker. The same viewer of the same event is noted once per batch, and the
//! events service counts them once per day: reloading, or a script hammering one page, adds
//! nothing. A `HEAD`, and a request whose `User-Agent` says it is a robot (a crawler, or the
//! link preview a chat app fetches when the page is shared), is not a view.
//!
//! Views are a signal, not a record: at most [`MAX_PENDING`] wait between flushes (the rest are
//! dropped, counted), and a batch the events service does not take is dropped too, counted, so
//! a slow or down events service never holds memory or a page. Both outcomes are
//! `gateway_event_views_total{outcome="sent"|"dropped"}`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cityevents_api::events::{View, ViewBatch};
use http::{HeaderValue, Method, StatusCode, header};
use keel::http::client;
use prometheus::{IntCounterVec, Opts};
use uuid::Uuid;

use crate::forward::Gateway;
use crate::routes::Upstream;

/// How often noted views are sent.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// Most distinct views held between flushes.
pub(crate) const MAX_PENDING: usize = 10_000;
/// Views per call.
const BATCH: usize = cityevents_api::limits::MAX_VIEW_BATCH;

/// The noted views and their counter; cheap to clone.
#[derive(Clone)]
pub(crate) struct Views {
    pending: Arc<Mutex<HashSet<(Uuid, String)>>>,
    counted: IntCounterVec,
}

/// Who looked: the user, or the client's address (an IPv6 one cut to its /56).
pub(crate) fn viewer(user: Option<Uuid>, address: IpAddr) -> String {
    if let Some(user) = user {
        return format!("u:{user}");
    }
    match address {
        IpAddr::V4(v4) => format!("a:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("a:{v4}"),
            None => {
                let s = v6.segments();
                format!("a:{:x}:{:x}:{:x}:{:x}::/56", s[0], s[1], s[2], s[3] & 0xff00)
            }
        },
    }
}

/// Words in a `User-Agent` that mark a robot (lowercase).
const ROBOTS: [&str; 9] =
    ["bot", "crawl", "spider", "slurp", "preview", "facebookexternalhit", "embedly", "curl/", "python-requests"];

/// Whether a request of `method` with `headers` is a person's view.
pub(crate) fn is_view(method: &http::Method, headers: &http::HeaderMap) -> bool {
    if method != http::Method::GET {
        return false;
    }
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let agent = agent.to_ascii_lowercase();
    !ROBOTS.iter().any(|r| agent.contains(r))
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views").field("waiting", &self.pending.lock().map(|p| p.len()).unwrap_or(0)).finish()
    }
}

impl Views {
    /// Registers `gateway_event_views_total{outcome}` in `metrics`, both outcomes at 0.
    pub(crate) fn register(metrics: &keel::telemetry::Metrics) -> Result<Self, prometheus::Error> {
        let counted = IntCounterVec::new(
            Opts::new(
                "gateway_event_views_total",
                "Event page views sent to the events service for the trending feed, or dropped (too many waiting, or the events service did not take them).",
            ),
            &["outcome"],
        )?;
        for outcome in ["sent", "dropped"] {
            counted.with_label_values(&[outcome]);
        }
        metrics.register(counted.clone())?;
        Ok(Self { pending: Arc::default(), counted })
    }

    /// Notes a view of `event` by `user` (else the client at `address`) when the request
    /// (`method`, `headers`) is a person's view ([`is_view`]).
    pub(crate) fn note_request(
        &self,
        event: Uuid,
        (method, headers): (&http::Method, &http::HeaderMap),
        user: Option<Uuid>,
        address: IpAddr,
    ) {
        if is_view(method, headers) {
            self.note(event, viewer(user, address));
        }
    }

    /// Notes that `viewer` looked at `event` (never waits: the page goes on).
    pub(crate) fn note(&self, event: Uuid, viewer: String) {
        let Ok(mut pending) = self.pending.lock() else { return };
        if pending.len() >= MAX_PENDING && !pending.contains(&(event, viewer.clone())) {
            drop(pending);
            self.counted.with_label_values(&["dropped"]).inc();
            return;
        }
        pending.insert((event, viewer));
    }

    /// Sends what was noted, in batches; a batch not taken is dropped.
    pub(crate) async fn flush(&self, gw: &Gateway) {
        let taken: Vec<(Uuid, String)> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(_) => return,
        };
        for chunk in taken.chunks(BATCH) {
            let n = chunk.len() as u64;
            let outcome = if send(gw, chunk).await { "sent" } else { "dropped" };
            self.counted.with_label_values(&[outcome]).inc_by(n);
        }
    }

    /// How many views wait (tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }
}

/// Whether the events service took `views`.
async fn send(gw: &Gateway, views: &[(Uuid, String)]) -> bool {
    let Ok(events) = gw.client(Upstream::Events) else { return false };
    let batch = ViewBatch { views: views.iter().map(|(e, v)| View { event_id: *e, viewer: v.clone() }).collect() };
    let Ok(body) = serde_json::to_vec(&batch) else { return false };
    let req = gw.timed(
        client::Request::new(Method::POST, "/api/v1/events/views")
            .header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body),
        &Method::POST,
    );
    match gw.bounded(events.send(req)).await {
        Ok(r) if r.status == StatusCode::NO_CONTENT => true,
        Ok(r) => {
            tracing::warn!(
                status = r.status.as_u16(),
                views = views.len(),
                "the events service refused views; dropped"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, views = views.len(), "views not sent; dropped");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn viewers_are_users_or_addresses_with_ipv6_cut_to_its_64() {
        let id = Uuid::now_v7();
        assert_eq!(viewer(Some(id), "10.0.0.1".parse().unwrap()), format!("u:{id}"));
        assert_eq!(viewer(None, "10.0.0.1".parse().unwrap()), "a:10.0.0.1");
        assert_eq!(viewer(None, "::ffff:10.0.0.1".parse().unwrap()), "a:10.0.0.1");
        let a = viewer(None, "2001:db8:1:2aa:aaaa::1".parse().unwrap());
        let b = viewer(None, "2001:db8:1:2ff:bbbb::9".parse().unwrap());
        assert_eq!((a.as_str(), b.as_str()), ("a:2001:db8:1:200::/56", "a:2001:db8:1:200::/56"));
        assert_ne!(viewer(None, "2001:db8:1:300::1".parse().unwrap()), a, "another /56");
    }

    #[test]
    fn robots_and_heads_are_not_views() {
        let with = |agent: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::USER_AGENT, HeaderValue::from_str(agent).unwrap());
            h
        };
        let firefox = with("Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0");
        assert!(is_view(&http::Method::GET, &firefox));
        assert!(is_view(&http::Method::GET, &http::HeaderMap::new()), "no agent: a person, maybe");
        assert!(!is_view(&http::Method::HEAD, &firefox));
        for bot in [
            "Googlebot/2.1",
            "Slackbot-LinkExpanding 1.0",
            "facebookexternalhit/1.1",
            "curl/8.5.0",
            "WhatsApp/2 Preview",
        ] {
            assert!(!is_view(&http::Method::GET, &with(bot)), "{bot}");
        }
    }

    #[test]
    fn one_viewer_of_one_event_is_noted_once_and_the_rest_past_the_cap_dropped() {
        let views = Views::register(&keel::telemetry::Metrics::new()).unwrap();
        let e = Uuid::now_v7();
        for _ in 0..5 {
            views.note(e, "a:10.0.0.1".into());
        }
        assert_eq!(views.waiting(), 1);
        for i in 0..MAX_PENDING + 10 {
            views.note(e, format!("a:{i}"));
        }
        assert_eq!(views.waiting(), MAX_PENDING);
        assert_eq!(views.counted.with_label_values(&["dropped"]).get(), 11);
    }
}
