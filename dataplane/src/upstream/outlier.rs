//! Passive health (outlier detection): an endpoint that fails several requests in a row is
//! ejected (the balancer passes it over) for a time that grows with each ejection, within a
//! maximum share of the backend's endpoints; when too many are out, all are used again
//! (the panic threshold), since an overloaded few are worse than a wrong many.
//!
//! On by default, with no policy (the defaults below, beside Envoy's and Envoy Gateway's):
//!
//! | setting | Portico | Envoy | Envoy Gateway |
//! | --- | --- | --- | --- |
//! | consecutive 5xx | 5 | 5 | 5 |
//! | consecutive gateway errors (connect failure, reset, timeout) | 5, enforced | 5, not enforced | unset |
//! | base ejection time (× ejections) | 30 s | 30 s | 30 s |
//! | maximum ejection time | 300 s | 300 s | — |
//! | maximum ejected share | 10 %, at least one | 10 %, at least one | 10 % |
//! | panic threshold (healthy share below which all are used) | 50 % | 50 % | 50 % |
//!
//! Gateway errors are enforced by default, unlike Envoy: a pod that died without its
//! EndpointSlice saying so yet refuses connections, and that is the case users meet.
//!
//! Times are milliseconds since a process epoch on tokio's clock (paused in tests).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// When to eject an endpoint, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierSettings {
    /// 5xx answers in a row that eject (0: never).
    pub consecutive_5xx: u32,
    /// Connect failures, resets and timeouts in a row that eject (0: never).
    pub consecutive_gateway_errors: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Most endpoints out at once, as a percentage of the backend's (at least one).
    pub max_ejected_percent: u32,
    /// Below this percentage of endpoints in, ejections are ignored.
    pub panic_threshold_percent: u32,
}

impl Default for OutlierSettings {
    /// The defaults of the snapshot model (the table above), which compile fills in too.
    fn default() -> Self {
        Self::from_model(&portico_model::backend::OutlierDetection::default())
    }
}

impl OutlierSettings {
    /// From a BackendPolicy's (or the default) outlier detection.
    pub fn from_model(o: &portico_model::backend::OutlierDetection) -> Self {
        Self {
            consecutive_5xx: o.consecutive_5xx,
            consecutive_gateway_errors: o.consecutive_gateway_errors,
            base_ejection: Duration::from_millis(o.base_ejection_ms),
            max_ejection: Duration::from_millis(o.max_ejection_ms),
            max_ejected_percent: o.max_ejected_percent,
            panic_threshold_percent: o.panic_threshold_percent,
        }
    }
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the process epoch (never 0, so 0 can mean "not ejected").
pub(super) fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// How one attempt at an endpoint ended, as far as its health goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An answer below 500.
    Success,
    /// A 5xx answer.
    ServerError,
    /// No answer: connect failure, reset, timeout.
    GatewayError,
}

/// An endpoint's passive-health state, kept with it across updates.
#[derive(Debug, Default)]
pub(super) struct Outlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Ejected until this time (ms); 0: in.
    ejected_until: AtomicU64,
    /// Ejections so far (the next lasts one base time more); forgotten after a healthy spell.
    times: AtomicU32,
    /// When the last ejection ended (ms; 0: none since the count was forgotten).
    returned_at: AtomicU64,
}

/// What recording an outcome decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Keep,
    /// Ejected for this long; `reason` says which count reached its limit.
    Eject {
        for_ms: u64,
        reason: &'static str,
    },
    /// The limit was reached but too many endpoints are out already.
    Spared,
}

impl Outlier {
    /// Whether the endpoint is out at `now`. An ejection whose time is over ends here, once
    /// (the caller counts and logs the return): `(ejected, returned)`.
    pub(super) fn check(&self, now: u64) -> (bool, bool) {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return (false, false);
        }
        if until > now {
            return (true, false);
        }
        let returned = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if returned {
            self.returned_at.store(now, Ordering::Relaxed);
        }
        (false, returned)
    }

    /// Ends an ejection early (the endpoint passed its active health checks, as Envoy
    /// un-ejects by default); its failure counts start again. Whether it was ejected.
    pub(super) fn end_ejection(&self, now: u64) -> bool {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        let until = self.ejected_until.swap(0, Ordering::Relaxed);
        if until > now {
            self.returned_at.store(now, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub(super) fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > now
    }

    /// Counts `outcome`; `may_eject` says whether the backend has room for one more out.
    pub(super) fn record(
        &self,
        outcome: Outcome,
        settings: &OutlierSettings,
        now: u64,
        may_eject: impl FnOnce() -> bool,
    ) -> Verdict {
        let reached = match outcome {
            Outcome::Success => {
                // Loads first: the common case writes nothing (no shared cache line bounced).
                if self.consecutive_5xx.load(Ordering::Relaxed) != 0 {
                    self.consecutive_5xx.store(0, Ordering::Relaxed);
                }
                if self.consecutive_gateway.load(Ordering::Relaxed) != 0 {
                    self.consecutive_gateway.store(0, Ordering::Relaxed);
                }
                return Verdict::Keep;
            }
            Outcome::ServerError => {
                let n = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                (settings.consecutive_5xx > 0 && n >= settings.consecutive_5xx)
                    .then_some("consecutive_5xx")
            }
            Outcome::GatewayError => {
                // A gateway error is a failed request too.
                let n5 = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                let n = self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1;
                if settings.consecutive_gateway_errors > 0
                    && n >= settings.consecutive_gateway_errors
                {
                    Some("consecutive_gateway_errors")
                } else {
                    (settings.consecutive_5xx > 0 && n5 >= settings.consecutive_5xx)
                        .then_some("consecutive_5xx")
                }
            }
        };
        let Some(reason) = reached else {
            return Verdict::Keep;
        };
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        if self.is_ejected(now) {
            // Requests that were in flight when it was ejected.
            return Verdict::Keep;
        }
        if !may_eject() {
            return Verdict::Spared;
        }
        let times = self.times.fetch_add(1, Ordering::Relaxed) + 1;
        let base = u64::try_from(settings.base_ejection.as_millis()).unwrap_or(u64::MAX);
        let max = u64::try_from(settings.max_ejection.as_millis()).unwrap_or(u64::MAX);
        let for_ms = base.saturating_mul(u64::from(times)).min(max).max(1);
        self.ejected_until
            .store(now.saturating_add(for_ms), Ordering::Relaxed);
        Verdict::Eject { for_ms, reason }
    }

    /// Forgets past ejections of an endpoint back in for `quiet` (the next ejection starts
    /// from the base time again).
    pub(super) fn forget_after(&self, now: u64, quiet: Duration) {
        let back = self.returned_at.load(Ordering::Relaxed);
        let quiet = u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX);
        if back != 0 && now.saturating_sub(back) >= quiet {
            self.times.store(0, Ordering::Relaxed);
            self.returned_at.store(0, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    pub(super) fn times_ejected(&self) -> u32 {
        self.times.load(Ordering::Relaxed)
    }
}

/// Whether a backend of `endpoints` with `ejected` out may eject one more.
pub(super) fn room_for_one_more(
    settings: &OutlierSettings,
    endpoints: usize,
    ejected: usize,
) -> bool {
    let max = (endpoints * settings.max_ejected_percent as usize / 100).max(1);
    ejected < max && ejected < endpoints
}

/// Whether so few endpoints are in that ejections are to be ignored.
pub(super) fn panicking(settings: &OutlierSettings, endpoints: usize, ejected: usize) -> bool {
    let healthy = endpoints.saturating_sub(ejected);
    healthy * 100 < endpoints * settings.panic_threshold_percent as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: OutlierSettings = OutlierSettings {
        consecutive_5xx: 3,
        consecutive_gateway_errors: 2,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(25),
        max_ejected_percent: 10,
        panic_threshold_percent: 50,
    };

    #[test]
    fn failures_in_a_row_eject_for_a_time_growing_to_the_maximum() {
        let o = Outlier::default();
        let yes = || true;
        assert_eq!(o.record(Outcome::ServerError, &S, 1, yes), Verdict::Keep);
        assert_eq!(o.record(Outcome::ServerError, &S, 1, yes), Verdict::Keep);
        // A success in between starts the count again.
        assert_eq!(o.record(Outcome::Success, &S, 1, yes), Verdict::Keep);
        assert_eq!(o.record(Outcome::ServerError, &S, 1, yes), Verdict::Keep);
        assert_eq!(o.record(Outcome::ServerError, &S, 1, yes), Verdict::Keep);
        assert_eq!(
            o.record(Outcome::ServerError, &S, 1, yes),
            Verdict::Eject {
                for_ms: 10_000,
                reason: "consecutive_5xx"
            }
        );
        assert_eq!(o.check(5_000), (true, false));
        // The ejection ends once, when it is first looked at after its time.
        assert_eq!(o.check(10_001), (false, true));
        assert_eq!(o.check(10_002), (false, false));
        // Gateway errors have their own, lower, limit; the second ejection lasts twice the
        // base, the third is capped.
        o.record(Outcome::GatewayError, &S, 20_000, yes);
        assert_eq!(
            o.record(Outcome::GatewayError, &S, 20_000, yes),
            Verdict::Eject {
                for_ms: 20_000,
                reason: "consecutive_gateway_errors"
            }
        );
        assert!(o.is_ejected(39_999) && !o.is_ejected(40_000));
        o.record(Outcome::GatewayError, &S, 40_000, yes);
        assert_eq!(
            o.record(Outcome::GatewayError, &S, 40_000, yes),
            Verdict::Eject {
                for_ms: 25_000,
                reason: "consecutive_gateway_errors"
            }
        );
        // Back in for the maximum ejection time: the count starts again.
        assert_eq!(o.check(65_000), (false, true));
        o.forget_after(80_000, S.max_ejection);
        assert_eq!(o.times_ejected(), 3);
        o.forget_after(90_000, S.max_ejection);
        assert_eq!(o.times_ejected(), 0);
    }

    #[test]
    fn a_backend_without_room_spares_the_endpoint() {
        let o = Outlier::default();
        o.record(Outcome::GatewayError, &S, 1, || false);
        assert_eq!(
            o.record(Outcome::GatewayError, &S, 1, || false),
            Verdict::Spared
        );
        assert!(!o.is_ejected(2));
    }

    #[test]
    fn the_ejected_share_has_a_cap_of_at_least_one_and_a_panic_threshold() {
        assert!(room_for_one_more(&S, 2, 0));
        assert!(!room_for_one_more(&S, 2, 1));
        assert!(room_for_one_more(&S, 30, 2));
        assert!(!room_for_one_more(&S, 30, 3));
        assert!(!room_for_one_more(&S, 1, 1));
        assert!(!panicking(&S, 10, 5));
        assert!(panicking(&S, 10, 6));
        assert!(panicking(&S, 1, 1));
    }
}
