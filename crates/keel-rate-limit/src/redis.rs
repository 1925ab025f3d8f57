//! The shared backend: a sliding-window log in Redis, decided atomically in one round trip.
//!
//! Each key is a sorted set of request timestamps (Redis server time, so instances with skewed
//! clocks agree). The Lua script drops entries older than the window, counts what is left,
//! and adds this request only if the count is under the limit — all at once, so instances
//! sharing the Redis never let more than `limit` requests through in any window. Keys expire
//! with the window.

use std::time::Duration;

use redis::Script;

use super::{BackendError, Decision, RateLimitPolicy};
use keel_redis::Redis;

/// Decides `KEYS` in order, each with its `ARGV` triple (limit, window in ms, a random id),
/// and stops at the first that refuses: the keys after it are neither counted nor decided, as
/// when each limiter were a layer of its own around the next.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 * i - 2])
  local window = tonumber(ARGV[3 * i - 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  local allowed = 0
  if count < limit then
    redis.call('ZADD', key, now, now .. '-' .. ARGV[3 * i])
    redis.call('PEXPIRE', key, window)
    count = count + 1
    allowed = 1
  end
  local wait = window
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if oldest[2] then wait = tonumber(oldest[2]) + window - now end
  local reset = window
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if newest[2] then reset = tonumber(newest[2]) + window - now end
  table.insert(out, allowed)
  table.insert(out, limit - count)
  table.insert(out, wait)
  table.insert(out, reset)
  if allowed == 0 then break end
end
return out
";

/// Sliding-window limiter over a service's [`Redis`].
pub struct RedisLimiter {
    redis: Redis,
    script: Script,
    prefix: String,
    limit: u32,
    window: Duration,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter").field("prefix", &self.prefix).field("limit", &self.limit).finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// A limiter for the policy `name`; keys are `<redis prefix>rl:<name>:<key>`.
    pub fn new(name: &str, policy: &RateLimitPolicy, redis: Redis) -> Self {
        let prefix = redis.key(&format!("rl:{name}:"));
        Self { redis, script: Script::new(SCRIPT), prefix, limit: policy.limit, window: policy.window }
    }

    /// Whether `other` keeps its counts through the same Redis handle, so the two can decide
    /// in one round trip.
    pub fn shares_redis_with(&self, other: &Self) -> bool {
        self.redis.same_handle(&other.redis)
    }

    /// Decides each `(limiter, key)` in order in one round trip through the first limiter's
    /// Redis (every limiter must [share it](Self::shares_redis_with)), stopping at the first
    /// refusal: the answer holds a decision for each limiter up to and including that one (at
    /// least one).
    pub async fn check_in_order(checks: &[(&Self, &str)]) -> Result<Vec<Decision>, BackendError> {
        let Some((first, _)) = checks.first() else { return Ok(Vec::new()) };
        let mut invocation = first.script.prepare_invoke();
        for (limiter, key) in checks {
            let window_ms = u64::try_from(limiter.window.as_millis()).unwrap_or(u64::MAX).max(1);
            invocation.key(format!("{}{key}", limiter.prefix));
            invocation.arg(limiter.limit).arg(window_ms).arg(rand::random::<u64>());
        }
        let answer: Vec<i64> = first.redis.script(&invocation).await.map_err(|e| BackendError(e.to_string()))?;
        if answer.is_empty() || !answer.len().is_multiple_of(4) || answer.len() > checks.len() * 4 {
            return Err(BackendError(format!(
                "the script answered {} numbers for {} keys",
                answer.len(),
                checks.len()
            )));
        }
        let ms = |v: i64| Duration::from_millis(u64::try_from(v.max(0)).unwrap_or(0));
        Ok(answer
            .chunks_exact(4)
            .zip(checks)
            .map(|(v, (limiter, _))| {
                let allowed = v[0] == 1;
                Decision {
                    allowed,
                    limit: limiter.limit,
                    remaining: u32::try_from(v[1].max(0)).unwrap_or(0),
                    // Both backends: time until the whole quota is available again.
                    reset: ms(v[3]),
                    retry_after: if allowed { Duration::ZERO } else { ms(v[2]) },
                }
            })
            .collect())
    }
}
