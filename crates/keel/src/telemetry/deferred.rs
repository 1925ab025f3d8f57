//! The request span, made only when something needs it.
//!
//! A `tracing` span costs a request a slab slot, an extension box, its fields' text, its ids,
//! an enter, an exit and a close: about 3 000 instructions, a quarter of Keel's whole HTTP stack
//! on a trivial route. Most requests need none of it — they log their access line and nothing
//! else. So when lines are JSON and nothing exports spans (production without
//! `telemetry.otlp.endpoint`), Keel's subscriber is a [`Deferring`] one, and the trace layer
//! keeps each request's span fields in a [`RequestSpan`] instead, lent to the thread while the
//! request's future is polled ([`RequestSpan::in_scope`]):
//!
//! * a line logged in the request (the access line too) is written from the lent fields and
//!   ids, exactly as it would be from the span;
//! * whatever needs the span itself makes it on the spot, from the same fields and with the ids
//!   lines already carry, and enters it: opening a span inside the request (`#[instrument]`,
//!   Keel's HTTP client) and `Span::current()` (`Span::current().record(..)`,
//!   `.in_current_span()`, trace context passed on to outbound calls and events).
//!
//! Code written against `tracing` sees no difference; only the cost moves to the requests that
//! use the span. With pretty lines (development) or span export, the span is made at once, as
//! the fmt and OpenTelemetry layers need it.
//!
//! The lent span stands for a span made when the poll began: the innermost one then. So lines
//! take its fields over those of spans entered around the request (a connection span), and its
//! ids in their trace; and it is made, or stands in, only while no other span has been entered
//! since the poll began — a span the handler entered on purpose outside the request
//! (`parent: None`) stays the current one, as it would have been. A request polled inside
//! another's loan (served in process by a handler) first makes the other's span, to nest in it.

use std::cell::Cell;
use std::sync::OnceLock;

use axum::extract::MatchedPath;
use http::{HeaderMap, Method};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use tracing::dispatcher::WeakDispatch;
use tracing::field::Value;
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Span, Subscriber};
use tracing_core::callsite::DefaultCallsite;
use tracing_core::span::Current;
use tracing_subscriber::Registry;

use super::format::SpanFields;
use super::ids::IdSource;
use crate::http::RequestId;

/// Keel's subscriber when request spans are deferred: the JSON log stack, plus making the lent
/// request span when something asks for the current span or opens one inside it.
pub(crate) struct Deferring {
    inner: Box<dyn Subscriber + Send + Sync>,
    /// The dispatcher this subscriber is in, to make spans through from inside a call to it.
    dispatch: OnceLock<WeakDispatch>,
}

impl Deferring {
    /// Wraps Keel's JSON log stack. A lent span is made from inside another span's
    /// `new_span` (after that span's `enabled` check), so `inner` must have no per-layer
    /// filters, which keep state between the two calls; Keel's stack has none.
    pub(crate) fn new(inner: impl Subscriber + Send + Sync) -> Self {
        Self { inner: Box::new(inner), dispatch: OnceLock::new() }
    }

    /// The registry under the layers, where spans keep their data. (A dispatcher's
    /// `downcast_ref::<Registry>()` does not reach it: forwarding `Subscriber::downcast_raw`
    /// takes `unsafe`, which this crate forbids, so Keel's id helpers ask here.)
    pub(crate) fn registry(&self) -> Option<&Registry> {
        self.inner.downcast_ref::<Registry>()
    }

    /// Makes the lent span, if there is one and no other span was entered since the poll
    /// began, and enters it.
    fn make_lent(&self) {
        // No loan also while this span is being made (it calls back here).
        with_loan(|lent| {
            let RequestSpan::Pending(p) = &lent.span else { return };
            if DEPTH.try_with(Cell::get).ok() != Some(lent.base_depth) {
                return;
            }
            let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else { return };
            let id = p.with_values(|values| dispatch.new_span(&Attributes::new(&META, values)));
            match &p.ids {
                Ids::Made(ids) => {
                    super::ids::with_ids_of(&id, &dispatch, |own| *own = ids.clone());
                }
                Ids::Later(Some(remote)) => {
                    super::ids::with_ids_of(&id, &dispatch, |own| super::ids::continue_trace(own, remote));
                }
                Ids::Later(None) => {}
            }
            dispatch.enter(&id);
            lent.span = RequestSpan::MadeLater(MadeLater { id, dispatch });
            lent.entered_when_made = true;
        });
    }
}

thread_local! {
    /// The request whose future this thread is polling, while its span is not made. Empty
    /// also while its span is being made or a line reads it ([`with_loan`] takes it out).
    static LENT: Cell<Option<Lent>> = const { Cell::new(None) };
    /// Spans entered on this thread through a [`Deferring`] subscriber and not exited yet.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

impl Subscriber for Deferring {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
        self.inner.on_register_dispatch(subscriber);
    }
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(meta)
    }
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        self.inner.enabled(meta)
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.inner.max_level_hint()
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        if attrs.is_contextual() {
            self.make_lent();
        }
        self.inner.new_span(attrs)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        self.inner.record(span, values);
    }
    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.inner.record_follows_from(span, follows);
    }
    fn event_enabled(&self, event: &Event<'_>) -> bool {
        self.inner.event_enabled(event)
    }
    fn event(&self, event: &Event<'_>) {
        self.inner.event(event);
    }
    fn enter(&self, span: &Id) {
        let _ = DEPTH.try_with(|d| d.set(d.get() + 1));
        self.inner.enter(span);
    }
    fn exit(&self, span: &Id) {
        self.inner.exit(span);
        let _ = DEPTH.try_with(|d| d.set(d.get().saturating_sub(1)));
    }
    fn clone_span(&self, id: &Id) -> Id {
        self.inner.clone_span(id)
    }
    fn try_close(&self, id: Id) -> bool {
        self.inner.try_close(id)
    }
    fn current_span(&self) -> Current {
        self.make_lent();
        self.inner.current_span()
    }
}

/// The `request` span's callsite (without export fields), declared as `tracing`'s macros
/// declare one, so the span can also be made from inside a call to the subscriber. There the
/// macros may find no subscriber: while a scoped dispatcher is set anywhere in the process
/// (`tracing::subscriber::with_default`, tests), tracing does not re-enter the current one and
/// hands out a no-op, so a macro would make a disabled span.
static CALLSITE: DefaultCallsite = DefaultCallsite::new(&META);
static META: Metadata<'static> = tracing_core::metadata! {
    name: "request",
    target: module_path!(),
    level: tracing::Level::INFO,
    fields: &["service", "request_id", "http.request.method", "http.route"],
    callsite: &CALLSITE,
    kind: tracing_core::metadata::Kind::SPAN,
};

/// A request's span: made, or kept as its fields until something needs it.
#[derive(Debug, Default)]
pub(crate) enum RequestSpan {
    /// Made at once.
    Made(Span),
    /// Made while lent.
    MadeLater(MadeLater),
    /// Not made yet. Boxed so that lending it to the thread and back on every poll moves a
    /// pointer, not the fields.
    Pending(Box<Pending>),
    /// Lent to the thread right now.
    #[default]
    Lent,
}

/// What the span would be made from.
#[derive(Debug)]
pub(crate) struct Pending {
    service: &'static str,
    request_id: Option<RequestId>,
    method: Method,
    route: Option<MatchedPath>,
    ids: Ids,
}

impl Pending {
    fn with_values<R>(&self, f: impl FnOnce(&tracing::field::ValueSet<'_>) -> R) -> R {
        values(self.service, self.id(), self.method.as_str(), self.route(), f)
    }
    fn id(&self) -> &str {
        id_text(self.request_id.as_ref())
    }
    fn route(&self) -> &str {
        route_text(self.route.as_ref())
    }
}

/// The `request_id` field's text: empty when the request has no id.
fn id_text(id: Option<&RequestId>) -> &str {
    id.map(RequestId::as_str).unwrap_or_default()
}

/// The `http.route` field's text: the matched template, or [`crate::http::trace::UNMATCHED`].
fn route_text(route: Option<&MatchedPath>) -> &str {
    route.map_or(crate::http::trace::UNMATCHED, MatchedPath::as_str)
}

/// The span's field values, in [`META`]'s order.
fn values<R>(
    service: &str,
    request_id: &str,
    method: &str,
    route: &str,
    f: impl FnOnce(&tracing::field::ValueSet<'_>) -> R,
) -> R {
    let values: [Option<&dyn Value>; 4] = [Some(&service), Some(&request_id), Some(&method), Some(&route)];
    f(&META.fields().value_set_all(&values))
}

#[derive(Debug)]
enum Ids {
    /// Not needed yet; the caller's context when it sent a valid `traceparent`.
    Later(Option<SpanContext>),
    /// Made for a line: the span, if made later, gets the same.
    Made(SpanContext),
}

/// What is lent to the thread during a poll.
#[derive(Debug)]
struct Lent {
    span: RequestSpan,
    /// [`DEPTH`] when the poll began.
    base_depth: usize,
    /// The span was made during the loan, so entered then, and is to be exited when it ends.
    entered_when_made: bool,
}

impl RequestSpan {
    /// The `request` span of a request with these fields, or their promise when the current
    /// subscriber defers it. Continues the caller's trace from a `traceparent` in `headers`.
    pub(crate) fn new(
        service: &'static str,
        request_id: Option<&RequestId>,
        method: &Method,
        route: Option<&MatchedPath>,
        headers: &HeaderMap,
    ) -> Self {
        Self::continuing(service, request_id, method, route, headers, headers.contains_key(&TRACEPARENT))
    }

    /// [`new`](Self::new) for a caller that has already looked for a `traceparent` in `headers`
    /// (`traceparent`: whether there is one).
    pub(crate) fn continuing(
        service: &'static str,
        request_id: Option<&RequestId>,
        method: &Method,
        route: Option<&MatchedPath>,
        headers: &HeaderMap,
        traceparent: bool,
    ) -> Self {
        let remote = traceparent
            .then(|| super::extract_context(headers))
            .map(|cx| cx.span().span_context().clone())
            .filter(SpanContext::is_valid);
        // The callsite is registered (every subscriber told of it) as a macro's would be; whether
        // the span is on is asked of the current subscriber itself, as the cached interest is
        // the union of every subscriber's.
        let _ = CALLSITE.interest();
        let (deferring, enabled) = tracing::dispatcher::get_default(|d| {
            let deferring = d.is::<Deferring>();
            (deferring, deferring || d.enabled(&META))
        });
        if deferring {
            let pending = Pending {
                service,
                request_id: request_id.cloned(),
                method: method.clone(),
                route: route.cloned(),
                ids: Ids::Later(remote),
            };
            return Self::Pending(Box::new(pending));
        }
        let (id, route) = (id_text(request_id), route_text(route));
        let span = if super::exporting() {
            // The `otel.*` fields are read only by the exporter.
            let span = tracing::info_span!(
                "request",
                service,
                request_id = id,
                http.request.method = method.as_str(),
                http.route = route,
                http.response.status_code = tracing::field::Empty,
                otel.name = tracing::field::Empty,
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
            );
            span.record("otel.name", format!("{method} {route}"));
            span
        } else if enabled {
            values(service, id, method.as_str(), route, |values| Span::new(&META, values))
        } else {
            Span::none()
        };
        if let Some(remote) = remote {
            super::set_parent(&span, opentelemetry::Context::new().with_remote_span_context(remote));
        }
        Self::Made(span)
    }

    /// Runs `f` inside the request span: entered when made (and passed to `f` when made at
    /// once), else lent to this thread for the duration (and made by whatever needs it, then
    /// left entered until `f` returns). Everything is put back even if `f` unwinds.
    pub(crate) fn in_scope<R>(&mut self, f: impl FnOnce(Option<&Span>) -> R) -> R {
        match self {
            Self::Made(span) => return span.in_scope(|| f(Some(span))),
            Self::MadeLater(MadeLater { id, dispatch }) => {
                dispatch.enter(id);
                let _exit = Exit(id, dispatch);
                return f(None);
            }
            Self::Pending(_) => {}
            Self::Lent => return f(None),
        }
        let Ok(mut previous) = LENT.try_with(Cell::take) else {
            // The thread is being torn down: no loan, no span.
            return f(None);
        };
        if previous.as_ref().is_some_and(|p| p.span.is_pending()) {
            // A request polled inside another's loan (served in process by a handler): the
            // other's span is made first, so this one nests in it as an eager span would.
            let _ = LENT.try_with(|cell| cell.set(previous.take()));
            tracing::dispatcher::get_default(|d| {
                if let Some(deferring) = d.downcast_ref::<Deferring>() {
                    deferring.make_lent();
                }
            });
            previous = LENT.try_with(Cell::take).ok().flatten();
        }
        let base_depth = DEPTH.try_with(Cell::get).unwrap_or_default();
        let lent = Lent { span: std::mem::take(self), base_depth, entered_when_made: false };
        // The slot was there a moment ago, so it still is.
        let _ = LENT.try_with(|cell| cell.set(Some(lent)));
        let _guard = Return { span: self, previous };
        f(None)
    }
}

/// A span made while lent: the dispatcher's handle on it, closed when dropped (as a
/// [`Span`] would be).
#[derive(Debug)]
pub(crate) struct MadeLater {
    id: Id,
    dispatch: Dispatch,
}

impl Drop for MadeLater {
    fn drop(&mut self) {
        self.dispatch.try_close(self.id.clone());
    }
}

/// Exits a span when dropped.
struct Exit<'a>(&'a Id, &'a Dispatch);

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        self.1.exit(self.0);
    }
}

/// Gives the lent span back, and the thread its previous loan (a request polled inside
/// another's poll), when dropped — also when the poll unwinds. Exits the span if it was made
/// (and entered) during the loan.
struct Return<'a> {
    span: &'a mut RequestSpan,
    previous: Option<Lent>,
}

impl Drop for Return<'_> {
    fn drop(&mut self) {
        // The loan is in the slot: it is taken out only by `with_loan` (a line reading it, a
        // span being made), which runs no future, so never drops this guard, and puts it back;
        // and a thread being torn down has no poll in progress.
        let previous = self.previous.take();
        if let Ok(Some(lent)) = LENT.try_with(|cell| cell.replace(previous)) {
            *self.span = lent.span;
            if lent.entered_when_made
                && let RequestSpan::MadeLater(MadeLater { id, dispatch }) = &*self.span
            {
                dispatch.exit(id);
            }
        }
    }
}

/// Runs `f` on the thread's loan, if there is one. The loan is out of the slot meanwhile (so
/// a call back from inside `f`, a span being made, finds none) and put back after, also if `f`
/// unwinds.
fn with_loan<R>(f: impl FnOnce(&mut Lent) -> R) -> Option<R> {
    LENT.try_with(|cell| {
        let mut out = Out { cell, lent: cell.take() };
        let lent = out.lent.as_mut()?;
        Some(f(lent))
    })
    .ok()
    .flatten()
}

/// Puts a loan taken out by [`with_loan`] back in its slot when dropped.
struct Out<'a> {
    cell: &'a Cell<Option<Lent>>,
    lent: Option<Lent>,
}

impl Drop for Out<'_> {
    fn drop(&mut self) {
        // The slot is empty again by then: a request lent from inside `f` (polled by a line's
        // writer, say) has been given back.
        self.cell.set(self.lent.take());
    }
}

impl RequestSpan {
    fn is_pending(&self) -> bool {
        matches!(self, Self::Pending(_))
    }
}

pub(crate) static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// For a line logged in a lent request (no span entered since its poll began): its span's
/// fields, recorded into `fields` over those of the spans around it, and its ids, made the first
/// time from `source` as a child of `parent` (the innermost span's) or of the caller's trace.
/// `None` when no request is lent, its span is made, or a span was entered inside it.
pub(crate) fn lent_fields(
    fields: &mut SpanFields,
    source: Option<&IdSource>,
    parent: impl FnOnce() -> Option<SpanContext>,
) -> Option<Option<SpanContext>> {
    with_lent(source, parent, |lent, ids| {
        fields.set_own("service", lent.service);
        fields.set_own("request_id", lent.request_id);
        fields.set_own("http.request.method", lent.method);
        fields.set_own("http.route", lent.route);
        ids
    })
}

/// The lent request's span fields, as [`lent_fields`] records them.
pub(crate) struct LentFields<'a> {
    pub(crate) service: &'a str,
    pub(crate) request_id: &'a str,
    pub(crate) method: &'a str,
    pub(crate) route: &'a str,
}

/// [`lent_fields`], handing the fields and ids to `f` instead of recording them.
pub(crate) fn with_lent<R>(
    source: Option<&IdSource>,
    parent: impl FnOnce() -> Option<SpanContext>,
    f: impl FnOnce(LentFields<'_>, Option<SpanContext>) -> R,
) -> Option<R> {
    with_loan(|lent| {
        if DEPTH.try_with(Cell::get).ok() != Some(lent.base_depth) {
            return None;
        }
        let RequestSpan::Pending(p) = &mut lent.span else { return None };
        let ids = match (&p.ids, source) {
            (Ids::Made(ids), _) => Some(ids.clone()),
            (Ids::Later(remote), Some(source)) => {
                let ids = match remote {
                    Some(remote) => source.child_of(Some(remote)),
                    None => source.child_of(parent().as_ref()),
                };
                p.ids = Ids::Made(ids.clone());
                Some(ids)
            }
            (Ids::Later(_), None) => None,
        };
        let fields = LentFields { service: p.service, request_id: p.id(), method: p.method.as_str(), route: p.route() };
        Some(f(fields, ids))
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tower::{Layer as _, ServiceExt as _};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::super::format::tests::Buffer;
    use super::*;
    use crate::http::trace::TraceLayer;

    /// Whether this thread holds no loan (looked at and put back).
    fn no_loan() -> bool {
        LENT.with(|cell| {
            let lent = cell.take();
            let none = lent.is_none();
            cell.set(lent);
            none
        })
    }

    impl Buffer {
        fn lines(&self) -> Vec<Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
        }
    }

    /// Counts the spans made, and those closed.
    #[derive(Clone, Default)]
    struct Spans(Arc<AtomicUsize>, Arc<AtomicUsize>);

    impl<S: Subscriber> tracing_subscriber::Layer<S> for Spans {
        fn on_new_span(&self, _: &Attributes<'_>, _: &Id, _: tracing_subscriber::layer::Context<'_, S>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn on_close(&self, _: Id, _: tracing_subscriber::layer::Context<'_, S>) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Spans {
        fn made(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
        fn closed(&self) -> usize {
            self.1.load(Ordering::SeqCst)
        }
    }

    /// Keel's JSON stack, deferring or not; its lines and a count of the spans it made.
    fn subscriber(deferring: bool) -> (tracing::Dispatch, Buffer, Spans) {
        subscriber_with(deferring, super::super::format::JsonFormat::new("proc".into(), Default::default()))
    }

    /// [`subscriber`] with lines written by `format`.
    fn subscriber_with(
        deferring: bool,
        format: super::super::format::JsonFormat,
    ) -> (tracing::Dispatch, Buffer, Spans) {
        let (out, made) = (Buffer::default(), Spans::default());
        let w = out.clone();
        let json = tracing_subscriber::registry().with(made.clone()).with(super::super::layer::LogLayer::json(
            super::super::filter::LogFilter::new("info").unwrap(),
            Some(IdSource::new(1.0)),
            format,
            move || w.clone(),
        ));
        let dispatch =
            if deferring { tracing::Dispatch::new(Deferring::new(json)) } else { tracing::Dispatch::new(json) };
        (dispatch, out, made)
    }

    /// Serves one request through the trace layer (with a request id and a matched route, as
    /// in Keel's stack), running `handler` in the request.
    async fn serve<F, Fut>(traceparent: Option<&str>, handler: F)
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send,
    {
        serve_as("req-1", traceparent, handler).await;
    }

    /// [`serve`] with the request id `id`.
    async fn serve_as<F, Fut>(id: &str, traceparent: Option<&str>, handler: F)
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let svc = tower::service_fn(move |_: http::Request<axum::body::Body>| {
            let handler = handler.clone();
            async move {
                handler().await;
                Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
            }
        });
        let router = axum::Router::new()
            .route_service("/items/{id}", TraceLayer::new("svc", true).layer(svc))
            .layer(crate::http::request_id::RequestIdLayer);
        let mut req = http::Request::get("/items/7").header("x-request-id", id);
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        let resp = router.oneshot(req.body(axum::body::Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200);
    }

    /// The W3C propagator `telemetry::init` sets up. Global: every test that reads a
    /// `traceparent` sets it, whichever runs first.
    fn w3c_propagator() {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    }

    /// The parts of a line that do not change from run to run.
    fn stable(line: &Value) -> Value {
        let mut line = line.clone();
        for k in ["timestamp", "trace_id", "span_id"] {
            assert!(line[k].is_string(), "{k} in {line}");
            line[k] = Value::Null;
        }
        line["fields"]["latency_ms"] = Value::Null;
        line
    }

    #[tokio::test]
    async fn a_deferred_request_logs_the_same_lines_without_making_its_span() {
        let mut runs = Vec::new();
        for deferring in [true, false] {
            let (dispatch, out, made) = subscriber(deferring);
            let _default = tracing::dispatcher::set_default(&dispatch);
            serve(None, || async { tracing::warn!(n = 1, "inside") }).await;
            let lines = out.lines();
            assert_eq!(lines.len(), 2, "{lines:?}");
            assert_eq!(lines[0]["trace_id"], lines[1]["trace_id"], "one request, one trace: {lines:?}");
            assert_eq!(lines[0]["span_id"], lines[1]["span_id"]);
            assert_eq!(made.made(), usize::from(!deferring), "deferring: {deferring}");
            runs.push(lines.iter().map(stable).collect::<Vec<_>>());
        }
        assert_eq!(runs[0], runs[1]);
        let inside = &runs[0][0];
        assert_eq!(inside["service"], "svc");
        assert_eq!(inside["request_id"], "req-1");
        assert_eq!(inside["span"], "request");
        assert_eq!(inside["fields"]["http.route"], "/items/{id}");
        assert_eq!(inside["fields"]["http.request.method"], "GET");
        assert_eq!(runs[0][1]["message"], "request finished");
    }

    /// A line's text with the values that change from run to run (the time, the ids, the
    /// latency) replaced, everything else (key order, spacing, escapes) kept.
    fn stable_text(line: &str) -> String {
        let parsed: Value = serde_json::from_str(line).unwrap();
        let mut text = line.to_owned();
        for k in ["timestamp", "trace_id", "span_id"] {
            if let Some(v) = parsed[k].as_str() {
                text = text.replace(&format!("\"{k}\":\"{v}\""), &format!("\"{k}\":\"<{k}>\""));
            }
        }
        if let Some(at) = text.find("\"latency_ms\":") {
            let from = at + "\"latency_ms\":".len();
            let to = from + text[from..].find(['}', ',']).unwrap();
            text.replace_range(from..to, "<latency>");
        }
        text
    }

    /// The lines of one request served with `format`, through a deferring subscriber (the
    /// handler logs a line first when `inside`), and how many of them the access-line path
    /// wrote.
    async fn access_lines(
        format: super::super::format::JsonFormat,
        traceparent: Option<&str>,
        outer: bool,
        inside: bool,
    ) -> (Vec<String>, usize) {
        use super::super::format::tests::ACCESS_LINES;
        let (dispatch, out, _) = subscriber_with(true, format);
        let _default = tracing::dispatcher::set_default(&dispatch);
        let outer = outer.then(|| tracing::info_span!("conn", peer = "10.0.0.1").entered());
        let before = ACCESS_LINES.with(std::cell::Cell::get);
        serve(traceparent, move || async move {
            if inside {
                tracing::info!("inside");
            }
        })
        .await;
        let fast = ACCESS_LINES.with(std::cell::Cell::get) - before;
        drop(outer);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        (text.lines().map(str::to_owned).collect(), fast)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_access_line_is_the_line_the_generic_path_writes_byte_for_byte() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        w3c_propagator();
        // The ids made by the access line itself (no line before it), by a line before it, or
        // continuing the caller's trace; an outer span sends the line down the generic path.
        let cases = [
            (None, false, false),
            (None, false, true),
            (Some(tp), false, false),
            (Some(tp), false, true),
            (None, true, true),
        ];
        for (traceparent, outer, inside) in cases {
            let format = || super::super::format::JsonFormat::new("proc".into(), Default::default());
            let stable = |lines: &[String]| lines.iter().map(|l| stable_text(l)).collect::<Vec<_>>();
            let (fast, taken) = access_lines(format(), traceparent, outer, inside).await;
            let (generic, not_taken) = access_lines(format().generic_only(), traceparent, outer, inside).await;
            let case = format!("traceparent {traceparent:?}, outer span {outer}, a line before {inside}");
            assert_eq!((taken, not_taken), (usize::from(!outer), 0), "{case}");
            assert_eq!(fast.len(), 1 + usize::from(inside), "{fast:?}");
            assert_eq!(stable(&fast), stable(&generic), "{case}");
            let access = fast.last().unwrap();
            let line: Value = serde_json::from_str(access).unwrap();
            assert_eq!(line["message"], "request finished", "{access}");
            assert_eq!(line["fields"]["http.response.status_code"], 200, "{access}");
            assert!(line["fields"]["latency_ms"].as_f64().unwrap() >= 0.0, "{access}");
            assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{access}");
            if let Some(tp) = traceparent {
                assert_eq!(line["trace_id"], tp[3..35], "{case}");
            }
            if inside {
                let first: Value = serde_json::from_str(&fast[0]).unwrap();
                assert_eq!((&first["trace_id"], &first["span_id"]), (&line["trace_id"], &line["span_id"]), "{case}");
            }
            if outer {
                assert_eq!(line["fields"]["peer"], "10.0.0.1", "{access}");
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_masked_access_field_is_masked_on_the_access_line() {
        let masker = crate::security::mask::Masker::new(["latency_ms"]);
        let format = super::super::format::JsonFormat::new("proc".into(), masker);
        let (lines, fast) = access_lines(format, None, false, true).await;
        assert_eq!(fast, 0, "masked: the generic path");
        assert!(lines[1].contains("\"latency_ms\":\"***\""), "{}", lines[1]);
    }

    #[tokio::test]
    async fn the_span_is_made_when_asked_for_with_the_ids_lines_already_carry() {
        let (dispatch, out, made) = subscriber(true);
        let _default = tracing::dispatcher::set_default(&dispatch);
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        serve(None, move || {
            let s = s.clone();
            async move {
                tracing::info!("before");
                let current = Span::current();
                assert_eq!(current.metadata().map(Metadata::name), Some("request"));
                *s.lock().unwrap() = Some(super::super::span_context(&current));
                tracing::info!("after");
                tracing::info_span!("db").in_scope(|| tracing::info!("in a child"));
            }
        })
        .await;
        assert_eq!(made.made(), 2, "the request span, made, and the child");
        assert_eq!(made.closed(), 2, "both closed when the request ends");
        let lines = out.lines();
        assert_eq!(lines.len(), 4, "{lines:?}");
        let sc = seen.lock().unwrap().clone().unwrap();
        for line in &lines[..2] {
            assert_eq!(line["trace_id"], sc.trace_id().to_string(), "{line}");
            assert_eq!(line["span_id"], sc.span_id().to_string(), "{line}");
            assert_eq!(line["span"], "request");
        }
        assert_eq!(lines[2]["span"], "db");
        assert_eq!(lines[2]["trace_id"], sc.trace_id().to_string(), "a child span is in the request's trace");
        assert_ne!(lines[2]["span_id"], sc.span_id().to_string());
        assert_eq!(lines[2]["request_id"], "req-1", "the child's lines have the request's fields");
        assert_eq!(lines[3]["message"], "request finished");
        for k in ["service", "request_id", "fields"] {
            assert_eq!(lines[0][k], lines[1][k], "the made span has the fields lines had without it: {k}");
        }
        assert_eq!(lines[3]["span_id"], sc.span_id().to_string());
        assert_eq!(DEPTH.with(Cell::get), 0, "every span entered was exited");
        assert!(no_loan(), "the loan was returned");
    }

    #[tokio::test]
    async fn the_callers_trace_is_continued_whether_or_not_the_span_is_made() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        w3c_propagator();
        // Never made; made after a line (with that line's ids); made before any line.
        for (make_before, make_after) in [(false, false), (false, true), (true, false)] {
            let (dispatch, out, _) = subscriber(true);
            let _default = tracing::dispatcher::set_default(&dispatch);
            serve(Some(tp), move || async move {
                if make_before {
                    let _ = Span::current();
                }
                tracing::info!("inside");
                if make_after {
                    let _ = Span::current();
                }
            })
            .await;
            let lines = out.lines();
            assert_eq!(lines.len(), 2);
            for line in &lines {
                assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{line}");
                assert_ne!(line["span_id"], "00f067aa0ba902b7", "the request has its own span id: {line}");
            }
            assert_eq!(lines[0]["span_id"], lines[1]["span_id"]);
        }
    }

    /// Lines of a request served inside a span entered around it, and of a request served in
    /// process by another's handler, deferring and not.
    async fn surrounded_and_nested(deferring: bool) -> (Vec<Value>, Spans, String) {
        let (dispatch, out, spans) = subscriber(deferring);
        let _default = tracing::dispatcher::set_default(&dispatch);
        let conn = tracing::info_span!("conn", peer = "10.0.0.1");
        {
            let _g = conn.enter();
            serve(None, || async { tracing::info!("in a surrounded request") }).await;
        }
        let conn_trace = super::super::span_context(&conn).trace_id().to_string();
        drop(conn);
        serve_as("outer", None, || async {
            tracing::info!("in the outer request");
            serve_as("inner", None, || async {
                tokio::task::yield_now().await;
                tracing::info!("in the inner request");
            })
            .await;
        })
        .await;
        (out.lines(), spans, conn_trace)
    }

    #[tokio::test]
    async fn surrounded_and_nested_requests_log_as_with_made_spans() {
        let (lines, spans, conn_trace) = surrounded_and_nested(true).await;
        let (eager, _, _) = surrounded_and_nested(false).await;
        assert_eq!(lines.iter().map(stable).collect::<Vec<_>>(), eager.iter().map(stable).collect::<Vec<_>>());
        let by_message = |m: &str| lines.iter().find(|l| l["message"] == m).unwrap().clone();
        let surrounded = by_message("in a surrounded request");
        assert_eq!(surrounded["request_id"], "req-1");
        assert_eq!(surrounded["span"], "request");
        assert_eq!(surrounded["fields"]["peer"], "10.0.0.1", "the surrounding span's fields are kept");
        assert_eq!(surrounded["trace_id"], conn_trace, "the request is in the surrounding span's trace");
        let (outer, inner) = (by_message("in the outer request"), by_message("in the inner request"));
        assert_eq!(outer["request_id"], "outer");
        assert_eq!(inner["request_id"], "inner");
        assert_eq!(inner["trace_id"], outer["trace_id"], "the inner request is in the outer's trace");
        assert_ne!(inner["span_id"], outer["span_id"]);
        let inner_access = lines.iter().find(|l| l["message"] == "request finished" && l["request_id"] == "inner");
        assert_eq!(inner_access.unwrap()["span_id"], inner["span_id"]);
        assert_eq!(spans.made(), spans.closed(), "every span made was closed");
        assert_eq!(spans.made(), 2, "the surrounding span, and the outer request's (for the inner one to nest in)");
        assert!(no_loan(), "both loans were returned");
        assert_eq!(DEPTH.with(Cell::get), 0, "every span entered was exited");
    }

    /// Panics when a `request` span is made.
    struct PanicOnRequestSpan;

    impl<S: Subscriber> tracing_subscriber::Layer<S> for PanicOnRequestSpan {
        fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: tracing_subscriber::layer::Context<'_, S>) {
            if attrs.metadata().name() == "request" {
                panic!("subscriber bug");
            }
        }
    }

    #[tokio::test]
    async fn a_panic_while_the_span_is_made_puts_the_loan_back() {
        let out = Buffer::default();
        let w = out.clone();
        let json = tracing_subscriber::registry().with(PanicOnRequestSpan).with(super::super::layer::LogLayer::json(
            super::super::filter::LogFilter::new("info").unwrap(),
            Some(IdSource::new(1.0)),
            super::super::format::JsonFormat::new("proc".into(), Default::default()),
            move || w.clone(),
        ));
        let dispatch = tracing::Dispatch::new(Deferring::new(json));
        let _default = tracing::dispatcher::set_default(&dispatch);
        serve(None, || async {
            assert!(std::panic::catch_unwind(|| drop(Span::current())).is_err(), "making the span panicked");
            tracing::info!("after the panic");
        })
        .await;
        let lines = out.lines();
        let after = lines.iter().find(|l| l["message"] == "after the panic").unwrap();
        assert_eq!(after["request_id"], "req-1", "the loan is back: the line has the request's fields");
        let access = lines.iter().find(|l| l["message"] == "request finished").unwrap();
        assert_eq!(access["request_id"], "req-1");
        assert!(no_loan(), "the loan was returned");
        assert_eq!(DEPTH.with(Cell::get), 0, "no span was entered");
    }

    #[tokio::test]
    async fn a_span_made_across_polls_or_dropped_mid_request_is_exited_and_closed() {
        let (dispatch, out, spans) = subscriber(true);
        let _default = tracing::dispatcher::set_default(&dispatch);
        serve(None, || async {
            let _ = Span::current();
            for _ in 0..3 {
                tokio::task::yield_now().await;
                assert_eq!(Span::current().metadata().map(Metadata::name), Some("request"), "entered on every poll");
            }
        })
        .await;
        assert_eq!(Span::current().metadata(), None);
        let stalled = serve(None, || async {
            let _ = Span::current();
            std::future::pending::<()>().await;
        });
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(10), stalled).await;
        assert!(timed_out.is_err());
        assert_eq!((spans.made(), spans.closed()), (2, 2), "made and closed, also when dropped mid-request");
        assert_eq!(DEPTH.with(Cell::get), 0);
        assert_eq!(out.lines().len(), 1, "the finished request's access line");
    }

    #[tokio::test]
    async fn a_span_entered_outside_the_request_stays_current() {
        let (dispatch, out, made) = subscriber(true);
        let _default = tracing::dispatcher::set_default(&dispatch);
        serve(None, || async {
            let root = tracing::info_span!(parent: None, "job");
            let _g = root.enter();
            assert_eq!(Span::current().metadata().map(Metadata::name), Some("job"));
            tracing::info!("in the job");
        })
        .await;
        assert_eq!(made.made(), 1, "only the job's span");
        let lines = out.lines();
        assert_eq!(lines[0]["span"], "job");
        assert!(lines[0].get("request_id").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["span"], "request");
    }

    #[tokio::test]
    async fn a_panicking_poll_returns_the_loan() {
        let (dispatch, _out, _) = subscriber(true);
        let _default = tracing::dispatcher::set_default(&dispatch);
        for make in [false, true] {
            let caught =
                futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(serve(None, move || async move {
                    if make {
                        let _ = Span::current();
                    }
                    panic!("handler bug");
                })))
                .await;
            assert!(caught.is_err());
            assert!(no_loan(), "no request stays lent");
            assert_eq!(DEPTH.with(Cell::get), 0, "the made span was exited");
            assert_eq!(Span::current().metadata(), None, "no span stays current");
        }
    }
}
