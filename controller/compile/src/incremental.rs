//! Recompiling only the Gateways a change touches.
//!
//! Gateways compile independently ([`crate::compile_scoped`]), so the controller keeps the
//! output of each and, when objects change, recompiles just the Gateways that read them.
//! [`Dependencies`] is that map, built from the inputs without compiling anything: for every
//! Gateway of ours, the objects its compile reads — its class, itself, the ListenerSets
//! naming it, the routes naming it or them,
//! the Services, Secrets and ReferenceGrants those refer to, the namespaces of its routes.
//! A change is looked up in the map of the previous inputs (what the Gateway read before: a
//! route that left it, a deleted object) and of the new ones (what it reads now: a route that
//! arrived, a Service that was missing).
//!
//! The assembled status is the same as a full compile's (a test holds it to that).

use crate::inputs::Inputs;
use crate::refs::{
    dataplane_name, grpc_route_parents, http_route_parents, listener_set_parent, object_ref,
    tcp_route_parents, tls_route_parents, udp_route_parents,
};
use crate::status::{
    GatewayStatus, ListenerSetStatus, RouteParentStatus, RouteStatus, StatusReport,
};
use crate::{Output, compile_scoped};
use portico_crds::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portico_crds::policy::PolicyTargetRef;
use portico_model::{ObjectRef, PolicyKind, RouteKind, Snapshot};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// An object (or a set of them) a Gateway's compile may read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DepKey {
    GatewayClass(String),
    Gateway(ObjectRef),
    ListenerSet(ObjectRef),
    Route(RouteKind, ObjectRef),
    Service(ObjectRef),
    Secret(ObjectRef),
    /// The ReferenceGrants of a namespace.
    ReferenceGrants(String),
    Namespace(String),
    /// A Portico policy of one kind.
    Policy(PolicyKind, ObjectRef),
    BackendTlsPolicy(ObjectRef),
    ConfigMap(ObjectRef),
    GatewayConfig(ObjectRef),
}

/// Every policy of every kind as (kind, metadata, targetRefs, names of the Secrets it
/// reads): what the dependency map needs of a policy, whatever its kind. An AuthPolicy this
/// version cannot read is read by the Gateways it targets all the same (it refuses their
/// requests); the Secrets it names are unknown.
fn policies(
    inputs: &Inputs,
) -> impl Iterator<
    Item = (
        PolicyKind,
        &ObjectMeta,
        Cow<'_, [PolicyTargetRef]>,
        Vec<String>,
    ),
> {
    let unreadable_auth = inputs.unreadable_auth_policies.iter().map(|p| {
        (
            PolicyKind::Auth,
            &p.metadata,
            Cow::Borrowed(p.target_refs.as_slice()),
            Vec::new(),
        )
    });
    let auth = inputs.auth_policies.iter().map(|p| {
        let secrets = crate::auth::secret_refs(&p.spec)
            .into_iter()
            .map(|r| r.name.clone())
            .collect();
        (
            PolicyKind::Auth,
            &p.metadata,
            Cow::Borrowed(p.spec.target_refs.as_slice()),
            secrets,
        )
    });
    let rate_limit = inputs.rate_limit_policies.iter().map(|p| {
        (
            PolicyKind::RateLimit,
            &p.metadata,
            Cow::Borrowed(p.spec.target_refs.as_slice()),
            Vec::new(),
        )
    });
    let cache = inputs.cache_policies.iter().map(|p| {
        (
            PolicyKind::Cache,
            &p.metadata,
            Cow::Borrowed(p.spec.target_refs.as_slice()),
            Vec::new(),
        )
    });
    let invalidations = inputs.cache_invalidations.iter().map(|p| {
        (
            PolicyKind::Invalidation,
            &p.metadata,
            Cow::Borrowed(p.spec.target_refs.as_slice()),
            Vec::new(),
        )
    });
    let backend = inputs.backend_policies.iter().map(|p| {
        (
            PolicyKind::Backend,
            &p.metadata,
            Cow::Owned(p.spec.target_refs.iter().map(Into::into).collect()),
            Vec::new(),
        )
    });
    auth.chain(unreadable_auth)
        .chain(rate_limit)
        .chain(cache)
        .chain(invalidations)
        .chain(backend)
}

/// The Gateways each object is read by.
#[derive(Clone, Debug, Default)]
pub struct Dependencies {
    by_key: BTreeMap<DepKey, BTreeSet<ObjectRef>>,
    gateways: BTreeSet<ObjectRef>,
}

impl Dependencies {
    /// What each Gateway of `controller_name`'s classes reads in `inputs`.
    pub fn new(inputs: &Inputs, controller_name: &str) -> Self {
        let mut d = Self::default();
        for gw in inputs.gateways_of(controller_name) {
            let id = object_ref(&gw.metadata);
            d.gateways.insert(id.clone());
            d.add(
                DepKey::GatewayClass(gw.spec.gateway_class_name.clone()),
                &id,
            );
            d.add(DepKey::Gateway(id.clone()), &id);
            // The GatewayConfigs it and its class name: a missing one rejects it (or its
            // class, which takes all its Gateways out).
            let own = crate::parameters::own_config(gw).ok().flatten();
            let by_class = inputs
                .gateway_classes
                .iter()
                .filter(|c| c.metadata.name.as_deref() == Some(gw.spec.gateway_class_name.as_str()))
                .filter_map(|c| crate::parameters::class_config(c).ok().flatten());
            for config in own.into_iter().chain(by_class) {
                d.add(DepKey::GatewayConfig(config), &id);
            }
            // Its dataplane Service's addresses are its status addresses.
            let service = ObjectRef::new(
                inputs.placement.namespace_for(&id.namespace).to_string(),
                dataplane_name(&id.namespace, &id.name),
            );
            d.add(DepKey::Service(service), &id);
            let certificates = gw
                .spec
                .listeners
                .iter()
                .filter_map(|l| l.tls.as_ref())
                .flat_map(|t| t.certificate_refs.iter().flatten())
                .map(|r| (r.namespace.as_deref(), r.name.as_str()))
                // Its client certificate for backends.
                .chain(
                    gw.spec
                        .tls
                        .iter()
                        .flat_map(|t| t.backend.iter())
                        .flat_map(|b| b.client_certificate_ref.iter())
                        .map(|r| (r.namespace.as_deref(), r.name.as_str())),
                );
            d.add_certificates(&id.namespace, certificates, &id);
            // The CA certificates of its client validation (and the grants that may allow
            // those in other namespaces).
            if let Some(frontend) = gw.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) {
                let named = frontend
                    .default
                    .validation
                    .iter()
                    .flat_map(|v| v.ca_certificate_refs.iter())
                    .map(|r| (r.kind.clone(), r.namespace.clone(), r.name.clone()))
                    .chain(frontend.per_port.iter().flatten().flat_map(|p| {
                        p.tls
                            .validation
                            .iter()
                            .flat_map(|v| v.ca_certificate_refs.iter())
                            .map(|r| (r.kind.clone(), r.namespace.clone(), r.name.clone()))
                    }));
                for (kind, ns, name) in named {
                    let ns = ns.unwrap_or_else(|| id.namespace.clone());
                    d.add(DepKey::ReferenceGrants(ns.clone()), &id);
                    let target = ObjectRef::new(ns, name);
                    match kind.as_str() {
                        "ConfigMap" => d.add(DepKey::ConfigMap(target), &id),
                        "Secret" => d.add(DepKey::Secret(target), &id),
                        _ => {}
                    }
                }
            }
        }
        // A ListenerSet is read by the Gateway of ours it names, with its namespace's labels
        // (allowedListeners selectors) and its Secrets.
        for ls in &inputs.listener_sets {
            let Some(gw) = listener_set_parent(ls).filter(|g| d.gateways.contains(g)) else {
                continue;
            };
            let id = object_ref(&ls.metadata);
            d.add(DepKey::ListenerSet(id.clone()), &gw);
            d.add(DepKey::Namespace(id.namespace.clone()), &gw);
            let certificates = ls
                .spec
                .listeners
                .iter()
                .filter_map(|l| l.tls.as_ref())
                .flat_map(|t| t.certificate_refs.iter().flatten())
                .map(|r| (r.namespace.as_deref(), r.name.as_str()));
            d.add_certificates(&id.namespace, certificates, &gw);
        }
        let sets = inputs.listener_set_parents();
        for r in &inputs.http_routes {
            let refs = r.spec.rules.iter().flatten().flat_map(|rule| {
                let mirrors = rule.filters.iter().flatten().filter_map(|f| {
                    let b = &f.request_mirror.as_ref()?.backend_ref;
                    Some((b.namespace.clone(), b.name.clone()))
                });
                rule.backend_refs
                    .iter()
                    .flatten()
                    .map(|b| (b.namespace.clone(), b.name.clone()))
                    .chain(mirrors)
            });
            d.add_route(
                RouteKind::Http,
                &r.metadata,
                http_route_parents(r, &sets),
                refs,
            );
        }
        for r in &inputs.grpc_routes {
            let refs = r.spec.rules.iter().flatten().flat_map(|rule| {
                let mirrors = rule.filters.iter().flatten().filter_map(|f| {
                    let b = &f.request_mirror.as_ref()?.backend_ref;
                    Some((b.namespace.clone(), b.name.clone()))
                });
                rule.backend_refs
                    .iter()
                    .flatten()
                    .map(|b| (b.namespace.clone(), b.name.clone()))
                    .chain(mirrors)
            });
            d.add_route(
                RouteKind::Grpc,
                &r.metadata,
                grpc_route_parents(r, &sets),
                refs,
            );
        }
        // TCPRoutes, TLSRoutes and UDPRoutes: one shape in three generated types.
        macro_rules! stream_routes {
            ($routes:expr, $kind:expr, $parents:path) => {
                for r in $routes {
                    let refs = r
                        .spec
                        .rules
                        .iter()
                        .flat_map(|rule| rule.backend_refs.iter())
                        .map(|b| (b.namespace.clone(), b.name.clone()));
                    d.add_route($kind, &r.metadata, $parents(r, &sets), refs);
                }
            };
        }
        stream_routes!(&inputs.tcp_routes, RouteKind::Tcp, tcp_route_parents);
        stream_routes!(&inputs.tls_routes, RouteKind::Tls, tls_route_parents);
        stream_routes!(&inputs.udp_routes, RouteKind::Udp, udp_route_parents);
        // A policy is read by the Gateways it targets, directly, through a route, or through
        // the routes that send to a Service it targets; so are its Secrets. (Routes are all
        // in the map by now, so a Service's Gateways are known.)
        let route_parents: BTreeMap<ObjectRef, Vec<ObjectRef>> = inputs
            .http_routes
            .iter()
            .map(|r| (object_ref(&r.metadata), http_route_parents(r, &sets)))
            .collect();
        for (kind, meta, target_refs, secrets) in policies(inputs) {
            let id = object_ref(meta);
            let mut gws: BTreeSet<ObjectRef> = BTreeSet::new();
            for (target_kind, target) in crate::policy::target_objects(meta, &target_refs) {
                match target_kind {
                    "Gateway" => {
                        gws.insert(target);
                    }
                    "ListenerSet" => gws.extend(sets.gateway_of(&target).cloned()),
                    "Service" => gws.extend(d.touched([&DepKey::Service(target)])),
                    _ => gws.extend(route_parents.get(&target).into_iter().flatten().cloned()),
                }
            }
            gws.retain(|g| d.gateways.contains(g));
            let secrets = secrets
                .into_iter()
                .map(|name| DepKey::Secret(ObjectRef::new(id.namespace.clone(), name)));
            let keys: Vec<DepKey> = std::iter::once(DepKey::Policy(kind, id.clone()))
                .chain(secrets)
                .collect();
            for key in keys {
                for g in &gws {
                    d.add(key.clone(), g);
                }
            }
        }
        // A BackendTLSPolicy is read by the Gateways that send to a Service it targets; so
        // are the ConfigMaps and Secrets it names.
        for p in &inputs.backend_tls_policies {
            let id = object_ref(&p.metadata);
            let gws: BTreeSet<ObjectRef> = p
                .spec
                .target_refs
                .iter()
                .flat_map(|t| {
                    d.touched([&DepKey::Service(ObjectRef::new(
                        id.namespace.clone(),
                        t.name.clone(),
                    ))])
                })
                .collect();
            let refs = p
                .spec
                .validation
                .ca_certificate_refs
                .iter()
                .flatten()
                .filter(|r| r.group.is_empty())
                .filter_map(|r| {
                    let target = ObjectRef::new(id.namespace.clone(), r.name.clone());
                    match r.kind.as_str() {
                        "ConfigMap" => Some(DepKey::ConfigMap(target)),
                        "Secret" => Some(DepKey::Secret(target)),
                        _ => None,
                    }
                });
            let keys: Vec<DepKey> = std::iter::once(DepKey::BackendTlsPolicy(id.clone()))
                .chain(refs)
                .collect();
            for key in keys {
                for g in &gws {
                    d.add(key.clone(), g);
                }
            }
        }
        // One this version cannot read names no CA; it refuses what it targets.
        for p in &inputs.unreadable_backend_tls_policies {
            let id = object_ref(&p.metadata);
            for t in &p.target_refs {
                let service = DepKey::Service(ObjectRef::new(id.namespace.clone(), t.name.clone()));
                for g in d.touched([&service]) {
                    d.add(DepKey::BackendTlsPolicy(id.clone()), &g);
                }
            }
        }
        d
    }

    fn add(&mut self, key: DepKey, gw: &ObjectRef) {
        self.by_key.entry(key).or_default().insert(gw.clone());
    }

    /// The Secrets certificateRefs given as (namespace, name) name, for listeners whose
    /// owner is in `owner_ns`, and the ReferenceGrants that may allow them: read by `gw`.
    fn add_certificates<'a>(
        &mut self,
        owner_ns: &str,
        refs: impl Iterator<Item = (Option<&'a str>, &'a str)>,
        gw: &ObjectRef,
    ) {
        for (ns, name) in refs {
            let ns = ns.unwrap_or(owner_ns);
            self.add(DepKey::ReferenceGrants(ns.to_string()), gw);
            self.add(DepKey::Secret(ObjectRef::new(ns, name)), gw);
        }
    }

    fn add_route(
        &mut self,
        kind: RouteKind,
        meta: &portico_crds::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        parents: Vec<ObjectRef>,
        backend_refs: impl Iterator<Item = (Option<String>, String)>,
    ) {
        let id = object_ref(meta);
        let parents: Vec<ObjectRef> = parents
            .into_iter()
            .filter(|p| self.gateways.contains(p))
            .collect();
        if parents.is_empty() {
            return;
        }
        let mut keys = vec![
            DepKey::Route(kind, id.clone()),
            // allowedRoutes selectors read the route namespace's labels.
            DepKey::Namespace(id.namespace.clone()),
        ];
        for (ns, name) in backend_refs {
            let ns = ns.unwrap_or_else(|| id.namespace.clone());
            keys.push(DepKey::ReferenceGrants(ns.clone()));
            keys.push(DepKey::Service(ObjectRef::new(ns, name)));
        }
        for key in keys {
            for p in &parents {
                self.add(key.clone(), p);
            }
        }
    }

    /// The Gateways that read any of `keys`. A Gateway key names its Gateway even when it is
    /// not ours (yet): its class may be the change.
    pub fn touched<'a>(&self, keys: impl IntoIterator<Item = &'a DepKey>) -> BTreeSet<ObjectRef> {
        let mut out = BTreeSet::new();
        for key in keys {
            if let DepKey::Gateway(id) = key {
                out.insert(id.clone());
            }
            if let Some(gws) = self.by_key.get(key) {
                out.extend(gws.iter().cloned());
            }
        }
        out
    }

    pub fn gateways(&self) -> &BTreeSet<ObjectRef> {
        &self.gateways
    }
}

/// What changed since the last compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changes {
    /// Unknown (start-up, a watch that re-listed): recompile everything.
    All,
    Keys(BTreeSet<DepKey>),
}

/// One Gateway's share of the output.
#[derive(Clone, Debug, Default)]
struct GatewayPart {
    snapshot: Option<Snapshot>,
    status: Option<GatewayStatus>,
    listener_sets: BTreeMap<ObjectRef, ListenerSetStatus>,
    routes: BTreeMap<(RouteKind, ObjectRef), Vec<RouteParentStatus>>,
}

/// The output of the last compile of every Gateway, updated Gateway by Gateway.
#[derive(Debug)]
pub struct IncrementalCompile {
    controller_name: String,
    deps: Dependencies,
    parts: BTreeMap<ObjectRef, GatewayPart>,
    classes: BTreeMap<String, crate::status::GatewayClassStatus>,
    /// Policy status, of every kind, is computed whole on every update (it is cheap and
    /// reads every target).
    policies: BTreeMap<(PolicyKind, ObjectRef), crate::status::PolicyStatus>,
    /// Likewise the Gateways each CacheInvalidation is sent to.
    purges: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
    /// Likewise every BackendTLSPolicy's status.
    backend_tls_policies: BTreeMap<ObjectRef, crate::status::PolicyStatus>,
}

impl IncrementalCompile {
    pub fn new(controller_name: &str) -> Self {
        Self {
            controller_name: controller_name.to_string(),
            deps: Dependencies::default(),
            parts: BTreeMap::new(),
            classes: BTreeMap::new(),
            policies: BTreeMap::new(),
            purges: BTreeMap::new(),
            backend_tls_policies: BTreeMap::new(),
        }
    }

    /// Recompiles the Gateways that `changes` touch in `inputs` (the inputs after the
    /// changes) and returns them; a returned Gateway without a snapshot was removed.
    pub fn update(&mut self, inputs: &Inputs, changes: &Changes) -> BTreeSet<ObjectRef> {
        let deps = Dependencies::new(inputs, &self.controller_name);
        let touched: BTreeSet<ObjectRef> = match changes {
            Changes::All => deps
                .gateways
                .iter()
                .chain(self.parts.keys())
                .cloned()
                .collect(),
            Changes::Keys(keys) => {
                let mut t = self.deps.touched(keys);
                t.extend(deps.touched(keys));
                t
            }
        };
        let out = compile_scoped(inputs, &self.controller_name, Some(&touched));
        self.classes = out.status.gateway_classes;
        self.policies = out.status.policies;
        self.purges = out.status.purges;
        self.backend_tls_policies = out.status.backend_tls_policies;
        for gw in &touched {
            self.parts.remove(gw);
        }
        for (id, status) in out.status.gateways {
            self.parts.entry(id).or_default().status = Some(status);
        }
        for (id, status) in out.status.listener_sets {
            self.parts
                .entry(status.gateway.clone())
                .or_default()
                .listener_sets
                .insert(id, status);
        }
        for (id, snapshot) in out.snapshots {
            self.parts.entry(id).or_default().snapshot = Some(snapshot);
        }
        let routes = [
            (RouteKind::Http, out.status.http_routes),
            (RouteKind::Grpc, out.status.grpc_routes),
            (RouteKind::Tcp, out.status.tcp_routes),
            (RouteKind::Tls, out.status.tls_routes),
            (RouteKind::Udp, out.status.udp_routes),
        ];
        for (kind, statuses) in routes {
            for (route, s) in statuses {
                for p in s.parents {
                    if let Some(part) = self.parts.get_mut(&p.gateway) {
                        part.routes
                            .entry((kind, route.clone()))
                            .or_default()
                            .push(p);
                    }
                }
            }
        }
        self.deps = deps;
        touched
    }

    /// How many Gateways of ours there are.
    pub fn gateways(&self) -> usize {
        self.deps.gateways.len()
    }

    /// Whether `gw` is a Gateway of ours, served or not.
    pub fn is_ours(&self, gw: &ObjectRef) -> bool {
        self.deps.gateways.contains(gw)
    }

    /// The snapshot of one Gateway, if it is served.
    pub fn snapshot(&self, gw: &ObjectRef) -> Option<&Snapshot> {
        self.parts.get(gw).and_then(|p| p.snapshot.as_ref())
    }

    /// Every served Gateway's snapshot.
    pub fn snapshots(&self) -> impl Iterator<Item = (&ObjectRef, &Snapshot)> {
        self.parts
            .iter()
            .filter_map(|(id, p)| Some((id, p.snapshot.as_ref()?)))
    }

    /// Every Gateway's status and every route's, as a full compile would report them.
    pub fn status(&self) -> StatusReport {
        let mut report = StatusReport {
            gateway_classes: self.classes.clone(),
            policies: self.policies.clone(),
            purges: self.purges.clone(),
            backend_tls_policies: self.backend_tls_policies.clone(),
            ..StatusReport::default()
        };
        for (id, part) in &self.parts {
            if let Some(s) = &part.status {
                report.gateways.insert(id.clone(), s.clone());
            }
            report.listener_sets.extend(
                part.listener_sets
                    .iter()
                    .map(|(id, s)| (id.clone(), s.clone())),
            );
            for ((kind, route), parents) in &part.routes {
                report
                    .routes_mut(*kind)
                    .entry(route.clone())
                    .or_insert_with(|| RouteStatus {
                        parents: Vec::new(),
                    })
                    .parents
                    .extend(parents.iter().cloned());
            }
        }
        for s in report
            .http_routes
            .values_mut()
            .chain(report.grpc_routes.values_mut())
        {
            s.parents.sort_by(|a, b| a.parent_ref.cmp(&b.parent_ref));
        }
        report
    }

    /// Everything, as one [`Output`] (snapshots cloned).
    pub fn output(&self) -> Output {
        Output {
            snapshots: self
                .parts
                .iter()
                .filter_map(|(id, p)| p.snapshot.clone().map(|s| (id.clone(), s)))
                .collect(),
            status: self.status(),
        }
    }
}

#[cfg(test)]
mod tests;
