//! How a check's falls are logged: a dependency that was never up is waited for (INFO) during
//! `health.startup_grace`, then warned about once; after it was up, every fall is a WARN.
//! Its own test binary: tracing caches a callsite's interest process-wide, so a test that sets a
//! thread-local subscriber must not share the binary with tests logging from other threads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keel_health::{Check, Health, Kind, Outcome};

/// Log lines as `LEVEL message`.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<String>>>);

impl Logs {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logs {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        self.0.lock().unwrap().push(format!("{} {}", event.metadata().level(), m.0));
    }
}

#[tokio::test]
async fn a_dependency_never_up_is_waited_for_then_warned_about_once() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let logs = Logs::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(logs.clone()));
    let up = Arc::new(AtomicBool::new(false));
    let h =
        Health::new(Duration::from_millis(10), Duration::from_secs(60), None).startup_grace(Duration::from_millis(300));
    let u = up.clone();
    h.add(Check::new("database", Kind::Readiness, move || {
        let u = u.clone();
        async move { if u.load(Ordering::SeqCst) { Outcome::Up } else { Outcome::down("connecting") } }
    }));
    h.run_all().await;
    h.run_all().await;
    assert_eq!(logs.lines(), ["INFO waiting for database"], "start-up: INFO, once");
    assert!(!h.is_up("database"));
    tokio::time::sleep(Duration::from_millis(350)).await;
    h.run_all().await;
    h.run_all().await;
    assert_eq!(logs.lines()[1..], ["WARN health check still down after the start-up grace (health.startup_grace)"]);

    up.store(true, Ordering::SeqCst);
    let stop = tokio_util::sync::CancellationToken::new();
    let waiting = {
        let h = h.clone();
        tokio::spawn(async move { h.wait_for(&["database".to_owned(), "unknown".to_owned()], &stop).await })
    };
    h.run_all().await;
    assert!(waiting.await.unwrap(), "wait_for returns once the check is up (an unknown name is ignored)");
    assert!(h.is_up("database"));

    up.store(false, Ordering::SeqCst);
    h.run_all().await;
    assert_eq!(logs.lines()[2..], ["INFO health check up", "WARN health check down"], "after it was up: WARN at once");
}
