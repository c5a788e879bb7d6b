//! HTTPS listeners and GRPCRoutes in standalone mode: a real `portico` process, real TLS
//! handshakes and HTTP/2 on 127.0.0.x, real echo backends.

use bytes::Bytes;
use portico_tests::tls::{Conn, secret_yaml, self_signed, self_signed_until};
use portico_tests::*;
use std::net::SocketAddr;

const BASE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portico}
spec: {controllerName: portico.dev/gateway-controller}
";

/// Gateway `gw` with two HTTPS listeners on `port` (`a.example.com` with Secret `a`,
/// `*.b.example.com` with Secret `b`), Service `echo` and a route from both to it.
fn https_config(port: u16, echo: SocketAddr) -> String {
    format!(
        "{BASE}---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: portico
  listeners:
  - {{name: a, port: {port}, protocol: HTTPS, hostname: a.example.com, tls: {{certificateRefs: [{{name: a}}]}}}}
  - {{name: b, port: {port}, protocol: HTTPS, hostname: \"*.b.example.com\", tls: {{certificateRefs: [{{name: b}}]}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default, annotations: {{portico.dev/endpoints: \"{echo}\"}}}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]
"
    )
}

const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1_ONLY: &[&[u8]] = &[b"http/1.1"];

#[tokio::test]
async fn sni_picks_the_listener_certificate_and_rotation_keeps_connections() {
    let echo = Echo::start("echo");
    let port = free_port(loopback_ip());
    let (a_cert, a_key) = self_signed_until(&["a.example.com"], (2031, 1, 1));
    let (b_cert, b_key) = self_signed(&["*.b.example.com"]);
    let secrets = secret_yaml("a", "default", &a_cert, &a_key)
        + &secret_yaml("b", "default", &b_cert, &b_key);
    let p = Portico::start(
        &[
            ("gateway.yaml", &https_config(port, echo.addr)),
            ("secrets.yaml", &secrets),
        ],
        &[],
    )
    .await;
    let addr = p.addr(port);
    let trusted = [a_cert.as_str(), b_cert.as_str()];

    // SNI a.example.com: certificate a, HTTP/2 by ALPN, the backend sees https.
    let mut a = Conn::connect(addr, "a.example.com", &trusted, H2_AND_H1)
        .await
        .expect("TLS to a.example.com");
    assert!(
        a.presented(&a_cert),
        "a.example.com got another certificate"
    );
    assert_eq!(a.alpn.as_deref(), Some(&b"h2"[..]));
    let r = a.get("a.example.com", "/hello").await.expect("GET over h2");
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.backend(), "echo");
    assert_eq!(r.seen_header("x-forwarded-proto").as_deref(), Some("https"));

    // A name under the wildcard gets certificate b; HTTP/1.1 when that is all it offers.
    let mut b = Conn::connect(addr, "x.b.example.com", &trusted, H1_ONLY)
        .await
        .expect("TLS to x.b.example.com");
    assert!(b.presented(&b_cert));
    assert_eq!(b.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let r = b.get("x.b.example.com", "/").await.expect("GET over h1");
    assert_eq!(
        (r.status.as_u16(), r.version),
        (200, http::Version::HTTP_11)
    );

    // Each listener's requests and certificate have their own series.
    let m = p.metrics().await;
    for series in [
        r#"portico_requests_total{code_class="2xx",gateway="default/gw",listener="a",route="default/r"} 1"#,
        r#"portico_requests_total{code_class="2xx",gateway="default/gw",listener="b",route="default/r"} 1"#,
        r#"portico_tls_certificate_expiration_timestamp_seconds{gateway="default/gw",listener="a",secret="default/a"} 1924992000"#,
        r#"portico_tls_certificate_expiration_timestamp_seconds{gateway="default/gw",listener="b",secret="default/b"}"#,
    ] {
        assert!(m.contains(series), "{series}\n{m}");
    }

    // A request for a host of the other listener on this connection: 421, not routed.
    let r = b.get("a.example.com", "/").await.expect("misdirected GET");
    assert_eq!(r.status, 421);

    // No listener for the name: the handshake fails, nothing is served.
    assert!(
        Conn::connect(addr, "c.example.com", &trusted, H2_AND_H1)
            .await
            .is_err()
    );

    // Rotation: the Secret changes, new handshakes get the new certificate, the open
    // connection keeps working.
    let (a2_cert, a2_key) = self_signed_until(&["a.example.com"], (2032, 6, 1));
    let rotated = secret_yaml("a", "default", &a2_cert, &a2_key)
        + &secret_yaml("b", "default", &b_cert, &b_key);
    p.config.write("secrets.yaml", &rotated);
    let trusted = [a_cert.as_str(), a2_cert.as_str(), b_cert.as_str()];
    await_some("the rotated certificate to be served", || async {
        let c = Conn::connect(addr, "a.example.com", &trusted, H2_AND_H1)
            .await
            .ok()?;
        c.presented(&a2_cert).then_some(())
    })
    .await;
    // The expiry metric follows the certificate being served.
    await_some("the rotated certificate's expiry in the metrics", || async {
        p.metrics().await.contains(r#"portico_tls_certificate_expiration_timestamp_seconds{gateway="default/gw",listener="a",secret="default/a"} 1969660800"#).then_some(())
    })
    .await;
    let r = a
        .get("a.example.com", "/after-rotation")
        .await
        .expect("old connection still open");
    assert_eq!(r.status, 200);
    let r = b
        .get("x.b.example.com", "/")
        .await
        .expect("h1 connection still open");
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_bad_certificate_is_reported_and_only_its_listener_stops() {
    let echo = Echo::start("echo");
    let port = free_port(loopback_ip());
    let (a_cert, a_key) = self_signed(&["a.example.com"]);
    let (b_cert, b_key) = self_signed(&["*.b.example.com"]);
    let (_, wrong_key) = self_signed(&["a.example.com"]);
    let p = Portico::start(
        &[
            ("gateway.yaml", &https_config(port, echo.addr)),
            (
                "secrets.yaml",
                &(secret_yaml("a", "default", &a_cert, &a_key)
                    + &secret_yaml("b", "default", &b_cert, &b_key)),
            ),
        ],
        &[],
    )
    .await;
    let addr = p.addr(port);
    let trusted = [a_cert.as_str(), b_cert.as_str()];
    // Secret a gets a key that does not match its certificate.
    p.config.write(
        "secrets.yaml",
        &(secret_yaml("a", "default", &a_cert, &wrong_key)
            + &secret_yaml("b", "default", &b_cert, &b_key)),
    );
    await_some("the bad certificate to be reported", || async {
        let logs = p.proc.logs();
        (logs.contains("InvalidCertificateRef") && logs.contains("does not belong")).then_some(())
    })
    .await;
    assert!(
        !p.proc.logs().contains("PRIVATE KEY"),
        "key material in the log"
    );
    // Listener a lost its only certificate and is not served; listener b still is.
    await_some("listener a to stop serving", || async {
        Conn::connect(addr, "a.example.com", &trusted, H1_ONLY)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let mut b = Conn::connect(addr, "x.b.example.com", &trusted, H1_ONLY)
        .await
        .expect("listener b still serves");
    assert_eq!(
        b.get("x.b.example.com", "/").await.expect("GET").status,
        200
    );
}

#[tokio::test]
async fn grpc_routes_route_by_service_method_and_header() {
    let (one, two) = (Echo::start("one"), Echo::start("two"));
    let port = free_port(loopback_ip());
    let config = format!(
        "{BASE}---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: portico
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: one, namespace: default, annotations: {{portico.dev/endpoints: \"{}\"}}}}
spec: {{ports: [{{name: grpc, port: 50051}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: two, namespace: default, annotations: {{portico.dev/endpoints: \"{}\"}}}}
spec: {{ports: [{{name: grpc, port: 50051}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: g, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [grpc.test]
  rules:
  - matches:
    - method: {{service: pkg.Echo, method: Say}}
      headers: [{{name: x-tenant, value: two}}]
    backendRefs: [{{name: two, port: 50051}}]
  - matches: [{{method: {{service: pkg.Echo}}}}]
    backendRefs: [{{name: one, port: 50051}}]
  - matches: [{{method: {{service: pkg.Gone}}}}]
    backendRefs: [{{name: missing, port: 50051}}]
",
        one.addr, two.addr
    );
    let p = Portico::start(&[("config.yaml", &config)], &[]).await;
    let gw = p.addr(port);
    let mut conn = Conn::h2c(gw).await.expect("h2c connection");
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let mut call = async |host: &str, path: &str, tenant: Option<&str>| {
        let mut headers = grpc.to_vec();
        if let Some(t) = tenant {
            headers.push(("x-tenant", t));
        }
        // An empty message: compression flag 0, length 0.
        let body = Bytes::from_static(&[0, 0, 0, 0, 0]);
        conn.send("POST", host, path, &headers, body)
            .await
            .expect("gRPC call")
    };
    let r = call("grpc.test", "/pkg.Echo/Say", None).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "one".to_string()));
    // The backend is spoken to in HTTP/2 although its Service port declares nothing.
    assert_eq!(r.json()["protocol"], "HTTP/2.0");
    assert_eq!(r.json()["path"], "/pkg.Echo/Say");
    let r = call("grpc.test", "/pkg.Echo/Say", Some("two")).await;
    assert_eq!(r.backend(), "two");
    let r = call("grpc.test", "/pkg.Echo/Other", Some("two")).await;
    assert_eq!(r.backend(), "one");
    // The gateway's own answers to gRPC clients are gRPC statuses, trailers-only (HTTP 200,
    // grpc-status in the headers, no body).
    let status = |r: &portico_tests::Resp| {
        assert_eq!(r.status, 200, "a gRPC answer: {r:?}");
        assert_eq!(r.headers["content-type"], "application/grpc");
        r.headers["grpc-status"]
            .to_str()
            .unwrap_or_default()
            .to_string()
    };
    // No route: UNIMPLEMENTED.
    assert_eq!(
        status(&call("grpc.test", "/pkg.Other/Say", None).await),
        "12"
    );
    // Another host is not the GRPCRoute's.
    assert_eq!(
        status(&call("other.test", "/pkg.Echo/Say", None).await),
        "12"
    );
    // A backendRef to a Service that does not exist: UNAVAILABLE, as GRPCRoute requires.
    let r = call("grpc.test", "/pkg.Gone/Say", None).await;
    assert_eq!(status(&r), "14");
    assert!(r.body.is_empty(), "{r:?}");
}
