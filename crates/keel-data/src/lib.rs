//! SQL databases: PostgreSQL, MySQL/MariaDB and SQLite through one `sqlx::AnyPool`.
//!
//! A service declares its database in set-up (`Setup::database`) and gets a [`Db`]:
//!
//! * **Eager, non-blocking start-up.** The service serves probes at once; the first connection
//!   is made in the background with exponential backoff and full jitter (`database.connect.*`).
//!   Until it succeeds readiness is down with the reason (`connecting (attempt 4): connection
//!   refused`); liveness stays up; nothing panics or exits.
//! * **Losing the database mid-run** flips readiness down (the `database` check runs `SELECT 1`
//!   every `health.interval`) and back up when it returns, without a restart. A connection
//!   error on a call marks it down at once; while down, calls fail fast and the next call after
//!   a short back-off (200 ms doubling to 1 s) starts one background re-probe, whose success
//!   clears the mark at once (`keel_resilience` re-probe rules).
//! * **Transient errors** (a server shutting down, too many connections, a read-only server,
//!   serialization failures and deadlocks) answer 503 with `Retry-After`, by the table
//!   [`RETRYABLE`] of SQLSTATEs and MySQL error numbers; only connection-class errors mark
//!   the database down.
//! * **Degraded mode** (`database.required: false`): readiness stays 200 as `degraded`, and
//!   [`Db::acquire`] / [`Db::begin`] answer [`DataError::Unavailable`] (a 503 problem) at once
//!   instead of waiting on the pool.
//! * **Migrations** are embedded per backend ([`Migrations`]) and applied by `<service> migrate`;
//!   in production `serve` never migrates, and readiness stays down while any is pending.
//! * **Traces**: a statement run through [`Db::exec`] or [`Db::on`] is an OpenTelemetry client
//!   span in its request's trace (`SELECT events`, with `db.system.name`, `db.query.text` and
//!   the other database conventions; never a bound value) while spans are exported and the
//!   request is sampled; otherwise it runs as it came.
//! * **Metrics**: `db_pool_connections{pool,state}`, `db_pool_max_connections{pool}`,
//!   `db_pool_acquire_duration_seconds{pool}`, `db_pool_acquire_timeouts_total{pool}`,
//!   `db_errors_total{pool,kind}`.
//!
//! Enable backends with the cargo features `postgres`, `mysql`, `sqlite`.
//!
//! This is `keel-data`, re-exported by `keel` as `keel::data`. Without a SQL feature it holds
//! just the `database` section, so a config file loads the same in every build.

#![forbid(unsafe_code)]

mod config;
#[cfg(feature = "sql")]
mod db;

pub use config::{DatabaseConfig, PoolConfig};
#[cfg(feature = "sql")]
pub use db::*;
