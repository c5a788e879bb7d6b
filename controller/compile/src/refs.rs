//! How compile names objects and finds what they point at: an object's namespace/name, the
//! Gateways of a controller, the Gateways a route's `parentRefs` name, the Services its
//! `backendRefs` name, the name of a Gateway's dataplane objects.
//!
//! The leaf of the crate: it imports nothing from the other modules, so any of them (the
//! passes, attachment, the dependency map) may use it without an import cycle.

use portico_crds::GATEWAY_GROUP;
use portico_crds::gateway_api::experimental::grpcroutes::GrpcRoute;
use portico_crds::gateway_api::experimental::httproutes::HttpRoute as HTTPRoute;
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
use portico_crds::gateway_api::listenersets::ListenerSet;
use portico_crds::gateway_api::tlsroutes::TlsRoute;
use portico_crds::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portico_crds::l4::{TcpRoute, UdpRoute};
use portico_model::ObjectRef;
use std::collections::{BTreeMap, BTreeSet};

/// `metadata.namespace`, defaulting the way `kubectl apply` does for namespaced objects.
pub(crate) fn namespace_of(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

/// Route precedence: the oldest first, then by namespace/name.
pub(crate) fn precedence(a: &ObjectMeta, b: &ObjectMeta) -> std::cmp::Ordering {
    let ta = a.creation_timestamp.as_ref().map(|t| t.0);
    let tb = b.creation_timestamp.as_ref().map(|t| t.0);
    ta.cmp(&tb).then_with(|| object_ref(a).cmp(&object_ref(b)))
}

/// The object's namespace/name (namespace defaulted as [`namespace_of`] does).
pub(crate) fn object_ref(meta: &ObjectMeta) -> ObjectRef {
    ObjectRef::new(namespace_of(meta), meta.name.clone().unwrap_or_default())
}

/// The Gateways whose class names `controller_name` (accepted or not).
pub(crate) fn gateways_of<'a>(
    classes: &'a [GatewayClass],
    gateways: &'a [Gateway],
    controller_name: &str,
) -> impl Iterator<Item = &'a Gateway> + use<'a> {
    let ours: BTreeSet<&str> = classes
        .iter()
        .filter(|c| c.spec.controller_name == controller_name)
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    gateways
        .iter()
        .filter(move |g| ours.contains(g.spec.gateway_class_name.as_str()))
}

/// The Gateway a ListenerSet's `parentRef` names, if it names a Gateway (the only parent
/// kind the API has).
pub(crate) fn listener_set_parent(ls: &ListenerSet) -> Option<ObjectRef> {
    let p = &ls.spec.parent_ref;
    let gateway = p.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        && p.kind.as_deref().unwrap_or("Gateway") == "Gateway";
    gateway.then(|| {
        ObjectRef::new(
            p.namespace
                .clone()
                .unwrap_or_else(|| namespace_of(&ls.metadata)),
            p.name.clone(),
        )
    })
}

/// The Gateway of every ListenerSet: a route that names a ListenerSet is read by its Gateway.
#[derive(Default)]
pub(crate) struct ListenerSetParents(BTreeMap<ObjectRef, ObjectRef>);

impl ListenerSetParents {
    pub(crate) fn new(sets: &[ListenerSet]) -> Self {
        Self(
            sets.iter()
                .filter_map(|ls| Some((object_ref(&ls.metadata), listener_set_parent(ls)?)))
                .collect(),
        )
    }

    pub(crate) fn gateway_of(&self, ls: &ObjectRef) -> Option<&ObjectRef> {
        self.0.get(ls)
    }
}

/// The Gateways among parentRefs given as (group, kind, namespace, name), for a route in
/// `route_ns`: those named, and those of the ListenerSets named. Other parent kinds
/// (another project's) are not ours to read.
fn gateway_parents<'a>(
    route_ns: &str,
    refs: impl Iterator<Item = (Option<&'a str>, Option<&'a str>, Option<&'a str>, &'a str)>,
    sets: &ListenerSetParents,
) -> Vec<ObjectRef> {
    refs.filter(|(group, _, _, _)| group.unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP)
        .filter_map(|(_, kind, ns, name)| {
            let id = ObjectRef::new(ns.unwrap_or(route_ns), name);
            match kind.unwrap_or("Gateway") {
                "Gateway" => Some(id),
                "ListenerSet" => sets.gateway_of(&id).cloned(),
                _ => None,
            }
        })
        .collect()
}

/// A parentRef as (group, kind, namespace, name).
type ParentRefParts<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, &'a str);

fn http_parent_refs(r: &HTTPRoute) -> impl Iterator<Item = ParentRefParts<'_>> {
    r.spec.parent_refs.iter().flatten().map(|p| {
        (
            p.group.as_deref(),
            p.kind.as_deref(),
            p.namespace.as_deref(),
            p.name.as_str(),
        )
    })
}

/// The same of a GRPCRoute. (The two route types share no Rust type for their parentRefs.)
fn grpc_parent_refs(r: &GrpcRoute) -> impl Iterator<Item = ParentRefParts<'_>> {
    r.spec.parent_refs.iter().flatten().map(|p| {
        (
            p.group.as_deref(),
            p.kind.as_deref(),
            p.namespace.as_deref(),
            p.name.as_str(),
        )
    })
}

/// The same of a TCPRoute.
fn tcp_parent_refs(r: &TcpRoute) -> impl Iterator<Item = ParentRefParts<'_>> {
    r.spec.parent_refs.iter().flatten().map(|p| {
        (
            p.group.as_deref(),
            p.kind.as_deref(),
            p.namespace.as_deref(),
            p.name.as_str(),
        )
    })
}

/// The same of a UDPRoute.
fn udp_parent_refs(r: &UdpRoute) -> impl Iterator<Item = ParentRefParts<'_>> {
    r.spec.parent_refs.iter().flatten().map(|p| {
        (
            p.group.as_deref(),
            p.kind.as_deref(),
            p.namespace.as_deref(),
            p.name.as_str(),
        )
    })
}

/// The same of a TLSRoute.
fn tls_parent_refs(r: &TlsRoute) -> impl Iterator<Item = ParentRefParts<'_>> {
    r.spec.parent_refs.iter().flatten().map(|p| {
        (
            p.group.as_deref(),
            p.kind.as_deref(),
            p.namespace.as_deref(),
            p.name.as_str(),
        )
    })
}

/// The Gateways a TLSRoute's parentRefs name, directly or through a ListenerSet.
pub(crate) fn tls_route_parents(r: &TlsRoute, sets: &ListenerSetParents) -> Vec<ObjectRef> {
    gateway_parents(&namespace_of(&r.metadata), tls_parent_refs(r), sets)
}

/// The ListenerSets a TLSRoute's parentRefs name.
pub(crate) fn tls_route_listener_sets(r: &TlsRoute) -> Vec<ObjectRef> {
    named_listener_sets(&namespace_of(&r.metadata), tls_parent_refs(r))
}

/// The Gateways a UDPRoute's parentRefs name, directly or through a ListenerSet.
pub(crate) fn udp_route_parents(r: &UdpRoute, sets: &ListenerSetParents) -> Vec<ObjectRef> {
    gateway_parents(&namespace_of(&r.metadata), udp_parent_refs(r), sets)
}

/// The ListenerSets a UDPRoute's parentRefs name.
pub(crate) fn udp_route_listener_sets(r: &UdpRoute) -> Vec<ObjectRef> {
    named_listener_sets(&namespace_of(&r.metadata), udp_parent_refs(r))
}

/// The Gateways a TCPRoute's parentRefs name, directly or through a ListenerSet.
pub(crate) fn tcp_route_parents(r: &TcpRoute, sets: &ListenerSetParents) -> Vec<ObjectRef> {
    gateway_parents(&namespace_of(&r.metadata), tcp_parent_refs(r), sets)
}

/// The ListenerSets a TCPRoute's parentRefs name.
pub(crate) fn tcp_route_listener_sets(r: &TcpRoute) -> Vec<ObjectRef> {
    named_listener_sets(&namespace_of(&r.metadata), tcp_parent_refs(r))
}

/// The Gateways an HTTPRoute's parentRefs name, directly or through a ListenerSet.
pub(crate) fn http_route_parents(r: &HTTPRoute, sets: &ListenerSetParents) -> Vec<ObjectRef> {
    gateway_parents(&namespace_of(&r.metadata), http_parent_refs(r), sets)
}

/// The Gateways a GRPCRoute's parentRefs name.
pub(crate) fn grpc_route_parents(r: &GrpcRoute, sets: &ListenerSetParents) -> Vec<ObjectRef> {
    gateway_parents(&namespace_of(&r.metadata), grpc_parent_refs(r), sets)
}

/// The ListenerSets among parentRefs, for a route in `route_ns`, whether they exist or not.
fn named_listener_sets<'a>(
    route_ns: &str,
    refs: impl Iterator<Item = ParentRefParts<'a>>,
) -> Vec<ObjectRef> {
    refs.filter(|(group, kind, _, _)| {
        group.unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP && *kind == Some("ListenerSet")
    })
    .map(|(_, _, ns, name)| ObjectRef::new(ns.unwrap_or(route_ns), name))
    .collect()
}

/// The ListenerSets an HTTPRoute's parentRefs name.
pub(crate) fn http_route_listener_sets(r: &HTTPRoute) -> Vec<ObjectRef> {
    named_listener_sets(&namespace_of(&r.metadata), http_parent_refs(r))
}

/// The ListenerSets a GRPCRoute's parentRefs name.
pub(crate) fn grpc_route_listener_sets(r: &GrpcRoute) -> Vec<ObjectRef> {
    named_listener_sets(&namespace_of(&r.metadata), grpc_parent_refs(r))
}

/// The core Services among backendRefs given as (group, kind, namespace, name), for a route
/// in `route_ns`.
fn services<'a>(
    route_ns: &str,
    refs: impl Iterator<Item = (Option<&'a str>, Option<&'a str>, Option<&'a str>, &'a str)>,
) -> Vec<ObjectRef> {
    let mut out: Vec<ObjectRef> = refs
        .filter(|(group, kind, _, _)| {
            matches!(group.unwrap_or(""), "" | "core") && kind.unwrap_or("Service") == "Service"
        })
        .map(|(_, _, ns, name)| ObjectRef::new(ns.unwrap_or(route_ns), name))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The Services the rules of an HTTPRoute send to (their backendRefs).
pub(crate) fn http_route_services(r: &HTTPRoute) -> Vec<ObjectRef> {
    let refs = r.spec.rules.iter().flatten().flat_map(|rule| {
        rule.backend_refs.iter().flatten().map(|b| {
            (
                b.group.as_deref(),
                b.kind.as_deref(),
                b.namespace.as_deref(),
                b.name.as_str(),
            )
        })
    });
    services(&namespace_of(&r.metadata), refs)
}

/// The Services the rules of a GRPCRoute send to.
pub(crate) fn grpc_route_services(r: &GrpcRoute) -> Vec<ObjectRef> {
    let refs = r.spec.rules.iter().flatten().flat_map(|rule| {
        rule.backend_refs.iter().flatten().map(|b| {
            (
                b.group.as_deref(),
                b.kind.as_deref(),
                b.namespace.as_deref(),
                b.name.as_str(),
            )
        })
    });
    services(&namespace_of(&r.metadata), refs)
}

/// The name of a Gateway's dataplane objects (ServiceAccount, Service, Deployment, ...) in
/// the dataplane namespace, where the dataplanes of every namespace's Gateways live side by
/// side: `portico-<namespace>-<name>-<hash>`, both parts cut short enough for a DNS label
/// (63 characters), dots made dashes, and a 64-bit hash of the full `namespace/name` keeping
/// two Gateways apart whatever their names. It is the ServiceAccount the snapshot channel
/// admits and the Service whose addresses the Gateway reports.
pub fn dataplane_name(namespace: &str, gateway: &str) -> String {
    fn part(s: &str, max: usize) -> String {
        let cut: String = s
            .chars()
            .take(max)
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        cut.trim_end_matches('-').to_string()
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{namespace}/{gateway}").as_bytes(),
    );
    // 64 bits: finding another Gateway name with the same hash (to squat its dataplane's
    // name) is out of reach.
    let hash: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // 8 + 18 + 1 + 19 + 1 + 16 = 63.
    format!(
        "portico-{}-{}-{hash}",
        part(namespace, 18),
        part(gateway, 19)
    )
}
