//! UDP listeners: the datagrams of each client address are a flow, sent to one endpoint of a
//! backend of the listener's UDPRoute from a socket of the flow's own, whose replies go back
//! to the client from the listener's socket (a client with a connected socket takes nothing
//! from any other address).
//!
//! ```text
//!  recv_from ──▶ flow of the client's address? ──yes──▶ its queue (full: dropped)
//!                   │ no: the socket's route now ──weighted pick──▶ backend pool
//!                   │     ──first candidate──▶ new flow (a connected socket) ──▶ its queue
//!                   └ no route / no backend / no endpoint / too many flows: dropped
//!  flow: client datagrams ──▶ endpoint;  endpoint's replies ──send_to──▶ client
//!        ends when idle (nothing either way for --udp-idle-timeout-s), when the endpoint
//!        refuses or cannot be reached (ICMP port or host unreachable), when it leaves the
//!        backend's serving endpoints (the next datagram starts a new flow, maybe to another
//!        endpoint), or a drain period after its route left the socket
//! ```
//!
//! As with TCP ([`super::tcp`]), a flow belongs to the route that took it: a configuration
//! that keeps the route on the socket leaves the flow to its endpoint; one that removes the
//! route, or closes the socket, ends it after the drain period.

use super::tcp::{StreamForward, StreamLive, StreamSettings, retired};
use crate::metrics::Metrics;
use crate::tunnel::EndLabel;
use crate::upstream::{BackendPool, Endpoint, Outcome, PoolSettings, StreamHold};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};

/// Datagrams of one client queued for its endpoint; beyond that they are dropped, as a
/// congested link would.
const FLOW_QUEUE: usize = 256;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// At the flow limit, ended flows are forgotten at most this often.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// How often a flow looks whether its endpoint still serves.
const ENDPOINT_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Binds a listener's UDP socket.
pub(super) fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Serves one UDP socket until it closes.
pub(super) async fn serve(
    socket: UdpSocket,
    live: Arc<StreamLive>,
    settings: StreamSettings,
    metrics: Arc<Metrics>,
    closing: watch::Receiver<bool>,
) {
    let socket = Arc::new(socket);
    let mut flows: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut closing_rx = closing.clone();
    // When the flows that ended were last forgotten: at the limit, a scan at most this
    // often, so spoofed sources cannot make each datagram cost a scan of every flow.
    let mut last_sweep: Option<tokio::time::Instant> = None;
    let dropped = |reason: &'static str| {
        metrics
            .datagrams_dropped
            .get_or_create(&EndLabel { reason })
            .inc();
    };
    loop {
        let received = tokio::select! {
            _ = closing_rx.wait_for(|c| *c) => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let (n, client) = match received {
            Ok(r) => r,
            Err(e) => {
                // Not expected of an unconnected socket; never spin on it.
                tracing::debug!(error = %e, "UDP receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut datagram = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
        if let Some(tx) = flows.get(&client) {
            match tx.try_send(datagram) {
                Ok(()) => continue,
                Err(TrySendError::Full(_)) => {
                    dropped("queue_full");
                    continue;
                }
                // The flow ended (idle, refused, drained): this datagram starts another.
                Err(TrySendError::Closed(d)) => {
                    flows.remove(&client);
                    datagram = d;
                }
            }
        }
        if flows.len() >= settings.max_flows {
            let now = tokio::time::Instant::now();
            if last_sweep.is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY) {
                last_sweep = Some(now);
                flows.retain(|_, tx| !tx.is_closed());
            }
            if flows.len() >= settings.max_flows {
                dropped("too_many_flows");
                continue;
            }
        }
        // Subscribed before the route is read, so no swap after it is missed.
        let swapped = live.subscribe();
        let Some(route) = live.route() else {
            dropped("no_route");
            continue;
        };
        let Some(Some(pool)) = route.pick().cloned() else {
            dropped("no_backend");
            continue;
        };
        let policy = pool.settings();
        // A flow counts as a connection under the backend's `maxConnections` (asked first,
        // so a refused datagram does not move the balancer on).
        let Ok(mut hold) = pool.hold_stream(&policy) else {
            dropped("max_connections_to_backend");
            continue;
        };
        let endpoint = {
            let set = pool.endpoints();
            pool.candidates(&set, &policy, None).next().cloned()
        };
        let Some(endpoint) = endpoint else {
            dropped("no_endpoint");
            continue;
        };
        hold.to(&endpoint);
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        // A new queue has room for its first datagram.
        let _ = tx.try_send(datagram);
        flows.insert(client, tx);
        let flow = Flow {
            listener: socket.clone(),
            client,
            pool,
            endpoint,
            route,
            _hold: hold,
        };
        let (live, metrics, closing) = (live.clone(), metrics.clone(), closing.clone());
        tokio::spawn(async move {
            metrics.flows.open.inc();
            let reason = flow
                .run(rx, &live, swapped, closing, &settings, &metrics)
                .await;
            metrics.flows.open.dec();
            metrics
                .flows
                .closed
                .get_or_create(&EndLabel { reason })
                .inc();
        });
    }
}

/// One client's flow to one endpoint.
struct Flow {
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    pool: Arc<BackendPool>,
    endpoint: Endpoint,
    route: Arc<StreamForward>,
    /// Its place under the backend's `maxConnections`, and its endpoint's in-flight count.
    _hold: StreamHold,
}

impl Flow {
    /// Relays both ways until the flow ends; returns why.
    async fn run(
        self,
        mut from_client: mpsc::Receiver<Bytes>,
        live: &StreamLive,
        swapped: watch::Receiver<()>,
        closing: watch::Receiver<bool>,
        settings: &StreamSettings,
        metrics: &Metrics,
    ) -> &'static str {
        let policy = self.pool.settings();
        let upstream = match connect(self.endpoint.addr).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(client = %self.client, endpoint = %self.endpoint.addr, error = %e, "UDP flow not opened");
                return "connect_failed";
            }
        };
        let retire = retired(live, &self.route.label, swapped, closing, settings.drain);
        tokio::pin!(retire);
        let idle = tokio::time::sleep(settings.datagram_idle_timeout);
        tokio::pin!(idle);
        let mut check = tokio::time::interval(ENDPOINT_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut answered = false;
        // The listener's socket closed: no more from the client, replies still relayed.
        let mut client_open = true;
        loop {
            tokio::select! {
                d = from_client.recv(), if client_open => match d {
                    Some(d) => {
                        if let Err(e) = upstream.send(&d).await
                            && let Some(reason) = self.failed(&e, &policy)
                        {
                            return reason;
                        }
                        idle.as_mut().reset(tokio::time::Instant::now() + settings.datagram_idle_timeout);
                    }
                    None => client_open = false,
                },
                r = upstream.readable() => {
                    if let Err(e) = r {
                        if let Some(reason) = self.failed(&e, &policy) {
                            return reason;
                        }
                        continue;
                    }
                    // The buffer is had only while a reply is there: an idle flow holds none.
                    let mut reply = vec![0u8; MAX_DATAGRAM];
                    match upstream.try_recv(&mut reply) {
                        Ok(n) => {
                            if !answered {
                                answered = true;
                                self.pool.record(&self.endpoint, Outcome::Success, &policy);
                            }
                            let out = reply.get(..n).unwrap_or_default();
                            if let Err(e) = self.listener.send_to(out, self.client).await {
                                tracing::debug!(client = %self.client, error = %e, "UDP reply not sent");
                                metrics.datagrams_dropped.get_or_create(&EndLabel { reason: "send_failed" }).inc();
                            }
                            idle.as_mut().reset(tokio::time::Instant::now() + settings.datagram_idle_timeout);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            if let Some(reason) = self.failed(&e, &policy) {
                                return reason;
                            }
                        }
                    }
                }
                _ = check.tick() => {
                    let set = self.pool.endpoints();
                    if !set.serving().iter().any(|e| e.addr == self.endpoint.addr) {
                        tracing::debug!(client = %self.client, endpoint = %self.endpoint.addr, "UDP flow ended: its endpoint no longer serves");
                        return "endpoint_gone";
                    }
                }
                () = &mut idle => return "idle_timeout",
                () = &mut retire => {
                    tracing::debug!(client = %self.client, route = %self.route.label, "UDP flow ended after the drain period: its route is gone");
                    return "drained";
                }
            }
        }
    }

    /// An error of the flow's socket: the endpoint refused or cannot be reached (ICMP port,
    /// host or network unreachable), which counts against it and ends the flow, or another
    /// (kept going, the datagram lost).
    fn failed(&self, e: &std::io::Error, policy: &PoolSettings) -> Option<&'static str> {
        use std::io::ErrorKind;
        let reason = match e.kind() {
            ErrorKind::ConnectionRefused => Some("refused"),
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => Some("unreachable"),
            _ => None,
        };
        if let Some(reason) = reason {
            tracing::debug!(client = %self.client, backend = %self.pool.id, endpoint = %self.endpoint.addr, reason, "UDP endpoint refused or unreachable");
            self.pool
                .record(&self.endpoint, Outcome::GatewayError, policy);
            return Some(reason);
        }
        tracing::debug!(client = %self.client, endpoint = %self.endpoint.addr, error = %e, "UDP datagram lost");
        None
    }
}

/// A socket of the flow's own, connected to its endpoint (so only the endpoint's replies
/// reach it, and a refusal is reported).
async fn connect(endpoint: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: IpAddr = if endpoint.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    socket.connect(endpoint).await?;
    Ok(socket)
}
