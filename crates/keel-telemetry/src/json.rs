//! The JSON log line, as `tracing-subscriber`'s fmt layer writes it with Keel's
//! [`FormatEvent`] and [`FormatFields`]:
//!
//! ```json
//! {"timestamp":"2026-11-23T08:00:00.123456Z","level":"INFO","target":"keel_http::trace",
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
//! goes through [`scrub`](crate::mask::scrub).
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

use crate::mask::Masker;

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
        // The fields go to a buffer of this thread's first (the writer is only `fmt::Write`, and
        // one `write_str` per piece would cost more than the copy), kept between calls so that a
        // request span's fields cost no allocation but the fmt layer's own.
        with_scratch(&FIELDS, |out| {
            fields.record(&mut FieldWriter { masker: &self.masker, out });
            writer.write_str(out)
        })
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
            string(self.out, keel_config::MASK);
            self.out.push(SEP);
            return None;
        }
        Some(self.out)
    }

    fn text(&mut self, f: &Field, v: &str) {
        if let Some(out) = self.key(f) {
            string(out, &crate::mask::scrub(v));
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
        self.formatted(f, format_args!("{v}"));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.formatted(f, format_args!("{v:?}"));
    }
}

impl FieldWriter<'_> {
    /// A value that is text only once formatted (`%ip`, `?value`, errors).
    fn formatted(&mut self, f: &Field, v: fmt::Arguments<'_>) {
        if self.key(f).is_none() {
            return;
        }
        let out = &mut *self.out;
        let _ = with_scratch(&VALUE, |text| {
            // A `Debug` that fails leaves what it wrote, as `to_string` would panic.
            let _ = text.write_fmt(v);
            string(out, &crate::mask::scrub(text));
            Ok(())
        });
        out.push(SEP);
    }
}

type Scratch = std::thread::LocalKey<std::cell::RefCell<String>>;

thread_local! {
    /// Fields being formatted, before they go to the fmt layer's writer.
    static FIELDS: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    /// One `Debug` or `Display` value being formatted, before it is scrubbed and escaped.
    static VALUE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    /// A line's fields, spans' and event's, being merged.
    static ALL: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    /// A line being written, before it goes to the fmt layer's writer.
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Runs `f` on `scratch`, a buffer kept by this thread between calls, emptied; or on a new one
/// when the thread's is in use (a field's `Debug` that logs) or gone (thread exit).
fn with_scratch(scratch: &'static Scratch, f: impl FnOnce(&mut String) -> fmt::Result) -> fmt::Result {
    /// A buffer that grew past this (a huge field) is not kept.
    const KEEP: usize = 16 << 10;
    let mut f = Some(f);
    let kept = scratch.try_with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        let f = f.take()?;
        s.clear();
        let out = f(&mut s);
        if s.capacity() > KEEP {
            *s = String::new();
        }
        Some(out)
    });
    match (kept, f) {
        (Ok(Some(out)), _) => out,
        (_, Some(f)) => f(&mut String::new()),
        // Not reached: `f` is taken only to be run.
        (_, None) => Err(fmt::Error),
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
        // Every span's fields, root to leaf, then the event's, in one buffer of this thread's,
        // and the line in another. Fields are copied as formatted (their names are JSON strings
        // already), never parsed or escaped again.
        let masker = &ctx.field_format().masker;
        with_scratch(&ALL, |all| {
            let mut span_name = None;
            if let Some(scope) = ctx.event_scope() {
                for span in scope.from_root() {
                    span_name = Some(span.name());
                    if let Some(f) = span.extensions().get::<FormattedFields<JsonFields>>() {
                        all.push_str(&f.fields);
                    }
                }
            }
            // The event's fields straight into the buffer: `ctx.format_fields` would format
            // them apart first.
            event.record(&mut FieldWriter { masker, out: all });
            let fields = Fields::merge(all);
            with_scratch(&LINE, |line| {
                line.reserve(all.len() + 192);
                line.push_str("{\"timestamp\":\"");
                timestamp(line, std::time::SystemTime::now());
                line.push_str("\",\"level\":");
                string(line, event.metadata().level().as_str());
                line.push_str(",\"target\":");
                string(line, event.metadata().target());
                line.push_str(",\"message\":");
                line.push_str(fields.lifted(Lifted::Message).unwrap_or("\"\""));
                line.push_str(",\"service\":");
                match fields.lifted(Lifted::Service) {
                    Some(v) => line.push_str(v),
                    None => string(line, &self.service),
                }
                if let Some(v) = fields.lifted(Lifted::RequestId) {
                    line.push_str(",\"request_id\":");
                    line.push_str(v);
                }
                if let Some(sc) = span_context(ctx, event) {
                    line.push_str(",\"trace_id\":\"");
                    hex(line, &sc.trace_id().to_bytes());
                    line.push_str("\",\"span_id\":\"");
                    hex(line, &sc.span_id().to_bytes());
                    line.push('"');
                }
                let mut first = true;
                for (i, f) in fields.list.iter().enumerate() {
                    if fields.is_lifted(i) {
                        continue;
                    }
                    line.push_str(if first { ",\"fields\":{" } else { "," });
                    first = false;
                    // `"name":value`, as formatted.
                    line.push_str(f.text);
                }
                if !first {
                    line.push('}');
                }
                if let Some(name) = span_name {
                    line.push_str(",\"span\":");
                    string(line, name);
                }
                line.push_str("}\n");
                writer.write_str(line)
            })
        })
    }
}

/// The top-level keys of a line that come from its fields.
#[derive(Clone, Copy)]
enum Lifted {
    Message,
    Service,
    RequestId,
}

/// One field of a line: `"name":value` as formatted.
struct LineField<'a> {
    text: &'a str,
    /// The length of the quoted name at the start of `text`.
    name_len: usize,
}

impl LineField<'_> {
    fn quoted_name(&self) -> &[u8] {
        &self.text.as_bytes()[..self.name_len]
    }
}

/// The fields of a line in first-seen order, a later value of a name replacing an earlier one.
struct Fields<'a> {
    list: Vec<LineField<'a>>,
    /// Where `message`, `service` and `request_id` are in `list`.
    lifted: [Option<usize>; 3],
}

impl<'a> Fields<'a> {
    /// The fields in `all`, each `"name":value` followed by [`SEP`].
    fn merge(all: &'a str) -> Self {
        let mut out = Fields { list: Vec::with_capacity(24), lifted: [None; 3] };
        for text in all.split(SEP).filter(|f| !f.is_empty()) {
            // Names are Rust identifiers or dotted ones, never escaped.
            let Some((name, _)) = text.strip_prefix('"').and_then(name_and_value) else { continue };
            let field = LineField { text, name_len: name.len() + 2 };
            let quoted = field.quoted_name();
            // Lengths first: most names differ in length, and those need no byte comparison.
            match out.list.iter().position(|f| f.name_len == field.name_len && f.quoted_name() == quoted) {
                Some(i) => out.list[i].text = text,
                None => {
                    let lifted = match quoted {
                        b"\"message\"" => Some(Lifted::Message),
                        b"\"service\"" => Some(Lifted::Service),
                        b"\"request_id\"" => Some(Lifted::RequestId),
                        _ => None,
                    };
                    if let Some(l) = lifted {
                        out.lifted[l as usize] = Some(out.list.len());
                    }
                    out.list.push(field);
                }
            }
        }
        out
    }

    /// The JSON value of a lifted field.
    fn lifted(&self, which: Lifted) -> Option<&'a str> {
        let f = self.list.get(self.lifted[which as usize]?)?;
        f.text.get(f.name_len + 1..)
    }

    fn is_lifted(&self, i: usize) -> bool {
        self.lifted.contains(&Some(i))
    }
}

/// `name":value` split at the first `":`, as `split_once("\":")` does, with a search for the
/// quote (one byte, the names are short) rather than a substring search.
fn name_and_value(field: &str) -> Option<(&str, &str)> {
    let bytes = field.as_bytes();
    let mut from = 0;
    while let Some(q) = bytes[from..].iter().position(|&b| b == b'"') {
        let at = from + q;
        if bytes.get(at + 1) == Some(&b':') {
            return Some((&field[..at], &field[at + 2..]));
        }
        from = at + 1;
    }
    None
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
            out.push_str(p);
            out.push('.');
            let mut micros = since.subsec_micros();
            let mut digits = [b'0'; 6];
            for d in digits.iter_mut().rev() {
                *d = b'0' + u8::try_from(micros % 10).unwrap_or_default();
                micros /= 10;
            }
            digits.iter().for_each(|&d| out.push(char::from(d)));
            out.push('Z');
        }
        // Past year 9999: the seconds since 1970, still a JSON string.
        None => {
            let _ = write!(out, "{}.{:06}", since.as_secs(), since.subsec_micros());
        }
    }
}

/// Lowercase hex, as W3C trace context writes ids.
fn hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// Writes `s` as a JSON string.
fn string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    loop {
        // Text needing no escape goes in one copy: field names and most values are all of it.
        let i = start + plain_prefix(&bytes[start..]);
        out.push_str(&s[start..i]);
        let Some(&b) = bytes.get(i) else { break };
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push('"');
}

/// Whether `b` must be escaped in a JSON string.
const fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// How many bytes `s` starts with that need no escape in a JSON string.
fn plain_prefix(s: &[u8]) -> usize {
    // Eight bytes at a time as one word; byte by byte only in the word that holds an escape.
    let mut at = 0;
    for chunk in s.chunks_exact(8) {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else { break };
        if any_needs_escape(word) {
            break;
        }
        at += 8;
    }
    let rest = &s[at..];
    if rest.len() < 8 {
        // The last few bytes, padded with plain ones, as one more word.
        let mut word = [b' '; 8];
        word[..rest.len()].copy_from_slice(rest);
        if !any_needs_escape(word) {
            return s.len();
        }
    }
    at + rest.iter().position(|&b| needs_escape(b)).unwrap_or(rest.len())
}

/// Whether any of eight bytes needs an escape, with word arithmetic: a byte below `0x20`, or
/// equal to `"` or `\` (each test is exact for "any byte", not for which one).
fn any_needs_escape(bytes: [u8; 8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let w = u64::from_ne_bytes(bytes);
    let below = |n: u8, x: u64| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let zero = |x: u64| below(1, x);
    below(0x20, w) | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) != 0
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::test_writer::Buffer;

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
    fn strings_are_escaped_wherever_the_byte_falls() {
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 40] {
            for fill in ["a", "é"] {
                for at in 0..=len {
                    for special in ['"', '\\', '\n', '\u{1}', '\u{1f}'] {
                        let mut text = fill.repeat(len);
                        text.insert(at * fill.len(), special);
                        let mut out = String::new();
                        string(&mut out, &text);
                        assert_eq!(out, serde_json::to_string(&text).unwrap());
                    }
                }
            }
        }
        let mut out = String::new();
        hex(&mut out, &[0x00, 0x0f, 0xa5, 0xff]);
        assert_eq!(out, "000fa5ff");
        assert_eq!(name_and_value("a\\\"\":1"), Some(("a\\\"", "1")));
        assert_eq!(name_and_value("a:1"), None);
    }

    #[test]
    fn merge_keeps_first_place_and_last_value() {
        let all = concat!(
            "\"a\":1\u{1e}\"b\":\"x\"\u{1e}\"message\":\"m\"\u{1e}\"a\":2\u{1e}",
            "\"abcdefghijk\":3\u{1e}\"abcdefghijx\":4\u{1e}\"xbcdefghijk\":5\u{1e}\"abcdefghijk\":6\u{1e}"
        );
        let f = Fields::merge(all);
        let texts: Vec<&str> = f.list.iter().map(|f| f.text).collect();
        assert_eq!(
            texts,
            [
                "\"a\":2",
                "\"b\":\"x\"",
                "\"message\":\"m\"",
                "\"abcdefghijk\":6",
                "\"abcdefghijx\":4",
                "\"xbcdefghijk\":5"
            ]
        );
        assert_eq!(f.lifted(Lifted::Message), Some("\"m\""));
        assert_eq!(f.lifted(Lifted::Service), None);
        assert!(f.is_lifted(2) && !f.is_lifted(0));
    }
}
