//! AuthPolicy attachment, precedence, status reasons and Secret resolution.

use super::{applied_policy, gw, policy_condition, run};
use crate::status::{Condition, reasons, types};
use crate::{CONTROLLER_NAME, Output, referenced_secrets};
use portico_model::auth::JwtKeys;
use portico_model::{ObjectRef, PolicyKind};

/// Two routes on the Gateway: `admin` (rules `read` and `write`) and `shop`.
const ROUTES: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: admin, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - name: read
    matches: [{path: {type: PathPrefix, value: /admin}, method: GET}]
    backendRefs: [{name: svc, port: 80}]
  - name: write
    matches: [{path: {type: PathPrefix, value: /admin}}]
    backendRefs: [{name: svc, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - backendRefs: [{name: svc, port: 80}]
---
apiVersion: v1
kind: Secret
metadata: {name: keys, namespace: default}
stringData: {alice: alice-key-0123456789, bob: "bob-key-0123456789\n"}
"#;

fn policy(name: &str, created: &str, targets: &str, body: &str) -> String {
    format!(
        "---\napiVersion: portico.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\nspec:\n  targetRefs: {targets}\n{body}\n"
    )
}

const API_KEYS: &str = "  apiKey: {secretRefs: [{name: keys}]}";

fn accepted(out: &Output, policy: &str, i: usize) -> Condition {
    policy_condition(out, PolicyKind::Auth, policy, i, types::ACCEPTED)
}

fn resolved(out: &Output, policy: &str) -> Condition {
    policy_condition(out, PolicyKind::Auth, policy, 0, types::RESOLVED_REFS)
}

/// The policy of each (route, rule index) and each route's parent, from the snapshot.
fn applied(out: &Output, route: &str, rule: usize) -> Option<String> {
    applied_policy(out, route, rule, PolicyKind::Auth)
}

const GW: &str = "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]";
const LISTENER: &str =
    "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw, sectionName: http}]";
const ROUTE: &str = "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: admin}]";
const RULE: &str =
    "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: admin, sectionName: write}]";

#[test]
fn precedence_rule_over_route_over_listener_over_gateway() {
    let out = run(&format!(
        "{ROUTES}{}{}{}{}",
        policy("on-gw", "2026-01-01T00:00:00Z", GW, API_KEYS),
        policy("on-listener", "2026-01-02T00:00:00Z", LISTENER, API_KEYS),
        policy("on-route", "2026-01-03T00:00:00Z", ROUTE, API_KEYS),
        policy("on-rule", "2026-01-04T00:00:00Z", RULE, API_KEYS),
    ));
    assert_eq!(applied(&out, "admin", 0).as_deref(), Some("on-route"));
    assert_eq!(applied(&out, "admin", 1).as_deref(), Some("on-rule"));
    // shop has no policy of its own: the listener's applies, not the Gateway's.
    assert_eq!(applied(&out, "shop", 0).as_deref(), Some("on-listener"));
    for p in ["on-gw", "on-listener", "on-route", "on-rule"] {
        assert!(accepted(&out, p, 0).is_true(), "{p}");
    }
    // Only the policies the snapshot uses are in it, sorted.
    let names: Vec<&str> = out.snapshots[&gw()]
        .policies
        .auth
        .iter()
        .map(|p| p.id.name.as_str())
        .collect();
    assert_eq!(names, ["on-listener", "on-route", "on-rule"]);
}

#[test]
fn oldest_wins_a_conflict_and_the_other_says_so() {
    let out = run(&format!(
        "{ROUTES}{}{}",
        policy("newer", "2026-02-01T00:00:00Z", ROUTE, API_KEYS),
        policy("older", "2026-01-01T00:00:00Z", ROUTE, API_KEYS),
    ));
    assert_eq!(applied(&out, "admin", 0).as_deref(), Some("older"));
    let c = accepted(&out, "newer", 0);
    assert!(!c.is_true());
    assert_eq!(c.reason, reasons::CONFLICTED);
    assert!(c.message.contains("default/older"), "{}", c.message);
    assert!(accepted(&out, "older", 0).is_true());
    let problems = out.status.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.object.starts_with("AuthPolicy default/newer"))
    );
}

#[test]
fn missing_targets_and_sections_are_reported_per_target() {
    let targets = "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: nope}, \
                   {group: gateway.networking.k8s.io, kind: Gateway, name: gw, sectionName: nope}, \
                   {group: gateway.networking.k8s.io, kind: HTTPRoute, name: admin, sectionName: nope}, \
                   {group: gateway.networking.k8s.io, kind: Service, name: svc}, \
                   {group: gateway.networking.k8s.io, kind: HTTPRoute, name: shop}]";
    let out = run(&format!(
        "{ROUTES}{}",
        policy("p", "2026-01-01T00:00:00Z", targets, API_KEYS)
    ));
    for i in 0..3 {
        let c = accepted(&out, "p", i);
        assert_eq!(c.reason, reasons::TARGET_NOT_FOUND, "{i}: {c:?}");
    }
    assert_eq!(accepted(&out, "p", 3).reason, reasons::INVALID);
    assert!(accepted(&out, "p", 4).is_true());
    assert_eq!(applied(&out, "shop", 0).as_deref(), Some("p"));
    assert_eq!(applied(&out, "admin", 0), None);
}

#[test]
fn api_keys_are_hashed_and_a_missing_secret_is_reported() {
    let out = run(&format!(
        "{ROUTES}{}",
        policy(
            "p",
            "2026-01-01T00:00:00Z",
            ROUTE,
            "  apiKey: {secretRefs: [{name: keys}, {name: gone}]}"
        )
    ));
    let snap = &out.snapshots[&gw()];
    let keys = &snap.policies.auth[0]
        .api_keys
        .as_ref()
        .expect("api keys")
        .keys;
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].consumer, "alice");
    // SHA-256 of the key, the trailing newline of bob's value trimmed.
    let expected: String = ring::digest::digest(&ring::digest::SHA256, b"bob-key-0123456789")
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(keys[1].sha256, expected);
    let snapshot_text = serde_json::to_string(snap).expect("json");
    assert!(
        !snapshot_text.contains("alice-key"),
        "raw keys never reach a snapshot"
    );
    let c = resolved(&out, "p");
    assert!(!c.is_true());
    assert_eq!(c.reason, reasons::INVALID_REF);
    assert!(c.message.contains("default/gone"), "{}", c.message);
    // The policy still applies: a missing Secret never opens a route.
    assert!(accepted(&out, "p", 0).is_true());
    let secrets = referenced_secrets(
        &super::inputs(&format!(
            "{ROUTES}{}",
            policy(
                "p",
                "2026-01-01T00:00:00Z",
                ROUTE,
                "  apiKey: {secretRefs: [{name: keys}, {name: gone}]}"
            )
        )),
        CONTROLLER_NAME,
    );
    assert!(secrets.contains(&ObjectRef::new("default", "gone")));
    assert!(secrets.contains(&ObjectRef::new("default", "keys")));
}

#[test]
fn invalid_policies_fail_closed_with_a_reason() {
    let cases = [
        ("  jwt: {issuer: x, algorithms: [RS256]}", "exactly one of"),
        (
            "  jwt: {issuer: x, algorithms: [HS256], jwks: '{\"keys\": []}'}",
            "hmacSecretRef",
        ),
        (
            "  jwt: {issuer: x, algorithms: [RS256], jwks: 'not json'}",
            "jwt.jwks",
        ),
        (
            "  jwt: {issuer: x, algorithms: [RS256], jwksUri: 'file:///etc/passwd'}",
            "http",
        ),
        (
            "  authorization: {rules: [{clientCidrs: [10.0.0.0/33]}]}",
            "prefix length",
        ),
        (
            "  allowAnonymous: false\n  authorization: {rules: [{anonymous: true}]}",
            "allowAnonymous",
        ),
        (
            "  apiKey: {secretRefs: [{name: keys}], header: x-key, query: key}",
            "not both",
        ),
        (
            "  consumerHeader: 'bad header'\n  apiKey: {secretRefs: [{name: keys}]}",
            "header name",
        ),
        ("  allowAnonymous: true", "at least one"),
    ];
    for (body, needle) in cases {
        let out = run(&format!(
            "{ROUTES}{}",
            policy("p", "2026-01-01T00:00:00Z", ROUTE, body)
        ));
        let c = accepted(&out, "p", 0);
        assert_eq!(c.reason, reasons::INVALID, "{body}");
        assert!(c.message.contains(needle), "{body}: {}", c.message);
        // Still attached, so the route answers 500 instead of serving unprotected.
        let snap = &out.snapshots[&gw()];
        assert_eq!(applied(&out, "admin", 0).as_deref(), Some("p"));
        assert!(snap.policies.auth[0].invalid.is_some());
        // The other route is untouched.
        assert_eq!(applied(&out, "shop", 0), None);
    }
}

#[test]
fn jwt_keys_from_secret_htpasswd_and_introspection_credentials() {
    let extra = r#"
---
apiVersion: v1
kind: Secret
metadata: {name: jwt-hmac, namespace: default}
stringData: {key: "0123456789abcdef0123456789abcdef"}
---
apiVersion: v1
kind: Secret
metadata: {name: short-hmac, namespace: default}
stringData: {key: "short"}
---
apiVersion: v1
kind: Secret
metadata: {name: users, namespace: default}
stringData:
  htpasswd: |
    # ops
    ann:$2y$05$abcdefghijklmnopqrstuu5s8YNWZ0n0hZ2Q6e8Q3Wl1m9cV6pZ8e
    joe:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=
---
apiVersion: v1
kind: Secret
metadata: {name: idp, namespace: default}
stringData: {clientId: portico, clientSecret: s3cret}
"#;
    let out = run(&format!(
        "{ROUTES}{extra}{}{}{}",
        policy(
            "hs",
            "2026-01-01T00:00:00Z",
            ROUTE,
            "  jwt: {issuer: me, algorithms: [HS256], hmacSecretRef: {name: jwt-hmac}}"
        ),
        policy(
            "basic",
            "2026-01-01T00:00:00Z",
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: shop}]",
            "  basic: {secretRef: {name: users}}\n  introspection: {url: 'http://idp/introspect', clientSecretRef: {name: idp}}"
        ),
        policy(
            "short",
            "2026-01-01T00:00:00Z",
            LISTENER,
            "  jwt: {issuer: me, algorithms: [HS256], hmacSecretRef: {name: short-hmac}}"
        ),
    ));
    let snap = &out.snapshots[&gw()];
    let by_name = |n: &str| {
        snap.policies
            .auth
            .iter()
            .find(|p| p.id.name == n)
            .unwrap_or_else(|| panic!("{n} in snapshot"))
    };
    let hs = by_name("hs").jwt.as_ref().expect("jwt");
    assert!(matches!(&hs.keys, JwtKeys::Hmac(k) if !k.0.is_empty()));
    assert!(resolved(&out, "hs").is_true());
    let basic = by_name("basic");
    let users = &basic.basic.as_ref().expect("basic").users;
    assert_eq!(users.len(), 1, "only the bcrypt line is taken");
    assert_eq!(users[0].user, "ann");
    let c = resolved(&out, "basic");
    assert!(!c.is_true());
    assert!(
        c.message.contains("joe") && c.message.contains("bcrypt"),
        "{}",
        c.message
    );
    assert!(!c.message.contains("W6ph5"), "hashes are never quoted");
    let i = basic.introspection.as_ref().expect("introspection");
    assert_eq!(i.client_id, "portico");
    assert_eq!(format!("{:?}", i.client_secret), "<redacted>");
    let c = resolved(&out, "short");
    assert!(
        !c.is_true() && c.message.contains("32 bytes"),
        "{}",
        c.message
    );
}

#[test]
fn grpc_routes_take_their_listeners_policy() {
    let grpc = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: wild}]
  hostnames: [api.example.com]
  rules:
  - backendRefs: [{name: svc, port: 81}]
"#;
    let listener =
        "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw, sectionName: wild}]";
    let out = run(&format!(
        "{grpc}{}",
        policy("p", "2026-01-01T00:00:00Z", listener, API_KEYS)
    ));
    let snap = &out.snapshots[&gw()];
    let g = snap
        .routes
        .iter()
        .find(|r| r.id.name == "g")
        .expect("grpc route");
    assert_eq!(
        g.parents[0].policies.auth,
        Some(ObjectRef::new("default", "p"))
    );
    assert!(g.rules[0].policies.auth.is_none());
}

#[test]
fn a_service_target_is_resolved_and_refused_saying_what_to_target() {
    let targets = "[{group: '', kind: Service, name: svc}, \
                   {group: '', kind: Service, name: nope}, \
                   {group: core, kind: Service, name: svc, sectionName: web}, \
                   {group: gateway.networking.k8s.io, kind: HTTPRoute, name: shop}]";
    let out = run(&format!(
        "{ROUTES}{}",
        policy("p", "2026-01-01T00:00:00Z", targets, API_KEYS)
    ));
    // The Service exists, but an AuthPolicy acts on routed requests: refused, with advice.
    let c = accepted(&out, "p", 0);
    assert!(!c.is_true());
    assert_eq!(c.reason, reasons::INVALID);
    assert!(
        c.message.contains("cannot target Service default/svc")
            && c.message.contains("HTTPRoute or rule that sends to it"),
        "{}",
        c.message
    );
    // A Service that does not exist is reported as such, like any other missing target.
    let c = accepted(&out, "p", 1);
    assert_eq!(c.reason, reasons::TARGET_NOT_FOUND);
    assert!(c.message.contains("Service default/nope"), "{}", c.message);
    // Nor one of its ports.
    let c = accepted(&out, "p", 2);
    assert_eq!(c.reason, reasons::INVALID);
    assert!(c.message.contains("cannot target Service"), "{}", c.message);
    // The refused targets protect nothing; the route target still applies.
    assert!(accepted(&out, "p", 3).is_true());
    assert_eq!(applied(&out, "shop", 0).as_deref(), Some("p"));
    assert_eq!(applied(&out, "admin", 0), None);
    let problems = out.status.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.object == "AuthPolicy default/p target Service svc"),
        "{problems:?}"
    );
}

/// An AuthPolicy as a newer release's CRD admits it and this version cannot read: `ES512` is
/// not one of its JWT algorithms.
fn unreadable(name: &str, created: &str, targets: &str) -> crate::UnreadablePolicy {
    let targets: serde_json::Value = serde_yaml::from_str(targets).expect("targets YAML");
    let read = crate::read_policy::<portico_crds::auth::AuthPolicy>(&serde_json::json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created,
                     "generation": 2},
        "spec": {"targetRefs": targets,
                 "jwt": {"issuer": "https://idp", "algorithms": ["ES512"],
                         "jwksUri": "https://idp/jwks"}}}));
    match read {
        crate::AuthPolicyRead::Unreadable(u) => *u,
        crate::AuthPolicyRead::Readable(_) => panic!("ES512 is not an algorithm of this version"),
    }
}

/// Compiles the routes, `readable` (policy documents) and `unreadable` policies.
fn run_with_unreadable(readable: &str, unreadable: Vec<crate::UnreadablePolicy>) -> Output {
    let mut inputs = super::inputs(&format!("{ROUTES}{readable}"));
    inputs.unreadable_auth_policies = unreadable;
    crate::compile(&inputs, CONTROLLER_NAME)
}

/// The compiled auth policy `name` in the snapshot.
fn compiled<'a>(out: &'a Output, name: &str) -> &'a portico_model::auth::AuthPolicy {
    out.snapshots[&gw()]
        .policies
        .auth
        .iter()
        .find(|p| p.id.name == name)
        .unwrap_or_else(|| panic!("{name} not in the snapshot"))
}

#[test]
fn an_unreadable_policy_fails_closed_on_its_targets_and_says_why() {
    let out = run_with_unreadable("", vec![unreadable("p", "2026-01-01T00:00:00Z", ROUTE)]);
    // Both rules of the route name it, and it refuses: the dataplane answers 500.
    assert_eq!(applied(&out, "admin", 0).as_deref(), Some("p"));
    assert_eq!(applied(&out, "admin", 1).as_deref(), Some("p"));
    let refusal = compiled(&out, "p").invalid.as_deref().expect("refuses");
    assert!(refusal.contains("ES512"), "{refusal}");
    // Nothing else: a policy with no mechanism would let nobody in, but only by accident.
    assert!(compiled(&out, "p").jwt.is_none());
    assert_eq!(applied(&out, "shop", 0), None);

    let c = accepted(&out, "p", 0);
    assert!(!c.is_true());
    assert_eq!(c.reason, reasons::UNREADABLE);
    assert!(
        c.message.contains("cannot read the AuthPolicy")
            && c.message.contains("ES512")
            && c.message
                .contains("refused until the policy is fixed or Portico is upgraded"),
        "{}",
        c.message
    );
    assert_eq!(c.observed_generation, Some(2));
    let r = resolved(&out, "p");
    assert_eq!(
        (r.is_true(), r.reason.as_str()),
        (false, reasons::UNREADABLE)
    );
    assert!(
        out.status
            .problems()
            .iter()
            .any(|p| p.object.starts_with("AuthPolicy default/p")
                && p.condition.reason == reasons::UNREADABLE)
    );
}

#[test]
fn an_unreadable_policy_takes_part_in_precedence_like_any_other() {
    // On the Gateway: the route's own readable policy is more specific and applies whole on
    // `admin`; `shop` has nothing closer and is refused.
    let out = run_with_unreadable(
        &policy("on-route", "2026-01-05T00:00:00Z", ROUTE, API_KEYS),
        vec![unreadable("on-gw", "2026-01-01T00:00:00Z", GW)],
    );
    assert_eq!(applied(&out, "admin", 0).as_deref(), Some("on-route"));
    assert!(compiled(&out, "on-route").invalid.is_none());
    assert_eq!(applied(&out, "shop", 0).as_deref(), Some("on-gw"));
    assert!(compiled(&out, "on-gw").invalid.is_some());
    assert!(accepted(&out, "on-route", 0).is_true());
    assert_eq!(accepted(&out, "on-gw", 0).reason, reasons::UNREADABLE);

    // On one rule: that rule is refused, the rest of the route keeps the Gateway's policy.
    let out = run_with_unreadable(
        &policy("on-gw", "2026-01-01T00:00:00Z", GW, API_KEYS),
        vec![unreadable("on-rule", "2026-01-05T00:00:00Z", RULE)],
    );
    assert_eq!(applied(&out, "admin", 1).as_deref(), Some("on-rule"));
    assert!(compiled(&out, "on-rule").invalid.is_some());
    assert_eq!(applied(&out, "admin", 0).as_deref(), Some("on-gw"));
    assert_eq!(applied(&out, "shop", 0).as_deref(), Some("on-gw"));
    assert!(compiled(&out, "on-gw").invalid.is_none());
}

#[test]
fn an_unreadable_policy_wins_or_loses_a_conflict_by_age_like_any_other() {
    // Older: it holds the target, which is refused; the readable one is Conflicted.
    let out = run_with_unreadable(
        &policy("newer", "2026-02-01T00:00:00Z", ROUTE, API_KEYS),
        vec![unreadable("older", "2026-01-01T00:00:00Z", ROUTE)],
    );
    assert_eq!(applied(&out, "admin", 0).as_deref(), Some("older"));
    assert!(compiled(&out, "older").invalid.is_some());
    let c = accepted(&out, "newer", 0);
    assert_eq!(c.reason, reasons::CONFLICTED);
    assert!(c.message.contains("default/older"), "{}", c.message);
    assert_eq!(accepted(&out, "older", 0).reason, reasons::UNREADABLE);

    // Newer: the readable one keeps the target; the unreadable one is Conflicted, and says
    // so rather than that it cannot be read (it would not apply even if it could).
    let out = run_with_unreadable(
        &policy("older", "2026-01-01T00:00:00Z", ROUTE, API_KEYS),
        vec![unreadable("newer", "2026-02-01T00:00:00Z", ROUTE)],
    );
    assert_eq!(applied(&out, "admin", 0).as_deref(), Some("older"));
    assert!(compiled(&out, "older").invalid.is_none());
    assert_eq!(accepted(&out, "newer", 0).reason, reasons::CONFLICTED);
    assert!(
        out.snapshots[&gw()]
            .policies
            .auth
            .iter()
            .all(|p| p.id.name != "newer")
    );
}

#[test]
fn an_unreadable_policy_with_no_readable_target_attaches_nowhere() {
    let p = unreadable("lost", "2026-01-01T00:00:00Z", "[]");
    assert!(p.error.contains("protects nothing"), "{}", p.error);
    let out = run_with_unreadable("", vec![p]);
    let s = out
        .status
        .policy(PolicyKind::Auth, &ObjectRef::new("default", "lost"))
        .expect("still reported");
    assert!(s.ancestors.is_empty(), "{s:?}");
    assert_eq!(applied(&out, "admin", 0), None);
    assert!(out.snapshots[&gw()].policies.auth.is_empty());
}

#[test]
fn a_manifest_policy_that_does_not_decode_fails_the_load_and_unknown_fields_fail_closed() {
    use crate::manifests::{ManifestSet, UnknownFields};
    let es512 = policy(
        "p",
        "2026-01-01T00:00:00Z",
        ROUTE,
        "  jwt: {issuer: x, algorithms: [ES512], jwksUri: 'https://idp/jwks'}",
    );
    // Standalone mode refuses the whole directory: a running gateway keeps its last good
    // configuration, a starting one does not start. Nothing is served without the policy.
    for mode in [UnknownFields::Error, UnknownFields::Warn] {
        let mut set = ManifestSet {
            unknown_fields: mode,
            ..ManifestSet::default()
        };
        set.add_file("routes.yaml", ROUTES);
        set.add_file("policy.yaml", &es512);
        assert_eq!(set.errors.len(), 1, "{mode:?}: {:?}", set.errors);
        let e = &set.errors[0];
        assert_eq!(
            (e.file.as_str(), e.object.as_str()),
            ("policy.yaml", "AuthPolicy p")
        );
        assert!(e.message.contains("ES512"), "{}", e.message);
    }

    // A field it does not know: an error by default; allowed (`--unknown-fields warn`), the
    // policy loads as unreadable and refuses its targets instead of going without the field.
    let unknown = policy(
        "p",
        "2026-01-01T00:00:00Z",
        ROUTE,
        "  apiKey: {secretRefs: [{name: keys}]}\n  mtls: {caSecretRef: {name: ca}}",
    );
    let mut set = ManifestSet::default();
    set.add_file("policy.yaml", &unknown);
    assert!(
        set.errors[0].message.contains("spec.mtls"),
        "{:?}",
        set.errors
    );
    let mut set = ManifestSet {
        unknown_fields: UnknownFields::Warn,
        ..ManifestSet::default()
    };
    set.add_file("base.yaml", super::BASE);
    set.add_file("routes.yaml", ROUTES);
    set.add_file("policy.yaml", &unknown);
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    assert!(
        set.warnings[0].message.contains("spec.mtls")
            && set.warnings[0].message.contains("targets are refused"),
        "{:?}",
        set.warnings
    );
    assert!(set.inputs.auth_policies.is_empty());
    let out = crate::compile(&set.inputs, CONTROLLER_NAME);
    assert_eq!(applied(&out, "admin", 0).as_deref(), Some("p"));
    assert!(compiled(&out, "p").invalid.is_some());
    let c = accepted(&out, "p", 0);
    assert_eq!(c.reason, reasons::UNREADABLE);
    assert!(c.message.contains("spec.mtls"), "{}", c.message);
}
