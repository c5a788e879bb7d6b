//! Compile: Gateway API objects in, one [`Snapshot`] per Gateway and the status every object
//! should carry out.
//!
//! A pure, deterministic function: no I/O, no clock, no randomness. The controller calls it
//! with the contents of its indexes; standalone mode calls it with the objects read from YAML.
//! The same inputs, in any order, give byte-identical snapshots.
//!
//! ```text
//!  GatewayClass ◀── Gateway ◀──parentRefs── HTTPRoute ──backendRefs──▶ Service ◀── EndpointSlice
//!                   ▲  │                     GRPCRoute, TCP/TLSRoute ▲
//!     ListenerSet ──┘  └ listeners ─ allowedRoutes (Namespace labels) │
//!                   └─ certificateRefs ──▶ Secret ◀── ReferenceGrant ─┘
//!   AuthPolicy ──targetRefs──▶ Gateway [listener] | HTTPRoute [rule];  ──▶ Secret
//!   RateLimitPolicy ──targetRefs──▶ (the same)
//!   CachePolicy     ──targetRefs──▶ (the same)
//!   BackendPolicy ──targetRefs──▶ Service [port]   (and only there)
//!   (a policy's status is keyed by its PolicyKind)
//! ```
//!
//! Compile resolves those edges in one pass per kind: classes, then Gateways with their
//! listeners and certificates ([`gateway`], [`tls`]), then routes with their attachment, rules
//! and backends ([`route`], [`grpc`], [`backend`]; TCPRoutes and TLSRoutes in [`stream`]), then the policies that protect them
//! ([`policy`]: [`auth`], [`ratelimit`]) and the backends ([`backend_policy`]); [`snapshot`] assembles each Gateway's snapshot from
//! what the passes concluded. This file only runs the passes in order.
//!
//! Modules import downwards only, with no cycle: [`refs`] (names and references), [`values`]
//! (token and duration checks),
//! [`unreadable`] (what can be read of an AuthPolicy this version cannot read whole) and
//! [`status`] are leaves, [`inputs`] sits on them, the passes on those, `snapshot` on the
//! passes, and this file on everything; [`incremental`] drives [`compile_scoped`] from
//! outside.

mod auth;
mod backend;
mod backend_policy;
mod backend_tls;
mod ca;
mod cache;
mod cors;
mod gateway;
mod grants;
mod grpc;
mod hostname;
pub mod incremental;
mod inputs;
pub mod manifests;
mod mirror;
pub mod parameters;
mod placement;
mod policy;
mod ratelimit;
mod refs;
mod route;
mod session;
mod snapshot;
pub mod status;
mod stream;
mod tls;
pub mod unreadable;
pub mod unserved;
mod values;

use crate::refs::{namespace_of, object_ref};
use crate::route::RouteSource;
use crate::snapshot::ResolvedPolicies;
use crate::stream::StreamSource;
use portico_crds::gateway_api::gateways::Gateway;
use portico_model::{ObjectRef, RouteKind, Snapshot};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

pub use backend::ENDPOINTS_ANNOTATION;
pub use gateway::requested_addresses;
pub use inputs::{Addresses, Inputs};
pub use placement::Placement;
pub use portico_crds::CONTROLLER_NAME;
pub use refs::dataplane_name;
pub use status::StatusReport;
pub use unreadable::{
    AuthPolicyRead, BackendTlsPolicyRead, PolicyRead, ProtectivePolicy, UnreadablePolicy,
    read_policy,
};

/// What one compile produces.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    /// One per accepted Gateway of ours, with `version` 0 (the publisher stamps it).
    pub snapshots: BTreeMap<ObjectRef, Snapshot>,
    /// The status of every object compile is responsible for.
    pub status: StatusReport,
}

/// Compiles the inputs for the GatewayClasses whose `controllerName` is `controller_name`.
pub fn compile(inputs: &Inputs, controller_name: &str) -> Output {
    compile_scoped(inputs, controller_name, None)
}

/// Compiles only the Gateways in `scope` (every Gateway when `None`), and the routes that name
/// them. Gateways compile independently of each other, so the output for a Gateway is the same
/// as in a full compile: its snapshot, its status, and its routes' parent statuses for it.
/// GatewayClass status is always complete.
pub fn compile_scoped(
    inputs: &Inputs,
    controller_name: &str,
    scope: Option<&BTreeSet<ObjectRef>>,
) -> Output {
    let in_scope = |gw: &ObjectRef| scope.is_none_or(|s| s.contains(gw));
    let mut status = StatusReport::default();
    let configs: BTreeSet<ObjectRef> = inputs
        .gateway_configs
        .iter()
        .map(|c| object_ref(&c.metadata))
        .collect();
    let classes = gateway::accept_classes(
        &inputs.gateway_classes,
        &configs,
        controller_name,
        &mut status,
    );
    let namespaces = gateway::NamespaceLabels::new(&inputs.namespaces);
    let grants = grants::ReferenceGrants::new(&inputs.reference_grants);
    let secrets = tls::SecretIndex::new(inputs.secret_view(), &grants);
    let scoped_gateways: Vec<Gateway>;
    let gateways_in = match scope {
        None => &inputs.gateways,
        Some(_) => {
            scoped_gateways = inputs
                .gateways
                .iter()
                .filter(|g| in_scope(&object_ref(&g.metadata)))
                .cloned()
                .collect();
            &scoped_gateways
        }
    };
    let params = gateway::Parameters {
        configs: inputs
            .gateway_configs
            .iter()
            .map(|c| (object_ref(&c.metadata), &c.spec))
            .collect(),
        classes: &inputs.gateway_classes,
    };
    let gateway_inputs = gateway::GatewayInputs {
        params,
        secrets: &secrets,
        cas: ca::CaSources {
            config_maps: &inputs.config_maps,
            secrets: inputs.secret_view(),
        },
        grants: &grants,
        listener_sets: &inputs.listener_sets,
        namespaces: &namespaces,
        reserved_ports: &inputs.reserved_ports,
    };
    let mut gateways = gateway::compile_gateways(gateways_in, &classes, &gateway_inputs);
    for gw in &mut gateways {
        gw.addresses_mode = inputs.addresses;
    }
    let backends = backend::BackendIndex::new(inputs);
    let sets = inputs.listener_set_parents();
    let names_scope = |parents: Vec<ObjectRef>| scope.is_none() || parents.iter().any(in_scope);
    let sources: Vec<RouteSource<'_>> = inputs
        .http_routes
        .iter()
        .filter(|r| names_scope(refs::http_route_parents(r, &sets)))
        .map(|r| RouteSource {
            kind: RouteKind::Http,
            route: Cow::Borrowed(r),
            invalid: None,
        })
        .chain(
            inputs
                .grpc_routes
                .iter()
                .filter(|g| names_scope(refs::grpc_route_parents(g, &sets)))
                .map(|g| {
                    let (route, valid) = grpc::as_http_route(g);
                    RouteSource {
                        kind: RouteKind::Grpc,
                        route: Cow::Owned(route),
                        invalid: valid.err(),
                    }
                }),
        )
        .collect();
    let routes = route::compile_routes(&sources, &mut gateways, &namespaces, &backends);
    let stream_sources: Vec<StreamSource<'_>> = inputs
        .tcp_routes
        .iter()
        .filter(|r| names_scope(refs::tcp_route_parents(r, &sets)))
        .map(StreamSource::tcp)
        .chain(
            inputs
                .tls_routes
                .iter()
                .filter(|r| names_scope(refs::tls_route_parents(r, &sets)))
                .map(StreamSource::tls),
        )
        .chain(
            inputs
                .udp_routes
                .iter()
                .filter(|r| names_scope(refs::udp_route_parents(r, &sets)))
                .map(StreamSource::udp),
        )
        .collect();
    let streams =
        stream::compile_stream_routes(&stream_sources, &mut gateways, &namespaces, &backends);
    let targets = policy::Targets::new(inputs, controller_name);
    let auth = auth::resolve(inputs, &targets, &mut status);
    let redis = ratelimit::GatewayRedis::new(inputs, controller_name);
    let rate_limit = ratelimit::resolve(inputs, &targets, &auth, &redis, &mut status);
    let cache = cache::resolve(inputs, &targets, &auth, &redis, &mut status);
    let backend = backend_policy::resolve(inputs, &targets, &mut status);
    let backend_tls = backend_tls::resolve(inputs, controller_name, &mut status);
    let policies = ResolvedPolicies {
        auth,
        rate_limit,
        cache,
        backend,
        backend_tls,
    };

    let mut snapshots = BTreeMap::new();
    for gw in &gateways {
        let service = inputs.services.iter().find(|s| {
            s.metadata.name.as_deref()
                == Some(dataplane_name(&gw.id.namespace, &gw.id.name).as_str())
                && namespace_of(&s.metadata) == inputs.placement.namespace_for(&gw.id.namespace)
        });
        status.gateways.insert(gw.id.clone(), gw.status(service));
        status.listener_sets.extend(gw.listener_set_statuses());
        if let Some(snapshot) =
            snapshot::gateway_snapshot(gw, &routes.attached, &streams.attached, &policies)
        {
            snapshots.insert(gw.id.clone(), snapshot);
        }
    }
    for ((kind, id), s) in routes.status.into_iter().chain(streams.status) {
        status.routes_mut(kind).insert(id, s);
    }
    Output { snapshots, status }
}

/// The ports a Gateway's snapshot serves for its ListenerSets' listeners: what its
/// provisioned Service exposes besides the ports of its own listeners. Taken from what
/// compile admitted (allowed, not conflicted, servable), so a ListenerSet the Gateway
/// refuses never changes its Service.
pub fn listener_set_ports(snapshot: &Snapshot) -> BTreeSet<ServedPort> {
    snapshot
        .listeners
        .iter()
        .filter(|l| gateway::is_listener_set_key(&l.name))
        .map(|l| ServedPort {
            port: i32::from(l.port),
            udp: l.protocol == portico_model::Protocol::Udp,
        })
        .collect()
}

/// A port a Gateway's dataplane serves, as its Service exposes it: the number, and whether
/// it is a UDP port (a UDP listener may share its number with a TCP one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServedPort {
    pub port: i32,
    pub udp: bool,
}

impl ServedPort {
    /// The port of a listener of `protocol`.
    pub fn of(port: i32, protocol: &str) -> Self {
        Self {
            port,
            udp: protocol == "UDP",
        }
    }

    /// Its Kubernetes protocol.
    pub fn protocol(&self) -> &'static str {
        if self.udp { "UDP" } else { "TCP" }
    }

    /// Its name in the Service and the pod (unique among both protocols' ports).
    pub fn name(&self) -> String {
        if self.udp {
            format!("udp-{}", self.port)
        } else {
            format!("port-{}", self.port)
        }
    }
}

/// The Secrets that the listeners of our Gateways and of their ListenerSets may use (named
/// by a `certificateRef`, in the owner's namespace or allowed by a ReferenceGrant) and those
/// AuthPolicies name. The controller watches exactly these, so it never reads Secrets it has
/// no business with.
pub fn referenced_secrets(inputs: &Inputs, controller_name: &str) -> BTreeSet<ObjectRef> {
    let grants = grants::ReferenceGrants::new(&inputs.reference_grants);
    let index = tls::SecretIndex::new(Default::default(), &grants);
    let mut out = BTreeSet::new();
    let namespaces = gateway::NamespaceLabels::new(&inputs.namespaces);
    let mut admitted = Vec::new();
    for gw in inputs.gateways_of(controller_name) {
        let ns = namespace_of(&gw.metadata);
        // Only the ListenerSets it allows: any namespace can name a Gateway.
        admitted.extend(gateway::admitted_listener_sets(
            gw,
            &inputs.listener_sets,
            &namespaces,
        ));
        for r in gw.spec.listeners.iter().flat_map(|l| {
            l.tls
                .iter()
                .flat_map(|t| t.certificate_refs.iter().flatten())
        }) {
            if let Ok(id) = index.permitted("Gateway", &ns, r) {
                out.insert(id);
            }
        }
        // The CA certificates of its client validation kept in Secrets.
        out.extend(
            gateway::frontend_ca_refs(gw, &grants)
                .into_iter()
                .filter(|(kind, _)| kind == "Secret")
                .map(|(_, id)| id),
        );
        // Its client certificate for backends.
        if let Some(r) = gw
            .spec
            .tls
            .as_ref()
            .and_then(|t| t.backend.as_ref())
            .and_then(|b| b.client_certificate_ref.as_ref())
        {
            let r: Option<portico_crds::gateway_api::gateways::GatewayListenersTlsCertificateRefs> =
                gateway::convert(r);
            if let Some(id) = r.and_then(|r| index.permitted("Gateway", &ns, &r).ok()) {
                out.insert(id);
            }
        }
    }
    for ls in admitted {
        let ns = namespace_of(&ls.metadata);
        for r in ls.spec.listeners.iter().flat_map(|l| {
            l.tls
                .iter()
                .flat_map(|t| t.certificate_refs.iter().flatten())
        }) {
            // The same reference in another generated type.
            let r: Option<portico_crds::gateway_api::gateways::GatewayListenersTlsCertificateRefs> =
                gateway::convert(r);
            if let Some(id) = r.and_then(|r| index.permitted("ListenerSet", &ns, &r).ok()) {
                out.insert(id);
            }
        }
    }
    out.extend(auth::referenced_secrets(inputs));
    out.extend(backend_tls::referenced_secrets(inputs));
    out
}

/// The ConfigMaps of CA certificates that BackendTLSPolicies and our Gateways'
/// `spec.tls.frontend` name: the controller watches exactly these.
pub fn referenced_config_maps(inputs: &Inputs, controller_name: &str) -> BTreeSet<ObjectRef> {
    let grants = grants::ReferenceGrants::new(&inputs.reference_grants);
    let mut out = backend_tls::referenced_config_maps(inputs);
    for gw in inputs.gateways_of(controller_name) {
        out.extend(
            gateway::frontend_ca_refs(gw, &grants)
                .into_iter()
                .filter(|(kind, _)| kind == "ConfigMap")
                .map(|(_, id)| id),
        );
    }
    out
}

#[cfg(test)]
mod tests;
