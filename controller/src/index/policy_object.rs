//! Policies that protect something (AuthPolicy, BackendTLSPolicy) as the controller watches
//! them: read as far as this version can ([`portico_compile::unreadable`]), so that one it
//! cannot read whole still reaches compile.
//!
//! Every other kind decodes through its Rust type, and [`super::guard`] skips an object that
//! does not, as if it did not exist. For an AuthPolicy that would leave the routes it protects
//! serving unprotected, for a BackendTLSPolicy the Services it names reached in plaintext, so
//! their watches decode into [`PolicyObject`] instead: the typed policy, or an
//! [`UnreadablePolicy`] (metadata, the `targetRefs` that can be read, the error) that compile
//! attaches like a policy that does not compile (its targets' requests answer 500, its status
//! says why). The guard still logs it and counts it in
//! `portico_controller_unreadable_objects{kind}`, but keeps it in the store.
//!
//! One whose `targetRefs` cannot be read at all attaches nowhere (there is nothing to
//! protect that the controller can name): it is logged and counted, and its status keeps no
//! entry of ours. One whose metadata cannot be read has no name to report under: the guard
//! skips it as it would an object of any other kind.

use kube::Resource;
use kube::core::ObjectMeta;
use portico_compile::{PolicyRead, ProtectivePolicy, UnreadablePolicy, read_policy};
use portico_crds::auth::AuthPolicy;
use portico_crds::gateway_api::backendtlspolicies::BackendTlsPolicy;
use portico_crds::k8s_openapi::NamespaceResourceScope;
use portico_crds::policy::PolicyStatus;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;

/// A policy object as the API server holds it, read as far as this controller can.
#[derive(Clone, Debug)]
pub struct PolicyObject<P>(pub PolicyRead<P>);

pub type AuthPolicyObject = PolicyObject<AuthPolicy>;
pub type BackendTlsPolicyObject = PolicyObject<BackendTlsPolicy>;

impl<P: ProtectivePolicy> PolicyObject<P> {
    /// Why this controller cannot read the policy whole, if it cannot.
    pub fn unreadable(&self) -> Option<&str> {
        self.0.unreadable()
    }

    /// Its status as the cluster holds it (for the status writer to compare with).
    pub fn status(&self) -> Option<PolicyStatus> {
        self.0.status()
    }
}

/// The policies of `objects` this controller can read, and those it cannot: compile's two
/// inputs of their kind.
pub(super) fn split<'a, P: Clone + 'a>(
    objects: impl IntoIterator<Item = &'a PolicyObject<P>>,
) -> (Vec<P>, Vec<UnreadablePolicy>) {
    let mut readable = Vec::new();
    let mut unreadable = Vec::new();
    for o in objects {
        match &o.0 {
            PolicyRead::Readable(p) => readable.push((**p).clone()),
            PolicyRead::Unreadable(u) => unreadable.push((**u).clone()),
        }
    }
    (readable, unreadable)
}

impl<'de, P: ProtectivePolicy> Deserialize<'de> for PolicyObject<P> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = serde_json::Value::deserialize(deserializer)?;
        let read = read_policy::<P>(&object);
        if let PolicyRead::Unreadable(u) = &read
            && u.metadata.name.is_none()
        {
            // Nothing to attach or report under: the guard skips it and reports why.
            return Err(D::Error::custom(&u.error));
        }
        Ok(Self(read))
    }
}

/// The policy's resource, whichever way its object reads.
impl<P> Resource for PolicyObject<P>
where
    P: ProtectivePolicy + Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        P::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        P::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        P::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        P::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        P::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0.metadata()
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0.metadata_mut()
    }
}

#[cfg(test)]
mod tests;
