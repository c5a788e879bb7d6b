//! Backends: the Service ports rules send traffic to, and the endpoints compile knew of.

use crate::filter::Filter;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One weighted backend of a rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// Where this share of the traffic goes.
    pub target: BackendTarget,
    /// Relative to the other backendRefs of the rule; 0 sends nothing.
    pub weight: u32,
    /// Applied after the rule's filters, to requests sent to this backend only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
}

/// What a backendRef resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BackendTarget {
    /// A Service port listed in the snapshot's `backends`.
    Service(BackendId),
    /// A reference compile could not resolve; its share of the traffic is answered with 500,
    /// as the Gateway API requires. The reason is kept for logs.
    Unresolved { reason: String },
}

/// A Service port: the unit the dataplane balances over.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BackendId {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service port (not the target port).
    pub port: u16,
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// How the dataplane speaks to a backend, from the Service port's `appProtocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AppProtocol {
    /// HTTP/1.1 to the backend (the default).
    #[default]
    #[serde(rename = "http")]
    Http1,
    /// HTTP/2 with prior knowledge (`appProtocol: kubernetes.io/h2c`).
    #[serde(rename = "h2c")]
    H2c,
}

/// A Service port a rule of this snapshot sends traffic to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// The key backendRefs name it by.
    pub id: BackendId,
    /// HTTP/1.1 unless the port says h2c.
    #[serde(default)]
    pub protocol: AppProtocol,
    /// The Service port's name, by which EndpointSlice ports are matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// Endpoints known at compile time (standalone mode). Sorted by address and port.
    pub endpoints: Vec<Endpoint>,
}

/// One address of a backend, with its EndpointSlice conditions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// An IPv4 or IPv6 address.
    pub address: String,
    /// The target port on that address.
    pub port: u16,
    /// Ready to receive new traffic.
    pub ready: bool,
    /// Able to serve even if not ready (a terminating endpoint may still be serving).
    pub serving: bool,
    /// Going away: one that is still serving is used only when no endpoint is ready.
    pub terminating: bool,
}
