//! The HTTP service of a socket: TLS termination (certificates by SNI), then HTTP/1.1 on our
//! own server (`h1`) or HTTP/2 on hyper's, each request handed to the proxy with the routes the socket
//! serves at that moment.
//!
//! A connection that says nothing within the first-bytes timeout is closed; an HTTP/2
//! connection with nothing in flight for the idle timeout is sent GOAWAY; a socket that
//! closes (a new configuration without it, or shutdown) lets in-flight requests finish and
//! closes its connections gracefully.

use super::h1::{self, H1Limits};
use super::settings::ServerSettings;
use crate::body::RequestBody;
use crate::body::StreamProgress;
use crate::conn::{Activity, ConnectionLimits, Guarded, Protocol, Tracked};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::request::Downstream;
use crate::router::SocketRouter;
use crate::tunnel::TunnelSlot;
use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What an HTTP socket serves now.
pub struct HttpService {
    pub router: SocketRouter,
    /// The TLS settings when the socket's listeners are HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How client certificates are judged, when the socket's port asks for them.
    pub client_check: Option<crate::tls::ClientCheck>,
}

/// What every HTTP connection is served with: the proxy, hyper's builders, the limits.
pub(super) struct HttpShared {
    proxy: Arc<Proxy>,
    h1: H1Limits,
    h2: http2::Builder<TokioExecutor>,
    /// A TLS client must finish its handshake within this (the header read timeout).
    handshake_timeout: Duration,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
}

impl HttpShared {
    pub(super) fn new(proxy: Arc<Proxy>, metrics: Arc<Metrics>, settings: &ServerSettings) -> Self {
        let limits = &settings.connections;
        let h1 = H1Limits {
            max_head_bytes: settings.max_header_bytes,
            max_headers: settings.max_headers,
            header_read_timeout: settings.header_read_timeout,
        };
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(settings.max_concurrent_streams)
            .keep_alive_interval(limits.h2_ping_interval)
            .keep_alive_timeout(limits.h2_ping_timeout)
            // WebSockets over HTTP/2 (RFC 8441).
            .enable_connect_protocol();
        Self {
            proxy,
            h1,
            h2,
            handshake_timeout: settings.header_read_timeout,
            limits: limits.clone(),
            metrics,
        }
    }
}

/// Serves one accepted connection: TLS first when the socket is HTTPS (the certificate in
/// force at the handshake), then HTTP until the connection ends or the socket closes.
pub(super) async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    local_port: u16,
    service: &Arc<ArcSwap<HttpService>>,
    shared: &HttpShared,
    closing: watch::Receiver<bool>,
) {
    // The futures of a TLS handshake and of a connection (hyper's HTTP/1.1 and HTTP/2 state,
    // rustls') are kilobytes each. Boxed where they start, they are copied once; inline, this
    // task's whole state machine was the size of all of them and was copied on every move
    // (spawn, the task cell: ~120k instructions of memcpy a connection under callgrind).
    let (config, client_check) = {
        let s = service.load();
        (s.tls.clone(), s.client_check.clone())
    };
    let Some(config) = config else {
        let down = Downstream::new(client, local_port, "http", None);
        Box::pin(serve_connection(
            stream, down, false, service, shared, closing,
        ))
        .await;
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake =
        tokio::time::timeout(shared.handshake_timeout, Box::pin(acceptor.accept(stream)));
    match handshake.await {
        Ok(Ok(tls)) => {
            let session = tls.get_ref().1;
            let sni = session
                .server_name()
                .map(|n| Arc::from(n.to_ascii_lowercase()));
            let alpn_h2 = session.alpn_protocol() == Some(b"h2");
            let mut down = Downstream::new(client, local_port, "https", sni);
            if let (Some(check), Some(chain)) = (&client_check, session.peer_certificates()) {
                down.client_cert = check.identify(chain).map(Arc::new);
            }
            Box::pin(serve_connection(
                tls, down, alpn_h2, service, shared, closing,
            ))
            .await;
        }
        Ok(Err(e)) => {
            shared.metrics.tls_handshake_errors.inc();
            tracing::debug!(%client, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            shared.metrics.connection_closed("tls_handshake_timeout");
            tracing::debug!(%client, "TLS handshake timed out");
        }
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
    service: &Arc<ArcSwap<HttpService>>,
    shared: &HttpShared,
    mut closing: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let client = down.client;
    let limits = &shared.limits;
    let (protocol, replay) = match crate::conn::detect(&mut io, limits.first_bytes_timeout).await {
        Ok(d) => d,
        Err(e) => {
            if e.kind() == std::io::ErrorKind::TimedOut {
                shared.metrics.connection_closed("first_bytes_timeout");
            }
            tracing::debug!(%client, error = %e, "connection closed before a request");
            return;
        }
    };
    if alpn_h2 && protocol != Protocol::Http2 {
        shared.metrics.connection_closed("invalid_preface");
        tracing::debug!(%client, "h2 by ALPN without the HTTP/2 preface; closing");
        return;
    }
    let io = Guarded::new(io, replay, limits.write_timeout);
    if protocol == Protocol::Http1 {
        let mut rx = closing.clone();
        let closed = async move {
            let _ = rx.wait_for(|c| *c).await.map(drop);
        };
        let result = Box::pin(h1::serve_connection(
            Box::new(io),
            shared.h1,
            closed,
            || *closing.borrow(),
            |req| {
                let service = service.load_full();
                let down = down.clone();
                async move { shared.proxy.serve(&service.router, req, down).await }
            },
        ))
        .await;
        if let Err(e) = result {
            tracing::debug!(%client, error = %e, "connection ended with an error");
        }
        return;
    }
    let io = TokioIo::new(io);
    let activity = Arc::new(Activity::default());
    let service = service.clone();
    let proxy = shared.proxy.clone();
    // HTTP/2 connections are watched for idleness, so they count requests in flight.
    let tracker = activity.clone();
    let closing_rx = closing.clone();
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let closing_rx = closing_rx.clone();
        let in_flight = tracker.begin();
        let service = service.load_full();
        let proxy = proxy.clone();
        let down = down.clone();
        let watcher = tracker.clone();
        async move {
            let mut req = req;
            // An extended CONNECT (a WebSocket, RFC 8441): its stream is had once answered.
            let stream =
                (req.method() == http::Method::CONNECT).then(|| hyper::upgrade::on(&mut req));
            let req = req.map(RequestBody::Hyper);
            let mut resp = proxy.serve(&service.router, req, down).await;
            if let Some(progress) = resp.extensions_mut().remove::<StreamProgress>() {
                watcher.watch(&progress);
            }
            let tunnel = resp
                .extensions_mut()
                .remove::<TunnelSlot>()
                .and_then(|t| t.take());
            if let (Some(tunnel), Some(stream)) = (tunnel, stream) {
                // The tunnel counts as in flight on its connection (it is not idle) until it
                // ends; it holds the socket's closing signal as a request would.
                let closing = closing_rx.clone();
                tokio::spawn(async move {
                    let _in_flight = in_flight;
                    let _closing = closing;
                    match stream.await {
                        Ok(upgraded) => {
                            let ended = tunnel.run(TokioIo::new(upgraded), Bytes::new()).await;
                            tracing::debug!(?ended, "upgraded stream ended");
                        }
                        Err(e) => tracing::debug!(error = %e, "the upgraded stream never opened"),
                    }
                });
                return Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, None)));
            }
            Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, Some(in_flight))))
        }
    });
    let closed = async move {
        // Drop the borrow of the watch value before the connection is awaited again.
        let _ = closing.wait_for(|c| *c).await.map(drop);
        closing
    };
    let conn = Box::pin(shared.h2.serve_connection(io, svc));
    let idle = async {
        tokio::select! {
            () = activity.idle_for(limits.idle_timeout) => {
                shared.metrics.connection_closed("idle_timeout");
            }
            () = activity.stalled_stream(limits.idle_timeout) => {
                tracing::debug!(%client, "a stream's response or request stopped moving; closing");
                shared.metrics.connection_closed("stalled_stream");
            }
        }
    };
    let (result, closing) = drive(conn, closed, idle, |c| {
        c.get_mut().as_mut().graceful_shutdown()
    })
    .await;
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
