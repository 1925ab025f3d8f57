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
//! # Drain
//!
//! The same registry drains the connections at shutdown: [`Deadlines::drain`] marks the
//! listener draining and wakes every connection, and each one, wrapped in [`Drained`], starts
//! hyper's graceful shutdown on its next poll (HTTP/1: finish the request in progress, then
//! close; HTTP/2: `GOAWAY`). That replaces hyper-util's `GracefulShutdown`, whose watch was
//! polled on every poll of every connection.
//!
//! # Cancellation
//!
//! [`Deadlines::sweep_in_background`] sweeps, on a thread of its own, until the [`Sweeping`]
//! it returns is dropped. The accept loop keeps it through accepting and the drain, so a
//! connection stalled in the middle of a head cannot hold up a graceful shutdown, and drops it
//! when it returns or is dropped. That ends the thread at once: it waits on a channel, which
//! dropping the `Sweeping` disconnects.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::MissedTickBehavior;
use tokio_util::task::AbortOnDropHandle;
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
    draining: AtomicBool,
}

impl Deadlines {
    /// Deadlines of `timeout` after a connection goes idle.
    pub(crate) fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            timeout_ms: millis(timeout),
            period: (timeout / 8).clamp(Duration::from_millis(5), Duration::from_secs(1)),
            origin: Instant::now(),
            watched: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
        })
    }

    /// The watch of a new connection, idle (waiting for its first request) from now.
    pub(crate) fn watch(self: &Arc<Self>) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            deadlines: self.clone(),
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now()),
            exempt: AtomicBool::new(false),
            done: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            drain_waker: AtomicWaker::new(),
        });
        self.watched.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(&watch));
        watch
    }

    /// Starts sweeping every period, on a thread of its own, until the returned [`Sweeping`]
    /// is dropped.
    ///
    /// A thread, not a task: a runtime with a timer armed does more work every time a worker
    /// parks, which is after nearly every request on a keep-alive connection (about 250
    /// instructions per request on `GET /hello`). Should the thread fail to start, the sweep
    /// runs as a task instead.
    pub(crate) fn sweep_in_background(self: &Arc<Self>) -> Sweeping {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let deadlines = self.clone();
        let thread = std::thread::Builder::new().name("keel-header-deadline".into()).spawn(move || {
            // Disconnected (the `Sweeping` was dropped) ends the loop; nothing is ever sent.
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(deadlines.period) {
                deadlines.sweep(deadlines.now());
            }
        });
        match thread {
            Ok(_) => Sweeping::Thread { _stop: stop },
            Err(e) => {
                tracing::warn!(error = %e, "could not start the header-deadline thread; sweeping on the runtime");
                Sweeping::Task { _task: AbortOnDropHandle::new(tokio::spawn(self.clone().run())) }
            }
        }
    }

    /// Sweeps every period until dropped (the fallback of [`Deadlines::sweep_in_background`]).
    async fn run(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.period);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.sweep(self.now());
        }
    }

    /// A guard that starts the drain when dropped: the accept loop holds one, so that its
    /// connections are shut down gracefully even if the loop itself is dropped part-way (its
    /// task aborted), as hyper-util's `GracefulShutdown` did when dropped.
    pub(crate) fn drain_on_drop(self: &Arc<Self>) -> DrainOnDrop {
        DrainOnDrop(self.clone())
    }

    /// Starts the drain (once; later calls do nothing): every connection, from now on, is
    /// shut down gracefully (see [`Drained`]). Connections accepted later are drained on their
    /// first poll.
    pub(crate) fn drain(&self) {
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        // Each wake takes the waker: a connection is woken to drain at most once, which is all
        // it needs.
        for weak in self.watched.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            if let Some(watch) = weak.upgrade() {
                watch.drain_waker.wake();
            }
        }
    }

    /// Milliseconds since `origin`.
    fn now(&self) -> u64 {
        millis(self.origin.elapsed())
    }

    /// Ends the connections idle for longer than the deadline at `now` (milliseconds since
    /// `origin`), and forgets those that are gone or ended. Exempt connections are kept while
    /// hyper still serves them (the drain needs them), but never ended.
    fn sweep(&self, now: u64) {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        watched.retain(|weak| {
            let Some(watch) = weak.upgrade() else { return false };
            if watch.done.load(Ordering::Acquire) {
                return false;
            }
            if watch.exempt.load(Ordering::Relaxed) {
                return true;
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

/// The background sweep of [`Deadlines::sweep_in_background`]: stops when dropped.
#[derive(Debug)]
pub(crate) enum Sweeping {
    /// Dropping the sender disconnects the thread's channel, which ends the thread.
    Thread { _stop: std::sync::mpsc::Sender<()> },
    /// The fallback task, aborted when dropped.
    Task { _task: AbortOnDropHandle<()> },
}

/// The waker a poll last registered in an [`AtomicWaker`], so that registering the same one
/// again (every poll of the same task) is skipped. Only for slots emptied by a wake after
/// which no further wake is needed: an emptied slot is not refilled while the waker is the
/// same.
#[derive(Debug, Default)]
struct Registered(Option<Waker>);

impl Registered {
    /// Registers `waker` in `slot` unless it is the one registered last; whether it did.
    fn register(&mut self, slot: &AtomicWaker, waker: &Waker) -> bool {
        if self.0.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return false;
        }
        slot.register(waker);
        self.0 = Some(waker.clone());
        true
    }

    /// Lets go of the waker kept.
    fn forget(&mut self) {
        self.0 = None;
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
    /// hyper is done with the connection: closed, or handed over by an upgrade or a tunnel
    /// (whose socket, and so this watch, lives on). Nothing is left to drain.
    done: AtomicBool,
    expired: AtomicBool,
    /// The connection's task, woken to find its connection expired (registered by its reads).
    waker: AtomicWaker,
    /// The same task, woken to drain (registered by [`Drained`]). A slot of its own: each
    /// wake empties its slot, and a connection may need both wakes.
    drain_waker: AtomicWaker,
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
        // In `watch.waker` (emptied only by the sweep's wake, after `expired` is set for good).
        registered: Registered,
    }
}

impl<T> WatchedIo<T> {
    pub(crate) fn new(io: T, watch: Arc<Watch>) -> Self {
        Self { io, watch, registered: Registered::default() }
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
            if this.watch.exempt.load(Ordering::Relaxed) {
                // Never swept again (HTTP/2, or an upgraded socket read by its handler's
                // task): no waker is needed, and none of the connection task's is kept.
                this.registered.forget();
                return polled;
            }
            this.registered.register(&this.watch.waker, cx.waker());
            // A sweep between the check above and the registration woke no one.
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

pin_project! {
    /// A connection, shut down gracefully once its listener drains ([`Deadlines::drain`]).
    ///
    /// This replaces hyper-util's `GracefulShutdown`, whose watch channel was polled on every
    /// poll of every connection (about 170 instructions per request): here a poll reads one
    /// flag, and registers the task's waker only when it changed.
    pub(crate) struct Drained<C, F> {
        #[pin]
        conn: C,
        watch: Arc<Watch>,
        shutdown: F,
        // In `watch.drain_waker` (emptied only by the drain's wake, after which it is not
        // needed).
        registered: Registered,
        drained: bool,
    }
}

impl<C, F: FnMut(Pin<&mut C>)> Drained<C, F> {
    /// `conn`, on which `shutdown` starts a graceful shutdown (hyper's `graceful_shutdown`).
    pub(crate) fn new(conn: C, watch: Arc<Watch>, shutdown: F) -> Self {
        Self { conn, watch, shutdown, registered: Registered::default(), drained: false }
    }
}

impl<C: Future, F: FnMut(Pin<&mut C>)> Future for Drained<C, F> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if !*this.drained {
            let draining = || this.watch.deadlines.draining.load(Ordering::Acquire);
            // A drain between the first check and the registration woke no one.
            let drain = draining() || (this.registered.register(&this.watch.drain_waker, cx.waker()) && draining());
            if drain {
                *this.drained = true;
                (this.shutdown)(this.conn.as_mut());
            }
        }
        let out = std::task::ready!(this.conn.poll(cx));
        // An upgraded connection's socket keeps the watch: the watch must not keep this
        // finished task's wakers (and with them its memory), nor the socket a place in the
        // list. (The socket's own copy goes at its first read by the handler's task.)
        this.watch.done.store(true, Ordering::Release);
        drop(this.watch.drain_waker.take());
        drop(this.watch.waker.take());
        Poll::Ready(out)
    }
}

/// Starts the drain when dropped (see [`Deadlines::drain_on_drop`]).
#[derive(Debug)]
pub(crate) struct DrainOnDrop(Arc<Deadlines>);

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        self.0.drain();
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
    async fn closed_connections_are_forgotten_and_exempt_ones_kept_for_the_drain() {
        let d = deadlines(800);
        let exempt = d.watch();
        exempt.exempt.store(true, Ordering::Relaxed);
        drop(d.watch());
        d.sweep(100_000_000);
        assert!(!exempt.expired.load(Ordering::Acquire));
        let watched = d.watched.lock().unwrap();
        assert_eq!(watched.len(), 1);
        assert!(Arc::ptr_eq(&watched[0].upgrade().unwrap(), &exempt));
    }

    #[test]
    fn the_background_sweep_ends_idle_connections_and_stops_when_dropped() {
        let d = deadlines(40);
        let w = d.watch();
        let sweeping = d.sweep_in_background();
        let patience = Instant::now() + Duration::from_secs(10);
        while !w.expired.load(Ordering::Acquire) {
            assert!(Instant::now() < patience, "not swept within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(d.now() - w.idle_since.load(Ordering::Relaxed) >= 40, "not before the deadline");
        // The thread holds the third reference (after `d` and the watch's).
        assert_eq!(Arc::strong_count(&d), 3);
        drop(sweeping);
        while Arc::strong_count(&d) > 2 {
            assert!(Instant::now() < patience, "the sweep thread did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A connection that never ends on its own, polled by hand with a waker that counts its
    /// wakes; counts its graceful shutdowns.
    struct Conn {
        fut: Pin<Box<dyn Future<Output = ()>>>,
        shutdowns: Arc<AtomicUsize>,
        wakes: Arc<Count>,
    }

    impl Conn {
        fn new(w: &Arc<Watch>) -> Self {
            let shutdowns = Arc::new(AtomicUsize::new(0));
            let counted = shutdowns.clone();
            let fut = Drained::new(std::future::pending::<()>(), w.clone(), move |_: Pin<&mut _>| {
                counted.fetch_add(1, Ordering::SeqCst);
            });
            Self { fut: Box::pin(fut), shutdowns, wakes: Arc::new(Count(AtomicUsize::new(0))) }
        }

        /// Polled with the same waker every time (as a task's).
        fn poll(&mut self) -> Poll<()> {
            let waker = Waker::from(self.wakes.clone());
            self.fut.as_mut().poll(&mut Context::from_waker(&waker))
        }

        fn shutdowns(&self) -> usize {
            self.shutdowns.load(Ordering::SeqCst)
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn a_drain_wakes_each_connection_and_shuts_it_down_once() {
        let d = deadlines(800);
        let mut conn = Conn::new(&d.watch());
        assert!(conn.poll().is_pending());
        assert!(conn.poll().is_pending(), "the same waker, kept");
        assert_eq!(conn.shutdowns(), 0, "not before the drain");
        d.drain();
        assert_eq!(conn.wakes(), 1, "the drain wakes the connection");
        assert!(conn.poll().is_pending(), "it goes on until the connection ends");
        assert!(conn.poll().is_pending());
        assert_eq!(conn.shutdowns(), 1, "shut down once");
    }

    #[test]
    fn a_connection_first_polled_after_the_drain_began_is_drained_at_once() {
        let d = deadlines(800);
        let mut conn = Conn::new(&d.watch());
        d.drain();
        assert!(conn.poll().is_pending());
        assert_eq!(conn.shutdowns(), 1);
    }

    #[test]
    fn http2_connections_are_drained_too() {
        let d = deadlines(800);
        let w = d.watch();
        // What `Watched` does on an HTTP/2 request.
        w.exempt.store(true, Ordering::Relaxed);
        d.sweep(100_000_000);
        let mut conn = Conn::new(&w);
        assert!(conn.poll().is_pending());
        d.drain();
        assert_eq!(conn.wakes(), 1, "woken by the drain");
        assert!(conn.poll().is_pending());
        assert_eq!(conn.shutdowns(), 1, "and shut down");
    }

    #[test]
    fn a_connection_hyper_is_done_with_lets_go_of_its_task_and_its_place() {
        // An upgrade: hyper's connection future ends, the socket (and its watch) live on.
        let d = deadlines(800);
        let w = d.watch();
        w.exempt.store(true, Ordering::Relaxed);
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let mut conn = Box::pin(Drained::new(std::future::ready(()), w.clone(), |_: Pin<&mut _>| {}));
        assert!(conn.as_mut().poll(&mut Context::from_waker(&waker)).is_ready());
        assert!(w.drain_waker.take().is_none(), "the finished task's wakers are not kept");
        assert!(w.waker.take().is_none());
        d.sweep(1);
        assert!(d.watched.lock().unwrap().is_empty(), "nor its place in the list");
    }

    #[test]
    fn the_drain_runs_once() {
        let d = deadlines(800);
        let w = d.watch();
        let mut conn = Conn::new(&w);
        assert!(conn.poll().is_pending());
        drop(d.drain_on_drop());
        assert_eq!(conn.wakes(), 1, "a guard dropped drains");
        // Registered again by hand (a drained connection never does): a second drain would
        // wake it.
        w.drain_waker.register(&Waker::from(conn.wakes.clone()));
        d.drain();
        assert_eq!(conn.wakes(), 1, "a second drain does nothing");
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
    async fn an_exempt_connection_reads_without_keeping_a_waker() {
        let d = deadlines(800);
        let w = d.watch();
        let mut r = Reader::new(&w);
        assert!(r.poll().is_pending());
        assert!(r.io.registered.0.is_some());
        // HTTP/2 from now on, or upgraded and read by another task.
        w.exempt.store(true, Ordering::Relaxed);
        assert!(r.poll().is_pending());
        assert!(r.io.registered.0.is_none(), "the earlier task's waker is let go");
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
