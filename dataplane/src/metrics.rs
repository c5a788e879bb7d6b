//! Prometheus metrics. Label cardinality is bounded by configuration: the route label is an
//! HTTPRoute's `namespace/name` (or `none`), the status label one of five classes.
//!
//! Each rule holds its own counter and histogram handles, taken once when the rule is built,
//! so the hot path increments atomics and never takes the family lock.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn new_histogram() -> Histogram {
    // 100 µs to ~26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub config_version: Gauge,
    pub config_reloads: Counter,
    pub config_errors: Counter,
    pub connections: Gauge,
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
        let duration =
            Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(new_histogram);
        let config_version = Gauge::default();
        let config_reloads = Counter::default();
        let config_errors = Counter::default();
        let connections = Gauge::default();
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
            config_version,
            config_reloads,
            config_errors,
            connections,
        }
    }
}

impl Metrics {
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
    duration: Histogram,
}

impl RouteMetrics {
    pub fn record(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.duration.observe(seconds);
    }
}
