//! Dataplane memory per route: live heap bytes of the serving tables built from 100, 1,000
//! and 10,000 routes (counted by a tracking allocator, so allocator slack and memory freed
//! after parsing do not blur the figure), the time to build them (snapshot apply), and the
//! controller's compile time for the same numbers of HTTPRoutes. Also writes the Markdown
//! section `target/bench-report/10-scale.md` for `docs/benchmarks.md`.

use cap::Cap;
use portico_dataplane::metrics::Metrics;
use portico_dataplane::table;
use portico_dataplane::upstream::Upstreams;
use std::alloc::System;
use std::net::{IpAddr, Ipv4Addr};
use tokio::time::Instant;

#[path = "support/mod.rs"]
mod support;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// `n` HTTPRoutes on one Gateway, each with its own hostname and a path prefix, as YAML.
fn manifests(n: usize) -> String {
    let mut y = String::from(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portico}
spec: {controllerName: portico.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: portico
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: default, annotations: {portico.dev/endpoints: \"127.0.0.2:80\"}}
spec: {ports: [{name: http, port: 80}]}
",
    );
    for i in 0..n {
        y.push_str(&format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r{i}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [r{i}.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /api/v{i}}}}}]
    backendRefs: [{{name: svc, port: 80}}]
"
        ));
    }
    y
}

/// Median wall time of `runs` compiles of `n` routes, in ms.
fn compile_ms(n: usize, runs: usize) -> f64 {
    let mut set = portico_compile::manifests::ManifestSet::default();
    set.add_file("bench.yaml", &manifests(n));
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let out = portico_compile::compile(&set.inputs, portico_compile::CONTROLLER_NAME);
            let ms = started.elapsed().as_secs_f64() * 1e3;
            assert_eq!(
                out.snapshots
                    .values()
                    .map(|s| s.routes.len())
                    .sum::<usize>(),
                n
            );
            ms
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let mut md = String::from(
        "## Scale: memory, snapshot apply and compile time by number of routes\n\n\
         Table bytes are the live heap of the dataplane's serving tables for one snapshot \
         (routes with a hostname and a path prefix each), counted by a tracking allocator; build \
         ms is the time to build them, the CPU part of applying a snapshot; compile ms is the \
         controller's pure compile of that many HTTPRoutes (median of 5).\n\n\
         | routes | table bytes | bytes/route | snapshot bytes/route | build ms | compile ms |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for n in [100, 1_000, 10_000] {
        let metrics = Metrics::default();
        let pools = Upstreams::default();
        let auth = portico_dataplane::auth::AuthShared::default();
        let before_snapshot = ALLOCATOR.allocated();
        let snap = support::snapshot(n);
        let snapshot_bytes = ALLOCATOR.allocated() - before_snapshot;
        let before = ALLOCATOR.allocated();
        let started = Instant::now();
        let tables = table::build(
            std::slice::from_ref(&snap),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            &pools,
            &metrics,
            &auth,
            &portico_dataplane::ratelimit::RateLimitShared::default(),
            &portico_dataplane::cache::step::CacheShared::new(0, &metrics),
        );
        let build_ms = started.elapsed().as_secs_f64() * 1e3;
        // Tables, pools and the per-route metric series are what the dataplane keeps.
        let bytes = ALLOCATOR.allocated() - before;
        drop(tables);
        let compile = compile_ms(n, 5);
        md.push_str(&format!(
            "| {n} | {bytes} | {} | {} | {build_ms:.1} | {compile:.1} |\n",
            bytes / n,
            snapshot_bytes / n
        ));
    }
    let before = ALLOCATOR.allocated();
    let regex = regex::RegexBuilder::new("^(?:/re1/[0-9]+)$")
        .size_limit(portico_model::REGEX_SIZE_LIMIT)
        .build();
    md.push_str(&format!(
        "\nOne compiled path regex (`/re1/[0-9]+`) adds {} bytes.\n",
        ALLOCATOR.allocated() - before
    ));
    drop(regex);
    println!("{md}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report");
    std::fs::create_dir_all(&dir).expect("report dir");
    std::fs::write(dir.join("10-scale.md"), md).expect("write report");
}
