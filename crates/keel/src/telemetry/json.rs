//! The JSON log line, as `tracing-subscriber`'s fmt layer writes it with Keel's
//! [`FormatEvent`] and [`FormatFields`]:
//!
//! ```json
//! {"timestamp":"2026-11-23T08:00:00.123456Z","level":"INFO","target":"keel::http::trace",
//!  "message":"request finished","service":"hello","request_id":"…","trace_id":"…","span_id":"…",
//!  "fields":{"http.request.method":"GET","http.route":"/items/{id}","http.response.status_code":200,…},
//!  "span":"request"}
//! ```
//!
//! The layout is Keel's, so it needs its own `FormatEvent`: the fields of every span around
//! the event, root to leaf, then the event's own, are merged into one object (a later key
//! replaces an earlier one in place), with `message`, `service` and `request_id` lifted to the
//! top level beside the OpenTelemetry ids of the current span. Field values are masked as they
//! are recorded ([`JsonFields`]): a field named like a secret (`password`, `token`,
//! `authorization`, … plus `log.mask_fields`) is written as `***`, and every other text value
//! goes through [`scrub`](crate::security::mask::scrub).
//!
//! Span fields are kept by the fmt layer as text ([`FormattedFields`]); Keel writes each field
//! as `"name":value` followed by an ASCII record separator, a byte JSON text never holds
//! unescaped, so the event's formatter can split them again without parsing JSON.

use std::fmt::{self, Write as _};

use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::security::mask::Masker;

/// Ends each field in a span's or event's formatted fields.
const SEP: char = '\u{1e}';

/// Field formatting for JSON lines: see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct JsonFields {
    masker: Masker,
}

impl JsonFields {
    pub(crate) fn new(masker: Masker) -> Self {
        Self { masker }
    }
}

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut out = String::new();
        fields.record(&mut FieldWriter { masker: &self.masker, out: &mut out });
        writer.write_str(&out)
    }

    fn add_fields(&self, current: &'w mut FormattedFields<Self>, fields: &tracing::span::Record<'_>) -> fmt::Result {
        // Appended as they are: each field carries its own separator, and the formatter keeps
        // the last value of a name.
        fields.record(&mut FieldWriter { masker: &self.masker, out: &mut current.fields });
        Ok(())
    }
}

/// Writes fields as `"name":value` + [`SEP`], masked.
struct FieldWriter<'a> {
    masker: &'a Masker,
    out: &'a mut String,
}

impl FieldWriter<'_> {
    /// Starts a field; `None` when its value must not be written (OpenTelemetry's own `otel.*`
    /// fields) or was written already (masked).
    fn key(&mut self, f: &Field) -> Option<&mut String> {
        let name = f.name();
        if name.starts_with("otel.") {
            return None;
        }
        string(self.out, name);
        self.out.push(':');
        if name != "message" && self.masker.is_sensitive_name(name) {
            string(self.out, crate::config::MASK);
            self.out.push(SEP);
            return None;
        }
        Some(self.out)
    }

    fn text(&mut self, f: &Field, v: &str) {
        if let Some(out) = self.key(f) {
            string(out, &crate::security::mask::scrub(v));
            out.push(SEP);
        }
    }

    fn raw(&mut self, f: &Field, v: &str) {
        if let Some(out) = self.key(f) {
            out.push_str(v);
            out.push(SEP);
        }
    }
}

impl Visit for FieldWriter<'_> {
    fn record_f64(&mut self, f: &Field, v: f64) {
        // A non-finite float is not a JSON number (serde_json writes null too).
        if v.is_finite() {
            self.raw(f, ryu::Buffer::new().format_finite(v));
        } else {
            self.raw(f, "null");
        }
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.raw(f, itoa::Buffer::new().format(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.raw(f, itoa::Buffer::new().format(v));
    }
    fn record_i128(&mut self, f: &Field, v: i128) {
        self.raw(f, itoa::Buffer::new().format(v));
    }
    fn record_u128(&mut self, f: &Field, v: u128) {
        self.raw(f, itoa::Buffer::new().format(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.raw(f, if v { "true" } else { "false" });
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.text(f, v);
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.text(f, &v.to_string());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{v:?}");
        self.text(f, &text);
    }
}

/// Keel's JSON line: see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct JsonLine {
    /// The `service` of lines logged outside any span that names one.
    service: String,
}

impl JsonLine {
    pub(crate) fn new(service: String) -> Self {
        Self { service }
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Every span's fields, root to leaf, then the event's, in one buffer.
        let mut all = String::with_capacity(256);
        let mut span_name = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                span_name = Some(span.name());
                if let Some(f) = span.extensions().get::<FormattedFields<JsonFields>>() {
                    all.push_str(&f.fields);
                }
            }
        }
        ctx.format_fields(Writer::new(&mut all), event)?;
        let fields = merge(&all);
        let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);

        let mut line = String::with_capacity(all.len() + 192);
        line.push_str("{\"timestamp\":\"");
        timestamp(&mut line, std::time::SystemTime::now());
        line.push_str("\",\"level\":");
        string(&mut line, event.metadata().level().as_str());
        line.push_str(",\"target\":");
        string(&mut line, event.metadata().target());
        line.push_str(",\"message\":");
        line.push_str(get("message").unwrap_or("\"\""));
        line.push_str(",\"service\":");
        match get("service") {
            Some(v) => line.push_str(v),
            None => string(&mut line, &self.service),
        }
        if let Some(v) = get("request_id") {
            line.push_str(",\"request_id\":");
            line.push_str(v);
        }
        if let Some(sc) = span_context(ctx, event) {
            line.push_str(",\"trace_id\":\"");
            hex(&mut line, &sc.trace_id().to_bytes());
            line.push_str("\",\"span_id\":\"");
            hex(&mut line, &sc.span_id().to_bytes());
            line.push('"');
        }
        let mut first = true;
        for (k, v) in &fields {
            if matches!(*k, "message" | "service" | "request_id") {
                continue;
            }
            line.push_str(if first { ",\"fields\":{" } else { "," });
            first = false;
            string(&mut line, k);
            line.push(':');
            line.push_str(v);
        }
        if !first {
            line.push('}');
        }
        if let Some(name) = span_name {
            line.push_str(",\"span\":");
            string(&mut line, name);
        }
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

/// The fields in `all` as (name, JSON value), a later value of a name replacing an earlier one
/// in place.
fn merge(all: &str) -> Vec<(&str, &str)> {
    let mut fields: Vec<(&str, &str)> = Vec::with_capacity(16);
    for field in all.split(SEP).filter(|f| !f.is_empty()) {
        // `"name":value`; names are Rust identifiers or dotted ones, never escaped.
        let Some((name, value)) = field.strip_prefix('"').and_then(|f| f.split_once("\":")) else { continue };
        match fields.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => fields.push((name, value)),
        }
    }
    fields
}

/// The OpenTelemetry span context the event belongs to: the one the OpenTelemetry layer made
/// current when the innermost span it sees was entered. An event with an explicit parent gets
/// ids only when that parent is the current span: a dispatcher cannot be asked for another
/// span's OpenTelemetry data while it is dispatching an event.
fn span_context<S>(ctx: &FmtContext<'_, S, JsonFields>, event: &Event<'_>) -> Option<SpanContext>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let current = match event.parent() {
        Some(id) => ctx.lookup_current().is_some_and(|c| c.id() == *id),
        None => event.is_contextual(),
    };
    current
        .then(|| opentelemetry::Context::map_current(|cx| cx.span().span_context().clone()))
        .filter(SpanContext::is_valid)
}

/// `2026-11-21T22:55:26.123456Z` (RFC 3339, UTC, microseconds). The part up to the second is
/// formatted once per second per thread. A clock before 1970 reads as 1970.
fn timestamp(out: &mut String, now: std::time::SystemTime) {
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let since = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let prefix = SECOND.try_with(|c| {
        let (cached, text) = c.get();
        if cached == secs {
            return Some(text);
        }
        let whole = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        // humantime refuses years past 9999 with an error, which `to_string` would turn into a
        // panic.
        let mut formatted = String::with_capacity(20);
        write!(formatted, "{}", humantime::format_rfc3339_seconds(whole)).ok()?;
        let text: [u8; 19] = formatted.as_bytes().get(..19)?.try_into().ok()?;
        c.set((secs, text));
        Some(text)
    });
    match prefix.ok().flatten().as_ref().and_then(|p| std::str::from_utf8(p).ok()) {
        Some(p) => {
            let _ = write!(out, "{p}.{:06}Z", since.subsec_micros());
        }
        // Past year 9999: the seconds since 1970, still a JSON string.
        None => {
            let _ = write!(out, "{}.{:06}", since.as_secs(), since.subsec_micros());
        }
    }
}

/// Lowercase hex, as W3C trace context writes ids.
fn hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

/// Writes `s` as a JSON string.
fn string(out: &mut String, s: &str) {
    out.push('"');
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
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::telemetry::test_writer::Buffer;

    impl Buffer {
        fn lines(&self) -> Vec<Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
        }
    }

    fn subscriber(extra: &[&str]) -> (Buffer, impl Subscriber + Send + Sync) {
        let buf = Buffer::default();
        let w = buf.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new(Masker::new(extra.iter())))
            .event_format(JsonLine::new("svc".into()))
            .with_writer(move || w.clone());
        let otel = tracing_opentelemetry::layer()
            .with_tracer(opentelemetry_sdk::trace::SdkTracerProvider::builder().build().tracer("t"));
        (buf, tracing_subscriber::registry().with(otel).with(fmt))
    }

    use opentelemetry::trace::TracerProvider as _;

    #[test]
    fn span_fields_are_merged_and_ids_lifted() {
        let (buf, sub) = subscriber(&[]);
        tracing::subscriber::with_default(sub, || {
            let outer = tracing::info_span!("conn", service = "outer", peer = 1);
            let _o = outer.enter();
            let span = tracing::info_span!(
                "request",
                service = "api",
                request_id = "r-1",
                http.route = "/x",
                otel.kind = "server"
            );
            let _e = span.enter();
            span.record("http.route", "/y");
            tracing::info!(http.response.status_code = 200u16, latency_ms = 1.5, "request finished");
        });
        let lines = buf.lines();
        let l = &lines[0];
        assert_eq!(l["message"], "request finished");
        assert_eq!(l["service"], "api", "the innermost span's service wins");
        assert_eq!(l["request_id"], "r-1");
        assert_eq!(l["span"], "request");
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["fields"]["http.route"], "/y", "a recorded value replaces the first");
        assert_eq!(l["fields"]["peer"], 1);
        assert_eq!(l["fields"]["http.response.status_code"], 200);
        assert_eq!(l["fields"]["latency_ms"], 1.5);
        assert!(l["fields"].get("otel.kind").is_none());
        assert_eq!(l["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(l["span_id"].as_str().unwrap().len(), 16);
        let keys: Vec<&str> = l.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(keys.iter().all(|k| {
            [
                "timestamp",
                "level",
                "target",
                "message",
                "service",
                "request_id",
                "trace_id",
                "span_id",
                "fields",
                "span",
            ]
            .contains(k)
        }));
    }

    #[test]
    fn outside_any_span_the_line_has_the_default_service_and_no_ids() {
        let (buf, sub) = subscriber(&[]);
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(n = -3i64, ok = true, f = f64::NAN, "plain \"quoted\"\n")
        });
        let l = &buf.lines()[0];
        assert_eq!(l["service"], "svc");
        assert_eq!(l["message"], "plain \"quoted\"\n");
        assert!(l.get("trace_id").is_none() && l.get("span").is_none());
        assert_eq!(l["fields"]["n"], -3);
        assert_eq!(l["fields"]["ok"], true);
        assert!(l["fields"]["f"].is_null());
        let ts = l["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-11-21T22:55:26.123456Z".len(), "{ts}");
        assert!(ts.ends_with('Z'));
    }

    #[test]
    fn sensitive_fields_and_credentials_are_masked_in_spans_and_events() {
        let (buf, sub) = subscriber(&["national_id"]);
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("login", email = "a@b.example", national_id = "123");
            let _e = span.enter();
            tracing::info!(
                password = "hunter2",
                header = "Bearer abc.def.ghi",
                url = "postgres://u:pw@db/x",
                "user sent Authorization: Bearer abc.def.ghi"
            );
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        for secret in ["hunter2", "abc.def.ghi", ":pw@", "a@b.example", "\"123\""] {
            assert!(!out.contains(secret), "{secret} leaked: {out}");
        }
        let l = &buf.lines()[0];
        assert_eq!(l["fields"]["password"], "***");
        assert_eq!(l["fields"]["national_id"], "***");
    }

    #[test]
    fn an_explicit_parent_gives_its_fields_and_when_current_its_ids() {
        let (buf, sub) = subscriber(&[]);
        tracing::subscriber::with_default(sub, || {
            let a = tracing::info_span!("a", request_id = "from-a");
            tracing::info!(parent: &a, "child of a, not entered");
            let _e = a.enter();
            tracing::info!(parent: &a, "child of a, entered");
            tracing::info!(parent: None, "no parent");
        });
        let lines = buf.lines();
        assert_eq!(lines[0]["request_id"], "from-a");
        assert_eq!(lines[0]["span"], "a");
        assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
        assert!(lines[1]["trace_id"].is_string());
        assert!(lines[2].get("trace_id").is_none() && lines[2].get("span").is_none());
    }

    #[test]
    fn merge_keeps_first_place_and_last_value() {
        let all = "\"a\":1\u{1e}\"b\":\"x\"\u{1e}\"a\":2\u{1e}";
        assert_eq!(merge(all), vec![("a", "2"), ("b", "\"x\"")]);
    }
}
