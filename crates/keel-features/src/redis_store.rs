//! [`RedisStore`]: flag overrides in the service's Redis (feature `redis`), for a service without
//! a database (a gateway) whose replicas share a Redis.

use std::collections::BTreeMap;

use keel_redis::Redis;
use redis::Script;
use serde::{Deserialize, Serialize};

use super::FlagDef;
use super::store::{FlagChange, FlagStore, Override, Overrides, StoreError, StoreFuture, bounded, now_ms, readable};

/// How many changes the history list keeps.
pub(crate) const HISTORY_LEN: usize = 1000;

/// Sets or removes one override, bumps the version and appends to the history, atomically.
/// KEYS: overrides hash, version counter, history list. ARGV: flag, stored value ('' removes),
/// actor, reason, time (ms). Answers nil when removing a flag that has no override, else
/// {id, the value before or ''}.
const SET: &str = r"
local before = redis.call('HGET', KEYS[1], ARGV[1])
if (not before) and ARGV[2] == '' then return false end
local id = redis.call('INCR', KEYS[2])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local entry = cjson.encode({id = id, key = ARGV[1], before = before or '', after = ARGV[2],
  actor = ARGV[3], reason = ARGV[4], at = tonumber(ARGV[5])})
redis.call('LPUSH', KEYS[3], entry)
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
return {id, before or ''}
";

/// One override as the hash keeps it.
#[derive(Serialize, Deserialize)]
struct Stored {
    def: FlagDef,
    updated_by: String,
    updated_at_ms: i64,
}

/// One history entry as the list keeps it (`before` and `after` are [`Stored`] texts, '' for none).
#[derive(Deserialize)]
struct Entry {
    id: i64,
    key: String,
    before: String,
    after: String,
    actor: String,
    reason: String,
    at: i64,
}

/// Overrides in Redis under the service's key prefix (`<prefix>flags:overrides`,
/// `flags:version`, `flags:history`), seen by every replica that shares it. The history keeps
/// the newest [`HISTORY_LEN`] changes.
#[derive(Debug, Clone)]
pub struct RedisStore {
    redis: Redis,
    overrides: String,
    version: String,
    history: String,
}

impl RedisStore {
    /// The store in `redis`.
    pub fn new(redis: Redis) -> Self {
        Self {
            overrides: redis.key("flags:overrides"),
            version: redis.key("flags:version"),
            history: redis.key("flags:history"),
            redis,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn decode(key: &str, text: &str) -> Result<Option<Stored>, StoreError> {
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text).map(Some).map_err(|e| StoreError::Corrupt { key: key.to_owned(), why: e.to_string() })
}

impl FlagStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn ready(&self) -> bool {
        self.redis.is_available()
    }

    fn version(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            let v: Option<i64> = self.redis.query(redis::cmd("GET").arg(&self.version)).await.map_err(unavailable)?;
            Ok(v.unwrap_or(0))
        })
    }

    fn load(&self) -> StoreFuture<'_, Overrides> {
        Box::pin(async move {
            // The version first: a change landing in between is loaded again on the next poll.
            let version = self.version().await?;
            let all: BTreeMap<String, String> =
                self.redis.query(redis::cmd("HGETALL").arg(&self.overrides)).await.map_err(unavailable)?;
            let mut flags = BTreeMap::new();
            for (key, text) in all {
                if let Some(Some(s)) = readable(decode(&key, &text)) {
                    flags
                        .insert(key, Override { def: s.def, updated_by: s.updated_by, updated_at_ms: s.updated_at_ms });
                }
            }
            Ok(Overrides { version, flags })
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        def: Option<&'a FlagDef>,
        actor: &'a str,
        reason: &'a str,
    ) -> StoreFuture<'a, Option<FlagChange>> {
        Box::pin(async move {
            let (actor, reason, at_ms) = (bounded(actor), bounded(reason), now_ms());
            let value = match def {
                Some(d) => serde_json::to_string(&Stored {
                    def: d.clone(),
                    updated_by: actor.to_owned(),
                    updated_at_ms: at_ms,
                })
                .map_err(unavailable)?,
                None => String::new(),
            };
            let script = Script::new(SET);
            let mut call = script.prepare_invoke();
            call.key(&self.overrides).key(&self.version).key(&self.history);
            call.arg(key).arg(&value).arg(actor).arg(reason).arg(at_ms).arg(HISTORY_LEN);
            let answer: Option<(i64, String)> = self.redis.script(&call).await.map_err(unavailable)?;
            let Some((id, before)) = answer else { return Ok(None) };
            Ok(Some(FlagChange {
                id,
                key: key.to_owned(),
                before: decode(key, &before)?.map(|s| s.def),
                after: def.cloned(),
                actor: actor.to_owned(),
                reason: reason.to_owned(),
                at_ms,
            }))
        })
    }

    fn history<'a>(&'a self, key: Option<&'a str>, limit: u32) -> StoreFuture<'a, Vec<FlagChange>> {
        Box::pin(async move {
            let entries: Vec<String> = self
                .redis
                .query(redis::cmd("LRANGE").arg(&self.history).arg(0).arg(HISTORY_LEN - 1))
                .await
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for text in entries {
                let e: Entry = serde_json::from_str(&text)
                    .map_err(|e| StoreError::Corrupt { key: "flags:history".into(), why: e.to_string() })?;
                if key.is_some_and(|k| k != e.key) {
                    continue;
                }
                out.push(FlagChange {
                    id: e.id,
                    before: decode(&e.key, &e.before)?.map(|s| s.def),
                    after: decode(&e.key, &e.after)?.map(|s| s.def),
                    key: e.key,
                    actor: e.actor,
                    reason: e.reason,
                    at_ms: e.at,
                });
                if out.len() >= limit as usize {
                    break;
                }
            }
            Ok(out)
        })
    }
}
