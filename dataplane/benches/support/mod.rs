//! The route set both benchmarks use: `n` HTTPRoutes over 500 exact hostnames and 50
//! wildcards; each route has an exact and a prefix rule, and every tenth also a regex rule
//! and a header-conditioned rule.

use portico_model::*;

pub(crate) fn snapshot(n: usize) -> Snapshot {
    let backend = BackendId {
        namespace: "bench".into(),
        name: "svc".into(),
        port: 80,
        udp: false,
    };
    let to_backend = vec![BackendRef {
        target: BackendTarget::Service(backend.clone()),
        weight: 1,
        filters: vec![],
    }];
    let m = |path: PathMatch| RouteMatch {
        path,
        method: None,
        headers: vec![],
        query_params: vec![],
    };
    let routes = (0..n)
        .map(|i| {
            let host = if i % 10 == 9 {
                format!("*.zone{}.example.com", i % 50)
            } else {
                format!("svc{}.example.com", i % 500)
            };
            let mut rules = vec![
                RouteRule {
                    matches: vec![m(PathMatch::Exact(format!("/api/v{}/exact{i}", i % 3)))],
                    backend_refs: to_backend.clone(),
                    ..RouteRule::default()
                },
                RouteRule {
                    matches: vec![m(PathMatch::PathPrefix(format!(
                        "/api/v{}/items{i}",
                        i % 3
                    )))],
                    backend_refs: to_backend.clone(),
                    ..RouteRule::default()
                },
            ];
            if i % 10 == 0 {
                rules.push(RouteRule {
                    matches: vec![m(PathMatch::RegularExpression(format!("/re{i}/[0-9]+")))],
                    backend_refs: to_backend.clone(),
                    ..RouteRule::default()
                });
                rules.push(RouteRule {
                    matches: vec![RouteMatch {
                        headers: vec![KeyValueMatch {
                            name: "x-canary".into(),
                            value: StringMatch::Exact("true".into()),
                        }],
                        ..m(PathMatch::PathPrefix(format!("/api/v{}/items{i}", i % 3)))
                    }],
                    backend_refs: to_backend.clone(),
                    ..RouteRule::default()
                });
            }
            HttpRoute {
                kind: Default::default(),
                id: ObjectRef::new("bench", format!("route-{i:05}")),
                parents: vec![RouteParent {
                    listener: "http".into(),
                    hostnames: vec![host],
                    policies: Default::default(),
                }],
                rules,
            }
        })
        .collect();
    Snapshot {
        version: 1,
        gateway: ObjectRef::new("bench", "gw"),
        listeners: vec![Listener {
            name: "http".into(),
            addresses: vec![],
            port: 80,
            protocol: Protocol::Http,
            hostname: None,
            tls: None,
        }],
        routes,
        stream_routes: vec![],
        backends: vec![Backend {
            id: backend,
            protocol: AppProtocol::Http1,
            port_name: None,
            endpoints: vec![],
            settings: None,
            tls: None,
        }],
        policies: Default::default(),
        session_key: None,
        purges: vec![],
    }
}
