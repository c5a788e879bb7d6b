//! How a snapshot carries Portico policies: one [`PolicySet`] of compiled policies per
//! snapshot, and one [`AttachedPolicies`] per route rule and route parent naming which of them
//! apply there. [`PolicyKind`] is the one list of kinds; adding a kind adds a variant there and
//! a field to each of the two structs, nothing else in this crate.
//!
//! The wire format is the one snapshots had before these types existed: both structs are
//! flattened into their parent, so a rule still carries `auth` and `rateLimit` next to its
//! matches and a snapshot `authPolicies` and `rateLimitPolicies` next to its routes. That
//! matters in both directions of an upgrade: a dataplane reads the snapshot it saved to disk
//! before the upgrade, and an older dataplane reading a newer controller's snapshot does not
//! silently drop a policy it would have enforced (it ignores unknown fields, so a renamed
//! field would have served the route unprotected).

use crate::object::ObjectRef;
use crate::{auth, cache, ratelimit};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A kind of Portico policy. Status, logs and the controller's watches name policies by it;
/// compile keys a policy's status and dependencies by (kind, object).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    /// `AuthPolicy`: authentication and authorization. Fails closed when it does not compile.
    #[serde(rename = "AuthPolicy")]
    Auth,
    /// `RateLimitPolicy`: local and global request limits. Does not attach when it does not
    /// compile.
    #[serde(rename = "RateLimitPolicy")]
    RateLimit,
    /// `BackendPolicy`: how a Service's endpoints are balanced, health-checked, retried and
    /// protected. Attaches to Services, not to routes: compiled into the snapshot's
    /// `backends[]`, not named by [`AttachedPolicies`]. Does not attach when it does not
    /// compile.
    #[serde(rename = "BackendPolicy")]
    Backend,
    /// `CachePolicy`: response caching. Does not attach when it does not compile (the
    /// routes are then served uncached).
    #[serde(rename = "CachePolicy")]
    Cache,
    /// `CacheInvalidation`: purges cached responses. Not a policy that applies to requests,
    /// but attached the same way and reporting the same per-target status; carried by the
    /// snapshot's `purges`, not named by [`AttachedPolicies`]. Many apply to one target.
    #[serde(rename = "CacheInvalidation")]
    Invalidation,
}

impl PolicyKind {
    /// Every kind, in the order requests meet them (authentication before rate limits, so a
    /// limit can be keyed by who the request is, and both before the backend).
    /// The cache comes after both: a cached answer is for the requests that got that far.
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::Auth,
        PolicyKind::RateLimit,
        PolicyKind::Cache,
        PolicyKind::Backend,
        PolicyKind::Invalidation,
    ];

    /// The Kubernetes kind of the policy's CRD.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Auth => "AuthPolicy",
            PolicyKind::RateLimit => "RateLimitPolicy",
            PolicyKind::Backend => "BackendPolicy",
            PolicyKind::Cache => "CachePolicy",
            PolicyKind::Invalidation => "CacheInvalidation",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The policy of each kind that applies to one route rule or route parent, by the id of a
/// policy in the snapshot's [`PolicySet`].
///
/// On a rule it is the rule's own policy (or else its HTTPRoute's) and overrides the parent's;
/// on a route parent it is the listener's (or else the Gateway's), for rules with none of
/// their own. The most specific policy of a kind applies whole.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachedPolicies {
    /// The [`PolicyKind::Auth`] policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ObjectRef>,
    /// The [`PolicyKind::RateLimit`] policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<ObjectRef>,
    /// The [`PolicyKind::Cache`] policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<ObjectRef>,
}

impl AttachedPolicies {
    /// The policy of `kind`, if one applies (never one of a kind not [`PolicyKind::on_routes`]).
    pub fn get(&self, kind: PolicyKind) -> Option<&ObjectRef> {
        match kind {
            PolicyKind::Auth => self.auth.as_ref(),
            PolicyKind::RateLimit => self.rate_limit.as_ref(),
            PolicyKind::Cache => self.cache.as_ref(),
            PolicyKind::Backend | PolicyKind::Invalidation => None,
        }
    }

    /// Sets (or clears) the policy of `kind`; a kind not [`PolicyKind::on_routes`] is not
    /// named here, and setting it does nothing.
    pub fn set(&mut self, kind: PolicyKind, policy: Option<ObjectRef>) {
        match kind {
            PolicyKind::Auth => self.auth = policy,
            PolicyKind::RateLimit => self.rate_limit = policy,
            PolicyKind::Cache => self.cache = policy,
            PolicyKind::Backend | PolicyKind::Invalidation => {}
        }
    }
}

/// The compiled policies a snapshot's rules and parents name, each list sorted by id. Only
/// the policies some route uses are sent, so a dataplane holds no credentials it never needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySet {
    /// The [`PolicyKind::Auth`] policies.
    #[serde(
        rename = "authPolicies",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub auth: Vec<auth::AuthPolicy>,
    /// The [`PolicyKind::RateLimit`] policies.
    #[serde(
        rename = "rateLimitPolicies",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub rate_limit: Vec<ratelimit::RateLimitPolicy>,
    /// The [`PolicyKind::Cache`] policies.
    #[serde(
        rename = "cachePolicies",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cache: Vec<cache::CachePolicy>,
}

impl PolicySet {
    /// The ids of the policies of `kind`, in order.
    pub fn ids(&self, kind: PolicyKind) -> Vec<&ObjectRef> {
        match kind {
            PolicyKind::Auth => self.auth.iter().map(|p| &p.id).collect(),
            PolicyKind::RateLimit => self.rate_limit.iter().map(|p| &p.id).collect(),
            PolicyKind::Cache => self.cache.iter().map(|p| &p.id).collect(),
            // Carried by the backends they apply to, and by the snapshot's purges.
            PolicyKind::Backend | PolicyKind::Invalidation => Vec::new(),
        }
    }
}
