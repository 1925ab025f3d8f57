//! [`Setup`]'s SQL database (feature `sql`).

use keel_config::{Profile, Section};

use super::{Setup, SetupError, misconfigured};

/// The readiness check of [`Setup::database`]'s connection.
const DATABASE_CHECK: &str = "database";

impl<C: Section> Setup<C> {
    /// The service's SQL database (`database.*`), connecting in the background: adds the
    /// `database` readiness check and `database_connect` startup check, a connect task, and a
    /// shutdown hook that closes the pool. Outside production an unset `database.url` means a
    /// SQLite file `data/<service>.db`; in production it is an error.
    pub fn database(&mut self) -> Result<keel_data::Db, SetupError> {
        let cfg = self.config.keel.database.clone();
        let production = self.profile == Profile::Production;
        // In production the only failure is a missing URL; elsewhere it is the SQLite default's
        // directory that could not be made, which is the environment's fault.
        let url = match &cfg.url {
            // `config check` makes no directory for the default SQLite file.
            None if self.checking && !production => "sqlite::memory:".to_owned(),
            _ => keel_data::resolve_url(&cfg, &self.name, production).map_err(|e| match e {
                keel_data::DataError::Config(m) if production => misconfigured("database", m),
                other => other.into(),
            })?,
        };
        let backend = keel_data::Backend::from_url(&url)
            .ok_or_else(|| misconfigured("database.url", "must be postgres://, mysql:// or sqlite:"))?;
        // Nor a SQLite file: the pool is built (the URL parses) but in memory.
        let url =
            if self.checking && backend == keel_data::Backend::Sqlite { "sqlite::memory:".to_owned() } else { url };
        let db = keel_data::Db::new(&self.name, &url, &cfg, self.migrations.clone(), &self.metrics)?;
        self.health.add(db.readiness_check());
        self.health.add(db.startup_check());
        // Workers do not fail their first runs while the database is still connecting.
        self.workers.require_for_all(DATABASE_CHECK);
        let (d, health) = (db.clone(), self.health.clone());
        self.task("database-connect", move |stop| async move {
            d.clone().connect_in_background(stop.clone()).await;
            health.trigger();
            // A re-probe that finds the database back, or a call that finds it gone, re-runs
            // the checks: readiness follows at once.
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = d.recovered() => health.trigger(),
                    () = d.lost() => health.trigger(),
                }
            }
        });
        let d = db.clone();
        self.on_shutdown("database-close", move || async move { d.close().await });
        self.flag_store(&db)?;
        Ok(db)
    }

    /// Keeps the flags' runtime overrides in `db` (`features.store.kind` `auto` or `database`),
    /// in the tables the service's migrations create; the `feature-flags-sync` task follows them
    /// every `features.store.poll_interval`.
    fn flag_store(&mut self, db: &keel_data::Db) -> Result<(), SetupError> {
        use keel_features::StoreKind;
        let kind = self.config.keel.features.store.kind;
        if !matches!(kind, StoreKind::Auto | StoreKind::Database) {
            return Ok(());
        }
        if self.migrations.is_none() {
            if kind == StoreKind::Database {
                return Err(misconfigured(
                    "features.store.kind",
                    "`database` needs the service's migrations (Service::migrations), which create the flag tables",
                ));
            }
            return Ok(());
        }
        self.features.attach(std::sync::Arc::new(keel_features::SqlStore::new(db.clone())));
        Ok(())
    }
}
