//! Connections to one endpoint (no pool keyed by URI, no connector service, no task per
//! request).
//!
//! - HTTP/1.1 is spoken by [`super::h1`]: the task of the request that holds a connection
//!   writes the request, reads the answer and (through the response body) streams it, so a
//!   request costs no hop between tasks. Idle connections are kept newest first; nobody
//!   drives them, and their socket is looked at when they are checked out.
//! - HTTP/2 (h2c) shares one connection on hyper's `client::conn` among all requests,
//!   driven by a task of its own (streams of many requests interleave on it).

use super::gate::{ConnGate, Open, Refused, Room};
use super::h1::{self, H1Body, H1Conn, H1Pool, Outgoing};
use super::tls::{UpstreamIo, UpstreamTls};
use crate::body::{BoxError, ClientBody, Lease, Upstream};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use portico_model::AppProtocol;
use portico_model::backend::TcpKeepalive;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;

type Request = http::Request<ClientBody>;
type Response = http::Response<Upstream>;

/// Limits on upstream connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnSettings {
    pub connect_timeout: Duration,
    /// An idle HTTP/1.1 connection older than this is closed.
    pub idle_timeout: Duration,
    /// Idle HTTP/1.1 connections kept per endpoint at most.
    pub max_idle: usize,
    /// TCP keep-alive probes (none when `None`).
    pub keepalive: Option<TcpKeepalive>,
    pub h2: H2Settings,
    /// Connections open to the backend's endpoints at once (`None`: no limit).
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection under that limit at once.
    pub max_pending: u32,
}

impl ConnSettings {
    /// Waiting requests allowed under a connection limit when the policy does not say
    /// (Envoy's default).
    pub const DEFAULT_MAX_PENDING: u32 = 1024;
}

/// HTTP/2 connections to an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2Settings {
    /// Streams one connection carries at once before another is opened (`None`: one
    /// connection, the backend's limit).
    pub max_streams: Option<u32>,
    /// PING this often, idle or not (`None`: never).
    pub ping_interval: Option<Duration>,
    /// An unanswered PING closes the connection after this.
    pub ping_timeout: Duration,
}

impl Default for ConnSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            max_idle: 1024,
            keepalive: None,
            h2: H2Settings::default(),
            max_connections: None,
            max_pending: Self::DEFAULT_MAX_PENDING,
        }
    }
}

/// How an attempt failed.
pub enum SendError {
    /// No connection: nothing reached the backend (another endpoint may be tried), and the
    /// request, when it was not consumed yet, comes back for that.
    Connect(io::Error, Option<Box<Request>>),
    /// The exchange failed once the request was on its way.
    Request(BoxError),
    /// A connection limit refused it (the limit's field name); nothing was sent.
    Overloaded(&'static str),
}

/// An endpoint's connections.
#[derive(Debug, Default)]
pub(super) struct Conns {
    http1: Arc<H1Pool>,
    /// Shared HTTP/2 connections, each with its streams in flight.
    h2: Mutex<Vec<H2Conn>>,
    /// Held while an HTTP/2 connection is being made, so that a burst of requests waits for
    /// it (and shares it) instead of each opening its own.
    h2_connecting: tokio::sync::Mutex<()>,
    /// HTTP/2 connections that could not be made: whoever waited on one fails with it.
    h2_failures: AtomicU32,
}

#[derive(Debug)]
struct H2Conn {
    sender: http2::SendRequest<ClientBody>,
    streams: Arc<AtomicU32>,
    /// Counted in the backend's open connections until removed from the endpoint's list.
    _open: Open,
}

/// A stream counted on its connection until its response ends; then a request waiting
/// under the backend's connection limit may take its place.
struct Stream {
    streams: Arc<AtomicU32>,
    gate: Arc<ConnGate>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
        self.gate.wake();
    }
}

impl Conns {
    /// Closes idle connections past the idle timeout or closed by the backend.
    pub(super) fn prune(&self, idle_timeout: Duration) {
        self.http1.prune(idle_timeout);
        self.h2.lock().retain(|c| !c.sender.is_closed());
    }

    /// HTTP/2 connections open (for tests).
    #[cfg(test)]
    fn h2_open(&self) -> usize {
        self.h2.lock().len()
    }

    /// Closes one idle connection (an HTTP/1.1 one, else an HTTP/2 one carrying no stream),
    /// to make room under a connection limit.
    pub(super) fn close_one_idle(&self) -> bool {
        if self.http1.close_one_idle() {
            return true;
        }
        let mut h2 = self.h2.lock();
        match h2
            .iter()
            .position(|c| c.streams.load(Ordering::Relaxed) == 0)
        {
            Some(i) => {
                h2.remove(i);
                true
            }
            None => false,
        }
    }

    /// A shared HTTP/2 connection with room for one more stream (counted on it), or `None`
    /// when another must be opened.
    fn h2_with_room(
        &self,
        max: Option<u32>,
        gate: &Arc<ConnGate>,
    ) -> Option<(http2::SendRequest<ClientBody>, Stream)> {
        let mut conns = self.h2.lock();
        conns.retain(|c| !c.sender.is_closed());
        let c = conns.iter().find(|c| {
            c.sender.is_ready() && max.is_none_or(|m| c.streams.load(Ordering::Relaxed) < m)
        })?;
        c.streams.fetch_add(1, Ordering::Relaxed);
        let stream = Stream {
            streams: c.streams.clone(),
            gate: gate.clone(),
        };
        Some((c.sender.clone(), stream))
    }

    /// Shares a new connection (counted by `open`), its first stream counted.
    fn h2_add(
        &self,
        sender: &http2::SendRequest<ClientBody>,
        open: Open,
        gate: &Arc<ConnGate>,
    ) -> Stream {
        let streams = Arc::new(AtomicU32::new(1));
        self.h2.lock().push(H2Conn {
            sender: sender.clone(),
            streams: streams.clone(),
            _open: open,
        });
        Stream {
            streams,
            gate: gate.clone(),
        }
    }
}

async fn connect(addr: SocketAddr, settings: &ConnSettings) -> io::Result<TcpStream> {
    let stream =
        match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr)).await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        };
    stream.set_nodelay(true)?;
    if let Some(k) = &settings.keepalive {
        let ms = Duration::from_millis;
        let params = socket2::TcpKeepalive::new()
            .with_time(ms(k.idle_ms))
            .with_interval(ms(k.interval_ms))
            .with_retries(k.probes);
        socket2::SockRef::from(&stream).set_tcp_keepalive(&params)?;
    }
    Ok(stream)
}

/// A connection to `addr`, secured when the backend asks for TLS (the handshake within the
/// connect timeout too).
async fn connect_secured(
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    settings: &ConnSettings,
) -> io::Result<UpstreamIo> {
    let tcp = connect(addr, settings).await?;
    let Some(tls) = tls else {
        return Ok(UpstreamIo::Plain(tcp));
    };
    match tokio::time::timeout(settings.connect_timeout, tls.connect(tcp)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

async fn connect_h1(
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    settings: &ConnSettings,
    open: Open,
) -> io::Result<Box<H1Conn>> {
    let io = connect_secured(addr, tls, settings).await?;
    Ok(Box::new(H1Conn::new(io, Some(open))))
}

/// Why a request has no connection.
enum NoConn {
    Connect(io::Error),
    Overloaded(&'static str),
}

/// The backend's connection limit, and how to make room under it.
pub(super) struct Limit<'a> {
    pub(super) gate: &'a Arc<ConnGate>,
    /// Closes an idle connection of another endpoint of the backend.
    pub(super) make_room: &'a (dyn Fn() -> bool + Send + Sync),
}

impl Limit<'_> {
    /// Room for a new connection, waiting until `deadline` at the limit.
    async fn room(
        &self,
        settings: &ConnSettings,
        deadline: tokio::time::Instant,
    ) -> Result<Room, NoConn> {
        self.gate
            .room(
                settings.max_connections,
                settings.max_pending,
                deadline,
                self.make_room,
            )
            .await
            .map_err(|Refused(limit)| NoConn::Overloaded(limit))
    }
}

/// A connection for a request: the newest idle one, else a new one within the backend's
/// connection limit (waiting for room at the limit). `true`: reused.
async fn h1_conn(
    conns: &Conns,
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    settings: &ConnSettings,
    limit: &Limit<'_>,
) -> Result<(Box<H1Conn>, bool), NoConn> {
    // One wait at the limit, however often something is released and taken by another.
    let deadline = tokio::time::Instant::now() + settings.connect_timeout;
    loop {
        if let Some(c) = conns.http1.checkout(settings.idle_timeout) {
            return Ok((c, true));
        }
        match limit.room(settings, deadline).await? {
            // Boxed: a new connection is the rare case, and its future is large.
            Room::Open(open) => {
                return Box::pin(connect_h1(addr, tls, settings, open))
                    .await
                    .map(|c| (c, false))
                    .map_err(NoConn::Connect);
            }
            Room::Released => {}
        }
    }
}

async fn handshake_h2(
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    settings: &ConnSettings,
) -> io::Result<http2::SendRequest<ClientBody>> {
    let io = connect_secured(addr, tls, settings).await?;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if let Some(every) = settings.h2.ping_interval {
        builder
            .keep_alive_interval(every)
            .keep_alive_timeout(settings.h2.ping_timeout)
            .keep_alive_while_idle(true);
    }
    let (sender, conn) = builder
        .handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// What an HTTP/2 response holds of its endpoint until its body ends.
struct Held<G> {
    _guard: G,
}

impl<G: Send + Sync> Lease for Held<G> {
    fn end(self: Box<Self>, _whole: bool) {}
}

/// Sends `req` to one endpoint: one attempt. Over HTTP/1.1, a pooled connection the backend
/// closed without a word is replaced by another (or a new one) and the request sent again
/// only when it is idempotent and has no body; over HTTP/2, a shared connection that can no
/// longer take the request (it never left) is replaced. Neither is a retry.
///
/// `guard` goes with the response body and is dropped when it ends (the endpoint's
/// in-flight count).
#[allow(clippy::too_many_arguments)]
pub(super) async fn send<G>(
    conns: &Conns,
    addr: SocketAddr,
    protocol: AppProtocol,
    tls: Option<&UpstreamTls>,
    mut req: Request,
    settings: &ConnSettings,
    limit: &Limit<'_>,
    guard: G,
) -> Result<(Response, Option<Box<dyn Lease>>), SendError>
where
    G: Send + Sync + Unpin + 'static,
{
    match protocol {
        AppProtocol::Http1 => {
            let pool = &conns.http1;
            // The first connection is had before the request is encoded, so that a failure
            // to connect gives the request back for another endpoint.
            let mut first = Some(match h1_conn(conns, addr, tls, settings, limit).await {
                Ok(c) => c,
                Err(NoConn::Connect(e)) => return Err(SendError::Connect(e, Some(Box::new(req)))),
                Err(NoConn::Overloaded(l)) => return Err(SendError::Overloaded(l)),
            });
            let mut out = Outgoing::new(req);
            let (head, whole, conn) = loop {
                let (mut conn, reused) = match first.take() {
                    Some(c) => c,
                    None => match h1_conn(conns, addr, tls, settings, limit).await {
                        Ok(c) => c,
                        // The endpoint went away under a pooled connection: the request
                        // (resendable, or it would not be here) goes back for another.
                        Err(NoConn::Connect(e)) => {
                            let back = out.take_request().map(Box::new);
                            return Err(SendError::Connect(e, back));
                        }
                        Err(NoConn::Overloaded(l)) => return Err(SendError::Overloaded(l)),
                    },
                };
                match h1::exchange(&mut conn, &mut out).await {
                    Ok((head, whole)) => break (head, whole, conn),
                    Err(e) if reused && out.resendable && e.nothing_received() => {
                        tracing::debug!(%addr, error = %e, "pooled connection closed by the backend; sending on another");
                    }
                    Err(e) => return Err(SendError::Request(Box::new(e))),
                }
            };
            if head.parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
                // The connection is the backend's side of a tunnel now (or, if the request
                // did not ask to upgrade, closed by the proxy).
                let io = Box::new((*conn).into_switched(guard));
                return Ok((
                    http::Response::from_parts(head.parts, Upstream::Switched(io)),
                    None,
                ));
            }
            let body = H1Body::new(conn, &head, whole, pool.clone(), settings.max_idle, guard);
            let resp = http::Response::from_parts(head.parts, Upstream::Conn(Box::new(body)));
            Ok((resp, None))
        }
        AppProtocol::H2c => {
            let max = settings.h2.max_streams;
            let deadline = tokio::time::Instant::now() + settings.connect_timeout;
            loop {
                let (mut sender, stream, reused) = match conns.h2_with_room(max, limit.gate) {
                    Some((s, stream)) => (s, stream, true),
                    None => {
                        // A place under the backend's connection limit first, waited for
                        // (at the limit) without holding this endpoint's connecting lock.
                        let open = match limit.room(settings, deadline).await {
                            Ok(Room::Open(open)) => open,
                            // Something closed, went idle or ended a stream: look again.
                            Ok(Room::Released) => continue,
                            Err(NoConn::Overloaded(l)) => return Err(SendError::Overloaded(l)),
                            Err(NoConn::Connect(e)) => {
                                return Err(SendError::Connect(e, Some(Box::new(req))));
                            }
                        };
                        let failures = conns.h2_failures.load(Ordering::Relaxed);
                        let _connecting = conns.h2_connecting.lock().await;
                        if let Some((s, stream)) = conns.h2_with_room(max, limit.gate) {
                            // Made by the request before: the place taken goes back.
                            drop(open);
                            (s, stream, true)
                        } else if conns.h2_failures.load(Ordering::Relaxed) != failures {
                            // The connection this request waited for could not be made: it
                            // goes back for another endpoint rather than wait for another try.
                            let e =
                                io::Error::new(io::ErrorKind::ConnectionRefused, "connect failed");
                            return Err(SendError::Connect(e, Some(Box::new(req))));
                        } else {
                            let s = match Box::pin(handshake_h2(addr, tls, settings)).await {
                                Ok(s) => s,
                                Err(e) => {
                                    conns.h2_failures.fetch_add(1, Ordering::Relaxed);
                                    return Err(SendError::Connect(e, Some(Box::new(req))));
                                }
                            };
                            let stream = conns.h2_add(&s, open, limit.gate);
                            (s, stream, false)
                        }
                    }
                };
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        let resp = resp.map(Upstream::Hyper);
                        // The guard is moved in only once the request is sent; the stream
                        // is counted on its connection until the response ends.
                        let held = Held {
                            _guard: (guard, stream),
                        };
                        return Ok((resp, Some(Box::new(held))));
                    }
                    // The shared connection is no longer ready: the next pass replaces it.
                    Err(mut e) => match e.take_message() {
                        Some(back) if reused => req = back,
                        _ => return Err(SendError::Request(Box::new(e.into_error()))),
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn connections_get_the_keep_alive_probes_asked_for() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let keepalive = TcpKeepalive {
            idle_ms: 42_000,
            interval_ms: 7_000,
            probes: 4,
        };
        let with = ConnSettings {
            keepalive: Some(keepalive),
            ..ConnSettings::default()
        };
        let stream = connect(addr, &with).await.expect("connect");
        let sock = socket2::SockRef::from(&stream);
        assert!(sock.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            sock.tcp_keepalive_time().ok(),
            Some(Duration::from_secs(42))
        );
        assert_eq!(
            sock.tcp_keepalive_interval().ok(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(sock.tcp_keepalive_retries().ok(), Some(4));
        let stream = connect(addr, &ConnSettings::default())
            .await
            .expect("connect");
        assert!(
            !socket2::SockRef::from(&stream)
                .keepalive()
                .expect("SO_KEEPALIVE")
        );
    }

    /// With at most two streams a connection, six requests in flight at once to one h2c
    /// endpoint go over three connections; without a limit, over one.
    #[tokio::test]
    async fn http2_streams_over_the_limit_open_another_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let service = service_fn(|_req: http::Request<Incoming>| async {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let gate = Arc::new(ConnGate::default());
        let limit = Limit {
            gate: &gate,
            make_room: &|| false,
        };
        for (max, want) in [(Some(2), 3), (None, 1)] {
            let conns = Conns::default();
            let settings = ConnSettings {
                h2: H2Settings {
                    max_streams: max,
                    ping_interval: Some(Duration::from_secs(1)),
                    ping_timeout: Duration::from_secs(1),
                },
                ..ConnSettings::default()
            };
            let before = accepted.load(Ordering::Relaxed);
            let sends = (0..6).map(|_| {
                let req = http::Request::get(format!("http://{addr}/"))
                    .body(
                        ClientBody::new(
                            crate::body::RequestBody::Empty,
                            crate::body::BodyLimits::default(),
                            false,
                        )
                        .0,
                    )
                    .expect("request");
                send(
                    &conns,
                    addr,
                    AppProtocol::H2c,
                    None,
                    req,
                    &settings,
                    &limit,
                    (),
                )
            });
            let answers = futures::future::join_all(sends).await;
            assert!(
                answers
                    .iter()
                    .all(|a| matches!(a, Ok((r, _)) if r.status() == 200))
            );
            assert_eq!(
                accepted.load(Ordering::Relaxed) - before,
                want,
                "max {max:?}"
            );
            assert_eq!(conns.h2_open(), want);
            drop(answers);
            // Every stream ended: the first connection has room again.
            assert!(conns.h2_with_room(max, &gate).is_some());
        }
    }
}
