//! A bounded, sharded cache with per-entry expiry: verified tokens (keyed by the token itself,
//! compared whole on a hit, so a crafted collision cannot borrow another token's claims),
//! verified credentials and introspection answers (keyed by SHA-256 digests). A hit costs one
//! SipHash and one short lock on one of 16 shards.

use parking_lot::Mutex;
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;
use tokio::time::Instant;

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

/// How a key picks its shard: from bytes that vary between keys, without hashing twice.
pub trait ShardKey {
    fn shard_byte(&self) -> u8;
}

impl ShardKey for Digest {
    fn shard_byte(&self) -> u8 {
        self[0]
    }
}

impl ShardKey for str {
    /// The last byte: a token's signature, different for every token.
    fn shard_byte(&self) -> u8 {
        self.as_bytes().last().copied().unwrap_or(0)
    }
}

impl ShardKey for Box<str> {
    fn shard_byte(&self) -> u8 {
        (**self).shard_byte()
    }
}

pub struct TtlCache<K, V> {
    shards: Vec<Mutex<HashMap<K, (V, Instant)>>>,
    per_shard: usize,
}

impl<K, V> std::fmt::Debug for TtlCache<K, V> {
    // Keys may be tokens: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlCache")
            .field("per_shard", &self.per_shard)
            .finish()
    }
}

impl<K: Hash + Eq + ShardKey, V: Clone> TtlCache<K, V> {
    /// Holds at most about `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard<Q: ShardKey + ?Sized>(&self, key: &Q) -> &Mutex<HashMap<K, (V, Instant)>> {
        &self.shards[usize::from(key.shard_byte()) % SHARDS]
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ShardKey + ?Sized,
    {
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

    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut shard = self.shard(&key).lock();
        if shard.len() >= self.per_shard {
            shard.retain(|_, (_, until)| *until > now);
            if shard.len() >= self.per_shard {
                // Still full of live entries: make room by dropping an arbitrary one.
                let mut first = true;
                shard.retain(|_, _| !std::mem::take(&mut first));
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
        let c: TtlCache<Digest, u32> = TtlCache::new(32);
        c.insert(digest(&[b"a"]), 1, Duration::from_secs(60));
        c.insert(digest(&[b"b"]), 2, Duration::ZERO);
        assert_eq!(c.get(&digest(&[b"a"])), Some(1));
        assert_eq!(c.get(&digest(&[b"b"])), None);
        for i in 0..10_000u32 {
            c.insert(digest(&[&i.to_le_bytes()]), i, Duration::from_secs(60));
        }
        assert!(c.len() <= 32, "{}", c.len());
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
        let tokens: TtlCache<Box<str>, u8> = TtlCache::new(8);
        tokens.insert("a.b.c".into(), 1, Duration::from_secs(60));
        assert_eq!(tokens.get("a.b.c"), Some(1));
        assert_eq!(tokens.get("a.b.d"), None);
    }
}
