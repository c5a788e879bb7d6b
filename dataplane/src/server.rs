//! Listening sockets and downstream connections.
//!
//! Each socket holds its route table (and, for HTTPS, its TLS settings) in an `ArcSwap`: a new
//! configuration replaces the table and every request after that sees it, while requests in
//! flight finish on the table they started with; a new certificate serves the next handshake
//! while established connections keep theirs. Sockets the new configuration no longer has stop accepting and close their
//! connections gracefully; new ones are bound. Shutdown does the same for every socket and
//! waits (up to a deadline) for in-flight requests to finish.

use crate::body::StreamProgress;
use crate::conn::{Activity, Admission, ConnectionLimits, Guarded, Protocol, Tracked};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::request::Downstream;
use crate::router::SocketRouter;
use crate::table::Tables;
use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

/// Limits on what a client may send.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Largest request head (request line and headers) for HTTP/1.1, and header list for
    /// HTTP/2. Beyond it, HTTP/1.1 clients get 431.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Time a client may take to send a request head, including an idle keep-alive wait, and
    /// to finish a TLS handshake.
    pub header_read_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub connections: ConnectionLimits,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(30),
            max_concurrent_streams: 256,
            connections: ConnectionLimits::default(),
        }
    }
}

struct Socket {
    router: Arc<ArcSwap<SocketRouter>>,
    tls: Arc<ArcSwapOption<rustls::ServerConfig>>,
    /// `true` closes the socket: stop accepting, shut connections down gracefully.
    closing: watch::Sender<bool>,
}

pub struct Server {
    proxy: Arc<Proxy>,
    protocols: Arc<Protocols>,
    metrics: Arc<Metrics>,
    sockets: Mutex<HashMap<SocketAddr, Socket>>,
    /// Sockets closed but maybe still draining connections.
    draining: Mutex<Vec<watch::Sender<bool>>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("sockets", &self.sockets.lock().len())
            .finish()
    }
}

impl Server {
    pub fn new(proxy: Arc<Proxy>, metrics: Arc<Metrics>, settings: &ServerSettings) -> Self {
        let limits = &settings.connections;
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(settings.max_header_bytes.max(8192))
            .max_headers(settings.max_headers);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(settings.max_concurrent_streams)
            .keep_alive_interval(limits.h2_ping_interval)
            .keep_alive_timeout(limits.h2_ping_timeout);
        let mut max_connections = limits.max_connections;
        // Leave room under the open-files limit for upstream connections and files, so the
        // cap refuses connections before accept() starts failing.
        if let Some(fds) = crate::conn::open_files_limit() {
            let room = usize::try_from(fds.saturating_sub(256) / 2).unwrap_or(usize::MAX);
            if max_connections == 0 || max_connections > room {
                tracing::warn!(
                    max_connections,
                    open_files_limit = fds,
                    using = room,
                    "the open-files limit is too low for --max-connections; capping below it"
                );
                max_connections = room.max(1);
            }
        }
        Self {
            proxy,
            protocols: Arc::new(Protocols {
                h1,
                h2,
                handshake_timeout: settings.header_read_timeout,
                limits: limits.clone(),
                admission: Arc::new(Admission::new(
                    max_connections,
                    limits.max_connections_per_source,
                )),
            }),
            metrics,
            sockets: Mutex::new(HashMap::new()),
            draining: Mutex::new(Vec::new()),
        }
    }

    /// Serves `tables` from now on, or refuses them whole. Sockets the change adds are bound
    /// first, before anything the running configuration serves is touched: if one cannot be
    /// bound (a port another process holds), the change is refused with why, and the running
    /// sockets, routes and certificates stay as they were. Otherwise sockets that stay swap
    /// their routes atomically, new ones start accepting, and those no longer wanted stop
    /// accepting and drain their connections.
    pub fn apply(&self, tables: Tables) -> Result<(), BTreeMap<SocketAddr, String>> {
        self.draining.lock().retain(|s| !s.is_closed());
        let mut sockets = self.sockets.lock();
        let wanted = tables.sockets;
        let mut tls = tables.tls;
        let mut bound = BTreeMap::new();
        let mut failed = BTreeMap::new();
        for addr in wanted.keys().filter(|a| !sockets.contains_key(*a)) {
            match bind(*addr) {
                Ok(l) => {
                    bound.insert(*addr, l);
                }
                Err(e) => {
                    // Our own socket on the port (a wildcard against a specific address)
                    // holds it until the change closes it: say so.
                    let ours = sockets.keys().find(|old| {
                        old.port() == addr.port()
                            && !wanted.contains_key(*old)
                            && (old.ip().is_unspecified() || addr.ip().is_unspecified())
                    });
                    let why = match ours {
                        Some(old) if e.kind() == std::io::ErrorKind::AddrInUse => format!(
                            "{e} (held by this gateway's own {old}, which the change closes: move the listener in two steps)"
                        ),
                        _ => e.to_string(),
                    };
                    failed.insert(*addr, why);
                }
            }
        }
        if !failed.is_empty() {
            // The sockets just bound close here; nothing else changed.
            return Err(failed);
        }
        let gone: Vec<SocketAddr> = sockets
            .keys()
            .filter(|a| !wanted.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(s) = sockets.remove(&addr) {
                tracing::info!(%addr, "closing listener socket");
                let _ = s.closing.send(true);
                self.draining.lock().push(s.closing);
            }
        }
        for (addr, router) in wanted {
            let tls_config = tls.remove(&addr);
            if let Some(s) = sockets.get(&addr) {
                s.router.store(Arc::new(router));
                s.tls.store(tls_config);
                continue;
            }
            let Some(listener) = bound.remove(&addr) else {
                continue;
            };
            tracing::info!(%addr, "listening");
            let router = Arc::new(ArcSwap::from_pointee(router));
            let tls = Arc::new(ArcSwapOption::new(tls_config));
            let (closing, rx) = watch::channel(false);
            tokio::spawn(accept_loop(
                listener,
                Served {
                    router: router.clone(),
                    tls: tls.clone(),
                    proxy: self.proxy.clone(),
                    protocols: self.protocols.clone(),
                    metrics: self.metrics.clone(),
                },
                rx,
            ));
            sockets.insert(
                addr,
                Socket {
                    router,
                    tls,
                    closing,
                },
            );
        }
        Ok(())
    }

    /// The addresses being served.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.sockets.lock().keys().copied().collect();
        v.sort();
        v
    }

    /// Stops accepting on every socket, asks every connection to finish its in-flight
    /// requests and close, and waits for that up to `deadline`. Returns whether every
    /// connection finished in time.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        let mut senders: Vec<watch::Sender<bool>> = self
            .sockets
            .lock()
            .drain()
            .map(|(_, s)| s.closing)
            .collect();
        senders.append(&mut self.draining.lock());
        for s in &senders {
            let _ = s.send(true);
        }
        let all_closed = async {
            for s in &senders {
                s.closed().await;
            }
        };
        tokio::time::timeout(deadline, all_closed).await.is_ok()
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// How connections are served: the HTTP builders and the connection limits.
struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// A TLS client must finish its handshake within this (the header read timeout).
    handshake_timeout: Duration,
    limits: ConnectionLimits,
    admission: Arc<Admission>,
}

/// What the connections of one socket are served with.
#[derive(Clone)]
struct Served {
    router: Arc<ArcSwap<SocketRouter>>,
    tls: Arc<ArcSwapOption<rustls::ServerConfig>>,
    proxy: Arc<Proxy>,
    protocols: Arc<Protocols>,
    metrics: Arc<Metrics>,
}

async fn accept_loop(listener: TcpListener, served: Served, closing: watch::Receiver<bool>) {
    let local_port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let mut closing_rx = closing.clone();
    loop {
        let accepted = tokio::select! {
            _ = closing_rx.wait_for(|c| *c) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                served.metrics.connection_refused("accept_error");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Refused at once, before any work: the socket is closed (RST-free FIN).
        let permit = match served.protocols.admission.admit(client.ip()) {
            Ok(p) => p,
            Err(why) => {
                served.metrics.connection_refused(why.as_str());
                tracing::debug!(%client, reason = why.as_str(), "connection refused");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let served = served.clone();
        let closing = closing.clone();
        tokio::spawn(async move {
            served.metrics.connections.inc();
            match served.tls.load_full() {
                None => {
                    let down = Downstream::new(client, local_port, "http", None);
                    serve_connection(stream, down, false, &served, closing).await;
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let handshake = tokio::time::timeout(
                        served.protocols.handshake_timeout,
                        acceptor.accept(stream),
                    );
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            let session = tls.get_ref().1;
                            let sni = session
                                .server_name()
                                .map(|n| Arc::from(n.to_ascii_lowercase()));
                            let alpn_h2 = session.alpn_protocol() == Some(b"h2");
                            let down = Downstream::new(client, local_port, "https", sni);
                            serve_connection(tls, down, alpn_h2, &served, closing).await;
                        }
                        Ok(Err(e)) => {
                            served.metrics.tls_handshake_errors.inc();
                            tracing::debug!(%client, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            served.metrics.connection_closed("tls_handshake_timeout");
                            tracing::debug!(%client, "TLS handshake timed out");
                        }
                    }
                }
            }
            served.metrics.connections.dec();
            drop(permit);
        });
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one connection until it ends, or until the socket closes
/// (then in-flight requests finish and the connection is closed gracefully). A connection
/// that says nothing within the first-bytes timeout is closed; an HTTP/2 connection with
/// nothing in flight for the idle timeout is sent GOAWAY. A TLS client that chose `h2` by
/// ALPN must start with the HTTP/2 preface (RFC 9113 §3.4): anything else closes the
/// connection.
async fn serve_connection<I>(
    mut io: I,
    down: Downstream,
    alpn_h2: bool,
    served: &Served,
    mut closing: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = down.client;
    let limits = &served.protocols.limits;
    let (protocol, replay) = match crate::conn::detect(&mut io, limits.first_bytes_timeout).await {
        Ok(d) => d,
        Err(e) => {
            if e.kind() == std::io::ErrorKind::TimedOut {
                served.metrics.connection_closed("first_bytes_timeout");
            }
            tracing::debug!(%client, error = %e, "connection closed before a request");
            return;
        }
    };
    if alpn_h2 && protocol != Protocol::Http2 {
        served.metrics.connection_closed("invalid_preface");
        tracing::debug!(%client, "h2 by ALPN without the HTTP/2 preface; closing");
        return;
    }
    let io = TokioIo::new(Guarded::new(io, replay, limits.write_timeout));
    let activity = Arc::new(Activity::default());
    let router = served.router.clone();
    let proxy = served.proxy.clone();
    // Only HTTP/2 connections are watched for idleness (HTTP/1's idle wait is hyper's head
    // timeout), so only they count requests in flight.
    let tracker = (protocol == Protocol::Http2).then(|| activity.clone());
    let svc = service_fn(move |req| {
        let in_flight = tracker.as_ref().map(|t| t.begin());
        let router = router.load_full();
        let proxy = proxy.clone();
        let down = down.clone();
        let watcher = tracker.clone();
        async move {
            let mut resp = proxy.serve(&router, req, down).await;
            if let Some(progress) = resp.extensions_mut().remove::<StreamProgress>()
                && let Some(w) = &watcher
            {
                w.watch(&progress);
            }
            Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
        }
    });
    let closed = async move {
        // Drop the borrow of the watch value before the connection is awaited again.
        let _ = closing.wait_for(|c| *c).await.map(drop);
        closing
    };
    let (result, closing) = match protocol {
        Protocol::Http1 => {
            let conn = served.protocols.h1.serve_connection(io, svc);
            drive(conn, closed, std::future::pending(), |c| {
                c.graceful_shutdown()
            })
            .await
        }
        Protocol::Http2 => {
            let conn = served.protocols.h2.serve_connection(io, svc);
            let idle = async {
                tokio::select! {
                    () = activity.idle_for(limits.idle_timeout) => {
                        served.metrics.connection_closed("idle_timeout");
                    }
                    () = activity.stalled_stream(limits.idle_timeout) => {
                        tracing::debug!(%client, "a stream's response or request stopped moving; closing");
                        served.metrics.connection_closed("stalled_stream");
                    }
                }
            };
            drive(conn, closed, idle, |c| c.graceful_shutdown()).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%client, error = %e, "connection ended with an error");
    }
    // Dropping the receiver (here, or with `closed`) is what shutdown waits for.
    drop(closing);
}

/// How long a connection asked to shut down gracefully may take to finish on its own when
/// the reason is idleness (nothing in flight); closing for a new configuration or shutdown
/// waits for in-flight requests instead (bounded by the drain deadline).
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Runs a connection until it ends, shutting it down gracefully when the socket closes or
/// the connection is idle.
async fn drive<C, E>(
    conn: C,
    closed: impl std::future::Future<Output = watch::Receiver<bool>>,
    idle: impl std::future::Future<Output = ()>,
    shutdown: impl FnOnce(Pin<&mut C>),
) -> (Result<(), E>, Option<watch::Receiver<bool>>)
where
    C: std::future::Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    tokio::pin!(closed);
    tokio::pin!(idle);
    tokio::select! {
        r = conn.as_mut() => (r, None),
        closing = &mut closed => {
            shutdown(conn.as_mut());
            (conn.await, Some(closing))
        }
        () = &mut idle => {
            shutdown(conn.as_mut());
            match tokio::time::timeout(IDLE_CLOSE_GRACE, conn.as_mut()).await {
                Ok(r) => (r, None),
                // A client that does not finish the GOAWAY exchange: drop the connection.
                Err(_) => (Ok(()), None),
            }
        }
    }
}
