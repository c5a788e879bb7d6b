//! What authentication costs Portico: the same route with no AuthPolicy, with a JWT policy
//! (RS256 and ES256 tokens, verified once and then served from the verified-token cache) and
//! with an API-key policy, each sent the credential it needs on every request. One worker,
//! pinned as in the comparison (Portico on CPU 1, wrk and the backend on CPU 0); variants
//! measured interleaved, rounds × seconds as the rest of the run; ratios against the plain
//! route within this run.

use super::peers::{self, Front, Peer, ProxyConfig, Tools};
use super::{Backend, RunSettings, clk_tck, cpu_ticks, median, spread, wrk};
use portico_tests::auth::{Issuer, claims};
use portico_tests::{free_port, loopback_ip};
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

fn policy(body: &str) -> String {
    format!(
        "---
apiVersion: portico.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: bench, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: bench}}]
{body}
"
    )
}

fn variants() -> Vec<Variant> {
    let issuer = Issuer::new();
    let jwks = issuer.jwks().to_string();
    let jwt = |alg: &str| {
        policy(&format!(
            "  jwt: {{issuer: https://idp.test, audiences: [api], algorithms: [{alg}], jwks: '{jwks}'}}"
        ))
    };
    let mut long_lived = claims("bench");
    long_lived["exp"] = json!(portico_tests::auth::now() + 24 * 3600);
    let rs = issuer.rs256(json!({"alg": "RS256", "kid": "rsa-1"}), &long_lived);
    let es = issuer.es256(json!({"alg": "ES256", "kid": "ec-1"}), &long_lived);
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

#[derive(Default)]
struct Row {
    rps: Vec<f64>,
    cpu_us: Vec<f64>,
    errors: u64,
}

/// Measures the variants and appends their table to `md`.
pub(crate) fn section(md: &mut String, tools: &Tools, backend: &Backend, run: &RunSettings) {
    let ip = loopback_ip();
    let variants = variants();
    let mut running = Vec::new();
    for v in &variants {
        let config = ProxyConfig {
            workers: 1,
            front: Front::Http1,
            listen: SocketAddr::new(ip, free_port(ip)),
            admin: SocketAddr::new(ip, free_port(ip)),
            backend: backend.addr,
            tls: None,
            extra_routes: 0,
            portico_extra: v.policy.as_deref(),
        };
        let r = peers::start(tools, Peer::Portico, &config, Some("1"));
        running.push((config.listen, r));
    }
    let mut rows: Vec<Row> = variants.iter().map(|_| Row::default()).collect();
    for _ in 0..run.rounds {
        for (i, v) in variants.iter().enumerate() {
            let (addr, r) = &running[i];
            let pid = r.proc.pid();
            let headers: Vec<&str> = v.header.iter().map(String::as_str).collect();
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
    let plain = median(&rows[0].rps);
    let _ = writeln!(
        md,
        "\n## The cost of authentication\n\nPortico alone, one worker pinned as above, the same route with no AuthPolicy, with a JWT policy (a valid RS256 or ES256 token on every request: verified once, then served from the verified-token cache until it expires) and with an API-key policy (hash and constant-time compare on every request). wrk, 1 thread, 32 connections; {} interleaved rounds of {} s.\n",
        run.rounds, run.secs
    );
    let _ = writeln!(
        md,
        "| variant | req/s (median) | spread | × no auth | CPU µs/req | errors |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (v, r) in variants.iter().zip(&rows) {
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
