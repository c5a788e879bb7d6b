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

use crate::inputs::Inputs;
use crate::policy::{Attachments, Targets, Verdict, oldest_first};
use crate::refs::{namespace_of, object_ref};
use crate::status::StatusReport;
use mechanisms::compile_policy;
use portico_crds::auth::AuthPolicySpec;
use portico_crds::policy::SecretKeyRef;
use portico_model::auth as model;
use portico_model::{ObjectRef, PolicyKind, Snapshot};
use std::collections::{BTreeMap, BTreeSet};

mod mechanisms;

/// The policies that apply, by target, compiled.
#[derive(Debug, Default)]
pub(crate) struct AuthPolicies {
    pub(crate) attached: Attachments,
    compiled: BTreeMap<ObjectRef, model::AuthPolicy>,
}

/// Compiles every AuthPolicy, decides attachment and writes each one's status.
pub(crate) fn resolve(
    inputs: &Inputs,
    targets: &Targets,
    status: &mut StatusReport,
) -> AuthPolicies {
    let mut out = AuthPolicies::default();
    for policy in oldest_first(&inputs.auth_policies, |p| &p.metadata) {
        let id = object_ref(&policy.metadata);
        let mut unresolved = Vec::new();
        let compiled = compile_policy(&id, &policy.spec, &inputs.secret_view(), &mut unresolved);
        let verdict = |_: &_| match &compiled.invalid {
            // It still attaches: its targets answer 500 rather than go open.
            Some(reason) => Verdict::AttachedInvalid(reason.clone()),
            None => Verdict::Applies,
        };
        let s = out.attached.claim(
            PolicyKind::Auth,
            &policy.metadata,
            &policy.spec.target_refs,
            targets,
            verdict,
            &unresolved,
        );
        status.policies.insert((PolicyKind::Auth, id.clone()), s);
        out.compiled.insert(id, compiled);
    }
    out
}

impl AuthPolicies {
    /// The compiled policy `id`.
    pub(crate) fn policy(&self, id: &ObjectRef) -> Option<&model::AuthPolicy> {
        self.compiled.get(id)
    }

    /// Names each route rule's and route parent's policy in `snapshot` and adds the policies
    /// it uses.
    pub(crate) fn attach(&self, snapshot: &mut Snapshot) {
        let used = self.attached.name_in(snapshot, PolicyKind::Auth);
        snapshot.policies.auth = used
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
