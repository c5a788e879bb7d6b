//! Response caching by a real dataplane (standalone mode) in front of a real echo backend,
//! over real sockets: what is stored and what never is, variants, validation, coalescing,
//! stale answers, invalidation and purges, the memory budget, and cache poisoning.
//!
//! The echo backend sets the caching headers its query asks for (`cc=`, `vary=`, `etag=`,
//! `tag=`, `cookie=1`, percent-encoded) and counts the requests it answers, so every test
//! can say exactly how many reached it.

use portico_tests::auth::{Setup, policy_of_kind, route};
use portico_tests::*;
use std::net::SocketAddr;
use std::time::Duration;

/// A CachePolicy on HTTPRoute `target`.
fn cache_policy(name: &str, target: &str, body: &str) -> String {
    policy_of_kind("CachePolicy", name, target, body)
}

/// The echo route `/c` with a CachePolicy of `body` on it.
/// The labels of route `c`'s cache series (through listener `http` of Gateway `gw`).
const ROUTE_C: &str =
    r#"policy="default/c",gateway="default/gw",listener="http",route="default/c""#;

async fn cached(body: &str) -> Setup {
    cached_with_args(body, &[]).await
}

async fn cached_with_args(body: &str, args: &[&str]) -> Setup {
    let docs = format!("{}{}", route("c", "/c"), cache_policy("c", "c", body));
    Setup::start_with_args(&docs, args).await
}

/// The echo's request count in an answer (which backend request the body came from).
fn count(r: &Resp) -> u64 {
    r.json()["count"].as_u64().unwrap_or_default()
}

fn cache_status(r: &Resp) -> String {
    r.header("cache-status").unwrap_or_default().to_string()
}

/// Asserts that `r`'s `Cache-Status` says `part`.
#[track_caller]
fn assert_cache(r: &Resp, part: &str) {
    let status = cache_status(r);
    assert!(
        status.contains(part),
        "Cache-Status {status:?} lacks {part:?}"
    );
}

#[tokio::test]
async fn a_fresh_response_is_served_from_the_cache_with_its_age_and_cache_status() {
    let s = cached("  defaultTTL: 30s").await;
    let path = "/c/fresh?cc=max-age%3D60";
    let first = s.get(path, &[]).await;
    assert_eq!(first.status, 200);
    let status = cache_status(&first);
    assert!(status.starts_with("Portico; fwd=uri-miss"), "{status}");
    assert!(status.contains("stored"), "{status}");
    let second = s.get(path, &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(count(&second), count(&first), "the stored body");
    assert!(
        cache_status(&second).starts_with("Portico; hit"),
        "{}",
        cache_status(&second)
    );
    assert!(second.header("age").is_some(), "Age on a hit");
    // HEAD is answered from the stored GET: its headers, no body.
    let head = s.send("HEAD", path, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(cache_status(&head).contains("hit"));
    // A request's own `no-cache` goes to the backend; `only-if-cached` on a miss is 504.
    let forced = s.get(path, &[("cache-control", "no-cache")]).await;
    assert_cache(&forced, "fwd=request");
    let unseen = s
        .get("/c/unseen", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(unseen.status, 504);
    // The origin gave no lifetime: defaultTTL does.
    let defaulted = s.get("/c/default", &[]).await;
    assert_cache(&defaulted, "stored; ttl=30");
    assert!(cache_status(&s.get("/c/default", &[]).await).contains("hit"));
    // An empty body is stored too (nothing to stream: the server never polls it).
    let empty = "/c/empty?cc=max-age%3D60&size=0";
    assert!(cache_status(&s.get(empty, &[]).await).contains("stored"));
    assert!(cache_status(&s.get(empty, &[]).await).contains("hit"));
    assert_eq!(s.echo.requests().await, 4);
    // Counted per route (as reached through its listener) and policy.
    let metrics = s.portico.metrics().await;
    let route = ROUTE_C;
    let value = |name: &str, labels: &str| {
        metric(&metrics, &format!("{name}{{{labels}}}"))
            .unwrap_or_else(|| panic!("{name}{{{labels}}} in {metrics}"))
    };
    assert_eq!(
        value(
            "portico_cache_requests_total",
            &format!("result=\"hit\",{route}")
        ),
        4.0
    );
    assert_eq!(value("portico_cache_stored_total", route), 4.0);
    // Four stores of three keys: the client's `no-cache` stored `fresh` again in its place.
    assert_eq!(value("portico_cache_route_objects", route), 3.0);
    assert!(value("portico_cache_stored_bytes_total", route) > 0.0);
    assert!(
        value("portico_cache_route_bytes", route)
            >= value("portico_cache_stored_bytes_total", route)
    );
}

/// The value of the series named exactly `series` (name and labels), if exported.
fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn variants_are_kept_apart_by_vary_and_vary_star_is_never_stored() {
    let s = cached("").await;
    let path = "/c/v?cc=max-age%3D60&vary=Accept-Language";
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    let a = s.get(path, &en).await;
    assert!(cache_status(&a).contains("fwd=uri-miss"));
    assert!(cache_status(&s.get(path, &en).await).contains("hit"));
    let b = s.get(path, &fr).await;
    assert_cache(&b, "fwd=vary-miss");
    assert_ne!(count(&a), count(&b));
    let b2 = s.get(path, &fr).await;
    assert_eq!(count(&b2), count(&b));
    let a2 = s.get(path, &en).await;
    assert_eq!(count(&a2), count(&a), "both variants kept");
    assert_eq!(s.echo.requests().await, 2);
    // Vary: * matches no request.
    let star = "/c/star?cc=max-age%3D60&vary=*";
    assert!(cache_status(&s.get(star, &[]).await).contains("detail=vary-all"));
    assert!(!cache_status(&s.get(star, &[]).await).contains("hit"));
    assert_eq!(s.echo.requests().await, 4);
}

#[tokio::test]
async fn private_responses_and_cookies_are_never_stored() {
    let s = cached("  defaultTTL: 1m").await;
    for (path, why) in [
        ("/c/p?cc=private%2Cmax-age%3D60", "private"),
        ("/c/ns?cc=no-store", "no-store"),
        ("/c/k?cc=max-age%3D60&cookie=1", "set-cookie"),
    ] {
        let one = s.get(path, &[]).await;
        assert!(
            cache_status(&one).contains(&format!("detail={why}")),
            "{path}: {}",
            cache_status(&one)
        );
        let two = s.get(path, &[]).await;
        assert_ne!(
            count(&one),
            count(&two),
            "{path} answered twice by the backend"
        );
    }
    assert_eq!(s.echo.requests().await, 6);
    // The cookie reached its one client, and nobody else.
    let cookie = s.get("/c/k?cc=max-age%3D60&cookie=1", &[]).await;
    assert!(cookie.header("set-cookie").is_some());
}

#[tokio::test]
async fn credentials_bypass_the_cache_unless_the_response_says_it_may_be_shared() {
    let s = cached("").await;
    let auth = [("authorization", "Bearer alice-secret")];
    // Stored for everyone, never served to a request with credentials.
    let path = "/c/a?cc=max-age%3D60";
    let anon = s.get(path, &[]).await;
    assert!(cache_status(&anon).contains("stored"));
    let with = s.get(path, &auth).await;
    assert_cache(&with, "detail=authorization");
    assert_ne!(count(&with), count(&anon));
    // An answer to credentials is not stored for the others.
    let mine = "/c/mine?cc=max-age%3D60";
    let alice = s.get(mine, &auth).await;
    assert!(
        !cache_status(&alice).contains("stored"),
        "{}",
        cache_status(&alice)
    );
    let other = s.get(mine, &[]).await;
    assert_cache(&other, "fwd=uri-miss");
    assert_ne!(count(&alice), count(&other));
    // Cookies count as credentials.
    let cookied = s.get(path, &[("cookie", "session=bob")]).await;
    assert!(!cache_status(&cookied).contains("hit"));
    // `public` (or s-maxage) says a response to credentials may be shared (RFC 9111 §3.5).
    let public = "/c/pub?cc=public%2Cmax-age%3D60";
    let first = s.get(public, &auth).await;
    assert_cache(&first, "stored");
    let again = s.get(public, &auth).await;
    assert_cache(&again, "hit");
    assert_eq!(count(&again), count(&first));
}

#[tokio::test]
async fn conditional_requests_are_answered_from_the_cache_and_stale_entries_revalidated() {
    let s = cached("").await;
    let path = "/c/e?cc=max-age%3D60&etag=v1";
    let first = s.get(path, &[]).await;
    assert_eq!(first.header("etag"), Some("\"v1\""));
    let nm = s.get(path, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(nm.status, 304, "answered from the cache");
    assert!(nm.body.is_empty());
    assert!(cache_status(&nm).contains("hit"));
    let other = s.get(path, &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(s.echo.requests().await, 1);
    // Stale at once: each request revalidates with the stored ETag, the backend's 304
    // refreshes it, and the client gets the stored body.
    let stale = "/c/r?cc=max-age%3D0&etag=v2";
    let stored = s.get(stale, &[]).await;
    assert_cache(&stored, "stored");
    let revalidated = s.get(stale, &[]).await;
    assert_eq!(revalidated.status, 200);
    let status = cache_status(&revalidated);
    assert!(
        status.contains("fwd=stale") && status.contains("fwd-status=304"),
        "{status}"
    );
    assert_eq!(
        count(&revalidated),
        count(&stored),
        "the stored body, confirmed"
    );
    assert_eq!(s.echo.requests().await, 3);
    let metrics = s.portico.metrics().await;
    let series = format!("portico_cache_requests_total{{result=\"revalidated\",{ROUTE_C}}}");
    assert_eq!(metric(&metrics, &series), Some(1.0), "{metrics}");
}

#[tokio::test]
async fn concurrent_requests_for_a_stale_entry_make_one_revalidation() {
    // `cc` is left out of the key: the entry is stored fresh for 2 s, and the herd asks for
    // 60 s, which the backend's 304 gives the refreshed entry (fresh for all 50 however
    // slowly the test runs). The backend takes 300 ms to answer, its 304 included.
    let s = cached("  key: {excludeQuery: [cc]}").await;
    let addr = s.addr();
    let path = "/c/stale-herd?cc=max-age%3D60&etag=v3&delay_ms=300";
    let stored = s
        .get("/c/stale-herd?cc=max-age%3D2&etag=v3&delay_ms=300", &[])
        .await;
    assert!(cache_status(&stored).contains("stored"));
    // Stale whatever second the clock is in (ages are whole seconds).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let client = HttpClient::new();
            tokio::spawn(async move { client.get_with(addr, auth::HOST, path, &[]).await })
        })
        .collect();
    let mut collapsed = 0;
    for t in tasks {
        let r = t.await.expect("request task");
        assert_eq!(r.status, 200);
        assert_eq!(count(&r), count(&stored), "the stored body, confirmed");
        collapsed += usize::from(cache_status(&r).contains("collapsed"));
    }
    assert_eq!(
        s.echo.requests().await,
        2,
        "the first request and one revalidation reached the backend"
    );
    // How many waited depends on when each connected (a late one finds the refreshed
    // entry): at least one did, and the counter agrees with the answers.
    assert!(
        collapsed >= 1,
        "{collapsed} of 50 waited for the revalidation"
    );
    let metrics = s.portico.metrics().await;
    let series = format!("portico_cache_requests_total{{result=\"coalesced\",{ROUTE_C}}}");
    assert_eq!(
        metric(&metrics, &series),
        Some(collapsed as f64),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_exactly_one_upstream_request() {
    let s = cached("").await;
    let addr = s.addr();
    // The backend takes 2 s (within the default coalesceTimeout of 5 s), long enough for the
    // herd to arrive while the first request is upstream however slowly the test runs.
    let path = "/c/herd?cc=max-age%3D60&delay_ms=2000";
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let client = HttpClient::new();
            tokio::spawn(async move { client.get_with(addr, auth::HOST, path, &[]).await })
        })
        .collect();
    let mut counts = Vec::new();
    let mut collapsed = 0;
    for t in tasks {
        let r = t.await.expect("request task");
        assert_eq!(r.status, 200);
        collapsed += usize::from(cache_status(&r).contains("collapsed"));
        counts.push(count(&r));
    }
    assert_eq!(
        s.echo.requests().await,
        1,
        "one request reached the backend"
    );
    assert!(counts.iter().all(|c| *c == 1), "{counts:?}");
    assert!(
        collapsed >= 90,
        "{collapsed} of 100 waited for the one upstream request"
    );
}

#[tokio::test]
async fn a_response_found_not_storable_does_not_hold_the_next_requests_behind_a_lock() {
    let s = cached("  coalesceTimeout: 10s").await;
    let addr = s.addr();
    let path = "/c/private?cc=private&delay_ms=200";
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let client = HttpClient::new();
            tokio::spawn(async move { client.get_with(addr, auth::HOST, path, &[]).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task").status, 200);
    }
    // Each answered by the backend (nothing to share); the later ones skip the lock.
    assert_eq!(s.echo.requests().await, 10);
    let started = tokio::time::Instant::now();
    for _ in 0..5 {
        s.get(path, &[]).await;
    }
    // Not a timing assertion on the gateway: a lock would cost 10 s per request.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_stale_copy_answers_when_the_backend_is_down_within_stale_if_error() {
    let mut s = cached("").await;
    let sie = "/c/sie?cc=max-age%3D1%2Cstale-if-error%3D300";
    let plain = "/c/plain?cc=max-age%3D1";
    let kept = s.get(sie, &[]).await;
    s.get(plain, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    s.echo.proc.kill();
    let r = s.get(sie, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(count(&r), count(&kept));
    assert_cache(&r, "detail=stale-if-error");
    // Without stale-if-error the failure is the answer.
    let failed = s.get(plain, &[]).await;
    assert!(failed.status.is_server_error(), "{}", failed.status);
}

#[tokio::test]
async fn the_policy_s_stale_if_error_covers_a_backend_s_5xx() {
    // The status parameter is left out of the key: both requests are for one entry.
    let s = cached("  staleIfError: 5m\n  key: {excludeQuery: [status]}").await;
    let r = s.get("/c/x?cc=max-age%3D1&status=200", &[]).await;
    assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = s.get("/c/x?cc=max-age%3D1&status=503", &[]).await;
    assert_eq!(r.status, 200, "the stale copy");
    let status = cache_status(&r);
    assert!(
        status.contains("stale-if-error") && status.contains("fwd-status=503"),
        "{status}"
    );
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    // The `cc` parameter is left out of the key, so the request that finds the entry stale
    // asks the backend for a long lifetime: the refreshed entry stays fresh however slowly
    // the test runs.
    let s = cached("  key: {excludeQuery: [cc]}").await;
    let short = "/c/swr?cc=max-age%3D1%2Cstale-while-revalidate%3D300";
    let path = "/c/swr?cc=max-age%3D300";
    let first = s.get(short, &[]).await;
    assert_eq!(count(&first), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = s.get(path, &[]).await;
    assert_eq!(count(&stale), 1, "the stale copy, at once");
    assert_cache(&stale, "detail=stale-while-revalidate");
    // The refresh went upstream behind it, and replaced the entry.
    let fresh = await_some("the refreshed entry", || async {
        let r = s.get(path, &[]).await;
        (count(&r) == 2 && cache_status(&r).contains("hit")).then_some(r)
    })
    .await;
    assert!(!cache_status(&fresh).contains("stale"));
    assert_eq!(s.echo.requests().await, 2);
}

#[tokio::test]
async fn an_unsafe_method_invalidates_what_it_changed() {
    let s = cached("").await;
    let path = "/c/item?cc=max-age%3D60";
    let before = s.get(path, &[]).await;
    assert!(cache_status(&s.get(path, &[]).await).contains("hit"));
    let post = s.send("POST", "/c/item", &[]).await;
    assert_eq!(post.status, 200);
    let after = s.get(path, &[]).await;
    assert_cache(&after, "fwd=uri-miss");
    assert_ne!(count(&after), count(&before));
    // A failed unsafe request changes nothing.
    s.send("DELETE", "/c/item?status=500", &[]).await;
    assert!(cache_status(&s.get(path, &[]).await).contains("hit"));
}

#[tokio::test]
async fn an_unsafe_request_through_a_route_without_a_cache_invalidates_the_cached_one() {
    // Writes go through their own route, with no CachePolicy: the GETs' cache must still
    // forget what they changed, and only that.
    let writes = format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: writes, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{}]
  rules:
  - matches:
    - {{path: {{type: PathPrefix, value: /c}}, method: POST}}
    - {{path: {{type: PathPrefix, value: /c}}, method: PUT}}
    backendRefs: [{{name: echo, port: 80}}]
"#,
        auth::HOST
    );
    let docs = format!("{}{}{writes}", route("c", "/c"), cache_policy("c", "c", ""));
    let s = Setup::start_with_args(&docs, &[]).await;
    let item = "/c/item?cc=max-age%3D60";
    let other = "/c/other?cc=max-age%3D60";
    let before = s.get(item, &[]).await;
    s.get(other, &[]).await;
    assert!(cache_status(&s.get(item, &[]).await).contains("hit"));
    let post = s.send("POST", "/c/item", &[]).await;
    assert_eq!(post.status, 200);
    assert!(cache_status(&post).is_empty(), "not through the cache");
    let after = s.get(item, &[]).await;
    assert_cache(&after, "fwd=uri-miss");
    assert_ne!(count(&after), count(&before));
    assert!(
        cache_status(&s.get(other, &[]).await).contains("hit"),
        "untouched"
    );
    // A failed write changes nothing.
    s.send("PUT", "/c/item?status=503", &[]).await;
    assert!(cache_status(&s.get(item, &[]).await).contains("hit"));
}

#[tokio::test]
async fn a_write_through_another_listener_cannot_invalidate_what_this_one_cached() {
    // Route `c` is cached on listener `http` only, route `d` on the second listener; the
    // writes route is on both. A client on the second listener names the first's origin in
    // `Host`: its write reaches `d`'s entries, never `c`'s.
    let echo = Echo::start("echo");
    let ip = loopback_ip();
    let (p1, p2) = (free_port(ip), free_port(ip));
    let docs = format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: c, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: http}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /c}}, method: GET}}]
    backendRefs: [{{name: echo, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: d, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: http-{p2}}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /c}}, method: GET}}]
    backendRefs: [{{name: echo, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: writes, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /c}}, method: POST}}]
    backendRefs: [{{name: echo, port: 80}}]
{}{}"#,
        cache_policy("c", "c", ""),
        cache_policy("d", "d", "")
    );
    let text = auth::config_with_listeners(&[p1, p2], &[echo.addr], &docs);
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let client = HttpClient::new();
    let host = format!("shop.test:{p1}");
    let item = "/c/item?cc=max-age%3D60";
    let (client, portico, host) = (&client, &portico, &host);
    let get = |port| client.get_with(portico.addr(port), host, item, &[]);
    let post = |port| async move {
        let r = client
            .try_request("POST", portico.addr(port), host, "/c/item", &[])
            .await
            .expect("an answer");
        assert_eq!(r.status, 200);
    };
    assert_cache(&get(p1).await, "stored");
    // The second listener's own cached copy, under the first's origin too.
    assert_cache(&get(p2).await, "stored");
    post(p2).await;
    assert_cache(&get(p1).await, "hit");
    assert_cache(&get(p2).await, "fwd=uri-miss");
    // The same write through the entry's own listener does invalidate it.
    post(p1).await;
    assert_cache(&get(p1).await, "fwd=uri-miss");
}

#[tokio::test]
async fn purges_on_the_admin_port_by_url_prefix_and_tag_and_only_with_the_token() {
    let dir = TempDir::new("token");
    dir.write("token", "s3cret-admin-token\n");
    let token_file = dir.path().join("token").display().to_string();
    let s = cached_with_args("", &["--admin-token-file", &token_file]).await;
    let origin = format!("http://{}:{}", auth::HOST, s.port);
    for p in [
        "/c/u?cc=max-age%3D60",
        "/c/img/1?cc=max-age%3D60",
        "/c/img/2?cc=max-age%3D60",
        "/c/t?cc=max-age%3D60&tag=product-42",
    ] {
        s.get(p, &[]).await;
        assert!(cache_status(&s.get(p, &[]).await).contains("hit"), "{p}");
    }
    let client = HttpClient::new();
    let purge = |query: String, token: Option<&'static str>| {
        let client = client.clone();
        let admin = s.portico.admin;
        async move {
            let bearer = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = bearer
                .as_deref()
                .map(|b| vec![("authorization", b)])
                .unwrap_or_default();
            client
                .try_request(
                    "POST",
                    admin,
                    "admin",
                    &format!("/cache/purge?{query}"),
                    &headers,
                )
                .await
                .expect("admin answers")
        }
    };
    let enc = |s: &str| {
        s.replace('%', "%25")
            .replace(':', "%3A")
            .replace('/', "%2F")
            .replace('?', "%3F")
            .replace('&', "%26")
            .replace('=', "%3D")
    };
    let url = enc(&format!("{origin}/c/u?cc=max-age%3D60"));
    assert_eq!(purge(format!("url={url}"), None).await.status, 401);
    assert_eq!(purge(format!("url={url}"), Some("wrong")).await.status, 401);
    let done = purge(format!("url={url}"), Some("s3cret-admin-token")).await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.json()["purged"], 1);
    assert!(cache_status(&s.get("/c/u?cc=max-age%3D60", &[]).await).contains("uri-miss"));
    let prefix = enc(&format!("{origin}/c/img/"));
    let done = purge(format!("prefix={prefix}"), Some("s3cret-admin-token")).await;
    assert_eq!(done.json()["purged"], 2, "{}", done.text());
    let done = purge("tag=product-42".into(), Some("s3cret-admin-token")).await;
    assert_eq!(done.json()["purged"], 1, "{}", done.text());
    assert!(
        cache_status(&s.get("/c/t?cc=max-age%3D60&tag=product-42", &[]).await).contains("uri-miss")
    );
    assert_eq!(
        purge("ban=x".into(), Some("s3cret-admin-token"))
            .await
            .status,
        400
    );
    // Not from a browser, token or not.
    let from_page = client
        .try_request(
            "POST",
            s.portico.admin,
            "admin",
            "/cache/purge?tag=product-42",
            &[
                ("authorization", "Bearer s3cret-admin-token"),
                ("origin", "https://evil.test"),
            ],
        )
        .await
        .expect("admin answers");
    assert_eq!(from_page.status, 401);
    // The token never reaches the log.
    s.assert_not_logged(&["s3cret-admin-token"]);
}

#[tokio::test]
async fn the_memory_budget_holds_under_a_flood_of_distinct_urls() {
    let budget = 200_000;
    let s = cached_with_args("", &["--cache-memory-bytes", &budget.to_string()]).await;
    for i in 0..400 {
        let r = s
            .get(&format!("/c/flood/{i}?cc=max-age%3D600&size=2000"), &[])
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 2000);
    }
    let metrics = s.portico.metrics().await;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}")) as u64
    };
    let bytes = value("portico_cache_bytes ");
    assert!(bytes <= budget, "{bytes} bytes held, budget {budget}");
    assert!(bytes > budget / 2, "the budget is used: {bytes}");
    assert!(value("portico_cache_evictions_total ") >= 300);
    // The route's own series say the same: everything held and evicted was its.
    let route = format!("{{{ROUTE_C}}}");
    assert_eq!(
        value(&format!("portico_cache_route_bytes{route} ")),
        bytes,
        "one route stored everything"
    );
    assert_eq!(
        value(&format!("portico_cache_route_evictions_total{route} ")),
        value("portico_cache_evictions_total ")
    );
    // The newest are still there.
    assert!(
        cache_status(&s.get("/c/flood/399?cc=max-age%3D600&size=2000", &[]).await).contains("hit")
    );
}

/// Two listeners of one Gateway, and a route for any host on both, with a CachePolicy.
fn two_listeners(p1: u16, p2: u16, backend: SocketAddr, policy_body: &str) -> String {
    let route = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: any, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs: [{name: echo, port: 80}]
"#;
    auth::config_with_listeners(
        &[p1, p2],
        &[backend],
        &format!("{route}{}", cache_policy("c", "any", policy_body)),
    )
}

#[tokio::test]
async fn poisoning_an_unkeyed_header_never_reaches_another_client_and_host_and_port_are_keyed() {
    let echo = Echo::start("echo");
    let ip = loopback_ip();
    let (p1, p2) = (free_port(ip), free_port(ip));
    let text = two_listeners(p1, p2, echo.addr, "  key: {headers: [X-Tenant]}");
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let client = HttpClient::new();
    let path = "/page?cc=max-age%3D60";
    // The gateway sets X-Forwarded-Host itself: what the attacker sends never reaches the
    // backend, so the stored page reflects the real host.
    let attacker = client
        .get_with(
            portico.addr(p1),
            "shop.test",
            path,
            &[("x-forwarded-host", "evil.test")],
        )
        .await;
    assert_eq!(
        attacker.seen_header("x-forwarded-host").as_deref(),
        Some("shop.test")
    );
    let victim = client
        .get_with(portico.addr(p1), "shop.test", path, &[])
        .await;
    assert!(cache_status(&victim).contains("hit"));
    assert_eq!(
        victim.seen_header("x-forwarded-host").as_deref(),
        Some("shop.test")
    );
    // A header the backend reflects without Vary: keyed by the policy, so the attacker's
    // answer is theirs alone.
    let evil = client
        .get_with(
            portico.addr(p1),
            "shop.test",
            "/t?cc=max-age%3D60",
            &[("x-tenant", "evil")],
        )
        .await;
    assert_eq!(evil.seen_header("x-tenant").as_deref(), Some("evil"));
    let clean = client
        .get_with(portico.addr(p1), "shop.test", "/t?cc=max-age%3D60", &[])
        .await;
    assert!(clean.seen_header("x-tenant").is_none(), "{}", clean.text());
    // Another host, another port: other entries (the same path).
    let other_host = client
        .get_with(portico.addr(p1), "admin.test", path, &[])
        .await;
    assert_cache(&other_host, "uri-miss");
    assert_eq!(
        other_host.seen_header("host").as_deref(),
        Some("admin.test")
    );
    let other_port = client
        .get_with(portico.addr(p2), "shop.test", path, &[])
        .await;
    assert_cache(&other_port, "uri-miss");
    // A Host with the listener's port named is the same origin as without it; another
    // port in Host (which the backend sees, and may build links from) is another key.
    let named = client
        .get_with(portico.addr(p1), &format!("SHOP.test:{p1}"), path, &[])
        .await;
    assert_cache(&named, "hit");
    let other = client
        .get_with(portico.addr(p1), "shop.test:1337", path, &[])
        .await;
    assert_cache(&other, "uri-miss");
}

#[tokio::test]
async fn a_policy_that_does_not_compile_leaves_its_route_serving_uncached() {
    let s = cached("  defaultTTL: 2h\n  maxTTL: 1h").await;
    s.portico
        .await_logged("defaultTTL is longer than maxTTL")
        .await;
    let path = "/c/bad?cc=max-age%3D60";
    let one = s.get(path, &[]).await;
    assert_eq!(one.status, 200);
    assert!(one.header("cache-status").is_none());
    s.get(path, &[]).await;
    assert_eq!(s.echo.requests().await, 2);
}

#[tokio::test]
async fn a_cache_invalidation_in_the_configuration_purges_once() {
    let s = cached("").await;
    let path = "/c/inv?cc=max-age%3D600&tag=news";
    s.get(path, &[]).await;
    assert!(cache_status(&s.get(path, &[]).await).contains("hit"));
    let invalidation = |value: &str| {
        format!(
            "{}{}---\napiVersion: portico.dev/v1alpha1\nkind: CacheInvalidation\nmetadata: {{name: news, namespace: default}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: c}}]\n  purges: [{{type: Tag, value: {value}}}]\n",
            route("c", "/c"),
            cache_policy("c", "c", ""),
        )
    };
    let logged = |needle: &str| s.portico.proc.logs().matches(needle).count();
    let applied = logged("configuration applied");
    s.rewrite(&invalidation("news"));
    await_some("the purge", || async {
        (logged("cache purge") == 1).then_some(())
    })
    .await;
    assert!(cache_status(&s.get(path, &[]).await).contains("uri-miss"));
    assert!(cache_status(&s.get(path, &[]).await).contains("hit"));
    // A reload that still carries the invalidation does not purge again.
    s.rewrite(&format!("{}# touched\n", invalidation("news")));
    await_some("the reload", || async {
        (logged("configuration applied") >= applied + 2).then_some(())
    })
    .await;
    assert_eq!(logged("cache purge"), 1);
    assert!(cache_status(&s.get(path, &[]).await).contains("hit"));
    // A changed one purges again.
    s.rewrite(&invalidation("sports"));
    await_some("the second purge", || async {
        (logged("cache purge") == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn two_replicas_share_what_one_fetched_through_redis_and_an_outage_fails_nothing() {
    use portico_tests::redis::Redis;
    let mut redis = Redis::start();
    let echo = Echo::start("echo");
    let ip_a = loopback_ip();
    let ip_b = loopback_ip();
    let port = free_port(ip_a);
    let docs = format!(
        "{}{}",
        route("c", "/c"),
        cache_policy(
            "c",
            "c",
            &format!(
                // A timeout no loaded test machine reaches: a lookup that timed out would
                // be a miss, and B would never answer from the shared tier.
                "  shared: {{redisUrl: \"{}\", timeoutMilliseconds: 1000}}",
                redis.url()
            )
        )
    );
    let text = auth::config(port, echo.addr, &docs);
    let a = Portico::start_on(ip_a, &[("config.yaml", &text)], &[]).await;
    let b = Portico::start_on(ip_b, &[("config.yaml", &text)], &[]).await;
    let client = HttpClient::new();
    let get = |p: &Portico, path: &'static str| {
        let client = client.clone();
        let addr = p.addr(port);
        async move { client.get_with(addr, auth::HOST, path, &[]).await }
    };
    let path = "/c/shared?cc=max-age%3D600&vary=Accept-Language";
    let first = get(&a, path).await;
    assert_cache(&first, "stored");
    // Stored in Redis in the background: B answers from it once it is there (asked only
    // then, since a miss would fill B's memory from the backend instead).
    await_some("the entry in Redis", || async {
        (redis.command(&["DBSIZE"]) != ":0\r\n").then_some(())
    })
    .await;
    let from_b = await_some("the entry in the shared tier", || async {
        let r = get(&b, path).await;
        cache_status(&r).contains("detail=shared").then_some(r)
    })
    .await;
    assert_eq!(count(&from_b), count(&first));
    assert_eq!(
        echo.requests().await,
        1,
        "one backend request for both replicas"
    );
    // Now in B's memory too.
    assert!(cache_status(&get(&b, path).await).starts_with("Portico; hit; ttl="));

    // A purge on A is not undone by what Redis still holds.
    let purge = format!(
        "/cache/purge?url=http%3A%2F%2F{}%3A{port}%2Fc%2Fshared%3Fcc%3Dmax-age%253D600%26vary%3DAccept-Language",
        auth::HOST
    );
    let purged = client
        .try_request("POST", a.admin, "admin", &purge, &[])
        .await
        .expect("admin answers");
    assert_eq!(purged.json()["purged"], 1, "{}", purged.text());
    let after = get(&a, path).await;
    assert_cache(&after, "fwd=uri-miss");

    // Redis gone: no request fails, each replica caches for itself.
    redis.kill();
    for p in [&a, &b] {
        for i in 0..3 {
            let r = get(p, "/c/outage?cc=max-age%3D600").await;
            assert_eq!(r.status, 200);
            if i > 0 {
                assert!(cache_status(&r).contains("hit"), "{}", cache_status(&r));
            }
        }
    }
    assert_eq!(echo.requests().await, 4);
}

#[tokio::test]
async fn an_unsafe_method_invalidates_even_with_a_query_the_key_could_not_hold() {
    let s = cached("  key: {excludeQuery: [utm_source]}").await;
    let path = "/c/item?cc=max-age%3D60";
    s.get(path, &[]).await;
    assert!(cache_status(&s.get(path, &[]).await).contains("hit"));
    // `;` makes the query unkeyable under a filtering policy: still, the path is changed.
    let post = s.send("POST", "/c/item?a=1;b=2", &[]).await;
    assert_eq!(post.status, 200);
    assert!(cache_status(&s.get(path, &[]).await).contains("uri-miss"));
}
