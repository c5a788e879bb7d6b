//! Where each Gateway's dataplane runs: in the one dataplane namespace (the default), or,
//! for the namespaces the installer lists, beside its Gateway.
//!
//! ```text
//!   Gateway team-a/web  (team-a not listed) ─▶ <dataplane namespace>/portico-team-a-web-<hash>
//!   Gateway team-b/api  (team-b listed)     ─▶ team-b/portico-team-b-api-<hash>
//! ```
//!
//! The provisioner writes a dataplane's objects there, the snapshot channel admits its
//! ServiceAccount from there, and the Gateway reports the addresses of its Service there;
//! all three ask this one type, so they cannot disagree.
//!
//! A dataplane beside its Gateway runs as the ServiceAccount the installer made in that
//! namespace ([`Placement::beside_account`]), not one the controller makes: the controller
//! then needs no right to create ServiceAccounts or RoleBindings outside the dataplane
//! namespace, only a Role per listed namespace for the workload objects.

use std::collections::BTreeSet;

/// Where dataplanes run (the controller's `--dataplane-namespace` and
/// `--gateway-namespaces`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The dataplane namespace: every Gateway's dataplane not placed beside it.
    pub namespace: String,
    /// Namespaces whose Gateways' dataplanes run in the Gateway's own namespace.
    pub beside: BTreeSet<String>,
    /// The ServiceAccount (made by the installer in each namespace of `beside`) those
    /// dataplanes run as.
    pub beside_account: String,
}

impl Placement {
    /// Every dataplane in `namespace`.
    pub fn one_namespace(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            ..Self::default()
        }
    }

    /// Whether the dataplanes of Gateways in `gateway_namespace` run beside them.
    pub fn is_beside(&self, gateway_namespace: &str) -> bool {
        self.beside.contains(gateway_namespace)
    }

    /// The namespace of the dataplane of a Gateway in `gateway_namespace`.
    pub fn namespace_for<'a>(&'a self, gateway_namespace: &'a str) -> &'a str {
        if self.is_beside(gateway_namespace) {
            gateway_namespace
        } else {
            &self.namespace
        }
    }

    /// The ServiceAccount (namespace, name) the dataplane of Gateway
    /// `gateway_namespace/gateway` runs as: the only one the snapshot channel serves that
    /// Gateway to.
    pub fn account_for(&self, gateway_namespace: &str, gateway: &str) -> (String, String) {
        if self.is_beside(gateway_namespace) {
            (gateway_namespace.to_string(), self.beside_account.clone())
        } else {
            (
                self.namespace.clone(),
                crate::refs::dataplane_name(gateway_namespace, gateway),
            )
        }
    }

    /// Every namespace a dataplane may be in.
    pub fn namespaces(&self) -> BTreeSet<&str> {
        std::iter::once(self.namespace.as_str())
            .chain(self.beside.iter().map(String::as_str))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement() -> Placement {
        Placement {
            namespace: "portico-system".into(),
            beside: BTreeSet::from(["team-b".to_string()]),
            beside_account: "portico-dataplane".into(),
        }
    }

    #[test]
    fn a_listed_namespace_keeps_its_dataplanes_and_the_others_share_one() {
        let p = placement();
        assert_eq!(p.namespace_for("team-a"), "portico-system");
        assert_eq!(p.namespace_for("team-b"), "team-b");
        assert_eq!(
            p.namespace_for("portico-system"),
            "portico-system",
            "the dataplane namespace's own Gateways stay there"
        );
        assert_eq!(
            p.namespaces().into_iter().collect::<Vec<_>>(),
            ["portico-system", "team-b"]
        );
    }

    #[test]
    fn the_account_admitted_follows_the_placement() {
        let p = placement();
        assert_eq!(
            p.account_for("team-a", "web"),
            (
                "portico-system".to_string(),
                crate::refs::dataplane_name("team-a", "web")
            )
        );
        assert_eq!(
            p.account_for("team-b", "api"),
            ("team-b".to_string(), "portico-dataplane".to_string())
        );
        // Nothing listed: the old behaviour, whatever the account name says.
        let one = Placement::one_namespace("portico-system");
        assert_eq!(one.namespace_for("team-b"), "portico-system");
        assert_eq!(one.account_for("team-b", "api").0, "portico-system");
    }
}
