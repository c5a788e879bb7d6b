//! Where routing meets AuthPolicy: the path-normalisation matrix against a protected route,
//! and the committed `deploy/examples/auth/` working as written. Real `portico`,
//! `portico-echo` and `portico-authd` processes on 127.0.0.x.

use portico_tests::auth::{AuthD, Setup, policy, route};
use portico_tests::*;

#[tokio::test]
async fn path_normalisation_cannot_bypass_a_protected_route() {
    // `/admin` needs an API key; `/` is public. Both go to the same echo backend.
    let docs = format!(
        "{}{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: keys, namespace: default}}\nstringData: {{ops: ops-key-5f2a9c}}\n{}",
        route("admin", "/admin"),
        route("public", "/"),
        policy("admin", "admin", "  apiKey: {secretRefs: [{name: keys}]}")
    );
    let s = Setup::start(&docs).await;
    let attempts = [
        "/admin/..%2fadmin",
        "/%2e%2e/admin",
        "/%2E%2E/admin/users",
        "//admin",
        "///admin/users",
        "/ADMIN",
        "/admin;x",
        "/admin;x/users",
        "/public%252f..%252fadmin",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/./../admin/",
        "/%61dmin",
        "/public/..%5cadmin",
    ];
    for path in attempts {
        let r = s.get(path, &[]).await;
        match r.status.as_u16() {
            // Refused: unauthenticated (the protected route matched) or malformed.
            401 | 400 => {}
            200 => {
                // Served by the public route: the backend got exactly the path the router
                // matched, and it is not the protected one.
                let seen = r.json()["path"].as_str().unwrap_or_default().to_string();
                let lower_segments: Vec<&str> = seen.split('/').filter(|x| !x.is_empty()).collect();
                assert!(
                    lower_segments.first().is_none_or(|first| {
                        let first = first.split(';').next().unwrap_or_default();
                        first != "admin"
                    }),
                    "{path} reached the backend unauthenticated as {seen}"
                );
                assert_eq!(
                    path, "/ADMIN",
                    "only the case-different path is public: {path} → {seen}"
                );
                assert_eq!(seen, "/ADMIN", "case is kept");
            }
            other => panic!("{path}: unexpected {other}"),
        }
    }
    // With the key, what the policy checked is what the backend gets.
    let key = [("x-api-key", "ops-key-5f2a9c")];
    for (sent, forwarded) in [
        ("/public/../admin", "/admin"),
        ("/%2e%2e/admin/users", "/admin/users"),
        ("//admin//users/", "/admin/users/"),
        ("/admin;x", "/admin;x"),
    ] {
        let r = s.get(sent, &key).await;
        assert_eq!(r.status, 200, "{sent}");
        assert_eq!(r.json()["path"], forwarded, "{sent}");
        assert_eq!(r.seen_header("x-portico-consumer").as_deref(), Some("ops"));
    }
}

#[tokio::test]
async fn the_auth_examples_work_in_standalone_mode() {
    let idp = AuthD::start_demo();
    let echo = Echo::start("echo");
    let ip = loopback_ip();
    let port = free_port(ip);
    // The examples as committed, with their fixed addresses moved to this test's own.
    let files = example_files(
        "auth",
        &[
            ("127.0.0.1:9100", idp.addr.to_string()),
            ("127.0.0.1:9011", echo.addr.to_string()),
            ("port: 8081", format!("port: {port}")),
        ],
    );
    assert_eq!(files.len(), 7, "gateway + one file per mechanism");
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let portico = Portico::start_on(ip, &refs, &[]).await;
    let addr = portico.addr(port);
    let http = HttpClient::new();
    let call = |method: &'static str, path: &'static str, headers: Vec<(&'static str, String)>| {
        let http = http.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http.try_request(method, addr, "demo.test", path, &h)
                .await
                .expect("portico answers")
        }
    };
    let alice = auth::demo_token(&idp, "sub=alice").await;
    let r = call(
        "GET",
        "/jwt",
        vec![("authorization", format!("Bearer {alice}"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen_header("x-user").as_deref(), Some("alice"));
    assert_eq!(call("GET", "/jwt", vec![]).await.status, 401);

    let r = call(
        "GET",
        "/keys",
        vec![("x-api-key", "demo-key-for-alice".into())],
    )
    .await;
    assert_eq!(
        r.seen_header("x-portico-consumer").as_deref(),
        Some("alice")
    );

    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "ann:portico-demo",
    );
    let r = call(
        "GET",
        "/basic",
        vec![("authorization", format!("Basic {basic}"))],
    )
    .await;
    assert_eq!(r.status, 200);

    assert_eq!(
        call("GET", "/external", vec![("x-ext-token", "good".into())])
            .await
            .status,
        200
    );
    assert_eq!(call("GET", "/external", vec![]).await.status, 401);

    let r = call(
        "GET",
        "/introspect",
        vec![("authorization", "Bearer active-carol".into())],
    )
    .await;
    assert_eq!(
        r.seen_header("x-portico-consumer").as_deref(),
        Some("carol")
    );

    assert_eq!(call("GET", "/orders", vec![]).await.status, 200);
    assert_eq!(call("POST", "/orders", vec![]).await.status, 401);
    let rita = auth::demo_token(&idp, "sub=rita&scope=read").await;
    assert_eq!(
        call(
            "POST",
            "/orders",
            vec![("authorization", format!("Bearer {rita}"))]
        )
        .await
        .status,
        403
    );
    let will = auth::demo_token(&idp, "sub=will&scope=write").await;
    assert_eq!(
        call(
            "POST",
            "/orders",
            vec![("authorization", format!("Bearer {will}"))]
        )
        .await
        .status,
        200
    );
    let root = auth::demo_token(&idp, "sub=root&roles=admin").await;
    assert_eq!(
        call(
            "DELETE",
            "/orders",
            vec![("authorization", format!("Bearer {root}"))]
        )
        .await
        .status,
        200
    );
}
