//! TCP listeners with TCPRoutes, and TLS passthrough listeners with TLSRoutes, end to end: a
//! real `portico` serving a directory, real TCP and TLS echo backends (`portico-echo --tcp`,
//! with `--tls-cert` for TLS), real sockets on 127.0.0.x.

use portico_tests::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A Gateway `gw` with a TCP listener on each of `ports` (`tcp-<port>`).
fn gateway(ports: &[u16]) -> String {
    let listeners: String = ports
        .iter()
        .map(|p| format!("  - {{name: tcp-{p}, port: {p}, protocol: TCP}}\n"))
        .collect();
    gateway_with(&listeners)
}

/// Our GatewayClass and a Gateway `gw` with `listeners` (YAML list items, one per line).
fn gateway_with(listeners: &str) -> String {
    gateway_yaml("gw", "", listeners)
}

/// A Service `name` on port 9000 whose one endpoint is `backend`.
fn service(name: &str, backend: SocketAddr) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  annotations: {{portico.dev/endpoints: \"{backend}\"}}
spec:
  ports: [{{port: 9000}}]
"
    )
}

/// A TCPRoute `name` on the listener of `port`, to the weighted Services.
fn tcp_route(name: &str, port: u16, backends: &[(&str, u32)]) -> String {
    tcp_route_on(name, &format!("tcp-{port}"), backends)
}

/// A TCPRoute `name` on listener `section`, to the weighted Services.
fn tcp_route_on(name: &str, section: &str, backends: &[(&str, u32)]) -> String {
    let refs: Vec<String> = backends
        .iter()
        .map(|(s, w)| format!("{{name: {s}, port: 9000, weight: {w}}}"))
        .collect();
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: {section}}}]
  rules:
  - backendRefs: [{}]
",
        refs.join(", ")
    )
}

/// A connection through the gateway, with the name its backend greeted it with.
struct Conn {
    name: String,
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects and reads the greeting; `None` when the gateway closes the connection
    /// without one.
    async fn open(addr: SocketAddr) -> Option<Conn> {
        let stream = TcpStream::connect(addr).await.ok()?;
        let mut reader = BufReader::new(stream);
        let mut name = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut name))
            .await
            .ok()?
            .ok()?;
        (n > 0).then(|| Conn {
            name: name.trim_end().to_string(),
            reader,
        })
    }

    /// Sends `line` and reads it back.
    async fn echo(&mut self, line: &str) -> String {
        self.reader
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write through the gateway");
        let mut back = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut back))
            .await
            .expect("the echo answers in time")
            .expect("read through the gateway");
        back.trim_end().to_string()
    }
}

/// Whether the gateway closes a new connection without a byte.
async fn closed_at_once(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn connections_follow_the_weights_and_carry_bytes_both_ways() {
    let (a, b, c) = (
        Echo::start_tcp("a"),
        Echo::start_tcp("b"),
        Echo::start_tcp("zero"),
    );
    let ip = loopback_ip();
    let port = free_port(ip);
    let text = format!(
        "{}{}{}{}{}",
        gateway(&[port]),
        service("a", a.addr),
        service("b", b.addr),
        service("zero", c.addr),
        tcp_route("r", port, &[("a", 1), ("b", 1), ("zero", 0)])
    );
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let addr = portico.addr(port);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..60 {
        let mut conn = Conn::open(addr).await.expect("a backend greets");
        assert_eq!(conn.echo(&format!("ping {i}")).await, format!("ping {i}"));
        *seen.entry(conn.name).or_default() += 1;
    }
    assert_eq!(seen.get("zero"), None, "weight 0 gets nothing: {seen:?}");
    assert!(
        seen.get("a").is_some_and(|n| *n >= 10) && seen.get("b").is_some_and(|n| *n >= 10),
        "both halves get connections: {seen:?}"
    );
    // A large write goes through whole, both ways.
    let mut conn = Conn::open(addr).await.expect("a backend greets");
    let big = "x".repeat(256 * 1024);
    assert_eq!(conn.echo(&big).await.len(), big.len());
}

#[tokio::test]
async fn a_listener_without_a_usable_backend_closes_connections_at_once() {
    let a = Echo::start_tcp("a");
    let ip = loopback_ip();
    let (routed, bare, missing) = (free_port(ip), free_port(ip), free_port(ip));
    let text = format!(
        "{}{}{}{}",
        gateway(&[routed, bare, missing]),
        service("a", a.addr),
        tcp_route("ok", routed, &[("a", 1)]),
        tcp_route("nowhere", missing, &[("no-such-service", 1)])
    );
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    assert_eq!(
        Conn::open(portico.addr(routed)).await.map(|c| c.name),
        Some("a".to_string())
    );
    assert!(closed_at_once(portico.addr(bare)).await, "no route: closed");
    assert!(
        closed_at_once(portico.addr(missing)).await,
        "a backend that does not resolve: closed"
    );
    let metrics = portico.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "portico_tcp_connections_closed_total{reason=\"no_route\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "portico_tcp_connections_closed_total{reason=\"no_backend\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_change_that_keeps_the_route_keeps_its_connections_and_removing_it_drains_them() {
    let (a, b) = (Echo::start_tcp("a"), Echo::start_tcp("b"));
    let ip = loopback_ip();
    let (p1, p2) = (free_port(ip), free_port(ip));
    let services = format!("{}{}", service("a", a.addr), service("b", b.addr));
    let first = format!(
        "{}{services}{}",
        gateway(&[p1, p2]),
        tcp_route("one", p1, &[("a", 1)])
    );
    let portico =
        Portico::start_on(ip, &[("config.yaml", &first)], &["--drain-timeout-s", "2"]).await;
    let mut open = Conn::open(portico.addr(p1)).await.expect("a greets");
    assert_eq!(open.name, "a");

    // Another route added and this one's backends edited: its connection carries on.
    let second = format!(
        "{}{services}{}{}",
        gateway(&[p1, p2]),
        tcp_route("one", p1, &[("a", 1), ("b", 0)]),
        tcp_route("two", p2, &[("b", 1)])
    );
    portico.config.write("config.yaml", &second);
    await_some("the second route", || async {
        Conn::open(portico.addr(p2)).await.filter(|c| c.name == "b")
    })
    .await;
    assert_eq!(open.echo("still here").await, "still here");

    // The route removed: new connections are refused at once, and the open one is closed
    // once the drain period is over.
    let third = format!(
        "{}{services}{}",
        gateway(&[p1, p2]),
        tcp_route("two", p2, &[("b", 1)])
    );
    portico.config.write("config.yaml", &third);
    await_some("the route removed", || async {
        closed_at_once(portico.addr(p1)).await.then_some(())
    })
    .await;
    let mut rest = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(30), open.reader.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the drained connection was closed");
    let metrics = portico.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "portico_tcp_connections_closed_total{reason=\"drained\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// A TLS connection through the gateway (SNI `server_name`, trusting `ca_pem`) with the
/// greeting its backend sent; the error says why the handshake failed.
async fn tls_open(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
) -> std::io::Result<(
    String,
    BufReader<tokio_rustls::client::TlsStream<TcpStream>>,
)> {
    use rustls::pki_types::ServerName;
    let config = tls::client_config(&[ca_pem], &[]).map_err(std::io::Error::other)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from(server_name.to_string()).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(std::io::Error::other)??;
    let mut reader = BufReader::new(tls);
    let mut greeting = String::new();
    reader.read_line(&mut greeting).await?;
    Ok((greeting.trim_end().to_string(), reader))
}

#[tokio::test]
async fn tls_passthrough_routes_by_sni_without_terminating_and_closes_what_it_cannot_route() {
    let certs = TempDir::new("tls-backends");
    let (abc_cert, abc_key) = tls::self_signed(&["abc.example.com"]);
    let (wild_cert, wild_key) = tls::self_signed(&["*.example.com", "*.sub.example.com"]);
    let abc = Echo::start_tls("abc", &certs, &abc_cert, &abc_key);
    let wild = Echo::start_tls("wild", &certs, &wild_cert, &wild_key);
    let ip = loopback_ip();
    let port = free_port(ip);
    let listener = format!(
        "  - {{name: tls, port: {port}, protocol: TLS, hostname: \"*.example.com\", tls: {{mode: Passthrough}}}}\n"
    );
    let text = format!(
        "{}{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: abc, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [abc.example.com]
  rules: [{{backendRefs: [{{name: abc, port: 9000}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: wild, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [\"*.example.com\", other.org]
  rules: [{{backendRefs: [{{name: wild, port: 9000}}]}}]
",
        gateway_with(&listener),
        service("abc", abc.addr),
        service("wild", wild.addr)
    );
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let addr = portico.addr(port);

    // The exact hostname wins over the wildcard; the backend terminates TLS itself, with its
    // own certificate, and sees the client's SNI.
    let (greeting, mut conn) = tls_open(addr, "abc.example.com", &abc_cert)
        .await
        .expect("a handshake with the abc backend");
    assert_eq!(greeting, "abc abc.example.com");
    conn.get_mut()
        .write_all(b"through TLS\n")
        .await
        .expect("write");
    let mut back = String::new();
    conn.read_line(&mut back).await.expect("read");
    assert_eq!(back, "through TLS\n");
    let (greeting, _) = tls_open(addr, "deep.sub.example.com", &wild_cert)
        .await
        .expect("a handshake with the wildcard backend");
    assert_eq!(greeting, "wild deep.sub.example.com");

    // A name no route has (other.org is outside the listener's hostname), and bytes that
    // are not TLS: closed without a TLS alert (an EOF to the client's handshake).
    for name in ["other.org", "example.com"] {
        let err = tls_open(addr, name, &wild_cert)
            .await
            .expect_err("no route for the name");
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "{name}: {err:?}"
        );
    }
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: abc.example.com\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?} {rest:?}");
    let metrics = portico.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "portico_tcp_connections_closed_total{reason=\"no_route\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "portico_tcp_connections_closed_total{reason=\"not_tls\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn tls_listeners_of_both_modes_share_a_port_the_most_specific_decides_and_a_tcp_route_takes_a_terminated_one()
 {
    let certs = TempDir::new("tls-modes");
    let (inner_cert, inner_key) = tls::self_signed(&["*.internal.test"]);
    let (grab_cert, grab_key) = tls::self_signed(&["*.internal.test"]);
    let (gw_cert, gw_key) = tls::self_signed(&["term.example.com", "tcp.example.com"]);
    let inner = Echo::start_tls("inner", &certs, &inner_cert, &inner_key);
    let grabber = Echo::start_tls("grabber", &certs, &grab_cert, &grab_key);
    let plain = Echo::start_tcp("plain");
    let whole = Echo::start_tcp("whole");
    let ip = loopback_ip();
    let port = free_port(ip);
    let route = |name: &str, day: u32, section: &str, host: &str, backend: &str| {
        format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: {name}, namespace: default, creationTimestamp: \"2024-01-0{day}T00:00:00Z\"}}
spec:
  parentRefs: [{{name: gw, sectionName: {section}}}]
  hostnames: [\"{host}\"]
  rules: [{{backendRefs: [{{name: {backend}, port: 9000}}]}}]
"
        )
    };
    let listeners = format!(
        "  - {{name: pass, port: {port}, protocol: TLS, hostname: \"*.internal.test\", tls: {{mode: Passthrough}}}}
  - {{name: term, port: {port}, protocol: TLS, hostname: term.example.com, tls: {{mode: Terminate, certificateRefs: [{{name: gw-cert}}]}}}}
  - {{name: any, port: {port}, protocol: TLS, tls: {{mode: Passthrough}}}}
  - {{name: tcp, port: {port}, protocol: TLS, hostname: tcp.example.com, tls: {{certificateRefs: [{{name: gw-cert}}]}}}}
"
    );
    let text = format!(
        "{}{}{}{}{}{}{}{}{}{}{}",
        gateway_with(&listeners),
        tls::secret_yaml("gw-cert", "default", &gw_cert, &gw_key),
        service("inner", inner.addr),
        service("grabber", grabber.addr),
        service("plain", plain.addr),
        service("whole", whole.addr),
        // Older, on the broader listener, for a name of the more specific one: not served.
        route("grab", 1, "any", "db.internal.test", "grabber"),
        route("internal", 2, "pass", "*.internal.test", "inner"),
        route("term", 3, "term", "term.example.com", "plain"),
        route("rest", 4, "any", "*.test", "grabber"),
        // A TCPRoute on a terminating listener takes all of its connections.
        tcp_route_on("whole", "tcp", &[("whole", 1)]),
    );
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let addr = portico.addr(port);

    // The name belongs to the *.internal.test listener: its route serves it, passed through.
    let (greeting, _) = tls_open(addr, "db.internal.test", &inner_cert)
        .await
        .expect("passed through to the inner backend");
    assert_eq!(greeting, "inner db.internal.test");
    // The broader listener still serves the names no more specific listener has.
    // (The grabber's own certificate, trusted here, is for *.internal.test: the handshake
    // reaching it fails on the name, which shows whose it was.)
    let err = tls_open(addr, "else.test", &grab_cert)
        .await
        .expect_err("the grabber presents its own certificate");
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
    // Terminated with the gateway's certificate: the backend gets the plaintext.
    let (greeting, mut conn) = tls_open(addr, "term.example.com", &gw_cert)
        .await
        .expect("terminated by the gateway");
    assert_eq!(
        greeting, "plain",
        "a plain TCP backend greets with its name only"
    );
    conn.get_mut()
        .write_all(b"inside TLS\n")
        .await
        .expect("write");
    let mut back = String::new();
    conn.read_line(&mut back).await.expect("read");
    assert_eq!(back, "inside TLS\n");
    let (greeting, _) = tls_open(addr, "tcp.example.com", &gw_cert)
        .await
        .expect("terminated for the TCPRoute");
    assert_eq!(greeting, "whole");
}

#[tokio::test]
async fn a_backend_that_asks_for_the_proxy_protocol_is_told_the_client_first() {
    use tokio::net::TcpListener;
    let ip = loopback_ip();
    // The backend: a socket of this test, reading what the gateway sends first.
    let backend = TcpListener::bind((ip, free_port(ip))).await.expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    let port = free_port(ip);
    let text = format!(
        "{}{}{}
---
apiVersion: portico.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: pp, namespace: default}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: db}}]
  connection: {{proxyProtocol: V2}}
",
        gateway(&[port]),
        service("db", backend_addr),
        tcp_route("db", port, &[("db", 1)])
    );
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let mut client = TcpStream::connect(portico.addr(port))
        .await
        .expect("connect");
    client.write_all(b"hello").await.expect("write");
    let client_addr = client.local_addr().expect("client addr");
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), backend.accept())
        .await
        .expect("the gateway connects")
        .expect("accept");
    // 16 bytes of header, 12 of IPv4 addresses and ports, then the client's bytes.
    let mut got = vec![0u8; 16 + 12 + 5];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(
        &got[..12],
        b"\r\n\r\n\0\r\nQUIT\n",
        "the v2 signature first"
    );
    assert_eq!(&got[12..16], &[0x21, 0x11, 0x00, 0x0c]);
    let std::net::IpAddr::V4(client_ip) = client_addr.ip() else {
        panic!("IPv4 client");
    };
    assert_eq!(&got[16..20], &client_ip.octets(), "the client's address");
    assert_eq!(&got[20..24], &ip_octets(ip), "the gateway's address");
    assert_eq!(&got[24..26], &client_addr.port().to_be_bytes());
    assert_eq!(&got[26..28], &port.to_be_bytes(), "the listener's port");
    assert_eq!(&got[28..], b"hello");
}

fn ip_octets(ip: std::net::IpAddr) -> [u8; 4] {
    match ip {
        std::net::IpAddr::V4(a) => a.octets(),
        std::net::IpAddr::V6(_) => [0; 4],
    }
}

#[tokio::test]
async fn a_listener_at_its_connection_limit_refuses_more_while_others_serve() {
    let a = Echo::start_tcp("a");
    let ip = loopback_ip();
    let (busy, other) = (free_port(ip), free_port(ip));
    let text = format!(
        "{}{}{}{}",
        gateway(&[busy, other]),
        service("a", a.addr),
        tcp_route("busy", busy, &[("a", 1)]),
        tcp_route("other", other, &[("a", 1)])
    );
    let portico = Portico::start_on(
        ip,
        &[("config.yaml", &text)],
        &["--max-connections-per-listener", "2"],
    )
    .await;
    let first = Conn::open(portico.addr(busy)).await.expect("first");
    let second = Conn::open(portico.addr(busy)).await.expect("second");
    assert!(
        closed_at_once(portico.addr(busy)).await,
        "a third is refused"
    );
    // Another listener has places of its own.
    assert!(Conn::open(portico.addr(other)).await.is_some());
    let metrics = portico.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "portico_downstream_connections_refused_total{reason=\"max_connections_per_listener\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    // A place freed is a place taken again.
    drop(first);
    await_some("a freed place", || async {
        Conn::open(portico.addr(busy)).await.map(|_| ())
    })
    .await;
    drop(second);
}

#[tokio::test]
async fn a_backend_at_its_max_connections_refuses_more_and_least_request_sees_open_ones() {
    let (a, b) = (Echo::start_tcp("a"), Echo::start_tcp("b"));
    let ip = loopback_ip();
    let (limited, balanced) = (free_port(ip), free_port(ip));
    let two = format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: two, namespace: default, annotations: {{portico.dev/endpoints: \"{},{}\"}}}}
spec: {{ports: [{{port: 9000}}]}}
",
        a.addr, b.addr
    );
    let text = format!(
        "{}{}{two}{}{}
---
apiVersion: portico.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: one-at-a-time, namespace: default}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: a}}]
  circuitBreaker: {{maxConnections: 1}}
---
apiVersion: portico.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: least, namespace: default}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: two}}]
  loadBalancer: {{type: LeastRequest}}
",
        gateway(&[limited, balanced]),
        service("a", a.addr),
        tcp_route("limited", limited, &[("a", 1)]),
        tcp_route("balanced", balanced, &[("two", 1)])
    );
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let first = Conn::open(portico.addr(limited)).await.expect("first");
    assert!(
        closed_at_once(portico.addr(limited)).await,
        "a second connection to the backend is refused"
    );
    let metrics = portico.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "portico_tcp_connections_closed_total{reason=\"max_connections_to_backend\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("limit=\"maxConnections\"} 1"),
        "counted as the circuit breaker's: {metrics}"
    );
    // Its place is free again once the first closes.
    drop(first);
    let mut again = await_some("a freed place", || async {
        Conn::open(portico.addr(limited)).await
    })
    .await;
    assert_eq!(again.echo("still").await, "still");

    // Least request (the default balancer): while one connection stays open to an endpoint,
    // each new one goes to the other, where round robin would alternate.
    let held = Conn::open(portico.addr(balanced)).await.expect("held");
    for i in 0..4 {
        let conn = Conn::open(portico.addr(balanced)).await.expect("balanced");
        assert_ne!(
            conn.name, held.name,
            "connection {i} went to the busy endpoint"
        );
        drop(conn);
        // Closed on the gateway's side too before the next (the limited one and `held`).
        await_some("the connection closed", || async {
            let metrics = portico.metrics().await;
            (metric(&metrics, "portico_tcp_connections") == Some(2.0)).then_some(())
        })
        .await;
    }
    drop((held, again));
}
