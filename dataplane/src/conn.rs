//! Downstream connections below HTTP: who may connect ([`Admission`]: a cap in total and per
//! source), how long a connection may stay silent before it says which protocol it speaks
//! ([`detect`]), how long a write may stall on a client that does not read ([`Guarded`]), and
//! when an HTTP/2 connection with nothing in flight is idle ([`Activity`]).
//!
//! hyper's HTTP/1 server already bounds the time to read each request head (which covers an
//! idle keep-alive wait), and TLS handshakes have their own deadline in the server; what this
//! module adds closes every other way a client could hold a connection for free.

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;
use tokio::time::Instant;

pub mod guard;
pub use guard::Guarded;

/// Limits on downstream connections.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once, over every listener. 0: no cap.
    pub max_connections: usize,
    /// Connections open at once from one source address (an IPv6 /64 counts as one). 0: no
    /// cap.
    pub max_connections_per_source: usize,
    /// Connections open at once on one listening socket (a listener, or the listeners that
    /// share its address and port). 0: no cap.
    pub max_connections_per_listener: usize,
    /// A new connection (after its TLS handshake) must send its first bytes, enough to tell
    /// HTTP/1 from HTTP/2, within this.
    pub first_bytes_timeout: Duration,
    /// A write to a client that accepts no byte for this long ends the connection.
    pub write_timeout: Duration,
    /// An HTTP/2 connection with no request in flight for this long is closed (GOAWAY).
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval on a connection that received nothing, and how long the answer
    /// may take before the connection is closed.
    pub h2_ping_interval: Duration,
    pub h2_ping_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_source: 1_000,
            max_connections_per_listener: 0,
            first_bytes_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            h2_ping_interval: Duration::from_secs(30),
            h2_ping_timeout: Duration::from_secs(20),
        }
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerSource,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Total => "max_connections",
            Refused::PerSource => "max_connections_per_source",
        }
    }
}

const SHARDS: usize = 16;

/// Counts open connections, in total and per source, and refuses those over a cap at once.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_source: usize,
    total: AtomicUsize,
    per_source: [Mutex<HashMap<IpAddr, usize>>; SHARDS],
}

/// An admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    source: IpAddr,
}

/// The address a per-source cap counts by: the address, or for IPv6 its /64 (one host
/// usually holds a whole /64).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

impl Admission {
    pub fn new(max_total: usize, max_per_source: usize) -> Self {
        Self {
            max_total,
            max_per_source,
            total: AtomicUsize::new(0),
            per_source: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        use std::hash::BuildHasher;
        static HASHER: std::sync::LazyLock<std::collections::hash_map::RandomState> =
            std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);
        &self.per_source[(HASHER.hash_one(ip) as usize) % SHARDS]
    }

    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refused> {
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        if self.max_total > 0 && total > self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total);
        }
        let source = source_key(peer);
        if self.max_per_source > 0 {
            let mut shard = self.shard(&source).lock();
            let n = shard.entry(source).or_insert(0);
            if *n >= self.max_per_source {
                drop(shard);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::PerSource);
            }
            *n += 1;
        }
        Ok(Permit {
            admission: self.clone(),
            source,
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let a = &self.admission;
        if a.max_per_source > 0 {
            let mut shard = a.shard(&self.source).lock();
            if let Some(n) = shard.get_mut(&self.source) {
                *n -= 1;
                if *n == 0 {
                    shard.remove(&self.source);
                }
            }
        }
        a.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The protocol a connection speaks, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the first bytes tell HTTP/1 from HTTP/2 (the HTTP/2 preface, or anything that
/// differs from it), within `timeout`. Returns what was read, to be replayed.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> io::Result<(Protocol, Bytes)> {
    let read = async {
        let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
        loop {
            if io.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before sending a request",
                ));
            }
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] != H2_PREFACE[..n] {
                return Ok((Protocol::Http1, buf.freeze()));
            }
            if n == H2_PREFACE.len() {
                return Ok((Protocol::Http2, buf.freeze()));
            }
        }
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "no request within the first-bytes timeout",
        )
    })?
}

/// Requests in flight on one connection (until their response body is done), and since when
/// none has been.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` when the last request finished.
    idle_since_ms: AtomicU64,
    changed: Notify,
    /// The streams whose responses are on their way, to find one stuck on its sink.
    streams: parking_lot::Mutex<Vec<std::sync::Weak<crate::body::BodyOutcome>>>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            changed: Notify::new(),
            streams: parking_lot::Mutex::new(Vec::new()),
        }
    }
}

/// Held by a request (moved into its response body) while it is in flight.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Activity {
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// Watches a stream whose response was handed to the connection.
    pub fn watch(&self, stream: &crate::body::StreamProgress) {
        let mut streams = self.streams.lock();
        streams.retain(|w| w.strong_count() > 0);
        streams.push(Arc::downgrade(&stream.0));
    }

    /// Resolves once a watched stream is stalled for `idle`: its response is not taken (an
    /// HTTP/2 client that never opens the stream's window) and its request is not read,
    /// while neither side is waited for. Looked at every quarter of `idle`.
    pub async fn stalled_stream(&self, idle: Duration) {
        let every = (idle / 4).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let mut streams = self.streams.lock();
            streams.retain(|w| w.strong_count() > 0);
            if streams
                .iter()
                .filter_map(std::sync::Weak::upgrade)
                .any(|s| s.stalled(idle))
            {
                return;
            }
        }
    }

    /// Resolves once nothing has been in flight for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let notified = self.changed.notified();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                notified.await;
                continue;
            }
            let since =
                self.start + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
            tokio::select! {
                () = tokio::time::sleep_until(since + idle) => {
                    if self.in_flight.load(Ordering::Acquire) == 0 {
                        let now_since = self.start
                            + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
                        if now_since == since {
                            return;
                        }
                    }
                }
                () = notified => {}
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.store(ms, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        a.changed.notify_one();
    }
}

/// A response body that keeps its request in flight until it is done or dropped.
pub struct Tracked<B> {
    inner: B,
    _in_flight: Option<InFlight>,
}

impl<B> Tracked<B> {
    /// `None` where nothing watches for idleness (HTTP/1: hyper's head timeout covers it).
    pub fn new(inner: B, in_flight: Option<InFlight>) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The soft limit on open files, from `/proc/self/limits` (Linux), if it can be read.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests;
