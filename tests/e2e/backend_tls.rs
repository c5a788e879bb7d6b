//! BackendTLSPolicy end to end: a real `portico` serving a directory, real HTTPS echo
//! backends (`portico-echo --tls-cert`) with certificates from a test CA, real sockets on
//! 127.0.0.x. The gateway must verify what the backend presents against the policy and send
//! the policy's hostname as SNI, and refuse (never fall back to plaintext or to an
//! unverified connection) when it cannot.

use portico_tests::tls::Ca;
use portico_tests::*;
use std::net::SocketAddr;

/// Our GatewayClass, a Gateway `gw` with an HTTP listener on `port`, and an HTTPRoute
/// sending `/<svc>` to each Service of `services` (port 443).
fn gateway(port: u16, services: &[&str]) -> String {
    gateway_and_route(port, services, "")
}

/// The same, with `spec_extra` in the Gateway's spec (YAML lines at two spaces).
fn gateway_and_route(port: u16, services: &[&str], spec_extra: &str) -> String {
    let rules: String = services
        .iter()
        .map(|s| {
            format!(
                "  - matches: [{{path: {{type: PathPrefix, value: /{s}}}}}]\n    backendRefs: [{{name: {s}, port: 443}}]\n"
            )
        })
        .collect();
    let listeners = format!("  - {{name: http, port: {port}, protocol: HTTP}}\n");
    format!(
        "{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
{rules}",
        gateway_yaml("gw", spec_extra, &listeners)
    )
}

/// A Service `name` (port 443, named `https`) whose one endpoint is `backend`.
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
  ports: [{{name: https, port: 443}}]
"
    )
}

fn config_map(name: &str, ca_pem: &str) -> String {
    tls::ca_config_map_yaml(name, ca_pem)
}

/// A BackendTLSPolicy `name` on Service `svc` with `validation` (a YAML flow mapping).
fn policy(name: &str, svc: &str, validation: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: {svc}}}]
  validation: {validation}
"
    )
}

#[tokio::test]
async fn requests_reach_a_tls_backend_verified_by_ca_hostname_or_san_and_are_refused_otherwise() {
    let certs = TempDir::new("backend-tls");
    let ca = Ca::new("portico test CA");
    let other_ca = Ca::new("someone else's CA");
    let (cert, key) = ca.leaf(
        &["backend.internal"],
        &["spiffe://cluster.local/ns/default/sa/backend"],
    );
    let backend = Echo::start_https("backend", &certs, &cert, &key, None);
    let ip = loopback_ip();
    let port = free_port(ip);
    let cases = [
        // (Service, policy validation, expected status)
        (
            "good",
            "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: ca}], hostname: backend.internal}",
        ),
        (
            "other-ca",
            "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: other-ca}], hostname: backend.internal}",
        ),
        (
            "wrong-name",
            "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: ca}], hostname: wrong.internal}",
        ),
        (
            "by-uri",
            "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: ca}], hostname: sni.internal, subjectAltNames: [{type: URI, uri: \"spiffe://cluster.local/ns/default/sa/backend\"}]}",
        ),
        (
            "wrong-uri",
            "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: ca}], hostname: backend.internal, subjectAltNames: [{type: URI, uri: \"spiffe://cluster.local/ns/default/sa/intruder\"}]}",
        ),
        (
            "by-dns-san",
            "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: ca}], hostname: sni.internal, subjectAltNames: [{type: Hostname, hostname: backend.internal}]}",
        ),
        (
            "no-ca",
            "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: missing}], hostname: backend.internal}",
        ),
    ];
    let mut names: Vec<&str> = cases.iter().map(|(s, _)| *s).collect();
    names.push("plain");
    let mut text = gateway(port, &names);
    text.push_str(&config_map("ca", &ca.pem));
    text.push_str(&config_map("other-ca", &other_ca.pem));
    for (svc, validation) in cases {
        text.push_str(&service(svc, backend.addr));
        text.push_str(&policy(svc, svc, validation));
    }
    // Without a policy the backend gets plaintext, which it cannot read.
    text.push_str(&service("plain", backend.addr));
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let addr = portico.addr(port);
    let http = HttpClient::new();

    // Verified by the CA and the hostname, which is also the SNI (not the request's Host).
    for i in 0..3 {
        let r = http.get(addr, "app.test", "/good").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        let sni = r.json()["headers"]["x-echo-tls-sni"][0].clone();
        assert_eq!(sni, "backend.internal");
    }
    // subjectAltNames replace the hostname check; the SNI is still the hostname.
    let r = http.get(addr, "app.test", "/by-uri").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-echo-tls-sni"][0], "sni.internal");
    let r = http.get(addr, "app.test", "/by-dns-san").await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A certificate the policy does not trust, or for another name, is refused: 503, the
    // backend never gets the request.
    for path in ["/other-ca", "/wrong-name", "/wrong-uri"] {
        let r = http.get(addr, "app.test", path).await;
        assert_eq!(r.status, 503, "{path}: {}", r.text());
    }
    // A policy without a usable CA refuses every request (500, as an invalid policy).
    let r = http.get(addr, "app.test", "/no-ca").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains("policy is invalid"),
        "says why: {}",
        r.text()
    );
    // The policy's problems are in `portico check`.
    let out = std::process::Command::new(&binaries().portico)
        .arg("check")
        .arg(portico.config.path())
        .output()
        .expect("portico check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("BackendTLSPolicy default/no-ca")
            && stdout.contains("InvalidCACertificateRef"),
        "{stdout}"
    );
    let r = http.get(addr, "app.test", "/plain").await;
    assert_eq!(r.status, 502, "{}", r.text());
}

#[tokio::test]
async fn the_gateway_presents_its_client_certificate_to_backends_that_ask() {
    let certs = TempDir::new("backend-client-cert");
    let ca = Ca::new("portico test CA");
    let clients = Ca::new("gateway clients CA");
    let (cert, key) = ca.leaf(&["backend.internal"], &[]);
    let backend = Echo::start_https("backend", &certs, &cert, &key, Some(&clients.pem));
    let (client_cert, client_key) = clients.leaf(&["gateway.portico.test"], &[]);
    let ip = loopback_ip();
    let port = free_port(ip);
    let validation = "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: ca}], hostname: backend.internal}";
    let with_client_cert = |secret: &str| {
        let mut text = gateway_and_route(
            port,
            &["svc"],
            &format!("  tls: {{backend: {{clientCertificateRef: {{name: {secret}}}}}}}\n"),
        );
        text.push_str(&config_map("ca", &ca.pem));
        text.push_str(&service("svc", backend.addr));
        text.push_str(&policy("svc", "svc", validation));
        text.push_str(&tls::secret_yaml(
            "gw-client",
            "default",
            &client_cert,
            &client_key,
        ));
        text
    };
    let portico =
        Portico::start_on(ip, &[("config.yaml", &with_client_cert("gw-client"))], &[]).await;
    let addr = portico.addr(port);
    let http = HttpClient::new();
    let r = http.get(addr, "app.test", "/svc").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["headers"]["x-echo-tls-client-cert"][0],
        "presented"
    );

    // A reference that does not resolve: the Gateway says so (ResolvedRefs), and backends
    // get no client certificate.
    portico
        .config
        .write("config.yaml", &with_client_cert("no-such-secret"));
    await_some("the connection without a client certificate", || async {
        let r = http.get(addr, "app.test", "/svc").await;
        (r.status == 200 && r.json()["headers"]["x-echo-tls-client-cert"][0] == "none")
            .then_some(())
    })
    .await;
    let out = std::process::Command::new(&binaries().portico)
        .arg("check")
        .arg(portico.config.path())
        .output()
        .expect("portico check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Gateway default/gw") && stdout.contains("InvalidClientCertificateRef"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_tcp_route_to_a_service_under_a_backend_tls_policy_is_refused_not_sent_in_plaintext() {
    use tokio::io::AsyncReadExt;
    let backend = Echo::start_tcp("plain-tcp");
    let ip = loopback_ip();
    let port = free_port(ip);
    let text = format!(
        "{}---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: t, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: svc, port: 443}}]}}]
{}{}",
        gateway_yaml(
            "gw",
            "",
            &format!("  - {{name: tcp, port: {port}, protocol: TCP}}\n")
        ),
        service("svc", backend.addr),
        policy(
            "svc",
            "svc",
            "{wellKnownCACertificates: System, hostname: svc.internal}"
        ),
    );
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let mut stream = tokio::net::TcpStream::connect(portico.addr(port))
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed without a byte from the backend"
    );
    let metrics = portico.metrics().await;
    assert!(
        metrics
            .contains("portico_tcp_connections_closed_total{reason=\"backend_tls_unsupported\"} 1"),
        "{metrics}"
    );
}
