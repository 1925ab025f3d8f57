//! What the events service does with `account.*` (topic `cityevents.accounts`, group `events`,
//! with the inbox): `account.banned` hides the user's events from everyone but them and
//! moderators, `account.unbanned` shows them again (`store::set_organizer_ban`; a message older
//! than the state recorded changes nothing). Other types are acknowledged and ignored.

use cityevents_common::catalogue::{AccountBanned, AccountUnbanned};
use cityevents_common::time::to_micros;
use keel::data::Db;
use keel::events::{Event, Failure, Handler, Message};

use crate::store;

/// The consumer group.
pub const GROUP: &str = "events";

/// The `account.*` handler (needs the inbox).
#[derive(Debug, Clone)]
pub struct AccountsHandler {
    db: Db,
}

impl AccountsHandler {
    /// A handler writing to `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

impl Handler for AccountsHandler {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        let (user_id, banned, at) = match msg.envelope().ty.as_str() {
            AccountBanned::TYPE => {
                let b: AccountBanned = msg.decode()?;
                (b.user_id, true, b.at)
            }
            AccountUnbanned::TYPE => {
                let u: AccountUnbanned = msg.decode()?;
                (u.user_id, false, u.at)
            }
            _ => return Ok(()),
        };
        let tx = msg.tx().ok_or_else(|| Failure::permanent("the accounts consumer must run with an inbox"))?;
        let changed = store::set_organizer_ban(&self.db, tx, user_id, banned, to_micros(at))
            .await
            .map_err(|e| Failure::transient(&e))?;
        if changed {
            tracing::info!(%user_id, banned, "an organizer's events are {}", if banned { "hidden" } else { "shown again" });
        }
        Ok(())
    }
}
