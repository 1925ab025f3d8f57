//! The envelope every event travels in: CloudEvents 1.0 attributes (structured JSON mode) plus
//! a schema version, the W3C `traceparent` and the originating `request_id`.
//!
//! The same JSON goes over every backend, so an event written to the outbox on SQLite in
//! development is byte-for-byte what RabbitMQ or NATS carries in production.

use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::EventError;

/// A typed, versioned event.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct JoinConfirmed { join_id: String, event_id: String }
///
/// impl keel_events::Event for JoinConfirmed {
///     const TYPE: &'static str = "join.confirmed";
///     const VERSION: u32 = 1;
/// }
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + 'static {
    /// The CloudEvents `type`, e.g. `join.confirmed`.
    const TYPE: &'static str;
    /// The schema version of `data`; bump it on an incompatible change and keep decoding the old
    /// one (see [`Envelope::decode`]).
    const VERSION: u32;
    /// The partition / ordering key (events with the same key are delivered in order where the
    /// backend can), e.g. the aggregate id. `None`: no ordering.
    fn key(&self) -> Option<String> {
        None
    }
}

/// A CloudEvents-compatible envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// CloudEvents spec version (`1.0`).
    pub specversion: String,
    /// Unique id (UUIDv7: time-ordered), also the idempotency key consumers record.
    pub id: String,
    /// Event type, e.g. `join.confirmed`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The producing service.
    pub source: String,
    /// When the event happened (RFC 3339).
    pub time: String,
    /// What the event is about (e.g. the join id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `application/json`.
    pub datacontenttype: String,
    /// Schema version of `data` (extension attribute `dataversion`).
    #[serde(rename = "dataversion")]
    pub version: u32,
    /// Ordering key (extension attribute `partitionkey`, as in the CloudEvents partitioning extension).
    #[serde(rename = "partitionkey", default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// W3C trace context of the producer (distributed-tracing extension): the message's creation
    /// context, which consumers continue. [`Envelope::new`] stamps the current span's; the outbox
    /// and [`Bus::publish`](crate::Bus::publish), when traced, store their `create` or `send`
    /// span's instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C trace state, when the producer had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// The request id the event was produced under (extension attribute `requestid`).
    #[serde(rename = "requestid", default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The payload.
    pub data: serde_json::Value,
}

impl Envelope {
    /// Wraps `event`, stamping a new UUIDv7 id, the time, and the current request id and trace
    /// context (so consumers continue the producer's trace and log its request id).
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Ping { n: u32 }
    /// # impl keel_events::Event for Ping { const TYPE: &'static str = "ping"; const VERSION: u32 = 1; }
    /// let env = keel_events::Envelope::new("hello", &Ping { n: 1 }).unwrap();
    /// assert_eq!(env.ty, "ping");
    /// assert_eq!(env.decode::<Ping>().unwrap().n, 1);
    /// ```
    pub fn new<E: Event>(source: &str, event: &E) -> Result<Self, EventError> {
        let data = serde_json::to_value(event).map_err(|e| EventError::Encode(e.to_string()))?;
        let mut env = Self::raw(source, E::TYPE, E::VERSION, data);
        env.key = event.key();
        Ok(env)
    }

    /// An envelope for an untyped payload (tools, replays, tests).
    pub fn raw(source: &str, ty: &str, version: u32, data: serde_json::Value) -> Self {
        let (traceparent, tracestate) = keel_telemetry::current_trace_context();
        Self {
            specversion: "1.0".into(),
            id: uuid::Uuid::now_v7().to_string(),
            ty: ty.into(),
            source: source.into(),
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            subject: None,
            datacontenttype: "application/json".into(),
            version,
            key: None,
            traceparent,
            tracestate,
            request_id: keel_http::context::current().and_then(|c| c.request_id).map(|r| r.as_str().to_owned()),
            data,
        }
    }

    /// Sets the subject.
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the ordering key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the request id (when producing outside a request, e.g. from a worker that has one).
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Decodes `data` as `E`, checking type and schema version: a mismatch is an error, never a
    /// silently half-filled struct.
    pub fn decode<E: Event>(&self) -> Result<E, EventError> {
        if self.ty != E::TYPE {
            return Err(EventError::Decode(format!("expected type {}, got {}", E::TYPE, self.ty)));
        }
        if self.version != E::VERSION {
            return Err(EventError::Decode(format!(
                "{}: expected schema version {}, got {}",
                self.ty,
                E::VERSION,
                self.version
            )));
        }
        serde_json::from_value(self.data.clone()).map_err(|e| EventError::Decode(format!("{}: {e}", self.ty)))
    }

    /// The wire form (CloudEvents structured JSON).
    pub fn to_bytes(&self) -> Result<Vec<u8>, EventError> {
        serde_json::to_vec(self).map_err(|e| EventError::Encode(e.to_string()))
    }

    /// Parses the wire form; bad input is an error naming what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EventError> {
        let env: Self = serde_json::from_slice(bytes).map_err(|e| EventError::Decode(e.to_string()))?;
        if env.id.is_empty() || env.ty.is_empty() {
            return Err(EventError::Decode("envelope without id or type".into()));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Joined {
        join_id: String,
    }
    impl Event for Joined {
        const TYPE: &'static str = "join.confirmed";
        const VERSION: u32 = 2;
        fn key(&self) -> Option<String> {
            Some(self.join_id.clone())
        }
    }

    #[test]
    fn round_trips_through_the_wire_form_with_cloudevents_names() {
        let env = Envelope::new("joins", &Joined { join_id: "j1".into() }).unwrap().with_subject("j1");
        let json: serde_json::Value = serde_json::from_slice(&env.to_bytes().unwrap()).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "join.confirmed");
        assert_eq!(json["dataversion"], 2);
        assert_eq!(json["partitionkey"], "j1");
        assert_eq!(json["datacontenttype"], "application/json");
        let back = Envelope::from_bytes(&env.to_bytes().unwrap()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.decode::<Joined>().unwrap(), Joined { join_id: "j1".into() });
        assert_eq!(uuid::Uuid::parse_str(&env.id).unwrap().get_version_num(), 7);
    }

    #[test]
    fn wrong_type_version_or_shape_is_an_error() {
        let mut env = Envelope::new("joins", &Joined { join_id: "j1".into() }).unwrap();
        env.version = 1;
        assert!(env.decode::<Joined>().is_err());
        env.version = 2;
        env.data = serde_json::json!({"join_id": 5});
        assert!(env.decode::<Joined>().is_err());
        env.ty = "other".into();
        assert!(env.decode::<Joined>().is_err());
        assert!(Envelope::from_bytes(b"not json").is_err());
        assert!(Envelope::from_bytes(br#"{"specversion":"1.0"}"#).is_err());
    }
}
