//! Listening sockets: what each one serves, their life across configurations, and the
//! accept loop they share.
//!
//! ```text
//!  table::Tables ──apply──▶ Server ──bind / swap / close──▶ Socket { service (ArcSwap), closing }
//!                                                            │
//!                     accept loop (admission: connection caps) ┘──▶ per service kind:
//!                          SocketService::Http ──▶ http::serve (TLS?, HTTP/1.1 | HTTP/2 ──▶ proxy)
//!                          SocketService::Tcp  ──▶ tcp::serve (a TCPRoute's backend, spliced)
//!  table::Tables.datagrams ──▶ UDP sockets ──▶ udp::serve (a flow per client address)
//! ```
//!
//! A socket serves one kind of [`SocketService`], the kind it was bound for; a new
//! configuration swaps the service's settings (routes, certificates) atomically, requests in
//! flight finish on the settings they started with, and a new certificate serves the next
//! handshake. A protocol that is not HTTP ([`tcp`] for TCP and TLS) is another variant of
//! [`SocketService`] and a module of its own beside [`http`]: the HTTP path does not change
//! for it. UDP sockets ([`udp`]) are kept apart: a UDP port is not the TCP port of the same
//! number, so one address may have both. Sockets the new configuration no longer has stop accepting and close their
//! connections gracefully; new ones are bound first, so a change that cannot bind is refused
//! whole. Shutdown closes every socket and waits (up to a deadline) for in-flight requests.

pub mod h1;
pub mod http;
mod settings;
pub mod sni;
pub mod tcp;
pub mod udp;

pub use settings::ServerSettings;

use crate::conn::Admission;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::table::Tables;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

/// What one socket serves.
pub enum SocketService {
    /// HTTP/1.1 and HTTP/2, after TLS termination when the socket's listeners are HTTPS.
    Http(Box<http::HttpService>),
    /// Connections forwarded whole to the backend of a TCPRoute.
    Tcp(Box<tcp::StreamService>),
}

impl SocketService {
    fn kind(&self) -> &'static str {
        match self {
            SocketService::Http(_) => "HTTP",
            SocketService::Tcp(_) => "TCP",
        }
    }
}

/// The services of `tables`, by socket: its TCP sockets', and its UDP sockets'.
fn services(
    tables: Tables,
) -> (
    BTreeMap<SocketAddr, SocketService>,
    BTreeMap<SocketAddr, tcp::StreamService>,
) {
    let mut tls = tables.tls;
    let mut client_checks = tables.client_checks;
    let http = tables.sockets.into_iter().map(|(addr, router)| {
        let service = http::HttpService {
            router,
            tls: tls.remove(&addr),
            client_check: client_checks.remove(&addr),
        };
        (addr, SocketService::Http(Box::new(service)))
    });
    let tcp = tables
        .streams
        .into_iter()
        .map(|(addr, service)| (addr, SocketService::Tcp(Box::new(service))));
    (http.chain(tcp).collect(), tables.datagrams)
}

/// A bound socket's service, swapped whole by each configuration.
#[derive(Clone)]
enum Live {
    Http(Arc<ArcSwap<http::HttpService>>),
    Tcp(Arc<tcp::StreamLive>),
}

impl Live {
    fn new(service: SocketService) -> Self {
        match service {
            SocketService::Http(s) => Live::Http(Arc::new(ArcSwap::new(Arc::from(s)))),
            SocketService::Tcp(s) => Live::Tcp(Arc::new(tcp::StreamLive::new(*s))),
        }
    }

    /// Swaps in the next configuration's service. [`Server::apply`] refuses a change that
    /// would give a socket another kind, so a service of another kind never comes here.
    fn store(&self, service: SocketService) {
        match (self, service) {
            (Live::Http(live), SocketService::Http(s)) => live.store(Arc::from(s)),
            (Live::Tcp(live), SocketService::Tcp(s)) => live.store(*s),
            (live, other) => tracing::error!(
                serves = live.kind(),
                asked = other.kind(),
                "a socket's service cannot change kind; kept"
            ),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Live::Http(_) => "HTTP",
            Live::Tcp(_) => "TCP",
        }
    }
}

struct Socket {
    live: Live,
    /// `true` closes the socket: stop accepting, shut connections down gracefully.
    closing: watch::Sender<bool>,
}

/// A bound UDP socket.
struct DatagramSocket {
    live: Arc<tcp::StreamLive>,
    /// `true` closes the socket: no more datagrams; its flows end after the drain period.
    closing: watch::Sender<bool>,
}

/// What the connections of every socket share.
struct Shared {
    http: http::HttpShared,
    streams: tcp::StreamSettings,
    admission: Arc<Admission>,
    /// Connections one socket keeps open at most (0: no cap).
    per_listener: usize,
    metrics: Arc<Metrics>,
}

pub struct Server {
    shared: Arc<Shared>,
    sockets: Mutex<HashMap<SocketAddr, Socket>>,
    /// UDP sockets (a UDP port is not the TCP port of the same number).
    datagram_sockets: Mutex<HashMap<SocketAddr, DatagramSocket>>,
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
            shared: Arc::new(Shared {
                http: http::HttpShared::new(proxy, metrics.clone(), settings),
                streams: settings.streams,
                admission: Arc::new(Admission::new(
                    max_connections,
                    limits.max_connections_per_source,
                )),
                per_listener: limits.max_connections_per_listener,
                metrics,
            }),
            sockets: Mutex::new(HashMap::new()),
            datagram_sockets: Mutex::new(HashMap::new()),
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
        let mut datagram_sockets = self.datagram_sockets.lock();
        let (wanted, wanted_datagrams) = services(tables);
        // A socket that changes kind (an HTTP listener's port given to a TCP one) cannot be
        // bound twice: such a change is refused, like a port another process holds.
        let mut failed = BTreeMap::new();
        for (addr, service) in &wanted {
            if let Some(s) = sockets.get(addr)
                && s.live.kind() != service.kind()
            {
                failed.insert(
                    *addr,
                    format!(
                        "this gateway serves {} on it, and the change asks for {}: remove the listener first, then add the new one",
                        s.live.kind(),
                        service.kind()
                    ),
                );
            }
        }
        if !failed.is_empty() {
            return Err(failed);
        }
        let mut bound = BTreeMap::new();
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
        let mut bound_datagrams = BTreeMap::new();
        for addr in wanted_datagrams
            .keys()
            .filter(|a| !datagram_sockets.contains_key(*a))
        {
            match udp::bind(*addr) {
                Ok(s) => {
                    bound_datagrams.insert(*addr, s);
                }
                Err(e) => {
                    let why = format!("UDP: {e}");
                    failed
                        .entry(*addr)
                        .and_modify(|w: &mut String| *w = format!("{w}; {why}"))
                        .or_insert(why);
                }
            }
        }
        if !failed.is_empty() {
            // The sockets just bound close here; nothing else changed.
            return Err(failed);
        }
        let gone: Vec<SocketAddr> = datagram_sockets
            .keys()
            .filter(|a| !wanted_datagrams.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(s) = datagram_sockets.remove(&addr) {
                tracing::info!(%addr, "closing UDP listener socket");
                let _ = s.closing.send(true);
                self.draining.lock().push(s.closing);
            }
        }
        for (addr, service) in wanted_datagrams {
            if let Some(s) = datagram_sockets.get(&addr) {
                s.live.store(service);
                continue;
            }
            let Some(socket) = bound_datagrams.remove(&addr) else {
                continue;
            };
            tracing::info!(%addr, "listening (UDP)");
            let live = Arc::new(tcp::StreamLive::new(service));
            let (closing, rx) = watch::channel(false);
            tokio::spawn(udp::serve(
                socket,
                live.clone(),
                self.shared.streams,
                self.shared.metrics.clone(),
                rx,
            ));
            datagram_sockets.insert(addr, DatagramSocket { live, closing });
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
        for (addr, service) in wanted {
            if let Some(s) = sockets.get(&addr) {
                s.live.store(service);
                continue;
            }
            let Some(listener) = bound.remove(&addr) else {
                continue;
            };
            tracing::info!(%addr, "listening");
            let live = Live::new(service);
            let (closing, rx) = watch::channel(false);
            tokio::spawn(accept_loop(listener, live.clone(), self.shared.clone(), rx));
            sockets.insert(addr, Socket { live, closing });
        }
        Ok(())
    }

    /// The addresses being served: `1.2.3.4:80`, and `udp:1.2.3.4:53` for UDP sockets.
    pub fn addresses(&self) -> Vec<String> {
        let mut v: Vec<SocketAddr> = self.sockets.lock().keys().copied().collect();
        v.sort();
        let mut udp: Vec<SocketAddr> = self.datagram_sockets.lock().keys().copied().collect();
        udp.sort();
        v.iter()
            .map(ToString::to_string)
            .chain(udp.iter().map(|a| format!("udp:{a}")))
            .collect()
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
        senders.extend(self.datagram_sockets.lock().drain().map(|(_, s)| s.closing));
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

/// Accepts connections until the socket closes: each one admitted (connection caps, at
/// once, before any work) is served by the socket's service on a task of its own.
async fn accept_loop(
    listener: TcpListener,
    live: Live,
    shared: Arc<Shared>,
    closing: watch::Receiver<bool>,
) {
    let local_port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let mut closing_rx = closing.clone();
    // This socket's open connections, under `--max-connections-per-listener`.
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
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
                shared.metrics.connection_refused("accept_error");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Refused at once, before any work: the socket is closed (RST-free FIN).
        let Some(on_socket) = SocketPlace::take(&open, shared.per_listener) else {
            shared
                .metrics
                .connection_refused("max_connections_per_listener");
            tracing::debug!(%client, "connection refused: the listener is at its connection limit");
            drop(stream);
            continue;
        };
        let permit = match shared.admission.admit(client.ip()) {
            Ok(p) => p,
            Err(why) => {
                shared.metrics.connection_refused(why.as_str());
                tracing::debug!(%client, reason = why.as_str(), "connection refused");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let live = live.clone();
        let shared = shared.clone();
        let closing = closing.clone();
        tokio::spawn(async move {
            shared.metrics.connections.inc();
            serve(stream, client, local_port, &live, &shared, closing).await;
            shared.metrics.connections.dec();
            drop(permit);
            drop(on_socket);
        });
    }
}

/// A connection's place among its socket's open connections; dropping it frees the place.
struct SocketPlace(Arc<std::sync::atomic::AtomicUsize>);

impl SocketPlace {
    /// A place, unless `max` (0: no cap) are taken.
    fn take(open: &Arc<std::sync::atomic::AtomicUsize>, max: usize) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let n = open.fetch_add(1, Ordering::AcqRel) + 1;
        if max > 0 && n > max {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(open.clone()))
    }
}

impl Drop for SocketPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// One accepted connection, served by its socket's service.
async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    local_port: u16,
    live: &Live,
    shared: &Shared,
    closing: watch::Receiver<bool>,
) {
    match live {
        Live::Http(service) => {
            http::serve(stream, client, local_port, service, &shared.http, closing).await;
        }
        Live::Tcp(service) => {
            tcp::serve(
                stream,
                client,
                service,
                &shared.streams,
                &shared.metrics,
                closing,
            )
            .await;
        }
    }
}
