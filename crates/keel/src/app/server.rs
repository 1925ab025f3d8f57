//! The accept loop: hyper with a header-read deadline, a connection cap, and graceful drain.
//!
//! `axum::serve` has neither a header-read timeout nor a connection limit, so a client that
//! opens connections and sends headers a byte at a time can hold file descriptors forever
//! (and, during shutdown, the drain). This loop serves the same router through hyper-util.
//!
//! # Shutdown
//!
//! When `stop` is cancelled the listener is dropped at once (new connections are refused), idle
//! keep-alive connections are closed, and the returned future completes when every in-flight
//! request has been answered. The drain goes through each connection's watch (see
//! `head_deadline`), and the connections' tasks are counted by a `TaskTracker`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::head_deadline::{Deadlines, Drained, Watched, WatchedIo};

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_connections: usize,
}

/// Serves `router` on `listener` until `stop` is cancelled, then drains.
pub(crate) async fn serve(listener: TcpListener, router: Router, limits: Limits, stop: CancellationToken) {
    // `with_state(())` turns every handler into a finished route once, here. A router served
    // without it (as `Router<()>` straight into hyper) rebuilds each handler's route, and
    // applies every layer of the stack to it again, on every request; `axum::serve` does the
    // same conversion for the same reason.
    let router = router.with_state(());
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = Builder::new(TokioExecutor::new());
    // The header-read deadline is kept beside hyper (see `head_deadline`), not by hyper's own
    // timer: that one costs a timer and an extra poll per request.
    builder.http1().header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let deadlines = Deadlines::new(limits.header_read_timeout);
    // Swept while connections are accepted and while they drain (a client stalled in the
    // middle of a head must not hold up the shutdown); stopped when this returns or is dropped.
    let _sweeping = deadlines.sweep_in_background();
    // Dropped first: should this future be dropped part-way, its connections still drain.
    let _drain = deadlines.drain_on_drop();
    let mut logged_full = false;
    loop {
        // A free slot first: at the cap, new clients wait in the kernel's backlog.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                if !logged_full {
                    tracing::warn!(max = limits.max_connections, "connection limit reached; new clients wait");
                    logged_full = true;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    s = slots.clone().acquire_owned() => match s {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: back off briefly
                    // instead of spinning, and keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        logged_full = false;
        let _ = stream.set_nodelay(true);
        let watch = deadlines.watch();
        let service = router.clone().map_request(move |req: http::Request<hyper::body::Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let service = TowerToHyperService::new(Watched::new(service, watch.clone()));
        let io = TokioIo::new(WatchedIo::new(stream, watch.clone()));
        let conn = builder.serve_connection_with_upgrades(io, service).into_owned();
        let conn = Drained::new(conn, watch, |conn: Pin<&mut _>| conn.graceful_shutdown());
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    deadlines.drain();
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn connections_still_drain_when_the_accept_loop_is_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", get(|| async { "hi" }));
        // A header deadline far beyond the test: only the drain can close the connection.
        let limits = Limits { header_read_timeout: Duration::from_secs(600), max_connections: 8 };
        let serving = tokio::spawn(serve(listener, router, limits, CancellationToken::new()));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"hi") {
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before answering");
            answer.extend_from_slice(&buf[..n]);
        }
        // Idle and kept alive; then the loop's task is aborted.
        serving.abort();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the idle connection was not closed: {read:?}");
    }
}
