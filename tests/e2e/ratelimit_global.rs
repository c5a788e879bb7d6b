//! Global rate limits: several real dataplane replicas counting in one real Redis
//! (`redis-server` from Debian's package, see `make redis`), under steady load, and through
//! Redis going away and coming back.

use portico_tests::auth::{HOST, config, route};
use portico_tests::ratelimit::{limit_policy, request_from};
use portico_tests::redis::Redis;
use portico_tests::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// `n` standalone replicas of one Gateway (one config), each on its own address, all
/// pointed at `redis`.
async fn replicas(n: usize, echo: &Echo, redis: &Redis, docs: &str) -> (Vec<Portico>, u16) {
    let first = loopback_ip();
    let port = free_port(first);
    let text = config(port, echo.addr, docs);
    let url = redis.url();
    let mut out = Vec::new();
    for i in 0..n {
        let ip = if i == 0 { first } else { loopback_ip() };
        let p = Portico::start_on(ip, &[("config.yaml", &text)], &["--redis-url", &url]).await;
        out.push(p);
    }
    (out, port)
}

#[tokio::test]
async fn a_global_limit_holds_across_three_replicas_under_steady_load() {
    let redis = Redis::start();
    let echo = Echo::start("echo");
    const RATE: f64 = 50.0;
    const BURST: f64 = 10.0;
    let docs = format!(
        "{}{}",
        route("api", "/"),
        limit_policy(
            "global",
            "api",
            // A Redis timeout no loaded test machine reaches (the default, 100 ms, turns a
            // stalled call into a local decision); an outage still fails at once.
            "  global: {timeoutMilliseconds: 5000}\n  limits: [{requests: 50, interval: 1s, algorithm: TokenBucket, burst: 10, scope: Global}]"
        )
    );
    let (nodes, port) = replicas(3, &echo, &redis, &docs).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|p| p.addr(port)).collect();

    // Each replica gets a client sending about 80 requests a second (240 in all, almost five
    // times the limit) for 10 seconds.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for addr in addrs {
        tasks.push(tokio::spawn(async move {
            let client = HttpClient::new();
            let (mut ok, mut limited) = (0u64, 0u64);
            let mut next = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                let r = client.get(addr, HOST, "/").await;
                match r.status.as_u16() {
                    200 => ok += 1,
                    429 => limited += 1,
                    s => panic!("unexpected {s}: {}", r.text()),
                }
                next += Duration::from_micros(12_500);
                tokio::time::sleep_until(next).await;
            }
            (ok, limited)
        }));
    }
    let mut admitted = 0;
    let mut refused = 0;
    let mut per_replica = Vec::new();
    for t in tasks {
        let (ok, limited) = t.await.expect("client task");
        per_replica.push(ok);
        admitted += ok;
        refused += limited;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A token bucket admits its burst plus the rate times the time, shared by all replicas.
    let expected = BURST + RATE * elapsed;
    let error = (admitted as f64 - expected) / expected;
    eprintln!(
        "admitted {admitted} (per replica {per_replica:?}), refused {refused}, in {elapsed:.2} s; expected {expected:.0}, error {:+.2}%",
        error * 100.0
    );
    assert!(
        refused > admitted,
        "the load must exceed the limit for the test to mean anything"
    );
    assert!(
        per_replica.iter().all(|&n| n > 0),
        "every replica admits some: {per_replica:?}"
    );
    assert!(
        error.abs() <= 0.05,
        "admitted {admitted}, expected {expected:.0} (±5%)"
    );
    assert_eq!(
        echo.requests().await,
        admitted,
        "only admitted requests reach the backend"
    );
}

async fn statuses(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    user: &str,
    n: usize,
) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            client
                .get_with(addr, HOST, path, &[("x-user", user)])
                .await
                .status
                .as_u16(),
        );
    }
    out
}

fn degraded(metrics: &str, policy: &str, mode: &str) -> Option<u64> {
    let series =
        format!("portico_ratelimit_redis_degraded{{policy=\"default/{policy}\",mode=\"{mode}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn losing_redis_follows_the_failure_mode_and_global_limiting_resumes_when_it_returns() {
    let mut redis = Redis::start();
    let echo = Echo::start("echo");
    let per_user = "limits: [{requests: 4, interval: 24h, algorithm: FixedWindow, scope: Global, key: [{type: Header, name: x-user}]}]";
    let docs = format!(
        "{}{}{}{}",
        route("open", "/open"),
        limit_policy(
            "open",
            "open",
            &format!("  global: {{timeoutMilliseconds: 5000}}\n  {per_user}")
        ),
        route("closed", "/closed"),
        limit_policy(
            "closed",
            "closed",
            &format!(
                "  global: {{failureMode: FailClosed, timeoutMilliseconds: 5000}}\n  {per_user}"
            )
        ),
    );
    let (nodes, port) = replicas(2, &echo, &redis, &docs).await;
    let (a, b) = (nodes[0].addr(port), nodes[1].addr(port));
    let client = HttpClient::new();

    // Redis up: the two replicas share each user's 4 requests.
    assert_eq!(
        statuses(&client, a, "/open", "u1", 3).await,
        [200, 200, 200]
    );
    assert_eq!(
        statuses(&client, b, "/open", "u1", 3).await,
        [200, 429, 429]
    );
    assert_eq!(statuses(&client, a, "/closed", "u1", 2).await, [200, 200]);
    assert_eq!(
        statuses(&client, b, "/closed", "u1", 3).await,
        [200, 200, 429]
    );

    // Redis gone. Fail open: each replica enforces the limit on its own. Fail closed: 503.
    redis.kill();
    assert_eq!(
        statuses(&client, a, "/open", "u2", 5).await,
        [200, 200, 200, 200, 429]
    );
    assert_eq!(
        statuses(&client, b, "/open", "u2", 5).await,
        [200, 200, 200, 200, 429]
    );
    assert_eq!(statuses(&client, a, "/closed", "u2", 2).await, [503, 503]);
    let m = nodes[0].metrics().await;
    assert_eq!(degraded(&m, "open", "local_fallback"), Some(1), "{m}");
    assert_eq!(degraded(&m, "closed", "fail_closed"), Some(1), "{m}");
    assert!(
        m.contains("portico_ratelimit_decisions_total{policy=\"default/closed\",decision=\"unavailable\"} 2"),
        "{m}"
    );
    let logs = nodes[0].proc.logs();
    assert!(
        logs.contains("failing open, each replica enforces the limits locally"),
        "{logs}"
    );
    assert!(logs.contains("failing closed"), "{logs}");

    // Redis back (empty, as after a crash): the replicas reconnect by themselves and count
    // together again.
    redis.restart();
    for replica in [a, b] {
        await_some("the replica back on Redis", || async {
            let probe = format!("probe-{}", rand_suffix());
            let n = client
                .get_with(replica, HOST, "/closed", &[("x-user", &probe)])
                .await;
            (n.status == 200).then_some(())
        })
        .await;
    }
    assert_eq!(
        statuses(&client, a, "/open", "u3", 3).await,
        [200, 200, 200]
    );
    assert_eq!(
        statuses(&client, b, "/open", "u3", 3).await,
        [200, 429, 429]
    );
    let m = nodes[0].metrics().await;
    assert_eq!(degraded(&m, "open", "local_fallback"), Some(0), "{m}");
    assert!(
        nodes[0]
            .proc
            .logs()
            .contains("Redis answers again: global rate limiting resumed"),
        "recovery is logged"
    );
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_rate_limit_examples_work_in_standalone_mode() {
    let redis = Redis::start();
    let echo = Echo::start("echo");
    let ip = loopback_ip();
    let port = free_port(ip);
    // The examples as committed, with their fixed addresses moved to this test's own.
    let files = example_files(
        "ratelimit",
        &[
            ("127.0.0.1:9012", echo.addr.to_string()),
            ("port: 8082", format!("port: {port}")),
        ],
    );
    assert_eq!(files.len(), 3, "gateway, local and global");
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let portico = Portico::start_on(ip, &refs, &["--redis-url", &redis.url()]).await;
    let addr = portico.addr(port);

    // Per client: a burst of 5.
    let client_a = loopback_ip();
    let mut got = Vec::new();
    for _ in 0..7 {
        got.push(request_from(client_a, "GET", addr, "/api", &[]).await);
    }
    assert_eq!(got, [200, 200, 200, 200, 200, 429, 429]);
    // Logins: 3 per client, whatever the burst left.
    let client_b = loopback_ip();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(request_from(client_b, "POST", addr, "/api/login", &[]).await);
    }
    assert_eq!(got, [200, 200, 200, 429]);
    // Global, per tenant, in Redis.
    let mut got = Vec::new();
    for _ in 0..12 {
        got.push(request_from(client_a, "GET", addr, "/shared", &[("x-tenant", "acme")]).await);
    }
    assert_eq!(&got[..10], [200; 10]);
    assert_eq!(&got[10..], [429, 429]);
    assert_eq!(
        request_from(client_a, "GET", addr, "/shared", &[("x-tenant", "globex")]).await,
        200
    );
    assert!(
        redis.command(&["DBSIZE"]).starts_with(":"),
        "the counters are in Redis"
    );
    assert_ne!(redis.command(&["DBSIZE"]), ":0\r\n");
}

#[tokio::test]
async fn a_429_waits_for_the_longest_global_limit_and_spends_nothing_after_the_refusing_one() {
    let redis = Redis::start();
    let echo = Echo::start("echo");
    let docs = format!(
        "{}{}",
        route("api", "/"),
        limit_policy(
            "layers",
            "api",
            "  global: {timeoutMilliseconds: 5000}
  limits:
  - {name: per-minute, requests: 1, interval: 1m, algorithm: TokenBucket, scope: Global}
  - {name: per-hour, requests: 1, interval: 1h, algorithm: TokenBucket, scope: Global}
  - {name: spare, requests: 3, interval: 1h, algorithm: SlidingWindow, scope: Global}
  - {name: calendar, requests: 5, interval: 24h, algorithm: FixedWindow, scope: Global}"
        )
    );
    let (nodes, port) = replicas(1, &echo, &redis, &docs).await;
    let addr = nodes[0].addr(port);
    let client = HttpClient::new();
    assert_eq!(client.get(addr, HOST, "/").await.status, 200);
    for _ in 0..3 {
        let r = client.get(addr, HOST, "/").await;
        assert_eq!(r.status, 429, "{}", r.text());
        // per-minute refused; per-hour would refuse too, for longer.
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!((3_590..=3_600).contains(&retry), "Retry-After {retry}");
        // The limits after the refusing one were asked, not counted: in Redis too.
        let state = r.header("ratelimit").unwrap_or_default().to_string();
        assert!(state.contains("\"spare\";r=2;"), "{state}");
        assert!(state.contains("\"calendar\";r=4;"), "{state}");
    }
    assert_eq!(echo.requests().await, 1);
}
