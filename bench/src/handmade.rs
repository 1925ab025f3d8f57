//! The `handmade` target of `bench/http-stack.sh`: `GET /hello` and `GET /work` behind the
//! upstream layers Keel's stack is made of, assembled by hand the way a service without Keel
//! would, in a process of its own (a process has one `tracing` subscriber):
//!
//! * `tracing-subscriber`'s registry with `tracing-opentelemetry` (a tracer provider without an
//!   exporter, the same span options and filter as Keel's: spans at `info`, `warn`/`error`
//!   events) and the fmt layer's JSON format under an `EnvFilter` of `info`, written through
//!   `tracing-appender`'s non-blocking writer;
//! * tower-http: request id (UUIDv7, set and propagated), `TraceLayer` with a `request` span
//!   carrying the same OpenTelemetry HTTP attributes and continuing a caller's `traceparent`,
//!   and an access line per response, CORS with one allowed origin, the three security headers,
//!   catch-panic, a request timeout, gzip compression; axum's body limit; served by
//!   `axum::serve`.
//!
//! What it leaves out is Keel's own: the HTTP metrics, the request context, load shedding,
//! problem details, the server's timers and connection caps, its JSON line layout and masking.
//! Against the `keel` target it shows what those cost; against `bare`, what the standard layers
//! cost.
//!
//! Run with `handmade-bench PORTS_FILE`: writes `{"handmade": ADDR}` to `PORTS_FILE` and serves
//! until SIGTERM/SIGINT.

use std::process::ExitCode;
use std::time::Duration;

#[cfg(not(feature = "sysalloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use axum::Router;
use axum::extract::MatchedPath;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode, header};
use axum::routing::get;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower_http::cors::AllowOrigin;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// UUIDv7 request ids, as Keel makes them.
#[derive(Clone, Copy)]
struct MakeUuidV7;

impl MakeRequestId for MakeUuidV7 {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string()).ok().map(RequestId::new)
    }
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// The request span, with the attributes Keel's trace layer gives it.
fn request_span<B>(req: &Request<B>) -> tracing::Span {
    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok());
    let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok());
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        otel.status_code = Empty,
        request_id = id,
        http.request.method = req.method().as_str(),
        http.route = route,
        url.path = req.uri().path(),
        url.scheme = "http",
        server.address = host,
        user_agent.original = req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()),
        network.protocol.version = "1.1",
        http.response.status_code = Empty,
    );
    if req.headers().contains_key("traceparent") {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
        let _ = span.set_parent(cx);
    }
    span
}

fn app() -> Router {
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(AllowOrigin::list([HeaderValue::from_static("https://app.example.com")]))
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST]);
    let trace = tower_http::trace::TraceLayer::new_for_http()
        .make_span_with(request_span::<axum::body::Body>)
        .on_response(|res: &axum::http::Response<_>, latency: Duration, span: &tracing::Span| {
            span.record("http.response.status_code", res.status().as_u16());
            tracing::info!(latency_ms = latency.as_secs_f64() * 1e3, "request finished");
        });
    // Two groups, as an axum application has to: CORS answers with an empty body of the inner
    // service's type, which the trace and compression bodies have no empty value of;
    // `Router::layer` turns each group's answers back into axum bodies.
    let outer = tower::ServiceBuilder::new()
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::if_not_present(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .layer(cors)
        .layer(SetRequestIdLayer::x_request_id(MakeUuidV7))
        .layer(PropagateRequestIdLayer::x_request_id());
    let inner = tower::ServiceBuilder::new()
        .layer(trace)
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20));
    Router::new()
        .route("/hello", get(keel_bench::hello))
        .route("/work", get(keel_bench::work))
        .layer(inner)
        .layer(outer)
}

async fn run(ports_file: &str) -> Result<(), String> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("handmade"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            *m.level() <= if m.is_span() { tracing::Level::INFO } else { tracing::Level::WARN }
        }));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(64 << 10, std::io::stdout()));
    let lines = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer)
        .with_filter(tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry().with(otel).with(lines).try_init().map_err(|e| e.to_string())?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    std::fs::write(ports_file, serde_json::json!({ "handmade": addr.to_string() }).to_string())
        .map_err(|e| e.to_string())?;
    axum::serve(listener, app())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())?;
    drop(guard);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(ports_file) = std::env::args().nth(1) else {
        eprintln!("usage: handmade-bench PORTS_FILE");
        return ExitCode::from(2);
    };
    match run(&ports_file).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handmade-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
