//! Static credentials: API keys and HTTP Basic against bcrypt hashes.

use super::cache::{Digest, TtlCache, digest};
use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use portico_model::auth as model;
use portico_model::budget::FailureBudget;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
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
            // Repeated, or not text: a key that cannot match, never "no key".
            return super::extract::single_header(headers, h.as_str()).map(|v| match v {
                Ok(Cow::Borrowed(s)) => Cow::Borrowed(s.trim()),
                Ok(Cow::Owned(s)) => Cow::Owned(s.trim().to_string()),
                Err(()) => Cow::Borrowed(super::extract::UNUSABLE),
            });
        }
        let name = self.query.as_deref()?;
        super::extract::single_query_param(query, name)
    }

    /// The consumer whose key this is (and its name as a header value).
    pub fn verify(&self, key: &str) -> Option<(Arc<str>, Option<HeaderValue>)> {
        let d = sha256(key.as_bytes());
        let (stored, consumer) = self.keys.get_key_value(&d)?;
        bool::from(stored.ct_eq(&d)).then(|| consumer.clone())
    }
}

/// bcrypt is slow on purpose; at most this many run at once (half the cores, at least one),
/// so a flood of guesses cannot take the proxy's cores.
static BCRYPT_SLOTS: std::sync::LazyLock<(tokio::sync::Semaphore, usize)> =
    std::sync::LazyLock::new(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let slots = (cores / 2).max(1);
        (tokio::sync::Semaphore::new(slots), slots)
    });

/// Verifications that may wait for a slot, per slot; beyond, a request is answered 503 at
/// once instead of queueing (a queue without bound delays every real user behind a flood).
const BCRYPT_QUEUE_PER_SLOT: usize = 16;

static BCRYPT_WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The highest bcrypt cost accepted (compile refuses higher ones; this guards snapshots from
/// elsewhere): cost 12 is about 250 ms of one core, each step doubles it.
pub const MAX_BCRYPT_COST: u32 = portico_model::auth::MAX_BCRYPT_COST;

/// Wrong passwords one client address may try per window before it gets 429 without any
/// bcrypt being run.
const FAILURES_PER_CLIENT: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses remembered at most (see [`FailureBudget`] for what goes when full).
const FAILURE_CLIENTS: usize = 100_000;

/// Recent failed Basic verifications by client address (an IPv6 /64 counts as one).
static FAILURES: std::sync::LazyLock<FailureBudget<IpAddr>> = std::sync::LazyLock::new(|| {
    FailureBudget::new(FAILURES_PER_CLIENT, FAILURE_WINDOW, FAILURE_CLIENTS)
});

fn over_failure_budget(client: IpAddr) -> bool {
    FAILURES.exhausted_at(
        &crate::conn::source_key(client),
        tokio::time::Instant::now().into_std(),
    )
}

fn record_failure(client: IpAddr) {
    FAILURES.record_at(
        crate::conn::source_key(client),
        tokio::time::Instant::now().into_std(),
    );
}

/// What checking a Basic credential found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid,
    /// Every bcrypt slot is taken and the queue is full: 503 at once.
    Busy,
    /// This client failed too often lately: 429 without a bcrypt.
    Throttled,
}

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
    /// Keep `Authorization` on the request to the backend.
    pub forward_credentials: bool,
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
        if let Some(c) = costs.keys().find(|c| **c > MAX_BCRYPT_COST) {
            return Err(format!(
                "a bcrypt cost of {c} is above the highest accepted, {MAX_BCRYPT_COST}"
            ));
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
            forward_credentials: m.forward_credentials,
        })
    }

    /// `(user, password)` from `Authorization: Basic ...`: `None` without Basic credentials,
    /// `Some(Err(()))` for Basic credentials that are not base64 of UTF-8 `user:password`
    /// (wrong credentials, never "none", which `allowAnonymous` would let through).
    pub fn credential(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
        let Ok(v) = super::extract::single_header(headers, http::header::AUTHORIZATION.as_str())?
        else {
            return Some(Err(()));
        };
        // `Basic` alone or followed by a tab is Basic to a lenient backend: checked as such.
        let rest = super::extract::after_scheme(&v, "Basic")?;
        let parsed = (|| {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            let text = String::from_utf8(raw).ok()?;
            let (user, pass) = text.split_once(':')?;
            Some((user.to_string(), pass.to_string()))
        })();
        Some(parsed.ok_or(()))
    }

    /// Whether the password is the user's. Costs one bcrypt (on a blocking thread) per pair
    /// per cache lifetime; a client that failed too often lately, or a full queue, costs none.
    pub async fn verify(&self, user: &str, password: &str, client: IpAddr) -> Verdict {
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.clone(), true),
            None => (String::new(), false),
        };
        let key = digest(&[user.as_bytes(), password.as_bytes(), hash.as_bytes()]);
        if known && self.verified.get(&key).is_some() {
            return Verdict::Valid;
        }
        if over_failure_budget(client) {
            return Verdict::Throttled;
        }
        let (slots, n) = &*BCRYPT_SLOTS;
        let waiting = BCRYPT_WAITING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let permit = if slots.available_permits() == 0 && waiting >= n * BCRYPT_QUEUE_PER_SLOT {
            None
        } else {
            slots.acquire().await.ok()
        };
        BCRYPT_WAITING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        let Some(_slot) = permit else {
            return Verdict::Busy;
        };
        // The wait may have been long: failures recorded meanwhile count.
        if over_failure_budget(client) {
            return Verdict::Throttled;
        }
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
            Verdict::Valid
        } else {
            record_failure(client);
            Verdict::Invalid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_match_by_digest_only() {
        let hex = crate::util::hex(&sha256(b"s3cret-key"));
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

    /// Basic credentials for user `ann` with password `pw` (cost 4), verified into `cache`.
    fn ann(cache: Arc<TtlCache<Digest, ()>>) -> Basic {
        let hash = bcrypt::hash("pw", 4).expect("hash");
        Basic::new(
            &model::Basic {
                realm: "r".into(),
                cache_seconds: 60,
                users: vec![model::BasicUser {
                    user: "ann".into(),
                    hash: model::Sensitive(hash),
                }],
                forward_credentials: false,
            },
            cache,
        )
        .expect("basic")
    }

    #[tokio::test]
    async fn basic_verifies_bcrypt_and_caches_success() {
        let cache = Arc::new(TtlCache::new(100));
        let b = ann(cache.clone());
        let client: IpAddr = "10.1.0.1".parse().expect("ip");
        assert_eq!(b.verify("ann", "pw", client).await, Verdict::Valid);
        assert_eq!(cache.len(), 1);
        assert_eq!(
            b.verify("ann", "pw", client).await,
            Verdict::Valid,
            "from the cache"
        );
        assert_eq!(b.verify("ann", "wrong", client).await, Verdict::Invalid);
        assert_eq!(b.verify("bob", "pw", client).await, Verdict::Invalid);
        assert_eq!(cache.len(), 1, "failures are not cached");
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Basic YW5uOnA6dw=="),
        );
        assert_eq!(
            Basic::credential(&h),
            Some(Ok(("ann".into(), "p:w".into())))
        );
        // Basic credentials that cannot be read are wrong credentials, not none.
        for bad in [
            &b"Basic !!!"[..],
            b"basic bm9jb2xvbg==",
            b"Basic \xff\xfe",
            b"Basic /w==",
        ] {
            h.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_bytes(bad).expect("value"),
            );
            assert_eq!(Basic::credential(&h), Some(Err(())), "{bad:?}");
        }
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer x"),
        );
        assert_eq!(Basic::credential(&h), None);
    }

    #[tokio::test]
    async fn a_client_that_fails_too_often_is_throttled_without_bcrypt() {
        let b = ann(Arc::new(TtlCache::new(100)));
        let guesser: IpAddr = "10.2.0.1".parse().expect("ip");
        for _ in 0..FAILURES_PER_CLIENT {
            assert_eq!(b.verify("ann", "guess", guesser).await, Verdict::Invalid);
        }
        assert_eq!(b.verify("ann", "guess", guesser).await, Verdict::Throttled);
        assert_eq!(
            b.verify("ann", "pw", guesser).await,
            Verdict::Throttled,
            "not even a right guess is checked"
        );
        // Others are not affected.
        let user: IpAddr = "10.2.0.2".parse().expect("ip");
        assert_eq!(b.verify("ann", "pw", user).await, Verdict::Valid);
    }

    #[test]
    fn costs_above_the_cap_are_refused() {
        let users = vec![model::BasicUser {
            user: "ann".into(),
            hash: model::Sensitive(format!("$2y$13${}", "a".repeat(53))),
        }];
        let m = model::Basic {
            realm: "r".into(),
            cache_seconds: 60,
            users,
            forward_credentials: false,
        };
        let err = Basic::new(&m, Arc::new(TtlCache::new(1))).expect_err("cost 13");
        assert!(err.contains("13"), "{err}");
    }
}
