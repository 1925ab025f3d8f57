//! The JSON log line: one object per event with the span context lifted to the top level.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Fields that every line carries at the top level when a surrounding span knows them.
const LIFTED: &[&str] = &["service", "request_id", "trace_id", "span_id"];

/// Writes `{"timestamp","level","target","message","service","request_id","trace_id","span_id",
/// "fields":{…},"span":"name"}`.
pub(crate) struct JsonFormat {
    pub(crate) service: String,
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(timestamp()));
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_owned()));

        let mut span_fields = Map::new();
        let mut span_name = None;
        let mut innermost = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                span_name = Some(span.name());
                innermost = Some(span.id());
                let ext = span.extensions();
                if let Some(f) = ext.get::<SpanFields>() {
                    span_fields.extend(f.0.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
                }
            }
        }
        if let Some((trace_id, span_id)) = innermost.and_then(|id| otel_ids(&id)) {
            span_fields.insert("trace_id".into(), Value::String(trace_id));
            span_fields.insert("span_id".into(), Value::String(span_id));
        }
        let mut visitor = JsonVisitor::default();
        event.record(&mut visitor);
        let message = visitor.fields.remove("message").unwrap_or(Value::String(String::new()));
        line.insert("message".into(), message);

        for key in LIFTED {
            let v = visitor.fields.remove(*key).or_else(|| span_fields.remove(*key));
            match (key, v) {
                (_, Some(v)) => {
                    line.insert((*key).into(), v);
                }
                (&"service", None) => {
                    line.insert("service".into(), Value::String(self.service.clone()));
                }
                _ => {}
            }
        }
        // Span fields first, so an event's own field wins over a span's of the same name.
        span_fields.extend(visitor.fields);
        if !span_fields.is_empty() {
            line.insert("fields".into(), Value::Object(span_fields));
        }
        if let Some(name) = span_name {
            line.insert("span".into(), Value::String(name.to_owned()));
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// The OpenTelemetry trace and span id of a span, when it has a valid context.
fn otel_ids(id: &Id) -> Option<(String, String)> {
    use opentelemetry::trace::TraceContextExt;
    tracing::dispatcher::get_default(|dispatch| {
        let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
    })
}

fn timestamp() -> String {
    let now = std::time::SystemTime::now();
    humantime::format_rfc3339_micros(now).to_string()
}

#[derive(Default)]
struct JsonVisitor {
    fields: Map<String, Value>,
}

/// A span's fields, kept as values rather than as a formatted string: recording a field is a
/// push, not a parse-and-reserialize of the span's JSON (which cost a fifth of the CPU of a
/// request in the benchmark).
#[derive(Default)]
pub(crate) struct SpanFields(Vec<(&'static str, Value)>);

impl SpanFields {
    fn set(&mut self, key: &'static str, value: Value) {
        if key.starts_with("otel.") {
            return;
        }
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }
}

impl Visit for SpanFields {
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.set(f.name(), serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.set(f.name(), Value::from(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.set(f.name(), Value::from(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.set(f.name(), Value::from(v));
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.set(f.name(), Value::from(v));
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.set(f.name(), Value::from(v.to_string()));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.set(f.name(), Value::from(format!("{v:?}")));
    }
}

/// Keeps [`SpanFields`] up to date for the spans the JSON formatter will print. Shares the
/// formatter's filter (see `telemetry::init`), so disabled spans cost nothing here.
pub(crate) struct SpanFieldsLayer;

impl<S> tracing_subscriber::Layer<S> for SpanFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut fields = SpanFields::default();
            attrs.record(&mut fields);
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(fields);
        }
    }
}

/// Formats nothing: the JSON formatter reads [`SpanFields`] and the event itself, so the fmt
/// layer's own per-span string is never needed.
pub(crate) struct NoFields;

impl<'w> FormatFields<'w> for NoFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(&self, _: Writer<'w>, _: R) -> fmt::Result {
        Ok(())
    }
}

impl Visit for JsonVisitor {
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.fields.insert(f.name().into(), serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.fields.insert(f.name().into(), Value::from(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.fields.insert(f.name().into(), Value::from(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.fields.insert(f.name().into(), Value::from(v));
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.fields.insert(f.name().into(), Value::from(v));
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.fields.insert(f.name().into(), Value::from(v.to_string()));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.fields.insert(f.name().into(), Value::from(format!("{v:?}")));
    }
}
