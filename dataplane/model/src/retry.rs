//! Retries as a route asks for them (HTTPRoute `retry`), and as a BackendPolicy gives them to
//! the rules without one. A leaf: both `route` and `backend` use it.

use serde::{Deserialize, Serialize};

/// A rule's retries (HTTPRoute `retry`). A retry goes to another endpoint where there is one,
/// only for a request whose body could be kept (none, or at most
/// [`RouteRetry::MAX_REPLAY_BYTES`]), and within the backend's retry budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRetry {
    /// Answers retried, by status (400-599); connection errors (reset, closed, a backend
    /// request timeout) are retried too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    /// Retries after the first attempt.
    pub attempts: u32,
    /// The least wait before a retry; each further retry waits twice as long as the one
    /// before, up to ten times this, plus up to half again as jitter.
    pub backoff_ms: u64,
}

impl RouteRetry {
    /// Retries when the route does not say how many (Envoy Gateway's default too).
    pub const DEFAULT_ATTEMPTS: u32 = 2;
    /// The most retries made, whatever the route asks.
    pub const MAX_ATTEMPTS: u32 = 10;
    /// The wait before a first retry when the route does not say (Envoy's base interval).
    pub const DEFAULT_BACKOFF_MS: u64 = 25;
    /// The longest backoff a route may ask for (a longer one is this).
    pub const MAX_BACKOFF_MS: u64 = 60_000;
    /// The largest request body kept for replay; a request with a larger body is tried once.
    pub const MAX_REPLAY_BYTES: u64 = 64 * 1024;
}
