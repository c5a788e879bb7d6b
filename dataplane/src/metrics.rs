//! Prometheus metrics. Label cardinality is bounded by configuration: the route label is an
//! HTTPRoute's `namespace/name` (or `none`), the status label one of five classes.
//!
//! Each rule holds its own counter and histogram handles, taken once when the rule is built,
//! so the hot path increments atomics and never takes the family lock. The latency histogram
//! is our own: prometheus-client's takes a write lock per observation.

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
    route: String,
    code: &'static str,
}

/// One label, `reason`, with a value from a fixed set chosen by the code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
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

/// Upper bounds 100 µs × 2^i: 100 µs to ~26 s, then +Inf.
const BUCKETS: usize = 19;
const FIRST_BOUND_US: u64 = 100;

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
        let mut bound = FIRST_BOUND_US;
        let mut i = 0;
        while i < BUCKETS && us > bound {
            bound *= 2;
            i += 1;
        }
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut bound = FIRST_BOUND_US;
        let mut buckets = Vec::with_capacity(BUCKETS + 1);
        for (i, cell) in self.0.buckets.iter().enumerate() {
            // The encoder writes +Inf for f64::MAX and accumulates the counts itself.
            let upper = if i < BUCKETS {
                bound as f64 / 1e6
            } else {
                f64::MAX
            };
            buckets.push((upper, cell.load(Ordering::Relaxed)));
            bound *= 2;
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabel, LatencyHistogram>,
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
        let duration = Family::<RouteLabel, LatencyHistogram>::default();
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
        registry.register(
            "downstream_connections_refused",
            "Connections refused at accept, by reason (max_connections, max_connections_per_source, accept_error)",
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
            "Requests answered, by HTTPRoute and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response headers sent, by HTTPRoute",
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
        }
    }
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

    pub fn downstream_error(&self, reason: &'static str) {
        self.downstream_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Handles for one route; `route` is `namespace/name` or `none`.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let by_class = CLASSES.map(|code| {
            self.requests
                .get_or_create(&RequestLabels {
                    route: route.to_string(),
                    code,
                })
                .clone()
        });
        let duration = self
            .duration
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .clone();
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

    /// Removes the series of routes no longer configured, keeping cardinality bounded.
    pub fn forget_route(&self, route: &str) {
        for code in CLASSES {
            self.requests.remove(&RequestLabels {
                route: route.to_string(),
                code,
            });
        }
        self.duration.remove(&RouteLabel {
            route: route.to_string(),
        });
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[derive(Clone, Debug)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_encodes_cumulative_buckets_in_seconds() {
        let m = Metrics::default();
        let r = m.route("ns/r");
        r.record(200, Duration::from_micros(50));
        r.record(200, Duration::from_micros(150));
        r.record(503, Duration::from_secs(100));
        let text = m.encode();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(
            line(r#"portico_request_duration_seconds_count{route="ns/r"}"#)
                .rsplit(' ')
                .next(),
            Some("3")
        );
        assert_eq!(
            line(r#"portico_request_duration_seconds_bucket{le="0.0001",route="ns/r"}"#)
                .rsplit(' ')
                .next(),
            Some("1")
        );
        assert_eq!(
            line(r#"portico_request_duration_seconds_bucket{le="0.0002",route="ns/r"}"#)
                .rsplit(' ')
                .next(),
            Some("2")
        );
        assert_eq!(
            line(r#"portico_request_duration_seconds_bucket{le="+Inf",route="ns/r"}"#)
                .rsplit(' ')
                .next(),
            Some("3")
        );
        assert!(
            text.contains(r#"portico_requests_total{route="ns/r",code="5xx"} 1"#),
            "{text}"
        );
        m.forget_route("ns/r");
        assert!(!m.encode().contains("ns/r"));
    }
}
