//! TCP and TLS passthrough listeners: each connection goes whole to one endpoint of a backend
//! of the listener's TCPRoute, or of the TLSRoute its ClientHello's SNI names, bytes copied
//! both ways untouched until either side ends. TLS is never terminated here: the hello is
//! read ([`super::sni`]), then passed on to the backend with everything after it.
//!
//! ```text
//!  accept ──▶ route (the socket's, now; by SNI for TLS) ──weighted pick──▶ backend pool
//!        │                                                  ──candidates──▶ connect
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
use crate::upstream::{BackendPool, Outcome};
use arc_swap::ArcSwap;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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
    /// A TLS passthrough connection must send its whole ClientHello within this.
    pub hello_timeout: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3600),
            write_timeout: Duration::from_secs(60),
            drain: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// What a TCP or TLS passthrough socket serves.
#[derive(Debug, Default)]
pub struct TcpService {
    /// TCP: the route that takes its connections, if one attached.
    pub route: Option<Arc<TcpForward>>,
    /// TLS passthrough: the routes by the hostnames their connections' SNI may name (the
    /// most specific first: exact, the longest wildcard, then a route for any host).
    pub sni: Option<SniRoutes>,
}

/// TLSRoutes by hostname; the first route given a hostname keeps it (routes come oldest
/// first).
#[derive(Debug, Default)]
pub struct SniRoutes(HostMap<Option<Arc<TcpForward>>>);

impl SniRoutes {
    /// `route` for `hostname` (`None`: any host), unless an older route has it.
    pub fn add(&mut self, hostname: Option<&str>, route: &Arc<TcpForward>) {
        self.0.entry(hostname).get_or_insert_with(|| route.clone());
    }

    /// The route for a ClientHello's server name (without one, only a route for any host).
    fn find<'a>(&'a self, server_name: Option<&'a str>) -> Option<&'a Arc<TcpForward>> {
        match server_name {
            Some(name) => self.0.lookup(name).find_map(Option::as_ref),
            None => self.0.any().and_then(Option::as_ref),
        }
    }

    fn serves(&self, label: &str) -> bool {
        self.0
            .values()
            .any(|slot| slot.as_ref().is_some_and(|r| *r.label == *label))
    }
}

/// A TCPRoute as one socket serves it.
#[derive(Debug)]
pub struct TcpForward {
    /// `tcp:namespace/name`: what identifies the route across configurations.
    pub label: Arc<str>,
    /// Cumulative weights: a pick below `upto` takes this target. `None`: a reference
    /// compile could not resolve (its share of connections is closed).
    pub targets: Vec<(u32, Option<Arc<BackendPool>>)>,
}

impl TcpForward {
    /// Weighted random choice; `None` when no backend has weight.
    fn pick(&self) -> Option<&Option<Arc<BackendPool>>> {
        let total = self.targets.last()?.0;
        if total == 0 {
            return None;
        }
        let r = fastrand::u32(0..total);
        self.targets.iter().find(|t| r < t.0).map(|t| &t.1)
    }
}

/// A bound socket's service and a signal for each swap of it.
pub(super) struct TcpLive {
    service: ArcSwap<TcpService>,
    swapped: watch::Sender<()>,
}

impl TcpLive {
    pub(super) fn new(service: TcpService) -> Self {
        Self {
            service: ArcSwap::from_pointee(service),
            swapped: watch::channel(()).0,
        }
    }

    /// The next configuration's service; connections whose route it lacks start draining.
    pub(super) fn store(&self, service: TcpService) {
        self.service.store(Arc::new(service));
        self.swapped.send_replace(());
    }

    fn serves(&self, label: &str) -> bool {
        let service = self.service.load();
        service.route.as_ref().is_some_and(|r| *r.label == *label)
            || service.sni.as_ref().is_some_and(|s| s.serves(label))
    }
}

/// One accepted connection.
pub(super) async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    live: &TcpLive,
    settings: &StreamSettings,
    metrics: &Metrics,
    closing: watch::Receiver<bool>,
) {
    let refused = |reason: &'static str| {
        metrics
            .streams
            .closed
            .get_or_create(&EndLabel { reason })
            .inc();
    };
    let service = live.service.load_full();
    let (route, hello) = match &service.sni {
        None => (service.route.clone(), Bytes::new()),
        Some(routes) => {
            let mut client = client;
            let read = tokio::time::timeout(settings.hello_timeout, read_hello(&mut client)).await;
            let (name, hello) = match read {
                Ok(Ok(h)) => h,
                Ok(Err(why)) => {
                    tracing::debug!(%peer, why, "TLS passthrough connection closed");
                    return refused("not_tls");
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS passthrough connection closed: no ClientHello in time");
                    return refused("hello_timeout");
                }
            };
            let route = routes.find(name.as_deref()).cloned();
            if route.is_none() {
                tracing::debug!(%peer, server_name = ?name, "TLS passthrough connection closed: no route for its server name");
            }
            return forward(client, peer, route, hello, live, settings, metrics, closing).await;
        }
    };
    forward(client, peer, route, hello, live, settings, metrics, closing).await;
}

/// Reads a ClientHello whole: its server name, and the bytes read (passed on to the
/// backend). An error says why the connection is not TLS.
async fn read_hello(client: &mut TcpStream) -> Result<(Option<String>, Bytes), &'static str> {
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::with_capacity(2048);
    loop {
        match sni::parse(&buf) {
            Hello::ServerName(name) => return Ok((name, buf.freeze())),
            Hello::NotTls => return Err("not a TLS ClientHello"),
            Hello::Incomplete if buf.len() > sni::MAX_HELLO + 1024 => {
                return Err("ClientHello too large");
            }
            Hello::Incomplete => {}
        }
        if client.read_buf(&mut buf).await.map_err(|_| "read failed")? == 0 {
            return Err("closed before its ClientHello ended");
        }
    }
}

/// Forwards one connection to a backend of `route` (`hello`: what was read of it already).
#[allow(clippy::too_many_arguments)]
async fn forward(
    client: TcpStream,
    peer: SocketAddr,
    route: Option<Arc<TcpForward>>,
    hello: Bytes,
    live: &TcpLive,
    settings: &StreamSettings,
    metrics: &Metrics,
    closing: watch::Receiver<bool>,
) {
    let refused = |reason: &'static str| {
        metrics
            .streams
            .closed
            .get_or_create(&EndLabel { reason })
            .inc();
    };
    let Some(route) = route else {
        tracing::debug!(%peer, "connection closed: no route serves it");
        return refused("no_route");
    };
    let Some(Some(pool)) = route.pick() else {
        tracing::debug!(%peer, route = %route.label, "TCP connection closed: its backend is not resolved");
        return refused("no_backend");
    };
    let Some(upstream) = connect(pool, settings).await else {
        tracing::debug!(%peer, route = %route.label, backend = %pool.id, "TCP connection closed: no endpoint could be reached");
        return refused("connect_failed");
    };
    let tunnel = Tunnel::new(
        Switched {
            io: Box::new(upstream),
            hold: Box::new(()),
        },
        settings.idle_timeout,
        settings.write_timeout,
        metrics.streams.clone(),
    );
    tokio::select! {
        _ = tunnel.run(client, hello) => {}
        () = retired(live, &route.label, closing, settings.drain) => {
            refused("drained");
            tracing::debug!(%peer, route = %route.label, "TCP connection closed after the drain period: its route is gone");
        }
    }
}

/// A connection to an endpoint of `pool`: the balancer's candidates in order, each failure
/// counted against its endpoint (passive health), up to [`MAX_CONNECT_ATTEMPTS`].
async fn connect(pool: &BackendPool, settings: &StreamSettings) -> Option<TcpStream> {
    let set = pool.endpoints();
    let policy = pool.settings();
    for endpoint in pool
        .candidates(&set, &policy, None)
        .take(MAX_CONNECT_ATTEMPTS)
    {
        match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(endpoint.addr))
            .await
        {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                pool.record(endpoint, Outcome::Success, &policy);
                return Some(stream);
            }
            Ok(Err(e)) => {
                tracing::debug!(backend = %pool.id, endpoint = %endpoint.addr, error = %e, "TCP connect failed");
                pool.record(endpoint, Outcome::GatewayError, &policy);
            }
            Err(_) => {
                tracing::debug!(backend = %pool.id, endpoint = %endpoint.addr, "TCP connect timed out");
                pool.record(endpoint, Outcome::GatewayError, &policy);
            }
        }
    }
    None
}

/// Resolves once the connection's route has stopped serving its socket (another
/// configuration, or the socket closing) and the drain period after that has passed.
async fn retired(live: &TcpLive, label: &str, mut closing: watch::Receiver<bool>, drain: Duration) {
    let mut swapped = live.swapped.subscribe();
    loop {
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
