//! TCP listeners: each connection goes whole to one endpoint of a backend of the listener's
//! TCPRoute, bytes copied both ways untouched until either side ends.
//!
//! ```text
//!  accept ──▶ route (the socket's, now) ──weighted pick──▶ backend pool ──candidates──▶ connect
//!        └─ none / no endpoint / every connect failed: closed at once (FIN, nothing sent)
//!  connected ──▶ tunnel::Tunnel (idle and write timeouts) ◀── retired: the route left the
//!                                                             socket, or the socket closed
//!                                                             ──▶ drain period ──▶ closed
//! ```
//!
//! A connection belongs to the route that accepted it, not to the configuration: a new
//! snapshot that keeps the route on the socket (its backends edited, other routes changed)
//! leaves it alone. One that removes the route, gives the socket to another route, or closes
//! the socket lets it run for the drain period, then closes it.

use crate::metrics::Metrics;
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
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3600),
            write_timeout: Duration::from_secs(60),
            drain: Duration::from_secs(30),
        }
    }
}

/// What a TCP socket serves: the route that takes its connections, if one attached.
#[derive(Debug, Default)]
pub struct TcpService {
    pub route: Option<Arc<TcpForward>>,
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
        self.service
            .load()
            .route
            .as_ref()
            .is_some_and(|r| *r.label == *label)
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
    let Some(route) = live.service.load().route.clone() else {
        tracing::debug!(%peer, "TCP connection closed: no route serves the listener");
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
        _ = tunnel.run(client, Bytes::new()) => {}
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
