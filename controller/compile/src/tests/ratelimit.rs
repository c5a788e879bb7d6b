//! RateLimitPolicy: attachment and precedence (shared with AuthPolicy), defaults, and every
//! misconfiguration reported in the policy's own status while the routes keep serving.

use super::{applied_policy, gw, inputs, policy_condition, run};
use crate::status::{Condition, reasons, types};
use crate::{CONTROLLER_NAME, Output, compile};
use portico_model::ratelimit::{Algorithm, KeyPart, Scope};
use portico_model::{ObjectRef, PolicyKind};

const ROUTES: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - name: login
    matches: [{path: {type: PathPrefix, value: /login}}]
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
        "---\napiVersion: portico.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\nspec:\n  targetRefs: {targets}\n{body}\n"
    )
}

const GW: &str = "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]";
const ROUTE: &str = "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}]";
const RULE: &str =
    "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: login}]";
const T1: &str = "2026-01-01T00:00:00Z";
const T2: &str = "2026-01-02T00:00:00Z";

fn accepted(out: &Output, policy: &str) -> Condition {
    policy_condition(out, PolicyKind::RateLimit, policy, 0, types::ACCEPTED)
}

/// The policy applied to (route, rule index).
fn applied(out: &Output, route: &str, rule: usize) -> Option<String> {
    applied_policy(out, route, rule, PolicyKind::RateLimit)
}

#[test]
fn most_specific_policy_applies_and_the_oldest_wins_a_tie() {
    let simple = "  limits: [{requests: 10, interval: 1s}]";
    let out = run(&format!(
        "{ROUTES}{}{}{}{}",
        policy("gateway", T1, GW, simple),
        policy("route", T1, ROUTE, simple),
        policy("rule", T1, RULE, simple),
        policy("younger", T2, RULE, simple),
    ));
    assert_eq!(applied(&out, "api", 0).as_deref(), Some("rule"));
    assert_eq!(applied(&out, "api", 1).as_deref(), Some("route"));
    assert_eq!(applied(&out, "other", 0).as_deref(), Some("gateway"));
    let c = accepted(&out, "younger");
    assert_eq!(c.reason, reasons::CONFLICTED);
    assert!(c.message.contains("default/rule"), "{}", c.message);
    for p in ["gateway", "route", "rule"] {
        assert!(accepted(&out, p).is_true(), "{p}");
    }
}

#[test]
fn defaults_are_filled_in_and_durations_parsed() {
    let body = r#"  clientIP: {trustedHops: 2}
  limits:
  - {requests: 100, interval: 1m}
  - name: login-burst
    requests: 5
    interval: 500ms
    algorithm: SlidingWindow
    key: [{type: ClientIP}, {type: Header, name: X-Tenant}]
    match: {methods: [post], path: {value: /login}}"#;
    let out = run(&format!("{ROUTES}{}", policy("rl", T1, ROUTE, body)));
    assert!(accepted(&out, "rl").is_true());
    let p = &out.snapshots[&gw()].policies.rate_limit[0];
    assert_eq!(p.trusted_hops, 2);
    assert!(p.response_headers, "headers are on by default");
    assert!(p.global.is_none());
    let (a, b) = (&p.limits[0], &p.limits[1]);
    assert_eq!((a.name.as_str(), a.interval_ms), ("limit-0", 60_000));
    assert_eq!(
        (a.algorithm, a.burst, a.scope),
        (Algorithm::TokenBucket, 100, Scope::Local)
    );
    assert_eq!((b.name.as_str(), b.interval_ms), ("login-burst", 500));
    assert_eq!(
        b.key,
        vec![KeyPart::ClientIp, KeyPart::Header("x-tenant".into())]
    );
    let m = b.match_.as_ref().expect("match");
    assert_eq!(m.methods, vec!["POST".to_string()]);
}

#[test]
fn a_global_limit_uses_the_policy_redis_or_else_the_default_and_reports_when_there_is_none() {
    let body = "  limits: [{requests: 10, interval: 1s, scope: Global}]";
    let out = run(&format!("{ROUTES}{}", policy("rl", T1, ROUTE, body)));
    let c = accepted(&out, "rl");
    assert!(!c.is_true());
    assert_eq!(c.reason, reasons::INVALID);
    assert!(c.message.contains("--redis-url"), "{}", c.message);
    // Not attached: the route serves unlimited rather than not at all.
    assert_eq!(applied(&out, "api", 1), None);
    assert!(
        out.snapshots[&gw()]
            .routes
            .iter()
            .any(|r| r.id.name == "api")
    );

    let mut i = inputs(&format!("{ROUTES}{}", policy("rl", T1, ROUTE, body)));
    i.redis_url = Some("redis://10.0.0.5:6380/1".into());
    let out = compile(&i, CONTROLLER_NAME);
    assert!(accepted(&out, "rl").is_true());
    let g = out.snapshots[&gw()].policies.rate_limit[0]
        .global
        .clone()
        .expect("global");
    assert_eq!(g.redis_url, "redis://10.0.0.5:6380/1");
    assert!(!g.fail_closed, "fail open by default");
    assert_eq!(g.timeout_ms, 100);

    let own = "  global: {redisUrl: \"redis://redis.infra:6379\", failureMode: FailClosed, timeoutMilliseconds: 50}\n  limits: [{requests: 10, interval: 1s, scope: Global}]";
    let out = compile(
        &inputs(&format!("{ROUTES}{}", policy("rl", T1, ROUTE, own))),
        CONTROLLER_NAME,
    );
    let g = out.snapshots[&gw()].policies.rate_limit[0]
        .global
        .clone()
        .expect("global");
    assert_eq!(
        (g.redis_url.as_str(), g.fail_closed, g.timeout_ms),
        ("redis://redis.infra:6379", true, 50)
    );
}

#[test]
fn a_claim_or_consumer_key_needs_an_auth_policy_that_provides_it() {
    let claim = "  limits: [{requests: 10, interval: 1s, key: [{type: Claim, name: org.id}]}]";
    let consumer = "  limits: [{requests: 10, interval: 1s, key: [{type: Consumer}]}]";
    let out = run(&format!(
        "{ROUTES}{}{}",
        policy("by-claim", T1, ROUTE, claim),
        policy("by-consumer", T1, RULE, consumer)
    ));
    for p in ["by-claim", "by-consumer"] {
        let c = accepted(&out, p);
        assert_eq!(c.reason, reasons::INVALID, "{p}");
        assert!(c.message.contains("AuthPolicy"), "{p}: {}", c.message);
    }
    // API keys give a consumer but no claims.
    let keys = "---\napiVersion: portico.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: keys, namespace: default}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n  apiKey: {secretRefs: [{name: keys}]}\n";
    let out = run(&format!(
        "{ROUTES}{keys}{}{}",
        policy("by-claim", T1, ROUTE, claim),
        policy("by-consumer", T1, RULE, consumer)
    ));
    assert!(accepted(&out, "by-consumer").is_true());
    assert_eq!(accepted(&out, "by-claim").reason, reasons::INVALID);
    assert_eq!(
        out.snapshots[&gw()].policies.rate_limit[0].limits[0].key,
        vec![KeyPart::Consumer]
    );
}

#[test]
fn invalid_limits_are_reported_and_the_other_policies_still_apply() {
    let good = policy("good", T1, GW, "  limits: [{requests: 10, interval: 1s}]");
    for (body, why) in [
        ("  limits: [{requests: 10, interval: forever}]", "interval"),
        ("  limits: [{requests: 10, interval: 0s}]", "interval"),
        ("  limits: [{requests: 10, interval: 48h}]", "interval"),
        ("  limits: [{requests: 0, interval: 1s}]", "requests"),
        (
            "  limits: [{requests: 10, interval: 1s, algorithm: FixedWindow, burst: 5}]",
            "burst",
        ),
        (
            "  limits: [{requests: 10, interval: 1s, key: [{type: Header}]}]",
            "name",
        ),
        (
            "  limits: [{requests: 10, interval: 1s, key: [{type: Header, name: \"bad header\"}]}]",
            "header",
        ),
        (
            "  limits: [{requests: 10, interval: 1s, key: [{type: ClientIP, name: x}]}]",
            "name",
        ),
        (
            "  limits: [{name: a, requests: 1, interval: 1s}, {name: a, requests: 2, interval: 1s}]",
            "named",
        ),
        (
            "  limits: [{name: Upper, requests: 1, interval: 1s}]",
            "name",
        ),
        (
            "  global: {redisUrl: \"redis://u:pw@h:1\"}\n  limits: [{requests: 1, interval: 1s, scope: Global}]",
            "credentials",
        ),
        (
            "  limits: [{requests: 1, interval: 1s, match: {path: {value: nope}}}]",
            "path",
        ),
    ] {
        let out = run(&format!("{ROUTES}{good}{}", policy("bad", T1, ROUTE, body)));
        let c = accepted(&out, "bad");
        assert_eq!(c.reason, reasons::INVALID, "{body}");
        assert!(c.message.contains(why), "{body}: {}", c.message);
        // The route falls back to the Gateway's policy.
        assert_eq!(applied(&out, "api", 1).as_deref(), Some("good"), "{body}");
        assert!(
            !c.message.contains("refused"),
            "a bad limit does not refuse requests"
        );
    }
}

#[test]
fn a_gateway_config_gives_its_gateways_a_redis() {
    let docs = r#"
---
apiVersion: portico.dev/v1alpha1
kind: GatewayConfig
metadata: {name: cfg, namespace: default}
spec: {redisUrl: "redis://redis.team:6379/3"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: own, namespace: default}
spec:
  gatewayClassName: portico
  infrastructure: {parametersRef: {group: portico.dev, kind: GatewayConfig, name: cfg}}
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: team, namespace: default}
spec:
  parentRefs: [{name: own}]
  rules: [{backendRefs: [{name: svc, port: 80}]}]
"#;
    let body = "  limits: [{requests: 10, interval: 1s, scope: Global}]";
    let route_target = "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: team}]";
    let out = run(&format!(
        "{docs}{ROUTES}{}{}",
        policy("team", T1, route_target, body),
        // On a route of `gw`, which has no GatewayConfig and no default: reported.
        policy("other", T1, ROUTE, body)
    ));
    assert!(accepted(&out, "team").is_true());
    let snap = &out.snapshots[&ObjectRef::new("default", "own")];
    let g = snap.policies.rate_limit[0].global.clone().expect("global");
    assert_eq!(g.redis_url, "redis://redis.team:6379/3");
    let c = accepted(&out, "other");
    assert_eq!(c.reason, reasons::INVALID);
    assert!(
        c.message.contains("GatewayConfig of Gateway default/gw"),
        "{}",
        c.message
    );
}

#[test]
fn a_service_target_is_refused_and_the_routes_keep_serving() {
    let simple = "  limits: [{requests: 10, interval: 1s}]";
    let out = run(&format!(
        "{ROUTES}{}",
        policy("p", T1, "[{group: '', kind: Service, name: svc}]", simple)
    ));
    let c = accepted(&out, "p");
    assert!(!c.is_true());
    assert_eq!(c.reason, reasons::INVALID);
    assert!(
        c.message
            .contains("a RateLimitPolicy applies to requests as they are routed"),
        "{}",
        c.message
    );
    assert_eq!(applied(&out, "api", 0), None);
    assert!(out.snapshots[&gw()].policies.rate_limit.is_empty());
}

#[test]
fn policies_of_two_kinds_with_one_name_keep_their_own_status() {
    let auth = "---\napiVersion: portico.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: same, namespace: default}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: missing}]\n  apiKey: {secretRefs: [{name: keys}]}\n";
    let limit = policy(
        "same",
        T1,
        ROUTE,
        "  limits: [{requests: 10, interval: 1s}]",
    );
    let out = run(&format!("{ROUTES}{auth}{limit}"));
    let same = ObjectRef::new("default", "same");
    let of =
        |kind| out.status.policy(kind, &same).expect("status").ancestors[0].conditions[0].clone();
    assert_eq!(of(PolicyKind::Auth).reason, reasons::TARGET_NOT_FOUND);
    assert!(of(PolicyKind::RateLimit).is_true());
    assert_eq!(applied(&out, "api", 0).as_deref(), Some("same"));
    // Problems and `portico check --status` name each kind apart, as before the kinds
    // shared one map.
    let problems = out.status.problems();
    assert!(
        !problems.is_empty()
            && problems
                .iter()
                .all(|p| p.object.starts_with("AuthPolicy default/same target")),
        "{problems:?}"
    );
    let shown = serde_json::to_value(&out.status).expect("status as JSON");
    assert!(
        shown["authPolicies"]["default/same"]["ancestors"].is_array(),
        "{shown}"
    );
    assert!(
        shown["rateLimitPolicies"]["default/same"]["ancestors"].is_array(),
        "{shown}"
    );
}
