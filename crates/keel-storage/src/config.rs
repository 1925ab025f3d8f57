//! The `storage` section. It exists without the `storage` feature too, so a file that sets it
//! loads the same in every build.
//!
//! Field doc comments are the reference for `docs/configuration.md`; keep the two in step.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use keel_config::{Secret, Section, Validation};

/// `storage.*`: the object store of a service that declares one (`Setup::storage`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StorageConfig {
    /// Where objects live: `file:<dir>` (a directory, made if missing; relative to the working
    /// directory), `s3://<bucket>[/<prefix>]`, or `memory:` (this process's memory, gone when it
    /// stops: for tests; refused in production). Default in development
    /// `file:./data/<service>/objects`, in tests `memory:`; required in production.
    pub url: Option<String>,
    /// Readiness fails while the store is unreachable. `false` (the default): `degraded`, and
    /// what needs the store answers 503 while the rest of the service goes on.
    pub required: bool,
    /// Deadline of one request to the store. Default `10s`.
    #[serde(with = "keel_config::duration")]
    pub timeout: Duration,
    /// Deadline of connecting to an S3 endpoint. Default `3s`.
    #[serde(with = "keel_config::duration")]
    pub connect_timeout: Duration,
    /// Largest object `put` takes, in bytes. Default `10485760` (10 MiB).
    pub max_object_bytes: u64,
    /// The S3 client, for `s3://` URLs.
    pub s3: S3Config,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: None,
            required: false,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            max_object_bytes: 10 * 1024 * 1024,
            s3: S3Config::default(),
        }
    }
}

/// `storage.s3.*`: an S3-compatible store (AWS S3, MinIO, Ceph RGW, Garage, R2…).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct S3Config {
    /// The endpoint, for a store that is not AWS (`https://minio.internal:9000`). Default: AWS's
    /// endpoint for `region`.
    pub endpoint: Option<String>,
    /// The region. Default `us-east-1`.
    pub region: String,
    /// **Secret.** The access key id; with `secret_access_key`. Unset: the environment's
    /// credentials (`AWS_*` variables, a web identity token, the instance's metadata).
    pub access_key_id: Option<Secret>,
    /// **Secret.** The secret access key.
    pub secret_access_key: Option<Secret>,
    /// Buckets addressed as `https://<bucket>.<endpoint>` instead of `https://<endpoint>/<bucket>`.
    /// Default `false` (path style, which S3-compatible servers take).
    pub virtual_hosted: bool,
    /// Allow a plain `http://` endpoint (a store on the same host or a private network).
    /// Default `false`.
    pub allow_http: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            virtual_hosted: false,
            allow_http: false,
        }
    }
}

/// Where a `storage.url` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Dir(std::path::PathBuf),
    /// The process's memory.
    Memory,
    /// An S3 bucket, and a key prefix inside it (no leading or trailing `/`, may be empty).
    S3 {
        /// The bucket's name.
        bucket: String,
        /// Prepended (with `/`) to every key.
        prefix: String,
    },
}

impl Location {
    /// Parses a `storage.url`.
    ///
    /// ```
    /// use keel_storage::Location;
    /// assert_eq!(Location::parse("file:./data/x").unwrap(), Location::Dir("./data/x".into()));
    /// assert_eq!(
    ///     Location::parse("s3://media/events").unwrap(),
    ///     Location::S3 { bucket: "media".into(), prefix: "events".into() }
    /// );
    /// assert!(Location::parse("ftp://x").is_err());
    /// ```
    pub fn parse(url: &str) -> Result<Self, &'static str> {
        if url == "memory:" {
            return Ok(Self::Memory);
        }
        if let Some(dir) = url.strip_prefix("file://").or_else(|| url.strip_prefix("file:")) {
            if dir.is_empty() {
                return Err("file: needs a directory (file:./data/objects)");
            }
            return Ok(Self::Dir(dir.into()));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            // S3's bucket naming rules: 3–63 of a-z, 0-9, '.', '-', starting and ending alphanumeric.
            let ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
                && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
                && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !ok {
                return Err("s3:// needs a bucket name: 3 to 63 of a-z, 0-9, '.' and '-'");
            }
            return Ok(Self::S3 { bucket: bucket.into(), prefix: prefix.trim_matches('/').into() });
        }
        Err("must be file:<dir>, s3://<bucket>[/<prefix>] or memory:")
    }
}

impl Section for StorageConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        match self.url.as_deref().map(Location::parse) {
            Some(Err(why)) => v.invalid("url", why),
            Some(Ok(Location::Memory)) if v.profile() == keel_config::Profile::Production => {
                v.invalid("url", "memory: loses every object when the process stops: not for production");
            }
            _ => {}
        }
        if self.timeout.is_zero() {
            v.invalid("timeout", "must be more than 0s");
        }
        if self.connect_timeout.is_zero() {
            v.invalid("connect_timeout", "must be more than 0s");
        }
        if self.max_object_bytes == 0 {
            v.invalid("max_object_bytes", "must be at least 1");
        }
        let s3 = &self.s3;
        if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
            v.invalid("s3.secret_access_key", "access_key_id and secret_access_key go together");
        }
        if let Some(e) = &s3.endpoint {
            if e.starts_with("http://") && !s3.allow_http {
                v.invalid("s3.endpoint", "is plain http://: set s3.allow_http: true to allow it");
            } else if !e.starts_with("http://") && !e.starts_with("https://") {
                v.invalid("s3.endpoint", "must start with https:// (or http:// with s3.allow_http)");
            }
        }
        if s3.region.trim().is_empty() {
            v.invalid("s3.region", "must not be empty");
        }
    }
}
