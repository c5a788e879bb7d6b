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
    /// The Redis tier shared by the replicas, if the policy has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedTier>,
}

/// How long a lookup waits for the shared tier when the policy does not say.
pub const DEFAULT_SHARED_TIMEOUT_MS: u32 = 50;
/// The longest an entry is kept in the shared tier (purges are remembered that long).
pub const SHARED_MAX_SECS: u64 = 86_400;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedTier {
    /// Resolved by compile (the policy's, the Gateway's, the controller's).
    pub redis_url: String,
    pub timeout_ms: u32,
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

/// One purge of a `CacheInvalidation`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Purge {
    /// The same for as long as the invalidation's spec is unchanged: a replica applies a
    /// purge once, however many snapshots carry it.
    pub id: String,
    pub kind: PurgeKind,
    /// A URL or prefix as [`canonical_url`] writes it, or a tag.
    pub value: String,
    /// Only entries of these routes (`namespace/name`), when the invalidation targets
    /// routes: one team's invalidation does not empty another's entries. Empty: every
    /// entry of the Gateway (it targets the Gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// When the invalidation was made (seconds since the epoch; 0 when unknown): what the
    /// shared tier stored before then is refused, whenever a replica applies it.
    #[serde(default)]
    pub created: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PurgeKind {
    /// Every variant of one URL.
    Url,
    /// Every URL that starts with the value.
    Prefix,
    /// Every response that carried the tag (`Cache-Tag`, `Surrogate-Key`).
    Tag,
}

/// `value` as a cache key's URL: `scheme://host:port/path?query`, scheme and host
/// lowercased, the scheme's default port filled in, `/` for an empty path.
pub fn canonical_url(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > 4096 || value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("a URL is 1 to 4096 bytes, without control characters".into());
    }
    let (scheme, rest) = value
        .split_once("://")
        .ok_or_else(|| format!("{value:?} is not an absolute URL (http://host/path)"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(format!("{value:?}: the scheme is http or https")),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let (host, port) = split_host(authority);
    if host.is_empty() || host.contains(['@', ' ']) {
        return Err(format!("{value:?} names no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("{value:?}: the port is not a number"))?,
    };
    Ok(format!("{scheme}://{host}:{port}{path}"))
}

/// A Host value's host (lowercased) and port, if it names one.
pub fn split_host(authority: &str) -> (String, Option<&str>) {
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => {
                let (h, rest) = authority.split_at(i + 1);
                (h, rest.strip_prefix(':'))
            }
            None => (authority, None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    (host.to_ascii_lowercase(), port.filter(|p| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_written_as_cache_keys_hold_them() {
        for (value, expected) in [
            ("HTTP://Api.Test/a?b=1", "http://api.test:80/a?b=1"),
            ("https://api.test:8443/x", "https://api.test:8443/x"),
            ("https://api.test", "https://api.test:443/"),
            ("https://api.test?x=1", "https://api.test:443/?x=1"),
            ("https://[::1]/", "https://[::1]:443/"),
        ] {
            assert_eq!(canonical_url(value).as_deref(), Ok(expected), "{value}");
        }
        for value in [
            "/relative",
            "ftp://x/",
            "http://:80/",
            "http://h:port/",
            "",
            "http://a b/",
        ] {
            assert!(canonical_url(value).is_err(), "{value}");
        }
    }

    #[test]
    fn hosts_split_from_their_ports() {
        assert_eq!(
            split_host("API.test:8080"),
            ("api.test".into(), Some("8080"))
        );
        assert_eq!(split_host("api.test"), ("api.test".into(), None));
        assert_eq!(split_host("[::1]:80"), ("[::1]".into(), Some("80")));
        assert_eq!(split_host("[::1]"), ("[::1]".into(), None));
    }
}
