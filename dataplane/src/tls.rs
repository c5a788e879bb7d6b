//! TLS termination for HTTPS listeners.
//!
//! One rustls `ServerConfig` per socket, built with the route tables from each snapshot. Its
//! certificate resolver picks the listener by SNI the way requests pick listeners by Host
//! (exact name, then the longest wildcard, then a listener without hostname), so the Gateway
//! API's "longest matching SNI" rule and request routing agree. A new snapshot (a rotated
//! Secret) swaps the config: new handshakes get the new certificate, established connections
//! keep theirs and are never cut.
//!
//! A port whose Gateway asks for client certificates (`spec.tls.frontend`) gets a client
//! verifier: the client's chain must lead to the port's CA certificates, or, in mode
//! `AllowInsecureFallback`, any client is let in (one without a certificate, or with one that
//! does not verify, all the same).

use crate::router::HostMap;
use portico_model::{Certificate, ClientValidation};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// ALPN protocols offered to clients, preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// What [`SniCertificates::add`] loaded and what it could not.
#[derive(Debug, Default)]
pub struct Added {
    /// (Secret `namespace/name`, the leaf's `notAfter` in seconds since the epoch).
    pub expiries: Vec<(String, i64)>,
    pub problems: Vec<String>,
}

/// Certificates by listener hostname for one socket.
#[derive(Debug, Default)]
pub struct SniCertificates {
    by_host: HostMap<Vec<Arc<CertifiedKey>>>,
    count: usize,
    /// The client certificates the socket's port asks for, as its first TLS listener said
    /// (`Some(None)`: none); `None` until one has said.
    clients: Option<Option<ClientValidation>>,
}

impl SniCertificates {
    /// Adds a listener's certificates. Returns, for each one loaded, its Secret and when its
    /// leaf expires (seconds since the epoch, for the expiry metric), and a message for each
    /// one that cannot be loaded (compile checked them already: a last line of defence).
    pub fn add(&mut self, hostname: Option<&str>, certs: &[Certificate]) -> Added {
        let mut added = Added::default();
        let entry = self.by_host.entry(hostname);
        for c in certs {
            match portico_model::tls::certified_key(&c.cert_pem, &c.key_pem) {
                Ok(k) => {
                    if let Some(expiry) = k
                        .cert
                        .first()
                        .and_then(|leaf| portico_model::tls::not_after(leaf))
                    {
                        added.expiries.push((c.secret.to_string(), expiry));
                    }
                    entry.push(Arc::new(k));
                    self.count += 1;
                }
                Err(e) => added
                    .problems
                    .push(format!("certificate from Secret {}: {e}", c.secret)),
            }
        }
        added
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Asks clients for certificates as `v` says. One handshake serves every listener of
    /// the socket, so they must all ask the same (a Gateway's listeners on one port do); the
    /// first listener decides, and `false` says that this one asks otherwise (two Gateways
    /// sharing a socket, say) and must not be served: on the first's terms it would let in
    /// clients it means to keep out, or refuse its own.
    pub fn validate_clients(&mut self, v: Option<&ClientValidation>) -> bool {
        match &self.clients {
            None => {
                self.clients = Some(v.cloned());
                true
            }
            Some(decided) => decided.as_ref() == v,
        }
    }

    /// The client certificates the socket asks for, if any.
    pub fn clients(&self) -> Option<&ClientValidation> {
        self.clients.as_ref().and_then(Option::as_ref)
    }

    /// The server configuration that serves these certificates.
    pub fn server_config(self) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        self.config(&ALPN)
    }

    /// For TLS listeners that terminate and forward the bytes (TLSRoute): no ALPN, since
    /// the gateway does not know what the connection speaks.
    pub fn stream_server_config(self) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        self.config(&[])
    }

    fn config(self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match self.clients() {
            None => builder.with_no_client_auth(),
            Some(v) => builder.with_client_cert_verifier(client_verifier(v, provider)?),
        };
        let mut config = builder.with_cert_resolver(Arc::new(SniResolver {
            by_host: self.by_host,
        }));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// How a socket's connections' client certificates are judged after the handshake: in
/// mode `AllowInsecureFallback` the handshake lets every certificate in, so whether one is
/// valid is asked again of the strict verifier (an AuthPolicy's `mtls` takes only those).
#[derive(Debug, Clone)]
pub struct ClientCheck {
    strict: Arc<dyn ClientCertVerifier>,
    fallback: bool,
}

impl ClientCheck {
    /// The check of a port's validation.
    pub fn new(v: &ClientValidation) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(Self {
            strict: strict_verifier(v, provider, false)?,
            fallback: v.insecure_fallback,
        })
    }

    /// The identity of the certificate chain a connection presented (leaf first), with
    /// whether it verified.
    pub fn identify(
        &self,
        chain: &[rustls::pki_types::CertificateDer<'_>],
    ) -> Option<crate::request::ClientCert> {
        let (leaf, intermediates) = chain.split_first()?;
        // Without the fallback the handshake already refused any chain that does not verify.
        let verified = !self.fallback
            || self
                .strict
                .verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
                .is_ok();
        let names = portico_model::tls::subject_alt_names(leaf.as_ref()).unwrap_or_default();
        let mut cert = crate::request::ClientCert {
            verified,
            common_name: portico_model::tls::subject_common_name(leaf.as_ref()),
            ..Default::default()
        };
        for n in names {
            match n {
                portico_model::tls::San::Dns(d) => cert.dns_names.push(d),
                portico_model::tls::San::Uri(u) => cert.uris.push(u),
            }
        }
        Some(cert)
    }
}

/// The verifier of a port's client certificates, as the handshake uses it.
fn client_verifier(
    v: &ClientValidation,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
    let verifier = strict_verifier(v, provider, v.insecure_fallback)?;
    Ok(if v.insecure_fallback {
        Arc::new(InsecureFallback(verifier))
    } else {
        verifier
    })
}

/// A verifier that accepts only chains leading to the port's CAs (`optional`: a client
/// may present none).
fn strict_verifier(
    v: &ClientValidation,
    provider: Arc<rustls::crypto::CryptoProvider>,
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in portico_model::tls::ca_certificates(&v.ca_pem).map_err(rustls::Error::General)? {
        roots.add(cert)?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .map_err(|e| rustls::Error::General(format!("client certificate validation: {e}")))
}

/// `AllowInsecureFallback`: certificates are asked for (with the CA names as hints) and a
/// client that presents one must still prove it holds the key, but one that does not verify
/// is let in as one without a certificate would be.
#[derive(Debug)]
struct InsecureFallback(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for InsecureFallback {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self.0.verify_client_cert(end_entity, intermediates, now) {
            tracing::debug!(error = %e, "client certificate not verified; let in (AllowInsecureFallback)");
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct SniResolver {
    by_host: HostMap<Vec<Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Without SNI (a client dialling an IP address) only a listener without hostname
        // matches, as a request without a matching Host would.
        let name = hello.server_name().unwrap_or("").to_ascii_lowercase();
        let certs = self.by_host.lookup(&name).next()?;
        // Of a listener's certificates (say RSA and ECDSA), the first the client can verify.
        let schemes = hello.signature_schemes();
        certs
            .iter()
            .find(|c| c.key.choose_scheme(schemes).is_some())
            .or_else(|| certs.first())
            .cloned()
    }
}
