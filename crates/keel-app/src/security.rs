//! `<service> audit verify`, `<service> keys …` and `<service> token issue`.

use std::process::ExitCode;

use super::KeelConfig;
use super::cli::{KeysCommand, TokenCommand, exit};
use keel_config::Secret;
use keel_security::crypto::{MasterKey, generate_key, rewrap};

/// Connects to the service's database as `<name> <what>` (exit 78 for an unusable URL, 3 when
/// it does not connect), runs `f` on the pool and closes it.
#[cfg(feature = "sql")]
fn with_database(
    name: &str,
    what: &str,
    keel: &KeelConfig,
    profile: keel_config::Profile,
    f: impl AsyncFnOnce(sqlx::AnyPool, keel_data::Backend) -> ExitCode,
) -> ExitCode {
    use keel_data::{Backend, resolve_url};
    let cfg = &keel.database;
    let url = match resolve_url(cfg, name, profile == keel_config::Profile::Production) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("{name} {what}: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let Some(backend) = Backend::from_url(&url) else {
        eprintln!("{name} {what}: database.url has an unknown scheme");
        return ExitCode::from(exit::CONFIG);
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name} {what}: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let wait =
        if cfg.connect.max_elapsed.is_zero() { std::time::Duration::from_secs(30) } else { cfg.connect.max_elapsed };
    rt.block_on(async {
        let pool = match super::migrate::connect(&url, cfg, wait).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{name} {what}: cannot connect to {backend}: {e}");
                return ExitCode::from(exit::START);
            }
        };
        let code = f(pool.clone(), backend).await;
        pool.close().await;
        code
    })
}

/// Walks the audit chain of the service's database.
#[cfg(feature = "sql")]
pub(super) fn audit_verify(
    name: &str,
    keel: &KeelConfig,
    profile: keel_config::Profile,
    checkpoint: Option<&keel_security::audit::Checkpoint>,
) -> ExitCode {
    let keys = match keel_security::audit::AuditKeys::from_config(&keel.security.audit) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{name} audit verify: security.audit: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    with_database(name, "audit verify", keel, profile, async |pool, backend| {
        let log = keel_security::audit::AuditLog::new(pool, backend).with_keys(keys);
        match log.verify_against(checkpoint).await {
            Ok(v) => match v.broken {
                None => {
                    let against = checkpoint.map(|c| format!(", consistent with checkpoint {c}")).unwrap_or_default();
                    println!("audit log intact: {} row(s) verified{against}; head {}", v.rows, v.head);
                    if v.unkeyed > 0 {
                        println!(
                            "{} row(s) are chained without a key (written before security.audit.active_key was set)",
                            v.unkeyed
                        );
                    }
                    ExitCode::SUCCESS
                }
                Some(b) => {
                    println!("audit log BROKEN at row {}: {} ({} row(s) before it verified)", b.id, b.reason, v.rows);
                    ExitCode::from(exit::FAILURE)
                }
            },
            Err(e) => {
                eprintln!("{name} audit verify: {}", keel_health::sanitize(&e.to_string()));
                ExitCode::from(exit::FAILURE)
            }
        }
    })
}

/// `keys rotate` and `keys status`: the data keys in the service's database.
#[cfg(feature = "sql")]
pub(super) fn keys_in_db(
    name: &str,
    keel: &KeelConfig,
    profile: keel_config::Profile,
    command: &KeysCommand,
    columns: Option<&[(&'static str, &'static str, &'static str)]>,
) -> ExitCode {
    use keel_security::keys::KeyError;
    let what = match command {
        KeysCommand::Rotate => "keys rotate",
        KeysCommand::Rewrap { .. } => "keys rewrap",
        _ => "keys status",
    };
    let Some(columns) = columns else {
        eprintln!("{name} {what}: this service keeps no data keys in its database (Service::rotates_data_keys)");
        return ExitCode::from(exit::USAGE);
    };
    let columns = match columns
        .iter()
        .map(|(t, k, c)| keel_security::keys::EncryptedColumn::new(t, k, c))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name} {what}: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    with_database(name, what, keel, profile, async |pool, backend| {
        let enc = &keel.security.encryption;
        match keel_security::keys::DataKeys::with_pool(pool, backend, enc, columns) {
            Err(e) => {
                eprintln!("{name} {what}: security.encryption: {e}");
                ExitCode::from(exit::CONFIG)
            }
            Ok(keys) => {
                let done = async {
                    if let KeysCommand::Rewrap { new_master_key_file } = command {
                        // The configuration's keys as `keys rewrap` prints them, then the database's in place.
                        let text = std::fs::read_to_string(new_master_key_file).map_err(|e| {
                            KeyError::Column(format!("cannot read {}: {e}", new_master_key_file.display()))
                        })?;
                        let new = MasterKey::from_secret(&Secret::new(text.trim()))?;
                        let old = match &enc.master_key {
                            Some(m) => MasterKey::from_secret(m)?,
                            None => return Err(KeyError::Column("security.encryption.master_key is not set".into())),
                        };
                        let mut out = String::from("data_keys:\n");
                        for (kid, wrapped) in &enc.data_keys {
                            out.push_str(&format!("  {kid}: {}\n", rewrap(&old, &new, kid, wrapped)?));
                        }
                        let n = keys.rewrap_stored(&new).await?;
                        out.push_str(&format!("# {n} data key(s) of the database re-wrapped in place"));
                        return Ok(out);
                    }
                    keys.refresh().await?;
                    match command {
                        KeysCommand::Rotate => keys.rotate().await,
                        _ => {
                            keys.count().await?;
                            serde_json::to_string_pretty(&keys.status(enc.rotate_every))
                        }
                        .map_err(|e| KeyError::Column(e.to_string())),
                    }
                };
                match done.await {
                    Ok(text) => {
                        println!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{name} {what}: {}", keel_health::sanitize(&e.to_string()));
                        ExitCode::from(exit::FAILURE)
                    }
                }
            }
        }
    })
}

/// Key management for field encryption. Prints keys to stdout only (pipe them into the secret
/// store); never logs them.
pub(super) fn keys(keel: &KeelConfig, command: KeysCommand) -> ExitCode {
    let enc = &keel.security.encryption;
    // A missing or unusable configured master key is the configuration's fault (exit 78); the
    // rest fail at run time (exit 1).
    let failed = |e: String| (exit::FAILURE, e);
    let master = || -> Result<MasterKey, (u8, String)> {
        let m =
            enc.master_key.as_ref().ok_or((exit::CONFIG, "security.encryption.master_key is not set".to_owned()))?;
        MasterKey::from_secret(m).map_err(|e| (exit::CONFIG, format!("security.encryption.master_key: {e}")))
    };
    let result = match command {
        // Served by `keys_in_db`: they need the database.
        KeysCommand::Rotate | KeysCommand::Status => Err((exit::USAGE, "this command needs a database".to_owned())),
        KeysCommand::Generate => Ok(generate_key()),
        KeysCommand::New { kid } => master()
            .and_then(|m| m.new_data_key(&kid).map(|w| format!("{kid}: {w}")).map_err(|e| failed(e.to_string()))),
        KeysCommand::Rewrap { new_master_key_file } => master().and_then(|old| {
            let text = std::fs::read_to_string(&new_master_key_file)
                .map_err(|e| failed(format!("cannot read {}: {e}", new_master_key_file.display())))?;
            let new = MasterKey::from_secret(&Secret::new(text.trim())).map_err(|e| failed(e.to_string()))?;
            let mut out = String::from("data_keys:\n");
            for (kid, wrapped) in &enc.data_keys {
                let w = rewrap(&old, &new, kid, wrapped).map_err(|e| failed(format!("data key `{kid}`: {e}")))?;
                out.push_str(&format!("  {kid}: {w}\n"));
            }
            Ok(out.trim_end().to_owned())
        }),
    };
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err((code, e)) => {
            eprintln!("keys: {e}");
            ExitCode::from(code)
        }
    }
}

/// The longest lifetime `token issue` grants: a stateless token stays valid until it expires.
const MAX_ISSUED_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Issues a token with the configured signing key. Prints it to stdout only; never logs it.
pub(super) fn token(keel: &KeelConfig, command: TokenCommand) -> ExitCode {
    let TokenCommand::Issue { subject, roles, ttl } = command;
    let cfg = &keel.security.jwt;
    let issued = (|| {
        if cfg.signing_key.is_none() {
            return Err((
                exit::CONFIG,
                "security.jwt.signing_key is not set: this service only verifies tokens".into(),
            ));
        }
        if subject.trim().is_empty() {
            return Err((exit::USAGE, "the subject must not be empty".to_owned()));
        }
        if let Some(ttl) = ttl
            && (ttl.is_zero() || ttl > MAX_ISSUED_TTL)
        {
            return Err((exit::USAGE, "--ttl must be more than 0s and at most 24h".to_owned()));
        }
        let jwt =
            keel_security::jwt::Jwt::from_config(cfg).map_err(|e| (exit::CONFIG, format!("security.jwt: {e}")))?;
        let mut claims = jwt.claims(subject);
        claims.roles = roles;
        if let (Some(ttl), Some(iat)) = (ttl, claims.iat) {
            claims.exp = iat + ttl.as_secs();
        }
        jwt.issue(&claims).map_err(|e| (exit::FAILURE, e.to_string()))
    })();
    match issued {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err((code, e)) => {
            eprintln!("token issue: {e}");
            ExitCode::from(code)
        }
    }
}
