//! The proxies compared, each configured the way its own documentation recommends for a
//! reverse proxy in front of one keep-alive backend, with a given number of workers.

use portico_tests::{Proc, TempDir, binaries, wait_port};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where the tools are: `make bench` installs what is missing (`tests/bench/tools.sh`).
pub(crate) struct Tools {
    pub(crate) nginx: PathBuf,
    pub(crate) haproxy: PathBuf,
    pub(crate) envoy: PathBuf,
    pub(crate) wrk: PathBuf,
    pub h2load: PathBuf,
    pub(crate) oha: PathBuf,
    /// nginx's `stream` module, where nginx was built with it as a dynamic module (Debian's
    /// `libnginx-mod-stream`): the L4 benchmark loads it with `load_module`. `Err` says why
    /// it cannot (asked for by that section only).
    pub(crate) nginx_stream_module: Result<Option<PathBuf>, String>,
}

fn find(name: &str, extra: &[PathBuf]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .chain(extra.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found; run `make bench`, which installs it"))
}

impl Tools {
    pub(crate) fn locate(tools_dir: &Path) -> Self {
        let extra = [tools_dir.join("bin")];
        let nginx = find("nginx", &extra);
        Self {
            nginx_stream_module: stream_module(&nginx),
            nginx,
            haproxy: find("haproxy", &extra),
            envoy: find("envoy", &extra),
            wrk: find("wrk", &extra),
            h2load: find("h2load", &extra),
            oha: find("oha", &extra),
        }
    }
}

/// The `stream` module's file when `nginx` has it as a dynamic module; `None` when it is
/// built in; an error when it is dynamic and not installed.
fn stream_module(nginx: &Path) -> Result<Option<PathBuf>, String> {
    let out = std::process::Command::new(nginx)
        .arg("-V")
        .output()
        .map_err(|e| format!("nginx -V: {e}"))?;
    // nginx -V writes its build options to stderr.
    let options = String::from_utf8_lossy(&out.stderr).into_owned();
    if !options.contains("--with-stream=dynamic") {
        return Ok(None);
    }
    [
        "/usr/lib/nginx/modules",
        "/usr/lib64/nginx/modules",
        "/usr/share/nginx/modules",
    ]
    .iter()
    .map(|d| Path::new(d).join("ngx_stream_module.so"))
    .find(|p| p.is_file())
    .map(Some)
    .ok_or_else(|| {
        "nginx's stream module is not installed; run `make bench`, which installs it".into()
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// The backend itself, no proxy: the physical limit of this machine.
    Direct,
    Portico,
    Nginx,
    Haproxy,
    Envoy,
}

impl Peer {
    pub(crate) const ALL: [Peer; 5] = [
        Peer::Direct,
        Peer::Portico,
        Peer::Nginx,
        Peer::Haproxy,
        Peer::Envoy,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Portico => "portico",
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
            Peer::Envoy => "envoy",
        }
    }
}

/// What the downstream side speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Front {
    Http1,
    /// HTTP/2 with prior knowledge, alongside HTTP/1.1 where the proxy allows.
    H2c,
    Tls,
}

pub(crate) struct ProxyConfig<'a> {
    pub(crate) workers: usize,
    pub(crate) front: Front,
    pub(crate) listen: SocketAddr,
    /// A free port beside `listen` for the proxy's admin interface (Portico, Envoy).
    pub(crate) admin: SocketAddr,
    pub(crate) backend: SocketAddr,
    /// PEM certificate and key for `Front::Tls`.
    pub(crate) tls: Option<(&'a str, &'a str)>,
    /// Extra Portico routes loaded beside the measured one.
    pub(crate) extra_routes: usize,
    /// More documents for Portico's configuration (an AuthPolicy on route `bench`).
    pub(crate) portico_extra: Option<&'a str>,
    /// Portico's Service lists `backend` this many times, as that many endpoints (each with
    /// its own state and connections), so balancing has a choice to make (1: once).
    pub(crate) backend_copies: usize,
}

impl<'a> ProxyConfig<'a> {
    /// One worker, HTTP/1.1 in front of `backend`, on fresh ports of `ip`: the policy,
    /// WebSocket and compression sections' proxy.
    pub(crate) fn one_worker(
        ip: std::net::IpAddr,
        backend: SocketAddr,
        portico_extra: Option<&'a str>,
        backend_copies: usize,
    ) -> Self {
        Self {
            workers: 1,
            front: Front::Http1,
            listen: SocketAddr::new(ip, portico_tests::free_port(ip)),
            admin: SocketAddr::new(ip, portico_tests::free_port(ip)),
            backend,
            tls: None,
            extra_routes: 0,
            portico_extra,
            backend_copies,
        }
    }
}

/// A started proxy.
pub(crate) struct Running {
    pub(crate) proc: Proc,
    _dir: TempDir,
}

impl Drop for Running {
    /// Stops the proxy and every process it forked: a SIGKILLed nginx master leaves its
    /// workers running (and listening), so ask for a clean stop first, then kill stragglers.
    fn drop(&mut self) {
        let children = child_pids(self.proc.pid());
        self.proc.terminate();
        let _ = self.proc.wait_exit(std::time::Duration::from_secs(3));
        for pid in children {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The direct children of a process (nginx's workers).
pub(crate) fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pid) {
                out.push(child);
            }
        }
    }
    out
}

/// Starts `peer` (not `Direct`) pinned to `cpus` (a taskset list), waiting for its port.
pub(crate) fn start(tools: &Tools, peer: Peer, c: &ProxyConfig<'_>, cpus: Option<&str>) -> Running {
    let dir = TempDir::new(peer.name());
    match peer {
        Peer::Direct => unreachable!("the backend is started by the caller"),
        Peer::Portico => dir.write("config.yaml", &portico_config(c)),
        Peer::Nginx => {
            if let Some((cert, key)) = c.tls {
                dir.write("cert.pem", cert);
                dir.write("key.pem", key);
            }
            dir.write("nginx.conf", &nginx_config(c, dir.path()));
        }
        Peer::Haproxy => {
            if let Some((cert, key)) = c.tls {
                dir.write("bundle.pem", &format!("{cert}{key}"));
            }
            dir.write("haproxy.cfg", &haproxy_config(c, dir.path()));
        }
        Peer::Envoy => {
            if let Some((cert, key)) = c.tls {
                dir.write("cert.pem", cert);
                dir.write("key.pem", key);
            }
            dir.write("envoy.yaml", &envoy_config(c, dir.path()));
        }
    }
    launch(tools, peer, dir, c.workers, c.listen, c.admin, cpus)
}

/// Runs `peer` on the configuration already written in `dir` (Portico: `config.yaml`, its
/// listeners on `listen`'s address; nginx: `nginx.conf`; HAProxy: `haproxy.cfg`; Envoy:
/// `envoy.yaml`) with `workers` workers, pinned to `cpus`, and waits for `listen`.
pub(crate) fn launch(
    tools: &Tools,
    peer: Peer,
    dir: TempDir,
    workers: usize,
    listen: SocketAddr,
    admin: SocketAddr,
    cpus: Option<&str>,
) -> Running {
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (program, args): (PathBuf, Vec<String>) = match peer {
        Peer::Direct => unreachable!("the backend is started by the caller"),
        Peer::Portico => (
            binaries().portico.clone(),
            vec![
                "standalone".into(),
                "--config".into(),
                dir.path().display().to_string(),
                "--bind-address".into(),
                listen.ip().to_string(),
                "--admin-address".into(),
                admin.to_string(),
                "--access-log".into(),
                "false".into(),
                "--workers".into(),
                workers.to_string(),
            ],
        ),
        Peer::Nginx => (
            tools.nginx.clone(),
            vec![
                "-p".into(),
                dir.path().display().to_string(),
                "-e".into(),
                path("error.log"),
                "-c".into(),
                path("nginx.conf"),
            ],
        ),
        Peer::Haproxy => (
            tools.haproxy.clone(),
            vec!["-db".into(), "-f".into(), path("haproxy.cfg")],
        ),
        Peer::Envoy => (
            tools.envoy.clone(),
            vec![
                "-c".into(),
                path("envoy.yaml"),
                "--concurrency".into(),
                workers.to_string(),
                "--log-level".into(),
                "error".into(),
                "--disable-hot-restart".into(),
            ],
        ),
    };
    let proc = spawn_pinned(peer.name(), &program, &args, cpus);
    wait_port(listen);
    Running { proc, _dir: dir }
}

/// Spawns `program` under `taskset -c cpus` when given (taskset execs it: same pid).
pub(crate) fn spawn_pinned(
    name: &str,
    program: &Path,
    args: &[String],
    cpus: Option<&str>,
) -> Proc {
    match cpus {
        None => Proc::spawn(name, program, args),
        Some(list) => {
            let mut all = vec![
                "-c".to_string(),
                list.to_string(),
                program.display().to_string(),
            ];
            all.extend(args.iter().cloned());
            Proc::spawn(name, Path::new("/usr/bin/taskset"), &all)
        }
    }
}

fn portico_config(c: &ProxyConfig<'_>) -> String {
    let (protocol, tls) = match (c.front, c.tls) {
        (Front::Tls, Some(_)) => ("HTTPS", ", tls: {certificateRefs: [{name: bench-tls}]}"),
        _ => ("HTTP", ""),
    };
    let mut out = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portico}}
spec: {{controllerName: portico.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: bench, namespace: default}}
spec:
  gatewayClassName: portico
  listeners: [{{name: l, port: {port}, protocol: {protocol}{tls}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: default, annotations: {{portico.dev/endpoints: \"{backend}\"}}}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: bench, namespace: default}}
spec:
  parentRefs: [{{name: bench}}]
  rules: [{{backendRefs: [{{name: backend, port: 80}}]}}]
",
        port = c.listen.port(),
        backend = vec![c.backend.to_string(); c.backend_copies.max(1)].join(","),
    );
    if let (Front::Tls, Some((cert, key))) = (c.front, c.tls) {
        out.push_str(&portico_tests::tls::secret_yaml(
            "bench-tls",
            "default",
            cert,
            key,
        ));
    }
    if let Some(extra) = c.portico_extra {
        out.push_str(extra);
    }
    // Routes that are loaded but never match the benchmark's requests (other hosts), so the
    // measured route is found among 10,000.
    for i in 0..c.extra_routes {
        out.push_str(&format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r{i}, namespace: default}}
spec:
  parentRefs: [{{name: bench}}]
  hostnames: [r{i}.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /api/v{i}}}}}]
    backendRefs: [{{name: backend, port: 80}}]
"
        ));
    }
    out
}

fn nginx_config(c: &ProxyConfig<'_>, dir: &Path) -> String {
    let listen = match c.front {
        Front::Http1 => format!("{} default_server", c.listen),
        Front::H2c => format!("{} http2 default_server", c.listen),
        Front::Tls => format!("{} ssl default_server", c.listen),
    };
    // Routes that never match the measured requests, as Portico gets them: a server per
    // hostname with a location per path prefix.
    let mut extra = String::new();
    for i in 0..c.extra_routes {
        extra.push_str(&format!(
            "  server {{ listen {}; server_name r{i}.example.com; location /api/v{i} {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n",
            c.listen
        ));
    }
    let tls = if c.front == Front::Tls {
        format!(
            "ssl_certificate {0}/cert.pem; ssl_certificate_key {0}/key.pem; ssl_protocols TLSv1.3;",
            dir.display()
        )
    } else {
        String::new()
    };
    format!(
        "daemon off;
master_process on;
worker_processes {workers};
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  upstream backend {{ server {backend}; keepalive 64; keepalive_requests 1000000; }}
  server_names_hash_max_size 65536;
  server_names_hash_bucket_size 128;
  proxy_cache_path {dir}/cache levels=1:2 keys_zone=bench:16m max_size=256m inactive=1h use_temp_path=off;
{extra}  server {{
    listen {listen};
    {tls}
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering on;
    }}
    # gzip at the level Portico compresses with (the compression benchmark).
    location = /100k.json {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      gzip on;
      gzip_comp_level 5;
      gzip_types application/json;
      gzip_min_length 1024;
      gzip_proxied any;
      gzip_vary on;
    }}
    # A shared cache of every answer for 10 minutes (the cache benchmark).
    location /cached/ {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_cache bench;
      proxy_cache_valid 200 10m;
      proxy_cache_lock on;
    }}
    # WebSocket, as nginx's documentation configures it (the WebSocket benchmark).
    location /ws {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection \"upgrade\";
      proxy_read_timeout 3600s;
    }}
  }}
}}
",
        workers = c.workers,
        dir = dir.display(),
        backend = c.backend,
    )
}

fn haproxy_config(c: &ProxyConfig<'_>, dir: &Path) -> String {
    // Extra routes as HAProxy's documentation recommends for many hosts: a map from host to
    // backend, consulted once per request.
    let routing = if c.extra_routes > 0 {
        let map: String = (0..c.extra_routes)
            .map(|i| format!("r{i}.example.com be_routes\n"))
            .collect();
        std::fs::write(dir.join("hosts.map"), map).expect("write hosts.map");
        format!(
            "use_backend %[req.hdr(host),lower,map({}/hosts.map,be)]\n  ",
            dir.display()
        )
    } else {
        String::new()
    };
    let routes_backend = if c.extra_routes > 0 {
        format!("backend be_routes\n  server s1 {}\n", c.backend)
    } else {
        String::new()
    };
    let bind = match c.front {
        Front::Http1 => format!("bind {}", c.listen),
        Front::H2c => format!("bind {} proto h2", c.listen),
        Front::Tls => format!(
            "bind {} ssl crt {}/bundle.pem ssl-min-ver TLSv1.3 alpn h2,http/1.1",
            c.listen,
            dir.display()
        ),
    };
    format!(
        "global
  nbthread {workers}
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  {bind}
  {routing}default_backend be
backend be
  server s1 {backend}
{routes_backend}",
        workers = c.workers,
        backend = c.backend,
    )
}

fn envoy_config(c: &ProxyConfig<'_>, dir: &Path) -> String {
    // Extra routes as virtual hosts with a prefix route each, before the catch-all.
    let mut vhosts = String::new();
    for i in 0..c.extra_routes {
        vhosts.push_str(&format!(
            "            - {{name: r{i}, domains: [r{i}.example.com], routes: [{{match: {{prefix: /api/v{i}}}, route: {{cluster: backend}}}}]}}\n"
        ));
    }
    let tls = if c.front == Front::Tls {
        format!(
            "
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{filename: {0}/cert.pem}}
              private_key: {{filename: {0}/key.pem}}",
            dir.display()
        )
    } else {
        String::new()
    };
    format!(
        "admin:
  address: {{socket_address: {{address: {ip}, port_value: {admin}}}}}
static_resources:
  listeners:
  - address: {{socket_address: {{address: {ip}, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          upgrade_configs: [{{upgrade_type: websocket}}]
          route_config:
            virtual_hosts:
{vhosts}            - name: all
              domains: [\"*\"]
              routes: [{{match: {{prefix: \"/\"}}, route: {{cluster: backend}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}{tls}
  clusters:
  - name: backend
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {bip}, port_value: {bport}}}}}}}
",
        ip = c.listen.ip(),
        port = c.listen.port(),
        admin = c.admin.port(),
        bip = c.backend.ip(),
        bport = c.backend.port(),
    )
}
