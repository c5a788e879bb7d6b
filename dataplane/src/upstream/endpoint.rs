//! Endpoints with identity: an address and the state kept for it (requests in flight, idle
//! connections) for as long as some update still lists it.

use super::conns::Conns;
use super::health::ActiveHealth;
use super::maglev::Maglev;
use super::outlier::{Outlier, now_ms};
use portico_model::Endpoint as Discovered;
use portico_model::backend::SlowStart;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// What the dataplane knows of one endpoint beyond its address. Kept by address across
/// EndpointSlice and snapshot updates: an endpoint that stays keeps its connections and
/// counters (health and ejection join it with the backend policy).
#[derive(Debug, Default)]
pub struct EndpointState {
    in_flight: AtomicU32,
    pub(super) conns: Conns,
    /// Passive health.
    pub(super) outlier: Outlier,
    /// Active health.
    pub(super) health: ActiveHealth,
    /// When it joined a backend that already had endpoints (ms, [`super::outlier::now_ms`]),
    /// while its slow start may still run; 0: warm.
    joined_ms: AtomicU64,
}

impl EndpointState {
    /// Requests sent to this endpoint whose response has not ended.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The share of its fair share of traffic this endpoint takes at `now` under slow start
    /// `s`, in (0, 1); `None`: warm (the ramp is over, or it never had one).
    pub(super) fn warming(&self, s: &SlowStart, now: u64) -> Option<f64> {
        let joined = self.joined_ms.load(Ordering::Relaxed);
        let elapsed = now.saturating_sub(joined);
        if joined == 0 || elapsed >= s.window_ms {
            return None;
        }
        // Precision is irrelevant here: a ratio of two millisecond counts below an hour.
        #[allow(clippy::cast_precision_loss)]
        let ramp = elapsed as f64 / s.window_ms as f64;
        Some(ramp.max(f64::from(s.min_weight_percent) / 100.0))
    }

    /// Whether it is still ramping up at `now` (any slow start of at most `window_ms`);
    /// forgets the join time once it is not.
    pub(super) fn still_warming(&self, window_ms: Option<u64>, now: u64) -> bool {
        let joined = self.joined_ms.load(Ordering::Relaxed);
        if joined == 0 {
            return false;
        }
        let warming = window_ms.is_some_and(|w| now.saturating_sub(joined) < w);
        if !warming {
            self.joined_ms.store(0, Ordering::Relaxed);
        }
        warming
    }
}

/// One address to send requests to.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub state: Arc<EndpointState>,
}

/// Counts a request in its endpoint's `in_flight` until it is dropped (with the response
/// body, or with the failed attempt).
#[derive(Debug)]
pub(super) struct InFlight(Arc<EndpointState>);

impl InFlight {
    pub(super) fn new(state: &Arc<EndpointState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints to balance over: ready ones, and serving-but-terminating ones used only when
/// none is ready (as kube-proxy does).
#[derive(Debug, Default)]
pub struct EndpointSet {
    pub ready: Vec<Endpoint>,
    pub terminating: Vec<Endpoint>,
    /// The consistent-hash table of the serving endpoints, made on first use.
    maglev: std::sync::OnceLock<Maglev>,
}

impl EndpointSet {
    /// The set for `discovered`, reusing the state of every address `previous` has.
    pub fn update(previous: &EndpointSet, discovered: &[Discovered]) -> Self {
        let known: HashMap<SocketAddr, &Arc<EndpointState>> = previous
            .ready
            .iter()
            .chain(&previous.terminating)
            .map(|e| (e.addr, &e.state))
            .collect();
        let mut set = Self::default();
        // An endpoint joining a backend that had none is not ramped up: nothing else takes
        // its share (and a new pool's first endpoints are not new).
        let joined = if known.is_empty() { 0 } else { now_ms() };
        for d in discovered {
            let Ok(ip) = d.address.parse::<IpAddr>() else {
                continue;
            };
            let addr = SocketAddr::new(ip, d.port);
            let state = known.get(&addr).map_or_else(
                || {
                    Arc::new(EndpointState {
                        joined_ms: AtomicU64::new(joined),
                        ..EndpointState::default()
                    })
                },
                |s| Arc::clone(s),
            );
            let e = Endpoint { addr, state };
            if d.ready {
                set.ready.push(e);
            } else if d.serving && d.terminating {
                set.terminating.push(e);
            }
        }
        set
    }

    /// The endpoints requests go to now: the ready ones, or the terminating ones when none
    /// is ready.
    pub fn serving(&self) -> &[Endpoint] {
        if self.ready.is_empty() {
            &self.terminating
        } else {
            &self.ready
        }
    }

    /// Whether both lists hold the same addresses in the same order.
    pub fn same_addresses(&self, other: &EndpointSet) -> bool {
        let addrs = |l: &[Endpoint]| l.iter().map(|e| e.addr).collect::<Vec<_>>();
        addrs(&self.ready) == addrs(&other.ready)
            && addrs(&self.terminating) == addrs(&other.terminating)
    }

    pub fn all(&self) -> impl Iterator<Item = &Endpoint> {
        self.ready.iter().chain(&self.terminating)
    }

    /// The serving endpoint (its index in [`Self::serving`]) a consistent-hash key goes to;
    /// the table is made on the first call for this set.
    pub(super) fn hashed(&self, hash: u64) -> Option<usize> {
        self.maglev
            .get_or_init(|| {
                let addrs: Vec<SocketAddr> = self.serving().iter().map(|e| e.addr).collect();
                Maglev::new(&addrs)
            })
            .pick(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovered(addr: &str, ready: bool) -> Discovered {
        Discovered {
            address: addr.into(),
            port: 80,
            ready,
            serving: true,
            terminating: !ready,
        }
    }

    #[test]
    fn in_flight_counts_until_dropped_and_survives_updates() {
        let set = EndpointSet::update(&EndpointSet::default(), &[discovered("127.0.0.1", true)]);
        let state = set.ready[0].state.clone();
        let a = InFlight::new(&state);
        let b = InFlight::new(&state);
        assert_eq!(state.in_flight(), 2);
        let next = EndpointSet::update(
            &set,
            &[
                discovered("127.0.0.1", false),
                discovered("127.0.0.2", true),
            ],
        );
        assert_eq!(next.terminating[0].state.in_flight(), 2);
        assert_eq!(next.ready[0].state.in_flight(), 0);
        drop((a, b));
        assert_eq!(next.terminating[0].state.in_flight(), 0);
        assert!(!next.same_addresses(&set));
        assert_eq!(next.serving().len(), 1);
    }
}
