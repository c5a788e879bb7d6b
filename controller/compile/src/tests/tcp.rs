//! TCP and TLS (passthrough) listeners, TCPRoutes and TLSRoutes.

use super::run;
use crate::Output;
use crate::status::{Condition, find, reasons, types};
use portico_model::{BackendTarget, ObjectRef, Protocol};

const GATEWAY: &str = "
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: l4, namespace: default}
spec:
  gatewayClassName: portico
  listeners:
  - {name: t1, port: 9300, protocol: TCP}
  - {name: t2, port: 9301, protocol: TCP}
  - {name: h, port: 9302, protocol: HTTP}
  - {name: bad, port: 9303, protocol: TCP, tls: {certificateRefs: [{name: x}]}}
";

fn l4() -> ObjectRef {
    ObjectRef::new("default", "l4")
}

/// A TCPRoute created `day` days into 2024, with `parent` and one rule of `backends`.
fn tcp_route(name: &str, day: u32, parent: &str, backends: &str) -> String {
    format!(
        "
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: {name}, namespace: default, creationTimestamp: \"2024-01-{day:02}T00:00:00Z\"}}
spec:
  parentRefs: [{parent}]
  rules:
  - backendRefs: {backends}
"
    )
}

fn condition(out: &Output, route: &str, type_: &str) -> Condition {
    let s = out
        .status
        .tcp_routes
        .get(&ObjectRef::new("default", route))
        .unwrap_or_else(|| panic!("no status for {route}"));
    find(&s.parents[0].conditions, type_)
        .expect("condition")
        .clone()
}

#[test]
fn tcp_routes_attach_to_tcp_listeners_only_and_the_oldest_serves() {
    let extra = [
        GATEWAY,
        &tcp_route(
            "new",
            2,
            "{name: l4, sectionName: t1}",
            "[{name: svc, port: 80}]",
        ),
        &tcp_route(
            "old",
            1,
            "{name: l4, sectionName: t1}",
            "[{name: svc, port: 80}]",
        ),
        &tcp_route(
            "by-port",
            3,
            "{name: l4, port: 9301}",
            "[{name: svc, port: 80}]",
        ),
        &tcp_route(
            "on-http",
            4,
            "{name: l4, sectionName: h}",
            "[{name: svc, port: 80}]",
        ),
        &tcp_route(
            "nowhere",
            5,
            "{name: l4, sectionName: t9}",
            "[{name: svc, port: 80}]",
        ),
        "
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: http-on-tcp, namespace: default}
spec:
  parentRefs: [{name: l4, sectionName: t1}]
",
    ]
    .concat();
    let out = run(&extra);
    for r in ["old", "new", "by-port"] {
        assert!(condition(&out, r, types::ACCEPTED).is_true(), "{r}");
        assert!(condition(&out, r, types::RESOLVED_REFS).is_true(), "{r}");
    }
    let refused = |r: &str| condition(&out, r, types::ACCEPTED).reason;
    assert_eq!(refused("on-http"), reasons::NOT_ALLOWED_BY_LISTENERS);
    assert_eq!(refused("nowhere"), reasons::NO_MATCHING_PARENT);
    let http = &out.status.http_routes[&ObjectRef::new("default", "http-on-tcp")];
    assert_eq!(
        find(&http.parents[0].conditions, types::ACCEPTED).map(|c| c.reason.as_str()),
        Some(reasons::NOT_ALLOWED_BY_LISTENERS)
    );

    let g = &out.status.gateways[&l4()];
    let listener = |name: &str| {
        g.listeners
            .iter()
            .find(|l| l.name == name)
            .expect("listener")
    };
    // Both routes on t1 are attached and counted; the older one serves it.
    assert_eq!(listener("t1").attached_routes, 2);
    assert_eq!(listener("t1").supported_kinds, ["TCPRoute"]);
    assert_eq!(listener("t2").attached_routes, 1);
    assert_eq!(
        find(&listener("bad").conditions, types::ACCEPTED).map(|c| c.reason.as_str()),
        Some(reasons::INVALID)
    );
    let snap = &out.snapshots[&l4()];
    let order: Vec<(&str, Vec<&str>)> = snap
        .stream_routes
        .iter()
        .map(|r| {
            let listeners = r.parents.iter().map(|p| p.listener.as_str()).collect();
            (r.id.name.as_str(), listeners)
        })
        .collect();
    assert_eq!(
        order,
        [
            ("old", vec!["t1"]),
            ("new", vec!["t1"]),
            ("by-port", vec!["t2"]),
        ]
    );
    let protocols: Vec<(&str, Protocol)> = snap
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.protocol))
        .collect();
    assert_eq!(
        protocols,
        [
            ("t1", Protocol::Tcp),
            ("t2", Protocol::Tcp),
            ("h", Protocol::Http)
        ]
    );
    assert!(
        snap.backends
            .iter()
            .any(|b| b.id.name == "svc" && b.id.port == 80)
    );
}

#[test]
fn backends_a_tcp_route_cannot_use_are_reported_and_refused_traffic() {
    let extra = [
        GATEWAY,
        &tcp_route(
            "missing",
            1,
            "{name: l4, sectionName: t1}",
            "[{name: nope, port: 80}]",
        ),
        &tcp_route(
            "cross",
            2,
            "{name: l4, sectionName: t2}",
            "[{name: svc, namespace: blue, port: 80}]",
        ),
        &tcp_route(
            "kind",
            3,
            "{name: l4, sectionName: t2}",
            "[{group: example.com, kind: Bucket, name: b}]",
        ),
        "
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: two-rules, namespace: default}
spec:
  parentRefs: [{name: l4, sectionName: t2}]
  rules:
  - backendRefs: [{name: svc, port: 80}]
  - backendRefs: [{name: svc, port: 80}]
",
    ]
    .concat();
    let out = run(&extra);
    let resolved = |r: &str| condition(&out, r, types::RESOLVED_REFS);
    // Attached, with the reference that does not resolve said.
    assert!(condition(&out, "missing", types::ACCEPTED).is_true());
    assert_eq!(resolved("missing").reason, reasons::BACKEND_NOT_FOUND);
    assert_eq!(resolved("cross").reason, reasons::REF_NOT_PERMITTED);
    assert_eq!(resolved("kind").reason, reasons::INVALID_KIND);
    assert_eq!(
        condition(&out, "two-rules", types::ACCEPTED).reason,
        reasons::UNSUPPORTED_VALUE
    );
    let snap = &out.snapshots[&l4()];
    let missing = snap
        .stream_routes
        .iter()
        .find(|r| r.id.name == "missing")
        .expect("attached");
    assert!(matches!(
        missing.backend_refs[0].target,
        BackendTarget::Unresolved { .. }
    ));
    assert!(snap.stream_routes.iter().all(|r| r.id.name != "two-rules"));
}

const TLS_GATEWAY: &str = "
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: tls, namespace: default}
spec:
  gatewayClassName: portico
  listeners:
  - {name: wild, port: 443, protocol: TLS, hostname: \"*.example.com\", tls: {mode: Passthrough}}
  - {name: other, port: 443, protocol: TLS, hostname: other.org, tls: {mode: Passthrough}}
  - name: kinds
    port: 444
    protocol: TLS
    tls: {mode: Passthrough}
    allowedRoutes: {kinds: [{kind: TCPRoute}, {kind: TLSRoute}]}
  - {name: term, port: 8443, protocol: TLS, tls: {mode: Terminate, certificateRefs: [{name: x}]}}
  - {name: mixed-t, port: 8883, protocol: TLS, hostname: t.example.com, tls: {mode: Terminate, certificateRefs: [{name: x}]}}
  - {name: mixed-p, port: 8883, protocol: TLS, hostname: p.example.com, tls: {mode: Passthrough}}
  - {name: no-tls, port: 8884, protocol: TLS}
";

fn tls_route(name: &str, day: u32, section: &str, hostnames: &str) -> String {
    format!(
        "
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: {name}, namespace: default, creationTimestamp: \"2024-01-{day:02}T00:00:00Z\"}}
spec:
  parentRefs: [{{name: tls, sectionName: {section}}}]
  hostnames: {hostnames}
  rules:
  - backendRefs: [{{name: svc, port: 80}}]
"
    )
}

fn tls_condition(out: &Output, route: &str, type_: &str) -> Condition {
    let s = out
        .status
        .tls_routes
        .get(&ObjectRef::new("default", route))
        .unwrap_or_else(|| panic!("no status for {route}"));
    find(&s.parents[0].conditions, type_)
        .expect("condition")
        .clone()
}

#[test]
fn tls_listeners_take_tls_routes_by_hostname_in_both_modes() {
    let extra = [
        TLS_GATEWAY,
        &tls_route("abc", 1, "wild", "[abc.example.com, abc.other.org]"),
        &tls_route("all", 2, "wild", "[\"*.com\"]"),
        &tls_route("elsewhere", 3, "other", "[abc.example.com]"),
        &tls_route("on-term", 4, "term", "[abc.example.com]"),
        &tcp_route(
            "tcp-on-term",
            5,
            "{name: tls, sectionName: term}",
            "[{name: svc, port: 80}]",
        ),
        &tcp_route(
            "tcp-on-passthrough",
            6,
            "{name: tls, sectionName: wild}",
            "[{name: svc, port: 80}]",
        ),
    ]
    .concat();
    let out = run(&extra);
    let g = &out.status.gateways[&ObjectRef::new("default", "tls")];
    let listener = |name: &str| {
        g.listeners
            .iter()
            .find(|l| l.name == name)
            .expect("listener")
    };
    let accepted = |name: &str| {
        find(&listener(name).conditions, types::ACCEPTED)
            .map(|c| (c.status.clone(), c.reason.clone()))
            .expect("accepted")
    };
    assert_eq!(listener("wild").supported_kinds, ["TLSRoute"]);
    assert_eq!(listener("wild").attached_routes, 2);
    // A passthrough listener takes TLSRoutes only: TCPRoute is an invalid kind there.
    assert_eq!(listener("kinds").supported_kinds, ["TLSRoute"]);
    assert_eq!(
        find(&listener("kinds").conditions, types::RESOLVED_REFS).map(|c| c.reason.as_str()),
        Some(reasons::INVALID_ROUTE_KINDS)
    );
    // Terminate takes TLSRoutes and TCPRoutes; its certificate is missing, which is said.
    assert_eq!(accepted("term").0, "True");
    assert_eq!(listener("term").supported_kinds, ["TCPRoute", "TLSRoute"]);
    assert_eq!(listener("term").attached_routes, 2);
    assert!(condition(&out, "tcp-on-term", types::ACCEPTED).is_true());
    assert_eq!(
        condition(&out, "tcp-on-passthrough", types::ACCEPTED).reason,
        reasons::NOT_ALLOWED_BY_LISTENERS
    );
    assert_eq!(
        find(&listener("term").conditions, types::RESOLVED_REFS).map(|c| c.reason.as_str()),
        Some(reasons::INVALID_CERTIFICATE_REF)
    );
    // Both modes on one port, with distinct hostnames: both accepted.
    for l in ["mixed-t", "mixed-p"] {
        assert_eq!(accepted(l).0, "True", "{l}");
    }
    assert_eq!(
        accepted("no-tls"),
        ("False".to_string(), reasons::INVALID.to_string())
    );

    assert!(tls_condition(&out, "abc", types::ACCEPTED).is_true());
    assert!(tls_condition(&out, "all", types::ACCEPTED).is_true());
    assert_eq!(
        tls_condition(&out, "elsewhere", types::ACCEPTED).reason,
        reasons::NO_MATCHING_LISTENER_HOSTNAME
    );
    assert!(tls_condition(&out, "on-term", types::ACCEPTED).is_true());
    let snap = &out.snapshots[&ObjectRef::new("default", "tls")];
    let served: Vec<(&str, &str, Vec<&str>)> = snap
        .stream_routes
        .iter()
        .flat_map(|r| {
            r.parents.iter().map(move |p| {
                let hosts = p.hostnames.iter().map(String::as_str).collect();
                (r.id.name.as_str(), p.listener.as_str(), hosts)
            })
        })
        .collect();
    // Each route's hostnames narrowed to the listener's.
    assert_eq!(
        served,
        [
            ("abc", "wild", vec!["abc.example.com"]),
            ("all", "wild", vec!["*.example.com"]),
            ("on-term", "term", vec!["abc.example.com"]),
            ("tcp-on-term", "term", vec![]),
        ]
    );
    let protocols: Vec<(&str, Protocol)> = snap
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.protocol))
        .collect();
    assert_eq!(
        protocols,
        [
            ("wild", Protocol::TlsPassthrough),
            ("other", Protocol::TlsPassthrough),
            ("kinds", Protocol::TlsPassthrough),
            ("mixed-p", Protocol::TlsPassthrough),
        ]
    );
}

const UDP_GATEWAY: &str = "
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: udp, namespace: default}
spec:
  gatewayClassName: portico
  listeners:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: u2, port: 5301, protocol: UDP}
  - {name: named, port: 5302, protocol: UDP, hostname: dns.example.com}
  - {name: secure, port: 5303, protocol: UDP, tls: {certificateRefs: [{name: x}]}}
  - {name: clash, port: 5301, protocol: HTTP}
---
apiVersion: v1
kind: Service
metadata: {name: resolver, namespace: default}
spec:
  ports:
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: dns, port: 53, protocol: UDP}
";

fn udp_route(name: &str, day: u32, parent: &str, backends: &str) -> String {
    tcp_route(name, day, parent, backends).replace("kind: TCPRoute", "kind: UDPRoute")
}

#[test]
fn udp_listeners_take_udp_routes_and_share_port_numbers_with_tcp_only() {
    let extra = [
        UDP_GATEWAY,
        &udp_route(
            "dns",
            1,
            "{name: udp, sectionName: dns}",
            "[{name: resolver, port: 53, weight: 3}, {name: nope, port: 53}]",
        ),
        &udp_route(
            "newer",
            2,
            "{name: udp, port: 53}",
            "[{name: svc, port: 80}]",
        ),
        &tcp_route(
            "dns-over-tcp",
            5,
            "{name: udp, sectionName: dns-tcp}",
            "[{name: resolver, port: 53}]",
        ),
        &udp_route(
            "on-tcp",
            3,
            "{name: udp, sectionName: dns-tcp}",
            "[{name: svc, port: 80}]",
        ),
        &tcp_route(
            "tcp-on-udp",
            4,
            "{name: udp, sectionName: u2}",
            "[{name: svc, port: 80}]",
        ),
    ]
    .concat();
    let out = run(&extra);
    let status = |route: &str| {
        let s = out
            .status
            .udp_routes
            .get(&ObjectRef::new("default", route))
            .unwrap_or_else(|| panic!("no status for {route}"));
        s.parents[0].conditions.clone()
    };
    let reason = |conditions: &[Condition], type_: &str| {
        find(conditions, type_)
            .map(|c| c.reason.clone())
            .unwrap_or_default()
    };
    assert_eq!(reason(&status("dns"), types::ACCEPTED), reasons::ACCEPTED);
    assert_eq!(
        reason(&status("dns"), types::RESOLVED_REFS),
        reasons::BACKEND_NOT_FOUND
    );
    assert_eq!(reason(&status("newer"), types::ACCEPTED), reasons::ACCEPTED);
    // svc has a TCP port 80 only: nothing for datagrams.
    let newer = find(&status("newer"), types::RESOLVED_REFS)
        .expect("ResolvedRefs")
        .clone();
    assert_eq!(newer.reason, reasons::BACKEND_NOT_FOUND);
    assert!(newer.message.contains("no UDP port 80"), "{newer:?}");
    assert_eq!(
        reason(&status("on-tcp"), types::ACCEPTED),
        reasons::NOT_ALLOWED_BY_LISTENERS
    );
    assert_eq!(
        condition(&out, "tcp-on-udp", types::ACCEPTED).reason,
        reasons::NOT_ALLOWED_BY_LISTENERS
    );

    let g = &out.status.gateways[&ObjectRef::new("default", "udp")];
    let listener = |name: &str| {
        g.listeners
            .iter()
            .find(|l| l.name == name)
            .expect("listener")
    };
    let accepted = |name: &str| reason(&listener(name).conditions, types::ACCEPTED);
    // UDP and TCP on 53: distinct sockets, no conflict.
    assert_eq!(accepted("dns"), reasons::ACCEPTED);
    assert_eq!(accepted("dns-tcp"), reasons::ACCEPTED);
    assert_eq!(listener("dns").supported_kinds, ["UDPRoute"]);
    assert_eq!(listener("dns").attached_routes, 2);
    // A hostname or tls on a UDP listener is invalid; UDP does not clash with HTTP's 5301
    // (two transports), so u2 and clash are both served.
    assert_eq!(accepted("named"), reasons::INVALID);
    assert_eq!(accepted("secure"), reasons::INVALID);
    assert_eq!(accepted("u2"), reasons::ACCEPTED);
    assert_eq!(accepted("clash"), reasons::ACCEPTED);

    let snap = &out.snapshots[&ObjectRef::new("default", "udp")];
    let routes: Vec<(&str, &str)> = snap
        .stream_routes
        .iter()
        .map(|r| (r.id.name.as_str(), r.kind.as_str()))
        .collect();
    assert_eq!(
        routes,
        [
            ("dns", "UDPRoute"),
            ("newer", "UDPRoute"),
            ("dns-over-tcp", "TCPRoute")
        ]
    );
    let dns = &snap.stream_routes[0];
    assert_eq!(dns.backend_refs[0].weight, 3);
    // The UDPRoute takes the Service's UDP port 53, the TCPRoute its TCP port 53.
    let port_names: Vec<Option<&str>> = snap
        .backends
        .iter()
        .filter(|b| b.id.name == "resolver")
        .map(|b| b.port_name.as_deref())
        .collect();
    assert_eq!(port_names, [Some("dns-tcp"), Some("dns")]);
    let udp_ids: Vec<bool> = snap
        .backends
        .iter()
        .filter(|b| b.id.name == "resolver")
        .map(|b| b.id.udp)
        .collect();
    assert_eq!(udp_ids, [false, true]);
    assert!(matches!(
        dns.backend_refs[1].target,
        BackendTarget::Unresolved { .. }
    ));
    let udp = snap
        .listeners
        .iter()
        .find(|l| l.name == "dns")
        .expect("dns listener");
    assert_eq!(udp.protocol, Protocol::Udp);
}
