//! Portico side by side with nginx, HAProxy and Envoy in front of the same backend, in one
//! run: throughput (closed loop), proxy CPU per request, peak RSS, and (one worker) added
//! latency at a fixed rate (open loop, latency-corrected), for every scenario. Writes a Markdown section for
//! `docs/benchmarks.md` (see `make bench`).
//!
//! Method: everything on loopback. One-worker series: the proxy is pinned to CPU 1, the load
//! generator and the backend to CPU 0 (for `direct`, the backend moves to CPU 1 so the
//! backend alone has the core a proxy would have: the physical limit). Two-worker series: no
//! pinning. Peers are measured interleaved (direct, portico, nginx, haproxy, envoy, then
//! again) for `PORTICO_BENCH_ROUNDS` rounds of `PORTICO_BENCH_SECONDS` each; tables show
//! medians with the min–max spread, and ratios are taken within this run only.

#[path = "peers.rs"]
mod peers;

mod cache;
mod compression;
mod l4;
#[path = "policy_cost.rs"]
mod policy_cost;
mod websocket;

use peers::{Front, Peer, ProxyConfig, Tools};
use portico_tests::{Proc, binaries, free_port, loopback_ip, wait_port};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Clock ticks per second of /proc/<pid>/stat's utime and stime.
fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A process and its direct children (nginx's workers), for CPU and memory.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    out.extend(peers::child_pids(pid));
    out
}

/// utime + stime of the process tree, in ticks.
fn cpu_ticks(pid: u32) -> u64 {
    process_tree(pid)
        .iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            // After the command: state is field 3, utime 14 and stime 15 (1-based).
            let get = |i: usize| {
                fields
                    .get(i - 3)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            get(14) + get(15)
        })
        .sum()
}

/// Peak resident set of the process tree (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    process_tree(pid)
        .iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn pinned(cpus: Option<&str>, program: &Path) -> Command {
    match cpus {
        Some(list) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(list).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// One closed-loop measurement: completed requests and non-2xx/errors.
struct Load {
    requests: u64,
    errors: u64,
    rps: f64,
}

/// `wrk`: one thread, 32 connections, with extra request `headers`.
fn wrk(tools: &Tools, cpus: Option<&str>, url: &str, secs: usize, headers: &[&str]) -> Load {
    let mut cmd = pinned(cpus, &tools.wrk);
    cmd.args(["-t1", "-c32", &format!("-d{secs}s")]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let text = run(cmd.arg(url));
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    // "Non-2xx or 3xx responses: N" and "Socket errors: connect A, read B, write C, timeout D".
    let errors = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Non-2xx") || l.starts_with("Socket errors:"))
        .flat_map(|l| {
            l.split([',', ':'])
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    Load {
        requests,
        errors,
        rps,
    }
}

/// `h2load`: HTTP/2 with prior knowledge, 8 connections × 16 streams.
fn h2load(tools: &Tools, cpus: Option<&str>, url: &str, secs: usize) -> Load {
    let mut cmd = pinned(cpus, &tools.h2load);
    let text = run(cmd.args(["-c8", "-m16", "-D", &secs.to_string(), url]));
    // "finished in 5.00s, 41234.20 req/s, ..." and "requests: N total, N started, N done, N succeeded, N failed, N errored"
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.trim_end_matches(" req/s").parse().ok())
        .unwrap_or(0.0);
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("requests:"))
            .and_then(|l| {
                l.split(", ")
                    .find(|p| p.ends_with(name))
                    .and_then(|p| p.split_whitespace().rev().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    };
    Load {
        requests: field("succeeded"),
        errors: field("failed") + field("errored"),
        rps,
    }
}

/// Open loop at `rate` requests per second with latency correction: (p50, p99, p99.9) ms.
fn oha(
    tools: &Tools,
    cpus: Option<&str>,
    url: &str,
    rate: usize,
    secs: usize,
    scenario: &Scenario,
) -> [f64; 3] {
    let mut cmd = pinned(cpus, &tools.oha);
    match scenario.front {
        Front::H2c => {
            cmd.arg("--http2");
        }
        // The test certificate is self-signed.
        Front::Tls => {
            cmd.arg("--insecure");
        }
        Front::Http1 => {}
    }
    if scenario.close {
        cmd.arg("--disable-keepalive");
    }
    let text = run(cmd.args([
        "--no-tui",
        "--output-format",
        "json",
        "--latency-correction",
        "-c",
        "32",
        "-q",
        &rate.to_string(),
        "-z",
        &format!("{secs}s"),
        url,
    ]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let p = &v["latencyPercentiles"];
    let ms = |k: &str| p[k].as_f64().unwrap_or(f64::NAN) * 1e3;
    [ms("p50"), ms("p99"), ms("p99.9")]
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    front: Front,
    path: &'static str,
    close: bool,
    extra_routes: usize,
    peers: &'static [Peer],
}

const PROXIES_AND_DIRECT: &[Peer] = &Peer::ALL;
const PROXIES: &[Peer] = &[Peer::Portico, Peer::Nginx, Peer::Haproxy, Peer::Envoy];

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "HTTP/1.1 keep-alive, small responses",
        front: Front::Http1,
        path: "/",
        close: false,
        extra_routes: 0,
        peers: PROXIES_AND_DIRECT,
    },
    Scenario {
        name: "a new connection per request",
        front: Front::Http1,
        path: "/",
        close: true,
        extra_routes: 0,
        peers: PROXIES_AND_DIRECT,
    },
    Scenario {
        name: "100 KiB responses",
        front: Front::Http1,
        path: "/100k",
        close: false,
        extra_routes: 0,
        peers: PROXIES_AND_DIRECT,
    },
    Scenario {
        name: "HTTP/2 (h2c) downstream",
        front: Front::H2c,
        path: "/",
        close: false,
        extra_routes: 0,
        peers: PROXIES_AND_DIRECT,
    },
    Scenario {
        name: "TLS termination (TLS 1.3, keep-alive)",
        front: Front::Tls,
        path: "/",
        close: false,
        extra_routes: 0,
        peers: PROXIES,
    },
    Scenario {
        name: "with 10,000 routes loaded",
        front: Front::Http1,
        path: "/",
        close: false,
        extra_routes: 10_000,
        peers: PROXIES,
    },
];

#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    cpu_us: Vec<f64>,
    errors: u64,
    peak_rss_kib: u64,
    /// Open-loop (p50, p99, p99.9) ms per round, one-worker series only.
    latency: Vec<[f64; 3]>,
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// A section of the report after the side-by-side tables.
type Section = fn(&mut String, &Tools, &Backend, &RunSettings);

/// How long and how hard each measurement runs.
#[derive(Clone, Copy)]
struct RunSettings {
    rounds: usize,
    secs: usize,
    /// Requests per second of the open-loop latency runs.
    rate: usize,
}

struct Backend {
    proc: Proc,
    addr: SocketAddr,
}

fn set_affinity(pid: u32, cpus: &str) {
    run(Command::new("taskset").args(["-a", "-p", "-c", cpus, &pid.to_string()]));
}

/// Runs one scenario for one worker count; returns its table rows by peer.
fn measure(
    tools: &Tools,
    backend: &Backend,
    scenario: &Scenario,
    workers: usize,
    run: &RunSettings,
    cert: &(String, String),
) -> BTreeMap<&'static str, Samples> {
    let RunSettings { rounds, secs, rate } = *run;
    let pin = workers == 1;
    let (proxy_cpus, load_cpus) = if pin {
        (Some("1"), Some("0"))
    } else {
        (None, None)
    };
    let ip = loopback_ip();
    let mut running = Vec::new();
    for &peer in scenario.peers {
        if peer == Peer::Direct {
            continue;
        }
        let config = ProxyConfig {
            workers,
            front: scenario.front,
            listen: SocketAddr::new(ip, free_port(ip)),
            admin: SocketAddr::new(ip, free_port(ip)),
            backend: backend.addr,
            tls: Some((cert.0.as_str(), cert.1.as_str())),
            extra_routes: scenario.extra_routes,
            portico_extra: None,
            backend_copies: 1,
        };
        let r = peers::start(tools, peer, &config, proxy_cpus);
        running.push((peer, config.listen, r));
    }
    // Every peer is ready once its port is open: Portico binds a listener only when its
    // configuration (10,000 routes included) is compiled and applied.
    let mut out: BTreeMap<&'static str, Samples> = BTreeMap::new();
    for _ in 0..rounds {
        for &peer in scenario.peers {
            let (addr, pid) = match peer {
                Peer::Direct => {
                    if pin {
                        set_affinity(backend.proc.pid(), "1");
                    }
                    (backend.addr, backend.proc.pid())
                }
                _ => {
                    let (_, addr, r) = running
                        .iter()
                        .find(|(p, _, _)| *p == peer)
                        .expect("started");
                    (*addr, r.proc.pid())
                }
            };
            let scheme = if scenario.front == Front::Tls {
                "https"
            } else {
                "http"
            };
            let url = format!("{scheme}://{addr}{}", scenario.path);
            let before = cpu_ticks(pid);
            let load = match scenario.front {
                Front::H2c => h2load(tools, load_cpus, &url, secs),
                _ => {
                    let close: &[&str] = if scenario.close {
                        &["Connection: close"]
                    } else {
                        &[]
                    };
                    wrk(tools, load_cpus, &url, secs, close)
                }
            };
            let ticks = cpu_ticks(pid).saturating_sub(before);
            // One worker: the latency a client sees at a fixed rate, right after.
            let latency = pin.then(|| oha(tools, load_cpus, &url, rate, secs, scenario));
            if peer == Peer::Direct && pin {
                set_affinity(backend.proc.pid(), "0");
            }
            let s = out.entry(peer.name()).or_default();
            s.latency.extend(latency);
            s.rps.push(load.rps);
            s.errors += load.errors;
            if load.requests > 0 && peer != Peer::Direct {
                s.cpu_us
                    .push(ticks as f64 / clk_tck() * 1e6 / load.requests as f64);
            }
        }
    }
    for (peer, _, r) in &running {
        if let Some(s) = out.get_mut(peer.name()) {
            s.peak_rss_kib = peak_rss_kib(r.proc.pid());
        }
    }
    out
}

/// The throughput table; `one_route` (peer → req/s with one route, same run) replaces the
/// direct column for the many-routes scenario.
fn table(
    md: &mut String,
    title: &str,
    rows: &BTreeMap<&'static str, Samples>,
    one_route: Option<&BTreeMap<&'static str, f64>>,
) {
    let nginx = rows.get("nginx").map(|s| median(&s.rps));
    let direct = rows.get("direct").map(|s| median(&s.rps));
    let _ = writeln!(md, "\n**{title}**\n");
    let last = if one_route.is_some() {
        "× itself with one route"
    } else {
        "× direct"
    };
    let _ = writeln!(
        md,
        "| peer | req/s (median) | spread | × nginx | {last} | CPU µs/req | peak RSS MiB | errors |"
    );
    let _ = writeln!(
        md,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for peer in Peer::ALL {
        let Some(s) = rows.get(peer.name()) else {
            continue;
        };
        let rps = median(&s.rps);
        let (lo, hi) = spread(&s.rps);
        let ratio = |base: Option<f64>| match base {
            Some(b) if b > 0.0 => format!("{:.2}", rps / b),
            _ => "—".into(),
        };
        let cpu = if s.cpu_us.is_empty() {
            "—".into()
        } else {
            format!("{:.1}", median(&s.cpu_us))
        };
        let rss = if s.peak_rss_kib == 0 {
            "—".into()
        } else {
            format!("{:.1}", s.peak_rss_kib as f64 / 1024.0)
        };
        let _ = writeln!(
            md,
            "| {} | {rps:.0} | {lo:.0}–{hi:.0} | {} | {} | {cpu} | {rss} | {} |",
            peer.name(),
            ratio(nginx),
            ratio(
                one_route
                    .and_then(|m| m.get(peer.name()).copied())
                    .or(direct)
            ),
            s.errors
        );
    }
}

/// Added latency at a fixed rate (one worker): each peer's percentiles and minus direct's.
fn latency_table(md: &mut String, rows: &BTreeMap<&'static str, Samples>) {
    let med = |v: &[[f64; 3]], i: usize| median(&v.iter().map(|x| x[i]).collect::<Vec<_>>());
    let direct = rows
        .get("direct")
        .filter(|s| !s.latency.is_empty())
        .map(|s| [med(&s.latency, 0), med(&s.latency, 1), med(&s.latency, 2)]);
    let _ = writeln!(
        md,
        "\n| peer | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 | added p99.9 |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for peer in Peer::ALL {
        let Some(s) = rows.get(peer.name()).filter(|s| !s.latency.is_empty()) else {
            continue;
        };
        let m = [med(&s.latency, 0), med(&s.latency, 1), med(&s.latency, 2)];
        let added = |i: usize| match (peer, direct) {
            (Peer::Direct, _) | (_, None) => "—".to_string(),
            (_, Some(d)) => format!("{:.3}", m[i] - d[i]),
        };
        let _ = writeln!(
            md,
            "| {} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
            peer.name(),
            m[0],
            m[1],
            m[2],
            added(0),
            added(1),
            added(2)
        );
    }
}

fn version(cmd: &Path, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            all.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

fn main() {
    let rounds = env("PORTICO_BENCH_ROUNDS", 3);
    let secs = env("PORTICO_BENCH_SECONDS", 5);
    let rate = env("PORTICO_BENCH_RATE", 5000);
    let settings = RunSettings { rounds, secs, rate };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let tools = Tools::locate(&root.join("target/bench-tools"));
    let cert = portico_tests::tls::self_signed(&["bench.test"]);

    let ip = loopback_ip();
    let addr = SocketAddr::new(ip, free_port(ip));
    let backend = Backend {
        proc: peers::spawn_pinned(
            "backend",
            &binaries().echo,
            &[
                "--listen".into(),
                addr.to_string(),
                "--fixed".into(),
                "--workers".into(),
                "1".into(),
                "--name".into(),
                "backend".into(),
            ],
            Some("0"),
        ),
        addr,
    };
    wait_port(addr);

    let mut md = String::new();
    let _ = writeln!(md, "## Side by side with nginx, HAProxy and Envoy\n");
    let _ = writeln!(
        md,
        "Every proxy in front of the same backend (`portico-echo --fixed --workers 1`: 13-byte or 100 KiB answers from memory, one thread) on loopback; load from wrk (1 thread, 32 connections; `Connection: close` for the new-connection case) or h2load (8 connections × 16 streams). One worker: proxy pinned to CPU 1, load generator and backend to CPU 0 (`direct` runs the backend alone on CPU 1). Two workers: nothing pinned, so proxy, backend and load generator share both cores. {rounds} interleaved rounds of {secs} s; median, min–max spread. CPU µs/req is the proxy's user+system time (all its processes) over the requests completed. nginx: `worker_processes`, upstream `keepalive 64`, HTTP/1.1 upstream; HAProxy: `nbthread`, `http-reuse always`; Envoy: `--concurrency`, `codec_type: AUTO`; Portico: `--workers`, access log off (all peers run without access logs)."
    );
    // Keep-alive req/s by worker count and peer, for the many-routes comparison.
    let mut one_route: BTreeMap<usize, BTreeMap<&'static str, f64>> = BTreeMap::new();
    // `PORTICO_BENCH_ONLY=auth` (or `ratelimit`, `backend`, `websocket`, `l4`, `compression`, `cache`)
    // measures just that section (a quick run).
    let only = std::env::var("PORTICO_BENCH_ONLY").ok();
    let worker_counts: &[usize] = if only.is_some() { &[] } else { &[1, 2] };
    // A quick look at some of it (not for docs/benchmarks.md): `PORTICO_BENCH_WORKERS=1`,
    // `PORTICO_BENCH_SCENARIO=keep-alive` (a part of a scenario's name).
    let worker_counts: Vec<usize> = match std::env::var("PORTICO_BENCH_WORKERS") {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) => worker_counts.to_vec(),
    };
    let scenario_filter = std::env::var("PORTICO_BENCH_SCENARIO").ok();
    let worker_counts = &worker_counts[..];
    for &workers in worker_counts {
        let _ = writeln!(
            md,
            "\n### {workers} worker{}\n",
            if workers == 1 { "" } else { "s" }
        );
        for scenario in SCENARIOS {
            if scenario_filter
                .as_deref()
                .is_some_and(|f| !scenario.name.contains(f))
            {
                continue;
            }
            eprintln!("== {} worker(s): {}", workers, scenario.name);
            let rows = measure(&tools, &backend, scenario, workers, &settings, &cert);
            if scenario.front == Front::Http1
                && !scenario.close
                && scenario.path == "/"
                && scenario.extra_routes == 0
            {
                one_route.insert(
                    workers,
                    rows.iter().map(|(p, s)| (*p, median(&s.rps))).collect(),
                );
            }
            let baseline = (scenario.extra_routes > 0)
                .then(|| one_route.get(&workers))
                .flatten();
            table(&mut md, scenario.name, &rows, baseline);
            if workers == 1 {
                let _ = writeln!(
                    md,
                    "\nOpen loop at {rate} req/s (oha, latency-corrected, 32 connections, {secs} s after each throughput round), medians; added = minus direct's:"
                );
                latency_table(&mut md, &rows);
            }
        }
    }

    // The sections after the side-by-side tables, each run alone with
    // `PORTICO_BENCH_ONLY=<name>`.
    let sections: [(&str, Section); 7] = [
        ("websocket", websocket::section),
        ("l4", l4::section),
        ("compression", compression::section),
        ("cache", cache::section),
        ("auth", policy_cost::auth_section),
        ("ratelimit", policy_cost::rate_limit_section),
        ("backend", policy_cost::backend_section),
    ];
    if scenario_filter.is_none() {
        for (name, section) in sections {
            if only.as_deref().is_none_or(|o| o == name) {
                eprintln!("== {name}");
                section(&mut md, &tools, &backend, &settings);
            }
        }
    }

    let _ = writeln!(
        md,
        "\nVersions: {}; {}; {}; {}; {}; {}.",
        version(&tools.nginx, "-v"),
        version(&tools.haproxy, "-v"),
        version(&tools.envoy, "--version"),
        version(&tools.wrk, "-v"),
        version(&tools.h2load, "--version"),
        version(&tools.oha, "--version")
    );
    let only = only.or_else(|| {
        (scenario_filter.is_some() || std::env::var_os("PORTICO_BENCH_WORKERS").is_some())
            .then(|| "partial".to_string())
    });
    if let Some(only) = &only {
        // A partial run: kept out of the report `make bench` assembles.
        std::fs::write(root.join(format!("target/{only}-bench.md")), &md).expect("write report");
        println!("{md}");
        return;
    }
    let dir = root.join("target/bench-report");
    std::fs::create_dir_all(&dir).expect("report dir");
    std::fs::write(dir.join("20-compare.md"), &md).expect("write report");
    println!("{md}");
}
