//! Not part of the snapshot, but shared by both sides of the channel the same way: a bounded
//! count of recent failures per key (a client address, a peer), for the dataplane's Basic
//! password checks and the controller's token reviews.
//!
//! The bound matters as much as the count: a table that simply forgets everything when full
//! lets an attacker with enough source addresses wipe its own record. When full, this one
//! forgets expired entries first, then keys still within their budget (the oldest first);
//! keys over budget are forgotten only when their window ends. Should every remembered key
//! be over budget, a new key is not remembered until one expires (and the full table is not
//! scanned again for a second, so a flood cannot make every failure cost a scan).
//!
//! It reads no clock: callers pass `now` from theirs (tokio's, so that paused-time tests
//! drive it), which is why this module may name `std::time::Instant`.
#![allow(clippy::disallowed_types)]

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct FailureBudget<K> {
    limit: u32,
    window: Duration,
    capacity: usize,
    state: Mutex<State<K>>,
}

#[derive(Debug)]
struct State<K> {
    /// Failures in the current window, and when that window began.
    entries: HashMap<K, (u32, Instant)>,
    /// No new key is remembered before this (the table was full of keys over budget).
    full_until: Option<Instant>,
}

impl<K: Hash + Eq + Clone> FailureBudget<K> {
    /// `limit` failures per `window` per key; at most `capacity` keys remembered.
    pub fn new(limit: u32, window: Duration, capacity: usize) -> Self {
        Self {
            limit,
            window,
            capacity: capacity.max(1),
            state: Mutex::new(State {
                entries: HashMap::new(),
                full_until: None,
            }),
        }
    }

    fn state(&self) -> parking_lot::MutexGuard<'_, State<K>> {
        self.state.lock()
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.state().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` has used its budget in the window that `now` falls in.
    pub fn exhausted_at(&self, key: &K, now: Instant) -> bool {
        let mut s = self.state();
        match s.entries.get(key) {
            Some((n, since)) if now.duration_since(*since) < self.window => *n >= self.limit,
            Some(_) => {
                s.entries.remove(key);
                false
            }
            None => false,
        }
    }

    /// Counts one failure of `key` at `now`.
    pub fn record_at(&self, key: K, now: Instant) {
        let mut s = self.state();
        if !s.entries.contains_key(&key) && s.entries.len() >= self.capacity {
            if s.full_until.is_some_and(|t| now < t) {
                return;
            }
            let window = self.window;
            s.entries
                .retain(|_, (_, since)| now.duration_since(*since) < window);
            if s.entries.len() >= self.capacity {
                // Forget the oldest keys still within budget, down to three quarters full.
                let limit = self.limit;
                let mut within: Vec<(K, Instant)> = s
                    .entries
                    .iter()
                    .filter(|(_, (n, _))| *n < limit)
                    .map(|(k, (_, since))| (k.clone(), *since))
                    .collect();
                within.sort_by_key(|(_, since)| *since);
                let excess = s.entries.len() + 1 - self.capacity * 3 / 4;
                for (k, _) in within.into_iter().take(excess) {
                    s.entries.remove(&k);
                }
            }
            if s.entries.len() >= self.capacity {
                s.full_until = Some(now + Duration::from_secs(1));
                return;
            }
            s.full_until = None;
        }
        let window = self.window;
        let e = s.entries.entry(key).or_insert((0, now));
        if now.duration_since(e.1) >= window {
            *e = (0, now);
        }
        e.0 = e.0.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_key_is_exhausted_after_its_limit_until_the_window_ends() {
        let b = FailureBudget::new(3, MINUTE, 10);
        let t = Instant::now();
        for _ in 0..2 {
            b.record_at("a", t);
        }
        assert!(!b.exhausted_at(&"a", t));
        b.record_at("a", t);
        assert!(b.exhausted_at(&"a", t));
        assert!(!b.exhausted_at(&"b", t), "per key");
        assert!(b.exhausted_at(&"a", t + MINUTE - Duration::from_secs(1)));
        assert!(!b.exhausted_at(&"a", t + MINUTE), "a new window");
        assert!(b.is_empty(), "expired entries go when looked at");
    }

    #[test]
    fn a_full_table_forgets_keys_within_budget_never_an_exhausted_one() {
        let b = FailureBudget::new(3, MINUTE, 100);
        let t = Instant::now();
        for _ in 0..3 {
            b.record_at(0u32, t);
        }
        // An attacker with many addresses fills the table, one failure each.
        for k in 1..10_000u32 {
            b.record_at(k, t + Duration::from_millis(u64::from(k)));
            assert!(b.len() <= 100);
        }
        assert!(
            b.exhausted_at(&0, t + Duration::from_secs(20)),
            "still blocked"
        );
        // Once every remembered key is over budget, new ones are simply not remembered.
        let b = FailureBudget::new(1, MINUTE, 4);
        for k in 0..4u32 {
            b.record_at(k, t);
        }
        b.record_at(99, t);
        assert!(!b.exhausted_at(&99, t));
        assert!((0..4).all(|k| b.exhausted_at(&k, t)));
        // ...until they expire.
        let later = t + MINUTE;
        b.record_at(99, later);
        assert!(b.exhausted_at(&99, later));
    }
}
