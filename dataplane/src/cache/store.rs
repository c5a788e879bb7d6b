//! The memory tier: stored responses under their primary key and variant, held to a byte
//! budget, evicted least recently used first (by sampling, as Redis does: five random
//! entries, the oldest goes), purged by key, key prefix or tag.
//!
//! One lock around a map and a vector; every operation under it is short (no I/O, no body
//! copies: bodies are `Bytes`).

use super::directives::ResponseDirectives;
use super::freshness::Timing;
use super::variant::Variant;
use crate::metrics::CacheMetrics;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Entries looked at to choose one to evict.
const SAMPLES: usize = 5;
/// Variants kept per key: beyond, the key's least recently used goes (a response varying
/// on a header clients fill at will must not crowd out every other key, nor make a lookup
/// of that key scan thousands).
pub const MAX_VARIANTS: usize = 32;
/// What an entry costs beyond the bytes of its key, headers and body: the allocations
/// around them (the header map, the Arcs, the slot and index entries). Measured with `make
/// bench` (20,000 13-byte answers grew the process by about 1.6 KB each while 406 bytes
/// were counted with 256 here), so that the budget bounds the memory really used.
const OVERHEAD: usize = 1024;
/// What each header costs beyond its name and value (its map entry).
const PER_HEADER: usize = 48;

/// One stored response.
#[derive(Clone, Debug)]
pub struct Stored {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub directives: ResponseDirectives,
    pub timing: Timing,
    /// The request headers it varies on (see [`super::storable::vary_names`]).
    pub vary: Vec<String>,
    /// Its tags (`Cache-Tag`, `Surrogate-Key`), for purges.
    pub tags: Vec<String>,
}

impl Stored {
    fn cost(&self, key: &str, variant: &Variant) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + PER_HEADER)
            .sum();
        let listed: usize = self.vary.iter().chain(&self.tags).map(String::len).sum();
        key.len() + headers + self.body.len() + variant.size() + listed + OVERHEAD
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Found {
    Hit(Arc<Stored>),
    /// Something is stored for the key, for other variants.
    VaryMiss,
    UriMiss,
}

struct Slot {
    key: Arc<str>,
    variant: Variant,
    stored: Arc<Stored>,
    cost: usize,
    used: AtomicU64,
    /// The route and policy that stored it, whose gauges count it.
    owner: CacheMetrics,
}

#[derive(Default)]
struct Inner {
    slots: Vec<Slot>,
    /// Slot indices by primary key (one per variant), ordered: a purge by prefix visits
    /// only the keys under it.
    by_key: BTreeMap<Arc<str>, Vec<usize>>,
    bytes: usize,
}

/// The memory tier.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    budget: usize,
    clock: AtomicU64,
    evicted: AtomicU64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("MemoryStore")
            .field("objects", &inner.slots.len())
            .field("bytes", &inner.bytes)
            .field("budget", &self.budget)
            .finish()
    }
}

impl MemoryStore {
    /// A store holding at most `budget` bytes of responses.
    pub fn new(budget: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            budget,
            clock: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// The entry stored under `key` for `request`'s variant.
    pub fn get(&self, key: &str, request: &HeaderMap) -> Found {
        let inner = self.inner.lock();
        let Some(indices) = inner.by_key.get(key) else {
            return Found::UriMiss;
        };
        for &i in indices {
            let slot = &inner.slots[i];
            if Variant::of(request, &slot.stored.vary) == slot.variant {
                slot.used.store(self.tick(), Ordering::Relaxed);
                return Found::Hit(slot.stored.clone());
            }
        }
        Found::VaryMiss
    }

    /// Stores `stored` under `key` for `request`'s variant, replacing what that variant had
    /// and every variant of another `Vary` (the newest response says what the key varies
    /// on, §4.1); keeps at most [`MAX_VARIANTS`] per key; evicts until the budget holds. An
    /// entry larger than the whole budget is not stored. `owner` counts it while it is held.
    pub fn put(
        &self,
        key: &str,
        request: &HeaderMap,
        stored: Stored,
        owner: &CacheMetrics,
    ) -> bool {
        let variant = Variant::of(request, &stored.vary);
        let cost = stored.cost(key, &variant);
        if cost > self.budget {
            return false;
        }
        let mut inner = self.inner.lock();
        loop {
            let siblings = inner.by_key.get(key).cloned().unwrap_or_default();
            let replaced = siblings.iter().copied().find(|&i| {
                inner.slots[i].variant == variant || inner.slots[i].stored.vary != stored.vary
            });
            let oldest = (siblings.len() >= MAX_VARIANTS)
                .then(|| {
                    siblings
                        .iter()
                        .copied()
                        .min_by_key(|&i| inner.slots[i].used.load(Ordering::Relaxed))
                })
                .flatten();
            match replaced.or(oldest) {
                Some(i) => remove_at(&mut inner, i),
                None => break,
            }
        }
        while inner.bytes + cost > self.budget && !inner.slots.is_empty() {
            // Distinct slots (consecutive from a random one: their order is random enough
            // after swap removals), so the most recently used is never all of a sample.
            let len = inner.slots.len();
            let start = fastrand::usize(..len);
            let victim = (0..SAMPLES.min(len))
                .map(|k| (start + k) % len)
                .min_by_key(|&i| inner.slots[i].used.load(Ordering::Relaxed));
            let Some(victim) = victim else { break };
            inner.slots[victim].owner.evicted();
            remove_at(&mut inner, victim);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let key: Arc<str> = Arc::from(key);
        let index = inner.slots.len();
        inner.slots.push(Slot {
            key: key.clone(),
            variant,
            stored: Arc::new(stored),
            cost,
            used: AtomicU64::new(self.tick()),
            owner: owner.clone(),
        });
        owner.held(cost);
        inner.by_key.entry(key).or_default().push(index);
        inner.bytes += cost;
        true
    }

    /// Removes the variants of `key` that `doomed` picks; how many went.
    fn purge_one(inner: &mut Inner, key: &str, doomed: &impl Fn(&Slot) -> bool) -> usize {
        let mut n = 0;
        // Each removal may move another slot (of this key too): look the key up again.
        loop {
            let next = inner
                .by_key
                .get(key)
                .and_then(|ix| ix.iter().copied().find(|&i| doomed(&inner.slots[i])));
            let Some(i) = next else { return n };
            remove_at(inner, i);
            n += 1;
        }
    }

    /// Removes every variant of `key`; how many went.
    pub fn purge_key(&self, key: &str) -> usize {
        Self::purge_one(&mut self.inner.lock(), key, &|_| true)
    }

    /// Removes every entry whose key starts with `prefix` and for which `also` holds (a
    /// purge's scope); only the keys under the prefix are visited.
    pub fn purge_prefix_where(
        &self,
        prefix: &str,
        also: impl Fn(&str, &[String]) -> bool,
    ) -> usize {
        let mut inner = self.inner.lock();
        let keys: Vec<Arc<str>> = inner
            .by_key
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        let doomed = |s: &Slot| also(&s.key, &s.stored.tags);
        keys.iter()
            .map(|k| Self::purge_one(&mut inner, k, &doomed))
            .sum()
    }

    /// Removes every entry whose key starts with `prefix`.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.purge_prefix_where(prefix, |_, _| true)
    }

    /// Removes every entry tagged `tag` for which `also` holds (a scan of every entry).
    pub fn purge_tag_where(&self, tag: &str, also: impl Fn(&str) -> bool) -> usize {
        self.purge_where(|s| s.stored.tags.iter().any(|t| t == tag) && also(&s.key))
    }

    /// Removes every entry tagged `tag`.
    pub fn purge_tag(&self, tag: &str) -> usize {
        self.purge_tag_where(tag, |_| true)
    }

    fn purge_where(&self, doomed: impl Fn(&Slot) -> bool) -> usize {
        let mut inner = self.inner.lock();
        let mut n = 0;
        let mut i = 0;
        while i < inner.slots.len() {
            if doomed(&inner.slots[i]) {
                // The last slot moves to `i`: look at `i` again.
                remove_at(&mut inner, i);
                n += 1;
            } else {
                i += 1;
            }
        }
        n
    }

    /// Objects and bytes held.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.slots.len(), inner.bytes)
    }

    /// Entries evicted for room so far.
    pub fn evictions(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// Removes slot `i` (the last slot takes its place) and its index entries.
fn remove_at(inner: &mut Inner, i: usize) {
    let last = inner.slots.len() - 1;
    let slot = inner.slots.swap_remove(i);
    inner.bytes -= slot.cost;
    slot.owner.released(slot.cost);
    if let Some(ix) = inner.by_key.get_mut(&slot.key) {
        ix.retain(|&j| j != i);
        if ix.is_empty() {
            inner.by_key.remove(&slot.key);
        }
    }
    if i != last {
        let moved = inner.slots[i].key.clone();
        if let Some(ix) = inner.by_key.get_mut(&moved) {
            for j in ix.iter_mut() {
                if *j == last {
                    *j = i;
                }
            }
        }
    }
}

/// The tags a response carries for purges: `Cache-Tag` (comma-separated) and
/// `Surrogate-Key` (space-separated), at most 64 of at most 128 bytes each.
pub fn tags(headers: &HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    for (name, sep) in [("cache-tag", ','), ("surrogate-key", ' ')] {
        for v in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
            for t in v.split(sep).map(str::trim).filter(|t| !t.is_empty()) {
                if t.len() <= 128 && out.len() < 64 && !out.iter().any(|o: &String| o == t) {
                    out.push(t.to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_headers as req;

    fn stored(body: &str, vary: &[&str], tags: &[&str]) -> Stored {
        Stored {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
            directives: ResponseDirectives::default(),
            timing: Timing {
                request_time: 0,
                response_time: 0,
                date: 0,
                age: 0,
                lifetime: 60,
            },
            vary: vary.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn body(f: Found) -> Option<Bytes> {
        match f {
            Found::Hit(s) => Some(s.body.clone()),
            _ => None,
        }
    }

    #[test]
    fn variants_are_kept_apart_and_replaced_in_place() {
        let s = MemoryStore::new(1 << 20);
        let gzip = req(&[("accept-encoding", "gzip")]);
        let br = req(&[("accept-encoding", "br")]);
        assert!(matches!(s.get("k", &gzip), Found::UriMiss));
        assert!(s.put(
            "k",
            &gzip,
            stored("gz", &["accept-encoding"], &[]),
            &CacheMetrics::default()
        ));
        assert!(matches!(s.get("k", &br), Found::VaryMiss));
        assert!(s.put(
            "k",
            &br,
            stored("br", &["accept-encoding"], &[]),
            &CacheMetrics::default()
        ));
        assert_eq!(body(s.get("k", &gzip)).as_deref(), Some(&b"gz"[..]));
        assert_eq!(body(s.get("k", &br)).as_deref(), Some(&b"br"[..]));
        // The same variant again replaces, not adds.
        assert!(s.put(
            "k",
            &gzip,
            stored("gz2", &["accept-encoding"], &[]),
            &CacheMetrics::default()
        ));
        assert_eq!(s.usage().0, 2);
        assert_eq!(body(s.get("k", &gzip)).as_deref(), Some(&b"gz2"[..]));
    }

    #[test]
    fn a_new_vary_replaces_the_old_variants_and_variants_per_key_are_capped() {
        let s = MemoryStore::new(1 << 20);
        let en = req(&[("accept-language", "en")]);
        assert!(s.put(
            "k",
            &en,
            stored("en", &["accept-language"], &[]),
            &CacheMetrics::default()
        ));
        // The origin now varies on something else: the old variants go.
        assert!(s.put(
            "k",
            &en,
            stored("enc", &["accept-encoding"], &[]),
            &CacheMetrics::default()
        ));
        assert_eq!(s.usage().0, 1);
        assert_eq!(body(s.get("k", &en)).as_deref(), Some(&b"enc"[..]));
        // A header clients fill at will makes at most MAX_VARIANTS entries.
        for i in 0..100 {
            let r = req(&[("x-anything", &i.to_string())]);
            assert!(s.put(
                "flood",
                &r,
                stored("v", &["x-anything"], &[]),
                &CacheMetrics::default()
            ));
        }
        assert_eq!(s.usage().0, 1 + MAX_VARIANTS);
        let latest = req(&[("x-anything", "99")]);
        assert!(matches!(s.get("flood", &latest), Found::Hit(_)));
        s.purge_key("flood");
        s.purge_key("k");
        assert_eq!(s.usage(), (0, 0), "every byte accounted for");
    }

    #[test]
    fn the_budget_holds_under_a_flood_of_distinct_keys_and_recent_entries_stay() {
        let none = HeaderMap::new();
        let one = stored(&"x".repeat(1000), &[], &[]).cost("key-0000", &Variant::of(&none, &[]));
        let s = MemoryStore::new(one * 50);
        s.put(
            "key-hot",
            &none,
            stored(&"x".repeat(996), &[], &[]),
            &CacheMetrics::default(),
        );
        for i in 0..2000 {
            assert!(s.put(
                &format!("key-{i:04}"),
                &none,
                stored(&"x".repeat(1000), &[], &[]),
                &CacheMetrics::default()
            ));
            // The hot entry is used all the time: sampling keeps it.
            assert!(
                matches!(s.get("key-hot", &none), Found::Hit(_)),
                "evicted at {i}"
            );
            let (_, bytes) = s.usage();
            assert!(bytes <= one * 50, "{bytes} over the budget");
        }
        assert!(s.evictions() >= 1900);
        // Larger than the whole budget: not stored at all.
        assert!(!s.put(
            "huge",
            &none,
            stored(&"x".repeat(one * 60), &[], &[]),
            &CacheMetrics::default()
        ));
    }

    #[test]
    fn purges_by_key_prefix_and_tag() {
        let s = MemoryStore::new(1 << 20);
        let none = HeaderMap::new();
        s.put(
            "https://shop.example:443/a",
            &none,
            stored("a", &[], &["products"]),
            &CacheMetrics::default(),
        );
        s.put(
            "https://shop.example:443/a/b",
            &none,
            stored("ab", &[], &["products", "b"]),
            &CacheMetrics::default(),
        );
        s.put(
            "https://shop.example:443/c",
            &none,
            stored("c", &[], &[]),
            &CacheMetrics::default(),
        );
        s.put(
            "https://other.example:443/a",
            &none,
            stored("o", &[], &["products"]),
            &CacheMetrics::default(),
        );
        assert_eq!(s.purge_key("https://shop.example:443/a"), 1);
        assert!(matches!(
            s.get("https://shop.example:443/a/b", &none),
            Found::Hit(_)
        ));
        assert_eq!(s.purge_tag("products"), 2);
        assert_eq!(s.purge_prefix("https://shop.example:443/"), 1);
        assert_eq!(s.usage(), (0, 0));
    }

    #[test]
    fn removal_keeps_the_index_true() {
        let s = MemoryStore::new(1 << 20);
        let none = HeaderMap::new();
        for i in 0..50 {
            s.put(
                &format!("k{i}"),
                &none,
                stored(&i.to_string(), &[], &[]),
                &CacheMetrics::default(),
            );
        }
        for i in (0..50).step_by(3) {
            assert_eq!(s.purge_key(&format!("k{i}")), 1);
        }
        for i in 0..50 {
            let found = body(s.get(&format!("k{i}"), &none));
            if i % 3 == 0 {
                assert!(found.is_none());
            } else {
                assert_eq!(found.as_deref(), Some(i.to_string().as_bytes()));
            }
        }
    }

    #[test]
    fn tags_from_both_headers() {
        let h = req(&[
            ("cache-tag", "products, product-7"),
            ("surrogate-key", "products home"),
        ]);
        assert_eq!(tags(&h), ["products", "product-7", "home"]);
    }
}
