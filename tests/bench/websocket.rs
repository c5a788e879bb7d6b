//! WebSocket messages per second through each proxy: `portico-wsload` (one thread, pinned
//! with the backend to CPU 0) opens 32 WebSockets through the proxy (one worker, pinned to
//! CPU 1) to `portico-echo`, and each sends a 128-byte message and waits for its echo, again
//! and again. `direct` runs the backend alone on CPU 1.

use super::peers::{self, Peer, ProxyConfig, Tools};
use super::{Backend, RunSettings, clk_tck, cpu_ticks, median, pinned, run, set_affinity, spread};
use portico_tests::{binaries, loopback_ip};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

const PEERS: [Peer; 5] = [
    Peer::Direct,
    Peer::Portico,
    Peer::Nginx,
    Peer::Haproxy,
    Peer::Envoy,
];
const CONNECTIONS: usize = 32;
const SIZE: usize = 128;

/// Messages echoed through `addr` in `secs`.
fn load(addr: SocketAddr, secs: usize) -> u64 {
    let program = binaries().echo.with_file_name("portico-wsload");
    let out = run(pinned(Some("0"), &program).args([
        "--target".to_string(),
        addr.to_string(),
        "--connections".into(),
        CONNECTIONS.to_string(),
        "--seconds".into(),
        secs.to_string(),
        "--size".into(),
        SIZE.to_string(),
    ]));
    out.lines()
        .find_map(|l| l.strip_prefix("messages ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("portico-wsload said: {out}"))
}

pub(crate) fn section(md: &mut String, tools: &Tools, backend: &Backend, settings: &RunSettings) {
    let ip = loopback_ip();
    let mut running = Vec::new();
    for peer in PEERS.into_iter().filter(|p| *p != Peer::Direct) {
        let config = ProxyConfig::one_worker(ip, backend.addr, None, 1);
        let r = peers::start(tools, peer, &config, Some("1"));
        running.push((peer, config.listen, r));
    }
    // peer → (messages per second, CPU µs per message) per round.
    let mut rows: BTreeMap<&'static str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for _ in 0..settings.rounds {
        for peer in PEERS {
            let (addr, pid) = match running.iter().find(|(p, _, _)| *p == peer) {
                Some((_, addr, r)) => (*addr, r.proc.pid()),
                None => {
                    set_affinity(backend.proc.pid(), "1");
                    (backend.addr, backend.proc.pid())
                }
            };
            let before = cpu_ticks(pid);
            let messages = load(addr, settings.secs);
            let ticks = cpu_ticks(pid).saturating_sub(before);
            if peer == Peer::Direct {
                set_affinity(backend.proc.pid(), "0");
            }
            let row = rows.entry(peer.name()).or_default();
            row.0.push(messages as f64 / settings.secs as f64);
            if messages > 0 && peer != Peer::Direct {
                row.1.push(ticks as f64 / clk_tck() * 1e6 / messages as f64);
            }
        }
    }
    let _ = writeln!(md, "\n## WebSocket\n");
    let _ = writeln!(
        md,
        "Messages per second through one worker: {CONNECTIONS} WebSockets opened through the proxy (pinned to CPU 1) to `portico-echo` (pinned with the load generator, `portico-wsload`, one thread, to CPU 0); each sends a {SIZE}-byte message and waits for its echo, again and again, for {} s; {} rounds, median (min–max). nginx: a `/ws` location with `proxy_set_header Upgrade`/`Connection \"upgrade\"` as its documentation gives; HAProxy: as is (it tunnels upgrades by itself); Envoy: `upgrade_configs: websocket`; Portico: as is. CPU µs/msg is the proxy's user+system time over the messages echoed (each crosses the proxy twice).\n",
        settings.secs, settings.rounds
    );
    let _ = writeln!(md, "| | messages/s | × nginx | CPU µs/msg |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    let nginx = rows.get("nginx").map(|r| median(&r.0));
    for peer in PEERS {
        let Some((rate, cpu)) = rows.get(peer.name()) else {
            continue;
        };
        let m = median(rate);
        let (lo, hi) = spread(rate);
        let ratio = nginx
            .filter(|n| *n > 0.0)
            .map_or("".to_string(), |n| format!("{:.2}×", m / n));
        let cpu = if cpu.is_empty() {
            "".to_string()
        } else {
            format!("{:.1}", median(cpu))
        };
        let _ = writeln!(
            md,
            "| {} | {m:.0} ({lo:.0}–{hi:.0}) | {ratio} | {cpu} |",
            peer.name()
        );
    }
}
