//! Reading AuthPolicy objects as an API server with a newer CRD would send them.

use super::*;
use serde_json::json;

/// An AuthPolicy object with `spec`, as the API server sends it (status included).
fn object(spec: serde_json::Value) -> Value {
    json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": "p", "namespace": "team", "generation": 3,
                     "creationTimestamp": "2026-01-01T00:00:00Z", "resourceVersion": "42"},
        "spec": spec,
        "status": {"ancestors": [{
            "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                            "namespace": "team", "name": "shop"},
            "controllerName": "portico.dev/gateway-controller",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                            "message": "policy applies"}]}]}
    })
}

/// What could be read of an object this version cannot read whole.
fn unreadable(object: &Value) -> UnreadablePolicy {
    match read_policy::<AuthPolicy>(object) {
        AuthPolicyRead::Unreadable(u) => *u,
        AuthPolicyRead::Readable(p) => panic!("read whole: {p:?}"),
    }
}

fn target(kind: &str, name: &str) -> serde_json::Value {
    json!({"group": "gateway.networking.k8s.io", "kind": kind, "name": name})
}

#[test]
fn a_policy_of_this_version_reads_as_typed() {
    let AuthPolicyRead::Readable(p) = read_policy::<AuthPolicy>(&object(json!({
        "targetRefs": [target("HTTPRoute", "shop")],
        "jwt": {"issuer": "https://idp", "algorithms": ["ES256"], "jwksUri": "https://idp/jwks"}})))
    else {
        panic!("every field is known")
    };
    assert_eq!(p.metadata.name.as_deref(), Some("p"));
    assert_eq!(p.spec.target_refs[0].name, "shop");
}

#[test]
fn an_enum_value_of_a_newer_release_keeps_metadata_targets_status_and_the_error() {
    // A newer CRD admits ES512; this version's JwtAlgorithm does not have it.
    let u = unreadable(&object(json!({
        "targetRefs": [target("HTTPRoute", "shop"), target("Gateway", "gw")],
        "jwt": {"issuer": "https://idp", "algorithms": ["ES512"], "jwksUri": "https://idp/jwks"}})));
    assert_eq!(u.metadata.name.as_deref(), Some("p"));
    assert_eq!(u.metadata.namespace.as_deref(), Some("team"));
    assert_eq!(u.metadata.generation, Some(3));
    assert!(u.metadata.creation_timestamp.is_some());
    let names: Vec<&str> = u.target_refs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["shop", "gw"]);
    assert!(u.error.contains("ES512"), "{}", u.error);
    let status = u.status.expect("the status decodes on its own");
    assert_eq!(status.ancestors[0].ancestor_ref.name, "shop");
}

#[test]
fn a_spec_field_this_version_does_not_know_makes_it_unreadable_not_ignored() {
    // A mechanism added by a newer release: enforced without it, the policy would protect
    // less than it says.
    let u = unreadable(&object(json!({
        "targetRefs": [target("HTTPRoute", "shop")],
        "apiKey": {"secretRefs": [{"name": "keys"}]},
        "mtls": {"caSecretRef": {"name": "ca"}},
        "authorization": {"rules": [{"consumers": ["alice"], "notPaths": ["/admin"]}]}})));
    assert!(
        u.error.contains("spec.mtls")
            && u.error.contains("spec.authorization.rules[0].notPaths")
            && u.error.ends_with("are fields this version does not know"),
        "{}",
        u.error
    );
    assert_eq!(u.target_refs.len(), 1);
    // Fields outside the spec are not enforced: a newer metadata or status field is fine.
    let mut o = object(json!({"targetRefs": [target("HTTPRoute", "shop")],
                               "apiKey": {"secretRefs": [{"name": "keys"}]}}));
    o["metadata"]["someNewField"] = json!("x");
    o["status"]["observedSomething"] = json!(1);
    assert!(read_policy::<AuthPolicy>(&o).unreadable().is_none());
}

#[test]
fn targets_are_read_one_by_one_and_none_at_all_is_said_plainly() {
    let bad = json!({"kind": "HTTPRoute", "name": "admin"});
    let u = unreadable(&object(json!({
        "targetRefs": [target("HTTPRoute", "shop"), bad],
        "jwt": {"issuer": "x", "algorithms": ["ES512"], "jwksUri": "https://idp/jwks"}})));
    assert_eq!(u.target_refs.len(), 1);
    assert!(
        u.error
            .contains("spec.targetRefs[1] (missing field `group`)")
            && u.error.contains("not protected by it"),
        "{}",
        u.error
    );

    let u = unreadable(&object(json!({"targetRefs": "everything", "apiKey": {}})));
    assert!(u.target_refs.is_empty());
    assert!(u.error.contains("protects nothing"), "{}", u.error);
}
