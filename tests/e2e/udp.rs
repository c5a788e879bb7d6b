//! UDP listeners with UDPRoutes, end to end: a real `portico` serving a directory, real UDP
//! echo backends (`portico-echo --udp`), real sockets on 127.0.0.x. Every client socket here
//! is connected to the gateway's address, so an answer from any other address would not be
//! received at all.

use portico_tests::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

/// Our GatewayClass and a Gateway `gw` with `listeners` (YAML list items, one per line).
fn gateway_with(listeners: &str) -> String {
    gateway_yaml("gw", "", listeners)
}

/// A Gateway `gw` with a UDP listener on each of `ports` (`udp-<port>`).
fn gateway(ports: &[u16]) -> String {
    let listeners: String = ports
        .iter()
        .map(|p| format!("  - {{name: udp-{p}, port: {p}, protocol: UDP}}\n"))
        .collect();
    gateway_with(&listeners)
}

/// A Service `name` on port 9000 (of `protocol`) whose one endpoint is `backend`.
fn service(name: &str, protocol: &str, backend: SocketAddr) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  annotations: {{portico.dev/endpoints: \"{backend}\"}}
spec:
  ports: [{{port: 9000, protocol: {protocol}}}]
"
    )
}

/// A route of `kind` (`UDPRoute`, `TCPRoute`) `name` on listener `section`, to the weighted
/// Services.
fn route(kind: &str, name: &str, section: &str, backends: &[(&str, u32)]) -> String {
    let refs: Vec<String> = backends
        .iter()
        .map(|(s, w)| format!("{{name: {s}, port: 9000, weight: {w}}}"))
        .collect();
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: {section}}}]
  rules:
  - backendRefs: [{}]
",
        refs.join(", ")
    )
}

fn udp_route(name: &str, port: u16, backends: &[(&str, u32)]) -> String {
    route("UDPRoute", name, &format!("udp-{port}"), backends)
}

/// A client: a UDP socket of its own (a flow of its own), connected to the gateway.
async fn client(gateway: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind((gateway.ip(), 0))
        .await
        .expect("a client socket");
    socket.connect(gateway).await.expect("connected");
    socket
}

/// Sends `message` and returns the answer (`<backend name> <message>`), or `None` when none
/// comes within `wait`.
async fn ask_within(socket: &UdpSocket, message: &str, wait: Duration) -> Option<String> {
    socket.send(message.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 65_535];
    let n = tokio::time::timeout(wait, socket.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8(buf.get(..n)?.to_vec()).ok()
}

/// The backend that answered `message`, waiting long for it.
async fn ask(socket: &UdpSocket, message: &str) -> Option<String> {
    let answer = ask_within(socket, message, Duration::from_secs(10)).await?;
    let (name, echoed) = answer.split_once(' ')?;
    assert_eq!(echoed, message, "the datagram comes back whole");
    Some(name.to_string())
}

fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Waits until the gateway's metric `series` reaches `at_least`.
async fn await_metric(portico: &Portico, series: &str, at_least: f64) {
    await_some(series, || async {
        let metrics = portico.metrics().await;
        metric(&metrics, series)
            .filter(|v| *v >= at_least)
            .map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn flows_follow_the_weights_keep_their_endpoint_and_share_a_port_number_with_tcp() {
    let (a, b, zero) = (
        Echo::start_udp("a"),
        Echo::start_udp("b"),
        Echo::start_udp("zero"),
    );
    let tcp = Echo::start_tcp("over-tcp");
    let ip = loopback_ip();
    let port = free_port(ip);
    // One port number, two listeners: UDP and TCP.
    let listeners = format!(
        "  - {{name: udp-{port}, port: {port}, protocol: UDP}}\n  - {{name: tcp-{port}, port: {port}, protocol: TCP}}\n"
    );
    let text = format!(
        "{}{}{}{}{}{}{}",
        gateway_with(&listeners),
        service("a", "UDP", a.addr),
        service("b", "UDP", b.addr),
        service("zero", "UDP", zero.addr),
        service("tcp", "TCP", tcp.addr),
        udp_route("r", port, &[("a", 1), ("b", 1), ("zero", 0)]),
        route("TCPRoute", "t", &format!("tcp-{port}"), &[("tcp", 1)])
    );
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let addr = portico.addr(port);

    // Each client socket is a flow: its endpoint picked by weight, then kept.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..60 {
        let socket = client(addr).await;
        let first = ask(&socket, &format!("hello {i}"))
            .await
            .expect("an answer, from the gateway's address");
        for j in 0..3 {
            assert_eq!(
                ask(&socket, &format!("again {i} {j}")).await.as_deref(),
                Some(first.as_str()),
                "a flow keeps its endpoint"
            );
        }
        *seen.entry(first).or_default() += 1;
    }
    assert_eq!(seen.get("zero"), None, "weight 0 gets nothing: {seen:?}");
    assert!(
        seen.get("a").is_some_and(|n| *n >= 10) && seen.get("b").is_some_and(|n| *n >= 10),
        "both halves get flows: {seen:?}"
    );
    // A datagram near the largest IPv4 payload goes through whole.
    let socket = client(addr).await;
    let big = "x".repeat(60_000);
    assert!(ask(&socket, &big).await.is_some());

    // The TCP listener of the same number serves its own route.
    let stream = TcpStream::connect(addr).await.expect("the TCP listener");
    let mut greeting = String::new();
    BufReader::new(stream)
        .read_line(&mut greeting)
        .await
        .expect("a greeting");
    assert_eq!(greeting.trim_end(), "over-tcp");

    let metrics = portico.metrics().await;
    assert!(
        metric(&metrics, "portico_udp_flows").is_some_and(|n| n >= 61.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn datagrams_without_a_usable_backend_are_dropped_and_counted() {
    let a = Echo::start_udp("a");
    let ip = loopback_ip();
    let (routed, bare, missing) = (free_port(ip), free_port(ip), free_port(ip));
    let text = format!(
        "{}{}{}{}",
        gateway(&[routed, bare, missing]),
        service("a", "UDP", a.addr),
        udp_route("ok", routed, &[("a", 1)]),
        udp_route("nowhere", missing, &[("no-such-service", 1)])
    );
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let socket = client(portico.addr(routed)).await;
    assert_eq!(ask(&socket, "hi").await.as_deref(), Some("a"));
    for (port, reason) in [(bare, "no_route"), (missing, "no_backend")] {
        let socket = client(portico.addr(port)).await;
        // Nothing answers; the gateway says why in its metrics.
        let answer = ask_within(&socket, "hi", Duration::from_millis(300)).await;
        assert_eq!(answer, None, "{reason}");
        await_metric(
            &portico,
            &format!("portico_udp_datagrams_dropped_total{{reason=\"{reason}\"}}"),
            1.0,
        )
        .await;
    }
}

#[tokio::test]
async fn a_change_that_keeps_the_route_keeps_its_flows_and_removing_it_drains_them() {
    let (a, b) = (Echo::start_udp("a"), Echo::start_udp("b"));
    let ip = loopback_ip();
    let (p1, p2) = (free_port(ip), free_port(ip));
    let services = format!(
        "{}{}",
        service("a", "UDP", a.addr),
        service("b", "UDP", b.addr)
    );
    let first = format!(
        "{}{services}{}",
        gateway(&[p1, p2]),
        udp_route("one", p1, &[("a", 1)])
    );
    let portico =
        Portico::start_on(ip, &[("config.yaml", &first)], &["--drain-timeout-s", "2"]).await;
    let open = client(portico.addr(p1)).await;
    assert_eq!(ask(&open, "first").await.as_deref(), Some("a"));

    // The route's weights turned to b and another route added: new flows go to b, the open
    // flow stays with a.
    let second = format!(
        "{}{services}{}{}",
        gateway(&[p1, p2]),
        udp_route("one", p1, &[("a", 0), ("b", 1)]),
        udp_route("two", p2, &[("b", 1)])
    );
    portico.config.write("config.yaml", &second);
    await_some("the second configuration", || async {
        let fresh = client(portico.addr(p1)).await;
        ask_within(&fresh, "new", Duration::from_millis(500))
            .await
            .filter(|answer| answer.starts_with("b "))
    })
    .await;
    assert_eq!(ask(&open, "still here").await.as_deref(), Some("a"));

    // The route removed: new flows get nothing, and the open one ends after the drain period.
    let third = format!(
        "{}{services}{}",
        gateway(&[p1, p2]),
        udp_route("two", p2, &[("b", 1)])
    );
    portico.config.write("config.yaml", &third);
    await_some("new flows refused", || async {
        let fresh = client(portico.addr(p1)).await;
        ask_within(&fresh, "gone?", Duration::from_millis(300))
            .await
            .is_none()
            .then_some(())
    })
    .await;
    await_metric(
        &portico,
        "portico_udp_datagrams_dropped_total{reason=\"no_route\"}",
        1.0,
    )
    .await;
    await_metric(
        &portico,
        "portico_udp_flows_closed_total{reason=\"drained\"}",
        1.0,
    )
    .await;
    assert_eq!(
        ask_within(&open, "after the drain", Duration::from_millis(300)).await,
        None,
        "a drained flow is not started again: the route is gone"
    );
}

#[tokio::test]
async fn an_idle_flow_ends_and_a_refusing_endpoint_ends_its_flow() {
    let a = Echo::start_udp("a");
    let ip = loopback_ip();
    let (p1, p2) = (free_port(ip), free_port(ip));
    // Nothing listens here: the endpoint answers ICMP port unreachable.
    let closed = SocketAddr::new(ip, free_port(ip));
    let text = format!(
        "{}{}{}{}{}",
        gateway(&[p1, p2]),
        service("a", "UDP", a.addr),
        service("closed", "UDP", closed),
        udp_route("live", p1, &[("a", 1)]),
        udp_route("dead", p2, &[("closed", 1)])
    );
    let portico = Portico::start_on(
        ip,
        &[("config.yaml", &text)],
        &["--udp-idle-timeout-s", "1"],
    )
    .await;
    let socket = client(portico.addr(p1)).await;
    assert_eq!(ask(&socket, "one").await.as_deref(), Some("a"));
    await_metric(
        &portico,
        "portico_udp_flows_closed_total{reason=\"idle_timeout\"}",
        1.0,
    )
    .await;
    // The client's next datagram starts a new flow.
    assert_eq!(ask(&socket, "two").await.as_deref(), Some("a"));

    let refused = client(portico.addr(p2)).await;
    for _ in 0..2 {
        assert_eq!(
            ask_within(&refused, "anyone?", Duration::from_millis(300)).await,
            None
        );
    }
    await_metric(
        &portico,
        "portico_udp_flows_closed_total{reason=\"refused\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_flow_whose_endpoint_leaves_the_backend_ends_and_the_client_moves_on() {
    let (a, b) = (Echo::start_udp("a"), Echo::start_udp("b"));
    let ip = loopback_ip();
    let port = free_port(ip);
    let config = |endpoint: SocketAddr| {
        format!(
            "{}{}{}",
            gateway(&[port]),
            service("svc", "UDP", endpoint),
            udp_route("r", port, &[("svc", 1)])
        )
    };
    let portico = Portico::start_on(ip, &[("config.yaml", &config(a.addr))], &[]).await;
    let socket = client(portico.addr(port)).await;
    assert_eq!(ask(&socket, "first").await.as_deref(), Some("a"));
    // The Service's endpoint changes under the same route: the flow to the old one ends,
    // and the same client's next datagrams reach the new one.
    portico.config.write("config.yaml", &config(b.addr));
    await_metric(
        &portico,
        "portico_udp_flows_closed_total{reason=\"endpoint_gone\"}",
        1.0,
    )
    .await;
    assert_eq!(ask(&socket, "again").await.as_deref(), Some("b"));
}

#[tokio::test]
async fn a_backend_at_its_max_connections_takes_no_more_flows_until_one_ends() {
    let a = Echo::start_udp("a");
    let ip = loopback_ip();
    let port = free_port(ip);
    let text = format!(
        "{}{}{}
---
apiVersion: portico.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: one-flow, namespace: default}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: a}}]
  circuitBreaker: {{maxConnections: 1}}
",
        gateway(&[port]),
        service("a", "UDP", a.addr),
        udp_route("ok", port, &[("a", 1)])
    );
    let portico = Portico::start_on(
        ip,
        &[("config.yaml", &text)],
        &["--udp-idle-timeout-s", "1"],
    )
    .await;
    let first = client(portico.addr(port)).await;
    assert_eq!(ask(&first, "one").await.as_deref(), Some("a"));
    // A second client is a second flow: no room for it while the first lives.
    let second = client(portico.addr(port)).await;
    assert_eq!(
        ask_within(&second, "two", Duration::from_millis(300)).await,
        None
    );
    await_metric(
        &portico,
        "portico_udp_datagrams_dropped_total{reason=\"max_connections_to_backend\"}",
        1.0,
    )
    .await;
    // The first flow ends idle; its place goes to the next flow.
    await_metric(
        &portico,
        "portico_udp_flows_closed_total{reason=\"idle_timeout\"}",
        1.0,
    )
    .await;
    assert_eq!(ask(&second, "three").await.as_deref(), Some("a"));
}
