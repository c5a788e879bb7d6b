//! BackendTLSPolicy (`gateway.networking.k8s.io/v1`): TLS from the gateway to a Service's
//! endpoints, with the CA certificates (ConfigMaps, Secrets, or the system's roots) and the
//! name the endpoints' certificates must carry.
//!
//! ```text
//!   BackendTLSPolicy ──targetRefs──▶ Service [port name]
//!   snapshot.backends[].tls ◀── the port's policy, else the Service's
//!   status.ancestors[] ◀── each Gateway of ours whose routes send to a targeted Service
//! ```
//!
//! Two policies on the same Service (and port name): the older, then the one first by
//! namespace and name, applies; the other is `Accepted=False Conflicted`. A policy whose CA
//! certificates cannot be used is `Accepted=False NoValidCACertificate` and still applies, as
//! a refusal: its backend's requests are answered 500, never sent in plaintext; so does one
//! this version cannot read whole (`Accepted=False Unreadable`, [`crate::unreadable`]). Unlike
//! Portico's policies, its status is per ancestor (the Gateways), as the Gateway API's
//! policy status is.

use crate::inputs::Inputs;
use crate::refs::{
    gateways_of, grpc_route_parents, http_route_parents, namespace_of, object_ref, precedence,
    tcp_route_parents, tls_route_parents,
};
use crate::status::{
    AncestorRef, Condition, PolicyAncestorStatus, PolicyStatus, StatusReport, reasons, types,
};
use crate::unreadable::{ProtectivePolicy, UnreadablePolicy};
use portico_crds::gateway_api::backendtlspolicies::{
    BackendTlsPolicy, BackendTlsPolicyValidationSubjectAltNamesType as SanType,
};
use portico_crds::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portico_crds::policy::PolicyTargetRef;
use portico_model::{BackendTls, ObjectRef, Snapshot, SubjectAltName};
use std::collections::{BTreeMap, BTreeSet};

/// What an applied policy covers, in its status.
const APPLIED: &str = "applied to the targeted Services: HTTP and GRPC requests, TCP and \
                       terminated TLS connections (passed-through TLS is the client's own, end \
                       to end)";

/// What a policy that cannot be honoured does, in its status.
const REFUSED: &str = "requests to the targeted Services are answered 500 and connections to \
                       them closed, never sent in plaintext";

/// What a Service (or one of its ports, by name) is targeted by.
type TargetKey = (ObjectRef, Option<String>);

/// The policies that apply, by target, compiled.
#[derive(Debug, Default)]
pub(crate) struct BackendTlsPolicies {
    applied: BTreeMap<TargetKey, BackendTls>,
}

/// Compiles every BackendTLSPolicy, decides which applies to each target and writes each
/// one's status for the Gateways of `controller_name` whose routes send to what it targets.
pub(crate) fn resolve(
    inputs: &Inputs,
    controller_name: &str,
    status: &mut StatusReport,
) -> BackendTlsPolicies {
    let ancestors = service_gateways(inputs, controller_name);
    let mut sources: Vec<Source<'_>> = inputs
        .backend_tls_policies
        .iter()
        .map(Source::Readable)
        .chain(
            inputs
                .unreadable_backend_tls_policies
                .iter()
                .map(Source::Unreadable),
        )
        .collect();
    sources.sort_by(|a, b| precedence(a.metadata(), b.metadata()));
    let mut out = BackendTlsPolicies::default();
    for source in sources {
        let id = object_ref(source.metadata());
        let generation = source.metadata().generation;
        let compiled = match source {
            Source::Readable(policy) => compile_policy(&id, policy, inputs),
            Source::Unreadable(u) => Compiled {
                tls: BackendTls {
                    policy: id.clone(),
                    invalid: Some(format!(
                        "this version of Portico cannot read the policy: {}",
                        u.error
                    )),
                    ..BackendTls::default()
                },
                unresolved: None,
            },
        };
        let mut conflicted = false;
        let mut gateways: BTreeSet<ObjectRef> = BTreeSet::new();
        let mut targets = Vec::new();
        for t in source.target_refs() {
            if !t.group.is_empty() || t.kind != "Service" {
                continue;
            }
            let service = ObjectRef::new(id.namespace.clone(), t.name.clone());
            gateways.extend(ancestors.get(&service).into_iter().flatten().cloned());
            let key = (service, t.section_name.clone());
            if out.applied.contains_key(&key) {
                conflicted = true;
            } else {
                targets.push(key);
            }
        }
        // An unreadable policy's references are unknown: no ResolvedRefs for it.
        let resolved =
            matches!(source, Source::Readable(_)).then(|| resolved_refs(&compiled, generation));
        let accepted = if conflicted {
            Condition::new(
                types::ACCEPTED,
                false,
                reasons::CONFLICTED,
                "an older BackendTLSPolicy targets the same Service and sectionName; this \
                 one applies only to its targets no other policy takes",
                generation,
            )
        } else {
            match (&compiled.tls.invalid, source) {
                (None, _) => Condition::new(
                    types::ACCEPTED,
                    true,
                    reasons::ACCEPTED,
                    APPLIED,
                    generation,
                ),
                (Some(why), Source::Unreadable(_)) => Condition::new(
                    types::ACCEPTED,
                    false,
                    reasons::UNREADABLE,
                    format!("{why}; {REFUSED}"),
                    generation,
                ),
                (Some(why), Source::Readable(_)) => Condition::new(
                    types::ACCEPTED,
                    false,
                    reasons::NO_VALID_CA_CERTIFICATE,
                    format!("{why}; {REFUSED}"),
                    generation,
                ),
            }
        };
        let conditions: Vec<Condition> = std::iter::once(accepted).chain(resolved).collect();
        // Conflicts are per target: the older policy keeps the targets both name, and this
        // one still applies to the others (left without it, they would go in plaintext).
        for key in targets {
            out.applied.insert(key, compiled.tls.clone());
        }
        let ancestors = gateways
            .into_iter()
            .map(|gateway| PolicyAncestorStatus {
                ancestor_ref: AncestorRef {
                    group: portico_crds::GATEWAY_GROUP.to_string(),
                    kind: "Gateway".into(),
                    namespace: gateway.namespace,
                    name: gateway.name,
                    section_name: None,
                },
                conditions: conditions.clone(),
            })
            .collect();
        status
            .backend_tls_policies
            .insert(id, PolicyStatus { ancestors });
    }
    out
}

impl BackendTlsPolicies {
    /// Sets each backend's TLS in `snapshot`: its port's policy, else its Service's. A UDP
    /// backend takes none (datagrams are not TLS).
    pub(crate) fn attach(&self, snapshot: &mut Snapshot) {
        for b in snapshot.backends.iter_mut().filter(|b| !b.id.udp) {
            let svc = ObjectRef::new(b.id.namespace.clone(), b.id.name.clone());
            let port = b
                .port_name
                .as_ref()
                .and_then(|p| self.applied.get(&(svc.clone(), Some(p.clone()))))
                .or_else(|| self.applied.get(&(svc, None)));
            b.tls = port.cloned();
        }
    }
}

/// A BackendTLSPolicy as read: whole, or in part ([`crate::unreadable`]).
#[derive(Clone, Copy)]
enum Source<'a> {
    Readable(&'a BackendTlsPolicy),
    Unreadable(&'a UnreadablePolicy),
}

impl Source<'_> {
    fn metadata(&self) -> &ObjectMeta {
        match self {
            Source::Readable(p) => &p.metadata,
            Source::Unreadable(p) => &p.metadata,
        }
    }

    fn target_refs(&self) -> Vec<PolicyTargetRef> {
        match self {
            Source::Readable(p) => p.target_refs(),
            Source::Unreadable(p) => p.target_refs.clone(),
        }
    }
}

/// A policy compiled, and what its references resolved to.
struct Compiled {
    tls: BackendTls,
    /// `ResolvedRefs=False`: the reason and message.
    unresolved: Option<(&'static str, String)>,
}

fn resolved_refs(c: &Compiled, generation: Option<i64>) -> Condition {
    match &c.unresolved {
        None => Condition::new(
            types::RESOLVED_REFS,
            true,
            reasons::RESOLVED_REFS,
            "every CA certificate reference resolved",
            generation,
        ),
        Some((reason, message)) => Condition::new(
            types::RESOLVED_REFS,
            false,
            reason,
            message.clone(),
            generation,
        ),
    }
}

fn compile_policy(id: &ObjectRef, policy: &BackendTlsPolicy, inputs: &Inputs) -> Compiled {
    let v = &policy.spec.validation;
    let mut tls = BackendTls {
        policy: id.clone(),
        server_name: v.hostname.to_ascii_lowercase(),
        ..BackendTls::default()
    };
    let mut unresolved = None;
    let mut pems = Vec::new();
    let refs = v.ca_certificate_refs.as_deref().unwrap_or_default();
    let sources = crate::ca::CaSources {
        config_maps: &inputs.config_maps,
        secrets: inputs.secret_view(),
    };
    for r in refs {
        match sources.read(&r.group, &r.kind, &id.namespace, &r.name) {
            Ok(pem) => pems.push(pem),
            Err(crate::ca::CaProblem::Kind(message)) => {
                unresolved.get_or_insert((reasons::INVALID_KIND, message));
            }
            Err(crate::ca::CaProblem::Invalid(message)) => {
                unresolved.get_or_insert((reasons::INVALID_CA_CERTIFICATE_REF, message));
            }
        }
    }
    match v.well_known_ca_certificates.as_deref() {
        None => {}
        Some("System") if refs.is_empty() => tls.system_roots = true,
        Some("System") => {
            tls.invalid = Some(
                "validation sets both caCertificateRefs and wellKnownCACertificates; set one"
                    .into(),
            );
        }
        Some(other) => {
            tls.invalid = Some(format!(
                "wellKnownCACertificates {other:?} is not supported; use System"
            ));
        }
    }
    if !tls.system_roots && tls.invalid.is_none() {
        if pems.is_empty() {
            tls.invalid = Some(match &unresolved {
                Some((_, message)) => format!("no usable CA certificate: {message}"),
                None => "validation names no CA certificate (caCertificateRefs or wellKnownCACertificates: System)".into(),
            });
        }
        tls.ca_pem = pems.concat();
    }
    if let Err(e) = crate::hostname::validate(&v.hostname) {
        tls.invalid = Some(format!("validation.hostname: {e}"));
    } else if v.hostname.starts_with('*') {
        tls.invalid = Some("validation.hostname must not be a wildcard".into());
    }
    for san in v.subject_alt_names.iter().flatten() {
        let name = match (&san.r#type, &san.hostname, &san.uri) {
            (SanType::Hostname, Some(h), _) => SubjectAltName::Hostname(h.to_ascii_lowercase()),
            (SanType::Uri, _, Some(u)) => SubjectAltName::Uri(u.clone()),
            (t, _, _) => {
                tls.invalid = Some(format!(
                    "a subjectAltNames entry of type {t:?} lacks its value"
                ));
                continue;
            }
        };
        tls.subject_alt_names.push(name);
    }
    Compiled { tls, unresolved }
}

/// For each Service, the Gateways of ours whose routes (HTTP, GRPC, TCP, TLS) send to it:
/// the ancestors a policy on it reports to.
fn service_gateways(
    inputs: &Inputs,
    controller_name: &str,
) -> BTreeMap<ObjectRef, BTreeSet<ObjectRef>> {
    let ours: BTreeSet<ObjectRef> =
        gateways_of(&inputs.gateway_classes, &inputs.gateways, controller_name)
            .map(|g| object_ref(&g.metadata))
            .collect();
    let sets = inputs.listener_set_parents();
    let mut out: BTreeMap<ObjectRef, BTreeSet<ObjectRef>> = BTreeMap::new();
    let mut add = |ns: &str, parents: Vec<ObjectRef>, refs: Vec<(Option<&str>, &str)>| {
        let parents: Vec<ObjectRef> = parents.into_iter().filter(|p| ours.contains(p)).collect();
        for (backend_ns, name) in refs {
            let service = ObjectRef::new(backend_ns.unwrap_or(ns), name);
            out.entry(service)
                .or_default()
                .extend(parents.iter().cloned());
        }
    };
    // Every route kind: the same shape in four generated types, whose rules and backendRefs
    // are lists (TCP, TLS) or optional lists (HTTP, GRPC). (A passed-through TLSRoute's
    // connections carry the client's own TLS, but its Gateway still sends to the Service;
    // the status's message says what the policy covers.)
    macro_rules! routes {
        ($routes:expr, $parents:path, |$r:ident| $backend_refs:expr) => {
            for $r in $routes {
                let refs = $backend_refs
                    .filter(|b| is_service(b.group.as_deref(), b.kind.as_deref()))
                    .map(|b| (b.namespace.as_deref(), b.name.as_str()))
                    .collect();
                add(&namespace_of(&$r.metadata), $parents($r, &sets), refs);
            }
        };
    }
    routes!(&inputs.http_routes, http_route_parents, |r| r
        .spec
        .rules
        .iter()
        .flatten()
        .flat_map(|rule| rule.backend_refs.iter().flatten()));
    routes!(&inputs.grpc_routes, grpc_route_parents, |r| r
        .spec
        .rules
        .iter()
        .flatten()
        .flat_map(|rule| rule.backend_refs.iter().flatten()));
    routes!(&inputs.tcp_routes, tcp_route_parents, |r| r
        .spec
        .rules
        .iter()
        .flat_map(|rule| rule.backend_refs.iter()));
    routes!(&inputs.tls_routes, tls_route_parents, |r| r
        .spec
        .rules
        .iter()
        .flat_map(|rule| rule.backend_refs.iter()));
    out
}

fn is_service(group: Option<&str>, kind: Option<&str>) -> bool {
    group.unwrap_or("").is_empty() && kind.unwrap_or("Service") == "Service"
}

/// The ConfigMaps BackendTLSPolicies name (the controller watches exactly these).
pub(crate) fn referenced_config_maps(inputs: &Inputs) -> BTreeSet<ObjectRef> {
    refs_of_kind(inputs, "ConfigMap")
}

/// The Secrets BackendTLSPolicies name as CA certificates.
pub(crate) fn referenced_secrets(inputs: &Inputs) -> BTreeSet<ObjectRef> {
    refs_of_kind(inputs, "Secret")
}

fn refs_of_kind(inputs: &Inputs, kind: &str) -> BTreeSet<ObjectRef> {
    inputs
        .backend_tls_policies
        .iter()
        .flat_map(|p| {
            let ns = namespace_of(&p.metadata);
            p.spec
                .validation
                .ca_certificate_refs
                .iter()
                .flatten()
                .filter(|r| r.group.is_empty() && r.kind == kind)
                .map(move |r| ObjectRef::new(ns.clone(), r.name.clone()))
        })
        .collect()
}
