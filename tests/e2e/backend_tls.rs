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

/// Reads one line: a greeting or an echo.
async fn line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<String> {
    use tokio::io::AsyncBufReadExt;
    let mut text = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        reader.read_line(&mut text),
    )
    .await
    .map_err(std::io::Error::other)??;
    Ok(text.trim_end().to_string())
}

/// A plain TCP connection's greeting (`None`: closed without one).
async fn tcp_greeting(addr: SocketAddr) -> Option<String> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut reader = tokio::io::BufReader::new(stream);
    line(&mut reader).await.ok().filter(|l| !l.is_empty())
}

/// A TLS connection's greeting, trusting `ca_pem`, asking for `server_name`; then one echo.
async fn tls_greeting(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
) -> std::io::Result<String> {
    use tokio::io::AsyncWriteExt;
    let config = tls::client_config(&[ca_pem], &[]).map_err(std::io::Error::other)?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(std::io::Error::other)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let mut reader = tokio::io::BufReader::new(stream);
    let greeting = line(&mut reader).await?;
    reader.get_mut().write_all(b"inside\n").await?;
    assert_eq!(line(&mut reader).await?, "inside");
    Ok(greeting)
}

#[tokio::test]
async fn tcp_and_terminated_tls_routes_reach_a_policy_backend_over_verified_tls_and_passthrough_goes_as_is()
 {
    use tokio::io::AsyncWriteExt;
    let certs = TempDir::new("stream-backend-tls");
    let ca = Ca::new("portico test CA");
    let other_ca = Ca::new("someone else's CA");
    let (cert, key) = ca.leaf(&["db.internal"], &[]);
    let (wrong_cert, wrong_key) = other_ca.leaf(&["db.internal"], &[]);
    // TLS echoes greeting with their name and the SNI they were asked for.
    let db = Echo::start_tls("db", &certs, &cert, &key);
    let impostor = Echo::start_tls("impostor", &certs, &wrong_cert, &wrong_key);
    let (front_cert, front_key) = tls::self_signed(&["front.test"]);
    let ip = loopback_ip();
    let [tcp, term, pass, wrong, broken] = std::array::from_fn(|_| free_port(ip));
    let listeners = format!(
        "  - {{name: tcp, port: {tcp}, protocol: TCP}}
  - {{name: term, port: {term}, protocol: TLS, hostname: front.test, tls: {{mode: Terminate, certificateRefs: [{{name: front}}]}}}}
  - {{name: pass, port: {pass}, protocol: TLS, hostname: db.internal, tls: {{mode: Passthrough}}}}
  - {{name: wrong, port: {wrong}, protocol: TCP}}
  - {{name: broken, port: {broken}, protocol: TCP}}
"
    );
    // `hostnames`: a TLSRoute's (none for a TCPRoute).
    let route = |kind: &str, name: &str, section: &str, svc: &str, hostnames: &str| {
        format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: {section}}}]
  rules: [{{backendRefs: [{{name: {svc}, port: 443}}]}}]
{hostnames}"
        )
    };
    let trusted =
        "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: ca}], hostname: db.internal}";
    let text = [
        gateway_yaml("gw", "", &listeners),
        tls::secret_yaml("front", "default", &front_cert, &front_key),
        config_map("ca", &ca.pem),
        service("db", db.addr),
        service("impostor", impostor.addr),
        service("broken", db.addr),
        route("TCPRoute", "tcp", "tcp", "db", ""),
        route("TLSRoute", "term", "term", "db", "  hostnames: [front.test]\n"),
        route("TLSRoute", "pass", "pass", "db", "  hostnames: [db.internal]\n"),
        route("TCPRoute", "wrong", "wrong", "impostor", ""),
        route("TCPRoute", "broken", "broken", "broken", ""),
        policy("db", "db", trusted),
        policy("impostor", "impostor", trusted),
        // Its CA does not exist: it refuses rather than let anything through.
        policy(
            "broken",
            "broken",
            "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: missing}], hostname: db.internal}",
        ),
    ]
    .concat();
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;

    // TCP in the clear to the gateway, TLS from the gateway with the policy's SNI.
    let stream = tokio::net::TcpStream::connect(portico.addr(tcp))
        .await
        .expect("connect");
    let mut reader = tokio::io::BufReader::new(stream);
    assert_eq!(line(&mut reader).await.expect("greeting"), "db db.internal");
    reader
        .get_mut()
        .write_all(b"through\n")
        .await
        .expect("write");
    assert_eq!(line(&mut reader).await.expect("echo"), "through");

    // Terminated at the gateway (its certificate for front.test), secured again to the
    // backend.
    assert_eq!(
        tls_greeting(portico.addr(term), "front.test", &front_cert)
            .await
            .expect("terminated"),
        "db db.internal"
    );
    // Passed through: the client's own TLS, end to end (a second TLS around it would fail
    // the client's handshake).
    assert_eq!(
        tls_greeting(portico.addr(pass), "db.internal", &ca.pem)
            .await
            .expect("passed through"),
        "db db.internal"
    );

    // A backend whose certificate the policy does not trust, and a policy without a usable
    // CA: closed without a byte, never plaintext.
    assert_eq!(tcp_greeting(portico.addr(wrong)).await, None);
    assert_eq!(tcp_greeting(portico.addr(broken)).await, None);
    let metrics = portico.metrics().await;
    for reason in ["connect_failed", "backend_tls_invalid"] {
        assert!(
            metrics.contains(&format!(
                "portico_tcp_connections_closed_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {metrics}"
        );
    }
}
