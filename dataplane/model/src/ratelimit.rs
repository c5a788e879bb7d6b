//! Rate limits as the dataplane enforces them: a `RateLimitPolicy` with its durations parsed,
//! defaults filled in and its Redis resolved by compile.

use crate::object::ObjectRef;
use serde::{Deserialize, Serialize};

/// How long a request waits for Redis when the policy does not say.
pub const DEFAULT_REDIS_TIMEOUT_MS: u32 = 100;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicy {
    pub id: ObjectRef,
    pub limits: Vec<Limit>,
    /// Trusted `X-Forwarded-For` hops for `ClientIp` keys (0: the peer address).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub trusted_hops: u32,
    /// Leading bits of an IPv6 client address that make its `ClientIp` key.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix_length: u8,
    pub response_headers: bool,
    /// Present when a limit is `Global`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<Global>,
}

/// IPv6 clients are keyed by their /64 unless the policy says otherwise.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

fn default_ipv6_prefix() -> u8 {
    DEFAULT_IPV6_PREFIX
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limit {
    /// The user's name, or `limit-<index>`.
    pub name: String,
    pub requests: u32,
    pub interval_ms: u64,
    pub algorithm: Algorithm,
    /// Token bucket capacity (`burst`, else `requests`); equal to `requests` otherwise.
    pub burst: u32,
    pub scope: Scope,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<KeyPart>,
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<LimitMatch>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    TokenBucket,
    SlidingWindow,
    FixedWindow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    Local,
    Global,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyPart {
    ClientIp,
    /// Lower-case header name.
    Header(String),
    /// Claim path, split at dots.
    Claim(Vec<String>),
    Consumer,
    Route,
    Path,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitMatch {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Lower-case name, and the value it must equal (presence only without one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, Option<String>)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Global {
    /// `redis://host:port[/db]`.
    pub redis_url: String,
    pub fail_closed: bool,
    pub timeout_ms: u32,
}

/// Where a Redis listens, from a `redis://host:port[/db]` URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RedisAddress {
    /// `host:port`, for connecting.
    pub host_port: String,
    pub db: u32,
}

impl RedisAddress {
    /// Parses `redis://host[:port][/db]` (port 6379 by default). User names and passwords
    /// are refused: a credential does not belong in a policy's spec.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{url:?} is not a redis:// URL"))?;
        let (authority, db) = match rest.split_once('/') {
            None => (rest, 0),
            Some((a, "")) => (a, 0),
            Some((a, d)) => (
                a,
                d.parse::<u32>()
                    .map_err(|_| format!("database {d:?} in {url:?} is not a number"))?,
            ),
        };
        if authority.contains('@') {
            return Err("credentials in a Redis URL are not supported".into());
        }
        if authority.is_empty() || authority.contains(['?', '#', ' ']) {
            return Err(format!("{url:?} has no usable host"));
        }
        let has_port = match authority.rsplit_once(':') {
            // `[::1]` alone, or an IPv6 address in brackets with a port.
            Some((h, p)) if !p.contains(']') => {
                p.parse::<u16>()
                    .map_err(|_| format!("port {p:?} in {url:?} is not a number"))?;
                if h.is_empty() {
                    return Err(format!("{url:?} has no host"));
                }
                true
            }
            _ => false,
        };
        let host_port = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:6379")
        };
        Ok(Self { host_port, db })
    }
}
