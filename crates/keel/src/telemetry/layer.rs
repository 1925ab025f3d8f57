//! The tracing layer behind Keel's logs: each span's trace ids and fields in one extension, and
//! a JSON line per enabled event.
//!
//! One layer, filtering for itself, instead of `tracing-subscriber`'s fmt layer, a fields layer
//! and an ids layer each behind its own per-layer filter. A per-layer filter looks the span up
//! again on every enter, exit, record and close to learn whether its layer saw the span, and each
//! layer kept an extension of its own: a dozen span lookups and three extension boxes for every
//! request span. This layer touches a span when it is created and when a field is recorded,
//! never on enter or exit.
//!
//! Which spans and events are on (decided per callsite, and again when `PUT /admin/log-level`
//! changes the filter):
//! * spans at `info` and above always, so a line logged inside a request carries the request's
//!   fields and ids even when the level is `warn`; lower spans when the log filter enables them;
//! * events when the log filter enables them, and `warn`/`error` events also whenever spans are
//!   exported, since they become OpenTelemetry span events (they are still not printed unless
//!   the filter enables them).
//!
//! This layer's decision is the whole subscriber's, as for any layer without a per-layer filter
//! (the `tracing-subscriber` rule): the pretty fmt layer and the OpenTelemetry layer filter
//! within what it enables.

use std::io::Write as _;

use opentelemetry::trace::SpanContext;
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::filter::LogFilter;
use super::format::{JsonFormat, SpanFields};
use super::ids::IdSource;

/// What Keel knows about a span, in the span's extensions.
#[derive(Debug, Default)]
pub(crate) struct SpanState {
    /// Its trace context, when Keel makes ids (nothing exports spans).
    pub(crate) ids: Option<SpanContext>,
    /// Its fields, when lines are JSON.
    pub(crate) fields: SpanFields,
}

/// Keel's log layer; see the module docs.
pub(crate) struct LogLayer<W> {
    filter: LogFilter,
    /// `None` when OpenTelemetry exports spans and gives them their ids.
    ids: Option<IdSource>,
    /// `None` when another layer (pretty) writes the lines.
    json: Option<(JsonFormat, W)>,
    /// Whether `warn`/`error` events must reach the OpenTelemetry layer.
    exporting: bool,
}

/// The writer of a layer that writes nothing.
pub(crate) type NoWriter = fn() -> std::io::Sink;

impl LogLayer<NoWriter> {
    /// Spans and ids only: the lines are written by another layer.
    pub(crate) fn new(filter: LogFilter, ids: Option<IdSource>) -> Self {
        Self { filter, exporting: ids.is_none(), ids, json: None }
    }

    /// Every span gets ids from `ids`; nothing is logged (tests of the ids).
    #[cfg(test)]
    pub(crate) fn ids_only(ids: IdSource) -> Self {
        Self::new(LogFilter::new("info").unwrap_or_else(|_| unreachable!()), Some(ids))
    }
}

impl<W> LogLayer<W> {
    /// JSON lines written to `writer`. Spans get ids from `ids`; `None` means OpenTelemetry
    /// exports spans and makes their ids.
    pub(crate) fn json(filter: LogFilter, ids: Option<IdSource>, format: JsonFormat, writer: W) -> Self {
        Self { filter, exporting: ids.is_none(), ids, json: Some((format, writer)) }
    }

    fn wants(&self, meta: &Metadata<'_>) -> bool {
        if meta.is_span() {
            *meta.level() <= Level::INFO || self.filter.would_enable(meta)
        } else {
            self.filter.would_enable(meta) || (self.exporting && *meta.level() <= Level::WARN)
        }
    }
}

impl<S, W> tracing_subscriber::Layer<S> for LogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.wants(meta) { Interest::always() } else { Interest::never() }
    }

    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        self.wants(meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // Spans at `info` are always on (and `warn` events for export are below that).
        self.filter.max_level_hint().map(|l| l.max(LevelFilter::INFO))
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if self.ids.is_none() && self.json.is_none() {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let ids = self.ids.as_ref().map(|source| {
            let parent =
                if attrs.is_contextual() { ctx.lookup_current() } else { attrs.parent().and_then(|p| ctx.span(p)) };
            let inherited = parent.and_then(|p| p.extensions().get::<SpanState>().and_then(|s| s.ids.clone()));
            source.child_of(inherited.as_ref())
        });
        let mut fields = SpanFields::default();
        if self.json.is_some() {
            // Room for every declared field, so recording one later does not grow the vector.
            fields = SpanFields::with_capacity(attrs.metadata().fields().len());
            attrs.record(&mut fields);
        }
        span.extensions_mut().insert(SpanState { ids, fields });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if self.json.is_none() {
            return;
        }
        if let Some(span) = ctx.span(id)
            && let Some(state) = span.extensions_mut().get_mut::<SpanState>()
        {
            values.record(&mut state.fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some((format, writer)) = &self.json else { return };
        // Only while exporting can an event be on without the log filter enabling it (a `warn`
        // kept for OpenTelemetry); otherwise `enabled` has already asked the filter.
        if self.exporting && !self.filter.would_enable(event.metadata()) {
            return;
        }
        format.with_line(&ctx, event, self.ids.as_ref(), |line| {
            // A log line that cannot be written has nowhere to be reported.
            let _ = writer.make_writer_for(event.metadata()).write_all(line.as_bytes());
        });
    }
}
