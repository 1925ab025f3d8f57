//! W3C trace context from a request's `traceparent` and `tracestate` headers (and from an
//! event envelope's), through the propagator Keel installs: anything is a valid remote parent or
//! no parent, never a panic, and a valid parent written out again reads back the same.
//!
//! Input: the `traceparent` value, then optionally a newline and the `tracestate` value.

#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId};

fuzz_target!(|data: &[u8]| {
    static PROPAGATOR: Once = Once::new();
    PROPAGATOR.call_once(|| {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    });
    let (parent, state) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let mut headers = http::HeaderMap::new();
    let Ok(value) = http::HeaderValue::from_bytes(parent) else { return };
    headers.insert("traceparent", value);
    if let Some(Ok(v)) = state.map(http::HeaderValue::from_bytes) {
        headers.insert("tracestate", v);
    }
    let cx = keel::telemetry::extract_context(&headers);
    let span = cx.span().span_context().clone();
    if let (Ok(parent), Ok(state)) = (std::str::from_utf8(parent), state.map(std::str::from_utf8).transpose()) {
        let from_envelope = keel::telemetry::context_from_traceparent(parent, state);
        assert_eq!(from_envelope.span().span_context(), &span, "headers and envelope read it alike");
    }
    if !span.is_valid() {
        return;
    }
    assert!(span.is_remote());
    assert_ne!(span.trace_id(), TraceId::INVALID);
    assert_ne!(span.span_id(), SpanId::INVALID);
    let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
    let mut written = std::collections::HashMap::new();
    propagator.inject_context(&cx, &mut written);
    let again = propagator.extract(&written);
    let back = again.span().span_context().clone();
    assert_eq!(
        (back.trace_id(), back.span_id(), back.trace_flags().is_sampled()),
        (span.trace_id(), span.span_id(), span.trace_flags().is_sampled())
    );
});
