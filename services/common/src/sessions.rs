//! Following session revocations, so an ended session stops working everywhere within seconds.
//!
//! Auth raises a user's session version when sessions end and announces it as `session.revoked`
//! on [`SESSIONS_TOPIC`]; access tokens carry the version they were issued under as `sv`.
//! [`follow`] gives a service's verifier a [`Revocations`] map fed by a fan-out subscription of
//! its own (consumer group `<service>-revocations.<suffix>`: every instance gets every
//! announcement), so [`keel::security::jwt::Auth`] refuses older tokens with a 401 once the
//! announcement arrives (well under a second on a healthy bus).
//!
//! Each time the subscription is made (at start-up and after a lost broker connection) the
//! service sends `session.sync_requested`, and auth repeats the raises of the last
//! access-token lifetime: a fresh instance knows them too.

use std::time::Duration;

use keel::events::consumer::{ConsumerOptions, Failure, Handler, Message};
use keel::events::{Bus, Consumer, Envelope, Event, SubscribeOptions};
use keel::security::jwt::Jwt;
use keel::security::sessions::Revocations;

use crate::catalogue::{SESSIONS_TOPIC, SessionRevoked, SessionSyncRequested};

/// Users whose sessions ended that one instance remembers at most (the oldest go first).
const CAPACITY: usize = 1_000_000;

/// `jwt`, also refusing tokens of ended sessions, with the subscription that keeps it informed
/// running from start-up until shutdown (readiness check `consumer:cityevents.sessions:<service>-revocations`).
pub fn follow<C: keel::config::Section>(
    s: &mut keel::Setup<C>,
    service: &str,
    jwt: Jwt,
) -> Result<Jwt, keel::app::SetupError> {
    let cfg = &s.keel().security.jwt;
    // Kept while a token from before the raise can be unexpired: this service's configured
    // lifetime, at least an hour (auth may be configured alone with a longer one), plus the
    // leeway.
    let retention = cfg.ttl.max(Duration::from_secs(3600)) + cfg.leeway + Duration::from_secs(60);
    let revocations = Revocations::new(retention, CAPACITY);
    let bus = s.bus()?;
    let group = format!("{}-revocations", short(service));
    let ask = Sync { bus: bus.clone(), service: service.to_owned() };
    let consumer = Consumer::new(bus, SESSIONS_TOPIC, group, Follower(revocations.clone()))
        .options(ConsumerOptions::default().subscribe(SubscribeOptions::default().fan_out()))
        .on_subscribed(move || ask.send());
    s.consume(consumer)?;
    Ok(jwt.with_revocations(revocations))
}

/// `cityevents-joins` → `joins`.
fn short(service: &str) -> &str {
    service.strip_prefix("cityevents-").unwrap_or(service)
}

/// Records each `session.revoked`; ignores the rest of the topic.
struct Follower(Revocations);

impl Handler for Follower {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        if msg.envelope().ty != SessionRevoked::TYPE {
            return Ok(());
        }
        let revoked: SessionRevoked = msg.decode()?;
        if self.0.revoke(&revoked.user_id.to_string(), revoked.version) {
            tracing::debug!(user_id = %revoked.user_id, version = revoked.version, "session version raised");
        }
        Ok(())
    }
}

/// Sends `session.sync_requested` (in the background: the consumer's callback is synchronous).
#[derive(Clone)]
struct Sync {
    bus: Bus,
    service: String,
}

impl Sync {
    fn send(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (bus, service) = (self.bus.clone(), self.service.clone());
        rt.spawn(async move {
            let request = SessionSyncRequested { service: service.clone() };
            let mut last = String::new();
            for attempt in 0..5u32 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let sent = match Envelope::new(&service, &request) {
                    Ok(env) => bus.publish(SESSIONS_TOPIC, &env).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match sent {
                    Ok(()) => return,
                    Err(e) => last = e,
                }
            }
            // Auth not subscribed yet (it repeats the recent raises itself when it subscribes),
            // or the bus is down (this subscription is then made again, and asks again).
            tracing::warn!(error = %last, "cannot ask auth for recent session revocations");
        });
    }
}
