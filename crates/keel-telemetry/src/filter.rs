//! The log layer's filter: `log.level` directives, replaceable at run time, with no lock taken
//! per span or event.
//!
//! Directives of targets and levels (`info`, `info,sqlx=warn`) are a `tracing-subscriber`
//! [`Targets`] filter, which keeps no per-span state. Directives with span filters
//! (`[request]=debug`, `[{service=auth}]=debug`) need an [`EnvFilter`], which tracks the spans
//! it cares about. Either sits behind an [`ArcSwap`], so a replacement is one pointer swap and
//! every callback reads the current filter without a lock; `tracing-subscriber`'s
//! `reload::Layer` would read-lock an `RwLock` on every callback, from every worker thread.
//!
//! Spans at `info` and above always pass: they carry the fields and ids of every line logged
//! inside them, whatever the level.

use std::str::FromStr as _;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata, span};
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Filter};

/// Parsed `log.level` directives.
#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "one value per process, behind an `Arc`")]
pub(crate) enum Directives {
    /// Targets and levels only.
    Targets(Targets),
    /// With span filters.
    Env(EnvFilter),
}

impl Directives {
    /// `directives`, normalized (no blanks, no empty directive), never read from the
    /// environment.
    pub(crate) fn parse(directives: &str) -> Result<Self, String> {
        let invalid = |e: &dyn std::fmt::Display| {
            format!("`{directives}` is not a level or target=level list ({e}); use e.g. info or info,sqlx=warn")
        };
        if !directives.contains('[') {
            // `Targets` reads what `EnvFilter` reads for these, and keeps no per-span state.
            if let Ok(t) = Targets::from_str(directives) {
                return Ok(Self::Targets(t));
            }
        }
        EnvFilter::builder().parse(directives).map(Self::Env).map_err(|e| invalid(&e))
    }
}

/// The filter; see the module docs. Cloning shares the current directives.
#[derive(Clone)]
pub(crate) struct LogFilter {
    current: Arc<ArcSwap<Directives>>,
}

impl LogFilter {
    pub(crate) fn new(directives: Directives) -> Self {
        Self { current: Arc::new(ArcSwap::from_pointee(directives)) }
    }

    /// Replaces the directives for every span and event from now on.
    pub(crate) fn set(&self, directives: Directives) {
        self.current.store(Arc::new(directives));
        // Callsites remember whether they are enabled: ask them all again.
        tracing::callsite::rebuild_interest_cache();
    }
}

/// Spans at `info` and above.
fn info_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && *meta.level() <= Level::INFO
}

impl<S> Filter<S> for LogFilter
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        if info_span(meta) {
            return true;
        }
        match &**self.current.load() {
            Directives::Targets(t) => t.would_enable(meta.target(), meta.level()),
            Directives::Env(e) => Filter::<S>::enabled(e, meta, cx),
        }
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // Asked first, whatever the answer: `EnvFilter` learns here which span callsites its
        // span filters match.
        let interest = match &**self.current.load() {
            Directives::Targets(t) => Filter::<S>::callsite_enabled(t, meta),
            Directives::Env(e) => Filter::<S>::callsite_enabled(e, meta),
        };
        if info_span(meta) { Interest::always() } else { interest }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let hint = match &**self.current.load() {
            Directives::Targets(t) => Filter::<S>::max_level_hint(t),
            Directives::Env(e) => Filter::<S>::max_level_hint(e),
        };
        // Spans at `info` pass whatever the directives say.
        Some(hint.map_or(LevelFilter::TRACE, |h| h.max(LevelFilter::INFO)))
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, cx: Context<'_, S>) {
        if let Directives::Env(e) = &**self.current.load() {
            Filter::<S>::on_new_span(e, attrs, id, cx);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, cx: Context<'_, S>) {
        if let Directives::Env(e) = &**self.current.load() {
            Filter::<S>::on_record(e, id, values, cx);
        }
    }

    fn on_enter(&self, id: &span::Id, cx: Context<'_, S>) {
        if let Directives::Env(e) = &**self.current.load() {
            Filter::<S>::on_enter(e, id, cx);
        }
    }

    fn on_exit(&self, id: &span::Id, cx: Context<'_, S>) {
        if let Directives::Env(e) = &**self.current.load() {
            Filter::<S>::on_exit(e, id, cx);
        }
    }

    fn on_close(&self, id: span::Id, cx: Context<'_, S>) {
        if let Directives::Env(e) = &**self.current.load() {
            Filter::<S>::on_close(e, id, cx);
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::test_writer::Buffer;

    fn lines(buf: &Buffer) -> Vec<String> {
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap().lines().map(str::to_owned).collect()
    }

    fn subscriber(filter: LogFilter) -> (Buffer, impl tracing::Subscriber + Send + Sync) {
        let buf = Buffer::default();
        let w = buf.clone();
        let fmt = tracing_subscriber::fmt::layer().with_writer(move || w.clone()).with_ansi(false).with_filter(filter);
        (buf, tracing_subscriber::registry().with(fmt))
    }

    #[test]
    fn targets_and_levels_need_no_span_state_and_span_filters_do() {
        assert!(matches!(Directives::parse("info,sqlx=warn").unwrap(), Directives::Targets(_)));
        assert!(matches!(Directives::parse("warn,keel_http=debug").unwrap(), Directives::Targets(_)));
        assert!(matches!(Directives::parse("info,[request]=debug").unwrap(), Directives::Env(_)));
        assert!(matches!(Directives::parse("info,[{service=auth}]=debug").unwrap(), Directives::Env(_)));
        assert!(Directives::parse("info,[").is_err());
    }

    #[test]
    fn levels_per_target_apply_and_a_replacement_applies_at_once() {
        let filter = LogFilter::new(Directives::parse("warn,chatty=debug").unwrap());
        let (buf, sub) = subscriber(filter.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(target: "quiet", "q1");
            tracing::debug!(target: "chatty::inner", "c1");
            tracing::warn!(target: "quiet", "q2");
            filter.set(Directives::parse("info,chatty=off").unwrap());
            tracing::info!(target: "quiet", "q3");
            tracing::error!(target: "chatty", "c2");
        });
        let text = lines(&buf).join("\n");
        for (what, shown) in [("q1", false), ("c1", true), ("q2", true), ("q3", true), ("c2", false)] {
            assert_eq!(text.contains(what), shown, "{what}: {text}");
        }
    }

    #[test]
    fn span_filters_enable_lines_inside_the_span_and_info_spans_always_pass() {
        let filter = LogFilter::new(Directives::parse("warn,[request]=debug").unwrap());
        let (buf, sub) = subscriber(filter);
        tracing::subscriber::with_default(sub, || {
            tracing::debug!("outside");
            let span = tracing::info_span!("request", id = 7);
            let _e = span.enter();
            tracing::debug!("inside");
        });
        let text = lines(&buf).join("\n");
        assert!(!text.contains("outside"), "{text}");
        assert!(text.contains("inside") && text.contains("id=7"), "the span's fields ride along: {text}");
    }
}
