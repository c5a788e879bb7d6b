//! Prometheus metrics. Label cardinality is bounded by configuration: request series are
//! labelled with the Gateway (`namespace/name`), the listener and the HTTPRoute
//! (`namespace/name`; `none` when nothing matched), the backend label is a Service port a
//! route sends to (`namespace/name:port`), `code_class` one of five status classes, `reason`
//! a fixed set. A route costs 5 request series and 15 histogram series per listener it is
//! attached to; a backend 5 + 15 + its errors; a listener certificate one gauge.
//!
//! Each route candidate holds its listener's counter and histogram handles, taken once when
//! the tables are built, so the hot path increments atomics and never takes the family
//! lock. The latency histogram is our own: prometheus-client's takes a write lock per
//! observation.

use portico_model::BackendId;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    code_class: &'static str,
    #[prometheus(flatten)]
    at: RouteSeries,
}

/// Where a route's requests are counted: the Gateway (`namespace/name`) and listener they
/// came through and the HTTPRoute (`namespace/name`). A route attached to two listeners has
/// two sets of series. Requests no route took are `gateway="", listener="", route="none"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RouteSeries {
    pub gateway: String,
    pub listener: String,
    pub route: String,
}

impl RouteSeries {
    pub fn new(gateway: &str, listener: &str, route: &str) -> Self {
        Self {
            gateway: gateway.to_string(),
            listener: listener.to_string(),
            route: route.to_string(),
        }
    }

    /// The series of requests that matched no route.
    pub fn unmatched() -> Self {
        Self::new("", "", "none")
    }
}

/// A listener certificate: the Gateway (`namespace/name`), the listener and the Secret
/// (`namespace/name`) it came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CertificateSeries {
    pub gateway: String,
    pub listener: String,
    pub secret: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    backend: String,
    code_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EncodingLabel {
    encoding: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    backend: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    backend: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverloadLabels {
    backend: String,
    /// The circuit-breaker limit: `maxRequests`, `maxRetries`, `maxConnections` or
    /// `maxPendingRequests`.
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthCheckLabels {
    backend: String,
    /// `passed` or `failed`.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// Why a request to a backend got no answer (`portico_upstream_errors_total{reason}`).
pub const UPSTREAM_ERRORS: [&str; 7] = [
    "no_endpoints",
    "connect_refused",
    "connect_timeout",
    "connect_reset",
    "connect_error",
    "timeout",
    "failed",
];

/// One label, `reason`, with a value from a fixed set chosen by the code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    policy: String,
    decision: &'static str,
}

/// What an AuthPolicy decided about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthDecision {
    /// Authenticated (and allowed by the rules, if any).
    Allowed,
    /// No credentials, let through by `allowAnonymous` (and the rules).
    Anonymous,
    /// 401: no or invalid credentials.
    Unauthenticated,
    /// 403: authenticated, not allowed by the rules.
    Forbidden,
    /// The external service said no.
    Denied,
    /// External auth or introspection failed (fail closed).
    Unavailable,
    /// The policy could not be compiled.
    Invalid,
    /// Refused at once: too many password verifications or auth service calls in flight.
    Busy,
    /// Refused at once: the client failed password verification too often lately.
    Throttled,
}

const DECISIONS: [(AuthDecision, &str); 9] = [
    (AuthDecision::Allowed, "allowed"),
    (AuthDecision::Anonymous, "anonymous"),
    (AuthDecision::Unauthenticated, "unauthenticated"),
    (AuthDecision::Forbidden, "forbidden"),
    (AuthDecision::Denied, "denied"),
    (AuthDecision::Unavailable, "unavailable"),
    (AuthDecision::Invalid, "invalid"),
    (AuthDecision::Busy, "busy"),
    (AuthDecision::Throttled, "throttled"),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitLabels {
    policy: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DegradedLabels {
    policy: String,
    mode: &'static str,
}

/// What a RateLimitPolicy decided about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitDecision {
    Allowed,
    /// 429.
    Limited,
    /// Redis unreachable, admitted by the per-replica fallback (FailOpen).
    FallbackAllowed,
    /// Redis unreachable, refused by the per-replica fallback.
    FallbackLimited,
    /// Redis unreachable and the policy fails closed: 503.
    Unavailable,
}

const RATE_DECISIONS: [(RateLimitDecision, &str); 5] = [
    (RateLimitDecision::Allowed, "allowed"),
    (RateLimitDecision::Limited, "limited"),
    (RateLimitDecision::FallbackAllowed, "fallback_allowed"),
    (RateLimitDecision::FallbackLimited, "fallback_limited"),
    (RateLimitDecision::Unavailable, "unavailable"),
];

/// One rate-limit policy's counters, and the gauge that says whether its global limits are
/// in their failure mode.
#[derive(Clone, Debug)]
pub struct RateLimitMetrics {
    decisions: [Counter; 5],
    degraded: Option<Gauge>,
}

impl RateLimitMetrics {
    pub fn record(&self, d: RateLimitDecision) {
        let i = RATE_DECISIONS
            .iter()
            .position(|(x, _)| *x == d)
            .unwrap_or(0);
        self.decisions[i].inc();
    }

    pub fn set_degraded(&self, on: bool) {
        if let Some(g) = &self.degraded {
            g.set(i64::from(on));
        }
    }
}

/// One policy's decision counters, taken once per snapshot.
#[derive(Clone, Debug)]
pub struct AuthMetrics([Counter; 9]);

impl AuthMetrics {
    pub fn record(&self, d: AuthDecision) {
        if let Some(i) = DECISIONS.iter().position(|(x, _)| *x == d) {
            self.0[i].inc();
        }
    }
}

/// Upper bounds in µs (1 ms to 10 s in 1-2.5-5 steps), then +Inf: twelve, so a route or
/// backend costs fifteen histogram series (with sum and count).
const BOUNDS_US: [u64; 12] = [
    1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];
const BUCKETS: usize = BOUNDS_US.len();

/// A latency histogram updated with relaxed atomics only.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram(Arc<LatencyCells>);

#[derive(Debug, Default)]
struct LatencyCells {
    /// Per-bucket (not cumulative) counts; the last is +Inf.
    buckets: [AtomicU64; BUCKETS + 1],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.iter().position(|b| us <= *b).unwrap_or(BUCKETS);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut buckets = Vec::with_capacity(BUCKETS + 1);
        for (i, cell) in self.0.buckets.iter().enumerate() {
            // The encoder writes +Inf for f64::MAX and accumulates the counts itself.
            let upper = BOUNDS_US.get(i).map_or(f64::MAX, |b| *b as f64 / 1e6);
            buckets.push((upper, cell.load(Ordering::Relaxed)));
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// What the cache did for a request (RFC 9211's vocabulary, folded to a few values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    /// Answered from the cache, fresh.
    Hit,
    /// Answered from the cache, stale (stale-while-revalidate, stale-if-error, max-stale).
    Stale,
    /// Not stored (or not for this variant): forwarded.
    Miss,
    /// Stored but stale, and the backend confirmed it (304).
    Revalidated,
    /// Waited for another request's answer for the same key.
    Coalesced,
    /// Not looked up (a method the cache does not serve, credentials it is not keyed by,
    /// `no-store`).
    Bypass,
}

const CACHE_RESULTS: [(CacheResult, &str); 6] = [
    (CacheResult::Hit, "hit"),
    (CacheResult::Stale, "stale"),
    (CacheResult::Miss, "miss"),
    (CacheResult::Revalidated, "revalidated"),
    (CacheResult::Coalesced, "coalesced"),
    (CacheResult::Bypass, "bypass"),
];

/// Where a cache's work is counted: a route as reached through a listener, and the
/// CachePolicy applied there (`namespace/name`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CacheSeries {
    pub policy: String,
    // Last: the derive encodes a flattened set only after the other labels.
    #[prometheus(flatten)]
    pub at: RouteSeries,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: &'static str,
    #[prometheus(flatten)]
    at: CacheSeries,
}

/// The counters and gauges of one CachePolicy on one route, taken once per configuration.
/// Cheap to clone (one `Arc`): a request on its way upstream and each stored entry hold one,
/// so that what it stores, and what evicts it, is counted where it came from.
#[derive(Clone, Debug, Default)]
pub struct CacheMetrics(Arc<CacheCounters>);

#[derive(Debug, Default)]
struct CacheCounters {
    results: [Counter; 6],
    stored: Counter,
    stored_bytes: Counter,
    objects: Gauge,
    bytes: Gauge,
    evictions: Counter,
}

impl CacheMetrics {
    pub fn record(&self, r: CacheResult) {
        let i = CACHE_RESULTS.iter().position(|(x, _)| *x == r).unwrap_or(0);
        self.0.results[i].inc();
    }

    /// A response stored, of `bytes` body bytes.
    pub fn stored(&self, bytes: usize) {
        self.0.stored.inc();
        self.0.stored_bytes.inc_by(bytes as u64);
    }

    /// An entry of `cost` bytes now held in the memory tier.
    pub fn held(&self, cost: usize) {
        self.0.objects.inc();
        self.0.bytes.inc_by(i64::try_from(cost).unwrap_or(i64::MAX));
    }

    /// An entry of `cost` bytes gone from the memory tier (replaced, purged or evicted).
    pub fn released(&self, cost: usize) {
        self.0.objects.dec();
        self.0.bytes.dec_by(i64::try_from(cost).unwrap_or(i64::MAX));
    }

    /// An entry evicted to make room (it is also [`Self::released`]).
    pub fn evicted(&self) {
        self.0.evictions.inc();
    }
}

/// The memory tier's gauges, shared by every policy.
#[derive(Clone, Debug, Default)]
pub struct CacheStoreMetrics {
    pub objects: Gauge,
    pub bytes: Gauge,
    pub evictions: Counter,
    pub purged: Counter,
}

pub struct Metrics {
    registry: Registry,
    cache: Family<CacheLabels, Counter>,
    cache_stored: Family<CacheSeries, Counter>,
    cache_stored_bytes: Family<CacheSeries, Counter>,
    cache_route_objects: Family<CacheSeries, Gauge>,
    cache_route_bytes: Family<CacheSeries, Gauge>,
    cache_route_evictions: Family<CacheSeries, Counter>,
    pub cache_store: CacheStoreMetrics,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteSeries, LatencyHistogram>,
    auth: Family<AuthLabels, Counter>,
    rate_limit: Family<RateLimitLabels, Counter>,
    rate_limit_degraded: Family<DegradedLabels, Gauge>,
    pub config_version: Gauge,
    pub config_reloads: Counter,
    pub config_errors: Counter,
    pub connections: Gauge,
    connections_refused: Family<ReasonLabel, Counter>,
    connections_closed: Family<ReasonLabel, Counter>,
    downstream_errors: Family<ReasonLabel, Counter>,
    pub forwarded_for_invalid: Counter,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_duration: Family<BackendLabel, LatencyHistogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    upstream_retries: Family<BackendLabel, Counter>,
    upstream_retry_budget_exhausted: Family<BackendLabel, Counter>,
    upstream_ejections: Family<BackendLabel, Counter>,
    upstream_ejected: Family<BackendLabel, Gauge>,
    upstream_overloaded: Family<OverloadLabels, Counter>,
    upstream_health_checks: Family<HealthCheckLabels, Counter>,
    upstream_unhealthy: Family<BackendLabel, Gauge>,
    upstream_connections: Family<BackendLabel, Gauge>,
    upstream_endpoints: Family<BackendLabel, Gauge>,
    /// Requests being handled (until their response head is sent).
    pub in_flight: Gauge,
    pub tls_handshake_errors: Counter,
    /// Upgraded connections (WebSocket).
    pub tunnels: crate::tunnel::TunnelMetrics,
    /// Connections of TCP listeners.
    pub streams: crate::tunnel::TunnelMetrics,
    /// Flows of UDP listeners.
    pub flows: crate::tunnel::TunnelMetrics,
    /// Datagrams of UDP listeners not forwarded, by reason.
    pub datagrams_dropped: Family<crate::tunnel::EndLabel, Counter>,
    mirror_requests: Family<MirrorLabels, Counter>,
    compressed: Family<EncodingLabel, Counter>,
    certificate_expiry: Family<CertificateSeries, Gauge>,
    /// The certificates `certificate_expiry` has series for.
    certificates_known: parking_lot::Mutex<std::collections::BTreeSet<CertificateSeries>>,
    /// When this process started (seconds since the epoch), for `process_start_time_seconds`.
    started: f64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("portico");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RouteSeries, LatencyHistogram>::default();
        let auth = Family::<AuthLabels, Counter>::default();
        let rate_limit = Family::<RateLimitLabels, Counter>::default();
        let rate_limit_degraded = Family::<DegradedLabels, Gauge>::default();
        let config_version = Gauge::default();
        let config_reloads = Counter::default();
        let config_errors = Counter::default();
        let connections = Gauge::default();
        let connections_refused = Family::<ReasonLabel, Counter>::default();
        let connections_closed = Family::<ReasonLabel, Counter>::default();
        let downstream_errors = Family::<ReasonLabel, Counter>::default();
        let forwarded_for_invalid = Counter::default();
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        let upstream_duration = Family::<BackendLabel, LatencyHistogram>::default();
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let upstream_retries = Family::<BackendLabel, Counter>::default();
        let upstream_retry_budget_exhausted = Family::<BackendLabel, Counter>::default();
        let upstream_ejections = Family::<BackendLabel, Counter>::default();
        let upstream_ejected = Family::<BackendLabel, Gauge>::default();
        let upstream_overloaded = Family::<OverloadLabels, Counter>::default();
        let upstream_health_checks = Family::<HealthCheckLabels, Counter>::default();
        let upstream_unhealthy = Family::<BackendLabel, Gauge>::default();
        let upstream_connections = Family::<BackendLabel, Gauge>::default();
        let upstream_endpoints = Family::<BackendLabel, Gauge>::default();
        let in_flight = Gauge::default();
        let tls_handshake_errors = Counter::default();
        let tunnels = crate::tunnel::TunnelMetrics::default();
        let streams = crate::tunnel::TunnelMetrics::default();
        let mirror_requests = Family::<MirrorLabels, Counter>::default();
        let compressed = Family::<EncodingLabel, Counter>::default();
        let cache = Family::<CacheLabels, Counter>::default();
        let cache_stored = Family::<CacheSeries, Counter>::default();
        let cache_stored_bytes = Family::<CacheSeries, Counter>::default();
        let cache_route_objects = Family::<CacheSeries, Gauge>::default();
        let cache_route_bytes = Family::<CacheSeries, Gauge>::default();
        let cache_route_evictions = Family::<CacheSeries, Counter>::default();
        let cache_store = CacheStoreMetrics::default();
        registry.register(
            "cache_requests",
            "Requests a CachePolicy applied to, by route (as reached through a listener), policy and result (hit; stale: served stale; miss; revalidated: a stale entry the backend confirmed; coalesced: waited for another request's answer; bypass: not looked up)",
            cache.clone(),
        );
        registry.register(
            "cache_stored",
            "Responses stored in the cache, by route and policy",
            cache_stored.clone(),
        );
        registry.register(
            "cache_stored_bytes",
            "Bytes of response bodies stored in the cache, by route and policy",
            cache_stored_bytes.clone(),
        );
        registry.register(
            "cache_route_objects",
            "Responses the memory cache holds now, by route and policy",
            cache_route_objects.clone(),
        );
        registry.register(
            "cache_route_bytes",
            "Bytes the memory cache holds now (headers, bodies and keys), by route and policy",
            cache_route_bytes.clone(),
        );
        registry.register(
            "cache_route_evictions",
            "Responses evicted from the memory cache to make room, by the route and policy that stored them",
            cache_route_evictions.clone(),
        );
        registry.register(
            "cache_objects",
            "Responses held in the memory cache now",
            cache_store.objects.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes the memory cache holds now (headers, bodies and keys), within its budget",
            cache_store.bytes.clone(),
        );
        registry.register(
            "cache_evictions",
            "Responses evicted from the memory cache to make room",
            cache_store.evictions.clone(),
        );
        registry.register(
            "cache_purged",
            "Responses removed from the memory cache by purges and invalidations",
            cache_store.purged.clone(),
        );
        registry.register(
            "compressed_responses",
            "Responses compressed by a BackendPolicy's compression, by encoding (gzip, br, zstd)",
            compressed.clone(),
        );
        registry.register(
            "mirror_requests",
            "Copies of requests for RequestMirror filters, by mirror backend and result (answered: any status; failed: no answer; timeout; dropped: too many copies in flight, the backend at its limits, no endpoint, or a copy that fell behind its request's body)",
            mirror_requests.clone(),
        );
        registry.register(
            "upgraded_connections",
            "Upgraded connections (WebSocket) open now",
            tunnels.open.clone(),
        );
        registry.register(
            "upgraded_connections_closed",
            "Upgraded connections (WebSocket) that ended, by reason (closed: by either side; idle_timeout; error: a reset or a stalled write)",
            tunnels.closed.clone(),
        );
        registry.register(
            "tcp_connections",
            "Connections of TCP and TLS listeners forwarded to a backend, open now",
            streams.open.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "Connections of TCP and TLS listeners that ended, by reason (closed: by either side; idle_timeout; write_timeout; error; drained: their route went away; closed at once: no_route, no_backend, connect_failed (every endpoint tried failed to connect or its TLS checks), max_connections_to_backend, backend_tls_invalid (the backend's BackendTLSPolicy cannot be honoured: no usable CA, unreadable, invalid), not_tls (not a TLS ClientHello, or the client left before its end), hello_timeout, no_certificate, handshake_failed)",
            streams.closed.clone(),
        );
        let flows = crate::tunnel::TunnelMetrics::default();
        registry.register(
            "udp_flows",
            "Flows of UDP listeners (the datagrams of one client address, to one endpoint), open now",
            flows.open.clone(),
        );
        registry.register(
            "udp_flows_closed",
            "Flows of UDP listeners that ended, by reason (idle_timeout; refused: the endpoint answered ICMP port unreachable; unreachable: host or network unreachable; endpoint_gone: it left the backend's serving endpoints; drained: their route went away; connect_failed)",
            flows.closed.clone(),
        );
        let datagrams_dropped = Family::<crate::tunnel::EndLabel, Counter>::default();
        registry.register(
            "udp_datagrams_dropped",
            "Datagrams of UDP listeners not forwarded, by reason (no_route, no_backend, no_endpoint, too_many_flows, queue_full: the flow's queue to its endpoint was full, send_failed: a reply could not be sent to its client)",
            datagrams_dropped.clone(),
        );
        let certificate_expiry = Family::<CertificateSeries, Gauge>::default();
        registry.register(
            "tls_certificate_expiration_timestamp_seconds",
            "When each listener certificate being served expires (its notAfter, seconds since the epoch), by gateway, listener and Secret; alert on this minus time()",
            certificate_expiry.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with the running version",
            build_info,
        );
        registry.register(
            "upstream_requests",
            "Requests a backend answered, by backend (namespace/name:port) and status class: a weighted split shows here",
            upstream_requests.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Time from sending a request to a backend to its response headers, by backend",
            upstream_duration.clone(),
        );
        registry.register(
            "upstream_errors",
            "Requests to a backend that got no answer, by backend and reason (no_endpoints, connect_refused, connect_timeout, connect_reset, connect_error, timeout, failed)",
            upstream_errors.clone(),
        );
        registry.register(
            "upstream_retries",
            "Attempts after one that failed: connections that could not be made, and what an HTTPRoute retry asks for, by backend",
            upstream_retries.clone(),
        );
        registry.register(
            "upstream_retry_budget_exhausted",
            "Retries not made because the backend's retry budget (by default 20 % of its requests in the last 10 s, plus 10 a second) was spent, by backend",
            upstream_retry_budget_exhausted.clone(),
        );
        registry.register(
            "upstream_endpoint_ejections",
            "Endpoints taken out of balancing by passive health checks (consecutive 5xx or gateway errors), by backend",
            upstream_ejections.clone(),
        );
        registry.register(
            "upstream_overloaded",
            "Requests answered 503 (limit=maxRequests, maxConnections, maxPendingRequests), retries not made (limit=maxRetries), TCP/TLS connections refused and UDP datagrams that would have started a flow dropped (limit=maxConnections) because a BackendPolicy circuit breaker was at its limit, by backend",
            upstream_overloaded.clone(),
        );
        registry.register(
            "upstream_health_checks",
            "Active health-check probes of a BackendPolicy, by backend and result (passed, failed)",
            upstream_health_checks.clone(),
        );
        registry.register(
            "upstream_endpoints",
            "Endpoints a backend balances over now (ready, or serving and terminating when none is ready), by backend, as of the last second; those in balancing are this minus portico_upstream_endpoints_ejected and portico_upstream_endpoints_unhealthy",
            upstream_endpoints.clone(),
        );
        registry.register(
            "upstream_connections",
            "Connections open to a backend's endpoints (HTTP/1.1 and HTTP/2, busy or idle; forwarded TCP and TLS connections; UDP flows), by backend, as of the last second",
            upstream_connections.clone(),
        );
        registry.register(
            "upstream_endpoints_unhealthy",
            "Endpoints out of balancing now because they fail their active health checks, by backend",
            upstream_unhealthy.clone(),
        );
        registry.register(
            "upstream_endpoints_ejected",
            "Endpoints out of balancing now, by backend",
            upstream_ejected.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests being handled (until their response headers are sent)",
            in_flight.clone(),
        );
        registry.register(
            "tls_handshake_errors",
            "TLS handshakes that failed (no certificate for the name, protocol errors); timeouts are downstream_connections_closed{reason=\"tls_handshake_timeout\"}",
            tls_handshake_errors.clone(),
        );
        registry.register(
            "downstream_connections_refused",
            "Connections refused at accept, by reason (max_connections, max_connections_per_source, max_connections_per_listener, accept_error)",
            connections_refused.clone(),
        );
        registry.register(
            "downstream_connections_closed",
            "Connections closed by a limit, by reason (first_bytes_timeout, tls_handshake_timeout, idle_timeout)",
            connections_closed.clone(),
        );
        registry.register(
            "downstream_errors",
            "Requests refused or ended for the client's fault, by reason (bad_request, body_framing, body_idle, body_too_slow)",
            downstream_errors.clone(),
        );
        registry.register(
            "forwarded_for_invalid",
            "Requests whose X-Forwarded-For was not a list of addresses (the peer address was used)",
            forwarded_for_invalid.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by Gateway, listener, HTTPRoute and status class (code_class); requests no route took are route=\"none\"",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response headers sent, by Gateway, listener and HTTPRoute",
            duration.clone(),
        );
        registry.register(
            "auth_decisions",
            "AuthPolicy decisions, by policy (namespace/name) and decision",
            auth.clone(),
        );
        registry.register(
            "ratelimit_decisions",
            "RateLimitPolicy decisions, by policy (namespace/name) and decision",
            rate_limit.clone(),
        );
        registry.register(
            "ratelimit_redis_degraded",
            "1 while a policy's Redis is unreachable and its failure mode (local_fallback or fail_closed) is in force",
            rate_limit_degraded.clone(),
        );
        registry.register(
            "config_version",
            "Version of the configuration being served",
            config_version.clone(),
        );
        registry.register(
            "config_reloads",
            "Configurations applied",
            config_reloads.clone(),
        );
        registry.register(
            "config_errors",
            "Configurations rejected; the previous one kept serving",
            config_errors.clone(),
        );
        registry.register(
            "downstream_connections",
            "Open downstream connections",
            connections.clone(),
        );
        Self {
            registry,
            cache,
            cache_stored,
            cache_stored_bytes,
            cache_route_objects,
            cache_route_bytes,
            cache_route_evictions,
            cache_store,
            requests,
            duration,
            auth,
            rate_limit,
            rate_limit_degraded,
            config_version,
            config_reloads,
            config_errors,
            connections,
            connections_refused,
            connections_closed,
            downstream_errors,
            forwarded_for_invalid,
            upstream_requests,
            upstream_duration,
            upstream_errors,
            upstream_retries,
            upstream_retry_budget_exhausted,
            upstream_ejections,
            upstream_ejected,
            upstream_overloaded,
            upstream_health_checks,
            upstream_unhealthy,
            upstream_connections,
            upstream_endpoints,
            in_flight,
            tls_handshake_errors,
            tunnels,
            streams,
            flows,
            datagrams_dropped,
            mirror_requests,
            compressed,
            certificate_expiry,
            certificates_known: parking_lot::Mutex::default(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds` and
/// `process_start_time_seconds`, read from `/proc/self` (Linux; elsewhere only the start
/// time).
fn process_metrics(started: f64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // OpenMetrics: a counter's family is named without `_total`, its sample with it.
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let family = name.strip_suffix("_total").unwrap_or(name);
        let _ = write!(
            out,
            "# HELP {family} {help}\n# TYPE {family} {kind}\n{name} {value}\n"
        );
    };
    // utime and stime (fields 14 and 15) in clock ticks; USER_HZ is 100 on Linux.
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((_, rest)) = stat.rsplit_once(')')
    {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // `rest` starts at field 3 (state): utime is field 14, at index 11.
        let cpu = (ticks(11) + ticks(12)) as f64 / 100.0;
        metric(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds",
            cpu,
        );
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    {
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory, in bytes",
            (kb * 1024) as f64,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric(
            "process_open_fds",
            "gauge",
            "Open file descriptors (sockets included)",
            fds.count() as f64,
        );
    }
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds",
        started,
    );
    out
}

impl Metrics {
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A response compressed with `encoding`.
    pub fn compressed(&self, encoding: &'static str) {
        self.compressed
            .get_or_create(&EncodingLabel { encoding })
            .inc();
    }

    /// A mirrored copy's fate.
    pub fn mirrored(&self, backend: &BackendId, result: &'static str) {
        self.mirror_requests
            .get_or_create(&MirrorLabels {
                backend: backend.to_string(),
                result,
            })
            .inc();
    }

    pub fn downstream_error(&self, reason: &'static str) {
        self.downstream_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Handles for one route as reached through one listener.
    pub fn route(&self, at: &RouteSeries) -> RouteMetrics {
        let by_class = CLASSES.map(|code_class| {
            self.requests
                .get_or_create(&RequestLabels {
                    at: at.clone(),
                    code_class,
                })
                .clone()
        });
        let duration = self.duration.get_or_create(at).clone();
        RouteMetrics { by_class, duration }
    }

    /// Decision counters for one AuthPolicy (`namespace/name`).
    pub fn auth(&self, policy: &str) -> AuthMetrics {
        AuthMetrics(DECISIONS.map(|(_, decision)| {
            self.auth
                .get_or_create(&AuthLabels {
                    policy: policy.to_string(),
                    decision,
                })
                .clone()
        }))
    }

    /// Counters for one RateLimitPolicy; `global_fail_closed` is `Some` when it has global
    /// limits (and says which failure mode they use).
    pub fn rate_limit(&self, policy: &str, global_fail_closed: Option<bool>) -> RateLimitMetrics {
        RateLimitMetrics {
            decisions: RATE_DECISIONS.map(|(_, decision)| {
                self.rate_limit
                    .get_or_create(&RateLimitLabels {
                        policy: policy.to_string(),
                        decision,
                    })
                    .clone()
            }),
            degraded: global_fail_closed.map(|closed| {
                self.rate_limit_degraded
                    .get_or_create(&DegradedLabels {
                        policy: policy.to_string(),
                        mode: if closed {
                            "fail_closed"
                        } else {
                            "local_fallback"
                        },
                    })
                    .clone()
            }),
        }
    }

    /// Counters and gauges for one CachePolicy on one route.
    pub fn cache(&self, at: &CacheSeries) -> CacheMetrics {
        CacheMetrics(Arc::new(CacheCounters {
            results: CACHE_RESULTS.map(|(_, result)| {
                self.cache
                    .get_or_create(&CacheLabels {
                        at: at.clone(),
                        result,
                    })
                    .clone()
            }),
            stored: self.cache_stored.get_or_create(at).clone(),
            stored_bytes: self.cache_stored_bytes.get_or_create(at).clone(),
            objects: self.cache_route_objects.get_or_create(at).clone(),
            bytes: self.cache_route_bytes.get_or_create(at).clone(),
            evictions: self.cache_route_evictions.get_or_create(at).clone(),
        }))
    }

    /// Removes the series of a cache policy no longer applied on a route. Entries it stored
    /// may stay in the memory tier until they are evicted or replaced: from then on they
    /// count in the store-wide gauges only.
    pub fn forget_cache(&self, at: &CacheSeries) {
        for (_, result) in CACHE_RESULTS {
            self.cache.remove(&CacheLabels {
                at: at.clone(),
                result,
            });
        }
        self.cache_stored.remove(at);
        self.cache_stored_bytes.remove(at);
        self.cache_route_objects.remove(at);
        self.cache_route_bytes.remove(at);
        self.cache_route_evictions.remove(at);
    }

    /// Removes the series of a rate-limit policy no longer configured.
    pub fn forget_rate_limit(&self, policy: &str) {
        for (_, decision) in RATE_DECISIONS {
            self.rate_limit.remove(&RateLimitLabels {
                policy: policy.to_string(),
                decision,
            });
        }
        for mode in ["fail_closed", "local_fallback"] {
            self.rate_limit_degraded.remove(&DegradedLabels {
                policy: policy.to_string(),
                mode,
            });
        }
    }

    /// Removes the series of a policy no longer configured.
    pub fn forget_auth(&self, policy: &str) {
        for (_, decision) in DECISIONS {
            self.auth.remove(&AuthLabels {
                policy: policy.to_string(),
                decision,
            });
        }
    }

    /// Sets the expiry of each certificate now served, and removes those no longer served.
    pub fn certificates(&self, now: std::collections::BTreeMap<CertificateSeries, i64>) {
        let mut known = self.certificates_known.lock();
        for gone in known.iter().filter(|c| !now.contains_key(*c)) {
            self.certificate_expiry.remove(gone);
        }
        for (series, expiry) in &now {
            self.certificate_expiry.get_or_create(series).set(*expiry);
        }
        *known = now.into_keys().collect();
    }

    /// Removes the series of a route no longer reached through a listener, keeping
    /// cardinality bounded.
    pub fn forget_route(&self, at: &RouteSeries) {
        for code_class in CLASSES {
            self.requests.remove(&RequestLabels {
                at: at.clone(),
                code_class,
            });
        }
        self.duration.remove(at);
    }

    /// Handles for one backend (`namespace/name:port`).
    pub fn upstream(&self, backend: &str) -> UpstreamMetrics {
        let by_class = CLASSES.map(|code_class| {
            self.upstream_requests
                .get_or_create(&UpstreamLabels {
                    backend: backend.to_string(),
                    code_class,
                })
                .clone()
        });
        let duration = self
            .upstream_duration
            .get_or_create(&BackendLabel {
                backend: backend.to_string(),
            })
            .clone();
        let errors = UPSTREAM_ERRORS.map(|reason| {
            self.upstream_errors
                .get_or_create(&UpstreamErrorLabels {
                    backend: backend.to_string(),
                    reason,
                })
                .clone()
        });
        // One statement each: a family's guard lives to the end of its statement, and a
        // second key of the same family needs its write lock.
        let overload = |limit| {
            self.upstream_overloaded
                .get_or_create(&OverloadLabels {
                    backend: backend.to_string(),
                    limit,
                })
                .clone()
        };
        let overloaded_requests = overload("maxRequests");
        let overloaded_retries = overload("maxRetries");
        let overloaded_connections = overload("maxConnections");
        let overloaded_pending = overload("maxPendingRequests");
        let checks = |result| {
            self.upstream_health_checks
                .get_or_create(&HealthCheckLabels {
                    backend: backend.to_string(),
                    result,
                })
                .clone()
        };
        let health_passed = checks("passed");
        let health_failed = checks("failed");
        let label = BackendLabel {
            backend: backend.to_string(),
        };
        UpstreamMetrics {
            by_class,
            duration,
            errors,
            retries: self.upstream_retries.get_or_create(&label).clone(),
            budget_exhausted: self
                .upstream_retry_budget_exhausted
                .get_or_create(&label)
                .clone(),
            ejections: self.upstream_ejections.get_or_create(&label).clone(),
            ejected: self.upstream_ejected.get_or_create(&label).clone(),
            overloaded_requests,
            overloaded_retries,
            overloaded_connections,
            overloaded_pending,
            connections: self.upstream_connections.get_or_create(&label).clone(),
            endpoints: self.upstream_endpoints.get_or_create(&label).clone(),
            health_passed,
            health_failed,
            unhealthy: self.upstream_unhealthy.get_or_create(&label).clone(),
        }
    }

    /// Removes the series of a backend no route sends to any more.
    pub fn forget_upstream(&self, backend: &str) {
        for code_class in CLASSES {
            self.upstream_requests.remove(&UpstreamLabels {
                backend: backend.to_string(),
                code_class,
            });
        }
        let label = BackendLabel {
            backend: backend.to_string(),
        };
        self.upstream_duration.remove(&label);
        self.upstream_retries.remove(&label);
        self.upstream_retry_budget_exhausted.remove(&label);
        self.upstream_ejections.remove(&label);
        self.upstream_ejected.remove(&label);
        self.upstream_unhealthy.remove(&label);
        for result in ["passed", "failed"] {
            self.upstream_health_checks.remove(&HealthCheckLabels {
                backend: backend.to_string(),
                result,
            });
        }
        self.upstream_connections.remove(&label);
        self.upstream_endpoints.remove(&label);
        for limit in [
            "maxRequests",
            "maxRetries",
            "maxConnections",
            "maxPendingRequests",
        ] {
            self.upstream_overloaded.remove(&OverloadLabels {
                backend: backend.to_string(),
                limit,
            });
        }
        for reason in UPSTREAM_ERRORS {
            self.upstream_errors.remove(&UpstreamErrorLabels {
                backend: backend.to_string(),
                reason,
            });
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        // The standard process metrics, under their usual names (dashboards expect them),
        // before the registry's `# EOF`.
        let process = process_metrics(self.started);
        match out.rfind("# EOF") {
            Some(i) => out.insert_str(i, &process),
            None => out.push_str(&process),
        }
        out
    }
}

/// A route's counters and latency histogram. The default is detached (registered nowhere).
#[derive(Clone, Debug, Default)]
pub struct RouteMetrics {
    by_class: [Counter; 5],
    duration: LatencyHistogram,
}

impl RouteMetrics {
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.duration.observe(elapsed);
    }
}

/// One backend's counters and latency, taken once when its pool is made.
#[derive(Clone, Debug, Default)]
pub struct UpstreamMetrics {
    by_class: [Counter; 5],
    duration: LatencyHistogram,
    errors: [Counter; 7],
    pub retries: Counter,
    pub budget_exhausted: Counter,
    pub ejections: Counter,
    pub ejected: Gauge,
    pub overloaded_requests: Counter,
    pub overloaded_retries: Counter,
    overloaded_connections: Counter,
    overloaded_pending: Counter,
    /// Connections open to the backend's endpoints (set once a second).
    pub connections: Gauge,
    /// Endpoints balanced over (set once a second).
    pub endpoints: Gauge,
    pub health_passed: Counter,
    pub health_failed: Counter,
    pub unhealthy: Gauge,
}

impl UpstreamMetrics {
    /// A connection limit refused a request (`limit`: the field's name).
    pub fn overloaded(&self, limit: &str) {
        match limit {
            "maxConnections" => self.overloaded_connections.inc(),
            "maxPendingRequests" => self.overloaded_pending.inc(),
            _ => 0,
        };
    }

    pub fn answered(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.duration.observe(elapsed);
    }

    /// `reason`: one of [`UPSTREAM_ERRORS`] (anything else counts as `failed`).
    pub fn failed(&self, reason: &str) {
        let i = UPSTREAM_ERRORS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(UPSTREAM_ERRORS.len() - 1);
        self.errors[i].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_encodes_cumulative_buckets_in_seconds() {
        let m = Metrics::default();
        let at = RouteSeries::new("ns/gw", "http", "ns/r");
        let r = m.route(&at);
        r.record(200, Duration::from_micros(50));
        r.record(200, Duration::from_micros(4_000));
        r.record(503, Duration::from_secs(100));
        let text = m.encode();
        let value = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(
            value(
                r#"portico_request_duration_seconds_count{gateway="ns/gw",listener="http",route="ns/r"}"#
            ),
            "3"
        );
        assert_eq!(
            value(
                r#"portico_request_duration_seconds_bucket{le="0.001",gateway="ns/gw",listener="http",route="ns/r"}"#
            ),
            "1"
        );
        assert_eq!(
            value(
                r#"portico_request_duration_seconds_bucket{le="0.005",gateway="ns/gw",listener="http",route="ns/r"}"#
            ),
            "2"
        );
        assert_eq!(
            value(
                r#"portico_request_duration_seconds_bucket{le="10.0",gateway="ns/gw",listener="http",route="ns/r"}"#
            ),
            "2"
        );
        assert_eq!(
            value(
                r#"portico_request_duration_seconds_bucket{le="+Inf",gateway="ns/gw",listener="http",route="ns/r"}"#
            ),
            "3"
        );
        assert!(
            text.contains(r#"portico_requests_total{code_class="5xx",gateway="ns/gw",listener="http",route="ns/r"} 1"#),
            "{text}"
        );
        // A route costs 5 request series and 15 histogram series.
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("route=\"ns/r\""))
            .count();
        assert_eq!(series, 20, "{text}");
        m.forget_route(&at);
        assert!(!m.encode().contains("ns/r"));
    }

    #[test]
    fn upstream_series_per_backend_and_build_info() {
        let m = Metrics::default();
        let u = m.upstream("ns/svc:80");
        u.answered(200, Duration::from_millis(3));
        u.failed("connect_refused");
        u.failed("something else");
        let text = m.encode();
        assert!(
            text.contains(
                r#"portico_upstream_requests_total{backend="ns/svc:80",code_class="2xx"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"portico_upstream_errors_total{backend="ns/svc:80",reason="connect_refused"} 1"#
        ));
        assert!(
            text.contains(
                r#"portico_upstream_errors_total{backend="ns/svc:80",reason="failed"} 1"#
            )
        );
        assert!(text.contains(&format!(
            "portico_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        m.forget_upstream("ns/svc:80");
        assert!(!m.encode().contains("ns/svc:80"));
        // The process metrics come before the end marker, under their standard names.
        let text = m.encode();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name}\n{text}");
        }
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
