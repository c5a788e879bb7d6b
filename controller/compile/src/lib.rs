//! Compile: Gateway API objects in, one [`Snapshot`] per Gateway and the status every object
//! should carry out.
//!
//! A pure, deterministic function: no I/O, no clock, no randomness. The controller calls it
//! with the contents of its indexes; standalone mode calls it with the objects read from YAML.
//! The same inputs, in any order, give byte-identical snapshots.
//!
//! ```text
//!  GatewayClass ◀── Gateway ◀──parentRefs── HTTPRoute ──backendRefs──▶ Service ◀── EndpointSlice
//!                      │                        │                        ▲
//!                      └ listeners ─ allowedRoutes (Namespace labels)    └─ ReferenceGrant
//! ```
//!
//! Compile resolves those edges in one pass per kind: classes, then Gateways and their
//! listeners ([`gateway`]), then routes with their attachment, rules and backends ([`route`],
//! [`backend`]).

mod backend;
mod gateway;
mod hostname;
pub mod manifests;
mod route;
pub mod status;

use portico_crds::gateway_api::{
    gatewayclasses::GatewayClass, gateways::Gateway, httproutes::HttpRoute as HTTPRoute,
    referencegrants::ReferenceGrant,
};
use portico_crds::k8s_openapi::api::core::v1::{Namespace, Service};
use portico_crds::k8s_openapi::api::discovery::v1::EndpointSlice;
use portico_model::{ObjectRef, Snapshot};
use std::collections::BTreeMap;

pub use backend::{ENDPOINTS_ANNOTATION, SERVICE_NAME_LABEL, endpoints_from_slices};
pub use portico_crds::CONTROLLER_NAME;
pub use status::StatusReport;

/// Regex patterns in routes are compiled with this size limit (bytes of compiled program), so
/// one route cannot make the dataplane build a huge automaton. The dataplane uses it too.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Everything compile reads. Order does not matter.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub gateway_classes: Vec<GatewayClass>,
    pub gateways: Vec<Gateway>,
    pub http_routes: Vec<HTTPRoute>,
    pub reference_grants: Vec<ReferenceGrant>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// For `allowedRoutes.namespaces.selector`. A namespace without an object here is taken to
    /// carry only its automatic `kubernetes.io/metadata.name` label.
    pub namespaces: Vec<Namespace>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    /// One per accepted Gateway of ours, with `version` 0 (the publisher stamps it).
    pub snapshots: BTreeMap<ObjectRef, Snapshot>,
    pub status: StatusReport,
}

/// Compiles the inputs for the GatewayClasses whose `controllerName` is `controller_name`.
pub fn compile(inputs: &Inputs, controller_name: &str) -> Output {
    let mut status = StatusReport::default();
    let classes = gateway::accept_classes(&inputs.gateway_classes, controller_name, &mut status);
    let namespaces = gateway::NamespaceLabels::new(&inputs.namespaces);
    let mut gateways = gateway::compile_gateways(&inputs.gateways, &classes);
    let backends = backend::BackendIndex::new(inputs);
    let routes = route::compile_routes(&inputs.http_routes, &mut gateways, &namespaces, &backends);

    let mut snapshots = BTreeMap::new();
    for gw in &gateways {
        status.gateways.insert(gw.id.clone(), gw.status());
        if let Some(snapshot) = gw.snapshot(&routes.attached) {
            snapshots.insert(gw.id.clone(), snapshot);
        }
    }
    status.http_routes = routes.status;
    Output { snapshots, status }
}

/// `metadata.namespace`, defaulting the way `kubectl apply` does for namespaced objects.
pub(crate) fn namespace_of(
    meta: &portico_crds::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

pub(crate) fn object_ref(
    meta: &portico_crds::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> ObjectRef {
    ObjectRef::new(namespace_of(meta), meta.name.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests;
