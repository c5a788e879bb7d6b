//! Which GatewayConfig applies to a Gateway: its own `spec.infrastructure.parametersRef`, else
//! its GatewayClass's `parametersRef`. Compile (acceptance, each Gateway's Redis) and the
//! provisioner both ask here.

use portico_crds::PORTICO_GROUP;
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
use portico_crds::gatewayconfig::{DataplaneSpec, GatewayConfigSpec, GatewayOverrides};
use portico_model::ObjectRef;

/// The GatewayConfig a GatewayClass names; `Err` says why its reference cannot name one.
pub fn class_config(class: &GatewayClass) -> Result<Option<ObjectRef>, String> {
    let Some(p) = &class.spec.parameters_ref else {
        return Ok(None);
    };
    if p.group != PORTICO_GROUP || p.kind != "GatewayConfig" {
        return Err(format!(
            "parametersRef must name a portico.dev GatewayConfig, not {}/{}",
            p.group, p.kind
        ));
    }
    let ns = p.namespace.clone().ok_or_else(|| {
        "parametersRef to a GatewayConfig needs its namespace (GatewayConfig is namespaced)"
            .to_string()
    })?;
    Ok(Some(ObjectRef::new(ns, p.name.clone())))
}

/// The GatewayConfig a Gateway names itself (in its own namespace).
pub fn own_config(gw: &Gateway) -> Result<Option<ObjectRef>, String> {
    let Some(p) = gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
    else {
        return Ok(None);
    };
    if p.group != PORTICO_GROUP || p.kind != "GatewayConfig" {
        return Err(format!(
            "spec.infrastructure.parametersRef must name a portico.dev GatewayConfig, not {}/{}",
            p.group, p.kind
        ));
    }
    let ns = crate::refs::namespace_of(&gw.metadata);
    Ok(Some(ObjectRef::new(ns, p.name.clone())))
}

/// The GatewayConfig that applies to `gw` (of class `class`): its own, else its class's.
pub fn gateway_config(gw: &Gateway, class: &GatewayClass) -> Result<Option<ObjectRef>, String> {
    match own_config(gw)? {
        Some(r) => Ok(Some(r)),
        None => class_config(class),
    }
}

/// The fields a Gateway's own GatewayConfig sets that its class's configuration does not let
/// it set (`gatewayOverrides`); empty when everything it sets is allowed.
pub fn refused_overrides(
    own: &GatewayConfigSpec,
    class: Option<&GatewayConfigSpec>,
) -> Vec<&'static str> {
    let allowed = class.and_then(|c| c.gateway_overrides).unwrap_or_default();
    let Some(dp) = &own.dataplane else {
        return Vec::new();
    };
    let mut refused = Vec::new();
    if !allowed.image && dp.image.is_some() {
        refused.push("dataplane.image");
    }
    if !allowed.image && !dp.image_pull_secrets.is_empty() {
        refused.push("dataplane.imagePullSecrets");
    }
    if !allowed.scheduling {
        if !dp.node_selector.is_empty() {
            refused.push("dataplane.nodeSelector");
        }
        if !dp.tolerations.is_empty() {
            refused.push("dataplane.tolerations");
        }
        if dp.affinity.is_some() {
            refused.push("dataplane.affinity");
        }
        if !dp.topology_spread_constraints.is_empty() {
            refused.push("dataplane.topologySpreadConstraints");
        }
        if dp.priority_class_name.is_some() {
            refused.push("dataplane.priorityClassName");
        }
    }
    refused
}

/// `own` with the fields its class does not let it set taken from the class's configuration
/// (or left to the defaults): what the provisioner renders for such a Gateway, so a running
/// dataplane never keeps an image or placement its class owner did not allow.
pub fn restrict_overrides(
    own: &GatewayConfigSpec,
    class: Option<&GatewayConfigSpec>,
) -> GatewayConfigSpec {
    let allowed: GatewayOverrides = class.and_then(|c| c.gateway_overrides).unwrap_or_default();
    let from_class = class.and_then(|c| c.dataplane.clone()).unwrap_or_default();
    let mut out = own.clone();
    let dp = out.dataplane.get_or_insert_with(DataplaneSpec::default);
    if !allowed.image {
        dp.image = from_class.image.clone();
        dp.image_pull_secrets = from_class.image_pull_secrets.clone();
    }
    if !allowed.scheduling {
        dp.node_selector = from_class.node_selector.clone();
        dp.tolerations = from_class.tolerations.clone();
        dp.affinity = from_class.affinity.clone();
        dp.topology_spread_constraints = from_class.topology_spread_constraints.clone();
        dp.priority_class_name = from_class.priority_class_name.clone();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> GatewayConfigSpec {
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn a_gateways_own_config_may_not_choose_image_or_placement_unless_its_class_allows() {
        let own = spec(serde_json::json!({"dataplane": {
            "image": "evil:1", "nodeSelector": {"pool": "x"},
            "tolerations": [{"operator": "Exists"}], "replicas": 3}}));
        let strict = spec(serde_json::json!({"dataplane": {"image": "trusted:1"}}));
        assert_eq!(
            refused_overrides(&own, Some(&strict)),
            [
                "dataplane.image",
                "dataplane.nodeSelector",
                "dataplane.tolerations"
            ]
        );
        assert_eq!(
            refused_overrides(&own, None).len(),
            3,
            "no class config: nothing allowed"
        );
        let image_ok = spec(serde_json::json!({"gatewayOverrides": {"image": true}}));
        assert_eq!(
            refused_overrides(&own, Some(&image_ok)),
            ["dataplane.nodeSelector", "dataplane.tolerations"]
        );
        let all_ok =
            spec(serde_json::json!({"gatewayOverrides": {"image": true, "scheduling": true}}));
        assert!(refused_overrides(&own, Some(&all_ok)).is_empty());
        // Replicas, resources and the rest stay the Gateway's choice.
        let harmless = spec(serde_json::json!({"dataplane": {"replicas": 3, "logLevel": "debug"}}));
        assert!(refused_overrides(&harmless, Some(&strict)).is_empty());

        let rendered = restrict_overrides(&own, Some(&strict));
        let dp = rendered.dataplane.expect("dataplane");
        assert_eq!(dp.image.as_deref(), Some("trusted:1"));
        assert!(dp.node_selector.is_empty() && dp.tolerations.is_empty());
        assert_eq!(dp.replicas, Some(3), "what it may set is kept");
        let rendered = restrict_overrides(&own, Some(&image_ok));
        assert_eq!(
            rendered.dataplane.and_then(|d| d.image).as_deref(),
            Some("evil:1")
        );
    }
}
