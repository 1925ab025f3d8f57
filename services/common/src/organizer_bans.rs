//! Organizers whose account is banned, as a service that owns their events keeps them: table
//! `organizer_bans (user_id, banned, version)` in the service's database, created by this
//! module's own migrations ([`migrations`], added to the service's), filled from `account.banned` and `account.unbanned` on
//! [`ACCOUNTS_TOPIC`](crate::catalogue::ACCOUNTS_TOPIC) by [`OrganizerBansHandler`] (with the
//! inbox). A message whose account ban version is not newer than the one recorded changes
//! nothing, so the order messages arrive in does not matter. The events service hides such
//! organizers' events; the joins service takes no new joins for them.

use keel::data::{Backend, DataError, Db};
use keel::events::{Event, Failure, Handler, Message};
use sqlx::{Any, AssertSqlSafe, Transaction};
use uuid::Uuid;

use crate::catalogue::{AccountBanned, AccountUnbanned};

/// The table's migrations, a set of this module's own (recorded in
/// `_cityevents_organizer_bans_migrations`), for a service to add to its migrations with
/// `Migrations::with`. A database where the service's own migration `organizer bans` made the
/// table is taken over on the first `migrate`.
pub fn migrations() -> keel::data::Migrations {
    keel::data::migrations!(library "cityevents_organizer_bans").adopt("organizer bans", 1)
}

/// Records that `user_id` is banned (or not) as of the account's ban `version` in `tx`, unless a
/// later version was recorded already. Returns whether it changed anything.
pub async fn set(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    user_id: Uuid,
    banned: bool,
    version: i64,
) -> Result<bool, DataError> {
    let id = user_id.to_string();
    let current: Option<i64> =
        sqlx::query_scalar(db.statement("SELECT version FROM organizer_bans WHERE user_id = $1"))
            .bind(&id)
            .fetch_optional(db.on(&mut **tx))
            .await?;
    let done = match current {
        Some(seen) if seen >= version => return Ok(false),
        // Conditional too: a newer message committed meanwhile (handled concurrently) wins.
        Some(_) => sqlx::query(AssertSqlSafe(
            db.sql("UPDATE organizer_bans SET banned = $1, version = $2 WHERE user_id = $3 AND version < $4")
                .into_owned(),
        ))
        .bind(i64::from(banned))
        .bind(version)
        .bind(&id)
        .bind(version),
        // Two first messages at once: one fails on the key, and is handled again.
        None => sqlx::query(db.statement("INSERT INTO organizer_bans (banned, version, user_id) VALUES ($1, $2, $3)"))
            .bind(i64::from(banned))
            .bind(version)
            .bind(&id),
    }
    .execute(db.on(&mut **tx))
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether `user_id`'s account is banned, as recorded.
pub async fn is_banned<'c, E>(exec: E, backend: Backend, user_id: Uuid) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    let banned: Option<i64> =
        sqlx::query_scalar(backend.statement("SELECT banned FROM organizer_bans WHERE user_id = $1"))
            .bind(user_id.to_string())
            .fetch_optional(exec)
            .await?;
    Ok(banned.is_some_and(|b| b != 0))
}

/// Applies `account.banned` and `account.unbanned` (needs the inbox); other types on the topic
/// are acknowledged and ignored.
#[derive(Debug, Clone)]
pub struct OrganizerBansHandler {
    db: Db,
}

impl OrganizerBansHandler {
    /// A handler writing to `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

impl Handler for OrganizerBansHandler {
    async fn handle(&self, msg: &mut Message) -> Result<(), Failure> {
        let (user_id, banned, version) = match msg.envelope().ty.as_str() {
            AccountBanned::TYPE => {
                let b: AccountBanned = msg.decode()?;
                (b.user_id, true, b.version)
            }
            AccountUnbanned::TYPE => {
                let u: AccountUnbanned = msg.decode()?;
                (u.user_id, false, u.version)
            }
            _ => return Ok(()),
        };
        let tx = msg.tx().ok_or_else(|| Failure::permanent("the accounts consumer must run with an inbox"))?;
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        let changed = set(&self.db, tx, user_id, banned, version).await.map_err(|e| Failure::transient(&e))?;
        if changed {
            tracing::info!(%user_id, banned, "an organizer's account ban recorded");
        }
        Ok(())
    }
}
