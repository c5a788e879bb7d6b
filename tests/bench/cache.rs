//! Response caching: cache hits through one worker pinned to CPU 1, Portico's CachePolicy
//! against nginx's `proxy_cache` on the same answers (13 bytes and 100 KiB), and Portico
//! without a cache (every request to the backend); then the memory Portico holds per cached
//! object.

use super::peers::{self, Peer, ProxyConfig, Tools};
use super::{Backend, RunSettings, clk_tck, cpu_ticks, median, spread, wrk};
use portico_tests::loopback_ip;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

/// One variant's rounds: req/s, CPU µs per request, errors.
type Rounds = (Vec<f64>, Vec<f64>, u64);

struct Variant {
    name: &'static str,
    peer: Peer,
    /// Portico's CachePolicy on route `bench` (none: uncached).
    cached: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        name: "direct (backend alone)",
        peer: Peer::Direct,
        cached: false,
    },
    Variant {
        name: "nginx proxy_cache hit",
        peer: Peer::Nginx,
        cached: true,
    },
    Variant {
        name: "portico cache hit",
        peer: Peer::Portico,
        cached: true,
    },
    Variant {
        name: "portico uncached",
        peer: Peer::Portico,
        cached: false,
    },
];

const POLICY: &str = "---
apiVersion: portico.dev/v1alpha1
kind: CachePolicy
metadata: {name: cache, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: bench}]
  forcedTTL: 10m
  maxObjectBytes: 1048576
";

/// Sends `n` keep-alive GETs for distinct URLs under `prefix` on one connection.
fn fill(addr: SocketAddr, prefix: &str, n: usize) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..n {
        let req = format!("GET {prefix}{i} HTTP/1.1\r\nHost: bench.test\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return;
        }
        // The answers are 13 bytes: one read holds the whole response.
        if s.read(&mut buf).unwrap_or(0) == 0 {
            return;
        }
    }
}

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A metric's value from a Portico admin port.
fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(admin).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub(crate) fn section(md: &mut String, tools: &Tools, backend: &Backend, settings: &RunSettings) {
    let ip = loopback_ip();
    let mut running = Vec::new();
    for v in VARIANTS.iter().filter(|v| v.peer != Peer::Direct) {
        let extra = (v.peer == Peer::Portico && v.cached).then_some(POLICY);
        let config = ProxyConfig::one_worker(ip, backend.addr, extra, 1);
        let r = peers::start(tools, v.peer, &config, Some("1"));
        running.push((v.name, config.listen, config.admin, r));
    }
    let sizes = [("13 B", "/cached/small"), ("100 KiB", "/cached/100k")];
    // (size, variant) → (req/s, CPU µs per request, errors) over the rounds.
    let mut rows: Vec<Vec<Rounds>> = sizes
        .iter()
        .map(|_| VARIANTS.iter().map(|_| Default::default()).collect())
        .collect();
    for _ in 0..settings.rounds {
        for (si, (_, path)) in sizes.iter().enumerate() {
            for (i, v) in VARIANTS.iter().enumerate() {
                let (addr, pid) = match running.iter().find(|(n, ..)| *n == v.name) {
                    Some((_, addr, _, r)) => (*addr, r.proc.pid()),
                    None => {
                        super::set_affinity(backend.proc.pid(), "1");
                        (backend.addr, backend.proc.pid())
                    }
                };
                let url = format!("http://{addr}{path}");
                // Warm: the first answer is stored, the rest are hits.
                let _ = wrk(tools, Some("0"), &url, 1, &[]);
                let before = cpu_ticks(pid);
                let load = wrk(tools, Some("0"), &url, settings.secs, &[]);
                let ticks = cpu_ticks(pid).saturating_sub(before);
                if v.peer == Peer::Direct {
                    super::set_affinity(backend.proc.pid(), "0");
                }
                let row = &mut rows[si][i];
                row.0.push(load.rps);
                row.2 += load.errors;
                if load.requests > 0 && v.peer != Peer::Direct {
                    row.1
                        .push(ticks as f64 / clk_tck() * 1e6 / load.requests as f64);
                }
            }
        }
    }
    // Memory per object: distinct 13-byte answers into the cached Portico.
    let objects = 20_000;
    let per_object = running
        .iter()
        .find(|(n, ..)| *n == "portico cache hit")
        .map(|(_, addr, admin, r)| {
            let before = rss(r.proc.pid());
            fill(*addr, "/cached/object/", objects);
            let after = rss(r.proc.pid());
            let held = metric(*admin, "portico_cache_objects").unwrap_or(0.0);
            let bytes = metric(*admin, "portico_cache_bytes").unwrap_or(0.0);
            (
                after.saturating_sub(before) as f64 / objects as f64,
                if held > 0.0 { bytes / held } else { 0.0 },
                held,
            )
        });

    let _ = writeln!(md, "\n## Response caching\n");
    let _ = writeln!(
        md,
        "Cache hits through one worker pinned to CPU 1: the same answer (`portico-echo --fixed`, 13 bytes or 100 KiB) requested over and over by wrk (1 thread, 32 connections) on CPU 0 with the backend; {} rounds of {} s after a 1 s warm-up, median (min–max). nginx: `proxy_cache` with `proxy_cache_valid 200 10m` and `proxy_cache_lock on` (its cache is files, read through the page cache). Portico: a CachePolicy with `forcedTTL: 10m` (memory tier). `portico uncached` sends every request to the backend. CPU µs/req is the proxy's user+system time per answer.\n",
        settings.rounds, settings.secs
    );
    let _ = writeln!(
        md,
        "| | answer | req/s | CPU µs/req | × nginx CPU | × nginx req/s | errors |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
    for (si, (size, _)) in sizes.iter().enumerate() {
        let nginx = VARIANTS.iter().position(|v| v.peer == Peer::Nginx);
        let nginx_cpu = nginx.map(|i| median(&rows[si][i].1));
        let nginx_rps = nginx.map(|i| median(&rows[si][i].0));
        for (i, v) in VARIANTS.iter().enumerate() {
            let (rps, cpu, errors) = &rows[si][i];
            let m = median(rps);
            let (lo, hi) = spread(rps);
            let (cpu, ratio) = if cpu.is_empty() {
                (String::new(), String::new())
            } else {
                let c = median(cpu);
                let ratio = nginx_cpu
                    .filter(|n| *n > 0.0)
                    .map_or(String::new(), |n| format!("{:.2}×", c / n));
                (format!("{c:.1}"), ratio)
            };
            let rps_ratio = nginx_rps
                .filter(|n| *n > 0.0 && v.peer != Peer::Direct)
                .map_or(String::new(), |n| format!("{:.2}×", m / n));
            let _ = writeln!(
                md,
                "| {} | {size} | {m:.0} ({lo:.0}–{hi:.0}) | {cpu} | {ratio} | {rps_ratio} | {errors} |",
                v.name
            );
        }
    }
    if let Some((rss_per, accounted, held)) = per_object {
        let _ = writeln!(
            md,
            "\nMemory per cached object: {objects} distinct 13-byte answers stored ({held:.0} held) grew Portico's resident memory by {rss_per:.0} bytes per object; the cache accounts {accounted:.0} bytes per object against its budget (headers, body, key and bookkeeping)."
        );
    }
}
