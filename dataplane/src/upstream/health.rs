//! Active health checks: each replica probes every endpoint of a backend whose BackendPolicy
//! asks for it (HTTP, TCP or gRPC), and passes over an endpoint that failed its last
//! `unhealthy_threshold` probes until it passes `healthy_threshold` in a row.
//!
//! An endpoint starts healthy: its EndpointSlice already says it is ready, and a new pod
//! must not wait for a probe before it gets traffic. The state is kept with the endpoint, so
//! it survives EndpointSlice and snapshot updates. One task per backend probes its endpoints
//! concurrently, each probe within its timeout; the task ends when the pool is dropped or its
//! policy no longer asks for checks.

use super::tls::{UpstreamIo, UpstreamTls};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_model::backend::{HealthCheck, Probe, ProxyProtocol};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An endpoint's active-health state.
#[derive(Debug)]
pub(super) struct ActiveHealth {
    unhealthy: AtomicBool,
    /// Probes in a row with the same result as the last.
    streak: AtomicU32,
    last_passed: AtomicBool,
}

impl Default for ActiveHealth {
    fn default() -> Self {
        Self {
            unhealthy: AtomicBool::new(false),
            streak: AtomicU32::new(0),
            last_passed: AtomicBool::new(true),
        }
    }
}

/// What a probe result changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    None,
    /// Out of balancing after this many failures in a row.
    Down,
    /// Back in.
    Up,
}

impl ActiveHealth {
    pub(super) fn is_unhealthy(&self) -> bool {
        self.unhealthy.load(Ordering::Relaxed)
    }

    /// Counts one probe's result against `check`'s thresholds.
    pub(super) fn record(&self, passed: bool, check: &HealthCheck) -> Change {
        let streak = if self.last_passed.swap(passed, Ordering::Relaxed) == passed {
            self.streak
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        } else {
            self.streak.store(1, Ordering::Relaxed);
            1
        };
        let unhealthy = self.is_unhealthy();
        if passed && unhealthy && streak >= check.healthy_threshold {
            self.unhealthy.store(false, Ordering::Relaxed);
            Change::Up
        } else if !passed && !unhealthy && streak >= check.unhealthy_threshold {
            self.unhealthy.store(true, Ordering::Relaxed);
            Change::Down
        } else {
            Change::None
        }
    }

    /// Back to the start (checks were turned off: nothing says the endpoint is down).
    pub(super) fn reset(&self) {
        self.unhealthy.store(false, Ordering::Relaxed);
        self.streak.store(0, Ordering::Relaxed);
        self.last_passed.store(true, Ordering::Relaxed);
    }
}

/// The wait before the next round: the interval plus up to 10 % of it.
pub(super) fn next_round(check: &HealthCheck) -> Duration {
    let jitter = fastrand::u64(0..=check.interval_ms / 10);
    Duration::from_millis(check.interval_ms + jitter)
}

/// Probes the endpoint at `addr` once: whether it passed, within the check's timeout. Over
/// TLS when the backend's requests go over TLS (a BackendTLSPolicy): the handshake, with the
/// policy's checks, is part of the probe.
pub(super) async fn probe(
    addr: SocketAddr,
    check: &HealthCheck,
    tls: Option<&UpstreamTls>,
    proxy: Option<ProxyProtocol>,
) -> bool {
    let timeout = Duration::from_millis(check.timeout_ms);
    tokio::time::timeout(timeout, probe_once(addr, &check.probe, tls, proxy))
        .await
        .unwrap_or(false)
}

async fn probe_once(
    addr: SocketAddr,
    probe: &Probe,
    tls: Option<&UpstreamTls>,
    proxy: Option<ProxyProtocol>,
) -> bool {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return false;
    };
    // A backend that takes the PROXY protocol takes it first on every connection: the
    // gateway's own says it carries no client (v2 LOCAL, v1 UNKNOWN).
    if let Some(version) = proxy
        && tcp
            .write_all(&crate::proxy_protocol::unknown(version))
            .await
            .is_err()
    {
        return false;
    }
    let mut stream = match tls {
        None => UpstreamIo::Plain(tcp),
        Some(tls) => match tls.connect(tcp).await {
            Ok(s) => s,
            Err(_) => return false,
        },
    };
    match probe {
        Probe::Tcp => true,
        Probe::Http {
            method,
            path,
            host,
            expected,
        } => http(&mut stream, addr, method, path, host.as_deref(), expected).await,
        Probe::Grpc { service } => grpc(stream, addr, service).await,
    }
}

/// Most of an answer's head read before giving up on it.
const MAX_HEAD: usize = 16 * 1024;

async fn http(
    stream: &mut UpstreamIo,
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: Option<&str>,
    expected: &[(u16, u16)],
) -> bool {
    let host = host.map_or_else(|| addr.to_string(), str::to_string);
    // Compile checked both; a probe never writes what could split its request.
    let visible = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
    if !visible(&host) || !visible(path) || !visible(method) {
        return false;
    }
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: portico-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = BytesMut::with_capacity(1024);
    let mut read = 0;
    loop {
        // Parse what is there first: an interim answer may have come with the final one.
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => Some((resp.code, len)),
                Ok(httparse::Status::Partial) => None,
                Err(_) => return false,
            }
        };
        match parsed {
            Some((Some(code), len)) if (100..200).contains(&code) => {
                // 1xx: an interim answer; the final one follows.
                let _ = buf.split_to(len);
                continue;
            }
            Some((Some(code), _)) => {
                return expected.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code));
            }
            Some((None, _)) => return false,
            None => {}
        }
        if read >= MAX_HEAD {
            return false;
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => read += n,
        }
    }
}

/// `grpc.health.v1.Health/Check` for `service`: passes when the answer's status is SERVING
/// (1) and its `grpc-status` is 0.
async fn grpc(stream: UpstreamIo, addr: SocketAddr, service: &str) -> bool {
    let Ok((mut sender, conn)) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await
    else {
        return false;
    };
    let driver = tokio::spawn(conn);
    let passed = async {
        let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(health_request(service)))
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        if resp.status() != http::StatusCode::OK {
            return None;
        }
        let trailers_in_head = resp.headers().get("grpc-status").cloned();
        let collected = resp.into_body().collect().await.ok()?;
        let status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status").cloned())
            .or(trailers_in_head)?;
        if status.as_bytes() != b"0" {
            return None;
        }
        Some(serving(&collected.to_bytes()))
    }
    .await
    .unwrap_or(false);
    driver.abort();
    passed
}

/// A length-prefixed `HealthCheckRequest { service = 1 }`.
fn health_request(service: &str) -> Bytes {
    let mut msg = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        msg.push(0x0a);
        let mut len = service.len();
        while len >= 0x80 {
            msg.push(u8::try_from(len & 0x7f).unwrap_or(0) | 0x80);
            len >>= 7;
        }
        msg.push(u8::try_from(len).unwrap_or(0));
        msg.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(msg.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(0).to_be_bytes());
    framed.extend_from_slice(&msg);
    Bytes::from(framed)
}

/// Whether a length-prefixed `HealthCheckResponse` says `status = SERVING` (field 1, 1).
fn serving(body: &[u8]) -> bool {
    let Some((&[0, a, b, c, d], msg)) = body.split_first_chunk::<5>() else {
        return false;
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    let Some(msg) = msg.get(..len) else {
        return false;
    };
    // Field 1, varint: tag 0x08. Other fields are skipped only if they come after it; the
    // response has no other field.
    matches!(msg, [0x08, 1, ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(unhealthy: u32, healthy: u32) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp,
            interval_ms: 1000,
            timeout_ms: 100,
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
        }
    }

    #[test]
    fn thresholds_take_an_endpoint_out_and_bring_it_back() {
        let h = ActiveHealth::default();
        let c = check(3, 2);
        assert_eq!(h.record(false, &c), Change::None);
        assert_eq!(h.record(false, &c), Change::None);
        // A pass in between starts the count again.
        assert_eq!(h.record(true, &c), Change::None);
        assert_eq!(h.record(false, &c), Change::None);
        assert_eq!(h.record(false, &c), Change::None);
        assert_eq!(h.record(false, &c), Change::Down);
        assert!(h.is_unhealthy());
        assert_eq!(h.record(false, &c), Change::None);
        assert_eq!(h.record(true, &c), Change::None);
        assert_eq!(h.record(true, &c), Change::Up);
        assert!(!h.is_unhealthy());
    }

    /// A gRPC health server in this process: `SERVING` for service "up" (and ""), else
    /// `NOT_SERVING`.
    async fn grpc_health_server() -> SocketAddr {
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let body = req.into_body().collect().await.map(|c| c.to_bytes());
                            let asked = body.unwrap_or_default();
                            let status = if asked.len() <= 5 || &asked[7..] == b"up" {
                                1
                            } else {
                                2
                            };
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
                                Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]))),
                                Ok(Frame::trailers(trailers)),
                            ];
                            let mut resp =
                                http::Response::new(StreamBody::new(futures::stream::iter(frames)));
                            resp.headers_mut().insert(
                                "content-type",
                                http::HeaderValue::from_static("application/grpc"),
                            );
                            Ok::<_, std::convert::Infallible>(resp)
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_probe_to_a_backend_that_takes_the_proxy_protocol_says_local_first() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let first = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut head = [0u8; 16];
            s.read_exact(&mut head).await.expect("read");
            head
        });
        let check = HealthCheck {
            probe: Probe::Tcp,
            ..check(1, 1)
        };
        assert!(probe(addr, &check, None, Some(ProxyProtocol::V2)).await);
        let head = first.await.expect("the backend read");
        assert_eq!(
            &head[..],
            &crate::proxy_protocol::unknown(ProxyProtocol::V2)[..]
        );
    }

    #[tokio::test]
    async fn probes_of_each_kind_over_real_sockets() {
        let grpc_server = grpc_health_server().await;
        let with = |probe| HealthCheck {
            probe,
            ..check(1, 1)
        };
        let grpc = |service: &str| {
            with(Probe::Grpc {
                service: service.into(),
            })
        };
        assert!(probe(grpc_server, &grpc(""), None, None).await);
        assert!(probe(grpc_server, &grpc("up"), None, None).await);
        assert!(
            !probe(grpc_server, &grpc("down"), None, None).await,
            "NOT_SERVING"
        );
        // TCP: a listener passes; a port nobody listens on fails.
        let open = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let open_addr = open.local_addr().expect("addr");
        assert!(probe(open_addr, &with(Probe::Tcp), None, None).await);
        drop(open);
        assert!(!probe(open_addr, &with(Probe::Tcp), None, None).await);
        // HTTP: a listener that never answers fails within the timeout; an HTTP/2-only
        // server (the gRPC one) does not speak HTTP/1.1 and fails too.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let http = with(Probe::Http {
            method: "GET".into(),
            path: "/".into(),
            host: None,
            expected: vec![(200, 200)],
        });
        assert!(!probe(silent.local_addr().expect("addr"), &http, None, None).await);
        assert!(!probe(grpc_server, &http, None, None).await);
    }

    #[test]
    fn grpc_messages_are_encoded_and_read() {
        assert_eq!(&health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &health_request("a.B")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        assert!(serving(&[0, 0, 0, 0, 2, 0x08, 1]));
        assert!(!serving(&[0, 0, 0, 0, 2, 0x08, 2]), "NOT_SERVING");
        assert!(
            !serving(&[0, 0, 0, 0, 0]),
            "UNKNOWN (the default, left out)"
        );
        assert!(!serving(&[0, 0, 0, 0, 9, 0x08, 1]), "truncated");
        assert!(!serving(&[1, 0, 0, 0, 2, 0x08, 1]), "compressed");
    }
}
