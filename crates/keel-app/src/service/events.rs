//! [`Setup`]'s bus, consumers and outbox (feature `events`; the outbox also `sql`).

use keel_config::{Profile, Section};

use super::{Setup, SetupError, misconfigured};

mod ops;

/// The readiness check of [`Setup::bus`]'s connection.
const BUS_CHECK: &str = "bus";

impl<C: Section> Setup<C> {
    /// The service's message bus (`bus.*`), connecting in the background: adds the `bus`
    /// readiness check and `bus_connect` startup check, a connect task and a close hook. The
    /// `in_process` backend is refused in production (it loses events on restart).
    pub fn bus(&mut self) -> Result<keel_events::Bus, SetupError> {
        if let Some(b) = &self.bus {
            return Ok(b.clone());
        }
        let cfg = &self.config.keel.bus;
        if self.profile == Profile::Production && cfg.backend == keel_events::BusBackend::InProcess {
            return Err(misconfigured(
                "bus.backend",
                "in_process keeps events in memory and loses them on restart; production needs nats or rabbitmq",
            ));
        }
        let bus = keel_events::Bus::new(cfg).map_err(|e| match e {
            keel_events::BusError::Config(m) => misconfigured("bus", m),
            other => other.into(),
        })?;
        self.health.add(bus.readiness_check());
        self.health.add(bus.startup_check());
        self.depends_on(BUS_CHECK);
        let (b, health) = (bus.clone(), self.health.clone());
        self.task("bus-connect", move |stop| async move {
            b.connect_in_background(stop).await;
            health.trigger();
        });
        let b = bus.clone();
        self.on_shutdown("bus-close", move || async move { b.close().await });
        self.bus = Some(bus.clone());
        Ok(bus)
    }

    /// Runs `consumer` from start-up until shutdown (it stops fetching, finishes and settles
    /// what is in flight, then returns), with the readiness check `consumer:<topic>:<group>` and
    /// the `consumer_*` metrics. A second consumer of the same topic and group is refused: its
    /// metrics, check and console row would be indistinguishable from the first.
    ///
    /// ```ignore
    /// let bus = s.bus()?;
    /// let db = s.database()?;
    /// s.consume(Consumer::new(bus, "joins", "notifier", Notify).inbox(db))?;
    /// ```
    pub fn consume<H: keel_events::Handler>(
        &mut self,
        consumer: keel_events::Consumer<H>,
    ) -> Result<&mut Self, SetupError> {
        // Its metrics, readiness check and console row are named by topic and group: a second
        // consumer with both would be indistinguishable from the first.
        if self.consumers.iter().any(|c| c.topic() == consumer.topic() && c.group() == consumer.group()) {
            return Err(format!(
                "a consumer of `{}` in group `{}` is already running: give each consumer its own group",
                consumer.topic(),
                consumer.group()
            )
            .into());
        }
        if self.consumer_metrics.is_none() {
            self.consumer_metrics = Some(keel_events::ConsumerMetrics::new(&self.metrics)?);
        }
        let health = self.health.clone();
        let consumer = consumer
            .with_metrics(self.consumer_metrics.clone().ok_or("consumer metrics")?)
            .on_subscribed(move || health.trigger());
        self.health.add(consumer.readiness_check());
        self.consumers.push(std::sync::Arc::new(ops::Operated {
            topic: consumer.topic().to_owned(),
            group: consumer.group().to_owned(),
            control: consumer.control(),
            bus: consumer.bus().clone(),
        }));
        let name = format!("{}:consumer", consumer.describe());
        let (health, deps) = (self.health.clone(), self.dependencies.clone());
        self.task(name, move |stop| async move {
            // Subscribing before the bus is up only fails and retries: the normal start-up.
            let deps = deps.lock().map(|d| d.clone()).unwrap_or_default();
            if health.wait_for(&deps, &stop).await {
                consumer.run(stop).await;
            }
        });
        Ok(self)
    }

    fn depends_on(&mut self, check: &str) {
        if let Ok(mut d) = self.dependencies.lock()
            && !d.iter().any(|c| c == check)
        {
            d.push(check.to_owned());
        }
    }

    /// The transactional outbox on the service database, with its relay publishing to
    /// [`Setup::bus`] until shutdown (`outbox.*`, metrics `outbox_*`). The `keel_outbox` table
    /// comes from Keel's own migrations ([`keel_events::outbox::migrations`]).
    #[cfg(all(feature = "events", feature = "sql"))]
    pub fn outbox(&mut self, db: &keel_data::Db) -> Result<keel_events::outbox::Outbox, SetupError> {
        if let Some(o) = &self.outbox {
            return Ok(o.clone());
        }
        let bus = self.bus()?;
        let outbox =
            keel_events::outbox::Outbox::new(db.clone(), &self.name, &self.config.keel.outbox, Some(&self.metrics))?;
        let relay = outbox.clone();
        self.task("outbox-relay", move |stop| relay.run(bus, stop));
        self.outbox = Some(outbox.clone());
        Ok(outbox)
    }
}
