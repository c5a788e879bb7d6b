//! TLS termination for HTTPS listeners.
//!
//! One rustls `ServerConfig` per socket, built with the route tables from each snapshot. Its
//! certificate resolver picks the listener by SNI the way requests pick listeners by Host
//! (exact name, then the longest wildcard, then a listener without hostname), so the Gateway
//! API's "longest matching SNI" rule and request routing agree. A new snapshot (a rotated
//! Secret) swaps the config: new handshakes get the new certificate, established connections
//! keep theirs and are never cut.

use crate::router::HostMap;
use portico_model::Certificate;
use rustls::server::{ClientHello, ResolvesServerCert};
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
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver {
                by_host: self.by_host,
            }));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
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
