//! The header-read deadline (`http.header_read_timeout`), kept beside hyper instead of in it.
//!
//! A client must send a complete request head within the deadline of its connection opening,
//! or of the previous answer; otherwise the connection is closed. That stops slow-header
//! attacks, and it is also the idle timeout of a keep-alive connection.
//!
//! hyper can enforce this itself, but then, for every request, it starts a timer and polls the
//! connection once more to arm it. Even with one timer per connection, that was about 1 400
//! instructions per request on `GET /hello`: the largest single cost of Keel's server against
//! `axum::serve` (see docs/benchmarks.md).
//!
//! Here each connection only records, with a few uncontended atomic operations and one clock
//! reading per request, whether it is busy and since when it has been idle. It is busy from the
//! moment a request is handed to the routes until hyper drops its answer's body (once the
//! body's last frame is buffered: the final flush to a slow reader counts as idle, as it did
//! with hyper's deadline). One sweep per listener, run every eighth of the deadline (between
//! 5 ms and 1 s), ends the connections that have been idle longer than the deadline: it marks
//! them and wakes them, and their next read, once no request is in progress, fails. That
//! closes them as hyper's own deadline did.
//!
//! A connection is therefore never closed before it has been idle for the deadline, and
//! closed at most one sweep period later (a quarter more for deadlines of 40 ms and up), plus
//! however late the sweep runs on a busy runtime.
//!
//! A connection that sends nothing, or stalls in the HTTP/2 preface, is closed at the
//! deadline as well; hyper's own deadline did not cover that. Once a connection stops being
//! HTTP/1 requests and answers, it is left alone:
//! - HTTP/2, after its first request; hyper has no header deadline for HTTP/2 either;
//! - after an upgrade (`101 Switching Protocols`);
//! - after a tunnel (a `2xx` answer to `CONNECT`; any other answer keeps the connection
//!   HTTP/1, and under the deadline).
//!
//! # Cancellation
//!
//! [`Deadlines::run`] sweeps until its future is dropped. The accept loop runs it as a task
//! through accepting and the drain, so a connection stalled in the middle of a head cannot hold
//! up a graceful shutdown, and aborts it when it returns or is dropped.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::MissedTickBehavior;
use tower::Service;

/// The deadline of one listener's connections, and their sweep.
#[derive(Debug)]
pub(crate) struct Deadlines {
    timeout_ms: u64,
    period: Duration,
    /// The std clock, not tokio's: under tokio's paused test clock the sweeps come as fast as
    /// virtual time allows, and idle times must still be real ones.
    origin: Instant,
    watched: Mutex<Vec<Weak<Watch>>>,
}

impl Deadlines {
    /// Deadlines of `timeout` after a connection goes idle.
    pub(crate) fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            timeout_ms: millis(timeout),
            period: (timeout / 8).clamp(Duration::from_millis(5), Duration::from_secs(1)),
            origin: Instant::now(),
            watched: Mutex::new(Vec::new()),
        })
    }

    /// The watch of a new connection, idle (waiting for its first request) from now.
    pub(crate) fn watch(self: &Arc<Self>) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            deadlines: self.clone(),
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now()),
            exempt: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        self.watched.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(&watch));
        watch
    }

    /// Sweeps every period until dropped.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.period);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.sweep(self.now());
        }
    }

    /// Milliseconds since `origin`.
    fn now(&self) -> u64 {
        millis(self.origin.elapsed())
    }

    /// Ends the connections idle for longer than the deadline at `now` (milliseconds since
    /// `origin`), and forgets those that are gone or exempt.
    fn sweep(&self, now: u64) {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        watched.retain(|weak| {
            let Some(watch) = weak.upgrade() else { return false };
            if watch.exempt.load(Ordering::Relaxed) {
                return false;
            }
            // `busy` first: a request that ended stamped its idle time before it stopped
            // counting as busy.
            if watch.busy.load(Ordering::Acquire) > 0
                || now.saturating_sub(watch.idle_since.load(Ordering::Relaxed)) < self.timeout_ms
            {
                return true;
            }
            watch.expired.store(true, Ordering::Release);
            watch.waker.wake();
            false
        });
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What one connection records for its deadline.
#[derive(Debug)]
pub(crate) struct Watch {
    deadlines: Arc<Deadlines>,
    /// Requests handed to the routes whose answers are not finished.
    busy: AtomicUsize,
    idle_since: AtomicU64,
    exempt: AtomicBool,
    expired: AtomicBool,
    /// The connection's task, woken to find its connection expired.
    waker: AtomicWaker,
}

impl Watch {
    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Whether reads must fail: expired, and no request in progress. A sweep that judged the
    /// connection idle an instant before a request was handed over must not cut that request
    /// off; the read after its answer fails instead.
    fn cut_off(&self) -> bool {
        self.expired.load(Ordering::Acquire) && self.busy.load(Ordering::Acquire) == 0
    }
}

/// A request in progress on a connection: the connection is busy until this is dropped.
#[derive(Debug)]
struct Busy(Arc<Watch>);

impl Drop for Busy {
    fn drop(&mut self) {
        let watch = &self.0;
        // Stamped first, so that a sweep that sees the connection no longer busy also sees
        // since when.
        watch.idle_since.store(watch.deadlines.now(), Ordering::Relaxed);
        watch.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// A connection's socket, whose reads fail once its deadline has passed.
    pub(crate) struct WatchedIo<T> {
        #[pin]
        io: T,
        watch: Arc<Watch>,
        // The waker last registered with the watch: registering the same one again is skipped.
        registered: Option<Waker>,
    }
}

impl<T> WatchedIo<T> {
    pub(crate) fn new(io: T, watch: Arc<Watch>) -> Self {
        Self { io, watch, registered: None }
    }
}

fn expired() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "request headers not received within http.header_read_timeout")
}

impl<T: AsyncRead> AsyncRead for WatchedIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.watch.cut_off() {
            return Poll::Ready(Err(expired()));
        }
        let polled = this.io.poll_read(cx, buf);
        if polled.is_pending() {
            if !this.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                this.watch.waker.register(cx.waker());
                *this.registered = Some(cx.waker().clone());
            }
            // A sweep between the check above and the registration woke no one. (Skipping the
            // registration of the same waker is safe: the slot is only emptied by the sweep's
            // wake, which follows `expired` being set for good.)
            if this.watch.cut_off() {
                return Poll::Ready(Err(expired()));
            }
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for WatchedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// A connection's service: counts the connection busy while a request is in progress.
#[derive(Debug, Clone)]
pub(crate) struct Watched<S> {
    inner: S,
    watch: Arc<Watch>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, watch: Arc<Watch>) -> Self {
        Self { inner, watch }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Watched<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<WatchedBody<ResB>>;
    type Error = S::Error;
    type Future = WatchedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if req.version() == Version::HTTP_2 {
            self.watch.exempt.store(true, Ordering::Relaxed);
        }
        let connect = req.method() == Method::CONNECT;
        let busy = self.watch.begin();
        WatchedFuture { fut: self.inner.call(req), busy: Some(busy), connect }
    }
}

pin_project! {
    /// Response future of [`Watched`].
    pub(crate) struct WatchedFuture<F> {
        #[pin]
        fut: F,
        busy: Option<Busy>,
        connect: bool,
    }
}

impl<F, B, E> Future for WatchedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<WatchedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.fut.poll(cx));
        let busy = this.busy.take();
        let connect = *this.connect;
        Poll::Ready(out.map(|resp| {
            // What makes hyper hand the connection over (h1 `role.rs`): a 101, or a 2xx to
            // CONNECT.
            let handed_over =
                resp.status() == StatusCode::SWITCHING_PROTOCOLS || (connect && resp.status().is_success());
            if handed_over && let Some(busy) = &busy {
                busy.0.exempt.store(true, Ordering::Relaxed);
            }
            resp.map(|body| WatchedBody { body, _busy: busy })
        }))
    }
}

pin_project! {
    /// An answer's body: its connection is busy until hyper drops it, done.
    pub(crate) struct WatchedBody<B> {
        #[pin]
        body: B,
        _busy: Option<Busy>,
    }
}

impl<B: Body> Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadlines(timeout_ms: u64) -> Arc<Deadlines> {
        Deadlines::new(Duration::from_millis(timeout_ms))
    }

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_sweep_period_is_an_eighth_of_the_deadline_within_bounds() {
        assert_eq!(deadlines(8_000).period, Duration::from_secs(1));
        assert_eq!(deadlines(60_000).period, Duration::from_secs(1));
        assert_eq!(deadlines(800).period, Duration::from_millis(100));
        assert_eq!(deadlines(1).period, Duration::from_millis(5));
    }

    #[tokio::test]
    async fn an_idle_connection_expires_once_idle_for_the_deadline_not_before() {
        let d = deadlines(800);
        let w = d.watch();
        w.idle_since.store(1_000, Ordering::Relaxed);
        d.sweep(1_799);
        assert!(!w.expired.load(Ordering::Acquire));
        d.sweep(1_800);
        assert!(w.expired.load(Ordering::Acquire));
        assert!(d.watched.lock().unwrap().is_empty(), "an expired connection is forgotten");
    }

    #[tokio::test]
    async fn a_busy_connection_never_expires_and_is_idle_from_its_answer() {
        let d = deadlines(800);
        let w = d.watch();
        // Opened long ago.
        w.idle_since.store(0, Ordering::Relaxed);
        let busy = w.begin();
        d.sweep(1_000_000);
        assert!(!w.expired.load(Ordering::Acquire), "a request in progress is not cut off");
        let before = d.now();
        drop(busy);
        let answered = w.idle_since.load(Ordering::Relaxed);
        assert!(answered >= before, "stamped when the answer was done");
        d.sweep(answered + 799);
        assert!(!w.expired.load(Ordering::Acquire), "idle since the answer, not since it opened");
        d.sweep(answered + 800);
        assert!(w.expired.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn exempt_and_closed_connections_are_forgotten() {
        let d = deadlines(800);
        let exempt = d.watch();
        exempt.exempt.store(true, Ordering::Relaxed);
        drop(d.watch());
        d.sweep(100_000_000);
        assert!(!exempt.expired.load(Ordering::Acquire));
        assert!(d.watched.lock().unwrap().is_empty());
    }

    /// A watched socket nothing is sent to, read by hand with a waker that counts its wakes.
    struct Reader {
        io: Pin<Box<WatchedIo<tokio::io::DuplexStream>>>,
        _client: tokio::io::DuplexStream,
        wakes: Arc<Count>,
    }

    impl Reader {
        fn new(w: &Arc<Watch>) -> Self {
            let (client, server) = tokio::io::duplex(64);
            Self {
                io: Box::pin(WatchedIo::new(server, w.clone())),
                _client: client,
                wakes: Arc::new(Count(AtomicUsize::new(0))),
            }
        }

        fn poll(&mut self) -> Poll<io::Result<()>> {
            let waker = Waker::from(self.wakes.clone());
            let mut bytes = [0u8; 8];
            self.io.as_mut().poll_read(&mut Context::from_waker(&waker), &mut ReadBuf::new(&mut bytes))
        }
    }

    #[tokio::test]
    async fn an_expired_connection_is_woken_and_its_read_fails_even_if_its_waker_was_kept() {
        let d = deadlines(800);
        let w = d.watch();
        let mut r = Reader::new(&w);
        // Twice with the same waker: the second skips registering it again.
        assert!(r.poll().is_pending(), "nothing sent yet");
        assert!(r.poll().is_pending());
        d.sweep(w.idle_since.load(Ordering::Relaxed) + 800);
        assert_eq!(r.wakes.0.load(Ordering::SeqCst), 1, "the sweep wakes the connection");
        match r.poll() {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("expected a timed-out read, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_request_handed_over_as_the_sweep_expires_the_connection_is_not_cut_off() {
        let d = deadlines(800);
        let w = d.watch();
        let mut r = Reader::new(&w);
        // The sweep judged it idle; the request's head was handed over in the same instant.
        w.expired.store(true, Ordering::Release);
        let busy = w.begin();
        assert!(r.poll().is_pending(), "reads go on while it is answered");
        drop(busy);
        assert!(matches!(r.poll(), Poll::Ready(Err(_))), "then it is closed");
    }

    async fn answer(d: &Arc<Deadlines>, req: Request<()>, status: StatusCode) -> Arc<Watch> {
        let w = d.watch();
        let inner = tower::service_fn(move |_req: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(Response::builder().status(status).body(String::new()).unwrap())
        });
        let mut svc = Watched::new(inner, w.clone());
        let fut = svc.call(req);
        assert_eq!(w.busy.load(Ordering::Acquire), 1, "busy from the call");
        let resp = fut.await.unwrap();
        assert_eq!(w.busy.load(Ordering::Acquire), 1, "still busy while the body is out");
        drop(resp);
        assert_eq!(w.busy.load(Ordering::Acquire), 0, "idle once hyper drops the body");
        w
    }

    #[tokio::test]
    async fn http1_requests_and_answers_keep_the_connection_under_the_deadline() {
        let d = deadlines(800);
        let plain = answer(&d, Request::new(()), StatusCode::OK).await;
        // A CONNECT refused (hyper keeps the connection HTTP/1, reading the next head).
        let refused =
            answer(&d, Request::builder().method(Method::CONNECT).body(()).unwrap(), StatusCode::METHOD_NOT_ALLOWED)
                .await;
        d.sweep(100_000_000);
        assert!(plain.expired.load(Ordering::Acquire));
        assert!(refused.expired.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn http2_upgraded_and_tunnelled_connections_are_left_alone() {
        let d = deadlines(800);
        let h2 = answer(&d, Request::builder().version(Version::HTTP_2).body(()).unwrap(), StatusCode::OK).await;
        let upgraded = answer(&d, Request::new(()), StatusCode::SWITCHING_PROTOCOLS).await;
        let tunnel = answer(&d, Request::builder().method(Method::CONNECT).body(()).unwrap(), StatusCode::OK).await;
        d.sweep(100_000_000);
        for w in [h2, upgraded, tunnel] {
            assert!(!w.expired.load(Ordering::Acquire));
        }
    }

    #[tokio::test]
    async fn a_request_abandoned_before_its_answer_leaves_the_connection_idle() {
        let d = deadlines(800);
        let w = d.watch();
        let inner = tower::service_fn(|_req: Request<()>| std::future::pending::<Result<Response<String>, ()>>());
        let mut svc = Watched::new(inner, w.clone());
        let fut = svc.call(Request::new(()));
        assert_eq!(w.busy.load(Ordering::Acquire), 1);
        drop(fut);
        assert_eq!(w.busy.load(Ordering::Acquire), 0);
    }
}
