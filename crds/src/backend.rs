//! `BackendPolicy`: how the dataplane treats the endpoints of a Service: how requests are
//! spread over them, when one is taken out of balancing (passive health), how much retrying
//! the backend tolerates, the limits that protect it (circuit breakers) and its connection
//! settings.
//!
//! Every field is optional; what a policy leaves out keeps the default a backend has without
//! any policy, so a policy only says what differs. The defaults are in the field docs.

// KubeSchema's derive copies each struct into a private module to build its schema; the
// copies are what this lint sees.
#![allow(unreachable_pub)]

// Unsigned fields carry `format: int64` in the schema: Kubernetes knows int32 and int64, and
// warns about schemars' `uint32`.

use crate::policy::{PolicyStatus, PolicyTargetRef};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// How the dataplane treats the endpoints of the targeted Services.
///
/// Precedence: a policy on a Service port (`sectionName`) beats one on the whole Service; the
/// most specific policy applies whole. Two policies on the same target: the older applies and
/// the other reports `Accepted=False` with reason `Conflicted`.
// The printcolumn attributes repeat `type_ = "string"`, which this lint takes for a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "portico.dev",
    version = "v1alpha1",
    kind = "BackendPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "bepol",
    category = "portico",
    doc = "BackendPolicy sets load balancing, passive and active health checks, the retry budget, circuit breakers, connection settings and session persistence of a Service's endpoints (Gateway API direct policy attachment).",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.targetRefs[0].name",
        description = "The first target"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.ancestors[0].conditions[?(@.type==\"Accepted\")].status",
        description = "Whether the policy applies to its first target"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.ancestors[0].conditions[?(@.type==\"Accepted\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackendPolicySpec {
    /// The Services (or Service ports, with `sectionName`) this policy applies to, in the
    /// policy's namespace. It applies wherever a route sends to them.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<ServiceTargetRef>,

    /// How requests are spread over the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,

    /// Passive health checks: when an endpoint that keeps failing is taken out of balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,

    /// Active health checks: each dataplane replica probes every endpoint, and takes one that
    /// fails its probes out of balancing until they pass again. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,

    /// Retrying on another endpoint, and how much of it the backend tolerates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,

    /// Limits per dataplane replica beyond which requests are answered 503 at once instead
    /// of piling onto a backend that cannot keep up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,

    /// Connections to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,

    /// Session persistence, shaped as Gateway API's `sessionPersistence`: a client's
    /// requests keep going to the endpoint its first request went to, for every route rule
    /// that sends to the Service and has no `sessionPersistence` of its own. Each rule keeps
    /// sessions of its own (a session on `/a` does not pin `/b`). Stateless: the cookie or
    /// header carries the endpoint sealed with a key every dataplane replica shares, so it
    /// holds across replicas and a client cannot make one up. An endpoint that has gone, is
    /// ejected or fails its health checks ends the session: the balancer picks again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistence>,

    /// Responses compressed by the gateway (gzip, Brotli, zstd), for clients that accept it.
    /// Off when absent. Never for responses that set cookies or answer requests that carry
    /// credentials (`Authorization`, `Cookie`) unless `credentialed` is true: compressing a
    /// secret beside text an attacker can inject lets them read it from the sizes (BREACH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
}

/// Response compression.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compression {
    /// The encodings offered, most preferred first, when a client accepts several equally
    /// (default `[zstd, br, gzip]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub encodings: Vec<Encoding>,

    /// Smallest response compressed, in bytes, when its length is known (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 104_857_600))]
    #[schemars(extend("format" = "int64"))]
    pub min_size: Option<u32>,

    /// Media types compressed (`type/subtype`, `type/*`, or `type/*+suffix`; parameters
    /// ignored). Default: text/*, application/json, application/javascript,
    /// application/xml, application/xhtml+xml, application/wasm, image/svg+xml,
    /// application/*+json and application/*+xml.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub content_types: Vec<MediaRange>,

    /// Compress responses that set cookies and answers to requests with credentials too
    /// (default false): only where no response mixes a secret with text a third party can
    /// put into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentialed: Option<bool>,
}

/// A media type (`text/html`), every subtype of a type (`text/*`), or every subtype with a
/// structured suffix (`application/*+json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct MediaRange(
    #[schemars(length(min = 3, max = 127))]
    #[schemars(pattern(
        r"^[a-zA-Z0-9!#$&^_.+-]+/([a-zA-Z0-9!#$&^_.+-]+|[*]|[*][+][a-zA-Z0-9!#$&^_.-]+)$"
    ))]
    pub String,
);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Encoding {
    #[serde(rename = "zstd")]
    Zstd,
    #[serde(rename = "br")]
    Brotli,
    #[serde(rename = "gzip")]
    Gzip,
}

/// Headers a session may not be carried in: those the proxy itself reads, sets or removes
/// (framing, routing, forwarding, credentials, cookies); also every `x-forwarded-*` and
/// `x-portico-*` header. The CEL rule below spells the same list.
pub const RESERVED_SESSION_HEADERS: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "forwarded",
    "host",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "via",
    "x-request-id",
];

/// Gateway API `sessionPersistence`, for a Service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.cookieConfig) || !has(self.cookieConfig.lifetimeType) || self.cookieConfig.lifetimeType != 'Permanent' || has(self.absoluteTimeout)").message("a Permanent cookie needs absoluteTimeout (its Max-Age)"))]
#[x_kube(validation = Rule::new("!has(self.cookieConfig) || !has(self.type) || self.type == 'Cookie'").message("cookieConfig applies only to the Cookie type"))]
#[x_kube(validation = Rule::new("!has(self.type) || self.type != 'Header' || !has(self.sessionName) || !(self.sessionName.lowerAscii() in ['authorization', 'connection', 'content-length', 'content-type', 'cookie', 'forwarded', 'host', 'keep-alive', 'proxy-authorization', 'proxy-connection', 'set-cookie', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'via', 'x-request-id'] || self.sessionName.lowerAscii().startsWith('x-forwarded-') || self.sessionName.lowerAscii().startsWith('x-portico-'))").message("sessionName is a header the gateway reads or sets itself; choose another name"))]
pub struct SessionPersistence {
    /// The cookie's or header's name. Default: `portico-session-` and a hash of the policy,
    /// so policies do not share a cookie by accident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9!#$%&*+.^_|~-]+$')").message("sessionName is a cookie or header name: letters, digits and !#$%&*+-.^_|~"))]
    #[schemars(length(min = 1, max = 128))]
    pub session_name: Option<String>,

    /// `Cookie` (the default) or `Header`. A header session is sent back in a response
    /// header of this name, and the client returns it in the same request header.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<SessionType>,

    /// The session ends this long after it started, whatever the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("absoluteTimeout is a duration such as 30m, 12h or 1h30m"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('8760h')").message("absoluteTimeout must be between 1s and 8760h (a year)"))]
    #[schemars(length(min = 2, max = 24))]
    pub absolute_timeout: Option<String>,

    /// The session ends after this long without a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("idleTimeout is a duration such as 30s, 10m or 1h"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('8760h')").message("idleTimeout must be between 1s and 8760h (a year)"))]
    #[schemars(length(min = 2, max = 24))]
    pub idle_timeout: Option<String>,

    /// Cookie settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_config: Option<CookieConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SessionType {
    Cookie,
    Header,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CookieConfig {
    /// `Session` (the default): the browser drops the cookie when it closes (the session
    /// still ends at `absoluteTimeout`). `Permanent`: the cookie is kept until
    /// `absoluteTimeout` (`Max-Age`), which it requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_type: Option<CookieLifetime>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum CookieLifetime {
    Session,
    Permanent,
}

/// A Service, or one of its ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.group == ''").message("targetRefs of a BackendPolicy name core Services: group must be \"\""))]
#[x_kube(validation = Rule::new("self.kind == 'Service'").message("targetRefs kind must be Service"))]
pub struct ServiceTargetRef {
    /// `""`, the core API group.
    #[schemars(length(max = 253))]
    pub group: String,
    /// `Service`.
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// The Service's name, in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The name of one of the Service's ports: the policy applies to that port only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

impl From<&ServiceTargetRef> for PolicyTargetRef {
    /// The shape every policy's attachment is resolved in.
    fn from(t: &ServiceTargetRef) -> Self {
        PolicyTargetRef {
            group: t.group.clone(),
            kind: t.kind.clone(),
            name: t.name.clone(),
            section_name: t.section_name.clone(),
        }
    }
}

/// How requests are spread over a backend's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.consistentHash) == (has(self.type) && self.type == 'ConsistentHash')").message("consistentHash is required for the ConsistentHash type and only for it"))]
#[x_kube(validation = Rule::new("!has(self.slowStart) || !has(self.type) || self.type != 'ConsistentHash'").message("slowStart does not apply to ConsistentHash: its keys must not move"))]
pub struct LoadBalancer {
    /// `LeastRequest` (the default): of two endpoints, the next in turn and a random other,
    /// the one with fewer requests in flight, so a slow endpoint gets fewer. `RoundRobin`:
    /// each endpoint in turn. `Random`: an endpoint at random. `ConsistentHash`: by a key
    /// of the request (`consistentHash`), the same key to the same endpoint on every
    /// replica, and when an endpoint leaves only about 1/N of the keys move (Maglev).
    #[serde(default, rename = "type")]
    pub type_: LoadBalancerType,

    /// What a `ConsistentHash` balancer hashes. A request without the key goes to a random
    /// endpoint; a key whose endpoint is ejected or unhealthy goes to the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,

    /// Ramp up new endpoints: one that joins while the backend already has endpoints gets a
    /// share of requests growing linearly from `minWeightPercent` of its fair share to all
    /// of it over `window` (off by default). Not with `ConsistentHash`, whose keys must not
    /// move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<SlowStart>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlowStart {
    /// How long the ramp lasts.
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("window is a duration such as 30s, 2m or 10m"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("window must be between 1s and 1h"))]
    #[schemars(length(min = 2, max = 24))]
    pub window: String,

    /// The share a new endpoint starts with, in percent of its fair share (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    #[schemars(extend("format" = "int64"))]
    pub min_weight_percent: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.name) == (self.type != 'SourceIP')").message("name is required for Header, Cookie and QueryParameter keys, and only for them"))]
pub struct ConsistentHash {
    /// `Header` (its value; every value of a repeated header, in order), `Cookie` (its
    /// value), `QueryParameter` (its value) or `SourceIP` (the address of the connection's
    /// peer: behind a load balancer that does not keep client addresses, that is the load
    /// balancer's).
    #[serde(rename = "type")]
    pub type_: HashType,
    /// The header, cookie or query parameter name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum HashType {
    Header,
    Cookie,
    QueryParameter,
    #[serde(rename = "SourceIP")]
    SourceIp,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum LoadBalancerType {
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
    ConsistentHash,
}

/// When an endpoint is taken out of balancing for failing requests in a row.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.baseEjectionTime) || !has(self.maxEjectionTime) || duration(self.baseEjectionTime) <= duration(self.maxEjectionTime)").message("baseEjectionTime must not exceed maxEjectionTime"))]
#[x_kube(validation = Rule::new("!has(self.baseEjectionTime) || has(self.maxEjectionTime) || duration(self.baseEjectionTime) <= duration('300s')").message("baseEjectionTime must not exceed maxEjectionTime (300s by default)"))]
pub struct OutlierDetection {
    /// 5xx answers in a row that eject an endpoint (default 5; 0 never ejects for them).
    #[serde(
        default,
        rename = "consecutive5xx",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(max = 1000))]
    #[schemars(extend("format" = "int64"))]
    pub consecutive_5xx: Option<u32>,

    /// Connect failures, resets and timeouts in a row that eject an endpoint (default 5; 0
    /// never ejects for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    #[schemars(extend("format" = "int64"))]
    pub consecutive_gateway_errors: Option<u32>,

    /// How long a first ejection lasts; each further ejection of the same endpoint lasts
    /// this much longer (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("baseEjectionTime is a duration such as 500ms, 10s, 1m or 1h"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("baseEjectionTime must be between 1s and 1h"))]
    #[schemars(length(min = 2, max = 24))]
    pub base_ejection_time: Option<String>,

    /// The longest an ejection lasts (default `300s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("maxEjectionTime is a duration such as 500ms, 10s, 1m or 1h"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('24h')").message("maxEjectionTime must be between 1s and 24h"))]
    #[schemars(length(min = 2, max = 24))]
    pub max_ejection_time: Option<String>,

    /// The most endpoints out at once, as a percentage of the backend's; at least one may
    /// always be out (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    #[schemars(extend("format" = "int64"))]
    pub max_ejected_percent: Option<u32>,

    /// When fewer than this percentage of the endpoints are in, ejections are ignored and
    /// every endpoint is used: an overloaded few are worse than a wrong many (default 50;
    /// 0 never ignores them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    #[schemars(extend("format" = "int64"))]
    pub panic_threshold_percent: Option<u32>,
}

/// Probing the endpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'HTTP' || has(self.http)").message("an HTTP health check needs http.path"))]
#[x_kube(validation = Rule::new("self.type == 'HTTP' || !has(self.http)").message("http applies only to the HTTP type"))]
#[x_kube(validation = Rule::new("self.type == 'GRPC' || !has(self.grpc)").message("grpc applies only to the GRPC type"))]
pub struct HealthCheck {
    /// `HTTP` (a request whose answer must have an expected status), `TCP` (a connection
    /// that opens) or `GRPC` (`grpc.health.v1.Health/Check` answering `SERVING`).
    #[serde(rename = "type")]
    pub type_: HealthCheckType,

    /// Time between two probes of an endpoint, with up to 10 % of jitter (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("interval is a duration such as 500ms, 10s or 1m"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms') && duration(self) <= duration('1h')").message("interval must be between 100ms and 1h"))]
    #[schemars(length(min = 2, max = 24))]
    pub interval: Option<String>,

    /// How long a probe may take before it counts as failed (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("timeout is a duration such as 500ms, 1s or 10s"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10ms') && duration(self) <= duration('1m')").message("timeout must be between 10ms and 1m"))]
    #[schemars(length(min = 2, max = 24))]
    pub timeout: Option<String>,

    /// Failed probes in a row that take an endpoint out (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    #[schemars(extend("format" = "int64"))]
    pub unhealthy_threshold: Option<u32>,

    /// Passed probes in a row that bring it back (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    #[schemars(extend("format" = "int64"))]
    pub healthy_threshold: Option<u32>,

    /// The request of an `HTTP` check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,

    /// The service of a `GRPC` check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheck>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum HealthCheckType {
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "GRPC")]
    Grpc,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpHealthCheck {
    /// The path (and query) probed.
    #[x_kube(validation = Rule::new("self.matches('^/[!-~]*$')").message("path starts with / and is visible ASCII (no spaces)"))]
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,

    /// `GET` (the default) or `HEAD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['GET', 'HEAD']").message("method is GET or HEAD"))]
    pub method: Option<String>,

    /// The Host header of the probe (default: the endpoint's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9.-]+(:[0-9]{1,5})?$')").message("hostname is a host name, optionally with a port"))]
    #[schemars(length(min = 1, max = 253))]
    pub hostname: Option<String>,

    /// Statuses that pass (default `[200]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub expected_statuses: Vec<ExpectedStatus>,
}

/// A status, or a range of statuses (`start` to `end`, both included).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.end) || self.end >= self.start").message("end must not be below start"))]
pub struct ExpectedStatus {
    #[schemars(range(min = 100, max = 599))]
    #[schemars(extend("format" = "int64"))]
    pub start: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 599))]
    #[schemars(extend("format" = "int64"))]
    pub end: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrpcHealthCheck {
    /// The service asked about (default `""`: the server as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service: Option<String>,
}

/// Retrying on another endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(!has(self.attempts) && !has(self.backoff)) || (has(self.statuses) && size(self.statuses) > 0) || (has(self.onReset) && self.onReset)").message("retry.attempts and retry.backoff need retry.statuses or retry.onReset: true"))]
pub struct Retry {
    /// Retry a request on another endpoint when no connection could be made to the first
    /// (default `true`). Nothing reached the backend, so this is safe for every method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_connect_failure: Option<bool>,

    /// Let an HTTPRoute's `retry` retry non-idempotent methods (POST, PATCH, CONNECT) too
    /// (default `false`: a failed POST may already have been acted on, so only a connection
    /// that could not be made is retried for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_idempotent: Option<bool>,

    /// How many retries the backend tolerates: over the last 10 seconds, at most `percent`
    /// of the requests plus `minPerSecond` a second (default 20 % and 10 a second), so a
    /// failing backend never sees much more than the load offered to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,

    /// Answers to retry (400-599), for every route rule sending to the backend that has no
    /// `retry` of its own (a rule's `retry` replaces this whole). As with a rule's `retry`,
    /// exchanges that broke and attempts past `perTryTimeout` are retried with them, each
    /// retry goes to another endpoint where there is one, and only requests whose body was
    /// kept (none, or at most 64 KiB) of idempotent methods (unless `nonIdempotent`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub statuses: Vec<RetryStatus>,

    /// Retry exchanges that broke (reset, closed, cut short) and attempts past
    /// `perTryTimeout` even without `statuses` (default `false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_reset: Option<bool>,

    /// Retries after the first attempt, with `statuses` or `onReset` (default 2, at most 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    #[schemars(extend("format" = "int64"))]
    pub attempts: Option<u32>,

    /// The wait before a first retry, doubled for each one after, up to ten times it, plus
    /// up to half again as jitter (default `25ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("backoff is a duration such as 25ms, 100ms or 1s"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1ms') && duration(self) <= duration('1m')").message("backoff must be between 1ms and 1m"))]
    #[schemars(length(min = 2, max = 24))]
    pub backoff: Option<String>,

    /// Each attempt must be answered (its response headers) within this, for rules without
    /// a `timeouts.backendRequest` of their own; a late attempt counts as a gateway error
    /// and, with `statuses` or `onReset`, is retried (no limit by default; the rule's
    /// request timeout still bounds the whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("perTryTimeout is a duration such as 500ms, 2s or 1m"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10ms') && duration(self) <= duration('1h')").message("perTryTimeout must be between 10ms and 1h"))]
    #[schemars(length(min = 2, max = 24))]
    pub per_try_timeout: Option<String>,
}

/// An HTTP status a BackendPolicy retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct RetryStatus(
    #[schemars(range(min = 400, max = 599))]
    #[schemars(extend("format" = "int64"))]
    pub u16,
);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries as a percentage of the requests of the last 10 seconds (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    #[schemars(extend("format" = "int64"))]
    pub percent: Option<u32>,

    /// Retries a second allowed whatever the traffic, so a quiet backend can still be
    /// retried (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100_000))]
    #[schemars(extend("format" = "int64"))]
    pub min_per_second: Option<u32>,
}

/// Limits per dataplane replica. Over a limit, a request is answered 503, with
/// `x-portico-overloaded: <the limit's field name>` and counted in `portico_upstream_overloaded_total`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.maxPendingRequests) || has(self.maxConnections)").message("maxPendingRequests applies only with maxConnections"))]
pub struct CircuitBreaker {
    /// Requests in flight to the backend at once (no limit by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    #[schemars(extend("format" = "int64"))]
    pub max_requests: Option<u32>,

    /// Retries in flight to the backend at once (no limit by default; the retry budget
    /// applies either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    #[schemars(extend("format" = "int64"))]
    pub max_retries: Option<u32>,

    /// Connections open to the backend's endpoints at once (no limit by default). At the
    /// limit, a request that finds no idle connection to its endpoint first closes an idle
    /// one to another endpoint; when every connection is busy it waits (one of
    /// `maxPendingRequests`) up to the connect timeout for one to free up, then is
    /// answered 503 (`maxConnections`). A TCPRoute or TLSRoute connection and a UDPRoute
    /// flow to the backend count as one connection each, and are refused at the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    #[schemars(extend("format" = "int64"))]
    pub max_connections: Option<u32>,

    /// Requests waiting for a connection at once under `maxConnections` (default 1024; 0:
    /// none waits); one more is answered 503 at once (`maxPendingRequests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    #[schemars(extend("format" = "int64"))]
    pub max_pending_requests: Option<u32>,
}

/// Connections to the endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// How long making a connection may take before the attempt counts as a connect failure
    /// (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("connectTimeout is a duration such as 500ms, 10s or 1m"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1ms') && duration(self) <= duration('5m')").message("connectTimeout must be between 1ms and 5m"))]
    #[schemars(length(min = 2, max = 24))]
    pub connect_timeout: Option<String>,

    /// How long an idle HTTP/1.1 connection to an endpoint is kept for reuse (default
    /// `90s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("idleTimeout is a duration such as 500ms, 10s or 1m"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("idleTimeout must be between 1s and 1h"))]
    #[schemars(length(min = 2, max = 24))]
    pub idle_timeout: Option<String>,

    /// TCP keep-alive probes on connections to the endpoints (off by default), so a peer
    /// that vanished (a node gone, a NAT or firewall entry dropped) is noticed on an idle
    /// connection rather than by the next request sent on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keep_alive: Option<TcpKeepAlive>,

    /// HTTP/2 connections, to backends whose Service port says `appProtocol:
    /// kubernetes.io/h2c` and those of GRPCRoutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<Http2>,

    /// The PROXY protocol header (HAProxy's: `V1` text, `V2` binary) sent first on each
    /// connection of a TCPRoute or TLSRoute to the endpoints, saying the client's address and
    /// the listener's, for backends that ask for it. Off by default. Not sent by HTTP routes,
    /// whose pooled connections carry many clients' requests (they get `X-Forwarded-For`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// A PROXY protocol version.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ProxyProtocol {
    V1,
    V2,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpKeepAlive {
    /// Idle time before the first probe (default `60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("idle is a duration such as 30s, 1m or 2h"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('2h')").message("idle must be between 1s and 2h"))]
    #[schemars(length(min = 2, max = 24))]
    pub idle: Option<String>,

    /// Between probes (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("interval is a duration such as 5s, 10s or 1m"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('10m')").message("interval must be between 1s and 10m"))]
    #[schemars(length(min = 2, max = 24))]
    pub interval: Option<String>,

    /// Unanswered probes that end the connection (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    #[schemars(extend("format" = "int64"))]
    pub probes: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Http2 {
    /// Streams (requests) one connection carries at once; more open another connection to
    /// the endpoint (default: one connection per endpoint, as many streams as the backend's
    /// SETTINGS allow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    #[schemars(extend("format" = "int64"))]
    pub max_concurrent_streams: Option<u32>,

    /// Send a PING this often, even on an idle connection (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("keepAliveInterval is a duration such as 10s, 30s or 1m"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("keepAliveInterval must be between 1s and 1h"))]
    #[schemars(length(min = 2, max = 24))]
    pub keep_alive_interval: Option<String>,

    /// A PING unanswered this long closes the connection (default `20s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("keepAliveTimeout is a duration such as 5s, 20s or 1m"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms') && duration(self) <= duration('5m')").message("keepAliveTimeout must be between 100ms and 5m"))]
    #[schemars(length(min = 2, max = 24))]
    pub keep_alive_timeout: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    /// The CEL rule and compile refuse the same header names.
    #[test]
    fn the_cel_rule_lists_every_reserved_session_header() {
        let crd = serde_json::to_string(&BackendPolicy::crd()).unwrap_or_default();
        let rule = crd
            .split("\"rule\":")
            .find(|r| r.contains("lowerAscii() in ["))
            .unwrap_or_default();
        let listed = rule
            .split_once("in [")
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(list, _)| list.matches('\'').count() / 2)
            .unwrap_or_default();
        assert_eq!(listed, RESERVED_SESSION_HEADERS.len(), "{rule}");
        for name in RESERVED_SESSION_HEADERS {
            assert!(rule.contains(&format!("'{name}'")), "{name} in {rule}");
        }
    }
}
