//! `RequestMirror`: a copy of a request (of a share of requests) sent to another backend and
//! its answer dropped. A mirror never slows, changes or fails the request it copies:
//! - the copy goes from a task of its own, with the request's head as the backend got it
//!   (filters applied) and its body teed as the original is read ([`crate::tee`]: a copy
//!   that falls a megabyte behind is cut off, and its request fails rather than arrive
//!   truncated);
//! - copies in flight are bounded per process ([`MAX_IN_FLIGHT`]), and each backend's
//!   circuit breaker bounds its own; beyond either, the copy is dropped and counted; the
//!   body bytes waiting for copies are bounded too ([`tee::MAX_TOTAL_BACKLOG`]);
//! - a copy has the rule's request timeout (else [`DEFAULT_TIMEOUT`]) for its whole exchange.
//!
//! `portico_mirror_requests_total{backend,result}` counts every copy's fate.

use crate::body::{BackendBody, BodyLimits, ClientBody, RequestBody};
use crate::metrics::Metrics;
use crate::tee::{self, Tee};
use crate::upstream::{self, BackendPool, Outcome};
use http::Request;
use http_body::Body as _;
use http_body_util::BodyExt as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Copies in flight at once in one process.
pub const MAX_IN_FLIGHT: usize = 1024;
/// How long a copy may take when its rule has no request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most of a mirror's answer read (and dropped) so its connection can be reused.
const MAX_DRAIN: usize = 64 * 1024;

/// One `RequestMirror` filter of a rule.
#[derive(Debug)]
pub struct MirrorTo {
    pub pool: Arc<BackendPool>,
    pub numerator: u32,
    pub denominator: u32,
}

impl MirrorTo {
    /// Whether this request is one of the share copied.
    fn chosen(&self) -> bool {
        self.numerator >= self.denominator || fastrand::u32(..self.denominator) < self.numerator
    }
}

/// What mirroring needs of the proxy.
#[derive(Debug)]
pub struct Mirrors {
    slots: Arc<Semaphore>,
    /// Bytes of request bodies waiting for mirrors, across the process.
    backlog: Arc<std::sync::atomic::AtomicUsize>,
    limits: BodyLimits,
    metrics: Arc<Metrics>,
}

impl Mirrors {
    pub fn new(limits: BodyLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            backlog: Arc::default(),
            limits,
            metrics,
        }
    }

    /// Starts a copy of the request (`parts` as the backend gets them, `body` about to be
    /// sent) to each mirror that picks it, and returns the body to send instead, which feeds
    /// the copies as it is read.
    pub fn start(
        &self,
        mirrors: &[MirrorTo],
        parts: &http::request::Parts,
        body: RequestBody,
        timeout: Option<Duration>,
    ) -> RequestBody {
        let mut sinks = Vec::new();
        let has_body = !body.is_end_stream();
        for m in mirrors.iter().filter(|m| m.chosen()) {
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                self.metrics.mirrored(&m.pool.id, "dropped");
                continue;
            };
            let copy = if has_body {
                let (sink, copy) = tee::channel(body.size_hint(), self.backlog.clone());
                sinks.push(sink);
                RequestBody::Copy(copy)
            } else {
                RequestBody::Empty
            };
            let mut req = Request::new(copy);
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = parts.uri.clone();
            *req.headers_mut() = parts.headers.clone();
            let task = Copy {
                pool: m.pool.clone(),
                limits: self.limits,
                metrics: self.metrics.clone(),
                timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
                _slot: slot,
            };
            tokio::spawn(task.send(req));
        }
        if sinks.is_empty() {
            body
        } else {
            RequestBody::Tee(Box::new(Tee::new(body, sinks)))
        }
    }
}

/// One copy on its way.
struct Copy {
    pool: Arc<BackendPool>,
    limits: BodyLimits,
    metrics: Arc<Metrics>,
    timeout: Duration,
    _slot: OwnedSemaphorePermit,
}

impl Copy {
    async fn send(self, mut req: Request<RequestBody>) {
        let pool = &self.pool;
        let cut = match req.body() {
            RequestBody::Copy(c) => Some(c.cut_flag()),
            _ => None,
        };
        let exchange = async {
            if upstream::wire_target(&mut req, pool.protocol, pool.tls.is_some()).is_err() {
                return "failed";
            }
            let settings = pool.settings();
            let endpoints = pool.endpoints();
            let Some(endpoint) = pool.candidates(&endpoints, &settings, None).next() else {
                return "dropped";
            };
            let Ok(admitted) = pool.admit(&settings) else {
                return "dropped";
            };
            // A copy is exempt from the minimum upload rate: it goes at its original's pace.
            let (parts, body) = req.into_parts();
            let (body, sent) = ClientBody::new(body, self.limits, true);
            let req = Request::from_parts(parts, body);
            match upstream::attempt(pool, endpoint, req, &settings.conn).await {
                Ok((resp, lease)) => {
                    let lease = upstream::hold_with(lease, admitted);
                    let outcome = if resp.status().is_server_error() {
                        Outcome::ServerError
                    } else {
                        Outcome::Success
                    };
                    pool.record(endpoint, outcome, &settings);
                    // Read (to a limit) so that the connection can be reused.
                    let body =
                        BackendBody::new(resp.into_body(), lease, sent, self.limits.idle_timeout);
                    let _ = http_body_util::Limited::new(body, MAX_DRAIN)
                        .collect()
                        .await;
                    "answered"
                }
                Err(_) => {
                    pool.record(endpoint, Outcome::GatewayError, &settings);
                    "failed"
                }
            }
        };
        let result = tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or("timeout");
        let result = match cut {
            Some(c) if c.load(Ordering::Relaxed) => "dropped",
            _ => result,
        };
        self.metrics.mirrored(&pool.id, result);
    }
}
