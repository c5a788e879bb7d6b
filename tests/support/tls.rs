//! HTTPS from the client side: certificates for test listeners, and a one-connection client
//! that says which certificate the server presented and which protocol ALPN chose (it also
//! speaks h2c, where a request's `:authority` must be a hostname rather than the address
//! dialled).

use crate::{DEADLINE, Resp};
use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;

/// A self-signed certificate for `names`, as (certificate PEM, key PEM).
pub fn self_signed(names: &[&str]) -> (String, String) {
    self_signed_with(names, |_| {})
}

/// A self-signed certificate valid until midnight (UTC) of `(year, month, day)`.
pub fn self_signed_until(names: &[&str], (y, m, d): (i32, u8, u8)) -> (String, String) {
    self_signed_with(names, |p| p.not_after = rcgen::date_time_ymd(y, m, d))
}

fn self_signed_with(
    names: &[&str],
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("generate key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("certificate params");
    edit(&mut params);
    let cert = params.self_signed(&key).expect("self-sign");
    (cert.pem(), key.serialize_pem())
}

/// A certificate authority that signs leaf certificates for tests.
pub struct Ca {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("generate key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf for DNS `names` and `uris` (subjectAltNames), as (certificate PEM, key PEM).
    pub fn leaf(&self, names: &[&str], uris: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("generate key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("certificate params");
        for u in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(*u).expect("a URI"),
            ));
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// A ConfigMap `name` in `default` whose `ca.crt` is `ca_pem`, as YAML for standalone mode
/// (what BackendTLSPolicies and `spec.tls.frontend` name for CA certificates).
pub fn ca_config_map_yaml(name: &str, ca_pem: &str) -> String {
    let indented: String = ca_pem.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default}}\ndata:\n  ca.crt: |\n{indented}"
    )
}

/// A `kubernetes.io/tls` Secret as YAML for standalone mode.
pub fn secret_yaml(name: &str, ns: &str, cert_pem: &str, key_pem: &str) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n",
        indent(cert_pem),
        indent(key_pem)
    )
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// A TLS client configuration trusting the certificates in `trusted` (PEM), offering
/// `alpn`.
pub fn client_config(
    trusted: &[&str],
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    client_config_as(trusted, alpn, None)
}

/// The same, presenting `client` (certificate PEM, key PEM) when the server asks.
pub fn client_config_as(
    trusted: &[&str],
    alpn: &[&[u8]],
    client: Option<(&str, &str)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in trusted {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert?)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain =
                CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// One connection (TLS, or h2c), kept open across requests.
pub struct Conn {
    /// The protocol ALPN selected.
    pub alpn: Option<Vec<u8>>,
    leaf: Vec<u8>,
    scheme: &'static str,
    sender: Sender,
}

impl Conn {
    /// An HTTP/2 connection without TLS (prior knowledge).
    pub async fn h2c(addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Self {
            alpn: None,
            leaf: Vec::new(),
            scheme: "http",
            sender: Sender::H2(sender),
        })
    }

    /// Connects to `addr` with SNI `server_name` (none if it is an IP address), trusting the
    /// certificates in `trusted` (PEM), offering `alpn`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        trusted: &[&str],
        alpn: &[&[u8]],
    ) -> anyhow::Result<Self> {
        Self::connect_as(addr, server_name, trusted, alpn, None).await
    }

    /// As [`Conn::connect`], presenting `client` (certificate PEM, key PEM) if asked.
    pub async fn connect_as(
        addr: SocketAddr,
        server_name: &str,
        trusted: &[&str],
        alpn: &[&[u8]],
        client: Option<(&str, &str)>,
    ) -> anyhow::Result<Self> {
        let connector = tokio_rustls::TlsConnector::from(client_config_as(trusted, alpn, client)?);
        let name = ServerName::try_from(server_name.to_string())?;
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls = tokio::time::timeout(DEADLINE, connector.connect(name, tcp)).await??;
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let leaf = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(Self {
            alpn,
            leaf,
            scheme: "https",
            sender,
        })
    }

    /// Whether the server presented this certificate (PEM).
    pub fn presented(&self, cert_pem: &str) -> bool {
        CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map(|c| c.as_ref() == self.leaf.as_slice())
            .unwrap_or(false)
    }

    /// Sends `GET path` for `host` on this connection.
    pub async fn get(&mut self, host: &str, path: &str) -> anyhow::Result<Resp> {
        self.send("GET", host, path, &[], Bytes::new()).await
    }

    /// Sends a request for `host` on this connection.
    pub async fn send(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Resp> {
        let mut b = Request::builder().method(method);
        b = match &self.sender {
            Sender::H1(_) => b.uri(path).header(http::header::HOST, host),
            Sender::H2(_) => b
                .uri(format!("{}://{host}{path}", self.scheme))
                .version(Version::HTTP_2),
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body))?;
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                tokio::time::timeout(DEADLINE, s.send_request(req)).await??
            }
            Sender::H2(s) => {
                s.ready().await?;
                tokio::time::timeout(DEADLINE, s.send_request(req)).await??
            }
        };
        let status = resp.status();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Resp {
            status,
            headers,
            body,
            version,
        })
    }
}

/// Standalone configuration: Gateway `gw` with `listeners` (YAML flow items, one per line),
/// a Service `echo` for `backend`, a route from every listener to it, and Secret `cert` (a
/// self-signed certificate for `names`, returned as PEM with the text).
pub fn gateway_with_cert(
    listeners: &[String],
    backend: SocketAddr,
    names: &[&str],
) -> (String, String) {
    let (cert, key) = self_signed(names);
    let listeners: String = listeners.iter().map(|l| format!("  - {l}\n")).collect();
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
  listeners:
{listeners}---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default, annotations: {{portico.dev/endpoints: \"{backend}\"}}}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]
{}",
        secret_yaml("cert", "default", &cert, &key)
    );
    (text, cert)
}
