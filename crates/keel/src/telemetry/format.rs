//! The JSON log line: one object per event with the span context lifted to the top level.

use std::fmt;
use std::fmt::Write as _;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::layer::SpanState;

/// Writes `{"timestamp","level","target","message","service","request_id","trace_id","span_id",
/// "fields":{…},"span":"name"}`.
pub(crate) struct JsonFormat {
    pub(crate) service: String,
    /// Sensitive field names become `***`; credentials in any text are scrubbed.
    pub(crate) masker: crate::security::mask::Masker,
}

impl JsonFormat {
    /// The line for `event`, newline included.
    pub(crate) fn line<S>(&self, ctx: &Context<'_, S>, event: &Event<'_>) -> String
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let meta = event.metadata();
        // Fields by precedence: span fields root to leaf, then the event's own; a later key
        // replaces an earlier one. Small vectors, not maps: a line has a dozen fields.
        let mut fields: Vec<(&'static str, Value)> = Vec::with_capacity(16);
        let mut span_name = None;
        let mut innermost = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                span_name = Some(span.name());
                if let Some(state) = span.extensions().get::<SpanState>() {
                    for (k, v) in state.fields.json() {
                        put(&mut fields, k, v);
                    }
                }
                innermost = Some(span);
            }
        }
        let mut own = SpanFields::default();
        event.record(&mut own);
        for (k, v) in own.json() {
            put(&mut fields, k, v);
        }
        for (k, v) in &mut fields {
            mask_value(&self.masker, k, v);
        }
        let ids = innermost.as_ref().and_then(super::ids::log_ids);

        // An access line is about 450 bytes: one allocation.
        let mut line = String::with_capacity(512);
        line.push('{');
        key(&mut line, "timestamp", true);
        let _ = write!(line, "\"{}\"", humantime::format_rfc3339_micros(std::time::SystemTime::now()));
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
            // Hex digits: nothing to escape.
            key(&mut line, "trace_id", false);
            let _ = write!(line, "\"{trace_id}\"");
            key(&mut line, "span_id", false);
            let _ = write!(line, "\"{span_id}\"");
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
        line
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
        // Numbers, booleans and null print as JSON already; objects and arrays are serialised.
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
        other => out.push_str(&other.to_string()),
    }
}

/// Writes `s` as a JSON string.
fn string(out: &mut String, s: &str) {
    out.push('"');
    // Almost every value needs no escape at all: one pass without early exit (which the
    // compiler turns into wide compares), then one copy.
    if !s.bytes().fold(false, |any, b| any | (b < 0x20) | (b == b'"') | (b == b'\\')) {
        out.push_str(s);
        out.push('"');
        return;
    }
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

/// A span's fields, kept as values rather than as a formatted string: recording a field is a
/// push, not a parse-and-reserialize of the span's JSON (which cost a fifth of the CPU of a
/// request in the benchmark). Text values share one buffer, so a request span's four text
/// fields cost one allocation, not four; they become JSON values only when a line is written.
#[derive(Debug, Default)]
pub(crate) struct SpanFields {
    text: String,
    values: Vec<(&'static str, FieldValue)>,
}

#[derive(Debug, Clone, Copy)]
enum FieldValue {
    /// A range of `SpanFields::text`.
    Text(usize, usize),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl SpanFields {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self { text: String::with_capacity(n * 16), values: Vec::with_capacity(n) }
    }

    fn set(&mut self, key: &'static str, value: FieldValue) {
        if key.starts_with("otel.") {
            return;
        }
        match self.values.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.values.push((key, value)),
        }
    }

    fn set_text(&mut self, key: &'static str, text: &str) {
        if key.starts_with("otel.") {
            return;
        }
        let start = self.text.len();
        self.text.push_str(text);
        self.set(key, FieldValue::Text(start, self.text.len()));
    }

    /// The fields as JSON values, in the order they were first recorded.
    pub(crate) fn json(&self) -> impl Iterator<Item = (&'static str, Value)> + '_ {
        self.values.iter().map(|(k, v)| {
            let v = match *v {
                FieldValue::Text(a, b) => Value::from(self.text.get(a..b).unwrap_or_default()),
                FieldValue::I64(n) => Value::from(n),
                FieldValue::U64(n) => Value::from(n),
                FieldValue::F64(n) => serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
                FieldValue::Bool(b) => Value::from(b),
            };
            (*k, v)
        })
    }
}

impl Visit for SpanFields {
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.set(f.name(), FieldValue::F64(v));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.set(f.name(), FieldValue::I64(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.set(f.name(), FieldValue::U64(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.set(f.name(), FieldValue::Bool(v));
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.set_text(f.name(), v);
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.set_text(f.name(), &v.to_string());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        if f.name().starts_with("otel.") {
            return;
        }
        let start = self.text.len();
        let _ = fmt::Write::write_fmt(&mut self.text, format_args!("{v:?}"));
        self.set(f.name(), FieldValue::Text(start, self.text.len()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

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
        let layer = super::super::layer::LogLayer::json(
            super::super::filter::LogFilter::new("info").unwrap(),
            None,
            super::JsonFormat { service: "t".into(), masker: masker.clone() },
            move || w.clone(),
        );
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
