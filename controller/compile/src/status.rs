//! The status compile wants each object to have: conditions with the Gateway API's own types
//! and reasons, minus the timestamps (which the status writer adds, since compile is pure).

use portico_model::{ObjectRef, PolicyKind, RouteKind};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Condition types, as the Gateway API names them.
pub mod types {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const CONFLICTED: &str = "Conflicted";
    /// A CacheInvalidation's: every replica serving the target purged.
    pub const PURGED: &str = "Purged";
    /// A Gateway's: some port lets clients in without a valid certificate.
    pub const INSECURE_FRONTEND_VALIDATION_MODE: &str = "InsecureFrontendValidationMode";
}

/// Condition reasons, as the Gateway API names them (and Portico's own where it has none).
pub mod reasons {
    // Shared.
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const PENDING: &str = "Pending";
    pub const INVALID: &str = "Invalid";
    // Gateway.
    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub const UNSUPPORTED_ADDRESS: &str = "UnsupportedAddress";
    pub const INVALID_PARAMETERS: &str = "InvalidParameters";
    pub const ADDRESS_NOT_USABLE: &str = "AddressNotUsable";
    // ListenerSet.
    pub const NOT_ALLOWED: &str = "NotAllowed";
    pub const PARENT_NOT_ACCEPTED: &str = "ParentNotAccepted";
    // Listener.
    pub const NO_CONFLICTS: &str = "NoConflicts";
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const PORT_UNAVAILABLE: &str = "PortUnavailable";
    pub const TOO_MANY_LISTENERS: &str = "TooManyListeners";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const INVALID_CLIENT_CERTIFICATE_REF: &str = "InvalidClientCertificateRef";
    pub const INVALID_CA_CERTIFICATE_REF: &str = "InvalidCACertificateRef";
    pub const INVALID_CA_CERTIFICATE_KIND: &str = "InvalidCACertificateKind";
    pub const NO_VALID_CA_CERTIFICATE: &str = "NoValidCACertificate";
    pub const CONFIGURATION_CHANGED: &str = "ConfigurationChanged";
    // Route.
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    // Policy (Gateway API policy attachment).
    pub const CONFLICTED: &str = "Conflicted";
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    pub const INVALID_REF: &str = "InvalidRef";
    /// Portico's own: this version cannot read the policy (a field or value of a newer CRD).
    /// An AuthPolicy in this state still holds its targets, which refuse every request.
    pub const UNREADABLE: &str = "Unreadable";
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    pub(crate) fn new(
        type_: &str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
        generation: Option<i64>,
    ) -> Self {
        Self {
            type_: type_.to_string(),
            status: if status { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            message: message.into(),
            observed_generation: generation,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassStatus {
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Where the Gateway can be reached: its dataplane Service's load-balancer ingress or
    /// cluster IPs, else the addresses it asked for.
    pub addresses: Vec<GatewayAddress>,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
    /// How many ListenerSets it accepted.
    pub attached_listener_sets: i32,
}

/// A ListenerSet's status: its own conditions and its listeners' (the Gateway's are not
/// repeated here).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSetStatus {
    /// The Gateway it names (whose dataplanes serve its listeners).
    #[serde(skip)]
    pub gateway: ObjectRef,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// `IPAddress` or `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub attached_routes: i32,
    pub supported_kinds: Vec<String>,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub parents: Vec<RouteParentStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The Gateway whose compile reported it: the parent, or the parent ListenerSet's.
    #[serde(skip)]
    pub gateway: ObjectRef,
    pub parent_ref: ParentRef,
    pub conditions: Vec<Condition>,
}

/// A route's `parentRef` with defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    pub namespace: String,
    pub name: String,
    /// `Gateway` or `ListenerSet`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// The status of every object compile looked at and is responsible for.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub gateway_classes: BTreeMap<String, GatewayClassStatus>,
    #[serde(serialize_with = "by_display_key")]
    pub gateways: BTreeMap<ObjectRef, GatewayStatus>,
    #[serde(serialize_with = "by_display_key")]
    pub listener_sets: BTreeMap<ObjectRef, ListenerSetStatus>,
    #[serde(serialize_with = "by_display_key")]
    pub http_routes: BTreeMap<ObjectRef, RouteStatus>,
    #[serde(serialize_with = "by_display_key")]
    pub grpc_routes: BTreeMap<ObjectRef, RouteStatus>,
    #[serde(
        serialize_with = "by_display_key",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tcp_routes: BTreeMap<ObjectRef, RouteStatus>,
    #[serde(
        serialize_with = "by_display_key",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tls_routes: BTreeMap<ObjectRef, RouteStatus>,
    #[serde(
        serialize_with = "by_display_key",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub udp_routes: BTreeMap<ObjectRef, RouteStatus>,
    /// Every BackendTLSPolicy's status: its conditions for each Gateway of ours whose
    /// routes send to what it targets.
    #[serde(
        serialize_with = "by_display_key",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub backend_tls_policies: BTreeMap<ObjectRef, PolicyStatus>,
    /// Every policy's status, by kind and object. Shown (`portico check --status`) as one map
    /// per kind, `authPolicies`, `rateLimitPolicies`, ... as before the kinds shared a map.
    #[serde(flatten, serialize_with = "by_kind")]
    pub policies: BTreeMap<(PolicyKind, ObjectRef), PolicyStatus>,
    /// The Gateways each CacheInvalidation's purges are sent to: whose replicas' answers
    /// fill in its `Purged` conditions (compile leaves them pending).
    #[serde(skip)]
    pub purges: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
}

impl StatusReport {
    /// The statuses of routes of `kind`.
    pub fn routes_mut(&mut self, kind: RouteKind) -> &mut BTreeMap<ObjectRef, RouteStatus> {
        match kind {
            RouteKind::Http => &mut self.http_routes,
            RouteKind::Grpc => &mut self.grpc_routes,
            RouteKind::Tcp => &mut self.tcp_routes,
            RouteKind::Tls => &mut self.tls_routes,
            RouteKind::Udp => &mut self.udp_routes,
        }
    }

    /// The status of policy `id` of `kind`, if compile looked at it.
    pub fn policy(&self, kind: PolicyKind, id: &ObjectRef) -> Option<&PolicyStatus> {
        self.policies.get(&(kind, id.clone()))
    }
}

/// A policy's status: one entry per target it names.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    pub ancestors: Vec<PolicyAncestorStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    pub ancestor_ref: AncestorRef,
    pub conditions: Vec<Condition>,
}

/// The target itself (Portico reports a policy's status against what it names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AncestorRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// Writes `namespace/name` keys, which YAML and JSON can show as plain strings.
fn by_display_key<S: serde::Serializer, V: Serialize>(
    map: &BTreeMap<ObjectRef, V>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(map.len()))?;
    for (k, v) in map {
        m.serialize_entry(&k.to_string(), v)?;
    }
    m.end()
}

/// Writes the policies as one map per kind, each keyed by `namespace/name` and named after
/// the kind (`AuthPolicy` → `authPolicies`); every kind's map is written, empty or not.
fn by_kind<S: serde::Serializer>(
    map: &BTreeMap<(PolicyKind, ObjectRef), PolicyStatus>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    struct OfKind<'a>(
        &'a BTreeMap<(PolicyKind, ObjectRef), PolicyStatus>,
        PolicyKind,
    );
    impl Serialize for OfKind<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(None)?;
            for ((_, id), status) in self.0.iter().filter(|((k, _), _)| *k == self.1) {
                m.serialize_entry(&id.to_string(), status)?;
            }
            m.end()
        }
    }
    let mut m = s.serialize_map(Some(PolicyKind::ALL.len()))?;
    for kind in PolicyKind::ALL {
        // Every kind's CRD is named `...Policy`: its map is `...Policies`, camel-cased.
        let name = kind.as_str();
        let plural = format!(
            "{}{}ies",
            name[..1].to_ascii_lowercase(),
            name[1..].strip_suffix('y').unwrap_or(&name[1..])
        );
        m.serialize_entry(&plural, &OfKind(map, kind))?;
    }
    m.end()
}

/// One condition that tells a user something is wrong, with the object it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `Gateway default/gw listener http`, `HTTPRoute default/r parent default/gw`, ...
    pub object: String,
    pub condition: Condition,
}

impl StatusReport {
    /// Every condition whose status says something is wrong (`Accepted`, `ResolvedRefs` or
    /// `Programmed` False, `Conflicted` True), in a stable order.
    pub fn problems(&self) -> Vec<Problem> {
        let bad = |c: &Condition| {
            if c.type_ == types::CONFLICTED {
                c.is_true()
            } else {
                !c.is_true() && c.reason != reasons::PENDING
            }
        };
        let mut out = Vec::new();
        let mut push = |object: String, conditions: &[Condition]| {
            for c in conditions.iter().filter(|c| bad(c)) {
                out.push(Problem {
                    object: object.clone(),
                    condition: c.clone(),
                });
            }
        };
        for (name, s) in &self.gateway_classes {
            push(format!("GatewayClass {name}"), &s.conditions);
        }
        for (id, s) in &self.gateways {
            push(format!("Gateway {id}"), &s.conditions);
            for l in &s.listeners {
                push(format!("Gateway {id} listener {}", l.name), &l.conditions);
            }
        }
        for (id, s) in &self.listener_sets {
            push(format!("ListenerSet {id}"), &s.conditions);
            for l in &s.listeners {
                push(
                    format!("ListenerSet {id} listener {}", l.name),
                    &l.conditions,
                );
            }
        }
        for (kind, routes) in [
            ("HTTPRoute", &self.http_routes),
            ("GRPCRoute", &self.grpc_routes),
            ("TCPRoute", &self.tcp_routes),
            ("TLSRoute", &self.tls_routes),
            ("UDPRoute", &self.udp_routes),
        ] {
            for (id, s) in routes {
                for p in &s.parents {
                    push(
                        format!(
                            "{kind} {id} parent {}{}/{}",
                            match p.parent_ref.kind.as_str() {
                                "Gateway" => "",
                                _ => "ListenerSet ",
                            },
                            p.parent_ref.namespace,
                            p.parent_ref.name
                        ),
                        &p.conditions,
                    );
                }
            }
        }
        for (id, s) in &self.backend_tls_policies {
            for a in &s.ancestors {
                push(
                    format!(
                        "BackendTLSPolicy {id} ancestor Gateway {}/{}",
                        a.ancestor_ref.namespace, a.ancestor_ref.name
                    ),
                    &a.conditions,
                );
            }
        }
        for ((kind, id), s) in &self.policies {
            for a in &s.ancestors {
                let section = a
                    .ancestor_ref
                    .section_name
                    .as_ref()
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default();
                push(
                    format!(
                        "{kind} {id} target {} {}{section}",
                        a.ancestor_ref.kind, a.ancestor_ref.name
                    ),
                    &a.conditions,
                );
            }
        }
        out
    }
}
