//! The request path in-process: the dataplane applied from fixture snapshots on 127.0.0.1,
//! hyper echo backends in this process, real sockets between them. For behaviour of one
//! request; what needs processes (reloads by signal, drain on SIGTERM, the admin port of a
//! running binary) stays in `tests/e2e`.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use portico_dataplane::listen::ServerSettings;
use portico_dataplane::proxy::ProxySettings;
use portico_dataplane::{Dataplane, DataplaneSettings};
use portico_model::backend::{
    CircuitBreaker, HashOn, HealthCheck, LoadBalancer, Probe, Retry, SessionKind,
    SessionPersistence, SlowStart,
};
use portico_model::fixtures::*;
use portico_model::{
    BackendSettings, Filter, Header, HeaderModifier, ObjectRef, Redirect, RouteRetry, Snapshot,
    Timeouts,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// What a backend saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: http::HeaderMap,
}

/// An HTTP/1.1 backend in this process: answers 200 with `x-backend: <name>` and the path as
/// its body, recording each request; or, `hang`, never answers.
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections accepted.
    accepted: Arc<AtomicUsize>,
}

impl Backend {
    async fn start(name: &'static str, hang: bool) -> Self {
        Self::start_with(name, hang, true).await
    }

    /// `keep_alive: false`: every connection closes after one response.
    async fn start_with(name: &'static str, hang: bool, keep_alive: bool) -> Self {
        Self::start_full(name, hang, keep_alive, Duration::ZERO).await
    }

    /// Answers each request after `delay`.
    async fn start_slow(name: &'static str, delay: Duration) -> Self {
        Self::start_full(name, false, true, delay).await
    }

    async fn start_full(name: &'static str, hang: bool, keep_alive: bool, delay: Duration) -> Self {
        Self::start_gated(name, hang, keep_alive, delay, None).await
    }

    /// `gate`: each request is answered once the gate is open (true).
    async fn start_gated(
        name: &'static str,
        hang: bool,
        keep_alive: bool,
        delay: Duration,
        gate: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Self {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let accepted: Arc<AtomicUsize> = Arc::default();
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let record = record.clone();
                let gate = gate.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        let gate = gate.clone();
                        async move {
                            record.lock().push(Seen {
                                path: req.uri().path().to_string(),
                                headers: req.headers().clone(),
                            });
                            if hang {
                                std::future::pending::<()>().await;
                            }
                            if let Some(mut gate) = gate {
                                let _ = gate.wait_for(|open| *open).await;
                            }
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let body = Full::new(Bytes::from(req.uri().path().to_string()));
                            let mut resp = Response::new(body);
                            resp.headers_mut()
                                .insert("x-backend", http::HeaderValue::from_static(name));
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            accepted,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// A port free right now, never handed out before in this process, and below Linux's
/// ephemeral range (32768-60999), so no outgoing connection or port-0 listener of a test
/// running beside this one can take it before the dataplane binds it.
fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % COUNT;
    for _ in 0..COUNT {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FIRST + (start + k) % COUNT).expect("a port");
        if std::net::TcpListener::bind((LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

/// An HTTP/1.1 backend in this process on 127.0.0.1, answering each request with `answer`.
async fn http1_backend<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let answer = answer.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The dataplane serving `snapshot`, and the address of its one listener.
fn serve(snapshot: &Snapshot) -> (Dataplane, SocketAddr) {
    let dp = Dataplane::new(&DataplaneSettings {
        default_bind: LOCALHOST,
        proxy: ProxySettings {
            access_log: false,
            ..ProxySettings::default()
        },
        server: ServerSettings::default(),
        rate_limit_max_keys: 1000,
        cache_memory_bytes: 1 << 20,
    });
    let report = dp.apply(std::slice::from_ref(snapshot), snapshot.version);
    assert!(report.bind_failures.is_empty(), "{report:?}");
    assert!(report.warnings.is_empty(), "{report:?}");
    let port = snapshot.listeners[0].port;
    (dp, SocketAddr::new(LOCALHOST, port))
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

/// One request on a new connection, HTTP/1.1 or (`h2`) HTTP/2 with prior knowledge.
async fn send(addr: SocketAddr, h2: bool, req: Request<Full<Bytes>>) -> Answer {
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let resp = if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        tx.send_request(req).await.expect("h2 request")
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("handshake");
        tokio::spawn(conn);
        tx.send_request(req).await.expect("request")
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get(addr: SocketAddr, host: &str, path: &str) -> Answer {
    let req = Request::get(path)
        .header("host", host)
        .body(Full::default())
        .expect("request");
    send(addr, false, req).await
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn routes_by_precedence_and_modifies_headers_both_ways() {
    let (one, two) = (
        Backend::start("one", false).await,
        Backend::start("two", false).await,
    );
    let port = free_port();
    let mut catch_all = rule(vec![prefix("/")], vec![to("two", 80)]);
    catch_all.filters = vec![
        Filter::RequestHeaderModifier(HeaderModifier {
            set: vec![Header {
                name: "x-added".into(),
                value: "yes".into(),
            }],
            ..HeaderModifier::default()
        }),
        Filter::ResponseHeaderModifier(HeaderModifier {
            remove: vec!["x-backend".into()],
            ..HeaderModifier::default()
        }),
    ];
    let snap = Snapshot::test("gw")
        .with_listener(http_listener("http", port))
        .with_backend(backend("one", 80, &[one.addr]))
        .with_backend(backend("two", 80, &[two.addr]))
        .with_route(route(
            "web",
            "http",
            &["web.test"],
            vec![rule(vec![exact("/a")], vec![to("one", 80)]), catch_all],
        ));
    let (_dp, addr) = serve(&snap);

    let a = get(addr, "web.test", "/a").await;
    assert_eq!((a.status, header(&a, "x-backend")), (StatusCode::OK, "one"));
    assert!(
        !header(&a, "x-request-id").is_empty(),
        "every answer names its request"
    );
    let b = get(addr, "web.test", "/a/b").await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(
        header(&b, "x-backend"),
        "",
        "the response modifier removed it"
    );
    assert_eq!(&b.body[..], b"/a/b");
    let seen = two.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/a/b");
    assert_eq!(seen[0].headers["x-added"], "yes");
    assert_eq!(seen[0].headers["x-forwarded-host"], "web.test");
    assert_eq!(one.seen().len(), 1);
    // Another host: no route.
    assert_eq!(
        get(addr, "other.test", "/a").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn unusable_backends_answer_500_and_503_and_timeouts_504() {
    let hang = Backend::start("hang", true).await;
    let port = free_port();
    let mut slow = rule(vec![prefix("/slow")], vec![to("hang", 80)]);
    // Long enough for the request to reach the backend on a loaded machine.
    slow.timeouts = Timeouts {
        request_ms: Some(1000),
        backend_request_ms: None,
    };
    let snap = Snapshot::test("gw")
        .with_listener(http_listener("http", port))
        .with_backend(backend("empty", 80, &[]))
        .with_backend(backend("hang", 80, &[hang.addr]))
        .with_route(route(
            "web",
            "http",
            &[],
            vec![
                rule(
                    vec![prefix("/unresolved")],
                    vec![unresolved("no such Service")],
                ),
                rule(vec![prefix("/empty")], vec![to("empty", 80)]),
                slow,
            ],
        ));
    let (_dp, addr) = serve(&snap);
    let a = get(addr, "x.test", "/unresolved").await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(&a.body[..], b"this route has no usable backend\n");
    let a = get(addr, "x.test", "/empty").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&a.body[..], b"no healthy upstream\n");
    let a = get(addr, "x.test", "/slow").await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(hang.seen().len(), 1, "the backend got the request");
}

#[tokio::test]
async fn redirects_say_where_and_grpc_clients_get_grpc_statuses() {
    let port = free_port();
    let mut redirect = rule(vec![prefix("/old")], vec![]);
    redirect.filters = vec![Filter::RequestRedirect(Redirect {
        scheme: Some("https".into()),
        hostname: None,
        path: None,
        port: None,
        status_code: 301,
    })];
    let snap = Snapshot::test("gw")
        .with_listener(http_listener("http", port))
        .with_backend(backend("empty", 80, &[]))
        .with_route(route(
            "web",
            "http",
            &["web.test"],
            vec![
                redirect,
                rule(vec![prefix("/pkg.Echo")], vec![unresolved("missing")]),
                rule(vec![prefix("/pkg.Empty")], vec![to("empty", 80)]),
            ],
        ));
    let (_dp, addr) = serve(&snap);
    let a = get(addr, "web.test", "/old/page?q=1").await;
    assert_eq!(a.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(header(&a, "location"), "https://web.test/old/page?q=1");

    let grpc = async |path: &str| {
        let req = Request::post(format!("http://web.test{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .expect("request");
        send(addr, true, req).await
    };
    for (path, code) in [
        ("/pkg.Other/Say", "12"), // no route: UNIMPLEMENTED
        ("/pkg.Echo/Say", "14"),  // an invalid backendRef: UNAVAILABLE (GRPCRoute)
        ("/pkg.Empty/Say", "14"), // no endpoints: UNAVAILABLE
    ] {
        let a = grpc(path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(header(&a, "grpc-status"), code, "{path}");
        assert_eq!(header(&a, "content-type"), "application/grpc", "{path}");
        assert!(a.body.is_empty(), "trailers-only: {path}");
    }
}

/// A Gateway with nothing to serve (its only listener unprogrammable) still has a ready
/// dataplane: its pods must not hold up rollouts and node drains. No Gateway at all is not
/// ready.
#[tokio::test]
async fn a_gateway_with_nothing_to_serve_is_ready_and_no_gateway_is_not() {
    let dp = Dataplane::new(&DataplaneSettings {
        default_bind: LOCALHOST,
        proxy: ProxySettings::default(),
        server: ServerSettings::default(),
        rate_limit_max_keys: 10,
        cache_memory_bytes: 1 << 20,
    });
    assert!(!dp.ready(), "nothing applied yet");
    let empty = Snapshot {
        gateway: ObjectRef::new("default", "refused"),
        version: 1,
        ..Snapshot::default()
    };
    let report = dp.apply(std::slice::from_ref(&empty), 1);
    assert!(report.sockets.is_empty());
    assert!(dp.ready());
    dp.apply(&[], 2);
    assert!(!dp.ready());
}

#[tokio::test]
async fn a_new_snapshot_takes_over_on_the_same_socket() {
    let (one, two) = (
        Backend::start("one", false).await,
        Backend::start("two", false).await,
    );
    let port = free_port();
    let snap = |to_backend: &str, version: u64| Snapshot {
        version,
        ..Snapshot::test("gw")
            .with_listener(http_listener("http", port))
            .with_backend(backend("one", 80, &[one.addr]))
            .with_backend(backend("two", 80, &[two.addr]))
            .with_route(route(
                "web",
                "http",
                &[],
                vec![rule(vec![prefix("/")], vec![to(to_backend, 80)])],
            ))
    };
    let (dp, addr) = serve(&snap("one", 1));
    assert_eq!(header(&get(addr, "x.test", "/").await, "x-backend"), "one");
    let report = dp.apply(&[snap("two", 2)], 2);
    assert!(report.bind_failures.is_empty(), "{report:?}");
    assert_eq!(header(&get(addr, "x.test", "/").await, "x-backend"), "two");
    assert!(dp.shutdown(Duration::from_secs(1)).await, "drained");
}

#[tokio::test]
async fn a_change_that_would_give_a_socket_another_kind_is_refused_and_the_socket_serves_on() {
    let one = Backend::start("one", false).await;
    let port = free_port();
    let http = Snapshot {
        version: 1,
        ..Snapshot::test("gw")
            .with_listener(http_listener("http", port))
            .with_backend(backend("one", 80, &[one.addr]))
            .with_route(route(
                "web",
                "http",
                &[],
                vec![rule(vec![prefix("/")], vec![to("one", 80)])],
            ))
    };
    let (dp, addr) = serve(&http);
    // The same port as a TCP listener: it cannot be bound beside the HTTP socket, so the
    // change is refused whole, with what to do instead.
    let mut tcp = Snapshot {
        version: 2,
        ..Snapshot::test("gw")
    };
    tcp.listeners.push(portico_model::Listener {
        protocol: portico_model::Protocol::Tcp,
        ..http_listener("tcp", port)
    });
    let report = dp.apply(std::slice::from_ref(&tcp), 2);
    let why = report.bind_failures.get(&addr).cloned().unwrap_or_default();
    assert!(why.contains("remove the listener first"), "{report:?}");
    assert_eq!(header(&get(addr, "x.test", "/").await, "x-backend"), "one");
    assert!(dp.shutdown(Duration::from_secs(1)).await, "drained");
}

#[tokio::test]
async fn upstream_connections_are_reused_and_outlive_endpoint_updates() {
    let (one, two) = (
        Backend::start("one", false).await,
        Backend::start("two", false).await,
    );
    let closing = Backend::start_with("closing", false, false).await;
    let port = free_port();
    let snap = |endpoints: &[SocketAddr], version: u64| Snapshot {
        version,
        ..Snapshot::test("gw")
            .with_listener(http_listener("http", port))
            .with_backend(backend("web", 80, endpoints))
            .with_backend(backend("closing", 80, &[closing.addr]))
            .with_route(route(
                "web",
                "http",
                &[],
                vec![
                    rule(vec![prefix("/closing")], vec![to("closing", 80)]),
                    rule(vec![prefix("/")], vec![to("web", 80)]),
                ],
            ))
    };
    let (dp, addr) = serve(&snap(&[one.addr], 1));
    for _ in 0..5 {
        let a = get(addr, "x.test", "/").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(header(&a, "x-backend"), "one");
    }
    assert_eq!(
        one.accepted(),
        1,
        "one upstream connection for sequential requests"
    );

    // Another endpoint joins: "one" keeps its state, and so its connection.
    dp.apply(&[snap(&[one.addr, two.addr], 2)], 2);
    let mut answered = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..6 {
        let a = get(addr, "x.test", "/").await;
        assert_eq!(a.status, StatusCode::OK);
        *answered
            .entry(header(&a, "x-backend").to_string())
            .or_default() += 1;
    }
    assert_eq!(answered.get("one"), Some(&3), "{answered:?}");
    assert_eq!(answered.get("two"), Some(&3), "{answered:?}");
    assert_eq!(one.accepted(), 1, "the update kept one's connection");
    assert_eq!(two.accepted(), 1);

    // A backend that closes each connection after its answer costs a connection per
    // request, never a failed request.
    for _ in 0..3 {
        let a = get(addr, "x.test", "/closing").await;
        assert_eq!(a.status, StatusCode::OK);
    }
    assert_eq!(closing.accepted(), 3);
    assert!(dp.shutdown(Duration::from_secs(1)).await, "drained");
}

/// Least request: a slow endpoint piles up requests in flight, so it gets far fewer than the
/// half round robin would send it.
#[tokio::test]
async fn a_slow_endpoint_gets_fewer_requests() {
    let fast = Backend::start("fast", false).await;
    let slow = Backend::start_slow("slow", Duration::from_millis(50)).await;
    let port = free_port();
    let web = backend("web", 80, &[fast.addr, slow.addr]);
    let (_dp, addr) = serve(&web_snapshot(port, web, 1));
    load(addr, 16, 25, StatusCode::OK).await;
    let (f, s) = (fast.seen().len(), slow.seen().len());
    assert_eq!(f + s, 400);
    // Round robin: 200 each. Least request: the slow one gets what arrives while it has
    // fewer in flight than a random other, a small share.
    assert!(s < 80, "fast {f}, slow {s}");
}

/// `clients` concurrent clients, each sending `each` GETs to `addr` one after another; every
/// answer must be `status`.
async fn load(addr: SocketAddr, clients: usize, each: usize, status: StatusCode) {
    let clients: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..each {
                    assert_eq!(get(addr, "x.test", "/").await.status, status);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
}

/// A BackendPolicy's settings on backend `web`, the rest defaults.
fn with_settings(mut b: portico_model::Backend, s: BackendSettings) -> portico_model::Backend {
    b.settings = Some(BackendSettings {
        policy: ObjectRef::new("test", "web-policy"),
        ..s
    });
    b
}

/// A series of backend `test/web:80` in the metrics text (`name` may carry more labels
/// first: `..._total{backend="test/web:80",limit="maxRequests"}`).
fn series(dp: &Dataplane, name: &str) -> u64 {
    let metrics = dp.metrics_text();
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l.contains("backend=\"test/web:80\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {metrics}"))
}

/// One rule sending everything to backend `b` (`test/web:80`), on `port`.
fn web_snapshot(port: u16, b: portico_model::Backend, version: u64) -> Snapshot {
    Snapshot {
        version,
        ..Snapshot::test("gw")
            .with_listener(http_listener("http", port))
            .with_backend(b)
            .with_route(route(
                "web",
                "http",
                &[],
                vec![rule(vec![prefix("/")], vec![to("web", 80)])],
            ))
    }
}

/// A BackendPolicy's balancer replaces the default on the live pool: round robin gives the
/// slow endpoint its exact half, where least request gave it a small share.
#[tokio::test]
async fn a_policy_changes_the_balancer_of_a_live_backend() {
    let fast = Backend::start("fast", false).await;
    let slow = Backend::start_slow("slow", Duration::from_millis(20)).await;
    let port = free_port();
    let plain = backend("web", 80, &[fast.addr, slow.addr]);
    let round_robin = with_settings(
        plain.clone(),
        BackendSettings {
            load_balancer: LoadBalancer::RoundRobin,
            ..BackendSettings::default()
        },
    );
    let (dp, addr) = serve(&web_snapshot(port, plain, 1));
    load(addr, 8, 25, StatusCode::OK).await;
    let (f, s) = (fast.seen().len(), slow.seen().len());
    assert_eq!(f + s, 200);
    assert!(s < 60, "least request: fast {f}, slow {s}");
    let report = dp.apply(&[web_snapshot(port, round_robin, 2)], 2);
    assert!(report.warnings.is_empty(), "{report:?}");
    load(addr, 8, 25, StatusCode::OK).await;
    let (f2, s2) = (fast.seen().len() - f, slow.seen().len() - s);
    assert_eq!((f2, s2), (100, 100), "round robin: each its half");
}

/// With `maxRequests: 4`, four requests in flight take the backend's whole allowance: the
/// fifth is answered 503 at once, told apart from "no endpoints" by `x-portico-overloaded`
/// and counted; once the four end, requests pass again.
#[tokio::test]
async fn a_circuit_breaker_answers_over_its_limit_at_once() {
    let (open, gate) = tokio::sync::watch::channel(false);
    let web = Backend::start_gated("web", false, true, Duration::ZERO, Some(gate)).await;
    let port = free_port();
    let b = with_settings(
        backend("web", 80, &[web.addr]),
        BackendSettings {
            circuit_breaker: CircuitBreaker {
                max_requests: Some(4),
                ..CircuitBreaker::default()
            },
            ..BackendSettings::default()
        },
    );
    let (dp, addr) = serve(&web_snapshot(port, b, 1));
    let held: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(addr, "x.test", "/").await.status }))
        .collect();
    while web.seen().len() < 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let over = get(addr, "x.test", "/").await;
    assert_eq!(over.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&over, "x-portico-overloaded"), "maxRequests");
    assert_eq!(web.seen().len(), 4, "never sent");
    assert_eq!(
        series(
            &dp,
            "portico_upstream_overloaded_total{backend=\"test/web:80\",limit=\"maxRequests\"}"
        ),
        1
    );
    open.send_replace(true);
    for h in held {
        assert_eq!(h.await.expect("held request"), StatusCode::OK);
    }
    // The permits went with the response bodies.
    for _ in 0..8 {
        assert_eq!(get(addr, "x.test", "/").await.status, StatusCode::OK);
    }
}

/// `maxConnections`: with two connections busy, a third request waits for one (it is one of
/// `maxPendingRequests`), a fourth is refused at once, and a waiting request that gets no
/// connection within the connect timeout is refused for the connection limit. The backend
/// never sees more than two connections.
#[tokio::test]
async fn a_connection_limit_queues_a_bounded_number_of_requests() {
    let (open, gate) = tokio::sync::watch::channel(false);
    let web = Backend::start_gated("web", false, true, Duration::ZERO, Some(gate)).await;
    let port = free_port();
    let b = with_settings(
        backend("web", 80, &[web.addr]),
        BackendSettings {
            circuit_breaker: CircuitBreaker {
                max_connections: Some(2),
                max_pending_requests: Some(1),
                ..CircuitBreaker::default()
            },
            connection: portico_model::backend::Connection {
                connect_timeout_ms: Some(300),
                ..portico_model::backend::Connection::default()
            },
            ..BackendSettings::default()
        },
    );
    let (dp, addr) = serve(&web_snapshot(port, b, 1));
    let overloaded = |limit: &str| {
        series(
            &dp,
            &format!(
                "portico_upstream_overloaded_total{{backend=\"test/web:80\",limit=\"{limit}\"}}"
            ),
        )
    };
    let spawn = || tokio::spawn(async move { get(addr, "x.test", "/").await.status });
    let held = [spawn(), spawn()];
    while web.seen().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiting = spawn();
    // Once the third request waits in the one pending place, the next is refused at once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let over = get(addr, "x.test", "/").await;
    assert_eq!(over.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&over, "x-portico-overloaded"), "maxPendingRequests");
    // Nobody frees a connection within 300 ms: the waiting request is refused too.
    assert_eq!(
        waiting.await.expect("waiting"),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(overloaded("maxConnections"), 1);
    assert!(overloaded("maxPendingRequests") >= 1);
    assert_eq!(web.accepted(), 2, "never more than two connections");

    // Once the backend answers, a waiting request takes a freed connection.
    let waiting = spawn();
    tokio::time::sleep(Duration::from_millis(50)).await;
    open.send_replace(true);
    for h in held {
        assert_eq!(h.await.expect("held request"), StatusCode::OK);
    }
    assert_eq!(waiting.await.expect("waiting"), StatusCode::OK);
    for _ in 0..6 {
        assert_eq!(get(addr, "x.test", "/").await.status, StatusCode::OK);
    }
    assert_eq!(web.accepted(), 2, "the freed connections were reused");
}

/// At the connection limit, a request to an endpoint without an idle connection closes an
/// idle connection to another endpoint to make room, rather than wait.
#[tokio::test]
async fn a_connection_limit_closes_an_idle_connection_elsewhere_to_make_room() {
    let a = Backend::start("a", false).await;
    let b = Backend::start("b", false).await;
    let port = free_port();
    let settings = BackendSettings {
        load_balancer: LoadBalancer::RoundRobin,
        circuit_breaker: CircuitBreaker {
            max_connections: Some(1),
            max_pending_requests: Some(0),
            ..CircuitBreaker::default()
        },
        ..BackendSettings::default()
    };
    let (_dp, addr) = serve(&web_snapshot(
        port,
        with_settings(backend("web", 80, &[a.addr, b.addr]), settings),
        1,
    ));
    let mut by = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..6 {
        let r = get(addr, "x.test", "/").await;
        assert_eq!(r.status, StatusCode::OK);
        *by.entry(header(&r, "x-backend").to_string()).or_default() += 1;
    }
    assert_eq!((by.get("a"), by.get("b")), (Some(&3), Some(&3)), "{by:?}");
    // Each request found the other endpoint's connection idle and closed it.
    assert_eq!(a.accepted() + b.accepted(), 6);
}

/// `retry.onConnectFailure: false`: a refused connection is the client's 503, not a retry.
#[tokio::test]
async fn connect_failures_are_not_retried_when_the_policy_says_so() {
    let one = Backend::start("one", false).await;
    let dead = SocketAddr::new(LOCALHOST, free_port());
    let port = free_port();
    let b = with_settings(
        backend("web", 80, &[one.addr, dead]),
        BackendSettings {
            load_balancer: LoadBalancer::RoundRobin,
            retry: Retry {
                on_connect_failure: false,
                ..Retry::default()
            },
            ..BackendSettings::default()
        },
    );
    let (dp, addr) = serve(&web_snapshot(port, b, 1));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(addr, "x.test", "/").await.status.as_u16());
    }
    statuses.sort_unstable();
    // Round robin over two endpoints: two of four meet the dead one (fewer than the five
    // refusals in a row that would eject it).
    assert_eq!(statuses, [200, 200, 503, 503]);
    assert_eq!(series(&dp, "portico_upstream_retries_total"), 0, "no retry");
}

/// A backend that answers `status` to its first `fail_first` requests (all of them when
/// `None`), 200 after, recording each request's body.
struct Flaky {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Flaky {
    async fn start(status: StatusCode, fail_first: Option<usize>) -> Self {
        let bodies: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let record = bodies.clone();
        let addr = http1_backend(move |req: Request<Incoming>| {
            let record = record.clone();
            async move {
                let body = req.into_body().collect().await.map(|c| c.to_bytes());
                let n = {
                    let mut seen = record.lock();
                    seen.push(body.unwrap_or_default());
                    seen.len()
                };
                let failing = fail_first.is_none_or(|k| n <= k);
                let mut resp = Response::new(Full::new(Bytes::from(format!("{n}"))));
                if failing {
                    *resp.status_mut() = status;
                }
                resp
            }
        })
        .await;
        Self { addr, bodies }
    }

    fn hits(&self) -> usize {
        self.bodies.lock().len()
    }
}

/// A rule with `retry` in front of backend `web` (`b`).
fn retry_snapshot(port: u16, b: portico_model::Backend, retry: RouteRetry) -> Snapshot {
    let mut r = rule(vec![prefix("/")], vec![to("web", 80)]);
    r.retry = Some(retry);
    Snapshot::test("gw")
        .with_listener(http_listener("http", port))
        .with_backend(b)
        .with_route(route("web", "http", &[], vec![r]))
}

fn with_body(
    addr: SocketAddr,
    method: http::Method,
    body: Bytes,
) -> impl std::future::Future<Output = Answer> {
    let req = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "x.test")
        .body(Full::new(body))
        .expect("request");
    send(addr, false, req)
}

/// HTTPRoute `retry`: a status it names is retried (the body sent again, byte for byte), up
/// to `attempts` retries; a status it does not name, a body too large to keep, and a POST
/// (not idempotent) are not.
#[tokio::test]
async fn a_route_retries_the_statuses_it_names_with_the_body_replayed() {
    let retry = RouteRetry {
        codes: vec![503],
        attempts: 2,
        backoff_ms: 1,
    };
    // Fails twice, then answers: the second retry gets through.
    let flaky = Flaky::start(StatusCode::SERVICE_UNAVAILABLE, Some(2)).await;
    let port = free_port();
    let (_dp, addr) = serve(&retry_snapshot(
        port,
        backend("web", 80, &[flaky.addr]),
        retry.clone(),
    ));
    let body = Bytes::from(vec![b'x'; 40_000]);
    let a = with_body(addr, http::Method::PUT, body.clone()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(flaky.hits(), 3);
    assert!(
        flaky.bodies.lock().iter().all(|b| *b == body),
        "every attempt had the body"
    );

    // Always failing: one try and two retries, then the backend's own answer.
    let down = Flaky::start(StatusCode::SERVICE_UNAVAILABLE, None).await;
    let port = free_port();
    let (_dp2, addr) = serve(&retry_snapshot(
        port,
        backend("web", 80, &[down.addr]),
        retry.clone(),
    ));
    assert_eq!(
        get(addr, "x.test", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(down.hits(), 3);
    // A body over 64 KiB is not kept, so not retried.
    let a = with_body(addr, http::Method::PUT, Bytes::from(vec![b'y'; 70_000])).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.hits(), 4);
    // A POST may have been acted on: tried once.
    let a = with_body(addr, http::Method::POST, Bytes::from_static(b"order")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.hits(), 5);

    // A status the route does not name is the answer.
    let other = Flaky::start(StatusCode::INTERNAL_SERVER_ERROR, Some(1)).await;
    let port = free_port();
    let (_dp3, addr) = serve(&retry_snapshot(
        port,
        backend("web", 80, &[other.addr]),
        retry,
    ));
    assert_eq!(
        get(addr, "x.test", "/").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(other.hits(), 1);
}

/// HTTPRoute `retry` also covers what is not a status (the suite's
/// `HTTPRouteRetryConnectionError` and `HTTPRouteRetryBackendTimeout`, which have no test of
/// their own): an exchange the backend breaks off (it read the request and closed), and an
/// attempt past the rule's `timeouts.backendRequest`, are retried on the next endpoint.
#[tokio::test]
async fn a_route_retries_broken_exchanges_and_backend_timeouts() {
    let retry = RouteRetry {
        codes: vec![],
        attempts: 1,
        backoff_ms: 1,
    };
    // Reads the request, then closes without a word.
    let closer = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let closer_addr = closer.local_addr().expect("addr");
    let broken = Arc::new(AtomicUsize::new(0));
    let counted = broken.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = closer.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
                    .await
                    .is_ok_and(|n| n > 0)
                {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let good = Backend::start("good", false).await;
    let port = free_port();
    let (_dp, addr) = serve(&retry_snapshot(
        port,
        backend("web", 80, &[closer_addr, good.addr]),
        retry.clone(),
    ));
    for _ in 0..4 {
        let a = get(addr, "x.test", "/").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(header(&a, "x-backend"), "good");
    }
    assert!(
        broken.load(Ordering::Relaxed) > 0,
        "the closing endpoint had requests"
    );

    // One endpoint never answers: past the rule's backend timeout the other one does.
    let hang = Backend::start("hang", true).await;
    let port = free_port();
    let mut snapshot = retry_snapshot(port, backend("web", 80, &[hang.addr, good.addr]), retry);
    for route in &mut snapshot.routes {
        for rule in &mut route.rules {
            rule.timeouts.backend_request_ms = Some(200);
        }
    }
    let (_dp2, addr) = serve(&snapshot);
    for _ in 0..4 {
        let a = get(addr, "x.test", "/").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(header(&a, "x-backend"), "good");
    }
    assert!(!hang.seen().is_empty(), "the hanging endpoint was tried");
}

/// A BackendPolicy's retry applies to the rules that have none of their own: its statuses
/// are retried, and an attempt past its per-try timeout moves on to another endpoint; a
/// rule's own `retry` replaces it whole.
#[tokio::test]
async fn a_policy_retries_statuses_and_slow_attempts_for_rules_without_their_own() {
    let flaky = Flaky::start(StatusCode::BAD_GATEWAY, Some(1)).await;
    let policy = BackendSettings {
        retry: Retry {
            rules: Some(RouteRetry {
                codes: vec![502],
                attempts: 2,
                backoff_ms: 1,
            }),
            per_try_timeout_ms: Some(200),
            ..Retry::default()
        },
        ..BackendSettings::default()
    };
    let port = free_port();
    let (_dp, addr) = serve(&web_snapshot(
        port,
        with_settings(backend("web", 80, &[flaky.addr]), policy.clone()),
        1,
    ));
    assert_eq!(get(addr, "x.test", "/").await.status, StatusCode::OK);
    assert_eq!(flaky.hits(), 2, "the 502 was retried");

    // One endpoint never answers: each request waits 200 ms there at most, then the other
    // endpoint answers it.
    let hang = Backend::start("hang", true).await;
    let good = Backend::start("good", false).await;
    let port = free_port();
    let (_dp2, addr) = serve(&web_snapshot(
        port,
        with_settings(backend("web", 80, &[hang.addr, good.addr]), policy.clone()),
        1,
    ));
    for _ in 0..4 {
        let a = get(addr, "x.test", "/").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(header(&a, "x-backend"), "good");
    }
    assert!(!hang.seen().is_empty(), "the hanging endpoint was tried");

    // A rule's own retry replaces the policy's: 502 is not among its codes.
    let other = Flaky::start(StatusCode::BAD_GATEWAY, Some(1)).await;
    let port = free_port();
    let (_dp3, addr) = serve(&retry_snapshot(
        port,
        with_settings(backend("web", 80, &[other.addr]), policy),
        RouteRetry {
            codes: vec![503],
            attempts: 2,
            backoff_ms: 1,
        },
    ));
    assert_eq!(
        get(addr, "x.test", "/").await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(other.hits(), 1);
}

/// Against a backend that fails every request, the retry budget holds what it receives to
/// its share: with 20 % and no steady floor, 500 requests each allowed three retries make
/// at most 1.2 × 500 upstream requests (without the budget: 2000).
#[tokio::test]
async fn the_retry_budget_bounds_amplification_against_a_failing_backend() {
    let down = Flaky::start(StatusCode::SERVICE_UNAVAILABLE, None).await;
    let port = free_port();
    let b = with_settings(
        backend("web", 80, &[down.addr]),
        BackendSettings {
            retry: Retry {
                budget_percent: 20,
                budget_min_per_second: 0,
                ..Retry::default()
            },
            ..BackendSettings::default()
        },
    );
    let retry = RouteRetry {
        codes: vec![503],
        attempts: 3,
        backoff_ms: 0,
    };
    let (dp, addr) = serve(&retry_snapshot(port, b, retry));
    load(addr, 4, 125, StatusCode::SERVICE_UNAVAILABLE).await;
    let upstream = down.hits();
    assert!(upstream <= 600, "{upstream} upstream requests for 500");
    assert!(upstream >= 580, "the budget is used: {upstream}");
    assert!(series(&dp, "portico_upstream_retry_budget_exhausted_total") > 0);
}

/// A backend whose `/healthz` answers 200 while `healthy` holds and 503 after; every other
/// path 200 with `x-backend: <name>`.
async fn health_backend(
    name: &'static str,
    healthy: Arc<std::sync::atomic::AtomicBool>,
) -> SocketAddr {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let healthy = healthy.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let healthy = healthy.clone();
                    async move {
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        if req.uri().path() == "/healthz" {
                            if !healthy.load(Ordering::Relaxed) {
                                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            }
                        } else {
                            resp.headers_mut()
                                .insert("x-backend", http::HeaderValue::from_static(name));
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Active HTTP health checks: an endpoint whose health check fails is passed over, though
/// it still answers requests; it is back once the check passes again.
#[tokio::test]
async fn an_endpoint_failing_its_health_checks_gets_no_requests_until_it_passes() {
    use std::sync::atomic::AtomicBool;
    let a_ok = Arc::new(AtomicBool::new(true));
    let a = health_backend("a", a_ok.clone()).await;
    let b = health_backend("b", Arc::new(AtomicBool::new(true))).await;
    let port = free_port();
    let web = with_settings(
        backend("web", 80, &[a, b]),
        BackendSettings {
            load_balancer: LoadBalancer::RoundRobin,
            health_check: Some(HealthCheck {
                probe: Probe::Http {
                    method: "GET".into(),
                    path: "/healthz".into(),
                    host: None,
                    expected: vec![(200, 299)],
                },
                interval_ms: 50,
                timeout_ms: 1000,
                unhealthy_threshold: 2,
                healthy_threshold: 2,
            }),
            ..BackendSettings::default()
        },
    );
    let (dp, addr) = serve(&web_snapshot(port, web, 1));
    let answered_by = |n: usize| async move {
        let mut by = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..n {
            let r = get(addr, "x.test", "/").await;
            assert_eq!(r.status, StatusCode::OK);
            *by.entry(header(&r, "x-backend").to_string()).or_default() += 1;
        }
        by
    };
    // Both healthy: round robin over both.
    let by = answered_by(10).await;
    assert_eq!((by.get("a"), by.get("b")), (Some(&5), Some(&5)), "{by:?}");
    a_ok.store(false, Ordering::Relaxed);
    // Out after two failed probes: wait until the gauge says so, then only b answers.
    let gauge = || series(&dp, "portico_upstream_endpoints_unhealthy");
    let mut waited = 0;
    while gauge() != 1 {
        assert!(waited < 400, "a never went out");
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += 1;
    }
    let by = answered_by(10).await;
    assert_eq!(by.get("a"), None, "{by:?}");
    assert!(
        series(
            &dp,
            "portico_upstream_health_checks_total{backend=\"test/web:80\",result=\"failed\"}"
        ) >= 2
    );
    a_ok.store(true, Ordering::Relaxed);
    let mut waited = 0;
    while gauge() != 0 {
        assert!(waited < 400, "a never came back");
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += 1;
    }
    let by = answered_by(10).await;
    assert_eq!((by.get("a"), by.get("b")), (Some(&5), Some(&5)), "{by:?}");
}

/// Slow start: an endpoint that joins a live backend gets a small share of requests at
/// first (round robin would give it a third), and all of it once its window is over.
#[tokio::test(start_paused = true)]
async fn a_new_endpoint_is_ramped_up_by_slow_start() {
    let a = Backend::start("a", false).await;
    let b = Backend::start("b", false).await;
    let new = Backend::start("new", false).await;
    let settings = BackendSettings {
        load_balancer: LoadBalancer::RoundRobin,
        slow_start: Some(SlowStart {
            window_ms: 60_000,
            min_weight_percent: 10,
        }),
        ..BackendSettings::default()
    };
    let snap = |addrs: &[SocketAddr], version| {
        web_snapshot(
            80,
            with_settings(backend("web", 80, addrs), settings.clone()),
            version,
        )
    };
    let port = free_port();
    let (dp, addr) = serve(&Snapshot {
        listeners: vec![http_listener("http", port)],
        ..snap(&[a.addr, b.addr], 1)
    });
    let report = dp.apply(
        &[Snapshot {
            listeners: vec![http_listener("http", port)],
            ..snap(&[a.addr, b.addr, new.addr], 2)
        }],
        2,
    );
    assert!(report.warnings.is_empty(), "{report:?}");
    let share = |n: usize| async move {
        let mut to_new = 0;
        for _ in 0..n {
            let r = get(addr, "x.test", "/").await;
            assert_eq!(r.status, StatusCode::OK);
            to_new += usize::from(header(&r, "x-backend") == "new");
        }
        to_new
    };
    // At the start of its window: about a tenth of its third (10 of 300); a third is 100.
    let early = share(300).await;
    assert!((1..=40).contains(&early), "{early} of 300 at first");
    // Past the window (paused time moves on when idle), it is an endpoint like the others.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let late = share(300).await;
    assert!((90..=110).contains(&late), "{late} of 300 once warm");
    eprintln!(
        "slow start: the new endpoint got {early} of 300 requests at first, {late} once warm"
    );
}

/// Consistent hashing: the same key reaches the same endpoint through two replicas (two
/// dataplanes with the same snapshot), and when one endpoint of ten goes, the keys it held
/// move and almost no other key does.
#[tokio::test]
async fn consistent_hashing_agrees_across_replicas_and_moves_few_keys() {
    const NAMES: [&str; 10] = ["e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9"];
    let mut backends = Vec::new();
    for name in NAMES {
        backends.push(Backend::start(name, false).await);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let settings = BackendSettings {
        load_balancer: LoadBalancer::ConsistentHash,
        hash_on: Some(HashOn::Header("x-user".into())),
        ..BackendSettings::default()
    };
    let snap = |port: u16, addrs: &[SocketAddr], version: u64| {
        web_snapshot(
            port,
            with_settings(backend("web", 80, addrs), settings.clone()),
            version,
        )
    };
    let (port_a, port_b) = (free_port(), free_port());
    let (a, addr_a) = serve(&snap(port_a, &addrs, 1));
    let (_b, addr_b) = serve(&snap(port_b, &addrs, 1));
    let owner = |addr: SocketAddr, user: String| async move {
        let req = Request::get("/")
            .header("host", "x.test")
            .header("x-user", user)
            .body(Full::default())
            .expect("request");
        let r = send(addr, false, req).await;
        assert_eq!(r.status, StatusCode::OK);
        header(&r, "x-backend").to_string()
    };
    let keys = 200;
    let mut before = Vec::new();
    for k in 0..keys {
        let via_a = owner(addr_a, format!("user-{k}")).await;
        let via_b = owner(addr_b, format!("user-{k}")).await;
        assert_eq!(via_a, via_b, "user-{k}: replicas agree");
        before.push(via_a);
    }
    // Spread over the endpoints, not stuck on one.
    let distinct: std::collections::BTreeSet<&String> = before.iter().collect();
    assert!(distinct.len() >= 8, "{distinct:?}");
    // e3 leaves.
    let fewer: Vec<SocketAddr> = addrs.iter().copied().filter(|x| *x != addrs[3]).collect();
    let report = a.apply(&[snap(port_a, &fewer, 2)], 2);
    assert!(report.warnings.is_empty(), "{report:?}");
    let mut moved_elsewhere = 0;
    for (k, was) in before.iter().enumerate() {
        let now = owner(addr_a, format!("user-{k}")).await;
        if was == "e3" {
            assert_ne!(now, "e3");
        } else if now != *was {
            moved_elsewhere += 1;
        }
    }
    // Maglev moves a few keys besides the removed endpoint's (at most a few percent).
    assert!(
        moved_elsewhere <= keys / 20,
        "{moved_elsewhere} of {keys} moved needlessly"
    );
    // A request without the key is still served.
    assert_eq!(get(addr_a, "x.test", "/").await.status, StatusCode::OK);
}

/// An endpoint that refuses connections (a pod killed before its EndpointSlice says so): no
/// request fails, each is sent to another endpoint, and after five refusals in a row the
/// endpoint is ejected, so it costs nothing more; it is back in balancing after its
/// ejection time.
#[tokio::test(start_paused = true)]
async fn a_dead_endpoint_costs_no_failed_request_and_is_ejected() {
    let (one, two) = (
        Backend::start("one", false).await,
        Backend::start("two", false).await,
    );
    // Bound and closed: connections to it are refused.
    let dead = SocketAddr::new(LOCALHOST, free_port());
    let port = free_port();
    let snap = Snapshot::test("gw")
        .with_listener(http_listener("http", port))
        .with_backend(backend("web", 80, &[one.addr, dead, two.addr]))
        .with_route(route(
            "web",
            "http",
            &[],
            vec![rule(vec![prefix("/")], vec![to("web", 80)])],
        ));
    let (dp, addr) = serve(&snap);
    let mut answered = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..60 {
        let a = get(addr, "x.test", "/").await;
        assert_eq!(a.status, StatusCode::OK, "no request fails");
        *answered
            .entry(header(&a, "x-backend").to_string())
            .or_default() += 1;
    }
    assert_eq!(answered.values().sum::<usize>(), 60, "{answered:?}");
    let metrics = dp.metrics_text();
    // Round robin sends every third request to the dead one until it is out: five
    // refusals, five retries, one ejection.
    assert_eq!(
        series(&dp, "portico_upstream_endpoint_ejections_total"),
        1,
        "{metrics}"
    );
    assert_eq!(
        series(&dp, "portico_upstream_retries_total"),
        5,
        "{metrics}"
    );
    assert_eq!(
        series(
            &dp,
            "portico_upstream_errors_total{backend=\"test/web:80\",reason=\"connect_refused\"}"
        ),
        5,
        "{metrics}"
    );
    // The ejection ends after its 30 s; the endpoint is tried again, and ejected again (for
    // twice as long) after five more refusals, still with no failed request.
    tokio::time::sleep(Duration::from_secs(31)).await;
    for _ in 0..30 {
        let a = get(addr, "x.test", "/").await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let metrics = dp.metrics_text();
    let ejections = metrics
        .lines()
        .find(|l| l.starts_with("portico_upstream_endpoint_ejections_total"))
        .unwrap_or_default()
        .to_string();
    assert!(ejections.ends_with(" 2"), "{metrics}");
}

/// Paused time: the minute a backend gets to answer passes in no real time, and the tokio
/// clock (which every deadline in the request path reads) says exactly how long it was.
#[tokio::test(start_paused = true)]
async fn a_backend_that_never_answers_gets_the_idle_timeout_then_504() {
    let hang = Backend::start("hang", true).await;
    let port = free_port();
    let mut bounded = rule(vec![prefix("/bounded")], vec![to("hang", 80)]);
    bounded.timeouts = Timeouts {
        request_ms: None,
        backend_request_ms: Some(1_500),
    };
    let snap = Snapshot::test("gw")
        .with_listener(http_listener("http", port))
        .with_backend(backend("hang", 80, &[hang.addr]))
        .with_route(route(
            "web",
            "http",
            &[],
            vec![bounded, rule(vec![prefix("/")], vec![to("hang", 80)])],
        ));
    let (_dp, addr) = serve(&snap);
    let idle = ProxySettings::default().body.idle_timeout;

    let started = tokio::time::Instant::now();
    let a = get(addr, "x.test", "/unbounded").await;
    let waited = started.elapsed();
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        waited >= idle && waited < idle + Duration::from_secs(1),
        "a route without timeouts waits the idle timeout for an answer, waited {waited:?}"
    );

    let started = tokio::time::Instant::now();
    let a = get(addr, "x.test", "/bounded").await;
    let waited = started.elapsed();
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        waited >= Duration::from_millis(1_500) && waited < Duration::from_secs(2),
        "backendRequest bounds it, waited {waited:?}"
    );
    assert_eq!(hang.seen().len(), 2, "the backend got both requests");
}

/// Ten endpoints `s0..s9` of backend `test/web:80`, and a snapshot factory for them whose
/// key every replica shares.
async fn session_backends() -> (Vec<Backend>, Vec<SocketAddr>) {
    const NAMES: [&str; 10] = ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"];
    let mut backends = Vec::new();
    for name in NAMES {
        backends.push(Backend::start(name, false).await);
    }
    let addrs = backends.iter().map(|b| b.addr).collect();
    (backends, addrs)
}

fn cookie_session(name: &str) -> SessionPersistence {
    SessionPersistence {
        kind: SessionKind::Cookie,
        name: name.into(),
        absolute_timeout_ms: None,
        idle_timeout_ms: None,
        permanent: false,
    }
}

/// A shared key, as the controller stamps it on every replica's snapshot.
fn keyed(mut s: Snapshot) -> Snapshot {
    s.session_key = Some(portico_model::auth::Sensitive(
        "c2Vzc2lvbi1rZXktZm9yLXRoZS10ZXN0LXJlcGxpY2E=".into(),
    ));
    s
}

/// `GET /` with `extra` headers; the backend that answered, and the whole answer.
async fn get_with(addr: SocketAddr, extra: &[(&str, &str)]) -> (String, Answer) {
    let mut req = Request::get("/app/page").header("host", "x.test");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let a = send(addr, false, req.body(Full::default()).expect("request")).await;
    assert_eq!(a.status, StatusCode::OK);
    (header(&a, "x-backend").to_string(), a)
}

/// The `name=value` part of the answer's Set-Cookie, if any.
fn set_cookie(a: &Answer) -> Option<String> {
    let v = a.headers.get(http::header::SET_COOKIE)?.to_str().ok()?;
    Some(v.split(';').next()?.to_string())
}

/// Session persistence on a route rule: the cookie of a first request pins the client to
/// its endpoint through two replicas (each told the same key), with no state shared
/// between them; a forged, altered or foreign cookie picks nothing; and when the pinned
/// endpoint leaves, the balancer picks again and a new session starts.
#[tokio::test]
async fn a_session_cookie_pins_a_client_through_two_replicas_and_cannot_be_forged() {
    let (_backends, addrs) = session_backends().await;
    let snap = |port: u16, addrs: &[SocketAddr], version: u64| {
        let mut r = rule(vec![prefix("/app")], vec![to("web", 80)]);
        r.session_persistence = Some(cookie_session("sticky"));
        keyed(Snapshot {
            version,
            ..Snapshot::test("gw")
                .with_listener(http_listener("http", port))
                .with_backend(backend("web", 80, addrs))
                .with_route(route("web", "http", &[], vec![r]))
        })
    };
    let (port_a, port_b) = (free_port(), free_port());
    let (a, addr_a) = serve(&snap(port_a, &addrs, 1));
    let (_b, addr_b) = serve(&snap(port_b, &addrs, 1));

    // Twenty clients: each is pinned, and together they are spread by the balancer.
    let mut pinned_to = std::collections::BTreeSet::new();
    let mut sessions = Vec::new();
    for client in 0..20 {
        let first = if client % 2 == 0 { addr_a } else { addr_b };
        let (by, answer) = get_with(first, &[]).await;
        let raw = answer.headers[http::header::SET_COOKIE]
            .to_str()
            .expect("ascii");
        assert!(
            raw.contains("; Path=/app") && raw.contains("HttpOnly") && raw.contains("SameSite=Lax"),
            "{raw}"
        );
        assert!(!raw.contains("Secure"), "plain HTTP: {raw}");
        let cookie = set_cookie(&answer).expect("a session cookie");
        for i in 0..10 {
            let replica = if i % 2 == 0 { addr_b } else { addr_a };
            let (again, answer) =
                get_with(replica, &[("cookie", &format!("lang=en; {cookie}"))]).await;
            assert_eq!(again, by, "client {client}, request {i}: the same endpoint");
            assert_eq!(set_cookie(&answer), None, "a live session is not re-sent");
        }
        pinned_to.insert(by.clone());
        sessions.push((by, cookie));
    }
    assert!(
        pinned_to.len() >= 4,
        "spread by the balancer: {pinned_to:?}"
    );

    // Forgeries: a made-up token naming s4 in the token's plain layout, every one-character
    // change of a real token, a real token of another Gateway's key (another replica set)
    // and of another session name. None pins, and each gets a fresh session.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let s4 = addrs[4];
    let std::net::IpAddr::V4(ip) = s4.ip() else {
        unreachable!()
    };
    let mut plain = vec![0u8; 12];
    plain.push(1);
    plain.extend_from_slice(&[0; 16]);
    plain.extend_from_slice(&s4.port().to_be_bytes());
    plain.extend_from_slice(&ip.octets());
    plain.extend_from_slice(&[0; 16]);
    let made_up = format!("sticky={}", b64.encode(&plain));
    let mut by_forged = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        let (by, answer) = get_with(addr_a, &[("cookie", &made_up)]).await;
        assert!(
            set_cookie(&answer).is_some(),
            "a forged cookie starts a new session"
        );
        *by_forged.entry(by).or_default() += 1;
    }
    assert!(
        by_forged.get("s4").copied().unwrap_or(0) < 10,
        "{by_forged:?}"
    );
    let (owner, real) = &sessions[0];
    let value = real.strip_prefix("sticky=").expect("name");
    let mut moved = 0;
    for i in 0..value.len() {
        let mut t = value.as_bytes().to_vec();
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        let altered = format!("sticky={}", String::from_utf8(t).expect("ascii"));
        let (by, answer) = get_with(addr_b, &[("cookie", &altered)]).await;
        assert!(
            set_cookie(&answer).is_some(),
            "altered at {i}: a new session"
        );
        moved += usize::from(by != *owner);
    }
    assert!(moved > 0, "altered tokens are not honoured");
    let other_key = {
        let mut s = snap(free_port(), &addrs, 1);
        s.session_key = Some(portico_model::auth::Sensitive(
            "b3RoZXItZ2F0ZXdheS1rZXktZm9yLXRoZS10ZXN0LS0=".into(),
        ));
        s
    };
    let (_c, addr_c) = serve(&other_key);
    let (_, answer) = get_with(addr_c, &[("cookie", real)]).await;
    assert!(
        set_cookie(&answer).is_some(),
        "another key does not open it"
    );

    // The pinned endpoint leaves: the session's next request goes elsewhere and is re-pinned.
    let gone: usize = owner[1..].parse().expect("s<n>");
    let fewer: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|x| *x != addrs[gone])
        .collect();
    let report = a.apply(&[snap(port_a, &fewer, 2)], 2);
    assert!(report.warnings.is_empty(), "{report:?}");
    let (by, answer) = get_with(addr_a, &[("cookie", real)]).await;
    assert_ne!(by, *owner);
    let renewed = set_cookie(&answer).expect("a new session");
    let (again, _) = get_with(addr_a, &[("cookie", &renewed)]).await;
    assert_eq!(again, by);
}

/// A rule's session pins the backend of a traffic split, not only the endpoint: a client
/// stays on the backend its first request was weighed to.
#[tokio::test]
async fn a_rule_session_pins_the_backend_of_a_split() {
    let blue = Backend::start("blue", false).await;
    let green = Backend::start("green", false).await;
    let port = free_port();
    let mut r = rule(vec![prefix("/app")], vec![to("blue", 80), to("green", 80)]);
    r.session_persistence = Some(cookie_session("split"));
    let (_dp, addr) = serve(&keyed(
        Snapshot::test("gw")
            .with_listener(http_listener("http", port))
            .with_backend(backend("blue", 80, &[blue.addr]))
            .with_backend(backend("green", 80, &[green.addr]))
            .with_route(route("split", "http", &[], vec![r])),
    ));
    let mut firsts = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let (by, answer) = get_with(addr, &[]).await;
        let cookie = set_cookie(&answer).expect("a session");
        for _ in 0..8 {
            assert_eq!(get_with(addr, &[("cookie", &cookie)]).await.0, by);
        }
        firsts.insert(by);
    }
    assert_eq!(firsts.len(), 2, "new sessions are still split: {firsts:?}");
}

/// A BackendPolicy's cookie session, for two rules sending to the Service: each rule keeps
/// a session of its own (GEP-1619) under a cookie of its own, without a `Path`, so a client
/// going back and forth keeps both.
#[tokio::test]
async fn a_policy_cookie_session_is_kept_per_rule() {
    let (_backends, addrs) = session_backends().await;
    let port = free_port();
    let settings = BackendSettings {
        session_persistence: Some(cookie_session("srv")),
        ..BackendSettings::default()
    };
    let (_dp, addr) = serve(&keyed(
        Snapshot::test("gw")
            .with_listener(http_listener("http", port))
            .with_backend(with_settings(backend("web", 80, &addrs), settings))
            .with_route(route(
                "web",
                "http",
                &[],
                vec![
                    rule(vec![prefix("/a")], vec![to("web", 80)]),
                    rule(vec![prefix("/app")], vec![to("web", 80)]),
                ],
            )),
    ));
    let at = |path: &'static str, cookie: String| async move {
        let mut req = Request::get(path).header("host", "x.test");
        if !cookie.is_empty() {
            req = req.header("cookie", cookie);
        }
        let a = send(addr, false, req.body(Full::default()).expect("request")).await;
        assert_eq!(a.status, StatusCode::OK);
        (header(&a, "x-backend").to_string(), a)
    };
    let (by_a, first_a) = at("/a", String::new()).await;
    let (by_app, first_app) = at("/app/x", String::new()).await;
    let raw = first_a.headers[http::header::SET_COOKIE]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(raw.starts_with("srv-") && !raw.contains("Path="), "{raw}");
    let (ca, capp) = (
        set_cookie(&first_a).expect("a"),
        set_cookie(&first_app).expect("app"),
    );
    let name = |c: &str| c.split('=').next().unwrap_or_default().to_string();
    assert_ne!(name(&ca), name(&capp), "a cookie per rule");
    let both = format!("{ca}; {capp}");
    for _ in 0..6 {
        let (a, answer) = at("/a", both.clone()).await;
        assert_eq!((a, set_cookie(&answer)), (by_a.clone(), None));
        let (app, answer) = at("/app/y", both.clone()).await;
        assert_eq!((app, set_cookie(&answer)), (by_app.clone(), None));
    }
}

/// A BackendPolicy's header session, with an idle timeout: the token comes back in the
/// header, is honoured when sent in the same header, and is refreshed as time passes.
#[tokio::test]
async fn a_policy_header_session_pins_and_is_refreshed() {
    let (_backends, addrs) = session_backends().await;
    let port = free_port();
    let settings = BackendSettings {
        session_persistence: Some(SessionPersistence {
            kind: SessionKind::Header,
            name: "x-session".into(),
            absolute_timeout_ms: Some(3_600_000),
            idle_timeout_ms: Some(2_000),
            permanent: false,
        }),
        ..BackendSettings::default()
    };
    let (_dp, addr) = serve(&keyed(web_snapshot(
        port,
        with_settings(backend("web", 80, &addrs), settings),
        1,
    )));
    let (by, answer) = get_with(addr, &[]).await;
    assert_eq!(answer.headers.get(http::header::SET_COOKIE), None);
    let mut token = header(&answer, "x-session").to_string();
    assert!(!token.is_empty());
    for _ in 0..10 {
        let (to, answer) = get_with(addr, &[("x-session", &token)]).await;
        assert_eq!(to, by);
        // A client sends back what it was last given (a refreshed token when one came):
        // however slowly the ten go (a loaded machine), none waits out the idle timeout.
        let refreshed = header(&answer, "x-session");
        if !refreshed.is_empty() {
            token = refreshed.to_string();
        }
    }
    // An idle timeout of two seconds is refreshed on every request after a tenth of it
    // (rounded up to a second) and ends after two seconds without one.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (_, answer) = get_with(addr, &[("x-session", &token)]).await;
    assert!(
        !header(&answer, "x-session").is_empty(),
        "refreshed or renewed"
    );
}

/// The CORS filter, through real sockets: a preflight is answered by the gateway (the backend
/// never sees it, and an AuthPolicy on the route would not be asked), an actual request's
/// response gets the headers in place of the backend's, and an origin not allowed gets none.
#[tokio::test]
async fn cors_preflights_are_answered_and_responses_get_the_headers() {
    let web = Backend::start("web", false).await;
    let port = free_port();
    let mut r = rule(vec![prefix("/")], vec![to("web", 80)]);
    r.filters = vec![Filter::Cors(portico_model::Cors {
        allow_origins: vec!["https://www.foo.com".into(), "https://*.bar.com".into()],
        allow_methods: vec!["GET".into(), "PUT".into()],
        allow_headers: vec!["x-token".into()],
        expose_headers: vec!["x-backend".into()],
        allow_credentials: true,
        max_age_seconds: 600,
    })];
    let (_dp, addr) = serve(
        &Snapshot::test("gw")
            .with_listener(http_listener("http", port))
            .with_backend(backend("web", 80, &[web.addr]))
            .with_route(route("web", "http", &[], vec![r])),
    );
    let request = |method: &str, origin: &str, asks: Option<&str>| {
        let mut req = Request::builder()
            .method(method)
            .uri("/x")
            .header("host", "x.test")
            .header("origin", origin);
        if let Some(m) = asks {
            req = req.header("access-control-request-method", m);
        }
        send(addr, false, req.body(Full::default()).expect("request"))
    };
    let pre = request("OPTIONS", "https://api.bar.com", Some("PUT")).await;
    assert_eq!(pre.status, StatusCode::NO_CONTENT);
    assert_eq!(
        header(&pre, "access-control-allow-origin"),
        "https://api.bar.com"
    );
    assert_eq!(header(&pre, "access-control-allow-methods"), "GET, PUT");
    assert_eq!(header(&pre, "access-control-allow-headers"), "x-token");
    assert_eq!(header(&pre, "access-control-max-age"), "600");
    assert_eq!(header(&pre, "access-control-allow-credentials"), "true");
    assert!(web.seen().is_empty(), "the backend never saw the preflight");
    let denied = request("OPTIONS", "https://evil.example", Some("PUT")).await;
    assert_eq!(denied.status, StatusCode::NO_CONTENT);
    assert_eq!(header(&denied, "access-control-allow-origin"), "");

    let actual = request("PUT", "https://www.foo.com", None).await;
    assert_eq!(actual.status, StatusCode::OK);
    assert_eq!(
        header(&actual, "access-control-allow-origin"),
        "https://www.foo.com"
    );
    assert_eq!(
        header(&actual, "access-control-expose-headers"),
        "x-backend"
    );
    assert_eq!(header(&actual, "vary"), "origin");
    let other = request("GET", "https://evil.example", None).await;
    assert_eq!(
        other.status,
        StatusCode::OK,
        "served; the browser keeps it from the page"
    );
    assert_eq!(header(&other, "access-control-allow-origin"), "");
    // Without an Origin, nothing changes.
    let plain = get(addr, "x.test", "/x").await;
    assert_eq!(header(&plain, "access-control-allow-origin"), "");
    assert_eq!(web.seen().len(), 3);
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2), computed the test's own way.
fn ws_accept(key: &str) -> String {
    use base64::Engine as _;
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Reads a message head (to the blank line) off `io`, byte by byte so nothing past it is
/// taken. `None`: the connection closed first.
async fn read_head(io: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if io.read(&mut b).await.ok()? == 0 {
            return None;
        }
        head.push(b[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn head_field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A WebSocket backend at the byte level: it answers a handshake with a 101 (with the right
/// accept value, or on `/refuse` a 403, on `/h2c` a switch to another protocol) and sends
/// `hi` at once, then echoes every byte. It records the heads it read.
struct WsBackend {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl WsBackend {
    async fn start() -> Self {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    while let Some(head) = read_head(&mut stream).await {
                        record.lock().push(head.clone());
                        let key = head_field(&head, "sec-websocket-key").unwrap_or("");
                        let answer = if head.starts_with("GET /refuse ") {
                            "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n".to_string()
                        } else if head.starts_with("GET /badaccept ") {
                            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: bm90IHRoZSBhbnN3ZXI=\r\n\r\n".to_string()
                        } else if head.starts_with("GET /h2c ") {
                            "HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n".to_string()
                        } else {
                            format!(
                                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\nhi",
                                ws_accept(key)
                            )
                        };
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        if answer.starts_with("HTTP/1.1 101") {
                            let (mut r, mut w) = stream.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().clone()
    }
}

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Opens a WebSocket over HTTP/1.1 at `path`: the 101's head, and the connection.
async fn ws_open(addr: SocketAddr, path: &str) -> (String, TcpStream) {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: x.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: {WS_KEY}\r\nsec-websocket-version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let head = read_head(&mut s).await.expect("an answer");
    (head, s)
}

/// Sends `msg` and reads it back through the echo.
async fn ws_echo(s: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin), msg: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("the echo within 10 s")
        .expect("read");
    assert_eq!(back, msg);
}

fn gauge(dp: &Dataplane, name: &str) -> u64 {
    let metrics = dp.metrics_text();
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {metrics}"))
}

/// A WebSocket handshake goes through whole (the client's key, the backend's accept, what the
/// backend sent with its 101), then the connection is a tunnel; 100 of them stay open
/// through 100 configuration changes and lose no byte.
#[tokio::test]
async fn websockets_are_tunnelled_and_outlive_100_route_changes() {
    let ws = WsBackend::start().await;
    let port = free_port();
    let snap = |version: u64| {
        let mut r = rule(vec![prefix("/")], vec![to("ws", 80)]);
        // Each version changes the route (a header it adds) and the routes beside it.
        r.filters = vec![Filter::RequestHeaderModifier(HeaderModifier {
            set: vec![Header {
                name: "x-version".into(),
                value: version.to_string(),
            }],
            ..HeaderModifier::default()
        })];
        let mut s = Snapshot::test("gw")
            .with_listener(http_listener("http", port))
            .with_backend(backend("ws", 80, &[ws.addr]))
            .with_route(route("ws", "http", &[], vec![r]));
        if version.is_multiple_of(2) {
            s = s.with_route(route(
                "other",
                "http",
                &["other.test"],
                vec![rule(vec![prefix("/")], vec![to("ws", 80)])],
            ));
        }
        Snapshot { version, ..s }
    };
    let (dp, addr) = serve(&snap(1));
    let (head, mut first) = ws_open(addr, "/chat").await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(
        head_field(&head, "sec-websocket-accept"),
        Some(ws_accept(WS_KEY).as_str())
    );
    assert_eq!(head_field(&head, "upgrade"), Some("websocket"));
    assert_eq!(head_field(&head, "connection"), Some("upgrade"));
    let seen = ws.heads();
    let h = &seen[0];
    assert_eq!(head_field(h, "sec-websocket-key"), Some(WS_KEY));
    assert_eq!(head_field(h, "upgrade"), Some("websocket"));
    assert_eq!(head_field(h, "connection"), Some("upgrade"));
    assert_eq!(head_field(h, "x-version"), Some("1"));
    // What the backend sent with its 101 comes first.
    let mut hi = [0u8; 2];
    tokio::io::AsyncReadExt::read_exact(&mut first, &mut hi)
        .await
        .expect("hi");
    assert_eq!(&hi, b"hi");
    ws_echo(&mut first, b"hello").await;

    let mut open = vec![first];
    for _ in 1..100 {
        let (head, mut s) = ws_open(addr, "/chat").await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let mut hi = [0u8; 2];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut hi)
            .await
            .expect("hi");
        open.push(s);
    }
    assert_eq!(gauge(&dp, "portico_upgraded_connections"), 100);
    for version in 2..=101 {
        let report = dp.apply(&[snap(version)], version);
        assert!(report.bind_failures.is_empty(), "{report:?}");
        if version.is_multiple_of(10) {
            for (i, s) in open.iter_mut().enumerate() {
                ws_echo(s, format!("v{version} #{i}").as_bytes()).await;
            }
        }
    }
    for (i, s) in open.iter_mut().enumerate() {
        ws_echo(s, format!("last #{i}").as_bytes()).await;
    }
    assert_eq!(gauge(&dp, "portico_upgraded_connections"), 100);
    // A new one gets the configuration of now.
    let (head, _s) = ws_open(addr, "/chat").await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let last = ws.heads().pop().expect("a head");
    assert_eq!(head_field(&last, "x-version"), Some("101"));
    drop(open);
    await_gauge(&dp, "portico_upgraded_connections", 1).await;
}

/// A WebSocket's 101 gets what the backend's other answers get: the backendRef's response
/// headers, and the rule's session cookie (a reconnecting client goes back to its endpoint).
#[tokio::test]
async fn a_websocket_answer_carries_the_session_and_the_backend_ref_headers() {
    let ws = WsBackend::start().await;
    let port = free_port();
    let mut target = to("ws", 80);
    target.filters = vec![Filter::ResponseHeaderModifier(HeaderModifier {
        set: vec![Header {
            name: "x-ref".into(),
            value: "ws".into(),
        }],
        ..HeaderModifier::default()
    })];
    let mut r = rule(vec![prefix("/")], vec![target]);
    r.session_persistence = Some(cookie_session("chat"));
    let (_dp, addr) = serve(&keyed(
        Snapshot::test("gw")
            .with_listener(http_listener("http", port))
            .with_backend(backend("ws", 80, &[ws.addr]))
            .with_route(route("ws", "http", &[], vec![r])),
    ));
    let (head, _s) = ws_open(addr, "/chat").await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(head_field(&head, "x-ref"), Some("ws"));
    let cookie = head_field(&head, "set-cookie").unwrap_or_default();
    assert!(cookie.starts_with("chat="), "{head}");
}

async fn await_gauge(dp: &Dataplane, name: &str, want: u64) {
    for _ in 0..200 {
        if gauge(dp, name) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never reached {want}: {}", gauge(dp, name));
}

/// A backend that refuses a WebSocket answers the client itself; one that switches to another
/// protocol, or an HTTP/2 backend, gets the client a 502; a request that is not a WebSocket
/// handshake (`Upgrade: h2c`) is forwarded without its upgrade.
#[tokio::test]
async fn websockets_the_backend_refuses_or_cannot_take_are_answered_plainly() {
    let ws = WsBackend::start().await;
    let port = free_port();
    let mut h2c = backend("grpc", 80, &[ws.addr]);
    h2c.protocol = portico_model::AppProtocol::H2c;
    let mut private = rule(vec![prefix("/private")], vec![]);
    private.filters = vec![Filter::RequestRedirect(Redirect {
        scheme: None,
        hostname: None,
        path: None,
        port: None,
        status_code: 302,
    })];
    let (_dp, addr) = serve(
        &Snapshot::test("gw")
            .with_listener(http_listener("http", port))
            .with_backend(backend("ws", 80, &[ws.addr]))
            .with_backend(h2c)
            .with_route(route(
                "ws",
                "http",
                &[],
                vec![
                    rule(vec![prefix("/grpc")], vec![to("grpc", 80)]),
                    private,
                    rule(vec![prefix("/")], vec![to("ws", 80)]),
                ],
            )),
    );
    let (head, mut s) = ws_open(addr, "/refuse").await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    // Refused, the connection is still HTTP and still the gateway's: what the client sends
    // next is routed (here, to a redirect), never relayed raw to the backend.
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /private HTTP/1.1\r\nhost: x.test\r\n\r\n")
        .await
        .expect("write");
    let next = read_head(&mut s).await.expect("an answer");
    assert!(next.starts_with("HTTP/1.1 302 "), "{next}");
    assert!(ws.heads().iter().all(|h| !h.contains("/private")));
    let (head, _) = ws_open(addr, "/h2c").await;
    assert!(head.starts_with("HTTP/1.1 502 "), "{head}");
    // A 101 whose accept value does not answer the client's key is no WebSocket of its.
    let (head, _) = ws_open(addr, "/badaccept").await;
    assert!(head.starts_with("HTTP/1.1 502 "), "{head}");
    // CONNECT leads nowhere: HTTP/1.1's, HTTP/2's plain one, and an extended CONNECT for a
    // protocol other than WebSocket are refused before routing.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"CONNECT x.test:443 HTTP/1.1\r\nhost: x.test:443\r\n\r\n",
    )
    .await
    .expect("write");
    let head = read_head(&mut s).await.expect("an answer");
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    for protocol in [None, Some("connect-udp")] {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(http::Method::CONNECT)
            .uri(match protocol {
                Some(_) => "http://x.test/chat",
                None => "x.test:443",
            })
            .body(Full::<Bytes>::default())
            .expect("request");
        if let Some(p) = protocol {
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from_static(p));
        }
        let resp = tx.send_request(req).await.expect("h2 request");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{protocol:?}");
    }
    assert!(ws.heads().iter().all(|h| !h.starts_with("CONNECT")));
    let (head, _) = ws_open(addr, "/grpc").await;
    assert!(head.starts_with("HTTP/1.1 502 "), "{head}");
    // Not a WebSocket: the backend never sees the upgrade asked for.
    let web = Backend::start("web", false).await;
    let port = free_port();
    let (_dp2, addr) = serve(&web_snapshot(port, backend("web", 80, &[web.addr]), 1));
    let req = Request::get("/x")
        .header("host", "x.test")
        .header("connection", "upgrade")
        .header("upgrade", "h2c")
        .body(Full::default())
        .expect("request");
    assert_eq!(send(addr, false, req).await.status, StatusCode::OK);
    let seen = web.seen();
    assert!(
        seen[0].headers.get("upgrade").is_none(),
        "{:?}",
        seen[0].headers
    );
}

/// A WebSocket over HTTP/2 (extended CONNECT, RFC 8441) reaches an HTTP/1.1 backend as the
/// handshake it knows, with a key of the gateway's; the client gets a 200 and a stream.
#[tokio::test]
async fn http2_websockets_reach_http1_backends() {
    let ws = WsBackend::start().await;
    let port = free_port();
    let (dp, addr) = serve(&web_snapshot(port, backend("web", 80, &[ws.addr]), 1));
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://x.test:{port}/chat"))
        .header("sec-websocket-version", "13")
        .body(Full::<Bytes>::default())
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = tx.send_request(req).await.expect("h2 request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    let upgraded = hyper::upgrade::on(&mut resp).await.expect("the stream");
    let mut s = TokioIo::new(upgraded);
    let mut hi = [0u8; 2];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut hi)
        .await
        .expect("hi");
    assert_eq!(&hi, b"hi");
    ws_echo(&mut s, b"over h2").await;
    let head = ws.heads().pop().expect("a head");
    assert!(head.starts_with("GET /chat HTTP/1.1\r\n"), "{head}");
    let key = head_field(&head, "sec-websocket-key").expect("a key");
    assert_eq!(key.len(), 24, "{key}");
    assert_eq!(head_field(&head, "sec-websocket-version"), Some("13"));
    assert_eq!(gauge(&dp, "portico_upgraded_connections"), 1);
    drop(s);
    await_gauge(&dp, "portico_upgraded_connections", 0).await;
}

/// A tunnel nothing moves through is closed after the idle timeout; one in use is not.
#[tokio::test]
async fn an_idle_websocket_is_closed() {
    let ws = WsBackend::start().await;
    let port = free_port();
    let snapshot = web_snapshot(port, backend("web", 80, &[ws.addr]), 1);
    let dp = Dataplane::new(&DataplaneSettings {
        default_bind: LOCALHOST,
        proxy: ProxySettings {
            access_log: false,
            tunnel_idle_timeout: Duration::from_millis(300),
            ..ProxySettings::default()
        },
        server: ServerSettings::default(),
        rate_limit_max_keys: 1000,
        cache_memory_bytes: 1 << 20,
    });
    let report = dp.apply(std::slice::from_ref(&snapshot), 1);
    assert!(report.bind_failures.is_empty(), "{report:?}");
    let addr = SocketAddr::new(LOCALHOST, port);
    let (head, mut s) = ws_open(addr, "/chat").await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut rest = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut rest);
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("closed")
        .expect("read");
    assert_eq!(rest, b"hi");
    let closed = dp
        .metrics_text()
        .lines()
        .any(|l| l == "portico_upgraded_connections_closed_total{reason=\"idle_timeout\"} 1");
    assert!(closed, "{}", dp.metrics_text());
}

/// A backend for mirrors: it reads each request whole and records its path, headers and body
/// (or, `hang`, reads nothing and never answers).
struct MirrorBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(Seen, Bytes)>>>,
}

impl MirrorBackend {
    async fn start(hang: bool) -> Self {
        let seen: Arc<Mutex<Vec<(Seen, Bytes)>>> = Arc::default();
        let record = seen.clone();
        let addr = http1_backend(move |req: Request<Incoming>| {
            let record = record.clone();
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let seen = Seen {
                    path: parts.uri.path().to_string(),
                    headers: parts.headers,
                };
                record.lock().push((seen, body));
                Response::new(Full::new(Bytes::from_static(b"mirror")))
            }
        })
        .await;
        Self { addr, seen }
    }

    fn seen(&self) -> Vec<(Seen, Bytes)> {
        self.seen.lock().clone()
    }

    async fn await_count(&self, n: usize) -> Vec<(Seen, Bytes)> {
        for _ in 0..400 {
            if self.seen.lock().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.seen()
    }
}

fn mirror_filter(backend: &str, numerator: u32, denominator: u32) -> portico_model::Mirror {
    portico_model::Mirror {
        backend: backend_id(backend, 80),
        numerator,
        denominator,
    }
}

fn mirrored(dp: &Dataplane, backend: &str, result: &str) -> u64 {
    let want = format!(
        "portico_mirror_requests_total{{backend=\"test/{backend}:80\",result=\"{result}\"}} "
    );
    dp.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(&want).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn await_mirrored(dp: &Dataplane, backend: &str, result: &str, n: u64) {
    for _ in 0..400 {
        if mirrored(dp, backend, result) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{backend} {result}: {}", dp.metrics_text());
}

/// Each mirror gets a copy of the request as the backend gets it (filters applied), body and
/// all, and the client gets the backend's answer.
#[tokio::test]
async fn mirrors_get_copies_of_requests_with_their_bodies() {
    let web = Backend::start("web", false).await;
    let (m1, m2) = (
        MirrorBackend::start(false).await,
        MirrorBackend::start(false).await,
    );
    let port = free_port();
    let mut r = rule(vec![prefix("/")], vec![to("web", 80)]);
    r.filters = vec![Filter::RequestHeaderModifier(HeaderModifier {
        set: vec![Header {
            name: "x-set".into(),
            value: "yes".into(),
        }],
        ..HeaderModifier::default()
    })];
    r.mirrors = vec![mirror_filter("m1", 1, 1), mirror_filter("m2", 100, 100)];
    let (dp, addr) = serve(
        &Snapshot::test("gw")
            .with_listener(http_listener("http", port))
            .with_backend(backend("web", 80, &[web.addr]))
            .with_backend(backend("m1", 80, &[m1.addr]))
            .with_backend(backend("m2", 80, &[m2.addr]))
            .with_route(route("web", "http", &[], vec![r])),
    );
    let body = Bytes::from(vec![b'x'; 200_000]);
    let a = with_body(addr, http::Method::POST, body.clone()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(header(&a, "x-backend"), "web");
    assert_eq!(
        get(addr, "x.test", "/second?q=1").await.status,
        StatusCode::OK
    );
    for m in [&m1, &m2] {
        let seen = m.await_count(2).await;
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0.path, "/");
        assert_eq!(seen[0].1, body, "the copy's body is the request's");
        assert_eq!(
            seen[0].0.headers.get("x-set").map(|v| v.as_bytes()),
            Some(&b"yes"[..])
        );
        assert!(seen[0].0.headers.get("x-forwarded-for").is_some());
        assert_eq!(seen[1].0.path, "/second");
        assert!(seen[1].1.is_empty());
    }
    await_mirrored(&dp, "m1", "answered", 2).await;
    await_mirrored(&dp, "m2", "answered", 2).await;
}

/// A share of requests is copied: 20% of 1000 within six standard deviations (σ ≈ 12.6).
#[tokio::test]
async fn a_mirror_gets_its_share_of_requests() {
    let web = Backend::start("web", false).await;
    let m = MirrorBackend::start(false).await;
    let port = free_port();
    let mut r = rule(vec![prefix("/")], vec![to("web", 80)]);
    r.mirrors = vec![mirror_filter("m", 20, 100)];
    let (dp, addr) = serve(
        &Snapshot::test("gw")
            .with_listener(http_listener("http", port))
            .with_backend(backend("web", 80, &[web.addr]))
            .with_backend(backend("m", 80, &[m.addr]))
            .with_route(route("web", "http", &[], vec![r])),
    );
    load(addr, 4, 250, StatusCode::OK).await;
    // Every copy started is counted once it ends; wait for the count to settle.
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = mirrored(&dp, "m", "answered");
        if now == last {
            break;
        }
        last = now;
    }
    assert!((124..=276).contains(&last), "{last} of 1000 copied at 20%");
    assert_eq!(m.seen().len() as u64, last);
}

/// A mirror that never answers, one that cannot be reached and one too slow to read a large
/// body cost the client nothing: every request is answered by its backend, and each copy's
/// fate is counted.
#[tokio::test]
async fn a_dead_or_slow_mirror_never_touches_the_request() {
    // The backend reads every request body whole before it answers, so the original is read
    // to its end and the hung mirror's copy surely falls behind (a backend that answered at
    // once would leave the body unread, and the copy would end with it, as failed).
    let web = http1_backend(|req: Request<Incoming>| async move {
        let _ = req.into_body().collect().await;
        let mut resp = Response::new(Full::new(Bytes::from_static(b"web")));
        resp.headers_mut()
            .insert("x-backend", http::HeaderValue::from_static("web"));
        resp
    })
    .await;
    let hung = MirrorBackend::start(true).await;
    let gone = {
        let l = std::net::TcpListener::bind((LOCALHOST, 0)).expect("bind");
        l.local_addr().expect("addr")
    };
    let port = free_port();
    let mut r = rule(vec![prefix("/")], vec![to("web", 80)]);
    r.timeouts.request_ms = Some(2_000);
    r.mirrors = vec![mirror_filter("hung", 1, 1), mirror_filter("gone", 1, 1)];
    let (dp, addr) = serve(
        &Snapshot::test("gw")
            .with_listener(http_listener("http", port))
            .with_backend(backend("web", 80, &[web]))
            .with_backend(backend("hung", 80, &[hung.addr]))
            .with_backend(backend("gone", 80, &[gone]))
            .with_route(route("web", "http", &[], vec![r])),
    );
    for _ in 0..5 {
        let a = get(addr, "x.test", "/").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(header(&a, "x-backend"), "web");
    }
    // A body far larger than the socket buffers, which the hung mirror never reads: its copy
    // falls behind and is cut off while the request goes on.
    let big = Bytes::from(vec![b'y'; 32 * 1024 * 1024]);
    let a = with_body(addr, http::Method::POST, big).await;
    assert_eq!(a.status, StatusCode::OK);
    await_mirrored(&dp, "gone", "failed", 5).await;
    await_mirrored(&dp, "hung", "timeout", 5).await;
    await_mirrored(&dp, "hung", "dropped", 1).await;
    assert!(hung.seen().is_empty());
}

/// A backend of typed answers for compression: `/html` (21 KB of HTML, with an ETag),
/// `/small` (10 bytes of HTML), `/png`, `/cookie` (HTML setting a cookie), `/encoded`
/// (already Brotli).
async fn typed_backend() -> SocketAddr {
    http1_backend(|req: Request<Incoming>| async move {
        let html: Bytes = Bytes::from("<p>portico</p>\n".repeat(1400));
        let (ct, body, extra): (&str, Bytes, Option<(&str, &str)>) = match req.uri().path() {
            "/small" => ("text/html", Bytes::from_static(b"<p>hi</p>\n"), None),
            "/png" => ("image/png", html, None),
            "/cookie" => ("text/html", html, Some(("set-cookie", "s=1"))),
            "/encoded" => ("text/html", html, Some(("content-encoding", "br"))),
            _ => ("text/html; charset=utf-8", html, Some(("etag", "\"v1\""))),
        };
        let mut resp = Response::new(Full::new(body));
        resp.headers_mut()
            .insert("content-type", http::HeaderValue::from_static(ct));
        if let Some((n, v)) = extra {
            resp.headers_mut()
                .insert(n, http::HeaderValue::from_static(v));
        }
        resp
    })
    .await
}

fn decompress(encoding: &str, bytes: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .expect("gzip");
        }
        "br" => {
            brotli::Decompressor::new(bytes, 4096)
                .read_to_end(&mut out)
                .expect("br");
        }
        "zstd" => out = zstd::decode_all(bytes).expect("zstd"),
        other => panic!("encoding {other}"),
    }
    out
}

/// A BackendPolicy's compression with the CRD's defaults.
fn default_compression() -> portico_model::Compression {
    portico_model::Compression {
        encodings: portico_model::Compression::DEFAULT_ENCODINGS.to_vec(),
        min_size: 1024,
        content_types: portico_model::Compression::DEFAULT_CONTENT_TYPES
            .iter()
            .map(|t| t.to_string())
            .collect(),
        credentialed: false,
    }
}

/// The gateway's own session cookie is not a credential: a sticky client's responses are
/// compressed, and any other cookie beside it still turns compression off (BREACH).
#[tokio::test]
async fn a_session_cookie_alone_does_not_stop_compression() {
    let addr = typed_backend().await;
    let port = free_port();
    let b = with_settings(
        backend("web", 80, &[addr]),
        BackendSettings {
            compression: Some(default_compression()),
            session_persistence: Some(cookie_session("sticky")),
            ..BackendSettings::default()
        },
    );
    let (_dp, gw) = serve(&keyed(web_snapshot(port, b, 1)));
    let fetch = |cookie: Option<String>| {
        let mut req = Request::get("/html")
            .header("host", "x.test")
            .header("accept-encoding", "gzip");
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        send(gw, false, req.body(Full::default()).expect("request"))
    };
    let first = fetch(None).await;
    let pin = header(&first, "set-cookie");
    let pin = pin.split(';').next().expect("name=value").to_string();
    assert!(pin.starts_with("sticky-"), "{pin}");
    let sticky = fetch(Some(pin.clone())).await;
    assert_eq!(header(&sticky, "content-encoding"), "gzip");
    let mixed = fetch(Some(format!("{pin}; user=secret"))).await;
    assert_eq!(header(&mixed, "content-encoding"), "");
    // The session cookie's name with a value the gateway did not seal is someone's cookie;
    // so is a second one of that name.
    let name = pin.split('=').next().expect("name");
    let forged = fetch(Some(format!("{name}=secret"))).await;
    assert_eq!(header(&forged, "content-encoding"), "");
    let doubled = fetch(Some(format!("{pin}; {name}=secret"))).await;
    assert_eq!(header(&doubled, "content-encoding"), "");
    let other = fetch(Some("user=secret".into())).await;
    assert_eq!(header(&other, "content-encoding"), "");
}

/// A BackendPolicy's compression: the client's preferred encoding of the policy's, over
/// HTTP/1.1 and HTTP/2; responses that must not or need not be compressed pass unchanged.
#[tokio::test]
async fn responses_are_compressed_as_the_policy_and_the_client_allow() {
    let addr = typed_backend().await;
    let port = free_port();
    let compression = default_compression();
    let b = with_settings(
        backend("web", 80, &[addr]),
        BackendSettings {
            compression: Some(compression),
            ..BackendSettings::default()
        },
    );
    let (dp, gw) = serve(&web_snapshot(port, b, 1));
    let fetch = |path: &'static str, accept: &'static str, h2: bool| {
        // HTTP/2 names the authority in the target; HTTP/1.1 in Host.
        let req = if h2 {
            Request::get(format!("http://x.test{path}"))
        } else {
            Request::get(path).header("host", "x.test")
        };
        let req = req
            .header("accept-encoding", accept)
            .body(Full::default())
            .expect("request");
        send(gw, h2, req)
    };
    let html = "<p>portico</p>\n".repeat(1400);
    for (accept, want) in [
        ("gzip", "gzip"),
        ("br;q=0.9, gzip;q=0.5", "br"),
        ("gzip, br, zstd", "zstd"),
    ] {
        for h2 in [false, true] {
            let a = fetch("/html", accept, h2).await;
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(header(&a, "content-encoding"), want, "{accept}");
            assert_eq!(header(&a, "vary"), "accept-encoding");
            assert_eq!(header(&a, "etag"), "W/\"v1\"");
            assert!(
                a.body.len() < html.len() / 10,
                "{want}: {} bytes",
                a.body.len()
            );
            assert_eq!(decompress(want, &a.body), html.as_bytes());
        }
    }
    // Left alone: no encoding accepted (but Vary says it could be), too small, not a
    // compressible type, a cookie set, already encoded, a request with credentials.
    let a = fetch("/html", "identity", false).await;
    assert_eq!(header(&a, "content-encoding"), "");
    assert_eq!(header(&a, "vary"), "accept-encoding");
    assert_eq!(a.body.len(), html.len());
    for path in ["/small", "/png", "/cookie", "/encoded"] {
        let a = fetch(path, "gzip", false).await;
        assert_ne!(header(&a, "content-encoding"), "gzip", "{path}");
        assert_eq!(header(&a, "vary"), "", "{path}");
    }
    let req = Request::get("/html")
        .header("host", "x.test")
        .header("accept-encoding", "gzip")
        .header("authorization", "Bearer t")
        .body(Full::default())
        .expect("request");
    assert_eq!(header(&send(gw, false, req).await, "content-encoding"), "");
    let metrics = dp.metrics_text();
    for e in ["gzip", "br", "zstd"] {
        let line = format!("portico_compressed_responses_total{{encoding=\"{e}\"}} 2");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}
