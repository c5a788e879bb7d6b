//! The retry budget of a backend: retries are allowed up to a share of the requests of the
//! last few seconds plus a small steady rate, so a failing backend never sees much more than
//! the offered load (Linkerd's model, and GEP-3388's defaults: 20 % over 10 s, and 10 a
//! second; Envoy's `retry_budget` is 20 % of active requests with a minimum of 3).
//!
//! A request costs one atomic add; the window moves once a second (the pools' tick), so no
//! request reads the clock for it.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds the budget looks back.
pub(super) const WINDOW_SECS: u64 = 10;

/// How much retrying a backend allows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetSettings {
    /// Retries per request of the window.
    pub ratio: f64,
    /// Retries a second allowed whatever the traffic (a quiet backend can still be retried).
    pub min_per_second: u64,
}

impl Default for BudgetSettings {
    /// The snapshot model's defaults, which compile fills in too.
    fn default() -> Self {
        Self::from_model(&portico_model::backend::Retry::default())
    }
}

/// The counts a budget is decided on; the settings come with each withdrawal, so a policy
/// change keeps the window.
#[derive(Debug, Default)]
pub(super) struct RetryBudget {
    /// Totals since the start.
    requests: AtomicU64,
    retries: AtomicU64,
    /// Totals at the start of the window.
    floor_requests: AtomicU64,
    floor_retries: AtomicU64,
    /// Totals at each of the last ticks, oldest first.
    ticks: Mutex<VecDeque<(u64, u64)>>,
}

impl BudgetSettings {
    /// From a BackendPolicy's (or the default) retry settings.
    pub fn from_model(r: &portico_model::backend::Retry) -> Self {
        Self {
            ratio: f64::from(r.budget_percent) / 100.0,
            min_per_second: u64::from(r.budget_min_per_second),
        }
    }
}

impl RetryBudget {
    /// Counts a request (its first attempt).
    pub(super) fn deposit(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if it has one.
    pub(super) fn withdraw(&self, settings: &BudgetSettings) -> bool {
        let requests = self
            .requests
            .load(Ordering::Relaxed)
            .saturating_sub(self.floor_requests.load(Ordering::Relaxed));
        let retries = self
            .retries
            .load(Ordering::Relaxed)
            .saturating_sub(self.floor_retries.load(Ordering::Relaxed));
        let allowed =
            settings.ratio * requests as f64 + (settings.min_per_second * WINDOW_SECS) as f64;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Moves the window on by a second.
    pub(super) fn tick(&self) {
        let now = (
            self.requests.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        );
        let mut ticks = self.ticks.lock();
        ticks.push_back(now);
        while ticks.len() > WINDOW_SECS as usize {
            ticks.pop_front();
        }
        if let Some(&(requests, retries)) = ticks.front() {
            self.floor_requests.store(requests, Ordering::Relaxed);
            self.floor_retries.store(retries, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries_allowed(b: &RetryBudget, s: &BudgetSettings) -> u64 {
        let mut n = 0;
        while b.withdraw(s) {
            n += 1;
        }
        n
    }

    #[test]
    fn retries_are_a_share_of_the_window_plus_a_floor() {
        let b = RetryBudget::default();
        let s = &BudgetSettings {
            ratio: 0.2,
            min_per_second: 1,
        };
        // No traffic: the floor (1 a second over the window).
        assert_eq!(retries_allowed(&b, s), 10);
        for _ in 0..1000 {
            b.deposit();
        }
        // 20 % of the requests, less what was spent.
        assert_eq!(retries_allowed(&b, s), 200);
        // The window moves: after it has gone by, the old requests and retries no longer
        // count.
        for _ in 0..WINDOW_SECS + 1 {
            b.tick();
        }
        assert_eq!(retries_allowed(&b, s), 10);
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(retries_allowed(&b, s), 20);
    }

    #[test]
    fn under_steady_failure_retries_stay_near_the_share() {
        // 1000 requests a second for 30 s, each retried once if the budget allows.
        let b = RetryBudget::default();
        let s = &BudgetSettings::default();
        let (mut requests, mut retries) = (0u64, 0u64);
        for _ in 0..30 {
            for _ in 0..1000 {
                b.deposit();
                requests += 1;
                if b.withdraw(s) {
                    retries += 1;
                }
            }
            b.tick();
        }
        let amplification = (requests + retries) as f64 / requests as f64;
        // The share (0.2), the floor (10 a second over 1000 a second: 0.01), and the edge of
        // a window that moves by whole seconds (under 0.01).
        assert!(amplification <= 1.0 + 0.2 + 0.01 + 0.01, "{amplification}");
        assert!(amplification >= 1.15, "the budget is used: {amplification}");
    }
}
