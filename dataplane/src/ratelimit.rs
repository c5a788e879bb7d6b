//! Rate limiting: one [`RateLimitEngine`] per RateLimitPolicy per snapshot, checked after
//! authentication (keys may name the consumer or a claim) and before the request is
//! forwarded.
//!
//! ```text
//!   request ─ match? ─ key (client IP, header, claim, consumer, route, path)
//!             ├─ Local:  LocalStore (sharded, bounded, kept across snapshots)
//!             └─ Global: Redis script ── unreachable / late ──▶ FailOpen: the same limit
//!                                                              per replica (LocalStore)
//!                                                              FailClosed: 503
//!   admitted: RateLimit-Policy + RateLimit headers on the response
//!   limited:  429 + Retry-After (+ the same headers)
//! ```
//!
//! Counter state lives in [`RateLimitShared`], keyed by the limit's definition, so a new
//! snapshot (any route change) does not hand every client a fresh quota.

pub mod algorithm;
pub mod redis;
pub mod scripts;
pub mod store;

use crate::body::LocalReply;
use crate::errors::ProxyError;
use crate::metrics::{Metrics, RateLimitDecision, RateLimitMetrics};
use crate::request::RequestCtx;
use crate::sanitize::client_ip;
use algorithm::{Outcome, Quota};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use parking_lot::Mutex;
use portico_model::ratelimit::{self as model, KeyPart, RedisAddress, Scope};
use redis::{RedisError, RedisPool, Reply};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::{KeyHasher, LocalStore};
use tokio::time::Instant;

/// Keys a local limit holds per replica at most, unless configured otherwise.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

pub static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");
pub static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");

/// A clock in UNIX microseconds that never goes backwards.
#[derive(Clone, Copy, Debug)]
struct Clock {
    base: Instant,
    base_unix_us: u64,
}

impl Clock {
    fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            base: Instant::now(),
            base_unix_us: u64::try_from(unix.as_micros()).unwrap_or(0),
        }
    }

    fn now_us(&self) -> u64 {
        self.base_unix_us + u64::try_from(self.base.elapsed().as_micros()).unwrap_or(0)
    }
}

/// Limiter state and Redis connections, kept across snapshots.
#[derive(Debug)]
pub struct RateLimitShared {
    stores: Mutex<HashMap<String, Weak<LocalStore>>>,
    redis: Mutex<HashMap<RedisAddress, Arc<RedisPool>>>,
    hasher: KeyHasher,
    clock: Clock,
    max_keys: usize,
}

impl Default for RateLimitShared {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_KEYS)
    }
}

impl RateLimitShared {
    pub fn new(max_keys: usize) -> Self {
        Self {
            stores: Mutex::new(HashMap::new()),
            redis: Mutex::new(HashMap::new()),
            hasher: KeyHasher::default(),
            clock: Clock::new(),
            max_keys,
        }
    }

    /// The store of a limit with this definition, the same one the previous snapshot used.
    fn store(&self, definition: String, quota: Quota) -> Arc<LocalStore> {
        let mut stores = self.stores.lock();
        if let Some(s) = stores.get(&definition).and_then(Weak::upgrade) {
            return s;
        }
        stores.retain(|_, w| w.strong_count() > 0);
        let s = Arc::new(LocalStore::new(quota, self.max_keys));
        stores.insert(definition, Arc::downgrade(&s));
        s
    }

    /// Drops idle keys from every live store every `every`, for as long as `self` lives.
    /// Spawned on the current tokio runtime.
    pub fn start_sweeper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let stores: Vec<Arc<LocalStore>> = shared
                    .stores
                    .lock()
                    .values()
                    .filter_map(Weak::upgrade)
                    .collect();
                let now = shared.clock.now_us();
                for s in stores {
                    s.sweep(now);
                    tokio::task::yield_now().await;
                }
            }
        });
    }

    fn pool(&self, address: &RedisAddress) -> Arc<RedisPool> {
        self.redis
            .lock()
            .entry(address.clone())
            .or_insert_with(|| RedisPool::new(address.clone()))
            .clone()
    }
}

/// The headers that tell a client about its quota.
#[derive(Debug)]
pub struct RateHeaders {
    pub policy: Option<HeaderValue>,
    pub state: Option<HeaderValue>,
    /// Seconds, when the request was refused.
    pub retry_after: Option<u64>,
    /// The limit that refused it (`policy/limit`), for the access log.
    pub refused_by: Option<String>,
}

impl RateHeaders {
    /// Gives each header to `set` (a response's map, or the steps' list).
    pub fn apply(&self, mut set: impl FnMut(http::HeaderName, HeaderValue)) {
        if let Some(p) = &self.policy {
            set(RATELIMIT_POLICY.clone(), p.clone());
        }
        if let Some(s) = &self.state {
            set(RATELIMIT.clone(), s.clone());
        }
        if let Some(r) = self.retry_after {
            set(http::header::RETRY_AFTER, HeaderValue::from(r));
        }
    }
}

#[derive(Debug)]
struct Matcher {
    methods: Vec<Method>,
    path: Option<model::PathMatch>,
    headers: Vec<(http::HeaderName, Option<String>)>,
}

impl Matcher {
    fn new(m: &model::LimitMatch) -> Self {
        Self {
            methods: m
                .methods
                .iter()
                .filter_map(|s| Method::from_bytes(s.as_bytes()).ok())
                .collect(),
            path: m.path.clone(),
            headers: m
                .headers
                .iter()
                .filter_map(|(n, v)| {
                    Some((http::HeaderName::from_bytes(n.as_bytes()).ok()?, v.clone()))
                })
                .collect(),
        }
    }

    fn matches(&self, method: &Method, headers: &HeaderMap, path: &str) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        let path_ok = match &self.path {
            None => true,
            Some(model::PathMatch::Exact(p)) => path == p,
            Some(model::PathMatch::Prefix(p)) => {
                let p = p.trim_end_matches('/');
                p.is_empty()
                    || path
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        };
        path_ok
            && self.headers.iter().all(|(n, v)| match (headers.get(n), v) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(got), Some(want)) => got.as_bytes() == want.as_bytes(),
            })
    }
}

/// A key part, ready for the hot path.
#[derive(Debug)]
enum Part {
    ClientIp,
    Header(http::HeaderName),
    Claim(Vec<String>),
    Consumer,
    Route,
    Path,
}

impl Part {
    fn new(k: &KeyPart) -> Option<Self> {
        Some(match k {
            KeyPart::ClientIp => Part::ClientIp,
            // Compile checked the name; a bad one leaves the part out rather than the limit.
            KeyPart::Header(n) => Part::Header(http::HeaderName::from_bytes(n.as_bytes()).ok()?),
            KeyPart::Claim(p) => Part::Claim(p.clone()),
            KeyPart::Consumer => Part::Consumer,
            KeyPart::Route => Part::Route,
            KeyPart::Path => Part::Path,
        })
    }
}

/// What a Global limit sends Redis besides the key, prepared once per snapshot.
#[derive(Debug)]
struct GlobalLimit {
    /// The prefix of its Redis keys.
    prefix: String,
    /// The script's arguments after the key: requests, interval (µs) and, for a token
    /// bucket, the burst (then the peek flag, per call).
    args: Vec<String>,
}

#[derive(Debug)]
struct LimitEngine {
    name: String,
    quota: Quota,
    key: Vec<Part>,
    matcher: Option<Matcher>,
    /// The limit's own counters (Local), or the per-replica fallback of a Global limit.
    local: Arc<LocalStore>,
    /// Set for a Global limit.
    global: Option<GlobalLimit>,
    /// This limit's `RateLimit-Policy` item.
    policy_item: String,
}

struct GlobalEngine {
    pool: Arc<RedisPool>,
    fail_closed: bool,
    timeout: Duration,
    /// Whether the last Redis call failed (the failure mode is in force).
    degraded: AtomicBool,
}

/// One RateLimitPolicy, ready to count requests.
pub struct RateLimitEngine {
    id: String,
    limits: Vec<LimitEngine>,
    /// 0: the dataplane's `--trusted-hops` (in the [`RequestCtx`]).
    trusted_hops: usize,
    ipv6_prefix_length: u8,
    response_headers: bool,
    global: Option<GlobalEngine>,
    /// The `RateLimit-Policy` value when every limit counts a request (the usual case).
    all_policies: Option<HeaderValue>,
    hasher: KeyHasher,
    clock: Clock,
    metrics: RateLimitMetrics,
    /// Counts requests whose `X-Forwarded-For` could not be used for a ClientIP key.
    forwarded_for_invalid: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for RateLimitEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitEngine")
            .field("id", &self.id)
            .field("limits", &self.limits)
            .finish()
    }
}

impl RateLimitEngine {
    pub fn new(p: &model::RateLimitPolicy, shared: &RateLimitShared, metrics: &Metrics) -> Self {
        let id = p.id.to_string();
        let limits: Vec<LimitEngine> = p
            .limits
            .iter()
            .map(|l| {
                let quota = Quota {
                    algorithm: l.algorithm,
                    requests: u64::from(l.requests),
                    interval_us: l.interval_ms.max(1) * 1000,
                    burst: u64::from(l.burst.max(1)),
                };
                let definition = format!(
                    "{id}/{}/{:?}/{}/{}/{}/{:?}",
                    l.name, l.algorithm, l.requests, l.interval_ms, l.burst, l.key
                );
                let global = (l.scope == Scope::Global).then(|| {
                    // The hash tag keeps a limit's keys in one Redis Cluster slot per key.
                    let fingerprint =
                        ring::digest::digest(&ring::digest::SHA256, definition.as_bytes());
                    let mut args = vec![quota.requests.to_string(), quota.interval_us.to_string()];
                    if quota.algorithm == model::Algorithm::TokenBucket {
                        args.push(quota.burst.to_string());
                    }
                    GlobalLimit {
                        prefix: format!(
                            "portico:rl:{}",
                            crate::util::hex(&fingerprint.as_ref()[..8])
                        ),
                        args,
                    }
                });
                LimitEngine {
                    name: l.name.clone(),
                    quota,
                    key: l.key.iter().filter_map(Part::new).collect(),
                    matcher: l.match_.as_ref().map(Matcher::new),
                    local: shared.store(definition, quota),
                    global,
                    policy_item: format!(
                        "\"{}\";q={};w={}",
                        l.name,
                        l.requests,
                        l.interval_ms.div_ceil(1000).max(1)
                    ),
                }
            })
            .collect();
        let global = p.global.as_ref().and_then(|g| {
            let address = RedisAddress::parse(&g.redis_url).ok()?;
            Some(GlobalEngine {
                pool: shared.pool(&address),
                fail_closed: g.fail_closed,
                timeout: Duration::from_millis(u64::from(g.timeout_ms.max(1))),
                degraded: AtomicBool::new(false),
            })
        });
        let all = limits
            .iter()
            .map(|l| l.policy_item.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let forwarded_for_invalid = metrics.forwarded_for_invalid.clone();
        let metrics = metrics.rate_limit(&id, global.as_ref().map(|g| g.fail_closed));
        Self {
            forwarded_for_invalid,
            id,
            limits,
            trusted_hops: p.trusted_hops as usize,
            ipv6_prefix_length: p.ipv6_prefix_length.clamp(1, 128),
            response_headers: p.response_headers,
            global,
            all_policies: HeaderValue::from_str(&all).ok(),
            hasher: shared.hasher.clone(),
            clock: shared.clock,
            metrics,
        }
    }

    /// Counts `req` against every limit that matches it. `Ok` carries the headers for the
    /// response (when the policy sends them); `Err` the 429 (or 503 when Redis is down and
    /// the policy fails closed). Once a limit refuses, the limits after it are asked without
    /// counting (a refused request uses no quota), so the 429's `Retry-After` is the longest
    /// wait of every limit that would refuse it: a client that waits that long is not
    /// refused again at once by another limit.
    pub async fn check<B>(
        &self,
        req: &Request<B>,
        cx: &RequestCtx,
    ) -> Result<Option<RateHeaders>, Refusal> {
        let path = cx.path(req.uri().path());
        let input = KeyInput {
            headers: req.headers(),
            cx,
            path,
        };
        let mut counted: Vec<(&LimitEngine, Outcome)> = Vec::with_capacity(self.limits.len());
        let mut client: Option<IpAddr> = None;
        let mut fallback = false;
        let mut refused = false;
        for limit in &self.limits {
            if let Some(m) = &limit.matcher
                && !m.matches(req.method(), req.headers(), path)
            {
                continue;
            }
            let peek = refused;
            let local = |client: &mut Option<IpAddr>| {
                let key = self.local_key(limit, &input, client);
                let now = self.clock.now_us();
                if peek {
                    limit.local.peek(key, now)
                } else {
                    limit.local.admit(key, now)
                }
            };
            let mut outcome = match &limit.global {
                None => local(&mut client),
                Some(global) => match self
                    .global_admit(limit, global, &input, &mut client, peek)
                    .await
                {
                    Ok(o) => o,
                    // Already refused: the 429 stands on what is known.
                    Err(_) if peek => continue,
                    Err(e) => {
                        let Some(g) = &self.global else {
                            return Err(Refusal::Unavailable(e.to_string()));
                        };
                        if g.fail_closed {
                            self.metrics.record(RateLimitDecision::Unavailable);
                            return Err(Refusal::Unavailable(e.to_string()));
                        }
                        fallback = true;
                        local(&mut client)
                    }
                },
            };
            if peek && outcome.allowed {
                // Nothing was counted: what is left includes this request's share.
                outcome.remaining += 1;
            }
            refused |= !outcome.allowed;
            counted.push((limit, outcome));
        }
        if refused {
            self.metrics.record(if fallback {
                RateLimitDecision::FallbackLimited
            } else {
                RateLimitDecision::Limited
            });
            let headers = self.headers(&counted, true);
            return Err(Refusal::Limited(headers));
        }
        if counted.is_empty() {
            return Ok(None);
        }
        self.metrics.record(if fallback {
            RateLimitDecision::FallbackAllowed
        } else {
            RateLimitDecision::Allowed
        });
        Ok(self.response_headers.then(|| self.headers(&counted, false)))
    }

    async fn global_admit(
        &self,
        limit: &LimitEngine,
        global: &GlobalLimit,
        input: &KeyInput<'_>,
        client: &mut Option<IpAddr>,
        peek: bool,
    ) -> Result<Outcome, RedisError> {
        let Some(g) = &self.global else {
            return Err(RedisError::Down);
        };
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        self.key_parts(limit, input, client, |part| {
            digest.update(&(part.len() as u64).to_le_bytes());
            digest.update(part);
        });
        let key = format!(
            "{}:{{{}}}",
            global.prefix,
            crate::util::hex(&digest.finish().as_ref()[..16])
        );
        let script = scripts::Script::for_algorithm(limit.quota.algorithm);
        let mut args: Vec<&[u8]> = vec![b"EVALSHA", script.sha1.as_bytes(), b"1", key.as_bytes()];
        args.extend(global.args.iter().map(|a| a.as_bytes()));
        args.push(if peek { b"1" } else { b"0" });
        let mut reply = g.pool.call(&args, g.timeout).await;
        if matches!(&reply, Ok(Reply::Error(e)) if e.starts_with("NOSCRIPT")) {
            // Redis restarted or was flushed: EVAL loads the script again.
            args[0] = b"EVAL";
            args[1] = script.source.as_bytes();
            reply = g.pool.call(&args, g.timeout).await;
        }
        let result = match reply {
            Ok(Reply::Array(Some(v))) if v.len() == 4 => {
                let n = |i: usize| match v[i] {
                    Reply::Integer(n) => Ok(u64::try_from(n).unwrap_or(0)),
                    _ => Err(RedisError::Protocol),
                };
                Ok(Outcome {
                    allowed: n(0)? == 1,
                    remaining: n(1)?,
                    reset_us: n(2)?,
                    retry_after_us: n(3)?,
                })
            }
            Ok(Reply::Error(e)) => Err(RedisError::Server(e)),
            Ok(_) => Err(RedisError::Protocol),
            Err(e) => Err(e),
        };
        self.note_redis(g, result.as_ref().err());
        result
    }

    /// Logs and exports changes between Redis and the failure mode.
    fn note_redis(&self, g: &GlobalEngine, error: Option<&RedisError>) {
        let failing = error.is_some();
        if g.degraded.swap(failing, Ordering::Relaxed) == failing {
            return;
        }
        self.metrics.set_degraded(failing);
        match error {
            Some(e) if g.fail_closed => tracing::warn!(
                policy = %self.id, redis = %g.pool.address(), error = %e,
                "global rate limits unavailable: failing closed, requests are refused (503) until Redis answers"
            ),
            Some(e) => tracing::warn!(
                policy = %self.id, redis = %g.pool.address(), error = %e,
                "global rate limits unavailable: failing open, each replica enforces the limits locally until Redis answers"
            ),
            None => tracing::info!(
                policy = %self.id, redis = %g.pool.address(),
                "Redis answers again: global rate limiting resumed"
            ),
        }
    }

    fn local_key(
        &self,
        limit: &LimitEngine,
        input: &KeyInput<'_>,
        client: &mut Option<IpAddr>,
    ) -> u64 {
        use std::hash::Hasher;
        if limit.key.is_empty() {
            return 0;
        }
        let mut h = self.hasher.start();
        self.key_parts(limit, input, client, |p| {
            h.write_usize(p.len());
            h.write(p);
        });
        h.finish()
    }

    /// Feeds each key part's value to `sink`; a missing value is one tagged marker, so every
    /// request without it shares a counter and no value can pose as "missing".
    fn key_parts(
        &self,
        limit: &LimitEngine,
        input: &KeyInput<'_>,
        client: &mut Option<IpAddr>,
        mut sink: impl FnMut(&[u8]),
    ) {
        let KeyInput { headers, cx, path } = *input;
        const MISSING: &[u8] = b"\x00-";
        for part in &limit.key {
            match part {
                Part::ClientIp => {
                    let hops = match self.trusted_hops {
                        0 => cx.trusted_hops,
                        n => n,
                    };
                    let ip = *client.get_or_insert_with(|| {
                        let (ip, malformed) = client_ip(headers, cx.peer(), hops);
                        if malformed {
                            self.forwarded_for_invalid.inc();
                        }
                        ip
                    });
                    match ip {
                        IpAddr::V4(a) => sink(&a.octets()),
                        IpAddr::V6(a) => {
                            sink(&mask_v6(u128::from(a), self.ipv6_prefix_length).to_be_bytes());
                        }
                    }
                }
                Part::Header(name) => match headers.get(name) {
                    Some(v) => {
                        sink(b"h");
                        sink(v.as_bytes());
                    }
                    None => sink(MISSING),
                },
                Part::Claim(path) => {
                    let value = cx.identity.claims.as_deref().and_then(|c| {
                        let mut v = c.get(path.first()?)?;
                        for p in &path[1..] {
                            v = v.get(p)?;
                        }
                        Some(v)
                    });
                    match value {
                        Some(serde_json::Value::String(s)) => {
                            sink(b"s");
                            sink(s.as_bytes());
                        }
                        Some(other) => {
                            sink(b"j");
                            sink(other.to_string().as_bytes());
                        }
                        None => sink(MISSING),
                    }
                }
                Part::Consumer => match cx.identity.consumer.as_deref() {
                    Some(c) => {
                        sink(b"c");
                        sink(c.as_bytes());
                    }
                    None => sink(MISSING),
                },
                Part::Route => {
                    sink(cx.route.as_deref().unwrap_or_default().as_bytes());
                    sink(&(cx.rule_index as u64).to_le_bytes());
                }
                Part::Path => sink(path.as_bytes()),
            }
        }
    }

    fn headers(&self, counted: &[(&LimitEngine, Outcome)], refused: bool) -> RateHeaders {
        let refused_by = refused
            .then(|| {
                counted
                    .iter()
                    .find(|(_, o)| !o.allowed)
                    .map(|(l, _)| format!("{}/{}", self.id, l.name))
            })
            .flatten();
        let retry_after = refused.then(|| {
            let us = counted
                .iter()
                .filter(|(_, o)| !o.allowed)
                .map(|(_, o)| o.retry_after_us)
                .max()
                .unwrap_or(1_000_000);
            us.div_ceil(1_000_000).max(1)
        });
        if !self.response_headers {
            return RateHeaders {
                policy: None,
                state: None,
                retry_after,
                refused_by,
            };
        }
        let policy = if counted.len() == self.limits.len() {
            self.all_policies.clone()
        } else {
            let items: Vec<&str> = counted
                .iter()
                .map(|(l, _)| l.policy_item.as_str())
                .collect();
            HeaderValue::from_str(&items.join(", ")).ok()
        };
        // `"name";r=remaining;t=reset`, written by hand: it is on every response.
        let mut state = Vec::with_capacity(32 * counted.len());
        for (i, (l, o)) in counted.iter().enumerate() {
            if i > 0 {
                state.extend_from_slice(b", ");
            }
            state.push(b'"');
            state.extend_from_slice(l.name.as_bytes());
            state.extend_from_slice(b"\";r=");
            state.extend_from_slice(crate::util::itoa(o.remaining, &mut [0; 20]));
            state.extend_from_slice(b";t=");
            let reset = o.reset_us.div_ceil(1_000_000);
            state.extend_from_slice(crate::util::itoa(reset, &mut [0; 20]));
        }
        RateHeaders {
            policy,
            // Its own buffer, not a copy.
            state: HeaderValue::from_maybe_shared(bytes::Bytes::from(state)).ok(),
            retry_after,
            refused_by,
        }
    }
}

/// The first `prefix` bits of an IPv6 address, the rest zero.
fn mask_v6(addr: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p if p >= 128 => addr,
        p => addr & !(u128::MAX >> p),
    }
}

/// What a limit's key is read from.
#[derive(Clone, Copy)]
struct KeyInput<'a> {
    headers: &'a HeaderMap,
    cx: &'a RequestCtx,
    /// The path routing matched.
    path: &'a str,
}

/// Why a rate-limit policy did not let a request pass.
#[derive(Debug)]
pub enum Refusal {
    /// Over a limit: 429 with `Retry-After` and the quota headers.
    Limited(RateHeaders),
    /// The store (Redis) is unreachable and the policy fails closed: 503.
    Unavailable(String),
}

impl Refusal {
    pub fn into_error(self) -> ProxyError {
        match self {
            Refusal::Limited(h) => {
                let reason = format!("ratelimit={}", h.refused_by.as_deref().unwrap_or("limited"));
                let mut r =
                    LocalReply::text(StatusCode::TOO_MANY_REQUESTS, reason, "too many requests\n");
                h.apply(|name, value| {
                    r.headers.insert(name, value);
                });
                ProxyError::Denied(Box::new(r))
            }
            Refusal::Unavailable(detail) => {
                tracing::debug!(error = %detail, "rate limit store unavailable; refusing (fail closed)");
                let r = LocalReply::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ratelimit=store_unavailable",
                    "rate limit service unavailable\n",
                )
                .header(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                ProxyError::PolicyUnavailable(Box::new(r))
            }
        }
    }
}

#[cfg(test)]
mod tests;
