//! The fixture's gRPC service (`proto/fixture/v1/echo.proto`), for Keel's gRPC tests.

use std::pin::Pin;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The generated messages, server and client.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod pb {
    tonic::include_proto!("fixture.v1");
}

/// The encoded descriptor set of `echo.proto`, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fixture_descriptor.bin"));

/// The `fixture.v1.Echo` handler.
#[derive(Debug, Clone, Default)]
pub struct EchoApi;

#[tonic::async_trait]
impl pb::echo_server::Echo for EchoApi {
    async fn say(&self, request: Request<pb::SayRequest>) -> Result<Response<pb::SayReply>, Status> {
        // Behind `JwtInterceptor` the caller's claims are in the extensions.
        let caller = request.extensions().get::<keel::security::jwt::Claims>().map(|c| c.sub.clone());
        let mut req = request.into_inner();
        if let Some(sub) = caller {
            req.text = format!("{sub}: {}", req.text);
        }
        match req.mode.as_str() {
            // The fixture panics on request: the stack's recovery is what is tested.
            #[allow(clippy::panic)]
            "panic" => std::panic::panic_any("the echo handler panicked on purpose: secret=hunter2".to_owned()),
            "unavailable" => {
                return Err(keel::grpc::status(keel::http::Problem::unavailable(
                    "a dependency of this service is unavailable; retry later",
                    2,
                )));
            }
            "sleep" => tokio::time::sleep(Duration::from_millis(req.sleep_ms)).await,
            _ => {}
        }
        let ctx = keel::http::context::current();
        let request_id = ctx.as_ref().and_then(|c| c.request_id.as_ref().map(|i| i.as_str().to_owned()));
        let remaining = ctx.as_ref().and_then(keel::http::context::RequestContext::remaining);
        let (traceparent, _) = keel::telemetry::current_trace_context();
        tracing::info!(text = %req.text, "echo said");
        Ok(Response::new(pb::SayReply {
            text: req.text,
            request_id: request_id.unwrap_or_default(),
            remaining_ms: remaining.map_or(0, |r| r.as_millis() as u64),
            traceparent: traceparent.unwrap_or_default(),
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Tick, Status>> + Send>>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let every = Duration::from_millis(request.into_inner().every_ms.clamp(1, 60_000));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                n += 1;
                if tx.send(Ok(pb::Tick { n })).await.is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
