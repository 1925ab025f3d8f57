//! The `security` section: JWT keys, password hashing and field encryption. It exists without
//! the `security` feature too, so a file that sets it loads the same in every build.
//!
//! Field doc comments are the reference for `docs/configuration.md`; keep the two in step.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use keel_config::{Profile, Secret, Section, Templates, Validation};

/// `security.*`: JWT keys, password hashing and field encryption (used by `keel_security`,
/// cargo feature `security`). Every key, secret and data key is configuration: nothing has a
/// default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SecurityConfig {
    /// Issuing and verifying JSON Web Tokens.
    pub jwt: JwtConfig,
    /// Password hashing (Argon2id) and the password policy.
    pub passwords: PasswordsConfig,
    /// Envelope encryption of fields and blind indexes.
    pub encryption: EncryptionConfig,
    /// The audit log's keys and checkpoints.
    pub audit: AuditConfig,
}

/// `security.jwt.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct JwtConfig {
    /// Expected `iss`; tokens from another issuer are refused, and issued tokens carry it.
    /// Unset: `iss` is not checked.
    pub issuer: Option<String>,
    /// Accepted `aud` values (a token must name one). Empty: `aud` is not checked.
    pub audience: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`. Default `30s`; at most `5m`.
    #[serde(with = "keel_config::duration")]
    pub leeway: Duration,
    /// Lifetime of issued tokens. Default `5m`: short, because a stateless token stays valid
    /// until it expires unless the verifier follows session revocations.
    #[serde(with = "keel_config::duration")]
    pub ttl: Duration,
    /// The `kid` of the key new tokens are signed with. Unset: this service only verifies.
    pub signing_key: Option<String>,
    /// Verification (and signing) keys by `kid`. Each pins its algorithm.
    pub keys: BTreeMap<String, JwtKeyConfig>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: Vec::new(),
            leeway: Duration::from_secs(30),
            ttl: Duration::from_secs(300),
            signing_key: None,
            keys: BTreeMap::new(),
        }
    }
}

/// `security.jwt.keys.<kid>.*`: one key. Secrets come from env or `<field>_file`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct JwtKeyConfig {
    /// `HS256`, `RS256` or `EdDSA`. Required: a token whose header names another algorithm is
    /// refused, which is what stops `none` and algorithm-confusion attacks.
    pub algorithm: Option<JwtAlgorithm>,
    /// **Secret.** HS256 only: the shared key, at least 32 bytes.
    pub secret: Option<Secret>,
    /// RS256 / EdDSA: the public key (PEM) used to verify.
    pub public_key: Option<String>,
    /// **Secret.** EdDSA: the private key (PEM), only where tokens are issued. RS256 keys
    /// verify only and refuse one (RUSTSEC-2023-0071: RSA signing is not constant-time).
    pub private_key: Option<Secret>,
}

/// A JWT signature algorithm Keel accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// Ed25519.
    EdDSA,
}

/// `security.passwords.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PasswordsConfig {
    /// Argon2id memory cost in KiB. Default `19456` (19 MiB, the OWASP minimum).
    pub memory_kib: u32,
    /// Argon2id passes. Default `2`.
    pub iterations: u32,
    /// Argon2id lanes. Default `1`.
    pub parallelism: u32,
    /// Hashes computed at once (each on a hashing thread of its own). `0`: half the CPUs, at least one, so
    /// that a storm of sign-ins leaves the other half to everything else. Default `0`.
    pub max_concurrent_hashes: usize,
    /// Hash on threads of the lowest priority among normal ones (Linux: `SCHED_BATCH`, nice 19),
    /// so that hashes take only CPU time no other request wants: a storm of sign-ins then slows
    /// sign-ins, not browsing. The price: on a machine that other work keeps busy, hashes barely
    /// run, and sign-ins wait and are refused (503) after `queue_timeout`; so it is for a
    /// service whose machine (or container's CPU share) is its own. Default `false`: the same
    /// priority as every other thread.
    pub low_priority: bool,
    /// Longest wait for a hashing slot; past it the call fails as overloaded (503) instead of
    /// queueing without bound. Default `5s`.
    #[serde(with = "keel_config::duration")]
    pub queue_timeout: Duration,
    /// Callers that may wait for a hashing slot at once; one more is refused at once as
    /// overloaded (503 with `Retry-After`) instead of queueing behind them. `0`: four per CPU.
    /// Default `0`.
    pub max_queued: usize,
    /// Shortest password accepted, in characters. Default `12`; production refuses less.
    pub min_length: usize,
    /// Longest password accepted, in bytes (bounds hashing cost). Default `128`.
    pub max_length: usize,
}

impl Default for PasswordsConfig {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            max_concurrent_hashes: 0,
            low_priority: false,
            queue_timeout: Duration::from_secs(5),
            max_queued: 0,
            min_length: 12,
            max_length: 128,
        }
    }
}

/// The id prefix of data keys made by rotation in the database (`rot-1`, `rot-2`, …); keys of
/// the configuration may not use it.
pub const ROTATED_KID_PREFIX: &str = "rot-";

/// `security.encryption.*`: envelope encryption of fields (see `keel_security::crypto`) and, in
/// a service that keeps its data keys in its database, their rotation (`keel_security::keys`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct EncryptionConfig {
    /// **Secret.** The master key, 32 bytes in base64; it only wraps data keys.
    pub master_key: Option<Secret>,
    /// **Secret.** The blind-index (HMAC) key, at least 32 bytes in base64; keep it apart from
    /// the master key.
    pub blind_index_key: Option<Secret>,
    /// The data key new values are encrypted with.
    pub active_key: Option<String>,
    /// Data keys by id, each wrapped by the master key (`<service> keys new <id>` makes one).
    /// Wrapped keys are not secret; every listed key can still decrypt.
    pub data_keys: BTreeMap<String, String>,
    /// How often a new data key is made in the database and becomes the active one; old values
    /// are then re-encrypted in the background. Unset (the default): keys change only when an
    /// operator rotates them (`<service> keys rotate`, the operations page).
    #[serde(default, with = "keel_config::duration::option")]
    pub rotate_every: Option<Duration>,
    /// How often each instance rereads the data keys of its database. A new key is made
    /// active three intervals after it is made, so every instance knows it before any value
    /// is encrypted with it. Default `5s`.
    #[serde(with = "keel_config::duration")]
    pub refresh_interval: Duration,
    /// How often the re-encryption worker moves values off older keys and retires keys
    /// nothing uses. Default `10s`.
    #[serde(with = "keel_config::duration")]
    pub reencrypt_interval: Duration,
    /// Rows re-encrypted per column per run of the worker. Default 500.
    pub reencrypt_batch: u32,
    /// How long a superseded key must have encrypted no value, by every count, before it is
    /// retired (its wrapped key deleted); also how often a settled store recounts. Default `1h`.
    #[serde(with = "keel_config::duration")]
    pub retire_after: Duration,
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        Self {
            master_key: None,
            blind_index_key: None,
            active_key: None,
            data_keys: BTreeMap::new(),
            rotate_every: None,
            refresh_interval: Duration::from_secs(5),
            reencrypt_interval: Duration::from_secs(10),
            reencrypt_batch: 500,
            retire_after: Duration::from_secs(3600),
        }
    }
}

/// `security.audit.*`: the audit log's chain keys and checkpoints (see `keel_security::audit`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct AuditConfig {
    /// The key new rows are chained with (one of `keys`). Unset: rows are chained with plain
    /// SHA-256, which anyone who can write the table can recompute; production requires a key
    /// in every service that keeps an audit log.
    pub active_key: Option<String>,
    /// HMAC-SHA256 chain keys by id. Keep a retired key listed as long as rows it chained
    /// remain: `audit verify` needs it.
    pub keys: BTreeMap<String, AuditKeyConfig>,
    /// How often the head of the chain (row count and hash) is checkpointed outside the table
    /// (a log line and metrics) and checked against the previous checkpoint. Default `1m`.
    #[serde(with = "keel_config::duration")]
    pub checkpoint_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { active_key: None, keys: BTreeMap::new(), checkpoint_interval: Duration::from_secs(60) }
    }
}

/// `security.audit.keys.<id>.*`: one chain key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct AuditKeyConfig {
    /// **Secret.** At least 32 random bytes, base64-encoded (`<service> keys generate`).
    pub secret: Option<Secret>,
}

impl Section for SecurityConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        v.section("jwt", &self.jwt);
        v.section("passwords", &self.passwords);
        v.section("encryption", &self.encryption);
        v.section("audit", &self.audit);
    }

    fn templates(t: &mut Templates<'_>) {
        // `security.jwt.keys` is a map, so its entries have no defaults; give each entry the key
        // template so `secret_file` / `private_key_file` resolve like any other secret.
        t.map_entries("jwt.keys", &JwtKeyConfig::default());
        t.map_entries("audit.keys", &AuditKeyConfig::default());
        // `security.encryption.data_keys` maps ids to wrapped keys: `<kid>_file` needs a `<kid>`.
        t.file_entries("encryption.data_keys");
    }
}

impl Section for AuditConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if let Some(active) = &self.active_key
            && !self.keys.contains_key(active)
        {
            v.invalid("active_key", format!("`{active}` is not one of security.audit.keys"));
        }
        for (id, key) in &self.keys {
            if id.is_empty()
                || id.len() > 64
                || !id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            {
                v.invalid(&format!("keys.{id}"), "a key id is 1 to 64 letters, digits, `-` or `_`");
            }
            match &key.secret {
                None => v.invalid(&format!("keys.{id}.secret"), "required (env or secret_file)"),
                Some(k) if decoded_len(k.expose()).is_none_or(|n| n < 32) => {
                    v.invalid(&format!("keys.{id}.secret"), "must be at least 32 random bytes, base64-encoded")
                }
                Some(_) => {}
            }
        }
        if self.checkpoint_interval.is_zero() {
            v.invalid("checkpoint_interval", "must be more than 0s");
        }
    }
}

impl Section for AuditKeyConfig {}

impl Section for JwtConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.leeway > Duration::from_secs(300) {
            v.invalid("leeway", "at most 5m: a large leeway keeps expired tokens alive");
        }
        if self.ttl.is_zero() {
            v.invalid("ttl", "must be more than 0s");
        }
        if let Some(kid) = &self.signing_key
            && !self.keys.contains_key(kid)
        {
            v.invalid("signing_key", format!("`{kid}` is not one of security.jwt.keys"));
        }
        for (kid, key) in &self.keys {
            let at = |f: &str| format!("keys.{kid}.{f}");
            match key.algorithm {
                None => v.invalid(&at("algorithm"), "required: HS256, RS256 or EdDSA"),
                Some(JwtAlgorithm::HS256) => match &key.secret {
                    None => v.invalid(&at("secret"), "HS256 needs a secret (env or secret_file)"),
                    Some(secret) if secret.expose().len() < 32 => {
                        v.invalid(&at("secret"), "HS256 needs at least 32 bytes (256 bits) of secret")
                    }
                    Some(_) => {}
                },
                Some(alg) => {
                    if key.public_key.is_none() {
                        v.invalid(&at("public_key"), "RS256 and EdDSA need the public key (PEM) to verify");
                    }
                    if key.secret.is_some() {
                        v.invalid(&at("secret"), "only HS256 keys have a shared secret");
                    }
                    if alg == JwtAlgorithm::RS256 && key.private_key.is_some() {
                        v.invalid(
                            &at("private_key"),
                            "RS256 keys verify only: Keel does not sign with RSA (its signing is not \
                             constant-time, RUSTSEC-2023-0071); issue tokens with an EdDSA key",
                        );
                    }
                }
            }
            if self.signing_key.as_deref() == Some(kid.as_str()) {
                match key.algorithm {
                    Some(JwtAlgorithm::RS256) => v.invalid(
                        "signing_key",
                        format!("`{kid}` is an RS256 key, which verifies only: sign with an EdDSA or HS256 key"),
                    ),
                    Some(JwtAlgorithm::EdDSA) if key.private_key.is_none() => {
                        v.invalid(&at("private_key"), "the signing key needs its private key (PEM)")
                    }
                    _ => {}
                }
            }
        }
    }
}

impl Section for JwtKeyConfig {}

impl Section for PasswordsConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if self.min_length == 0 || self.max_length < self.min_length || self.max_length > 4096 {
            v.invalid("max_length", "must be at least min_length and at most 4096");
        }
        if v.profile() == Profile::Production && self.min_length < 12 {
            v.production("min_length", "production needs passwords of at least 12 characters");
        }
        if self.iterations == 0 || self.parallelism == 0 || self.memory_kib < 8 * self.parallelism {
            v.invalid("", "iterations and parallelism must be at least 1 and memory_kib at least 8 × parallelism");
        }
        if self.queue_timeout.is_zero() {
            v.invalid("queue_timeout", "must be more than 0s");
        }
        if self.max_queued > 100_000 {
            v.invalid("max_queued", "at most 100000: a longer queue only makes callers wait for a 503");
        }
    }
}

impl Section for EncryptionConfig {
    fn validate(&self, v: &mut Validation<'_>) {
        if let Some(active) = &self.active_key
            && !self.data_keys.contains_key(active)
        {
            v.invalid("active_key", format!("`{active}` is not one of security.encryption.data_keys"));
        }
        if !self.data_keys.is_empty() && self.master_key.is_none() {
            v.invalid("master_key", "data keys need the master key that wraps them");
        }
        let mut seen = std::collections::BTreeSet::new();
        for kid in self.data_keys.keys() {
            let folded = kid.to_ascii_lowercase();
            if folded.starts_with(ROTATED_KID_PREFIX) {
                v.invalid(
                    &format!("data_keys.{kid}"),
                    format!("ids starting with `{ROTATED_KID_PREFIX}` are the database's rotated keys"),
                );
            }
            if kid.is_empty()
                || kid.len() > 64
                || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                v.invalid(&format!("data_keys.{kid}"), "a key id is 1 to 64 ASCII letters, digits, `-`, `_` or `.`");
            }
            // A case-insensitive collation (MySQL's default) would count both as one.
            if !seen.insert(folded) {
                v.invalid(&format!("data_keys.{kid}"), "another key id differs from it only in case");
            }
        }
        if let Some(every) = self.rotate_every {
            if every < Duration::from_secs(3600) || every > Duration::from_secs(10 * 365 * 86_400) {
                v.invalid("rotate_every", "from 1h (each rotation re-encrypts every value) to 10 years");
            }
            if self.master_key.is_none() {
                v.invalid("rotate_every", "rotation needs the master key that wraps the new keys");
            }
        }
        if self.refresh_interval.is_zero() || self.refresh_interval > Duration::from_secs(300) {
            v.invalid("refresh_interval", "more than 0s and at most 5m");
        }
        if self.reencrypt_interval.is_zero() {
            v.invalid("reencrypt_interval", "must be more than 0s");
        }
        // Instances switch keys up to a refresh interval apart: a key is retired long after.
        if self.retire_after < Duration::from_secs(300).max(self.refresh_interval * 10) {
            v.invalid("retire_after", "at least 5m and 10 × refresh_interval");
        }
        if self.reencrypt_batch == 0 || self.reencrypt_batch > 100_000 {
            v.invalid("reencrypt_batch", "from 1 to 100000 rows");
        }
        for (name, key) in [("master_key", &self.master_key), ("blind_index_key", &self.blind_index_key)] {
            if let Some(k) = key
                && decoded_len(k.expose()).is_none_or(|n| n < 32)
            {
                v.invalid(name, "must be at least 32 random bytes, base64-encoded");
            }
        }
    }
}

/// Length of standard base64 (with or without padding), without pulling a base64 crate into
/// builds that do not use `security`.
fn decoded_len(b64: &str) -> Option<usize> {
    let t = b64.trim().trim_end_matches('=');
    if t.is_empty() || !t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/') {
        return None;
    }
    Some(t.len() * 3 / 4)
}
