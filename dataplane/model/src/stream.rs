//! Routes of listeners that forward connections rather than requests: a TCPRoute sends each
//! connection of its listener to one of its weighted backends, a TLSRoute each connection
//! whose ClientHello names one of its hostnames (TLS passthrough: the gateway never
//! terminates it); bytes both ways untouched. A UDPRoute sends each flow of its listener
//! (the datagrams of one client address) to one of its weighted backends.

use crate::backend::BackendRef;
use crate::object::ObjectRef;
use crate::route::RouteKind;
use serde::{Deserialize, Serialize};

/// A TCPRoute, TLSRoute or UDPRoute as attached to this Gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamRoute {
    /// Which Kubernetes kind this came from.
    pub kind: RouteKind,
    /// The route object's namespace/name.
    pub id: ObjectRef,
    /// The listeners it attached to, each with the hostnames that remain after intersecting
    /// the route's and the listener's (TLSRoute; empty: every host the listener takes, and a
    /// TCPRoute's always).
    pub parents: Vec<StreamParent>,
    /// Weighted; a connection (a UDP flow) whose pick has no endpoint, or an unresolved
    /// reference, is closed at once (its datagrams dropped).
    pub backend_refs: Vec<BackendRef>,
}

impl StreamRoute {
    /// How logs and metrics name the route: `tcp:namespace/name`, `tls:namespace/name`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.kind.prefix(), self.id)
    }
}

/// One listener a stream route attached to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamParent {
    /// The listener's name in this snapshot's `listeners`.
    pub listener: String,
    /// Lower-case exact hostnames or `*.suffix` wildcards the ClientHello's SNI must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
}
