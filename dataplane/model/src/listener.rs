//! Listeners: the sockets a Gateway's dataplane binds and, for HTTPS, the certificates it
//! serves on them.

use crate::object::ObjectRef;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a listener speaks. Only the protocols the dataplane serves reach a snapshot; compile
/// rejects the others on the listener's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// Plain HTTP/1.1 and h2c.
    #[serde(rename = "HTTP")]
    Http,
    /// TLS terminated by the dataplane, then HTTP/1.1 or HTTP/2 (ALPN).
    #[serde(rename = "HTTPS")]
    Https,
    /// TCP connections forwarded whole to the backend of the listener's TCPRoute.
    #[serde(rename = "TCP")]
    Tcp,
    /// TLS passed through: each connection forwarded whole to the TLSRoute its ClientHello's
    /// SNI names, never terminated.
    #[serde(rename = "TLSPassthrough")]
    TlsPassthrough,
    /// TLS terminated with the listener's certificates, then the connection's bytes
    /// forwarded to the TLSRoute its SNI names.
    #[serde(rename = "TLSTerminate")]
    TlsTerminate,
    /// UDP datagrams forwarded to the backend of the listener's UDPRoute, each client
    /// address a flow of its own to one endpoint.
    #[serde(rename = "UDP")]
    Udp,
}

/// A listener that compile accepted. Rejected listeners never reach a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// The listener's name, unique within its Gateway.
    pub name: String,
    /// IP addresses to bind (from the Gateway's `spec.addresses` of type IPAddress). Empty means
    /// the dataplane's default bind address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The port to bind on each address.
    pub port: u16,
    /// What the socket speaks.
    pub protocol: Protocol,
    /// Lower-case hostname or `*.suffix` wildcard; `None` matches every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Set on the listeners that terminate TLS (HTTPS, TLS in mode Terminate) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

/// TLS termination settings for an HTTPS listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// PEM certificate chain and key pairs; the first matching SNI wins.
    pub certificates: Vec<Certificate>,
    /// Client certificates asked for on this listener's port (the Gateway's
    /// `spec.tls.frontend`); `None`: none asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_validation: Option<ClientValidation>,
}

/// How a port validates client certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientValidation {
    /// PEM CA certificates a client's chain must lead to.
    pub ca_pem: String,
    /// `AllowInsecureFallback`: a client without a certificate, or with one that does not
    /// verify, is let in all the same (and not taken as identified by it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_fallback: bool,
}

/// One certificate and its private key, from a `kubernetes.io/tls` Secret. Snapshots carry
/// key material, which is why the snapshot channel is authenticated and `Debug` redacts it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    /// The Secret it was read from (for logs, status and the expiry metric).
    pub secret: ObjectRef,
    /// The PEM certificate chain, leaf first.
    pub cert_pem: String,
    /// The PEM private key of the leaf.
    pub key_pem: String,
}

impl fmt::Debug for Certificate {
    // Never print key material, even at debug level.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("secret", &self.secret)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}
