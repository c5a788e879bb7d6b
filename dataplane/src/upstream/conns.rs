//! Connections to one endpoint (no pool keyed by URI, no connector service, no task per
//! request).
//!
//! - HTTP/1.1 is spoken by [`super::h1`]: the task of the request that holds a connection
//!   writes the request, reads the answer and (through the response body) streams it, so a
//!   request costs no hop between tasks. Idle connections are kept newest first; nobody
//!   drives them, and their socket is looked at when they are checked out.
//! - HTTP/2 (h2c) shares one connection on hyper's `client::conn` among all requests,
//!   driven by a task of its own (streams of many requests interleave on it).

use super::h1::{self, H1Body, H1Conn, H1Pool, Outgoing};
use crate::body::{BoxError, ClientBody, Lease, Upstream};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use portico_model::AppProtocol;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

type Request = http::Request<ClientBody>;
type Response = http::Response<Upstream>;

/// Limits on upstream connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnSettings {
    pub connect_timeout: Duration,
    /// An idle HTTP/1.1 connection older than this is closed.
    pub idle_timeout: Duration,
    /// Idle HTTP/1.1 connections kept per endpoint at most.
    pub max_idle: usize,
}

impl Default for ConnSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            max_idle: 1024,
        }
    }
}

/// How an attempt failed.
pub enum SendError {
    /// No connection: nothing reached the backend (another endpoint may be tried), and the
    /// request, when it was not consumed yet, comes back for that.
    Connect(io::Error, Option<Box<Request>>),
    /// The exchange failed once the request was on its way.
    Request(BoxError),
}

/// An endpoint's connections.
#[derive(Debug, Default)]
pub(super) struct Conns {
    http1: Arc<H1Pool>,
    h2: Mutex<Option<http2::SendRequest<ClientBody>>>,
}

impl Conns {
    /// Closes idle connections past the idle timeout or closed by the backend.
    pub(super) fn prune(&self, idle_timeout: Duration) {
        self.http1.prune(idle_timeout);
        let mut h2 = self.h2.lock();
        if h2.as_ref().is_some_and(|s| s.is_closed()) {
            *h2 = None;
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect_h1(addr: SocketAddr, settings: &ConnSettings) -> io::Result<Box<H1Conn>> {
    let io = connect(addr, settings.connect_timeout).await?;
    Ok(Box::new(H1Conn::new(io)))
}

async fn handshake_h2(
    addr: SocketAddr,
    settings: &ConnSettings,
) -> io::Result<http2::SendRequest<ClientBody>> {
    let io = connect(addr, settings.connect_timeout).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// What an HTTP/2 response holds of its endpoint until its body ends.
struct Held<G> {
    _guard: G,
}

impl<G: Send + Sync> Lease for Held<G> {
    fn end(self: Box<Self>, _whole: bool) {}
}

/// Sends `req` to one endpoint: one attempt. Over HTTP/1.1, a pooled connection the backend
/// closed without a word is replaced by another (or a new one) and the request sent again
/// only when it is idempotent and has no body; over HTTP/2, a shared connection that can no
/// longer take the request (it never left) is replaced. Neither is a retry.
///
/// `guard` goes with the response body and is dropped when it ends (the endpoint's
/// in-flight count).
pub(super) async fn send<G>(
    conns: &Conns,
    addr: SocketAddr,
    protocol: AppProtocol,
    mut req: Request,
    settings: &ConnSettings,
    guard: G,
) -> Result<(Response, Option<Box<dyn Lease>>), SendError>
where
    G: Send + Sync + Unpin + 'static,
{
    match protocol {
        AppProtocol::Http1 => {
            let pool = &conns.http1;
            // The first connection is had before the request is encoded, so that a failure
            // to connect gives the request back for another endpoint.
            let mut first = Some(match pool.checkout(settings.idle_timeout) {
                Some(c) => (c, true),
                // Boxed: a new connection is the rare case, and its future is large.
                None => match Box::pin(connect_h1(addr, settings)).await {
                    Ok(c) => (c, false),
                    Err(e) => return Err(SendError::Connect(e, Some(Box::new(req)))),
                },
            });
            let mut out = Outgoing::new(req);
            let (head, whole, conn) = loop {
                let (mut conn, reused) = match first.take() {
                    Some(c) => c,
                    None => match pool.checkout(settings.idle_timeout) {
                        Some(c) => (c, true),
                        None => match Box::pin(connect_h1(addr, settings)).await {
                            Ok(c) => (c, false),
                            // The endpoint went away under a pooled connection: the request
                            // (resendable, or it would not be here) goes back for another.
                            Err(e) => {
                                let back = out.take_request().map(Box::new);
                                return Err(SendError::Connect(e, back));
                            }
                        },
                    },
                };
                match h1::exchange(&mut conn, &mut out).await {
                    Ok((head, whole)) => break (head, whole, conn),
                    Err(e) if reused && out.resendable && e.nothing_received() => {
                        tracing::debug!(%addr, error = %e, "pooled connection closed by the backend; sending on another");
                    }
                    Err(e) => return Err(SendError::Request(Box::new(e))),
                }
            };
            let body = H1Body::new(conn, &head, whole, pool.clone(), settings.max_idle, guard);
            let resp = http::Response::from_parts(head.parts, Upstream::Conn(Box::new(body)));
            Ok((resp, None))
        }
        AppProtocol::H2c => loop {
            let shared = conns.h2.lock().clone().filter(|s| s.is_ready());
            let (mut sender, reused) = match shared {
                Some(s) => (s, true),
                None => {
                    let s = match Box::pin(handshake_h2(addr, settings)).await {
                        Ok(s) => s,
                        Err(e) => return Err(SendError::Connect(e, Some(Box::new(req)))),
                    };
                    *conns.h2.lock() = Some(s.clone());
                    (s, false)
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let resp = resp.map(Upstream::Hyper);
                    // The guard is moved in only once the request is sent.
                    let held = Held { _guard: guard };
                    return Ok((resp, Some(Box::new(held))));
                }
                // The shared connection is no longer ready: the next pass replaces it.
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back,
                    _ => return Err(SendError::Request(Box::new(e.into_error()))),
                },
            }
        },
    }
}
