//! Static credentials: API keys and HTTP Basic against bcrypt hashes.

use super::cache::{Digest, TtlCache, digest};
use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use portico_model::auth as model;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// API keys held as SHA-256 digests. A lookup hashes the presented key and probes the map;
/// the probe compares digests of the attacker's input, which tell nothing about the keys, and
/// the final comparison is constant-time.
pub struct ApiKeys {
    pub header: Option<HeaderName>,
    pub query: Option<String>,
    keys: HashMap<Digest, Arc<str>>,
}

impl std::fmt::Debug for ApiKeys {
    // Even hashes of keys stay out of debug output (short keys could be guessed from them).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("header", &self.header)
            .field("query", &self.query)
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn sha256(data: &[u8]) -> Digest {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

fn from_hex(s: &str) -> Option<Digest> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

impl ApiKeys {
    pub fn new(m: &model::ApiKeys) -> Result<Self, String> {
        let header = m
            .header
            .as_deref()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|e| format!("apiKey header: {e}"))
            })
            .transpose()?;
        let keys = m
            .keys
            .iter()
            .filter_map(|k| Some((from_hex(&k.sha256)?, Arc::from(k.consumer.as_str()))))
            .collect();
        Ok(Self {
            header,
            query: m.query.clone(),
            keys,
        })
    }

    /// The key the request carries, if any.
    pub fn credential<'r>(
        &self,
        headers: &'r HeaderMap,
        query: Option<&'r str>,
    ) -> Option<Cow<'r, str>> {
        if let Some(h) = &self.header {
            return headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(|s| Cow::Borrowed(s.trim()));
        }
        let name = self.query.as_deref()?;
        query.and_then(|q| crate::util::query_param(q, name))
    }

    /// The consumer whose key this is.
    pub fn verify(&self, key: &str) -> Option<Arc<str>> {
        let d = sha256(key.as_bytes());
        let (stored, consumer) = self.keys.get_key_value(&d)?;
        bool::from(stored.ct_eq(&d)).then(|| consumer.clone())
    }
}

/// A bcrypt hash of a random password, verified for unknown users so that they take as long
/// as known ones (made once, at the usual cost).
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let random: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    bcrypt::hash(random, bcrypt::DEFAULT_COST).unwrap_or_default()
});

pub struct Basic {
    pub challenge: HeaderValue,
    users: HashMap<String, String>,
    ttl: Duration,
    /// Shared by every policy: keyed by user, password and hash, so a changed hash misses.
    verified: Arc<TtlCache<()>>,
}

impl std::fmt::Debug for Basic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Basic")
            .field("challenge", &self.challenge)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Basic {
    pub fn new(m: &model::Basic, verified: Arc<TtlCache<()>>) -> Result<Self, String> {
        let challenge =
            HeaderValue::from_str(&format!("Basic realm=\"{}\", charset=\"UTF-8\"", m.realm))
                .map_err(|e| format!("basic realm: {e}"))?;
        Ok(Self {
            challenge,
            users: m
                .users
                .iter()
                .map(|u| (u.user.clone(), u.hash.0.clone()))
                .collect(),
            ttl: Duration::from_secs(u64::from(m.cache_seconds)),
            verified,
        })
    }

    /// `(user, password)` from `Authorization: Basic ...`.
    pub fn credential(headers: &HeaderMap) -> Option<(String, String)> {
        let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, rest) = v.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (user, pass) = text.split_once(':')?;
        Some((user.to_string(), pass.to_string()))
    }

    /// Whether the password is the user's. Costs one bcrypt (on a blocking thread) per pair
    /// per cache lifetime.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.clone(), true),
            None => (DUMMY_HASH.clone(), false),
        };
        let key = digest(&[user.as_bytes(), password.as_bytes(), hash.as_bytes()]);
        if known && self.verified.get(&key).is_some() {
            return true;
        }
        let password = password.to_string();
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if ok && known {
            self.verified.insert(key, (), self.ttl);
        }
        ok && known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_match_by_digest_only() {
        let hex: String = sha256(b"s3cret-key")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let keys = ApiKeys::new(&model::ApiKeys {
            header: Some("x-api-key".into()),
            query: None,
            keys: vec![model::ApiKey {
                consumer: "alice".into(),
                sha256: hex,
            }],
        })
        .expect("keys");
        assert_eq!(keys.verify("s3cret-key").as_deref(), Some("alice"));
        assert_eq!(keys.verify("s3cret-kez"), None);
        assert_eq!(keys.verify(""), None);
    }

    #[tokio::test]
    async fn basic_verifies_bcrypt_and_caches_success() {
        let hash = bcrypt::hash("pw", 4).expect("hash");
        let cache = Arc::new(TtlCache::new(100));
        let b = Basic::new(
            &model::Basic {
                realm: "r".into(),
                cache_seconds: 60,
                users: vec![model::BasicUser {
                    user: "ann".into(),
                    hash: model::Sensitive(hash),
                }],
            },
            cache.clone(),
        )
        .expect("basic");
        assert!(b.verify("ann", "pw").await);
        assert_eq!(cache.len(), 1);
        assert!(b.verify("ann", "pw").await, "from the cache");
        assert!(!b.verify("ann", "wrong").await);
        assert!(!b.verify("bob", "pw").await);
        assert_eq!(cache.len(), 1, "failures are not cached");
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Basic YW5uOnA6dw=="),
        );
        assert_eq!(Basic::credential(&h), Some(("ann".into(), "p:w".into())));
    }
}
