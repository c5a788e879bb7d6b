//! Standalone mode end to end: a real `portico` process serving a directory of manifests, real
//! echo backends, real sockets on 127.0.0.x.

use portico_tests::*;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portico}
spec: {controllerName: portico.dev/gateway-controller}
";

fn gateway(name: &str, port: u16, address: Option<IpAddr>) -> String {
    let addresses = address
        .map(|a| format!("  addresses: [{{type: IPAddress, value: \"{a}\"}}]\n"))
        .unwrap_or_default();
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: default}}
spec:
  gatewayClassName: portico
{addresses}  listeners:
  - {{name: http, port: {port}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}
"
    )
}

/// A Service on port 80 whose endpoints are the given backends.
fn service(name: &str, endpoints: &[SocketAddr], app_protocol: Option<&str>) -> String {
    let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    let proto = app_protocol
        .map(|p| format!(", appProtocol: {p}"))
        .unwrap_or_default();
    format!(
        "---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  annotations: {{portico.dev/endpoints: \"{}\"}}
spec:
  ports: [{{name: http, port: 80{proto}}}]
",
        list.join(",")
    )
}

fn route(name: &str, spec: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
{spec}"
    )
}

/// One Gateway `gw` on a fresh port with the given extra documents.
async fn start(port: u16, docs: &[String], extra_args: &[&str]) -> Portico {
    let config = format!("{CLASS}{}{}", gateway("gw", port, None), docs.concat());
    Portico::start(&[("config.yaml", &config)], extra_args).await
}

/// Gateway `gw` on `port` with Services `a` and `b` for the two echo backends.
fn two_backends(port: u16, a: &Echo, b: &Echo) -> String {
    [
        CLASS.to_string(),
        gateway("gw", port, None),
        service("a", &[a.addr], None),
        service("b", &[b.addr], None),
    ]
    .concat()
}

/// Route `r` sending everything to Service `svc`.
fn route_to(svc: &str) -> String {
    route(
        "r",
        &format!("  rules:\n  - backendRefs: [{{name: {svc}, port: 80}}]\n"),
    )
}

/// Gateway `gw` on `port` sending everything to the echo backend `a`.
async fn start_single(port: u16, a: &Echo, extra_args: &[&str]) -> Portico {
    start(
        port,
        &[service("a", &[a.addr], None), route_to("a")],
        extra_args,
    )
    .await
}

fn pick_port() -> u16 {
    free_port(loopback_ip())
}

#[tokio::test]
async fn routes_by_host_path_method_header_and_query() {
    let (a, b, c) = (Echo::start("a"), Echo::start("b"), Echo::start("c"));
    let port = pick_port();
    let docs = vec![
        service("a", &[a.addr], None),
        service("b", &[b.addr], None),
        service("c", &[c.addr], None),
        route("exact-host", "  hostnames: [shop.example.com]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n"),
        route("wild-host", "  hostnames: [\"*.example.com\"]\n  rules:\n  - backendRefs: [{name: b, port: 80}]\n"),
        route(
            "paths",
            "  hostnames: [api.test]
  rules:
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /pre}}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {type: RegularExpression, value: \"/re/[0-9]+\"}}]
    backendRefs: [{name: c, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /m}, method: POST}]
    backendRefs: [{name: c, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /m}, headers: [{name: x-canary, value: \"yes\"}]}]
    backendRefs: [{name: b, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /m}, queryParams: [{name: v, type: RegularExpression, value: \"2|3\"}]}]
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /m}}]
    backendRefs: [{name: c, port: 80}]
",
        ),
    ];
    let p = start(port, &docs, &[]).await;
    let gw = p.addr(port);
    let http = HttpClient::new();
    // (method, host, path, headers, backend expected or "-" for 404)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("GET", "shop.example.com", "/", &[], "a"),
        ("GET", "SHOP.example.com:8080", "/", &[], "a"),
        ("GET", "cart.example.com", "/", &[], "b"),
        ("GET", "deep.cart.example.com", "/x", &[], "b"),
        ("GET", "api.test", "/exact", &[], "a"),
        ("GET", "api.test", "/exact/more", &[], "-"),
        ("GET", "api.test", "/pre", &[], "b"),
        ("GET", "api.test", "/pre/x/y", &[], "b"),
        ("GET", "api.test", "/prefix", &[], "-"),
        ("GET", "api.test", "/re/42", &[], "c"),
        ("GET", "api.test", "/re/x", &[], "-"),
        ("POST", "api.test", "/m", &[("x-canary", "yes")], "c"),
        ("GET", "api.test", "/m", &[("x-canary", "yes")], "b"),
        ("GET", "api.test", "/m?v=3", &[], "a"),
        ("GET", "api.test", "/m?v=4", &[], "c"),
        ("GET", "unknown.test", "/", &[], "-"),
    ];
    for (method, host, path, headers, want) in cases {
        let r = http
            .try_request(method, gw, host, path, headers)
            .await
            .unwrap_or_else(|| panic!("{method} {host}{path} failed"));
        assert_eq!(
            r.backend(),
            *want,
            "{method} {host}{path} {headers:?}: {} {}",
            r.status,
            r.text()
        );
        if *want == "-" {
            assert_eq!(r.status, 404, "{method} {host}{path}");
        }
    }
}

#[tokio::test]
async fn weighted_split_follows_the_weights() {
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let port = pick_port();
    let docs = vec![
        service("a", &[a.addr], None),
        service("b", &[b.addr], None),
        route(
            "split",
            "  rules:\n  - backendRefs: [{name: a, port: 80, weight: 3}, {name: b, port: 80, weight: 1}, {name: b, port: 80, weight: 0}]\n",
        ),
    ];
    let p = start(port, &docs, &["--access-log", "false"]).await;
    let http = HttpClient::new();
    let total = 2000;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..total {
        *counts
            .entry(http.get(p.addr(port), "w.test", "/").await.backend())
            .or_default() += 1;
    }
    let share_a = f64::from(counts.get("a").copied().unwrap_or_default()) / f64::from(total);
    // 3:1 is 75%; with 2000 draws the standard deviation is ~1%, so ±4% is > 4 sigma.
    assert!(
        (0.71..=0.79).contains(&share_a),
        "a got {share_a:.3} of {counts:?}"
    );
    assert_eq!(counts.values().sum::<u32>(), total, "{counts:?}");
    // The split is visible per backend.
    let m = p.metrics().await;
    for (svc, n) in [("a", counts["a"]), ("b", counts["b"])] {
        let series = format!(
            "portico_upstream_requests_total{{backend=\"default/{svc}:80\",code_class=\"2xx\"}} {n}"
        );
        assert!(m.contains(&series), "{series}\n{m}");
    }
}

#[tokio::test]
async fn header_modifiers_and_url_rewrite() {
    let a = Echo::start("a");
    let port = pick_port();
    let docs = vec![
        service("a", &[a.addr], None),
        route(
            "filters",
            "  rules:
  - matches: [{path: {type: PathPrefix, value: /api/v1}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: new}]
        add: [{name: x-add, value: added}]
        remove: [x-remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: content-type, value: text/x-portico}]
        add: [{name: x-resp, value: r1}]
    - type: URLRewrite
      urlRewrite:
        hostname: internal.svc
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}
    backendRefs:
    - name: a
      port: 80
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {set: [{name: x-backend, value: a}]}
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}
    backendRefs: [{name: a, port: 80}]
",
        ),
    ];
    let p = start(port, &docs, &[]).await;
    let http = HttpClient::new();
    let r = http
        .get_with(
            p.addr(port),
            "f.test",
            "/api/v1/items?id=7",
            &[("x-set", "old"), ("x-add", "first"), ("x-remove", "gone")],
        )
        .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["path"], "/v2/items");
    assert_eq!(j["query"], "id=7");
    assert_eq!(j["host"], "internal.svc");
    assert_eq!(j["headers"]["x-set"], serde_json::json!(["new"]));
    assert_eq!(j["headers"]["x-add"], serde_json::json!(["first", "added"]));
    assert!(j["headers"].get("x-remove").is_none());
    assert_eq!(j["headers"]["x-backend"], serde_json::json!(["a"]));
    assert_eq!(
        j["headers"]["x-forwarded-host"],
        serde_json::json!(["f.test"])
    );
    assert_eq!(r.header("content-type"), Some("text/x-portico"));
    assert_eq!(r.header("x-resp"), Some("r1"));
    let r = http.get(p.addr(port), "f.test", "/full/anything").await;
    assert_eq!(r.json()["path"], "/replaced");
}

#[tokio::test]
async fn redirects_build_the_location_the_spec_describes() {
    let port = pick_port();
    let docs = vec![route(
        "redirects",
        "  rules:
  - matches: [{path: {type: PathPrefix, value: /secure}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: new.test, port: 8443, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
",
    )];
    let p = start(port, &docs, &[]).await;
    let http = HttpClient::new();
    let r = http.get(p.addr(port), "r.test", "/secure/page?x=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://r.test/secure/page?x=1"));
    let r = http.get(p.addr(port), "r.test", "/old/a/b").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://new.test:8443/new/a/b"));
}

#[tokio::test]
async fn broken_backends_get_500_and_503_while_other_routes_serve() {
    let a = Echo::start("a");
    let port = pick_port();
    let docs = vec![
        service("a", &[a.addr], None),
        service("empty", &[], None),
        route(
            "good",
            "  hostnames: [good.test]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n",
        ),
        route(
            "missing",
            "  hostnames: [missing.test]\n  rules:\n  - backendRefs: [{name: nope, port: 80}]\n",
        ),
        route(
            "half",
            "  hostnames: [half.test]\n  rules:\n  - backendRefs: [{name: a, port: 80, weight: 1}, {name: nope, port: 80, weight: 1}]\n",
        ),
        route(
            "empty",
            "  hostnames: [empty.test]\n  rules:\n  - backendRefs: [{name: empty, port: 80}]\n",
        ),
        route(
            "bad-regex",
            "  hostnames: [bad.test]\n  rules:\n  - matches: [{path: {type: RegularExpression, value: \"(\"}}]\n    backendRefs: [{name: a, port: 80}]\n",
        ),
    ];
    let p = start(port, &docs, &[]).await;
    let http = HttpClient::new();
    let gw = p.addr(port);
    assert_eq!(http.get(gw, "good.test", "/").await.backend(), "a");
    assert_eq!(http.get(gw, "missing.test", "/").await.status, 500);
    assert_eq!(http.get(gw, "empty.test", "/").await.status, 503);
    assert_eq!(
        http.get(gw, "bad.test", "/").await.status,
        404,
        "a rejected route serves nothing"
    );
    let mut statuses: BTreeMap<u16, u32> = BTreeMap::new();
    for _ in 0..400 {
        *statuses
            .entry(http.get(gw, "half.test", "/").await.status.as_u16())
            .or_default() += 1;
    }
    let ok = statuses.get(&200).copied().unwrap_or_default();
    let failed = statuses.get(&500).copied().unwrap_or_default();
    assert_eq!(ok + failed, 400, "{statuses:?}");
    assert!(
        (140..=260).contains(&ok),
        "half the traffic should reach the valid backend: {statuses:?}"
    );
    // The rejected route is reported with its file, object and reason.
    let logs = p.proc.logs();
    assert!(
        logs.contains("config.yaml") && logs.contains("HTTPRoute default/bad-regex"),
        "{logs}"
    );
    assert!(
        logs.contains("UnsupportedValue") && logs.contains("BackendNotFound"),
        "{logs}"
    );
    // Each answer the gateway gave itself says why in the access log.
    assert_eq!(http.get(gw, "nowhere.test", "/").await.status, 404);
    for reason in ["route=none", "route=no_backend", "upstream=no_endpoints"] {
        p.await_logged(reason).await;
    }
}

#[tokio::test]
async fn reloads_on_change_and_keeps_the_last_good_config() {
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let port = pick_port();
    let base = two_backends(port, &a, &b);
    let p = Portico::start(&[("base.yaml", &base), ("route.yaml", &route_to("a"))], &[]).await;
    let http = HttpClient::new();
    let gw = p.addr(port);
    assert_eq!(http.get(gw, "x.test", "/").await.backend(), "a");

    p.config.write("route.yaml", &route_to("b"));
    await_some("the route to switch to b", || async {
        (http.get(gw, "x.test", "/").await.backend() == "b").then_some(())
    })
    .await;

    // A broken file: the whole change is rejected and b keeps serving.
    p.config
        .write("route.yaml", &format!("{}\n  broken: [\n", route_to("a")));
    p.await_logged("configuration rejected").await;
    let logs = p.proc.logs();
    assert!(
        logs.contains("route.yaml") && logs.contains("malformed YAML"),
        "{logs}"
    );
    for _ in 0..20 {
        assert_eq!(http.get(gw, "x.test", "/").await.backend(), "b");
    }
    // An unknown kind is rejected the same way, naming the object.
    p.config.write(
        "route.yaml",
        "apiVersion: v1\nkind: PodTemplate\nmetadata: {name: stray}\n",
    );
    await_some("the unknown kind to be logged", || async {
        p.proc.logs().contains("PodTemplate stray").then_some(())
    })
    .await;
    assert_eq!(http.get(gw, "x.test", "/").await.backend(), "b");

    // Fixed again: served again.
    p.config.write("route.yaml", &route_to("a"));
    await_some("the route to switch back to a", || async {
        (http.get(gw, "x.test", "/").await.backend() == "a").then_some(())
    })
    .await;
    let metrics = p.metrics().await;
    assert!(
        metrics.contains("portico_config_errors_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_change_whose_socket_cannot_be_bound_is_refused_and_nothing_stops_serving() {
    let a = Echo::start("a");
    let port = pick_port();
    let docs = [service("a", &[a.addr], None), route_to("a")].concat();
    let p = Portico::start(
        &[
            (
                "gateway.yaml",
                &format!("{CLASS}{}", gateway("gw", port, None)),
            ),
            ("route.yaml", &docs),
        ],
        &[],
    )
    .await;
    let http = HttpClient::new();
    let admin = |path: &'static str| {
        let http = http.clone();
        let addr = p.admin;
        async move { http.get(addr, "admin", path).await.status }
    };
    assert_eq!(http.get(p.addr(port), "x.test", "/").await.status, 200);
    // Another process holds the port the listener moves to.
    let taken = free_port(p.ip);
    let _squatter = std::net::TcpListener::bind((p.ip, taken)).expect("hold the port");
    p.config.write(
        "gateway.yaml",
        &format!("{CLASS}{}", gateway("gw", taken, None)),
    );
    p.await_logged("configuration refused").await;
    let logs = p.proc.logs();
    assert!(logs.contains(&format!("{}:{taken}", p.ip)), "{logs}");
    // The old socket was never closed: served, and ready.
    for _ in 0..10 {
        assert_eq!(http.get(p.addr(port), "x.test", "/").await.status, 200);
    }
    assert_eq!(admin("/readyz").await, 200);
    assert!(p.metrics().await.contains("portico_config_errors_total 1"));

    // Deleting the Gateway's file serves nothing: not ready.
    std::fs::remove_file(p.config.path().join("gateway.yaml")).expect("remove");
    await_some("readiness to drop", || async {
        (admin("/readyz").await == 503).then_some(())
    })
    .await;
}

#[tokio::test]
async fn config_swaps_do_not_fail_requests_in_flight() {
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let port = pick_port();
    let base = two_backends(port, &a, &b);
    let p = Portico::start(
        &[("base.yaml", &base), ("route.yaml", &route_to("a"))],
        &["--access-log", "false"],
    )
    .await;
    let gw = p.addr(port);
    let load = tokio::spawn(async move {
        let http = HttpClient::new();
        let mut seen = BTreeMap::<String, u32>::new();
        for _ in 0..1500 {
            let r = http.get(gw, "x.test", "/?delay_ms=1").await;
            assert_eq!(r.status, 200, "{}", r.text());
            *seen.entry(r.backend()).or_default() += 1;
        }
        seen
    });
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        p.config
            .write("route.yaml", &route_to(if i % 2 == 0 { "b" } else { "a" }));
    }
    let seen = load.await.expect("load task");
    assert!(
        seen.len() == 2,
        "both backends served during the swaps: {seen:?}"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let a = Echo::start("a");
    let port = pick_port();
    let mut p = start_single(port, &a, &[]).await;
    let gw = p.addr(port);
    let slow =
        tokio::spawn(async move { HttpClient::new().get(gw, "x.test", "/?delay_ms=1500").await });
    // Wait until the backend has the request, then ask the gateway to stop.
    await_some("the slow request to reach the backend", || async {
        (a.requests().await == 1).then_some(())
    })
    .await;
    p.proc.terminate();
    await_some("the gateway to stop accepting", || async {
        std::net::TcpStream::connect_timeout(&gw, Duration::from_millis(100))
            .is_err()
            .then_some(())
    })
    .await;
    let r = slow.await.expect("slow request task");
    assert_eq!(r.status, 200, "the in-flight request completes");
    assert_eq!(r.backend(), "a");
    let status = p
        .proc
        .wait_exit(DEADLINE)
        .expect("portico exits after draining");
    assert!(status.success(), "{status:?}");
    assert!(p.proc.logs().contains("all connections closed"));
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused_and_not_forwarded() {
    let a = Echo::start("a");
    let port = pick_port();
    let p = start_single(port, &a, &[]).await;
    let gw = p.addr(port);
    let bad_line = raw_exchange(gw, b"GARBAGE\r\n\r\n");
    assert!(bad_line.starts_with("HTTP/1.1 400"), "{bad_line:?}");
    let bad_header = raw_exchange(gw, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n");
    assert!(bad_header.starts_with("HTTP/1.1 400"), "{bad_header:?}");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let too_large = raw_exchange(gw, huge.as_bytes());
    assert!(too_large.starts_with("HTTP/1.1 431"), "{too_large:?}");
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let too_many = raw_exchange(
        gw,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    );
    assert!(too_many.starts_with("HTTP/1.1 431"), "{too_many:?}");
    let no_host = raw_exchange(gw, b"GET / HTTP/1.1\r\n\r\n");
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host:?}");
    assert_eq!(a.requests().await, 0, "nothing reached the backend");
    // And the gateway is still fine.
    let ok = raw_exchange(
        gw,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok:?}");
    assert_eq!(a.requests().await, 1);
}

#[tokio::test]
async fn h2c_downstream_and_upstream() {
    let a = Echo::start("a");
    let port = pick_port();
    let docs = vec![
        service("h1", &[a.addr], None),
        service("h2", &[a.addr], Some("kubernetes.io/h2c")),
        route(
            "r",
            "  rules:\n  - matches: [{path: {type: PathPrefix, value: /h2}}]\n    backendRefs: [{name: h2, port: 80}]\n  - backendRefs: [{name: h1, port: 80}]\n",
        ),
    ];
    let p = start(port, &docs, &[]).await;
    // :authority names the host (an HTTP/2 client that sent a differing Host would get 400).
    let mut h2 = portico_tests::tls::Conn::h2c(p.addr(port))
        .await
        .expect("h2c");
    let r = h2.get("x.test", "/h1").await.expect("h2c request");
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2, "downstream spoke h2c");
    assert_eq!(r.json()["protocol"], "HTTP/1.1");
    assert_eq!(r.json()["host"], "x.test");
    let r = HttpClient::new().get(p.addr(port), "x.test", "/h2").await;
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(r.json()["protocol"], "HTTP/2.0", "upstream spoke h2c");
}

#[tokio::test]
async fn forwarding_headers_request_ids_and_hop_by_hop() {
    let a = Echo::start("a");
    let port = pick_port();
    let p = start_single(port, &a, &["--log-format", "json"]).await;
    let http = HttpClient::new();
    let r = http
        .get_with(
            p.addr(port),
            "fwd.test",
            "/?token=secret-value",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("connection", "x-private"),
                ("x-private", "1"),
                ("x-request-id", "req-123"),
            ],
        )
        .await;
    // The client connects from 127.0.0.1 (the kernel's source address for loopback); at the
    // edge (no trusted hops) what the client wrote in X-Forwarded-For is dropped.
    assert_eq!(
        r.seen_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(r.seen_header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        r.seen_header("x-forwarded-host").as_deref(),
        Some("fwd.test")
    );
    assert_eq!(r.seen_header("x-request-id").as_deref(), Some("req-123"));
    assert_eq!(
        r.seen_header("x-private"),
        None,
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(r.header("x-request-id"), Some("req-123"));
    let r = http.get(p.addr(port), "fwd.test", "/").await;
    let generated = r
        .header("x-request-id")
        .expect("a request id is generated")
        .to_string();
    assert_eq!(generated.len(), 32);
    assert_eq!(r.seen_header("x-request-id"), Some(generated.clone()));
    // The access log is JSON with the request id, and never carries the query string.
    let logs = p.proc.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(&generated))
        .unwrap_or_else(|| panic!("no access log line for {generated}:\n{logs}"));
    let entry: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    assert_eq!(entry["target"], "access");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["route"], "default/r");
    assert!(
        !logs.contains("secret-value"),
        "query strings stay out of logs"
    );
}

#[tokio::test]
async fn admin_endpoints_and_metrics() {
    let a = Echo::start("a");
    let port = pick_port();
    let p = start_single(port, &a, &[]).await;
    let http = HttpClient::new();
    assert_eq!(http.get(p.admin, "admin", "/healthz").await.status, 200);
    assert_eq!(http.get(p.admin, "admin", "/readyz").await.status, 200);
    for _ in 0..3 {
        http.get(p.addr(port), "m.test", "/").await;
    }
    let m = p.metrics().await;
    assert!(
        m.contains(
            r#"portico_requests_total{code_class="2xx",gateway="default/gw",listener="http",route="default/r"} 3"#
        ),
        "{m}"
    );
    for name in [
        "portico_build_info{version=",
        "portico_requests_in_flight 0",
        "portico_upstream_request_duration_seconds_count{backend=\"default/a:80\"} 3",
        "portico_tls_handshake_errors_total 0",
    ] {
        assert!(m.contains(name), "{name}\n{m}");
    }
    assert!(
        m.contains(
            r#"portico_request_duration_seconds_count{gateway="default/gw",listener="http",route="default/r"} 3"#
        ),
        "{m}"
    );
    assert!(m.contains("portico_config_version 1"), "{m}");
}

#[tokio::test]
async fn request_timeout_answers_504() {
    let a = Echo::start("a");
    let port = pick_port();
    let docs = vec![
        service("a", &[a.addr], None),
        route(
            "r",
            "  rules:\n  - matches: [{path: {type: PathPrefix, value: /slow}}]\n    timeouts: {request: 300ms}\n    backendRefs: [{name: a, port: 80}]\n  - timeouts: {backendRequest: 300ms, request: 5s}\n    backendRefs: [{name: a, port: 80}]\n",
        ),
    ];
    let p = start(port, &docs, &[]).await;
    let http = HttpClient::new();
    assert_eq!(
        http.get(p.addr(port), "t.test", "/slow?delay_ms=2000")
            .await
            .status,
        504
    );
    assert_eq!(
        http.get(p.addr(port), "t.test", "/other?delay_ms=2000")
            .await
            .status,
        504
    );
    assert_eq!(
        http.get(p.addr(port), "t.test", "/slow?delay_ms=1")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn gateways_share_a_port_on_different_addresses() {
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let (ip1, ip2) = (loopback_ip(), loopback_ip());
    let port = free_port(ip1);
    let route_for = |name: &str, gw: &str, svc: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  parentRefs: [{{name: {gw}}}]\n  rules:\n  - backendRefs: [{{name: {svc}, port: 80}}]\n"
        )
    };
    let config = [
        CLASS.to_string(),
        gateway("one", port, Some(ip1)),
        gateway("two", port, Some(ip2)),
        service("a", &[a.addr], None),
        service("b", &[b.addr], None),
        route_for("r1", "one", "a"),
        route_for("r2", "two", "b"),
    ]
    .concat();
    let p = Portico::start(&[("config.yaml", &config)], &[]).await;
    let http = HttpClient::new();
    assert_eq!(
        http.get(SocketAddr::new(ip1, port), "x", "/")
            .await
            .backend(),
        "a"
    );
    assert_eq!(
        http.get(SocketAddr::new(ip2, port), "x", "/")
            .await
            .backend(),
        "b"
    );
    drop(p);
}

#[test]
fn check_names_file_object_and_reason() {
    let dir = TempDir::new("check");
    let conflict = "---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: portico
  listeners:
  - {name: one, port: 80, protocol: HTTP}
  - {name: two, port: 80, protocol: HTTP}
  - {name: three, port: 81, protocol: HTTP}
";
    dir.write("gateway.yaml", &format!("{CLASS}{conflict}"));
    dir.write(
        "routes.yaml",
        &route(
            "bad-regex",
            "  rules:\n  - matches: [{path: {type: RegularExpression, value: \"[\"}}]\n",
        ),
    );
    let check = |extra: &[&str]| {
        std::process::Command::new(&binaries().portico)
            .arg("check")
            .arg(dir.path())
            .args(extra)
            .output()
            .expect("run portico check")
    };
    let out = check(&[]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "problem: gateway.yaml: Gateway default/gw listener one: Conflicted=True (HostnameConflict)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("problem: routes.yaml: HTTPRoute default/bad-regex parent default/gw: Accepted=False (UnsupportedValue)"),
        "{stdout}"
    );
    // Problems, then one line to sum up; the status only when asked.
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("1 Gateway, 1 route, 0 policies, "),
        "{stdout}"
    );
    assert!(!stdout.contains("attachedRoutes"), "{stdout}");
    let out = check(&["--status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("attachedRoutes"),
        "the full status on request"
    );
    // Wrong usage is 2.
    assert_eq!(check(&["--no-such-flag"]).status.code(), Some(2));

    // A file that does not parse fails the check (and would fail start-up) with its name.
    dir.write("broken.yaml", "kind: [\n");
    let stderr = Portico::refused_start(dir.path());
    assert!(
        stderr.contains("broken.yaml: document 1: malformed YAML"),
        "{stderr}"
    );
}

#[test]
fn typos_and_references_nothing_serves_fail_the_check_loudly() {
    let dir = TempDir::new("typos");
    let check = |extra: &[&str]| {
        let out = std::process::Command::new(&binaries().portico)
            .arg("check")
            .arg(dir.path())
            .args(extra)
            .output()
            .expect("run portico check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    dir.write(
        "gateway.yaml",
        &format!("{CLASS}{}", gateway("gw", 8080, None)),
    );
    // `backendRef` for `backendRefs`: refused with its path, not dropped.
    dir.write(
        "route.yaml",
        &route("web", "  rules:\n  - backendRef: [{name: svc, port: 80}]\n"),
    );
    let (code, out) = check(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("error: route.yaml: HTTPRoute web: unknown field spec.rules[0].backendRef"),
        "{out}"
    );
    // Downgraded, it is a warning and the rest is checked.
    let (_, out) = check(&["--unknown-fields", "warn"]);
    assert!(
        out.contains(
            "warning: route.yaml: HTTPRoute web: unknown field spec.rules[0].backendRef (ignored)"
        ),
        "{out}"
    );
    // A type error names the field and the line.
    dir.write(
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: default}\nspec:\n  parentRefs: [{name: gw, port: eighty}]\n",
    );
    let (_, out) = check(&[]);
    assert!(
        out.contains("spec.parentRefs[0].port: invalid type"),
        "{out}"
    );
    assert!(out.contains("line 5"), "{out}");
    // References nothing takes up: each says why.
    dir.write(
        "route.yaml",
        &format!(
            "{}{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: lost, namespace: default}}\nspec:\n  gatewayClassName: portico-typo\n  listeners: [{{name: http, port: 8081, protocol: HTTP}}]\n",
            route("web", "  rules:\n  - backendRefs: []\n").replace("{name: gw}", "{name: gww}"),
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: theirs}\nspec: {controllerName: example.com/other}\n",
        ),
    );
    let (code, out) = check(&[]);
    assert_eq!(code, Some(1), "{out}");
    for expected in [
        "problem: route.yaml: HTTPRoute default/web parent default/gww: Served=False (NoSuchGateway): Gateway default/gww does not exist",
        "problem: route.yaml: Gateway default/lost: Served=False (NoSuchGatewayClass): GatewayClass portico-typo does not exist",
        "problem: route.yaml: GatewayClass theirs: Served=False (OtherController)",
    ] {
        assert!(out.contains(expected), "{expected}\n{out}");
    }
    assert!(
        out.ends_with("2 Gateways, 1 route, 0 policies, 3 problems\n"),
        "{out}"
    );
}

#[tokio::test]
async fn standalone_takes_a_directory_or_one_file_as_users_try_them() {
    let ip = loopback_ip();
    let port = free_port(ip);
    let dir = TempDir::new("forms");
    let redirect = route(
        "r",
        "  rules:\n  - filters: [{type: RequestRedirect, requestRedirect: {hostname: moved.test}}]\n",
    );
    dir.write(
        "all.yaml",
        &format!("{CLASS}{}{redirect}", gateway("gw", port, None)),
    );
    let file = dir.path().join("all.yaml").display().to_string();
    let folder = dir.path().display().to_string();
    for form in [vec![folder.as_str()], vec!["--config", file.as_str()]] {
        let admin = SocketAddr::new(ip, free_port(ip));
        let admin_s = admin.to_string();
        let ip_s = ip.to_string();
        let mut args = vec!["standalone"];
        args.extend(form.iter().copied());
        args.extend(["--bind-address", &ip_s, "--admin-address", &admin_s]);
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let _p = Proc::spawn_with_env("portico", &binaries().portico, &args, &[]);
        let http = HttpClient::new();
        await_some(&format!("portico standalone {form:?}"), || async {
            http.try_get(SocketAddr::new(ip, port), "x.test", "/", &[])
                .await
                .filter(|r| r.status == 302)
        })
        .await;
    }
}

#[tokio::test]
async fn bodies_stream_both_ways_and_endpoints_rotate() {
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    // A port nothing listens on: connecting is refused.
    let closed_ip = loopback_ip();
    let closed = SocketAddr::new(closed_ip, free_port(closed_ip));
    let port = pick_port();
    let docs = vec![
        service("both", &[a.addr, b.addr], None),
        service("closed", &[closed], None),
        route(
            "r",
            "  rules:\n  - matches: [{path: {type: PathPrefix, value: /closed}}]\n    backendRefs: [{name: closed, port: 80}]\n  - backendRefs: [{name: both, port: 80}]\n",
        ),
    ];
    let p = start(port, &docs, &[]).await;
    let http = HttpClient::new();
    let gw = p.addr(port);

    let upload = bytes::Bytes::from(vec![b'u'; 3 << 20]);
    let r = http
        .try_send("POST", gw, "b.test", "/upload", &[], upload)
        .await
        .expect("upload");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["bodyLength"],
        3 << 20,
        "the whole request body arrives"
    );
    let r = http.get(gw, "b.test", "/download?size=5242880").await;
    assert_eq!(r.body.len(), 5 << 20, "the whole response body arrives");

    let names: Vec<String> = backends_of_six_requests(&http, gw).await;
    assert!(
        names.windows(2).all(|w| w[0] != w[1]),
        "round robin alternates between the two endpoints: {names:?}"
    );
    let r = http.get(gw, "b.test", "/closed").await;
    assert_eq!(r.status, 503, "a refused connection is 503: {}", r.text());
    p.await_logged("upstream=connect_refused").await;
    assert!(
        p.metrics().await.contains(
            "portico_upstream_errors_total{backend=\"default/closed:80\",reason=\"connect_refused\"} 1"
        ),
        "connect errors are counted apart from 5xx"
    );
}

/// Six sequential requests, in order.
async fn backends_of_six_requests(http: &HttpClient, gw: SocketAddr) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(http.get(gw, "b.test", "/rr").await.backend());
    }
    names
}

/// Portico on `ip` serving `files` (name, text).
async fn serve_files(ip: IpAddr, files: &[(String, String)]) -> Portico {
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    Portico::start_on(ip, &refs, &[]).await
}

/// The text of every file of `deploy/examples/<name>`, with `replace` applied.
fn example(name: &str, replace: &[(&str, String)]) -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples")
        .join(name);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("example dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let mut text = std::fs::read_to_string(&path).expect("read");
            for (from, to) in replace {
                text = text.replace(from, to);
            }
            files.push((
                path.file_name()
                    .expect("name")
                    .to_string_lossy()
                    .to_string(),
                text,
            ));
        }
    }
    files
}

#[tokio::test]
async fn the_feature_examples_work_as_committed() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    for name in [
        "https",
        "grpc",
        "filters",
        "cross-namespace",
        "listenerset",
        "multi-gateway",
        "quickstart",
        "backend",
        "cache",
        "tcp",
        "tls-passthrough",
        "udp",
    ] {
        let out = std::process::Command::new(&binaries().portico)
            .arg("check")
            .arg(examples.join(name))
            .output()
            .expect("portico check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}:\n{stdout}");
        assert!(
            stdout.trim_end().ends_with(" 0 problems"),
            "{name}:\n{stdout}"
        );
    }
    // Served, with their fixed addresses moved to this test's own.
    let echo = Echo::start("echo");
    let next = Echo::start("echo-next");
    let http = HttpClient::new();
    let start = |name: &str, ports: &[&str]| {
        let ip = loopback_ip();
        let mut replace = vec![
            ("127.0.0.1:9021", echo.addr.to_string()),
            ("127.0.0.1:9022", next.addr.to_string()),
        ];
        let mut mapped = Vec::new();
        for p in ports {
            let free = free_port(ip);
            replace.push((*p, free.to_string()));
            mapped.push(free);
        }
        (ip, mapped, example(name, &replace))
    };

    let (ip, ports, files) = start("filters", &["8083"]);
    let p = serve_files(ip, &files).await;
    let r = http
        .get(p.addr(ports[0]), "filters.example.test", "/api/v1/users")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/users");
    assert_eq!(r.seen_header("x-env").as_deref(), Some("demo"));
    assert_eq!(r.header("x-served-by"), Some("portico"));
    let r = http
        .try_request(
            "OPTIONS",
            p.addr(ports[0]),
            "filters.example.test",
            "/api/v1/users",
            &[
                ("origin", "https://app.example.test"),
                ("access-control-request-method", "PUT"),
            ],
        )
        .await
        .expect("a preflight answer");
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.test")
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, PUT, DELETE")
    );
    let r = http
        .get(p.addr(ports[0]), "filters.example.test", "/orders")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/orders");
    let mut copied = 0;
    for _ in 0..100 {
        copied = next.requests().await;
        if copied > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(copied, 1, "the mirror got its copy");
    let r = http
        .get(p.addr(ports[0]), "filters.example.test", "/login")
        .await;
    assert_eq!(r.status, 301);
    assert!(
        r.header("location")
            .is_some_and(|l| l.starts_with("https://filters.example.test"))
    );
    drop(p);

    let (ip, ports, files) = start("cross-namespace", &["8084"]);
    let p = serve_files(ip, &files).await;
    let r = http.get(p.addr(ports[0]), "team-a.example.test", "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    drop(p);

    // A ListenerSet's listeners, on the Gateway's port and on one of their own: its route
    // is served on them and never on the platform's hostname, whose route stays its own.
    let (ip, ports, files) = start("listenerset", &["8086", "8087"]);
    let p = serve_files(ip, &files).await;
    for port in &ports {
        let r = http.get(p.addr(*port), "team-a.example.test", "/x").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["name"], "echo", "team A's backend");
    }
    let r = http
        .get(p.addr(ports[0]), "platform.example.test", "/x")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "echo-next", "the platform's own route");
    let r = http
        .get(p.addr(ports[1]), "platform.example.test", "/x")
        .await;
    assert_eq!(
        r.status, 404,
        "the platform's hostname is not on team A's port"
    );
    drop(p);

    let (public, internal) = (loopback_ip(), loopback_ip());
    let (ip, ports, mut files) = start("multi-gateway", &["8085"]);
    for (_, text) in &mut files {
        *text = text
            .replace("127.0.0.21", &public.to_string())
            .replace("127.0.0.22", &internal.to_string());
    }
    let p = serve_files(ip, &files).await;
    let r = http
        .get(SocketAddr::new(public, ports[0]), "any.test", "/")
        .await;
    assert_eq!(r.status, 200);
    let r = http
        .get(SocketAddr::new(internal, ports[0]), "any.test", "/")
        .await;
    assert_eq!(r.status, 302);
    assert!(
        r.header("location").is_some_and(|l| l.ends_with("/status")),
        "{:?}",
        r.headers
    );
    drop(p);

    let (ip, ports, files) = start("https", &["8443"]);
    let cert = {
        let text = &files[0].1;
        let begin = text.find("-----BEGIN CERTIFICATE-----").expect("cert");
        let end = text.find("-----END CERTIFICATE-----").expect("cert end");
        text[begin..end + "-----END CERTIFICATE-----".len()]
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let p = serve_files(ip, &files).await;
    let mut conn =
        portico_tests::tls::Conn::connect(p.addr(ports[0]), "app.example.test", &[&cert], &[b"h2"])
            .await
            .expect("TLS with the example's certificate");
    let r = conn.get("app.example.test", "/").await.expect("request");
    assert_eq!(r.status, 200);
    drop(p);

    // DNS over UDP: a datagram to the listener reaches the resolver (a UDP echo here) and
    // its answer comes back from the gateway's address (the client socket is connected).
    let resolver = Echo::start_udp("resolver");
    let (ip, ports, files) = start("udp", &["5353"]);
    let files: Vec<(String, String)> = files
        .into_iter()
        .map(|(n, t)| (n, t.replace("127.0.0.1:9053", &resolver.addr.to_string())))
        .collect();
    let p = serve_files(ip, &files).await;
    let client = tokio::net::UdpSocket::bind((ip, 0)).await.expect("socket");
    client.connect(p.addr(ports[0])).await.expect("connect");
    client.send(b"query").await.expect("send");
    let mut answer = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), client.recv(&mut answer))
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(&answer[..n], b"resolver query");
    drop(p);

    // gRPC over h2c: the method routes to the h2c backend (the echo speaks h2c).
    let (ip, ports, files) = start("grpc", &["8082"]);
    let files: Vec<(String, String)> = files
        .into_iter()
        .map(|(n, t)| (n, t.replace("127.0.0.1:9022", &echo.addr.to_string())))
        .collect();
    let p = serve_files(ip, &files).await;
    let mut h2 = portico_tests::tls::Conn::h2c(p.addr(ports[0]))
        .await
        .expect("h2c");
    let r = h2
        .send(
            "POST",
            "grpc.example.test",
            "/helloworld.Greeter/SayHello",
            &[("content-type", "application/grpc")],
            bytes::Bytes::from_static(b"\0\0\0\0\0"),
        )
        .await
        .expect("gRPC request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("/helloworld.Greeter/SayHello"),
        "{}",
        r.text()
    );
    drop(p);

    // BackendPolicy: of three endpoints one is dead; no request fails, and it is ejected
    // after three refusals in a row, as policy.yaml says.
    let second = Echo::start("echo-2");
    let (ip, ports, files) = start("backend", &["8086"]);
    let dead = SocketAddr::new(ip, free_port(ip));
    let files: Vec<(String, String)> = files
        .into_iter()
        .map(|(n, t)| {
            let t = t
                .replace("127.0.0.1:9031", &echo.addr.to_string())
                .replace("127.0.0.1:9032", &second.addr.to_string())
                .replace("127.0.0.1:9033", &dead.to_string());
            (n, t)
        })
        .collect();
    let p = serve_files(ip, &files).await;
    for _ in 0..20 {
        let r = http.get(p.addr(ports[0]), "api.example.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let metrics = p.metrics().await;
    let ejections = metrics
        .lines()
        .find(|l| {
            l.starts_with("portico_upstream_endpoint_ejections_total{backend=\"default/api:80\"}")
        })
        .unwrap_or_else(|| panic!("ejections in {metrics}"));
    assert!(ejections.ends_with(" 1"), "{ejections}");
    // JSON answers are compressed for a client that accepts it, and say they vary by it.
    let plain = http.get(p.addr(ports[0]), "api.example.test", "/").await;
    let packed = http
        .get_with(
            p.addr(ports[0]),
            "api.example.test",
            "/",
            &[("accept-encoding", "gzip")],
        )
        .await;
    assert_eq!(packed.header("content-encoding"), Some("gzip"));
    assert_eq!(packed.header("vary"), Some("accept-encoding"));
    assert_eq!(plain.header("content-encoding"), None);
    assert!(
        packed.body.len() < plain.body.len(),
        "{} < {}",
        packed.body.len(),
        plain.body.len()
    );
    // /cart keeps a session: the cookie of the first answer pins the client to its endpoint.
    let first = http
        .get(p.addr(ports[0]), "api.example.test", "/cart")
        .await;
    let set = first
        .header("set-cookie")
        .unwrap_or_else(|| panic!("a session cookie: {:?}", first.headers));
    assert!(
        set.starts_with("cart=") && set.contains("Path=/cart"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap_or_default().to_string();
    let name = |r: &Resp| {
        serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .map(|v| v["name"].clone())
    };
    for _ in 0..10 {
        let r = http
            .get_with(
                p.addr(ports[0]),
                "api.example.test",
                "/cart",
                &[("cookie", &cookie)],
            )
            .await;
        assert_eq!(name(&r), name(&first), "pinned");
    }
    drop(p);

    // The cache example: stored, then answered from the cache, the utm parameter left out
    // of the key; a purge by prefix on the admin port empties it.
    let (ip, ports, files) = start("cache", &["8084"]);
    let files: Vec<(String, String)> = files
        .into_iter()
        .map(|(n, t)| (n, t.replace("127.0.0.1:9014", &echo.addr.to_string())))
        .collect();
    let p = serve_files(ip, &files).await;
    let status = |r: &Resp| r.header("cache-status").unwrap_or_default().to_string();
    let first = http
        .get(
            p.addr(ports[0]),
            "shop.test",
            "/catalog/items?cc=max-age%3D30",
        )
        .await;
    assert!(status(&first).contains("stored"), "{}", status(&first));
    let hit = http
        .get(
            p.addr(ports[0]),
            "shop.test",
            "/catalog/items?cc=max-age%3D30&utm_source=mail",
        )
        .await;
    assert!(status(&hit).contains("hit"), "{}", status(&hit));
    assert_eq!(hit.body, first.body);
    let prefix = format!("http%3A%2F%2Fshop.test%3A{}%2Fcatalog%2F", ports[0]);
    let purged = http
        .try_request(
            "POST",
            p.admin,
            "admin",
            &format!("/cache/purge?prefix={prefix}"),
            &[],
        )
        .await
        .expect("admin answers");
    assert_eq!(purged.json()["purged"], 1, "{}", purged.text());
}
