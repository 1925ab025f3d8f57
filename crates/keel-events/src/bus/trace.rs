//! Messaging spans, after OpenTelemetry's messaging semantic conventions: a `create` span per
//! message written to the outbox (its context is the message's creation context), a `send` span
//! per publish to the broker (the relay's batch, or one [`Bus::publish`](super::Bus::publish))
//! linked to each message's creation context, and the consumer's `process` span (in
//! `consumer.rs`), a child of the creation context that also links to it.
//!
//! Every integer attribute is recorded as an `i64`: the OpenTelemetry layer exports a `u64` as a
//! string.

use keel_telemetry::SpanContext;

use super::Envelope;
use crate::config::BusBackend;

/// The broker as messaging spans name it: `messaging.system`, `server.address`, `server.port`.
/// Never the URL's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) system: &'static str,
    pub(crate) address: Option<String>,
    pub(crate) port: Option<u16>,
}

impl Peer {
    /// From the backend and its URL: host and port (the scheme's default when the URL has none).
    /// Nothing for the in-process bus, nor for a NATS URL naming several servers (which one the
    /// client is connected to is not known here).
    pub(crate) fn of(backend: BusBackend, url: Option<&str>) -> Self {
        let none = Self { system: backend.as_str(), address: None, port: None };
        let url = match (backend, url) {
            (BusBackend::InProcess, _) | (_, None) => return none,
            (_, Some(url)) if url.contains(',') => return none,
            (_, Some(url)) => url.trim(),
        };
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "amqp" => 5672,
            "amqps" => 5671,
            "ws" => 80,
            "wss" => 443,
            _ if backend == BusBackend::Rabbitmq => 5672,
            _ => 4222,
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = match host_port.strip_prefix('[') {
            // An IPv6 address: `[::1]:4222`.
            Some(v6) => match v6.split_once(']') {
                Some((host, after)) => (host, after.strip_prefix(':')),
                None => return none,
            },
            None => match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            },
        };
        if host.is_empty() {
            return none;
        }
        let port = match port.filter(|p| !p.is_empty()) {
            Some(p) => match p.parse::<u16>() {
                Ok(p) => p,
                Err(_) => return none,
            },
            None => default_port,
        };
        Self { system: none.system, address: Some(host.to_owned()), port: Some(port) }
    }

    /// `server.port`, as an `i64`.
    pub(crate) fn port(&self) -> Option<i64> {
        self.port.map(i64::from)
    }
}

/// The creation context `envelope` carries when it is its own: a valid trace context other than
/// `here`, the current span's, which [`Envelope::new`] stamps. Such a context is kept as it is
/// (the conventions say a custom creation context is not replaced) and linked to; an envelope
/// stamped here, or with none, gets the context of a span made for it instead.
pub(crate) fn custom_context(envelope: &Envelope, here: &SpanContext) -> Option<SpanContext> {
    let tp = envelope.traceparent.as_deref()?;
    let cx = keel_telemetry::span_context_from_traceparent(tp, envelope.tracestate.as_deref());
    let stamped_here = cx.trace_id() == here.trace_id() && cx.span_id() == here.span_id();
    (cx.is_valid() && !stamped_here).then_some(cx)
}

/// The creation context an envelope carries (invalid when none or unreadable).
pub(crate) fn creation_context(envelope: &Envelope) -> SpanContext {
    match envelope.traceparent.as_deref() {
        Some(tp) => keel_telemetry::span_context_from_traceparent(tp, envelope.tracestate.as_deref()),
        None => SpanContext::empty_context(),
    }
}

/// Sets `envelope`'s trace context to `span`'s: the message's creation context. A span with no
/// trace context (none reaches OpenTelemetry) leaves the envelope's as it was.
pub(crate) fn stamp(envelope: &mut Envelope, span: &tracing::Span) {
    if let (Some(traceparent), tracestate) = keel_telemetry::trace_context_of(span) {
        envelope.traceparent = Some(traceparent);
        envelope.tracestate = tracestate;
    }
}

/// The `create {topic}` span of one message written to the outbox (kind PRODUCER), a child of the
/// current span. `peer` is the bus of the relay in this process, when one runs.
#[cfg(feature = "sql")]
pub(crate) fn create_span(peer: Option<&Peer>, topic: &str, id: &str) -> tracing::Span {
    tracing::info_span!(
        "create",
        otel.name = format!("create {topic}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = peer.map(|p| p.system),
        "messaging.operation.type" = "create",
        messaging.operation.name = "create",
        messaging.destination.name = topic,
        messaging.message.id = id,
        server.address = peer.and_then(|p| p.address.as_deref()),
        server.port = peer.and_then(Peer::port),
        "error.type" = tracing::field::Empty,
    )
}

/// What a `send` span describes.
pub(crate) struct Sending<'a> {
    /// The topic, when every message goes to the same one.
    pub(crate) destination: Option<&'a str>,
    /// The message's id, when the span is about one message.
    pub(crate) id: Option<&'a str>,
    /// Messages in the batch (`messaging.batch.message_count`), for the relay's batches.
    pub(crate) batch: Option<usize>,
    /// PRODUCER when the span's context is the message's creation context, else CLIENT.
    pub(crate) producer: bool,
}

/// A `send {topic}` span (`send` alone when the messages go to several topics).
pub(crate) fn send_span(peer: &Peer, send: &Sending<'_>) -> tracing::Span {
    let name = match send.destination {
        Some(topic) => format!("send {topic}"),
        None => "send".to_owned(),
    };
    tracing::info_span!(
        "send",
        otel.name = name,
        otel.kind = if send.producer { "producer" } else { "client" },
        otel.status_code = tracing::field::Empty,
        messaging.system = peer.system,
        "messaging.operation.type" = "send",
        messaging.operation.name = "send",
        messaging.destination.name = send.destination,
        messaging.message.id = send.id,
        messaging.batch.message_count = send.batch.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
        server.address = peer.address.as_deref(),
        server.port = peer.port(),
        "error.type" = tracing::field::Empty,
    )
}

/// Marks `span` failed, with `kind` as `error.type`.
pub(crate) fn fail(span: &tracing::Span, kind: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", kind);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(backend: BusBackend, url: &str) -> (Option<String>, Option<u16>) {
        let p = Peer::of(backend, Some(url));
        assert_eq!(p.system, backend.as_str());
        (p.address, p.port)
    }

    #[test]
    fn the_broker_is_read_from_the_url_without_its_credentials() {
        let some = |h: &str, p: u16| (Some(h.to_owned()), Some(p));
        assert_eq!(peer(BusBackend::Nats, "nats://127.0.0.1:4222"), some("127.0.0.1", 4222));
        assert_eq!(peer(BusBackend::Nats, "nats://user:secret@nats.internal"), some("nats.internal", 4222));
        assert_eq!(peer(BusBackend::Nats, "tls://[::1]:4443"), some("::1", 4443));
        assert_eq!(peer(BusBackend::Nats, "localhost:5222"), some("localhost", 5222));
        assert_eq!(peer(BusBackend::Nats, "nats://a:4222,nats://b:4222"), (None, None));
        assert_eq!(peer(BusBackend::Rabbitmq, "amqp://guest:guest@127.0.0.1:5672/%2f"), some("127.0.0.1", 5672));
        assert_eq!(peer(BusBackend::Rabbitmq, "amqps://u:p@mq.example.com/vhost"), some("mq.example.com", 5671));
        assert_eq!(peer(BusBackend::Rabbitmq, "amqp://u:p@host:notaport/"), (None, None));
        assert_eq!(peer(BusBackend::Rabbitmq, "amqp://"), (None, None));
        assert_eq!(peer(BusBackend::InProcess, "memory://shared"), (None, None));
        assert_eq!(Peer::of(BusBackend::Nats, None).address, None);
        for url in ["nats://user:secret@nats.internal", "amqp://guest:s3cret@h:5672/%2f"] {
            let p = Peer::of(BusBackend::Rabbitmq, Some(url));
            assert!(!format!("{p:?}").contains("secret") && !format!("{p:?}").contains("s3cret"), "{p:?}");
        }
    }

    #[test]
    fn an_envelope_stamped_here_or_with_no_context_has_no_custom_one() {
        let here = SpanContext::empty_context();
        let mut env = Envelope::raw("test", "x.y", 1, serde_json::Value::Null);
        env.traceparent = None;
        assert!(custom_context(&env, &here).is_none());
        env.traceparent = Some("not a traceparent".into());
        assert!(custom_context(&env, &here).is_none(), "an unreadable context is no context");
        assert!(!creation_context(&env).is_valid());
    }
}
