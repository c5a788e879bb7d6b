//! The Lua scripts of global limits: each one reads, decides and writes in one atomic step in
//! Redis, on Redis's clock (`TIME`), so every replica counts against the same state whatever
//! its own clock says. They mirror [`super::algorithm`]; all return
//! `{allowed, remaining, reset_us, retry_after_us}`.
//!
//! Keys carry a `{hash tag}` so that a window's keys live in one slot of a Redis Cluster.
//! Every key expires once it could no longer change a decision.

use portico_model::ratelimit::Algorithm;

/// A script and its SHA-1 (what `EVALSHA` names it by).
#[derive(Debug)]
pub struct Script {
    pub source: &'static str,
    pub sha1: String,
}

impl Script {
    fn new(source: &'static str) -> Self {
        let digest =
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, source.as_bytes());
        let sha1 = crate::util::hex(digest.as_ref());
        Self { source, sha1 }
    }

    pub fn for_algorithm(a: Algorithm) -> &'static Script {
        static SCRIPTS: std::sync::OnceLock<[Script; 3]> = std::sync::OnceLock::new();
        let s = SCRIPTS.get_or_init(|| {
            [
                Script::new(TOKEN_BUCKET),
                Script::new(SLIDING_WINDOW),
                Script::new(FIXED_WINDOW),
            ]
        });
        match a {
            Algorithm::TokenBucket => &s[0],
            Algorithm::SlidingWindow => &s[1],
            Algorithm::FixedWindow => &s[2],
        }
    }
}

/// KEYS[1] the bucket (a hash: t = tokens, a = last update). ARGV: requests, interval_us,
/// burst, peek.
const TOKEN_BUCKET: &str = r#"
local peek = ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1]) / tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 't', 'a')
local tokens = tonumber(s[1]) or burst
local at = tonumber(s[2]) or now
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
else
  now = at
end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
local reset = math.ceil((burst - tokens) / rate)
if not peek then
  redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'a', string.format('%d', now))
  redis.call('PEXPIRE', KEYS[1], math.ceil(reset / 1000) + 1000)
end
local retry = 0
if allowed == 0 then
  retry = math.ceil((1 - tokens) / rate)
end
return {allowed, math.max(0, math.floor(tokens)), reset, retry}
"#;

/// KEYS[1] the prefix of the window counters. ARGV: requests, interval_us, peek.
const FIXED_WINDOW: &str = r#"
local peek = ARGV[3] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local index = math.floor(now / interval)
local key = KEYS[1] .. ':' .. string.format('%d', index)
local reset = (index + 1) * interval - now
local count = tonumber(redis.call('GET', key)) or 0
if count >= limit then
  return {0, 0, reset, reset}
end
if peek then
  return {1, limit - count - 1, reset, 0}
end
count = redis.call('INCR', key)
if count == 1 then
  redis.call('PEXPIRE', key, math.ceil(interval / 1000) + 1000)
end
return {1, limit - count, reset, 0}
"#;

/// KEYS[1] the prefix of the window counters. ARGV: requests, interval_us, peek.
const SLIDING_WINDOW: &str = r#"
local peek = ARGV[3] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local index = math.floor(now / interval)
local key = KEYS[1] .. ':' .. string.format('%d', index)
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. string.format('%d', index - 1))) or 0
local count = tonumber(redis.call('GET', key)) or 0
local into = now - index * interval
local reset = interval - into
local estimate = previous * (1 - into / interval) + count
if estimate + 1 <= limit then
  if peek then
    return {1, math.max(0, math.floor(limit - estimate - 1)), reset, 0}
  end
  count = redis.call('INCR', key)
  if count == 1 then
    redis.call('PEXPIRE', key, 2 * math.ceil(interval / 1000) + 1000)
  end
  return {1, math.max(0, math.floor(limit - estimate - 1)), reset, 0}
end
local room = limit - count - 1
local retry
if previous > 0 and room >= 0 then
  retry = math.max(1, (1 - room / previous) * interval - into)
else
  local w = math.min(1, (limit - 1) / math.max(count, 1))
  retry = reset + (1 - w) * interval
end
return {0, 0, reset, math.ceil(retry)}
"#;
