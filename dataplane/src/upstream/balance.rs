//! Choosing endpoints: a balancer yields a backend's endpoints in the order to try them (the
//! first is the first choice), so a retry moves on to the next instead of picking again.
//!
//! The default is least request by the power of two choices (Envoy Gateway's default too):
//! of two endpoints, the one with fewer requests in flight. The first of the two is the next
//! in round-robin order and the second a random other, so that with nothing in flight (or
//! the same everywhere) requests go round evenly, and a slow endpoint, which piles up
//! requests, gets fewer of them. A BackendPolicy may ask for plain round robin or random
//! instead; whichever picks the first, the others follow in order.

use super::endpoint::Endpoint;
use portico_model::backend::{LoadBalancer, SlowStart};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A backend's balancing state: the round-robin position, kept across snapshots.
#[derive(Debug, Default)]
pub struct Balancer {
    next: AtomicUsize,
}

impl Balancer {
    /// `endpoints` in the order this request should try them, the first chosen by `kind`:
    /// every one once, but those ejected at `now` (ms, see [`super::outlier::now_ms`]; 0:
    /// none is passed over) and, with `skip_unhealthy`, those failing active health checks.
    ///
    /// `hashed`: the first choice of a consistent-hash balancer (`None`: a request without
    /// the key, which goes to a random endpoint).
    pub fn candidates<'a>(
        &self,
        kind: LoadBalancer,
        endpoints: &'a [Endpoint],
        now: u64,
        skip_unhealthy: bool,
        hashed: Option<usize>,
    ) -> Candidates<'a> {
        let n = endpoints.len();
        let start = if n <= 1 {
            0
        } else {
            match kind {
                LoadBalancer::ConsistentHash => hashed
                    .filter(|i| *i < n)
                    .unwrap_or_else(|| fastrand::usize(..n)),
                LoadBalancer::LeastRequest => {
                    let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
                    let other = (first + 1 + fastrand::usize(..n - 1)) % n;
                    let load = |i: usize| endpoints[i].state.in_flight();
                    if load(other) < load(first) {
                        other
                    } else {
                        first
                    }
                }
                LoadBalancer::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
                LoadBalancer::Random => fastrand::usize(..n),
            }
        };
        Candidates {
            endpoints,
            start,
            taken: 0,
            now,
            skip_unhealthy,
            pinned: None,
            pinned_taken: false,
            slow_start: None,
            deferred: None,
        }
    }
}

/// The endpoints of one request, first choice first.
#[derive(Debug)]
pub struct Candidates<'a> {
    endpoints: &'a [Endpoint],
    start: usize,
    taken: usize,
    /// Pass over endpoints ejected at this time (0: none).
    now: u64,
    /// Pass over endpoints failing their active health checks.
    skip_unhealthy: bool,
    /// Yielded first (a session's endpoint), then passed over.
    pinned: Option<&'a Endpoint>,
    pinned_taken: bool,
    /// Ramping up new endpoints: the settings and now (ms).
    slow_start: Option<(SlowStart, u64)>,
    /// A warming first choice passed over this time, yielded last if nothing else is.
    deferred: Option<&'a Endpoint>,
}

impl<'a> Candidates<'a> {
    /// The endpoint at `addr` first, if it is one of these and would be yielded (not ejected
    /// or failing its health checks), then the others in the balancer's order.
    pub fn pinned_first(mut self, addr: SocketAddr) -> Self {
        let usable = self
            .endpoints
            .iter()
            .find(|e| e.addr == addr && self.usable(e));
        self.pinned = usable;
        self
    }

    /// Ramps up new endpoints by `s` at `now` (ms): a first choice still warming is taken
    /// with the probability of its weight, else passed over for the next (and yielded last,
    /// when nothing else is).
    pub fn slow_start(mut self, s: SlowStart, now: u64) -> Self {
        self.slow_start = Some((s, now));
        self
    }

    /// The endpoint yielded first, if it was pinned.
    pub fn is_pinned(&self) -> bool {
        self.pinned.is_some()
    }

    fn usable(&self, e: &Endpoint) -> bool {
        let ejected = self.now != 0 && e.state.outlier.is_ejected(self.now);
        let unhealthy = self.skip_unhealthy && e.state.health.is_unhealthy();
        !ejected && !unhealthy
    }
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a Endpoint;

    fn next(&mut self) -> Option<&'a Endpoint> {
        if let Some(e) = self.pinned.filter(|_| !self.pinned_taken) {
            self.pinned_taken = true;
            return Some(e);
        }
        let skip = self.pinned.map(|e| e.addr);
        while self.taken < self.endpoints.len() {
            let i = (self.start + self.taken) % self.endpoints.len();
            self.taken += 1;
            let e = self.endpoints.get(i)?;
            if Some(e.addr) != skip && self.usable(e) {
                // Until one is taken, each warming endpoint met is weighed (neighbours in a
                // scale-up are all new); the first passed over is kept for last.
                if let Some((s, now)) = self.slow_start
                    && let Some(weight) = e.state.warming(&s, now)
                    && fastrand::f64() >= weight
                {
                    self.deferred.get_or_insert(e);
                    continue;
                }
                // Only the first choice is weighed: a retry takes what comes.
                self.slow_start = None;
                return Some(e);
            }
        }
        self.slow_start = None;
        self.deferred.take()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.endpoints.len() - self.taken))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;

    fn endpoints(n: u8) -> Vec<Endpoint> {
        (1..=n)
            .map(|i| Endpoint {
                addr: SocketAddr::from(([127, 0, 0, i], 80)),
                state: Arc::default(),
            })
            .collect()
    }

    fn order(b: &Balancer, eps: &[Endpoint]) -> Vec<u8> {
        order_of(b, LoadBalancer::LeastRequest, eps)
    }

    fn order_of(b: &Balancer, kind: LoadBalancer, eps: &[Endpoint]) -> Vec<u8> {
        b.candidates(kind, eps, 0, false, None)
            .map(|e| match e.addr.ip() {
                std::net::IpAddr::V4(ip) => ip.octets()[3],
                std::net::IpAddr::V6(_) => 0,
            })
            .collect()
    }

    #[test]
    fn a_loaded_endpoint_gets_fewer_requests_and_an_idle_backend_goes_round() {
        use super::super::endpoint::InFlight;
        let b = Balancer::default();
        let eps = endpoints(3);
        // A slow endpoint: requests pile up on it.
        let _held: Vec<InFlight> = (0..4).map(|_| InFlight::new(&eps[1].state)).collect();
        let mut firsts = [0usize; 3];
        for _ in 0..3000 {
            let first = b
                .candidates(LoadBalancer::LeastRequest, &eps, 0, false, None)
                .next()
                .expect("one");
            let i = eps
                .iter()
                .position(|e| e.addr == first.addr)
                .expect("listed");
            firsts[i] += 1;
        }
        // Round robin would send it a third (1000); least request none while it is loaded.
        assert_eq!(firsts[1], 0, "{firsts:?}");
        assert!(firsts[0] > 1200 && firsts[2] > 1200, "{firsts:?}");
    }

    #[test]
    fn with_nothing_in_flight_requests_go_round_and_each_yields_every_endpoint_once() {
        let b = Balancer::default();
        let eps = endpoints(3);
        assert_eq!(order(&b, &eps), [1, 2, 3]);
        assert_eq!(order(&b, &eps), [2, 3, 1]);
        assert_eq!(order(&b, &eps), [3, 1, 2]);
        assert_eq!(order(&b, &eps), [1, 2, 3]);
    }

    #[test]
    fn ejected_endpoints_are_passed_over() {
        use super::super::outlier::{Outcome, OutlierSettings};
        let b = Balancer::default();
        let eps = endpoints(3);
        let s = OutlierSettings::default();
        for _ in 0..s.consecutive_gateway_errors {
            eps[1]
                .state
                .outlier
                .record(Outcome::GatewayError, &s, 1_000, || true);
        }
        let left = |now| {
            b.candidates(LoadBalancer::LeastRequest, &eps, now, false, None)
                .count()
        };
        assert_eq!(left(2_000), 2);
        // Not while passing over is off, nor once the ejection is over.
        assert_eq!(left(0), 3);
        assert_eq!(left(1_000 + 30_000), 3);
    }

    fn firsts(b: &Balancer, kind: LoadBalancer, eps: &[Endpoint], n: usize) -> Vec<usize> {
        let mut firsts = vec![0; eps.len()];
        for _ in 0..n {
            let first = b.candidates(kind, eps, 0, false, None).next().expect("one");
            if let Some(i) = eps.iter().position(|e| e.addr == first.addr) {
                firsts[i] += 1;
            }
        }
        firsts
    }

    #[test]
    fn round_robin_ignores_load_and_random_spreads_evenly() {
        use super::super::endpoint::InFlight;
        let b = Balancer::default();
        let eps = endpoints(3);
        let _held: Vec<InFlight> = (0..4).map(|_| InFlight::new(&eps[1].state)).collect();
        // Round robin: a loaded endpoint still gets its exact third.
        assert_eq!(
            firsts(&b, LoadBalancer::RoundRobin, &eps, 300),
            [100, 100, 100]
        );
        // Random: each about a third (bounds far outside chance: p < 1e-9).
        let random = firsts(&b, LoadBalancer::Random, &eps, 3000);
        assert!(
            random.iter().all(|n| (800..=1200).contains(n)),
            "{random:?}"
        );
        // Each still yields every endpoint once, from its first choice on.
        for kind in [LoadBalancer::RoundRobin, LoadBalancer::Random] {
            for _ in 0..10 {
                let mut all = order_of(&b, kind, &eps);
                all.sort_unstable();
                assert_eq!(all, [1, 2, 3]);
            }
        }
    }

    #[test]
    fn no_endpoints_no_candidates() {
        let b = Balancer::default();
        assert_eq!(
            b.candidates(LoadBalancer::LeastRequest, &[], 0, false, None)
                .count(),
            0
        );
        assert_eq!(order(&b, &endpoints(1)), [1]);
    }
}
