//! GatewayClasses, Gateways and their listeners: which are ours, which listeners are valid,
//! which conflict, and which routes each may accept.

use crate::hostname;
use crate::refs::object_ref;
use crate::status::{
    Condition, GatewayAddress, GatewayClassStatus, GatewayStatus, ListenerStatus, StatusReport,
    reasons, types,
};
use crate::tls::SecretIndex;
use portico_crds::GATEWAY_GROUP;
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom,
    GatewayListenersAllowedRoutesNamespacesSelector, GatewayListenersTlsMode,
};
use portico_crds::gatewayconfig::GatewayConfigSpec;
use portico_crds::k8s_openapi::api::core::v1::{Namespace, Service};
use portico_model::{Certificate, ObjectRef, RouteKind};
use std::collections::{BTreeMap, BTreeSet};

/// Route kinds an HTTP or HTTPS listener can accept.
pub(crate) const HTTP_ROUTE: &str = "HTTPRoute";
pub(crate) const GRPC_ROUTE: &str = "GRPCRoute";
const HTTP_KINDS: [&str; 2] = [HTTP_ROUTE, GRPC_ROUTE];

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

/// One listener and what compile concluded about it.
pub(crate) struct ListenerState {
    pub(crate) name: String,
    pub(crate) port: i32,
    pub(crate) protocol: String,
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
    pub(crate) attached_routes: i32,
    /// The routes attached so far with their effective hostnames here, HTTPRoutes and
    /// GRPCRoutes apart (each kind is checked only against the other).
    http_hosts: Vec<(ObjectRef, Vec<String>)>,
    grpc_hosts: Vec<(ObjectRef, Vec<String>)>,
}

impl ListenerState {
    /// Valid and not conflicted: it is programmed and routes may attach.
    pub(crate) fn usable(&self) -> bool {
        self.rejected.is_none() && self.conflicted.is_none()
    }

    /// Usable and, for HTTPS, holding at least one valid certificate: the dataplane serves it.
    pub(crate) fn programmable(&self) -> bool {
        self.usable() && (self.protocol != "HTTPS" || !self.certificates.is_empty())
    }

    pub(crate) fn hosts_of(&self, kind: RouteKind) -> &[(ObjectRef, Vec<String>)] {
        match kind {
            RouteKind::Http => &self.http_hosts,
            RouteKind::Grpc => &self.grpc_hosts,
        }
    }

    pub(crate) fn hosts_of_mut(&mut self, kind: RouteKind) -> &mut Vec<(ObjectRef, Vec<String>)> {
        match kind {
            RouteKind::Http => &mut self.http_hosts,
            RouteKind::Grpc => &mut self.grpc_hosts,
        }
    }

    pub(crate) fn allows_kind(&self, kind: &str) -> bool {
        self.supported_kinds.iter().any(|k| k == kind)
    }

    pub(crate) fn allows_namespace(
        &self,
        gateway_ns: &str,
        route_ns: &str,
        ns: &NamespaceLabels,
    ) -> bool {
        match &self.allowed_namespaces {
            AllowedNamespaces::Same => gateway_ns == route_ns,
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
    addresses: Vec<String>,
    pub(crate) listeners: Vec<ListenerState>,
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

pub(crate) fn compile_gateways(
    gateways: &[Gateway],
    classes: &BTreeSet<String>,
    params: &Parameters<'_>,
    secrets: &SecretIndex<'_>,
) -> Vec<GatewayState> {
    let mut out: Vec<GatewayState> = gateways
        .iter()
        .filter(|g| classes.contains(&g.spec.gateway_class_name))
        .map(|g| compile_gateway(g, params, secrets))
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn compile_gateway(
    gw: &Gateway,
    params: &Parameters<'_>,
    secrets: &SecretIndex<'_>,
) -> GatewayState {
    let id = object_ref(&gw.metadata);
    let mut invalid = params
        .refusal(gw)
        .map(|message| (reasons::INVALID_PARAMETERS, message));
    let mut addresses = Vec::new();
    for a in gw.spec.addresses.iter().flatten() {
        let kind = a.r#type.as_deref().unwrap_or("IPAddress");
        match (kind, a.value.as_deref()) {
            ("IPAddress", Some(v)) => match v.parse::<std::net::IpAddr>() {
                Ok(ip) => addresses.push(ip.to_string()),
                Err(_) => {
                    invalid = Some((
                        reasons::UNSUPPORTED_ADDRESS,
                        format!("address {v:?} is not an IP address"),
                    ));
                }
            },
            ("IPAddress", None) => {}
            (other, _) => {
                invalid = Some((
                    reasons::UNSUPPORTED_ADDRESS,
                    format!("address type {other:?} is not supported; use IPAddress"),
                ));
            }
        }
    }
    addresses.sort();
    addresses.dedup();

    let mut listeners: Vec<ListenerState> = gw
        .spec
        .listeners
        .iter()
        .map(|l| listener_state(l, &id.namespace, secrets))
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
    mark_conflicts(&mut listeners);
    GatewayState {
        id,
        generation: gw.metadata.generation,
        invalid,
        addresses,
        listeners,
    }
}

fn listener_state(l: &GatewayListeners, gw_ns: &str, secrets: &SecretIndex<'_>) -> ListenerState {
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
                "an HTTPS listener terminates TLS; Passthrough needs a TLS listener, which is not supported yet".to_string(),
            ));
        }
        ("HTTPS", Some(tls)) => {
            let refs = tls.certificate_refs.as_deref().unwrap_or_default();
            if refs.is_empty() {
                rejected = Some((
                    reasons::INVALID.to_string(),
                    "an HTTPS listener needs at least one certificateRef".to_string(),
                ));
            }
            for r in refs {
                match secrets.resolve(gw_ns, r) {
                    Ok(c) => certificates.push(c),
                    Err((reason, message)) => {
                        unresolved_certificate.get_or_insert((reason.to_string(), message));
                    }
                }
            }
        }
        ("TLS" | "TCP" | "UDP", _) => {
            rejected = Some((
                reasons::UNSUPPORTED_PROTOCOL.to_string(),
                format!(
                    "protocol {} is not supported yet; HTTP and HTTPS are",
                    l.protocol
                ),
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
    match l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) {
        Some(kinds) if !kinds.is_empty() => {
            let mut bad = Vec::new();
            for k in kinds {
                let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
                if group == GATEWAY_GROUP && HTTP_KINDS.contains(&k.kind.as_str()) {
                    supported_kinds.push(k.kind.clone());
                } else {
                    bad.push(format!("{group}/{}", k.kind));
                }
            }
            if !bad.is_empty() {
                invalid_kinds = Some(format!(
                    "route kinds not supported on an {} listener: {}",
                    l.protocol,
                    bad.join(", ")
                ));
            }
        }
        _ => supported_kinds.extend(HTTP_KINDS.map(str::to_string)),
    }
    supported_kinds.sort();
    supported_kinds.dedup();
    // A listener whose protocol is not served supports no route kind (the spec: supportedKinds
    // lists what the listener can attach, and it attaches nothing).
    if !matches!(l.protocol.as_str(), "HTTP" | "HTTPS") {
        supported_kinds.clear();
    }

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
        name: l.name.clone(),
        port: l.port,
        protocol: l.protocol.clone(),
        hostname: l.hostname.clone(),
        allowed_namespaces,
        supported_kinds,
        rejected,
        conflicted: None,
        invalid_kinds,
        certificates,
        unresolved_certificate,
        attached_routes: 0,
        http_hosts: Vec::new(),
        grpc_hosts: Vec::new(),
    }
}

/// Listeners on one port must share a protocol, and HTTP listeners on one port need distinct
/// hostnames. Every listener of an indistinct set is Conflicted; none of them is picked.
fn mark_conflicts(listeners: &mut [ListenerState]) {
    let mut by_port: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        by_port.entry(l.port).or_default().push(i);
    }
    for (port, idx) in by_port {
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
    pub(crate) fn accepted(&self) -> bool {
        self.invalid.is_none() && self.listeners.iter().any(ListenerState::usable)
    }

    /// The IP addresses its listeners bind (its `spec.addresses`; empty: the dataplane's
    /// default).
    pub(crate) fn bind_addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Status addresses: those of the dataplane Service if there is one, else the requested.
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
        if out.is_empty() {
            out.extend(self.addresses.iter().map(|ip| address("IPAddress", ip)));
        }
        out
    }

    pub(crate) fn status(&self, dataplane_service: Option<&Service>) -> GatewayStatus {
        let g = self.generation;
        let bad: Vec<&str> = self
            .listeners
            .iter()
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
        let programmed = if accepted.is_true() {
            Condition::new(
                types::PROGRAMMED,
                false,
                reasons::PENDING,
                "waiting for the dataplane to apply the configuration",
                g,
            )
        } else {
            Condition::new(
                types::PROGRAMMED,
                false,
                reasons::INVALID,
                "the Gateway is not accepted",
                g,
            )
        };
        GatewayStatus {
            addresses: self.addresses(dataplane_service),
            conditions: vec![accepted, programmed],
            listeners: self
                .listeners
                .iter()
                .map(|l| listener_status(l, g))
                .collect(),
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
    let accepted = condition(
        types::ACCEPTED,
        problem(&l.rejected),
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
    let programmed = if l.programmable() {
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
