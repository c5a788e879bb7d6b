//! The cache as a step of the request path: what a [`CacheEngine`] (one CachePolicy) does
//! before the upstream ([`CacheEngine::lookup`]: answer from the store, wait for another
//! request's answer, or say how to go upstream) and after it ([`CacheEngine::complete`]:
//! store the response while it streams to the client, refresh a revalidated entry, answer
//! stale when the backend failed, invalidate after an unsafe method).
//!
//! The one module of [`crate::cache`] that knows the proxy's types (bodies, errors, the
//! request context); the rules it applies are the leaves'.
//!
//! The key: `scheme://host:port/path[?query]`, then the policy's parts, each after a unit
//! separator (a byte no header value, path or query holds): the route and rule (two routes
//! may match one URL on other headers), the query mode when it filters, the named headers,
//! the consumer. The URL comes first so that purges by URL and prefix see it whole.

use super::coalesce::{Coalescer, Leader, Outcome, Turn};
use super::directives::{RequestDirectives, ResponseDirectives};
use super::freshness::{self, Reuse, Timing, Ttls};
pub use super::purge::Purge;
use super::shared::{Entry, PurgeLog, SharedTier};
use super::storable::{self, Exchange, NotStored, StoreRules};
use super::store::{Found, MemoryStore, Stored};
use super::{CacheStatus, Forward, validation};
use crate::body::{FillSink, Filled, Filling, ProxyBody, RequestBody};
use crate::errors::ProxyError;
use crate::metrics::{CacheMetrics, CacheResult, CacheStoreMetrics, Metrics};
use crate::request::RequestCtx;
use crate::util::ByteBudget;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use portico_model::cache::{CachePolicy, QueryKey, split_host};
use std::sync::Arc;
use std::time::Duration;

/// The name of this cache in `Cache-Status`.
const CACHE_NAME: &str = "Portico";
/// RFC 9211's field.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// Separates the URL from the policy's key parts, and those from each other.
const SEP: char = '\u{1f}';
/// How long a key whose response was not storable skips coalescing.
const REMEMBER_NOT_STORABLE: Duration = Duration::from_secs(10);
/// How many times a request waits for a leader that gave up before it leads itself.
const MAX_WAITS: usize = 3;
/// How long the requests coalesced behind one wait for its body to be stored once its
/// answer began.
const FILL_WAIT: Duration = Duration::from_secs(2);
/// The largest reply the shared tier's Redis connections accept: the largest entry.
const MAX_SHARED_REPLY: usize = 66 << 20;
/// What stores on their way to the shared tiers may hold together: while Redis is slow, the
/// stores beyond it are skipped (the entry stays in the memory tier).
const MAX_QUEUED_SHARED: usize = 64 << 20;

/// The memory tier and coalescing table of one dataplane, shared by every policy and kept
/// across configuration changes.
pub struct CacheShared {
    store: MemoryStore,
    /// What the fills in progress may copy together: as much as the store holds.
    fills: Arc<ByteBudget>,
    /// What stores queued for the shared tiers' Redis may hold together.
    queued: Arc<ByteBudget>,
    coalescer: Arc<Coalescer>,
    metrics: CacheStoreMetrics,
    /// The purges applied, so that the shared tier does not bring back what they removed.
    purges: PurgeLog,
    /// Connections to the shared tiers' Redis, by address.
    redis: parking_lot::Mutex<
        std::collections::HashMap<
            portico_model::ratelimit::RedisAddress,
            Arc<crate::ratelimit::redis::RedisPool>,
        >,
    >,
}

impl std::fmt::Debug for CacheShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheShared")
            .field("store", &self.store)
            .finish()
    }
}

impl CacheShared {
    /// A memory tier of `budget` bytes.
    pub fn new(budget: usize, metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            store: MemoryStore::new(budget),
            fills: ByteBudget::new(budget),
            queued: ByteBudget::new(MAX_QUEUED_SHARED),
            coalescer: Coalescer::new(REMEMBER_NOT_STORABLE),
            metrics: metrics.cache_store.clone(),
            purges: PurgeLog::default(),
            redis: parking_lot::Mutex::default(),
        })
    }

    /// The shared tier of a policy, on connections shared with every policy naming that
    /// Redis; `None` when the URL does not parse (compile checked it).
    fn tier(&self, tier: &portico_model::cache::SharedTier) -> Option<Arc<SharedTier>> {
        let address = portico_model::ratelimit::RedisAddress::parse(&tier.redis_url).ok()?;
        let pool = self
            .redis
            .lock()
            .entry(address.clone())
            .or_insert_with(|| {
                crate::ratelimit::redis::RedisPool::with_max_reply(address, MAX_SHARED_REPLY)
            })
            .clone();
        Some(Arc::new(SharedTier::new(
            pool,
            Duration::from_millis(u64::from(tier.timeout_ms)),
            self.queued.clone(),
        )))
    }

    fn put(&self, key: &str, request: &HeaderMap, stored: Stored, owner: &CacheMetrics) -> bool {
        let before = self.store.evictions();
        let done = self.store.put(key, request, stored, owner);
        self.metrics
            .evictions
            .inc_by(self.store.evictions().saturating_sub(before));
        self.gauges();
        done
    }

    fn gauges(&self) {
        let (objects, bytes) = self.store.usage();
        self.metrics
            .objects
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
        self.metrics
            .bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Removes what a purge names; how many entries went.
    pub fn purge(&self, what: &Purge) -> usize {
        self.purge_scoped(what, &[], freshness::now())
    }

    /// Removes what a purge names among the entries of `routes` (`namespace/name`; empty:
    /// every entry), made at `at` (what the shared tier stored before then is refused).
    pub fn purge_scoped(&self, what: &Purge, routes: &[String], at: u64) -> usize {
        self.purges.record(what, at);
        let scoped =
            |key: &str| routes.is_empty() || routes.iter().any(|r| key.contains(&route_mark(r)));
        let n = match what {
            // The URL with any of the policy's key parts after it (a key always has them).
            Purge::Url(url) => self
                .store
                .purge_prefix_where(&format!("{url}{SEP}"), |k, _| scoped(k)),
            Purge::Prefix(prefix) => self.store.purge_prefix_where(prefix, |k, _| scoped(k)),
            Purge::Tag(tag) => self.store.purge_tag_where(tag, scoped),
        };
        self.metrics.purged.inc_by(n as u64);
        self.gauges();
        n
    }

    /// Every entry for `path` on an origin, whatever its query and key parts (an unsafe
    /// request's invalidation, RFC 9111 §4.4).
    /// Only the entries of the routes `reach` marks go: those cached through the listener the
    /// request came through (a client names whatever origin it likes in `Host`).
    fn invalidate(&self, origin: &str, path: &str, reach: &[String]) -> usize {
        let path = path.split('?').next().unwrap_or(path);
        let url = format!("{origin}{path}");
        // Every query of the path, in the shared tier as well (for those routes only).
        self.purges.record_write(&url, reach, freshness::now());
        let reached =
            |k: &str, _: &[String]| route_mark_of(k).is_some_and(|m| reach.iter().any(|r| r == m));
        let n = self.store.purge_prefix_where(&format!("{url}?"), reached)
            + self
                .store
                .purge_prefix_where(&format!("{url}{SEP}"), reached);
        self.metrics.purged.inc_by(n as u64);
        self.gauges();
        n
    }
}

/// What an unsafe request invalidates once it succeeds (RFC 9111 §4.4), whichever rule
/// serves it: its origin and target, and its method, among the entries of the routes its
/// listener caches for.
#[derive(Debug)]
pub struct Invalidation {
    method: Method,
    origin: String,
    /// The path and query as sent.
    path: String,
    /// The [`route_mark`]s of the routes whose entries it may remove.
    reach: Arc<[String]>,
}

/// What marks a route's entries in their keys.
pub fn route_mark(route: &str) -> String {
    format!("{SEP}r:{route}#")
}

/// The [`route_mark`] in `key`: the part right after its URL (which holds no `SEP`), up to
/// the `#` that ends the route's name (which holds none).
fn route_mark_of(key: &str) -> Option<&str> {
    let rest = &key[key.find(SEP)?..];
    if !rest[SEP.len_utf8()..].starts_with("r:") {
        return None;
    }
    Some(&rest[..=rest.find('#')?])
}

impl Invalidation {
    /// `None` for a safe method, an upgrade, a gRPC call (a procedure call, not a write to
    /// the resource its path names), a request whose origin cannot be told, or nothing in
    /// reach.
    pub fn of(req: &Request<RequestBody>, cx: &RequestCtx, reach: &Arc<[String]>) -> Option<Self> {
        if req.method().is_safe() || cx.upgrade.is_some() || cx.grpc || reach.is_empty() {
            return None;
        }
        Some(Self {
            reach: reach.clone(),
            method: req.method().clone(),
            // Only the origin and path: whatever the query (one a key could not hold
            // included), every entry of the path goes.
            origin: origin(req, cx)?,
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string()),
        })
    }
}

impl CacheShared {
    /// Removes what `inv`'s request made stale, now that it got `resp`: its own URL and the
    /// ones its `Location` and `Content-Location` name on its origin; nothing for an error.
    pub fn invalidate_after(&self, inv: &Invalidation, resp: &Response<ProxyBody>) {
        let authority = inv.origin.split("://").nth(1).unwrap_or("");
        let paths = validation::invalidated(
            &inv.method,
            resp.status().as_u16(),
            &inv.path,
            authority,
            resp.headers(),
        );
        for path in paths {
            self.invalidate(&inv.origin, &path, &inv.reach);
        }
    }
}

/// Marks a response the gateway made one client's own (it pinned a session in it): never
/// stored, whatever the policy says about cookies.
#[derive(Clone, Copy, Debug)]
pub struct Personal;

/// One CachePolicy, ready to apply.
#[derive(Debug)]
pub struct CacheEngine {
    policy: CachePolicy,
    ttls: Ttls,
    rules: StoreRules,
    coalesce: Option<Duration>,
    shared: Arc<CacheShared>,
    /// The Redis tier behind the memory one, if the policy has one.
    tier: Option<Arc<SharedTier>>,
}

/// A CachePolicy as one rule applies it through one parent: its engine (shared by every
/// route the policy applies to) and the metrics of that route.
#[derive(Debug)]
pub struct RuleCache {
    engine: Arc<CacheEngine>,
    metrics: CacheMetrics,
}

impl RuleCache {
    pub fn new(engine: Arc<CacheEngine>, metrics: CacheMetrics) -> Self {
        Self { engine, metrics }
    }

    /// See [`CacheEngine::lookup`].
    pub async fn lookup(&self, req: &mut Request<RequestBody>, cx: &RequestCtx) -> Lookup {
        self.engine.lookup(req, cx, &self.metrics).await
    }

    /// See [`CacheEngine::complete`].
    pub fn complete(
        &self,
        pending: Pending,
        result: Result<Response<ProxyBody>, ProxyError>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        self.engine.complete(pending, result)
    }
}

/// What the cache decided before the upstream.
pub enum Lookup {
    /// The cache answers.
    Answer(Response<ProxyBody>),
    /// The cache answers (stale), and this request refreshes the entry in the background
    /// (stale-while-revalidate); [`CacheEngine::complete`] it with the refresh's result.
    AnswerAndRefresh(Response<ProxyBody>, Box<Pending>),
    /// Go upstream with the request, then [`CacheEngine::complete`].
    Forward(Box<Pending>),
}

/// A request on its way upstream, as the cache will need it back.
#[derive(Debug)]
pub struct Pending {
    /// `None`: the cache does not take part (a method it does not serve).
    key: Option<String>,
    method: Method,
    /// The request's headers as the key and variant read them.
    request: HeaderMap,
    directives: RequestDirectives,
    /// The response may be stored.
    may_store: bool,
    /// The stored entry being revalidated (it may also answer if the backend fails).
    stale: Option<Arc<Stored>>,
    /// The request asked for a validation the cache added (the client's own preconditions
    /// are answered from the entry).
    revalidating: bool,
    /// Credentials the cache is not keyed by came with the request.
    credentialed: bool,
    leader: Option<Leader>,
    status: CacheStatus,
    request_time: u64,
    /// The purge log's sequence when the request started.
    purge_seq: u64,
    /// The route's counters.
    metrics: CacheMetrics,
}

impl Pending {
    fn bypass(method: Method, detail: &'static str, metrics: &CacheMetrics) -> Self {
        metrics.record(CacheResult::Bypass);
        Pending {
            key: None,
            method,
            request: HeaderMap::new(),
            directives: RequestDirectives::default(),
            may_store: false,
            stale: None,
            revalidating: false,
            credentialed: false,
            leader: None,
            status: CacheStatus {
                fwd: Some(Forward::Bypass),
                detail: Some(detail),
                ..CacheStatus::default()
            },
            request_time: 0,
            purge_seq: 0,
            metrics: metrics.clone(),
        }
    }
}

impl CacheEngine {
    pub fn new(policy: &CachePolicy, shared: &Arc<CacheShared>) -> Self {
        Self {
            ttls: Ttls {
                default: policy.default_ttl,
                forced: policy.forced_ttl,
                max: Some(policy.max_ttl),
                heuristic: policy.heuristic,
            },
            rules: StoreRules {
                statuses: policy.statuses.clone(),
                set_cookie: policy.store_set_cookie,
                keyed_by_consumer: policy.key.consumer,
                max_object_bytes: policy.max_object_bytes,
            },
            coalesce: (policy.coalesce_timeout_ms > 0)
                .then(|| Duration::from_millis(policy.coalesce_timeout_ms)),
            tier: policy.shared.as_ref().and_then(|t| shared.tier(t)),
            shared: shared.clone(),
            policy: policy.clone(),
        }
    }

    /// The policy (`namespace/name`).
    pub fn policy_id(&self) -> &portico_model::ObjectRef {
        &self.policy.id
    }

    /// Looks `key` up in the shared tier and, when it holds an entry for this request that
    /// no purge removed, puts it in the memory tier. Whether it did.
    async fn fill_from_shared_tier(
        &self,
        key: &str,
        request: &HeaderMap,
        owner: &CacheMetrics,
    ) -> bool {
        let Some(tier) = &self.tier else {
            return false;
        };
        let Some(entry) = tier.get(key).await else {
            return false;
        };
        let url = url_of(key);
        if entry.url != url
            || !self.shared.purges.allows(
                &entry.url,
                route_mark_of(key).unwrap_or_default(),
                &entry.stored.tags,
                entry.stored.timing.response_time,
            )
        {
            tier.delete(key);
            return false;
        }
        entry.matches(request) && self.shared.put(key, request, entry.stored, owner)
    }

    /// How long the shared tier keeps an entry: its lifetime and stale windows.
    fn shared_ttl(&self, stored: &Stored) -> u64 {
        let d = &stored.directives;
        let window = d
            .stale_while_revalidate
            .or(self.policy.stale_while_revalidate)
            .unwrap_or(0)
            .max(d.stale_if_error.or(self.policy.stale_if_error).unwrap_or(0));
        stored.timing.lifetime.saturating_add(window)
    }

    /// The URL part of the key: scheme, host (lowercase) and port (the one `Host` names,
    /// else the listener's), then the path and the query the policy keys.
    fn url(&self, req: &Request<RequestBody>, cx: &RequestCtx) -> Option<String> {
        let origin = origin(req, cx)?;
        let mut url = format!("{origin}{}", req.uri().path());
        if let Some(q) = req.uri().query().filter(|q| !q.is_empty()) {
            let name = |pair: &str| pair.split('=').next().unwrap_or("").to_string();
            if !matches!(self.policy.key.query, QueryKey::All) && !filterable(q) {
                // A name the backend may decode to another (`%69d`), a `;` some backends
                // split on, a kept name twice: the key could not say what the backend reads.
                return None;
            }
            let kept: Option<Vec<&str>> = match &self.policy.key.query {
                QueryKey::All => {
                    url.push('?');
                    url.push_str(q);
                    None
                }
                QueryKey::None => None,
                QueryKey::Include(names) => Some(
                    q.split('&')
                        .filter(|p| names.binary_search(&name(p)).is_ok())
                        .collect(),
                ),
                QueryKey::Exclude(names) => Some(
                    q.split('&')
                        .filter(|p| !p.is_empty() && names.binary_search(&name(p)).is_err())
                        .collect(),
                ),
            };
            if let Some(mut kept) = kept.filter(|k| !k.is_empty()) {
                kept.sort_unstable();
                url.push('?');
                url.push_str(&kept.join("&"));
            }
        }
        Some(url)
    }

    /// The whole key: the URL, then the route and rule, the query mode, the named headers'
    /// values and the consumer.
    fn key(&self, url: &str, req: &Request<RequestBody>, cx: &RequestCtx) -> String {
        use std::fmt::Write;
        let mut key = String::with_capacity(url.len() + 64);
        key.push_str(url);
        let _ = write!(
            key,
            "{SEP}r:{}#{}",
            cx.route.as_deref().unwrap_or("-"),
            cx.rule_index
        );
        let mode = match &self.policy.key.query {
            QueryKey::All => None,
            QueryKey::None => Some("none"),
            QueryKey::Include(_) => Some("include"),
            QueryKey::Exclude(_) => Some("exclude"),
        };
        if let Some(mode) = mode {
            let _ = write!(key, "{SEP}q:{mode}");
        }
        for name in &self.policy.key.headers {
            let _ = write!(key, "{SEP}h:{name}=");
            let mut first = true;
            for v in req.headers().get_all(name.as_str()) {
                if !first {
                    key.push(',');
                }
                first = false;
                key.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
        }
        if self.policy.key.consumer {
            let _ = write!(
                key,
                "{SEP}c:{}",
                cx.identity.consumer.as_deref().unwrap_or("-")
            );
        }
        key
    }

    /// Whether the request carries credentials the cache is not keyed by: it may only use
    /// and store responses that say they may be shared with them (RFC 9111 §3.5). A cookie
    /// counts as one (the response may depend on it without saying so).
    ///
    /// An identity a policy established counts too (an API key in any header or the query,
    /// external auth), unless the cache is keyed by that consumer: then the entry is that
    /// consumer's own. Keyed by consumer but without one (anonymous access, a token without
    /// the consumer claim), the credentials count: the key's `c:-` is everyone's.
    fn credentialed(&self, cx: &RequestCtx) -> bool {
        let presented = cx.credentials
            || cx.cookie
            || cx.identity.consumer.is_some()
            || cx.identity.claims.is_some();
        presented && !(self.policy.key.consumer && cx.identity.consumer.is_some())
    }

    /// What to do before the upstream. May wait (bounded) for another request for the
    /// same key.
    pub async fn lookup(
        &self,
        req: &mut Request<RequestBody>,
        cx: &RequestCtx,
        metrics: &CacheMetrics,
    ) -> Lookup {
        let method = req.method().clone();
        if cx.upgrade.is_some() {
            return Lookup::Forward(Box::new(Pending::bypass(method, "upgrade", metrics)));
        }
        // Unsafe methods' invalidations are the proxy's, whether the rule caches or not.
        if method != Method::GET && method != Method::HEAD {
            return Lookup::Forward(Box::new(Pending::bypass(method, "method", metrics)));
        }
        let Some(url) = self.url(req, cx) else {
            return Lookup::Forward(Box::new(Pending::bypass(method, "unkeyable", metrics)));
        };
        let key = self.key(&url, req, cx);
        let directives = RequestDirectives::from_headers(req.headers());
        let credentialed = self.credentialed(cx);
        let mut pending = Pending {
            key: Some(key.clone()),
            method: method.clone(),
            // Filled in (the client's headers as sent) only when the request goes upstream:
            // a hit needs no copy.
            request: HeaderMap::new(),
            directives,
            may_store: !directives.no_store && method == Method::GET,
            stale: None,
            revalidating: false,
            credentialed,
            leader: None,
            status: CacheStatus::default(),
            request_time: 0,
            purge_seq: self.shared.purges.seq(),
            metrics: metrics.clone(),
        };
        let mut waits = 0;
        let mut tried_shared = false;
        let mut from_shared = false;
        loop {
            let now = freshness::now();
            let found = self.shared.store.get(&key, req.headers());
            let stored = match found {
                Found::Hit(s) if credentialed && !s.directives.shareable_with_credentials() => {
                    // Not for a request with credentials; nor is its answer for others,
                    // unless it says so.
                    pending.status.fwd = Some(Forward::Bypass);
                    pending.status.detail = Some("authorization");
                    metrics.record(CacheResult::Bypass);
                    pending.request = req.headers().clone();
                    pending.request_time = now;
                    return Lookup::Forward(Box::new(pending));
                }
                Found::Hit(s) => s,
                miss @ (Found::VaryMiss | Found::UriMiss) => {
                    if !tried_shared {
                        tried_shared = true;
                        if self
                            .fill_from_shared_tier(&key, req.headers(), metrics)
                            .await
                        {
                            from_shared = true;
                            continue;
                        }
                    }
                    if directives.only_if_cached {
                        metrics.record(CacheResult::Miss);
                        return Lookup::Answer(only_if_cached_miss());
                    }
                    pending.status.fwd = Some(if matches!(miss, Found::VaryMiss) {
                        Forward::VaryMiss
                    } else {
                        Forward::UriMiss
                    });
                    // Only a request whose answer could be stored takes a turn: a HEAD, a
                    // `no-store` or credentials must not lead the others.
                    let may_lead = pending.may_store && !credentialed && !directives.no_cache;
                    if let (true, Some(limit)) = (may_lead, self.coalesce) {
                        match self.shared.coalescer.turn(&key) {
                            Turn::Lead(leader) => pending.leader = Some(leader),
                            Turn::Bypass => {}
                            Turn::Wait(waiter) if waits < MAX_WAITS => {
                                waits += 1;
                                match waiter.wait(limit).await {
                                    Some(Outcome::Stored | Outcome::Abandoned) => {
                                        pending.status.collapsed = true;
                                        continue;
                                    }
                                    // Not storable, not for others, or too slow: upstream
                                    // alone.
                                    Some(Outcome::NotStored | Outcome::Passed) | None => {
                                        pending.status.collapsed = true;
                                    }
                                }
                            }
                            Turn::Wait(_) => {}
                        }
                    }
                    pending.request = req.headers().clone();
                    if may_lead {
                        strip_preconditions(req.headers_mut());
                    }
                    metrics.record(CacheResult::Miss);
                    pending.request_time = freshness::now();
                    return Lookup::Forward(Box::new(pending));
                }
            };
            let reuse = freshness::reuse(
                &stored.directives,
                &stored.timing,
                &directives,
                self.policy.stale_while_revalidate,
                now,
            );
            match reuse {
                Reuse::Fresh | Reuse::StaleAccepted => {
                    let fresh = reuse == Reuse::Fresh;
                    metrics.record(if pending.status.collapsed {
                        CacheResult::Coalesced
                    } else if fresh {
                        CacheResult::Hit
                    } else {
                        CacheResult::Stale
                    });
                    let status = CacheStatus {
                        hit: true,
                        collapsed: pending.status.collapsed,
                        ttl: Some(stored.timing.ttl(now)),
                        detail: if !fresh {
                            Some("max-stale")
                        } else if from_shared {
                            Some("shared")
                        } else {
                            None
                        },
                        ..CacheStatus::default()
                    };
                    return Lookup::Answer(answer(&stored, &method, req.headers(), &status, now));
                }
                Reuse::StaleWhileRevalidate => {
                    metrics.record(CacheResult::Stale);
                    let status = CacheStatus {
                        hit: true,
                        ttl: Some(stored.timing.ttl(now)),
                        detail: Some("stale-while-revalidate"),
                        ..CacheStatus::default()
                    };
                    let resp = answer(&stored, &method, req.headers(), &status, now);
                    // One refresh per key at a time: a request that finds one under way
                    // just answers.
                    return match self.shared.coalescer.turn(&key) {
                        Turn::Lead(leader) => {
                            pending.request = req.headers().clone();
                            pending.leader = Some(leader);
                            pending.method = Method::GET;
                            pending.may_store = !directives.no_store;
                            *req.method_mut() = Method::GET;
                            set_validators(req.headers_mut(), &stored);
                            pending.revalidating = true;
                            pending.status.fwd = Some(Forward::Stale);
                            pending.stale = Some(stored);
                            pending.request_time = now;
                            Lookup::AnswerAndRefresh(resp, Box::new(pending))
                        }
                        Turn::Wait(_) | Turn::Bypass => Lookup::Answer(resp),
                    };
                }
                Reuse::Revalidate | Reuse::MustRevalidate => {
                    if directives.only_if_cached {
                        metrics.record(CacheResult::Miss);
                        return Lookup::Answer(only_if_cached_miss());
                    }
                    // Concurrent requests for an entry gone stale make one revalidation: the
                    // others wait for it and are answered from the refreshed entry. Not for
                    // an entry stored `no-cache` or without a lifetime (stale again once
                    // refreshed, so a refresh would not answer the others) nor for a client
                    // asking for its own validation.
                    let may_lead = method == Method::GET
                        && !directives.no_store
                        && !directives.no_cache
                        && !credentialed
                        && !stored.directives.no_cache
                        && stored.timing.lifetime > 0;
                    if let (true, Some(limit)) = (may_lead, self.coalesce) {
                        match self.shared.coalescer.turn(&key) {
                            Turn::Lead(leader) => pending.leader = Some(leader),
                            Turn::Wait(waiter) if waits < MAX_WAITS => {
                                waits += 1;
                                pending.status.collapsed = true;
                                if let Some(Outcome::Stored | Outcome::Abandoned) =
                                    waiter.wait(limit).await
                                {
                                    continue;
                                }
                            }
                            Turn::Wait(_) | Turn::Bypass => {}
                        }
                    }
                    pending.status.fwd = Some(if directives.no_cache {
                        Forward::Request
                    } else {
                        Forward::Stale
                    });
                    pending.request = req.headers().clone();
                    set_validators(req.headers_mut(), &stored);
                    pending.revalidating = true;
                    pending.may_store = !directives.no_store;
                    pending.stale = Some(stored);
                    pending.request_time = now;
                    return Lookup::Forward(Box::new(pending));
                }
            }
        }
    }

    /// The client's answer once the upstream answered (or failed): stored while it
    /// streams when it may be, an entry refreshed by a 304, a stale answer for a failure
    /// when the entry allows it.
    pub fn complete(
        &self,
        mut pending: Pending,
        result: Result<Response<ProxyBody>, ProxyError>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let now = freshness::now();
        let Some(key) = pending.key.take() else {
            return result.map(|r| with_status(r, &pending.status));
        };
        let failed = match &result {
            Err(_) => true,
            Ok(r) => r.status().is_server_error(),
        };
        if failed {
            if let Some(stale) = pending.stale.as_ref().filter(|s| {
                freshness::stale_if_error(&s.directives, &s.timing, self.policy.stale_if_error, now)
            }) {
                pending.metrics.record(CacheResult::Stale);
                let status = CacheStatus {
                    hit: true,
                    fwd_status: result.as_ref().ok().map(|r| r.status().as_u16()),
                    ttl: Some(stale.timing.ttl(now)),
                    detail: Some("stale-if-error"),
                    ..CacheStatus::default()
                };
                if let Some(l) = pending.leader.take() {
                    l.finish(Outcome::Passed);
                }
                return Ok(answer(
                    stale,
                    &pending.method,
                    &pending.request,
                    &status,
                    now,
                ));
            }
            // A 5xx or a failure may be this request's doing: nothing is remembered.
            if let Some(l) = pending.leader.take() {
                l.finish(Outcome::Passed);
            }
            return result.map(|r| {
                let mut status = pending.status.clone();
                status.fwd_status = Some(r.status().as_u16());
                with_status(r, &status)
            });
        }
        let Ok(resp) = result else {
            return result;
        };
        let code = resp.status().as_u16();
        pending.status.fwd_status = Some(code);
        if code == 304
            && let Some(stale) = pending.stale.clone()
            && pending.revalidating
        {
            return Ok(self.refreshed(&key, pending, &stale, resp, now));
        }
        self.store_while_streaming(key, pending, resp, now)
    }

    /// An entry the backend confirmed (304): its headers refreshed, stored again, and the
    /// client answered from it.
    fn refreshed(
        &self,
        key: &str,
        mut pending: Pending,
        stale: &Stored,
        not_modified: Response<ProxyBody>,
        now: u64,
    ) -> Response<ProxyBody> {
        let mut headers = stale.headers.clone();
        let applies =
            validation::refresh(&mut headers, not_modified.headers(), self.rules.set_cookie);
        let directives = ResponseDirectives::from_headers(&headers);
        let listed = self.rules.statuses.contains(&stale.status.as_u16());
        let lifetime = freshness::lifetime(
            stale.status.as_u16(),
            &headers,
            &directives,
            &self.ttls,
            listed,
            now,
        );
        let x = Exchange {
            method: &Method::GET,
            request: &pending.request,
            request_directives: &pending.directives,
            status: stale.status.as_u16(),
            response: &headers,
            response_directives: &directives,
            lifetime,
            length: Some(stale.body.len() as u64),
        };
        let storable = storable::storable(&x, &self.rules);
        let entry = Stored {
            status: stale.status,
            headers,
            body: stale.body.clone(),
            directives,
            timing: Timing::new(
                not_modified.headers(),
                pending.request_time,
                now,
                lifetime.unwrap_or(0),
            ),
            vary: stale.vary.clone(),
            tags: super::store::tags(&stale.headers),
        };
        let mut status = pending.status.clone();
        let url = url_of(key);
        let unpurged = self.shared.purges.allows_since(
            url,
            route_mark_of(key).unwrap_or_default(),
            &entry.tags,
            pending.purge_seq,
        );
        if applies && storable.is_ok() && pending.may_store && unpurged {
            if let Some(tier) = &self.tier {
                let ttl = self.shared_ttl(&entry);
                tier.put(key, &shared_entry(key, &pending.request, &entry), ttl);
            }
            status.stored = self
                .shared
                .put(key, &pending.request, entry.clone(), &pending.metrics);
        } else if !applies || storable.is_err() {
            // What is stored no longer stands: the next request asks the backend.
            self.shared.store.purge_key(key);
        }
        if let Some(l) = pending.leader.take() {
            l.finish(if status.stored {
                Outcome::Stored
            } else {
                Outcome::Passed
            });
        }
        pending.metrics.record(CacheResult::Revalidated);
        status.ttl = Some(entry.timing.ttl(now));
        answer(&entry, &pending.method, &pending.request, &status, now)
    }

    /// A response from upstream, stored as it streams to the client when it may be.
    fn store_while_streaming(
        &self,
        key: String,
        mut pending: Pending,
        resp: Response<ProxyBody>,
        now: u64,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (parts, body) = resp.into_parts();
        let code = parts.status.as_u16();
        let directives = ResponseDirectives::from_headers(&parts.headers);
        let listed = self.rules.statuses.contains(&code);
        let lifetime =
            freshness::lifetime(code, &parts.headers, &directives, &self.ttls, listed, now);
        let length = http_body::Body::size_hint(&body).exact();
        let x = Exchange {
            method: &pending.method,
            request: &pending.request,
            request_directives: &pending.directives,
            status: code,
            response: &parts.headers,
            response_directives: &directives,
            lifetime,
            length,
        };
        let mut verdict = storable::storable(&x, &self.rules);
        if verdict.is_ok() && parts.extensions.get::<Personal>().is_some() {
            verdict = Err(NotStored::SetCookie);
        }
        if verdict.is_ok() && pending.credentialed && !directives.shareable_with_credentials() {
            verdict = Err(NotStored::Authorization);
        }
        if !pending.may_store && verdict.is_ok() {
            verdict = Err(NotStored::NoStore);
        }
        let mut status = pending.status.clone();
        let vary = storable::vary_names(&parts.headers).unwrap_or_default();
        match verdict {
            Err(why) => {
                if let Some(l) = pending.leader.take() {
                    l.finish(match why {
                        // What the leading request did, not what the response is; and an
                        // error status, which the request may have provoked.
                        NotStored::Authorization | NotStored::Method => Outcome::Passed,
                        NotStored::NoStore if !directives.no_store => Outcome::Passed,
                        _ if code >= 400 => Outcome::Passed,
                        _ => Outcome::NotStored,
                    });
                }
                status.detail = Some(why.as_str());
                Ok(with_status(Response::from_parts(parts, body), &status))
            }
            Ok(()) => {
                status.stored = true;
                status.ttl = lifetime.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
                let entry = Stored {
                    status: parts.status,
                    headers: parts.headers.clone(),
                    body: bytes::Bytes::new(),
                    directives,
                    timing: Timing::new(
                        &parts.headers,
                        pending.request_time,
                        now,
                        lifetime.unwrap_or(0),
                    ),
                    vary,
                    tags: super::store::tags(&parts.headers),
                };
                let shared = self.shared.clone();
                let metrics = pending.metrics.clone();
                // The others wait for this fill at most FILL_WAIT: a client that reads
                // slowly (or not at all) must not hold every request for the key.
                let leader = Arc::new(parking_lot::Mutex::new(pending.leader.take()));
                if leader.lock().is_some() {
                    let l = leader.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(FILL_WAIT).await;
                        if let Some(l) = l.lock().take() {
                            l.finish(Outcome::Passed);
                        }
                    });
                }
                let request = std::mem::take(&mut pending.request);
                let seq = pending.purge_seq;
                let tier = self.tier.clone().map(|t| (t, self.shared_ttl(&entry)));
                let sink: FillSink = Box::new(move |filled| {
                    let outcome = match filled {
                        Filled::Whole(body) => {
                            let n = body.len();
                            let stored = Stored { body, ..entry };
                            let url = url_of(&key);
                            // A purge that came while it was on its way wins.
                            let mark = route_mark_of(&key).unwrap_or_default();
                            let purged = !shared.purges.allows_since(url, mark, &stored.tags, seq);
                            if let Some((tier, ttl)) = tier.filter(|_| !purged) {
                                tier.put(&key, &shared_entry(&key, &request, &stored), ttl);
                            }
                            if !purged && shared.put(&key, &request, stored, &metrics) {
                                metrics.stored(n);
                                Outcome::Stored
                            } else {
                                Outcome::NotStored
                            }
                        }
                        Filled::TooLarge => Outcome::NotStored,
                        // Room may come back any moment: not remembered as unstorable.
                        Filled::NoRoom | Filled::Failed => Outcome::Passed,
                    };
                    if let Some(l) = leader.lock().take() {
                        l.finish(outcome);
                    }
                });
                let limit = usize::try_from(self.rules.max_object_bytes).unwrap_or(usize::MAX);
                let body = ProxyBody::Filling(Box::new(Filling::new(
                    body,
                    limit,
                    self.shared.fills.clone(),
                    sink,
                )));
                Ok(with_status(Response::from_parts(parts, body), &status))
            }
        }
    }
}

/// Whether a query's parameters can be filtered into a key that means what the backend
/// reads: names as plain text (no `%` or `+` a backend would decode), no `;` (some backends
/// split on it as on `&`), and no name twice (backends differ on which value wins).
fn filterable(query: &str) -> bool {
    if query.contains(';') {
        return false;
    }
    let mut names: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split('=').next().unwrap_or(""))
        .collect();
    if names.iter().any(|n| n.contains(['%', '+'])) {
        return false;
    }
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    names.len() == n
}

/// `scheme://host:port` of a request: the host lowercased, the port as the client named it
/// in `Host` (the backend sees that Host, and may build URLs from it), else the listener's.
fn origin(req: &Request<RequestBody>, cx: &RequestCtx) -> Option<String> {
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    let (host, port) = split_host(authority);
    let port = match port {
        Some(p) => p.parse::<u16>().ok()?,
        None => cx.down.local_port,
    };
    Some(format!("{}://{}:{}", cx.down.scheme, host, port))
}

/// The URL part of a key (what purges by URL and prefix, and the shared tier, read).
fn url_of(key: &str) -> &str {
    key.split(SEP).next().unwrap_or(key)
}

/// What the shared tier keeps of a stored response: it, its URL and its variant.
fn shared_entry(key: &str, request: &HeaderMap, stored: &Stored) -> Entry {
    Entry {
        url: url_of(key).to_string(),
        variant: super::variant::Variant::of(request, &stored.vary)
            .values()
            .to_vec(),
        stored: stored.clone(),
    }
}

/// The preconditions a client sent, removed from a request that fills the cache: the
/// backend's answer must be the whole response, for every client to be served from it.
fn strip_preconditions(headers: &mut HeaderMap) {
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
    ] {
        headers.remove(name);
    }
}

/// The request revalidates `stored`: its validators replace the client's preconditions.
fn set_validators(headers: &mut HeaderMap, stored: &Stored) {
    strip_preconditions(headers);
    for (name, value) in validation::revalidation_headers(&stored.headers) {
        headers.insert(name, value);
    }
}

/// 504 for `only-if-cached` with nothing usable stored (RFC 9111 §5.2.1.7).
fn only_if_cached_miss() -> Response<ProxyBody> {
    let mut r = crate::body::text_response(
        StatusCode::GATEWAY_TIMEOUT,
        "nothing stored for this request (only-if-cached)\n".to_string(),
    );
    let status = CacheStatus {
        fwd: Some(Forward::UriMiss),
        detail: Some("only-if-cached"),
        ..CacheStatus::default()
    };
    append_status(r.headers_mut(), &status);
    r
}

/// The client's answer from a stored response: a 304 when its preconditions hold, the
/// headers alone for a HEAD, with its `Age` and our `Cache-Status`.
fn answer(
    stored: &Stored,
    method: &Method,
    request: &HeaderMap,
    status: &CacheStatus,
    now: u64,
) -> Response<ProxyBody> {
    let not_modified =
        validation::not_modified(method, request, stored.status.as_u16(), &stored.headers);
    let (code, mut headers, body) = if not_modified {
        (
            StatusCode::NOT_MODIFIED,
            validation::not_modified_headers(&stored.headers),
            ProxyBody::empty(),
        )
    } else if *method == Method::HEAD {
        (stored.status, stored.headers.clone(), ProxyBody::empty())
    } else {
        (
            stored.status,
            stored.headers.clone(),
            ProxyBody::from(stored.body.clone()),
        )
    };
    headers.insert(
        header::AGE,
        HeaderValue::from(stored.timing.current_age(now)),
    );
    append_status(&mut headers, status);
    let mut resp = Response::new(body);
    *resp.status_mut() = code;
    *resp.headers_mut() = headers;
    resp
}

fn with_status(mut resp: Response<ProxyBody>, status: &CacheStatus) -> Response<ProxyBody> {
    append_status(resp.headers_mut(), status);
    resp
}

/// Our entry comes last (RFC 9211 §2: each cache appends its own).
fn append_status(headers: &mut HeaderMap, status: &CacheStatus) {
    if let Ok(v) = HeaderValue::from_str(&status.header_value(CACHE_NAME)) {
        headers.append(&CACHE_STATUS, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(key: &str) -> CacheEngine {
        let metrics = Metrics::default();
        let policy = CachePolicy {
            id: portico_model::ObjectRef::new("default", "p"),
            key: serde_json::from_str(key).expect("key"),
            ..CachePolicy::default()
        };
        CacheEngine::new(&policy, &CacheShared::new(1 << 20, &metrics))
    }

    fn request(uri: &str, host: &str) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::Empty);
        *req.uri_mut() = uri.parse().expect("uri");
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_str(host).expect("host"));
        req
    }

    fn ctx(scheme: &'static str, port: u16) -> RequestCtx {
        let down =
            crate::request::Downstream::new(([127, 0, 0, 1], 5000).into(), port, scheme, None);
        let mut cx = RequestCtx::new(HeaderValue::from_static("id"), down, 0, false);
        cx.route = Some("default/r".into());
        cx
    }

    #[test]
    fn a_key_s_route_mark_is_read_exactly() {
        let e = engine(r#"{"query": {"type": "all"}}"#);
        let mut cx = ctx("https", 443);
        cx.route = Some("default/r".into());
        let req = request("/p?a=1", "shop.test");
        let url = e.url(&req, &cx).expect("a host");
        let key = e.key(&url, &req, &cx);
        assert_eq!(route_mark_of(&key), Some(route_mark("default/r").as_str()));
        assert_eq!(route_mark_of("https://shop.test:443/p"), None);
        assert_eq!(route_mark_of("https://shop.test:443/p\u{1f}q:x#"), None);
    }

    #[test]
    fn a_filtered_query_is_keyed_only_when_the_backend_reads_it_the_same() {
        let include = engine(r#"{"query": {"type": "include", "names": ["id"]}}"#);
        let cx = ctx("http", 80);
        for uri in [
            "/a?id=1&%69d=2",
            "/a?id=1;id=2",
            "/a?id=1&id=2",
            "/a?id=1&i+d=2",
        ] {
            assert!(include.url(&request(uri, "h"), &cx).is_none(), "{uri}");
        }
        assert!(include.url(&request("/a?id=1&page=2", "h"), &cx).is_some());
        // All of it as sent: nothing to tell apart.
        let all = engine(r#"{"query": {"type": "all"}}"#);
        assert!(all.url(&request("/a?id=1;id=2", "h"), &cx).is_some());
    }

    #[test]
    fn credentials_count_unless_the_key_holds_the_consumer_they_prove() {
        let plain = engine(r#"{"query": {"type": "all"}}"#);
        let by_consumer = engine(r#"{"query": {"type": "all"}, "consumer": true}"#);
        let mut cx = ctx("http", 80);
        assert!(!plain.credentialed(&cx));
        // An API key a policy checked in some header: an identity, so credentials.
        cx.identity.consumer = Some("alice".into());
        assert!(plain.credentialed(&cx));
        assert!(!by_consumer.credentialed(&cx));
        // Keyed by consumer, but nobody authenticated: `c:-` is everyone's.
        cx.identity.consumer = None;
        cx.credentials = true;
        assert!(by_consumer.credentialed(&cx));
    }

    #[test]
    fn the_key_always_holds_scheme_host_port_and_path_then_the_policy_s_parts() {
        let all = engine(r#"{"query": {"type": "all"}}"#);
        let key = |e: &CacheEngine, uri: &str, host: &str, scheme: &'static str, port: u16| {
            let req = request(uri, host);
            let cx = ctx(scheme, port);
            let url = e.url(&req, &cx).expect("a host");
            e.key(&url, &req, &cx)
        };
        let base = key(&all, "/a?x=1&y=2", "Shop.test", "http", 80);
        assert_eq!(base, "http://shop.test:80/a?x=1&y=2\u{1f}r:default/r#0");
        for (uri, host, scheme, port) in [
            ("/a?x=1&y=2", "shop.test", "https", 80),
            ("/a?x=1&y=2", "shop.test", "http", 8080),
            ("/a?x=1&y=2", "other.test", "http", 80),
            ("/b?x=1&y=2", "shop.test", "http", 80),
            ("/a?y=2&x=1", "shop.test", "http", 80),
        ] {
            assert_ne!(
                key(&all, uri, host, scheme, port),
                base,
                "{scheme}://{host}:{port}{uri}"
            );
        }
        // The port a client names in Host is in the key (the backend sees it); the
        // listener's stands for none.
        assert_eq!(key(&all, "/a?x=1&y=2", "shop.test:80", "http", 80), base);
        assert_ne!(key(&all, "/a?x=1&y=2", "shop.test:1337", "http", 80), base);
        let none = engine(r#"{"query": {"type": "none"}}"#);
        assert_eq!(
            key(&none, "/a?x=1", "h", "http", 80),
            key(&none, "/a?x=2", "h", "http", 80)
        );
        let include = engine(r#"{"query": {"type": "include", "names": ["id", "page"]}}"#);
        assert_eq!(
            key(&include, "/a?utm=1&page=2&id=3", "h", "http", 80),
            key(&include, "/a?id=3&page=2", "h", "http", 80)
        );
        assert_ne!(
            key(&include, "/a?id=3", "h", "http", 80),
            key(&include, "/a?id=4", "h", "http", 80)
        );
        let exclude = engine(
            r#"{"query": {"type": "exclude", "names": ["utm"]}, "headers": ["x-tenant"], "consumer": true}"#,
        );
        let k = key(&exclude, "/a?utm=1&b=2", "h", "http", 80);
        assert!(k.starts_with("http://h:80/a?b=2\u{1f}"), "{k}");
        assert!(k.ends_with("\u{1f}h:x-tenant=\u{1f}c:-"), "{k}");
    }
}
