//! Client certificates on HTTPS listeners (the Gateway's `spec.tls.frontend`), end to end: a
//! real `portico` serving a directory, real TLS clients with certificates from test CAs, a
//! real echo backend, sockets on 127.0.0.x.

use portico_tests::tls::{Ca, Conn};
use portico_tests::*;

/// A request over a new TLS connection to `port`, presenting `client` if given: the status,
/// or `None` when the handshake or the exchange fails (a refused client).
async fn status(
    portico: &Portico,
    port: u16,
    server_cert: &str,
    client: Option<(&str, &str)>,
) -> Option<u16> {
    let mut conn = Conn::connect_as(
        portico.addr(port),
        "app.example.test",
        &[server_cert],
        &[b"http/1.1"],
        client,
    )
    .await
    .ok()?;
    let r = conn.get("app.example.test", "/").await.ok()?;
    Some(r.status.as_u16())
}

/// The ConfigMap `clients` holding `ca_pem`, then Service `echo` for `backend`, as YAML.
fn clients_and_echo(ca_pem: &str, backend: std::net::SocketAddr) -> String {
    format!(
        "{}---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: default
  annotations: {{portico.dev/endpoints: \"{backend}\"}}
spec:
  ports: [{{port: 80}}]
",
        tls::ca_config_map_yaml("clients", ca_pem)
    )
}

/// Standalone YAML: Gateway `gw` with its `tls:` block `spec_tls` (YAML at two spaces) and
/// `listeners`, HTTPRoute `r` from it to `echo`, the ConfigMap `clients`, Service `echo`,
/// Secret `server` (`server_cert`, `server_key`), then `extra`.
fn config(
    spec_tls: &str,
    listeners: &str,
    ca_pem: &str,
    backend: std::net::SocketAddr,
    (server_cert, server_key): (&str, &str),
    extra: &str,
) -> String {
    format!(
        "{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]
{}{}{extra}",
        gateway_yaml("gw", spec_tls, listeners),
        clients_and_echo(ca_pem, backend),
        tls::secret_yaml("server", "default", server_cert, server_key),
    )
}

#[tokio::test]
async fn a_port_lets_in_only_clients_its_ca_signed_unless_it_falls_back_insecurely() {
    let echo = Echo::start("echo");
    let ca = Ca::new("clients");
    let stranger_ca = Ca::new("strangers");
    let (client_cert, client_key) = ca.leaf(&["client.example.test"], &[]);
    let (stranger_cert, stranger_key) = stranger_ca.leaf(&["client.example.test"], &[]);
    let (server_cert, server_key) = tls::self_signed(&["app.example.test"]);
    let ip = loopback_ip();
    let (strict, fallback, open) = (free_port(ip), free_port(ip), free_port(ip));
    let listener = |name: &str, port: u16| {
        format!(
            "  - {{name: {name}, port: {port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: server}}]}}}}\n"
        )
    };
    let frontend = format!(
        "  tls:
    frontend:
      default:
        validation:
          caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: clients}}]
      perPort:
      - port: {fallback}
        tls:
          validation:
            mode: AllowInsecureFallback
            caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: clients}}]
      - port: {open}
        tls: {{}}
"
    );
    let listeners = [
        listener("strict", strict),
        listener("fallback", fallback),
        listener("open", open),
    ]
    .concat();
    let text = config(
        &frontend,
        &listeners,
        &ca.pem,
        echo.addr,
        (&server_cert, &server_key),
        "",
    );
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let own = Some((client_cert.as_str(), client_key.as_str()));
    let stranger = Some((stranger_cert.as_str(), stranger_key.as_str()));

    // The default: only a certificate the CA signed.
    assert_eq!(status(&portico, strict, &server_cert, own).await, Some(200));
    assert_eq!(status(&portico, strict, &server_cert, stranger).await, None);
    assert_eq!(status(&portico, strict, &server_cert, None).await, None);
    // AllowInsecureFallback: everyone, whatever they present.
    for client in [own, stranger, None] {
        assert_eq!(
            status(&portico, fallback, &server_cert, client).await,
            Some(200)
        );
    }
    // A port whose own entry asks for nothing.
    assert_eq!(status(&portico, open, &server_cert, None).await, Some(200));
}

/// A request over a new TLS connection presenting `client`: the status and the consumer the
/// backend was told (`x-portico-consumer`), or `None` when the connection fails.
async fn consumer(
    portico: &Portico,
    port: u16,
    server_cert: &str,
    client: Option<(&str, &str)>,
) -> Option<(u16, String)> {
    let mut conn = Conn::connect_as(
        portico.addr(port),
        "app.example.test",
        &[server_cert],
        &[b"http/1.1"],
        client,
    )
    .await
    .ok()?;
    let r = conn.get("app.example.test", "/").await.ok()?;
    let status = r.status.as_u16();
    let who = if status == 200 {
        r.json()["headers"]["x-portico-consumer"][0]
            .as_str()
            .unwrap_or_default()
            .to_string()
    } else {
        String::new()
    };
    Some((status, who))
}

#[tokio::test]
async fn an_auth_policy_takes_the_verified_client_certificate_as_the_consumer() {
    let echo = Echo::start("echo");
    let ca = Ca::new("clients");
    let stranger_ca = Ca::new("strangers");
    let (alice, alice_key) = ca.leaf(&["alice.example.test"], &["spiffe://example.test/alice"]);
    let (bob, bob_key) = ca.leaf(&["bob.example.test"], &["spiffe://example.test/bob"]);
    let (mallory, mallory_key) =
        stranger_ca.leaf(&["alice.example.test"], &["spiffe://example.test/alice"]);
    let (server_cert, server_key) = tls::self_signed(&["app.example.test"]);
    let ip = loopback_ip();
    let port = free_port(ip);
    // The port falls back insecurely, so the policy is what keeps unverified clients out.
    let frontend = "  tls:
    frontend:
      default:
        validation:
          mode: AllowInsecureFallback
          caCertificateRefs: [{group: \"\", kind: ConfigMap, name: clients}]
";
    let listeners = format!(
        "  - {{name: https, port: {port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: server}}]}}}}\n"
    );
    let policy = "---
apiVersion: portico.dev/v1alpha1
kind: AuthPolicy
metadata: {name: mtls, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  mtls: {consumerFrom: URI}
  authorization:
    rules: [{consumers: [\"spiffe://example.test/alice\"]}]
";
    let text = config(
        frontend,
        &listeners,
        &ca.pem,
        echo.addr,
        (&server_cert, &server_key),
        policy,
    );
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    // Alice's certificate verifies and names her: the backend is told who she is.
    assert_eq!(
        consumer(&portico, port, &server_cert, Some((&alice, &alice_key))).await,
        Some((200, "spiffe://example.test/alice".to_string()))
    );
    // Bob verifies too, but the rules allow only Alice.
    assert_eq!(
        consumer(&portico, port, &server_cert, Some((&bob, &bob_key))).await,
        Some((403, String::new()))
    );
    // The same names signed by another CA: let in by the fallback, refused by the policy.
    assert_eq!(
        consumer(&portico, port, &server_cert, Some((&mallory, &mallory_key))).await,
        Some((401, String::new()))
    );
    // No certificate at all.
    assert_eq!(
        consumer(&portico, port, &server_cert, None).await,
        Some((401, String::new()))
    );
}

#[tokio::test]
async fn gateways_that_share_a_socket_cannot_mix_client_validation() {
    // Two Gateways on one address and port (standalone mode binds them together): the
    // first asks nothing of clients, the second asks for a certificate. One handshake serves
    // the socket, so the second's listener is not served rather than served without the
    // check.
    let echo = Echo::start("echo");
    let ca = Ca::new("clients");
    let (server_cert, server_key) = tls::self_signed(&["a.example.test", "b.example.test"]);
    let ip = loopback_ip();
    let port = free_port(ip);
    let gateway = |name: &str, host: &str, frontend: &str| {
        format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: default}}
spec:
  gatewayClassName: portico
{frontend}  listeners:
  - {{name: https, port: {port}, protocol: HTTPS, hostname: {host}, tls: {{certificateRefs: [{{name: server}}]}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: {name}}}]
  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]
"
        )
    };
    let strict = "  tls:\n    frontend:\n      default:\n        validation:\n          caCertificateRefs: [{group: \"\", kind: ConfigMap, name: clients}]\n";
    let text = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portico}}
spec: {{controllerName: portico.dev/gateway-controller}}
{}{}{}{}",
        gateway("a", "a.example.test", ""),
        gateway("b", "b.example.test", strict),
        clients_and_echo(&ca.pem, echo.addr),
        tls::secret_yaml("server", "default", &server_cert, &server_key),
    );
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let get = |host: &'static str| {
        let (addr, cert) = (portico.addr(port), server_cert.clone());
        async move {
            let mut conn = Conn::connect_as(addr, host, &[&cert], &[b"http/1.1"], None)
                .await
                .ok()?;
            let r = conn.get(host, "/").await.ok()?;
            Some(r.status.as_u16())
        }
    };
    assert_eq!(get("a.example.test").await, Some(200));
    // Without a certificate, b's clients must never reach b's route.
    assert_ne!(get("b.example.test").await, Some(200));
}
