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
//! targets by answering 500 (it never leaves them open); so does one this version cannot read
//! ([`crate::unreadable`]), which takes part in precedence and conflicts exactly like one that
//! does not compile, with reason `Unreadable`. A Secret that cannot be read leaves its
//! mechanism without credentials (nobody gets in by it).

use crate::inputs::Inputs;
use crate::policy::{Attachments, References, Targets, Verdict, oldest_first};
use crate::refs::{namespace_of, object_ref};
use crate::status::{StatusReport, reasons};
use crate::unreadable::UnreadablePolicy;
use mechanisms::{compile_policy, refusing};
use portico_crds::auth::{AuthPolicy, AuthPolicySpec};
use portico_crds::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portico_crds::policy::{PolicyTargetRef, SecretKeyRef};
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

/// An AuthPolicy as compile meets it: one it can read, or what could be read of one.
#[derive(Clone, Copy)]
enum Source<'a> {
    Readable(&'a AuthPolicy),
    Unreadable(&'a UnreadablePolicy),
}

impl<'a> Source<'a> {
    fn metadata(&self) -> &'a ObjectMeta {
        match self {
            Source::Readable(p) => &p.metadata,
            Source::Unreadable(p) => &p.metadata,
        }
    }

    fn target_refs(&self) -> &'a [PolicyTargetRef] {
        match self {
            Source::Readable(p) => &p.spec.target_refs,
            Source::Unreadable(p) => &p.target_refs,
        }
    }
}

/// Compiles every AuthPolicy, decides attachment and writes each one's status. Readable and
/// unreadable policies claim targets in one order (oldest first), so precedence and conflicts
/// do not depend on whether a policy could be read.
pub(crate) fn resolve(
    inputs: &Inputs,
    targets: &Targets,
    status: &mut StatusReport,
) -> AuthPolicies {
    let mut out = AuthPolicies::default();
    let all: Vec<Source<'_>> = inputs
        .auth_policies
        .iter()
        .map(Source::Readable)
        .chain(
            inputs
                .unreadable_auth_policies
                .iter()
                .map(Source::Unreadable),
        )
        .collect();
    for policy in oldest_first(&all, |p| p.metadata()) {
        let meta = policy.metadata();
        let id = object_ref(meta);
        let mut unresolved = Vec::new();
        let (compiled, references) = match policy {
            Source::Readable(p) => {
                let compiled = compile_policy(&id, &p.spec, &inputs.secret_view(), &mut unresolved);
                (
                    compiled,
                    References::Read {
                        unresolved: &unresolved,
                    },
                )
            }
            Source::Unreadable(p) => {
                let reason = format!(
                    "this version of Portico cannot read the AuthPolicy ({})",
                    p.error
                );
                (refusing(&id, reason), References::Unreadable)
            }
        };
        // Either way a broken policy still attaches: its targets answer 500 rather than go
        // open.
        let verdict = |_: &_| match (&compiled.invalid, &references) {
            (None, _) => Verdict::Applies,
            (Some(reason), References::Unreadable) => Verdict::AttachedInvalid {
                reason: reasons::UNREADABLE,
                message: format!(
                    "{reason}; requests to this target are refused until the policy is fixed \
                     or Portico is upgraded to a release that reads it"
                ),
            },
            (Some(reason), References::Read { .. }) => Verdict::AttachedInvalid {
                reason: reasons::INVALID,
                message: format!("{reason}; requests to this target are refused until it is fixed"),
            },
        };
        let s = out.attached.claim(
            PolicyKind::Auth,
            meta,
            policy.target_refs(),
            targets,
            verdict,
            &references,
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
