//! Route matching over 10,000 HTTPRoutes with mixed hosts and paths, and the cost of building
//! the tables for them (what a snapshot swap pays).

use criterion::{BatchSize, Criterion, black_box, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use portico_dataplane::metrics::Metrics;
use portico_dataplane::table;
use portico_dataplane::upstream::Upstreams;

#[path = "support/mod.rs"]
mod support;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

const ROUTES: usize = 10_000;
const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn bench(c: &mut Criterion) {
    let snap = support::snapshot(ROUTES);
    let pools = Upstreams::default();
    let metrics = Metrics::default();
    let auth = portico_dataplane::auth::AuthShared::default();
    let limits = portico_dataplane::ratelimit::RateLimitShared::default();
    let cache = portico_dataplane::cache::step::CacheShared::new(0, &metrics);
    let mut tables = table::build(
        std::slice::from_ref(&snap),
        IP,
        &pools,
        &metrics,
        &auth,
        &limits,
        &cache,
    );
    let router = tables
        .sockets
        .remove(&SocketAddr::new(IP, 80))
        .expect("socket");
    let plain = HeaderMap::new();
    let mut canary = HeaderMap::new();
    canary.insert("x-canary", HeaderValue::from_static("true"));
    // (name, host, path, headers, expect a match)
    let cases: [(&str, &str, &str, &HeaderMap, bool); 6] = [
        (
            "exact",
            "svc123.example.com",
            "/api/v2/exact5123",
            &plain,
            true,
        ),
        (
            "prefix",
            "svc123.example.com",
            "/api/v0/items4623/detail/7",
            &plain,
            true,
        ),
        (
            "prefix+header",
            "svc0.example.com",
            "/api/v0/items9000/x",
            &canary,
            true,
        ),
        (
            "wildcard",
            "a.zone9.example.com",
            "/api/v2/items59/x",
            &plain,
            true,
        ),
        ("regex", "svc0.example.com", "/re1500/42", &plain, true),
        ("miss", "svc1.example.com", "/nothing/here", &plain, false),
    ];
    let mut group = c.benchmark_group("route_match_10k");
    for (name, host, path, headers, hit) in cases {
        assert_eq!(
            router
                .route(host, path, &Method::GET, headers, None)
                .is_some(),
            hit,
            "{name} {host}{path}"
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                router
                    .route(
                        black_box(host),
                        black_box(path),
                        &Method::GET,
                        headers,
                        None,
                    )
                    .is_some()
            })
        });
    }
    group.finish();

    c.bench_function("build_tables_10k", |b| {
        b.iter_batched(
            || (),
            |()| {
                table::build(
                    std::slice::from_ref(&snap),
                    IP,
                    &pools,
                    &metrics,
                    &auth,
                    &limits,
                    &cache,
                )
            },
            BatchSize::PerIteration,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
