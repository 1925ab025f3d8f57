//! The JSON log line: one object per event with the span context lifted to the top level.

use std::fmt;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Writes `{"timestamp","level","target","message","service","request_id","trace_id","span_id",
/// "fields":{…},"span":"name"}`.
pub(crate) struct JsonFormat {
    pub(crate) service: String,
    /// Sensitive field names become `***`; credentials in any text are scrubbed.
    pub(crate) masker: crate::security::mask::Masker,
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        // Fields by precedence: span fields root to leaf, then the event's own; a later key
        // replaces an earlier one. Small vectors, not maps: a line has a dozen fields.
        let mut fields: Vec<(&'static str, Value)> = Vec::with_capacity(16);
        let mut span_name = None;
        let mut innermost = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                span_name = Some(span.name());
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    for (k, v) in &f.0 {
                        put(&mut fields, k, v.clone());
                    }
                }
                innermost = Some(span);
            }
        }
        let mut own = SpanFields::default();
        event.record(&mut own);
        for (k, v) in own.0 {
            put(&mut fields, k, v);
        }
        for (k, v) in &mut fields {
            mask_value(&self.masker, k, v);
        }
        let ids = innermost.as_ref().and_then(super::ids::log_ids);

        let mut line = String::with_capacity(256);
        line.push('{');
        key(&mut line, "timestamp", true);
        string(&mut line, &timestamp());
        key(&mut line, "level", false);
        string(&mut line, meta.level().as_str());
        key(&mut line, "target", false);
        string(&mut line, meta.target());
        key(&mut line, "message", false);
        match take(&mut fields, "message") {
            Some(Value::String(m)) => string(&mut line, &m),
            Some(other) => value(&mut line, &other),
            None => line.push_str("\"\""),
        }
        key(&mut line, "service", false);
        match take(&mut fields, "service") {
            Some(v) => value(&mut line, &v),
            None => string(&mut line, &self.service),
        }
        if let Some(v) = take(&mut fields, "request_id") {
            key(&mut line, "request_id", false);
            value(&mut line, &v);
        }
        if let Some((trace_id, span_id)) = &ids {
            key(&mut line, "trace_id", false);
            string(&mut line, trace_id);
            key(&mut line, "span_id", false);
            string(&mut line, span_id);
        }
        if !fields.is_empty() {
            key(&mut line, "fields", false);
            line.push('{');
            for (i, (k, v)) in fields.iter().enumerate() {
                key(&mut line, k, i == 0);
                value(&mut line, v);
            }
            line.push('}');
        }
        if let Some(name) = span_name {
            key(&mut line, "span", false);
            string(&mut line, name);
        }
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

/// Masks one field in place: a sensitive name hides the whole value, other text is scrubbed of
/// bearer tokens and URL passwords (nested JSON values too).
fn mask_value(masker: &crate::security::mask::Masker, k: &str, v: &mut Value) {
    if masker.is_sensitive(k) {
        if !v.is_null() {
            *v = Value::String(crate::config::MASK.to_owned());
        }
        return;
    }
    match v {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(o) = crate::security::mask::scrub(s) {
                *s = o;
            }
        }
        Value::Object(_) | Value::Array(_) => masker.json(v),
        _ => {}
    }
}

/// Field formatting for the pretty format, with the same masking as the JSON lines.
pub(crate) fn masked_pretty_fields(
    masker: crate::security::mask::Masker,
) -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(move |w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug| {
        let text = format!("{value:?}");
        if field.name() == "message" {
            return write!(w, "{}", crate::security::mask::scrub(&text));
        }
        write!(w, "{}={}", field.name(), masker.field(field.name(), &text))
    })
    .delimited(" ")
}

fn put(fields: &mut Vec<(&'static str, Value)>, k: &'static str, v: Value) {
    match fields.iter_mut().find(|(key, _)| *key == k) {
        Some(slot) => slot.1 = v,
        None => fields.push((k, v)),
    }
}

fn take(fields: &mut Vec<(&'static str, Value)>, k: &str) -> Option<Value> {
    let i = fields.iter().position(|(key, _)| *key == k)?;
    Some(fields.remove(i).1)
}

fn key(out: &mut String, k: &str, first: bool) {
    if !first {
        out.push(',');
    }
    string(out, k);
    out.push(':');
}

fn value(out: &mut String, v: &Value) {
    match v {
        Value::String(s) => string(out, s),
        other => out.push_str(&other.to_string()),
    }
}

/// Writes `s` as a JSON string.
fn string(out: &mut String, s: &str) {
    out.push('"');
    // Copy runs of characters that need no escape in one go; only `"`, `\\` and control
    // characters (all ASCII, so byte positions are char boundaries) are escaped.
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b if b < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = fmt::Write::write_fmt(out, format_args!("\\u{:04x}", b));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn timestamp() -> String {
    let now = std::time::SystemTime::now();
    humantime::format_rfc3339_micros(now).to_string()
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_a_login() {
        let span = tracing::info_span!("request", authorization = "Bearer span.secret.token");
        let _g = span.enter();
        tracing::info!(
            password = "hunter2-hunter2",
            email = "alice@example.com",
            Cookie = "sid=abc123",
            national_id = "AB-123-456",
            user_id = 7,
            "login from postgres://app:db-pass-123@db/app with Bearer msg.secret.token"
        );
    }

    fn assert_clean(out: &str) {
        for secret in ["hunter2", "alice@example", "abc123", "AB-123", "secret.token", "db-pass-123"] {
            assert!(!out.contains(secret), "{secret} leaked: {out}");
        }
        assert!(out.contains("***") && out.contains("user_id"), "{out}");
    }

    #[test]
    fn both_formats_mask_what_a_careless_handler_logs() {
        let masker = crate::security::mask::Masker::new(["national_id"]);
        let json = Buffer::default();
        let w = json.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(super::NoFields)
            .event_format(super::JsonFormat { service: "t".into(), masker: masker.clone() })
            .with_writer(move || w.clone())
            .and_then(super::SpanFieldsLayer);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log_a_login);
        let out = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
        assert_clean(&out);
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["fields"]["authorization"], "***");

        let pretty = Buffer::default();
        let w = pretty.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(super::masked_pretty_fields(masker))
            .with_ansi(false)
            .with_writer(move || w.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log_a_login);
        assert_clean(&String::from_utf8(pretty.0.lock().unwrap().clone()).unwrap());
    }
    #[test]
    fn sensitive_fields_and_bearer_tokens_are_masked() {
        let m = crate::security::mask::Masker::new(["national_id"]);
        let mut v = serde_json::json!("hunter2");
        super::mask_value(&m, "password", &mut v);
        assert_eq!(v, "***");
        let mut v = serde_json::json!("AB123");
        super::mask_value(&m, "national_id", &mut v);
        assert_eq!(v, "***");
        let mut v = serde_json::json!("got Bearer eyJabc.def.ghi from client");
        super::mask_value(&m, "note", &mut v);
        assert_eq!(v, "got Bearer *** from client");
        let mut v = serde_json::json!(42);
        super::mask_value(&m, "count", &mut v);
        assert_eq!(v, 42);
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        super::string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é");
    }
}
