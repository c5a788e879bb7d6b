//! L4: TCP and TLS passthrough through one worker of each proxy (pinned to CPU 1), in front of
//! `portico-echo --tcp` (one thread; plain, and behind TLS for passthrough), loaded by
//! `portico-tcpload` (one thread); backends and load generator pinned to CPU 0. `direct` runs
//! the scenario's backend alone on CPU 1. Portico: a TCP listener with a TCPRoute and a TLS
//! listener in `Passthrough` mode with a TLSRoute for the benchmark's name; nginx: `stream`
//! with `ssl_preread` and a map from server name to upstream; HAProxy: `mode tcp`, with
//! `req_ssl_sni` after inspecting the hello; Envoy: `tcp_proxy`, with the TLS inspector and a
//! filter chain per server name.

use super::peers::{self, Peer, Tools};
use super::{
    Backend, RunSettings, clk_tck, cpu_ticks, median, peak_rss_kib, pinned, process_tree, run,
    set_affinity, spread,
};
use portico_tests::{Proc, TempDir, binaries, free_port, loopback_ip, wait_port};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// The name the TLS clients ask for, and the only one every proxy routes.
const SNI: &str = "bench.test";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Long-lived connections echoing `size`-byte messages.
    Stream,
    /// A new connection per exchange.
    Connect,
    /// A new connection and a full TLS 1.3 handshake per exchange, through passthrough.
    Tls,
}

struct Scenario {
    name: &'static str,
    mode: Mode,
    connections: usize,
    size: usize,
    /// The rate's unit ("MiB/s"), one unit ("MiB"), and its divisor from what
    /// `portico-tcpload` counts (bytes for `Stream`, connections otherwise).
    rate: &'static str,
    unit: &'static str,
    per: f64,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "TCP throughput: 8 connections echoing 64 KiB messages",
        mode: Mode::Stream,
        connections: 8,
        size: 64 * 1024,
        rate: "MiB/s",
        unit: "MiB",
        per: 1024.0 * 1024.0,
    },
    Scenario {
        name: "TCP small messages: 32 connections echoing 64-byte messages",
        mode: Mode::Stream,
        connections: 32,
        size: 64,
        rate: "messages/s",
        unit: "message",
        per: 64.0,
    },
    Scenario {
        name: "TCP new connections: 32 loops, each connecting, echoing 64 bytes and closing",
        mode: Mode::Connect,
        connections: 32,
        size: 64,
        rate: "connections/s",
        unit: "connection",
        per: 1.0,
    },
    Scenario {
        name: "TLS passthrough handshakes: 32 loops, each connecting, completing a full TLS 1.3 handshake with the backend (ECDSA P-256, no resumption), echoing 64 bytes and closing",
        mode: Mode::Tls,
        connections: 32,
        size: 64,
        rate: "handshakes/s",
        unit: "handshake",
        per: 1.0,
    },
];

/// Where a proxy listens: the TCP port and the TLS passthrough port.
#[derive(Clone, Copy)]
struct Ports {
    tcp: SocketAddr,
    tls: SocketAddr,
}

/// The two backends: TCP echo, and TLS echo with a certificate for `SNI`.
struct Backends {
    tcp: Proc,
    tcp_addr: SocketAddr,
    tls: Proc,
    tls_addr: SocketAddr,
}

/// What `portico-tcpload` counted (bytes or connections) and its failed loops.
fn load(scenario: &Scenario, addr: SocketAddr, secs: usize, ca: &Path) -> (u64, u64) {
    let program = binaries().echo.with_file_name("portico-tcpload");
    let mode = match scenario.mode {
        Mode::Stream => "stream",
        Mode::Connect => "connect",
        Mode::Tls => "tls",
    };
    let out = run(pinned(Some("0"), &program).args([
        "--target".to_string(),
        addr.to_string(),
        "--mode".into(),
        mode.into(),
        "--connections".into(),
        scenario.connections.to_string(),
        "--seconds".into(),
        secs.to_string(),
        "--size".into(),
        scenario.size.to_string(),
        "--sni".into(),
        SNI.into(),
        "--ca".into(),
        ca.display().to_string(),
    ]));
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("portico-tcpload said: {out}"))
    };
    let total = match scenario.mode {
        Mode::Stream => field("bytes "),
        Mode::Connect | Mode::Tls => field("connections "),
    };
    (total, field("errors "))
}

fn start_backends(dir: &TempDir) -> Backends {
    let ip = loopback_ip();
    let tcp_addr = SocketAddr::new(ip, free_port(ip));
    let tls_addr = SocketAddr::new(ip, free_port(ip));
    let echo = |name: &str, addr: SocketAddr, tls: bool| {
        let mut args = vec![
            "--listen".to_string(),
            addr.to_string(),
            "--tcp".into(),
            "--workers".into(),
            "1".into(),
            "--name".into(),
            name.into(),
        ];
        if tls {
            args.extend([
                "--tls-cert".into(),
                dir.path().join("backend.pem").display().to_string(),
                "--tls-key".into(),
                dir.path().join("backend-key.pem").display().to_string(),
            ]);
        }
        let proc = peers::spawn_pinned(name, &binaries().echo, &args, Some("0"));
        wait_port(addr);
        proc
    };
    Backends {
        tcp: echo("tcp-backend", tcp_addr, false),
        tcp_addr,
        tls: echo("tls-backend", tls_addr, true),
        tls_addr,
    }
}

pub(crate) fn section(md: &mut String, tools: &Tools, _http: &Backend, settings: &RunSettings) {
    let files = TempDir::new("l4-bench");
    let ca = portico_tests::tls::Ca::new("bench-ca");
    let (cert, key) = ca.leaf(&[SNI], &[]);
    files.write("ca.pem", &ca.pem);
    files.write("backend.pem", &cert);
    files.write("backend-key.pem", &key);
    let ca_file = files.path().join("ca.pem");
    let backends = start_backends(&files);

    let ip = loopback_ip();
    let mut running = Vec::new();
    for peer in Peer::ALL.into_iter().filter(|p| *p != Peer::Direct) {
        let ports = Ports {
            tcp: SocketAddr::new(ip, free_port(ip)),
            tls: SocketAddr::new(ip, free_port(ip)),
        };
        let admin = SocketAddr::new(ip, free_port(ip));
        let dir = TempDir::new(peer.name());
        write_config(tools, peer, &dir, ports, admin.port(), &backends);
        let r = peers::launch(tools, peer, dir, 1, ports.tcp, admin, Some("1"));
        wait_port(ports.tls);
        running.push((peer, ports, r));
    }

    let _ = writeln!(md, "\n## L4: TCP and TLS passthrough\n");
    let _ = writeln!(
        md,
        "One worker of each proxy pinned to CPU 1, in front of `portico-echo --tcp` (one thread: a TCP echo, and a TLS echo with an ECDSA P-256 certificate for passthrough), loaded by `portico-tcpload` (one thread); backends and load generator pinned to CPU 0; `direct` runs the scenario's backend alone on CPU 1. {} interleaved rounds of {} s; median (min–max). CPU µs is the proxy's user+system time over the units completed; throughput counts each echoed byte once (it crosses the proxy both ways). Where CPU 0 (load generator and backend) is the limit, the proxies' rates tie and the CPU column is the comparison. Portico: a TCP listener with a TCPRoute, a TLS listener in `Passthrough` mode with a TLSRoute for the name; nginx: `stream` with `ssl_preread` and a `map` from the server name to the upstream; HAProxy: `mode tcp`, `req_ssl_sni` after `tcp-request inspect-delay`; Envoy: `tcp_proxy`, the TLS inspector and a filter chain for the name. No access logs.",
        settings.rounds, settings.secs
    );
    for scenario in &SCENARIOS {
        eprintln!("== l4: {}", scenario.name);
        // Each table's peak RSS is its scenario's, not the largest since the proxy started.
        for (_, _, r) in &running {
            reset_peak_rss(r.proc.pid());
        }
        // peer → (rate per second, CPU µs per unit) per round, errors in all.
        let mut rows: BTreeMap<&'static str, (Vec<f64>, Vec<f64>, u64)> = BTreeMap::new();
        let direct = match scenario.mode {
            Mode::Tls => (&backends.tls, backends.tls_addr),
            Mode::Stream | Mode::Connect => (&backends.tcp, backends.tcp_addr),
        };
        for _ in 0..settings.rounds {
            for peer in Peer::ALL {
                let (addr, pid) = match running.iter().find(|(p, _, _)| *p == peer) {
                    Some((_, ports, r)) => {
                        let addr = if scenario.mode == Mode::Tls {
                            ports.tls
                        } else {
                            ports.tcp
                        };
                        (addr, r.proc.pid())
                    }
                    None => {
                        set_affinity(direct.0.pid(), "1");
                        (direct.1, direct.0.pid())
                    }
                };
                let before = cpu_ticks(pid);
                let (total, errors) = load(scenario, addr, settings.secs, &ca_file);
                let ticks = cpu_ticks(pid).saturating_sub(before);
                if peer == Peer::Direct {
                    set_affinity(direct.0.pid(), "0");
                }
                let units = total as f64 / scenario.per;
                let row = rows.entry(peer.name()).or_default();
                row.0.push(units / settings.secs as f64);
                if units > 0.0 && peer != Peer::Direct {
                    row.1.push(ticks as f64 / clk_tck() * 1e6 / units);
                }
                row.2 += errors;
            }
        }
        table(md, scenario, &rows, &running);
    }
}

/// Resets the peak resident set (VmHWM) of a process and its children (`clear_refs` 5).
fn reset_peak_rss(pid: u32) {
    for p in process_tree(pid) {
        let _ = std::fs::write(format!("/proc/{p}/clear_refs"), "5");
    }
}

fn table(
    md: &mut String,
    scenario: &Scenario,
    rows: &BTreeMap<&'static str, (Vec<f64>, Vec<f64>, u64)>,
    running: &[(Peer, Ports, peers::Running)],
) {
    let _ = writeln!(md, "\n### {}\n", scenario.name);
    let _ = writeln!(
        md,
        "| peer | {} (median) | spread | × haproxy | × direct | CPU µs/{} | peak RSS MiB (this scenario) | errors |",
        scenario.rate, scenario.unit
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let of = |name: &str| rows.get(name).map(|r| median(&r.0)).filter(|m| *m > 0.0);
    let (haproxy, direct) = (of("haproxy"), of("direct"));
    for peer in Peer::ALL {
        let Some((rate, cpu, errors)) = rows.get(peer.name()) else {
            continue;
        };
        let m = median(rate);
        let (lo, hi) = spread(rate);
        let ratio = |base: Option<f64>| base.map_or(String::new(), |b| format!("{:.2}×", m / b));
        let cpu = if cpu.is_empty() {
            String::new()
        } else {
            format!("{:.1}", median(cpu))
        };
        let rss = running
            .iter()
            .find(|(p, _, _)| *p == peer)
            .map_or(String::new(), |(_, _, r)| {
                format!("{:.0}", peak_rss_kib(r.proc.pid()) as f64 / 1024.0)
            });
        let decimals = usize::from(scenario.unit == "MiB");
        let _ = writeln!(
            md,
            "| {} | {m:.decimals$} | {lo:.decimals$}–{hi:.decimals$} | {} | {} | {cpu} | {rss} | {errors} |",
            peer.name(),
            ratio(haproxy),
            ratio(direct),
        );
    }
}

/// Writes `peer`'s configuration for `ports` in front of `backends` into `dir`.
fn write_config(
    tools: &Tools,
    peer: Peer,
    dir: &TempDir,
    ports: Ports,
    admin_port: u16,
    backends: &Backends,
) {
    match peer {
        Peer::Direct => unreachable!("no proxy"),
        Peer::Portico => dir.write("config.yaml", &portico_config(ports, backends)),
        Peer::Nginx => dir.write(
            "nginx.conf",
            &nginx_config(tools, dir.path(), ports, backends),
        ),
        Peer::Haproxy => dir.write("haproxy.cfg", &haproxy_config(ports, backends)),
        Peer::Envoy => dir.write(
            "envoy.yaml",
            &envoy_config(ports.tcp.ip(), admin_port, ports, backends),
        ),
    }
}

fn portico_config(ports: Ports, b: &Backends) -> String {
    let listeners = format!(
        "  - {{name: tcp, port: {tcp}, protocol: TCP}}
  - {{name: tls, port: {tls}, protocol: TLS, hostname: {SNI}, tls: {{mode: Passthrough}}}}
",
        tcp = ports.tcp.port(),
        tls = ports.tls.port(),
    );
    format!(
        "{gateway}---
apiVersion: v1
kind: Service
metadata: {{name: tcp-backend, namespace: default, annotations: {{portico.dev/endpoints: \"{tcp_backend}\"}}}}
spec: {{ports: [{{name: tcp, port: 9000}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: tls-backend, namespace: default, annotations: {{portico.dev/endpoints: \"{tls_backend}\"}}}}
spec: {{ports: [{{name: tls, port: 443}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: tcp, namespace: default}}
spec:
  parentRefs: [{{name: bench, sectionName: tcp}}]
  rules: [{{backendRefs: [{{name: tcp-backend, port: 9000}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: tls, namespace: default}}
spec:
  parentRefs: [{{name: bench, sectionName: tls}}]
  hostnames: [{SNI}]
  rules: [{{backendRefs: [{{name: tls-backend, port: 443}}]}}]
",
        gateway = portico_tests::gateway_yaml("bench", "", &listeners),
        tcp_backend = b.tcp_addr,
        tls_backend = b.tls_addr,
    )
}

fn nginx_config(tools: &Tools, dir: &Path, ports: Ports, b: &Backends) -> String {
    let module = tools
        .nginx_stream_module
        .as_ref()
        .unwrap_or_else(|why| panic!("{why}"));
    let load_module = module
        .as_ref()
        .map_or(String::new(), |m| format!("load_module {};\n", m.display()));
    format!(
        "{load_module}daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
stream {{
  upstream tcp_backend {{ server {tcp_backend}; }}
  upstream tls_backend {{ server {tls_backend}; }}
  map $ssl_preread_server_name $by_name {{ {SNI} tls_backend; }}
  server {{ listen {tcp}; proxy_pass tcp_backend; }}
  server {{ listen {tls}; ssl_preread on; proxy_pass $by_name; }}
}}
",
        dir = dir.display(),
        tcp = ports.tcp,
        tls = ports.tls,
        tcp_backend = b.tcp_addr,
        tls_backend = b.tls_addr,
    )
}

fn haproxy_config(ports: Ports, b: &Backends) -> String {
    format!(
        "global
  nbthread 1
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend tcp
  bind {tcp}
  default_backend tcp_backend
frontend tls
  bind {tls}
  tcp-request inspect-delay 5s
  tcp-request content accept if {{ req_ssl_hello_type 1 }}
  use_backend tls_backend if {{ req_ssl_sni -i {SNI} }}
backend tcp_backend
  server s1 {tcp_backend}
backend tls_backend
  server s1 {tls_backend}
",
        tcp = ports.tcp,
        tls = ports.tls,
        tcp_backend = b.tcp_addr,
        tls_backend = b.tls_addr,
    )
}

fn envoy_config(ip: IpAddr, admin: u16, ports: Ports, b: &Backends) -> String {
    let tcp_proxy = |cluster: &str| {
        format!(
            "filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {cluster}
          cluster: {cluster}"
        )
    };
    let cluster = |name: &str, addr: SocketAddr| {
        format!(
            "  - name: {name}
    type: STATIC
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}
",
            addr.ip(),
            addr.port()
        )
    };
    format!(
        "admin:
  address: {{socket_address: {{address: {ip}, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: tcp
    address: {{socket_address: {{address: {ip}, port_value: {tcp}}}}}
    filter_chains:
    - {tcp_filters}
  - name: tls
    address: {{socket_address: {{address: {ip}, port_value: {tls}}}}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
    filter_chains:
    - filter_chain_match: {{server_names: [{SNI}]}}
      {tls_filters}
  clusters:
{tcp_cluster}{tls_cluster}",
        tcp = ports.tcp.port(),
        tls = ports.tls.port(),
        tcp_filters = tcp_proxy("tcp_backend"),
        tls_filters = tcp_proxy("tls_backend"),
        tcp_cluster = cluster("tcp_backend", b.tcp_addr),
        tls_cluster = cluster("tls_backend", b.tls_addr),
    )
}
