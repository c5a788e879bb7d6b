//! Dataplane memory per route: live heap bytes of the serving tables built from 100, 1,000
//! and 10,000 routes (counted by a tracking allocator, so allocator slack and memory freed
//! after parsing do not blur the figure), and the time to build them.

use cap::Cap;
use portico_dataplane::balancer::Pools;
use portico_dataplane::metrics::Metrics;
use portico_dataplane::table;
use std::alloc::System;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

#[path = "support/mod.rs"]
mod support;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    println!("routes | table bytes | bytes/route | snapshot bytes/route | build ms");
    println!("---: | ---: | ---: | ---: | ---:");
    for n in [100, 1_000, 10_000] {
        let metrics = Metrics::default();
        let pools = Pools::default();
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
        );
        let build_ms = started.elapsed().as_secs_f64() * 1e3;
        // Tables, pools and the per-route metric series are what the dataplane keeps.
        let bytes = ALLOCATOR.allocated() - before;
        println!(
            "{n} | {bytes} | {} | {} | {build_ms:.1}",
            bytes / n,
            snapshot_bytes / n
        );
        drop(tables);
    }
    let before = ALLOCATOR.allocated();
    let regex = regex::RegexBuilder::new("^(?:/re1/[0-9]+)$")
        .size_limit(portico_compile::REGEX_SIZE_LIMIT)
        .build();
    println!(
        "\none compiled path regex (`/re1/[0-9]+`): {} bytes",
        ALLOCATOR.allocated() - before
    );
    drop(regex);
}
