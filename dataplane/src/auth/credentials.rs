//! Static credentials: API keys and HTTP Basic against bcrypt hashes.

use super::cache::{Digest, TtlCache, digest};
use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use portico_model::auth as model;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// API keys held as SHA-256 digests. A lookup hashes the presented key and probes the map;
/// the probe compares digests of the attacker's input, which tell nothing about the keys, and
/// the final comparison is constant-time.
pub struct ApiKeys {
    pub header: Option<HeaderName>,
    pub query: Option<String>,
    /// Digest → the consumer and its name as a header value.
    keys: HashMap<Digest, (Arc<str>, Option<HeaderValue>)>,
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
            .filter_map(|k| {
                let value = HeaderValue::from_str(&k.consumer).ok();
                Some((
                    from_hex(&k.sha256)?,
                    (Arc::from(k.consumer.as_str()), value),
                ))
            })
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

    /// The consumer whose key this is (and its name as a header value).
    pub fn verify(&self, key: &str) -> Option<(Arc<str>, Option<HeaderValue>)> {
        let d = sha256(key.as_bytes());
        let (stored, consumer) = self.keys.get_key_value(&d)?;
        bool::from(stored.ct_eq(&d)).then(|| consumer.clone())
    }
}

/// bcrypt is slow on purpose; at most this many run at once (one per core), so a flood of
/// guesses queues up instead of taking every core from the proxy.
static BCRYPT_SLOTS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    tokio::sync::Semaphore::new(cores)
});

/// Hashes of a random password by cost, verified for unknown users so that they take as long
/// as known ones with that cost (`htpasswd -B` uses 5, many tools 10 or 12).
static DUMMY_HASHES: parking_lot::Mutex<BTreeMap<u32, String>> =
    parking_lot::Mutex::new(BTreeMap::new());

/// The cost of a bcrypt hash (`$2y$05$...` is 5).
fn cost_of(hash: &str) -> Option<u32> {
    hash.get(4..6)?.parse().ok()
}

fn dummy_hash(cost: u32) -> String {
    if let Some(h) = DUMMY_HASHES.lock().get(&cost) {
        return h.clone();
    }
    let random: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let hash = bcrypt::hash(random, cost).unwrap_or_default();
    DUMMY_HASHES.lock().insert(cost, hash.clone());
    hash
}

pub struct Basic {
    pub challenge: HeaderValue,
    users: HashMap<String, String>,
    /// The cost unknown users are made to pay: the most common among the users'.
    dummy_cost: u32,
    ttl: Duration,
    /// Shared by every policy: keyed by user, password and hash, so a changed hash misses.
    verified: Arc<TtlCache<Digest, ()>>,
}

impl std::fmt::Debug for Basic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Basic")
            .field("challenge", &self.challenge)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("ttl", &self.ttl)
            .field("dummy_cost", &self.dummy_cost)
            .finish()
    }
}

impl Basic {
    pub fn new(m: &model::Basic, verified: Arc<TtlCache<Digest, ()>>) -> Result<Self, String> {
        let challenge =
            HeaderValue::from_str(&format!("Basic realm=\"{}\", charset=\"UTF-8\"", m.realm))
                .map_err(|e| format!("basic realm: {e}"))?;
        let mut costs: BTreeMap<u32, usize> = BTreeMap::new();
        for u in &m.users {
            *costs
                .entry(cost_of(&u.hash.0).unwrap_or(bcrypt::DEFAULT_COST))
                .or_default() += 1;
        }
        let dummy_cost = costs
            .iter()
            .max_by_key(|(_, n)| **n)
            .map_or(bcrypt::DEFAULT_COST, |(c, _)| *c);
        Ok(Self {
            challenge,
            dummy_cost,
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
            None => (String::new(), false),
        };
        let key = digest(&[user.as_bytes(), password.as_bytes(), hash.as_bytes()]);
        if known && self.verified.get(&key).is_some() {
            return true;
        }
        let Ok(_slot) = BCRYPT_SLOTS.acquire().await else {
            return false;
        };
        let password = password.to_string();
        let dummy_cost = self.dummy_cost;
        let ok = tokio::task::spawn_blocking(move || {
            let hash = if known { hash } else { dummy_hash(dummy_cost) };
            bcrypt::verify(password, &hash).unwrap_or(false)
        })
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
        let (consumer, value) = keys.verify("s3cret-key").expect("valid key");
        assert_eq!(&*consumer, "alice");
        assert_eq!(value.as_ref().map(|v| v.as_bytes()), Some(&b"alice"[..]));
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
