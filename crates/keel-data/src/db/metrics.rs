//! `db_pool_*` and `db_errors_total`.

use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use sqlx::AnyPool;

use keel_telemetry::Metrics;

#[derive(Clone, Debug)]
pub(crate) struct DbMetrics {
    pub(crate) name: String,
    acquire: HistogramVec,
    timeouts: IntCounterVec,
    errors: IntCounterVec,
}

impl DbMetrics {
    pub(crate) fn register(metrics: &Metrics, name: &str, pool: &AnyPool, max: u32) -> Result<Self, prometheus::Error> {
        let acquire = HistogramVec::new(
            HistogramOpts::new("db_pool_acquire_duration_seconds", "Time to get a connection from the pool.")
                .buckets(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0]),
            &["pool"],
        )?;
        let timeouts = IntCounterVec::new(
            Opts::new(
                "db_pool_acquire_timeouts_total",
                "Waits for a connection that hit database.pool.acquire_timeout.",
            ),
            &["pool"],
        )?;
        let errors = IntCounterVec::new(Opts::new("db_errors_total", "Database errors by kind."), &["pool", "kind"])?;
        metrics.register(acquire.clone())?;
        metrics.register(timeouts.clone())?;
        metrics.register(errors.clone())?;
        metrics.register(PoolCollector::new(name, pool.clone(), max)?)?;
        timeouts.with_label_values(&[name]).reset();
        for kind in super::error::KINDS {
            let _ = errors.with_label_values(&[name, kind]);
        }
        Ok(Self { name: name.to_owned(), acquire, timeouts, errors })
    }

    pub(crate) fn acquired(&self, took: Duration) {
        self.acquire.with_label_values(&[&self.name]).observe(took.as_secs_f64());
    }

    pub(crate) fn timeout(&self) {
        self.timeouts.with_label_values(&[&self.name]).inc();
    }

    pub(crate) fn error(&self, kind: &str) {
        self.errors.with_label_values(&[&self.name, kind]).inc();
    }
}

/// Reads the pool's sizes at scrape time, so the numbers are current, not a sample.
#[derive(Debug)]
struct PoolCollector {
    name: String,
    pool: AnyPool,
    connections: IntGaugeVec,
    max: IntGaugeVec,
}

impl PoolCollector {
    fn new(name: &str, pool: AnyPool, max: u32) -> Result<Self, prometheus::Error> {
        let connections = IntGaugeVec::new(
            Opts::new("db_pool_connections", "Open pool connections by state (idle or in_use)."),
            &["pool", "state"],
        )?;
        let max_gauge = IntGaugeVec::new(Opts::new("db_pool_max_connections", "Pool size limit."), &["pool"])?;
        max_gauge.with_label_values(&[name]).set(i64::from(max));
        Ok(Self { name: name.to_owned(), pool, connections, max: max_gauge })
    }
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.connections.desc();
        d.extend(self.max.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let size = i64::from(self.pool.size());
        let idle = i64::try_from(self.pool.num_idle()).unwrap_or(i64::MAX);
        self.connections.with_label_values(&[&self.name, "idle"]).set(idle);
        self.connections.with_label_values(&[&self.name, "in_use"]).set((size - idle).max(0));
        let mut out = self.connections.collect();
        out.extend(self.max.collect());
        out
    }
}
