//! Response compression: the CPU a proxy spends per compressed 100 KiB JSON answer
//! (`portico-echo --fixed`'s `/100k.json`), Portico's BackendPolicy `compression` against
//! nginx's gzip at the same level (5), one worker pinned to CPU 1, wrk (`Accept-Encoding`
//! asking for the encoding) with the backend on CPU 0.

use super::peers::{self, Peer, ProxyConfig, Tools};
use super::{Backend, RunSettings, clk_tck, cpu_ticks, median, spread, wrk};
use portico_tests::loopback_ip;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

struct Variant {
    name: &'static str,
    peer: Peer,
    accept: &'static str,
    /// Portico's BackendPolicy encodings.
    encodings: &'static str,
}

const VARIANTS: [Variant; 5] = [
    Variant {
        name: "direct (uncompressed)",
        peer: Peer::Direct,
        accept: "identity",
        encodings: "",
    },
    Variant {
        name: "nginx gzip",
        peer: Peer::Nginx,
        accept: "gzip",
        encodings: "",
    },
    Variant {
        name: "portico gzip",
        peer: Peer::Portico,
        accept: "gzip",
        encodings: "[gzip]",
    },
    Variant {
        name: "portico br",
        peer: Peer::Portico,
        accept: "br",
        encodings: "[br]",
    },
    Variant {
        name: "portico zstd",
        peer: Peer::Portico,
        accept: "zstd",
        encodings: "[zstd]",
    },
];

fn policy(encodings: &str) -> String {
    format!(
        "---
apiVersion: portico.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: compress, namespace: default}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: backend}}]
  compression: {{encodings: {encodings}}}
"
    )
}

/// The bytes of one answer's body on the wire (framing included), as `accept` gets it.
fn wire_size(addr: SocketAddr, accept: &str) -> usize {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return 0;
    };
    let req = format!(
        "GET /100k.json HTTP/1.1\r\nHost: bench.test\r\nAccept-Encoding: {accept}\r\nConnection: close\r\n\r\n"
    );
    let mut all = Vec::new();
    if s.write_all(req.as_bytes()).is_err() || s.read_to_end(&mut all).is_err() {
        return 0;
    }
    let head = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(all.len(), |p| p + 4);
    all.len() - head
}

pub(crate) fn section(md: &mut String, tools: &Tools, backend: &Backend, settings: &RunSettings) {
    let ip = loopback_ip();
    let mut running = Vec::new();
    for v in VARIANTS.iter().filter(|v| v.peer != Peer::Direct) {
        let extra = policy(v.encodings);
        let portico_extra = (v.peer == Peer::Portico).then_some(extra.as_str());
        let config = ProxyConfig::one_worker(ip, backend.addr, portico_extra, 1);
        let r = peers::start(tools, v.peer, &config, Some("1"));
        running.push((v.name, config.listen, r));
    }
    // variant → (req/s, CPU µs per request) per round.
    let mut rows: Vec<(Vec<f64>, Vec<f64>, u64)> =
        VARIANTS.iter().map(|_| Default::default()).collect();
    for _ in 0..settings.rounds {
        for (i, v) in VARIANTS.iter().enumerate() {
            let (addr, pid) = match running.iter().find(|(n, _, _)| *n == v.name) {
                Some((_, addr, r)) => (*addr, r.proc.pid()),
                None => {
                    super::set_affinity(backend.proc.pid(), "1");
                    (backend.addr, backend.proc.pid())
                }
            };
            let url = format!("http://{addr}/100k.json");
            let before = cpu_ticks(pid);
            let accept = format!("Accept-Encoding: {}", v.accept);
            let load = wrk(tools, Some("0"), &url, settings.secs, &[accept.as_str()]);
            let ticks = cpu_ticks(pid).saturating_sub(before);
            if v.peer == Peer::Direct {
                super::set_affinity(backend.proc.pid(), "0");
            }
            rows[i].0.push(load.rps);
            rows[i].2 += load.errors;
            if load.requests > 0 && v.peer != Peer::Direct {
                rows[i]
                    .1
                    .push(ticks as f64 / clk_tck() * 1e6 / load.requests as f64);
            }
        }
    }
    let sizes: Vec<usize> = VARIANTS
        .iter()
        .map(|v| {
            let addr = running
                .iter()
                .find(|(n, _, _)| *n == v.name)
                .map_or(backend.addr, |(_, a, _)| *a);
            wire_size(addr, v.accept)
        })
        .collect();
    let _ = writeln!(md, "\n## Response compression\n");
    let _ = writeln!(
        md,
        "A 100 KiB JSON answer (`portico-echo --fixed`, `/100k.json`: lines of catalogue records) through one worker pinned to CPU 1, compressed on the way; wrk (1 thread, 32 connections, `Accept-Encoding` naming the encoding) and the backend on CPU 0; {} rounds of {} s, median (min–max). nginx: `gzip on; gzip_comp_level 5` (the level Portico's gzip uses), `gzip_types application/json`, `gzip_proxied any`. Portico: a BackendPolicy `compression` with the one encoding (gzip 5, Brotli quality 4, zstd level 3). CPU µs/req is the proxy's user+system time per answer; bytes are one answer's body on the wire.\n",
        settings.rounds, settings.secs
    );
    let _ = writeln!(
        md,
        "| | req/s | CPU µs/req | × nginx CPU | bytes | errors |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    let nginx_cpu = VARIANTS
        .iter()
        .position(|v| v.peer == Peer::Nginx)
        .map(|i| median(&rows[i].1));
    for (i, v) in VARIANTS.iter().enumerate() {
        let (rps, cpu, errors) = &rows[i];
        let m = median(rps);
        let (lo, hi) = spread(rps);
        let (cpu, ratio) = if cpu.is_empty() {
            (String::new(), String::new())
        } else {
            let c = median(cpu);
            let ratio = nginx_cpu
                .filter(|n| *n > 0.0)
                .map_or(String::new(), |n| format!("{:.2}×", c / n));
            (format!("{c:.0}"), ratio)
        };
        let _ = writeln!(
            md,
            "| {} | {m:.0} ({lo:.0}–{hi:.0}) | {cpu} | {ratio} | {} | {errors} |",
            v.name, sizes[i]
        );
    }
}
