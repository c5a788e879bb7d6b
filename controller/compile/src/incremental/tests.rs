//! The incremental compile against the full one: same output, fewer Gateways compiled.

use super::*;
use crate::manifests::ManifestSet;
use crate::{CONTROLLER_NAME, compile};

/// Two Gateways (`gw` from the shared base, `other`), a route on each, a GRPCRoute on `gw`.
const EXTRA: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: default}
spec:
  gatewayClassName: portico
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: lonely, namespace: default}
spec: {ports: [{name: web, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: on-gw, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules: [{backendRefs: [{name: svc, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: on-other, namespace: default}
spec:
  parentRefs: [{name: other}]
  rules: [{backendRefs: [{name: missing, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: wild}]
  hostnames: [grpc.example.com]
  rules: [{backendRefs: [{name: svc, port: 81}]}]
"#;

fn inputs_with(extra: &str) -> Inputs {
    crate::tests::inputs(&format!("{EXTRA}{extra}"))
}

fn key_route(name: &str) -> DepKey {
    DepKey::Route(RouteKind::Http, ObjectRef::new("default", name))
}

fn keys(k: &[DepKey]) -> Changes {
    Changes::Keys(k.iter().cloned().collect())
}

fn gw(name: &str) -> ObjectRef {
    ObjectRef::new("default", name)
}

/// Asserts the incremental output equals a full compile of the same inputs.
fn assert_same(inc: &IncrementalCompile, inputs: &Inputs) {
    let full = compile(inputs, CONTROLLER_NAME);
    let got = inc.output();
    assert_eq!(got.status, full.status);
    assert_eq!(got.snapshots, full.snapshots);
}

#[test]
fn a_full_update_equals_a_full_compile() {
    let inputs = inputs_with("");
    let mut inc = IncrementalCompile::new(CONTROLLER_NAME);
    let touched = inc.update(&inputs, &Changes::All);
    assert_eq!(touched, [gw("gw"), gw("other")].into());
    assert_same(&inc, &inputs);
}

#[test]
fn changes_recompile_only_the_gateways_that_read_them() {
    let mut inc = IncrementalCompile::new(CONTROLLER_NAME);
    inc.update(&inputs_with(""), &Changes::All);

    // The Service `missing` appears: only `other`'s route refers to it.
    let extra = "---\napiVersion: v1\nkind: Service\nmetadata: {name: missing, namespace: default}\nspec: {ports: [{name: web, port: 80}]}\n";
    let inputs = inputs_with(extra);
    let touched = inc.update(
        &inputs,
        &keys(&[DepKey::Service(ObjectRef::new("default", "missing"))]),
    );
    assert_eq!(touched, [gw("other")].into());
    assert_same(&inc, &inputs);

    // A Service nobody refers to touches nothing.
    let touched = inc.update(
        &inputs,
        &keys(&[DepKey::Service(ObjectRef::new("default", "lonely"))]),
    );
    assert!(touched.is_empty());
    assert_same(&inc, &inputs);
}

#[test]
fn a_route_moving_between_gateways_touches_both_and_deletion_is_seen() {
    let mut inc = IncrementalCompile::new(CONTROLLER_NAME);
    inc.update(&inputs_with(""), &Changes::All);

    let mut moved = inputs_with("");
    for r in &mut moved.http_routes {
        if r.metadata.name.as_deref() == Some("on-gw") {
            for p in r.spec.parent_refs.iter_mut().flatten() {
                p.name = "other".into();
                p.section_name = None;
            }
        }
    }
    let touched = inc.update(&moved, &keys(&[key_route("on-gw")]));
    assert_eq!(touched, [gw("gw"), gw("other")].into());
    assert_same(&inc, &moved);

    // Deleted: the previous inputs knew which Gateway it was on.
    moved
        .http_routes
        .retain(|r| r.metadata.name.as_deref() != Some("on-gw"));
    let touched = inc.update(&moved, &keys(&[key_route("on-gw")]));
    assert_eq!(touched, [gw("other")].into());
    assert_same(&inc, &moved);
    assert!(!inc.status().http_routes.contains_key(&gw("on-gw")));
}

#[test]
fn a_gateway_leaving_our_class_is_dropped() {
    let mut inc = IncrementalCompile::new(CONTROLLER_NAME);
    inc.update(&inputs_with(""), &Changes::All);
    let mut inputs = inputs_with("");
    for g in &mut inputs.gateways {
        if g.metadata.name.as_deref() == Some("other") {
            g.spec.gateway_class_name = "someone-else".into();
        }
    }
    let touched = inc.update(&inputs, &keys(&[DepKey::Gateway(gw("other"))]));
    assert_eq!(touched, [gw("other")].into());
    assert!(inc.snapshot(&gw("other")).is_none());
    assert_same(&inc, &inputs);
}

#[test]
fn secrets_and_grants_map_to_the_gateways_that_use_them() {
    let mut set = ManifestSet::default();
    set.add_file(
        "x.yaml",
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portico}
spec: {controllerName: portico.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: tls, namespace: default}
spec:
  gatewayClassName: portico
  listeners:
  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: cert, namespace: certs}]}}
"#,
    );
    let deps = Dependencies::new(&set.inputs, CONTROLLER_NAME);
    let tls = [gw("tls")].into();
    assert_eq!(
        deps.touched(&[DepKey::Secret(ObjectRef::new("certs", "cert"))]),
        tls
    );
    assert_eq!(
        deps.touched(&[DepKey::ReferenceGrants("certs".into())]),
        tls
    );
    assert!(
        deps.touched(&[DepKey::Secret(ObjectRef::new("default", "cert"))])
            .is_empty()
    );
}

#[test]
fn a_policy_is_read_by_the_gateways_it_reaches_through_any_kind_of_target() {
    // `svc` is the backend of routes on `gw` only (HTTP and gRPC), `missing` of `on-other`'s.
    let inputs = inputs_with(
        r#"
---
apiVersion: portico.dev/v1alpha1
kind: AuthPolicy
metadata: {name: on-route, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: on-other}]
  apiKey: {secretRefs: [{name: keys}]}
---
apiVersion: portico.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: on-service, namespace: default}
spec:
  targetRefs: [{group: '', kind: Service, name: svc}]
  limits: [{requests: 1, interval: 1s}]
"#,
    );
    let deps = Dependencies::new(&inputs, CONTROLLER_NAME);
    let policy = |kind, name: &str| DepKey::Policy(kind, ObjectRef::new("default", name));
    assert_eq!(
        deps.touched(&[policy(PolicyKind::Auth, "on-route")]),
        [gw("other")].into()
    );
    assert_eq!(
        deps.touched(&[DepKey::Secret(ObjectRef::new("default", "keys"))]),
        [gw("other")].into()
    );
    assert_eq!(
        deps.touched(&[policy(PolicyKind::RateLimit, "on-service")]),
        [gw("gw")].into()
    );
    // Keyed by kind: the same name of another kind is another object.
    assert!(
        deps.touched(&[policy(PolicyKind::Auth, "on-service")])
            .is_empty()
    );
    // And the status of each kind survives an update that recompiles nothing.
    let mut inc = IncrementalCompile::new(CONTROLLER_NAME);
    inc.update(&inputs, &Changes::All);
    inc.update(&inputs, &keys(&[]));
    assert_same(&inc, &inputs);
    assert!(
        inc.status()
            .policy(
                PolicyKind::RateLimit,
                &ObjectRef::new("default", "on-service")
            )
            .is_some()
    );
}

#[test]
fn a_policy_turning_unreadable_recompiles_the_gateways_it_targets() {
    let readable = r#"
---
apiVersion: portico.dev/v1alpha1
kind: AuthPolicy
metadata: {name: guard, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: on-other}]
  apiKey: {secretRefs: [{name: keys}]}
"#;
    let before = inputs_with(readable);
    let mut inc = IncrementalCompile::new(CONTROLLER_NAME);
    inc.update(&before, &Changes::All);
    let guard = ObjectRef::new("default", "guard");
    let refuses = |inc: &IncrementalCompile| {
        inc.snapshot(&gw("other")).expect("served").policies.auth[0]
            .invalid
            .is_some()
    };
    assert!(!refuses(&inc));

    // The same object, now with a value a newer CRD admits and this version cannot read.
    let mut after = inputs_with("");
    let crate::AuthPolicyRead::Unreadable(guard_now) =
        crate::read_policy::<portico_crds::auth::AuthPolicy>(&serde_json::json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "guard", "namespace": "default"},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                     "name": "on-other"}],
                     "apiKey": {"secretRefs": [{"name": "keys"}], "location": "Cookie"}}}))
    else {
        panic!("apiKey.location is not a field of this version")
    };
    after.unreadable_auth_policies = vec![*guard_now];
    let touched = inc.update(
        &after,
        &keys(&[DepKey::Policy(PolicyKind::Auth, guard.clone())]),
    );
    assert_eq!(touched, [gw("other")].into());
    assert!(refuses(&inc));
    assert_same(&inc, &after);
    // Its Gateways read it while it is unreadable too: fixing it recompiles them again.
    let touched = inc.update(&before, &keys(&[DepKey::Policy(PolicyKind::Auth, guard)]));
    assert_eq!(touched, [gw("other")].into());
    assert!(!refuses(&inc));
    assert_same(&inc, &before);
}

#[test]
fn a_listener_set_and_the_routes_naming_it_are_read_by_its_gateway() {
    let set = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: open, namespace: default}
spec:
  gatewayClassName: portico
  allowedListeners: {namespaces: {from: All}}
  listeners: [{name: http, port: 80, protocol: HTTP, hostname: open.example.com}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: set, namespace: blue}
spec:
  parentRef: {name: open, namespace: default}
  listeners: [{name: l, port: 80, protocol: HTTP, hostname: set.example.com}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: on-set, namespace: blue}
spec:
  parentRefs: [{kind: ListenerSet, name: set}]
  rules: [{backendRefs: [{name: svc, namespace: default, port: 80}]}]
---
apiVersion: portico.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: team-limit, namespace: blue}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: ListenerSet, name: set}]
  limits: [{name: all, requests: 10, interval: 1s}]
"#;
    let mut inc = IncrementalCompile::new(CONTROLLER_NAME);
    let inputs = inputs_with(set);
    inc.update(&inputs, &Changes::All);
    assert_same(&inc, &inputs);
    let set_id = ObjectRef::new("blue", "set");
    assert!(inc.status().listener_sets.contains_key(&set_id));

    // The route, the set and the set's namespace are each read by `open` alone.
    for key in [
        DepKey::Route(RouteKind::Http, ObjectRef::new("blue", "on-set")),
        DepKey::ListenerSet(set_id.clone()),
        DepKey::Namespace("blue".into()),
        DepKey::Policy(PolicyKind::RateLimit, ObjectRef::new("blue", "team-limit")),
    ] {
        assert_eq!(inc.update(&inputs, &keys(&[key])), [gw("open")].into());
        assert_same(&inc, &inputs);
    }

    // The set moves to `other` (which does not allow it): both Gateways recompile.
    let mut moved = inputs.clone();
    moved.listener_sets[0].spec.parent_ref.name = "other".into();
    let touched = inc.update(&moved, &keys(&[DepKey::ListenerSet(set_id.clone())]));
    assert_eq!(touched, [gw("open"), gw("other")].into());
    assert_same(&inc, &moved);

    // Deleted: no status left for it.
    moved.listener_sets.clear();
    let touched = inc.update(&moved, &keys(&[DepKey::ListenerSet(set_id.clone())]));
    assert_eq!(touched, [gw("other")].into());
    assert_same(&inc, &moved);
    assert!(!inc.status().listener_sets.contains_key(&set_id));
}
