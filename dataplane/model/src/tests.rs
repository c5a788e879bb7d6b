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
                policies: AttachedPolicies {
                    rate_limit: Some(ObjectRef::new("default", "rl")),
                    ..AttachedPolicies::default()
                },
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
                            udp: false,
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
                mirrors: vec![crate::Mirror {
                    backend: BackendId {
                        namespace: "default".into(),
                        name: "next".into(),
                        port: 80,
                        udp: false,
                    },
                    numerator: 1,
                    denominator: 10,
                }],
                timeouts: Timeouts {
                    request_ms: Some(1500),
                    backend_request_ms: None,
                },
                retry: Some(RouteRetry {
                    codes: vec![502, 503],
                    attempts: 2,
                    backoff_ms: 25,
                }),
                session_persistence: Some(backend::SessionPersistence {
                    kind: backend::SessionKind::Cookie,
                    name: "app".into(),
                    absolute_timeout_ms: Some(3_600_000),
                    idle_timeout_ms: None,
                    permanent: true,
                }),
                policies: AttachedPolicies {
                    auth: Some(ObjectRef::new("default", "jwt")),
                    ..AttachedPolicies::default()
                },
            }],
        }],
        stream_routes: vec![],
        backends: vec![Backend {
            id: BackendId {
                namespace: "default".into(),
                name: "svc".into(),
                port: 80,
                udp: false,
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
            settings: Some(BackendSettings {
                policy: ObjectRef::new("default", "svc-policy"),
                load_balancer: backend::LoadBalancer::RoundRobin,
                circuit_breaker: backend::CircuitBreaker {
                    max_requests: Some(100),
                    max_connections: Some(50),
                    ..backend::CircuitBreaker::default()
                },
                ..BackendSettings::default()
            }),
            tls: Some(crate::BackendTls {
                policy: ObjectRef::new("default", "svc-tls"),
                server_name: "svc.example.com".into(),
                ca_pem: "-----BEGIN CERTIFICATE-----\n".into(),
                subject_alt_names: vec![crate::SubjectAltName::Uri("spiffe://x/y".into())],
                ..crate::BackendTls::default()
            }),
        }],
        policies: PolicySet {
            auth: vec![auth::AuthPolicy {
                id: ObjectRef::new("default", "jwt"),
                consumer_header: auth::DEFAULT_CONSUMER_HEADER.into(),
                jwt: Some(auth::Jwt {
                    issuer: "https://idp".into(),
                    audiences: vec!["api".into()],
                    algorithms: vec!["HS256".into()],
                    keys: auth::JwtKeys::Hmac(auth::Sensitive("SECRET-HMAC".into())),
                    leeway_seconds: 30,
                    sources: vec![auth::TokenSource::Cookie("session".into())],
                    claims_to_headers: vec![],
                    strip_token: true,
                }),
                introspection: Some(auth::Introspection {
                    url: "https://idp/introspect".into(),
                    client_id: "portico".into(),
                    client_secret: auth::Sensitive("SECRET-CLIENT".into()),
                    cache_seconds: 60,
                    timeout_ms: 1000,
                }),
                rules: Some(vec![auth::AuthzRule {
                    scopes: vec!["read".into()],
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            rate_limit: vec![ratelimit::RateLimitPolicy {
                id: ObjectRef::new("default", "rl"),
                limits: vec![ratelimit::Limit {
                    name: "per-client".into(),
                    requests: 10,
                    interval_ms: 1000,
                    algorithm: ratelimit::Algorithm::SlidingWindow,
                    burst: 10,
                    scope: ratelimit::Scope::Global,
                    key: vec![
                        ratelimit::KeyPart::ClientIp,
                        ratelimit::KeyPart::Claim(vec!["org".into(), "id".into()]),
                    ],
                    match_: Some(ratelimit::LimitMatch {
                        methods: vec!["POST".into()],
                        path: Some(ratelimit::PathMatch::Prefix("/api".into())),
                        headers: vec![("x-tier".into(), None)],
                    }),
                }],
                trusted_hops: 1,
                ipv6_prefix_length: 64,
                response_headers: true,
                global: Some(ratelimit::Global {
                    redis_url: "redis://127.0.0.1:6379".into(),
                    fail_closed: false,
                    timeout_ms: 100,
                }),
            }],
            cache: vec![cache::CachePolicy {
                id: ObjectRef::new("default", "cache"),
                default_ttl: Some(60),
                max_ttl: 3600,
                stale_while_revalidate: Some(30),
                key: cache::CacheKey {
                    query: cache::QueryKey::Exclude(vec!["utm_source".into()]),
                    headers: vec!["accept-language".into()],
                    consumer: true,
                },
                statuses: vec![200, 404],
                max_object_bytes: 1 << 20,
                coalesce_timeout_ms: 5000,
                ..cache::CachePolicy::default()
            }],
        },
        session_key: Some(auth::Sensitive("SECRET-SESSION".into())),
        purges: vec![cache::Purge {
            id: "default/purge#0123456789abcdef".into(),
            kind: cache::PurgeKind::Prefix,
            value: "https://shop.test:443/catalog/".into(),
            routes: vec!["default/catalog".into()],
            created: 1_700_000_000,
        }],
    }
}

#[test]
fn auth_secrets_never_show_in_debug_output() {
    let text = format!("{:?}", sample());
    assert!(
        !text.contains("SECRET-HMAC")
            && !text.contains("SECRET-CLIENT")
            && !text.contains("SECRET-SESSION"),
        "{text}"
    );
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
        udp: false,
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

#[test]
fn redis_urls_parse_to_an_address_and_database() {
    use ratelimit::RedisAddress;
    let ok = |url: &str| RedisAddress::parse(url).expect(url);
    assert_eq!(ok("redis://127.0.0.1").host_port, "127.0.0.1:6379");
    assert_eq!(
        ok("redis://redis.infra:6380/2").host_port,
        "redis.infra:6380"
    );
    assert_eq!(ok("redis://redis.infra:6380/2").db, 2);
    assert_eq!(ok("redis://[::1]:7000/").host_port, "[::1]:7000");
    assert_eq!(ok("redis://[::1]").host_port, "[::1]:6379");
    for bad in [
        "http://x:1",
        "redis://",
        "redis://user:secret@x:6379",
        "redis://x:port",
        "redis://x:6379/db",
        "redis://:6379",
    ] {
        assert!(RedisAddress::parse(bad).is_err(), "{bad}");
    }
}

/// A snapshot as the controller sent it, and the dataplane saved it, before rules, parents
/// and snapshots held their policies in [`AttachedPolicies`] and [`PolicySet`]: the same
/// JSON must still load into the same places, and serialise back byte for byte (so an
/// older dataplane reads a newer controller's snapshot the way it always did).
const OLD_SHAPE: &str = r#"{"version":3,"gateway":{"namespace":"default","name":"gw"},"listeners":[{"name":"http","port":8080,"protocol":"HTTP"}],"routes":[{"id":{"namespace":"default","name":"web"},"parents":[{"listener":"http","hostnames":["web.example.com"],"auth":{"namespace":"default","name":"gw-auth"},"rateLimit":{"namespace":"default","name":"gw-limit"}}],"rules":[{"name":"api","matches":[{"path":{"type":"PathPrefix","value":"/api"}}],"backendRefs":[{"target":{"service":{"namespace":"default","name":"svc","port":80}},"weight":1}],"auth":{"namespace":"default","name":"api-auth"}},{"matches":[{"path":{"type":"PathPrefix","value":"/"}}],"rateLimit":{"namespace":"default","name":"gw-limit"}}]}],"backends":[{"id":{"namespace":"default","name":"svc","port":80},"protocol":"http","endpoints":[]}],"authPolicies":[{"id":{"namespace":"default","name":"api-auth"},"consumerHeader":"x-portico-consumer","jwt":{"issuer":"https://idp","algorithms":["HS256"],"keys":{"hmac":"c2VjcmV0"},"leewaySeconds":30,"sources":[{"cookie":"session"}]}},{"id":{"namespace":"default","name":"gw-auth"},"invalid":"Secret default/keys not found","consumerHeader":"x-portico-consumer"}],"rateLimitPolicies":[{"id":{"namespace":"default","name":"gw-limit"},"limits":[{"name":"per-client","requests":10,"intervalMs":1000,"algorithm":"TokenBucket","burst":10,"scope":"Local","key":["clientIp"]}],"ipv6PrefixLength":64,"responseHeaders":true}]}"#;

#[test]
fn a_snapshot_saved_before_the_policy_set_still_loads_unchanged() {
    let snap: Snapshot = serde_json::from_str(OLD_SHAPE).expect("old-shape snapshot");
    let id = |name: &str| ObjectRef::new("default", name);
    let route = &snap.routes[0];
    assert_eq!(
        route.parents[0].policies.get(PolicyKind::Auth),
        Some(&id("gw-auth"))
    );
    assert_eq!(
        route.parents[0].policies.get(PolicyKind::RateLimit),
        Some(&id("gw-limit"))
    );
    assert_eq!(
        route.rules[0].policies.get(PolicyKind::Auth),
        Some(&id("api-auth"))
    );
    assert_eq!(route.rules[0].policies.get(PolicyKind::RateLimit), None);
    assert_eq!(route.rules[1].policies.get(PolicyKind::Auth), None);
    assert_eq!(
        route.rules[1].policies.get(PolicyKind::RateLimit),
        Some(&id("gw-limit"))
    );
    assert_eq!(
        snap.policies.ids(PolicyKind::Auth),
        [&id("api-auth"), &id("gw-auth")]
    );
    assert_eq!(
        snap.policies.auth[1].invalid.as_deref(),
        Some("Secret default/keys not found")
    );
    assert_eq!(snap.policies.ids(PolicyKind::RateLimit), [&id("gw-limit")]);
    assert_eq!(snap.policies.rate_limit[0].limits[0].requests, 10);
    assert_eq!(
        serde_json::to_string(&snap).expect("serialise"),
        OLD_SHAPE,
        "the wire format changed"
    );
}

#[test]
fn attached_policies_are_read_and_written_by_kind() {
    let mut attached = AttachedPolicies::default();
    assert!(PolicyKind::ALL.iter().all(|k| attached.get(*k).is_none()));
    for kind in PolicyKind::ALL {
        attached.set(kind, Some(ObjectRef::new("ns", kind.as_str())));
    }
    assert_eq!(attached.auth, Some(ObjectRef::new("ns", "AuthPolicy")));
    assert_eq!(
        attached.rate_limit,
        Some(ObjectRef::new("ns", "RateLimitPolicy"))
    );
    attached.set(PolicyKind::Auth, None);
    assert_eq!(attached.get(PolicyKind::Auth), None);
    assert!(attached.get(PolicyKind::RateLimit).is_some());
}
