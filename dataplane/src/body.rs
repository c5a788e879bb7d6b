//! The proxy's bodies, and the local replies made of them (a leaf: this module imports from
//! the crate only `codec`, itself a leaf).
//!
//! [`RequestBody`] is every request body a client sends; [`ProxyBody`] every response body the
//! proxy sends; [`LocalReply`] an answer the gateway gives itself. Bodies carry time limits in both directions, so that neither a slow
//! client nor a slow backend holds the other's connection without end.
//!
//! - [`ClientBody`], the request body on its way upstream: no more than the idle timeout
//!   without a byte while the backend is reading, and (optionally) a minimum average rate after
//!   a grace period, Apache `mod_reqtimeout`'s `body=20,MinRate=500` by default. Time counts
//!   only while the body waits for the client: a backend that reads slowly is not the
//!   client's fault. A framing error or a timeout is recorded in its [`BodyOutcome`], so the
//!   proxy answers the client's fault as the client's (400/408), not as a backend's 502.
//! - [`BackendBody`], the response body on its way down: no more than the idle timeout
//!   between two frames from the backend.
//!
//! Those timers run only while their body is polled, that is while it waits for its source.
//! A body whose sink stopped taking data (a backend that no longer reads the upload, an
//! HTTP/2 client that never opens its flow-control window) is not polled at all: its
//! [`BodyOutcome`] says so ([`BodyOutcome::stalled`]: nothing moved for the idle timeout and
//! neither body waits for its source), and the proxy (before the response) or the
//! connection (after it) ends the request.

use crate::codec::ServerBody;
use crate::util::ByteBudget;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use parking_lot::Mutex;
use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// Time limits on request bodies.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Longest wait for the next byte of a body (request or response).
    pub idle_timeout: Duration,
    /// Slowest average a request body may arrive at, after its grace period.
    pub min_rate: Option<MinRate>,
}

#[derive(Clone, Copy, Debug)]
pub struct MinRate {
    pub bytes_per_second: u32,
    /// Time a body may take before the rate applies; each `bytes_per_second` received buys
    /// one more second.
    pub grace: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            min_rate: Some(MinRate {
                bytes_per_second: 500,
                grace: Duration::from_secs(20),
            }),
        }
    }
}

/// How a request body ended, when it did not end well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFault {
    /// Malformed framing (chunk syntax, a body shorter than its Content-Length).
    Framing,
    /// No byte within the idle timeout.
    Idle,
    /// Slower than the minimum rate.
    TooSlow,
}

impl BodyFault {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyFault::Framing => "framing",
            BodyFault::Idle => "idle",
            BodyFault::TooSlow => "too_slow",
        }
    }
}

/// How much longer a body that received `received` bytes after waiting `waited` in all may
/// wait before it is too slow.
fn rate_budget(rate: MinRate, received: u64, waited: Duration) -> Duration {
    let earned = Duration::from_secs_f64(received as f64 / f64::from(rate.bytes_per_second.max(1)));
    (rate.grace + earned).saturating_sub(waited)
}

/// Shared by the two bodies of one request and the proxy: how the request body failed,
/// whether it has been sent whole, and when either body last moved. The idle timeout is "no
/// byte either way" (a gRPC stream whose client is quiet while the server sends is not idle).
#[derive(Debug)]
pub struct BodyOutcome {
    fault: Mutex<Option<BodyFault>>,
    ended: AtomicBool,
    ended_notify: Notify,
    start: Instant,
    /// Milliseconds after `start` of the last frame in either direction.
    moved_ms: AtomicU64,
    /// Whether the request body is waiting for the client, the response body for the
    /// backend (each then has its own timer).
    client_waiting: AtomicBool,
    backend_waiting: AtomicBool,
}

impl Default for BodyOutcome {
    fn default() -> Self {
        Self {
            fault: Mutex::new(None),
            ended: AtomicBool::new(false),
            ended_notify: Notify::new(),
            start: Instant::now(),
            moved_ms: AtomicU64::new(0),
            client_waiting: AtomicBool::new(false),
            backend_waiting: AtomicBool::new(false),
        }
    }
}

impl BodyOutcome {
    fn moved(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.moved_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When either body last moved.
    fn last_moved(&self) -> Instant {
        self.start + Duration::from_millis(self.moved_ms.load(Ordering::Relaxed))
    }

    /// Whether the request is stuck on a sink: nothing moved either way for `idle`, and no
    /// body is waiting for its source (whose own timer would end it).
    pub fn stalled(&self, idle: Duration) -> bool {
        !self.client_waiting.load(Ordering::Acquire)
            && !self.backend_waiting.load(Ordering::Acquire)
            && self.last_moved() + idle <= Instant::now()
    }

    pub fn fault(&self) -> Option<BodyFault> {
        *self.fault.lock()
    }

    fn set(&self, f: BodyFault) {
        self.fault.lock().get_or_insert(f);
    }

    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.ended_notify.notify_waiters();
    }

    /// Resolves once the whole body has gone upstream (at once for an empty body).
    pub async fn ended(&self) {
        loop {
            let notified = self.ended_notify.notified();
            if self.ended.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// Waits for `answer` (a backend's response head) with one timer: once the request body has
/// gone whole, at most `idle` more; before that, until the request is
/// [stalled](BodyOutcome::stalled) for `idle` (a backend that stopped reading the upload would
/// otherwise hold both sides forever). `None`: given up.
///
/// `answer` is pinned by the caller, so that the (large) attempt future is stored once, in
/// the caller's state, rather than again in this one's.
pub async fn answered_within<F: std::future::Future>(
    mut answer: Pin<&mut F>,
    outcome: &BodyOutcome,
    idle: Duration,
) -> Option<F::Output> {
    let ended_at_start = outcome.ended.load(Ordering::Acquire);
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    let ended = outcome.ended();
    tokio::pin!(ended);
    let mut ended_seen = ended_at_start;
    loop {
        tokio::select! {
            biased;
            r = answer.as_mut() => return Some(r),
            () = &mut ended, if !ended_seen => {
                ended_seen = true;
                timer.as_mut().reset(Instant::now() + idle);
            }
            () = &mut timer => {
                if ended_seen || outcome.stalled(idle) {
                    return None;
                }
                // Moving, or a body waits for its source (its own timer decides).
                let next = (outcome.last_moved() + idle)
                    .max(Instant::now() + (idle / 4).max(Duration::from_millis(100)));
                timer.as_mut().reset(next);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body {}", .0.as_str())]
pub struct BodyError(pub BodyFault);

/// The error of every body here.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as the client's connection delivers it.
pub enum RequestBody {
    /// An HTTP/1.1 request without one.
    Empty,
    /// Read off the client's HTTP/1.1 connection by this process.
    H1(ServerBody),
    /// hyper's (HTTP/2 connections).
    Hyper(Incoming),
    /// Read whole before it is sent, so that it can be sent again (retries).
    Full(Option<Bytes>),
    /// A body also copied to mirrors as it is read.
    Tee(Box<crate::tee::Tee<RequestBody>>),
    /// A mirror's copy of a body.
    Copy(crate::tee::Copy),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::H1(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            RequestBody::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            RequestBody::Tee(b) => Pin::new(&mut **b).poll_frame(cx),
            RequestBody::Copy(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(b) => b.is_none(),
            RequestBody::H1(b) => b.is_end_stream(),
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Tee(b) => b.is_end_stream(),
            RequestBody::Copy(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::H1(b) => b.size_hint(),
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::Tee(b) => b.size_hint(),
            RequestBody::Copy(b) => b.size_hint(),
        }
    }
}

/// The request body, forwarded with time limits.
pub struct ClientBody {
    inner: RequestBody,
    outcome: Arc<BodyOutcome>,
    limits: BodyLimits,
    /// Armed while the body waits for the client; made on the first wait (most bodies are
    /// empty or arrive at once and need no timer).
    idle: Option<Pin<Box<Sleep>>>,
    rate: Option<Pin<Box<Sleep>>>,
    /// When the current wait began, if the body is waiting.
    waiting_since: Option<Instant>,
    waited: Duration,
    received: u64,
    exempt_from_rate: bool,
}

impl ClientBody {
    /// `streaming`: a body that may stay open on purpose (gRPC streams), to which only the
    /// idle timeout applies.
    pub fn new(
        inner: RequestBody,
        limits: BodyLimits,
        streaming: bool,
    ) -> (Self, Arc<BodyOutcome>) {
        let outcome = Arc::new(BodyOutcome::default());
        if inner.is_end_stream() {
            outcome.end();
        }
        (
            Self {
                inner,
                outcome: outcome.clone(),
                limits,
                idle: None,
                rate: None,
                waiting_since: None,
                waited: Duration::ZERO,
                received: 0,
                exempt_from_rate: streaming,
            },
            outcome,
        )
    }

    fn fail(&self, f: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.outcome.set(f);
        Poll::Ready(Some(Err(Box::new(BodyError(f)))))
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        // Given up (the backend answered early, the request was cancelled): not waiting.
        self.outcome.client_waiting.store(false, Ordering::Release);
    }
}

/// Sets `timer` to fire at `at`, making it on first use.
fn arm(timer: &mut Option<Pin<Box<Sleep>>>, at: Instant) {
    match timer {
        Some(t) => t.as_mut().reset(at),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
    }
}

/// Whether an armed timer has fired (registering the waker when it has not).
fn fired(timer: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> bool {
    timer
        .as_mut()
        .is_some_and(|t| t.as_mut().poll(cx).is_ready())
}

/// Whether a body waiting since `since` is idle: its timer fired and the other direction has
/// not moved meanwhile (if it has, the timer is moved to the idle timeout after that).
fn idle_expired(
    timer: &mut Option<Pin<Box<Sleep>>>,
    outcome: &BodyOutcome,
    since: Instant,
    idle: Duration,
    cx: &mut Context<'_>,
) -> bool {
    if !fired(timer, cx) {
        return false;
    }
    let last = outcome.last_moved();
    if last > since && last + idle > Instant::now() {
        arm(timer, last + idle);
        return fired(timer, cx);
    }
    true
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let min_rate = this.limits.min_rate.filter(|_| !this.exempt_from_rate);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.outcome.client_waiting.store(false, Ordering::Release);
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                match frame {
                    Some(Ok(f)) => {
                        this.outcome.moved();
                        if let Some(d) = f.data_ref() {
                            this.received += d.len() as u64;
                        }
                        if this.inner.is_end_stream() {
                            this.outcome.end();
                        }
                        Poll::Ready(Some(Ok(f)))
                    }
                    Some(Err(_)) => this.fail(BodyFault::Framing),
                    None => {
                        this.outcome.end();
                        Poll::Ready(None)
                    }
                }
            }
            Poll::Pending => {
                this.outcome.client_waiting.store(true, Ordering::Release);
                if this.waiting_since.is_none() {
                    // A new wait for the client: its deadlines start now.
                    let now = Instant::now();
                    this.waiting_since = Some(now);
                    arm(&mut this.idle, now + this.limits.idle_timeout);
                    if let Some(rate) = min_rate {
                        let budget = rate_budget(rate, this.received, this.waited);
                        arm(&mut this.rate, now + budget);
                    }
                }
                let since = this.waiting_since.unwrap_or_else(Instant::now);
                let idle = this.limits.idle_timeout;
                if idle_expired(&mut this.idle, &this.outcome, since, idle, cx) {
                    return this.fail(BodyFault::Idle);
                }
                if min_rate.is_some() && fired(&mut this.rate, cx) {
                    return this.fail(BodyFault::TooSlow);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The [`BodyOutcome`] of a response's request, in the response's extensions, so the
/// connection can watch the stream for a stall after the proxy has handed it over.
#[derive(Clone, Debug)]
pub struct StreamProgress(pub Arc<BodyOutcome>);

/// What a backend's response body holds until it ends (its endpoint's in-flight count).
pub trait Lease: Send + Sync {
    /// `whole`: the body reached its end, so the connection is at a message boundary.
    fn end(self: Box<Self>, whole: bool);
}

/// A response body read off a connection this process speaks itself (HTTP/1.1): it knows
/// where its connection goes back when it ends.
pub trait ConnBody: Body<Data = Bytes, Error = BoxError> + Send + Sync + Unpin {}

/// Where a backend's response body comes from.
pub enum Upstream {
    /// hyper's (HTTP/2 connections).
    Hyper(Incoming),
    /// Read off an HTTP/1.1 connection by the body itself.
    Conn(Box<dyn ConnBody>),
    /// None: the backend switched protocols (101), and this is its connection, for a tunnel.
    Switched(Box<crate::tunnel::Switched>),
}

impl Upstream {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Upstream::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            Upstream::Conn(b) => Pin::new(&mut **b).poll_frame(cx),
            Upstream::Switched(_) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Upstream::Hyper(b) => b.is_end_stream(),
            Upstream::Conn(b) => b.is_end_stream(),
            Upstream::Switched(_) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Upstream::Hyper(b) => b.size_hint(),
            Upstream::Conn(b) => b.size_hint(),
            Upstream::Switched(_) => SizeHint::with_exact(0),
        }
    }
}

/// A response body from a backend, with an idle timeout between frames (unless the request
/// body moved meanwhile).
pub struct BackendBody {
    inner: Upstream,
    lease: Option<Box<dyn Lease>>,
    /// The backend's body reached its end.
    ended: bool,
    outcome: Arc<BodyOutcome>,
    idle_timeout: Duration,
    /// When the current wait began.
    since: Instant,
    /// Made on the first wait (a body that is there at once needs none).
    idle: Option<Pin<Box<Sleep>>>,
    /// Whether the current wait has its deadline set.
    waiting: bool,
}

impl BackendBody {
    pub fn new(
        inner: Upstream,
        lease: Option<Box<dyn Lease>>,
        outcome: Arc<BodyOutcome>,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            inner,
            lease,
            ended: false,
            outcome,
            idle_timeout,
            since: Instant::now(),
            idle: None,
            waiting: false,
        }
    }
}

impl Drop for BackendBody {
    fn drop(&mut self) {
        self.outcome.backend_waiting.store(false, Ordering::Release);
        if let Some(lease) = self.lease.take() {
            lease.end(self.ended || self.inner.is_end_stream());
        }
    }
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                this.outcome.backend_waiting.store(false, Ordering::Release);
                this.outcome.moved();
                if frame.is_none() {
                    this.ended = true;
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                this.outcome.backend_waiting.store(true, Ordering::Release);
                if !this.waiting {
                    this.waiting = true;
                    this.since = Instant::now();
                    arm(&mut this.idle, this.since + this.idle_timeout);
                }
                if idle_expired(
                    &mut this.idle,
                    &this.outcome,
                    this.since,
                    this.idle_timeout,
                    cx,
                ) {
                    return Poll::Ready(Some(Err("backend response body idle timeout".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Every body the proxy answers with: streamed from a backend, or made here. An enum of our
/// own rather than `Either`, so later kinds (replayed, teed, encoded) are one variant each
/// and the fast path stays unboxed.
pub enum ProxyBody {
    /// A backend's response body, with its idle timeout.
    Streamed(BackendBody),
    /// A body the gateway wrote (errors, redirects, policy answers).
    Local(Full<Bytes>),
    /// A backend's body, compressed on the way.
    Compressed(Box<crate::compress::Compressed<BackendBody>>),
    /// A body copied as it goes to the client, for a store that keeps it (the cache).
    Filling(Box<Filling>),
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Local(Full::new(Bytes::new()))
    }
}

impl From<Bytes> for ProxyBody {
    fn from(b: Bytes) -> Self {
        ProxyBody::Local(Full::new(b))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Streamed(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Local(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
            ProxyBody::Compressed(b) => Pin::new(&mut **b).poll_frame(cx),
            ProxyBody::Filling(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Streamed(b) => b.is_end_stream(),
            ProxyBody::Local(b) => b.is_end_stream(),
            ProxyBody::Compressed(b) => b.is_end_stream(),
            ProxyBody::Filling(b) => b.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Streamed(b) => b.size_hint(),
            ProxyBody::Local(b) => b.size_hint(),
            ProxyBody::Compressed(b) => b.size_hint(),
            ProxyBody::Filling(b) => b.inner.size_hint(),
        }
    }
}

/// How a [`Filling`] body ended, told once to its sink.
#[derive(Debug)]
pub enum Filled {
    /// The whole body, as the client got it.
    Whole(Bytes),
    /// It grew past the limit: the rest went to the client uncopied.
    TooLarge,
    /// The fills in progress held their whole budget: the rest went uncopied.
    NoRoom,
    /// It failed, or the client went away before its end.
    Failed,
}

/// Where a [`Filling`] body's copy goes.
pub type FillSink = Box<dyn FnOnce(Filled) + Send + Sync>;

/// A body passed through to the client and copied, up to a limit and within a budget shared
/// by every fill in progress (a copy holds what has been forwarded so far: without a bound,
/// many slow, large, distinct misses would hold their whole bodies at once), for a sink that is told once how it ended (dropped before its end:
/// [`Filled::Failed`]).
pub struct Filling {
    inner: ProxyBody,
    chunks: Vec<Bytes>,
    held: usize,
    limit: usize,
    budget: Arc<ByteBudget>,
    sink: Option<FillSink>,
}

impl Filling {
    pub fn new(inner: ProxyBody, limit: usize, budget: Arc<ByteBudget>, sink: FillSink) -> Self {
        let mut f = Self {
            inner,
            chunks: Vec::new(),
            held: 0,
            limit,
            budget,
            sink: Some(sink),
        };
        // An empty body is complete already: a server need not poll it at all.
        if f.inner.is_end_stream() {
            f.end(Filled::Whole(Bytes::new()));
        }
        f
    }

    /// Tells the sink, once, and gives back what the copy held.
    fn end(&mut self, how: Filled) {
        if let Some(sink) = self.sink.take() {
            // Given back first: whatever the sink does, the budget is whole again.
            self.budget.give(std::mem::take(&mut self.held));
            sink(how);
        }
    }

    /// Stops copying: the rest goes to the client only.
    fn give_up(&mut self, how: Filled) {
        self.chunks.clear();
        self.end(how);
    }

    /// The copy so far, whole.
    fn whole(&mut self) -> Filled {
        Filled::Whole(join(std::mem::take(&mut self.chunks), self.held))
    }
}

impl Drop for Filling {
    fn drop(&mut self) {
        // Dropped at its end without a last poll (the server knew the length): whole.
        let how = if self.inner.is_end_stream() {
            self.whole()
        } else {
            Filled::Failed
        };
        self.end(how);
    }
}

impl Body for Filling {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && this.sink.is_some()
                {
                    let n = data.len();
                    if this.held + n > this.limit {
                        this.give_up(Filled::TooLarge);
                    } else if !this.budget.take(n) {
                        this.give_up(Filled::NoRoom);
                    } else {
                        this.held += n;
                        this.chunks.push(data.clone());
                    }
                }
                if this.sink.is_some() && this.inner.is_end_stream() {
                    let whole = this.whole();
                    this.end(whole);
                }
            }
            Poll::Ready(Some(Err(_))) => this.give_up(Filled::Failed),
            Poll::Ready(None) => {
                let whole = this.whole();
                this.end(whole);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The chunks of a body as one buffer (no copy for a body of one chunk).
fn join(mut chunks: Vec<Bytes>, len: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut out = bytes::BytesMut::with_capacity(len);
    for c in chunks {
        out.extend_from_slice(&c);
    }
    out.freeze()
}

/// An answer the gateway gives itself, whoever decided it (a policy's 401, 403 or 429, an
/// external auth service's denial, a 503 while a policy's dependency is down). The policy
/// builds it whole, so the error module knows no policy type.
#[derive(Debug)]
pub struct LocalReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Why, for the access log: `area=detail` (`auth=expired_token`, `ratelimit=ns/p/limit`).
    pub reason: Cow<'static, str>,
}

impl LocalReply {
    /// A plain-text answer.
    pub fn text(
        status: StatusCode,
        reason: impl Into<Cow<'static, str>>,
        text: &'static str,
    ) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Self {
            status,
            headers,
            body: Bytes::from_static(text.as_bytes()),
            reason: reason.into(),
        }
    }

    /// With one more header (replacing any of that name).
    pub fn header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let mut resp = Response::new(ProxyBody::from(self.body));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }
}

/// A short plain-text response.
pub fn text_response(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::from(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Filling over `inner` whose sink's verdict lands in the returned cell.
    fn filling(inner: ProxyBody, limit: usize) -> (Filling, Arc<Mutex<Option<String>>>) {
        filling_within(inner, limit, ByteBudget::new(usize::MAX))
    }

    fn filling_within(
        inner: ProxyBody,
        limit: usize,
        budget: Arc<ByteBudget>,
    ) -> (Filling, Arc<Mutex<Option<String>>>) {
        let seen = Arc::new(Mutex::new(None));
        let into = seen.clone();
        let sink: FillSink = Box::new(move |f| {
            *into.lock() = Some(match f {
                Filled::Whole(b) => format!("whole:{}", String::from_utf8_lossy(&b)),
                Filled::TooLarge => "too-large".into(),
                Filled::NoRoom => "no-room".into(),
                Filled::Failed => "failed".into(),
            });
        });
        (Filling::new(inner, limit, budget, sink), seen)
    }

    #[tokio::test]
    async fn fills_in_progress_hold_no_more_than_their_budget_together() {
        use http_body_util::BodyExt as _;
        let budget = ByteBudget::new(10);
        // Another fill in progress holds 8 bytes.
        assert!(budget.take(8));
        // One that would pass the budget stops copying; its client still gets it all.
        let (f, seen) = filling_within(
            ProxyBody::from(Bytes::from_static(b"abcdef")),
            100,
            budget.clone(),
        );
        assert_eq!(f.collect().await.expect("body").to_bytes().len(), 6);
        assert_eq!(seen.lock().as_deref(), Some("no-room"));
        assert_eq!(budget.held(), 8);
        // Once that one is done, a fill takes its bytes while it copies and gives them back
        // at its end.
        budget.give(8);
        let (f, seen) = filling_within(
            ProxyBody::from(Bytes::from_static(b"abcdef")),
            100,
            budget.clone(),
        );
        assert_eq!(f.collect().await.expect("body").to_bytes().len(), 6);
        assert_eq!(seen.lock().as_deref(), Some("whole:abcdef"));
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_filling_body_tells_its_sink_once_how_it_ended() {
        use http_body_util::BodyExt as _;
        // Read to its end.
        let (f, seen) = filling(ProxyBody::from(Bytes::from_static(b"hello")), 10);
        let got = f.collect().await.expect("body").to_bytes();
        assert_eq!(&got[..], b"hello");
        assert_eq!(seen.lock().as_deref(), Some("whole:hello"));
        // Empty: complete without a poll (a server that knows the length never polls it).
        let (f, seen) = filling(ProxyBody::empty(), 10);
        drop(f);
        assert_eq!(seen.lock().as_deref(), Some("whole:"));
        // Over the limit: the client still gets it all.
        let (f, seen) = filling(ProxyBody::from(Bytes::from_static(b"0123456789ab")), 10);
        assert_eq!(f.collect().await.expect("body").to_bytes().len(), 12);
        assert_eq!(seen.lock().as_deref(), Some("too-large"));
        // Gone before its end (the client left).
        let (f, seen) = filling(ProxyBody::from(Bytes::from_static(b"hello")), 10);
        drop(f);
        assert_eq!(seen.lock().as_deref(), Some("failed"));
    }

    #[test]
    fn the_rate_budget_grows_with_bytes_received() {
        let rate = MinRate {
            bytes_per_second: 500,
            grace: Duration::from_secs(20),
        };
        let s = Duration::from_secs;
        assert_eq!(rate_budget(rate, 0, s(0)), s(20));
        assert_eq!(rate_budget(rate, 5_000, s(25)), s(5));
        assert_eq!(rate_budget(rate, 0, s(30)), Duration::ZERO);
        assert_eq!(rate_budget(rate, 1_000_000, s(30)), s(1_990));
    }

    /// Paused time: the waits below take no real time, and the tokio clock measures them.
    #[tokio::test(start_paused = true)]
    async fn a_sent_request_waits_the_idle_timeout_for_its_answer() {
        let idle = Duration::from_secs(60);
        let outcome = BodyOutcome::default();
        outcome.end();
        let started = Instant::now();
        let never = std::pin::pin!(std::future::pending::<()>());
        assert!(answered_within(never, &outcome, idle).await.is_none());
        assert_eq!(started.elapsed(), idle);

        let soon = std::pin::pin!(tokio::time::sleep(Duration::from_secs(59)));
        assert!(answered_within(soon, &outcome, idle).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_that_keeps_moving_is_not_given_up_on_until_it_stalls() {
        let idle = Duration::from_secs(10);
        let outcome = Arc::new(BodyOutcome::default());
        // The request body moves every 4 s for 30 s, then stops (no body is waiting for
        // its source: a backend that no longer reads).
        let moving = outcome.clone();
        tokio::spawn(async move {
            for _ in 0..7 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                moving.moved();
            }
        });
        let started = Instant::now();
        let never = std::pin::pin!(std::future::pending::<()>());
        assert!(answered_within(never, &outcome, idle).await.is_none());
        let waited = started.elapsed();
        // Last move at 28 s: stalled from 38 s, seen at the next check.
        assert!(
            waited >= Duration::from_secs(38) && waited <= Duration::from_secs(41),
            "{waited:?}"
        );
        assert!(outcome.stalled(idle));
    }
}
