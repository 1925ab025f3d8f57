//! The request message size cap, `grpc.max_message_size`, for every service at once.
//!
//! A gRPC message travels as a 5-byte prefix (a compression flag and a 32-bit length) and its
//! bytes. The request body is read through [`Limited`], which checks each prefix as it passes:
//! a message announced larger than the cap fails the body with `RESOURCE_EXHAUSTED` before any
//! of it is buffered, and tonic ends the call with that status.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::BoxError;
use axum::body::Body;
use bytes::{Buf, Bytes};
use http::Request;
use http_body::Frame;
use keel_http::middleware::Middleware;
use pin_project_lite::pin_project;

use crate::status::Status;

/// Caps request messages at a size; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimitLayer {
    max: usize,
}

impl MessageLimitLayer {
    /// Messages of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

keel_http::layer_with_config!(MessageLimitLayer => MessageLimit);

impl<F> Middleware<Body, F> for MessageLimitLayer {
    type Future = F;

    fn call(&self, req: Request<Body>, inner: impl FnOnce(Request<Body>) -> F) -> F {
        inner(req.map(|b| Body::new(Limited::new(b, self.max))))
    }
}

pin_project! {
    /// A request body whose messages are checked against the cap; see the module docs.
    pub struct Limited<B> {
        #[pin]
        inner: B,
        max: usize,
        // Prefix bytes seen of the current message's header (0..5), and the length read so far.
        header: u8,
        length: u32,
        // Bytes of the current message still to pass.
        payload: u64,
        failed: bool,
    }
}

impl<B> Limited<B> {
    /// `inner` with messages of at most `max` bytes.
    pub fn new(inner: B, max: usize) -> Self {
        Self { inner, max, header: 0, length: 0, payload: 0, failed: false }
    }
}

/// Walks `data` through the framing state; `Err` with the announced length past `max`.
fn scan(data: &[u8], header: &mut u8, length: &mut u32, payload: &mut u64, max: usize) -> Result<(), u32> {
    let mut rest = data;
    while !rest.is_empty() {
        if *payload > 0 {
            let n = (*payload).min(rest.len() as u64);
            *payload -= n;
            rest.advance(n as usize);
            continue;
        }
        // Byte 0 is the compression flag, 1..5 the big-endian length.
        if *header > 0 {
            *length = (*length << 8) | u32::from(rest[0]);
        }
        *header += 1;
        rest.advance(1);
        if *header == 5 {
            if *length as usize > max {
                return Err(*length);
            }
            *payload = u64::from(*length);
            *header = 0;
            *length = 0;
        }
    }
    Ok(())
}

impl<B> http_body::Body for Limited<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
            && let Err(length) = scan(data, this.header, this.length, this.payload, *this.max)
        {
            *this.failed = true;
            tracing::info!(length, max = *this.max, "gRPC request message over grpc.max_message_size");
            let status = Status::resource_exhausted(format!(
                "a request message of {length} bytes is over the limit of {} bytes",
                this.max
            ));
            return Poll::Ready(Some(Err(Box::new(status))));
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn prefixes_are_read_across_chunk_boundaries() {
        let mut stream = message(3);
        stream.extend(message(10));
        stream.extend(message(4));
        for split in 0..stream.len() {
            let (mut h, mut l, mut p) = (0, 0, 0);
            let (a, b) = stream.split_at(split);
            let out = scan(a, &mut h, &mut l, &mut p, 9).and_then(|()| scan(b, &mut h, &mut l, &mut p, 9));
            assert_eq!(out, Err(10), "split at {split}");
            let (mut h, mut l, mut p) = (0, 0, 0);
            let out = scan(a, &mut h, &mut l, &mut p, 10).and_then(|()| scan(b, &mut h, &mut l, &mut p, 10));
            assert_eq!(out, Ok(()), "split at {split}");
            assert_eq!((h, p), (0, 0), "ends on a message boundary");
        }
    }
}
