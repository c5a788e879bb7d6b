//! Routes of listeners that forward connections rather than requests: a TCPRoute sends each
//! connection of its listener to one of its weighted backends, bytes both ways untouched.

use crate::backend::BackendRef;
use crate::object::ObjectRef;
use crate::route::RouteKind;
use serde::{Deserialize, Serialize};

/// A TCPRoute as attached to this Gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamRoute {
    /// Which Kubernetes kind this came from.
    pub kind: RouteKind,
    /// The route object's namespace/name.
    pub id: ObjectRef,
    /// The names (in this snapshot's `listeners`) of the listeners it attached to.
    pub listeners: Vec<String>,
    /// Weighted; a connection whose pick has no endpoint, or an unresolved reference, is
    /// closed at once.
    pub backend_refs: Vec<BackendRef>,
}

impl StreamRoute {
    /// How logs and metrics name the route: `tcp:namespace/name`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.kind.prefix(), self.id)
    }
}
