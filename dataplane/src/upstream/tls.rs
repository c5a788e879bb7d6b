//! TLS from the gateway to a backend's endpoints (a BackendTLSPolicy): the client
//! configuration each pool is made with, and the socket an upstream connection speaks over.
//!
//! The endpoint's chain must lead to the policy's CA certificates (or the system's roots),
//! and its certificate must carry the policy's hostname, or, when the policy lists
//! subjectAltNames, one of those (a DNS name, or a URI such as a SPIFFE ID, compared
//! exactly). The SNI is always the policy's hostname, whatever the client asked for.

use portico_model::tls::{San, subject_alt_names};
use portico_model::{AppProtocol, BackendTls, SubjectAltName};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How a pool's connections are secured.
#[derive(Debug, Clone)]
pub enum UpstreamTls {
    /// TLS with this configuration and SNI.
    On {
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
    },
    /// The policy cannot be honoured (no usable CA): every request is refused with this.
    Refused(String),
}

impl UpstreamTls {
    /// The client side of `tls`, speaking `protocol` (ALPN `http/1.1` or `h2`).
    pub fn new(tls: &BackendTls, protocol: AppProtocol) -> Self {
        Self::with_alpn(tls, Some(protocol))
    }

    /// The client side of `tls` for TCPRoute and terminated TLSRoute connections: the same
    /// checks, and no ALPN (the gateway does not know what the bytes are; offering
    /// `http/1.1` could fail a handshake with a backend that asks for its own protocol).
    pub fn for_streams(tls: &BackendTls) -> Self {
        Self::with_alpn(tls, None)
    }

    fn with_alpn(tls: &BackendTls, protocol: Option<AppProtocol>) -> Self {
        match build(tls, protocol) {
            Ok(on) => on,
            Err(why) => UpstreamTls::Refused(why),
        }
    }

    /// Secures a connected socket: the handshake, with the policy's SNI and checks.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<UpstreamIo> {
        match self {
            UpstreamTls::On {
                config,
                server_name,
            } => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(server_name.clone(), tcp)
                    .await?;
                Ok(UpstreamIo::Tls(Box::new(tls)))
            }
            UpstreamTls::Refused(why) => {
                Err(io::Error::new(io::ErrorKind::PermissionDenied, why.clone()))
            }
        }
    }
}

fn build(tls: &BackendTls, protocol: Option<AppProtocol>) -> Result<UpstreamTls, String> {
    if let Some(why) = &tls.invalid {
        return Err(format!("BackendTLSPolicy {}: {why}", tls.policy));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    if tls.system_roots {
        for cert in system_roots() {
            let _ = roots.add(cert.clone());
        }
    } else {
        for cert in portico_model::tls::ca_certificates(&tls.ca_pem)? {
            roots
                .add(cert)
                .map_err(|e| format!("a CA certificate cannot be used: {e}"))?;
        }
    }
    if roots.is_empty() {
        return Err(format!(
            "BackendTLSPolicy {}: no CA certificate to trust",
            tls.policy
        ));
    }
    let roots = Arc::new(roots);
    let webpki = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| format!("CA certificates: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.subject_alt_names.is_empty() {
        webpki
    } else {
        Arc::new(SanVerifier {
            webpki,
            roots,
            algorithms: provider.signature_verification_algorithms,
            names: tls.subject_alt_names.clone(),
        })
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.client_certificate {
        None => builder.with_no_client_auth(),
        // The Gateway's own certificate, for endpoints that ask for one.
        Some(c) => {
            use rustls::pki_types::PrivateKeyDer;
            use rustls::pki_types::pem::PemObject;
            let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the Gateway's client certificate {}: {e}", c.secret))?;
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).map_err(|_| {
                format!(
                    "the Gateway's client certificate {}: its key is not PEM",
                    c.secret
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the Gateway's client certificate {}: {e}", c.secret))?
        }
    };
    config.alpn_protocols = match protocol {
        Some(AppProtocol::Http1) => vec![b"http/1.1".to_vec()],
        Some(AppProtocol::H2c) => vec![b"h2".to_vec()],
        None => Vec::new(),
    };
    let server_name = ServerName::try_from(tls.server_name.clone())
        .map_err(|e| format!("hostname {:?}: {e}", tls.server_name))?;
    Ok(UpstreamTls::On {
        config: Arc::new(config),
        server_name,
    })
}

/// The system's trusted roots, read once per process (from files: never again on a
/// request's path).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// Checks the chain as usual, then the certificate's names against the policy's
/// subjectAltNames (any one) instead of the SNI.
#[derive(Debug)]
struct SanVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    roots: Arc<RootCertStore>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
    names: Vec<SubjectAltName>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::InvalidCertificate(webpki_error(e)))?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::InvalidCertificate(webpki_error(e)))?;
        let carried = subject_alt_names(end_entity.as_ref()).unwrap_or_default();
        let matches = self.names.iter().any(|wanted| match wanted {
            SubjectAltName::Hostname(h) => carried.iter().any(|c| match c {
                San::Dns(name) => dns_matches(name, h),
                San::Uri(_) => false,
            }),
            SubjectAltName::Uri(u) => carried.iter().any(|c| matches!(c, San::Uri(x) if x == u)),
        });
        if matches {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn webpki_error(e: webpki::Error) -> rustls::CertificateError {
    match e {
        webpki::Error::CertExpired { .. } => rustls::CertificateError::Expired,
        webpki::Error::CertNotValidYet { .. } => rustls::CertificateError::NotValidYet,
        webpki::Error::UnknownIssuer => rustls::CertificateError::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => rustls::CertificateError::BadSignature,
        other => rustls::CertificateError::Other(rustls::OtherError(Arc::new(other))),
    }
}

/// Whether a certificate's DNS name (maybe `*.suffix`, one label) covers `host`.
fn dns_matches(name: &str, host: &str) -> bool {
    let (name, host) = (name.to_ascii_lowercase(), host.to_ascii_lowercase());
    match name.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => name == host,
    }
}

/// The socket of an upstream connection: plain TCP, or TLS over it.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpstreamIo {
    /// Whether an idle connection can take a request: the backend has neither closed it
    /// nor sent anything since the last exchange. Plain TCP looks at the socket's readiness
    /// first, so there is no system call unless something arrived; keeps no waker. Over
    /// TLS a read is always tried (rustls may hold what the socket no longer shows): what
    /// arrived may be a message of the protocol itself (a TLS 1.3 session ticket), which
    /// yields no data and leaves the connection usable; data or a close does not.
    pub(super) fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            UpstreamIo::Plain(tcp) => match tcp.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            UpstreamIo::Tls(tls) => {
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                matches!(
                    Pin::new(&mut **tls).poll_read(&mut cx, &mut buf),
                    Poll::Pending
                )
            }
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dns_matches;

    #[test]
    fn a_wildcard_name_covers_one_label() {
        assert!(dns_matches("abc.example.com", "ABC.example.com"));
        assert!(dns_matches("*.example.com", "abc.example.com"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(!dns_matches("abc.example.com", "abd.example.com"));
    }
}
