//! AuthPolicies as the controller watches them: read as far as this version can
//! ([`portico_compile::unreadable`]), so that one it cannot read whole still reaches compile.
//!
//! Every other kind decodes through its Rust type, and [`super::guard`] skips an object that
//! does not, as if it did not exist. For an AuthPolicy that would leave the routes it protects
//! serving unprotected, so its watch decodes into [`AuthPolicyObject`] instead: the typed
//! policy, or an [`UnreadableAuthPolicy`] (metadata, the `targetRefs` that can be read, the
//! error) that compile attaches like a policy that does not compile (its targets answer 500,
//! its status says `Unreadable` and why). The guard still logs it and counts it in
//! `portico_controller_unreadable_objects{kind="AuthPolicy"}`, but keeps it in the store.
//!
//! One whose `targetRefs` cannot be read at all attaches nowhere (there is nothing to
//! protect that the controller can name): it is logged and counted, and its status keeps no
//! entry of ours. One whose metadata cannot be read has no name to report under: the guard
//! skips it as it would an object of any other kind.

use kube::Resource;
use kube::core::ObjectMeta;
use portico_compile::{AuthPolicyRead, UnreadableAuthPolicy, read_auth_policy};
use portico_crds::auth::AuthPolicy;
use portico_crds::k8s_openapi::NamespaceResourceScope;
use portico_crds::policy::PolicyStatus;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;

/// An AuthPolicy object as the API server holds it, read as far as this controller can.
#[derive(Clone, Debug)]
pub struct AuthPolicyObject(pub AuthPolicyRead);

impl AuthPolicyObject {
    /// Why this controller cannot read the policy whole, if it cannot.
    pub fn unreadable(&self) -> Option<&str> {
        self.0.unreadable()
    }

    /// Its status as the cluster holds it (for the status writer to compare with).
    pub fn status(&self) -> Option<PolicyStatus> {
        self.0.status().cloned()
    }
}

/// The policies of `objects` this controller can read, and those it cannot: compile's two
/// AuthPolicy inputs.
pub(super) fn split<'a>(
    objects: impl IntoIterator<Item = &'a AuthPolicyObject>,
) -> (Vec<AuthPolicy>, Vec<UnreadableAuthPolicy>) {
    let mut readable = Vec::new();
    let mut unreadable = Vec::new();
    for o in objects {
        match &o.0 {
            AuthPolicyRead::Readable(p) => readable.push((**p).clone()),
            AuthPolicyRead::Unreadable(u) => unreadable.push((**u).clone()),
        }
    }
    (readable, unreadable)
}

impl<'de> Deserialize<'de> for AuthPolicyObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = serde_json::Value::deserialize(deserializer)?;
        let read = read_auth_policy(&object);
        if let AuthPolicyRead::Unreadable(u) = &read
            && u.metadata.name.is_none()
        {
            // Nothing to attach or report under: the guard skips it and reports why.
            return Err(D::Error::custom(&u.error));
        }
        Ok(Self(read))
    }
}

/// The AuthPolicy resource, whichever way its object reads.
impl Resource for AuthPolicyObject {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        AuthPolicy::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        AuthPolicy::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        AuthPolicy::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        AuthPolicy::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        AuthPolicy::plural(dt)
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
