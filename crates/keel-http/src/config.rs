//! The `http` section: the public listener and its request limits.
//!
//! Field doc comments are the reference for `docs/configuration.md`; keep the two in step.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::security_headers::HstsConfig;
use keel_config::{Section, Validation};

/// The largest `http.http2.max_header_list_size`: far beyond any real request's headers.
const MAX_HEADER_LIST_SIZE: usize = 16 << 20;

/// `http.*`: the public listener and its request limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HttpConfig {
    /// IP address to bind. Default `0.0.0.0` (all interfaces, as containers need); a service's
    /// development profile defaults it to `127.0.0.1`.
    pub addr: IpAddr,
    /// TCP port. Default `8080`; `0` picks a free port (tests).
    pub port: u16,
    /// Whole-request deadline; past it the client gets a 504 problem. Default `30s`.
    #[serde(with = "keel_config::duration")]
    pub request_timeout: Duration,
    /// Largest request body accepted; larger ones get 413. Default `1MiB`. Routes can raise or
    /// lower it with `axum::extract::DefaultBodyLimit`.
    #[serde(with = "keel_config::bytes")]
    pub body_limit: usize,
    /// Requests handled at once before new ones are shed with 503 + `Retry-After`. Default `1024`.
    pub max_in_flight: usize,
    /// The connection budget every client shares, lowered below the process's open-files
    /// limit (less what else it opens). When it is spent, clients over an even share are
    /// refused new connections and idle connections make room for the rest; only when every
    /// connection is busy do new clients wait in the kernel's backlog. Default `4096`.
    pub max_connections: usize,
    /// Open connections from one client address (an IPv4 address, or an IPv6 /64) at once;
    /// its further connections are closed as soon as they are accepted. Counted per TCP peer;
    /// a peer in `trusted_proxies` is not capped. Default `256`.
    pub max_connections_per_ip: usize,
    /// Bind every listener with `SO_REUSEPORT`, so that a replacement process (same user, same
    /// setting) can bind the same addresses while this one still serves, and take over without
    /// a refused connection: the public and gRPC listeners of a process started with it begin
    /// to listen only once it is first ready, and the kernel spreads new connections over
    /// both until the old one stops accepting. For supervisors on one host (systemd, a
    /// script); Kubernetes replaces pods its own way. Default `false`.
    pub reuse_port: bool,
    /// A client must send a request's headers within this (slow-header attacks hold
    /// connections open otherwise); it is also the first request's deadline on a new
    /// connection, and the idle timeout of an HTTP/1 keep-alive connection. Default `10s`.
    #[serde(with = "keel_config::duration")]
    pub header_read_timeout: Duration,
    /// HTTP/2 connections.
    pub http2: Http2Config,
    /// gzip responses when the client accepts it. Default `true`.
    pub compression: bool,
    /// Strict-Transport-Security. Turn on when clients reach the service over TLS (usually
    /// terminated at the ingress).
    pub hsts: HstsConfig,
    /// Proxies (CIDRs) allowed to tell the client's IP through `X-Forwarded-For` / `Forwarded`.
    /// Default none: the socket peer is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// **Secret.** When set, a trusted proxy's forwarded headers count only on requests that
    /// also carry it as `Keel-Proxy-Secret` (a Keel client sends its
    /// `upstreams.<name>.proxy_secret`): for proxies on addresses others share (loopback, a pod
    /// network). At least 32 characters. Default none: the address alone decides.
    pub proxy_secret: Option<keel_config::Secret>,
    /// TLS on this listener (off by default: usually terminated at the ingress).
    pub tls: keel_tls::ServerTlsConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 8080,
            request_timeout: Duration::from_secs(30),
            body_limit: 1 << 20,
            max_in_flight: 1024,
            max_connections: 4096,
            max_connections_per_ip: 256,
            reuse_port: false,
            header_read_timeout: Duration::from_secs(10),
            http2: Http2Config::default(),
            compression: true,
            hsts: HstsConfig::default(),
            trusted_proxies: Vec::new(),
            proxy_secret: None,
            tls: keel_tls::ServerTlsConfig::default(),
        }
    }
}

/// `http.http2.*`: HTTP/2 connections (cleartext with prior knowledge, or TLS with ALPN at a
/// proxy in front).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Http2Config {
    /// A connection with no stream open for this long is sent `GOAWAY` and closed; if it has
    /// still opened none after as long again, it is dropped. Default `30s`.
    #[serde(with = "keel_config::duration")]
    pub idle_timeout: Duration,
    /// Interval of the keep-alive `PING`s the server sends. Default `20s`.
    #[serde(with = "keel_config::duration")]
    pub keep_alive_interval: Duration,
    /// A `PING` not acknowledged within this closes the connection. Default `20s`.
    #[serde(with = "keel_config::duration")]
    pub keep_alive_timeout: Duration,
    /// Streams (requests) a client may have open at once on one connection. Default `100`.
    pub max_concurrent_streams: u32,
    /// Largest header list (decoded, as HTTP/2 counts it) a request may send. Default `32KiB`.
    #[serde(with = "keel_config::bytes")]
    pub max_header_list_size: usize,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(20),
            max_concurrent_streams: 100,
            max_header_list_size: 32 << 10,
        }
    }
}

impl Section for HttpConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.request_timeout.is_zero() {
            v.invalid("request_timeout", "must be more than 0s");
        }
        if self.body_limit == 0 {
            v.invalid("body_limit", "must be more than 0 bytes");
        }
        if self.max_in_flight == 0 {
            v.invalid("max_in_flight", "must be at least 1");
        }
        if self.max_connections == 0 {
            v.invalid("max_connections", "must be at least 1");
        }
        if self.max_connections_per_ip == 0 {
            v.invalid("max_connections_per_ip", "must be at least 1");
        }
        if self.header_read_timeout.is_zero() {
            v.invalid("header_read_timeout", "must be more than 0s");
        }
        if self.proxy_secret.as_ref().is_some_and(|s| s.expose().len() < 32) {
            v.invalid("proxy_secret", "must be at least 32 characters");
        }
        v.section("http2", &self.http2);
        v.section("tls", &self.tls);
    }
}

impl Section for Http2Config {
    fn validate(&self, v: &mut Validation<'_>) {
        for (key, d) in [
            ("idle_timeout", self.idle_timeout),
            ("keep_alive_interval", self.keep_alive_interval),
            ("keep_alive_timeout", self.keep_alive_timeout),
        ] {
            if d.is_zero() {
                v.invalid(key, "must be more than 0s");
            }
        }
        if self.max_concurrent_streams == 0 {
            v.invalid("max_concurrent_streams", "must be at least 1");
        }
        if !(1 << 10..=MAX_HEADER_LIST_SIZE).contains(&self.max_header_list_size) {
            v.invalid("max_header_list_size", "must be between 1KiB and 16MiB");
        }
    }
}
