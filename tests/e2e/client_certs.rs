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
    let ca_yaml: String = ca.pem.lines().map(|l| format!("    {l}\n")).collect();
    let listener = |name: &str, port: u16| {
        format!(
            "  - {{name: {name}, port: {port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: server}}]}}}}\n"
        )
    };
    let text = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portico}}
spec: {{controllerName: portico.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: portico
  tls:
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
  listeners:
{}{}{}---
apiVersion: v1
kind: ConfigMap
metadata: {{name: clients, namespace: default}}
data:
  ca.crt: |
{ca_yaml}---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: default
  annotations: {{portico.dev/endpoints: \"{}\"}}
spec:
  ports: [{{port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]
{}",
        listener("strict", strict),
        listener("fallback", fallback),
        listener("open", open),
        echo.addr,
        tls::secret_yaml("server", "default", &server_cert, &server_key),
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
