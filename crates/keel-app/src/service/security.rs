//! [`Setup`]'s JWT, passwords, field keys and audit log (feature `security`; the audit log also `sql`).

use keel_config::Section;

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

    /// The field-encryption keyring of a service that keeps its data keys in `db`
    /// ([`Service::rotates_data_keys`](crate::Service::rotates_data_keys)), following the keys of
    /// `security.encryption.*` and the database's, and re-encrypting the declared columns when
    /// the active key changes (see [`keel_security::keys`]). It starts:
    ///
    /// * the worker `data-keys-refresh`, which rereads the key table every
    ///   `security.encryption.refresh_interval`;
    /// * the worker `data-keys`, which every `security.encryption.reencrypt_interval` makes a
    ///   new key when `rotate_every` says so, moves a batch of values per column to the active
    ///   key, and retires keys nothing uses;
    /// * the readiness check `data-keys`, down until the table was read once (so no request is
    ///   served with a keyring that lacks the database's keys), up from then on: a later failed
    ///   read keeps the keys in use and is counted in `data_keys_refresh_failures_total`.
    ///
    /// The console shows the keys and the progress and can rotate now. One per service.
    #[cfg(feature = "sql")]
    pub fn data_keys(&mut self, db: &keel_data::Db) -> Result<keel_security::crypto::Keyring, SetupError> {
        use keel_security::keys::{DataKeys, EncryptedColumn, Policy};
        let Some(columns) = self.rotates_data_keys.clone() else {
            return Err(misconfigured(
                "security.encryption",
                "data_keys needs Service::rotates_data_keys, which names the encrypted columns and adds the key table",
            ));
        };
        let cfg = self.config.keel.security.encryption.clone();
        let columns = columns
            .iter()
            .map(|(table, key, column)| EncryptedColumn::new(table, key, column))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| misconfigured("security.encryption", e))?;
        let keys = DataKeys::new(db, &cfg, columns)
            .and_then(|k| k.with_metrics(&self.metrics))
            .map_err(|e| misconfigured("security.encryption", e))?;
        let loaded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (check_keys, check_loaded) = (keys.clone(), loaded.clone());
        self.health_check(keel_health::Check::new("data-keys", keel_health::Kind::Readiness, move || {
            let (keys, loaded) = (check_keys.clone(), check_loaded.clone());
            async move {
                if loaded.load(std::sync::atomic::Ordering::Acquire) {
                    return keel_health::Outcome::Up;
                }
                match keys.refresh().await {
                    Ok(()) => {
                        loaded.store(true, std::sync::atomic::Ordering::Release);
                        keel_health::Outcome::Up
                    }
                    Err(e) => keel_health::Outcome::down(format!(
                        "the data keys were not read yet: {}",
                        keel_health::sanitize(&e.to_string())
                    )),
                }
            }
        }));
        let refreshed = keys.clone();
        self.worker(keel_workers::Worker::periodic("data-keys-refresh", cfg.refresh_interval, move |_ctx| {
            let (keys, loaded) = (refreshed.clone(), loaded.clone());
            async move {
                match keys.refresh().await {
                    Ok(()) => loaded.store(true, std::sync::atomic::Ordering::Release),
                    // The keys read last stay in use; the metric counts the failure.
                    Err(e) => tracing::warn!(error = %keel_health::sanitize(&e.to_string()), "data keys not reread"),
                }
                Ok::<(), std::convert::Infallible>(())
            }
        }))?;
        let maintained = keys.clone();
        let policy = Policy::from_config(&cfg);
        self.worker(keel_workers::Worker::periodic("data-keys", cfg.reencrypt_interval, move |_ctx| {
            let (keys, policy) = (maintained.clone(), policy.clone());
            async move {
                // A run that fails (the database is away) is logged and retried at the next:
                // the worker stays healthy, so an outage restarts no replica.
                if let Err(e) = keys.maintain(&policy).await {
                    tracing::warn!(error = %keel_health::sanitize(&e.to_string()), "data keys not maintained");
                }
                Ok::<(), std::convert::Infallible>(())
            }
        }))?;
        self.data_keys = Some(std::sync::Arc::new(KeysConsole { keys: keys.clone(), rotate_every: cfg.rotate_every }));
        Ok(keys.keyring())
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
        use keel_config::Profile;
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

/// The data keys as the console shows and rotates them.
#[cfg(all(feature = "security", feature = "sql"))]
struct KeysConsole {
    keys: keel_security::keys::DataKeys,
    rotate_every: Option<std::time::Duration>,
}

#[cfg(all(feature = "security", feature = "sql"))]
fn rfc3339(micros: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(u64::try_from(micros).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(all(feature = "security", feature = "sql"))]
impl keel_management::ops::DataKeyOps for KeysConsole {
    fn view(&self) -> keel_management::ops::KeysView {
        let s = self.keys.status(self.rotate_every);
        keel_management::ops::KeysView {
            active: s.active,
            keys: s
                .keys
                .into_iter()
                .map(|k| keel_management::ops::KeyRow {
                    kid: k.kid,
                    source: snake(&k.source),
                    state: snake(&k.state),
                    active_from: k.active_from.map(rfc3339),
                    values: k.values,
                })
                .collect(),
            columns: s.columns,
            pending_values: s.pending_values,
            unreadable_values: s.unreadable_values,
            reencrypted: s.reencrypted,
            counted_at: s.counted_at.map(rfc3339),
            next_rotation_at: s.next_rotation_at.map(rfc3339),
        }
    }

    fn rotate(&self) -> keel_management::ops::OpsFuture<'_, String> {
        Box::pin(async move { self.keys.rotate().await.map_err(|e| keel_health::sanitize(&e.to_string())) })
    }
}

/// A unit enum's serde name (`snake_case`).
#[cfg(all(feature = "security", feature = "sql"))]
fn snake<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
