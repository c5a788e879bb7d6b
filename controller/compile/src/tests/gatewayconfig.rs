//! GatewayConfig references: a GatewayClass's `parametersRef` and a Gateway's
//! `spec.infrastructure.parametersRef` are accepted when they name an existing GatewayConfig,
//! and reported `InvalidParameters` otherwise.

use crate::status::{find, reasons, types};
use crate::{CONTROLLER_NAME, compile};
use portico_model::ObjectRef;

fn class(params: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: configured}}\nspec:\n  controllerName: portico.dev/gateway-controller\n  parametersRef: {params}\n"
    )
}

const CONFIG: &str = "---\napiVersion: portico.dev/v1alpha1\nkind: GatewayConfig\nmetadata: {name: edge, namespace: infra}\nspec: {service: {type: ClusterIP}}\n";

fn class_accepted(extra: &str) -> (bool, String, String) {
    let out = compile(&super::inputs(extra), CONTROLLER_NAME);
    let c = find(
        &out.status.gateway_classes["configured"].conditions,
        types::ACCEPTED,
    )
    .expect("Accepted")
    .clone();
    (c.is_true(), c.reason, c.message)
}

#[test]
fn a_class_may_name_an_existing_gateway_config_and_nothing_else() {
    let ok = "{group: portico.dev, kind: GatewayConfig, name: edge, namespace: infra}";
    let (accepted, _, message) = class_accepted(&format!("{}{CONFIG}", class(ok)));
    assert!(accepted, "{message}");
    assert!(message.contains("infra/edge"), "{message}");
    for (params, why) in [
        (ok, "does not exist"),
        (
            "{group: portico.dev, kind: GatewayConfig, name: edge}",
            "namespace",
        ),
        (
            "{group: \"\", kind: ConfigMap, name: edge, namespace: infra}",
            "ConfigMap",
        ),
    ] {
        // (Without the GatewayConfig document, the first one names nothing that exists.)
        let (accepted, reason, message) = class_accepted(&class(params));
        assert!(!accepted, "{params}");
        assert_eq!(reason, reasons::INVALID_PARAMETERS);
        assert!(message.contains(why), "{params}: {message}");
    }
}

#[test]
fn a_gateway_naming_a_missing_gateway_config_is_not_accepted() {
    let gateway = |params: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: own, namespace: infra}}\nspec:\n  gatewayClassName: portico\n  infrastructure: {{parametersRef: {params}}}\n  listeners: [{{name: http, port: 80, protocol: HTTP}}]\n"
        )
    };
    let accepted = |extra: &str| {
        let out = compile(&super::inputs(extra), CONTROLLER_NAME);
        let s = &out.status.gateways[&ObjectRef::new("infra", "own")];
        let c = find(&s.conditions, types::ACCEPTED)
            .expect("Accepted")
            .clone();
        (
            c.is_true(),
            c.reason,
            out.snapshots.contains_key(&ObjectRef::new("infra", "own")),
        )
    };
    let params = "{group: portico.dev, kind: GatewayConfig, name: edge}";
    let (ok, _, served) = accepted(&format!("{}{CONFIG}", gateway(params)));
    assert!(ok && served);
    let (ok, reason, served) = accepted(&gateway(params));
    assert!(!ok && !served);
    assert_eq!(reason, reasons::INVALID_PARAMETERS);
    let (ok, reason, _) = accepted(&gateway("{group: example.com, kind: Thing, name: edge}"));
    assert!(!ok);
    assert_eq!(reason, reasons::INVALID_PARAMETERS);
}

#[test]
fn a_gateways_own_config_may_choose_the_image_only_if_its_class_allows() {
    let own = "---\napiVersion: portico.dev/v1alpha1\nkind: GatewayConfig\nmetadata: {name: mine, namespace: infra}\nspec: {dataplane: {image: evil/exfiltrate:1, tolerations: [{operator: Exists}]}}\n";
    let gateway = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: own, namespace: infra}\nspec:\n  gatewayClassName: configured\n  infrastructure: {parametersRef: {group: portico.dev, kind: GatewayConfig, name: mine}}\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n";
    let class = |overrides: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: configured}}\nspec:\n  controllerName: portico.dev/gateway-controller\n  parametersRef: {{group: portico.dev, kind: GatewayConfig, name: class, namespace: infra}}\n---\napiVersion: portico.dev/v1alpha1\nkind: GatewayConfig\nmetadata: {{name: class, namespace: infra}}\nspec: {{gatewayOverrides: {overrides}}}\n"
        )
    };
    let accepted = |overrides: &str| {
        let out = compile(
            &super::inputs(&format!("{}{own}{gateway}", class(overrides))),
            CONTROLLER_NAME,
        );
        let c = find(
            &out.status.gateways[&ObjectRef::new("infra", "own")].conditions,
            types::ACCEPTED,
        )
        .expect("Accepted")
        .clone();
        (c.is_true(), c.reason, c.message)
    };
    let (ok, reason, message) = accepted("{}");
    assert!(!ok);
    assert_eq!(reason, reasons::INVALID_PARAMETERS);
    assert!(
        message.contains("dataplane.image") && message.contains("dataplane.tolerations"),
        "{message}"
    );
    let (ok, _, message) = accepted("{image: true}");
    assert!(!ok, "tolerations are still refused");
    assert!(!message.contains("dataplane.image"), "{message}");
    let (ok, _, _) = accepted("{image: true, scheduling: true}");
    assert!(ok);
}
