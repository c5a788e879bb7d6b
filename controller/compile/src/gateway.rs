//! GatewayClasses, Gateways and their listeners: which are ours, which listeners are valid,
//! which conflict, and which routes each may accept.
//!
//! A Gateway's listeners are its own and those of the ListenerSets it allows
//! (`spec.allowedListeners`), merged in precedence order: the Gateway's first, then the
//! ListenerSets oldest first (then by namespace/name). Among the Gateway's own listeners
//! every indistinct one is Conflicted; a ListenerSet's listener that clashes with one before
//! it is Conflicted and the earlier one keeps serving, so a ListenerSet can never take a
//! port or hostname from the Gateway or from an older ListenerSet.

use crate::grants::GroupKind;
use crate::hostname;
use crate::refs::{listener_set_parent, object_ref};
use crate::status::{
    Condition, GatewayAddress, GatewayClassStatus, GatewayStatus, ListenerSetStatus,
    ListenerStatus, ParentRef, StatusReport, reasons, types,
};
use crate::tls::SecretIndex;
use portico_crds::GATEWAY_GROUP;
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::{
    Gateway, GatewayAllowedListenersNamespacesFrom, GatewayListeners,
    GatewayListenersAllowedRoutesNamespacesFrom, GatewayListenersAllowedRoutesNamespacesSelector,
    GatewayListenersTlsMode, GatewayTlsFrontendDefaultValidation,
    GatewayTlsFrontendDefaultValidationMode,
};
use portico_crds::gateway_api::listenersets::ListenerSet;
use portico_crds::gatewayconfig::GatewayConfigSpec;
use portico_crds::k8s_openapi::api::core::v1::{Namespace, Service};
use portico_model::{Certificate, ClientValidation, ObjectRef, RouteKind};
use std::collections::{BTreeMap, BTreeSet};

/// Route kinds an HTTP or HTTPS listener can accept.
pub(crate) const HTTP_ROUTE: &str = "HTTPRoute";
pub(crate) const GRPC_ROUTE: &str = "GRPCRoute";
const HTTP_KINDS: [&str; 2] = [HTTP_ROUTE, GRPC_ROUTE];
/// The kind a TCP listener takes.
const TCP_ROUTE: &str = "TCPRoute";

/// Accepts the classes that name our controller; returns their names.
pub(crate) fn accept_classes(
    classes: &[GatewayClass],
    configs: &BTreeSet<ObjectRef>,
    controller_name: &str,
    status: &mut StatusReport,
) -> BTreeSet<String> {
    let mut ours = BTreeSet::new();
    for class in classes {
        if class.spec.controller_name != controller_name {
            continue;
        }
        let name = class.metadata.name.clone().unwrap_or_default();
        let generation = class.metadata.generation;
        let invalid = |message: String| {
            Condition::new(
                types::ACCEPTED,
                false,
                reasons::INVALID_PARAMETERS,
                message,
                generation,
            )
        };
        let condition = match crate::parameters::class_config(class) {
            Err(message) => invalid(message),
            Ok(Some(config)) if !configs.contains(&config) => {
                invalid(format!("GatewayConfig {config} does not exist"))
            }
            Ok(Some(config)) => Condition::new(
                types::ACCEPTED,
                true,
                reasons::ACCEPTED,
                format!("handled by Portico; dataplanes configured by GatewayConfig {config}"),
                generation,
            ),
            Ok(None) => Condition::new(
                types::ACCEPTED,
                true,
                reasons::ACCEPTED,
                "handled by Portico",
                generation,
            ),
        };
        if condition.is_true() {
            ours.insert(name.clone());
        }
        status.gateway_classes.insert(
            name,
            GatewayClassStatus {
                conditions: vec![condition],
            },
        );
    }
    ours
}

/// Namespace labels for `allowedRoutes.namespaces.selector`.
pub(crate) struct NamespaceLabels(BTreeMap<String, BTreeMap<String, String>>);

impl NamespaceLabels {
    pub(crate) fn new(namespaces: &[Namespace]) -> Self {
        let mut map = BTreeMap::new();
        for ns in namespaces {
            let name = ns.metadata.name.clone().unwrap_or_default();
            let mut labels = ns.metadata.labels.clone().unwrap_or_default();
            labels.insert("kubernetes.io/metadata.name".into(), name.clone());
            map.insert(name, labels);
        }
        Self(map)
    }

    fn matches(
        &self,
        namespace: &str,
        selector: &GatewayListenersAllowedRoutesNamespacesSelector,
    ) -> bool {
        let automatic = BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            namespace.to_string(),
        )]);
        let labels = self.0.get(namespace).unwrap_or(&automatic);
        let by_labels = selector
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v));
        let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        });
        by_labels && by_expressions
    }
}

pub(crate) enum AllowedNamespaces {
    Same,
    All,
    Selector(GatewayListenersAllowedRoutesNamespacesSelector),
}

/// Who declares a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    Gateway,
    ListenerSet(ObjectRef),
}

impl Owner {
    /// The kind a ReferenceGrant names as `from` for this owner's certificateRefs.
    fn kind(&self) -> &'static str {
        match self {
            Owner::Gateway => "Gateway",
            Owner::ListenerSet(_) => "ListenerSet",
        }
    }
}

/// One listener and what compile concluded about it.
pub(crate) struct ListenerState {
    pub(crate) owner: Owner,
    /// The owner's namespace: `allowedRoutes` `Same` and certificateRefs are relative to it.
    namespace: String,
    pub(crate) name: String,
    pub(crate) port: i32,
    pub(crate) protocol: String,
    /// A TLS listener in mode Passthrough.
    pub(crate) passthrough: bool,
    pub(crate) hostname: Option<String>,
    pub(crate) allowed_namespaces: AllowedNamespaces,
    pub(crate) supported_kinds: Vec<String>,
    /// Why the listener is not accepted, as (reason, message).
    pub(crate) rejected: Option<(String, String)>,
    pub(crate) conflicted: Option<(String, String)>,
    pub(crate) invalid_kinds: Option<String>,
    /// HTTPS: the certificates that resolved, and the first certificateRef that did not.
    pub(crate) certificates: Vec<Certificate>,
    pub(crate) unresolved_certificate: Option<(String, String)>,
    /// Client certificates its port asks for (the Gateway's `spec.tls.frontend`).
    pub(crate) client_validation: Option<ClientValidation>,
    pub(crate) attached_routes: i32,
    /// The routes attached so far with their effective hostnames here, by kind (HTTPRoutes
    /// are checked only against GRPCRoutes and the reverse).
    hosts: BTreeMap<RouteKind, Vec<(ObjectRef, Vec<String>)>>,
}

/// A route's parentRef, as its kind's Rust type holds it.
pub(crate) struct ParentRefParts<'a> {
    pub(crate) group: Option<&'a str>,
    pub(crate) kind: Option<&'a str>,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) name: &'a str,
    pub(crate) section_name: Option<&'a str>,
    pub(crate) port: Option<i32>,
}

/// A parentRef of a route in `route_ns` with its defaults filled in, who owns the
/// listeners it may attach to, and the Gateway of ours those belong to (the parent, or the
/// parent ListenerSet's). `None` for a parent that is not a Gateway or ListenerSet of
/// ours: only those get status from us.
pub(crate) fn parent_of<'g>(
    p: &ParentRefParts<'_>,
    route_ns: &str,
    gateways: &'g mut [GatewayState],
) -> Option<(ParentRef, Owner, &'g mut GatewayState)> {
    let group = p.group.unwrap_or(GATEWAY_GROUP);
    let kind = p.kind.unwrap_or("Gateway");
    if group != GATEWAY_GROUP || !matches!(kind, "Gateway" | "ListenerSet") {
        return None;
    }
    let parent = ParentRef {
        namespace: p.namespace.unwrap_or(route_ns).to_string(),
        name: p.name.to_string(),
        kind: kind.to_string(),
        section_name: p.section_name.map(str::to_string),
        port: p.port,
    };
    let id = ObjectRef::new(parent.namespace.clone(), parent.name.clone());
    let owner = match kind {
        "Gateway" => Owner::Gateway,
        _ => Owner::ListenerSet(id.clone()),
    };
    let gw = gateways.iter_mut().find(|g| match &owner {
        Owner::Gateway => g.id == id,
        Owner::ListenerSet(ls) => g.listener_sets.iter().any(|s| s.id == *ls),
    })?;
    Some((parent, owner, gw))
}

/// Whether a snapshot listener's name is one [`ListenerState::key`] gave a ListenerSet's.
pub(crate) fn is_listener_set_key(name: &str) -> bool {
    name.contains('/')
}

/// The ListenerSet and listener name a snapshot listener's name stands for, if it is a
/// ListenerSet's (`namespace/set/listener`).
pub(crate) fn listener_set_of_key(name: &str) -> Option<(ObjectRef, String)> {
    let mut parts = name.splitn(3, '/');
    let (ns, set, listener) = (parts.next()?, parts.next()?, parts.next()?);
    Some((ObjectRef::new(ns, set), listener.to_string()))
}

impl ListenerState {
    /// Its name in the snapshot, unique on the Gateway: a Gateway listener's own name, and
    /// `namespace/listenerset/name` for a ListenerSet's (a listener name has no `/`).
    pub(crate) fn key(&self) -> String {
        match &self.owner {
            Owner::Gateway => self.name.clone(),
            Owner::ListenerSet(ls) => format!("{}/{}/{}", ls.namespace, ls.name, self.name),
        }
    }

    /// Valid and not conflicted: it is programmed and routes may attach.
    pub(crate) fn usable(&self) -> bool {
        self.rejected.is_none() && self.conflicted.is_none()
    }

    /// Usable and, for HTTPS, holding at least one valid certificate: the dataplane serves it.
    pub(crate) fn programmable(&self) -> bool {
        self.usable() && (!self.terminates_tls() || !self.certificates.is_empty())
    }

    /// Whether it listens for UDP datagrams: a UDP port number is not a TCP one, so a UDP
    /// listener shares its port number with listeners of other protocols without conflict
    /// (DNS on 53 over both).
    pub(crate) fn is_udp(&self) -> bool {
        self.protocol == "UDP"
    }

    /// HTTPS, or TLS in mode Terminate: served with the listener's certificates.
    pub(crate) fn terminates_tls(&self) -> bool {
        self.protocol == "HTTPS" || (self.protocol == "TLS" && !self.passthrough)
    }

    pub(crate) fn hosts_of(&self, kind: RouteKind) -> &[(ObjectRef, Vec<String>)] {
        self.hosts.get(&kind).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn hosts_of_mut(&mut self, kind: RouteKind) -> &mut Vec<(ObjectRef, Vec<String>)> {
        self.hosts.entry(kind).or_default()
    }

    pub(crate) fn allows_kind(&self, kind: &str) -> bool {
        self.supported_kinds.iter().any(|k| k == kind)
    }

    pub(crate) fn allows_namespace(&self, route_ns: &str, ns: &NamespaceLabels) -> bool {
        match &self.allowed_namespaces {
            AllowedNamespaces::Same => self.namespace == route_ns,
            AllowedNamespaces::All => true,
            AllowedNamespaces::Selector(s) => ns.matches(route_ns, s),
        }
    }
}

pub(crate) struct GatewayState {
    pub(crate) id: ObjectRef,
    generation: Option<i64>,
    /// Set when the Gateway as a whole is rejected: (reason, message).
    invalid: Option<(&'static str, String)>,
    /// Its `spec.addresses` (IP addresses, normalised), and what they mean here.
    addresses: Vec<String>,
    pub(crate) addresses_mode: crate::inputs::Addresses,
    /// Its own listeners, then those of its ListenerSets that it allows (in precedence order).
    pub(crate) listeners: Vec<ListenerState>,
    /// The ListenerSets that name it, in precedence order.
    pub(crate) listener_sets: Vec<ListenerSetState>,
    /// Its `spec.tls.backend.clientCertificateRef`, resolved (what it presents to backends
    /// over TLS), or why it cannot be used: (reason, message). `None`: it names none.
    pub(crate) backend_client_certificate: Option<Result<Certificate, (String, String)>>,
}

/// A ListenerSet that names a Gateway of ours.
pub(crate) struct ListenerSetState {
    pub(crate) id: ObjectRef,
    generation: Option<i64>,
    /// Why its Gateway does not take its listeners: (reason, message).
    refused: Option<(&'static str, String)>,
}

/// Validates every Gateway whose class is ours, sorted by namespace/name.
/// The GatewayConfigs and GatewayClasses, for checking what a Gateway's parameters say.
pub(crate) struct Parameters<'a> {
    pub configs: BTreeMap<ObjectRef, &'a GatewayConfigSpec>,
    pub classes: &'a [GatewayClass],
}

impl Parameters<'_> {
    /// Why the Gateway's own GatewayConfig cannot be used, if it cannot.
    fn refusal(&self, gw: &Gateway) -> Option<String> {
        let own_ref = match crate::parameters::own_config(gw) {
            Err(message) => return Some(message),
            Ok(None) => return None,
            Ok(Some(r)) => r,
        };
        let Some(own) = self.configs.get(&own_ref) else {
            return Some(format!("GatewayConfig {own_ref} does not exist"));
        };
        let class = self
            .classes
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(gw.spec.gateway_class_name.as_str()));
        let class_ref = class.and_then(|c| crate::parameters::class_config(c).ok().flatten());
        let class_spec = class_ref
            .as_ref()
            .and_then(|r| self.configs.get(r).copied());
        let refused = crate::parameters::refused_overrides(own, class_spec);
        if refused.is_empty() {
            return None;
        }
        let by = class_ref.map_or_else(
            || {
                format!(
                    "GatewayClass {} names no GatewayConfig",
                    gw.spec.gateway_class_name
                )
            },
            |r| {
                format!(
                    "the GatewayClass's GatewayConfig {r} does not allow it in gatewayOverrides"
                )
            },
        );
        Some(format!(
            "GatewayConfig {own_ref} sets {}, which the dataplane (it receives this Gateway's keys) may only get from its GatewayClass: {by}",
            refused.join(", ")
        ))
    }
}

/// What a Gateway's compile reads besides the Gateway.
pub(crate) struct GatewayInputs<'a> {
    pub(crate) params: Parameters<'a>,
    pub(crate) secrets: &'a SecretIndex<'a>,
    /// Where `spec.tls.frontend`'s CA certificates are read from, and the grants that let a
    /// Gateway read them in another namespace.
    pub(crate) cas: crate::ca::CaSources<'a>,
    pub(crate) grants: &'a crate::grants::ReferenceGrants<'a>,
    pub(crate) listener_sets: &'a [ListenerSet],
    pub(crate) namespaces: &'a NamespaceLabels,
    pub(crate) reserved_ports: &'a BTreeSet<i32>,
}

pub(crate) fn compile_gateways(
    gateways: &[Gateway],
    classes: &BTreeSet<String>,
    inputs: &GatewayInputs<'_>,
) -> Vec<GatewayState> {
    let mut out: Vec<GatewayState> = gateways
        .iter()
        .filter(|g| classes.contains(&g.spec.gateway_class_name))
        .map(|g| compile_gateway(g, inputs))
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn compile_gateway(gw: &Gateway, inputs: &GatewayInputs<'_>) -> GatewayState {
    let secrets = inputs.secrets;
    let id = object_ref(&gw.metadata);
    let mut invalid = inputs
        .params
        .refusal(gw)
        .map(|message| (reasons::INVALID_PARAMETERS, message));
    let addresses = match requested_addresses(gw) {
        Ok(a) => a,
        Err(message) => {
            invalid = Some((reasons::UNSUPPORTED_ADDRESS, message));
            Vec::new()
        }
    };

    let mut listeners: Vec<ListenerState> = gw
        .spec
        .listeners
        .iter()
        .map(|l| listener_state(l, Owner::Gateway, &id.namespace, secrets))
        .collect();
    let mut seen = BTreeSet::new();
    for l in &gw.spec.listeners {
        if !seen.insert(l.name.as_str()) {
            invalid = Some((
                reasons::INVALID,
                format!(
                    "listener name {:?} is used twice; names must be unique",
                    l.name
                ),
            ));
        }
    }
    let frontend = FrontendValidation::new(gw, &id.namespace, inputs);
    for l in &mut listeners {
        reserve(l, inputs.reserved_ports);
        frontend.apply(l);
    }
    mark_conflicts(&mut listeners);
    let accepted = invalid.is_none() && listeners.iter().any(ListenerState::usable);
    let mut listener_sets = Vec::new();
    let mut merged = 0;
    for ls in listener_sets_of(&id, inputs.listener_sets) {
        let ls_id = object_ref(&ls.metadata);
        let refused = if !allows_listener_set(
            gw,
            &id.namespace,
            &ls_id.namespace,
            inputs.namespaces,
        ) {
            Some((
                reasons::NOT_ALLOWED,
                format!(
                    "Gateway {id} does not allow ListenerSets from namespace {} (its spec.allowedListeners)",
                    ls_id.namespace
                ),
            ))
        } else if !accepted {
            Some((
                reasons::PARENT_NOT_ACCEPTED,
                format!("Gateway {id} is not accepted"),
            ))
        } else {
            None
        };
        if refused.is_none() {
            let owner = Owner::ListenerSet(ls_id.clone());
            for entry in &ls.spec.listeners {
                let mut l = match as_gateway_listener(entry) {
                    Some(l) => listener_state(&l, owner.clone(), &ls_id.namespace, secrets),
                    None => {
                        unreadable_listener(&entry.name, owner.clone(), &ls_id.namespace, secrets)
                    }
                };
                reserve(&mut l, inputs.reserved_ports);
                frontend.apply(&mut l);
                l.conflicted = conflict_with_earlier(&listeners, &l);
                // Only listeners that would be served count against the bound.
                if l.usable() {
                    if merged == MAX_LISTENER_SET_LISTENERS {
                        l.rejected = Some((
                            reasons::TOO_MANY_LISTENERS.into(),
                            format!(
                                "Gateway {id} already serves {MAX_LISTENER_SET_LISTENERS} listeners of ListenerSets"
                            ),
                        ));
                    } else {
                        merged += 1;
                    }
                }
                listeners.push(l);
            }
        }
        listener_sets.push(ListenerSetState {
            id: ls_id,
            generation: ls.metadata.generation,
            refused,
        });
    }
    let backend_client_certificate = gw
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.backend.as_ref())
        .and_then(|b| b.client_certificate_ref.as_ref())
        .map(|r| backend_client_certificate(r, &id.namespace, secrets));
    GatewayState {
        id,
        backend_client_certificate,
        generation: gw.metadata.generation,
        invalid,
        addresses,
        addresses_mode: crate::inputs::Addresses::Bind,
        listeners,
        listener_sets,
    }
}

/// The IP addresses a Gateway's `spec.addresses` ask for, normalised, sorted and without
/// duplicates (an `IPAddress` without a value asks for none in particular), or why they
/// cannot be served (another type, a value that is not an IP address). Compile and the
/// provisioner read them alike.
pub fn requested_addresses(gw: &Gateway) -> Result<Vec<String>, String> {
    let mut addresses = Vec::new();
    for a in gw.spec.addresses.iter().flatten() {
        let kind = a.r#type.as_deref().unwrap_or("IPAddress");
        match (kind, a.value.as_deref()) {
            ("IPAddress", Some(v)) => match v.parse::<std::net::IpAddr>() {
                Ok(ip) => addresses.push(ip.to_string()),
                Err(_) => return Err(format!("address {v:?} is not an IP address")),
            },
            ("IPAddress", None) => {}
            (other, _) => {
                return Err(format!(
                    "address type {other:?} is not supported; use IPAddress"
                ));
            }
        }
    }
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

/// How many listeners of ListenerSets one Gateway serves at most; the rest are rejected
/// (`TooManyListeners`), so that no namespace allowed to add listeners can grow a shared
/// dataplane without bound.
pub(crate) const MAX_LISTENER_SET_LISTENERS: usize = 256;

/// A listener on a port the dataplane uses itself cannot be bound: it would fail the
/// dataplane's whole configuration, so it is rejected here instead.
fn reserve(l: &mut ListenerState, reserved: &BTreeSet<i32>) {
    if reserved.contains(&l.port) {
        l.rejected = Some((
            reasons::PORT_UNAVAILABLE.into(),
            format!("port {} is used by the dataplane itself", l.port),
        ));
    }
}

/// The ListenerSets that name `gw`, in precedence order: oldest first, then by
/// "namespace/name" (as a string, the spec's order).
fn listener_sets_of<'a>(id: &ObjectRef, sets: &'a [ListenerSet]) -> Vec<&'a ListenerSet> {
    let mut out: Vec<&ListenerSet> = sets
        .iter()
        .filter(|ls| listener_set_parent(ls).as_ref() == Some(id))
        .collect();
    out.sort_by_cached_key(|ls| {
        (
            ls.metadata.creation_timestamp.as_ref().map(|t| t.0),
            object_ref(&ls.metadata).to_string(),
        )
    });
    out
}

/// The ListenerSets that name `gw` and that it allows, in precedence order: those whose
/// Secrets the controller may need.
pub(crate) fn admitted_listener_sets<'a>(
    gw: &Gateway,
    sets: &'a [ListenerSet],
    ns: &NamespaceLabels,
) -> Vec<&'a ListenerSet> {
    let id = object_ref(&gw.metadata);
    listener_sets_of(&id, sets)
        .into_iter()
        .filter(|ls| {
            allows_listener_set(
                gw,
                &id.namespace,
                &crate::refs::namespace_of(&ls.metadata),
                ns,
            )
        })
        .collect()
}

/// Whether the Gateway's `spec.allowedListeners` admits ListenerSets from `ls_ns` (none by
/// default).
fn allows_listener_set(gw: &Gateway, gw_ns: &str, ls_ns: &str, ns: &NamespaceLabels) -> bool {
    let namespaces = gw
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.as_ref()) {
        None | Some(GatewayAllowedListenersNamespacesFrom::None) => false,
        Some(GatewayAllowedListenersNamespacesFrom::Same) => gw_ns == ls_ns,
        Some(GatewayAllowedListenersNamespacesFrom::All) => true,
        // The same LabelSelector as allowedRoutes', in another generated type.
        Some(GatewayAllowedListenersNamespacesFrom::Selector) => namespaces
            .and_then(|n| n.selector.as_ref())
            .and_then(convert::<_, GatewayListenersAllowedRoutesNamespacesSelector>)
            .is_some_and(|s| ns.matches(ls_ns, &s)),
    }
}

/// One generated type read as another of the same shape (the Gateway API's types are
/// generated per resource: a ListenerSet's listener is a Gateway's listener).
pub(crate) fn convert<A: serde::Serialize, B: serde::de::DeserializeOwned>(a: &A) -> Option<B> {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
}

fn as_gateway_listener(
    l: &portico_crds::gateway_api::listenersets::ListenerSetListeners,
) -> Option<GatewayListeners> {
    convert(l)
}

/// The Gateway's client certificate for backends (`spec.tls.backend.clientCertificateRef`),
/// or why it cannot be used, with the Gateway's `ResolvedRefs` reasons.
fn backend_client_certificate(
    r: &portico_crds::gateway_api::gateways::GatewayTlsBackendClientCertificateRef,
    gw_ns: &str,
    secrets: &SecretIndex<'_>,
) -> Result<Certificate, (String, String)> {
    let as_listener_ref = portico_crds::gateway_api::gateways::GatewayListenersTlsCertificateRefs {
        group: r.group.clone(),
        kind: r.kind.clone(),
        name: r.name.clone(),
        namespace: r.namespace.clone(),
    };
    secrets
        .resolve("Gateway", gw_ns, &as_listener_ref)
        .map_err(|(reason, message)| {
            let reason = if reason == reasons::REF_NOT_PERMITTED {
                reasons::REF_NOT_PERMITTED
            } else {
                reasons::INVALID_CLIENT_CERTIFICATE_REF
            };
            (
                reason.to_string(),
                format!("spec.tls.backend.clientCertificateRef: {message}"),
            )
        })
}

/// The Gateway's `spec.tls.frontend`: for each port its listeners terminate TLS on, the
/// client certificates asked for (the port's `perPort` entry, else the `default`), resolved
/// once per port.
struct FrontendValidation {
    /// By port (`None`: the default), those that ask for validation.
    by_port: BTreeMap<Option<i32>, Resolved>,
    /// Ports with a `perPort` entry (which replaces the default, validation or not).
    ports_with_entries: BTreeSet<i32>,
}

/// A validation entry resolved: what to ask of clients, or why it cannot be used
/// (ResolvedRefs reason, message).
type Resolved = Result<ClientValidation, (&'static str, String)>;

impl FrontendValidation {
    fn new(gw: &Gateway, gw_ns: &str, inputs: &GatewayInputs<'_>) -> Self {
        let mut by_port = BTreeMap::new();
        let Some(frontend) = gw.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
            return Self {
                by_port,
                ports_with_entries: BTreeSet::new(),
            };
        };
        // Each entry read through the default's type (the generated types differ in name
        // only).
        if let Some(v) = &frontend.default.validation {
            by_port.insert(None, resolve_validation(v, gw_ns, inputs));
        }
        for p in frontend.per_port.iter().flatten() {
            let converted: Option<GatewayTlsFrontendDefaultValidation> =
                p.tls.validation.as_ref().and_then(convert);
            let resolved = match (&p.tls.validation, converted) {
                (None, _) => continue,
                (Some(_), Some(v)) => resolve_validation(&v, gw_ns, inputs),
                (Some(_), None) => Err((
                    reasons::INVALID_CA_CERTIFICATE_REF,
                    format!("spec.tls.frontend.perPort[{}] cannot be read", p.port),
                )),
            };
            by_port.insert(Some(p.port), resolved);
        }
        let ports_with_entries = frontend.per_port.iter().flatten().map(|p| p.port).collect();
        Self {
            by_port,
            ports_with_entries,
        }
    }

    /// What `port` asks of clients, if anything.
    fn for_port(&self, port: i32) -> Option<&Resolved> {
        if self.ports_with_entries.contains(&port) {
            self.by_port.get(&Some(port))
        } else {
            self.by_port.get(&None)
        }
    }

    /// Sets a terminating listener's client validation, or refuses it: a listener whose port
    /// asks for client certificates it cannot check is not served (served without the
    /// check, it would let in every client the operator meant to keep out).
    fn apply(&self, l: &mut ListenerState) {
        if !l.terminates_tls() {
            return;
        }
        match self.for_port(l.port) {
            None => {}
            Some(Ok(v)) => l.client_validation = Some(v.clone()),
            Some(Err((reason, message))) => {
                let message = format!(
                    "client certificate validation on port {} (spec.tls.frontend): {message}",
                    l.port
                );
                l.rejected
                    .get_or_insert((reasons::NO_VALID_CA_CERTIFICATE.into(), message.clone()));
                l.unresolved_certificate
                    .get_or_insert(((*reason).into(), message));
            }
        }
    }
}

/// The CA certificates a Gateway's `spec.tls.frontend` names, as (kind, namespace, name),
/// those in another namespace only if a ReferenceGrant lets the Gateway read them.
pub(crate) fn frontend_ca_refs(
    gw: &Gateway,
    grants: &crate::grants::ReferenceGrants<'_>,
) -> Vec<(String, ObjectRef)> {
    let gw_ns = crate::refs::namespace_of(&gw.metadata);
    let Some(frontend) = gw.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
        return Vec::new();
    };
    let mut refs: Vec<GatewayTlsFrontendDefaultValidation> =
        frontend.default.validation.iter().cloned().collect();
    refs.extend(
        frontend
            .per_port
            .iter()
            .flatten()
            .filter_map(|p| p.tls.validation.as_ref().and_then(convert)),
    );
    refs.iter()
        .flat_map(|v| v.ca_certificate_refs.iter())
        .filter(|r| r.group.is_empty())
        .filter_map(|r| {
            let ns = r.namespace.as_deref().unwrap_or(&gw_ns);
            let from = GroupKind {
                group: GATEWAY_GROUP,
                kind: "Gateway",
            };
            let to = GroupKind {
                group: "",
                kind: &r.kind,
            };
            (ns == gw_ns || grants.allows(from, &gw_ns, to, ns, &r.name))
                .then(|| (r.kind.clone(), ObjectRef::new(ns, r.name.clone())))
        })
        .collect()
}

/// One validation entry: its CA certificates read (ConfigMaps or Secrets, in the Gateway's
/// namespace or another that grants it), and its mode.
fn resolve_validation(
    v: &GatewayTlsFrontendDefaultValidation,
    gw_ns: &str,
    inputs: &GatewayInputs<'_>,
) -> Resolved {
    let mut pems = Vec::new();
    let mut problem = None;
    for r in &v.ca_certificate_refs {
        let ns = r.namespace.as_deref().unwrap_or(gw_ns);
        let group = r.group.as_str();
        let from = GroupKind {
            group: GATEWAY_GROUP,
            kind: "Gateway",
        };
        let to = GroupKind {
            group,
            kind: &r.kind,
        };
        if ns != gw_ns && !inputs.grants.allows(from, gw_ns, to, ns, &r.name) {
            problem.get_or_insert((
                reasons::REF_NOT_PERMITTED,
                format!(
                    "caCertificateRef to {} {ns}/{} is not permitted: no ReferenceGrant in namespace {ns} allows Gateways from {gw_ns}",
                    r.kind, r.name
                ),
            ));
            continue;
        }
        match inputs.cas.read(group, &r.kind, ns, &r.name) {
            Ok(pem) => pems.push(pem),
            Err(crate::ca::CaProblem::Kind(m)) => {
                problem.get_or_insert((reasons::INVALID_CA_CERTIFICATE_KIND, m));
            }
            Err(crate::ca::CaProblem::Invalid(m)) => {
                problem.get_or_insert((reasons::INVALID_CA_CERTIFICATE_REF, m));
            }
        }
    }
    match (problem, pems.is_empty()) {
        // Every reference must resolve: a client validated against fewer CAs than asked
        // would be refused where the operator meant it to be let in.
        (Some(p), _) => Err(p),
        (None, true) => Err((
            reasons::INVALID_CA_CERTIFICATE_REF,
            "validation names no CA certificate".into(),
        )),
        (None, false) => Ok(ClientValidation {
            ca_pem: pems.concat(),
            insecure_fallback: v.mode
                == Some(GatewayTlsFrontendDefaultValidationMode::AllowInsecureFallback),
        }),
    }
}

/// A listener whose fields this version cannot read (never expected: the two types have the
/// same schema), rejected rather than dropped so its status says so.
fn unreadable_listener(
    name: &str,
    owner: Owner,
    namespace: &str,
    secrets: &SecretIndex<'_>,
) -> ListenerState {
    let mut l = listener_state(
        &GatewayListeners {
            name: name.to_string(),
            protocol: "HTTP".into(),
            port: 1,
            ..GatewayListeners::default()
        },
        owner,
        namespace,
        secrets,
    );
    l.rejected = Some((
        reasons::INVALID.to_string(),
        "the listener's fields cannot be read".to_string(),
    ));
    l.supported_kinds.clear();
    l
}

/// Why `l`, a ListenerSet's listener, cannot be served next to the listeners before it: the
/// same port with another protocol, or the same port, protocol and hostname. Every listener
/// the Gateway declares counts, served or not (its owner's port stays its owner's); a
/// ListenerSet's counts only if it is served, so one that lost does not knock out the next.
/// The message does not say whose listener it clashes with (another team's ListenerSet is
/// none of this one's business).
fn conflict_with_earlier(earlier: &[ListenerState], l: &ListenerState) -> Option<(String, String)> {
    let on_port = || {
        earlier.iter().filter(|e| {
            e.port == l.port
                && e.is_udp() == l.is_udp()
                && (e.owner == Owner::Gateway || e.usable())
        })
    };
    if let Some(e) = on_port().find(|e| e.protocol != l.protocol) {
        return Some((
            reasons::PROTOCOL_CONFLICT.into(),
            format!(
                "port {} is already used with protocol {} by a listener that takes precedence",
                l.port, e.protocol
            ),
        ));
    }
    on_port().find(|e| e.hostname == l.hostname).map(|_| {
        (
            reasons::HOSTNAME_CONFLICT.into(),
            format!(
                "port {} and hostname {} are already used by a listener that takes precedence",
                l.port,
                l.hostname.as_deref().unwrap_or("(any)")
            ),
        )
    })
}

fn listener_state(
    l: &GatewayListeners,
    owner: Owner,
    gw_ns: &str,
    secrets: &SecretIndex<'_>,
) -> ListenerState {
    let mut rejected = None;
    let mut certificates = Vec::new();
    let mut unresolved_certificate = None;
    if !(1..=65535).contains(&l.port) {
        rejected = Some((
            reasons::PORT_UNAVAILABLE.to_string(),
            format!("port {} is out of range", l.port),
        ));
    }
    match (l.protocol.as_str(), &l.tls) {
        ("HTTP", None) => {}
        ("HTTP", Some(_)) => {
            rejected = Some((
                reasons::INVALID.to_string(),
                "tls must not be set on an HTTP listener".to_string(),
            ));
        }
        ("HTTPS", None) => {
            rejected = Some((
                reasons::INVALID.to_string(),
                "an HTTPS listener needs tls.certificateRefs".to_string(),
            ));
        }
        ("HTTPS", Some(tls)) if tls.mode == Some(GatewayListenersTlsMode::Passthrough) => {
            rejected = Some((
                reasons::UNSUPPORTED_PROTOCOL.to_string(),
                "an HTTPS listener terminates TLS; for Passthrough use a TLS listener".to_string(),
            ));
        }
        // Passthrough: the backend terminates; certificateRefs are not used.
        ("TLS", Some(tls)) if tls.mode == Some(GatewayListenersTlsMode::Passthrough) => {}
        // HTTPS, and TLS in mode Terminate (the default): the gateway's certificates.
        ("HTTPS" | "TLS", Some(tls)) => {
            let refs = tls.certificate_refs.as_deref().unwrap_or_default();
            if refs.is_empty() {
                rejected = Some((
                    reasons::INVALID.to_string(),
                    format!(
                        "{} listener that terminates TLS needs at least one certificateRef",
                        if l.protocol == "TLS" {
                            "a TLS"
                        } else {
                            "an HTTPS"
                        }
                    ),
                ));
            }
            for r in refs {
                match secrets.resolve(owner.kind(), gw_ns, r) {
                    Ok(c) => certificates.push(c),
                    Err((reason, message)) => {
                        unresolved_certificate.get_or_insert((reason.to_string(), message));
                    }
                }
            }
        }
        // A TCP connection names no host: a hostname would make listeners that differ only
        // by it look distinct while one route takes all their connections.
        ("TCP", None) if l.hostname.is_some() => {
            rejected = Some((
                reasons::INVALID.to_string(),
                "hostname must not be set on a TCP listener".to_string(),
            ));
        }
        ("TCP", None) => {}
        ("TCP", Some(_)) => {
            rejected = Some((
                reasons::INVALID.to_string(),
                "tls must not be set on a TCP listener".to_string(),
            ));
        }
        ("TLS", None) => {
            rejected = Some((
                reasons::INVALID.to_string(),
                "a TLS listener needs tls (mode Passthrough, or Terminate with certificateRefs)"
                    .to_string(),
            ));
        }
        // Datagrams name no host either.
        ("UDP", None) if l.hostname.is_some() => {
            rejected = Some((
                reasons::INVALID.to_string(),
                "hostname must not be set on a UDP listener".to_string(),
            ));
        }
        ("UDP", None) => {}
        ("UDP", Some(_)) => {
            rejected = Some((
                reasons::INVALID.to_string(),
                "tls must not be set on a UDP listener".to_string(),
            ));
        }
        (other, _) => {
            rejected = Some((
                reasons::UNSUPPORTED_PROTOCOL.to_string(),
                format!("unknown protocol {other:?}"),
            ));
        }
    }
    if let Some(h) = &l.hostname
        && let Err(e) = hostname::validate(h)
    {
        rejected = Some((reasons::INVALID.to_string(), e));
    }

    let mut supported_kinds = Vec::new();
    let mut invalid_kinds = None;
    // The kinds the spec lets a listener of this protocol take (a protocol Portico does not
    // serve yet attaches nothing, but a kind no such listener could take is still wrong).
    let valid_kinds: &[&str] = match l.protocol.as_str() {
        "HTTP" | "HTTPS" => &HTTP_KINDS,
        // TCPRoute only on a terminating TLS listener.
        "TLS"
            if l.tls.as_ref().and_then(|t| t.mode.as_ref())
                == Some(&GatewayListenersTlsMode::Passthrough) =>
        {
            &["TLSRoute"]
        }
        // Terminated: a TLSRoute by SNI, or a TCPRoute for every connection of the listener
        // (what the client sends inside TLS, forwarded).
        "TLS" => &[TCP_ROUTE, "TLSRoute"],
        "TCP" => &[TCP_ROUTE],
        "UDP" => &["UDPRoute"],
        _ => &[],
    };
    match l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) {
        Some(kinds) if !kinds.is_empty() => {
            let mut bad = Vec::new();
            for k in kinds {
                let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
                if group == GATEWAY_GROUP && valid_kinds.contains(&k.kind.as_str()) {
                    supported_kinds.push(k.kind.clone());
                } else {
                    bad.push(format!("{group}/{}", k.kind));
                }
            }
            if !bad.is_empty() {
                invalid_kinds = Some(format!(
                    "route kinds {} listeners cannot take: {}",
                    l.protocol,
                    bad.join(", ")
                ));
            }
        }
        // Unset: every kind the protocol takes.
        _ => supported_kinds.extend(valid_kinds.iter().map(|k| k.to_string())),
    }
    supported_kinds.sort();
    supported_kinds.dedup();
    // A listener whose protocol is not served supports no route kind (the spec:
    // supportedKinds lists what the listener can attach, and it attaches nothing).
    if !matches!(
        l.protocol.as_str(),
        "HTTP" | "HTTPS" | "TCP" | "TLS" | "UDP"
    ) {
        supported_kinds.clear();
    }
    let passthrough = l.protocol == "TLS"
        && l.tls.as_ref().and_then(|t| t.mode.as_ref())
            == Some(&GatewayListenersTlsMode::Passthrough);

    let namespaces = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    let allowed_namespaces = match namespaces.and_then(|n| n.from.as_ref()) {
        None | Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) => AllowedNamespaces::Same,
        Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => AllowedNamespaces::All,
        Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => {
            match namespaces.and_then(|n| n.selector.clone()) {
                Some(s) => AllowedNamespaces::Selector(s),
                None => {
                    rejected = Some((
                        reasons::INVALID.to_string(),
                        "namespaces.from is Selector but no selector is set".into(),
                    ));
                    AllowedNamespaces::Same
                }
            }
        }
    };

    ListenerState {
        owner,
        namespace: gw_ns.to_string(),
        name: l.name.clone(),
        port: l.port,
        protocol: l.protocol.clone(),
        passthrough,
        hostname: l.hostname.clone(),
        allowed_namespaces,
        supported_kinds,
        rejected,
        conflicted: None,
        invalid_kinds,
        certificates,
        unresolved_certificate,
        client_validation: None,
        attached_routes: 0,
        hosts: BTreeMap::new(),
    }
}

/// Listeners on one port must share a protocol, and HTTP listeners on one port need distinct
/// hostnames. Every listener of an indistinct set is Conflicted; none of them is picked.
fn mark_conflicts(listeners: &mut [ListenerState]) {
    let mut by_port: BTreeMap<(bool, i32), Vec<usize>> = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        by_port.entry((l.is_udp(), l.port)).or_default().push(i);
    }
    for ((_, port), idx) in by_port {
        // TLS listeners of both modes may share a port: the SNI picks the listener.
        let protocols: BTreeSet<&str> = idx
            .iter()
            .map(|&i| listeners[i].protocol.as_str())
            .collect();
        if protocols.len() > 1 {
            let list = protocols.iter().copied().collect::<Vec<_>>().join(", ");
            for &i in &idx {
                listeners[i].conflicted = Some((
                    reasons::PROTOCOL_CONFLICT.into(),
                    format!("port {port} is used with different protocols ({list})"),
                ));
            }
            continue;
        }
        let mut by_host: BTreeMap<Option<&str>, Vec<usize>> = BTreeMap::new();
        for &i in &idx {
            by_host
                .entry(listeners[i].hostname.as_deref())
                .or_default()
                .push(i);
        }
        let clashes: Vec<(Option<String>, Vec<usize>)> = by_host
            .into_iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(h, v)| (h.map(str::to_string), v))
            .collect();
        for (host, group) in clashes {
            let names: Vec<&str> = group.iter().map(|&i| listeners[i].name.as_str()).collect();
            let message = format!(
                "listeners {} share port {port} and hostname {}",
                names.join(", "),
                host.as_deref().unwrap_or("(any)")
            );
            for &i in &group {
                listeners[i].conflicted =
                    Some((reasons::HOSTNAME_CONFLICT.into(), message.clone()));
            }
        }
    }
}

impl GatewayState {
    /// How route messages name the parent a parentRef selects (`listener "x" of Gateway
    /// ns/gw`, `port 80 of ListenerSet ns/ls`, ...), or `NoMatchingParent` when that parent,
    /// `owner`, is not accepted and so takes no route.
    pub(crate) fn attach_target(
        &self,
        owner: &Owner,
        parent: &ParentRef,
    ) -> Result<String, (&'static str, String)> {
        let parent_name = match owner {
            Owner::Gateway if !self.accepted() => {
                return Err((
                    reasons::NO_MATCHING_PARENT,
                    format!("Gateway {} is not accepted", self.id),
                ));
            }
            Owner::ListenerSet(ls) if !self.listener_set_accepted(ls) => {
                return Err((
                    reasons::NO_MATCHING_PARENT,
                    format!("ListenerSet {ls} is not accepted"),
                ));
            }
            Owner::Gateway => format!("Gateway {}", self.id),
            Owner::ListenerSet(ls) => format!("ListenerSet {ls}"),
        };
        Ok(match (&parent.section_name, parent.port) {
            (Some(s), _) => format!("listener {s:?} of {parent_name}"),
            (None, Some(p)) => format!("port {p} of {parent_name}"),
            (None, None) => parent_name,
        })
    }

    /// Its own configuration is valid (its ListenerSets do not change that).
    pub(crate) fn accepted(&self) -> bool {
        self.invalid.is_none() && self.own_listeners().any(ListenerState::usable)
    }

    fn own_listeners(&self) -> impl Iterator<Item = &ListenerState> {
        self.listeners.iter().filter(|l| l.owner == Owner::Gateway)
    }

    fn listeners_of<'a>(&'a self, ls: &'a ObjectRef) -> impl Iterator<Item = &'a ListenerState> {
        self.listeners
            .iter()
            .filter(move |l| matches!(&l.owner, Owner::ListenerSet(o) if o == ls))
    }

    /// A ListenerSet of this Gateway takes routes: the Gateway took it and one of its
    /// listeners is served.
    pub(crate) fn listener_set_accepted(&self, ls: &ObjectRef) -> bool {
        self.listener_sets
            .iter()
            .any(|s| s.id == *ls && s.refused.is_none())
            && self.listeners_of(ls).any(ListenerState::programmable)
    }

    /// The status of each ListenerSet that names this Gateway.
    pub(crate) fn listener_set_statuses(&self) -> Vec<(ObjectRef, ListenerSetStatus)> {
        self.listener_sets
            .iter()
            .map(|s| (s.id.clone(), self.listener_set_status(s)))
            .collect()
    }

    fn listener_set_status(&self, s: &ListenerSetState) -> ListenerSetStatus {
        let g = s.generation;
        let both = |status: bool, reason: &str, message: String, programmed: (&str, String)| {
            vec![
                Condition::new(types::ACCEPTED, status, reason, message, g),
                Condition::new(types::PROGRAMMED, false, programmed.0, programmed.1, g),
            ]
        };
        if let Some((reason, message)) = &s.refused {
            return ListenerSetStatus {
                gateway: self.id.clone(),
                conditions: both(false, reason, message.clone(), (reason, message.clone())),
                listeners: Vec::new(),
            };
        }
        let listeners: Vec<&ListenerState> = self.listeners_of(&s.id).collect();
        let bad: Vec<&str> = listeners
            .iter()
            .filter(|l| !l.programmable() || l.invalid_kinds.is_some())
            .map(|l| l.name.as_str())
            .collect();
        let conditions = if !self.listener_set_accepted(&s.id) {
            let message = format!("no listener can be served: {}", bad.join(", "));
            both(
                false,
                reasons::LISTENERS_NOT_VALID,
                message.clone(),
                (reasons::LISTENERS_NOT_VALID, message),
            )
        } else {
            let pending = (
                reasons::PENDING,
                "waiting for the dataplane to apply the configuration".to_string(),
            );
            if bad.is_empty() {
                both(
                    true,
                    reasons::ACCEPTED,
                    "all listeners are valid".into(),
                    pending,
                )
            } else {
                both(
                    true,
                    reasons::LISTENERS_NOT_VALID,
                    format!("listeners not served: {}", bad.join(", ")),
                    pending,
                )
            }
        };
        ListenerSetStatus {
            gateway: self.id.clone(),
            conditions,
            listeners: listeners.iter().map(|l| listener_status(l, g)).collect(),
        }
    }

    /// The IP addresses its listeners bind: its `spec.addresses` in standalone mode; in a
    /// cluster none (the dataplane's default), since they are its Service's to receive.
    pub(crate) fn bind_addresses(&self) -> &[String] {
        match self.addresses_mode {
            crate::inputs::Addresses::Bind => &self.addresses,
            crate::inputs::Addresses::Service => &[],
        }
    }

    /// In a cluster, why the addresses it asked for are not its dataplane Service's (yet).
    fn unusable_address(&self, service: Option<&Service>) -> Option<String> {
        if self.addresses_mode != crate::inputs::Addresses::Service || self.addresses.is_empty() {
            return None;
        }
        let name = crate::refs::dataplane_name(&self.id.namespace, &self.id.name);
        let wanted = self.addresses.join(", ");
        if self.addresses.len() > 1 {
            return Some(format!(
                "{} addresses are requested ({wanted}); a provisioned Gateway's Service can be given one (spec.loadBalancerIP)",
                self.addresses.len()
            ));
        }
        let Some(svc) = service else {
            return Some(format!(
                "{wanted} is requested and its dataplane Service {name} does not exist yet"
            ));
        };
        let type_ = svc.spec.as_ref().and_then(|s| s.type_.as_deref());
        if let Some(t) = type_.filter(|t| *t != "LoadBalancer") {
            return Some(format!(
                "{wanted} is requested and its dataplane Service {name} is of type {t}: only a LoadBalancer Service can be given a requested address (the GatewayConfig's service.type)"
            ));
        }
        let given: Vec<String> = svc
            .status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter_map(|i| i.ip.as_deref()?.parse::<std::net::IpAddr>().ok())
            .map(|ip| ip.to_string())
            .collect();
        let missing: Vec<&str> = self
            .addresses
            .iter()
            .filter(|a| !given.contains(a))
            .map(String::as_str)
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "its dataplane Service {name} has not been given {} (its load-balancer addresses: {}); \
                 whether a LoadBalancer Service gets a requested IP is up to the cluster's load balancer",
                missing.join(", "),
                if given.is_empty() { "none".to_string() } else { given.join(", ") }
            )
        })
    }

    /// Status addresses: those of the dataplane Service if there is one, else (standalone)
    /// those it binds.
    fn addresses(&self, service: Option<&Service>) -> Vec<GatewayAddress> {
        let address = |type_: &str, value: &str| GatewayAddress {
            type_: type_.to_string(),
            value: value.to_string(),
        };
        let mut out: Vec<GatewayAddress> = Vec::new();
        if let Some(svc) = service {
            for ingress in svc
                .status
                .iter()
                .filter_map(|s| s.load_balancer.as_ref())
                .flat_map(|lb| lb.ingress.iter().flatten())
            {
                if let Some(ip) = &ingress.ip {
                    out.push(address("IPAddress", ip));
                } else if let Some(h) = &ingress.hostname {
                    out.push(address("Hostname", h));
                }
            }
            if out.is_empty() {
                let spec = svc.spec.as_ref();
                let ips = spec
                    .and_then(|s| s.cluster_ips.clone())
                    .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
                    .unwrap_or_default();
                out.extend(
                    ips.iter()
                        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
                        .map(|ip| address("IPAddress", ip)),
                );
            }
        }
        // Standalone: the addresses it binds. In a cluster, an address the Service was not
        // given is not one the Gateway can be reached on.
        if out.is_empty() {
            out.extend(
                self.bind_addresses()
                    .iter()
                    .map(|ip| address("IPAddress", ip)),
            );
        }
        out
    }

    pub(crate) fn status(&self, dataplane_service: Option<&Service>) -> GatewayStatus {
        let g = self.generation;
        let bad: Vec<&str> = self
            .own_listeners()
            .filter(|l| !l.usable())
            .map(|l| l.name.as_str())
            .collect();
        let accepted = match (&self.invalid, bad.is_empty()) {
            (Some((reason, message)), _) => {
                Condition::new(types::ACCEPTED, false, reason, message.clone(), g)
            }
            (None, true) => Condition::new(
                types::ACCEPTED,
                true,
                reasons::ACCEPTED,
                "all listeners are valid",
                g,
            ),
            (None, false) => Condition::new(
                types::ACCEPTED,
                self.accepted(),
                reasons::LISTENERS_NOT_VALID,
                format!("listeners not accepted: {}", bad.join(", ")),
                g,
            ),
        };
        let programmed = if !accepted.is_true() {
            Condition::new(
                types::PROGRAMMED,
                false,
                reasons::INVALID,
                "the Gateway is not accepted",
                g,
            )
        } else if let Some(why) = self.unusable_address(dataplane_service) {
            Condition::new(
                types::PROGRAMMED,
                false,
                reasons::ADDRESS_NOT_USABLE,
                why,
                g,
            )
        } else {
            Condition::new(
                types::PROGRAMMED,
                false,
                reasons::PENDING,
                "waiting for the dataplane to apply the configuration",
                g,
            )
        };
        let mut conditions = vec![accepted, programmed];
        let insecure: Vec<String> = self
            .listeners
            .iter()
            .filter(|l| {
                l.usable()
                    && l.client_validation
                        .as_ref()
                        .is_some_and(|v| v.insecure_fallback)
            })
            .map(|l| l.port.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !insecure.is_empty() {
            conditions.push(Condition::new(
                types::INSECURE_FRONTEND_VALIDATION_MODE,
                true,
                reasons::CONFIGURATION_CHANGED,
                format!(
                    "spec.tls.frontend lets clients without a valid certificate in on port(s) {} (AllowInsecureFallback)",
                    insecure.join(", ")
                ),
                g,
            ));
        }
        // Set only where the Gateway references something of its own (beside its listeners'
        // certificates, which each listener reports): its client certificate for backends.
        if let Some(c) = &self.backend_client_certificate {
            conditions.push(match c {
                Ok(_) => Condition::new(
                    types::RESOLVED_REFS,
                    true,
                    reasons::RESOLVED_REFS,
                    "spec.tls.backend.clientCertificateRef resolved",
                    g,
                ),
                Err((reason, message)) => {
                    Condition::new(types::RESOLVED_REFS, false, reason, message.clone(), g)
                }
            });
        }
        GatewayStatus {
            addresses: self.addresses(dataplane_service),
            conditions,
            listeners: self
                .own_listeners()
                .map(|l| listener_status(l, g))
                .collect(),
            attached_listener_sets: self
                .listener_sets
                .iter()
                .filter(|s| self.listener_set_accepted(&s.id))
                .count()
                .try_into()
                .unwrap_or(i32::MAX),
        }
    }
}

/// A condition that is `ok` unless there is a problem (reason, message); `problem_status` is
/// the status a problem gives (True for Conflicted, False for the others).
fn condition(
    type_: &str,
    problem: Option<(&str, &str)>,
    problem_status: bool,
    ok: (&str, &str),
    g: Option<i64>,
) -> Condition {
    match problem {
        Some((reason, message)) => Condition::new(type_, problem_status, reason, message, g),
        None => Condition::new(type_, !problem_status, ok.0, ok.1, g),
    }
}

fn problem(p: &Option<(String, String)>) -> Option<(&str, &str)> {
    p.as_ref().map(|(r, m)| (r.as_str(), m.as_str()))
}

fn listener_status(l: &ListenerState, g: Option<i64>) -> ListenerStatus {
    // A ListenerSet's listener that lost a conflict is not accepted, for that reason
    // (whatever else is wrong with it). A Gateway's conflicted listeners stay Accepted as
    // far as their own fields go: none of an indistinct set is picked.
    let lost = match l.owner {
        Owner::ListenerSet(_) => problem(&l.conflicted),
        Owner::Gateway => None,
    };
    let accepted = condition(
        types::ACCEPTED,
        lost.or(problem(&l.rejected)),
        false,
        (reasons::ACCEPTED, "listener is valid"),
        g,
    );
    let conflicted = condition(
        types::CONFLICTED,
        problem(&l.conflicted),
        true,
        (reasons::NO_CONFLICTS, "no conflicts"),
        g,
    );
    let resolved = condition(
        types::RESOLVED_REFS,
        l.invalid_kinds
            .as_deref()
            .map(|m| (reasons::INVALID_ROUTE_KINDS, m))
            .or(problem(&l.unresolved_certificate)),
        false,
        (reasons::RESOLVED_REFS, "all references resolved"),
        g,
    );
    let programmed = if let Some(lost) = lost {
        lost
    } else if l.programmable() {
        (
            reasons::PENDING,
            "waiting for the dataplane to apply the configuration",
        )
    } else if l.usable() {
        (
            reasons::INVALID,
            "no certificateRef holds a usable certificate",
        )
    } else {
        (
            reasons::INVALID,
            "the listener is not accepted or is conflicted",
        )
    };
    ListenerStatus {
        name: l.name.clone(),
        attached_routes: l.attached_routes,
        supported_kinds: l.supported_kinds.clone(),
        conditions: vec![
            accepted,
            conflicted,
            resolved,
            Condition::new(types::PROGRAMMED, false, programmed.0, programmed.1, g),
        ],
    }
}
