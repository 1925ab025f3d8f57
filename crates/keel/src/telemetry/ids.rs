//! Trace context when nothing exports spans: W3C trace and span ids for every span, continued
//! from a caller's `traceparent`, logged and propagated — without building OpenTelemetry spans.
//!
//! With `telemetry.otlp.endpoint` set, `tracing-opentelemetry` turns every `info` span into an
//! OpenTelemetry span: each field becomes an attribute (an allocation or two), and closing the
//! span builds, samples and drops an SDK span. Without an exporter all of that is thrown away,
//! yet it was the largest single cost of a request in the HTTP benchmark. Keel's log layer then
//! gives each span a [`SpanContext`] from an [`IdSource`] instead (trace id inherited from the
//! parent span or the remote caller, a fresh span id, the sampled flag decided by
//! `telemetry.sampling_ratio` for new traces so downstream services sample consistently) and
//! nothing else.
//!
//! The rest of Keel does not care which is in use: [`set_parent`] and [`span_context`] work
//! with either.

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample};
use tracing::span::Id;
use tracing::{Dispatch, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Registry;
use tracing_subscriber::registry::LookupSpan;

use super::layer::SpanState;

/// Makes the ids of new spans; see the module docs.
#[derive(Debug)]
pub(crate) struct IdSource {
    sampler: Sampler,
    ids: RandomIdGenerator,
}

impl IdSource {
    /// New traces get the sampled flag at `ratio` (the same rule as the SDK's sampler).
    pub(crate) fn new(ratio: f64) -> Self {
        Self { sampler: Sampler::TraceIdRatioBased(ratio), ids: RandomIdGenerator::default() }
    }

    fn flags(&self, trace_id: TraceId) -> TraceFlags {
        let r = self.sampler.should_sample(None, trace_id, "", &SpanKind::Internal, &[], &[]);
        if matches!(r.decision, SamplingDecision::RecordAndSample) {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        }
    }

    /// The context of a new span: in its parent's trace when it has a parent with ids, else
    /// at the start of a new trace.
    pub(crate) fn child_of(&self, parent: Option<&SpanContext>) -> SpanContext {
        match parent {
            Some(p) => {
                SpanContext::new(p.trace_id(), self.ids.new_span_id(), p.trace_flags(), false, p.trace_state().clone())
            }
            None => {
                let trace_id = self.ids.new_trace_id();
                SpanContext::new(trace_id, self.ids.new_span_id(), self.flags(trace_id), false, TraceState::default())
            }
        }
    }
}

/// Runs `f` on the ids of `span`, when Keel's log layer gave it some.
fn with_ids<R>(span: &Span, f: impl FnOnce(&mut SpanContext) -> R) -> Option<R> {
    span.with_subscriber(|(id, dispatch)| with_ids_of(id, dispatch, f)).flatten()
}

/// Runs `f` on the ids of the span `id` of `dispatch`, when Keel's log layer gave it some.
pub(crate) fn with_ids_of<R>(id: &Id, dispatch: &Dispatch, f: impl FnOnce(&mut SpanContext) -> R) -> Option<R> {
    let registry = dispatch
        .downcast_ref::<Registry>()
        .or_else(|| dispatch.downcast_ref::<super::deferred::Deferring>().and_then(|d| d.registry()))?;
    let data = registry.span(id)?;
    let mut ext = data.extensions_mut();
    ext.get_mut::<SpanState>().and_then(|s| s.ids.as_mut()).map(f)
}

/// Puts `ids` in the remote trace `remote`: its trace id, sampled flag and trace state, and
/// `ids`' own span id.
pub(crate) fn continue_trace(ids: &mut SpanContext, remote: &SpanContext) {
    *ids =
        SpanContext::new(remote.trace_id(), ids.span_id(), remote.trace_flags(), false, remote.trace_state().clone());
}

/// Makes `span` continue the remote trace in `cx` (a caller's `traceparent`): same trace id,
/// sampled flag and trace state, `span`'s own span id. Call it before the span is entered, so
/// spans created inside it inherit the caller's trace.
pub fn set_parent(span: &Span, cx: Context) {
    let remote = cx.span().span_context().clone();
    if !remote.is_valid() {
        return;
    }
    if with_ids(span, |ids| continue_trace(ids, &remote)).is_none() {
        let _ = span.set_parent(cx);
    }
}

/// The trace context of `span`: from Keel's light id layer or from OpenTelemetry, whichever is installed.
/// Invalid when neither knows the span.
pub fn span_context(span: &Span) -> SpanContext {
    with_ids(span, |ids| ids.clone()).unwrap_or_else(|| span.context().span().span_context().clone())
}

/// The trace context of a span the log formatter is looking at, when valid: from Keel's ids or
/// from OpenTelemetry (its trace and span id are printed as lower-case hex).
pub(crate) fn log_context<S>(span: &tracing_subscriber::registry::SpanRef<'_, S>) -> Option<SpanContext>
where
    S: for<'a> LookupSpan<'a>,
{
    let sc = match span.extensions().get::<SpanState>().and_then(|s| s.ids.clone()) {
        Some(ids) => ids,
        None => tracing::dispatcher::get_default(|dispatch| {
            tracing_opentelemetry::get_otel_context(&span.id(), dispatch).map(|cx| cx.span().span_context().clone())
        })?,
    };
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::SpanId;
    use tracing_subscriber::layer::SubscriberExt;

    fn with_layer<R>(ratio: f64, f: impl FnOnce() -> R) -> R {
        let layer = super::super::layer::LogLayer::ids_only(IdSource::new(ratio));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f)
    }

    #[test]
    fn children_share_the_trace_and_roots_start_new_ones() {
        with_layer(1.0, || {
            let root = tracing::info_span!("root");
            let child = root.in_scope(|| tracing::info_span!("child"));
            let explicit = tracing::info_span!(parent: &root, "explicit");
            let other = tracing::info_span!("other");
            let (r, c, e, o) =
                (span_context(&root), span_context(&child), span_context(&explicit), span_context(&other));
            assert!(r.is_valid() && c.is_valid() && o.is_valid());
            assert_eq!(c.trace_id(), r.trace_id());
            assert_eq!(e.trace_id(), r.trace_id());
            assert_ne!(c.span_id(), r.span_id());
            assert_ne!(o.trace_id(), r.trace_id(), "a span outside any other starts a trace");
            assert!(r.is_sampled());
        });
    }

    #[test]
    fn new_traces_follow_the_sampling_ratio() {
        with_layer(0.0, || {
            let sampled = (0..50).filter(|_| span_context(&tracing::info_span!("s")).is_sampled()).count();
            assert_eq!(sampled, 0);
        });
    }

    #[test]
    fn set_parent_continues_the_callers_trace() {
        with_layer(0.0, || {
            let caller = SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                TraceFlags::SAMPLED,
                true,
                TraceState::from_key_value([("vendor", "x")]).unwrap(),
            );
            let span = tracing::info_span!("request");
            let own = span_context(&span).span_id();
            set_parent(&span, Context::new().with_remote_span_context(caller.clone()));
            let sc = span_context(&span);
            assert_eq!(sc.trace_id(), caller.trace_id());
            assert_eq!(sc.span_id(), own, "the span keeps its own id");
            assert!(sc.is_sampled(), "a sampled caller is followed even at ratio 0");
            assert_eq!(sc.trace_state().header(), "vendor=x");
            let child = span.in_scope(|| tracing::info_span!("db"));
            assert_eq!(span_context(&child).trace_id(), caller.trace_id());
            // An invalid caller context changes nothing.
            set_parent(&span, Context::new());
            assert_eq!(span_context(&span).trace_id(), caller.trace_id());
        });
    }
}
