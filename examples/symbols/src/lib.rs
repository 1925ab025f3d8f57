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

/// The role a token must carry to create, change or delete symbols (HTTP and gRPC).
pub const WRITE_ROLE: &str = "symbols:write";

/// Where a development run keeps the key it signs and verifies tokens with (created on first
/// run, owner-only), so that `symbols token issue` and the service agree without any setup.
pub const DEV_KEY_FILE: &str = "data/symbols-dev-jwt.key";

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

/// The development profile's token key, beneath the file and environment: an HS256 key `dev`
/// (also the signing key) read from [`DEV_KEY_FILE`], created there on first use when
/// `create` (else, when missing, a key of this run only: `config check` and `--help` write
/// nothing). Other profiles get nothing: production and tests configure `security.jwt`.
pub fn dev_defaults(profile: keel::config::Profile, create: bool) -> Result<Vec<(String, String)>, String> {
    if profile != keel::config::Profile::Development {
        return Ok(Vec::new());
    }
    let secret = dev_key(create)?;
    let p = keel::config::env_prefix(SERVICE);
    Ok(vec![
        (format!("{p}__SECURITY__JWT__KEYS__DEV__ALGORITHM"), "HS256".to_owned()),
        (format!("{p}__SECURITY__JWT__KEYS__DEV__SECRET"), secret),
        (format!("{p}__SECURITY__JWT__SIGNING_KEY"), "dev".to_owned()),
    ])
}

/// Whether the command line `args` (without the program) serves or issues tokens: the commands
/// that need the development key kept on disk.
pub fn command_uses_dev_key(args: &[String]) -> bool {
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-h" | "--help" | "-V" | "--version" => return false,
            "-c" | "--config" => {
                rest.next();
            }
            a if a.starts_with('-') => {}
            a => return a == "serve" || a == "token",
        }
    }
    true
}

/// The development key of [`DEV_KEY_FILE`], created (mode 0600, 32 random bytes) when missing
/// and `create`.
fn dev_key(create: bool) -> Result<String, String> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let path = std::path::Path::new(DEV_KEY_FILE);
    if let Ok(text) = std::fs::read_to_string(path) {
        return Ok(text.trim().to_owned());
    }
    let key = keel::security::crypto::generate_key();
    if !create {
        return Ok(key);
    }
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {DEV_KEY_FILE}: {e}"))?;
    f.write_all(key.as_bytes()).map_err(|e| format!("cannot write {DEV_KEY_FILE}: {e}"))?;
    Ok(key)
}

/// The symbols service, ready for [`keel::run`]: the HTTP routes of [`http`], the gRPC service
/// of [`grpc`] on the same listener, the outbox relay, on `database.*` and `bus.*`; writes need
/// a token carrying [`WRITE_ROLE`], verified with `security.jwt.*`.
pub fn service() -> keel::Service<NoConfig> {
    keel::Service::new(keel::build_info!())
        .name(SERVICE)
        .config_defaults(config_defaults(SERVICE))
        .migrations(migrations())
        .setup(|s| {
            let db = s.database()?;
            let jwt = writers_jwt(s)?;
            let outbox = s.outbox(&db)?;
            let symbols = store::Symbols::new(db, outbox);
            grpc_wiring(s, &symbols, &jwt);
            let limit = s.rate_limit_or("api", api_rate_limit())?;
            // One budget per client, whichever protocol it calls.
            s.grpc_layer(limit.clone());
            Ok(http::router(symbols, &jwt).layer(limit))
        })
}

/// The verifier of the writers' tokens; a service without a key to verify them with does not
/// start (its write API would refuse everyone, or worse, be open).
fn writers_jwt(s: &keel::Setup<NoConfig>) -> Result<keel::security::jwt::Jwt, keel::app::SetupError> {
    if s.keel().security.jwt.keys.is_empty() {
        return Err(Box::new(keel::config::ConfigError::invalid(
            "security.jwt.keys",
            "the write API needs a key to verify tokens with (an identity provider's public key, or \
             an HS256 secret_file); the development profile makes one in data/",
        )));
    }
    s.jwt()
}

/// Registers the gRPC service `symbols.v1.Symbols` with the service, beside the HTTP routes
/// (same listener, or `grpc.port`), and its descriptors for reflection (`grpc.reflection`).
fn grpc_wiring(s: &mut keel::Setup<NoConfig>, symbols: &store::Symbols, jwt: &keel::security::jwt::Jwt) {
    s.grpc_service(grpc::SymbolsService::new(symbols.clone()).server(jwt.clone()));
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
