//! The platform's audit log for moderation done in other services: `moderation.recorded` on
//! [`MODERATION_TOPIC`] (a moderator's cancel or unpublish in the events service, a ban from an
//! event in the joins service, each enqueued in the transaction of the action) becomes a row of
//! auth's audit log, action `moderation.<action>`, actor `user:<id>`, with the reason and
//! details. Recorded once per message ([`AuditLog::record_once`] keyed by the envelope id), so a
//! redelivery adds nothing; an audit log that cannot be written is retried.

use cityevents_common::catalogue::ModerationRecorded;
use keel::events::{Failure, Handler, Message};
use keel::security::audit::{AuditLog, Outcome};
use serde_json::json;

/// The consumer group.
pub(crate) const GROUP: &str = "auth-audit";

/// Handles `moderation.recorded`; other types on the topic are acknowledged and ignored.
#[derive(Clone)]
pub(crate) struct AuditHandler(pub(crate) AuditLog);

impl Handler for AuditHandler {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        if msg.envelope().ty != <ModerationRecorded as keel::events::Event>::TYPE {
            return Ok(());
        }
        let m: ModerationRecorded = msg.decode()?;
        let envelope = msg.envelope();
        let once = format!("msg:{}", envelope.id.to_ascii_lowercase());
        let action = format!("moderation.{}", m.action);
        let details = json!({
            "reason": m.reason,
            "details": m.details,
            "source": envelope.source,
            "at": m.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        });
        let actor = format!("user:{}", m.actor);
        match self.0.record_once(&once, &actor, &action, &m.target, Outcome::Success, details).await {
            Ok(_) => Ok(()),
            Err(keel::security::audit::AuditError::Key(e)) => Err(Failure::permanent(e)),
            Err(e) => Err(Failure::retry(e)),
        }
    }
}
