//! The store: `object_store`'s local-file or S3 backend behind one handle with deadlines, a
//! size bound, metrics, typed errors and a health check.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use http::StatusCode;
use keel_config::Profile;
use keel_health::{Check, Kind, Outcome, sanitize};
use keel_problem::Problem;
use keel_telemetry::Metrics;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

use crate::{Location, StorageConfig};

/// What a store call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The store did not answer, or not within `storage.timeout`. Answers 503.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    /// The object is larger than `storage.max_object_bytes`. Answers 413.
    #[error("object of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// `storage.max_object_bytes`.
        limit: u64,
    },
    /// Not a key the store takes (empty segments, `..`, control characters). A caller's bug.
    #[error("invalid object key: {0}")]
    Key(String),
    /// The store refused the call (permissions, a missing bucket). Answers 500 (details logged).
    #[error("object store error: {0}")]
    Store(String),
    /// The configuration cannot be used.
    #[error("storage configuration: {0}")]
    Config(String),
}

impl From<StorageError> for Problem {
    /// 503 (`SERVICE_DEGRADED`, with `Retry-After`) while the store is unavailable, 413 for an
    /// object over the limit, else 500; the cause is logged, never sent.
    fn from(e: StorageError) -> Self {
        match &e {
            StorageError::Unavailable(_) => {
                tracing::warn!(error = %e, "object store call refused");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "dependency-unavailable", "Service degraded")
                    .detail("a dependency of this service is unavailable; retry later")
                    .code("SERVICE_DEGRADED")
                    .retry_after(keel_problem::DEPENDENCY_RETRY_AFTER_SECS)
            }
            StorageError::TooLarge { limit, .. } => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large")
                    .detail(format!("the object may be at most {limit} bytes"))
            }
            _ => {
                tracing::error!(error = %e, "object store call failed");
                Problem::internal()
            }
        }
    }
}

/// One object a listing found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

/// A handle on the service's object store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    describe: String,
    timeout: Duration,
    max_bytes: u64,
    required: bool,
    calls: IntCounterVec,
    duration: HistogramVec,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("at", &self.inner.describe).finish_non_exhaustive()
    }
}

/// Maps `object_store`'s error: a network-level failure or a 5xx is the store being away.
fn classify(e: object_store::Error) -> StorageError {
    let text = sanitize(&e.to_string());
    match e {
        object_store::Error::NotFound { .. } => StorageError::Store(text),
        object_store::Error::InvalidPath { .. } => StorageError::Key(text),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. }
        | object_store::Error::NotSupported { .. }
        | object_store::Error::NotImplemented { .. } => StorageError::Store(text),
        // Connection refused or reset, DNS, a timeout, 5xx after retries: the store is away.
        _ => StorageError::Unavailable(text),
    }
}

impl Store {
    /// A store for `config` (`service` names the default directory). Registers the metrics in
    /// `metrics`. Makes the directory of a `file:` store. Without `storage.url`: production
    /// refuses, tests keep objects in memory, development in `./data/<service>/objects`.
    pub fn new(
        service: &str,
        config: &StorageConfig,
        profile: Profile,
        metrics: &Metrics,
    ) -> Result<Self, StorageError> {
        let url = match (&config.url, profile) {
            (Some(u), _) => u.clone(),
            (None, Profile::Production) => {
                return Err(StorageError::Config("storage.url is required in production".into()));
            }
            (None, Profile::Test) => "memory:".to_owned(),
            (None, _) => format!("file:./data/{service}/objects"),
        };
        let location = Location::parse(&url).map_err(|e| StorageError::Config(format!("storage.url {e}")))?;
        let (store, describe): (Arc<dyn ObjectStore>, String) = match location {
            Location::Dir(dir) => {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| StorageError::Config(format!("cannot make {}: {e}", dir.display())))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| StorageError::Config(sanitize(&e.to_string())))?
                    // A failed write leaves no half-written object behind.
                    .with_automatic_cleanup(true);
                (Arc::new(fs), format!("file:{}", dir.display()))
            }
            Location::Memory => (Arc::new(object_store::memory::InMemory::new()), "memory:".to_owned()),
            Location::S3 { bucket, prefix } => {
                keel_tls::install_default_provider();
                let s3c = &config.s3;
                let client = object_store::ClientOptions::new()
                    .with_timeout(config.timeout)
                    .with_connect_timeout(config.connect_timeout)
                    .with_allow_http(s3c.allow_http);
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&bucket)
                    .with_region(&s3c.region)
                    .with_virtual_hosted_style_request(s3c.virtual_hosted)
                    .with_client_options(client)
                    // A few quick retries inside the call's deadline; the caller retries the rest.
                    .with_retry(object_store::RetryConfig {
                        backoff: object_store::BackoffConfig::default(),
                        max_retries: 2,
                        retry_timeout: config.timeout,
                    });
                if let Some(e) = &s3c.endpoint {
                    b = b.with_endpoint(e);
                }
                if let (Some(id), Some(secret)) = (&s3c.access_key_id, &s3c.secret_access_key) {
                    b = b.with_access_key_id(id.expose()).with_secret_access_key(secret.expose());
                }
                let s3 = b.build().map_err(|e| StorageError::Config(sanitize(&e.to_string())))?;
                let describe = format!("s3://{bucket}/{prefix}");
                if prefix.is_empty() {
                    (Arc::new(s3), describe)
                } else {
                    (Arc::new(object_store::prefix::PrefixStore::new(s3, prefix.as_str())), describe)
                }
            }
        };
        let config_error = |e: prometheus::Error| StorageError::Config(e.to_string());
        let calls = IntCounterVec::new(
            Opts::new("storage_requests_total", "Object store calls by operation and outcome."),
            &["op", "outcome"],
        )
        .map_err(config_error)?;
        let duration = HistogramVec::new(
            HistogramOpts::new("storage_request_duration_seconds", "Time for an object store call.")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]),
            &["op"],
        )
        .map_err(config_error)?;
        metrics.register(calls.clone()).map_err(config_error)?;
        metrics.register(duration.clone()).map_err(config_error)?;
        // Every series at zero from the start, so an error ratio has one before the first error.
        for op in ["put", "get", "head", "delete", "list"] {
            for outcome in ["ok", "error", "unavailable"] {
                let _ = calls.with_label_values(&[op, outcome]);
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                describe,
                timeout: config.timeout,
                max_bytes: config.max_object_bytes,
                required: config.required,
                calls,
                duration,
            }),
        })
    }

    /// Where the objects are (`file:./data/x/objects`, `s3://bucket/prefix`), for logs.
    pub fn describe(&self) -> &str {
        &self.inner.describe
    }

    fn path(key: &str) -> Result<Path, StorageError> {
        let p = Path::parse(key).map_err(|e| StorageError::Key(sanitize(&e.to_string())))?;
        if key.is_empty() || p.as_ref() != key {
            return Err(StorageError::Key(format!("{key:?} is not a plain key")));
        }
        Ok(p)
    }

    /// Runs one call with the deadline and the metrics.
    async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let started = Instant::now();
        let r = match tokio::time::timeout(self.inner.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::Unavailable(format!("no answer within {:?}", self.inner.timeout))),
        };
        self.inner.duration.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
        let outcome = match &r {
            Ok(_) => "ok",
            Err(StorageError::Unavailable(_)) => "unavailable",
            Err(_) => "error",
        };
        self.inner.calls.with_label_values(&[op, outcome]).inc();
        r
    }

    /// Writes `bytes` at `key`, replacing what was there; whole or not at all.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let size = bytes.len() as u64;
        if size > self.inner.max_bytes {
            return Err(StorageError::TooLarge { size, limit: self.inner.max_bytes });
        }
        let path = Self::path(key)?;
        self.call("put", async {
            self.inner.store.put(&path, PutPayload::from_bytes(bytes)).await.map(|_| ()).map_err(classify)
        })
        .await
    }

    /// The object at `key`, or `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        let path = Self::path(key)?;
        self.call("get", async {
            match self.inner.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some).map_err(classify),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(classify(e)),
            }
        })
        .await
    }

    /// When the object at `key` was last written, or `None` when there is none.
    pub async fn modified(&self, key: &str) -> Result<Option<SystemTime>, StorageError> {
        let path = Self::path(key)?;
        self.call("head", async {
            match self.inner.store.head(&path).await {
                Ok(meta) => Ok(Some(SystemTime::from(meta.last_modified))),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(classify(e)),
            }
        })
        .await
    }

    /// Deletes the object at `key`; one that is not there is no error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = Self::path(key)?;
        self.call("delete", async {
            match self.inner.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(classify(e)),
            }
        })
        .await
    }

    /// Every object whose key starts with the segments of `prefix` (`covers/` lists
    /// `covers/a/b.jpg`), in no particular order, read a page at a time as the stream is
    /// polled (each page within the client's deadline). A prefix with nothing under it is an
    /// empty stream.
    pub fn objects(
        &self,
        prefix: &str,
    ) -> Result<impl futures_util::Stream<Item = Result<Object, StorageError>> + Send + 'static, StorageError> {
        let prefix = prefix.trim_end_matches('/');
        let path = if prefix.is_empty() { None } else { Some(Self::path(prefix)?) };
        let calls = self.inner.calls.clone();
        let stream = self.inner.store.list(path.as_ref()).map_ok(|meta| Object {
            key: meta.location.to_string(),
            size: meta.size,
            modified: SystemTime::from(meta.last_modified),
        });
        Ok(stream.into_stream().filter_map(move |r| {
            let calls = calls.clone();
            async move {
                match r {
                    Ok(o) => Some(Ok(o)),
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => {
                        let e = classify(e);
                        let outcome = if matches!(e, StorageError::Unavailable(_)) { "unavailable" } else { "error" };
                        calls.with_label_values(&["list", outcome]).inc();
                        Some(Err(e))
                    }
                }
            }
        }))
    }

    /// The readiness check `storage`: the store lists a prefix that need not hold anything (an
    /// empty listing is an answer). A listing, unlike a lookup of one key, tells a missing
    /// bucket (S3 answers 404 `NoSuchBucket`) from a missing key, so a store pointed at a bucket
    /// that is not there is not ready. `storage.required: false` makes it `degraded` when down.
    pub fn readiness_check(&self) -> impl keel_health::HealthCheck {
        let store = self.clone();
        let check = Check::new("storage", Kind::Readiness, move || {
            let store = store.clone();
            async move {
                let path = Path::from(".keel-probe");
                let r =
                    tokio::time::timeout(store.inner.timeout, store.inner.store.list_with_delimiter(Some(&path))).await;
                match r {
                    Ok(Ok(_)) => Outcome::Up,
                    Ok(Err(object_store::Error::NotFound { .. })) => Outcome::down(format!(
                        "object store {}: the bucket or container is not there",
                        store.describe()
                    )),
                    Ok(Err(e)) => {
                        Outcome::down(format!("object store {}: {}", store.describe(), sanitize(&e.to_string())))
                    }
                    Err(_) => Outcome::down(format!(
                        "object store {}: no answer within {:?}",
                        store.describe(),
                        store.inner.timeout
                    )),
                }
            }
        })
        .timeout(self.inner.timeout + Duration::from_secs(1));
        if self.inner.required { check } else { check.optional() }
    }
}
