//! Slow and idle clients, over raw TCP: headers sent a byte a second (slowloris), a body that
//! trickles, a keep-alive connection left idle. Each check holds one connection for at most its
//! bound; they run together.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::LiveOptions;
use super::checks::{BODY_TIMEOUT, IDLE, SLOWLORIS};
use super::client::Base;
use crate::Collector;

/// What the server did with the held connection.
enum Outcome {
    /// Closed it (or answered and closed).
    Closed,
    /// Answered (a 408, say) without closing yet.
    Answered,
    /// Still open at the bound.
    Open,
    /// Could not connect.
    Unreachable(String),
}

pub(crate) async fn all(base: &Base, opts: &LiveOptions, out: &mut Collector) {
    let (slow_headers, slow_body, idle) =
        tokio::join!(slowloris(base, opts.bound), slow_body(base, opts.bound, &opts.path), idle(base, opts.idle_bound));
    report(out, &SLOWLORIS, slow_headers, opts.bound, "headers sent one byte a second");
    report(out, &BODY_TIMEOUT, slow_body, opts.bound, "a 1 KiB body sent one byte a second");
    report(out, &IDLE, idle, opts.idle_bound, "an idle keep-alive connection after a complete request");
}

fn report(out: &mut Collector, rule: &'static crate::Rule, o: Outcome, bound: Duration, what: &str) {
    match o {
        Outcome::Closed | Outcome::Answered => out.checked(rule),
        Outcome::Open => {
            out.find(rule, "", None, format!("{what}: the connection was still open after {}s", bound.as_secs()))
        }
        Outcome::Unreachable(e) => out.note(format!("{}: not checked, cannot connect: {e}", rule.id)),
    }
}

/// Reads until the peer closes or answers, for at most `until`.
async fn watch(stream: &mut TcpStream, until: Instant) -> Option<Outcome> {
    let mut buf = [0u8; 4096];
    let mut answered = None;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return answered;
        }
        match tokio::time::timeout(left.min(Duration::from_millis(900)), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Outcome::Closed),
            Ok(Ok(_)) => {
                answered.get_or_insert(Outcome::Answered);
            }
            Err(_) => {
                if answered.is_some() {
                    return answered;
                }
                return None;
            }
        }
    }
}

async fn slowloris(base: &Base, bound: Duration) -> Outcome {
    let head = format!("GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: keel-audit\r\n{}X-Padding: ", base.host, base.extra);
    // One more byte of a header that never ends.
    trickle(base, &head, b"a", bound).await
}

async fn slow_body(base: &Base, bound: Duration, path: &str) -> Outcome {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: keel-audit\r\n{}Content-Type: application/json\r\nContent-Length: 1024\r\n\r\n",
        base.host, base.extra
    );
    trickle(base, &head, b" ", bound).await
}

/// Sends `head`, then `byte` every time the server stays quiet for a while, until it answers
/// or closes, or `bound` passes.
async fn trickle(base: &Base, head: &str, byte: &[u8], bound: Duration) -> Outcome {
    let Some(mut s) = super::client::connect(base.addr).await else {
        return Outcome::Unreachable(format!("cannot connect to {}", base.addr));
    };
    let until = Instant::now() + bound;
    if s.write_all(head.as_bytes()).await.is_err() {
        return Outcome::Closed;
    }
    while Instant::now() < until {
        if let Some(o) = watch(&mut s, until).await {
            return o;
        }
        if s.write_all(byte).await.is_err() {
            return Outcome::Closed;
        }
    }
    Outcome::Open
}

async fn idle(base: &Base, bound: Duration) -> Outcome {
    let Some(mut s) = super::client::connect(base.addr).await else {
        return Outcome::Unreachable(format!("cannot connect to {}", base.addr));
    };
    let req =
        format!("GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: keel-audit\r\n{extra}\r\n", base.host, extra = base.extra);
    if s.write_all(req.as_bytes()).await.is_err() {
        return Outcome::Unreachable("closed before the request".into());
    }
    // The response: read until the headers and a Content-Length body (or a short quiet spell),
    // within 10 s and 1 MiB (a response that streams forever is not a keep-alive one).
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let first = Instant::now();
    loop {
        if first.elapsed() > Duration::from_secs(10) || got.len() > (1 << 20) {
            return Outcome::Unreachable("GET / did not answer within 10 s, or its response does not end".into());
        }
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Closed,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) if !got.is_empty() => break,
            Err(_) => {}
        }
        if complete(&got) {
            break;
        }
    }
    let start = Instant::now();
    let until = start + bound;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::Open;
        }
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Closed,
            Ok(Ok(_)) => {}
            Err(_) => return Outcome::Open,
        }
    }
}

/// Whether `got` holds a whole HTTP/1.1 response with a Content-Length (or no body).
fn complete(got: &[u8]) -> bool {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let len = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    match len {
        Some(n) => got.len() >= end + 4 + n,
        // Chunked: the last chunk.
        None if head.contains("transfer-encoding: chunked") => got.ends_with(b"0\r\n\r\n"),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::complete;

    #[test]
    fn responses_are_complete_by_length_or_last_chunk() {
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc"));
        assert!(complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcde"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"));
        assert!(complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"));
        assert!(complete(b"HTTP/1.1 204 No Content\r\n\r\n"));
    }
}
