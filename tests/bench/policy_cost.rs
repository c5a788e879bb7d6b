//! What policies cost Portico, on the same route with and without them:
//! - authentication: no AuthPolicy, a JWT policy (RS256 and ES256 tokens, verified once and
//!   then served from the verified-token cache) and an API-key policy, each sent the
//!   credential it needs on every request;
//! - rate limiting: no RateLimitPolicy, a local limit and a global limit (a real Redis), both
//!   keyed by client address and set far above the load, so every request is counted and
//!   none refused;
//! - balancing: BackendPolicy load balancers and circuit breakers over several endpoints.
//!
//! One worker, pinned as in the comparison (Portico on CPU 1, wrk and the backend on CPU 0;
//! Redis unpinned); variants measured interleaved, rounds × seconds as the rest of the run;
//! ratios against the plain route within this run.

use super::peers::{self, Peer, ProxyConfig, Tools};
use super::{Backend, RunSettings, clk_tck, cpu_ticks, median, spread, wrk};
use portico_tests::auth::{Issuer, claims};
use portico_tests::loopback_ip;
use portico_tests::redis::Redis;
use serde_json::json;
use std::fmt::Write as _;
use std::net::SocketAddr;

const API_KEY: &str = "bench-key-9f8e7d6c5b4a";

struct Variant {
    name: &'static str,
    /// The AuthPolicy (and Secret) for route `bench`, if any.
    policy: Option<String>,
    /// The request header that carries the credential.
    header: Option<String>,
}

/// Endpoints of the backend in the backend-policy section (the same process listed this
/// many times: the balancers have a choice to make, and the backend's cost is the same).
const BACKEND_COPIES: usize = 4;

fn backend_policy(body: &str) -> String {
    format!(
        "---
apiVersion: portico.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: bench, namespace: default}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: backend}}]
{body}
"
    )
}

fn backend_variants() -> Vec<Variant> {
    let variant = |name, body: Option<&str>, header: Option<&str>| Variant {
        name,
        policy: body.map(backend_policy),
        header: header.map(str::to_string),
    };
    vec![
        variant(
            "round robin",
            Some("  loadBalancer: {type: RoundRobin}"),
            None,
        ),
        variant("least request (default, no policy)", None, None),
        variant("random", Some("  loadBalancer: {type: Random}"), None),
        variant(
            "consistent hash on a header",
            Some(
                "  loadBalancer: {type: ConsistentHash, consistentHash: {type: Header, name: x-user}}",
            ),
            Some("x-user: user-1234"),
        ),
        variant(
            "least request + circuit breaker (maxRequests)",
            Some("  circuitBreaker: {maxRequests: 100000, maxRetries: 1000}"),
            None,
        ),
        variant(
            "least request + maxConnections",
            Some("  circuitBreaker: {maxConnections: 10000}"),
            None,
        ),
        variant(
            "least request + slow start",
            Some("  loadBalancer: {slowStart: {window: 60s}}"),
            None,
        ),
        // Every request carries the cookie its first answer set: one token opened per
        // request (nothing re-sent while the session lives).
        variant(
            "session cookie (sessionPersistence)",
            Some("  sessionPersistence: {sessionName: bench}"),
            Some(SESSION_FROM_FIRST_ANSWER),
        ),
    ]
}

/// A variant's header that is the cookie its first answer sets (fetched before the load).
const SESSION_FROM_FIRST_ANSWER: &str = "cookie: <from the first answer>";

/// The `name=value` of the cookie the first answer of `addr` sets.
fn first_cookie(addr: SocketAddr) -> Option<String> {
    let answer = portico_tests::raw_exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    answer.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("set-cookie")
            .then(|| v.trim().split(';').next().unwrap_or_default().to_string())
    })
}

fn policy(body: &str) -> String {
    kind_policy("AuthPolicy", body)
}

fn kind_policy(kind: &str, body: &str) -> String {
    format!(
        "---
apiVersion: portico.dev/v1alpha1
kind: {kind}
metadata: {{name: bench, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: bench}}]
{body}
"
    )
}

fn auth_variants() -> Vec<Variant> {
    let issuer = Issuer::new();
    let jwt = |alg: &str| jwt_policy(alg, &issuer);
    let mut long_lived = claims("bench");
    long_lived["exp"] = json!(portico_tests::auth::now() + 24 * 3600);
    let rs = issuer.rs256(json!({"alg": "RS256", "kid": "rsa-1"}), &long_lived);
    let es = long_lived_es256(&issuer);
    vec![
        Variant {
            name: "no auth",
            policy: None,
            header: None,
        },
        Variant {
            name: "JWT RS256 (cached)",
            policy: Some(jwt("RS256")),
            header: Some(format!("Authorization: Bearer {rs}")),
        },
        Variant {
            name: "JWT ES256 (cached)",
            policy: Some(jwt("ES256")),
            header: Some(format!("Authorization: Bearer {es}")),
        },
        Variant {
            name: "API key",
            policy: Some(format!(
                "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: bench-keys, namespace: default}}\nstringData: {{bench: {API_KEY}}}\n{}",
                policy("  apiKey: {secretRefs: [{name: bench-keys}]}")
            )),
            header: Some(format!("x-api-key: {API_KEY}")),
        },
    ]
}

fn jwt_policy(alg: &str, issuer: &Issuer) -> String {
    let jwks = issuer.jwks().to_string();
    policy(&format!(
        "  jwt: {{issuer: https://idp.test, audiences: [api], algorithms: [{alg}], jwks: '{jwks}'}}"
    ))
}

fn long_lived_es256(issuer: &Issuer) -> String {
    let mut long_lived = claims("bench");
    long_lived["exp"] = json!(portico_tests::auth::now() + 24 * 3600);
    issuer.es256(json!({"alg": "ES256", "kid": "ec-1"}), &long_lived)
}

fn rate_limit_variants(redis: &Redis) -> Vec<Variant> {
    let issuer = Issuer::new();
    let token = long_lived_es256(&issuer);
    // Far above what one worker serves: every request is counted, none refused.
    let limit = "{requests: 1000000000, interval: 1s, key: [{type: ClientIP}]";
    vec![
        Variant {
            name: "no limit",
            policy: None,
            header: None,
        },
        Variant {
            name: "local limit",
            policy: Some(kind_policy(
                "RateLimitPolicy",
                &format!("  limits: [{limit}}}]"),
            )),
            header: None,
        },
        Variant {
            name: "cached JWT + local limit per consumer",
            policy: Some(format!(
                "{}{}",
                jwt_policy("ES256", &issuer),
                kind_policy(
                    "RateLimitPolicy",
                    "  limits: [{requests: 1000000000, interval: 1s, key: [{type: Consumer}]}]"
                )
            )),
            header: Some(format!("Authorization: Bearer {token}")),
        },
        Variant {
            name: "global limit (Redis)",
            policy: Some(kind_policy(
                "RateLimitPolicy",
                &format!(
                    "  global: {{redisUrl: \"{}\"}}\n  limits: [{limit}, scope: Global}}]",
                    redis.url()
                ),
            )),
            header: None,
        },
    ]
}

#[derive(Default)]
struct Row {
    rps: Vec<f64>,
    cpu_us: Vec<f64>,
    errors: u64,
}

/// Measures the variants, interleaved, one Portico each.
fn measure(
    tools: &Tools,
    backend: &Backend,
    run: &RunSettings,
    variants: &[Variant],
    backend_copies: usize,
) -> Vec<Row> {
    let ip = loopback_ip();
    let mut running = Vec::new();
    for v in variants {
        let config = ProxyConfig::one_worker(ip, backend.addr, v.policy.as_deref(), backend_copies);
        let r = peers::start(tools, Peer::Portico, &config, Some("1"));
        let header = match v.header.as_deref() {
            Some(SESSION_FROM_FIRST_ANSWER) => {
                let cookie = first_cookie(config.listen)
                    .unwrap_or_else(|| panic!("{}: no session cookie in the first answer", v.name));
                Some(format!("cookie: {cookie}"))
            }
            h => h.map(str::to_string),
        };
        running.push((config.listen, r, header));
    }
    let mut rows: Vec<Row> = variants.iter().map(|_| Row::default()).collect();
    for _ in 0..run.rounds {
        for i in 0..variants.len() {
            let (addr, r, header) = &running[i];
            let pid = r.proc.pid();
            let headers: Vec<&str> = header.iter().map(String::as_str).collect();
            let before = cpu_ticks(pid);
            let load = wrk(
                tools,
                Some("0"),
                &format!("http://{addr}/"),
                run.secs,
                &headers,
            );
            let ticks = cpu_ticks(pid).saturating_sub(before);
            rows[i].rps.push(load.rps);
            rows[i].errors += load.errors;
            if load.requests > 0 {
                rows[i]
                    .cpu_us
                    .push(ticks as f64 / clk_tck() * 1e6 / load.requests as f64);
            }
        }
    }
    rows
}

/// The table of one section; the first variant is the baseline.
fn table(md: &mut String, baseline: &str, variants: &[Variant], rows: &[Row]) {
    let plain = median(&rows[0].rps);
    let _ = writeln!(
        md,
        "| variant | req/s (median) | spread | × {baseline} | CPU µs/req | errors |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (v, r) in variants.iter().zip(rows) {
        let rps = median(&r.rps);
        let (lo, hi) = spread(&r.rps);
        let ratio = if plain > 0.0 {
            format!("{:.2}", rps / plain)
        } else {
            "—".into()
        };
        let cpu = if r.cpu_us.is_empty() {
            "—".into()
        } else {
            format!("{:.1}", median(&r.cpu_us))
        };
        let _ = writeln!(
            md,
            "| {} | {rps:.0} | {lo:.0}–{hi:.0} | {ratio} | {cpu} | {} |",
            v.name, r.errors
        );
    }
}

/// The cost of authentication, appended to `md`.
pub(crate) fn auth_section(md: &mut String, tools: &Tools, backend: &Backend, run: &RunSettings) {
    let variants = auth_variants();
    let rows = measure(tools, backend, run, &variants, 1);
    let _ = writeln!(
        md,
        "\n## The cost of authentication\n\nPortico alone, one worker pinned as above, the same route with no AuthPolicy, with a JWT policy (a valid RS256 or ES256 token on every request: verified once, then served from the verified-token cache until it expires) and with an API-key policy (hash and constant-time compare on every request). wrk, 1 thread, 32 connections; {} interleaved rounds of {} s.\n",
        run.rounds, run.secs
    );
    table(md, "no auth", &variants, &rows);
}

/// The cost of rate limiting, appended to `md`.
pub(crate) fn rate_limit_section(
    md: &mut String,
    tools: &Tools,
    backend: &Backend,
    run: &RunSettings,
) {
    let redis = Redis::start();
    let variants = rate_limit_variants(&redis);
    let rows = measure(tools, backend, run, &variants, 1);
    let _ = writeln!(
        md,
        "\n## The cost of rate limiting\n\nPortico alone, one worker pinned as above, the same route with no RateLimitPolicy, with a local limit, with a cached ES256 JWT and a local limit keyed by its consumer (DESIGN's \"cached JWT auth and a local rate limit\"), and with a global limit (Redis {}, unpinned, on this machine), all token buckets keyed by client address (or consumer) and far above the load, so every request is counted and admitted. A global limit is one Redis script call per request; concurrent requests share a connection's writes (pipelining), which is the batching available without giving up exact counts. wrk, 1 thread, 32 connections; {} interleaved rounds of {} s.\n",
        redis
            .command(&["INFO", "server"])
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim(),
        run.rounds,
        run.secs
    );
    table(md, "no limit", &variants, &rows);
}

/// The cost of balancing and the other BackendPolicy settings, appended to `md`.
pub(crate) fn backend_section(
    md: &mut String,
    tools: &Tools,
    backend: &Backend,
    run: &RunSettings,
) {
    let variants = backend_variants();
    let rows = measure(tools, backend, run, &variants, BACKEND_COPIES);
    let _ = writeln!(
        md,
        "\n## The cost of balancing (BackendPolicy)\n\nPortico alone, one worker pinned as above, the same route to a backend listed as {BACKEND_COPIES} endpoints (one echo process, so only the balancing differs), with round robin, least request (the default: no policy), random, consistent hashing (Maglev) on a header every request carries, least request with circuit-breaker limits (requests, connections) set far above the load, with slow start on (nothing warming: the cost of having it), and with a session cookie every request carries (its token opened and checked on each request). Every row counts requests in the retry budget (it is always on). wrk, 1 thread, 32 connections; {} interleaved rounds of {} s.\n",
        run.rounds, run.secs
    );
    table(md, "round robin", &variants, &rows);
}
