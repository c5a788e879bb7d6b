//! Upgraded connections (WebSocket): once the backend has switched protocols, the client's
//! connection and the backend's are joined and their bytes copied both ways until either side
//! ends, an error, or the idle timeout.
//!
//! A tunnel belongs to its client connection's task (HTTP/1.1) or to a task of its own (an
//! HTTP/2 extended CONNECT stream), never to the configuration: a new snapshot, a route
//! removed or a pool rebuilt leaves open tunnels alone. They end with their peers, when
//! nothing moves either way for the idle timeout, when the backend reads nothing of what
//! is written to it for the write timeout (as a client that stops reading is cut off), or
//! when the process stops.

use crate::conn::guard::{Guarded, is_write_timeout};
use crate::sanitize::Upgrade;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Buf, Bytes};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// I/O a tunnel joins: a client's connection, a backend's socket.
pub trait TunnelIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> TunnelIo for T {}

/// Why a tunnel ended, for `portico_upgraded_connections_closed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabel {
    pub reason: &'static str,
}

/// The counters every tunnel reports to.
#[derive(Clone, Debug, Default)]
pub struct TunnelMetrics {
    /// Tunnels open now.
    pub open: Gauge,
    pub closed: Family<EndLabel, Counter>,
}

/// A backend's connection after its 101, and what it holds of its backend (its place in the
/// backend's open connections, its in-flight count) until dropped.
pub struct Switched {
    pub io: Box<dyn TunnelIo + Sync>,
    pub hold: Box<dyn std::any::Any + Send + Sync>,
}

/// A backend connection that switched protocols, waiting for its client's side.
pub struct Tunnel {
    upstream: Switched,
    idle_timeout: Duration,
    write_timeout: Duration,
    metrics: TunnelMetrics,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// Bytes read at once in each direction: the size of nginx's `proxy_buffer_size` and
/// HAProxy's `bufsize`. Tokio's 8 KiB default took twice the system calls for a bulk
/// transfer (`make bench`, L4 throughput). Unlike theirs, tokio's buffers are allocated when
/// the tunnel starts and kept while it lives: 32 KiB per open tunnel (TCP, TLS, WebSocket),
/// idle or not.
const BUFFER: usize = 16 * 1024;

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed (each side's close is passed on to the other).
    Closed,
    /// Nothing moved either way for the idle timeout.
    Idle,
    /// A write to a peer that read nothing waited for the write timeout.
    WriteTimeout,
    /// A read or a write failed (a reset, a refused write).
    Failed(io::ErrorKind),
}

impl Ended {
    fn reason(&self) -> &'static str {
        match self {
            Ended::Closed => "closed",
            Ended::Idle => "idle_timeout",
            Ended::WriteTimeout => "write_timeout",
            Ended::Failed(_) => "error",
        }
    }
}

impl Tunnel {
    /// `write_timeout`: how long a write to either side may wait for it to read.
    pub fn new(
        upstream: Switched,
        idle_timeout: Duration,
        write_timeout: Duration,
        metrics: TunnelMetrics,
    ) -> Self {
        // Deadlines are instants: a year is as good as forever, and cannot overflow.
        let year = Duration::from_secs(365 * 24 * 3600);
        Self {
            upstream,
            idle_timeout: idle_timeout.min(year),
            write_timeout: write_timeout.min(year),
            metrics,
        }
    }

    /// Copies bytes between `client` and the backend until the tunnel ends. `client_read`:
    /// what the client sent past its request head, delivered to the backend first.
    pub async fn run<C: AsyncRead + AsyncWrite + Unpin>(
        self,
        client: C,
        client_read: Bytes,
    ) -> Ended {
        let Tunnel {
            upstream: Switched { io: upstream, hold },
            idle_timeout: idle,
            write_timeout,
            metrics,
        } = self;
        let _hold = hold;
        metrics.open.inc();
        let _open = OpenGuard(&metrics.open);
        let epoch = Instant::now();
        // Milliseconds since `epoch` of the last byte moved either way.
        let last = AtomicU64::new(0);
        // The client's side too: an HTTP/1.1 connection has its own write timeout, but an
        // HTTP/2 stream whose reader stops only exhausts its flow-control window, and its
        // connection's writes go on.
        let mut client = Touched {
            io: Guarded::new(
                Prefixed {
                    io: client,
                    first: client_read,
                },
                Bytes::new(),
                write_timeout,
            ),
            last: &last,
            epoch,
        };
        let mut upstream = Touched {
            io: Guarded::new(upstream, Bytes::new(), write_timeout).reading("backend"),
            last: &last,
            epoch,
        };
        let watchdog = async {
            loop {
                let moved = Duration::from_millis(last.load(Ordering::Relaxed));
                let deadline = epoch + moved + idle;
                if Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep_until(deadline).await;
            }
        };
        let ended = tokio::select! {
            r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER) => match r {
                Ok(_) => Ended::Closed,
                Err(e) if is_write_timeout(&e) => Ended::WriteTimeout,
                Err(e) => Ended::Failed(e.kind()),
            },
            () = watchdog => Ended::Idle,
        };
        metrics
            .closed
            .get_or_create(&EndLabel {
                reason: ended.reason(),
            })
            .inc();
        ended
    }
}

static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
static SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
static SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// Makes a request's (hop-by-hop-free) headers the backend's side of a WebSocket handshake:
/// `Connection: upgrade` and `Upgrade: websocket`; for an HTTP/2 client (RFC 8441, which
/// has no key), a fresh `Sec-WebSocket-Key`. Returns the key the backend's answer must
/// accept (the client's own over HTTP/1.1).
pub fn upgrade_request(headers: &mut HeaderMap, kind: Upgrade) -> Option<HeaderValue> {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if kind != Upgrade::H2 {
        return headers.get(&SEC_WEBSOCKET_KEY).cloned();
    }
    let nonce: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let key = HeaderValue::from_str(&BASE64.encode(nonce)).ok()?;
    headers.insert(&SEC_WEBSOCKET_KEY, key.clone());
    if !headers.contains_key(&SEC_WEBSOCKET_VERSION) {
        headers.insert(&SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
    Some(key)
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
fn accept(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    BASE64.encode(ctx.finish().as_ref())
}

/// Whether a backend's 101 accepts the WebSocket asked for: it switched to `websocket`, and
/// its accept value answers the handshake's key.
pub fn check_switched(headers: &HeaderMap, key: Option<&HeaderValue>) -> Result<(), &'static str> {
    let websocket = headers.get_all(header::UPGRADE).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
    });
    if !websocket {
        return Err("it switched to a protocol other than WebSocket");
    }
    if let Some(key) = key {
        let expected = accept(key.as_bytes());
        if headers
            .get(&SEC_WEBSOCKET_ACCEPT)
            .map(HeaderValue::as_bytes)
            != Some(expected.as_bytes())
        {
            return Err("its Sec-WebSocket-Accept does not answer the key");
        }
    }
    Ok(())
}

/// Makes a backend's 101 (hop-by-hop headers gone) the client's answer: a 101 with
/// `Upgrade: websocket` over HTTP/1.1 (the connection adds `Connection: upgrade`); a 200 over
/// HTTP/2, without the accept value that answered the gateway's key.
pub fn upgrade_response(parts: &mut http::response::Parts, kind: Upgrade) {
    match kind {
        Upgrade::H1 => {
            parts
                .headers
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        Upgrade::H2 => {
            parts.status = StatusCode::OK;
            parts.headers.remove(&SEC_WEBSOCKET_ACCEPT);
        }
    }
}

struct OpenGuard<'a>(&'a Gauge);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A tunnel handed from the proxy to the connection that serves the client, in the
/// response's extensions (which must be `Clone`): the first to take it has it.
#[derive(Clone, Debug)]
pub struct TunnelSlot(Arc<Mutex<Option<Tunnel>>>);

impl TunnelSlot {
    pub fn new(tunnel: Tunnel) -> Self {
        Self(Arc::new(Mutex::new(Some(tunnel))))
    }

    pub fn take(&self) -> Option<Tunnel> {
        self.0.lock().take()
    }
}

/// I/O whose reads start with bytes already read off it.
pub struct Prefixed<I> {
    pub io: I,
    pub first: Bytes,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first[..n]);
            self.first.advance(n);
            if self.first.is_empty() {
                // Let go of the read buffer it was cut from.
                self.first = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// I/O that notes when bytes last moved through it.
struct Touched<'a, I> {
    io: I,
    last: &'a AtomicU64,
    epoch: Instant,
}

impl<I> Touched<'_, I> {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Touched<'_, I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Touched<'_, I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn switched(io: tokio::io::DuplexStream) -> Switched {
        Switched {
            io: Box::new(io),
            hold: Box::new(()),
        }
    }

    #[test]
    fn accept_values_are_rfc_6455s() {
        // The example of RFC 6455 §1.3.
        assert_eq!(
            accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let mut h = HeaderMap::new();
        let key = upgrade_request(&mut h, Upgrade::H2).expect("a key");
        assert_eq!(h.get(&SEC_WEBSOCKET_KEY), Some(&key));
        assert_eq!(
            h.get(&SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()),
            Some(&b"13"[..])
        );
        let mut answer = HeaderMap::new();
        answer.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(check_switched(&answer, Some(&key)).is_err());
        let value = HeaderValue::from_str(&accept(key.as_bytes())).expect("value");
        answer.insert(&SEC_WEBSOCKET_ACCEPT, value);
        assert_eq!(check_switched(&answer, Some(&key)), Ok(()));
        answer.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(check_switched(&answer, None).is_err());
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_closes_pass_through() {
        let (client, mut client_peer) = duplex(1024);
        let (upstream, mut backend) = duplex(1024);
        let metrics = TunnelMetrics::default();
        let tunnel = Tunnel::new(
            switched(upstream),
            Duration::from_secs(60),
            Duration::from_secs(60),
            metrics.clone(),
        );
        let run = tokio::spawn(tunnel.run(client, Bytes::from_static(b"early ")));
        client_peer.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 11];
        backend.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"early hello");
        backend.write_all(b"back").await.expect("write");
        let mut got = [0u8; 4];
        client_peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"back");
        assert_eq!(metrics.open.get(), 1);
        drop(client_peer);
        // The client's close reaches the backend, which closes too.
        let mut rest = Vec::new();
        backend.read_to_end(&mut rest).await.expect("eof");
        drop(backend);
        assert_eq!(run.await.expect("join"), Ended::Closed);
        assert_eq!(metrics.open.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_nothing_moves_through_ends_at_the_idle_timeout() {
        let (client, mut client_peer) = duplex(1024);
        let (upstream, mut backend) = duplex(1024);
        let metrics = TunnelMetrics::default();
        let tunnel = Tunnel::new(
            switched(upstream),
            Duration::from_secs(30),
            Duration::from_secs(60),
            metrics.clone(),
        );
        let run = tokio::spawn(tunnel.run(client, Bytes::new()));
        // Traffic keeps it open past the timeout.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            client_peer.write_all(b"ping").await.expect("write");
            let mut got = [0u8; 4];
            backend.read_exact(&mut got).await.expect("read");
        }
        assert!(!run.is_finished());
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(run.await.expect("join"), Ended::Idle);
        let closed = metrics.closed.get_or_create(&EndLabel {
            reason: "idle_timeout",
        });
        assert_eq!(closed.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_that_stops_reading_ends_its_tunnel_at_the_write_timeout() {
        let (client, mut client_peer) = duplex(64 * 1024);
        // The backend's socket buffers 1 KiB and the backend never reads it.
        let (upstream, _backend) = duplex(1024);
        let metrics = TunnelMetrics::default();
        let tunnel = Tunnel::new(
            switched(upstream),
            Duration::from_secs(3600),
            Duration::from_secs(10),
            metrics.clone(),
        );
        let run = tokio::spawn(tunnel.run(client, Bytes::new()));
        client_peer
            .write_all(&[b'x'; 32 * 1024])
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!run.is_finished(), "not before the write timeout");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(run.await.expect("join"), Ended::WriteTimeout);
        let closed = metrics.closed.get_or_create(&EndLabel {
            reason: "write_timeout",
        });
        assert_eq!(closed.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_ends_its_tunnel_at_the_write_timeout() {
        // Whatever the client's connection is (an HTTP/2 stream has no socket write to stall).
        let (client, _client_peer) = duplex(1024);
        let (upstream, mut backend) = duplex(64 * 1024);
        let tunnel = Tunnel::new(
            switched(upstream),
            Duration::from_secs(3600),
            Duration::from_secs(10),
            TunnelMetrics::default(),
        );
        let run = tokio::spawn(tunnel.run(client, Bytes::new()));
        backend.write_all(&[b'x'; 32 * 1024]).await.expect("write");
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(run.await.expect("join"), Ended::WriteTimeout);
    }
}
