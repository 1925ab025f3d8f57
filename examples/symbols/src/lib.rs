//! Symbols: project-scoped, named, typed JSON values, served over gRPC (`symbols.v1.Symbols`)
//! and HTTP/JSON with the same checks and error classes, stored in MariaDB (or SQLite for a
//! zero-setup development run), with `symbol.created` / `symbol.updated` / `symbol.deleted`
//! published through Keel's transactional outbox to RabbitMQ (or NATS) and consumed by
//! `symbols-worker` exactly once into per-project counters.
//!
//! It is seed 000's go-kratos `symbols` service and worker rebuilt on Keel: see `README.md`
//! beside this crate for how to run it and which finding of the audit each part answers.
//!
//! | module | what |
//! |---|---|
//! | [`model`] | the symbol, its limits and checks |
//! | [`store`] | the operations: the one place that checks input, writes and enqueues events |
//! | [`http`] | the HTTP/JSON routes over the store |
//! | [`grpc`] | the gRPC service over the store |
//! | [`error`] | one error type, one class per failure, as a problem and as a status |
//! | [`events`] | the `symbol.*` events |
//! | [`worker`] | the consumer and its projection, for `symbols-worker` |
//! | [`proto`] | the generated protobuf code and its descriptor set |

pub mod error;
pub mod events;
pub mod grpc;
pub mod http;
pub mod model;
pub mod proto;
pub mod store;
pub mod worker;

use std::time::Duration;

use keel::config::NoConfig;
use keel::events::Consumer;
use keel::resilience::rate_limit::RateLimitPolicy;

pub use proto::FILE_DESCRIPTOR_SET;
pub use worker::WorkerConfig;

/// The service's name: its env prefix is `SYMBOLS__`.
pub const SERVICE: &str = "symbols";
/// The worker's name: its env prefix is `SYMBOLS_WORKER__`.
pub const WORKER: &str = "symbols-worker";

/// The migrations, one set per backend: `symbols`, Keel's outbox and inbox, and the worker's
/// projection. The service and the worker share them, so they can share one database.
pub fn migrations() -> keel::data::Migrations {
    keel::data::Migrations::new().mysql(sqlx::migrate!("migrations/mysql")).sqlite(sqlx::migrate!("migrations/sqlite"))
}

/// The defaults of a binary, beneath its file and environment: ports that let the service
/// (8090, management 9090) and the worker (8091, 9091) run side by side, and the service's
/// body limit (a symbol's data is at most 64 KiB).
pub fn config_defaults(service: &str) -> Vec<(String, String)> {
    let p = keel::config::env_prefix(service);
    let (port, body_limit) = if service == WORKER { ("8091", "8KiB") } else { ("8090", "160KiB") };
    vec![(format!("{p}__HTTP__PORT"), port.to_owned()), (format!("{p}__HTTP__BODY_LIMIT"), body_limit.to_owned())]
}

/// The default rate limit of the API (`rate_limits.api` replaces it): 1200 requests a minute per
/// client address.
fn api_rate_limit() -> RateLimitPolicy {
    RateLimitPolicy { limit: 1200, window: Duration::from_secs(60), ..RateLimitPolicy::default() }
}

/// The symbols service, ready for [`keel::run`]: the HTTP routes of [`http`], the gRPC service
/// of [`grpc`] on the same listener, the outbox relay, on `database.*` and `bus.*`.
pub fn service() -> keel::Service<NoConfig> {
    keel::Service::new(keel::build_info!())
        .name(SERVICE)
        .config_defaults(config_defaults(SERVICE))
        .migrations(migrations())
        .setup(|s| {
            let db = s.database()?;
            let outbox = s.outbox(&db)?;
            let symbols = store::Symbols::new(db, outbox);
            grpc_wiring(s, &symbols);
            let limit = s.rate_limit_or("api", api_rate_limit())?;
            // One budget per client, whichever protocol it calls.
            s.grpc_layer(limit.clone());
            Ok(http::router(symbols).layer(limit))
        })
}

/// Registers the gRPC service `symbols.v1.Symbols` with the service, beside the HTTP routes
/// (same listener, or `grpc.port`), and its descriptors for reflection (`grpc.reflection`).
fn grpc_wiring(s: &mut keel::Setup<NoConfig>, symbols: &store::Symbols) {
    s.grpc_service(grpc::SymbolsService::new(symbols.clone()).server());
    s.grpc_descriptors(FILE_DESCRIPTOR_SET);
}

/// The worker, ready for [`keel::run`]: consumes `symbol.*` into the projection (see
/// [`worker`]) and serves `GET /v1/projects/{project_id}/stats`, on `database.*` and `bus.*`.
pub fn worker_service() -> keel::Service<WorkerConfig> {
    keel::Service::new(keel::build_info!())
        .name(WORKER)
        .config_defaults(config_defaults(WORKER))
        .with_config::<WorkerConfig>()
        .migrations(migrations())
        .setup(|s| {
            let options = s.config().consumer_options();
            let db = s.database()?;
            let bus = s.bus()?;
            let handler = worker::ProjectionHandler::new(db.clone());
            s.consume(Consumer::new(bus, events::TOPIC, worker::GROUP, handler).inbox(db.clone()).options(options))?;
            Ok(worker::router(db))
        })
}
