//! Security building blocks: JWT authentication, password hashing, envelope field encryption with
//! blind indexes, PII masking and a tamper-evident audit log.
//!
//! This is `keel-security`, re-exported by `keel` as `keel::security`; of Keel's crates it depends
//! on `keel-config`, `keel-telemetry`, `keel-http` and `keel-data`.
//!
//! | module | what it is for | feature |
//! |---|---|---|
//! | [`mask`] | maskers for emails, phones, cards, tokens; log masking; `scrub`, the one credential scrubber (from `keel-telemetry`, whose log formatter uses them) | always |
//! | `jwt` | issue and verify tokens; `Auth<C>` extractors and role guard | `security` |
//! | `sessions` | session versions below which a subject's tokens are refused (revocation of stateless tokens) | `security` |
//! | `password` | Argon2id off the executor, with a concurrency cap and a policy | `security` |
//! | `crypto` | AES-256-GCM envelope encryption, key rotation, HMAC blind index | `security` |
//! | `keys` | data keys versioned in the database: rotation, background re-encryption, retirement | `security` + a SQL backend |
//! | `audit` | hash-chained `audit_log` table and `<service> audit verify` | `security` + a SQL backend |
//!
//! Secrets themselves are [`keel_config::Secret`]s loaded from env or `<key>_file`; see
//! `docs/security.md` for configuration and operations.

#[cfg(all(feature = "security", feature = "sql"))]
pub mod audit;
mod config;
#[cfg(feature = "security")]
pub mod crypto;
#[cfg(feature = "security")]
pub mod jwt;
#[cfg(all(feature = "security", feature = "sql"))]
pub mod keys;
pub use keel_telemetry::mask;
#[cfg(feature = "security")]
pub mod password;
#[cfg(feature = "security")]
pub mod sessions;

pub use config::{
    AuditConfig, AuditKeyConfig, EncryptionConfig, JwtAlgorithm, JwtConfig, JwtKeyConfig, PasswordsConfig,
    ROTATED_KID_PREFIX, SecurityConfig,
};
#[cfg(feature = "security")]
pub use jwt::{Auth, Claims, HasRoles, Jwt, JwtError, RequireRole, Role};
#[cfg(feature = "security")]
pub use password::{PasswordError, PasswordHasher, PasswordPolicy, PolicyViolation};
