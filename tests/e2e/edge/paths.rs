//! The path matrix: every variant must be refused, meet the protection of the path it is, or
//! be served by the open route as a path that neither a servlet container nor a plain server
//! reads as a protected one.

use portico_tests::auth::{HOST, Setup, policy, policy_of_kind, route};
use portico_tests::raw::{self, plain_view, servlet_view};
use portico_tests::tls::Conn;

const KEY: &str = "ops-key-5f2a9c";

/// `/admin...` (API key), `/exact` (Exact, API key), `/api/...` (anonymous only under
/// `/api/public`), `/login` (one request an hour, on the open route), everything else open.
fn docs() -> String {
    let exact = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: exact, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: [api.test]
  rules:
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: echo, port: 80}]
"#;
    let keys = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: default}\nstringData: {ops: ops-key-5f2a9c}\n";
    let api_rules = "  allowAnonymous: true\n  apiKey: {secretRefs: [{name: keys}]}\n  authorization:\n    rules:\n    - {anonymous: true, paths: [/api/public]}\n    - {consumers: [ops]}";
    let login_limit = "  limits:\n  - name: login\n    requests: 1\n    interval: 1h\n    algorithm: FixedWindow\n    match: {path: {type: Exact, value: /login}}";
    format!(
        "{}{}{}{exact}{keys}{}{}{}{}",
        route("public", "/"),
        route("admin", "/admin"),
        route("api", "/api"),
        policy("admin", "admin", "  apiKey: {secretRefs: [{name: keys}]}"),
        policy("exact", "exact", "  apiKey: {secretRefs: [{name: keys}]}"),
        policy("api", "api", api_rules),
        policy_of_kind("RateLimitPolicy", "login", "public", login_limit),
    )
}

/// Whether a backend reading `path` this way would serve something the policies protect.
/// (`/exact/` is another path than `/exact`, for Exact matches as in RFC 3986; a backend that
/// serves both alike needs its route to say so: see the README's Security section.)
fn protected(path: &str) -> bool {
    if path == "/exact" || path == "/login" {
        return true;
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["admin", ..] => true,
        ["api", "public", ..] => false,
        ["api", ..] => true,
        _ => false,
    }
}

const TARGETS: [&str; 5] = ["/admin", "/admin/users", "/exact", "/api/private", "/login"];

/// The tricks, each turning a target `/t` into a request path.
fn variants(target: &str) -> Vec<String> {
    let t = target.trim_start_matches('/');
    let first = t.as_bytes()[0];
    let tail = &t[1..];
    vec![
        target.to_string(),
        format!("/public/../{t}"),
        format!("/public/./../{t}"),
        format!("/public/%2e%2e/{t}"),
        format!("/public/%2E%2E/{t}"),
        format!("/public/.%2e/{t}"),
        format!("/public/..;/{t}"),
        format!("/public/..;x=1/{t}"),
        format!("/.;/{t}"),
        format!("/public;/../{t}"),
        format!("/public/..%2f{t}"),
        format!("/public/..%5c{t}"),
        format!("/public%2f..%2f{t}"),
        format!("//{t}"),
        format!("///{t}"),
        format!("/./{t}"),
        format!("{target}/."),
        format!("{target}/x/.."),
        format!("{target};x"),
        format!("{target};"),
        format!("/;x{target}"),
        format!("{target}%2f"),
        format!("{target}%00"),
        format!("/x/../{t}"),
        target.to_ascii_uppercase(),
        format!("/%{first:02x}{tail}"),
        format!("/%25{first:02x}{tail}"),
        format!("/public/%252e%252e/{t}"),
        format!("/public/..%252f{t}"),
        target.replace('/', "//"),
        format!("{target}?x=/../public"),
        format!("/public/%2e%2e%3b/{t}"),
        format!("/public/%2e%2e%2f{t}"),
        format!("/public/...;/{t}"),
        format!("/%2e%2e;/{t}"),
        format!("/public/%2e;/../{t}"),
        format!("/public/.;x/../{t}"),
        // Found by fuzzing: escapes of unreserved characters after a kept `%25`.
        format!("/public%25%32%66..%25%32%66{t}"),
    ]
}

/// What one answer means, or a panic naming the bypass.
fn judge(sent: &str, status: u16, seen: Option<&str>) {
    match status {
        // Refused as malformed, or the protection of the protected path applied.
        400 | 401 | 403 | 429 => {}
        200 => {
            let seen = seen.unwrap_or_else(|| panic!("{sent}: 200 without an echo answer"));
            assert!(
                !protected(&servlet_view(seen)) && !protected(&plain_view(seen)),
                "{sent} reached the backend unprotected as {seen:?} (servlet reads {:?}, a plain server {:?})",
                servlet_view(seen),
                plain_view(seen)
            );
        }
        other => panic!("{sent}: unexpected status {other}"),
    }
}

#[tokio::test]
async fn the_path_matrix_over_http1_absolute_form_and_h2c() {
    let s = Setup::start(&docs()).await;
    let addr = s.addr();
    // Use the login quota first: from now on only a request the limit does not see as
    // `/login` can be served for it.
    let r = raw::send(addr, &raw::get("/login", HOST, &[])).await;
    assert_eq!(r.status, 200);
    // The protections hold for the plain paths (so a 200 below would be a bypass).
    for t in TARGETS {
        let r = raw::send(addr, &raw::get(t, HOST, &[])).await;
        assert!(
            matches!(r.status, 401 | 429),
            "{t} is protected: {}",
            r.status
        );
    }
    let mut tried = 0;
    for t in TARGETS {
        for v in variants(t) {
            // Origin form.
            let r = raw::send(addr, &raw::get(&v, HOST, &[])).await;
            judge(&v, r.status, r.json()["path"].as_str());
            // Absolute form, with a Host that names another host.
            let abs = format!("http://{HOST}{v}");
            let r = raw::send(addr, &raw::get(&abs, "other.test", &[])).await;
            judge(&abs, r.status, r.json()["path"].as_str());
            tried += 2;
        }
    }
    // HTTP/2 `:path`, the same variants where the client library can send them.
    let mut h2 = Conn::h2c(addr).await.expect("h2c");
    for t in TARGETS {
        for v in variants(t) {
            match h2.get(HOST, &v).await {
                Ok(r) => {
                    judge(&v, r.status.as_u16(), r.json()["path"].as_str());
                    tried += 1;
                }
                // The client refused to build it (not a valid :path); try a new connection
                // for the next one in case the old one was reset.
                Err(_) => h2 = Conn::h2c(addr).await.expect("h2c"),
            }
        }
    }
    assert!(tried >= 300, "only {tried} variants were sent");
    // With the key, the backend gets the normalised path that was checked.
    for (sent, forwarded) in [
        ("/public/../admin", "/admin"),
        ("/%2e%2e/admin/users", "/admin/users"),
        ("//admin//users/", "/admin/users/"),
        ("/admin;jsessionid=1", "/admin;jsessionid=1"),
    ] {
        let r = raw::send(addr, &raw::get(sent, HOST, &[("x-api-key", KEY)])).await;
        assert_eq!(r.status, 200, "{sent}");
        assert_eq!(r.json()["path"], forwarded, "{sent}");
    }
    // The refusals say why.
    let r = raw::send(addr, &raw::get("/public/..;/admin", HOST, &[])).await;
    assert_eq!(r.status, 400);
    assert!(
        String::from_utf8_lossy(&r.body).contains("path parameters"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

#[tokio::test]
async fn a_prefix_rewrite_is_built_from_the_path_that_was_matched() {
    let rewrite = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rewrite, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: [api.test]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old/api}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    backendRefs: [{name: echo, port: 80}]
"#;
    let s = Setup::start(rewrite).await;
    for (sent, want) in [
        ("/old/api/items", "/new/items"),
        ("/old;v=1/api/items", "/new/items"),
        ("/old/api;x/items;y", "/new/items"),
    ] {
        let r = raw::send(s.addr(), &raw::get(sent, HOST, &[])).await;
        assert_eq!(r.status, 200, "{sent}");
        assert_eq!(r.json()["path"], want, "{sent}");
    }
    let r = raw::send(s.addr(), &raw::get("/old/api/..;/x", HOST, &[])).await;
    assert_eq!(r.status, 400);
}
