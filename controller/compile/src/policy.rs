//! Policy attachment shared by every Portico policy kind: what a `targetRef` names, which
//! kinds may attach to which targets, which policy wins a target, each policy's per-target
//! status, and naming the winners in a snapshot's route rules and route parents.
//!
//! Precedence: rule over route over listener over Gateway, the most specific policy applies
//! whole. On one target the oldest policy (creationTimestamp, then namespace/name) wins and
//! the others are `Conflicted`.
//!
//! A target is a Gateway (or listener), an HTTPRoute (or rule), or a Service (or port).
//! Services are where backend policies attach, and only there; the request policies (auth,
//! rate limits) act on requests as they are routed, so they refuse a Service target
//! ([`accepts`]) with a status saying what to target instead.

use crate::inputs::Inputs;
use crate::refs::{
    grpc_route_parents, grpc_route_services, http_route_parents, http_route_services, namespace_of,
    object_ref,
};
use crate::status::{AncestorRef, Condition, PolicyAncestorStatus, PolicyStatus, reasons, types};
use portico_crds::GATEWAY_GROUP;
use portico_crds::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portico_crds::policy::PolicyTargetRef;
use portico_model::{ObjectRef, PolicyKind, RouteKind, Snapshot};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What a policy attaches to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    /// A Gateway, or one of its listeners.
    Gateway(ObjectRef, Option<String>),
    /// A ListenerSet, or one of its listeners: the routes attached there.
    ListenerSet(ObjectRef, Option<String>),
    /// An HTTPRoute, or one of its rules.
    Route(ObjectRef, Option<String>),
    /// A Service, or one of its ports (by name), as the backend of the routes that send to it.
    Service(ObjectRef, Option<String>),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Gateway(id, None) => write!(f, "Gateway {id}"),
            Target::Gateway(id, Some(l)) => write!(f, "Gateway {id} listener {l}"),
            Target::ListenerSet(id, None) => write!(f, "ListenerSet {id}"),
            Target::ListenerSet(id, Some(l)) => write!(f, "ListenerSet {id} listener {l}"),
            Target::Route(id, None) => write!(f, "HTTPRoute {id}"),
            Target::Route(id, Some(r)) => write!(f, "HTTPRoute {id} rule {r}"),
            Target::Service(id, None) => write!(f, "Service {id}"),
            Target::Service(id, Some(p)) => write!(f, "Service {id} port {p}"),
        }
    }
}

/// Whether policies of `kind` may attach to `target`, or why not.
pub(crate) fn accepts(kind: PolicyKind, target: &Target) -> Result<(), String> {
    match (kind, target) {
        (
            PolicyKind::Auth | PolicyKind::RateLimit | PolicyKind::Cache | PolicyKind::Invalidation,
            Target::Service(id, _),
        ) => Err(format!(
            "a {kind} applies to requests as they are routed and cannot target Service {id}; \
             target the Gateway, a listener, or an HTTPRoute or rule that sends to it"
        )),
        (
            PolicyKind::Backend,
            Target::Gateway(..) | Target::ListenerSet(..) | Target::Route(..),
        ) => Err(format!(
            "a {kind} applies to the endpoints of a Service and cannot target {target}; \
             target the Service (group \"\", kind Service) the routes send to"
        )),
        (PolicyKind::Backend, Target::Service(..))
        | (
            PolicyKind::Auth | PolicyKind::RateLimit | PolicyKind::Cache | PolicyKind::Invalidation,
            Target::Gateway(..) | Target::ListenerSet(..) | Target::Route(..),
        ) => Ok(()),
    }
}

/// The Gateways of ours with their listener names, the HTTPRoutes with their rule names and
/// the Services: what a `targetRef` may name.
pub(crate) struct Targets {
    gateways: BTreeMap<ObjectRef, BTreeSet<String>>,
    /// The ListenerSets of our Gateways: their Gateway and their listener names.
    listener_sets: BTreeMap<ObjectRef, (ObjectRef, BTreeSet<String>)>,
    routes: BTreeMap<ObjectRef, BTreeSet<String>>,
    /// Each HTTPRoute's parent Gateways.
    route_parents: BTreeMap<ObjectRef, Vec<ObjectRef>>,
    /// Each HTTPRoute's parent ListenerSets (of our Gateways).
    route_sets: BTreeMap<ObjectRef, Vec<ObjectRef>>,
    /// Each Service, with the Gateways of the routes (HTTP and gRPC) that send to it.
    services: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
    /// Each Service's named ports.
    service_ports: BTreeMap<ObjectRef, BTreeSet<String>>,
}

impl Targets {
    pub(crate) fn new(inputs: &Inputs, controller_name: &str) -> Self {
        let gateways: BTreeMap<ObjectRef, BTreeSet<String>> = inputs
            .gateways_of(controller_name)
            .map(|g| {
                let listeners = g.spec.listeners.iter().map(|l| l.name.clone()).collect();
                (object_ref(&g.metadata), listeners)
            })
            .collect();
        let routes = inputs
            .http_routes
            .iter()
            .map(|r| {
                let rules = r.spec.rules.iter().flatten();
                (
                    object_ref(&r.metadata),
                    rules.filter_map(|rule| rule.name.clone()).collect(),
                )
            })
            .collect();
        let sets = inputs.listener_set_parents();
        let listener_sets: BTreeMap<ObjectRef, (ObjectRef, BTreeSet<String>)> = inputs
            .listener_sets
            .iter()
            .filter_map(|ls| {
                let id = object_ref(&ls.metadata);
                let gw = sets.gateway_of(&id).filter(|g| gateways.contains_key(*g))?;
                let listeners = ls.spec.listeners.iter().map(|l| l.name.clone()).collect();
                Some((id, (gw.clone(), listeners)))
            })
            .collect();
        let route_sets = inputs
            .http_routes
            .iter()
            .map(|r| {
                let mut sets = crate::refs::http_route_listener_sets(r);
                sets.retain(|ls| listener_sets.contains_key(ls));
                (object_ref(&r.metadata), sets)
            })
            .collect();
        let route_parents: BTreeMap<ObjectRef, Vec<ObjectRef>> = inputs
            .http_routes
            .iter()
            .map(|r| (object_ref(&r.metadata), http_route_parents(r, &sets)))
            .collect();
        let mut services: BTreeMap<ObjectRef, BTreeSet<ObjectRef>> = inputs
            .services
            .iter()
            .map(|s| (object_ref(&s.metadata), BTreeSet::new()))
            .collect();
        let service_ports = inputs
            .services
            .iter()
            .map(|s| {
                let ports = s.spec.iter().flat_map(|spec| spec.ports.iter().flatten());
                (
                    object_ref(&s.metadata),
                    ports.filter_map(|p| p.name.clone()).collect(),
                )
            })
            .collect();
        let routes_to = inputs
            .http_routes
            .iter()
            .map(|r| (http_route_services(r), http_route_parents(r, &sets)))
            .chain(
                inputs
                    .grpc_routes
                    .iter()
                    .map(|r| (grpc_route_services(r), grpc_route_parents(r, &sets))),
            );
        for (backends, parents) in routes_to {
            for svc in backends {
                if let Some(gws) = services.get_mut(&svc) {
                    gws.extend(
                        parents
                            .iter()
                            .filter(|g| gateways.contains_key(*g))
                            .cloned(),
                    );
                }
            }
        }
        Self {
            gateways,
            listener_sets,
            routes,
            route_parents,
            route_sets,
            services,
            service_ports,
        }
    }

    /// The target a `targetRef` names, if it exists.
    fn resolve(&self, t: &PolicyTargetRef, namespace: &str) -> Result<Target, TargetError> {
        use TargetError::{Invalid, NotFound};
        let id = ObjectRef::new(namespace, t.name.clone());
        let section = t.section_name.clone();
        match (t.group.as_str(), t.kind.as_str()) {
            ("" | "core", "Service") => {
                let Some(ports) = self.service_ports.get(&id) else {
                    return Err(NotFound(format!("Service {id} does not exist")));
                };
                if let Some(s) = &section
                    && !ports.contains(s)
                {
                    return Err(NotFound(format!(
                        "Service {id} has no port named {s:?} (sectionName names a port by its name)"
                    )));
                }
                Ok(Target::Service(id, section))
            }
            (GATEWAY_GROUP, "Gateway") => {
                let Some(listeners) = self.gateways.get(&id) else {
                    return Err(NotFound(format!(
                        "Gateway {id} does not exist or is not served by Portico"
                    )));
                };
                if let Some(s) = &section
                    && !listeners.contains(s)
                {
                    return Err(NotFound(format!("Gateway {id} has no listener {s:?}")));
                }
                Ok(Target::Gateway(id, section))
            }
            (GATEWAY_GROUP, "ListenerSet") => {
                let Some((_, listeners)) = self.listener_sets.get(&id) else {
                    return Err(NotFound(format!(
                        "ListenerSet {id} does not exist or its Gateway is not served by Portico"
                    )));
                };
                if let Some(s) = &section
                    && !listeners.contains(s)
                {
                    return Err(NotFound(format!("ListenerSet {id} has no listener {s:?}")));
                }
                Ok(Target::ListenerSet(id, section))
            }
            (GATEWAY_GROUP, "HTTPRoute") => {
                let Some(rules) = self.routes.get(&id) else {
                    return Err(NotFound(format!("HTTPRoute {id} does not exist")));
                };
                if let Some(s) = &section
                    && !rules.contains(s)
                {
                    return Err(NotFound(format!("HTTPRoute {id} has no rule named {s:?}")));
                }
                Ok(Target::Route(id, section))
            }
            (group, kind) => Err(Invalid(format!(
                "kind {kind:?} in group {group:?} cannot be targeted; use a Gateway, a \
                 ListenerSet or an HTTPRoute (group {GATEWAY_GROUP}) or a core Service"
            ))),
        }
    }

    /// The ListenerSets an HTTPRoute names as parents.
    pub(crate) fn sets_of(&self, route: &ObjectRef) -> &[ObjectRef] {
        self.route_sets.get(route).map_or(&[], Vec::as_slice)
    }

    /// The HTTPRoutes that name ListenerSet `ls` as a parent.
    pub(crate) fn routes_on<'a>(
        &'a self,
        ls: &'a ObjectRef,
    ) -> impl Iterator<Item = &'a ObjectRef> {
        self.route_sets
            .iter()
            .filter(move |(_, sets)| sets.contains(ls))
            .map(|(route, _)| route)
    }

    /// The Gateways a route target is served through.
    pub(crate) fn parents_of(&self, route: &ObjectRef) -> &[ObjectRef] {
        self.route_parents.get(route).map_or(&[], Vec::as_slice)
    }

    /// What a `targetRef` of an object that attaches without claiming its target names
    /// (many CacheInvalidations apply to one target), or the reason and message of why not.
    pub(crate) fn resolve_for(
        &self,
        kind: PolicyKind,
        t: &PolicyTargetRef,
        namespace: &str,
    ) -> Result<Target, (&'static str, String)> {
        match self.resolve(t, namespace) {
            Err(TargetError::Invalid(m)) => Err((reasons::INVALID, m)),
            Err(TargetError::NotFound(m)) => Err((reasons::TARGET_NOT_FOUND, m)),
            Ok(target) => accepts(kind, &target)
                .map(|()| target)
                .map_err(|m| (reasons::INVALID, m)),
        }
    }

    /// The Gateways of ours a target is reached through: itself, a route's parents, or the
    /// Gateways of the routes that send to a Service.
    pub(crate) fn gateways_of(&self, target: &Target) -> Vec<ObjectRef> {
        match target {
            Target::Gateway(gw, _) => vec![gw.clone()],
            Target::ListenerSet(ls, _) => self
                .listener_sets
                .get(ls)
                .map(|(gw, _)| gw.clone())
                .into_iter()
                .collect(),
            Target::Route(route, _) => self.parents_of(route).to_vec(),
            Target::Service(svc, _) => self
                .services
                .get(svc)
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
        }
    }
}

/// Why a `targetRef` does not attach.
enum TargetError {
    /// It names something a policy cannot target.
    Invalid(String),
    /// It names something that does not exist (or is not ours).
    NotFound(String),
}

/// What becomes of a policy on a target it names and may win.
pub(crate) enum Verdict {
    Applies,
    /// It attaches although it is broken: its targets refuse requests (auth fails closed).
    /// `message` says why and what makes the target serve again.
    AttachedInvalid {
        reason: &'static str,
        message: String,
    },
    /// It does not attach: the next less specific policy applies there.
    Rejected(String),
}

/// What became of a policy's own references (Secrets), for its `ResolvedRefs` condition.
pub(crate) enum References<'a> {
    /// The policy was read; these references could not be resolved (none: all were).
    Read { unresolved: &'a [String] },
    /// The policy could not be read, and so neither could the references it makes.
    Unreadable,
}

impl References<'_> {
    fn condition(&self, generation: Option<i64>) -> Condition {
        match self {
            References::Read { unresolved: [] } => Condition::new(
                types::RESOLVED_REFS,
                true,
                reasons::RESOLVED_REFS,
                "all references resolved",
                generation,
            ),
            References::Read { unresolved } => Condition::new(
                types::RESOLVED_REFS,
                false,
                reasons::INVALID_REF,
                unresolved.join("; "),
                generation,
            ),
            References::Unreadable => Condition::new(
                types::RESOLVED_REFS,
                false,
                reasons::UNREADABLE,
                "the policy cannot be read, so neither can the references it makes",
                generation,
            ),
        }
    }
}

/// The winning policy of each target, for one policy kind.
#[derive(Debug, Default)]
pub(crate) struct Attachments {
    by_target: BTreeMap<Target, ObjectRef>,
}

/// Sorts policies oldest first (creationTimestamp, then namespace/name): the order in which
/// they claim targets.
pub(crate) fn oldest_first<T>(items: &[T], meta: impl Fn(&T) -> &ObjectMeta) -> Vec<&T> {
    let mut ordered: Vec<&T> = items.iter().collect();
    ordered.sort_by(|a, b| {
        let (a, b) = (meta(a), meta(b));
        let ta = a.creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.creation_timestamp.as_ref().map(|t| t.0);
        ta.cmp(&tb).then_with(|| object_ref(a).cmp(&object_ref(b)))
    });
    ordered
}

impl Attachments {
    /// Attaches one policy to what it targets and returns its status. Call with the
    /// policies of a kind oldest first. `verdict` decides about each target the policy would
    /// win; `references` says what became of the references (Secrets) it makes.
    pub(crate) fn claim(
        &mut self,
        kind: PolicyKind,
        meta: &ObjectMeta,
        target_refs: &[PolicyTargetRef],
        targets: &Targets,
        mut verdict: impl FnMut(&Target) -> Verdict,
        references: &References<'_>,
    ) -> PolicyStatus {
        let id = object_ref(meta);
        let generation = meta.generation;
        let mut ancestors = Vec::new();
        for t in target_refs {
            let resolved = targets.resolve(t, &id.namespace).and_then(|target| {
                accepts(kind, &target)
                    .map(|()| target)
                    .map_err(TargetError::Invalid)
            });
            let (ok, reason, message) = match resolved {
                Err(TargetError::Invalid(message)) => (false, reasons::INVALID, message),
                Err(TargetError::NotFound(message)) => (false, reasons::TARGET_NOT_FOUND, message),
                Ok(target) => match self.by_target.get(&target) {
                    Some(winner) if *winner != id => (
                        false,
                        reasons::CONFLICTED,
                        format!("the older {kind} {winner} already applies to this target"),
                    ),
                    _ => match verdict(&target) {
                        Verdict::Applies => {
                            self.by_target.insert(target, id.clone());
                            (true, reasons::ACCEPTED, "policy applies".to_string())
                        }
                        Verdict::AttachedInvalid { reason, message } => {
                            self.by_target.insert(target, id.clone());
                            (false, reason, message)
                        }
                        Verdict::Rejected(reason) => (false, reasons::INVALID, reason),
                    },
                },
            };
            let resolved = references.condition(generation);
            ancestors.push(PolicyAncestorStatus {
                ancestor_ref: AncestorRef {
                    group: t.group.clone(),
                    kind: t.kind.clone(),
                    namespace: id.namespace.clone(),
                    name: t.name.clone(),
                    section_name: t.section_name.clone(),
                },
                conditions: vec![
                    Condition::new(types::ACCEPTED, ok, reason, message, generation),
                    resolved,
                ],
            });
        }
        PolicyStatus { ancestors }
    }

    pub(crate) fn get(&self, t: &Target) -> Option<&ObjectRef> {
        self.by_target.get(t)
    }

    /// Whether a policy for which `fits` holds is on Gateway `gw` or one of its listeners.
    pub(crate) fn any_gateway_level(
        &self,
        gw: &ObjectRef,
        fits: &impl Fn(&ObjectRef) -> bool,
    ) -> bool {
        self.by_target
            .iter()
            .any(|(t, p)| matches!(t, Target::Gateway(g, _) if g == gw) && fits(p))
    }

    /// Whether such a policy is on the whole of Gateway `gw` (not one of its listeners).
    pub(crate) fn any_on_whole_gateway(
        &self,
        gw: &ObjectRef,
        fits: &impl Fn(&ObjectRef) -> bool,
    ) -> bool {
        self.get(&Target::Gateway(gw.clone(), None))
            .is_some_and(fits)
    }

    /// Whether such a policy is on ListenerSet `ls` or one of its listeners.
    pub(crate) fn any_on_listener_set(
        &self,
        ls: &ObjectRef,
        fits: &impl Fn(&ObjectRef) -> bool,
    ) -> bool {
        self.by_target
            .iter()
            .any(|(t, p)| matches!(t, Target::ListenerSet(l, _) if l == ls) && fits(p))
    }

    /// Whether such a policy is on HTTPRoute `route` or one of its rules.
    pub(crate) fn any_on_route(
        &self,
        route: &ObjectRef,
        fits: &impl Fn(&ObjectRef) -> bool,
    ) -> bool {
        self.by_target
            .iter()
            .any(|(t, p)| matches!(t, Target::Route(r, _) if r == route) && fits(p))
    }

    /// Whether such a policy is on Gateway `gw`, one of its listeners, or a route served
    /// through it.
    pub(crate) fn any_on_gateway(
        &self,
        gw: &ObjectRef,
        targets: &Targets,
        fits: &impl Fn(&ObjectRef) -> bool,
    ) -> bool {
        self.by_target
            .iter()
            .any(|(t, p)| fits(p) && targets.gateways_of(t).contains(gw))
    }

    /// Names the policy of `kind` of each route parent (listener, else Gateway) and each
    /// HTTPRoute rule (rule, else route) in `snapshot`, and returns the policies named.
    pub(crate) fn name_in(&self, snapshot: &mut Snapshot, kind: PolicyKind) -> BTreeSet<ObjectRef> {
        let mut used = BTreeSet::new();
        if self.by_target.is_empty() {
            return used;
        }
        let gw = snapshot.gateway.clone();
        for route in &mut snapshot.routes {
            for p in &mut route.parents {
                // A ListenerSet's listener: its own, then its set's, then the Gateway's.
                let in_set =
                    crate::gateway::listener_set_of_key(&p.listener).and_then(|(ls, listener)| {
                        self.get(&Target::ListenerSet(ls.clone(), Some(listener)))
                            .or_else(|| self.get(&Target::ListenerSet(ls, None)))
                    });
                let policy = in_set
                    .or_else(|| self.get(&Target::Gateway(gw.clone(), Some(p.listener.clone()))))
                    .or_else(|| self.get(&Target::Gateway(gw.clone(), None)))
                    .cloned();
                used.extend(policy.clone());
                p.policies.set(kind, policy);
            }
            if route.kind != RouteKind::Http {
                continue;
            }
            let whole = self.get(&Target::Route(route.id.clone(), None));
            for r in &mut route.rules {
                let own = r
                    .name
                    .as_ref()
                    .and_then(|n| self.get(&Target::Route(route.id.clone(), Some(n.clone()))));
                let policy = own.or(whole).cloned();
                used.extend(policy.clone());
                r.policies.set(kind, policy);
            }
        }
        used
    }
}

/// The Gateways and HTTPRoutes a policy targets (for recompiling what a change touches).
pub(crate) fn target_objects<'a>(
    meta: &'a ObjectMeta,
    target_refs: &'a [PolicyTargetRef],
) -> impl Iterator<Item = (&'a str, ObjectRef)> + 'a {
    let ns = namespace_of(meta);
    target_refs
        .iter()
        .map(move |t| (t.kind.as_str(), ObjectRef::new(ns.clone(), t.name.clone())))
}
