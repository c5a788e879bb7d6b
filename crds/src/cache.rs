//! `CachePolicy`: response caching for a Gateway, a listener, an HTTPRoute or one of its
//! rules, with the semantics of a shared HTTP cache (RFC 9111). Off unless a policy applies.

// KubeSchema's derive copies each struct into a private module to build its schema; the
// copies are what this lint sees.
#![allow(unreachable_pub)]

use crate::policy::{PolicyStatus, PolicyTargetRef};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Caches the responses of the targets.
///
/// The origin's `Cache-Control`, `Expires` and `Vary` decide what is stored and for how long
/// (RFC 9111 for a shared cache); this policy turns caching on, sets what the origin leaves
/// unsaid (`defaultTTL`), may override it (`forcedTTL`), bounds it (`maxTTL`) and says what
/// the cache key holds beyond the scheme, host, port and path.
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
    kind = "CachePolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "cachepol",
    category = "portico",
    doc = "CachePolicy caches the responses of a Gateway, a listener, an HTTPRoute or one of its rules, as a shared HTTP cache (RFC 9111) (Gateway API policy attachment).",
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
#[x_kube(validation = Rule::new("!has(self.defaultTTL) || !has(self.forcedTTL)").message("defaultTTL and forcedTTL exclude each other: forcedTTL applies to every response"))]
pub struct CachePolicySpec {
    /// The Gateways (or listeners, with `sectionName`) and HTTPRoutes (or rules) whose
    /// responses are cached, in the policy's namespace.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<PolicyTargetRef>,

    /// The lifetime of a response whose origin gives none (no `s-maxage`, `max-age` or
    /// `Expires`); the origin's headers win when they give one. Without it such responses
    /// are not stored (unless `heuristic`). Only for statuses RFC 9110 calls heuristically
    /// cacheable (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501) or listed in
    /// `statuses`.
    #[serde(
        default,
        rename = "defaultTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("defaultTTL is a duration such as 30s, 5m or 1h"))]
    #[schemars(length(min = 2, max = 24))]
    pub default_ttl: Option<String>,

    /// The lifetime of every stored response, whatever its origin says about freshness (the
    /// operator wins). `no-store`, `private` and `no-cache` still apply.
    #[serde(default, rename = "forcedTTL", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("forcedTTL is a duration such as 30s, 5m or 1h"))]
    #[schemars(length(min = 2, max = 24))]
    pub forced_ttl: Option<String>,

    /// No response stays fresh longer than this. Defaults to 24h.
    #[serde(default, rename = "maxTTL", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("maxTTL is a duration such as 1h or 24h"))]
    #[schemars(length(min = 2, max = 24))]
    pub max_ttl: Option<String>,

    /// Give a response with `Last-Modified` and no lifetime of its own a tenth of its age
    /// (at most a day), as RFC 9111 §4.2.2 allows. Off by default.
    #[serde(default)]
    pub heuristic: bool,

    /// How long a stale response may still be served while it is refreshed in the
    /// background, for responses without their own `stale-while-revalidate` (RFC 5861).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("staleWhileRevalidate is a duration such as 30s or 5m"))]
    #[schemars(length(min = 2, max = 24))]
    pub stale_while_revalidate: Option<String>,

    /// How long a stale response may still be served when the backend fails (refused
    /// connection, 5xx, timeout), for responses without their own `stale-if-error`
    /// (RFC 5861).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("staleIfError is a duration such as 5m or 1h"))]
    #[schemars(length(min = 2, max = 24))]
    pub stale_if_error: Option<String>,

    /// What the cache key holds beyond the scheme, host, port and path, which it always
    /// holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<CacheKey>,

    /// The statuses that may be stored. Empty: any final status the origin gives a lifetime
    /// (RFC 9111); the policy's TTLs apply only to heuristically cacheable statuses.
    /// Listed: only these, and the TTLs apply to them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(inner(range(min = 200, max = 599)))]
    pub statuses: Vec<u16>,

    /// The largest body stored, in bytes; larger responses are streamed through without
    /// being held. Defaults to 1 MiB, at most 64 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 67_108_864))]
    #[schemars(extend("format" = "int64"))]
    pub max_object_bytes: Option<u64>,

    /// Store responses that set cookies, and replay their `Set-Cookie` to every client the
    /// entry answers. Only for cookies meant for everyone; off by default.
    #[serde(default)]
    pub store_set_cookie: bool,

    /// Concurrent misses for one key make one request to the backend; the others wait for
    /// its answer, at most this long, then go to the backend themselves. Defaults to 5s;
    /// `0s` turns coalescing off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')").message("coalesceTimeout is a duration such as 0s, 500ms or 5s"))]
    #[schemars(length(min = 2, max = 24))]
    pub coalesce_timeout: Option<String>,

    /// A second tier in Redis, shared by every replica: what one replica fetched, the
    /// others answer from (each keeps its own memory tier in front). Entries are kept at most
    /// a day there. When Redis is slow or down, replicas cache for themselves; no request
    /// fails for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedTier>,
}

/// The shared Redis tier of a CachePolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedTier {
    /// `redis://host:port[/db]`. Defaults to the `redisUrl` of the Gateway's GatewayConfig,
    /// else the controller's `--redis-url` (as for global rate limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub redis_url: Option<String>,

    /// How long a lookup waits for Redis before the request goes on without it. Defaults to
    /// 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    #[schemars(extend("format" = "int64"))]
    pub timeout_milliseconds: Option<u32>,
}

/// The parts of the cache key a policy chooses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.includeQuery) || !has(self.excludeQuery)").message("includeQuery and excludeQuery exclude each other"))]
pub struct CacheKey {
    /// Leave the query string out of the key (every query answered by one entry).
    #[serde(default)]
    pub ignore_query: bool,

    /// Only these query parameters are in the key (in a canonical order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub include_query: Option<Vec<String>>,

    /// Every query parameter but these is in the key (tracking parameters such as
    /// `utm_source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub exclude_query: Option<Vec<String>>,

    /// Request headers whose values are in the key (`Accept-Language`, a tenant header). A
    /// header the backend varies on without saying so in `Vary` belongs here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub headers: Vec<String>,

    /// Key by the consumer an AuthPolicy authenticated: each consumer has its own entries,
    /// and responses to requests with credentials may be stored for that consumer alone.
    /// Needs an AuthPolicy on the same requests.
    #[serde(default)]
    pub consumer: bool,
}

/// Removes cached responses from the dataplanes of the targets: every replica of every
/// Gateway the targets are served through, each once. The status says, per target, when
/// every connected replica has done it.
// The printcolumn attributes repeat `type_ = "string"`, which this lint takes for a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "portico.dev",
    version = "v1alpha1",
    kind = "CacheInvalidation",
    namespaced,
    status = "PolicyStatus",
    shortname = "cacheinv",
    category = "portico",
    doc = "CacheInvalidation purges cached responses (by URL, URL prefix or tag) from every dataplane replica of the Gateways its targets are served through.",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.targetRefs[0].name",
        description = "The first target"
    ),
    printcolumn(
        name = "Purged",
        type_ = "string",
        json_path = ".status.ancestors[0].conditions[?(@.type==\"Purged\")].status",
        description = "Whether every replica serving the first target purged"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CacheInvalidationSpec {
    /// The Gateways and HTTPRoutes, in the invalidation's namespace, whose dataplanes
    /// purge: a Gateway's own, or those of every Gateway an HTTPRoute is served through.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<PolicyTargetRef>,

    /// What to remove. Each replica applies them once; delete the invalidation when it
    /// reports `Purged` (changing its spec purges again).
    #[schemars(length(min = 1, max = 64))]
    pub purges: Vec<PurgeSpec>,
}

/// One purge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PurgeSpec {
    /// `URL`: every variant of one URL (`https://shop.example.com/catalog?page=2`); `Prefix`:
    /// every URL that starts with the value (`https://shop.example.com/catalog/`); `Tag`: every
    /// response that carried the tag in `Cache-Tag` or `Surrogate-Key`.
    #[serde(rename = "type")]
    pub type_: PurgeType,
    /// An absolute `http` or `https` URL (the scheme's default port may be left out), or a
    /// tag.
    #[schemars(length(min = 1, max = 4096))]
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PurgeType {
    #[serde(rename = "URL")]
    Url,
    Prefix,
    Tag,
}
