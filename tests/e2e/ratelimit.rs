//! Local rate limits enforced by a real dataplane (standalone mode) in front of a real echo
//! backend: each algorithm exact, the fixed window's boundary burst against the sliding
//! window, the keys, and a flood of distinct keys against the memory bound.

use portico_tests::auth::{AuthD, HOST, Issuer, Setup, bearer, claims, policy, route};
use portico_tests::ratelimit::{count, limit_policy, rate_param, status_from};
use portico_tests::*;
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn limit(algorithm: &str, requests: u32, interval: &str, extra: &str) -> String {
    format!(
        "  limits: [{{requests: {requests}, interval: {interval}, algorithm: {algorithm}{extra}}}]"
    )
}

#[tokio::test]
async fn each_algorithm_admits_exactly_its_limit_with_headers_and_retry_after() {
    let mut docs = String::new();
    for (name, algorithm) in [
        ("tb", "TokenBucket"),
        ("sw", "SlidingWindow"),
        ("fw", "FixedWindow"),
    ] {
        docs.push_str(&route(name, &format!("/{name}")));
        // A day: no window boundary (or refill worth a request) falls inside the test.
        docs.push_str(&limit_policy(name, name, &limit(algorithm, 5, "24h", "")));
    }
    docs.push_str(&route("open", "/open"));
    let s = Setup::start(&docs).await;
    let addr = s.portico.addr(s.port);
    for name in ["tb", "sw", "fw"] {
        let path = format!("/{name}");
        let first = s.get(&path, &[]).await;
        assert_eq!(first.status, 200, "{name}");
        assert_eq!(
            first.header("ratelimit-policy"),
            Some("\"limit-0\";q=5;w=86400"),
            "{name}"
        );
        assert_eq!(rate_param(&first, "r"), Some(4), "{name}");
        let (ok, limited) = count(&s.client, addr, &path, &[], 9).await;
        assert_eq!((ok, limited), (4, 5), "{name}: exactly 5 of 10 admitted");
        let refused = s.get(&path, &[]).await;
        assert_eq!(refused.status, 429);
        let retry: u64 = refused
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        // (A sliding window may ask for more than the interval: right after the boundary
        // the full previous window still weighs.)
        assert!(
            (1..=2 * 86_400).contains(&retry),
            "{name}: Retry-After {retry}"
        );
        assert_eq!(rate_param(&refused, "r"), Some(0), "{name}");
    }
    // 15 admitted requests reached the backend, no refused one did; the open route is not
    // limited and carries no headers.
    assert_eq!(s.echo.requests().await, 15);
    let open = s.get("/open", &[]).await;
    assert_eq!(open.status, 200);
    assert!(open.header("ratelimit").is_none());
    let metrics = s.portico.metrics().await;
    assert!(
        metrics.contains(
            "portico_ratelimit_decisions_total{policy=\"default/fw\",decision=\"limited\"} 6"
        ),
        "{metrics}"
    );
    // The access log names the policy and limit that refused.
    s.portico.await_logged("ratelimit=default/fw/limit-0").await;
}

#[tokio::test]
async fn fixed_window_admits_twice_the_limit_across_a_boundary_and_sliding_window_does_not() {
    let docs = format!(
        "{}{}{}{}",
        route("fw", "/fw"),
        limit_policy("fw", "fw", &limit("FixedWindow", 5, "2s", "")),
        route("sw", "/sw"),
        limit_policy("sw", "sw", &limit("SlidingWindow", 5, "2s", "")),
    );
    let s = Setup::start(&docs).await;
    let addr = s.portico.addr(s.port);
    // Windows are aligned to UNIX time (the dataplane runs on this machine's clock): fill
    // both limits in the last 300 ms of a window, then send as much again right after the
    // boundary. A burst that does not finish before the boundary (a stalled machine) is
    // tried again in a later window, on fresh counters.
    for attempt in 0..4 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
        let into = (now.as_millis() % 2000) as u64;
        // Skip a window: the previous attempt's counts must not weigh in.
        let wait = (2000 - into) + 2000 * u64::from(attempt > 0) + 1700;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let window = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis()
            / 2000;
        let before_fw = count(&s.client, addr, "/fw", &[], 5).await.0;
        let before_sw = count(&s.client, addr, "/sw", &[], 5).await.0;
        let still = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis()
            / 2000;
        if still != window || before_fw != 5 || before_sw != 5 {
            eprintln!("attempt {attempt}: the first burst crossed the boundary; again");
            continue;
        }
        while SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis()
            / 2000
            == window
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let boundary = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The sliding window first: the previous window's count weighs in fully only right
        // after the boundary (it admits again once a fifth of the window is over), so a
        // burst that took longer (a stalled machine) is tried again too.
        let after_sw = count(&s.client, addr, "/sw", &[], 10).await.0;
        if boundary.elapsed() > Duration::from_millis(350) {
            eprintln!("attempt {attempt}: the second burst was too slow; again");
            continue;
        }
        let after_fw = count(&s.client, addr, "/fw", &[], 10).await.0;
        assert_eq!(
            before_fw + after_fw,
            10,
            "fixed window: 5 before and 5 after the boundary"
        );
        assert_eq!(
            before_sw + after_sw,
            5,
            "sliding window: the previous window still counts right after the boundary"
        );
        return;
    }
    panic!("never managed to send 10 requests within 300 ms");
}

#[tokio::test]
async fn keys_per_client_ip_trusted_forwarded_for_and_header() {
    let docs = format!(
        "{}{}{}{}{}{}",
        route("ip", "/ip"),
        limit_policy(
            "ip",
            "ip",
            "  limits: [{requests: 2, interval: 24h, key: [{type: ClientIP}]}]"
        ),
        route("xff", "/xff"),
        limit_policy(
            "xff",
            "xff",
            "  clientIP: {trustedHops: 1}\n  limits: [{requests: 2, interval: 24h, key: [{type: ClientIP}]}]"
        ),
        route("tenant", "/tenant"),
        limit_policy(
            "tenant",
            "tenant",
            "  limits: [{requests: 2, interval: 24h, key: [{type: Header, name: x-tenant}]}]"
        ),
    );
    let s = Setup::start(&docs).await;
    let addr = s.portico.addr(s.port);
    let (a, b) = (loopback_ip(), loopback_ip());

    // Per client address: each source gets its own 2.
    let mut got = Vec::new();
    for from in [a, a, a, b, b, b] {
        got.push(status_from(from, addr, "/ip", &[]).await);
    }
    assert_eq!(got, [200, 200, 429, 200, 200, 429]);
    // Without trusted hops, X-Forwarded-For is ignored: a forged one does not help.
    assert_eq!(
        status_from(a, addr, "/ip", &[("x-forwarded-for", "203.0.113.7")]).await,
        429
    );

    // With one trusted hop the last X-Forwarded-For entry is the client; what the client
    // wrote before it (spoofable) is not.
    let mut got = Vec::new();
    for xff in [
        "198.51.100.1",
        "1.2.3.4, 198.51.100.1",
        "5.6.7.8, 198.51.100.1",
        "198.51.100.2",
    ] {
        got.push(status_from(a, addr, "/xff", &[("x-forwarded-for", xff)]).await);
    }
    assert_eq!(got, [200, 200, 429, 200]);

    // Per header value; requests without it share one counter.
    let mut got = Vec::new();
    for t in ["acme", "acme", "acme", "globex", "", ""] {
        let h: Vec<(&str, &str)> = if t.is_empty() {
            vec![]
        } else {
            vec![("x-tenant", t)]
        };
        got.push(s.get("/tenant", &h).await.status.as_u16());
    }
    assert_eq!(got, [200, 200, 429, 200, 200, 200]);
    assert_eq!(s.get("/tenant", &[]).await.status, 429);
}

#[tokio::test]
async fn keys_per_jwt_claim_and_per_consumer() {
    let issuer = Issuer::new();
    let idp = AuthD::start(&issuer.jwks());
    let jwt = format!(
        "  jwt: {{issuer: https://idp.test, audiences: [api], algorithms: [RS256], jwksUri: {}}}",
        idp.url("/jwks")
    );
    let docs = format!(
        r#"{}{}{}{}{}{}
---
apiVersion: v1
kind: Secret
metadata: {{name: keys, namespace: default}}
stringData: {{alice: alice-key-0123456789, bob: bob-key-0123456789}}
"#,
        route("org", "/org"),
        policy("org-auth", "org", &jwt),
        limit_policy(
            "org",
            "org",
            "  limits: [{requests: 2, interval: 24h, key: [{type: Claim, name: org.id}]}]"
        ),
        route("keys", "/keys"),
        policy(
            "keys-auth",
            "keys",
            "  apiKey: {secretRefs: [{name: keys}]}"
        ),
        limit_policy(
            "keys",
            "keys",
            "  limits: [{requests: 2, interval: 24h, key: [{type: Consumer}]}]"
        ),
    );
    let s = Setup::start(&docs).await;
    let token = |sub: &str, org: &str| {
        let mut c = claims(sub);
        c["org"] = json!({"id": org});
        bearer(&issuer.rs256(json!({"alg": "RS256", "kid": "rsa-1"}), &c))
    };
    // Two users of one organisation share its quota; another organisation has its own.
    let mut got = Vec::new();
    for (sub, org) in [
        ("alice", "acme"),
        ("bob", "acme"),
        ("carol", "acme"),
        ("dave", "globex"),
    ] {
        let t = token(sub, org);
        got.push(
            s.get("/org", &[("authorization", &t)])
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(got, [200, 200, 429, 200]);
    // An invalid token is refused by auth before it can be counted (or spend acme's quota).
    assert_eq!(
        s.get("/org", &[("authorization", "Bearer not.a.token")])
            .await
            .status,
        401
    );

    let mut got = Vec::new();
    for key in [
        "alice-key-0123456789",
        "alice-key-0123456789",
        "alice-key-0123456789",
        "bob-key-0123456789",
    ] {
        got.push(s.get("/keys", &[("x-api-key", key)]).await.status.as_u16());
    }
    assert_eq!(got, [200, 200, 429, 200]);
}

/// The dataplane's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Sends `n` requests with distinct `x-key` values, pipelined on one connection, and counts
/// the answers.
async fn flood(addr: std::net::SocketAddr, from: u64, n: u64) -> u64 {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = s.split();
    let writer = async {
        let mut buf = String::with_capacity(64 * 1024);
        for i in from..from + n {
            buf.push_str(&format!(
                "GET /flood HTTP/1.1\r\nHost: {HOST}\r\nx-key: k{i}\r\n\r\n"
            ));
            if buf.len() > 60_000 {
                wr.write_all(buf.as_bytes()).await.expect("write");
                buf.clear();
            }
        }
        wr.write_all(buf.as_bytes()).await.expect("write");
    };
    let reader = async {
        let mut seen = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        let mut carry: Vec<u8> = Vec::new();
        while seen < n {
            let got = rd.read(&mut buf).await.expect("read");
            assert!(got > 0, "connection closed after {seen} answers");
            carry.extend_from_slice(&buf[..got]);
            let text = &carry[..];
            let marker = b"HTTP/1.1 ";
            let mut last = 0;
            let mut i = 0;
            while i + marker.len() <= text.len() {
                if &text[i..i + marker.len()] == marker {
                    seen += 1;
                    last = i + marker.len();
                    i = last;
                } else {
                    i += 1;
                }
            }
            carry.drain(..last);
        }
        seen
    };
    let ((), seen) = tokio::join!(writer, reader);
    seen
}

#[tokio::test]
async fn a_flood_of_a_million_distinct_keys_keeps_memory_bounded() {
    // A redirect answers from the dataplane itself: the flood measures the limiter, not the
    // backend.
    let docs = format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: flood, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{HOST}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /flood}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{hostname: elsewhere.test}}}}]
{}"#,
        limit_policy(
            "flood",
            "flood",
            "  limits: [{requests: 5, interval: 1h, key: [{type: Header, name: x-key}]}]"
        )
    );
    let s = Setup::start(&docs).await;
    let addr = s.portico.addr(s.port);
    let pid = s.portico.proc.pid();
    // Warm up (allocator arenas, connection buffers), then measure the flood.
    flood(addr, 0, 20_000).await;
    let before = rss_kib(pid);
    const KEYS: u64 = 1_000_000;
    const CONNECTIONS: u64 = 4;
    let per = KEYS / CONNECTIONS;
    let floods: Vec<_> = (0..CONNECTIONS)
        .map(|c| tokio::spawn(flood(addr, 1_000_000 + c * per, per)))
        .collect();
    let mut answers = 0;
    for f in floods {
        answers += f.await.expect("flood task");
    }
    assert_eq!(answers, KEYS);
    let after = rss_kib(pid);
    let growth_mib = after.saturating_sub(before) / 1024;
    eprintln!("RSS before {before} KiB, after {after} KiB, growth {growth_mib} MiB");
    // The stated bound: 100,000 keys per limit (the default) cost well under 32 MiB; without
    // the bound a million keys would hold far more.
    assert!(
        growth_mib < 32,
        "RSS grew by {growth_mib} MiB over a flood of {KEYS} keys"
    );
    // Limiting still works for a known key after the flood.
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(
            s.get("/flood", &[("x-key", "after-the-flood")])
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(got, [302, 302, 302, 302, 302, 429]);
}
