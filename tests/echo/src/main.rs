//! `portico-echo`: a backend for the demo, the tests and the benchmarks.
//!
//! Answers every request with JSON describing it: its own name, method, path, query, host,
//! protocol version and headers (name → list of values). Query parameters steer it:
//! `delay_ms=N` waits before answering, `status=N` sets the status, `size=N` answers N bytes
//! of `x` instead of JSON. `GET /__stats` reports how many requests it answered (not counted).
//! For the cache tests: `cc=V` answers `Cache-Control: V`, `vary=H` `Vary: H`, `tag=T`
//! `Cache-Tag: T`, `cookie=1` a `Set-Cookie`, `etag=E` `ETag: "E"` (and 304 to a matching
//! `If-None-Match`); values are percent-decoded. The JSON carries `count`, the number of
//! requests answered so far, so a test can tell answers apart.
//! Serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on the same port.
//!
//! A WebSocket handshake (any path) opens an echo of every message (`ws.rs`).
//!
//! With `--tls-cert` and `--tls-key` it serves HTTPS (ALPN `h2` and `http/1.1`), and
//! reports the server name the client asked for as the request header `x-echo-tls-sni`
//! (`-` for none), and with `--tls-client-ca` whether the client presented a certificate as
//! `x-echo-tls-client-cert` (those a client sends are dropped first).
//!
//! `--tcp` serves plain TCP instead: the name and a newline, then every byte sent comes back;
//! with `--tls-cert` and `--tls-key`, behind TLS, greeting with the name and the SNI asked for.
//! `--udp` serves UDP: each datagram is answered, from the address it was sent to, with the
//! name, a space and the datagram.
//!
//! `--fixed` turns it into the benchmarks' backend: a fixed answer from memory and nothing
//! else, so that it costs as little as possible per request (`/100k` answers 100 KiB,
//! `/100k.json` 100 KiB of JSON lines, any other path 13 bytes).

mod logging;
mod ws;

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "portico-echo",
    about = "Echo backend for Portico's demo and tests"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Name reported in every answer.
    #[arg(long, default_value = "echo")]
    name: String,
    /// Answer every request with a fixed body (the benchmarks' backend).
    #[arg(long)]
    fixed: bool,
    /// Plain TCP instead of HTTP: each connection is greeted with the name and a newline,
    /// then gets back every byte it sends (the TCPRoute tests' backend).
    #[arg(long)]
    tcp: bool,
    /// UDP instead of HTTP: each datagram is answered with the name, a space and the
    /// datagram (the UDPRoute tests' backend).
    #[arg(long, conflicts_with_all = ["tcp", "fixed"])]
    udp: bool,
    /// Terminate TLS first with this PEM certificate chain (and `--tls-key`): HTTPS, or with
    /// `--tcp` a TLS echo that greets with the name and the server name the client asked for
    /// (the TLS passthrough tests' backend).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// HTTPS: ask clients for a certificate signed by these PEM CAs (one is not required; a
    /// wrong one fails the handshake), and report `x-echo-tls-client-cert: presented|none`.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,
    /// Runtime worker threads (default: one per core). The benchmarks pin the backend to one
    /// core and give it one thread, so its threads do not contend for that core.
    #[arg(long)]
    workers: Option<usize>,
    /// `error`, `warn`, `info` or `debug` (each request and connection error), or any
    /// `RUST_LOG` filter. Default: `RUST_LOG`, else `warn`.
    #[arg(long)]
    log_level: Option<String>,
}

/// The fixed answers of `--fixed`.
struct Fixed {
    small: Bytes,
    large: Bytes,
    /// 100 KiB of JSON lines, compressible as API answers are (the compression benchmark).
    json: Bytes,
}

/// Lines of made-up catalogue JSON, `size` bytes (cut at the last whole line).
fn catalogue(size: usize) -> Bytes {
    let mut out = String::with_capacity(size + 128);
    let mut i: u64 = 0;
    while out.len() < size {
        i += 1;
        let price = (i * 7919) % 100_000;
        out.push_str(&format!(
            "{{\"id\":{i},\"sku\":\"P-{:06}\",\"name\":\"item {i}\",\"price\":{}.{:02},\"stock\":{},\"tags\":[\"t{}\",\"t{}\"]}}\n",
            (i * 2_654_435_761) % 1_000_000,
            price / 100,
            price % 100,
            (i * 31) % 500,
            i % 17,
            i % 5
        ));
    }
    out.truncate(size);
    Bytes::from(out)
}

fn fixed(req: &Request<Incoming>, f: &Fixed) -> Response<Full<Bytes>> {
    // By the last segment, so a benchmark's own prefix (`/cached/100k`) keeps the size.
    let last = req.uri().path().rsplit('/').next().unwrap_or("");
    let (body, content_type) = match last {
        "100k" => (f.large.clone(), "text/plain"),
        "100k.json" => (f.json.clone(), "application/json"),
        _ => (f.small.clone(), "text/plain"),
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// A query parameter's text, percent-decoded (`%2C` is a comma).
fn text_param(query: Option<&str>, name: &str) -> Option<String> {
    let raw = query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| {
            bytes
                .get(j)
                .and_then(|b| (*b as char).to_digit(16))
                .and_then(|d| u8::try_from(d).ok())
        };
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The caching headers the query asks for (see the module's doc).
fn cache_headers(query: Option<&str>, resp: &mut http::HeaderMap) {
    let mut set = |name: header::HeaderName, value: String| {
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            resp.append(name, v);
        }
    };
    if let Some(v) = text_param(query, "cc") {
        set(header::CACHE_CONTROL, v);
    }
    if let Some(v) = text_param(query, "vary") {
        set(header::VARY, v);
    }
    if let Some(v) = text_param(query, "tag") {
        set(header::HeaderName::from_static("cache-tag"), v);
    }
    if let Some(v) = text_param(query, "etag") {
        set(header::ETAG, format!("\"{v}\""));
    }
    if param(query, "cookie") == Some(1) {
        set(header::SET_COOKIE, "id=42; Path=/".to_string());
    }
}

fn param(query: Option<&str>, name: &str) -> Option<u64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

async fn handle(
    req: Request<Incoming>,
    name: Arc<str>,
    count: Arc<AtomicU64>,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/__stats" {
        let body = json!({"name": &*name, "requests": count.load(Ordering::Relaxed)});
        return json_response(StatusCode::OK, &body);
    }
    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
    let query = req.uri().query().map(str::to_string);
    if let Some(ms) = param(query.as_deref(), "delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    if let Some(tag) = text_param(query.as_deref(), "etag")
        && req
            .headers()
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v.as_bytes() == format!("\"{tag}\"").as_bytes())
    {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        cache_headers(query.as_deref(), r.headers_mut());
        return r;
    }
    let status = param(query.as_deref(), "status")
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if let Some(size) = param(query.as_deref(), "size") {
        let body = Bytes::from(vec![b'x'; usize::try_from(size.min(64 << 20)).unwrap_or(0)]);
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        cache_headers(query.as_deref(), r.headers_mut());
        return r;
    }
    let mut headers = Map::new();
    for (k, v) in req.headers() {
        let entry = headers
            .entry(k.as_str())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = entry {
            list.push(Value::String(
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let protocol = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let answer = json!({
        "name": &*name,
        "method": method,
        "path": path,
        "query": query,
        "host": host,
        "protocol": protocol,
        "headers": headers,
        "bodyLength": body.len(),
        "count": n,
    });
    let mut r = json_response(status, &answer);
    cache_headers(query.as_deref(), r.headers_mut());
    r
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    logging::init(args.log_level.as_deref());
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.workers {
        rt.worker_threads(n.max(1));
    }
    rt.enable_all().build()?.block_on(serve(args))
}

/// A TLS server configuration from PEM files.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    tls_acceptor_alpn(cert, key, &[], None)
}

/// The same, offering `alpn`.
fn tls_acceptor_alpn(
    cert: &std::path::Path,
    key: &std::path::Path,
    alpn: &[Vec<u8>],
    client_ca: Option<&std::path::Path>,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?;
    let config = match client_ca {
        None => config.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(path)? {
                roots.add(c?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .allow_unauthenticated()
            .build()?;
            config.with_client_cert_verifier(verifier)
        }
    }
    .with_single_cert(chain, key)?;
    let mut config = config;
    config.alpn_protocols = alpn.to_vec();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// `--tcp`: the name, then an echo of every byte, per connection; with TLS, the name and the
/// server name the client asked for (`-` for none).
async fn serve_tcp(
    listener: tokio::net::TcpListener,
    name: Arc<str>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // An echo answers at once: no Nagle delay behind the peer's delayed ACK.
        let _ = stream.set_nodelay(true);
        let (name, tls) = (name.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => echo_stream(stream, format!("{name}\n")).await,
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let sni = stream.get_ref().1.server_name().unwrap_or("-").to_string();
                    echo_stream(stream, format!("{name} {sni}\n")).await;
                }
            }
        });
    }
}

async fn echo_stream<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    greeting: String,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.write_all(greeting.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

/// `--udp`: every datagram answered with the name, a space and the datagram.
async fn serve_udp(args: Args) -> anyhow::Result<()> {
    let socket = tokio::net::UdpSocket::bind(args.listen).await?;
    println!(
        "portico-echo {} listening on udp {}",
        args.name,
        socket.local_addr()?
    );
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let mut answer = Vec::with_capacity(args.name.len() + 1 + n);
        answer.extend_from_slice(args.name.as_bytes());
        answer.push(b' ');
        answer.extend_from_slice(&buf[..n]);
        let _ = socket.send_to(&answer, from).await;
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    if args.udp {
        return serve_udp(args).await;
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "portico-echo {} listening on {}",
        args.name,
        listener.local_addr()?
    );
    let name: Arc<str> = args.name.into();
    if args.tcp {
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
            _ => None,
        };
        return serve_tcp(listener, name, tls).await;
    }
    let fixed_answers = args.fixed.then(|| {
        Arc::new(Fixed {
            small: Bytes::from_static(b"hello, world\n"),
            large: Bytes::from(vec![b'x'; 100 * 1024]),
            json: catalogue(100 * 1024),
        })
    });
    let count = Arc::new(AtomicU64::new(0));
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let https = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor_alpn(
            cert,
            key,
            &[b"h2".to_vec(), b"http/1.1".to_vec()],
            args.tls_client_ca.as_deref(),
        )?),
        _ => None,
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (name, count, builder) = (name.clone(), count.clone(), builder.clone());
        let fixed_answers = fixed_answers.clone();
        let https = https.clone();
        tokio::spawn(async move {
            let (io, sni) = match https {
                None => (Io::Plain(stream), None),
                Some(acceptor) => {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let conn = tls.get_ref().1;
                    let sni = conn.server_name().unwrap_or("-").to_string();
                    let client = if conn.peer_certificates().is_some_and(|c| !c.is_empty()) {
                        "presented"
                    } else {
                        "none"
                    };
                    (Io::Tls(Box::new(tls)), Some((sni, client)))
                }
            };
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let (name, count) = (name.clone(), count.clone());
                let fixed_answers = fixed_answers.clone();
                req.headers_mut().remove("x-echo-tls-sni");
                req.headers_mut().remove("x-echo-tls-client-cert");
                if let Some((sni, client)) = &sni {
                    if let Ok(v) = http::HeaderValue::from_str(sni) {
                        req.headers_mut().insert("x-echo-tls-sni", v);
                    }
                    req.headers_mut().insert(
                        "x-echo-tls-client-cert",
                        http::HeaderValue::from_static(client),
                    );
                }
                async move {
                    if let Some(key) = ws::key(&req) {
                        return Ok::<_, Infallible>(ws::answer(req, &key));
                    }
                    let (method, path) = (req.method().clone(), req.uri().path().to_string());
                    let resp = match fixed_answers {
                        Some(f) => fixed(&req, &f),
                        None => handle(req, name, count).await,
                    };
                    tracing::debug!(%method, path, status = resp.status().as_u16(), "answered");
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

/// A connection as accepted: plain, or after a TLS handshake.
enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Tls(s) => std::pin::Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => std::pin::Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
