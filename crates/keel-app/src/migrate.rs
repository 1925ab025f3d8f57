//! `<service> migrate` and `<service> migrate status`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use sqlx::any::AnyPoolOptions;

use super::KeelConfig;
use super::exit;
use keel_config::Profile;
use keel_data::{Backend, Migrations, resolve_url};
use keel_resilience::Backoff;

/// How long `migrate` waits for the database when `database.connect.max_elapsed` is 0.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

pub(super) fn run(
    name: &str,
    migrations: Option<std::sync::Arc<Migrations>>,
    keel: &KeelConfig,
    profile: Profile,
    status_only: bool,
) -> ExitCode {
    let Some(migrations) = migrations else {
        eprintln!("{name}: `migrate` does not apply: {name} has no database");
        return ExitCode::from(exit::USAGE);
    };
    let cfg = &keel.database;
    let url = match resolve_url(cfg, name, profile == Profile::Production) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("{name} migrate: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let Some(backend) = Backend::from_url(&url) else {
        eprintln!("{name} migrate: database.url has an unknown scheme");
        return ExitCode::from(exit::CONFIG);
    };
    if let Err(e) = keel_data::prepare_sqlite_file(&url) {
        eprintln!("{name} migrate: {e}");
        return ExitCode::from(exit::CONFIG);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name} migrate: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let wait = if cfg.connect.max_elapsed.is_zero() { DEFAULT_WAIT } else { cfg.connect.max_elapsed };
    rt.block_on(async {
        let pool = match connect(&url, cfg, wait).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!(
                    "{name} migrate: cannot connect to {backend} within {}: {e}",
                    humantime::format_duration(wait)
                );
                return ExitCode::from(exit::START);
            }
        };
        let code = if status_only {
            status(&migrations, &pool, backend).await
        } else {
            apply(&migrations, &pool, backend).await
        };
        pool.close().await;
        code
    })
}

pub(super) async fn connect(
    url: &str,
    cfg: &keel_data::DatabaseConfig,
    wait: Duration,
) -> Result<sqlx::AnyPool, String> {
    sqlx::any::install_default_drivers();
    let started = Instant::now();
    let mut backoff = Backoff::from_config(&cfg.connect);
    loop {
        let attempt =
            AnyPoolOptions::new().max_connections(1).acquire_timeout(cfg.connect.attempt_timeout).connect(url);
        match attempt.await {
            Ok(p) => return Ok(p),
            Err(e) if started.elapsed() >= wait => return Err(keel_health::sanitize(&e.to_string())),
            Err(e) => {
                eprintln!("waiting for the database: {}", keel_health::sanitize(&e.to_string()));
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

async fn status(m: &Migrations, pool: &sqlx::AnyPool, backend: Backend) -> ExitCode {
    match m.status(pool, backend).await {
        Ok(list) => {
            for s in &list {
                let state = if s.applied {
                    "applied"
                } else if s.failed {
                    "FAILED"
                } else {
                    "pending"
                };
                match s.library {
                    Some(l) => println!("{state:<8} {:>14}  {l}: {}", s.version, s.description),
                    None => println!("{state:<8} {:>14}  {}", s.version, s.description),
                }
            }
            let pending = list.iter().filter(|s| !s.applied).count();
            println!("{} applied, {pending} pending ({backend})", list.len() - pending);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("migrate status: {}", keel_health::sanitize(&e.to_string()));
            ExitCode::from(exit::FAILURE)
        }
    }
}

async fn apply(m: &Migrations, pool: &sqlx::AnyPool, backend: Backend) -> ExitCode {
    match m.run(pool, backend).await {
        Ok(n) => {
            println!("applied {n} migration(s) ({backend})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("migrate: {}", keel_health::sanitize(&e.to_string()));
            ExitCode::from(exit::FAILURE)
        }
    }
}
