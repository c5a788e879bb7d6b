//! Request coalescing: concurrent misses for one key make one upstream request. The first
//! leads; the others wait, bounded, for its outcome, then look in the store again. A key
//! whose response turned out not storable is remembered for a short while, so requests for
//! it go straight upstream instead of queueing behind a lock that will never help them.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How a lead request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored: the waiters find it in the store.
    Stored,
    /// The response was not storable: the waiters go upstream themselves, and the key is
    /// remembered. Only for what the response said (`no-store`, `private`, `Set-Cookie`, no
    /// lifetime), never for what the leading request did: one client must not turn
    /// coalescing off for a key.
    NotStored,
    /// The leading request's own answer is not for the others (it turned out to need
    /// credentials the policy does not key by, say): they go upstream themselves; nothing
    /// is remembered.
    Passed,
    /// The leader failed or went away: the waiters try again (one of them leads).
    Abandoned,
}

/// Keys remembered as not storable, at most (the oldest go first beyond).
const MAX_REMEMBERED: usize = 10_000;

#[derive(Default)]
struct Inner {
    leading: HashMap<Arc<str>, watch::Sender<Option<Outcome>>>,
    not_storable: HashMap<Arc<str>, Instant>,
}

/// The coalescing table of one cache.
pub struct Coalescer {
    inner: Mutex<Inner>,
    /// How long a key found not storable skips the lock.
    remember: Duration,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("Coalescer")
            .field("leading", &inner.leading.len())
            .field("not_storable", &inner.not_storable.len())
            .finish()
    }
}

/// A request's turn for a key that missed.
#[derive(Debug)]
pub enum Turn {
    /// Go upstream and say how it ended ([`Leader::finish`]).
    Lead(Leader),
    /// Another request for the key is upstream: wait for it.
    Wait(Waiter),
    /// Recently not storable: go upstream, alone.
    Bypass,
}

/// The one request upstream for a key. Dropped without [`Leader::finish`], its waiters are
/// told it was abandoned.
#[derive(Debug)]
pub struct Leader {
    key: Arc<str>,
    table: Arc<Coalescer>,
    done: bool,
}

/// A request waiting for the leader of its key.
#[derive(Debug)]
pub struct Waiter {
    rx: watch::Receiver<Option<Outcome>>,
}

impl Coalescer {
    pub fn new(remember: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            remember,
        })
    }

    /// The turn of a request for `key`, which missed in the store. Only requests whose
    /// answer could be stored take a turn (not one with `no-store`, or credentials the
    /// cache is not keyed by): a request that cannot share its answer must not lead.
    pub fn turn(self: &Arc<Self>, key: &str) -> Turn {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        if let Some(until) = inner.not_storable.get(key) {
            if *until > now {
                return Turn::Bypass;
            }
            inner.not_storable.remove(key);
        }
        if let Some(tx) = inner.leading.get(key) {
            return Turn::Wait(Waiter { rx: tx.subscribe() });
        }
        let key: Arc<str> = Arc::from(key);
        let (tx, _) = watch::channel(None);
        inner.leading.insert(key.clone(), tx);
        Turn::Lead(Leader {
            key,
            table: self.clone(),
            done: false,
        })
    }

    fn end(&self, key: &Arc<str>, outcome: Outcome) {
        let mut inner = self.inner.lock();
        if outcome == Outcome::NotStored {
            if inner.not_storable.len() >= MAX_REMEMBERED {
                let now = Instant::now();
                inner.not_storable.retain(|_, until| *until > now);
                if inner.not_storable.len() >= MAX_REMEMBERED {
                    inner.not_storable.clear();
                }
            }
            let now = Instant::now();
            let until = now.checked_add(self.remember).unwrap_or(now);
            inner.not_storable.insert(key.clone(), until);
        }
        if let Some(tx) = inner.leading.remove(key) {
            tx.send_replace(Some(outcome));
        }
    }
}

impl Leader {
    /// Tells the waiters how the request ended.
    pub fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.table.end(&self.key, outcome);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.done {
            self.table.end(&self.key, Outcome::Abandoned);
        }
    }
}

impl Waiter {
    /// The leader's outcome, or `None` when it did not come within `limit` (the waiter then
    /// goes upstream itself).
    pub async fn wait(mut self, limit: Duration) -> Option<Outcome> {
        let outcome = tokio::time::timeout(limit, self.rx.wait_for(Option::is_some)).await;
        match outcome {
            Ok(Ok(v)) => *v,
            // The sender went without a word: as abandoned.
            Ok(Err(_)) => Some(Outcome::Abandoned),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hundred_concurrent_misses_make_one_leader_and_all_learn_its_outcome() {
        let c = Coalescer::new(Duration::from_secs(5));
        let mut leaders = Vec::new();
        let mut waiters = Vec::new();
        for _ in 0..100 {
            match c.turn("k") {
                Turn::Lead(l) => leaders.push(l),
                Turn::Wait(w) => waiters.push(tokio::spawn(w.wait(Duration::from_secs(5)))),
                Turn::Bypass => panic!("nothing was remembered"),
            }
        }
        assert_eq!(leaders.len(), 1);
        assert_eq!(waiters.len(), 99);
        // Another key is not held up.
        assert!(matches!(c.turn("other"), Turn::Lead(_)));
        leaders.pop().expect("leader").finish(Outcome::Stored);
        for w in waiters {
            assert_eq!(w.await.expect("join"), Some(Outcome::Stored));
        }
        // Done: the next miss leads again.
        assert!(matches!(c.turn("k"), Turn::Lead(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_not_storable_skips_the_lock_for_a_while() {
        let c = Coalescer::new(Duration::from_secs(5));
        let Turn::Lead(l) = c.turn("k") else {
            panic!("first leads")
        };
        let Turn::Wait(w) = c.turn("k") else {
            panic!("second waits")
        };
        l.finish(Outcome::NotStored);
        assert_eq!(
            w.wait(Duration::from_secs(1)).await,
            Some(Outcome::NotStored)
        );
        assert!(matches!(c.turn("k"), Turn::Bypass));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(matches!(c.turn("k"), Turn::Lead(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_goes_away_frees_its_waiters_and_waiting_is_bounded() {
        let c = Coalescer::new(Duration::from_secs(5));
        let Turn::Lead(l) = c.turn("k") else {
            panic!("first leads")
        };
        let Turn::Wait(w) = c.turn("k") else {
            panic!("second waits")
        };
        drop(l);
        assert_eq!(
            w.wait(Duration::from_secs(1)).await,
            Some(Outcome::Abandoned)
        );
        // A leader whose own answer was not for the others: nothing remembered.
        let Turn::Lead(l) = c.turn("k") else {
            panic!("leads")
        };
        l.finish(Outcome::Passed);
        assert!(matches!(c.turn("k"), Turn::Lead(_)));
        // A slow leader: the waiter gives up after its limit.
        let Turn::Lead(_slow) = c.turn("k") else {
            panic!("leads again")
        };
        let Turn::Wait(w) = c.turn("k") else {
            panic!("waits")
        };
        assert_eq!(w.wait(Duration::from_secs(2)).await, None);
    }
}
