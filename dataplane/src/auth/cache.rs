//! A bounded, sharded cache with per-entry expiry, keyed by SHA-256 digests (of tokens,
//! credentials): the secret itself is never a key, and a hit costs one hash and one short lock
//! on one of 16 shards.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub type Digest = [u8; 32];

const SHARDS: usize = 16;

pub fn digest(parts: &[&[u8]]) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        // Length-prefixed so that ("ab", "c") and ("a", "bc") differ.
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[derive(Debug)]
pub struct TtlCache<V> {
    shards: Vec<Mutex<HashMap<Digest, (V, Instant)>>>,
    per_shard: usize,
}

impl<V: Clone> TtlCache<V> {
    /// Holds at most about `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &Digest) -> &Mutex<HashMap<Digest, (V, Instant)>> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    pub fn get(&self, key: &Digest) -> Option<V> {
        let mut shard = self.shard(key).lock();
        match shard.get(key) {
            Some((v, until)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: Digest, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut shard = self.shard(&key).lock();
        if shard.len() >= self.per_shard {
            shard.retain(|_, (_, until)| *until > now);
            if shard.len() >= self.per_shard {
                // Still full of live entries: make room by dropping an arbitrary one.
                if let Some(k) = shard.keys().next().copied() {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(key, (value, now + ttl));
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_capacity_holds() {
        let c = TtlCache::new(32);
        c.insert(digest(&[b"a"]), 1, Duration::from_secs(60));
        c.insert(digest(&[b"b"]), 2, Duration::ZERO);
        assert_eq!(c.get(&digest(&[b"a"])), Some(1));
        assert_eq!(c.get(&digest(&[b"b"])), None);
        for i in 0..10_000u32 {
            c.insert(digest(&[&i.to_le_bytes()]), i, Duration::from_secs(60));
        }
        assert!(c.len() <= 32, "{}", c.len());
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
    }
}
