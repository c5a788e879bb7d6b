//! `portico-wsload`: the WebSocket benchmark's load generator. Each of `--connections`
//! connections opens a WebSocket at `--target` (`Host: --host`, path `--path`), then sends a
//! masked binary message of `--size` bytes and reads its echo, again and again, for
//! `--seconds`; prints the messages echoed in all as `messages N`. One thread, like wrk's
//! single thread in the other benchmarks.

use anyhow::{Context, bail};
use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, default_value = "bench.test")]
    host: String,
    #[arg(long, default_value = "/ws")]
    path: String,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Payload bytes per message (at most 65535).
    #[arg(long, default_value_t = 128)]
    size: u16,
}

/// A masked client frame carrying `size` bytes (binary, FIN).
fn message(size: u16) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x82];
    if size < 126 {
        f.push(0x80 | size as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&size.to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend((0..usize::from(size)).map(|i| (i as u8) ^ mask[i % 4]));
    f
}

async fn connection(args: &Args, until: Instant) -> anyhow::Result<u64> {
    let mut s = TcpStream::connect(args.target).await.context("connect")?;
    s.set_nodelay(true)?;
    let handshake = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        args.path, args.host
    );
    s.write_all(handshake.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            bail!("closed during the handshake");
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        bail!("no 101: {}", String::from_utf8_lossy(&head));
    }
    let msg = message(args.size);
    let echo_len = usize::from(args.size) + if args.size < 126 { 2 } else { 4 };
    let mut echo = vec![0u8; echo_len];
    let mut n = 0u64;
    while Instant::now() < until {
        s.write_all(&msg).await?;
        s.read_exact(&mut echo).await?;
        n += 1;
    }
    Ok(n)
}

fn main() -> anyhow::Result<()> {
    let args = std::sync::Arc::new(Args::parse());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let until = Instant::now() + Duration::from_secs(args.seconds);
        let tasks: Vec<_> = (0..args.connections)
            .map(|_| {
                let args = args.clone();
                tokio::spawn(async move { connection(&args, until).await })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await??;
        }
        println!("messages {total}");
        Ok(())
    })
}
