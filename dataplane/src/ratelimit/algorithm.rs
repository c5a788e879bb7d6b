//! The three algorithms as pure state machines over a clock in microseconds (UNIX time, so
//! fixed windows are calendar-aligned). The Redis scripts ([`super::scripts`]) compute the
//! same thing with Redis's clock.

use portico_model::ratelimit::Algorithm;

/// The numbers of one limit, in the units the algorithms use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quota {
    pub algorithm: Algorithm,
    pub requests: u64,
    pub interval_us: u64,
    /// Token bucket capacity.
    pub burst: u64,
}

/// What a limit said about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// Requests left right after this one.
    pub remaining: u64,
    /// Until the quota is whole again (token bucket full, window over).
    pub reset_us: u64,
    /// When denied: until a request would be admitted.
    pub retry_after_us: u64,
}

/// Per-key state: 24 bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum State {
    Bucket {
        tokens: f64,
        at_us: u64,
    },
    Window {
        index: u64,
        count: u32,
        previous: u32,
    },
}

impl Quota {
    pub fn fresh(&self, now_us: u64) -> State {
        match self.algorithm {
            Algorithm::TokenBucket => State::Bucket {
                tokens: self.burst as f64,
                at_us: now_us,
            },
            _ => State::Window {
                index: now_us / self.interval_us,
                count: 0,
                previous: 0,
            },
        }
    }

    /// Whether `state` is what a key that was never seen would have: such a key can be
    /// dropped from the store without changing any decision.
    pub fn is_idle(&self, state: &State, now_us: u64) -> bool {
        match *state {
            State::Bucket { tokens, at_us } => {
                let refill = now_us.saturating_sub(at_us) as f64 * self.rate_per_us();
                tokens + refill >= self.burst as f64
            }
            State::Window { index, .. } => now_us / self.interval_us >= index + 2,
        }
    }

    fn rate_per_us(&self) -> f64 {
        self.requests as f64 / self.interval_us as f64
    }

    /// Counts one request against `state` at `now_us`.
    pub fn admit(&self, state: &mut State, now_us: u64) -> Outcome {
        match state {
            State::Bucket { tokens, at_us } => {
                let rate = self.rate_per_us();
                let burst = self.burst as f64;
                if now_us > *at_us {
                    *tokens = (*tokens + (now_us - *at_us) as f64 * rate).min(burst);
                    *at_us = now_us;
                }
                let allowed = *tokens >= 1.0;
                if allowed {
                    *tokens -= 1.0;
                }
                Outcome {
                    allowed,
                    remaining: tokens.floor().max(0.0) as u64,
                    reset_us: ((burst - *tokens) / rate).ceil() as u64,
                    retry_after_us: if allowed {
                        0
                    } else {
                        ((1.0 - *tokens) / rate).ceil() as u64
                    },
                }
            }
            State::Window {
                index,
                count,
                previous,
            } => {
                let now_index = now_us / self.interval_us;
                if now_index != *index {
                    *previous = if now_index == *index + 1 { *count } else { 0 };
                    *count = 0;
                    *index = now_index;
                }
                let into = now_us - now_index * self.interval_us;
                let reset_us = self.interval_us - into;
                match self.algorithm {
                    Algorithm::SlidingWindow => {
                        let (allowed, remaining, retry_after_us) =
                            sliding(self.requests, self.interval_us, *previous, *count, into);
                        if allowed {
                            *count = count.saturating_add(1);
                        }
                        Outcome {
                            allowed,
                            remaining,
                            reset_us,
                            retry_after_us,
                        }
                    }
                    _ => {
                        let allowed = u64::from(*count) < self.requests;
                        if allowed {
                            *count += 1;
                        }
                        Outcome {
                            allowed,
                            remaining: self.requests - u64::from(*count).min(self.requests),
                            reset_us,
                            retry_after_us: if allowed { 0 } else { reset_us },
                        }
                    }
                }
            }
        }
    }
}

/// The sliding-window estimate: the previous window weighted by how much of it still
/// overlaps the last interval, plus the current window. Returns (allowed, remaining after,
/// retry after).
pub fn sliding(
    requests: u64,
    interval_us: u64,
    previous: u32,
    count: u32,
    into_us: u64,
) -> (bool, u64, u64) {
    let interval = interval_us as f64;
    let weight = 1.0 - into_us as f64 / interval;
    let estimate = f64::from(previous) * weight + f64::from(count);
    let limit = requests as f64;
    if estimate + 1.0 <= limit {
        let remaining = (limit - estimate - 1.0).floor().max(0.0) as u64;
        return (true, remaining, 0);
    }
    // When would estimate + 1 <= limit hold? Within this window, if the previous window's
    // share can fall far enough; else in the next one, where this window is the previous.
    let room = limit - f64::from(count) - 1.0;
    let retry = if previous > 0 && room >= 0.0 {
        let w = room / f64::from(previous);
        ((1.0 - w) * interval - into_us as f64).max(1.0)
    } else {
        let w = ((limit - 1.0) / f64::from(count.max(1))).min(1.0);
        (interval - into_us as f64) + (1.0 - w) * interval
    };
    (false, 0, retry.ceil() as u64)
}

#[cfg(test)]
mod tests;
