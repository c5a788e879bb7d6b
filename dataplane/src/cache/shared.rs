//! The shared tier: entries in Redis that every replica of a Gateway reads, behind each
//! replica's memory tier. One entry per primary key (the latest variant stored; the memory
//! tier keeps the others), under a digest of the key, kept at most
//! [`SHARED_MAX_SECS`](portico_model::cache::SHARED_MAX_SECS).
//!
//! What a purge removes must not come back from Redis: entries cannot be found there by URL
//! prefix or tag, so each replica remembers its purges (a day's worth, or a floor time when
//! there were too many) and refuses an entry from Redis stored before a purge that matches
//! it ([`PurgeLog`]).
//!
//! Redis being slow or down costs a lookup its timeout, never the request: the replica then
//! caches for itself.

use super::directives::ResponseDirectives;
use super::freshness::Timing;
use super::store::Stored;
use super::variant::Variant;
use crate::ratelimit::redis::{RedisPool, Reply};
use crate::util::ByteBudget;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use parking_lot::Mutex;
use portico_model::cache::SHARED_MAX_SECS;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The format of an entry's value; a replica of another version skips what it cannot read.
const MAGIC: &[u8] = b"PCE1";
/// Headers, vary names and tags an entry holds at most (more is not an entry of ours).
const MAX_ITEMS: usize = 1024;

/// The Redis key of a cache key.
fn redis_key(key: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    format!("portico:cache:v1:{}", crate::util::hex(d.as_ref()))
}

/// One policy's view of the shared tier.
#[derive(Debug)]
pub struct SharedTier {
    pool: Arc<RedisPool>,
    timeout: Duration,
    /// What stores on their way may hold, with every tier's.
    queued: Arc<ByteBudget>,
}

impl SharedTier {
    pub fn new(pool: Arc<RedisPool>, timeout: Duration, queued: Arc<ByteBudget>) -> Self {
        Self {
            pool,
            timeout,
            queued,
        }
    }

    /// The entry stored under `key`, with the URL and variant it was stored for; `None` on
    /// a miss, on an entry it cannot read, and when Redis does not answer in time.
    pub async fn get(&self, key: &str) -> Option<Entry> {
        let k = redis_key(key);
        match self.pool.call(&[b"GET", k.as_bytes()], self.timeout).await {
            Ok(Reply::Bulk(Some(v))) => decode(&v),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "shared cache tier: lookup skipped");
                None
            }
        }
    }

    /// Stores `entry` under `key` for `ttl` seconds (at most a day), in the background;
    /// skipped when the stores already on their way hold the whole queue budget (Redis slow
    /// or away: the entry stays in this replica's memory tier). Whether it was sent.
    pub fn put(&self, key: &str, entry: &Entry, ttl: u64) -> bool {
        let value = encode(entry);
        let size = value.len();
        if !self.queued.take(size) {
            tracing::debug!("shared cache tier: store skipped, too many on their way");
            return false;
        }
        let k = redis_key(key);
        let ttl = ttl.clamp(1, SHARED_MAX_SECS).to_string();
        let pool = self.pool.clone();
        let queued = self.queued.clone();
        // A store is worth a longer wait than a lookup: nobody waits for it.
        let timeout = self.timeout.max(Duration::from_secs(1));
        tokio::spawn(async move {
            let args: [&[u8]; 5] = [b"SET", k.as_bytes(), &value, b"EX", ttl.as_bytes()];
            if let Err(e) = pool.call(&args, timeout).await {
                tracing::debug!(error = %e, "shared cache tier: store skipped");
            }
            queued.give(size);
        });
        true
    }

    /// Removes the entry under `key` (it was refused: purged, or unreadable).
    pub fn delete(&self, key: &str) {
        let k = redis_key(key);
        let pool = self.pool.clone();
        let timeout = self.timeout.max(Duration::from_secs(1));
        tokio::spawn(async move {
            let _ = pool.call(&[b"DEL", k.as_bytes()], timeout).await;
        });
    }
}

/// What the shared tier holds for a key.
#[derive(Debug)]
pub struct Entry {
    /// The URL part of the key (for purges by URL and prefix).
    pub url: String,
    pub stored: Stored,
    /// The request values it was stored for (for [`Variant`] matching).
    pub variant: Vec<Option<Vec<u8>>>,
}

impl Entry {
    /// Whether it answers `request` (the same values of the headers it varies on).
    pub fn matches(&self, request: &HeaderMap) -> bool {
        Variant::of(request, &self.stored.vary)
            == Variant::from_parts(self.stored.vary.clone(), self.variant.clone())
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

fn encode(e: &Entry) -> Vec<u8> {
    let s = &e.stored;
    let mut out = Vec::with_capacity(s.body.len() + 1024);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&s.status.as_u16().to_be_bytes());
    for t in [
        s.timing.request_time,
        s.timing.response_time,
        s.timing.date,
        s.timing.age,
        s.timing.lifetime,
    ] {
        out.extend_from_slice(&t.to_be_bytes());
    }
    put_bytes(&mut out, e.url.as_bytes());
    put_bytes(&mut out, &(s.headers.len() as u32).to_be_bytes());
    for (n, v) in &s.headers {
        put_bytes(&mut out, n.as_str().as_bytes());
        put_bytes(&mut out, v.as_bytes());
    }
    put_bytes(&mut out, &(s.vary.len() as u32).to_be_bytes());
    for (name, value) in s.vary.iter().zip(&e.variant) {
        put_bytes(&mut out, name.as_bytes());
        match value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                put_bytes(&mut out, v);
            }
        }
    }
    put_bytes(&mut out, &s.body);
    out
}

/// Reads what [`encode`] wrote; `None` for anything else.
fn decode(v: &[u8]) -> Option<Entry> {
    struct R<'a>(&'a [u8]);
    impl<'a> R<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Some(a)
        }
        fn u64(&mut self) -> Option<u64> {
            Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
        }
        fn bytes(&mut self) -> Option<&'a [u8]> {
            let n = u32::from_be_bytes(self.take(4)?.try_into().ok()?);
            self.take(usize::try_from(n).ok()?)
        }
        fn count(&mut self) -> Option<usize> {
            let n = u32::from_be_bytes(self.bytes()?.try_into().ok()?);
            usize::try_from(n).ok().filter(|n| *n <= MAX_ITEMS)
        }
    }
    let mut r = R(v);
    if r.take(4)? != MAGIC {
        return None;
    }
    let status = StatusCode::from_u16(u16::from_be_bytes(r.take(2)?.try_into().ok()?)).ok()?;
    let timing = Timing {
        request_time: r.u64()?,
        response_time: r.u64()?,
        date: r.u64()?,
        age: r.u64()?,
        lifetime: r.u64()?,
    };
    let url = String::from_utf8(r.bytes()?.to_vec()).ok()?;
    let mut headers = HeaderMap::new();
    for _ in 0..r.count()? {
        let name = HeaderName::from_bytes(r.bytes()?).ok()?;
        let value = HeaderValue::from_bytes(r.bytes()?).ok()?;
        headers.append(name, value);
    }
    let mut vary = Vec::new();
    let mut variant = Vec::new();
    for _ in 0..r.count()? {
        vary.push(String::from_utf8(r.bytes()?.to_vec()).ok()?);
        variant.push(match r.take(1)?[0] {
            0 => None,
            _ => Some(r.bytes()?.to_vec()),
        });
    }
    let body = Bytes::copy_from_slice(r.bytes()?);
    if !r.0.is_empty() {
        return None;
    }
    let directives = ResponseDirectives::from_headers(&headers);
    let tags = super::store::tags(&headers);
    Some(Entry {
        url,
        stored: Stored {
            status,
            headers,
            body,
            directives,
            timing,
            vary,
            tags,
        },
        variant,
    })
}

/// Purges this replica applied, remembered for as long as the shared tier keeps entries,
/// so that an entry purged here is not brought back from Redis.
#[derive(Debug, Default)]
pub struct PurgeLog {
    inner: Mutex<PurgeLogInner>,
    /// Purges and invalidations recorded so far (read by every cached request, without
    /// the lock; written under it).
    seq: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct PurgeLogInner {
    /// (when, sequence, what), oldest first.
    purges: VecDeque<(u64, u64, super::purge::Purge)>,
    /// (when, sequence, origin and path) of unsafe requests' invalidations, oldest first;
    /// bounded without a floor (they are many, cheap to cause, and best effort by nature).
    writes: VecDeque<(u64, u64, Arc<str>)>,
    /// The latest (when, sequence) of each path in `writes`: a lookup reads one entry
    /// rather than scanning them all (a write-heavy API moves the sequence all the time).
    latest_write: HashMap<Arc<str>, (u64, u64)>,
    /// Entries stored at or before this are refused whatever they are (purges were
    /// forgotten to keep the log bounded).
    floor: u64,
}

/// Purges remembered at most; beyond, the oldest are folded into the floor.
const MAX_PURGES: usize = 10_000;
/// Clocks of replicas may differ by this much (seconds): an entry stored this close to a
/// purge is refused (a refetch is the price of doubt).
const SKEW: u64 = 2;

impl PurgeLog {
    pub fn record(&self, purge: &super::purge::Purge, now: u64) {
        let mut inner = self.inner.lock();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        inner.purges.push_back((now, seq, purge.clone()));
        let horizon = now.saturating_sub(SHARED_MAX_SECS + SKEW);
        while let Some((t, _, _)) = inner.purges.front() {
            if *t < horizon || inner.purges.len() > MAX_PURGES {
                let t = *t;
                inner.purges.pop_front();
                if t >= horizon {
                    inner.floor = inner.floor.max(t + SKEW);
                }
            } else {
                break;
            }
        }
    }

    /// Records an unsafe request's invalidation of `path_url` (origin and path: every query
    /// of it) for the routes `marks` names (see [`super::step::route_mark`]): entries of
    /// other routes, of other listeners or Gateways, are not refused for it.
    pub fn record_write(&self, path_url: &str, marks: &[String], now: u64) {
        let mut inner = self.inner.lock();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        for mark in marks {
            let path: Arc<str> = Arc::from(format!("{path_url}{mark}"));
            let when = inner
                .latest_write
                .get(&path)
                .map_or(now, |&(t, _)| t.max(now));
            inner.latest_write.insert(path.clone(), (when, seq));
            inner.writes.push_back((now, seq, path));
        }
        let horizon = now.saturating_sub(SHARED_MAX_SECS + SKEW);
        while inner
            .writes
            .front()
            .is_some_and(|(t, _, _)| *t < horizon || inner.writes.len() > MAX_PURGES)
        {
            if let Some((_, s, p)) = inner.writes.pop_front()
                && inner
                    .latest_write
                    .get(&p)
                    .is_some_and(|&(_, latest)| latest == s)
            {
                inner.latest_write.remove(&p);
            }
        }
    }

    /// Whether an entry from the shared tier for `url` with `tags`, stored at `stored_at`
    /// through the route `mark` names, survived every purge this replica applied.
    pub fn allows(&self, url: &str, mark: &str, tags: &[String], stored_at: u64) -> bool {
        let inner = self.inner.lock();
        if stored_at <= inner.floor {
            return false;
        }
        let path = url.split('?').next().unwrap_or(url);
        if inner
            .latest_write
            .get(format!("{path}{mark}").as_str())
            .is_some_and(|&(t, _)| stored_at <= t + SKEW)
        {
            return false;
        }
        !inner
            .purges
            .iter()
            .any(|(t, _, p)| stored_at <= t + SKEW && removes(p, url, tags))
    }

    /// The sequence number of the last purge or invalidation recorded.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// Whether a response fetched (through the route `mark` names) by a request that
    /// started when the log was at `seq` may be stored: no purge or invalidation recorded since removes it (one that came
    /// while it was on its way must win).
    pub fn allows_since(&self, url: &str, mark: &str, tags: &[String], seq: u64) -> bool {
        if self.seq() == seq {
            return true;
        }
        let inner = self.inner.lock();
        let path = url.split('?').next().unwrap_or(url);
        inner
            .latest_write
            .get(format!("{path}{mark}").as_str())
            .is_none_or(|&(_, s)| s <= seq)
            && !inner
                .purges
                .iter()
                .any(|(_, s, p)| *s > seq && removes(p, url, tags))
    }
}

/// Whether `purge` removes an entry for `url` with `tags` (unscoped: the log errs on the
/// side of refusing).
fn removes(purge: &super::purge::Purge, url: &str, tags: &[String]) -> bool {
    use super::purge::Purge;
    match purge {
        Purge::Url(u) => url == u,
        Purge::Prefix(prefix) => url.starts_with(prefix.as_str()),
        Purge::Tag(tag) => tags.iter().any(|t| t == tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The route mark of the entries the log tests look at.
    const M: &str = "\u{1f}r:default/r#";

    fn marks() -> Vec<String> {
        vec![M.to_string()]
    }
    use crate::cache::purge::Purge;
    use crate::cache::test_headers;

    fn entry() -> Entry {
        let headers = test_headers(&[
            ("cache-control", "max-age=60"),
            ("vary", "accept-language"),
            ("cache-tag", "a, b"),
            ("x-bin", "caf\u{e9}"),
        ]);
        Entry {
            url: "https://shop.test:443/a?b=1".into(),
            stored: Stored {
                status: StatusCode::OK,
                directives: ResponseDirectives::from_headers(&headers),
                tags: super::super::store::tags(&headers),
                headers,
                body: Bytes::from_static(b"hello"),
                timing: Timing {
                    request_time: 1,
                    response_time: 2,
                    date: 3,
                    age: 4,
                    lifetime: 60,
                },
                vary: vec!["accept-language".into()],
            },
            variant: vec![Some(b"en".to_vec())],
        }
    }

    #[tokio::test]
    async fn stores_on_their_way_hold_no_more_than_the_queue_budget() {
        // A Redis that refuses every connection: each store fails, and gives its bytes back.
        let address =
            portico_model::ratelimit::RedisAddress::parse("redis://127.0.0.1:1").expect("url");
        let size = encode(&entry()).len();
        let queued = ByteBudget::new(size + size / 2);
        let tier = SharedTier::new(
            RedisPool::new(address),
            Duration::from_millis(50),
            queued.clone(),
        );
        assert!(tier.put("k1", &entry(), 60), "the first fits");
        assert!(
            !tier.put("k2", &entry(), 60),
            "the second would pass the budget"
        );
        assert_eq!(queued.held(), size);
        // Once the first is done (failed here), there is room again.
        for _ in 0..100 {
            if queued.held() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(queued.held(), 0);
        assert!(tier.put("k3", &entry(), 60));
    }

    #[test]
    fn entries_read_back_as_written_and_nothing_else_reads() {
        let e = entry();
        let bytes = encode(&e);
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back.url, e.url);
        assert_eq!(back.stored.headers, e.stored.headers);
        assert_eq!(back.stored.body, e.stored.body);
        assert_eq!(back.stored.timing, e.stored.timing);
        assert_eq!(back.stored.tags, vec!["a", "b"]);
        assert!(back.matches(&test_headers(&[("accept-language", "en")])));
        assert!(!back.matches(&test_headers(&[("accept-language", "fr")])));
        // Truncated, extended, another format: not an entry.
        for bad in [
            &bytes[..bytes.len() - 1],
            &[bytes.as_slice(), b"x"].concat(),
            b"PCE0xyz",
        ] {
            assert!(decode(bad).is_none());
        }
    }

    #[test]
    fn the_purge_log_refuses_what_a_purge_removed_and_forgets_after_a_day() {
        let log = PurgeLog::default();
        let t = 1_700_000_000;
        log.record(&Purge::Prefix("https://shop.test:443/img/".into()), t);
        log.record(&Purge::Tag("news".into()), t);
        assert!(!log.allows("https://shop.test:443/img/1", M, &[], t - 10));
        assert!(
            log.allows("https://shop.test:443/img/1", M, &[], t + 10),
            "stored after it"
        );
        assert!(log.allows("https://shop.test:443/css/1", M, &[], t - 10));
        assert!(!log.allows("https://x.test:443/", M, &["news".into()], t - 10));
        // A day later the shared tier holds nothing that old: forgotten.
        log.record(
            &Purge::Url("https://o.test:443/".into()),
            t + SHARED_MAX_SECS + 10,
        );
        assert!(log.allows("https://shop.test:443/img/1", M, &[], t + 5));
    }

    #[test]
    fn a_purge_while_a_response_was_on_its_way_keeps_it_out() {
        let log = PurgeLog::default();
        let before = log.seq();
        log.record(&Purge::Tag("news".into()), 1);
        log.record_write("https://shop.test:443/cart", &marks(), 1);
        assert!(!log.allows_since("https://x.test:443/", M, &["news".into()], before));
        assert!(!log.allows_since("https://shop.test:443/cart?id=1", M, &[], before));
        assert!(log.allows_since("https://shop.test:443/cartoon", M, &[], before));
        // Another route's entry for the same URL (another listener's, another Gateway's)
        // is not refused for a write that could not reach it.
        assert!(log.allows_since(
            "https://shop.test:443/cart?id=1",
            "\u{1f}r:other/route#",
            &[],
            before
        ));
        // Requests that started after them are not concerned.
        assert!(log.allows_since("https://x.test:443/", M, &["news".into()], log.seq()));
    }

    #[test]
    fn too_many_purges_fold_into_a_floor() {
        let log = PurgeLog::default();
        let t = 1_700_000_000;
        for i in 0..=MAX_PURGES as u64 {
            log.record(&Purge::Tag(format!("t{i}")), t + i / 1000);
        }
        // The first was forgotten, and what it could have removed is refused anyway.
        assert!(!log.allows("https://any.test:443/", M, &["t0".into()], t));
        assert!(log.allows("https://any.test:443/", M, &[], t + 100));
    }

    #[test]
    fn writes_are_looked_up_by_path_and_forgotten_oldest_first() {
        let log = PurgeLog::default();
        let t = 1_700_000_000;
        let cart = "https://shop.test:443/cart";
        log.record_write(cart, &marks(), t);
        let after_first = log.seq();
        // Stored before the write (within the clocks' skew): refused; well after: kept.
        assert!(!log.allows(&format!("{cart}?id=1"), M, &[], t - 1));
        assert!(log.allows(&format!("{cart}?id=1"), M, &[], t + SKEW + 1));
        assert!(log.allows("https://shop.test:443/other", M, &[], t - 1));
        // The same path written again later: its latest write counts.
        log.record_write(cart, &marks(), t + 50);
        assert!(!log.allows(cart, M, &[], t + 40));
        assert!(!log.allows_since(cart, M, &[], after_first));
        // Pushed out by many others, the first write goes but the second still stands.
        for i in 0..MAX_PURGES - 1 {
            log.record_write(&format!("https://shop.test:443/p{i}"), &marks(), t + 60);
        }
        assert!(!log.allows(cart, M, &[], t + 40));
        log.record_write("https://shop.test:443/last", &marks(), t + 60);
        assert!(
            log.allows(cart, M, &[], t + 40),
            "both writes of it forgotten"
        );
        let inner = log.inner.lock();
        assert_eq!(inner.writes.len(), MAX_PURGES);
        assert_eq!(inner.latest_write.len(), MAX_PURGES);
    }
}
