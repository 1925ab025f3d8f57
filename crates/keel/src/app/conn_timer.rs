//! hyper's header-read deadline with one tokio timer per connection, not one per request.
//!
//! hyper starts a new sleep each time it waits for a request head — on an idle keep-alive
//! connection too — and drops it once the head is in. With `hyper_util`'s `TokioTimer` each of
//! those is a tokio `Sleep`: an allocation, a registration in the runtime's timer wheel and a
//! removal, per request. In `bench/http-stack.sh` that was about 1.4 µs of server CPU per
//! request, more than any layer of the stack.
//!
//! Here a connection keeps one tokio `Sleep`. The sleep hyper gets for a request only carries its
//! deadline; polled, it leaves the connection's timer as it is when that fires no later than the
//! deadline, and re-arms it otherwise. Deadlines only move forward from one request to the next,
//! so the timer fires early, wakes the connection, and is re-armed: once per timeout period,
//! not per request. The deadline is enforced as before: a head that is not complete by then
//! ends the connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// The timer of one connection; see the module docs.
#[derive(Clone, Default)]
pub(crate) struct ConnTimer {
    // Polled only by the connection's task (one thread at a time), so never contended.
    armed: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

// Time is tokio's clock throughout, as `hyper_util`'s `TokioTimer` has it: the same as the
// system's, except under tokio's paused test clock, where mixing the two would re-arm a timer
// for a moment already past, over and over.
impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        let now = self.now();
        // Far enough to mean never, as tokio's `sleep` does with an unrepresentable deadline.
        let never = || now + Duration::from_secs(86_400 * 365 * 30);
        self.sleep_until(now.checked_add(duration).unwrap_or_else(never))
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(ConnSleep { armed: self.armed.clone(), deadline })
    }
}

/// One wait for a request head.
struct ConnSleep {
    armed: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
    deadline: Instant,
}

impl Sleep for ConnSleep {}

impl Future for ConnSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        if tokio::time::Instant::now() >= deadline {
            return Poll::Ready(());
        }
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        let sleep = armed.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // Fired already (for an earlier deadline), or set for later than this one: move it here.
        if sleep.is_elapsed() || sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        // Registers this task's waker. It is not ready: it fires at or before `deadline`, which
        // has not passed; if it fires before, the wake-up polls this again and re-arms it.
        let _ = sleep.as_mut().poll(cx);
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once(s: &mut Pin<Box<dyn Sleep>>) -> Poll<()> {
        s.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test]
    async fn a_later_deadline_is_kept_by_the_same_timer() {
        let timer = ConnTimer::default();
        let start = Instant::now();
        // A first wait, given up (its head came in), then the next request's.
        let mut first = timer.sleep(Duration::from_millis(200));
        assert!(poll_once(&mut first).is_pending());
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        timer.sleep(Duration::from_millis(200)).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(300), "the second deadline, not the first: {waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }

    #[tokio::test]
    async fn an_earlier_deadline_moves_the_timer_back() {
        let timer = ConnTimer::default();
        let start = Instant::now();
        let mut long = timer.sleep(Duration::from_secs(30));
        assert!(poll_once(&mut long).is_pending());
        timer.sleep(Duration::from_millis(100)).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_secs(3), "{waited:?}");
    }
}
