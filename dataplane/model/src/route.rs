//! Routes as the dataplane matches them: an HTTPRoute (or a GRPCRoute in HTTP terms), the
//! listeners it attached to, and its rules with their matches, filters, backends, timeouts
//! and the policies that apply to them.

use crate::backend::BackendRef;
use crate::filter::Filter;
use crate::object::ObjectRef;
use crate::policy::AttachedPolicies;
use serde::{Deserialize, Serialize};

pub use crate::retry::RouteRetry;

/// The size limit (bytes of compiled program) of every regular expression in a route. Compile
/// checks each pattern against it and the dataplane builds each with it, so a pattern compile
/// accepted is one the dataplane can build, and no route can make a dataplane build a huge
/// automaton.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// An HTTPRoute, or a GRPCRoute translated into HTTP terms (a gRPC method is a POST to
/// `/service/method`), as attached to this Gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// Which Kubernetes kind this came from (omitted for an HTTPRoute).
    #[serde(default, skip_serializing_if = "RouteKind::is_http")]
    pub kind: RouteKind,
    /// The route object's namespace/name.
    pub id: ObjectRef,
    /// The listeners this route attached to, each with the hostnames that remain after
    /// intersecting the route's and the listener's hostnames.
    pub parents: Vec<RouteParent>,
    /// In the order the route lists them; the router orders matches across rules itself.
    pub rules: Vec<RouteRule>,
}

/// The Kubernetes kind of a route: they are served alike, but named, logged and reported
/// apart.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum RouteKind {
    /// `HTTPRoute`.
    #[default]
    #[serde(rename = "HTTPRoute")]
    Http,
    /// `GRPCRoute`, served as the HTTP/2 POSTs it means.
    #[serde(rename = "GRPCRoute")]
    Grpc,
    /// `TCPRoute`: connections, not requests (a [`crate::StreamRoute`]).
    #[serde(rename = "TCPRoute")]
    Tcp,
    /// `TLSRoute` (passthrough): connections chosen by SNI (a [`crate::StreamRoute`]).
    #[serde(rename = "TLSRoute")]
    Tls,
    /// `UDPRoute`: datagrams, each client address a flow (a [`crate::StreamRoute`]).
    #[serde(rename = "UDPRoute")]
    Udp,
}

impl RouteKind {
    /// Whether this is an HTTPRoute (the default, left out of the wire format).
    pub fn is_http(&self) -> bool {
        *self == RouteKind::Http
    }

    /// The Kubernetes kind.
    pub fn as_str(&self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tcp => "TCPRoute",
            RouteKind::Tls => "TLSRoute",
            RouteKind::Udp => "UDPRoute",
        }
    }

    /// What a route's label starts with (none for an HTTPRoute's, see [`HttpRoute::label`]).
    pub fn prefix(&self) -> &'static str {
        match self {
            RouteKind::Http => "http",
            RouteKind::Grpc => "grpc",
            RouteKind::Tcp => "tcp",
            RouteKind::Tls => "tls",
            RouteKind::Udp => "udp",
        }
    }
}

impl HttpRoute {
    /// How logs and metrics name the route: `namespace/name`, with `grpc:` before a GRPCRoute.
    pub fn label(&self) -> String {
        match self.kind {
            RouteKind::Http => self.id.to_string(),
            kind => format!("{}:{}", kind.prefix(), self.id),
        }
    }
}

/// One listener a route attached to. A route attached to several listeners of the Gateway has
/// one parent each, since the hostnames and the inherited policies differ per listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParent {
    /// The listener's name in this snapshot's `listeners`.
    pub listener: String,
    /// Lower-case exact hostnames or `*.suffix` wildcards. Empty means every host the listener
    /// accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// The policies of the listener (or else the Gateway), for rules that have none of their
    /// own. Flattened: on the wire they are this object's `auth`, `rateLimit`, ...
    #[serde(flatten)]
    pub policies: AttachedPolicies,
}

/// One rule of a route: what selects it, what it does, and where it sends the request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// The rule's `name` (Gateway API v1.2+), which policies may target as a section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any one of these selects the rule. Compile fills in the spec's default (prefix `/`)
    /// when the user gave none.
    pub matches: Vec<RouteMatch>,
    /// Applied in order to every request the rule selects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// Weighted; empty means the rule answers by its filters alone (a redirect) or with 500.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
    /// `RequestMirror` filters: a copy of each request (or of a share of them) goes to each
    /// of these backends, whose answers are dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// Unset timeouts are the dataplane's defaults.
    #[serde(default, skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    /// HTTPRoute `retry`: without it, only connections that could not be made are retried
    /// (the backend's BackendPolicy says whether and within what budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RouteRetry>,
    /// `sessionPersistence`: overrides a BackendPolicy's, and pins the backend too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<crate::backend::SessionPersistence>,
    /// The policies of this rule (or else of its HTTPRoute); each overrides the parent's of
    /// its kind. Flattened, like [`RouteParent::policies`].
    #[serde(flatten)]
    pub policies: AttachedPolicies,
}

/// A `RequestMirror` filter, resolved: the backend (in the snapshot's backends) and the share
/// of requests copied to it, `numerator / denominator` (compile checks 0 ≤ n ≤ d, d > 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    pub backend: crate::backend::BackendId,
    pub numerator: u32,
    pub denominator: u32,
}

/// One match of a rule: every condition in it must hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Always present: compile fills in the spec's default (prefix `/`).
    pub path: PathMatch,
    /// Upper-case HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request headers that must all match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<KeyValueMatch>,
    /// Query parameters that must all match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<KeyValueMatch>,
}

/// How a rule matches the request path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    /// The whole path, byte for byte.
    Exact(String),
    /// Segment-wise prefix, stored without a trailing slash (except the root `/`).
    PathPrefix(String),
    /// A regular expression that must match the whole path, compiled with
    /// [`REGEX_SIZE_LIMIT`].
    RegularExpression(String),
}

/// A header (name lower-cased) or query parameter (name as given, case-sensitive) match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyValueMatch {
    /// The header or parameter name.
    pub name: String,
    /// What its value must be.
    pub value: StringMatch,
}

/// How a header or query parameter value is matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum StringMatch {
    /// The whole value, byte for byte.
    Exact(String),
    /// A regular expression that must match the whole value.
    RegularExpression(String),
}

/// A rule's timeouts (HTTPRoute `timeouts`), in milliseconds.
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
    /// Whether neither timeout is set (left out of the wire format).
    pub fn is_empty(&self) -> bool {
        self.request_ms.is_none() && self.backend_request_ms.is_none()
    }
}
