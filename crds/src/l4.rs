//! Gateway API route kinds of the standard channel that the `gateway-api` crate (generated
//! from v1.5.1) has only at `v1alpha2`: `TCPRoute` and `UDPRoute` became `v1` in v1.6, and
//! the standard channel serves no other version, so Portico watches and patches `v1`.
//!
//! The spec's parts have the same schema at both versions (`v1` narrows `rules` to one), so
//! they are the crate's; only the root names the version. Their CRDs are Gateway API's own,
//! installed from its release (the tests fetch them from the Go module), never generated here.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use gateway_api::experimental::tcproutes::{
    TcpRouteParentRefs, TcpRouteRules, TcpRouteRulesBackendRefs, TcpRouteStatus,
};
pub use gateway_api::experimental::udproutes::{
    UdpRouteParentRefs, UdpRouteRules, UdpRouteRulesBackendRefs, UdpRouteStatus,
};

/// `TCPRoute` (`gateway.networking.k8s.io/v1`): connections of a TCP listener forwarded to
/// weighted backends.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "TCPRoute",
    root = "TcpRoute",
    plural = "tcproutes",
    namespaced,
    status = "TcpRouteStatus",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct TcpRouteSpec {
    /// The Gateways (or their listeners) the route attaches to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_refs: Option<Vec<TcpRouteParentRefs>>,
    /// Exactly one in `v1`; where its connections go.
    #[serde(default)]
    pub rules: Vec<TcpRouteRules>,
}

/// `UDPRoute` (`gateway.networking.k8s.io/v1`): datagrams of a UDP listener forwarded to
/// weighted backends, each client address a flow of its own.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "UDPRoute",
    root = "UdpRoute",
    plural = "udproutes",
    namespaced,
    status = "UdpRouteStatus",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct UdpRouteSpec {
    /// The Gateways (or their listeners) the route attaches to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_refs: Option<Vec<UdpRouteParentRefs>>,
    /// Exactly one in `v1`; where its datagrams go.
    #[serde(default)]
    pub rules: Vec<UdpRouteRules>,
}
