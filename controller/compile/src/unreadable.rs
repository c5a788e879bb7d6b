//! Policies this version of Portico cannot read whole, and what can still be read of them.
//!
//! The API server validates an object against the CRD installed, which may be newer than the
//! controller reading it (a CRD upgraded ahead of the controller, a rollout half done): a
//! policy can carry an enum value (a JWT algorithm, a subjectAltName type) or a field (a
//! mechanism, a restriction, a validation option) that Portico's Rust types do not have. The
//! controller's watches skip such an object as if it did not exist, which is safe for a route
//! or a rate limit but not for a policy that protects something: an AuthPolicy's routes would
//! serve unprotected, a BackendTLSPolicy's Services would get plaintext. So those kinds
//! ([`ProtectivePolicy`]) are read with [`read_policy`]: the typed policy when all of its spec is
//! understood, else an [`UnreadablePolicy`] with what can be read (its metadata and the
//! `targetRefs` that decode), which compile attaches exactly like a policy that does not
//! compile: its targets' requests are refused (500) and its status says why ([`crate::auth`],
//! [`crate::backend_tls`]).
//!
//! A field of the spec this version does not know makes the policy unreadable too, rather than
//! being ignored: ignoring it would enforce less than the user wrote (a newer mechanism or
//! restriction dropped without a word). The API server prunes fields its CRD does not declare,
//! so such a field only ever arrives from a CRD newer than the controller.
//!
//! When not one `targetRef` can be read, the policy names nothing this version can find: it
//! attaches nowhere, protects nothing, and its status lists no target (so no entry of ours is
//! left claiming it applies). Its error says so, and the controller logs and counts it
//! (`portico_controller_unreadable_objects`); nothing more can be done with it.
//!
//! A leaf of the crate, like [`crate::refs`]: [`crate::inputs`] holds these and the passes read
//! them.

use portico_crds::auth::AuthPolicy;
use portico_crds::gateway_api::backendtlspolicies::BackendTlsPolicy;
use portico_crds::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portico_crds::policy::{PolicyStatus, PolicyTargetRef};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What can be read of a policy this version of Portico cannot read whole.
#[derive(Clone, Debug, PartialEq)]
pub struct UnreadablePolicy {
    /// Its metadata: the name and namespace it answers to, the creationTimestamp that orders it
    /// among the policies of a target, the generation its status observes.
    pub metadata: ObjectMeta,
    /// The `targetRefs` that could be read, each on its own; empty when none could.
    pub target_refs: Vec<PolicyTargetRef>,
    /// Why the policy cannot be read (the decoding error, or the fields this version does not
    /// know), and which `targetRefs` could not be read either.
    pub error: String,
    /// Its status, if that can be read. Compile ignores it (as it ignores a typed policy's);
    /// the controller's status writer compares with it and keeps other controllers' entries.
    pub status: Option<PolicyStatus>,
}

impl UnreadablePolicy {
    /// The policy from what the typed decoding of `object` left readable; `error` says why it
    /// failed.
    fn salvage(object: &Value, error: String) -> Self {
        // Metadata an API server sends always decodes; should it not, the name is missing
        // and the caller has nothing to attach it to (the controller then skips the object).
        let metadata = object
            .get("metadata")
            .and_then(|m| ObjectMeta::deserialize(m).ok())
            .unwrap_or_default();
        let mut target_refs = Vec::new();
        let mut unread = Vec::new();
        match object.pointer("/spec/targetRefs") {
            Some(Value::Array(refs)) => {
                for (i, r) in refs.iter().enumerate() {
                    match PolicyTargetRef::deserialize(r) {
                        Ok(t) => target_refs.push(t),
                        Err(e) => unread.push(format!("spec.targetRefs[{i}] ({e})")),
                    }
                }
            }
            Some(_) => unread.push("spec.targetRefs (not a list)".to_string()),
            None => unread.push("spec.targetRefs (missing)".to_string()),
        }
        let error = match (target_refs.is_empty(), unread.is_empty()) {
            (false, true) => error,
            (false, false) => format!(
                "{error}; {} cannot be read either and is not protected by it",
                unread.join(", ")
            ),
            (true, true) => format!("{error}; it names no target, so it protects nothing"),
            (true, false) => format!(
                "{error}; no target can be read either ({}), so it protects nothing",
                unread.join(", ")
            ),
        };
        let status = object
            .get("status")
            .and_then(|s| PolicyStatus::deserialize(s).ok());
        Self {
            metadata,
            target_refs,
            error,
            status,
        }
    }
}

/// A policy kind whose objects are read in part when they cannot be read whole: one whose
/// absence would weaken what it protects (an AuthPolicy's routes served unauthenticated, a
/// BackendTLSPolicy's Services sent plaintext).
pub trait ProtectivePolicy: DeserializeOwned {
    fn metadata(&self) -> &ObjectMeta;
    fn metadata_mut(&mut self) -> &mut ObjectMeta;
    /// Its `targetRefs`, in the shape every policy kind here shares.
    fn target_refs(&self) -> Vec<PolicyTargetRef>;
    /// Its status, in the shape every policy kind here shares (ancestors with their
    /// controllers and conditions).
    fn policy_status(&self) -> Option<PolicyStatus>;
}

impl ProtectivePolicy for AuthPolicy {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn target_refs(&self) -> Vec<PolicyTargetRef> {
        self.spec.target_refs.clone()
    }

    fn policy_status(&self) -> Option<PolicyStatus> {
        self.status.clone()
    }
}

impl ProtectivePolicy for BackendTlsPolicy {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn target_refs(&self) -> Vec<PolicyTargetRef> {
        self.spec
            .target_refs
            .iter()
            .map(|t| PolicyTargetRef {
                group: t.group.clone(),
                kind: t.kind.clone(),
                name: t.name.clone(),
                section_name: t.section_name.clone(),
            })
            .collect()
    }

    /// The Gateway API's policy status has the same shape as ours.
    fn policy_status(&self) -> Option<PolicyStatus> {
        let status = serde_json::to_value(self.status.as_ref()?).ok()?;
        PolicyStatus::deserialize(status).ok()
    }
}

/// A policy object as this version reads it. (Not a `Result`: an unreadable policy is not a
/// failure to report and drop but an input compile attaches.) Both boxed, as their sizes
/// differ by hundreds of bytes.
#[derive(Clone, Debug)]
pub enum PolicyRead<P> {
    /// Every field of its spec is one this version knows.
    Readable(Box<P>),
    /// It cannot be read whole: what can be, and why the rest cannot.
    Unreadable(Box<UnreadablePolicy>),
}

pub type AuthPolicyRead = PolicyRead<AuthPolicy>;
pub type BackendTlsPolicyRead = PolicyRead<BackendTlsPolicy>;

impl<P: ProtectivePolicy> PolicyRead<P> {
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            PolicyRead::Readable(p) => p.metadata(),
            PolicyRead::Unreadable(p) => &p.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            PolicyRead::Readable(p) => p.metadata_mut(),
            PolicyRead::Unreadable(p) => &mut p.metadata,
        }
    }

    /// Its status, as far as it could be read.
    pub fn status(&self) -> Option<PolicyStatus> {
        match self {
            PolicyRead::Readable(p) => p.policy_status(),
            PolicyRead::Unreadable(p) => p.status.clone(),
        }
    }

    /// Why it cannot be read whole, if it cannot.
    pub fn unreadable(&self) -> Option<&str> {
        match self {
            PolicyRead::Readable(_) => None,
            PolicyRead::Unreadable(p) => Some(&p.error),
        }
    }
}

/// Reads a policy object (as the API server sends it, or as a manifest holds it): the typed
/// policy when every field of its spec is one this version knows, else what can be read of
/// it and why the rest cannot.
pub fn read_policy<P: ProtectivePolicy>(object: &Value) -> PolicyRead<P> {
    let mut unknown = Vec::new();
    let decoded: Result<P, _> = serde_ignored::deserialize(object, |path| {
        let path = field_path(&path);
        // Metadata and status are not enforced; kind and apiVersion are read elsewhere.
        if path.starts_with("spec.") {
            unknown.push(path);
        }
    });
    let error = match decoded {
        Ok(policy) if unknown.is_empty() => return PolicyRead::Readable(Box::new(policy)),
        Ok(_) => unknown_fields(&unknown),
        Err(e) => e.to_string(),
    };
    PolicyRead::Unreadable(Box::new(UnreadablePolicy::salvage(object, error)))
}

/// Says which fields of a spec this version does not know.
pub(crate) fn unknown_fields(paths: &[String]) -> String {
    match paths {
        [one] => format!("{one} is a field this version does not know"),
        many => format!("{} are fields this version does not know", many.join(", ")),
    }
}

/// A policy whose spec holds fields this version does not know (`unknown`, as
/// [`field_path`] names them), as unreadable: for a manifest read with unknown fields allowed,
/// which would otherwise enforce the policy without them.
pub(crate) fn with_unknown_fields<P: ProtectivePolicy>(
    policy: P,
    unknown: &[String],
) -> UnreadablePolicy {
    UnreadablePolicy {
        metadata: policy.metadata().clone(),
        target_refs: policy.target_refs(),
        error: unknown_fields(unknown),
        status: policy.policy_status(),
    }
}

/// `spec.rules[0].backendRef`, as kubectl names a field.
pub(crate) fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let p = field_path(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

#[cfg(test)]
mod tests;
