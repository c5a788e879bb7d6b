//! TCP and TLS listeners: each connection goes whole to one endpoint of a backend of the
//! listener's TCPRoute, or of the TLSRoute its ClientHello's SNI names, bytes copied both
//! ways untouched until either side ends. The hello is read first ([`super::sni`]); a TLS
//! listener in mode Passthrough passes it on to the backend with everything after it, one
//! in mode Terminate completes the handshake with its certificates and forwards what the
//! client sends inside TLS. Listeners of both modes may share a socket: the SNI picks. What
//! the gateway holds in the clear (a TCP connection, a terminated one) goes to a backend
//! under a BackendTLSPolicy over TLS of the gateway's, with the policy's SNI and checks; a
//! passed-through connection is the client's own TLS, end to end, and goes as it is.
//!
//! ```text
//!  accept ──▶ route (the socket's, now; by SNI for TLS) ──weighted pick──▶ backend pool
//!        │                                                  ──candidates──▶ connect
//!        │                                              [PROXY header] [BackendTLSPolicy TLS]
//!        └─ none / not TLS / no endpoint / every connect failed: closed at once (FIN, no
//!           TLS alert, nothing sent)
//!  connected ──▶ tunnel::Tunnel (idle and write timeouts) ◀── retired: the route left the
//!                                                             socket, or the socket closed
//!                                                             ──▶ drain period ──▶ closed
//! ```
//!
//! A connection belongs to the route that accepted it, not to the configuration: a new
//! snapshot that keeps the route on the socket (its backends edited, other routes changed)
//! leaves it alone. One that removes the route, gives the socket to another route, or closes
//! the socket lets it run for the drain period, then closes it.

use super::sni::{self, Hello};
use crate::metrics::Metrics;
use crate::router::HostMap;
use crate::tunnel::{EndLabel, Switched, Tunnel};
use crate::upstream::tls::{UpstreamIo, UpstreamTls};
use crate::upstream::{BackendPool, Outcome, PoolSettings, StreamHold};
use arc_swap::ArcSwap;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Endpoints tried for one connection at most before it is closed.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Timeouts of forwarded connections.
#[derive(Clone, Copy, Debug)]
pub struct StreamSettings {
    /// Connecting to one endpoint.
    pub connect_timeout: Duration,
    /// Nothing moved either way for this long: the connection is closed.
    pub idle_timeout: Duration,
    /// A peer that reads nothing of what is written to it for this long: closed.
    pub write_timeout: Duration,
    /// How long a connection may go on once its route is gone, before it is closed.
    pub drain: Duration,
    /// A TLS connection must send its whole ClientHello within this, and (mode Terminate)
    /// finish its handshake within as much again.
    pub hello_timeout: Duration,
    /// A UDP flow with no datagram either way for this long ends.
    pub datagram_idle_timeout: Duration,
    /// UDP flows one socket keeps at most; a datagram that would start another is dropped.
    pub max_flows: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3600),
            write_timeout: Duration::from_secs(60),
            drain: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
            datagram_idle_timeout: Duration::from_secs(60),
            max_flows: 10_000,
        }
    }
}

/// What a TCP or TLS socket serves.
#[derive(Debug, Default)]
pub struct StreamService {
    /// TCP: the route that takes its connections, if one attached.
    pub route: Option<Arc<StreamForward>>,
    /// TLS: the routes by the hostnames their connections' SNI may name (the most specific
    /// first: exact, the longest wildcard, then a route for any host).
    pub sni: Option<SniRoutes>,
    /// TLS in mode Terminate: the certificates of the socket's terminating listeners.
    pub terminate: Option<Arc<rustls::ServerConfig>>,
}

/// The route a TLS connection is for, and whether its listener terminates TLS.
#[derive(Debug, Clone)]
struct SniEntry {
    route: Arc<StreamForward>,
    /// Its listener terminates TLS (else passes it through).
    terminate: bool,
}

/// One TLS listener of a socket: its mode, and its routes by hostname.
#[derive(Debug, Default)]
struct SniListener {
    terminate: bool,
    routes: HostMap<Option<Arc<StreamForward>>>,
}

/// The TLS listeners of a socket by hostname, each with its TLSRoutes by hostname. As
/// requests do, a connection matches the most specific listener for its SNI (exact, the
/// longest wildcard, then one without hostname) and only that listener's routes: a route
/// on a broader listener never takes a name from a more specific one. Within a listener,
/// the first route given a hostname keeps it (routes come oldest first).
#[derive(Debug, Default)]
pub struct SniRoutes(HostMap<SniListener>);

impl SniRoutes {
    /// A listener for `hostname` (`None`: any host), in mode Terminate or Passthrough.
    pub fn listener(&mut self, hostname: Option<&str>, terminate: bool) {
        self.0.entry(hostname).terminate = terminate;
    }

    /// `route` for `route_host` on the listener of `listener_host`, unless an older route
    /// has that hostname there.
    pub fn add(
        &mut self,
        listener_host: Option<&str>,
        route_host: Option<&str>,
        route: &Arc<StreamForward>,
    ) {
        self.0
            .entry(listener_host)
            .routes
            .entry(route_host)
            .get_or_insert_with(|| route.clone());
    }

    /// The route for a ClientHello's server name (without one, only a listener and a route
    /// for any host).
    fn find(&self, server_name: Option<&str>) -> Option<SniEntry> {
        let (listener, route) = match server_name {
            Some(name) => {
                let l = self.0.lookup(name).next()?;
                (l, l.routes.lookup(name).find_map(Option::as_ref))
            }
            None => {
                let l = self.0.any()?;
                (l, l.routes.any().and_then(Option::as_ref))
            }
        };
        Some(SniEntry {
            route: route?.clone(),
            terminate: listener.terminate,
        })
    }

    fn serves(&self, label: &str) -> bool {
        self.0.values().any(|l| {
            l.routes
                .values()
                .any(|slot| slot.as_ref().is_some_and(|r| *r.label == *label))
        })
    }
}

/// A TCPRoute as one socket serves it.
#[derive(Debug)]
pub struct StreamForward {
    /// `tcp:namespace/name`: what identifies the route across configurations.
    pub label: Arc<str>,
    /// Cumulative weights: a pick below `upto` takes this target. `None`: a reference
    /// compile could not resolve (its share of connections is closed).
    pub targets: Vec<(u32, Option<Arc<BackendPool>>)>,
}

impl StreamForward {
    /// Weighted random choice; `None` when no backend has weight.
    pub(super) fn pick(&self) -> Option<&Option<Arc<BackendPool>>> {
        let total = self.targets.last()?.0;
        if total == 0 {
            return None;
        }
        let r = fastrand::u32(0..total);
        self.targets.iter().find(|t| r < t.0).map(|t| &t.1)
    }
}

/// A bound socket's service and a signal for each swap of it.
pub(super) struct StreamLive {
    service: ArcSwap<StreamService>,
    swapped: watch::Sender<()>,
}

impl StreamLive {
    pub(super) fn new(service: StreamService) -> Self {
        Self {
            service: ArcSwap::from_pointee(service),
            swapped: watch::channel(()).0,
        }
    }

    /// The next configuration's service; connections whose route it lacks start draining.
    pub(super) fn store(&self, service: StreamService) {
        self.service.store(Arc::new(service));
        self.swapped.send_replace(());
    }

    /// A receiver of the swaps from now on.
    pub(super) fn subscribe(&self) -> watch::Receiver<()> {
        self.swapped.subscribe()
    }

    /// The route of a TCP or UDP socket, now.
    pub(super) fn route(&self) -> Option<Arc<StreamForward>> {
        self.service.load().route.clone()
    }

    fn serves(&self, label: &str) -> bool {
        let service = self.service.load();
        service.route.as_ref().is_some_and(|r| *r.label == *label)
            || service.sni.as_ref().is_some_and(|s| s.serves(label))
    }
}

/// What serving one connection reads besides the connection.
struct Ctx<'a> {
    peer: SocketAddr,
    /// The gateway's address the client connected to, if the socket says.
    local: Option<SocketAddr>,
    live: &'a StreamLive,
    settings: &'a StreamSettings,
    metrics: &'a Metrics,
    closing: watch::Receiver<bool>,
    /// Subscribed before the route was chosen, so no swap is missed (see [`retired`]).
    swapped: watch::Receiver<()>,
}

impl Ctx<'_> {
    /// Counts a connection closed at once, for `reason`.
    fn refused(&self, reason: &'static str) {
        self.metrics
            .streams
            .closed
            .get_or_create(&EndLabel { reason })
            .inc();
    }
}

/// One accepted connection.
pub(super) async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    live: &StreamLive,
    settings: &StreamSettings,
    metrics: &Metrics,
    closing: watch::Receiver<bool>,
) {
    let local = client.local_addr().ok();
    let ctx = Ctx {
        peer,
        local,
        live,
        settings,
        metrics,
        closing,
        swapped: live.swapped.subscribe(),
    };
    let service = live.service.load_full();
    let Some(routes) = &service.sni else {
        let route = service.route.clone();
        drop(service);
        return forward(client, route, Bytes::new(), false, ctx).await;
    };
    let mut client = client;
    let read = tokio::time::timeout(settings.hello_timeout, read_hello(&mut client)).await;
    let (name, hello) = match read {
        Ok(Ok(h)) => h,
        Ok(Err(why)) => {
            tracing::debug!(%peer, why, "TLS connection closed");
            return ctx.refused("not_tls");
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS connection closed: no ClientHello in time");
            return ctx.refused("hello_timeout");
        }
    };
    let Some(entry) = routes.find(name.as_deref()) else {
        tracing::debug!(%peer, server_name = ?name, "TLS connection closed: no route for its server name");
        return ctx.refused("no_route");
    };
    let config = service.terminate.clone();
    // The configuration is let go of: the connection holds only its route.
    drop(service);
    if !entry.terminate {
        return forward(client, Some(entry.route), hello, true, ctx).await;
    }
    let Some(config) = config else {
        tracing::debug!(%peer, server_name = ?name, "TLS connection closed: its listener has no usable certificate");
        return ctx.refused("no_certificate");
    };
    // The hello read is replayed to the handshake.
    let io = crate::tunnel::Prefixed {
        io: client,
        first: hello,
    };
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(io);
    match tokio::time::timeout(settings.hello_timeout, accept).await {
        Ok(Ok(tls)) => forward(tls, Some(entry.route), Bytes::new(), false, ctx).await,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            ctx.refused("handshake_failed");
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake not finished in time");
            ctx.refused("hello_timeout");
        }
    }
}

/// Reads a ClientHello whole: its server name, and the bytes read (passed on to the
/// backend). An error says why the connection is not TLS. The hello is parsed only when a
/// record has arrived whole, so a client sending a byte at a time costs no more.
async fn read_hello(client: &mut TcpStream) -> Result<(Option<String>, Bytes), &'static str> {
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::with_capacity(2048);
    loop {
        if buf.len() >= sni::wanted(&buf) {
            match sni::parse(&buf) {
                Hello::ServerName(name) => return Ok((name, buf.freeze())),
                Hello::NotTls => return Err("not a TLS ClientHello"),
                Hello::Incomplete => {}
            }
        }
        if buf.len() > sni::MAX_HELLO + 1024 {
            return Err("ClientHello too large");
        }
        if client.read_buf(&mut buf).await.map_err(|_| "read failed")? == 0 {
            return Err("closed before its ClientHello ended");
        }
    }
}

/// Forwards one connection to a backend of `route` (`hello`: what was read of it already).
/// `passthrough`: the client's bytes are its own TLS, passed on as they are; otherwise they
/// are what the client sent in the clear (TCP) or inside the gateway's TLS (terminated), and
/// a BackendTLSPolicy on the backend secures them on the way there.
async fn forward<C: AsyncRead + AsyncWrite + Unpin>(
    client: C,
    route: Option<Arc<StreamForward>>,
    hello: Bytes,
    passthrough: bool,
    ctx: Ctx<'_>,
) {
    let peer = ctx.peer;
    let Some(route) = route else {
        tracing::debug!(%peer, "connection closed: no route serves it");
        return ctx.refused("no_route");
    };
    let Some(Some(pool)) = route.pick() else {
        tracing::debug!(%peer, route = %route.label, "connection closed: its backend is not resolved");
        return ctx.refused("no_backend");
    };
    // Passed through, the client's TLS is end to end: the policy's is for what the gateway
    // sends in the clear.
    let tls = if passthrough {
        None
    } else {
        pool.stream_tls.as_ref()
    };
    if let Some(UpstreamTls::Refused(why)) = tls {
        tracing::debug!(%peer, route = %route.label, backend = %pool.id, why, "connection closed: its backend's BackendTLSPolicy cannot be honoured");
        return ctx.refused("backend_tls_invalid");
    }
    let policy = pool.settings();
    let Ok(mut hold) = pool.hold_stream(&policy) else {
        tracing::debug!(%peer, route = %route.label, backend = %pool.id, "connection closed: its backend's circuit breaker is at maxConnections");
        return ctx.refused("max_connections_to_backend");
    };
    // The backend asked to be told who the client is: that comes before anything else,
    // TLS included.
    let preamble = policy
        .proxy_protocol
        .map(|version| crate::proxy_protocol::header(version, peer, ctx.local));
    let attempt = Attempt {
        tls,
        preamble: preamble.as_deref().unwrap_or_default(),
        timeout: ctx.settings.connect_timeout,
    };
    let Some(upstream) = connect(pool, &policy, &mut hold, &attempt).await else {
        tracing::debug!(%peer, route = %route.label, backend = %pool.id, "connection closed: no endpoint could be reached");
        return ctx.refused("connect_failed");
    };
    let tunnel = Tunnel::new(
        Switched {
            io: Box::new(upstream),
            hold: Box::new(hold),
        },
        ctx.settings.idle_timeout,
        ctx.settings.write_timeout,
        ctx.metrics.streams.clone(),
    );
    let retire = retired(
        ctx.live,
        &route.label,
        ctx.swapped.clone(),
        ctx.closing.clone(),
        ctx.settings.drain,
    );
    tokio::select! {
        _ = tunnel.run(client, hello) => {}
        () = retire => {
            ctx.refused("drained");
            tracing::debug!(%peer, route = %route.label, "connection closed after the drain period: its route is gone");
        }
    }
}

/// How each endpoint is dialled for one connection.
struct Attempt<'a> {
    /// The BackendTLSPolicy's TLS, when the gateway secures the connection.
    tls: Option<&'a UpstreamTls>,
    /// Written first, before TLS (a PROXY protocol header).
    preamble: &'a [u8],
    /// For the whole of it: connect, preamble, handshake.
    timeout: Duration,
}

impl Attempt<'_> {
    async fn dial(&self, addr: SocketAddr) -> std::io::Result<UpstreamIo> {
        use tokio::io::AsyncWriteExt;
        let mut tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        if !self.preamble.is_empty() {
            tcp.write_all(self.preamble).await?;
        }
        match self.tls {
            None => Ok(UpstreamIo::Plain(tcp)),
            Some(tls) => tls.connect(tcp).await,
        }
    }
}

/// A connection to an endpoint of `pool`: the balancer's candidates in order, each failure
/// (to connect, or a handshake the policy's checks fail) counted against its endpoint
/// (passive health), up to [`MAX_CONNECT_ATTEMPTS`]; `hold` follows the endpoint tried.
async fn connect(
    pool: &BackendPool,
    policy: &PoolSettings,
    hold: &mut StreamHold,
    attempt: &Attempt<'_>,
) -> Option<UpstreamIo> {
    let set = pool.endpoints();
    for endpoint in pool
        .candidates(&set, policy, None)
        .take(MAX_CONNECT_ATTEMPTS)
    {
        hold.to(endpoint);
        match tokio::time::timeout(attempt.timeout, attempt.dial(endpoint.addr)).await {
            Ok(Ok(io)) => {
                pool.record(endpoint, Outcome::Success, policy);
                return Some(io);
            }
            Ok(Err(e)) => {
                tracing::debug!(backend = %pool.id, endpoint = %endpoint.addr, tls = attempt.tls.is_some(), error = %e, "connect failed");
                pool.record(endpoint, Outcome::GatewayError, policy);
            }
            Err(_) => {
                tracing::debug!(backend = %pool.id, endpoint = %endpoint.addr, "connect timed out");
                pool.record(endpoint, Outcome::GatewayError, policy);
            }
        }
    }
    None
}

/// Resolves once the connection's route has stopped serving its socket (another
/// configuration, or the socket closing) and the drain period after that has passed.
pub(super) async fn retired(
    live: &StreamLive,
    label: &str,
    mut swapped: watch::Receiver<()>,
    mut closing: watch::Receiver<bool>,
    drain: Duration,
) {
    // `swapped` was subscribed before the connection's route was chosen: a change since
    // then is seen here.
    loop {
        if !live.serves(label) {
            break;
        }
        tokio::select! {
            _ = closing.wait_for(|c| *c) => break,
            changed = swapped.changed() => {
                if changed.is_err() || !live.serves(label) {
                    break;
                }
            }
        }
    }
    tokio::time::sleep(drain).await;
}
