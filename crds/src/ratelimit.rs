//! `RateLimitPolicy`: how many requests the clients of a Gateway, a listener, an HTTPRoute or
//! one of its rules may send, counted per replica (`Local`) or across every replica of the
//! dataplane in Redis (`Global`).
//!
//! Every limit of a policy is checked; a request passes when all of the limits that count it
//! admit it.

// KubeSchema's derive copies each struct into a private module to build its schema; the
// copies are what this lint sees.
#![allow(unreachable_pub)]

// Unsigned fields carry `format: int64` in the schema: Kubernetes knows int32 and int64, and
// warns about schemars' `uint32`.

use crate::policy::{PolicyStatus, PolicyTargetRef};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Rate limits for the requests of the targets.
///
/// Precedence is the same as for AuthPolicy: a policy on an HTTPRoute rule beats one on the
/// HTTPRoute, which beats one on the listener, which beats one on the Gateway; the most
/// specific policy applies whole. Two policies on the same target: the older applies and the
/// other reports `Accepted=False` with reason `Conflicted`.
// The printcolumn attributes repeat `type_ = "string"`, which this lint takes for a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "portico.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "rlpol",
    category = "portico",
    doc = "RateLimitPolicy limits the request rate of a Gateway, a listener, an HTTPRoute or one of its rules, per replica or across replicas (Gateway API policy attachment).",
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
#[x_kube(validation = Rule::new("self.limits.all(l, !has(l.name) || self.limits.filter(m, has(m.name) && m.name == l.name).size() == 1)").message("limit names must be unique within a policy"))]
pub struct RateLimitPolicySpec {
    /// The Gateways (or listeners, with `sectionName`) and HTTPRoutes (or rules) whose
    /// requests these limits count, in the policy's namespace.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<PolicyTargetRef>,

    /// The limits; a request must be admitted by every limit that counts it.
    #[schemars(length(min = 1, max = 16))]
    pub limits: Vec<Limit>,

    /// How the client address of a `ClientIP` key is found.
    #[serde(default, rename = "clientIP", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIp>,

    /// Send the `RateLimit-Policy` and `RateLimit` response headers
    /// (draft-ietf-httpapi-ratelimit-headers) on every counted response. 429 answers always
    /// carry `Retry-After`.
    #[serde(default = "default_true")]
    pub response_headers: bool,

    /// Where `Global` limits are kept and what happens when that store cannot be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalSettings>,
}

fn default_true() -> bool {
    true
}

/// One limit: at most `requests` per `interval` for each value of `key`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.burst) || !has(self.algorithm) || self.algorithm == 'TokenBucket'").message("burst applies only to the TokenBucket algorithm"))]
pub struct Limit {
    /// Names the limit in the `RateLimit` headers and in metrics; `limit-<index>` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("a limit name is lower-case letters, digits and '-'"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,

    /// How many requests each key may send per interval.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    #[schemars(extend("format" = "int64"))]
    pub requests: u32,

    /// The length of the window (or the token bucket's refill period), as a Gateway API
    /// Duration: `500ms`, `1s`, `1m`, `1h`.
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("interval is a duration such as 500ms, 10s, 1m or 1h"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1ms') && duration(self) <= duration('24h')").message("interval must be between 1ms and 24h"))]
    #[schemars(length(min = 2, max = 24))]
    pub interval: String,

    /// `TokenBucket` (the default) refills `requests` tokens per `interval` and holds up to
    /// `burst`; `SlidingWindow` weighs the previous window by how much of it still overlaps
    /// the last `interval`; `FixedWindow` counts per calendar-aligned window (cheapest, but it
    /// can admit up to twice the limit around a window boundary).
    #[serde(default)]
    pub algorithm: Algorithm,

    /// TokenBucket only: how many requests may arrive at once. Defaults to `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    #[schemars(extend("format" = "int64"))]
    pub burst: Option<u32>,

    /// `Local` counts per dataplane replica, in memory; `Global` counts across every replica,
    /// in Redis (see `global`).
    #[serde(default)]
    pub scope: Scope,

    /// What is counted separately: one counter per distinct combination of these values. No
    /// key: all requests of the target share one counter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub key: Vec<KeyPart>,

    /// Which requests this limit counts; without it, every request of the targets.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<LimitMatch>,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum Algorithm {
    #[default]
    TokenBucket,
    SlidingWindow,
    FixedWindow,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum Scope {
    #[default]
    Local,
    Global,
}

/// One part of a limit's key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.name) == (self.type in ['Header', 'Claim'])").message("name is required for Header and Claim keys and only for them"))]
pub struct KeyPart {
    /// `ClientIP` (see `clientIP`), `Header` (`name`), `Claim` (a claim of the verified JWT or
    /// introspected token, `name` with dots for nested claims), `Consumer` (who the
    /// AuthPolicy authenticated), `Route` (the HTTPRoute rule), `Path` (the normalised path).
    /// A request without the value (no such header, anonymous) shares one counter with the
    /// other requests without it.
    #[serde(rename = "type")]
    pub type_: KeyType,
    /// The header or claim name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum KeyType {
    #[serde(rename = "ClientIP")]
    ClientIp,
    Header,
    Claim,
    Consumer,
    Route,
    Path,
}

/// Which requests a limit counts: all of the given conditions hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitMatch {
    /// Any of these methods (upper case). Empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub methods: Vec<String>,
    /// The normalised path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Each header is present (with `value`, equal to it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.value.startsWith('/')").message("a path starts with '/'"))]
pub struct PathMatch {
    /// `Exact` or `PathPrefix` (segment-wise, as in HTTPRoute).
    #[serde(rename = "type", default)]
    pub type_: PathMatchType,
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// Without it, the header only has to be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
}

/// Where the client address of a `ClientIP` key comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientIp {
    /// How many proxies in front of Portico append to `X-Forwarded-For` and are trusted. 0
    /// (the default): the dataplane's own setting (`--trusted-hops`), itself 0 by default:
    /// the peer address of the connection, `X-Forwarded-For` ignored (a client could write
    /// anything there). N: the N-th address from the right of `X-Forwarded-For`; a request
    /// with fewer addresses, or a malformed header, is keyed by its peer address.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    #[schemars(extend("format" = "int64"))]
    pub trusted_hops: u32,
    /// IPv6 clients are keyed by this many leading bits of their address (default 64: one
    /// host usually holds a whole /64, so keying by /128 would give it unlimited keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 128))]
    #[schemars(extend("format" = "int64"))]
    pub ipv6_prefix_length: Option<u32>,
}

/// The Redis that holds `Global` limits, and what to do without it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GlobalSettings {
    /// `redis://host:port` (an optional `/db` number). Without it, the `redisUrl` of the
    /// GatewayConfig of each Gateway the policy applies through, else the Redis the controller
    /// (or standalone `portico`) was started with, `--redis-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('redis://')").message("url must be a redis:// URL"))]
    #[schemars(length(min = 9, max = 512))]
    pub redis_url: Option<String>,
    /// When Redis cannot be reached (or answers later than `timeoutMilliseconds`):
    /// `FailOpen` (the default) enforces each global limit per replica instead, until Redis
    /// is back; `FailClosed` refuses the requests (503).
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// How long a request waits for Redis before the failure mode applies. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5000))]
    #[schemars(extend("format" = "int64"))]
    pub timeout_milliseconds: Option<u32>,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum FailureMode {
    #[default]
    FailOpen,
    FailClosed,
}
