use super::*;

fn sample() -> Snapshot {
    Snapshot {
        version: 7,
        gateway: ObjectRef::new("default", "gw"),
        listeners: vec![Listener {
            name: "http".into(),
            addresses: vec!["127.0.0.2".into()],
            port: 8080,
            protocol: Protocol::Http,
            hostname: Some("*.example.com".into()),
            tls: None,
        }],
        routes: vec![HttpRoute {
            kind: Default::default(),
            id: ObjectRef::new("default", "r"),
            parents: vec![RouteParent {
                listener: "http".into(),
                hostnames: vec!["a.example.com".into()],
            }],
            rules: vec![RouteRule {
                name: None,
                matches: vec![RouteMatch {
                    path: PathMatch::PathPrefix("/api".into()),
                    method: Some("GET".into()),
                    headers: vec![KeyValueMatch {
                        name: "x-env".into(),
                        value: StringMatch::RegularExpression("^p.*$".into()),
                    }],
                    query_params: vec![],
                }],
                filters: vec![Filter::UrlRewrite(UrlRewrite {
                    hostname: None,
                    path: Some(PathRewrite::ReplacePrefixMatch("/v2".into())),
                })],
                backend_refs: vec![
                    BackendRef {
                        target: BackendTarget::Service(BackendId {
                            namespace: "default".into(),
                            name: "svc".into(),
                            port: 80,
                        }),
                        weight: 3,
                        filters: vec![],
                    },
                    BackendRef {
                        target: BackendTarget::Unresolved {
                            reason: "BackendNotFound".into(),
                        },
                        weight: 1,
                        filters: vec![],
                    },
                ],
                timeouts: Timeouts {
                    request_ms: Some(1500),
                    backend_request_ms: None,
                },
            }],
        }],
        backends: vec![Backend {
            id: BackendId {
                namespace: "default".into(),
                name: "svc".into(),
                port: 80,
            },
            protocol: AppProtocol::H2c,
            port_name: Some("http".into()),
            endpoints: vec![Endpoint {
                address: "::1".into(),
                port: 9000,
                ready: true,
                serving: true,
                terminating: false,
            }],
        }],
    }
}

#[test]
fn round_trips_through_json_unchanged() {
    let snap = sample();
    let json = serde_json::to_string(&snap).expect("serialise");
    let back: Snapshot = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, snap);
    assert_eq!(serde_json::to_string(&back).expect("serialise"), json);
}

#[test]
fn backend_lookup_uses_sorted_ids() {
    let snap = sample();
    let id = BackendId {
        namespace: "default".into(),
        name: "svc".into(),
        port: 80,
    };
    assert_eq!(snap.backend(&id).map(|b| b.endpoints.len()), Some(1));
    let missing = BackendId { port: 81, ..id };
    assert!(snap.backend(&missing).is_none());
}

#[test]
fn certificate_debug_hides_key() {
    let cert = Certificate {
        secret: ObjectRef::new("ns", "tls"),
        cert_pem: "CERT".into(),
        key_pem: "SECRET-KEY".into(),
    };
    assert!(!format!("{cert:?}").contains("SECRET-KEY"));
}
