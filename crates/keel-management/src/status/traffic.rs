//! What the status page reads from the service's own metrics registry: traffic (requests per
//! second, server errors, p99 over the last minute), upstream calls, consumers and the outbox.
//!
//! Traffic is a rate, so it needs two readings: [`Traffic`] keeps a reading every
//! [`SAMPLE_EVERY`] (a background task of the service) and compares the latest with the one
//! about [`WINDOW`] before it, or with the start when the service is younger.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::proto::MetricFamily;
use serde::Serialize;

use keel_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

/// How often a reading is kept.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The span rates are computed over, once the service is that old.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Routes listed per service, busiest first.
const TOP_ROUTES: usize = 10;

/// The counts of one route (method and template) at one moment.
#[derive(Debug, Clone, Default)]
struct RouteCounts {
    requests: f64,
    server_errors: f64,
    /// Cumulative histogram buckets `(upper bound in seconds, count)`, `+Inf` last.
    buckets: Vec<(f64, u64)>,
}

/// One reading of `http_server_*`.
#[derive(Debug, Clone, Default)]
struct Reading {
    routes: BTreeMap<(String, String), RouteCounts>,
}

/// The readings of one service; cheap to clone.
#[derive(Clone)]
pub struct Traffic {
    metrics: Metrics,
    started: Instant,
    readings: Arc<Mutex<VecDeque<(Instant, Reading)>>>,
}

/// Traffic over the window, as the page and its JSON show it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TrafficInfo {
    /// Seconds the rates are computed over.
    pub(crate) window_seconds: f64,
    pub(crate) requests_per_second: f64,
    /// Answers with a 5xx status, per second.
    pub(crate) server_errors_per_second: f64,
    /// 99th percentile of the time to the response head, as the upper bound of its histogram
    /// bucket; `None` without requests in the window.
    pub(crate) p99_seconds: Option<f64>,
    /// The p99 lies past the largest bucket (`p99_seconds` is that bucket's bound).
    pub(crate) p99_above: bool,
    /// The median, p90 and p99, each as the bounds of the histogram bucket it lies in.
    pub(crate) latency: Vec<Percentile>,
    /// The busiest routes.
    pub(crate) routes: Vec<RouteTraffic>,
}

/// One route's traffic over the window.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RouteTraffic {
    pub(crate) method: String,
    pub(crate) route: String,
    pub(crate) requests_per_second: f64,
    pub(crate) server_errors_per_second: f64,
    pub(crate) p99_seconds: Option<f64>,
    pub(crate) p99_above: bool,
    /// As [`TrafficInfo::latency`].
    pub(crate) latency: Vec<Percentile>,
}

/// A latency percentile as far as the histogram can tell: the bounds of the bucket it lies in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Percentile {
    /// `0.5`, `0.9` or `0.99`.
    pub(crate) quantile: f64,
    /// The bucket's lower bound: the bound below it, 0 for the first bucket.
    pub(crate) above_seconds: f64,
    /// Its upper bound; `None` past the largest finite bound.
    pub(crate) at_most_seconds: Option<f64>,
}

/// The percentiles the page shows.
const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// Where quantile `q` of cumulative `buckets` (ascending bounds, `+Inf` last) lies.
fn percentile(buckets: &[(f64, u64)], q: f64) -> Option<Percentile> {
    let &(_, total) = buckets.last()?;
    if total == 0 {
        return None;
    }
    let target = ((total as f64 * q).ceil() as u64).max(1);
    let mut below = 0.0;
    for &(le, n) in buckets {
        if n >= target {
            return Some(Percentile {
                quantile: q,
                above_seconds: below,
                at_most_seconds: le.is_finite().then_some(le),
            });
        }
        if le.is_finite() {
            below = le;
        }
    }
    None
}

fn percentiles(buckets: &[(f64, u64)]) -> Vec<Percentile> {
    QUANTILES.iter().filter_map(|q| percentile(buckets, *q)).collect()
}

impl Traffic {
    /// Reads `http_server_*` from `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics, started: Instant::now(), readings: Arc::default() }
    }

    /// Records a reading every [`SAMPLE_EVERY`] until `stop` is cancelled: the rates compare
    /// readings, so a service runs this for as long as it serves.
    pub async fn sample(self, stop: CancellationToken) {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => self.record(),
            }
        }
    }

    /// Keeps a reading now.
    pub(crate) fn record(&self) {
        let reading = read(self.metrics.registry().gather().iter());
        let mut r = self.readings.lock().unwrap_or_else(PoisonError::into_inner);
        r.push_back((Instant::now(), reading));
        // Enough to reach a window back, and no more.
        while r.len() > 2 && r.front().is_some_and(|(at, _)| at.elapsed() > WINDOW + 2 * SAMPLE_EVERY) {
            r.pop_front();
        }
    }

    /// Traffic from a baseline — the newest kept reading at least a window old, else the oldest
    /// kept, else the start — to `now`, a reading of the registry just taken.
    pub(crate) fn info(&self, now: &Families) -> TrafficInfo {
        let now = read(now.0.values());
        let (base_at, base) = {
            let r = self.readings.lock().unwrap_or_else(PoisonError::into_inner);
            r.iter()
                .rev()
                .find(|(at, _)| at.elapsed() >= WINDOW)
                .or_else(|| r.front().filter(|(at, _)| at.elapsed() >= Duration::from_secs(1)))
                .cloned()
                .unwrap_or_else(|| (self.started, Reading::default()))
        };
        let secs = base_at.elapsed().as_secs_f64().max(0.001);
        let mut totals = RouteCounts::default();
        let mut routes = Vec::new();
        for (key, counts) in &now.routes {
            let delta = counts.minus(base.routes.get(key));
            totals.add(&delta);
            let (p99, above) = p99(&delta.buckets);
            routes.push(RouteTraffic {
                method: key.0.clone(),
                route: key.1.clone(),
                requests_per_second: delta.requests / secs,
                server_errors_per_second: delta.server_errors / secs,
                p99_seconds: p99,
                p99_above: above,
                latency: percentiles(&delta.buckets),
            });
        }
        routes.retain(|r| r.requests_per_second > 0.0);
        routes.sort_by(|a, b| b.requests_per_second.total_cmp(&a.requests_per_second));
        routes.truncate(TOP_ROUTES);
        let (p99, above) = p99(&totals.buckets);
        TrafficInfo {
            window_seconds: secs,
            requests_per_second: totals.requests / secs,
            server_errors_per_second: totals.server_errors / secs,
            p99_seconds: p99,
            p99_above: above,
            latency: percentiles(&totals.buckets),
            routes,
        }
    }
}

impl RouteCounts {
    /// These counts less an earlier reading (a counter never falls; a missing one was 0).
    fn minus(&self, before: Option<&Self>) -> Self {
        let Some(b) = before else { return self.clone() };
        let buckets = self
            .buckets
            .iter()
            .map(|(le, n)| {
                let was = b.buckets.iter().find(|(l, _)| l == le).map_or(0, |(_, n)| *n);
                (*le, n.saturating_sub(was))
            })
            .collect();
        Self {
            requests: (self.requests - b.requests).max(0.0),
            server_errors: (self.server_errors - b.server_errors).max(0.0),
            buckets,
        }
    }

    fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.server_errors += other.server_errors;
        for (le, n) in &other.buckets {
            match self.buckets.iter_mut().find(|(l, _)| l == le) {
                Some((_, total)) => *total += n,
                None => self.buckets.push((*le, *n)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
}

/// The upper bound of the bucket holding the 99th percentile of cumulative `buckets`, and
/// whether it lies past the largest finite bound.
fn p99(buckets: &[(f64, u64)]) -> (Option<f64>, bool) {
    let Some(&(_, total)) = buckets.last() else { return (None, false) };
    if total == 0 {
        return (None, false);
    }
    let target = (total as f64 * 0.99).ceil() as u64;
    let largest = buckets.iter().rev().find(|(le, _)| le.is_finite()).map(|(le, _)| *le);
    match buckets.iter().find(|(_, n)| *n >= target) {
        Some((le, _)) if le.is_finite() => (Some(*le), false),
        _ => (largest, true),
    }
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label().iter().find(|l| l.name() == name).map_or("", |l| l.value())
}

fn read<'a>(families: impl Iterator<Item = &'a MetricFamily>) -> Reading {
    let mut reading = Reading::default();
    for f in families {
        match f.name() {
            "http_server_requests_total" => {
                for m in f.get_metric() {
                    let key = (label(m, "method").to_owned(), label(m, "route").to_owned());
                    let r = reading.routes.entry(key).or_default();
                    let n = m.get_counter().get_value();
                    r.requests += n;
                    if label(m, "status").starts_with('5') {
                        r.server_errors += n;
                    }
                }
            }
            "http_server_request_duration_seconds" => {
                for m in f.get_metric() {
                    let key = (label(m, "method").to_owned(), label(m, "route").to_owned());
                    let r = reading.routes.entry(key).or_default();
                    let h = m.get_histogram();
                    let mut buckets: Vec<(f64, u64)> =
                        h.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
                    buckets.push((f64::INFINITY, h.get_sample_count()));
                    let mut sum = RouteCounts { buckets: std::mem::take(&mut r.buckets), ..RouteCounts::default() };
                    sum.add(&RouteCounts { buckets, ..RouteCounts::default() });
                    r.buckets = sum.buckets;
                }
            }
            _ => {}
        }
    }
    reading
}

/// An upstream the service calls, with its breaker and its calls so far.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct UpstreamInfo {
    pub(crate) name: String,
    pub(crate) base_url: String,
    /// `closed`, `open`, `half_open`, or `none` without a breaker.
    pub(crate) breaker: &'static str,
    /// Attempts since start, and those that failed (no answer or a 5xx).
    pub(crate) attempts: u64,
    pub(crate) failed: u64,
}

/// One consumer (topic and group) as its metrics show it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConsumerInfo {
    pub(crate) topic: String,
    pub(crate) group: String,
    /// Messages waiting for the group, as the broker counted them last.
    pub(crate) lag: Option<i64>,
    pub(crate) paused: bool,
    /// Handler runs since start by outcome: `ok`, `retry`, `dead`, `unavailable`.
    pub(crate) handled: BTreeMap<String, u64>,
}

/// The outbox, when the service has one.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OutboxInfo {
    pub(crate) pending: i64,
    pub(crate) oldest_pending_age_seconds: f64,
    pub(crate) published: u64,
    pub(crate) publish_failures: u64,
    pub(crate) dead: u64,
    pub(crate) relay_paused: bool,
}

/// The registry's families by name.
pub(crate) struct Families(BTreeMap<String, MetricFamily>);

impl Families {
    pub(crate) fn gather(metrics: &Metrics) -> Self {
        Self(metrics.registry().gather().into_iter().map(|f| (f.name().to_owned(), f)).collect())
    }

    fn each(&self, name: &str) -> impl Iterator<Item = &prometheus::proto::Metric> {
        self.0.get(name).into_iter().flat_map(|f| f.get_metric().iter())
    }

    fn value(m: &prometheus::proto::Metric) -> f64 {
        // A sample is a counter or a gauge; the other reads as 0.
        m.get_counter().get_value() + m.get_gauge().get_value()
    }

    /// The sum of `name`'s samples whose `label` is `value` (every sample with no label given).
    fn sum(&self, name: &str, filter: Option<(&str, &str)>) -> f64 {
        self.each(name).filter(|m| filter.is_none_or(|(l, v)| label(m, l) == v)).map(Self::value).sum()
    }

    /// `http_client_requests_total` of `upstream`: (attempts, failed).
    pub(crate) fn upstream_calls(&self, upstream: &str) -> (u64, u64) {
        let mut out = (0, 0);
        for m in self.each("http_client_requests_total").filter(|m| label(m, "upstream") == upstream) {
            let n = Self::value(m) as u64;
            out.0 += n;
            let status = label(m, "status");
            if status == "error" || status.starts_with('5') {
                out.1 += n;
            }
        }
        out
    }

    pub(crate) fn consumers(&self) -> Vec<ConsumerInfo> {
        fn slot<'a>(
            infos: &'a mut BTreeMap<(String, String), ConsumerInfo>,
            m: &prometheus::proto::Metric,
        ) -> &'a mut ConsumerInfo {
            let (topic, group) = (label(m, "topic").to_owned(), label(m, "group").to_owned());
            infos.entry((topic.clone(), group.clone())).or_insert_with(|| ConsumerInfo {
                topic,
                group,
                lag: None,
                paused: false,
                handled: BTreeMap::new(),
            })
        }
        let mut infos = BTreeMap::new();
        for m in self.each("consumer_messages_total") {
            *slot(&mut infos, m).handled.entry(label(m, "outcome").to_owned()).or_default() += Self::value(m) as u64;
        }
        // Kafka reports a series per partition: the group's lag is their sum.
        for m in self.each("consumer_lag_messages") {
            *slot(&mut infos, m).lag.get_or_insert(0) += Self::value(m) as i64;
        }
        for m in self.each("consumer_paused") {
            slot(&mut infos, m).paused = Self::value(m) > 0.0;
        }
        infos.into_values().collect()
    }

    pub(crate) fn outbox(&self) -> Option<OutboxInfo> {
        self.0.get("outbox_pending")?;
        Some(OutboxInfo {
            pending: self.sum("outbox_pending", None) as i64,
            oldest_pending_age_seconds: self.sum("outbox_oldest_pending_age_seconds", None),
            published: self.sum("outbox_published_total", None) as u64,
            publish_failures: self.sum("outbox_publish_failures_total", None) as u64,
            dead: self.sum("outbox_dead_total", None) as u64,
            relay_paused: self.sum("outbox_relay_paused", None) > 0.0,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn p99_is_the_bound_of_its_bucket() {
        assert_eq!(p99(&[]), (None, false));
        assert_eq!(p99(&[(0.01, 0), (0.1, 0), (f64::INFINITY, 0)]), (None, false));
        // 100 requests: 98 under 10 ms, 2 under 100 ms: the 99th is under 100 ms.
        assert_eq!(p99(&[(0.01, 98), (0.1, 100), (f64::INFINITY, 100)]), (Some(0.1), false));
        assert_eq!(p99(&[(0.01, 100), (0.1, 100), (f64::INFINITY, 100)]), (Some(0.01), false));
        assert_eq!(p99(&[(0.01, 10), (0.1, 10), (f64::INFINITY, 100)]), (Some(0.1), true), "past the last bound");
    }

    #[test]
    fn percentiles_are_the_bounds_of_their_buckets() {
        let p = |above, at_most, quantile| Percentile { quantile, above_seconds: above, at_most_seconds: at_most };
        assert!(percentiles(&[]).is_empty());
        assert!(percentiles(&[(0.01, 0), (f64::INFINITY, 0)]).is_empty());
        // 100 requests: 60 under 5 ms, 30 more under 25 ms, 9 more under 100 ms, 1 past 2.5 s.
        let buckets = [(0.005, 60), (0.025, 90), (0.1, 99), (2.5, 99), (f64::INFINITY, 100)];
        assert_eq!(
            percentiles(&buckets),
            [p(0.0, Some(0.005), 0.5), p(0.005, Some(0.025), 0.9), p(0.025, Some(0.1), 0.99)]
        );
        let slow = [(0.005, 0), (0.025, 0), (0.1, 40), (f64::INFINITY, 100)];
        assert_eq!(percentile(&slow, 0.5), Some(p(0.1, None, 0.5)), "past the largest bound");
        assert_eq!(percentile(&slow, 0.3), Some(p(0.025, Some(0.1), 0.3)), "empty buckets below are skipped");
        // One request: every percentile is its bucket.
        assert_eq!(percentile(&[(0.01, 0), (0.05, 1), (f64::INFINITY, 1)], 0.5), Some(p(0.01, Some(0.05), 0.5)));
    }

    #[test]
    fn rates_compare_two_readings_of_the_registry() {
        let metrics = Metrics::new();
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new("http_server_requests_total", "r"),
            &["method", "route", "status"],
        )
        .unwrap();
        metrics.register(requests.clone()).unwrap();
        requests.with_label_values(&["GET", "/a", "200"]).inc_by(9);
        requests.with_label_values(&["GET", "/a", "503"]).inc();
        requests.with_label_values(&["POST", "/b", "201"]).inc_by(4);
        let t = Traffic::new(metrics.clone());
        let info = t.info(&Families::gather(&metrics));
        assert!(info.requests_per_second > 0.0 && info.server_errors_per_second > 0.0, "{info:?}");
        assert_eq!(info.routes[0].route, "/a", "busiest first: {info:?}");
        assert!((info.routes[0].server_errors_per_second * 10.0 - info.routes[0].requests_per_second).abs() < 1e-6);
        assert_eq!(info.p99_seconds, None, "no histogram, no p99");
    }
}
