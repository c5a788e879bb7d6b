//! Test support for cross-process tests: builds the binaries once, starts real `portico` and
//! `portico-echo` processes on their own 127.0.0.x addresses, speaks HTTP to them over real
//! sockets, and cleans every process and directory up on drop. [`cluster`] adds the real
//! Kubernetes control plane.

pub mod auth;
pub mod cluster;
pub mod netns;
pub mod ratelimit;
pub mod raw;
pub mod redis;
pub mod scenario;
pub mod tls;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Paths of the binaries under test, built once per test process.
pub struct Binaries {
    pub portico: PathBuf,
    pub echo: PathBuf,
    pub authd: PathBuf,
    pub controller: PathBuf,
}

/// The binaries come from `PORTICO_BIN_DIR` when it is set (`make test` builds them once and
/// sets it); otherwise this runs `cargo build` so that a plain `cargo test` never tests stale
/// binaries. (Building from inside the tests resolves features without dev-dependencies,
/// which relinks the workspace; that is why `make test` builds first.)
pub fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = match std::env::var_os("PORTICO_BIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => build_binaries(),
        };
        let bins = Binaries {
            portico: dir.join("portico"),
            echo: dir.join("portico-echo"),
            authd: dir.join("portico-authd"),
            controller: dir.join("portico-controller"),
        };
        for b in [&bins.portico, &bins.echo, &bins.authd, &bins.controller] {
            assert!(b.exists(), "{} is missing; run `make build`", b.display());
        }
        bins
    })
}

fn build_binaries() -> PathBuf {
    // target/debug/deps/<test> → target/debug
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--workspace", "--bins"]);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "building the binaries failed");
    dir
}

/// A fresh loopback address for one test, so tests run in parallel without port clashes.
/// The second octet comes from the process id, so parallel test binaries differ too.
pub fn loopback_ip() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let b = u8::try_from(10 + pid % 240).expect("fits");
    let c = u8::try_from(1 + (n / 250) % 250).expect("fits");
    let d = u8::try_from(2 + n % 250).expect("fits");
    IpAddr::V4(Ipv4Addr::new(127, b, c, d))
}

/// A port free on `ip` right now, and not handed out before by this process: the probe's
/// socket closes at once, so the kernel may offer the same port to the next probe, and two
/// listeners of one test (a Gateway's and the admin server's) then collide.
pub fn free_port(ip: IpAddr) -> u16 {
    // Below Linux's ephemeral range (32768-60999): no outgoing connection and no listener on
    // port 0 can take the port between this probe and its use (one did: a backend connection
    // from the gateway under test, and the listener failed with "Address already in use").
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % COUNT;
    for _ in 0..COUNT {
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = u16::try_from(FIRST + (start + k) % COUNT).expect("a port");
        // Free for both transports (a UDP test takes it for a UDP socket).
        if TcpListener::bind((ip, port)).is_ok() && std::net::UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "portico-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) {
        // Write then rename, as editors and ConfigMap updates do, so a reader never sees half.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, self.0.join(name)).expect("rename");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop, its output in a log file.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[String]) -> Self {
        Self::spawn_with_env(name, program, args, &[])
    }

    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &Path)],
    ) -> Self {
        let dir = TempDir::new(name);
        let log = dir.path().join("output.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("PORTICO_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        Self {
            name: name.into(),
            child,
            log,
            _dir: dir,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
    }

    /// Kills the process at once (no clean-up on its side) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit; `None` if it did not within the deadline.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} output ----\n{}", self.name, self.logs());
        }
    }
}

/// Polls `f` until it returns `Some`, failing the test after [`DEADLINE`].
pub async fn await_some<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    await_some_within(what, DEADLINE, f).await
}

/// As [`await_some`], with a deadline of its own (for what runs on another component's
/// schedule, such as the garbage collector's discovery of a new CRD).
pub async fn await_some_within<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Standalone YAML: our GatewayClass `portico` and a Gateway `name` in `default` with
/// `spec_extra` (YAML lines at two spaces, such as a `tls:` block) and `listeners` (YAML list
/// items at two spaces, one per line).
pub fn gateway_yaml(name: &str, spec_extra: &str, listeners: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portico}}
spec: {{controllerName: portico.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: default}}
spec:
  gatewayClassName: portico
{spec_extra}  listeners:
{listeners}"
    )
}

pub fn wait_port(addr: SocketAddr) {
    let end = Instant::now() + DEADLINE;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < end, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running echo backend.
pub struct Echo {
    pub addr: SocketAddr,
    pub proc: Proc,
}

impl Echo {
    pub fn start(name: &str) -> Self {
        let ip = loopback_ip();
        Self::start_at(name, SocketAddr::new(ip, free_port(ip)))
    }

    /// A plain TCP echo (`--tcp`): greets each connection with `name` and a newline, then
    /// sends back every byte.
    pub fn start_tcp(name: &str) -> Self {
        Self::start_tcp_with(name, &[])
    }

    /// A TCP echo behind TLS with `cert_pem` and `key_pem` (written to `dir`): greets with
    /// `name` and the SNI it was asked for (`-` for none).
    pub fn start_tls(name: &str, dir: &TempDir, cert_pem: &str, key_pem: &str) -> Self {
        dir.write(&format!("{name}.crt"), cert_pem);
        dir.write(&format!("{name}.key"), key_pem);
        let path = |ext: &str| {
            dir.path()
                .join(format!("{name}.{ext}"))
                .display()
                .to_string()
        };
        Self::start_tcp_with(
            name,
            &[
                "--tls-cert".into(),
                path("crt"),
                "--tls-key".into(),
                path("key"),
            ],
        )
    }

    /// An HTTPS echo with `cert_pem` and `key_pem` (written to `dir`): the usual JSON,
    /// with the server name the client asked for in the header `x-echo-tls-sni`; with
    /// `client_ca` (PEM), it asks for a client certificate signed by it and says in
    /// `x-echo-tls-client-cert` whether one was presented.
    pub fn start_https(
        name: &str,
        dir: &TempDir,
        cert_pem: &str,
        key_pem: &str,
        client_ca: Option<&str>,
    ) -> Self {
        dir.write(&format!("{name}.crt"), cert_pem);
        dir.write(&format!("{name}.key"), key_pem);
        let path = |ext: &str| {
            dir.path()
                .join(format!("{name}.{ext}"))
                .display()
                .to_string()
        };
        let ip = loopback_ip();
        let addr = SocketAddr::new(ip, free_port(ip));
        let mut args = vec![
            "--listen".into(),
            addr.to_string(),
            "--name".into(),
            name.into(),
            "--tls-cert".into(),
            path("crt"),
            "--tls-key".into(),
            path("key"),
        ];
        if let Some(ca) = client_ca {
            dir.write(&format!("{name}-client-ca.crt"), ca);
            args.push("--tls-client-ca".into());
            let file = dir.path().join(format!("{name}-client-ca.crt"));
            args.push(file.display().to_string());
        }
        let proc = Proc::spawn(name, &binaries().echo, &args);
        wait_port(addr);
        Self { addr, proc }
    }

    fn start_tcp_with(name: &str, extra: &[String]) -> Self {
        let ip = loopback_ip();
        let addr = SocketAddr::new(ip, free_port(ip));
        let mut args = vec![
            "--listen".into(),
            addr.to_string(),
            "--name".into(),
            name.into(),
            "--tcp".into(),
        ];
        args.extend_from_slice(extra);
        let proc = Proc::spawn(name, &binaries().echo, &args);
        wait_port(addr);
        Self { addr, proc }
    }

    /// A UDP echo (`--udp`): answers each datagram with `name`, a space and the datagram,
    /// from the address it was sent to. Returns once it answers.
    pub fn start_udp(name: &str) -> Self {
        let ip = loopback_ip();
        let addr = SocketAddr::new(ip, free_port(ip));
        let proc = Proc::spawn(
            name,
            &binaries().echo,
            &[
                "--listen".into(),
                addr.to_string(),
                "--name".into(),
                name.into(),
                "--udp".into(),
            ],
        );
        let probe = std::net::UdpSocket::bind((ip, 0)).expect("a UDP socket");
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("a read timeout");
        let end = Instant::now() + DEADLINE;
        let mut buf = [0u8; 256];
        loop {
            let _ = probe.send_to(b"ping", addr);
            if probe.recv_from(&mut buf).is_ok() {
                break;
            }
            assert!(Instant::now() < end, "no UDP echo on {addr}");
        }
        Self { addr, proc }
    }

    /// On `addr` (one a killed echo had, to bring it back).
    pub fn start_at(name: &str, addr: SocketAddr) -> Self {
        let proc = Proc::spawn(
            name,
            &binaries().echo,
            &[
                "--listen".into(),
                addr.to_string(),
                "--name".into(),
                name.into(),
            ],
        );
        wait_port(addr);
        Self { addr, proc }
    }

    /// Requests this backend has answered (read from the backend itself).
    pub async fn requests(&self) -> u64 {
        let r = HttpClient::new().get(self.addr, "echo", "/__stats").await;
        r.json()["requests"].as_u64().unwrap_or_default()
    }
}

/// A running `portico standalone` serving a config directory.
pub struct Portico {
    pub ip: IpAddr,
    pub admin: SocketAddr,
    pub config: TempDir,
    pub proc: Proc,
}

impl Portico {
    /// Starts on a fresh loopback address (the default bind address) and waits for
    /// `/readyz`. `files` are written into the config directory first.
    pub async fn start(files: &[(&str, &str)], extra_args: &[&str]) -> Self {
        let ip = loopback_ip();
        Self::start_on(ip, files, extra_args).await
    }

    pub async fn start_on(ip: IpAddr, files: &[(&str, &str)], extra_args: &[&str]) -> Self {
        Self::start_with_env(ip, files, extra_args, &[]).await
    }

    /// As [`Portico::start_on`], with environment variables naming files (such as
    /// `SSL_CERT_FILE`).
    pub async fn start_with_env(
        ip: IpAddr,
        files: &[(&str, &str)],
        extra_args: &[&str],
        env: &[(&str, &Path)],
    ) -> Self {
        let config = TempDir::new("config");
        for (name, text) in files {
            config.write(name, text);
        }
        let admin = SocketAddr::new(ip, free_port(ip));
        let mut args: Vec<String> = vec![
            "standalone".into(),
            "--config".into(),
            config.path().display().to_string(),
            "--bind-address".into(),
            ip.to_string(),
            "--admin-address".into(),
            admin.to_string(),
            "--watch-interval-ms".into(),
            "100".into(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let proc = Proc::spawn_with_env("portico", &binaries().portico, &args, env);
        let p = Self {
            ip,
            admin,
            config,
            proc,
        };
        let client = HttpClient::new();
        await_some("portico /readyz", || async {
            client
                .try_get(p.admin, "admin", "/readyz", &[])
                .await
                .filter(|r| r.status == StatusCode::OK)
        })
        .await;
        p
    }

    /// Runs `portico standalone` on the configuration in `config`, which it must refuse to
    /// start with; returns what it printed to stderr.
    pub fn refused_start(config: &Path) -> String {
        let out = Command::new(&binaries().portico)
            .args(["standalone", "--config"])
            .arg(config)
            .args([
                "--bind-address",
                "127.0.0.1",
                "--admin-address",
                "127.0.0.1:0",
            ])
            .output()
            .expect("run portico standalone");
        assert!(!out.status.success(), "portico started on {config:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }

    /// Waits until the process has logged `needle`.
    pub async fn await_logged(&self, needle: &str) {
        await_some(&format!("{needle:?} in the log"), || async {
            self.proc.logs().contains(needle).then_some(())
        })
        .await;
    }

    pub async fn metrics(&self) -> String {
        HttpClient::new()
            .get(self.admin, "admin", "/metrics")
            .await
            .text()
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: Version,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// For echo answers: which backend answered.
    pub fn backend(&self) -> String {
        self.json()["name"].as_str().unwrap_or("-").to_string()
    }

    /// For echo answers: the first value of a request header the backend received.
    pub fn seen_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name][0].as_str().map(str::to_string)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A pooled HTTP/1.1 (or h2c) client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    pub async fn try_request(
        &self,
        method: &str,
        addr: SocketAddr,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<Resp> {
        self.try_send(method, addr, host, path, headers, Bytes::new())
            .await
    }

    /// Sends a request with a body.
    pub async fn try_send(
        &self,
        method: &str,
        addr: SocketAddr,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Option<Resp> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header(http::header::HOST, host);
        for (k, v) in headers {
            b = b.header(
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            );
        }
        let req = b.body(Full::new(body)).ok()?;
        let resp = tokio::time::timeout(DEADLINE, self.client.request(req))
            .await
            .ok()?
            .ok()?;
        let status = resp.status();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(Resp {
            status,
            headers,
            body,
            version,
        })
    }

    pub async fn try_get(
        &self,
        addr: SocketAddr,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<Resp> {
        self.try_request("GET", addr, host, path, headers).await
    }

    pub async fn get(&self, addr: SocketAddr, host: &str, path: &str) -> Resp {
        self.get_with(addr, host, path, &[]).await
    }

    pub async fn get_with(
        &self,
        addr: SocketAddr,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Resp {
        self.try_get(addr, host, path, headers)
            .await
            .unwrap_or_else(|| panic!("GET http://{host}{path} via {addr} failed"))
    }
}

/// Sends raw bytes on a new connection and returns everything read until the server closes
/// the connection or stops sending for a second.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    // The server may answer and close before reading everything; that is fine.
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The YAML files of `deploy/examples/<name>` as committed, with `replacements` (fixed
/// addresses and ports moved to a test's own) applied, as (file name, text).
pub fn example_files(name: &str, replacements: &[(&str, String)]) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples")
        .join(name);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let mut text = std::fs::read_to_string(&path).expect("read example");
            for (from, to) in replacements {
                text = text.replace(from, to);
            }
            let file = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            files.push((file, text));
        }
    }
    files.sort();
    files
}
