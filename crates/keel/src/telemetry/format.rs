//! The JSON log line: one object per event with the span context lifted to the top level.

use std::cell::RefCell;
use std::fmt;
use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use opentelemetry::trace::SpanContext;

use super::ids::IdSource;
use super::layer::SpanState;

/// Writes `{"timestamp","level","target","message","service","request_id","trace_id","span_id",
/// "fields":{…},"span":"name"}`.
pub(crate) struct JsonFormat {
    pub(crate) service: String,
    /// Sensitive field names become `***`; credentials in any text are scrubbed.
    pub(crate) masker: crate::security::mask::Masker,
    /// The masker masks none of [`OWN_FIELDS`], so their values go out as they are.
    own_plain: bool,
    /// Nor any of the access line's own fields: the line may be written by
    /// [`JsonFormat::access_line`].
    access_plain: bool,
}

/// The request span's fields, written by Keel from values that cannot hold a credential (see
/// [`SpanFields::set_own`]).
const OWN_FIELDS: [&str; 4] = ["service", "request_id", "http.request.method", "http.route"];

impl JsonFormat {
    /// Lines tagged with `service`, masked by `masker`.
    pub(crate) fn new(service: String, masker: crate::security::mask::Masker) -> Self {
        let own_plain = !OWN_FIELDS.iter().any(|name| masker.is_sensitive(name));
        let access_plain =
            own_plain && !crate::http::trace::ACCESS.fields().iter().any(|f| masker.is_sensitive(f.name()));
        Self { service, masker, own_plain, access_plain }
    }

    /// Every line through the generic path (tests comparing it with [`JsonFormat::access_line`]).
    #[cfg(test)]
    pub(crate) fn generic_only(mut self) -> Self {
        self.access_plain = false;
        self
    }

    /// Calls `f` with the line for `event`, newline included, written in per-thread buffers
    /// kept from line to line (a line allocates nothing once they have grown to size). A line
    /// logged in a request whose span is deferred gets that span's fields and ids (made from
    /// `ids_source` the first time; see [`super::deferred`]).
    pub(crate) fn with_line<S>(
        &self,
        ctx: &Context<'_, S>,
        event: &Event<'_>,
        ids_source: Option<&IdSource>,
        f: impl FnOnce(&str),
    ) where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        with_scratch(|fields, line| {
            self.write_line(ctx, event, ids_source, fields, line);
            f(line);
        });
    }

    /// Writes the line for `event` into `line`, merging fields in `fields` (both empty).
    fn write_line<S>(
        &self,
        ctx: &Context<'_, S>,
        event: &Event<'_>,
        ids_source: Option<&IdSource>,
        fields: &mut SpanFields,
        line: &mut String,
    ) where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        if self.access_line(ctx, event, ids_source, line) {
            return;
        }
        let meta = event.metadata();
        // Fields by precedence: span fields root to leaf, then the event's own; a later key
        // replaces an earlier one and keeps its place. Their text is copied into one buffer
        // rather than made into a JSON value each: building those values cost more than the
        // rest of the line.
        let mut span_name = None;
        let mut innermost = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                span_name = Some(span.name());
                if let Some(state) = span.extensions().get::<SpanState>() {
                    fields.extend_from(&state.fields);
                }
                innermost = Some(span);
            }
        }
        let mut ids = innermost.as_ref().and_then(super::ids::log_context);
        // The request span, were it made, would be the innermost span: its fields go on top and
        // its ids are a child's of the innermost span's.
        if event.is_contextual()
            && let Some(lent) = super::deferred::lent_fields(fields, ids_source, || ids.clone())
        {
            span_name = Some("request");
            ids = lent.filter(SpanContext::is_valid);
        }
        event.record(fields);

        line_head(line, meta);
        line.push_str(",\"message\":");
        match fields.get("message") {
            Some(v) => self.value(line, fields, "message", v),
            None => line.push_str("\"\""),
        }
        line.push_str(",\"service\":");
        match fields.get("service") {
            Some(v) => self.value(line, fields, "service", v),
            None => string(line, &self.service),
        }
        if let Some(v) = fields.get("request_id") {
            line.push_str(",\"request_id\":");
            self.value(line, fields, "request_id", v);
        }
        if let Some(sc) = &ids {
            line_ids(line, sc);
        }
        let mut first = true;
        for &(k, v) in &fields.values {
            if matches!(k, "message" | "service" | "request_id") {
                continue;
            }
            line.push_str(if first { ",\"fields\":{" } else { "," });
            first = false;
            string(line, k);
            line.push(':');
            self.value(line, fields, k, v);
        }
        if !first {
            line.push('}');
        }
        if let Some(name) = span_name {
            line.push_str(",\"span\":");
            string(line, name);
        }
        line.push_str("}\n");
    }

    /// Writes the access line of a request whose span is lent ([`super::deferred`]), when no
    /// other span is entered and nothing in it is masked: the line `write_line` would write,
    /// byte for byte, without copying the span's four fields and the event's three into
    /// `fields`, looking each up by name and writing each name: its shape never changes. Says
    /// whether it wrote it.
    fn access_line<S>(
        &self,
        ctx: &Context<'_, S>,
        event: &Event<'_>,
        ids_source: Option<&IdSource>,
        line: &mut String,
    ) -> bool
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let meta = event.metadata();
        if !self.access_plain
            || !std::ptr::eq(meta, &crate::http::trace::ACCESS)
            || !event.is_contextual()
            || ctx.lookup_current().is_some()
        {
            return false;
        }
        let mut values = AccessValues::default();
        event.record(&mut values);
        let (Some(status), Some(latency_ms)) = (values.status, values.latency_ms) else { return false };
        super::deferred::with_lent(
            ids_source,
            || None,
            |lent, ids| {
                line_head(line, meta);
                line.push_str(",\"message\":\"request finished\",\"service\":");
                string(line, lent.service);
                line.push_str(",\"request_id\":");
                string(line, lent.request_id);
                if let Some(sc) = ids.filter(SpanContext::is_valid) {
                    line_ids(line, &sc);
                }
                line.push_str(",\"fields\":{\"http.request.method\":");
                string(line, lent.method);
                line.push_str(",\"http.route\":");
                string(line, lent.route);
                line.push_str(",\"http.response.status_code\":");
                line.push_str(itoa::Buffer::new().format(status));
                line.push_str(",\"latency_ms\":");
                if latency_ms.is_finite() {
                    line.push_str(ryu::Buffer::new().format_finite(latency_ms));
                } else {
                    line.push_str("null");
                }
                line.push_str("},\"span\":\"request\"}\n");
                #[cfg(test)]
                tests::ACCESS_LINES.with(|n| n.set(n.get() + 1));
            },
        )
        .is_some()
    }

    /// Writes the field `k`, masked: a sensitive name hides the whole value; text is scrubbed
    /// of bearer tokens and URL passwords.
    fn value(&self, out: &mut String, fields: &SpanFields, k: &'static str, v: FieldValue) {
        if let FieldValue::Own(a, b) = v
            && self.own_plain
        {
            // Neither masked by name nor scrubbed: about 200 instructions per field, four
            // fields on every line a request logs (its access line too).
            string(out, fields.text(a, b));
            return;
        }
        if let FieldValue::F64(n) = v
            && !n.is_finite()
        {
            // Not a JSON number (serde_json writes null too).
            out.push_str("null");
            return;
        }
        if self.masker.is_sensitive_name(k) {
            string(out, crate::config::MASK);
            return;
        }
        match v {
            FieldValue::Text(a, b) | FieldValue::Own(a, b) => {
                string(out, &crate::security::mask::scrub(fields.text(a, b)));
            }
            FieldValue::I64(n) => out.push_str(itoa::Buffer::new().format(n)),
            FieldValue::U64(n) => out.push_str(itoa::Buffer::new().format(n)),
            // The shortest form that reads back the same, as serde_json prints it.
            FieldValue::F64(n) => out.push_str(ryu::Buffer::new().format_finite(n)),
            FieldValue::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        }
    }
}

/// The access line's two values ([`JsonFormat::access_line`]); its message is fixed.
#[derive(Default)]
struct AccessValues {
    status: Option<u64>,
    latency_ms: Option<f64>,
}

impl Visit for AccessValues {
    fn record_u64(&mut self, f: &Field, v: u64) {
        if f.name() == "http.response.status_code" {
            self.status = Some(v);
        }
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        if f.name() == "latency_ms" {
            self.latency_ms = Some(v);
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
}

/// Room for a line: an access line is about 450 bytes.
const LINE: usize = 512;

/// Runs `f` with this thread's line buffers, emptied (fresh ones when they are in use: a line
/// written while this thread writes one, by a writer that logs). A buffer a huge line (a huge
/// field) grew past [`KEEP`] is not kept for the thread's life.
fn with_scratch(f: impl FnOnce(&mut SpanFields, &mut String)) {
    thread_local! {
        static SCRATCH: RefCell<(SpanFields, String)> =
            RefCell::new((SpanFields::with_capacity(16), String::with_capacity(LINE)));
    }
    let mut f = Some(f);
    let _ = SCRATCH.try_with(|scratch| {
        let Ok(mut scratch) = scratch.try_borrow_mut() else { return };
        let Some(f) = f.take() else { return };
        let (fields, line) = &mut *scratch;
        fields.clear();
        line.clear();
        f(fields, line);
        if line.capacity() > KEEP {
            *line = String::with_capacity(LINE);
        }
        if fields.text.capacity() > KEEP {
            *fields = SpanFields::with_capacity(16);
        }
    });
    if let Some(f) = f {
        f(&mut SpanFields::with_capacity(16), &mut String::with_capacity(LINE));
    }
}

/// Largest line or field text whose buffer a thread keeps for the next line.
const KEEP: usize = 16 << 10;

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
                *d = b'0' + u8::try_from(micros % 10).unwrap_or(0);
                micros /= 10;
            }
            out.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
            out.push('Z');
        }
        // Past year 9999: the seconds since 1970, still a JSON string.
        None => {
            let _ = write!(out, "{}.{:06}", since.as_secs(), since.subsec_micros());
        }
    }
}

/// A line's start: `{"timestamp":"…","level":"…","target":"…"`.
fn line_head(line: &mut String, meta: &tracing::Metadata<'_>) {
    line.push_str("{\"timestamp\":\"");
    timestamp(line, std::time::SystemTime::now());
    line.push_str("\",\"level\":");
    string(line, meta.level().as_str());
    line.push_str(",\"target\":");
    string(line, meta.target());
}

/// `,"trace_id":"…","span_id":"…"`.
fn line_ids(line: &mut String, sc: &SpanContext) {
    line.push_str(",\"trace_id\":\"");
    hex(line, &sc.trace_id().to_bytes());
    line.push_str("\",\"span_id\":\"");
    hex(line, &sc.span_id().to_bytes());
    line.push('"');
}

/// Lowercase hex, as W3C trace context writes ids.
fn hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Trace ids are 16 bytes: one copy into the line, not a push per digit.
    let mut buf = [0u8; 32];
    for (pair, &b) in buf.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    let n = 2 * bytes.len().min(16);
    out.push_str(std::str::from_utf8(&buf[..n]).unwrap_or_default());
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

/// Whether the pretty format writes colour (ANSI escapes): only to a terminal, so a log
/// redirected to a file or a pipe stays plain text, and never while `NO_COLOR` is set to a
/// non-empty value (<https://no-color.org>).
pub(crate) fn colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// The pretty (development) format: `tracing-subscriber`'s fmt layer with masked fields, writing
/// colour only when `ansi` (see [`colour`]).
pub(crate) fn pretty_layer<S, W>(
    masker: crate::security::mask::Masker,
    ansi: bool,
    writer: W,
) -> impl tracing_subscriber::Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer().fmt_fields(masked_pretty_fields(masker)).with_ansi(ansi).with_writer(writer)
}

/// Writes `s` as a JSON string.
fn string(out: &mut String, s: &str) {
    out.push('"');
    // Almost every value needs no escape at all: check eight bytes at a time, then one copy.
    if !needs_escape(s.as_bytes()) {
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

/// Whether `s` has a `"`, a `\\` or a control character, eight bytes per step: a byte below
/// 0x20 sets its high bit in `v - 0x20…` where `v` did not have it; an equal byte becomes zero
/// under `^`, found the same way.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |v: u64, n: u64| v.wrapping_sub(n * ONES) & !v & HIGH != 0;
    let mut chunks = s.chunks_exact(8);
    let wide = chunks.by_ref().any(|c| {
        <[u8; 8]>::try_from(c).map_or(true, |c| {
            let v = u64::from_le_bytes(c);
            below(v, 0x20) || below(v ^ (u64::from(b'"') * ONES), 1) || below(v ^ (u64::from(b'\\') * ONES), 1)
        })
    });
    wide || chunks.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
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
pub(crate) enum FieldValue {
    /// A range of `SpanFields::text`.
    Text(usize, usize),
    /// The same, for text set with [`SpanFields::set_own`].
    Own(usize, usize),
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

    pub(crate) fn set_text(&mut self, key: &'static str, text: &str) {
        self.set_range(key, text, FieldValue::Text);
    }

    /// [`set_text`](Self::set_text) for one of the request span's [`OWN_FIELDS`], whose text
    /// cannot hold a credential: the service's name, a request id (`[A-Za-z0-9._:-]` only), a
    /// method (an HTTP token: no space, `:` or `/`), a route template (the service's own code).
    /// Lines write it unscrubbed, and unmasked unless the masker masks one of those names.
    pub(crate) fn set_own(&mut self, key: &'static str, text: &str) {
        self.set_range(key, text, FieldValue::Own);
    }

    /// Copies `text` into the buffer and records its range as `key`'s value, made by `value`.
    fn set_range(&mut self, key: &'static str, text: &str, value: fn(usize, usize) -> FieldValue) {
        if key.starts_with("otel.") {
            return;
        }
        let start = self.text.len();
        self.text.push_str(text);
        self.set(key, value(start, self.text.len()));
    }

    /// Empties it, keeping its memory.
    pub(crate) fn clear(&mut self) {
        self.text.clear();
        self.values.clear();
    }

    /// The value of `key`, if recorded.
    pub(crate) fn get(&self, key: &str) -> Option<FieldValue> {
        self.values.iter().find(|(k, _)| *k == key).map(|&(_, v)| v)
    }

    /// The text of a [`FieldValue::Text`] or [`FieldValue::Own`].
    pub(crate) fn text(&self, a: usize, b: usize) -> &str {
        self.text.get(a..b).unwrap_or_default()
    }

    /// Records every field of `other` over these.
    pub(crate) fn extend_from(&mut self, other: &SpanFields) {
        for &(k, v) in &other.values {
            match v {
                FieldValue::Text(a, b) => self.set_text(k, other.text(a, b)),
                FieldValue::Own(a, b) => self.set_own(k, other.text(a, b)),
                v => self.set(k, v),
            }
        }
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
pub(super) mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    thread_local! {
        /// Access lines written by `JsonFormat::access_line` on this thread.
        pub(crate) static ACCESS_LINES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A log writer into memory, for tests of what lines say.
    #[derive(Clone, Default)]
    pub(crate) struct Buffer(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A JSON log subscriber for `service` writing into the returned buffer.
    fn json_subscriber(
        service: &str,
        masker: crate::security::mask::Masker,
    ) -> (Buffer, impl tracing::Subscriber + Send + Sync) {
        let json = Buffer::default();
        let w = json.clone();
        let layer = super::super::layer::LogLayer::json(
            super::super::filter::LogFilter::new("info").unwrap(),
            None,
            super::JsonFormat::new(service.into(), masker),
            move || w.clone(),
        );
        (json, tracing_subscriber::registry().with(layer))
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
        let (json, subscriber) = json_subscriber("t", masker.clone());
        tracing::subscriber::with_default(subscriber, log_a_login);
        let out = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
        assert_clean(&out);
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["fields"]["authorization"], "***");

        for ansi in [false, true] {
            let pretty = Buffer::default();
            let w = pretty.clone();
            let layer = super::pretty_layer(masker.clone(), ansi, move || w.clone());
            tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log_a_login);
            assert_clean(&String::from_utf8(pretty.0.lock().unwrap().clone()).unwrap());
        }
    }

    #[test]
    fn pretty_lines_are_coloured_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(super::colour(true, None));
        assert!(super::colour(true, Some(OsStr::new(""))), "an empty NO_COLOR is unset");
        assert!(!super::colour(true, Some(OsStr::new("1"))));
        assert!(!super::colour(false, None), "a file or a pipe");
        assert!(!super::colour(false, Some(OsStr::new("1"))));
        let write = |ansi: bool| {
            let out = Buffer::default();
            let w = out.clone();
            let layer = super::pretty_layer(crate::security::mask::Masker::default(), ansi, move || w.clone());
            tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
                let span = tracing::info_span!("request", request_id = "r-1");
                let _g = span.enter();
                tracing::warn!(user_id = 7, "disk nearly full");
            });
            String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
        };
        let redirected = write(super::colour(false, None));
        assert!(redirected.contains("disk nearly full") && redirected.contains("user_id=7"), "{redirected}");
        assert!(!redirected.contains('\x1b'), "escape codes in a redirected log: {redirected:?}");
        let terminal = write(super::colour(true, None));
        assert!(terminal.contains('\x1b'), "a terminal gets colour: {terminal:?}");
    }
    #[test]
    fn sensitive_fields_and_bearer_tokens_are_masked() {
        use tracing::field::Visit;
        let format = super::JsonFormat::new("t".into(), crate::security::mask::Masker::new(["national_id"]));
        let mut fields = super::SpanFields::default();
        // Field handles need a callsite; one span declares every name used below.
        let span = tracing::info_span!("t", password = 1, national_id = 1, note = 1, count = 1, ratio = 1);
        let meta = span.metadata().unwrap();
        let f = |name: &str| meta.fields().field(name).unwrap();
        fields.record_str(&f("password"), "hunter2");
        fields.record_str(&f("national_id"), "AB123");
        fields.record_str(&f("note"), "got Bearer eyJabc.def.ghi from client");
        fields.record_u64(&f("count"), 42);
        fields.record_f64(&f("ratio"), f64::NAN);
        let written = |k: &'static str| {
            let mut out = String::new();
            format.value(&mut out, &fields, k, fields.get(k).unwrap());
            out
        };
        assert_eq!(written("password"), r#""***""#);
        assert_eq!(written("national_id"), r#""***""#);
        assert_eq!(written("note"), r#""got Bearer *** from client""#);
        assert_eq!(written("count"), "42");
        assert_eq!(written("ratio"), "null");
    }

    #[test]
    fn own_fields_go_out_as_they_are_unless_their_names_are_masked() {
        let mut fields = super::SpanFields::default();
        fields.set_own("http.route", "/items/{id}/\"quoted\"");
        fields.set_own("request_id", "abc-123");
        let written = |format: &super::JsonFormat, k: &'static str| {
            let mut out = String::new();
            format.value(&mut out, &fields, k, fields.get(k).unwrap());
            out
        };
        // Still JSON: escaped.
        let plain = super::JsonFormat::new("t".into(), crate::security::mask::Masker::default());
        assert_eq!(written(&plain, "http.route"), r#""/items/{id}/\"quoted\"""#);
        assert_eq!(written(&plain, "request_id"), r#""abc-123""#);
        // A service that masks one of those names gets it masked, as any other field.
        let masking = super::JsonFormat::new("t".into(), crate::security::mask::Masker::new(["http.route"]));
        assert_eq!(written(&masking, "http.route"), r#""***""#);
        assert_eq!(written(&masking, "request_id"), r#""abc-123""#);
        // Copied from span to span, they stay what they are.
        let mut copy = super::SpanFields::default();
        copy.extend_from(&fields);
        assert!(matches!(copy.get("request_id"), Some(super::FieldValue::Own(..))));
    }

    #[test]
    fn line_buffers_are_emptied_fresh_when_busy_and_not_kept_huge() {
        let addr = |line: &String| line.as_ptr() as usize;
        let mut first = 0;
        super::with_scratch(|fields, line| {
            first = addr(line);
            line.push_str(&"x".repeat(super::KEEP * 2));
            fields.set_text("k", "v");
            // A line written meanwhile (by a writer that logs) gets buffers of its own.
            super::with_scratch(|inner_fields, inner| {
                assert!(inner.is_empty() && inner_fields.get("k").is_none());
                assert_ne!(addr(inner), addr(line));
            });
        });
        super::with_scratch(|fields, line| {
            assert!(line.is_empty() && fields.get("k").is_none(), "emptied");
            assert!(line.capacity() <= super::KEEP, "the huge buffer was let go");
            line.push_str("short");
            first = addr(line);
        });
        super::with_scratch(|_, line| assert_eq!(addr(line), first, "a normal buffer is kept"));
    }

    #[test]
    fn lines_written_in_turn_share_nothing_but_buffers() {
        let (json, subscriber) = json_subscriber("t", Default::default());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(big = "x".repeat(40_000).as_str(), "huge");
            let span = tracing::info_span!("request", request_id = "r-2");
            span.in_scope(|| tracing::info!(n = 1, "small"));
            tracing::info!("bare");
        });
        let out = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["fields"]["big"].as_str().map(str::len), Some(40_000));
        assert_eq!(lines[1]["fields"], serde_json::json!({"n": 1}), "{}", lines[1]);
        assert_eq!(lines[1]["request_id"], "r-2");
        assert!(lines[2].get("fields").is_none() && lines[2].get("request_id").is_none(), "{}", lines[2]);
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_795_000_000, 7_000);
        let mut out = String::new();
        super::timestamp(&mut out, t);
        assert_eq!(out, humantime::format_rfc3339_micros(t).to_string());
        // Cached second, other microseconds.
        let t = t + std::time::Duration::from_micros(123_456);
        let mut out = String::new();
        super::timestamp(&mut out, t);
        assert_eq!(out, humantime::format_rfc3339_micros(t).to_string());
        // Clocks gone wrong write something, and do not panic.
        let mut out = String::new();
        super::timestamp(&mut out, std::time::UNIX_EPOCH - std::time::Duration::from_secs(5));
        assert_eq!(out, "1970-01-01T00:00:00.000000Z");
        let mut out = String::new();
        super::timestamp(&mut out, std::time::UNIX_EPOCH + std::time::Duration::from_secs(300_000_000_000));
        assert_eq!(out, "300000000000.000000");
    }

    #[test]
    fn an_access_line_has_every_field_once_in_place() {
        let (json, subscriber) = json_subscriber("proc", Default::default());
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("request", service = "auth", request_id = "r-1", http.route = "/a/{id}");
            let _o = outer.enter();
            let inner = tracing::info_span!("db", http.route = "/b", n = tracing::field::Empty);
            inner.record("n", -3i64);
            let _i = inner.enter();
            tracing::info!(latency_ms = 1.5, ok = true, "request \"finished\"");
        });
        let out = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        // In this order, each once (serde_json's map sorts keys, so the text is read).
        let at = |needle: &str| {
            assert_eq!(out.matches(needle).count(), 1, "{needle} in {out}");
            out.find(needle).unwrap()
        };
        let order = ["\"timestamp\":", "\"level\":", "\"target\":", "\"message\":", "\"service\":", "\"request_id\":"];
        let order = order.iter().chain(&[
            "\"fields\":",
            "\"http.route\":",
            "\"n\":",
            "\"latency_ms\":",
            "\"ok\":",
            "\"span\":",
        ]);
        let positions: Vec<usize> = order.map(|k| at(k)).collect();
        assert!(positions.is_sorted(), "{out}");
        assert_eq!(line["message"], "request \"finished\"");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["service"], "auth", "the span's service wins over the process's");
        assert_eq!(line["request_id"], "r-1");
        assert_eq!(line["span"], "db");
        assert_eq!(
            line["fields"],
            serde_json::json!({"http.route": "/b", "n": -3, "latency_ms": 1.5, "ok": true}),
            "{out}"
        );
    }

    #[tokio::test]
    async fn access_and_failure_lines_carry_the_status_once() {
        use tower::{Layer, ServiceExt};
        let (json, subscriber) = json_subscriber("t", Default::default());
        let _default = tracing::subscriber::set_default(subscriber);
        for status in [200u16, 500] {
            let answer = tower::service_fn(move |_: http::Request<()>| async move {
                Ok::<_, std::convert::Infallible>(http::Response::builder().status(status).body(()).unwrap())
            });
            let svc = crate::http::trace::TraceLayer::new("t", true).layer(answer);
            svc.oneshot(http::Request::get("/x").body(()).unwrap()).await.unwrap();
        }
        let out = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[0].contains(r#""level":"INFO""#) && lines[0].contains(r#""message":"request finished""#),
            "{out}"
        );
        assert_eq!(lines[0].matches(r#""http.response.status_code":200"#).count(), 1, "{out}");
        assert!(lines[1].contains(r#""level":"ERROR""#) && lines[1].contains(r#""message":"request failed""#), "{out}");
        assert_eq!(lines[1].matches(r#""http.response.status_code":500"#).count(), 1, "{out}");
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["span"], "request", "{line}");
            assert!(v["fields"]["latency_ms"].is_number(), "{line}");
        }
    }

    #[test]
    fn the_wide_escape_check_finds_every_special_byte_anywhere() {
        for len in 0..20 {
            for at in 0..len {
                for special in [b'"', b'\\', 0u8, b'\n', 0x1f] {
                    let mut s = vec![b'a'; len];
                    s[at] = special;
                    assert!(super::needs_escape(&s), "{special:#x} at {at} of {len}");
                }
                // Neighbours of the special bytes, and non-ASCII, need nothing.
                let mut s = vec![b'a'; len];
                s[at] = [b' ', b'#', b'[', b']', 0x7f, 0x80, 0xff, b'!'][at % 8];
                assert!(!super::needs_escape(&s), "{s:?}");
            }
        }
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
