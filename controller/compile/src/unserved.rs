//! What a cluster leaves to other controllers, and standalone mode has nobody else for:
//! objects that nothing serves, each with why. In a cluster a Gateway of another class or a
//! route to another implementation's Gateway is someone else's business, and gets no status
//! from us; read from a directory, it is a typo (a class name, a `parentRefs` name) that
//! would otherwise pass `portico check` in silence.

use crate::inputs::Inputs;
use crate::refs::{
    grpc_route_listener_sets, grpc_route_parents, http_route_listener_sets, http_route_parents,
    listener_set_parent, object_ref, tcp_route_listener_sets, tcp_route_parents,
    tls_route_listener_sets, tls_route_parents, udp_route_listener_sets, udp_route_parents,
};
use crate::status::{Condition, Problem};
use portico_model::ObjectRef;
use std::collections::{BTreeMap, BTreeSet};

/// The condition type these problems are shown under (never written to a cluster).
pub const SERVED: &str = "Served";

/// Every GatewayClass, Gateway and route in `inputs` that no part of this gateway serves.
pub fn unserved(inputs: &Inputs, controller_name: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    let problem = |object: String, reason: &str, message: String| Problem {
        object,
        condition: Condition::new(SERVED, false, reason, message, None),
    };
    let classes: BTreeMap<&str, &str> = inputs
        .gateway_classes
        .iter()
        .filter_map(|c| Some((c.metadata.name.as_deref()?, c.spec.controller_name.as_str())))
        .collect();
    for (name, controller) in &classes {
        if *controller != controller_name {
            out.push(problem(
                format!("GatewayClass {name}"),
                "OtherController",
                format!(
                    "controllerName {controller} is not this gateway's ({controller_name}): its Gateways are not served"
                ),
            ));
        }
    }
    let mut ours = BTreeSet::new();
    let mut gateways = BTreeSet::new();
    for gw in &inputs.gateways {
        let id = object_ref(&gw.metadata);
        gateways.insert(id.clone());
        let class = gw.spec.gateway_class_name.as_str();
        match classes.get(class) {
            None => out.push(problem(
                format!("Gateway {id}"),
                "NoSuchGatewayClass",
                format!("GatewayClass {class} does not exist: the Gateway is not served"),
            )),
            Some(c) if *c != controller_name => out.push(problem(
                format!("Gateway {id}"),
                "OtherController",
                format!(
                    "GatewayClass {class} is for controller {c}, not this gateway's ({controller_name}): the Gateway is not served"
                ),
            )),
            Some(_) => {
                ours.insert(id);
            }
        }
    }
    for ls in &inputs.listener_sets {
        let id = object_ref(&ls.metadata);
        match listener_set_parent(ls) {
            None => out.push(problem(
                format!("ListenerSet {id}"),
                "InvalidParent",
                "its parentRef is not a Gateway".into(),
            )),
            Some(gw) if !gateways.contains(&gw) => out.push(problem(
                format!("ListenerSet {id}"),
                "NoSuchGateway",
                format!("Gateway {gw} does not exist: the ListenerSet is not served"),
            )),
            Some(gw) if !ours.contains(&gw) => out.push(problem(
                format!("ListenerSet {id}"),
                "OtherController",
                format!("Gateway {gw} is not served by this gateway (see its GatewayClass)"),
            )),
            Some(_) => {}
        }
    }
    let sets = inputs.listener_set_parents();
    let existing_sets: BTreeSet<ObjectRef> = inputs
        .listener_sets
        .iter()
        .map(|ls| object_ref(&ls.metadata))
        .collect();
    let routes = inputs
        .http_routes
        .iter()
        .map(|r| {
            (
                "HTTPRoute",
                object_ref(&r.metadata),
                http_route_parents(r, &sets),
                http_route_listener_sets(r),
                r.spec.parent_refs.as_ref().is_none_or(Vec::is_empty),
            )
        })
        .chain(inputs.grpc_routes.iter().map(|r| {
            (
                "GRPCRoute",
                object_ref(&r.metadata),
                grpc_route_parents(r, &sets),
                grpc_route_listener_sets(r),
                r.spec.parent_refs.as_ref().is_none_or(Vec::is_empty),
            )
        }))
        .chain(inputs.tcp_routes.iter().map(|r| {
            (
                "TCPRoute",
                object_ref(&r.metadata),
                tcp_route_parents(r, &sets),
                tcp_route_listener_sets(r),
                r.spec.parent_refs.as_ref().is_none_or(Vec::is_empty),
            )
        }))
        .chain(inputs.tls_routes.iter().map(|r| {
            (
                "TLSRoute",
                object_ref(&r.metadata),
                tls_route_parents(r, &sets),
                tls_route_listener_sets(r),
                r.spec.parent_refs.as_ref().is_none_or(Vec::is_empty),
            )
        }))
        .chain(inputs.udp_routes.iter().map(|r| {
            (
                "UDPRoute",
                object_ref(&r.metadata),
                udp_route_parents(r, &sets),
                udp_route_listener_sets(r),
                r.spec.parent_refs.as_ref().is_none_or(Vec::is_empty),
            )
        }));
    for (kind, id, parents, named_sets, none) in routes {
        for ls in named_sets.iter().filter(|ls| !existing_sets.contains(*ls)) {
            out.push(problem(
                format!("{kind} {id} parent ListenerSet {ls}"),
                "NoSuchListenerSet",
                format!("ListenerSet {ls} does not exist"),
            ));
        }
        if none {
            out.push(problem(
                format!("{kind} {id}"),
                "NoParents",
                "parentRefs is empty: no Gateway serves the route".into(),
            ));
            continue;
        }
        for p in &parents {
            if !gateways.contains(p) {
                out.push(problem(
                    format!("{kind} {id} parent {p}"),
                    "NoSuchGateway",
                    format!("Gateway {p} does not exist"),
                ));
            } else if !ours.contains(p) {
                out.push(problem(
                    format!("{kind} {id} parent {p}"),
                    "OtherController",
                    format!("Gateway {p} is not served by this gateway (see its GatewayClass)"),
                ));
            }
        }
    }
    out
}
