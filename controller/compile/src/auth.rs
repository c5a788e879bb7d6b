//! AuthPolicy attachment: which policy protects which rule and each policy's status; the
//! policy itself, with its Secrets resolved, is compiled by [`mechanisms`].
//!
//! ```text
//!   AuthPolicy ──targetRefs──▶ Gateway [listener]      ─┐ route parents
//!                           └▶ HTTPRoute [rule]         ─┘ route rules
//!                 ──secretRefs──▶ Secret (API keys, htpasswd, HMAC key, JWKS, client secret)
//! ```
//!
//! Precedence: rule over route over listener over Gateway, the most specific policy applies
//! whole. On one target the oldest policy (creationTimestamp, then namespace/name) wins and
//! the others are `Conflicted`. Everything the API server's CEL rules check is checked again
//! here, since standalone mode has no API server. A policy that does not compile protects its
//! targets by answering 500 (it never leaves them open); a Secret that cannot be read leaves
//! its mechanism without credentials (nobody gets in by it).

use crate::status::{
    AncestorRef, Condition, PolicyAncestorStatus, PolicyStatus, StatusReport, reasons, types,
};
use crate::{Inputs, namespace_of, object_ref};
use mechanisms::compile_policy;
use portico_crds::GATEWAY_GROUP;
use portico_crds::auth::{AuthPolicy, AuthPolicySpec};
use portico_crds::policy::{PolicyTargetRef, SecretKeyRef};
use portico_model::auth as model;
use portico_model::{ObjectRef, RouteKind, Snapshot};
use std::collections::{BTreeMap, BTreeSet};

mod mechanisms;

/// What a policy attaches to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    /// A Gateway, or one of its listeners.
    Gateway(ObjectRef, Option<String>),
    /// An HTTPRoute, or one of its rules.
    Route(ObjectRef, Option<String>),
}

/// The policies that apply, by target, compiled.
#[derive(Debug, Default)]
pub(crate) struct AuthPolicies {
    by_target: BTreeMap<Target, ObjectRef>,
    compiled: BTreeMap<ObjectRef, model::AuthPolicy>,
}

/// Compiles every AuthPolicy, decides attachment and writes each one's status.
pub(crate) fn resolve(
    inputs: &Inputs,
    controller_name: &str,
    status: &mut StatusReport,
) -> AuthPolicies {
    let gateways: BTreeMap<ObjectRef, BTreeSet<String>> =
        crate::gateways_of(inputs, controller_name)
            .map(|g| {
                let listeners = g.spec.listeners.iter().map(|l| l.name.clone()).collect();
                (object_ref(&g.metadata), listeners)
            })
            .collect();
    let routes: BTreeMap<ObjectRef, BTreeSet<String>> = inputs
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

    let mut ordered: Vec<&AuthPolicy> = inputs.auth_policies.iter().collect();
    ordered.sort_by(|a, b| {
        let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        ta.cmp(&tb)
            .then_with(|| object_ref(&a.metadata).cmp(&object_ref(&b.metadata)))
    });

    let mut out = AuthPolicies::default();
    for policy in ordered {
        let id = object_ref(&policy.metadata);
        let generation = policy.metadata.generation;
        let mut unresolved = Vec::new();
        let compiled = compile_policy(&id, &policy.spec, &inputs.secrets, &mut unresolved);
        let invalid = compiled.invalid.clone();
        let mut ancestors = Vec::new();
        for t in &policy.spec.target_refs {
            let accepted = match attach_to(t, &id.namespace, &gateways, &routes) {
                Err(TargetError::Invalid(message)) => (false, reasons::INVALID, message),
                Err(TargetError::NotFound(message)) => (false, reasons::TARGET_NOT_FOUND, message),
                Ok(target) => match out.by_target.get(&target) {
                    Some(winner) if *winner != id => (
                        false,
                        reasons::CONFLICTED,
                        format!("the older AuthPolicy {winner} already applies to this target"),
                    ),
                    _ => {
                        out.by_target.insert(target, id.clone());
                        match &invalid {
                            // It still attaches: its targets answer 500 rather than go open.
                            Some(reason) => (
                                false,
                                reasons::INVALID,
                                format!(
                                    "{reason}; requests to this target are refused until it is fixed"
                                ),
                            ),
                            None => (true, reasons::ACCEPTED, "policy applies".to_string()),
                        }
                    }
                },
            };
            let (ok, reason, message) = accepted;
            let resolved = if unresolved.is_empty() {
                Condition::new(
                    types::RESOLVED_REFS,
                    true,
                    reasons::RESOLVED_REFS,
                    "all Secrets resolved",
                    generation,
                )
            } else {
                Condition::new(
                    types::RESOLVED_REFS,
                    false,
                    reasons::INVALID_REF,
                    unresolved.join("; "),
                    generation,
                )
            };
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
        status
            .auth_policies
            .insert(id.clone(), PolicyStatus { ancestors });
        out.compiled.insert(id, compiled);
    }
    out
}

/// Why a `targetRef` does not attach.
enum TargetError {
    /// It names something a policy cannot target.
    Invalid(String),
    /// It names something that does not exist (or is not ours).
    NotFound(String),
}

/// The target a `targetRef` names, if it exists.
fn attach_to(
    t: &PolicyTargetRef,
    namespace: &str,
    gateways: &BTreeMap<ObjectRef, BTreeSet<String>>,
    routes: &BTreeMap<ObjectRef, BTreeSet<String>>,
) -> Result<Target, TargetError> {
    use TargetError::{Invalid, NotFound};
    if t.group != GATEWAY_GROUP {
        return Err(Invalid(format!(
            "group {:?} is not {GATEWAY_GROUP}",
            t.group
        )));
    }
    let id = ObjectRef::new(namespace, t.name.clone());
    let section = t.section_name.clone();
    match t.kind.as_str() {
        "Gateway" => {
            let Some(listeners) = gateways.get(&id) else {
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
        "HTTPRoute" => {
            let Some(rules) = routes.get(&id) else {
                return Err(NotFound(format!("HTTPRoute {id} does not exist")));
            };
            if let Some(s) = &section
                && !rules.contains(s)
            {
                return Err(NotFound(format!("HTTPRoute {id} has no rule named {s:?}")));
            }
            Ok(Target::Route(id, section))
        }
        other => Err(Invalid(format!(
            "kind {other:?} cannot be targeted; use Gateway or HTTPRoute"
        ))),
    }
}

impl AuthPolicies {
    fn get(&self, t: &Target) -> Option<&ObjectRef> {
        self.by_target.get(t)
    }

    /// Names each route rule's and route parent's policy in `snapshot` and adds the policies
    /// it uses.
    pub(crate) fn attach(&self, snapshot: &mut Snapshot) {
        if self.by_target.is_empty() {
            return;
        }
        let gw = snapshot.gateway.clone();
        let mut used = BTreeSet::new();
        for route in &mut snapshot.routes {
            for parent in &mut route.parents {
                parent.auth = self
                    .get(&Target::Gateway(gw.clone(), Some(parent.listener.clone())))
                    .or_else(|| self.get(&Target::Gateway(gw.clone(), None)))
                    .cloned();
                used.extend(parent.auth.clone());
            }
            if route.kind != RouteKind::Http {
                continue;
            }
            let whole = self.get(&Target::Route(route.id.clone(), None));
            for rule in &mut route.rules {
                let own = rule
                    .name
                    .as_ref()
                    .and_then(|n| self.get(&Target::Route(route.id.clone(), Some(n.clone()))));
                rule.auth = own.or(whole).cloned();
                used.extend(rule.auth.clone());
            }
        }
        snapshot.auth_policies = used
            .iter()
            .filter_map(|id| self.compiled.get(id).cloned())
            .collect();
    }
}

/// The Secrets the policies of `inputs` read (the controller watches exactly these).
pub(crate) fn referenced_secrets(inputs: &Inputs) -> BTreeSet<ObjectRef> {
    let mut out = BTreeSet::new();
    for p in &inputs.auth_policies {
        let ns = namespace_of(&p.metadata);
        for r in secret_refs(&p.spec) {
            out.insert(ObjectRef::new(ns.clone(), r.name.clone()));
        }
    }
    out
}

pub(crate) fn secret_refs(spec: &AuthPolicySpec) -> Vec<&SecretKeyRef> {
    let mut refs = Vec::new();
    if let Some(j) = &spec.jwt {
        refs.extend(j.jwks_secret_ref.iter().chain(j.hmac_secret_ref.iter()));
    }
    if let Some(k) = &spec.api_key {
        refs.extend(k.secret_refs.iter());
    }
    if let Some(b) = &spec.basic {
        refs.push(&b.secret_ref);
    }
    if let Some(i) = &spec.introspection {
        refs.push(&i.client_secret_ref);
    }
    refs
}

/// The Gateways and HTTPRoutes a policy targets (for recompiling what a change touches).
pub(crate) fn targets(p: &AuthPolicy) -> impl Iterator<Item = (&str, ObjectRef)> {
    let ns = namespace_of(&p.metadata);
    p.spec
        .target_refs
        .iter()
        .map(move |t| (t.kind.as_str(), ObjectRef::new(ns.clone(), t.name.clone())))
}
