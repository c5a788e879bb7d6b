//! `portico-tcpload`: the L4 benchmark's load generator, in front of `portico-echo --tcp`
//! (which greets each connection with a line, then echoes). One thread, like wrk's single
//! thread in the HTTP benchmarks. `--connections` loops run for `--seconds`, each:
//!
//! - `--mode stream`: one connection that sends `--size` bytes and reads them back, again and
//!   again (throughput); prints `bytes N` (echoed, counted once).
//! - `--mode connect`: connects, reads the greeting, sends `--size` bytes, reads them back and
//!   closes, again and again (connections per second); prints `connections N`.
//! - `--mode tls`: the same through a full TLS 1.3 handshake (no resumption) with server name
//!   `--sni`, verified against `--ca` (handshakes per second through a passthrough proxy);
//!   prints `connections N`.
//!
//! Every mode also prints `errors N`: loops that failed (each fails once and stops; what it
//! did before counts).

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Stream,
    Connect,
    Tls,
}

#[derive(Parser)]
struct Args {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Bytes sent (and echoed) per exchange.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// `--mode tls`: the server name to ask for.
    #[arg(long, default_value = "bench.test")]
    sni: String,
    /// `--mode tls`: PEM CA certificates the backend's certificate must chain to.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
}

/// Reads the echo server's greeting line. Nothing follows it until the client sends, so
/// whole reads take nothing that is not the greeting's.
async fn greeting<S: AsyncRead + Unpin>(s: &mut S) -> anyhow::Result<()> {
    let mut buf = [0u8; 256];
    let mut len = 0;
    loop {
        let Some(rest) = buf.get_mut(len..).filter(|r| !r.is_empty()) else {
            bail!("a greeting longer than {} bytes", buf.len());
        };
        let n = s.read(rest).await?;
        if n == 0 {
            bail!("closed before the greeting ended");
        }
        len += n;
        if buf.get(..len).is_some_and(|read| read.ends_with(b"\n")) {
            return Ok(());
        }
    }
}

/// Sends `msg` and reads as many bytes back, writing and reading at once (a large message
/// does not fit in the socket buffers of every hop).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    msg: &[u8],
    echo: &mut [u8],
) -> anyhow::Result<()> {
    let (mut r, mut w) = tokio::io::split(s);
    let (wrote, read) = tokio::join!(w.write_all(msg), r.read_exact(echo));
    wrote.context("write")?;
    read.context("read the echo")?;
    Ok(())
}

async fn connect(target: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(target).await.context("connect")?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One loop until `until`: bytes echoed (stream) or connections completed, and the error
/// that ended it early, if one did (what it did before still counts).
async fn run(
    args: &Args,
    tls: Option<&tokio_rustls::TlsConnector>,
    until: Instant,
) -> (u64, Option<anyhow::Error>) {
    let mut n = 0u64;
    let error = run_counting(args, tls, until, &mut n).await.err();
    (n, error)
}

async fn run_counting(
    args: &Args,
    tls: Option<&tokio_rustls::TlsConnector>,
    until: Instant,
    n: &mut u64,
) -> anyhow::Result<()> {
    let msg: Vec<u8> = (0..args.size).map(|i| i as u8).collect();
    let mut echo = vec![0u8; args.size];
    match args.mode {
        Mode::Stream => {
            let mut s = connect(args.target).await?;
            greeting(&mut s).await?;
            while Instant::now() < until {
                exchange(&mut s, &msg, &mut echo).await?;
                *n += args.size as u64;
            }
        }
        Mode::Connect => {
            while Instant::now() < until {
                let mut s = connect(args.target).await?;
                greeting(&mut s).await?;
                exchange(&mut s, &msg, &mut echo).await?;
                *n += 1;
            }
        }
        Mode::Tls => {
            let tls = tls.context("no TLS client")?;
            let name = ServerName::try_from(args.sni.clone()).context("--sni")?;
            while Instant::now() < until {
                let s = connect(args.target).await?;
                let mut s = tls.connect(name.clone(), s).await.context("handshake")?;
                greeting(&mut s).await?;
                exchange(&mut s, &msg, &mut echo).await?;
                *n += 1;
            }
        }
    }
    Ok(())
}

fn tls_connector(ca: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).context("--ca")? {
        roots.add(c?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Every connection a full handshake: what a passthrough proxy's clients cost a backend.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let tls = match (args.mode, &args.ca) {
        (Mode::Tls, Some(ca)) => Some(Arc::new(tls_connector(ca)?)),
        (Mode::Tls, None) => bail!("--mode tls needs --ca"),
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (total, errors) = rt.block_on(async {
        let until = Instant::now() + std::time::Duration::from_secs(args.seconds);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.connections {
            let (args, tls) = (args.clone(), tls.clone());
            tasks.spawn(async move { run(&args, tls.as_deref(), until).await });
        }
        let (mut total, mut errors) = (0u64, 0u64);
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok((n, None)) => total += n,
                Ok((n, Some(e))) => {
                    total += n;
                    errors += 1;
                    eprintln!("portico-tcpload: {e:#}");
                }
                Err(e) => {
                    errors += 1;
                    eprintln!("portico-tcpload: {e}");
                }
            }
        }
        (total, errors)
    });
    match args.mode {
        Mode::Stream => println!("bytes {total}"),
        Mode::Connect | Mode::Tls => println!("connections {total}"),
    }
    println!("errors {errors}");
    Ok(())
}
