//! Listening sockets and downstream connections.
//!
//! Each socket holds its route table (and, for HTTPS, its TLS settings) in an `ArcSwap`: a new
//! configuration replaces the table and every request after that sees it, while requests in
//! flight finish on the table they started with; a new certificate serves the next handshake
//! while established connections keep theirs. Sockets the new configuration no longer has stop accepting and close their
//! connections gracefully; new ones are bound. Shutdown does the same for every socket and
//! waits (up to a deadline) for in-flight requests to finish.

use crate::metrics::Metrics;
use crate::proxy::{Downstream, Proxy};
use crate::router::SocketRouter;
use crate::table::Tables;
use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
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
    /// Time a client may take to send a request head, including an idle keep-alive wait.
    pub header_read_timeout: Duration,
    pub max_concurrent_streams: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(30),
            max_concurrent_streams: 256,
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
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// A TLS client must finish its handshake within this (the header read timeout).
    handshake_timeout: Duration,
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
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(settings.max_header_bytes.max(8192))
            .max_headers(settings.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(settings.max_concurrent_streams);
        Self {
            proxy,
            builder: Arc::new(builder),
            handshake_timeout: settings.header_read_timeout,
            metrics,
            sockets: Mutex::new(HashMap::new()),
            draining: Mutex::new(Vec::new()),
        }
    }

    /// Serves `tables`: swaps the routers of kept sockets, binds new ones, closes the rest.
    /// Returns the sockets that could not be bound, with the reason.
    pub fn apply(&self, tables: Tables) -> BTreeMap<SocketAddr, String> {
        let mut failed = BTreeMap::new();
        self.draining.lock().retain(|s| !s.is_closed());
        let mut sockets = self.sockets.lock();
        let mut wanted = tables.sockets;
        let mut tls = tables.tls;
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
        for (addr, router) in std::mem::take(&mut wanted) {
            let tls_config = tls.remove(&addr);
            if let Some(s) = sockets.get(&addr) {
                s.router.store(Arc::new(router));
                s.tls.store(tls_config);
                continue;
            }
            match bind(addr) {
                Ok(listener) => {
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
                            builder: self.builder.clone(),
                            metrics: self.metrics.clone(),
                            handshake_timeout: self.handshake_timeout,
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
                Err(e) => {
                    failed.insert(addr, e.to_string());
                }
            }
        }
        failed
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

/// What the connections of one socket are served with.
#[derive(Clone)]
struct Served {
    router: Arc<ArcSwap<SocketRouter>>,
    tls: Arc<ArcSwapOption<rustls::ServerConfig>>,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    metrics: Arc<Metrics>,
    handshake_timeout: Duration,
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
                tokio::time::sleep(Duration::from_millis(50)).await;
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
                    let down = Downstream {
                        client,
                        local_port,
                        scheme: "http",
                        sni: None,
                    };
                    serve_connection(stream, down, &served, closing).await;
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let handshake =
                        tokio::time::timeout(served.handshake_timeout, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            let sni = tls
                                .get_ref()
                                .1
                                .server_name()
                                .map(|n| Arc::from(n.to_ascii_lowercase()));
                            let down = Downstream {
                                client,
                                local_port,
                                scheme: "https",
                                sni,
                            };
                            serve_connection(tls, down, &served, closing).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%client, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%client, "TLS handshake timed out"),
                    }
                }
            }
            served.metrics.connections.dec();
        });
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one connection until it ends, or until the socket closes
/// (then in-flight requests finish and the connection is closed gracefully).
async fn serve_connection<I>(
    io: I,
    down: Downstream,
    served: &Served,
    mut closing: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = down.client;
    let router = served.router.clone();
    let proxy = served.proxy.clone();
    let svc = service_fn(move |req| {
        let router = router.load_full();
        let proxy = proxy.clone();
        let down = down.clone();
        async move { Ok::<_, Infallible>(proxy.serve(&router, req, down).await) }
    });
    let conn = served.builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let closed = async move {
        // Drop the borrow of the watch value before the connection is awaited again.
        let _ = closing.wait_for(|c| *c).await.map(drop);
        closing
    };
    tokio::pin!(closed);
    let (result, closing) = tokio::select! {
        r = conn.as_mut() => (r, None),
        closing = &mut closed => {
            conn.as_mut().graceful_shutdown();
            (conn.await, Some(closing))
        }
    };
    if let Err(e) = result {
        tracing::debug!(%client, error = %e, "connection ended with an error");
    }
    // Dropping the receiver (here, or with `closed`) is what shutdown waits for.
    drop(closing);
}
