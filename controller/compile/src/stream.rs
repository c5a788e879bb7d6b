//! TCPRoutes, TLSRoutes and UDPRoutes: attachment to TCP, TLS and UDP listeners, backend
//! resolution and the per-parent status.
//!
//! A TCPRoute has no hostnames and no matches: it takes every connection of the listeners it
//! attaches to (a UDPRoute every flow, alike). A TLSRoute takes the connections whose SNI is one of its hostnames (those
//! left after intersecting them with the listener's). Several may attach to one listener
//! (each is Accepted and counted in its `attachedRoutes`, as the spec asks); where they
//! overlap the oldest serves, which the snapshot's order says (the dataplane takes the first
//! route for a listener, or for a hostname).

use crate::backend::{BackendIndex, BackendRefSpec, Unresolved, resolved_condition};
use crate::gateway::{GatewayState, NamespaceLabels, Owner, ParentRefParts, parent_of};
use crate::hostname;
use crate::refs::{object_ref, precedence};
use crate::route::Attached;
use crate::status::{Condition, ParentRef, RouteParentStatus, RouteStatus, reasons, types};
use portico_crds::gateway_api::tlsroutes::TlsRoute;
use portico_crds::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portico_crds::l4::{TcpRoute, UdpRoute};
use portico_model::{
    Backend, BackendRef, BackendTarget, ObjectRef, RouteKind, StreamParent, StreamRoute,
};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A stream route to compile: a TCPRoute, or a TLSRoute or UDPRoute as the TCPRoute it is
/// (their parentRefs and rules have one schema), plus a TLSRoute's hostnames.
pub(crate) struct StreamSource<'a> {
    pub(crate) kind: RouteKind,
    pub(crate) route: Cow<'a, TcpRoute>,
    /// A TLSRoute's `hostnames`; `None` for a TCPRoute.
    pub(crate) hostnames: Option<Vec<String>>,
    /// Why the route cannot be read as a stream route (never expected).
    pub(crate) invalid: Option<String>,
}

impl<'a> StreamSource<'a> {
    pub(crate) fn tcp(r: &'a TcpRoute) -> Self {
        Self {
            kind: RouteKind::Tcp,
            route: Cow::Borrowed(r),
            hostnames: None,
            invalid: None,
        }
    }

    pub(crate) fn tls(r: &TlsRoute) -> Self {
        Self::converted(
            RouteKind::Tls,
            &r.metadata,
            &r.spec,
            Some(r.spec.hostnames.clone()),
        )
    }

    pub(crate) fn udp(r: &UdpRoute) -> Self {
        Self::converted(RouteKind::Udp, &r.metadata, &r.spec, None)
    }

    /// A route of another kind read as a TCPRoute: its parentRefs and rules.
    fn converted<S: serde::Serialize>(
        kind: RouteKind,
        metadata: &ObjectMeta,
        spec: &S,
        hostnames: Option<Vec<String>>,
    ) -> Self {
        let spec = crate::gateway::convert(spec);
        Self {
            kind,
            invalid: spec
                .is_none()
                .then(|| "the route's parentRefs or rules cannot be read".to_string()),
            route: Cow::Owned(TcpRoute {
                metadata: metadata.clone(),
                spec: spec.unwrap_or_default(),
                status: None,
            }),
            hostnames,
        }
    }
}

/// The stream routes attached to each Gateway, in precedence order, with their backends.
pub(crate) type AttachedStreams = Attached<StreamRoute>;

pub(crate) struct StreamResults {
    pub(crate) attached: AttachedStreams,
    pub(crate) status: BTreeMap<(RouteKind, ObjectRef), RouteStatus>,
}

/// A route's one rule, resolved: its weighted backends and the references that did not
/// resolve (for ResolvedRefs).
struct Resolved {
    backend_refs: Vec<BackendRef>,
    backends: Vec<Backend>,
    unresolved: Vec<Unresolved>,
}

pub(crate) fn compile_stream_routes(
    routes: &[StreamSource<'_>],
    gateways: &mut [GatewayState],
    namespaces: &NamespaceLabels,
    index: &BackendIndex<'_>,
) -> StreamResults {
    // Precedence: oldest first, then namespace/name.
    let mut ordered: Vec<&StreamSource<'_>> = routes.iter().collect();
    ordered.sort_by(|a, b| {
        precedence(&a.route.metadata, &b.route.metadata).then_with(|| a.kind.cmp(&b.kind))
    });
    let mut attached = AttachedStreams::default();
    let mut status = BTreeMap::new();
    for source in ordered {
        let (kind, route) = (source.kind, source.route.as_ref());
        let id = object_ref(&route.metadata);
        let generation = route.metadata.generation;
        let resolved = match &source.invalid {
            Some(message) => Err(message.clone()),
            None => resolve(route, kind, &id.namespace, index),
        };
        let mut parents_status = Vec::new();
        for p in route.spec.parent_refs.iter().flatten() {
            let parts = ParentRefParts {
                group: p.group.as_deref(),
                kind: p.kind.as_deref(),
                namespace: p.namespace.as_deref(),
                name: &p.name,
                section_name: p.section_name.as_deref(),
                port: p.port,
            };
            let Some((parent, owner, gw)) = parent_of(&parts, &id.namespace, gateways) else {
                continue;
            };
            let gw_id = gw.id.clone();
            let outcome = resolved
                .as_ref()
                .map_err(|message| (reasons::UNSUPPORTED_VALUE, message.clone()))
                .and_then(|r| {
                    let scope = Scope {
                        kind,
                        route_ns: &id.namespace,
                        hostnames: source.hostnames.as_deref(),
                    };
                    attach(&scope, &parent, &owner, gw, namespaces).map(|l| (l, r))
                });
            let conditions = match outcome {
                Err((reason, message)) => vec![
                    Condition::new(types::ACCEPTED, false, reason, message, generation),
                    resolved_condition(
                        resolved.as_ref().ok().map(|r| r.unresolved.as_slice()),
                        generation,
                    ),
                ],
                Ok((parents, r)) => {
                    let entry = attached.0.entry(gw_id.clone()).or_default();
                    match entry.0.last_mut().filter(|s| s.id == id && s.kind == kind) {
                        Some(existing) => existing.parents.extend(parents),
                        None => entry.0.push(StreamRoute {
                            kind,
                            id: id.clone(),
                            parents,
                            backend_refs: r.backend_refs.clone(),
                        }),
                    }
                    for b in &r.backends {
                        entry.1.insert(b.id.clone(), b.clone());
                    }
                    vec![
                        Condition::new(
                            types::ACCEPTED,
                            true,
                            reasons::ACCEPTED,
                            "attached",
                            generation,
                        ),
                        resolved_condition(Some(&r.unresolved), generation),
                    ]
                }
            };
            parents_status.push(RouteParentStatus {
                gateway: gw_id,
                parent_ref: parent,
                conditions,
            });
        }
        parents_status.sort_by(|a, b| a.parent_ref.cmp(&b.parent_ref));
        if !parents_status.is_empty() {
            status.insert(
                (kind, id),
                RouteStatus {
                    parents: parents_status,
                },
            );
        }
    }
    // A route attached twice to one listener (two parentRefs) names it once.
    for (routes, _) in attached.0.values_mut() {
        for r in routes {
            r.parents.sort();
            r.parents.dedup_by(|a, b| a.listener == b.listener);
        }
    }
    StreamResults { attached, status }
}

/// The route's one rule resolved, or why the route cannot be served at all (the message of
/// `Accepted=False UnsupportedValue`).
fn resolve(
    route: &TcpRoute,
    kind: RouteKind,
    ns: &str,
    index: &BackendIndex<'_>,
) -> Result<Resolved, String> {
    let [rule] = route.spec.rules.as_slice() else {
        return Err(format!(
            "a {} has exactly one rule; this one has {}",
            kind.as_str(),
            route.spec.rules.len()
        ));
    };
    if rule.backend_refs.is_empty() {
        return Err("the rule has no backendRefs".into());
    }
    let mut out = Resolved {
        backend_refs: Vec::new(),
        backends: Vec::new(),
        unresolved: Vec::new(),
    };
    for b in &rule.backend_refs {
        let weight = b.weight.unwrap_or(1);
        let weight = u32::try_from(weight)
            .map_err(|_| format!("backendRef {}: weight {weight} is negative", b.name))?;
        let spec = BackendRefSpec {
            group: b.group.as_deref(),
            kind: b.kind.as_deref(),
            name: &b.name,
            namespace: b.namespace.as_deref(),
            port: b.port,
        };
        spec.check_port()?;
        let target = match index.resolve(kind.as_str(), ns, &spec) {
            Ok(backend) => {
                let target = BackendTarget::Service(backend.id.clone());
                out.backends.push(backend);
                target
            }
            Err(u) => {
                let target = BackendTarget::Unresolved {
                    reason: u.message.clone(),
                };
                out.unresolved.push(u);
                target
            }
        };
        out.backend_refs.push(BackendRef {
            target,
            weight,
            filters: Vec::new(),
        });
    }
    Ok(out)
}

/// What attachment reads of the route besides its parentRef.
struct Scope<'a> {
    kind: RouteKind,
    route_ns: &'a str,
    /// A TLSRoute's hostnames.
    hostnames: Option<&'a [String]>,
}

/// Attaches the route to the listeners of `owner` that its parentRef selects and that take
/// its kind (and, for a TLSRoute, share a hostname with it), or says why not.
fn attach(
    scope: &Scope<'_>,
    parent: &ParentRef,
    owner: &Owner,
    gw: &mut GatewayState,
    namespaces: &NamespaceLabels,
) -> Result<Vec<StreamParent>, (&'static str, String)> {
    let (kind, route_ns) = (scope.kind, scope.route_ns);
    // What the parentRef names, for messages; an error when that parent takes no route.
    let target = gw.attach_target(owner, parent)?;
    if let Some(bad) = scope
        .hostnames
        .into_iter()
        .flatten()
        .find_map(|h| hostname::validate(h).err())
    {
        return Err((reasons::UNSUPPORTED_VALUE, bad));
    }
    let mut selected = 0;
    let mut allowed = 0;
    let mut out = Vec::new();
    for l in gw.listeners.iter_mut().filter(|l| l.owner == *owner) {
        if parent.section_name.as_ref().is_some_and(|s| *s != l.name)
            || parent.port.is_some_and(|p| p != l.port)
        {
            continue;
        }
        selected += 1;
        if !l.usable() || !l.allows_kind(kind.as_str()) || !l.allows_namespace(route_ns, namespaces)
        {
            continue;
        }
        allowed += 1;
        let hostnames = match scope.hostnames {
            None => Vec::new(),
            Some(route_hosts) => match hostname::intersect(l.hostname.as_deref(), route_hosts) {
                Some(h) => h,
                None => continue,
            },
        };
        l.attached_routes += 1;
        out.push(StreamParent {
            listener: l.key(),
            hostnames,
        });
    }
    match (selected, allowed, out.is_empty()) {
        (0, _, _) => Err((
            reasons::NO_MATCHING_PARENT,
            format!("no listener matches {target}"),
        )),
        (_, 0, _) => Err((
            reasons::NOT_ALLOWED_BY_LISTENERS,
            format!(
                "{target} has no listener that allows {}s from namespace {route_ns}",
                kind.as_str()
            ),
        )),
        (_, _, true) => Err((
            reasons::NO_MATCHING_LISTENER_HOSTNAME,
            format!("none of the route's hostnames intersect the hostnames of {target}"),
        )),
        _ => Ok(out),
    }
}
