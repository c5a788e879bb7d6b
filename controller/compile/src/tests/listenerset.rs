//! ListenerSets: which a Gateway takes, how their listeners merge with its own, and how
//! routes attach to them.

use super::{route, run};
use crate::Output;
use crate::status::{Condition, ListenerSetStatus, find, reasons, types};
use portico_model::ObjectRef;

fn gateway(name: &str, allowed: &str, listeners: &str) -> String {
    format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: default}}
spec:
  gatewayClassName: portico
  {allowed}
  listeners: {listeners}
"#
    )
}

/// A ListenerSet `ns/name` on Gateway `default/gw`, created at second `created`.
fn listener_set(name: &str, ns: &str, gw: &str, created: u32, listeners: &str) -> String {
    format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata:
  name: {name}
  namespace: {ns}
  creationTimestamp: "2026-01-01T00:00:{created:02}Z"
spec:
  parentRef: {{group: gateway.networking.k8s.io, kind: Gateway, name: {gw}, namespace: default}}
  listeners: {listeners}
"#
    )
}

fn ls_status<'a>(out: &'a Output, id: &str) -> &'a ListenerSetStatus {
    let (ns, name) = id.split_once('/').expect("ns/name");
    out.status
        .listener_sets
        .get(&ObjectRef::new(ns, name))
        .unwrap_or_else(|| panic!("no status for ListenerSet {id}"))
}

fn ls_condition(out: &Output, id: &str, type_: &str) -> Condition {
    find(&ls_status(out, id).conditions, type_)
        .expect("condition")
        .clone()
}

fn ls_listener(out: &Output, id: &str, listener: &str, type_: &str) -> Condition {
    let l = ls_status(out, id)
        .listeners
        .iter()
        .find(|l| l.name == listener)
        .unwrap_or_else(|| panic!("no listener {listener} in {id}"));
    find(&l.conditions, type_).expect("condition").clone()
}

fn attached_sets(out: &Output, gw: &str) -> i32 {
    out.status.gateways[&ObjectRef::new("default", gw)].attached_listener_sets
}

fn served(out: &Output, gw: &str) -> Vec<String> {
    out.snapshots[&ObjectRef::new("default", gw)]
        .listeners
        .iter()
        .map(|l| l.name.clone())
        .collect()
}

const ONE: &str = "[{name: l, port: 80, protocol: HTTP, hostname: ls.example.com}]";

#[test]
fn a_gateway_takes_listener_sets_only_from_the_namespaces_it_allows() {
    let listeners = "[{name: web, port: 80, protocol: HTTP, hostname: gw.example.com}]";
    let mut extra = [
        gateway("none", "", listeners),
        gateway(
            "same",
            "allowedListeners: {namespaces: {from: Same}}",
            listeners,
        ),
        gateway(
            "selector",
            "allowedListeners: {namespaces: {from: Selector, selector: {matchLabels: {team: blue}}}}",
            listeners,
        ),
        gateway("all", "allowedListeners: {namespaces: {from: All}}", listeners),
    ]
    .concat();
    for gw in ["none", "same", "selector", "all"] {
        for ns in ["default", "blue", "red"] {
            let host =
                format!("[{{name: l, port: 80, protocol: HTTP, hostname: {ns}.example.com}}]");
            extra.push_str(&listener_set(&format!("on-{gw}"), ns, gw, 0, &host));
        }
    }
    extra.push_str("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: red}\n");
    let out = run(&extra);
    let taken = |gw: &str, ns: &str| {
        let c = ls_condition(&out, &format!("{ns}/on-{gw}"), types::ACCEPTED);
        if !c.is_true() {
            assert_eq!(c.reason, reasons::NOT_ALLOWED, "{c:?}");
            let p = ls_condition(&out, &format!("{ns}/on-{gw}"), types::PROGRAMMED);
            assert_eq!(
                (p.status.as_str(), p.reason.as_str()),
                ("False", "NotAllowed")
            );
        }
        c.is_true()
    };
    for ns in ["default", "blue", "red"] {
        assert!(!taken("none", ns), "none by default");
        assert!(taken("all", ns));
    }
    assert!(taken("same", "default") && !taken("same", "blue") && !taken("same", "red"));
    assert!(
        !taken("selector", "default") && taken("selector", "blue") && !taken("selector", "red")
    );
    assert_eq!(attached_sets(&out, "none"), 0);
    assert_eq!(attached_sets(&out, "same"), 1);
    assert_eq!(attached_sets(&out, "selector"), 1);
    assert_eq!(attached_sets(&out, "all"), 3);
    // The Gateway's own status is about its own listeners only.
    let all = &out.status.gateways[&ObjectRef::new("default", "all")];
    assert_eq!(all.listeners.len(), 1);
    assert!(
        find(&all.conditions, types::ACCEPTED)
            .expect("accepted")
            .is_true()
    );
    // A ListenerSet's listeners are served under names of their own.
    assert_eq!(
        served(&out, "all"),
        ["web", "blue/on-all/l", "default/on-all/l", "red/on-all/l"]
    );
    assert_eq!(served(&out, "none"), ["web"]);
}

#[test]
fn earlier_listeners_keep_their_port_and_hostname_and_later_ones_are_conflicted() {
    let mut extra = gateway(
        "gw2",
        "allowedListeners: {namespaces: {from: Same}}",
        "[{name: a, port: 80, protocol: HTTP, hostname: a.example.com}, \
          {name: b, port: 80, protocol: HTTP, hostname: b.example.com}]",
    );
    // Created in this order; `s2` and `s3` in the same second, ordered by name.
    extra.push_str(&listener_set(
        "s1",
        "default",
        "gw2",
        1,
        "[{name: own, port: 80, protocol: HTTP, hostname: s1.example.com}, \
          {name: a, port: 80, protocol: HTTP, hostname: a.example.com}, \
          {name: tcp, port: 80, protocol: TCP}, \
          {name: shared, port: 80, protocol: HTTP, hostname: shared.example.com}]",
    ));
    extra.push_str(&listener_set(
        "s3",
        "default",
        "gw2",
        2,
        "[{name: shared, port: 80, protocol: HTTP, hostname: shared.example.com}, \
          {name: own, port: 80, protocol: HTTP, hostname: s3.example.com}]",
    ));
    extra.push_str(&listener_set(
        "s2",
        "default",
        "gw2",
        2,
        "[{name: a, port: 80, protocol: HTTP, hostname: a.example.com}]",
    ));
    // A newer one that would take `shared` had it been first.
    extra.push_str(&listener_set(
        "s0",
        "default",
        "gw2",
        9,
        "[{name: shared, port: 80, protocol: HTTP, hostname: shared.example.com}]",
    ));
    let out = run(&extra);
    let lost = |ls: &str, l: &str, reason: &str| {
        for type_ in [types::ACCEPTED, types::PROGRAMMED] {
            let c = ls_listener(&out, ls, l, type_);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", reason),
                "{ls} {l} {type_}"
            );
        }
        let c = ls_listener(&out, ls, l, types::CONFLICTED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reason),
            "{ls} {l}"
        );
    };
    let kept = |ls: &str, l: &str| {
        assert!(
            ls_listener(&out, ls, l, types::ACCEPTED).is_true(),
            "{ls} {l}"
        );
        assert!(
            !ls_listener(&out, ls, l, types::CONFLICTED).is_true(),
            "{ls} {l}"
        );
    };
    // The Gateway's listeners win over every ListenerSet's.
    let gw = &out.status.gateways[&ObjectRef::new("default", "gw2")];
    for l in &gw.listeners {
        assert!(!find(&l.conditions, types::CONFLICTED).expect("c").is_true());
    }
    lost("default/s1", "a", reasons::HOSTNAME_CONFLICT);
    // An unsupported protocol on a taken port: the conflict is what the user must fix.
    lost("default/s1", "tcp", reasons::PROTOCOL_CONFLICT);
    kept("default/s1", "own");
    kept("default/s1", "shared");
    lost("default/s3", "shared", reasons::HOSTNAME_CONFLICT);
    kept("default/s3", "own");
    lost("default/s2", "a", reasons::HOSTNAME_CONFLICT);
    lost("default/s0", "shared", reasons::HOSTNAME_CONFLICT);

    // A set with one listener served is accepted; one with none is not, and says so.
    assert!(ls_condition(&out, "default/s1", types::ACCEPTED).is_true());
    assert!(ls_condition(&out, "default/s3", types::ACCEPTED).is_true());
    for ls in ["default/s2", "default/s0"] {
        for type_ in [types::ACCEPTED, types::PROGRAMMED] {
            let c = ls_condition(&out, ls, type_);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", reasons::LISTENERS_NOT_VALID),
                "{ls} {type_}"
            );
        }
    }
    assert_eq!(attached_sets(&out, "gw2"), 2);
    assert_eq!(
        served(&out, "gw2"),
        [
            "a",
            "b",
            "default/s1/own",
            "default/s1/shared",
            "default/s3/own"
        ]
    );
}

#[test]
fn routes_attach_only_to_the_listeners_of_the_parent_they_name() {
    let mut extra = gateway(
        "gw3",
        "allowedListeners: {namespaces: {from: All}}",
        "[{name: web, port: 80, protocol: HTTP, hostname: gw.example.com, \
           allowedRoutes: {namespaces: {from: All}}}]",
    );
    // In namespace blue: `same` takes routes from blue (its own namespace), not default.
    extra.push_str(&listener_set(
        "set",
        "blue",
        "gw3",
        0,
        "[{name: same, port: 80, protocol: HTTP, hostname: same.example.com}, \
          {name: all, port: 8081, protocol: HTTP, hostname: all.example.com, \
           allowedRoutes: {namespaces: {from: All}}}]",
    ));
    let rules = "  rules: [{backendRefs: [{name: svc, port: 80}]}]";
    let ls = "{kind: ListenerSet, group: gateway.networking.k8s.io, name: set, namespace: blue}";
    extra.push_str(&route("to-gw", "default", "{name: gw3}", rules));
    extra.push_str(&route("to-set", "default", ls, rules));
    extra.push_str(&route("to-set-blue", "blue", ls, rules));
    extra.push_str(&route(
        "both",
        "default",
        &format!("{{name: gw3}}, {ls}"),
        rules,
    ));
    // A Gateway parentRef naming a ListenerSet's listener finds nothing.
    extra.push_str(&route(
        "gw-section",
        "default",
        "{name: gw3, sectionName: same}",
        rules,
    ));
    extra.push_str(&route(
        "set-section",
        "blue",
        &ls.replace('}', ", sectionName: same}"),
        rules,
    ));
    extra.push_str(&route(
        "missing-set",
        "default",
        "{kind: ListenerSet, name: nope}",
        rules,
    ));
    let out = run(&extra);
    let parent = |r: &str, kind: &str| {
        let (ns, name) = r.split_once('/').expect("ns/name");
        let s = &out.status.http_routes[&ObjectRef::new(ns, name)];
        let p = s
            .parents
            .iter()
            .find(|p| p.parent_ref.kind == kind)
            .unwrap_or_else(|| panic!("{r} has no {kind} parent"));
        find(&p.conditions, types::ACCEPTED)
            .expect("accepted")
            .clone()
    };
    assert!(parent("default/to-gw", "Gateway").is_true());
    assert!(
        parent("default/to-set", "ListenerSet").is_true(),
        "via the `all` listener"
    );
    assert!(parent("blue/to-set-blue", "ListenerSet").is_true());
    assert!(parent("default/both", "Gateway").is_true());
    assert!(parent("default/both", "ListenerSet").is_true());
    assert_eq!(
        parent("default/gw-section", "Gateway").reason,
        reasons::NO_MATCHING_PARENT
    );
    assert!(parent("blue/set-section", "ListenerSet").is_true());
    // Nobody of ours is that ListenerSet's Gateway: no status from us.
    assert!(
        !out.status
            .http_routes
            .contains_key(&ObjectRef::new("default", "missing-set"))
    );
    // Each route's parent entries are exactly its parentRefs.
    let both = &out.status.http_routes[&ObjectRef::new("default", "both")];
    assert_eq!(both.parents.len(), 2);

    let count = |l: &str| {
        ls_status(&out, "blue/set")
            .listeners
            .iter()
            .find(|x| x.name == l)
            .expect("listener")
            .attached_routes
    };
    // same: to-set-blue, set-section (blue); all: to-set, to-set-blue, both.
    assert_eq!(count("same"), 2);
    assert_eq!(count("all"), 3);
    // The Gateway's listener counts only the routes that name the Gateway.
    assert_eq!(
        out.status.gateways[&ObjectRef::new("default", "gw3")].listeners[0].attached_routes,
        2
    );

    // In the snapshot each route is on the listeners it attached to, by their served names.
    let snap = &out.snapshots[&ObjectRef::new("default", "gw3")];
    let on = |r: &str| {
        let (ns, name) = r.split_once('/').expect("ns/name");
        let mut v: Vec<&str> = snap
            .routes
            .iter()
            .find(|x| x.id == ObjectRef::new(ns, name))
            .expect("route")
            .parents
            .iter()
            .map(|p| p.listener.as_str())
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(on("default/to-gw"), ["web"]);
    assert_eq!(on("default/to-set"), ["blue/set/all"]);
    assert_eq!(on("blue/to-set-blue"), ["blue/set/all", "blue/set/same"]);
    assert_eq!(on("default/both"), ["blue/set/all", "web"]);
    assert_eq!(on("blue/set-section"), ["blue/set/same"]);
}

#[test]
fn certificate_refs_of_a_listener_set_need_a_grant_naming_listener_sets() {
    let (cert, key) = super::https_grpc::cert("*.example.com");
    let secret = super::https_grpc::tls_secret("cert", "certs", &cert, &key);
    let grant = |kind: &str, ns: &str| {
        format!(
            r#"
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: from-{kind}-{ns}, namespace: certs}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: {kind}, namespace: {ns}}}]
  to: [{{group: "", kind: Secret}}]
"#
        )
    };
    let https = |host: &str| {
        format!(
            "[{{name: tls, port: 443, protocol: HTTPS, hostname: {host}, \
              tls: {{certificateRefs: [{{name: cert, namespace: certs}}]}}}}]"
        )
    };
    let mut extra = gateway(
        "gw4",
        "allowedListeners: {namespaces: {from: All}}",
        &https("gw.example.com"),
    );
    extra.push_str(&secret);
    extra.push_str(&grant("Gateway", "default"));
    extra.push_str(&grant("ListenerSet", "blue"));
    extra.push_str(&listener_set(
        "granted",
        "blue",
        "gw4",
        0,
        &https("a.example.com"),
    ));
    // The Gateway's grant covers the Gateway, not a ListenerSet in its namespace.
    extra.push_str(&listener_set(
        "ungranted",
        "default",
        "gw4",
        1,
        &https("b.example.com"),
    ));
    let out = run(&extra);
    assert!(ls_condition(&out, "blue/granted", types::ACCEPTED).is_true());
    assert!(ls_listener(&out, "blue/granted", "tls", types::RESOLVED_REFS).is_true());
    let refused = ls_listener(&out, "default/ungranted", "tls", types::RESOLVED_REFS);
    assert_eq!(refused.reason, reasons::REF_NOT_PERMITTED);
    assert!(
        refused.message.contains("ListenerSets from default"),
        "{refused:?}"
    );
    assert_eq!(
        ls_condition(&out, "default/ungranted", types::ACCEPTED).reason,
        reasons::LISTENERS_NOT_VALID
    );
    assert_eq!(served(&out, "gw4"), ["tls", "blue/granted/tls"]);
    // The controller watches the Secret for the ListenerSet too.
    let inputs = super::inputs(&extra);
    assert!(
        crate::referenced_secrets(&inputs, crate::CONTROLLER_NAME)
            .contains(&ObjectRef::new("certs", "cert"))
    );
}

#[test]
fn a_listener_set_of_a_gateway_that_is_not_accepted_says_so() {
    let mut extra = gateway(
        "broken",
        "allowedListeners: {namespaces: {from: Same}}",
        "[{name: web, port: 80, protocol: example.com/SCTP}]",
    );
    extra.push_str(&listener_set("orphan", "default", "broken", 0, ONE));
    // And one whose Gateway is someone else's: no status from us.
    extra.push_str(&gateway("theirs", "", ONE).replace("portico", "someone-else"));
    extra.push_str(&listener_set("elsewhere", "default", "theirs", 0, ONE));
    let out = run(&extra);
    assert_eq!(
        ls_condition(&out, "default/orphan", types::ACCEPTED).reason,
        reasons::PARENT_NOT_ACCEPTED
    );
    assert!(
        !out.status
            .listener_sets
            .contains_key(&ObjectRef::new("default", "elsewhere"))
    );
}

#[test]
fn a_listener_set_cannot_take_a_port_the_gateway_declares_or_the_dataplane_uses() {
    // The Gateway's two listeners on 80 clash (HTTP and HTTPS): neither is served, and the
    // port stays the Gateway's all the same.
    let mut extra = gateway(
        "gw5",
        "allowedListeners: {namespaces: {from: All}}",
        "[{name: web, port: 8080, protocol: HTTP}, {name: a, port: 80, protocol: HTTP}, \
          {name: b, port: 80, protocol: HTTPS, tls: {certificateRefs: [{name: none}]}}]",
    );
    extra.push_str(&listener_set(
        "set",
        "default",
        "gw5",
        0,
        "[{name: catch-all, port: 80, protocol: HTTP}, {name: admin, port: 9901, protocol: HTTP}, \
          {name: ok, port: 8081, protocol: HTTP}]",
    ));
    let mut inputs = super::inputs(&extra);
    inputs.reserved_ports = [9901].into();
    let out = crate::compile(&inputs, crate::CONTROLLER_NAME);
    let c = ls_listener(&out, "default/set", "catch-all", types::CONFLICTED);
    assert_eq!(c.reason, reasons::PROTOCOL_CONFLICT);
    let c = ls_listener(&out, "default/set", "admin", types::ACCEPTED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::PORT_UNAVAILABLE)
    );
    assert!(c.message.contains("9901"), "{c:?}");
    assert!(ls_listener(&out, "default/set", "ok", types::ACCEPTED).is_true());
    let snap = &out.snapshots[&ObjectRef::new("default", "gw5")];
    assert_eq!(
        crate::listener_set_ports(snap),
        [crate::ServedPort::of(8081, "HTTP")].into()
    );
}

#[test]
fn ties_in_age_are_broken_by_namespace_slash_name_as_text() {
    // "team-a/x" < "team/x" as text ('-' sorts before '/'), though ("team-a", "x") >
    // ("team", "x") as a pair: the spec orders by the text.
    let mut extra = gateway("gw6", "allowedListeners: {namespaces: {from: All}}", ONE);
    extra.push_str("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n");
    extra.push_str("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n");
    let host = "[{name: l, port: 8080, protocol: HTTP, hostname: same.example.com}]";
    extra.push_str(&listener_set("x", "team", "gw6", 3, host));
    extra.push_str(&listener_set("x", "team-a", "gw6", 3, host));
    let out = run(&extra);
    assert!(ls_listener(&out, "team-a/x", "l", types::ACCEPTED).is_true());
    assert_eq!(
        ls_listener(&out, "team/x", "l", types::CONFLICTED).reason,
        reasons::HOSTNAME_CONFLICT
    );
}

#[test]
fn the_controller_watches_secrets_only_for_listener_sets_their_gateway_allows() {
    let (cert, key) = super::https_grpc::cert("a.example.com");
    let mut extra = gateway("gw7", "allowedListeners: {namespaces: {from: Same}}", ONE);
    extra.push_str(&super::https_grpc::tls_secret("mine", "blue", &cert, &key));
    let https = "[{name: tls, port: 443, protocol: HTTPS, hostname: a.example.com, \
                  tls: {certificateRefs: [{name: mine}]}}]";
    // In blue, which gw7 does not allow: the Secret in its own namespace is not watched.
    extra.push_str(&listener_set("outsider", "blue", "gw7", 0, https));
    let inputs = super::inputs(&extra);
    let watched = crate::referenced_secrets(&inputs, crate::CONTROLLER_NAME);
    assert!(
        !watched.contains(&ObjectRef::new("blue", "mine")),
        "{watched:?}"
    );
    assert_eq!(
        ls_condition(&run(&extra), "blue/outsider", types::ACCEPTED).reason,
        reasons::NOT_ALLOWED
    );
}

#[test]
fn a_gateway_serves_a_bounded_number_of_listener_set_listeners() {
    let max = crate::gateway::MAX_LISTENER_SET_LISTENERS;
    let mut extra = gateway("gw8", "allowedListeners: {namespaces: {from: Same}}", ONE);
    // Sets of 64 listeners each (the API's limit), one more set than fits.
    for set in 0..=max / 64 {
        let listeners: Vec<String> = (0..64)
            .map(|i| {
                format!(
                    "{{name: l{i}, port: 80, protocol: HTTP, hostname: s{set}-{i}.example.com}}"
                )
            })
            .collect();
        extra.push_str(&listener_set(
            &format!("s{set}"),
            "default",
            "gw8",
            u32::try_from(set).expect("small"),
            &format!("[{}]", listeners.join(", ")),
        ));
    }
    let out = run(&extra);
    let last = format!("default/s{}", max / 64);
    let c = ls_listener(&out, &last, "l0", types::ACCEPTED);
    assert_eq!(c.reason, reasons::TOO_MANY_LISTENERS);
    assert_eq!(
        ls_condition(&out, &last, types::ACCEPTED).reason,
        reasons::LISTENERS_NOT_VALID
    );
    assert_eq!(served(&out, "gw8").len(), 1 + max);
}

#[test]
fn a_policy_on_a_listener_set_applies_to_its_listeners_before_the_gateways() {
    let mut extra = gateway(
        "gw9",
        "allowedListeners: {namespaces: {from: Same}}",
        "[{name: web, port: 80, protocol: HTTP, hostname: gw.example.com}]",
    );
    extra.push_str(&listener_set(
        "set",
        "default",
        "gw9",
        0,
        "[{name: a, port: 80, protocol: HTTP, hostname: a.example.com}, \
          {name: b, port: 80, protocol: HTTP, hostname: b.example.com}]",
    ));
    let rules = "  rules: [{backendRefs: [{name: svc, port: 80}]}]";
    extra.push_str(&route(
        "on-set",
        "default",
        "{kind: ListenerSet, name: set}",
        rules,
    ));
    extra.push_str(&route("on-gw", "default", "{name: gw9}", rules));
    extra.push_str(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: default}\nstringData: {alice: alice-key-0123456789}\n",
    );
    let policy = |name: &str, targets: &str| {
        format!(
            "---\napiVersion: portico.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  targetRefs: {targets}\n  apiKey: {{secretRefs: [{{name: keys}}]}}\n"
        )
    };
    let g = "group: gateway.networking.k8s.io";
    extra.push_str(&policy(
        "on-gateway",
        &format!("[{{{g}, kind: Gateway, name: gw9}}]"),
    ));
    extra.push_str(&policy(
        "on-set",
        &format!("[{{{g}, kind: ListenerSet, name: set}}]"),
    ));
    extra.push_str(&policy(
        "on-b",
        &format!("[{{{g}, kind: ListenerSet, name: set, sectionName: b}}]"),
    ));
    extra.push_str(&policy(
        "missing",
        &format!("[{{{g}, kind: ListenerSet, name: set, sectionName: c}}, {{{g}, kind: ListenerSet, name: nope}}]"),
    ));
    let out = run(&extra);
    let snap = &out.snapshots[&ObjectRef::new("default", "gw9")];
    let on = |route: &str| -> Vec<(String, Option<String>)> {
        let r = snap
            .routes
            .iter()
            .find(|r| r.id.name == route)
            .expect("route");
        r.parents
            .iter()
            .map(|p| {
                (
                    p.listener.clone(),
                    p.policies
                        .get(portico_model::PolicyKind::Auth)
                        .map(|id| id.name.clone()),
                )
            })
            .collect()
    };
    assert_eq!(
        on("on-set"),
        [
            ("default/set/a".to_string(), Some("on-set".to_string())),
            ("default/set/b".to_string(), Some("on-b".to_string())),
        ]
    );
    assert_eq!(
        on("on-gw"),
        [("web".to_string(), Some("on-gateway".to_string()))]
    );
    let status = |name: &str| {
        out.status
            .policy(
                portico_model::PolicyKind::Auth,
                &ObjectRef::new("default", name),
            )
            .expect("status")
            .ancestors
            .iter()
            .map(|a| {
                let c = find(&a.conditions, types::ACCEPTED).expect("accepted");
                (
                    a.ancestor_ref.kind.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(status("on-set")[0].0, "ListenerSet");
    assert_eq!(status("on-set")[0].1, reasons::ACCEPTED);
    let missing = status("missing");
    assert_eq!(missing[0].1, reasons::TARGET_NOT_FOUND);
    assert!(missing[0].2.contains("no listener \"c\""), "{missing:?}");
    assert!(
        missing[1].2.contains("ListenerSet default/nope"),
        "{missing:?}"
    );
}

#[test]
fn a_consumer_keyed_limit_counts_the_auth_policies_of_listener_sets() {
    let mut extra = gateway(
        "gw10",
        "allowedListeners: {namespaces: {from: Same}}",
        "[{name: web, port: 80, protocol: HTTP, hostname: gw.example.com}]",
    );
    for (set, host) in [("guarded", "a.example.com"), ("open", "b.example.com")] {
        extra.push_str(&listener_set(
            set,
            "default",
            "gw10",
            0,
            &format!("[{{name: l, port: 80, protocol: HTTP, hostname: {host}}}]"),
        ));
    }
    let rules = "  rules: [{backendRefs: [{name: svc, port: 80}]}]";
    extra.push_str(&route(
        "r-guarded",
        "default",
        "{kind: ListenerSet, name: guarded}",
        rules,
    ));
    extra.push_str(&route(
        "r-open",
        "default",
        "{kind: ListenerSet, name: open}",
        rules,
    ));
    extra.push_str(&route("r-other", "default", "{name: gw10}", rules));
    extra.push_str(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: default}\nstringData: {alice: alice-key-0123456789}\n",
    );
    let g = "group: gateway.networking.k8s.io";
    let doc = |kind: &str, name: &str, target: &str, body: &str| {
        format!(
            "---\napiVersion: portico.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  targetRefs: [{{{g}, {target}}}]\n{body}\n"
        )
    };
    let keys = "  apiKey: {secretRefs: [{name: keys}]}";
    let by_consumer = "  limits: [{requests: 10, interval: 1s, key: [{type: Consumer}]}]";
    // Keys on the guarded set, and on a route elsewhere on the Gateway.
    extra.push_str(&doc(
        "AuthPolicy",
        "set-keys",
        "kind: ListenerSet, name: guarded",
        keys,
    ));
    extra.push_str(&doc(
        "AuthPolicy",
        "other-keys",
        "kind: HTTPRoute, name: r-other",
        keys,
    ));
    extra.push_str(&doc(
        "RateLimitPolicy",
        "on-guarded-route",
        "kind: HTTPRoute, name: r-guarded",
        by_consumer,
    ));
    extra.push_str(&doc(
        "RateLimitPolicy",
        "on-guarded-set",
        "kind: ListenerSet, name: guarded",
        by_consumer,
    ));
    extra.push_str(&doc(
        "RateLimitPolicy",
        "on-open-route",
        "kind: HTTPRoute, name: r-open",
        by_consumer,
    ));
    extra.push_str(&doc(
        "RateLimitPolicy",
        "on-open-set",
        "kind: ListenerSet, name: open",
        by_consumer,
    ));
    let out = run(&extra);
    let accepted = |name: &str| {
        let s = out
            .status
            .policy(
                portico_model::PolicyKind::RateLimit,
                &ObjectRef::new("default", name),
            )
            .expect("status");
        find(&s.ancestors[0].conditions, types::ACCEPTED)
            .expect("accepted")
            .clone()
    };
    // The set's AuthPolicy identifies the requests of its routes, and of the set itself.
    assert!(
        accepted("on-guarded-route").is_true(),
        "{:?}",
        accepted("on-guarded-route")
    );
    assert!(
        accepted("on-guarded-set").is_true(),
        "{:?}",
        accepted("on-guarded-set")
    );
    // Another route's AuthPolicy on the same Gateway identifies nothing on the open set;
    // nor does one on a listener of the Gateway's own (the policy on `web` below).
    assert!(!accepted("on-open-route").is_true());
    assert!(!accepted("on-open-set").is_true());
    let mut with_listener_keys = extra.clone();
    with_listener_keys.push_str(&doc(
        "AuthPolicy",
        "web-keys",
        "kind: Gateway, name: gw10, sectionName: web",
        keys,
    ));
    let out = run(&with_listener_keys);
    let s = out
        .status
        .policy(
            portico_model::PolicyKind::RateLimit,
            &ObjectRef::new("default", "on-open-set"),
        )
        .expect("status");
    assert!(
        !find(&s.ancestors[0].conditions, types::ACCEPTED)
            .expect("accepted")
            .is_true()
    );
}

#[test]
fn check_names_listener_sets_and_route_parents_that_nothing_serves() {
    let mut extra = listener_set("stray", "default", "no-such-gateway", 0, ONE);
    extra.push_str(&route(
        "r",
        "default",
        "{kind: ListenerSet, name: missing}, {kind: ListenerSet, name: stray}",
        "  rules: [{backendRefs: [{name: svc, port: 80}]}]",
    ));
    let inputs = super::inputs(&extra);
    let problems: Vec<(String, String)> =
        crate::unserved::unserved(&inputs, crate::CONTROLLER_NAME)
            .into_iter()
            .map(|p| (p.object, p.condition.reason))
            .collect();
    for (object, reason) in [
        ("ListenerSet default/stray", "NoSuchGateway"),
        (
            "HTTPRoute default/r parent ListenerSet default/missing",
            "NoSuchListenerSet",
        ),
        (
            "HTTPRoute default/r parent default/no-such-gateway",
            "NoSuchGateway",
        ),
    ] {
        assert!(
            problems.contains(&(object.to_string(), reason.to_string())),
            "{object} {reason} in {problems:?}"
        );
    }
    // The set that exists is not said to be missing.
    assert!(
        !problems
            .iter()
            .any(|(o, _)| o.contains("parent ListenerSet default/stray")),
        "{problems:?}"
    );
}
