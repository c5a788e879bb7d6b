//! Compile tables: YAML in, snapshot and status out.

use crate::manifests::ManifestSet;
use crate::status::{Condition, find, reasons, types};
use crate::{CONTROLLER_NAME, Output, compile};
use portico_model::{BackendTarget, ObjectRef, PathMatch};

const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portico}
spec: {controllerName: portico.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: someone-else}
spec: {controllerName: example.com/other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: portico
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - name: wild
    port: 8080
    protocol: HTTP
    hostname: "*.example.com"
    allowedRoutes: {namespaces: {from: All}}
  - name: selected
    port: 9090
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: Selector
        selector: {matchLabels: {team: blue}}
---
apiVersion: v1
kind: Namespace
metadata: {name: blue, labels: {team: blue}}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: default}
spec:
  ports:
  - {name: web, port: 80, targetPort: 8080}
  - {name: grpc, port: 81, appProtocol: kubernetes.io/h2c}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-1
  namespace: default
  labels: {kubernetes.io/service-name: svc}
addressType: IPv4
ports:
- {name: web, port: 8080}
endpoints:
- addresses: [127.0.0.2]
  conditions: {ready: true}
- addresses: [127.0.0.3]
  conditions: {ready: false, serving: true, terminating: true}
"#;

pub(crate) fn inputs(extra: &str) -> crate::Inputs {
    let mut set = ManifestSet::default();
    set.add_file("base.yaml", BASE);
    set.add_file("extra.yaml", extra);
    assert!(set.errors.is_empty(), "manifest errors: {:?}", set.errors);
    set.inputs
}

fn run(extra: &str) -> Output {
    let mut set = ManifestSet::default();
    set.add_file("base.yaml", BASE);
    set.add_file("extra.yaml", extra);
    assert!(set.errors.is_empty(), "manifest errors: {:?}", set.errors);
    compile(&set.inputs, CONTROLLER_NAME)
}

/// Condition `type_` of the `i`th target of policy `default/<name>` of `kind`.
fn policy_condition(
    out: &Output,
    kind: portico_model::PolicyKind,
    name: &str,
    i: usize,
    type_: &str,
) -> Condition {
    let s = out
        .status
        .policy(kind, &ObjectRef::new("default", name))
        .unwrap_or_else(|| panic!("no status for {kind} {name}"));
    find(&s.ancestors[i].conditions, type_)
        .expect(type_)
        .clone()
}

/// The policy of `kind` a rule gets (its own, else its route parent's).
fn applied_policy(
    out: &Output,
    route: &str,
    rule: usize,
    kind: portico_model::PolicyKind,
) -> Option<String> {
    let snap = &out.snapshots[&gw()];
    let r = snap
        .routes
        .iter()
        .find(|r| r.id.name == route)
        .expect("route in snapshot");
    r.rules[rule]
        .policies
        .get(kind)
        .or_else(|| r.parents[0].policies.get(kind))
        .map(|id| id.name.clone())
}

fn gw() -> ObjectRef {
    ObjectRef::new("default", "gw")
}

fn route_condition(out: &Output, route: &str, type_: &str) -> Condition {
    let (ns, name) = route.split_once('/').expect("ns/name");
    let status = out
        .status
        .http_routes
        .get(&ObjectRef::new(ns, name))
        .unwrap_or_else(|| panic!("no status for {route}"));
    find(&status.parents[0].conditions, type_)
        .expect("condition")
        .clone()
}

fn route(name: &str, ns: &str, parent: &str, extra_spec: &str) -> String {
    format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs: [{parent}]
{extra_spec}
"#
    )
}

#[test]
fn only_our_gateway_classes_are_accepted() {
    let out = run("");
    let ours = &out.status.gateway_classes["portico"];
    assert!(ours.conditions[0].is_true());
    assert!(!out.status.gateway_classes.contains_key("someone-else"));
    let g = &out.status.gateways[&gw()];
    assert_eq!(
        find(&g.conditions, types::ACCEPTED).map(Condition::is_true),
        Some(true)
    );
    assert_eq!(
        find(&g.conditions, types::PROGRAMMED).map(|c| c.reason.as_str()),
        Some(reasons::PENDING)
    );
}

#[test]
fn attachment_by_section_name_port_and_namespace() {
    let extra = [
        route("by-section", "default", "{name: gw, sectionName: http}", ""),
        route("by-port", "default", "{name: gw, port: 8080}", ""),
        route("no-section", "default", "{name: gw, sectionName: nope}", ""),
        route(
            "other-ns-all",
            "blue",
            "{name: gw, namespace: default, sectionName: wild}",
            "",
        ),
        route(
            "other-ns-same",
            "blue",
            "{name: gw, namespace: default, sectionName: http}",
            "",
        ),
        route(
            "selected-ok",
            "blue",
            "{name: gw, namespace: default, sectionName: selected}",
            "",
        ),
        route(
            "selected-no",
            "red",
            "{name: gw, namespace: default, sectionName: selected}",
            "",
        ),
        route("not-ours", "default", "{name: elsewhere}", ""),
    ]
    .concat();
    let out = run(&extra);
    let accepted = |r: &str| route_condition(&out, r, types::ACCEPTED);
    assert!(accepted("default/by-section").is_true());
    assert!(accepted("default/by-port").is_true());
    assert_eq!(
        accepted("default/no-section").reason,
        reasons::NO_MATCHING_PARENT
    );
    assert!(accepted("blue/other-ns-all").is_true());
    assert_eq!(
        accepted("blue/other-ns-same").reason,
        reasons::NOT_ALLOWED_BY_LISTENERS
    );
    assert!(accepted("blue/selected-ok").is_true());
    assert_eq!(
        accepted("red/selected-no").reason,
        reasons::NOT_ALLOWED_BY_LISTENERS
    );
    assert!(
        !out.status
            .http_routes
            .contains_key(&ObjectRef::new("default", "not-ours"))
    );

    let snap = &out.snapshots[&gw()];
    let parents = |name: &str| -> Vec<String> {
        snap.routes
            .iter()
            .find(|r| r.id.name == name)
            .map(|r| r.parents.iter().map(|p| p.listener.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(parents("by-section"), ["http"]);
    assert_eq!(parents("by-port"), ["wild"]);
    assert!(parents("no-section").is_empty());
    let listeners = &out.status.gateways[&gw()].listeners;
    let attached: Vec<(String, i32)> = listeners
        .iter()
        .map(|l| (l.name.clone(), l.attached_routes))
        .collect();
    assert_eq!(
        attached,
        [
            ("http".into(), 1),
            ("wild".into(), 2),
            ("selected".into(), 1)
        ]
    );
}

#[test]
fn route_hostnames_intersect_listener_hostnames() {
    let extra = [
        route(
            "narrower",
            "default",
            "{name: gw, sectionName: wild}",
            "  hostnames: [a.example.com, b.example.net]",
        ),
        route(
            "disjoint",
            "default",
            "{name: gw, sectionName: wild}",
            "  hostnames: [example.net]",
        ),
        route("any", "default", "{name: gw, sectionName: wild}", ""),
    ]
    .concat();
    let out = run(&extra);
    assert_eq!(
        route_condition(&out, "default/disjoint", types::ACCEPTED).reason,
        reasons::NO_MATCHING_LISTENER_HOSTNAME
    );
    let snap = &out.snapshots[&gw()];
    let hosts = |name: &str| {
        snap.routes
            .iter()
            .find(|r| r.id.name == name)
            .map(|r| r.parents[0].hostnames.clone())
    };
    assert_eq!(hosts("narrower"), Some(vec!["a.example.com".to_string()]));
    assert_eq!(hosts("any"), Some(vec!["*.example.com".to_string()]));
}

#[test]
fn routes_are_ordered_oldest_first_then_by_name() {
    let mut extra = String::new();
    for (name, ts) in [
        ("b", "2024-01-01T00:00:00Z"),
        ("a", "2024-01-02T00:00:00Z"),
        ("c", "2024-01-01T00:00:00Z"),
    ] {
        extra.push_str(&format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{ts}\"}}\nspec: {{parentRefs: [{{name: gw}}]}}\n"
        ));
    }
    let out = run(&extra);
    let order: Vec<&str> = out.snapshots[&gw()]
        .routes
        .iter()
        .map(|r| r.id.name.as_str())
        .collect();
    assert_eq!(order, ["b", "c", "a"]);
}

#[test]
fn conflicting_listeners_are_all_rejected() {
    let extra = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: clash, namespace: default}
spec:
  gatewayClassName: portico
  listeners:
  - {name: a, port: 80, protocol: HTTP, hostname: x.example.com}
  - {name: b, port: 80, protocol: HTTP, hostname: x.example.com}
  - {name: c, port: 80, protocol: HTTP, hostname: y.example.com}
  - {name: d, port: 443, protocol: HTTP}
  - {name: e, port: 443, protocol: HTTPS}
"#;
    let out = run(extra);
    let g = &out.status.gateways[&ObjectRef::new("default", "clash")];
    let conflicted = |name: &str| {
        let l = g
            .listeners
            .iter()
            .find(|l| l.name == name)
            .expect("listener");
        find(&l.conditions, types::CONFLICTED)
            .expect("conflicted")
            .clone()
    };
    assert_eq!(conflicted("a").reason, reasons::HOSTNAME_CONFLICT);
    assert_eq!(conflicted("b").reason, reasons::HOSTNAME_CONFLICT);
    assert!(!conflicted("c").is_true());
    assert_eq!(conflicted("d").reason, reasons::PROTOCOL_CONFLICT);
    assert_eq!(conflicted("e").reason, reasons::PROTOCOL_CONFLICT);
    let accepted = find(&g.conditions, types::ACCEPTED).expect("accepted");
    assert!(accepted.is_true(), "c is still usable");
    assert_eq!(accepted.reason, reasons::LISTENERS_NOT_VALID);
    assert!(accepted.message.contains('a') && accepted.message.contains('e'));
    let listeners: Vec<&str> = out.snapshots[&ObjectRef::new("default", "clash")]
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(listeners, ["c"]);
}

#[test]
fn invalid_route_kinds_and_unsupported_protocols_on_listeners() {
    let extra = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: kinds, namespace: default}
spec:
  gatewayClassName: portico
  listeners:
  - name: k
    port: 80
    protocol: HTTP
    allowedRoutes: {kinds: [{kind: HTTPRoute}, {kind: TCPRoute}]}
  - {name: u, port: 81, protocol: example.com/SCTP}
  - name: t
    port: 443
    protocol: TLS
    tls: {mode: Passthrough}
    allowedRoutes: {kinds: [{kind: HTTPRoute}]}
  - name: t2
    port: 8443
    protocol: TLS
    tls: {mode: Passthrough}
    allowedRoutes: {kinds: [{kind: TLSRoute}]}
"#;
    let out = run(extra);
    let g = &out.status.gateways[&ObjectRef::new("default", "kinds")];
    let k = &g.listeners[0];
    assert_eq!(k.supported_kinds, ["HTTPRoute"]);
    assert_eq!(
        find(&k.conditions, types::RESOLVED_REFS).map(|c| c.reason.as_str()),
        Some(reasons::INVALID_ROUTE_KINDS)
    );
    let u = &g.listeners[1];
    assert_eq!(
        find(&u.conditions, types::ACCEPTED).map(|c| c.reason.as_str()),
        Some(reasons::UNSUPPORTED_PROTOCOL)
    );
    // A listener that serves nothing supports no route kind (conformance:
    // GatewayListenerUnsupportedProtocol).
    assert!(u.supported_kinds.is_empty(), "{:?}", u.supported_kinds);
    // An HTTPRoute can never attach to a TLS listener: that is said, whatever Portico
    // serves; a TLSRoute could, and only the protocol is unsupported.
    let resolved = |i: usize| {
        find(&g.listeners[i].conditions, types::RESOLVED_REFS)
            .expect("resolved")
            .clone()
    };
    assert_eq!(resolved(2).reason, reasons::INVALID_ROUTE_KINDS);
    assert!(
        resolved(2).message.contains("HTTPRoute"),
        "{:?}",
        resolved(2)
    );
    assert!(resolved(3).is_true(), "{:?}", resolved(3));
    assert!(g.listeners[2].supported_kinds.is_empty());
}

fn backend_rule(backend: &str) -> String {
    format!("  rules:\n  - backendRefs: [{backend}]")
}

#[test]
fn every_invalid_reference_reason() {
    let extra = [
        route(
            "missing",
            "default",
            "{name: gw}",
            &backend_rule("{name: nope, port: 80}"),
        ),
        route(
            "badport",
            "default",
            "{name: gw}",
            &backend_rule("{name: svc, port: 99}"),
        ),
        route(
            "kind",
            "default",
            "{name: gw}",
            &backend_rule("{name: svc, kind: ConfigMap, port: 80}"),
        ),
        route(
            "cross",
            "blue",
            "{name: gw, namespace: default, sectionName: wild}",
            &backend_rule("{name: svc, namespace: default, port: 80}"),
        ),
        route(
            "ok",
            "default",
            "{name: gw}",
            &backend_rule("{name: svc, port: 80}"),
        ),
    ]
    .concat();
    let out = run(&extra);
    let resolved = |r: &str| route_condition(&out, r, types::RESOLVED_REFS);
    assert_eq!(
        resolved("default/missing").reason,
        reasons::BACKEND_NOT_FOUND
    );
    assert_eq!(
        resolved("default/badport").reason,
        reasons::BACKEND_NOT_FOUND
    );
    assert_eq!(resolved("default/kind").reason, reasons::INVALID_KIND);
    assert_eq!(resolved("blue/cross").reason, reasons::REF_NOT_PERMITTED);
    assert!(resolved("default/ok").is_true());
    // Unresolved routes are still accepted and keep their place, answering 500.
    assert!(route_condition(&out, "default/missing", types::ACCEPTED).is_true());
    let snap = &out.snapshots[&gw()];
    let target = |name: &str| {
        snap.routes
            .iter()
            .find(|r| r.id.name == name)
            .map(|r| r.rules[0].backend_refs[0].target.clone())
    };
    assert!(matches!(
        target("missing"),
        Some(BackendTarget::Unresolved { .. })
    ));
    assert!(matches!(target("ok"), Some(BackendTarget::Service(_))));
}

#[test]
fn reference_grant_permits_cross_namespace_backends() {
    let grant = r#"
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: allow-blue, namespace: default}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: blue}]
  to: [{group: "", kind: Service}]
"#;
    let extra = [
        grant.to_string(),
        route(
            "cross",
            "blue",
            "{name: gw, namespace: default, sectionName: wild}",
            &backend_rule("{name: svc, namespace: default, port: 80}"),
        ),
    ]
    .concat();
    let out = run(&extra);
    assert!(route_condition(&out, "blue/cross", types::RESOLVED_REFS).is_true());
}

#[test]
fn endpoints_follow_slices_by_port_name_with_conditions() {
    let extra = route(
        "ok",
        "default",
        "{name: gw}",
        &backend_rule("{name: svc, port: 80}"),
    );
    let out = run(&extra);
    let backend = &out.snapshots[&gw()].backends[0];
    assert_eq!(backend.id.to_string(), "default/svc:80");
    assert_eq!(backend.port_name.as_deref(), Some("web"));
    let eps: Vec<(&str, u16, bool, bool)> = backend
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.port, e.ready, e.terminating))
        .collect();
    assert_eq!(
        eps,
        [
            ("127.0.0.2", 8080, true, false),
            ("127.0.0.3", 8080, false, true)
        ]
    );
}

#[test]
fn h2c_app_protocol_and_annotation_endpoints() {
    let extra = r#"
---
apiVersion: v1
kind: Service
metadata:
  name: static
  namespace: default
  annotations: {portico.dev/endpoints: "127.0.0.5:7000, 127.0.0.6"}
spec:
  ports: [{port: 81, targetPort: 9000, appProtocol: kubernetes.io/h2c}]
"#
    .to_string()
        + &route(
            "r",
            "default",
            "{name: gw}",
            &backend_rule("{name: static, port: 81}"),
        );
    let out = run(&extra);
    let b = &out.snapshots[&gw()].backends[0];
    assert_eq!(b.protocol, portico_model::AppProtocol::H2c);
    let eps: Vec<(String, u16)> = b
        .endpoints
        .iter()
        .map(|e| (e.address.clone(), e.port))
        .collect();
    assert_eq!(
        eps,
        [
            ("127.0.0.5".to_string(), 7000),
            ("127.0.0.6".to_string(), 9000)
        ]
    );
}

#[test]
fn invalid_rules_reject_only_their_route() {
    let extra = [
        route("regex", "default", "{name: gw}", "  rules:\n  - matches: [{path: {type: RegularExpression, value: \"/(unclosed\"}}]"),
        route("path", "default", "{name: gw}", "  rules:\n  - matches: [{path: {type: Exact, value: \"no-slash\"}}]"),
        route("mirror", "default", "{name: gw}", "  rules:\n  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: svc, port: 80}, fraction: {numerator: 3, denominator: 2}}}]"),
        route("redirect-and-backend", "default", "{name: gw}", "  rules:\n  - filters: [{type: RequestRedirect, requestRedirect: {hostname: x.com}}]\n    backendRefs: [{name: svc, port: 80}]"),
        route("prefix-rewrite-on-exact", "default", "{name: gw}", "  rules:\n  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]"),
        route("timeouts", "default", "{name: gw}", "  rules:\n  - timeouts: {request: 1s, backendRequest: 2s}"),
        route("retry-code", "default", "{name: gw}", "  rules:\n  - retry: {codes: [200]}"),
        route("retry-backoff", "default", "{name: gw}", "  rules:\n  - retry: {codes: [503], backoff: soon}"),
        route("session", "default", "{name: gw}", "  rules:\n  - sessionPersistence: {sessionName: host, type: Header}"),
        route("session-permanent", "default", "{name: gw}", "  rules:\n  - sessionPersistence: {cookieConfig: {lifetimeType: Permanent}}"),
        route("good", "default", "{name: gw}", "  rules:\n  - matches: [{path: {type: RegularExpression, value: \"/v[0-9]+/.*\"}}]"),
    ]
    .concat();
    let out = run(&extra);
    for bad in [
        "regex",
        "path",
        "mirror",
        "redirect-and-backend",
        "prefix-rewrite-on-exact",
        "timeouts",
        "retry-code",
        "retry-backoff",
        "session",
        "session-permanent",
    ] {
        let c = route_condition(&out, &format!("default/{bad}"), types::ACCEPTED);
        assert!(!c.is_true(), "{bad} should be rejected");
        assert_eq!(c.reason, reasons::UNSUPPORTED_VALUE, "{bad}");
        assert!(c.message.starts_with("rule 0:"), "{bad}: {}", c.message);
    }
    assert!(
        route_condition(&out, "default/regex", types::ACCEPTED)
            .message
            .contains("(unclosed")
    );
    let names: Vec<&str> = out.snapshots[&gw()]
        .routes
        .iter()
        .map(|r| r.id.name.as_str())
        .collect();
    assert_eq!(names, ["good"]);
}

#[test]
fn route_sessions_are_compiled_with_made_up_names_per_rule() {
    let extra = [
        route("sticky", "default", "{name: gw}", "  rules:\n  - sessionPersistence: {sessionName: app, absoluteTimeout: 12h, idleTimeout: 30m, cookieConfig: {lifetimeType: Permanent}}\n    matches: [{path: {value: /a}}]\n  - sessionPersistence: {type: Header}\n    matches: [{path: {value: /b}}]\n  - sessionPersistence: {}\n    matches: [{path: {value: /c}}]"),
    ]
    .concat();
    let out = run(&extra);
    let rules = &out.snapshots[&gw()]
        .routes
        .iter()
        .find(|r| r.id.name == "sticky")
        .expect("route")
        .rules;
    let sp = |i: usize| rules[i].session_persistence.clone().expect("session");
    assert_eq!(
        sp(0),
        portico_model::backend::SessionPersistence {
            kind: portico_model::backend::SessionKind::Cookie,
            name: "app".into(),
            absolute_timeout_ms: Some(12 * 3_600_000),
            idle_timeout_ms: Some(30 * 60_000),
            permanent: true,
        }
    );
    assert_eq!(sp(1).kind, portico_model::backend::SessionKind::Header);
    // Made-up names differ between rules, so they never share a cookie.
    assert!(sp(1).name.starts_with("portico-session-"), "{}", sp(1).name);
    assert_ne!(sp(1).name, sp(2).name);
    assert_eq!(sp(2).kind, portico_model::backend::SessionKind::Cookie);
}

#[test]
fn cors_filters_are_compiled_and_bad_origins_reject_the_route() {
    let extra = [
        route("cors", "default", "{name: gw}", "  rules:\n  - filters: [{type: CORS, cors: {allowOrigins: [\"HTTPS://Www.Foo.com:443\", \"https://*.bar.com\"], allowMethods: [GET, \"*\"], allowHeaders: [X-Token], allowCredentials: true}}]\n    matches: [{path: {value: /c}}]"),
        route("cors-bad", "default", "{name: gw}", "  rules:\n  - filters: [{type: CORS, cors: {allowOrigins: [\"ftp://x.com\"]}}]"),
    ]
    .concat();
    let out = run(&extra);
    let r = out.snapshots[&gw()]
        .routes
        .iter()
        .find(|r| r.id.name == "cors")
        .expect("route");
    assert_eq!(
        r.rules[0].filters,
        [portico_model::Filter::Cors(portico_model::Cors {
            allow_origins: vec!["https://www.foo.com".into(), "https://*.bar.com".into()],
            allow_methods: vec!["GET".into(), "*".into()],
            allow_headers: vec!["x-token".into()],
            expose_headers: vec![],
            allow_credentials: true,
            max_age_seconds: 5,
        })]
    );
    let c = route_condition(&out, "default/cors-bad", types::ACCEPTED);
    assert_eq!(c.reason, reasons::UNSUPPORTED_VALUE);
    assert!(c.message.contains("http:// or https://"), "{}", c.message);
}

#[test]
fn mirrors_resolve_like_backend_refs_and_keep_their_share() {
    let m = |backend: &str, share: &str| {
        format!("{{type: RequestMirror, requestMirror: {{backendRef: {backend}{share}}}}}")
    };
    let rule = |filters: Vec<String>| {
        format!(
            "  rules:\n  - filters: [{}]\n    backendRefs: [{{name: svc, port: 80}}]",
            filters.join(", ")
        )
    };
    let extra = [
        route(
            "all",
            "default",
            "{name: gw}",
            &rule(vec![
                m("{name: svc, port: 81}", ""),
                m("{name: svc, port: 80}", ", percent: 20"),
            ]),
        ),
        route(
            "fraction",
            "default",
            "{name: gw}",
            &rule(vec![m(
                "{name: svc, port: 80}",
                ", fraction: {numerator: 25, denominator: 50}",
            )]),
        ),
        route(
            "missing",
            "default",
            "{name: gw}",
            &rule(vec![m("{name: nope, port: 80}", "")]),
        ),
        route(
            "cross",
            "blue",
            "{name: gw, namespace: default, sectionName: wild}",
            &rule(vec![m("{name: svc, namespace: default, port: 80}", "")]),
        ),
        route(
            "no-port",
            "default",
            "{name: gw}",
            &rule(vec![m("{name: svc}", "")]),
        ),
        route(
            "both",
            "default",
            "{name: gw}",
            &rule(vec![m(
                "{name: svc, port: 80}",
                ", percent: 5, fraction: {numerator: 1}",
            )]),
        ),
    ]
    .concat();
    let out = run(&extra);
    let snap = &out.snapshots[&gw()];
    let mirrors = |name: &str| {
        snap.routes
            .iter()
            .find(|r| r.id.name == name)
            .map(|r| r.rules[0].mirrors.clone())
            .unwrap_or_else(|| panic!("route {name}"))
    };
    let svc = |port| portico_model::BackendId {
        namespace: "default".into(),
        name: "svc".into(),
        port,
        udp: false,
    };
    let mirror = |port, numerator, denominator| portico_model::Mirror {
        backend: svc(port),
        numerator,
        denominator,
    };
    assert_eq!(mirrors("all"), [mirror(81, 100, 100), mirror(80, 20, 100)]);
    assert_eq!(mirrors("fraction"), [mirror(80, 25, 50)]);
    // The mirror's backend is in the snapshot, with its own protocol.
    let b81 = snap
        .backends
        .iter()
        .find(|b| b.id == svc(81))
        .expect("mirror backend");
    assert_eq!(b81.protocol, portico_model::AppProtocol::H2c);
    // A mirror whose backend does not resolve is left out; the route serves, and says why.
    assert!(mirrors("missing").is_empty());
    assert!(route_condition(&out, "default/missing", types::ACCEPTED).is_true());
    let resolved = route_condition(&out, "default/missing", types::RESOLVED_REFS);
    assert_eq!(resolved.reason, reasons::BACKEND_NOT_FOUND);
    let resolved = route_condition(&out, "blue/cross", types::RESOLVED_REFS);
    assert_eq!(resolved.reason, reasons::REF_NOT_PERMITTED);
    for bad in ["no-port", "both"] {
        let c = route_condition(&out, &format!("default/{bad}"), types::ACCEPTED);
        assert_eq!(c.reason, reasons::UNSUPPORTED_VALUE, "{bad}");
        assert!(c.message.contains("RequestMirror"), "{bad}: {}", c.message);
    }
}

#[test]
fn route_retries_are_compiled_with_defaults() {
    let extra = [
        route("named", "default", "{name: gw}", "  rules:\n  - retry: {codes: [503, 500, 503], attempts: 3, backoff: 100ms}\n    matches: [{path: {value: /a}}]"),
        route("bare", "default", "{name: gw}", "  rules:\n  - retry: {attempts: 50}\n    matches: [{path: {value: /b}}]"),
    ]
    .concat();
    let out = run(&extra);
    let retry = |name: &str| {
        out.snapshots[&gw()]
            .routes
            .iter()
            .find(|r| r.id.name == name)
            .and_then(|r| r.rules[0].retry.clone())
            .expect("retry")
    };
    let r = retry("named");
    assert_eq!(
        (r.codes, r.attempts, r.backoff_ms),
        (vec![500, 503], 3, 100)
    );
    // No codes: connection errors only; more than ten retries are ten.
    let r = retry("bare");
    assert_eq!(
        (r.codes.len(), r.attempts, r.backoff_ms),
        (0, 10, portico_model::RouteRetry::DEFAULT_BACKOFF_MS)
    );
}

#[test]
fn defaults_and_normalisation_of_matches() {
    let extra = route(
        "r",
        "default",
        "{name: gw}",
        "  rules:\n  - {}\n  - matches: [{path: {type: PathPrefix, value: /api/}, headers: [{name: X-A, value: '1'}, {name: x-a, value: '2'}]}]\n    timeouts: {request: 1500ms, backendRequest: 0s}",
    );
    let out = run(&extra);
    let rules = &out.snapshots[&gw()].routes[0].rules;
    assert_eq!(rules[0].matches[0].path, PathMatch::PathPrefix("/".into()));
    let m = &rules[1].matches[0];
    assert_eq!(m.path, PathMatch::PathPrefix("/api".into()));
    assert_eq!(m.headers.len(), 1, "the first header entry of a name wins");
    assert_eq!(m.headers[0].name, "x-a");
    assert_eq!(rules[1].timeouts.request_ms, Some(1500));
    assert_eq!(rules[1].timeouts.backend_request_ms, None, "0s disables");
}

#[test]
fn same_inputs_in_any_order_give_identical_snapshots() {
    let extra = [
        route(
            "one",
            "default",
            "{name: gw}",
            &backend_rule("{name: svc, port: 80}"),
        ),
        route(
            "two",
            "blue",
            "{name: gw, namespace: default, sectionName: wild}",
            "  hostnames: [b.example.com]",
        ),
    ]
    .concat();
    let mut forward = ManifestSet::default();
    forward.add_file("base.yaml", BASE);
    forward.add_file("extra.yaml", &extra);
    let mut inputs = forward.inputs.clone();
    inputs.gateway_classes.reverse();
    inputs.http_routes.reverse();
    inputs.services.reverse();
    inputs.namespaces.reverse();
    let a = compile(&forward.inputs, CONTROLLER_NAME);
    let b = compile(&inputs, CONTROLLER_NAME);
    let json = |o: &Output| {
        serde_json::to_string(&o.snapshots.values().collect::<Vec<_>>()).expect("json")
    };
    assert_eq!(json(&a), json(&b));
    assert_eq!(a.status, b.status);
}

#[test]
fn manifest_errors_name_file_and_object() {
    let mut set = ManifestSet::default();
    set.add_file(
        "a.yaml",
        "apiVersion: v1\nkind: PodTemplate\nmetadata: {name: cm}\n",
    );
    set.add_file(
        "b.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n",
    );
    set.add_file(
        "c.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n",
    );
    set.add_file("d.yaml", "kind: [unclosed\n");
    set.add_file(
        "e.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {rules: 7}\n",
    );
    let shown: Vec<String> = set.errors.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 4, "{shown:#?}");
    assert!(shown[0].starts_with("a.yaml: PodTemplate cm: unsupported kind PodTemplate"));
    assert!(shown[1].starts_with("c.yaml: Service s: Service default/s is also defined in b.yaml"));
    assert!(shown[2].starts_with("d.yaml: document 1: malformed YAML"));
    assert!(shown[3].starts_with("e.yaml: HTTPRoute r: invalid object"));
}

#[test]
fn unknown_fields_and_wrong_types_name_their_path_and_line() {
    let typo = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: default, labls: {a: b}}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRef: [{name: svc, port: 8080}]\n";
    let mut set = ManifestSet::default();
    set.add_file("route.yaml", typo);
    let shown: Vec<String> = set.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "route.yaml: HTTPRoute r: unknown field metadata.labls",
            "route.yaml: HTTPRoute r: unknown field spec.rules[0].backendRef",
        ],
        "{shown:#?}"
    );
    // The second document of a file: its line is the file's.
    let mut set = ManifestSet::default();
    set.add_file(
        "gw.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: a}\nspec:\n  gatewayClassName: portico\n  listeners:\n  - {name: http, port: eighty, protocol: HTTP}\n",
    );
    let shown: Vec<String> = set.errors.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert!(
        shown[0].starts_with("gw.yaml: Gateway g: invalid object: spec.listeners[0].port: invalid type: string \"eighty\""),
        "{}",
        shown[0]
    );
    assert!(shown[0].contains("line 11"), "{}", shown[0]);
    // Downgraded: a warning, and the object is read without the field.
    let mut set = ManifestSet {
        unknown_fields: crate::manifests::UnknownFields::Warn,
        ..ManifestSet::default()
    };
    set.add_file("route.yaml", typo);
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    assert_eq!(set.warnings.len(), 2);
    assert_eq!(set.inputs.http_routes.len(), 1);
    // Every kind's own fields, and a List's items, still decode.
    let mut set = ManifestSet::default();
    set.add_file("base.yaml", BASE);
    set.add_file(
        "list.yaml",
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s, namespace: default, annotations: {a: b}}\n  spec: {ports: [{port: 80, nmae: http}]}\n",
    );
    let shown: Vec<String> = set.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["list.yaml: Service s: unknown field spec.ports[0].nmae"],
        "{shown:#?}"
    );
}

#[test]
fn problems_map_back_to_their_files_for_namespaced_and_cluster_objects() {
    let mut set = ManifestSet::default();
    set.add_file(
        "class.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: p}\nspec:\n  controllerName: portico.dev/gateway-controller\n  parametersRef: {group: portico.dev, kind: GatewayConfig, name: cfg}\n",
    );
    set.add_file(
        "route.yaml",
        &route(
            "r",
            "default",
            "{name: gw}",
            "  rules:\n  - matches: [{path: {type: Exact, value: x}}]",
        ),
    );
    set.add_file("base.yaml", BASE);
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    let out = compile(&set.inputs, CONTROLLER_NAME);
    let files: Vec<(String, Option<&str>)> = out
        .status
        .problems()
        .iter()
        .map(|p| (p.object.clone(), set.origins.file_of_problem(&p.object)))
        .collect();
    assert!(
        files.contains(&("GatewayClass p".into(), Some("class.yaml"))),
        "{files:?}"
    );
    assert!(
        files.contains(&(
            "HTTPRoute default/r parent default/gw".into(),
            Some("route.yaml")
        )),
        "{files:?}"
    );
}
mod auth;
mod backend_policy;
mod backend_tls;
mod cache;
mod gatewayconfig;
mod https_grpc;
mod listenerset;
mod ratelimit;
mod tcp;
