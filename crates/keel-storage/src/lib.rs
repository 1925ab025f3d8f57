//! Object storage: one handle over a local directory or an S3-compatible bucket.
//!
//! A service declares a store in set-up (`Setup::storage`) and gets a [`Store`] over the
//! [`object_store`](https://docs.rs/object_store) crate's `LocalFileSystem` or `AmazonS3`:
//!
//! * **Where**: `storage.url` — `file:<dir>` (the development default is
//!   `file:./data/<service>/objects`, so a service starts with nothing to set up) or
//!   `s3://<bucket>[/<prefix>]` with `storage.s3.*` (endpoint, region, credentials as secrets or
//!   from the environment). Production requires the URL.
//! * **Bounded**: every call has a deadline (`storage.timeout`, retries inside it); `put`
//!   refuses an object over `storage.max_object_bytes` before sending anything.
//! * **Whole or nothing**: a `put` replaces the object at once (S3's semantics; on local files
//!   a temporary file renamed into place).
//! * **Typed errors**: [`StorageError`] maps to a problem: 503 while the store is away, 413
//!   over the limit, else 500 with the cause logged, never sent.
//! * **Health**: the `storage` readiness check lists an empty prefix (a missing bucket is down);
//!   `storage.required: false` (the
//!   default) makes an unreachable store `degraded`, so pages that do not need it keep serving.
//! * **Metrics**: `storage_requests_total{op,outcome}`, `storage_request_duration_seconds{op}`.
//!
//! This is `keel-storage`, re-exported by `keel` as `keel::storage`. Without the `storage`
//! feature it holds just the `storage` section, so a config file loads the same in every build.

#![forbid(unsafe_code)]

mod config;
#[cfg(feature = "storage")]
mod store;

pub use config::{Location, S3Config, StorageConfig};
#[cfg(feature = "storage")]
pub use store::*;
