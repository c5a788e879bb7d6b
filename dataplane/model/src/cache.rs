//! Response caching as the dataplane applies it: a `CachePolicy` with its durations parsed
//! into seconds and its defaults filled in by compile.

use crate::object::ObjectRef;
use serde::{Deserialize, Serialize};

/// The largest body stored when the policy does not say (1 MiB).
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 1 << 20;
/// The longest lifetime when the policy does not say (a day).
pub const DEFAULT_MAX_TTL_SECS: u64 = 86_400;
/// How long a coalesced miss waits for the request that went upstream, by default.
pub const DEFAULT_COALESCE_TIMEOUT_MS: u64 = 5_000;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachePolicy {
    pub id: ObjectRef,
    /// For responses whose origin gives no lifetime (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ttl: Option<u64>,
    /// For every response, whatever the origin says (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_ttl: Option<u64>,
    /// No lifetime is longer (seconds).
    pub max_ttl: u64,
    #[serde(default)]
    pub heuristic: bool,
    /// For responses without their own `stale-while-revalidate` (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate: Option<u64>,
    /// For responses without their own `stale-if-error` (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_if_error: Option<u64>,
    pub key: CacheKey,
    /// Statuses that may be stored; empty: any the origin gives a lifetime.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<u16>,
    pub max_object_bytes: u64,
    #[serde(default)]
    pub store_set_cookie: bool,
    /// 0: no coalescing.
    pub coalesce_timeout_ms: u64,
}

/// What the key holds beyond the scheme, host, port and path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheKey {
    pub query: QueryKey,
    /// Lowercased request header names, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default)]
    pub consumer: bool,
}

/// Which query parameters are in the key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type", content = "names")]
pub enum QueryKey {
    /// The query string as sent.
    #[default]
    All,
    None,
    /// Only these parameters, sorted.
    Include(Vec<String>),
    /// Every parameter but these.
    Exclude(Vec<String>),
}
