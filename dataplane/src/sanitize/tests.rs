use super::*;

fn req(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().version(version).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("request")
}

fn check(version: Version, uri: &str, headers: &[(&str, &str)]) -> Result<Request<()>, Refusal> {
    let mut r = req(version, uri, headers);
    inbound(&mut r, &EdgeSettings::default()).map(|()| r)
}

fn host(r: &Request<()>) -> Vec<&str> {
    r.headers()
        .get_all(header::HOST)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

#[test]
fn one_host_is_the_routed_authority() {
    let h1 = Version::HTTP_11;
    let r = check(h1, "/x", &[("host", "a.example.com:8080")]).expect("valid");
    assert_eq!(host(&r), ["a.example.com:8080"]);
    // Absolute form: the target's authority replaces Host.
    let r = check(h1, "http://a.example.com/x", &[("host", "b.example.com")]).expect("valid");
    assert_eq!(host(&r), ["a.example.com"]);
    assert!(check(h1, "/x", &[("host", "a"), ("host", "b")]).is_err());
    assert!(check(h1, "/x", &[("host", "a"), ("host", "a")]).is_err());
    assert!(check(h1, "/x", &[]).is_err());
    // HTTP/2: Host may repeat :authority (in any case), never differ from it.
    let h2 = Version::HTTP_2;
    let r = check(h2, "https://a.example.com/x", &[]).expect("valid");
    assert_eq!(host(&r), ["a.example.com"]);
    assert!(check(h2, "https://a.example.com/x", &[("host", "A.example.com")]).is_ok());
    assert!(check(h2, "https://a.example.com/x", &[("host", "b.example.com")]).is_err());
    let r = check(h2, "/x", &[("host", "c.example.com")]).expect("Host without :authority");
    assert_eq!(host(&r), ["c.example.com"]);
}

#[test]
fn malformed_hosts_are_refused() {
    for bad in [
        "",
        "a b",
        "user@a.example.com",
        "a.example.com:",
        "a.example.com:99999",
        "a.example.com:8o",
        "a.example.com:+80",
        "a.example.com/x",
        "a\"b",
        "a,b",
        "[::1",
        "[zz::1]",
        "a%2fb",
    ] {
        assert!(
            check(Version::HTTP_11, "/x", &[("host", bad)]).is_err(),
            "{bad:?} must be refused"
        );
    }
    for good in [
        "a.example.com",
        "A.Example.COM:80",
        "[::1]:8080",
        "10.0.0.1",
        "svc_1.local",
    ] {
        assert!(
            check(Version::HTTP_11, "/x", &[("host", good)]).is_ok(),
            "{good:?}"
        );
    }
}

#[test]
fn transfer_codings_other_than_one_chunked_are_refused() {
    let h1 = Version::HTTP_11;
    let te = |v: &str| check(h1, "/x", &[("host", "a"), ("transfer-encoding", v)]);
    assert!(te("chunked").is_ok());
    assert!(te("Chunked").is_ok());
    for bad in [
        "identity, chunked",
        "gzip, chunked",
        "chunked, chunked",
        "identity",
    ] {
        assert!(te(bad).is_err(), "{bad}");
    }
    let two = check(
        h1,
        "/x",
        &[
            ("host", "a"),
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", "chunked"),
        ],
    );
    assert!(two.is_err());
}

#[test]
fn hop_by_hop_goes_first_and_cannot_remove_host() {
    let r = check(
        Version::HTTP_11,
        "/x",
        &[
            ("host", "a.example.com"),
            ("connection", "host, x-portico-consumer, x-secret"),
            ("x-secret", "1"),
        ],
    )
    .expect("valid");
    assert_eq!(host(&r), ["a.example.com"]);
    assert!(r.headers().get("x-secret").is_none());
    assert!(r.headers().get(header::CONNECTION).is_none());
}

#[test]
fn underscores_are_refused_dropped_or_allowed() {
    let headers = [
        ("host", "a"),
        ("x_portico_consumer", "admin"),
        ("x-ok", "1"),
    ];
    assert!(check(Version::HTTP_11, "/x", &headers).is_err());
    for (policy, kept) in [
        (UnderscoreHeaders::Drop, false),
        (UnderscoreHeaders::Allow, true),
    ] {
        let mut r = req(Version::HTTP_11, "/x", &headers);
        let settings = EdgeSettings {
            underscore_headers: policy,
            trusted_hops: 0,
        };
        inbound(&mut r, &settings).expect("served");
        assert_eq!(r.headers().contains_key("x_portico_consumer"), kept);
        assert!(r.headers().contains_key("x-ok"));
    }
}

#[test]
fn forgeable_forwarding_headers_are_removed() {
    let r = check(
        Version::HTTP_11,
        "/x",
        &[
            ("host", "a"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-kept", "1"),
        ],
    )
    .expect("valid");
    let mut names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
    names.sort();
    assert_eq!(names, ["host", "x-kept"]);
}

#[test]
fn forwarded_for_keeps_only_what_is_trusted() {
    let peer: IpAddr = "10.0.0.9".parse().expect("ip");
    let mut h = HeaderMap::new();
    h.insert(
        &crate::util::X_FORWARDED_FOR,
        HeaderValue::from_static("6.6.6.6, 1.2.3.4"),
    );
    assert_eq!(forwarded_for(&h, peer, 0), ("10.0.0.9".into(), false));
    assert_eq!(
        forwarded_for(&h, peer, 1),
        ("1.2.3.4, 10.0.0.9".into(), false)
    );
    assert_eq!(
        forwarded_for(&h, peer, 2),
        ("6.6.6.6, 1.2.3.4, 10.0.0.9".into(), false)
    );
    assert_eq!(
        forwarded_for(&h, peer, 5),
        ("6.6.6.6, 1.2.3.4, 10.0.0.9".into(), false)
    );
    // Junk the client wrote to the left of the trusted entries is dropped unread...
    let mut left = HeaderMap::new();
    left.insert(
        &crate::util::X_FORWARDED_FOR,
        HeaderValue::from_static("junk, unknown, 1.2.3.4"),
    );
    assert_eq!(
        forwarded_for(&left, peer, 1),
        ("1.2.3.4, 10.0.0.9".into(), false)
    );
    // ...a trusted entry that is not an address is not trusted (the peer alone, counted).
    h.append(
        &crate::util::X_FORWARDED_FOR,
        HeaderValue::from_static("junk"),
    );
    assert_eq!(forwarded_for(&h, peer, 1), ("10.0.0.9".into(), true));
    let mut v6 = HeaderMap::new();
    v6.insert(
        &crate::util::X_FORWARDED_FOR,
        HeaderValue::from_static("[2001:db8::1]:443"),
    );
    assert_eq!(
        forwarded_for(&v6, peer, 1),
        ("2001:db8::1, 10.0.0.9".into(), false)
    );
}
