use super::*;
use portico_model::ObjectRef;
use portico_model::ratelimit::{Algorithm, Limit, LimitMatch, PathMatch, RateLimitPolicy};

fn limit(name: &str, requests: u32, key: Vec<KeyPart>) -> Limit {
    Limit {
        name: name.into(),
        requests,
        interval_ms: 60_000,
        algorithm: Algorithm::FixedWindow,
        burst: requests,
        scope: Scope::Local,
        key,
        match_: None,
    }
}

fn engine(limits: Vec<Limit>, trusted_hops: u32) -> RateLimitEngine {
    let p = RateLimitPolicy {
        id: ObjectRef::new("default", "rl"),
        limits,
        trusted_hops,
        ipv6_prefix_length: 64,
        response_headers: true,
        global: None,
    };
    RateLimitEngine::new(&p, &RateLimitShared::default(), &Metrics::default())
}

fn facts_from(peer: IpAddr) -> RequestCtx {
    let down =
        crate::request::Downstream::new(std::net::SocketAddr::new(peer, 40000), 8080, "http", None);
    RequestCtx {
        route: Some("default/r".into()),
        ..RequestCtx::new(HeaderValue::from_static("id"), down, 0, false)
    }
}

fn facts(peer: [u8; 4]) -> RequestCtx {
    facts_from(IpAddr::from(peer))
}

fn request(headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().method("POST").uri("/api/items");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).expect("request")
}

#[test]
fn client_ip_trusts_only_the_configured_forwarded_for_hops() {
    let peer: IpAddr = "10.0.0.9".parse().expect("ip");
    let mut h = HeaderMap::new();
    h.append(
        "x-forwarded-for",
        HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
    );
    h.append("x-forwarded-for", HeaderValue::from_static("3.3.3.3"));
    assert_eq!(
        client_ip(&h, peer, 0),
        (peer, false),
        "no trusted hop: the peer"
    );
    assert_eq!(client_ip(&h, peer, 1).0.to_string(), "3.3.3.3");
    assert_eq!(client_ip(&h, peer, 3).0.to_string(), "1.1.1.1");
    assert_eq!(
        client_ip(&h, peer, 4),
        (peer, false),
        "fewer entries than hops"
    );
    let mut bad = HeaderMap::new();
    bad.insert("x-forwarded-for", HeaderValue::from_static("not-an-ip"));
    assert_eq!(client_ip(&bad, peer, 1), (peer, true), "malformed: counted");
    // A bad trusted entry: the peer, counted; a bad entry left of them is the client's.
    h.append("x-forwarded-for", HeaderValue::from_static("junk"));
    assert_eq!(client_ip(&h, peer, 1), (peer, true));
    let mut left = HeaderMap::new();
    left.insert("x-forwarded-for", HeaderValue::from_static("junk, 5.5.5.5"));
    assert_eq!(
        client_ip(&left, peer, 1),
        ("5.5.5.5".parse().expect("ip"), false)
    );
    assert_eq!(client_ip(&HeaderMap::new(), peer, 1), (peer, false));
}

#[tokio::test]
async fn ipv6_clients_share_a_key_per_64_and_the_gateway_hops_apply() {
    let e = engine(vec![limit("per-client", 2, vec![KeyPart::ClientIp])], 0);
    let req = request(&[]);
    let one = facts_from("2001:db8:1:2::1".parse().expect("ip"));
    let same_64 = facts_from("2001:db8:1:2:ffff::9".parse().expect("ip"));
    let other_64 = facts_from("2001:db8:1:3::1".parse().expect("ip"));
    assert!(e.check(&req, &one).await.is_ok());
    assert!(e.check(&req, &same_64).await.is_ok());
    assert!(e.check(&req, &one).await.is_err(), "the /64 used its quota");
    assert!(e.check(&req, &other_64).await.is_ok());
    assert_eq!(mask_v6(u128::MAX, 64), u128::MAX << 64);
    assert_eq!(mask_v6(7, 128), 7);

    // A policy without trustedHops uses the dataplane's: keyed by the forwarded address.
    let e = engine(vec![limit("per-client", 1, vec![KeyPart::ClientIp])], 0);
    let mut f = facts([10, 0, 0, 1]);
    f.trusted_hops = 1;
    let a = request(&[("x-forwarded-for", "1.1.1.1")]);
    let b = request(&[("x-forwarded-for", "2.2.2.2")]);
    assert!(e.check(&a, &f).await.is_ok());
    assert!(
        e.check(&b, &f).await.is_ok(),
        "another client behind the same proxy"
    );
    assert!(e.check(&a, &f).await.is_err());
}

#[tokio::test]
async fn a_header_key_counts_each_value_apart_and_missing_values_together() {
    let e = engine(
        vec![limit(
            "per-tenant",
            2,
            vec![KeyPart::Header("x-tenant".into())],
        )],
        0,
    );
    let f = facts([127, 0, 0, 1]);
    let mut a = 0;
    let mut b = 0;
    let mut none = 0;
    for _ in 0..5 {
        a += usize::from(e_check(&e, &request(&[("x-tenant", "a")]), &f).await);
        b += usize::from(e_check(&e, &request(&[("x-tenant", "b")]), &f).await);
        none += usize::from(e_check(&e, &request(&[]), &f).await);
    }
    assert_eq!((a, b, none), (2, 2, 2));
}

async fn e_check(e: &RateLimitEngine, req: &Request<()>, f: &RequestCtx) -> bool {
    e.check(req, f).await.is_ok()
}

#[tokio::test]
async fn headers_show_the_policy_and_what_remains_and_a_refusal_says_when_to_retry() {
    let e = engine(vec![limit("per-client", 2, vec![KeyPart::ClientIp])], 0);
    let f = facts([127, 0, 0, 2]);
    let first = e
        .check(&request(&[]), &f)
        .await
        .expect("admitted")
        .expect("headers");
    assert_eq!(
        first.policy.as_ref().expect("policy"),
        "\"per-client\";q=2;w=60"
    );
    let state = first
        .state
        .as_ref()
        .expect("state")
        .to_str()
        .expect("ascii");
    assert!(state.starts_with("\"per-client\";r=1;t="), "{state}");
    assert!(first.retry_after.is_none());
    e.check(&request(&[]), &f).await.expect("second admitted");
    match e.check(&request(&[]), &f).await {
        Err(Refusal::Limited(h)) => {
            let retry = h.retry_after.expect("Retry-After");
            assert!((1..=60).contains(&retry), "{retry}");
            assert!(
                h.state
                    .as_ref()
                    .and_then(|s| s.to_str().ok())
                    .is_some_and(|s| s.contains(";r=0;")),
                "{h:?}"
            );
        }
        other => panic!("expected 429, got {other:?}"),
    }
}

#[tokio::test]
async fn only_matching_requests_are_counted() {
    let mut l = limit("writes", 1, vec![]);
    l.match_ = Some(LimitMatch {
        methods: vec!["POST".into()],
        path: Some(PathMatch::Prefix("/api/".into())),
        headers: vec![("x-tier".into(), Some("free".into()))],
    });
    let e = engine(vec![l], 0);
    let f = facts([127, 0, 0, 3]);
    // Not matching (no x-tier: free): never counted, no headers.
    for _ in 0..3 {
        let r = e.check(&request(&[("x-tier", "paid")]), &f).await;
        assert!(matches!(r, Ok(None)), "{r:?}");
    }
    assert!(e.check(&request(&[("x-tier", "free")]), &f).await.is_ok());
    assert!(e.check(&request(&[("x-tier", "free")]), &f).await.is_err());
    // Segment-wise prefix: /apix is not under /api/.
    let m = Matcher::new(&LimitMatch {
        methods: vec![],
        path: Some(PathMatch::Prefix("/api".into())),
        headers: vec![],
    });
    let h = HeaderMap::new();
    assert!(m.matches(&Method::GET, &h, "/api"));
    assert!(m.matches(&Method::GET, &h, "/api/x"));
    assert!(!m.matches(&Method::GET, &h, "/apix"));
}

#[tokio::test]
async fn every_limit_is_checked_and_state_survives_a_new_snapshot() {
    let shared = RateLimitShared::default();
    let metrics = Metrics::default();
    let p = RateLimitPolicy {
        id: ObjectRef::new("default", "rl"),
        limits: vec![
            limit("per-client", 10, vec![KeyPart::ClientIp]),
            limit("everyone", 3, vec![]),
        ],
        trusted_hops: 0,
        ipv6_prefix_length: 64,
        response_headers: true,
        global: None,
    };
    let first = RateLimitEngine::new(&p, &shared, &metrics);
    let f = facts([127, 0, 0, 4]);
    for _ in 0..2 {
        assert!(first.check(&request(&[]), &f).await.is_ok());
    }
    // The next snapshot builds new engines; the counters carry over.
    let second = RateLimitEngine::new(&p, &shared, &metrics);
    drop(first);
    assert!(second.check(&request(&[]), &f).await.is_ok());
    assert!(
        matches!(
            second.check(&request(&[]), &f).await,
            Err(Refusal::Limited(_))
        ),
        "the 'everyone' limit of 3 is spent"
    );
}

#[tokio::test]
async fn a_refusal_names_the_first_limit_waits_for_the_longest_and_counts_nothing_after_it() {
    let bucket = |name: &str, requests: u32, interval_ms: u64| Limit {
        algorithm: Algorithm::TokenBucket,
        interval_ms,
        ..limit(name, requests, vec![])
    };
    let e = engine(
        vec![
            bucket("per-minute", 1, 60_000),
            bucket("per-hour", 1, 3_600_000),
            bucket("spare", 3, 3_600_000),
        ],
        0,
    );
    let f = facts([127, 0, 0, 5]);
    e.check(&request(&[]), &f)
        .await
        .expect("the first is admitted");
    for _ in 0..2 {
        match e.check(&request(&[]), &f).await {
            Err(Refusal::Limited(h)) => {
                assert_eq!(h.refused_by.as_deref(), Some("default/rl/per-minute"));
                // per-hour would refuse too, for longer: waiting a minute would not do.
                let retry = h.retry_after.expect("Retry-After");
                assert!((3_590..=3_600).contains(&retry), "{retry}");
                // The refused requests used none of the limits after the refusing one.
                let state = h.state.as_ref().and_then(|s| s.to_str().ok());
                assert!(
                    state.is_some_and(|s| s.contains("\"spare\";r=2;")),
                    "{state:?}"
                );
            }
            other => panic!("expected 429, got {other:?}"),
        }
    }
}

/// Paused time: a window's worth of time passes in none, on the clock the limiter reads.
#[tokio::test(start_paused = true)]
async fn a_local_limit_admits_again_once_its_window_has_passed() {
    let e = engine(vec![limit("per-client", 2, vec![KeyPart::ClientIp])], 0);
    let req = request(&[]);
    let f = facts([10, 0, 0, 7]);
    assert!(e.check(&req, &f).await.is_ok());
    assert!(e.check(&req, &f).await.is_ok());
    assert!(e.check(&req, &f).await.is_err(), "quota used");
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(e.check(&req, &f).await.is_ok(), "a new window");
}
