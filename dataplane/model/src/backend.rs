//! Backends: the Service ports rules send traffic to, and the endpoints compile knew of.

use crate::filter::Filter;
use crate::object::ObjectRef;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One weighted backend of a rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// Where this share of the traffic goes.
    pub target: BackendTarget,
    /// Relative to the other backendRefs of the rule; 0 sends nothing.
    pub weight: u32,
    /// Applied after the rule's filters, to requests sent to this backend only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
}

/// What a backendRef resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BackendTarget {
    /// A Service port listed in the snapshot's `backends`.
    Service(BackendId),
    /// A reference compile could not resolve; its share of the traffic is answered with 500,
    /// as the Gateway API requires. The reason is kept for logs.
    Unresolved { reason: String },
}

/// A Service port: the unit the dataplane balances over.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BackendId {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service port (not the target port).
    pub port: u16,
    /// The Service's UDP port of that number (a UDPRoute's backend), not its TCP port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub udp: bool,
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)?;
        if self.udp {
            f.write_str("/udp")?;
        }
        Ok(())
    }
}

/// How the dataplane speaks to a backend, from the Service port's `appProtocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AppProtocol {
    /// HTTP/1.1 to the backend (the default).
    #[default]
    #[serde(rename = "http")]
    Http1,
    /// HTTP/2 with prior knowledge (`appProtocol: kubernetes.io/h2c`).
    #[serde(rename = "h2c")]
    H2c,
}

/// A Service port a rule of this snapshot sends traffic to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// The key backendRefs name it by.
    pub id: BackendId,
    /// HTTP/1.1 unless the port says h2c.
    #[serde(default)]
    pub protocol: AppProtocol,
    /// The Service port's name, by which EndpointSlice ports are matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// Endpoints known at compile time (standalone mode). Sorted by address and port.
    pub endpoints: Vec<Endpoint>,
    /// The BackendPolicy that applies to this Service port, compiled; `None`: the defaults
    /// of [`BackendSettings::default`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<BackendSettings>,
    /// TLS to the endpoints (a BackendTLSPolicy); `None`: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTls>,
}

/// TLS from the gateway to a backend's endpoints, as a BackendTLSPolicy asks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTls {
    /// The BackendTLSPolicy (for logs).
    pub policy: ObjectRef,
    /// The SNI sent, and the name the certificate must carry unless `subject_alt_names`
    /// says otherwise.
    pub server_name: String,
    /// PEM CA certificates the endpoint's chain must lead to (from ConfigMaps or Secrets).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_pem: String,
    /// Trust the system's well-known roots (`wellKnownCACertificates: System`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub system_roots: bool,
    /// The certificate must carry one of these (instead of `server_name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<SubjectAltName>,
    /// The Gateway's own client certificate, presented to the endpoints when they ask
    /// (`spec.tls.backend.clientCertificateRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<crate::listener::Certificate>,
    /// Why no connection can be trusted (no usable CA certificate): the backend's requests
    /// are refused, never sent in plaintext or unverified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

/// A subjectAltName a backend's certificate may be required to carry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SubjectAltName {
    /// A DNS name (a `*.` wildcard in the certificate covers one label).
    Hostname(String),
    /// A URI, compared exactly (a SPIFFE ID, say).
    Uri(String),
}

/// How the dataplane treats a backend's endpoints: a BackendPolicy compiled, what it leaves
/// out filled in with the defaults (which are also what a backend without a policy gets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendSettings {
    /// The BackendPolicy these come from (for logs).
    pub policy: ObjectRef,
    pub load_balancer: LoadBalancer,
    /// The key of a [`LoadBalancer::ConsistentHash`] balancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// New endpoints' traffic ramped up (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<SlowStart>,
    pub outlier_detection: OutlierDetection,
    /// Active health checks (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    pub retry: Retry,
    pub circuit_breaker: CircuitBreaker,
    pub connection: Connection,
    /// Sessions pinned to an endpoint, for rules that have no `sessionPersistence` of their
    /// own. The cookie has no `Path` (several routes may send to the Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistence>,
    /// Responses compressed by the gateway (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
}

/// Response compression, checked by compile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Compression {
    /// Most preferred first; at least one.
    pub encodings: Vec<Encoding>,
    pub min_size: u64,
    /// Lower-case `type/subtype`, `type/*` or `type/*+suffix`.
    pub content_types: Vec<String>,
    /// Responses that set cookies, and answers to requests with credentials, too.
    #[serde(default)]
    pub credentialed: bool,
}

impl Compression {
    pub const DEFAULT_MIN_SIZE: u64 = 1024;
    pub const DEFAULT_ENCODINGS: [Encoding; 3] = [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip];
    pub const DEFAULT_CONTENT_TYPES: [&str; 9] = [
        "text/*",
        "application/json",
        "application/javascript",
        "application/xml",
        "application/xhtml+xml",
        "application/wasm",
        "image/svg+xml",
        "application/*+json",
        "application/*+xml",
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    #[serde(rename = "zstd")]
    Zstd,
    #[serde(rename = "br")]
    Brotli,
    #[serde(rename = "gzip")]
    Gzip,
}

impl Encoding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

/// How requests are spread over the endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadBalancer {
    /// Power of two choices over requests in flight (Envoy Gateway's default too).
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
    /// By a key of the request ([`HashOn`]), Maglev.
    ConsistentHash,
}

/// Slow start: an endpoint that joins a backend which already has endpoints gets a share of
/// the traffic growing linearly from `min_weight_percent` of its fair share to all of it over
/// `window_ms`, so a cold process (empty caches, a JIT not yet warm) is not handed its full
/// load at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlowStart {
    pub window_ms: u64,
    pub min_weight_percent: u32,
}

impl SlowStart {
    /// Envoy's `min_weight_percent` default.
    pub const DEFAULT_MIN_WEIGHT_PERCENT: u32 = 10;
}

/// What a consistent-hash balancer hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HashOn {
    /// A header's value (lower-case name).
    Header(String),
    Cookie(String),
    QueryParameter(String),
    /// The client's address.
    SourceIp,
}

/// Passive health checks. Defaults: Envoy's, except that gateway errors (connect failures,
/// resets, timeouts) eject by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// 5xx answers in a row that eject (0: never).
    #[serde(rename = "consecutive5xx")]
    pub consecutive_5xx: u32,
    /// Connect failures, resets and timeouts in a row that eject (0: never).
    pub consecutive_gateway_errors: u32,
    /// A first ejection; the n-th lasts n times this.
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    /// Most endpoints out at once, as a percentage (at least one).
    pub max_ejected_percent: u32,
    /// Below this percentage of endpoints in, every endpoint is used.
    pub panic_threshold_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 5,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejected_percent: 10,
            panic_threshold_percent: 50,
        }
    }
}

/// Active health checks: every endpoint probed each `interval_ms` (with up to 10 % jitter).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Failed probes in a row that take an endpoint out.
    pub unhealthy_threshold: u32,
    /// Passed probes in a row that bring it back.
    pub healthy_threshold: u32,
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL_MS: u64 = 5_000;
    pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;
    pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
    pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
}

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Probe {
    /// An HTTP/1.1 request; passes on a status in one of `expected` (inclusive ranges).
    Http {
        method: String,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        expected: Vec<(u16, u16)>,
    },
    /// A TCP connection that opens.
    Tcp,
    /// `grpc.health.v1.Health/Check` over HTTP/2 answering `SERVING`.
    Grpc { service: String },
}

/// Retrying on another endpoint. Defaults: connect failures are retried (nothing reached the
/// backend), within a budget of 20 % of the last 10 seconds' requests plus 10 a second
/// (Linkerd's budget and GEP-3388's defaults).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    pub on_connect_failure: bool,
    /// Route retries (statuses, broken exchanges, timeouts) of non-idempotent methods too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
    pub budget_percent: u32,
    pub budget_min_per_second: u32,
    /// Retries for rules that have no `retry` of their own: the policy's statuses, and
    /// (always, as a rule's retry does) broken exchanges and per-try timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<crate::retry::RouteRetry>,
    /// Each attempt's answer within this, for rules without a backend request timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            on_connect_failure: true,
            non_idempotent: false,
            budget_percent: 20,
            budget_min_per_second: 10,
            rules: None,
            per_try_timeout_ms: None,
        }
    }
}

/// Limits per dataplane replica (none by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Retries in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Connections open to the endpoints at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection at once under `max_connections` (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
}

/// Connection settings; `None`: the dataplane's own (5 s to connect, 90 s idle, no TCP
/// keep-alive, one HTTP/2 connection per endpoint without pings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<Http2>,
    /// The PROXY protocol header sent first on each connection of a stream route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// A PROXY protocol version (HAProxy's specification).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProxyProtocol {
    /// The text header: `PROXY TCP4 <client> <listener> <client port> <listener port>\r\n`.
    V1,
    /// The binary header.
    V2,
}

/// TCP keep-alive probes on connections to the endpoints, so a peer that vanished (a node
/// gone, a NAT entry dropped) is noticed on an idle connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpKeepalive {
    /// Idle time before the first probe.
    pub idle_ms: u64,
    /// Between probes.
    pub interval_ms: u64,
    /// Unanswered probes that end the connection.
    pub probes: u32,
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        Self {
            idle_ms: 60_000,
            interval_ms: 10_000,
            probes: 3,
        }
    }
}

/// HTTP/2 (h2c) connections to the endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Http2 {
    /// Streams one connection carries at once; more open another connection (`None`: one
    /// connection per endpoint, as many streams as the backend allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    /// A PING this often (`None`: none), even on an idle connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_interval_ms: Option<u64>,
    /// A PING unanswered this long closes the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_timeout_ms: Option<u64>,
}

impl Http2 {
    /// An unanswered PING's wait when the policy does not say (hyper's default too).
    pub const DEFAULT_KEEPALIVE_TIMEOUT_MS: u64 = 20_000;
}

/// Session persistence (Gateway API `sessionPersistence`): a client's requests keep going to
/// the endpoint (and, for a rule, the backend) its first request went to. The dataplane
/// keeps no state: the cookie or header carries the endpoint sealed, so any replica can
/// read it and no client can make one up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionPersistence {
    pub kind: SessionKind,
    /// The cookie's or header's name (compile makes one up when the user gives none).
    pub name: String,
    /// A session ends this long after its first request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_timeout_ms: Option<u64>,
    /// A session ends after this long without a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// A cookie kept by the browser until the absolute timeout (`Max-Age`); otherwise a
    /// session cookie.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
}

/// Where a session's token travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionKind {
    /// Set with `Set-Cookie`, read from `Cookie`.
    Cookie,
    /// Sent in a response header, read from the same request header.
    Header,
}

/// One address of a backend, with its EndpointSlice conditions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// An IPv4 or IPv6 address.
    pub address: String,
    /// The target port on that address.
    pub port: u16,
    /// Ready to receive new traffic.
    pub ready: bool,
    /// Able to serve even if not ready (a terminating endpoint may still be serving).
    pub serving: bool,
    /// Going away: one that is still serving is used only when no endpoint is ready.
    pub terminating: bool,
}
