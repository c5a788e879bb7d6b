//! The snapshot schema: what the controller (or standalone mode) tells a dataplane to serve.
//!
//! Plain data with no I/O and no Kubernetes, hyper or tokio types, so that both sides of the
//! snapshot channel depend on it and nothing else. One [`Snapshot`] describes one Gateway.
//!
//! The shape is deliberately as fine-grained as the user API, with children naming their
//! parents rather than being nested inside them:
//!
//! ```text
//!   Snapshot (one Gateway, versioned)
//!     ├── listeners[]           name, bind addresses, port, protocol, hostname
//!     ├── routes[]  ──parents──▶ listener name (+ effective hostnames)
//!     │     └── rules[] ──backend_refs──▶ BackendId
//!     └── backends[]            BackendId → endpoints
//! ```
//!
//! A route change touches one `routes[]` entry, an endpoint change one `backends[]` entry, so a
//! later incremental channel can send only what changed. Policies are further top-level
//! collections that routes refer to by name: `authPolicies[]` ([`auth`]) and
//! `rateLimitPolicies[]` ([`ratelimit`]) are named by a rule (a policy on its HTTPRoute or
//! rule) or by a route parent (on its listener or Gateway).
//!
//! Everything is ordered deterministically (compile sorts before it emits), so the same inputs
//! serialise to byte-identical snapshots.

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod auth;
pub mod budget;
pub mod channel;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod ratelimit;

/// The namespaced name of a Kubernetes object.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything one Gateway's dataplane needs to serve traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Monotonic per Gateway, stamped by whoever publishes the snapshot (compile leaves 0).
    pub version: u64,
    pub gateway: ObjectRef,
    pub listeners: Vec<Listener>,
    /// In precedence order across routes: oldest first, then by namespace/name.
    pub routes: Vec<HttpRoute>,
    /// Sorted by [`BackendId`].
    pub backends: Vec<Backend>,
    /// The auth policies routes refer to, sorted by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_policies: Vec<auth::AuthPolicy>,
    /// The rate-limit policies routes refer to, sorted by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limit_policies: Vec<ratelimit::RateLimitPolicy>,
}

impl Snapshot {
    pub fn backend(&self, id: &BackendId) -> Option<&Backend> {
        self.backends
            .binary_search_by(|b| b.id.cmp(id))
            .ok()
            .map(|i| &self.backends[i])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "HTTPS")]
    Https,
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
    pub port: u16,
    pub protocol: Protocol,
    /// Lower-case hostname or `*.suffix` wildcard; `None` matches every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

/// TLS termination settings for an HTTPS listener (served from the controller issue on).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// PEM certificate chain and key pairs; the first matching SNI wins.
    pub certificates: Vec<Certificate>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    pub secret: ObjectRef,
    pub cert_pem: String,
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

/// An HTTPRoute, or a GRPCRoute translated into HTTP terms (a gRPC method is a POST to
/// `/service/method`), as attached to this Gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(default, skip_serializing_if = "RouteKind::is_http")]
    pub kind: RouteKind,
    pub id: ObjectRef,
    /// The listeners this route attached to, each with the hostnames that remain after
    /// intersecting the route's and the listener's hostnames.
    pub parents: Vec<RouteParent>,
    pub rules: Vec<RouteRule>,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum RouteKind {
    #[default]
    #[serde(rename = "HTTPRoute")]
    Http,
    #[serde(rename = "GRPCRoute")]
    Grpc,
}

impl RouteKind {
    pub fn is_http(&self) -> bool {
        *self == RouteKind::Http
    }

    /// The Kubernetes kind.
    pub fn as_str(&self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

impl HttpRoute {
    /// How logs and metrics name the route: `namespace/name`, with `grpc:` before a GRPCRoute.
    pub fn label(&self) -> String {
        match self.kind {
            RouteKind::Http => self.id.to_string(),
            RouteKind::Grpc => format!("grpc:{}", self.id),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParent {
    pub listener: String,
    /// Lower-case exact hostnames or `*.suffix` wildcards. Empty means every host the listener
    /// accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// The auth policy of the listener (or else the Gateway), for rules that have none of
    /// their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ObjectRef>,
    /// The rate-limit policy of the listener (or else the Gateway), likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<ObjectRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any one of these selects the rule. Compile fills in the spec's default (prefix `/`)
    /// when the user gave none.
    pub matches: Vec<RouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default, skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    /// The auth policy of this rule (or else of its HTTPRoute); it overrides the parent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ObjectRef>,
    /// The rate-limit policy of this rule (or else of its HTTPRoute); it overrides the
    /// parent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<ObjectRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Upper-case HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<KeyValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<KeyValueMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    Exact(String),
    /// Segment-wise prefix, stored without a trailing slash (except the root `/`).
    PathPrefix(String),
    RegularExpression(String),
}

/// A header (name lower-cased) or query parameter (name as given, case-sensitive) match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyValueMatch {
    pub name: String,
    pub value: StringMatch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum StringMatch {
    Exact(String),
    RegularExpression(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(Redirect),
    #[serde(rename = "URLRewrite")]
    UrlRewrite(UrlRewrite),
}

/// Header names are lower-case; `set` replaces, `add` appends, `remove` deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// `http` or `https`; `None` keeps the request's scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub status_code: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathRewrite {
    ReplaceFullPath(String),
    /// Replaces the part of the path that the rule's `PathPrefix` match matched.
    ReplacePrefixMatch(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Whole request, from the first byte received to the response headers sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ms: Option<u64>,
    /// One attempt at the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request_ms: Option<u64>,
}

impl Timeouts {
    pub fn is_empty(&self) -> bool {
        self.request_ms.is_none() && self.backend_request_ms.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    pub target: BackendTarget,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BackendTarget {
    Service(BackendId),
    /// A reference compile could not resolve; its share of the traffic is answered with 500,
    /// as the Gateway API requires. The reason is kept for logs.
    Unresolved {
        reason: String,
    },
}

/// A Service port: the unit the dataplane balances over.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BackendId {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub id: BackendId,
    #[serde(default)]
    pub protocol: AppProtocol,
    /// The Service port's name, by which EndpointSlice ports are matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// Endpoints known at compile time (standalone mode). Sorted by address and port.
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// An IPv4 or IPv6 address.
    pub address: String,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

#[cfg(test)]
mod tests;
