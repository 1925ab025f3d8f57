//! Requests to the service: reqwest for whole requests, raw TCP for what no client sends
//! (headers a byte at a time, a body that never ends).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::{Client, Method, Response};

use super::service::Service;
use crate::AuditError;

/// Candidate probe paths, most specific first.
pub(crate) const LIVENESS: &[&str] = &[
    "/livez",
    "/health/live",
    "/health/liveness",
    "/healthz",
    "/live",
    "/actuator/health/liveness",
    "/health",
    "/ping",
];
pub(crate) const READINESS: &[&str] =
    &["/readyz", "/health/ready", "/health/readiness", "/ready", "/actuator/health/readiness"];
pub(crate) const STARTUP: &[&str] = &["/startupz", "/health/startup", "/startup", "/actuator/health/startup"];
pub(crate) const METRICS: &[&str] = &["/metrics", "/actuator/prometheus"];

/// The service's base URL and its management URL (where probes and `/metrics` may be instead).
#[derive(Clone, Debug)]
pub(crate) struct Base {
    pub(crate) api: String,
    pub(crate) management: Option<String>,
    /// `host:port` of the API, for raw connections.
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    /// `--header` lines for raw requests (`Name: value\r\n` each).
    pub(crate) extra: String,
}

impl Base {
    pub(crate) fn parse(api: &str, management: Option<&str>, headers: &[(String, String)]) -> Result<Base, AuditError> {
        let (addr, host) = authority(api)?;
        if let Some(m) = management {
            authority(m)?;
        }
        let extra = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        Ok(Base {
            api: api.trim_end_matches('/').to_owned(),
            management: management.map(|m| m.trim_end_matches('/').to_owned()),
            addr,
            host,
            extra,
        })
    }

    /// `path` on the API, then on the management URL.
    pub(crate) fn candidates(&self, path: &str) -> Vec<String> {
        let mut v = vec![format!("{}{path}", self.api)];
        if let Some(m) = &self.management {
            v.push(format!("{m}{path}"));
        }
        v
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }
}

/// The socket address and `host:port` of an `http://` URL.
fn authority(url: &str) -> Result<(SocketAddr, String), AuditError> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(AuditError::Live(format!(
            "`{url}`: the live audit takes an http:// URL (audit behind the TLS proxy, not through it)"
        )));
    };
    let host = rest.split('/').next().unwrap_or(rest);
    let with_port = if host.contains(':') && !host.ends_with(']') { host.to_owned() } else { format!("{host}:80") };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .map_err(|e| AuditError::Live(format!("`{url}`: {e}")))?
        .next()
        .ok_or_else(|| AuditError::Live(format!("`{url}`: no address")))?;
    Ok((addr, host.to_owned()))
}

/// A client that follows no redirects, uses no proxy, gives up after 10 s and sends `headers`
/// (`--header`) with every request.
pub(crate) fn http(headers: &[(String, String)]) -> Result<Client, AuditError> {
    let mut map = reqwest::header::HeaderMap::new();
    for (k, v) in headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| AuditError::Live(format!("--header {k}: {e}")))?;
        let value =
            reqwest::header::HeaderValue::from_str(v).map_err(|e| AuditError::Live(format!("--header {k}: {e}")))?;
        map.insert(name, value);
    }
    // Already installed (by an embedding program) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .default_headers(map)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(8)
        .build()
        .map_err(|e| AuditError::Live(format!("HTTP client: {e}")))
}

/// Bodies are read up to this; the rest is not read.
const MAX_BODY: usize = 1 << 20;

/// A response's status, headers and body (its first 1 MiB: no more is read).
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn answer(mut r: Response) -> Answer {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let mut bytes = Vec::new();
    while bytes.len() < MAX_BODY {
        match r.chunk().await {
            Ok(Some(c)) => bytes.extend_from_slice(&c[..c.len().min(MAX_BODY - bytes.len())]),
            _ => break,
        }
    }
    let body = String::from_utf8_lossy(&bytes).into_owned();
    Answer { status, headers, body }
}

/// One request; `None` when it could not be sent or no response came within 10 s.
pub(crate) async fn send(
    c: &Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Option<Answer> {
    send_within(c, method, url, headers, body, REQUEST_TIMEOUT).await
}

/// The per-request bound.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP connection to `addr`, given up after 10 s (a peer that drops SYNs).
pub(crate) async fn connect(addr: SocketAddr) -> Option<tokio::net::TcpStream> {
    tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr)).await.ok()?.ok()
}

/// [`send`] bounded by `within`, the body's reading included.
pub(crate) async fn send_within(
    c: &Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    within: Duration,
) -> Option<Answer> {
    let mut rb = c.request(method, url).timeout(within);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.body(b);
    }
    tokio::time::timeout(within, async { Some(answer(rb.send().await.ok()?).await) }).await.ok().flatten()
}

pub(crate) async fn get(c: &Client, url: &str) -> Option<Answer> {
    send(c, Method::GET, url, &[], None).await
}

/// Polls until the service is ready: a readiness endpoint answers 2xx, or, when it has none,
/// a liveness endpoint or `/` does. Once an endpoint is found only it is polled (every 250 ms:
/// a rate limiter is not to be tripped by the wait). Gives up when the process exits; at
/// `timeout` it goes on if anything answered (the checks then report what is wrong), and fails
/// if nothing did.
pub(crate) async fn wait_until_up(
    c: &Client,
    base: &Base,
    timeout: Duration,
    mut svc: Option<&mut Service>,
) -> Result<(), AuditError> {
    let start = Instant::now();
    let readiness: Vec<String> = READINESS.iter().flat_map(|p| base.candidates(p)).collect();
    let mut others: Vec<String> = LIVENESS.iter().flat_map(|p| base.candidates(p)).collect();
    others.push(base.url("/"));
    // Each request bounded by the time left (and 1 s), so the deadline holds against a server
    // that accepts and never answers.
    let within = |start: Instant| timeout.saturating_sub(start.elapsed()).min(Duration::from_secs(1));
    let get = |u: String, w: Duration| async move { send_within(c, Method::GET, &u, &[], None, w).await };
    let mut target: Option<String> = None;
    let mut answered = false;
    loop {
        if let Some(s) = svc.as_deref_mut()
            && let Some(exit) = s.try_exit()
        {
            return Err(AuditError::Live(format!(
                "the service exited ({exit:?}) before answering; its last output:\n{}",
                s.tail(20)
            )));
        }
        match &target {
            Some(u) => {
                if let Some(a) = get(u.clone(), within(start)).await
                    && (200..300).contains(&a.status)
                {
                    return Ok(());
                }
            }
            None => {
                // Discovery: the first readiness endpoint served, else the first of the others.
                'discover: for (list, is_readiness) in [(&readiness, true), (&others, false)] {
                    for u in list {
                        if within(start).is_zero() {
                            break 'discover;
                        }
                        let Some(a) = get(u.clone(), within(start)).await else { continue };
                        answered = true;
                        if (200..300).contains(&a.status) {
                            return Ok(());
                        }
                        if served(a.status) && (is_readiness || target.is_none()) {
                            target = Some(u.clone());
                            break 'discover;
                        }
                    }
                }
            }
        }
        if start.elapsed() >= timeout {
            if answered {
                return Ok(());
            }
            let tail = svc.map(|s| s.tail(20)).unwrap_or_default();
            return Err(AuditError::Live(format!("{} did not answer within {timeout:?}\n{tail}", base.api)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether a status says the path exists: not 404/405, not an authentication wall (401/403:
/// some stacks answer every unknown path so), not a redirect.
pub(crate) fn served(status: u16) -> bool {
    !matches!(status, 404 | 405 | 401 | 403 | 300..=399)
}

/// The first of `paths` that answers 2xx (on the API, then the management URL), else the first
/// that is [`served`], with its answer.
pub(crate) async fn find(c: &Client, base: &Base, paths: &[&str]) -> Option<(String, Answer)> {
    let mut fallback = None;
    for p in paths {
        for u in base.candidates(p) {
            if let Some(a) = get(c, &u).await {
                if (200..300).contains(&a.status) {
                    return Some((u, a));
                }
                if fallback.is_none() && served(a.status) {
                    fallback = Some((u, a));
                }
            }
        }
    }
    fallback
}
