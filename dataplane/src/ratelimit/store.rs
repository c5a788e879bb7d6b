//! Per-key state of a local limit: sharded (a request locks one of 64 shards, never the
//! whole store) and bounded.
//!
//! Keys are 64-bit SipHash digests of the key values under a per-process random key, so an
//! entry costs the same whatever a client puts in a header, and nobody outside can aim two
//! keys at one counter. Idle keys (whose state equals a fresh one: dropping them changes no
//! decision) are swept periodically ([`LocalStore::sweep`]). When a shard is full it first
//! drops its idle keys, then, under a flood of live keys, an eighth of the shard; those keys
//! start over, which admits a little more than the limit to them, the price of a memory
//! bound.

use super::algorithm::{Outcome, Quota, State};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

const SHARDS: usize = 64;

/// One shard: digest → state.
type Shard = HashMap<u64, State, BuildHasherDefault<PassThrough>>;

/// The state of one limit's keys.
#[derive(Debug)]
pub struct LocalStore {
    quota: Quota,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl LocalStore {
    /// A store that holds at most about `max_keys` keys.
    pub fn new(quota: Quota, max_keys: usize) -> Self {
        let per_shard = (max_keys / SHARDS).max(8);
        Self {
            quota,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            per_shard,
        }
    }

    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// Counts one request of `key` (a digest, see [`super::KeyHasher`]).
    pub fn admit(&self, key: u64, now_us: u64) -> Outcome {
        // Middle bits pick the shard (the map uses the low and the top ones); the map hashes
        // nothing more, the key is a digest.
        let mut shard = self.shards[((key >> 32) as usize) % SHARDS].lock();
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            self.make_room(&mut shard, now_us);
        }
        let state = shard.entry(key).or_insert_with(|| self.quota.fresh(now_us));
        self.quota.admit(state, now_us)
    }

    /// What counting one request of `key` would say, without counting it.
    pub fn peek(&self, key: u64, now_us: u64) -> Outcome {
        let shard = self.shards[((key >> 32) as usize) % SHARDS].lock();
        let mut state = shard
            .get(&key)
            .copied()
            .unwrap_or_else(|| self.quota.fresh(now_us));
        drop(shard);
        self.quota.admit(&mut state, now_us)
    }

    fn make_room(&self, shard: &mut Shard, now: u64) {
        shard.retain(|_, s| !self.quota.is_idle(s, now));
        let target = self.per_shard - self.per_shard / 8;
        if shard.len() > target {
            let excess = shard.len() - target;
            let victims: Vec<u64> = shard.keys().take(excess).copied().collect();
            for k in victims {
                shard.remove(&k);
            }
        }
    }

    /// Drops every idle key (state equal to a fresh one), one shard at a time, so the keys of
    /// clients that went away do not wait for their shard to fill up.
    pub fn sweep(&self, now_us: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.retain(|_, s| !self.quota.is_idle(s, now_us));
            if shard.capacity() > 4 * shard.len().max(64) {
                shard.shrink_to_fit();
            }
        }
    }

    /// Keys held now (for tests).
    pub fn keys(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// The store's keys are already SipHash digests: hashing them again would be wasted work.
#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Digests key values under a per-process random key.
#[derive(Clone, Debug, Default)]
pub struct KeyHasher(std::collections::hash_map::RandomState);

impl KeyHasher {
    /// A hasher to feed the parts to, length first.
    pub fn start(&self) -> impl Hasher + use<> {
        self.0.build_hasher()
    }

    pub fn digest(&self, parts: &[&[u8]]) -> u64 {
        let mut h = self.0.build_hasher();
        for p in parts {
            h.write_usize(p.len());
            h.write(p);
        }
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::ratelimit::Algorithm;

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_bound_and_known_keys_keep_their_state() {
        let quota = Quota {
            algorithm: Algorithm::FixedWindow,
            requests: 2,
            interval_us: 60_000_000,
            burst: 2,
        };
        let store = LocalStore::new(quota, 10_000);
        let hasher = KeyHasher::default();
        let now = 1_000_000;
        for i in 0..1_000_000u64 {
            store.admit(hasher.digest(&[&i.to_le_bytes()]), now);
        }
        assert!(store.keys() <= 10_000, "{} keys held", store.keys());
        // A key used within the bound is counted exactly.
        let small = LocalStore::new(quota, 10_000);
        let k = hasher.digest(&[b"client"]);
        let admitted = (0..5).filter(|_| small.admit(k, now).allowed).count();
        assert_eq!(admitted, 2);
    }

    #[test]
    fn a_sweep_drops_idle_keys_and_keeps_live_ones() {
        let quota = Quota {
            algorithm: Algorithm::SlidingWindow,
            requests: 10,
            interval_us: 1_000_000,
            burst: 10,
        };
        let store = LocalStore::new(quota, 10_000);
        let hasher = KeyHasher::default();
        for i in 0..1000u64 {
            store.admit(hasher.digest(&[&i.to_le_bytes()]), 0);
        }
        store.admit(hasher.digest(&[b"recent"]), 1_500_000);
        // Still weighing in the next window: kept.
        store.sweep(1_500_000);
        assert_eq!(store.keys(), 1001);
        // Two windows later only the recent key can still matter.
        store.sweep(2_000_000);
        assert_eq!(store.keys(), 1);
    }

    #[test]
    fn idle_keys_are_dropped_first() {
        let quota = Quota {
            algorithm: Algorithm::TokenBucket,
            requests: 10,
            interval_us: 1_000_000,
            burst: 10,
        };
        let store = LocalStore::new(quota, 8 * SHARDS);
        let hasher = KeyHasher::default();
        for i in 0..(8 * SHARDS) as u64 {
            store.admit(hasher.digest(&[&i.to_le_bytes()]), 0);
        }
        // Much later every bucket is full again: a new key evicts idle ones only.
        for i in 0..(8 * SHARDS) as u64 {
            store.admit(hasher.digest(&[b"new", &i.to_le_bytes()]), 10_000_000);
        }
        assert!(store.keys() <= 8 * SHARDS);
    }
}
