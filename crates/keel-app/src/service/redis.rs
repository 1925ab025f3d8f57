//! [`Setup`]'s Redis connection (feature `redis`).

use keel_config::Section;

use super::{Setup, SetupError, misconfigured};

impl<C: Section> Setup<C> {
    /// The service's Redis (`redis.*`), connecting in the background: adds the `redis`
    /// readiness check and `redis_connect` startup check and a connect task. Later calls
    /// return the same client.
    pub fn redis(&mut self) -> Result<keel_redis::Redis, SetupError> {
        if let Some(r) = &self.redis {
            return Ok(r.clone());
        }
        let cfg = self.config.keel.redis.clone();
        let url = cfg
            .url
            .as_ref()
            .ok_or_else(|| misconfigured("redis.url", "is required (env <SERVICE>__REDIS__URL or redis.url_file)"))?;
        if let Err(e) = keel_redis::driver::Client::open(url.expose()) {
            return Err(misconfigured("redis.url", keel_health::sanitize(&e.to_string())));
        }
        let redis = keel_redis::Redis::new(&self.name, url.expose(), &cfg, &self.metrics)?;
        self.health.add(redis.readiness_check());
        self.health.add(redis.startup_check());
        let (r, health) = (redis.clone(), self.health.clone());
        self.task("redis-connect", move |stop| async move {
            r.clone().connect_in_background(stop.clone()).await;
            health.trigger();
            // A re-probe that finds Redis back, or a call that finds it gone, re-runs the
            // checks: readiness follows at once.
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = r.recovered() => health.trigger(),
                    () = r.lost() => health.trigger(),
                }
            }
        });
        self.redis = Some(redis.clone());
        // `auto` prefers the database: Redis keeps the flags' overrides only while no database does.
        let kind = self.config.keel.features.store.kind;
        let take = match kind {
            keel_features::StoreKind::Redis => true,
            keel_features::StoreKind::Auto => self.features.store_kind() == "memory",
            _ => false,
        };
        if take {
            self.features.attach(std::sync::Arc::new(keel_features::RedisStore::new(redis.clone())));
        }
        Ok(redis)
    }
}
