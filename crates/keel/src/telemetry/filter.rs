//! The log filter: `target=level` directives (`info`, `info,sqlx=warn`) that `PUT
//! /admin/log-level` can replace while the process runs, read without a lock.
//!
//! `tracing-subscriber`'s `reload` layer keeps its filter behind an `RwLock`, and `EnvFilter`
//! takes more locks on every span enter, exit and close (for span-scoped directives Keel does not
//! offer). Under load every request took a dozen read locks on the same few cache lines from
//! every worker thread; the HTTP benchmark showed it. Here the directives are a
//! [`Targets`] behind an [`ArcSwap`]: a read is a load, no shared write, and spans pay nothing
//! on enter or exit. Which callsites are on is decided once per callsite (tracing caches it) and
//! decided again when the directives change.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::Metadata;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Filter};

/// The process's log filter; clones share the directives.
#[derive(Debug, Clone)]
pub(crate) struct LogFilter {
    current: Arc<ArcSwap<Targets>>,
}

impl LogFilter {
    /// A filter with `directives`, already checked by [`super::parse_filter`].
    pub(crate) fn new(directives: &str) -> Result<Self, String> {
        Ok(Self { current: Arc::new(ArcSwap::from_pointee(parse(directives)?)) })
    }

    /// Replaces the directives for every thread at once.
    pub(crate) fn set(&self, directives: &str) -> Result<(), String> {
        self.current.store(Arc::new(parse(directives)?));
        // Callsites cached "never" (a `debug!` under `info`) must be asked again.
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    }
}

impl LogFilter {
    /// Whether a line or span with `meta` passes the directives.
    pub(crate) fn would_enable(&self, meta: &Metadata<'_>) -> bool {
        self.current.load().would_enable(meta.target(), meta.level())
    }

    /// The most verbose level any directive enables.
    pub(crate) fn max_level_hint(&self) -> Option<LevelFilter> {
        <Targets as Filter<tracing_subscriber::Registry>>::max_level_hint(&self.current.load())
    }
}

/// Parses directives; unlike `EnvFilter`, span and field directives (`[span{f}]=debug`) are
/// refused rather than paid for on every span.
pub(crate) fn parse(directives: &str) -> Result<Targets, String> {
    // `Targets` would read `[span]` as the name of a target that never logs.
    if directives.contains(['[', ']', '{', '}']) {
        return Err(format!(
            "`{directives}`: span and field filters ([span{{field}}]) are not supported; use levels per target, e.g. info,sqlx=warn"
        ));
    }
    normalize(directives).parse::<Targets>().map_err(|e| {
        format!("`{directives}` is not a level or target=level list ({e}); use e.g. info or info,sqlx=warn")
    })
}

/// `directives` without blanks around each directive and without empty ones: `Targets` reads
/// `info, sqlx=warn` as a target named " sqlx", and `info,` as a second default at `error`.
pub(crate) fn normalize(directives: &str) -> String {
    directives.split(',').map(str::trim).filter(|d| !d.is_empty()).collect::<Vec<_>>().join(",")
}

impl<S> Filter<S> for LogFilter {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        self.would_enable(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.would_enable(meta) { Interest::always() } else { Interest::never() }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        LogFilter::max_level_hint(self)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn directives_apply_and_can_be_replaced_at_run_time() {
        let filter = LogFilter::new("info,noisy=warn").unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry().with(Count(seen.clone()).with_filter(filter.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let log_all = || {
                tracing::debug!("debug");
                tracing::info!("info");
                tracing::info!(target: "noisy::db", "noisy info");
                tracing::warn!(target: "noisy::db", "noisy warn");
            };
            log_all();
            assert_eq!(seen.swap(0, Ordering::SeqCst), 2, "info and noisy warn");
            filter.set("debug").unwrap();
            log_all();
            assert_eq!(seen.swap(0, Ordering::SeqCst), 4, "the debug callsite, cached off, is asked again");
            filter.set("error").unwrap();
            log_all();
            assert_eq!(seen.swap(0, Ordering::SeqCst), 0);
        });
    }

    #[test]
    fn blanks_and_empty_directives_are_ignored() {
        use tracing::Level;
        for d in ["info, noisy=warn", " info ,noisy=warn ,", "info,,noisy=warn"] {
            let t = parse(d).unwrap();
            assert!(t.would_enable("app", &Level::INFO), "{d}");
            assert!(!t.would_enable("app", &Level::DEBUG), "{d}");
            assert!(!t.would_enable("noisy::db", &Level::INFO), "{d}: the target rule applies");
            assert!(t.would_enable("noisy::db", &Level::WARN), "{d}");
        }
        assert_eq!(normalize(" info , sqlx=warn ,"), "info,sqlx=warn");
    }

    #[test]
    fn span_directives_are_refused() {
        assert!(parse("info,sqlx=warn").is_ok());
        assert!(parse("[request{id}]=debug").is_err());
        assert!(LogFilter::new("info").unwrap().set("[x]=trace").is_err());
    }
}
