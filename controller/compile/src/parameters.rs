//! Which GatewayConfig applies to a Gateway: its own `spec.infrastructure.parametersRef`, else
//! its GatewayClass's `parametersRef`. Compile (acceptance, each Gateway's Redis) and the
//! provisioner both ask here.

use portico_crds::PORTICO_GROUP;
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
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
    let ns = crate::namespace_of(&gw.metadata);
    Ok(Some(ObjectRef::new(ns, p.name.clone())))
}

/// The GatewayConfig that applies to `gw` (of class `class`): its own, else its class's.
pub fn gateway_config(gw: &Gateway, class: &GatewayClass) -> Result<Option<ObjectRef>, String> {
    match own_config(gw)? {
        Some(r) => Ok(Some(r)),
        None => class_config(class),
    }
}
