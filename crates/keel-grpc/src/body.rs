//! Response bodies that report how a call ended, and that end a stream early.
//!
//! A gRPC call's status is known only when its response ends: in the trailers, or in the
//! headers of a trailers-only answer. [`Observed`] calls back once with that code — or with
//! `CANCELLED` when the body is dropped before its end (the client went away). [`Cut`] ends a
//! response stream with a status of its own when its deadline passes or the server drains, at
//! a message boundary: a frame the inner body has ready is always passed on first.

use std::future::Future as _;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::BoxError;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::status::{Code, Status, code_in};

/// Called once with the code a call ended with.
pub type OnEnd = Box<dyn FnOnce(Code) + Send>;

pin_project! {
    /// A body that reports the call's code when it ends; see the module docs.
    pub struct Observed<B> {
        #[pin]
        inner: B,
        on_end: Option<OnEnd>,
        span: Option<tracing::Span>,
    }

    impl<B> PinnedDrop for Observed<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.on_end.take() {
                let _entered = this.span.as_ref().map(tracing::Span::enter);
                f(Code::Cancelled);
            }
        }
    }
}

impl<B> Observed<B> {
    /// Wraps the body of a response whose headers are `headers`: a trailers-only answer is
    /// reported at once.
    pub fn new(inner: B, headers: &HeaderMap, on_end: OnEnd) -> Self {
        match code_in(headers) {
            Some(code) => {
                on_end(code);
                Self { inner, on_end: None, span: None }
            }
            None => Self { inner, on_end: Some(on_end), span: None },
        }
    }

    /// Polls the body, and reports its end, inside `span`.
    #[must_use]
    pub fn in_span(mut self, span: tracing::Span) -> Self {
        self.span = Some(span);
        self
    }
}

impl<B> Body for Observed<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let _entered = this.span.as_ref().map(tracing::Span::enter);
        let frame = ready!(this.inner.poll_frame(cx));
        let end = match &frame {
            Some(Ok(f)) => f.trailers_ref().map(|t| code_in(t).unwrap_or(Code::Unknown)),
            Some(Err(_)) => Some(Code::Internal),
            // Ended without trailers: the status never came.
            None => Some(Code::Unknown),
        };
        if let Some(code) = end
            && let Some(f) = this.on_end.take()
        {
            f(code);
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A response stream ended with a status of its own when its deadline passes or the server
    /// drains, and turned into `INTERNAL` when producing its next message panics.
    pub struct Cut<B> {
        #[pin]
        inner: B,
        deadline: Option<Pin<Box<Sleep>>>,
        drain: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        ended: bool,
    }
}

impl<B> Cut<B> {
    /// `inner`, ended at `deadline` (`DEADLINE_EXCEEDED`) and when `drain` completes
    /// (`UNAVAILABLE`: the client may retry elsewhere).
    pub fn new(inner: B, deadline: Option<Instant>, drain: Option<WaitForCancellationFutureOwned>) -> Self {
        Self {
            inner,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            drain: drain.map(Box::pin),
            ended: false,
        }
    }
}

/// The trailers that end a stream with `status`.
fn trailers(status: &Status) -> Frame<Bytes> {
    let mut headers = HeaderMap::new();
    // Only fails for a message that cannot be a header value; ours are plain text.
    let _ = status.add_header(&mut headers);
    Frame::trailers(headers)
}

impl<B> Body for Cut<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let inner = this.inner.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll_frame(cx))) {
            Ok(Poll::Ready(frame)) => return Poll::Ready(frame.map(|r| r.map_err(Into::into))),
            Ok(Poll::Pending) => {}
            Err(payload) => {
                crate::catch_panic::log_panic(payload.as_ref());
                *this.ended = true;
                return Poll::Ready(Some(Ok(trailers(&Status::internal("internal error")))));
            }
        }
        let status = if this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready()) {
            Status::deadline_exceeded("the call's deadline passed")
        } else if this.drain.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready()) {
            Status::unavailable("the server is shutting down; retry")
        } else {
            return Poll::Pending;
        };
        *this.ended = true;
        Poll::Ready(Some(Ok(trailers(&status))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn recorder() -> (Arc<Mutex<Vec<Code>>>, OnEnd) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (seen, Box::new(move |c| s.lock().unwrap().push(c)))
    }

    #[tokio::test]
    async fn the_code_comes_from_the_trailers_or_a_trailers_only_answer_or_cancellation() {
        let (seen, on_end) = recorder();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().unwrap());
        let frames = vec![Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))), Ok(Frame::trailers(trailers))];
        let body = Observed::new(StreamBody::new(futures_util::stream::iter(frames)), &HeaderMap::new(), on_end);
        let _ = body.collect().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![Code::NotFound]);

        let (seen, on_end) = recorder();
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", "14".parse().unwrap());
        drop(Observed::new(http_body_util::Empty::<Bytes>::new(), &headers, on_end));
        assert_eq!(*seen.lock().unwrap(), vec![Code::Unavailable]);

        let (seen, on_end) = recorder();
        drop(Observed::new(http_body_util::Empty::<Bytes>::new(), &HeaderMap::new(), on_end));
        assert_eq!(*seen.lock().unwrap(), vec![Code::Cancelled]);
    }

    #[tokio::test]
    async fn a_waiting_stream_is_cut_at_its_deadline_after_what_it_had_ready() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        tx.send(Ok(Frame::data(Bytes::from_static(b"one")))).await.unwrap();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let deadline = Instant::now() + std::time::Duration::from_millis(50);
        let mut body = Cut::new(StreamBody::new(stream), Some(deadline), None);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"one"));
        let last = body.frame().await.unwrap().unwrap();
        assert_eq!(code_in(last.trailers_ref().unwrap()), Some(Code::DeadlineExceeded));
        assert!(body.frame().await.is_none());
        drop(tx);
    }
}
