//! Helpers for rate-limit tests: policies as YAML, requests from a chosen source address,
//! and counting what got through.

use crate::auth::HOST;
use crate::{HttpClient, Resp};
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A RateLimitPolicy on HTTPRoute `target`.
pub fn limit_policy(name: &str, target: &str, body: &str) -> String {
    crate::auth::policy_of_kind("RateLimitPolicy", name, target, body)
}

/// Sends `n` GETs one after the other and returns how many were admitted (200) and how many
/// refused (429); any other status fails the test.
pub async fn count(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        let r = client.get_with(addr, HOST, path, headers).await;
        match r.status.as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected {s} from {path}: {}", r.text()),
        }
    }
    (ok, limited)
}

/// One GET from source address `from` (a connection of its own); returns the status.
pub async fn status_from(
    from: IpAddr,
    to: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> u16 {
    request_from(from, "GET", to, path, headers).await
}

/// One request from source address `from`; returns the status.
pub async fn request_from(
    from: IpAddr,
    method: &str,
    to: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind source");
    let mut s = socket.connect(to).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out);
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:.200}"))
}

/// The value of a `RateLimit` item's parameter (`r` or `t`), from a response.
pub fn rate_param(r: &Resp, param: &str) -> Option<u64> {
    let v = r.header("ratelimit")?;
    v.split(';')
        .find_map(|p| p.trim().strip_prefix(&format!("{param}=")))
        .and_then(|n| n.split(',').next())
        .and_then(|n| n.trim().parse().ok())
}
