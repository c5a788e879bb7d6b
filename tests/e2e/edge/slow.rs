//! Silent and slow clients, and the connection caps. Each way of holding a connection for
//! free is closed by the gateway on its own, while normal traffic keeps being served.
//!
//! The gateway runs with short limits (seconds) so the suite is quick; the assertions are that
//! the gateway closes the connection, answers what it says it answers, and serves others
//! meanwhile, within the suite's generous deadline, never how fast.

use portico_tests::auth::{HOST, Setup, route, service_route};
use portico_tests::tls::gateway_with_cert;
use portico_tests::{Echo, Portico, free_port, loopback_ip, raw};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Longest the suite waits for the gateway to close a connection (its limits are 1–2 s).
const CLOSED_WITHIN: Duration = Duration::from_secs(15);

const SHORT_LIMITS: &[&str] = &[
    "--first-bytes-timeout-s",
    "1",
    "--header-read-timeout-s",
    "2",
    "--idle-timeout-s",
    "2",
    "--write-timeout-s",
    "2",
    "--body-min-rate",
    "1000",
    "--body-min-rate-grace-s",
    "1",
];

/// Reads until the peer closes; `false` if it was still open after [`CLOSED_WITHIN`].
async fn closed_by_peer(s: &mut (impl AsyncRead + Unpin)) -> bool {
    let mut buf = [0u8; 8192];
    let end = tokio::time::Instant::now() + CLOSED_WITHIN;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn normal_request_works(s: &Setup) {
    let r = raw::send(s.addr(), &raw::get("/ok", HOST, &[])).await;
    assert_eq!(r.status, 200, "normal traffic: {}", r.all);
}

#[tokio::test]
async fn silent_and_slow_clients_are_closed_and_others_are_served() {
    let s = Setup::start_with_args(&route("all", "/"), SHORT_LIMITS).await;
    let a = s.addr();
    // 1. Connects and says nothing.
    let mut silent = TcpStream::connect(a).await.expect("connect");
    // 2. Half an HTTP/2 preface.
    let mut half_preface = TcpStream::connect(a).await.expect("connect");
    half_preface
        .write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("write");
    // 3. A request head a byte at a time (slowloris).
    let mut slowloris = TcpStream::connect(a).await.expect("connect");
    let dribble = tokio::spawn(async move {
        let head = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n");
        slowloris.write_all(head.as_bytes()).await.expect("write");
        for i in 0..100 {
            let line = format!("X-{i}: {i}\r\n");
            if slowloris.write_all(line.as_bytes()).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        false
    });
    // 4. An HTTP/2 connection that sends its preface and settings, then nothing.
    let mut idle_h2 = TcpStream::connect(a).await.expect("connect");
    idle_h2
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("write");
    // Meanwhile, others are served.
    normal_request_works(&s).await;
    assert!(closed_by_peer(&mut silent).await, "silent connection");
    assert!(closed_by_peer(&mut half_preface).await, "half a preface");
    assert!(closed_by_peer(&mut idle_h2).await, "idle HTTP/2 connection");
    assert!(dribble.await.expect("join"), "slowloris head");
    normal_request_works(&s).await;
    let metrics = s.portico.metrics().await;
    for reason in ["first_bytes_timeout", "idle_timeout"] {
        assert!(
            metrics.contains(&format!(
                "portico_downstream_connections_closed_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_trickled_body_is_refused_and_a_reader_that_never_reads_is_dropped() {
    let s = Setup::start_with_args(&route("all", "/"), SHORT_LIMITS).await;
    let a = s.addr();
    // A POST trickling a few bytes a second: below the minimum rate once the grace is over.
    let mut c = TcpStream::connect(a).await.expect("connect");
    let head = format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100000\r\n\r\n");
    c.write_all(head.as_bytes()).await.expect("write");
    let (mut rd, mut wr) = c.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            if wr.write_all(b"xxxx").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(CLOSED_WITHIN, rd.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "trickled body: {text}");
    trickle.abort();

    // A client asks for 60 MB and reads none of it: the stalled write ends the connection.
    let mut reader = TcpStream::connect(a).await.expect("connect");
    let req = format!("GET /?size=60000000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    reader.write_all(req.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_secs(6)).await;
    normal_request_works(&s).await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let finished = tokio::time::timeout(CLOSED_WITHIN, async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(finished.is_ok(), "the connection was still open");
    assert!(
        total < 60_000_000,
        "the whole response was buffered for a reader that never read"
    );
    let metrics = s.portico.metrics().await;
    assert!(
        metrics.contains("portico_downstream_errors_total{reason=\"body_too_slow\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_tls_connection_idle_after_its_handshake_is_closed() {
    let echo = Echo::start("echo");
    let ip = loopback_ip();
    let port = free_port(ip);
    let (config, cert) = gateway_with_cert(
        &[format!(
            "{{name: https, port: {port}, protocol: HTTPS, hostname: tls.test, tls: {{certificateRefs: [{{name: cert}}]}}}}"
        )],
        echo.addr,
        &["tls.test"],
    );
    let p = Portico::start_on(ip, &[("gw.yaml", &config)], SHORT_LIMITS).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert.as_bytes()) {
        roots.add(c.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(p.addr(port)).await.expect("connect");
    let name = ServerName::try_from("tls.test").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    assert!(closed_by_peer(&mut tls).await, "idle TLS connection");
    // A TCP connection that never starts its handshake.
    let mut no_hello = TcpStream::connect(p.addr(port)).await.expect("connect");
    assert!(closed_by_peer(&mut no_hello).await, "no ClientHello");
}

/// A connection from `source`, with one request answered, then kept open (keep-alive).
async fn held_connection(source: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let sock = TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::new(source, 0)).ok()?;
    let mut s = sock.connect(to).await.ok()?;
    let req = format!("GET /held HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf[..n])
        .starts_with("HTTP/1.1 200")
        .then_some(s)
}

#[tokio::test]
async fn connection_caps_refuse_fast_per_source_and_in_total() {
    let s = Setup::start_with_args(
        &route("all", "/"),
        &[
            "--max-connections",
            "12",
            "--max-connections-per-source",
            "8",
        ],
    )
    .await;
    let a = s.addr();
    let one = loopback_ip();
    let two = loopback_ip();
    let mut from_one = Vec::new();
    for i in 0..8 {
        from_one.push(
            held_connection(one, a)
                .await
                .unwrap_or_else(|| panic!("connection {i} from one source")),
        );
    }
    assert!(
        held_connection(one, a).await.is_none(),
        "a ninth connection from one source is refused"
    );
    // Another source is still served, up to the total.
    let mut from_two = Vec::new();
    for i in 0..4 {
        from_two.push(
            held_connection(two, a)
                .await
                .unwrap_or_else(|| panic!("connection {i} from another source")),
        );
    }
    assert!(held_connection(two, a).await.is_none(), "over the total");
    // A place given back is a place for anyone.
    drop(from_one.pop());
    let back = portico_tests::await_some("a place after one closed", || async {
        held_connection(two, a).await
    })
    .await;
    let metrics = s.portico.metrics().await;
    for reason in ["max_connections_per_source", "max_connections"] {
        assert!(
            metrics.contains(&format!(
                "portico_downstream_connections_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {metrics}"
        );
    }
    drop((from_one, from_two, back));
}

#[tokio::test]
async fn a_stream_is_idle_only_when_neither_side_moves() {
    // The client keeps its request body open and quiet (as a gRPC client waiting for server
    // messages does) for longer than the idle timeout, while the server sends: not idle.
    // The backend answers with 8 chunks, one every 400 ms, without reading the request body.
    let tick = Duration::from_millis(400);
    let mut script: Vec<(Duration, &'static [u8])> = vec![(
        Duration::ZERO,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    )];
    script.extend(std::iter::repeat_n((tick, &b"5\r\ntick\n\r\n"[..]), 8));
    script.push((Duration::ZERO, b"0\r\n\r\n"));
    let backend = raw::scripted_backend(script).await;
    let docs = service_route("ticker", "ticks.test", backend);
    let s = Setup::start_with_args(&docs, SHORT_LIMITS).await;
    let mut c = TcpStream::connect(s.addr()).await.expect("connect");
    c.write_all(b"POST /stream HTTP/1.1\r\nHost: ticks.test\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(CLOSED_WITHIN, async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(5).any(|w| w == b"0\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(
        text.matches("tick").count(),
        8,
        "the whole stream arrived: {text}"
    );
}

#[tokio::test]
async fn a_backend_that_stops_reading_the_upload_is_given_up() {
    // The backend reads the head and a little, then neither reads nor answers: the upload
    // fills the sockets' buffers and nothing moves. Without a route timeout, the gateway
    // must not hold the client and the backend connection forever.
    let backend = raw::scripted_backend(vec![(Duration::from_secs(3600), b"")]).await;
    let docs = service_route("sink", "sink.test", backend);
    let s = Setup::start_with_args(&docs, SHORT_LIMITS).await;
    let c = TcpStream::connect(s.addr()).await.expect("connect");
    let (mut rd, mut wr) = c.into_split();
    let size = 64 << 20;
    let upload = tokio::spawn(async move {
        let head =
            format!("POST /up HTTP/1.1\r\nHost: sink.test\r\nContent-Length: {size}\r\n\r\n");
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..(size >> 16) {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(CLOSED_WITHIN, async {
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    upload.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 504"), "{text:?}");
}

#[tokio::test]
async fn an_http2_stream_whose_window_never_opens_closes_its_connection() {
    use http_body_util::BodyExt as _;
    // An h2c client that grants no flow-control window to its streams asks for a large
    // response and never reads it: the response cannot move, and the backend connection
    // behind it would be held for as long as the client likes.
    let s = Setup::start_with_args(&route("all", "/"), SHORT_LIMITS).await;
    let tcp = TcpStream::connect(s.addr()).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    let driver = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{HOST}/?size=1000000"))
        .body(http_body_util::Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response head");
    assert_eq!(resp.status(), 200);
    // The head came; the body never can. The gateway ends the connection on its own.
    let ended = tokio::time::timeout(CLOSED_WITHIN, driver).await;
    assert!(ended.is_ok(), "the connection was still open");
    let body = tokio::time::timeout(CLOSED_WITHIN, resp.into_body().collect()).await;
    assert!(matches!(body, Ok(Err(_))), "the body cannot have completed");
    normal_request_works(&s).await;
    let metrics = s.portico.metrics().await;
    assert!(
        metrics.contains("portico_downstream_connections_closed_total{reason=\"stalled_stream\"}"),
        "{metrics}"
    );
}
