//! What every Portico policy shares: the `targetRefs` of Gateway API policy attachment and the
//! per-ancestor status it reports.

// KubeSchema's derive copies each struct into a private module to build its schema; the
// copies are what this lint sees.
#![allow(unreachable_pub)]

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A Gateway, one of its listeners, a ListenerSet, one of its listeners, an HTTPRoute or one
/// of its rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.group == 'gateway.networking.k8s.io'").message("targetRefs may only name Gateway API objects (group gateway.networking.k8s.io)"))]
#[x_kube(validation = Rule::new("self.kind in ['Gateway', 'ListenerSet', 'HTTPRoute']").message("targetRefs kind must be Gateway, ListenerSet or HTTPRoute"))]
pub struct PolicyTargetRef {
    /// The API group of the target: `gateway.networking.k8s.io`.
    #[schemars(length(max = 253))]
    pub group: String,
    /// `Gateway`, `ListenerSet` or `HTTPRoute`.
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// The target's name, in the policy's own namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// A listener name when the target is a Gateway or a ListenerSet, a rule name when it is
    /// an HTTPRoute.
    /// Without it the policy applies to the whole target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

/// A key of a Secret in the policy's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name, in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in the Secret's `data`. Each mechanism documents its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// Status of a policy, one entry per target it names (Gateway API `PolicyStatus`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// One entry per target (the `ancestorRef` is the target itself), written by the
    /// controller named in `controllerName`.
    #[serde(default)]
    pub ancestors: Vec<PolicyAncestorStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    pub ancestor_ref: AncestorRef,
    /// `portico.dev/gateway-controller`.
    pub controller_name: String,
    /// `Accepted` (reasons `Accepted`, `Conflicted`, `TargetNotFound`, `Invalid`) and
    /// `ResolvedRefs` (reasons `ResolvedRefs`, `InvalidRef`).
    #[serde(default)]
    pub conditions: Vec<PolicyCondition>,
}

/// The Gateway API API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// An ancestor, as the Gateway API's `ParentReference`: what other controllers write in a
/// shared status reads back whole (their omitted `group`, `kind` and `namespace` taking the
/// API's defaults, their `port` kept), so rewriting ours never drops theirs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AncestorRef {
    #[serde(default = "gateway_group")]
    pub group: String,
    #[serde(default = "gateway_kind")]
    pub kind: String,
    /// Omitted: the policy's own namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

fn gateway_group() -> String {
    GATEWAY_GROUP.to_string()
}

fn gateway_kind() -> String {
    "Gateway".to_string()
}

/// A status condition (the shape of `metav1.Condition`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339 time of the last change of `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_controllers_ancestor_reads_back_whole() {
        // As the Gateway API lets a controller write it: group, kind and namespace left to
        // their defaults, a port given.
        let theirs = serde_json::json!({"ancestors": [{
            "ancestorRef": {"name": "gw", "port": 443},
            "controllerName": "example.com/other",
            "conditions": []}]});
        let status: PolicyStatus = serde_json::from_value(theirs).expect("decodes");
        let a = &status.ancestors[0].ancestor_ref;
        assert_eq!(
            (a.group.as_str(), a.kind.as_str()),
            (GATEWAY_GROUP, "Gateway")
        );
        let back = serde_json::to_value(&status).expect("encodes");
        assert_eq!(
            back["ancestors"][0]["ancestorRef"],
            serde_json::json!({"group": GATEWAY_GROUP, "kind": "Gateway", "name": "gw", "port": 443}),
            "its namespace stays omitted, its port kept"
        );
    }
}
