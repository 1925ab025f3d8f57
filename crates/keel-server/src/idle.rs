//! Closing connections that carry no request, around hyper's own connection.
//!
//! hyper bounds an HTTP/1 connection waiting for a request head (`header_read_timeout`, which
//! also covers the wait between keep-alive requests), but has no such bound for the bytes
//! hyper-util reads to tell HTTP/1 from HTTP/2, for the HTTP/2 preface, or for an HTTP/2
//! connection that keeps no stream open: such a connection lives as long as its client
//! wants, holding a slot of `http.max_connections`. This module adds that bound:
//!
//! - [`Track`] wraps the service of one connection and counts its requests in progress: from
//!   the call until the answer's body is dropped (hyper drops it once it has taken its last
//!   frame, or when the stream is reset). It also records the connection's protocol from its
//!   first request. The accept loop reads the same count to pick an idle connection to evict
//!   when the connection budget is spent. Once its `closing` token is cancelled (the drain
//!   has begun), it marks HTTP/1 answers `Connection: close`, which hyper honours by closing
//!   the connection after writing them.
//! - [`Watchdog`] wraps the connection future. A connection that has had no request in
//!   progress for its deadline is asked to shut down gracefully (hyper-util's
//!   `graceful_shutdown`: HTTP/2 sends `GOAWAY` and ends once its streams have; a connection
//!   whose protocol is not known yet is closed at once). If it is still open, with no request
//!   in progress, a full deadline later, it is dropped, which closes it: a client that ignores
//!   the `GOAWAY` (or never acknowledges its `PING`) cannot keep it.
//!
//! The deadline is `http.header_read_timeout` until the first request (for both protocols:
//! it bounds the version sniffing, the preface and the first head), then
//! `http.http2.idle_timeout` on an HTTP/2 connection. An HTTP/1 connection is left to hyper
//! once its first request has arrived: hyper's header-read timeout ends it when idle, and an
//! upgrade (`101`) hands its socket to the handler.
//!
//! The watchdog also carries the drain, and the accept loop's eviction of an idle connection
//! (the connection's own token, a child of the server's drain token): once it is cancelled the
//! watchdog asks the connection to shut down gracefully (HTTP/1: finish the request in
//! progress, then close; HTTP/2: `GOAWAY`, then the open streams finish), and closes it
//! outright if it is still open with nothing in progress [`CLOSE_GRACE`] later: an HTTP/2
//! client that never acknowledges the `GOAWAY` cannot hold on to it. A connection drained
//! before its first request (accepted a moment before, or taken from the listen queue as the
//! accept loop stopped) first gets [`FIRST_REQUEST_GRACE`] to send it, and is answered, then
//! closed, rather than reset; one evicted to make room does not. hyper-util's `GracefulShutdown` does
//! the drain part alone, but it cannot be combined with the idle shutdown: it watches only
//! hyper's own connection types (its `GracefulConnection` trait is sealed) and returns a
//! future nothing else can shut down. So the watchdog calls the same `graceful_shutdown`
//! itself, on a cancellation token.
//!
//! The timer is lazy: a request only updates two atomics, and the watchdog's one `Sleep`, when
//! it fires, re-arms itself for the deadline as it stands then. The one change that can bring
//! a deadline forward, the first request, is judged at once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::Service;

/// How long a connection told to go (drained or evicted) may stay open with nothing in
/// progress before it is closed outright.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_millis(100);

/// How long a connection drained before its first request may take to send it. A client that
/// connected a moment before the drain (a connection the accept loop took from the listen
/// queue as it stopped, above all) is answered, not reset.
pub(crate) const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(500);

/// No request has arrived yet.
const FRESH: u8 = 0;
/// The first request was HTTP/1: hyper's header-read timeout takes over.
const HTTP1: u8 = 1;
/// The first request was HTTP/2.
const HTTP2: u8 = 2;

/// What one connection is doing, shared by its [`Track`] and its [`Watchdog`].
#[derive(Debug)]
pub(crate) struct Activity {
    origin: Instant,
    protocol: AtomicU8,
    in_flight: AtomicUsize,
    /// Nanoseconds from `origin` to the end of the last request in progress (rounding down
    /// to milliseconds could close a connection a moment early).
    idle_since: AtomicU64,
    /// Told to go by the accept loop to make room, not by the drain: no first-request grace.
    evicted: AtomicBool,
}

impl Activity {
    /// A connection accepted now.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            protocol: AtomicU8::new(FRESH),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
        })
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// When the connection's last request ended (its accept, before any).
    pub(crate) fn idle_since(&self) -> Instant {
        self.origin + Duration::from_nanos(self.idle_since.load(Ordering::Acquire))
    }

    /// Marks the connection as evicted, before its token is cancelled.
    pub(crate) fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
    }

    /// Whether the accept loop evicted the connection to make room.
    pub(crate) fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Whether no request is in progress on the connection.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }
}

/// Counts one request in progress until dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The idle time first: the watchdog reads the count, then the time.
        self.0.idle_since.store(self.0.nanos(Instant::now()), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's service, counting its requests in progress (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Track<S> {
    inner: S,
    activity: Arc<Activity>,
    closing: Option<CancellationToken>,
}

impl<S> Track<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity, closing: None }
    }

    /// Marks HTTP/1 answers `Connection: close` once `closing` is cancelled.
    pub(crate) fn closing_on(mut self, closing: Option<CancellationToken>) -> Self {
        self.closing = closing;
        self
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Track<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<TrackBody<ResBody>>;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        if let Some(closing) = &self.closing {
            req.extensions_mut().insert(crate::Draining(closing.clone()));
        }
        let a = &self.activity;
        if a.protocol.load(Ordering::Relaxed) == FRESH {
            let protocol = if req.version() == Version::HTTP_2 { HTTP2 } else { HTTP1 };
            a.protocol.store(protocol, Ordering::Relaxed);
        }
        // Counted for both protocols: the accept loop evicts only connections with none.
        let in_flight = Some(InFlight::start(a));
        // Judged when the request arrives: an answer begun before the drain keeps its
        // connection, which the drain itself then closes once idle.
        let close =
            req.version() < Version::HTTP_2 && self.closing.as_ref().is_some_and(CancellationToken::is_cancelled);
        TrackFuture { inner: self.inner.call(req), in_flight, close }
    }
}

pin_project! {
    /// The response future of [`Track`].
    pub(crate) struct TrackFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
        // Answer with `Connection: close`.
        close: bool,
    }
}

impl<F, B, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx));
        // An error drops the count here; an answer carries it in its body.
        let in_flight = this.in_flight.take();
        let close = *this.close;
        Poll::Ready(res.map(|mut r| {
            if close {
                r.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            r.map(|inner| TrackBody { inner, _in_flight: in_flight })
        }))
    }
}

pin_project! {
    /// The response body of [`Track`]: the request is in progress until it is dropped.
    pub(crate) struct TrackBody<B> {
        #[pin]
        inner: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The deadlines of a [`Watchdog`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// Until the first request.
    pub(crate) first_request: Duration,
    /// Between requests on an HTTP/2 connection.
    pub(crate) http2_idle: Duration,
}

pin_project! {
    /// A connection future that is shut down when idle or drained (see the module docs).
    pub(crate) struct Watchdog<C, F> {
        #[pin]
        conn: C,
        #[pin]
        drain: WaitForCancellationFutureOwned,
        #[pin]
        timer: Sleep,
        shutdown: F,
        activity: Arc<Activity>,
        deadlines: Deadlines,
        drained: bool,
        // Drained before its first request: waiting for it (see `FIRST_REQUEST_GRACE`).
        awaiting_first: bool,
        // `graceful_shutdown` was called (for idleness or the drain).
        shutting_down: bool,
        // HTTP/1 after its first request: hyper's own timeout governs.
        disarmed: bool,
        // The protocol as of the last verdict.
        judged: u8,
    }
}

impl<C, F> Watchdog<C, F>
where
    C: Future,
    F: FnMut(Pin<&mut C>),
{
    /// Watches `conn`, whose requests `activity` counts; `shutdown` starts its graceful
    /// shutdown, and `drain` is the server's drain token.
    pub(crate) fn new(
        conn: C,
        activity: Arc<Activity>,
        deadlines: Deadlines,
        drain: WaitForCancellationFutureOwned,
        shutdown: F,
    ) -> Self {
        let timer = tokio::time::sleep_until(activity.origin + deadlines.first_request);
        Self {
            conn,
            drain,
            timer,
            shutdown,
            activity,
            deadlines,
            drained: false,
            awaiting_first: false,
            shutting_down: false,
            disarmed: false,
            judged: FRESH,
        }
    }
}

/// What a [`Watchdog`] does with its connection when its timer fires.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Look again at this instant.
    Wait(Instant),
    /// Start the graceful shutdown, look again at this instant.
    Shutdown(Instant),
    /// Drop the connection.
    Close,
    /// Stop watching (hyper times HTTP/1 out itself).
    Disarm,
}

fn verdict(activity: &Activity, deadlines: Deadlines, shutting_down: bool, now: Instant) -> Verdict {
    let deadline = match activity.protocol.load(Ordering::Relaxed) {
        FRESH => deadlines.first_request,
        HTTP2 => deadlines.http2_idle,
        _ => return Verdict::Disarm,
    };
    if activity.in_flight.load(Ordering::Acquire) > 0 {
        return Verdict::Wait(now + deadline);
    }
    let due = activity.idle_since() + deadline;
    if now < due {
        Verdict::Wait(due)
    } else if shutting_down {
        Verdict::Close
    } else {
        Verdict::Shutdown(now + deadline)
    }
}

impl<C, F, E> Future for Watchdog<C, F>
where
    C: Future<Output = Result<(), E>>,
    F: FnMut(Pin<&mut C>),
{
    type Output = Result<(), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if !*this.drained && this.drain.as_mut().poll(cx).is_ready() {
            *this.drained = true;
            let now = Instant::now();
            let a = &this.activity;
            if a.protocol.load(Ordering::Relaxed) == FRESH && !*this.shutting_down && !a.is_evicted() {
                // Accepted, its first request most likely on its way: closing it now would
                // reset it (or lose the bytes already sent). Answered, then closed.
                *this.awaiting_first = true;
                let by = (now + FIRST_REQUEST_GRACE).min(a.origin + this.deadlines.first_request);
                this.timer.as_mut().reset(by);
            } else {
                if !*this.shutting_down {
                    *this.shutting_down = true;
                    (this.shutdown)(this.conn.as_mut());
                }
                this.timer.as_mut().reset(now + CLOSE_GRACE);
            }
        }
        loop {
            if !*this.disarmed {
                // A first request changes the deadline, possibly to an earlier one than the
                // timer is set for: judge at once then, as when the timer fires.
                let protocol = this.activity.protocol.load(Ordering::Relaxed);
                let mut due = protocol != *this.judged || this.timer.as_mut().poll(cx).is_ready();
                *this.judged = protocol;
                while due {
                    if *this.awaiting_first {
                        // Its first request has begun (hyper finishes it, then closes), or
                        // the grace is over (closed at once).
                        *this.awaiting_first = false;
                        *this.shutting_down = true;
                        (this.shutdown)(this.conn.as_mut());
                        if this.activity.protocol.load(Ordering::Relaxed) == HTTP1 {
                            // hyper closes it once the answer is written, as after any first
                            // HTTP/1 request: a large answer to a slow client is not cut.
                            *this.disarmed = true;
                            break;
                        }
                        this.timer.as_mut().reset(Instant::now() + CLOSE_GRACE);
                        due = this.timer.as_mut().poll(cx).is_ready();
                        continue;
                    }
                    if *this.drained {
                        // Told to go: closed once nothing is in progress, a grace after.
                        if this.activity.is_idle() {
                            return Poll::Ready(Ok(()));
                        }
                        this.timer.as_mut().reset(Instant::now() + CLOSE_GRACE);
                        due = this.timer.as_mut().poll(cx).is_ready();
                        continue;
                    }
                    match verdict(this.activity, *this.deadlines, *this.shutting_down, Instant::now()) {
                        Verdict::Wait(at) => this.timer.as_mut().reset(at),
                        Verdict::Shutdown(at) => {
                            *this.shutting_down = true;
                            (this.shutdown)(this.conn.as_mut());
                            this.timer.as_mut().reset(at);
                        }
                        Verdict::Close => return Poll::Ready(Ok(())),
                        Verdict::Disarm => {
                            *this.disarmed = true;
                            break;
                        }
                    }
                    due = this.timer.as_mut().poll(cx).is_ready();
                }
            }
            match this.conn.as_mut().poll(cx) {
                Poll::Ready(res) => return Poll::Ready(res),
                // hyper calls the service inside that poll: a first request may just have set
                // the protocol; judge again before waiting.
                Poll::Pending if !*this.disarmed && this.activity.protocol.load(Ordering::Relaxed) != *this.judged => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Empty};
    use tower::ServiceExt;

    use super::*;

    const DEADLINES: Deadlines =
        Deadlines { first_request: Duration::from_millis(100), http2_idle: Duration::from_millis(1000) };

    fn request(version: Version) -> Request<Empty<bytes::Bytes>> {
        Request::builder().version(version).body(Empty::new()).unwrap()
    }

    type Answer = Result<Response<Empty<bytes::Bytes>>, Infallible>;

    fn echo(
        activity: &Arc<Activity>,
    ) -> Track<
        impl Service<
            Request<Empty<bytes::Bytes>>,
            Response = Response<Empty<bytes::Bytes>>,
            Error = Infallible,
            Future = impl Future<Output = Answer>,
        > + Clone,
    > {
        Track::new(tower::service_fn(|_| async { Answer::Ok(Response::new(Empty::new())) }), activity.clone())
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_request_is_in_progress_until_its_body_is_dropped() {
        let a = Activity::new();
        let svc = echo(&a);
        let resp = svc.clone().oneshot(request(Version::HTTP_2)).await.unwrap();
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 1);
        tokio::time::advance(Duration::from_millis(250)).await;
        let now = Instant::now();
        assert_eq!(verdict(&a, DEADLINES, false, now), Verdict::Wait(now + DEADLINES.http2_idle));
        drop(resp.into_body().collect().await);
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 0);
        // Idle from the body's drop, against the HTTP/2 deadline.
        assert_eq!(verdict(&a, DEADLINES, false, now), Verdict::Wait(now + DEADLINES.http2_idle));
        let later = now + DEADLINES.http2_idle;
        assert_eq!(verdict(&a, DEADLINES, false, later), Verdict::Shutdown(later + DEADLINES.http2_idle));
        assert_eq!(verdict(&a, DEADLINES, true, later), Verdict::Close);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_http2_request_is_no_longer_in_progress() {
        let a = Activity::new();
        let svc = echo(&a);
        let mut svc = svc;
        let fut = svc.call(request(Version::HTTP_2));
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 1);
        drop(fut);
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn http1_is_left_to_hyper_after_its_first_request() {
        let a = Activity::new();
        let svc = echo(&a);
        let now = Instant::now();
        assert_eq!(verdict(&a, DEADLINES, false, now), Verdict::Wait(now + DEADLINES.first_request));
        let resp = svc.oneshot(request(Version::HTTP_11)).await.unwrap();
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 1, "counted, for the accept loop's evictions");
        drop(resp);
        assert!(a.is_idle());
        assert_eq!(verdict(&a, DEADLINES, false, now), Verdict::Disarm);
    }

    /// A connection that never ends by itself; counts its graceful shutdowns.
    fn pending_conn() -> std::future::Pending<Result<(), Infallible>> {
        std::future::pending()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_shut_down_then_closed() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let drain = CancellationToken::new();
        let started = Instant::now();
        let dog = Watchdog::new(
            pending_conn(),
            Activity::new(),
            DEADLINES,
            drain.cancelled_owned(),
            move |_: Pin<&mut _>| {
                counted.fetch_add(1, Ordering::Relaxed);
            },
        );
        dog.await.unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1, "asked once to shut down");
        assert_eq!(started.elapsed(), DEADLINES.first_request * 2, "dropped a deadline after");
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_shuts_the_connection_down_at_once() {
        let drain = CancellationToken::new();
        let activity = Activity::new();
        activity.protocol.store(HTTP2, Ordering::Relaxed);
        let _busy = InFlight::start(&activity);
        let (mut dog, calls) = counting_dog(&activity, DEADLINES, &drain);
        assert!(poll_once(dog.as_mut()).is_pending());
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        drain.cancel();
        assert!(poll_once(dog.as_mut()).is_pending(), "a request is in progress");
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        // Busy for far longer than any deadline: never closed.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(poll_once(dog.as_mut()).is_pending());
        assert_eq!(calls.load(Ordering::Relaxed), 1, "once");
    }

    /// Drained or evicted with nothing in progress, and the client ignores the `GOAWAY`: closed
    /// a grace later, not a whole deadline.
    #[tokio::test(start_paused = true)]
    async fn a_connection_told_to_go_is_closed_a_grace_later_when_idle() {
        let drain = CancellationToken::new();
        let activity = Activity::new();
        activity.protocol.store(HTTP2, Ordering::Relaxed);
        let (mut dog, _) = counting_dog(&activity, LONG, &drain);
        assert!(poll_once(dog.as_mut()).is_pending());
        drain.cancel();
        assert!(poll_once(dog.as_mut()).is_pending(), "asked to shut down first");
        tokio::time::advance(CLOSE_GRACE).await;
        assert!(poll_once(dog.as_mut()).is_ready(), "closed outright");
    }

    /// Deadlines far beyond any test: only the drain or the grace can end a connection.
    const LONG: Deadlines = Deadlines { first_request: Duration::from_secs(600), http2_idle: Duration::from_secs(600) };

    /// A watchdog over a connection that never ends, counting its graceful shutdowns.
    fn counting_dog(
        activity: &Arc<Activity>,
        deadlines: Deadlines,
        drain: &CancellationToken,
    ) -> (Pin<Box<impl Future<Output = Result<(), Infallible>>>>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let dog = Watchdog::new(pending_conn(), activity.clone(), deadlines, drain.clone().cancelled_owned(), {
            move |_: Pin<&mut _>| {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        });
        (boxed(dog), calls)
    }

    /// Drained before its first request: hyper is asked to shut down only once that request
    /// has begun (then it answers it and closes), not before, when it would reset it.
    #[tokio::test(start_paused = true)]
    async fn a_connection_drained_before_its_first_request_answers_it_first() {
        let a = Activity::new();
        let drain = CancellationToken::new();
        let (mut dog, calls) = counting_dog(&a, LONG, &drain);
        assert!(poll_once(dog.as_mut()).is_pending());
        drain.cancel();
        assert!(poll_once(dog.as_mut()).is_pending());
        assert_eq!(calls.load(Ordering::Relaxed), 0, "not yet: its request may be on its way");
        let answer = echo(&a).oneshot(request(Version::HTTP_11)).await.unwrap();
        assert!(poll_once(dog.as_mut()).is_pending(), "its request is in progress");
        assert_eq!(calls.load(Ordering::Relaxed), 1, "shut down once the request began");
        drop(answer);
        // Left to hyper, which closes it once the answer is written, however long that takes.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(poll_once(dog.as_mut()).is_pending(), "never dropped under hyper's write");
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_drained_before_its_first_request_serves_it_then_closes() {
        let a = Activity::new();
        let drain = CancellationToken::new();
        let (mut dog, calls) = counting_dog(&a, LONG, &drain);
        drain.cancel();
        assert!(poll_once(dog.as_mut()).is_pending());
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        let answer = echo(&a).oneshot(request(Version::HTTP_2)).await.unwrap();
        assert!(poll_once(dog.as_mut()).is_pending());
        assert_eq!(calls.load(Ordering::Relaxed), 1, "GOAWAY once its stream began");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(poll_once(dog.as_mut()).is_pending(), "its stream is open");
        drop(answer);
        tokio::time::advance(CLOSE_GRACE).await;
        assert!(poll_once(dog.as_mut()).is_ready(), "closed a grace after its stream ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_drained_before_a_request_that_never_comes_is_closed_a_grace_later() {
        let a = Activity::new();
        let drain = CancellationToken::new();
        let (mut dog, calls) = counting_dog(&a, LONG, &drain);
        drain.cancel();
        assert!(poll_once(dog.as_mut()).is_pending());
        tokio::time::advance(FIRST_REQUEST_GRACE).await;
        assert!(poll_once(dog.as_mut()).is_pending());
        assert_eq!(calls.load(Ordering::Relaxed), 1, "shut down when the grace ran out");
        tokio::time::advance(CLOSE_GRACE).await;
        assert!(poll_once(dog.as_mut()).is_ready());
    }

    /// The grace ends no later than the first-request deadline (`http.header_read_timeout`).
    #[tokio::test(start_paused = true)]
    async fn the_grace_ends_at_the_first_request_deadline() {
        let drain = CancellationToken::new();
        // DEADLINES.first_request (100 ms) is shorter than the grace.
        let a = Activity::new();
        let (mut dog, calls) = counting_dog(&a, DEADLINES, &drain);
        drain.cancel();
        assert!(poll_once(dog.as_mut()).is_pending());
        tokio::time::advance(DEADLINES.first_request).await;
        assert!(poll_once(dog.as_mut()).is_pending());
        assert_eq!(calls.load(Ordering::Relaxed), 1, "shut down at the deadline, not the grace's end");
    }

    /// Evicted to make room for another client: no grace for a first request.
    #[tokio::test(start_paused = true)]
    async fn an_evicted_fresh_connection_is_shut_down_at_once() {
        let a = Activity::new();
        let drain = CancellationToken::new();
        let (mut dog, calls) = counting_dog(&a, LONG, &drain);
        a.evict();
        drain.cancel();
        assert!(poll_once(dog.as_mut()).is_pending());
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        tokio::time::advance(CLOSE_GRACE).await;
        assert!(poll_once(dog.as_mut()).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_gets_its_idle_deadline_from_its_first_request() {
        // The first-request deadline far longer than the idle one: the idle one still holds.
        let deadlines = Deadlines { first_request: Duration::from_secs(10), http2_idle: Duration::from_secs(1) };
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let a = Activity::new();
        let started = Instant::now();
        let dog = Watchdog::new(
            pending_conn(),
            a.clone(),
            deadlines,
            CancellationToken::new().cancelled_owned(),
            move |_: Pin<&mut _>| {
                counted.fetch_add(1, Ordering::Relaxed);
            },
        );
        let mut dog = boxed(dog);
        assert!(poll_once(dog.as_mut()).is_pending());
        drop(echo(&a).oneshot(request(Version::HTTP_2)).await.unwrap());
        dog.await.unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1, "asked once to shut down");
        assert_eq!(started.elapsed(), Duration::from_secs(2), "two idle deadlines, not the first request's");
    }

    fn boxed<T>(t: T) -> Pin<Box<T>> {
        Box::pin(t)
    }

    fn poll_once<T: Future>(f: Pin<&mut T>) -> Poll<T::Output> {
        let waker = std::task::Waker::noop();
        f.poll(&mut Context::from_waker(waker))
    }
}
