//! Redis: a managed async connection with the same start-up and health semantics as SQL.
//!
//! A service declares Redis in set-up (`Setup::redis`) and gets a [`Redis`] handle over
//! `redis::aio::ConnectionManager`, which multiplexes one connection and reconnects by itself:
//!
//! * **Eager, non-blocking start-up**: the first connection is made in the background with
//!   exponential backoff and full jitter (`redis.connect.*`); until then readiness is down with
//!   the reason, liveness stays up.
//! * **Readiness**: `PING` within `redis.command_timeout`, every `health.interval`; losing Redis
//!   flips readiness down and back when it returns. `redis.required: false`: `degraded`.
//! * **Fail fast**: while Redis is known down, commands return [`RedisError::Unavailable`] (a 503
//!   problem) at once; every command has a deadline (`redis.command_timeout`). A connection
//!   error marks Redis down at once; the next command after a short back-off (200 ms doubling to
//!   1 s) starts one background `PING`, whose success clears the mark at once.
//! * **Key prefix**: [`Redis::key`] prepends `redis.key_prefix` (default `<service>:`), so
//!   services (and tests) sharing one Redis never collide.
//! * **Metrics**: `redis_commands_total{outcome="ok|error|timeout|unavailable"}`,
//!   `redis_command_duration_seconds`.
//!
//! This is `keel-redis`, re-exported by `keel` as `keel::redis`. Without the `redis` feature it
//! holds just the `redis` section, so a config file loads the same in every build.

#![forbid(unsafe_code)]

mod config;
#[cfg(feature = "redis")]
mod connection;

pub use config::RedisConfig;
#[cfg(feature = "redis")]
pub use connection::*;
