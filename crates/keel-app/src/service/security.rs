//! [`Setup`]'s JWT, passwords, field keys and audit log (feature `security`; the audit log also `sql`).

use keel_config::{Profile, Section};

use super::{Setup, SetupError, misconfigured};

impl<C: Section> Setup<C> {
    /// The JWT verifier (and issuer) `security.jwt.*` describes; add `jwt.extension()` to the
    /// router so the `Auth` extractors find it.
    pub fn jwt(&self) -> Result<keel_security::jwt::Jwt, SetupError> {
        keel_security::jwt::Jwt::from_config(&self.config.keel.security.jwt)
            .map_err(|e| misconfigured("security.jwt", e))
    }

    /// The password hasher and policy `security.passwords.*` describe.
    pub fn passwords(
        &self,
    ) -> Result<(keel_security::password::PasswordHasher, keel_security::password::PasswordPolicy), SetupError> {
        let cfg = &self.config.keel.security.passwords;
        Ok((
            keel_security::password::PasswordHasher::from_config(cfg)
                .map_err(|e| misconfigured("security.passwords", e))?,
            keel_security::password::PasswordPolicy::from_config(cfg),
        ))
    }

    /// The field-encryption keyring `security.encryption.*` describes.
    pub fn keyring(&self) -> Result<keel_security::crypto::Keyring, SetupError> {
        keel_security::crypto::Keyring::from_config(&self.config.keel.security.encryption)
            .map_err(|e| misconfigured("security.encryption", e))
    }

    /// The blind index keyed by `security.encryption.blind_index_key`.
    pub fn blind_index(&self) -> Result<keel_security::crypto::BlindIndex, SetupError> {
        keel_security::crypto::BlindIndex::from_config(&self.config.keel.security.encryption)
            .map_err(|e| misconfigured("security.encryption.blind_index_key", e))
    }

    /// The audit log in `db`: chained with the keys of `security.audit` (production requires
    /// an active key), masking `log.mask_fields` in details as the logs do, reporting
    /// `audit_log_*` metrics, and checkpointed every `security.audit.checkpoint_interval` by
    /// the worker `audit-checkpoint` (see [`keel_security::audit`]). One per service.
    #[cfg(all(feature = "security", feature = "sql"))]
    pub fn audit_log(&mut self, db: &keel_data::Db) -> Result<keel_security::audit::AuditLog, SetupError> {
        use keel_security::audit::{AuditKeys, AuditLog};
        let cfg = self.config.keel.security.audit.clone();
        if self.profile == Profile::Production && cfg.active_key.is_none() {
            return Err(misconfigured(
                "security.audit.active_key",
                "production needs an audit chain key (security.audit.keys.<id>.secret): \
                 without one anyone who can write the table can rewrite the audit log",
            ));
        }
        let keys = AuditKeys::from_config(&cfg).map_err(|e| misconfigured("security.audit", e))?;
        let log = AuditLog::from_db(db)
            .mask_fields(self.config.keel.log.mask_fields.iter())
            .with_keys(keys)
            .with_metrics(&self.metrics)
            .map_err(|e| misconfigured("security.audit", e))?;
        self.audit = Some(std::sync::Arc::new(AuditReader(log.clone())));
        let checkpointed = log.clone();
        // A checkpoint that cannot run (the database is away) is logged and skipped: the worker
        // stays healthy, and `audit_log_checkpoint_timestamp_seconds` shows how old the last is.
        self.worker(keel_workers::Worker::periodic("audit-checkpoint", cfg.checkpoint_interval, move |_ctx| {
            let log = checkpointed.clone();
            async move {
                if let Err(e) = log.checkpoint().await {
                    tracing::warn!(error = %keel_health::sanitize(&e.to_string()), "audit checkpoint skipped");
                }
                Ok::<(), std::convert::Infallible>(())
            }
        }))?;
        Ok(log)
    }
}

/// The audit log as `/admin/audit` reads it.
#[cfg(all(feature = "security", feature = "sql"))]
struct AuditReader(keel_security::audit::AuditLog);

#[cfg(all(feature = "security", feature = "sql"))]
impl keel_management::audit::AuditSource for AuditReader {
    fn list(&self, f: keel_management::audit::AuditFilter) -> keel_management::audit::AuditList<'_> {
        use keel_management::audit::{AuditReadError, AuditRow};
        use keel_security::audit::{AuditError, AuditFilter};
        Box::pin(async move {
            let filter = AuditFilter {
                actor: f.actor,
                action: f.action,
                target: f.target,
                since: f.since,
                until: f.until,
                before: f.before,
                limit: f.limit,
            };
            let rows = self.0.list(&filter).await.map_err(|e| match e {
                AuditError::Filter(why) => AuditReadError::Filter(why),
                other => AuditReadError::Unavailable(keel_health::sanitize(&other.to_string())),
            })?;
            Ok(rows
                .into_iter()
                .map(|r| AuditRow {
                    id: r.id,
                    at: r.at,
                    actor: r.actor,
                    action: r.action,
                    target: r.target,
                    outcome: r.outcome,
                    details: r.details,
                    key_id: r.key_id,
                    hash: r.hash,
                })
                .collect())
        })
    }

    fn record(&self, e: keel_management::audit::AuditEntry) -> keel_management::audit::AuditWrite<'_> {
        use keel_security::audit::Outcome;
        Box::pin(async move {
            self.0
                .record(&e.actor, &e.action, &e.target, Outcome::Success, e.details)
                .await
                .map(|_| ())
                .map_err(|e| keel_health::sanitize(&e.to_string()))
        })
    }
}
