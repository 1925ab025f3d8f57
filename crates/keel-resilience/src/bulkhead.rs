//! Bulkheads: a concurrency limit with a bounded, timed queue per dependency, so one slow
//! dependency cannot take every task, connection and byte of memory of the service.
//!
//! Up to `max_concurrent` calls run; up to `max_queue` more wait at most `queue_timeout`; the
//! rest are rejected at once. Metrics: `bulkhead_in_flight{name}`, `bulkhead_queued{name}`,
//! `bulkhead_rejected_total{name,reason="full|timeout"}`.
//!
//! ```
//! use keel_resilience::bulkhead::{Bulkhead, BulkheadConfig};
//!
//! # async fn demo() {
//! let b = Bulkhead::new("search", BulkheadConfig::default(), None);
//! let out = b.call(async { 7 }).await;
//! assert_eq!(out.unwrap(), 7);
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `…bulkhead.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkheadConfig {
    /// Calls running at once. Default `64`.
    pub max_concurrent: usize,
    /// Calls waiting for a slot; beyond it calls are rejected at once. Default `64`.
    pub max_queue: usize,
    /// Longest wait in the queue. Default `1s`.
    #[serde(with = "keel_config::duration")]
    pub queue_timeout: Duration,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self { max_concurrent: 64, max_queue: 64, queue_timeout: Duration::from_secs(1) }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BulkheadError {
    /// Every slot and the whole queue were taken.
    #[error("bulkhead {0} is full")]
    Full(String),
    /// It waited `queue_timeout` in the queue.
    #[error("bulkhead {0}: no slot within the queue timeout")]
    Timeout(String),
}

/// Shared metric families for bulkheads.
#[derive(Debug, Clone)]
pub struct BulkheadMetrics {
    in_flight: IntGaugeVec,
    queued: IntGaugeVec,
    rejected: IntCounterVec,
}

impl BulkheadMetrics {
    /// Registers the families in `metrics` (a service's is `keel::telemetry::Metrics::registry`).
    pub fn new(metrics: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let in_flight = IntGaugeVec::new(Opts::new("bulkhead_in_flight", "Calls running in the bulkhead."), &["name"])?;
        let queued = IntGaugeVec::new(Opts::new("bulkhead_queued", "Calls waiting for a bulkhead slot."), &["name"])?;
        let rejected = IntCounterVec::new(
            Opts::new("bulkhead_rejected_total", "Calls refused by a bulkhead."),
            &["name", "reason"],
        )?;
        metrics.register(Box::new(in_flight.clone()))?;
        metrics.register(Box::new(queued.clone()))?;
        metrics.register(Box::new(rejected.clone()))?;
        Ok(Self { in_flight, queued, rejected })
    }
}

/// A bulkhead. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Bulkhead {
    name: Arc<str>,
    cfg: BulkheadConfig,
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    metrics: Option<BulkheadMetrics>,
}

/// A running call's slot; freed on drop.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: Option<prometheus::IntGauge>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

impl Bulkhead {
    /// A bulkhead named `name`.
    pub fn new(name: &str, cfg: BulkheadConfig, metrics: Option<BulkheadMetrics>) -> Self {
        let slots = Arc::new(Semaphore::new(cfg.max_concurrent.max(1)));
        Self { name: name.into(), cfg, slots, waiting: Arc::default(), metrics }
    }

    fn reject(&self, reason: &str) {
        if let Some(m) = &self.metrics {
            m.rejected.with_label_values(&[&self.name, reason]).inc();
        }
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        let gauge = self.metrics.as_ref().map(|m| m.in_flight.with_label_values(&[&self.name]));
        if let Some(g) = &gauge {
            g.inc();
        }
        Slot { _permit: permit, gauge }
    }

    /// Takes a slot, waiting in the queue if there is room.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped wait leaves the queue.
    pub async fn acquire(&self) -> Result<Slot, BulkheadError> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(self.slot(p));
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.cfg.max_queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.reject("full");
            return Err(BulkheadError::Full(self.name.to_string()));
        }
        struct Waiting<'a>(&'a AtomicUsize, Option<prometheus::IntGauge>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
                if let Some(g) = &self.1 {
                    g.dec();
                }
            }
        }
        let queued = self.metrics.as_ref().map(|m| m.queued.with_label_values(&[&self.name]));
        if let Some(g) = &queued {
            g.inc();
        }
        let _waiting = Waiting(&self.waiting, queued);
        match tokio::time::timeout(self.cfg.queue_timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(self.slot(p)),
            _ => {
                self.reject("timeout");
                Err(BulkheadError::Timeout(self.name.to_string()))
            }
        }
    }

    /// Runs `fut` in a slot.
    pub async fn call<T>(&self, fut: impl Future<Output = T>) -> Result<T, BulkheadError> {
        let _slot = self.acquire().await?;
        Ok(fut.await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_layer_refuses_beyond_the_limit() {
        use tower::{Layer, ServiceExt, service_fn};
        let b = Bulkhead::new(
            "t",
            BulkheadConfig { max_concurrent: 1, max_queue: 0, queue_timeout: Duration::from_millis(10) },
            None,
        );
        let svc = BulkheadLayer::new(b).layer(service_fn(|ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, std::convert::Infallible>(ms)
        }));
        let slow = tokio::spawn(svc.clone().oneshot(200));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let err = svc.clone().oneshot(0).await.unwrap_err();
        assert!(err.downcast_ref::<BulkheadError>().is_some());
        assert_eq!(slow.await.unwrap().unwrap(), 200);
        assert_eq!(svc.oneshot(0).await.unwrap(), 0, "free again");
    }

    #[tokio::test]
    async fn limits_queues_and_rejects() {
        let b = Bulkhead::new(
            "t",
            BulkheadConfig { max_concurrent: 2, max_queue: 1, queue_timeout: Duration::from_millis(50) },
            None,
        );
        let s1 = b.acquire().await.unwrap();
        let _s2 = b.acquire().await.unwrap();
        // Third waits in the queue; fourth is rejected at once.
        let b2 = b.clone();
        let queued = tokio::spawn(async move { b2.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(matches!(b.acquire().await, Err(BulkheadError::Full(_))));
        drop(s1);
        assert!(queued.await.unwrap().is_ok(), "the queued call got the freed slot");
        // With both slots taken and nobody leaving, a queued call times out.
        let _s3 = b.acquire().await.unwrap();
        assert!(matches!(b.acquire().await, Err(BulkheadError::Timeout(_))));
    }
}

/// Wraps a tower service in a [`Bulkhead`]: refused calls fail with [`BulkheadError`] (boxed).
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    bulkhead: Bulkhead,
}

impl BulkheadLayer {
    /// A layer sharing `bulkhead` between every service it wraps.
    pub fn new(bulkhead: Bulkhead) -> Self {
        Self { bulkhead }
    }
}

impl<S> tower::Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;
    fn layer(&self, inner: S) -> BulkheadService<S> {
        BulkheadService { inner, bulkhead: self.bulkhead.clone() }
    }
}

/// The service made by [`BulkheadLayer`].
#[derive(Debug, Clone)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
}

impl<S, Req> tower::Service<Req> for BulkheadService<S>
where
    S: tower::Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let bulkhead = self.bulkhead.clone();
        Box::pin(async move {
            let _slot = bulkhead.acquire().await?;
            inner.call(req).await.map_err(Into::into)
        })
    }
}
