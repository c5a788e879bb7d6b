//! CachePolicy: attachment and precedence (shared with the other policies), the compiled
//! policy in the snapshot, and every misconfiguration reported in the policy's own status
//! while its routes keep serving, uncached.

use super::{applied_policy, gw, policy_condition, run};
use crate::Output;
use crate::status::{Condition, reasons, types};
use portico_model::ObjectRef;
use portico_model::PolicyKind;
use portico_model::cache::{PurgeKind, QueryKey};

const ROUTES: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - name: images
    matches: [{path: {type: PathPrefix, value: /images}}]
    backendRefs: [{name: svc, port: 80}]
  - backendRefs: [{name: svc, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: other, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /other}}]
    backendRefs: [{name: svc, port: 80}]
"#;

fn policy(name: &str, created: &str, targets: &str, body: &str) -> String {
    format!(
        "---\napiVersion: portico.dev/v1alpha1\nkind: CachePolicy\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\nspec:\n  targetRefs: {targets}\n{body}\n"
    )
}

const GW: &str = "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]";
const ROUTE: &str = "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}]";
const RULE: &str =
    "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: images}]";
const T1: &str = "2026-01-01T00:00:00Z";
const T2: &str = "2026-01-02T00:00:00Z";

fn accepted(out: &Output, policy: &str) -> Condition {
    policy_condition(out, PolicyKind::Cache, policy, 0, types::ACCEPTED)
}

fn applied(out: &Output, route: &str, rule: usize) -> Option<String> {
    applied_policy(out, route, rule, PolicyKind::Cache)
}

#[test]
fn the_most_specific_policy_applies_whole_and_the_oldest_wins_a_tie() {
    let out = run(&format!(
        "{ROUTES}{}{}{}{}",
        policy("gateway", T1, GW, "  defaultTTL: 1m"),
        policy("route", T1, ROUTE, "  defaultTTL: 5m"),
        policy(
            "rule",
            T1,
            RULE,
            "  forcedTTL: 1h\n  key: {ignoreQuery: true}"
        ),
        policy("younger", T2, RULE, "  defaultTTL: 1m"),
    ));
    assert_eq!(applied(&out, "api", 0).as_deref(), Some("rule"));
    assert_eq!(applied(&out, "api", 1).as_deref(), Some("route"));
    assert_eq!(applied(&out, "other", 0).as_deref(), Some("gateway"));
    let c = accepted(&out, "younger");
    assert_eq!(c.reason, reasons::CONFLICTED);
    for p in ["gateway", "route", "rule"] {
        assert!(accepted(&out, p).is_true(), "{p}");
    }
    let snap = &out.snapshots[&gw()];
    let rule = snap
        .policies
        .cache
        .iter()
        .find(|p| p.id.name == "rule")
        .expect("compiled");
    assert_eq!(rule.forced_ttl, Some(3600));
    assert_eq!(rule.key.query, QueryKey::None);
    // Only what routes use is sent: the conflicted one is not.
    assert!(snap.policies.cache.iter().all(|p| p.id.name != "younger"));
}

#[test]
fn a_broken_policy_is_reported_and_its_routes_serve_uncached_or_under_the_next_one() {
    let out = run(&format!(
        "{ROUTES}{}{}",
        policy("gateway", T1, GW, "  defaultTTL: 1m"),
        policy("broken", T1, ROUTE, "  defaultTTL: 2h\n  maxTTL: 1h"),
    ));
    let c = accepted(&out, "broken");
    assert_eq!(c.reason, reasons::INVALID);
    assert!(c.message.contains("longer than maxTTL"), "{}", c.message);
    // The route is served, under the Gateway's policy.
    assert_eq!(applied(&out, "api", 1).as_deref(), Some("gateway"));
}

#[test]
fn keying_by_consumer_needs_an_auth_policy_and_a_missing_target_is_reported() {
    let by_consumer = "  key: {consumer: true}";
    let missing = "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: missing}]";
    let out = run(&format!(
        "{ROUTES}{}{}",
        policy("by-consumer", T1, ROUTE, by_consumer),
        policy("nowhere", T1, missing, ""),
    ));
    let c = accepted(&out, "by-consumer");
    assert_eq!(c.reason, reasons::INVALID);
    assert!(c.message.contains("key.consumer needs"), "{}", c.message);
    assert_eq!(accepted(&out, "nowhere").reason, reasons::TARGET_NOT_FOUND);
    let keys = "---\napiVersion: portico.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: keys, namespace: default}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n  apiKey: {secretRefs: [{name: keys}]}\n";
    let out = run(&format!(
        "{ROUTES}{keys}{}",
        policy("by-consumer", T1, ROUTE, by_consumer)
    ));
    assert!(accepted(&out, "by-consumer").is_true());
    assert!(out.snapshots[&gw()].policies.cache[0].key.consumer);
}

fn invalidation(name: &str, uid: &str, targets: &str, purges: &str) -> String {
    format!(
        "---\napiVersion: portico.dev/v1alpha1\nkind: CacheInvalidation\nmetadata: {{name: {name}, namespace: default, uid: {uid}, generation: 1}}\nspec:\n  targetRefs: {targets}\n  purges: {purges}\n"
    )
}

fn purged(out: &Output, name: &str, ancestor: usize) -> (Condition, Condition) {
    let accepted = policy_condition(
        out,
        PolicyKind::Invalidation,
        name,
        ancestor,
        types::ACCEPTED,
    );
    let purged = policy_condition(out, PolicyKind::Invalidation, name, ancestor, types::PURGED);
    (accepted, purged)
}

#[test]
fn invalidations_reach_the_snapshots_of_their_gateways_written_as_keys_hold_them() {
    let purges = "[{type: URL, value: 'HTTPS://Shop.test/a?b=1'}, {type: Prefix, value: 'http://shop.test/img/'}, {type: Tag, value: product-42}]";
    let out = run(&format!(
        "{ROUTES}{}{}",
        invalidation("by-route", "u1", ROUTE, purges),
        invalidation("by-gateway", "u2", GW, "[{type: Tag, value: all}]"),
    ));
    let snap = &out.snapshots[&gw()];
    let values: Vec<(&str, PurgeKind)> = snap
        .purges
        .iter()
        .map(|p| (p.value.as_str(), p.kind))
        .collect();
    for expected in [
        ("https://shop.test:443/a?b=1", PurgeKind::Url),
        ("http://shop.test:80/img/", PurgeKind::Prefix),
        ("product-42", PurgeKind::Tag),
        ("all", PurgeKind::Tag),
    ] {
        assert!(values.contains(&expected), "{expected:?} in {values:?}");
    }
    // One id per invalidation revision, the same on every compile.
    let ids: std::collections::BTreeSet<&str> = snap.purges.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let again = run(&format!(
        "{ROUTES}{}{}",
        invalidation("by-route", "u1", ROUTE, purges),
        invalidation("by-gateway", "u2", GW, "[{type: Tag, value: all}]"),
    ));
    assert_eq!(again.snapshots[&gw()].purges, snap.purges);
    // A changed spec is a new purge.
    let changed = run(&format!(
        "{ROUTES}{}",
        invalidation("by-gateway", "u2", GW, "[{type: Tag, value: other}]"),
    ));
    let id = |o: &Output| o.snapshots[&gw()].purges[0].id.clone();
    let before = snap
        .purges
        .iter()
        .find(|p| p.value == "all")
        .map(|p| p.id.clone());
    assert_ne!(Some(id(&changed)), before);
    let (accepted, pending) = purged(&out, "by-route", 0);
    assert!(accepted.is_true(), "{accepted:?}");
    assert_eq!(
        (pending.status.as_str(), pending.reason.as_str()),
        ("False", reasons::PENDING)
    );
    assert_eq!(
        out.status.purges[&ObjectRef::new("default", "by-route")].len(),
        1
    );
    // A route's invalidation is scoped to that route's entries; a Gateway's is not.
    for p in &snap.purges {
        let expected: Vec<String> = if p.value == "all" {
            vec![]
        } else {
            vec!["default/api".into()]
        };
        assert_eq!(p.routes, expected, "{p:?}");
    }
}

#[test]
fn a_bad_invalidation_is_reported_and_sends_nothing() {
    let missing = "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: missing}]";
    let out = run(&format!(
        "{ROUTES}{}{}",
        invalidation("relative", "u1", ROUTE, "[{type: URL, value: /a}]"),
        invalidation("nowhere", "u2", missing, "[{type: Tag, value: x}]"),
    ));
    let (accepted, purged_) = purged(&out, "relative", 0);
    assert_eq!(accepted.reason, reasons::INVALID);
    assert!(
        accepted.message.contains("purges[0]"),
        "{}",
        accepted.message
    );
    assert!(!purged_.is_true());
    assert_eq!(
        purged(&out, "nowhere", 0).0.reason,
        reasons::TARGET_NOT_FOUND
    );
    assert!(out.snapshots[&gw()].purges.is_empty());
}

#[test]
fn a_shared_tier_needs_a_redis_from_the_policy_the_gateway_or_the_controller() {
    let out = run(&format!(
        "{ROUTES}{}{}",
        policy("no-redis", T1, ROUTE, "  shared: {}"),
        policy(
            "own",
            T1,
            GW,
            "  shared: {redisUrl: \"redis://cache.infra:6380/2\"}"
        ),
    ));
    let c = accepted(&out, "no-redis");
    assert_eq!(c.reason, reasons::INVALID);
    assert!(c.message.contains("needs a Redis"), "{}", c.message);
    let own = out.snapshots[&gw()]
        .policies
        .cache
        .iter()
        .find(|p| p.id.name == "own")
        .expect("compiled");
    let shared = own.shared.as_ref().expect("a shared tier");
    assert_eq!(shared.redis_url, "redis://cache.infra:6380/2");
    assert_eq!(
        shared.timeout_ms,
        portico_model::cache::DEFAULT_SHARED_TIMEOUT_MS
    );
    // The controller's default fills in the policy's.
    let mut inputs = super::inputs(&format!(
        "{ROUTES}{}",
        policy("no-redis", T1, ROUTE, "  shared: {}")
    ));
    inputs.redis_url = Some("redis://default:6379".into());
    let out = crate::compile(&inputs, crate::CONTROLLER_NAME);
    assert!(accepted(&out, "no-redis").is_true());
    assert_eq!(
        out.snapshots[&gw()].policies.cache[0]
            .shared
            .as_ref()
            .map(|s| s.redis_url.as_str()),
        Some("redis://default:6379")
    );
}
