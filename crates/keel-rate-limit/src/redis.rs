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

const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
if count < limit then
  redis.call('ZADD', KEYS[1], now, now .. '-' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  count = count + 1
  allowed = 1
end
local wait = window
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] then wait = tonumber(oldest[2]) + window - now end
local reset = window
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] then reset = tonumber(newest[2]) + window - now end
return {allowed, limit - count, wait, reset}
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

    /// Decides for `key` in one round trip.
    pub async fn check(&self, key: &str) -> Result<Decision, BackendError> {
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut invocation = self.script.key(format!("{}{key}", self.prefix));
        invocation.arg(self.limit).arg(window_ms).arg(rand::random::<u64>());
        let (allowed, remaining, wait_ms, reset_ms): (i64, i64, i64, i64) =
            self.redis.script(&invocation).await.map_err(|e| BackendError(e.to_string()))?;
        let ms = |v: i64| Duration::from_millis(u64::try_from(v.max(0)).unwrap_or(0));
        Ok(Decision {
            allowed: allowed == 1,
            limit: self.limit,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(0),
            // Both backends: time until the whole quota is available again.
            reset: ms(reset_ms),
            retry_after: if allowed == 1 { Duration::ZERO } else { ms(wait_ms) },
        })
    }
}
