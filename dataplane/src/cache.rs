//! Response caching: its HTTP semantics as pure functions of headers and times (RFC 9111
//! for a shared cache, RFC 5861's stale extensions, RFC 9211's `Cache-Status`), table-tested
//! here, and the memory tier and coalescing table the request path will act through.
//!
//! ```text
//!   request ──▶ directives::RequestDirectives ─┐
//!   stored entry (headers, freshness::Timing) ──┼─▶ freshness::reuse ─▶ Fresh / Stale… / Revalidate
//!   client validators ──────────────────────────┴─▶ validation::not_modified ─▶ 304
//!   origin response ─▶ directives::ResponseDirectives ─▶ freshness::lifetime
//!                    ─▶ storable::storable (method, status, no-store, private,
//!                       Authorization, Set-Cookie, Vary: *, size) ─▶ stored under
//!                       the primary key and variant::Variant
//!   unsafe request ─▶ validation::invalidated ─▶ paths made stale
//!   store::MemoryStore: entries by key and variant, a byte budget, sampled-LRU eviction,
//!                       purges by key, prefix and tag
//!   coalesce::Coalescer: one upstream request per missed key, the others wait (bounded)
//! ```
//!
//! [`shared`] is the Redis tier behind the memory one.
//!
//! Leaves, but for [`step`] and [`shared`] (which uses the rate limiter's Redis client): these modules import `http`, `httpdate`, `bytes`, `tokio::sync`
//! and each other, nothing of the proxy. [`step`] is the cache as a step of the request path
//! (lookup before the upstream, storing after it), applying them.

pub mod coalesce;
pub mod directives;
pub mod freshness;
pub mod purge;
pub mod shared;
pub mod step;
pub mod storable;
pub mod store;
pub mod validation;
pub mod variant;

/// Why a request went to the origin (RFC 9211 §2.2, `fwd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// The cache did not look (policy off for it, a method it does not serve).
    Bypass,
    /// Nothing stored for the URI.
    UriMiss,
    /// Stored for the URI, but not for the request's variant.
    VaryMiss,
    /// Stored, and stale: revalidated.
    Stale,
    /// The request asked for it (`no-cache`).
    Request,
}

impl Forward {
    fn as_str(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::UriMiss => "uri-miss",
            Self::VaryMiss => "vary-miss",
            Self::Stale => "stale",
            Self::Request => "request",
        }
    }
}

/// One cache's entry of the `Cache-Status` response header (RFC 9211).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheStatus {
    /// Answered from the cache without going to the origin.
    pub hit: bool,
    pub fwd: Option<Forward>,
    /// The origin's status when it was asked (a revalidation's 304 included).
    pub fwd_status: Option<u16>,
    /// The answer was stored.
    pub stored: bool,
    /// The request waited for another one's answer (coalesced).
    pub collapsed: bool,
    /// Seconds it stays fresh (negative: stale by that much).
    pub ttl: Option<i64>,
    /// Why not stored, or another short reason.
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    /// The header's value, named `cache` (`Portico`).
    pub fn header_value(&self, cache: &str) -> String {
        let mut out = cache.to_string();
        if self.hit {
            out.push_str("; hit");
        }
        if let Some(f) = self.fwd {
            out.push_str("; fwd=");
            out.push_str(f.as_str());
        }
        if let Some(s) = self.fwd_status {
            out.push_str(&format!("; fwd-status={s}"));
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        if let Some(t) = self.ttl {
            out.push_str(&format!("; ttl={t}"));
        }
        if let Some(d) = self.detail {
            out.push_str("; detail=");
            out.push_str(d);
        }
        out
    }
}

/// A header map of `(name, value)` lines, for the tests.
#[cfg(test)]
pub(crate) fn test_headers(lines: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (n, v) in lines {
        h.append(
            http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_follows_rfc_9211() {
        let hit = CacheStatus {
            hit: true,
            ttl: Some(42),
            ..CacheStatus::default()
        };
        assert_eq!(hit.header_value("Portico"), "Portico; hit; ttl=42");
        let miss = CacheStatus {
            fwd: Some(Forward::UriMiss),
            fwd_status: Some(200),
            stored: true,
            ttl: Some(60),
            ..CacheStatus::default()
        };
        assert_eq!(
            miss.header_value("Portico"),
            "Portico; fwd=uri-miss; fwd-status=200; stored; ttl=60"
        );
        let refused = CacheStatus {
            fwd: Some(Forward::VaryMiss),
            collapsed: true,
            detail: Some(storable::NotStored::Private.as_str()),
            ..CacheStatus::default()
        };
        assert_eq!(
            refused.header_value("Portico"),
            "Portico; fwd=vary-miss; collapsed; detail=private"
        );
        // Revalidated: forwarded, the origin's 304 and the stored body (RFC 9211's example).
        let stale = CacheStatus {
            fwd: Some(Forward::Stale),
            fwd_status: Some(304),
            ttl: Some(-5),
            ..CacheStatus::default()
        };
        assert_eq!(
            stale.header_value("Portico"),
            "Portico; fwd=stale; fwd-status=304; ttl=-5"
        );
        assert_eq!(
            CacheStatus {
                fwd: Some(Forward::Bypass),
                ..Default::default()
            }
            .header_value("Portico"),
            "Portico; fwd=bypass"
        );
        assert_eq!(Forward::Request.as_str(), "request");
    }
}
