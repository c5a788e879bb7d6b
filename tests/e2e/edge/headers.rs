//! Host confusion, identity headers and forwarding headers: the backend gets the authority
//! that was routed, the identity the gateway established, and the client address it saw.

use portico_tests::auth::{Setup, policy};
use portico_tests::raw;
use portico_tests::tls::Conn;

const KEY: &str = "ops-key-5f2a9c";

/// `secure.test` needs an API key; `open.test` is open and has a redirect under `/moved`.
fn docs() -> String {
    let route = |name: &str, host: &str| {
        format!(
            r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{host}]
  rules:
  - backendRefs: [{{name: echo, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /moved}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /new}}}}}}]
"#
        )
    };
    format!(
        "{}{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: keys, namespace: default}}\nstringData: {{ops: {KEY}}}\n{}",
        route("secure", "secure.test"),
        route("open", "open.test"),
        policy("secure", "secure", "  apiKey: {secretRefs: [{name: keys}]}"),
    )
}

/// The Host values the echo backend received.
fn hosts(r: &raw::RawResp) -> Vec<String> {
    r.json()["headers"]["host"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_backend_gets_the_authority_that_was_routed() {
    let s = Setup::start(&docs()).await;
    let a = s.addr();
    // The protected host without a key: 401; the open host: served.
    assert_eq!(
        raw::send(a, &raw::get("/x", "secure.test", &[]))
            .await
            .status,
        401
    );
    let r = raw::send(a, &raw::get("/x", "open.test", &[])).await;
    assert_eq!((r.status, hosts(&r)), (200, vec!["open.test".to_string()]));

    // Two Host headers: refused, whichever comes first.
    for (first, second) in [("open.test", "secure.test"), ("secure.test", "open.test")] {
        let req = format!(
            "GET /x HTTP/1.1\r\nHost: {first}\r\nHost: {second}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            raw::send(a, req.as_bytes()).await.status,
            400,
            "{first}, {second}"
        );
    }
    // Absolute form: routed by the target's authority, which replaces Host.
    let r = raw::send(a, &raw::get("http://open.test/x", "secure.test", &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        hosts(&r),
        ["open.test"],
        "the routed authority, not the client's Host"
    );
    assert_eq!(r.json()["headers"]["x-forwarded-host"][0], "open.test");
    let r = raw::send(a, &raw::get("http://secure.test/x", "open.test", &[])).await;
    assert_eq!(
        r.status, 401,
        "absolute-form to the protected host is protected"
    );
    // Redirects build Location from the routed authority.
    let r = raw::send(a, &raw::get("http://open.test/moved", "evil.test", &[])).await;
    assert_eq!(r.status, 302);
    let location = r.header("location").unwrap_or_default();
    assert!(location.starts_with("http://open.test"), "{location}");
    // Hosts that are not host names.
    for bad in [
        "open.test evil",
        "user@open.test",
        "open.test:99999",
        "open.test/x",
        "open.test:",
    ] {
        let r = raw::send(a, &raw::get("/x", bad, &[])).await;
        assert_eq!(r.status, 400, "{bad:?}");
    }
    // No Host at all (HTTP/1.1 requires one).
    let r = raw::send(a, b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 400);

    // HTTP/2: a Host that differs from :authority is malformed; one that agrees is fine.
    let mut h2 = Conn::h2c(a).await.expect("h2c");
    let r = h2
        .send(
            "GET",
            "open.test",
            "/x",
            &[("host", "secure.test")],
            Default::default(),
        )
        .await;
    match r {
        Ok(r) => assert_eq!(r.status, 400, "Host must not differ from :authority"),
        // The client library refused to send it (a stream reset): nothing got through.
        Err(e) => eprintln!("h2 client refused the mismatched Host: {e}"),
    }
    let mut h2 = Conn::h2c(a).await.expect("h2c");
    let r = h2.get("open.test", "/x").await.expect("h2");
    assert_eq!(r.status, 200);
    assert_eq!(r.seen_header("host").as_deref(), Some("open.test"));
    let r = h2.get("secure.test", "/x").await.expect("h2");
    assert_eq!(r.status, 401);

    // An escaped Host in the access log: no forged fields.
    let forged = "open.test\tstatus=200";
    let _ = raw::send(a, &raw::get("/x", forged, &[])).await;
    let logs = s.portico.proc.logs();
    assert!(
        !logs.contains("open.test\tstatus"),
        "the raw Host reached the log"
    );
}

#[tokio::test]
async fn identity_headers_cannot_be_removed_or_smuggled() {
    let s = Setup::start(&docs()).await;
    let a = s.addr();
    // The client names the consumer header as hop-by-hop: it is the client's header that
    // goes, not the one the gateway sets after authentication.
    let r = raw::send(
        a,
        &raw::get(
            "/x",
            "secure.test",
            &[
                ("x-api-key", KEY),
                ("connection", "x-portico-consumer, close"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-portico-consumer"][0], "ops");
    // A forged consumer header on the open host never reaches the backend.
    let r = raw::send(
        a,
        &raw::get("/x", "open.test", &[("x-portico-consumer", "ops")]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"]["x-portico-consumer"].is_null());
    // Underscore spellings (CGI, WSGI, PHP and Rack read them as dashes) are refused.
    for name in [
        "x_portico_consumer",
        "X_Portico_Consumer",
        "x-portico_consumer",
    ] {
        let r = raw::send(a, &raw::get("/x", "open.test", &[(name, "ops")])).await;
        assert_eq!(r.status, 400, "{name}");
    }
    let r = raw::send(
        a,
        &raw::get(
            "/x",
            "secure.test",
            &[("x-api-key", KEY), ("x_api_key", "x")],
        ),
    )
    .await;
    assert_eq!(r.status, 400);
    // One credential per request: a backend reading the last Authorization would act on one
    // the policy never checked.
    let two = raw::get(
        "/x",
        "open.test",
        &[
            ("authorization", "Bearer checked"),
            ("authorization", "Bearer forged"),
        ],
    );
    assert_eq!(raw::send(a, &two).await.status, 400);
}

#[tokio::test]
async fn underscore_headers_can_be_dropped_instead() {
    let s = Setup::start_with_args(&docs(), &["--headers-with-underscores", "drop"]).await;
    let r = raw::send(
        s.addr(),
        &raw::get(
            "/x",
            "open.test",
            &[("x_portico_consumer", "ops"), ("x-kept", "1")],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = &r.json()["headers"];
    assert!(seen["x_portico_consumer"].is_null(), "{seen}");
    assert_eq!(seen["x-kept"][0], "1");
}

#[tokio::test]
async fn forwarding_headers_are_the_gateways_at_the_edge() {
    let s = Setup::start(&docs()).await;
    let forged = [
        ("x-forwarded-for", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6;host=secure.test"),
        ("x-real-ip", "6.6.6.6"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "secure.test"),
        ("x-http-method-override", "DELETE"),
        ("x-forwarded-ssl", "on"),
    ];
    let r = raw::send(s.addr(), &raw::get("/x", "open.test", &forged)).await;
    assert_eq!(r.status, 200);
    let seen = &r.json()["headers"];
    // The client's address as the gateway saw it (a loopback address), alone.
    let xff = seen["x-forwarded-for"][0].as_str().unwrap_or_default();
    assert!(xff.starts_with("127.") && !xff.contains(','), "{xff}");
    assert!(!xff.contains("6.6.6.6"));
    assert_eq!(seen["x-forwarded-for"].as_array().map(Vec::len), Some(1));
    for gone in [
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-forwarded-ssl",
    ] {
        assert!(seen[gone].is_null(), "{gone} reached the backend: {seen}");
    }
    assert_eq!(seen["x-forwarded-proto"][0], "http");
    assert_eq!(seen["x-forwarded-host"][0], "open.test");
}

#[tokio::test]
async fn behind_trusted_proxies_exactly_the_trusted_entries_are_kept() {
    let s = Setup::start_with_args(&docs(), &["--trusted-hops", "1"]).await;
    let r = raw::send(
        s.addr(),
        &raw::get(
            "/x",
            "open.test",
            &[("x-forwarded-for", "6.6.6.6, 203.0.113.7")],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let xff = r.json()["headers"]["x-forwarded-for"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (kept, peer) = xff.split_once(", ").unwrap_or_default();
    assert_eq!(kept, "203.0.113.7", "{xff}");
    assert!(peer.starts_with("127."), "{xff}");
    // What the client wrote left of the trusted entry is dropped unread.
    let r = raw::send(
        s.addr(),
        &raw::get(
            "/x",
            "open.test",
            &[("x-forwarded-for", "junk, 203.0.113.7")],
        ),
    )
    .await;
    let xff = r.json()["headers"]["x-forwarded-for"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(xff.starts_with("203.0.113.7, 127."), "{xff}");
    // A trusted entry that is not an address is not trusted, and it is counted.
    let r = raw::send(
        s.addr(),
        &raw::get(
            "/x",
            "open.test",
            &[("x-forwarded-for", "203.0.113.7, junk")],
        ),
    )
    .await;
    let xff = r.json()["headers"]["x-forwarded-for"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(xff.starts_with("127.") && !xff.contains(','), "{xff}");
    let metrics = s.portico.metrics().await;
    assert!(
        metrics.contains("portico_forwarded_for_invalid_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_client_ranges_are_the_clients_not_the_proxys() {
    // Only 203.0.113.0/24 and the proxies' own range may use the route; the gateway runs
    // behind one trusted proxy, so the TCP peer (the proxy, here 127.x) is never the client
    // whose range is checked, and a request the proxy did not vouch for matches no range.
    let docs = format!(
        "{}{}",
        portico_tests::auth::route("partners", "/"),
        policy(
            "partners",
            "partners",
            "  allowAnonymous: true\n  authorization:\n    rules:\n    - {anonymous: true, clientCidrs: [203.0.113.0/24, 127.0.0.0/8]}"
        )
    );
    let s = Setup::start_with_args(&docs, &["--trusted-hops", "1"]).await;
    let host = portico_tests::auth::HOST;
    for (xff, status) in [
        (Some("203.0.113.9"), 200),
        (Some("198.51.100.1"), 401),
        // A client's own entry left of the proxy's is not read.
        (Some("203.0.113.9, 198.51.100.1"), 401),
        // Without the proxy's entry the client is unknown: refused, although the peer (the
        // proxy) is in an allowed range.
        (None, 401),
        (Some("junk"), 401),
    ] {
        let headers: Vec<(&str, &str)> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
        let r = raw::send(s.addr(), &raw::get("/p", host, &headers)).await;
        assert_eq!(r.status, status, "{xff:?}: {}", r.all);
    }
}
