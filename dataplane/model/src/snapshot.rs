//! The snapshot itself: one Gateway's listeners, routes, backends and policies, each a list
//! of the types of its own module.

use crate::auth::Sensitive;
use crate::backend::{Backend, BackendId};
use crate::listener::Listener;
use crate::object::ObjectRef;
use crate::policy::PolicySet;
use crate::route::HttpRoute;
use crate::stream::StreamRoute;
use serde::{Deserialize, Serialize};

/// Everything one Gateway's dataplane needs to serve traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Monotonic per Gateway, stamped by whoever publishes the snapshot (compile leaves 0).
    pub version: u64,
    /// The Gateway this snapshot serves.
    pub gateway: ObjectRef,
    /// The listeners compile accepted and can serve, in the Gateway's order.
    pub listeners: Vec<Listener>,
    /// In precedence order across routes: oldest first, then by namespace/name.
    pub routes: Vec<HttpRoute>,
    /// TCPRoutes, in the same precedence order: where several attach to one listener, the
    /// first serves it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stream_routes: Vec<StreamRoute>,
    /// Sorted by [`BackendId`].
    pub backends: Vec<Backend>,
    /// The policies routes refer to. Flattened: on the wire they are this object's
    /// `authPolicies`, `rateLimitPolicies`, ... as before [`PolicySet`] existed.
    #[serde(flatten)]
    pub policies: PolicySet,
    /// The key that seals session-persistence tokens (base64, 32 bytes), the same for every
    /// replica of the Gateway. Stamped by whoever publishes the snapshot, like `version`;
    /// without it a dataplane seals with a key of its own (one replica's sessions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<Sensitive>,
    /// What the CacheInvalidations naming this Gateway (or its routes) remove from its
    /// replicas' caches, each applied once per replica (by its id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purges: Vec<crate::cache::Purge>,
}

impl Snapshot {
    /// The backend `id`, found by binary search in the sorted `backends`.
    pub fn backend(&self, id: &BackendId) -> Option<&Backend> {
        self.backends
            .binary_search_by(|b| b.id.cmp(id))
            .ok()
            .map(|i| &self.backends[i])
    }
}
