//! HTTP/1.1 as bytes on a socket, for the adversarial suites: requests no well-behaved client
//! library would send, and the readings of a path that different backends would make.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read off a socket.
#[derive(Debug, Default)]
pub struct RawResp {
    /// 0 when nothing parseable came back (the connection was closed or reset).
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    /// Everything read, for responses to pipelined requests.
    pub all: String,
}

impl RawResp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// How many responses the bytes hold (status lines).
    pub fn responses(&self) -> usize {
        self.all.matches("HTTP/1.1 ").count()
    }
}

/// Sends `bytes` on a new connection and reads until the server closes it (or 5 s pass).
/// Send `Connection: close` for one answer without waiting.
pub async fn send(addr: SocketAddr, bytes: &[u8]) -> RawResp {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return RawResp::default();
    };
    // The server may answer and close before reading everything; that is fine.
    let _ = s.write_all(bytes).await;
    read_all(&mut s, Duration::from_secs(5)).await
}

/// Reads until EOF, an error or `idle` without a byte.
pub async fn read_all(s: &mut TcpStream, idle: Duration) -> RawResp {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(idle, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    parse(&out)
}

fn parse(out: &[u8]) -> RawResp {
    let all = String::from_utf8_lossy(out).into_owned();
    let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return RawResp {
            all,
            ..RawResp::default()
        };
    };
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rest = &out[end + 4..];
    let mut r = RawResp {
        status,
        head,
        body: Vec::new(),
        all,
    };
    r.body = match r
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) => rest[..n.min(rest.len())].to_vec(),
        None if r
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked")) =>
        {
            dechunk(rest)
        }
        None => rest.to_vec(),
    };
    r
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        b = &b[line_end + 2..];
        if size == 0 || b.len() < size {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}

/// A GET for `target` with `Host: host`, closing after the answer.
pub fn get(target: &str, host: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut s = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3986 §5.2.4 on a decoded path, empty segments merged (as most servers do); a
/// trailing slash (also one left by a final dot segment) is kept: `/a/` is not `/a`.
fn remove_dots(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split(['/', '\\']).collect();
    let trailing = matches!(segs.last(), Some(&"" | &"." | &".."));
    for seg in segs {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = format!("/{}", out.join("/"));
    if trailing && p.len() > 1 {
        p.push('/');
    }
    p
}

/// How a servlet container (Tomcat, Jetty, Spring) reads a request path: `;parameters`
/// removed from each segment, then percent-decoded, then dot segments resolved.
pub fn servlet_view(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let stripped: Vec<&str> = path
        .split('/')
        .map(|seg| seg.split(';').next().unwrap_or_default())
        .collect();
    remove_dots(&percent_decode(&stripped.join("/")))
}

/// How a plain server (nginx, Go, Node) reads it: decoded, dot segments resolved, parameters
/// kept as part of the segment.
pub fn plain_view(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    remove_dots(&percent_decode(path))
}

/// A backend on a fresh loopback address that reads one request head per connection and
/// answers with `script`: each item is written after its delay.
pub async fn scripted_backend(script: Vec<(Duration, &'static [u8])>) -> SocketAddr {
    let ip = crate::loopback_ip();
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let script = std::sync::Arc::new(script);
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                for (delay, bytes) in script.iter() {
                    tokio::time::sleep(*delay).await;
                    if c.write_all(bytes).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            });
        }
    });
    addr
}
