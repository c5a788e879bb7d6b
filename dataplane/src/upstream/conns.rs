//! Connections to one endpoint, on hyper's `client::conn` (no pool keyed by URI, no
//! connector service, no task per request): HTTP/1.1 keeps its idle connections newest first
//! and a connection goes back to them only once its response body has been read whole;
//! HTTP/2 shares one connection among all requests.

use super::endpoint::{EndpointState, InFlight};
use crate::body::{ClientBody, Lease};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use portico_model::AppProtocol;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

type Request = http::Request<ClientBody>;
type Response = http::Response<Incoming>;

/// Limits on upstream connections.
#[derive(Clone, Copy, Debug)]
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
#[derive(Debug)]
pub enum SendError {
    /// No connection: nothing reached the backend (another endpoint may be tried).
    Connect(io::Error),
    /// The connection failed once the request was on its way.
    Request(hyper::Error),
}

struct Idle {
    sender: http1::SendRequest<ClientBody>,
    since: Instant,
}

/// An endpoint's connections.
#[derive(Default)]
pub(super) struct Conns {
    http1: Mutex<Vec<Idle>>,
    h2: Mutex<Option<http2::SendRequest<ClientBody>>>,
}

impl std::fmt::Debug for Conns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conns")
            .field("idle", &self.http1.lock().len())
            .field("h2", &self.h2.lock().is_some())
            .finish()
    }
}

impl Conns {
    /// The newest idle HTTP/1.1 connection that can take a request; older or closed ones
    /// met on the way are dropped.
    fn checkout(&self, settings: &ConnSettings) -> Option<http1::SendRequest<ClientBody>> {
        let mut idle = self.http1.lock();
        while let Some(c) = idle.pop() {
            if c.sender.is_ready() && c.since.elapsed() < settings.idle_timeout {
                return Some(c.sender);
            }
        }
        None
    }

    fn checkin(&self, sender: http1::SendRequest<ClientBody>, settings: &ConnSettings) {
        let mut idle = self.http1.lock();
        if idle.len() < settings.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections past the idle timeout or closed by the backend.
    pub(super) fn prune(&self, idle_timeout: Duration) {
        self.http1
            .lock()
            .retain(|c| !c.sender.is_closed() && c.since.elapsed() < idle_timeout);
        let mut h2 = self.h2.lock();
        if h2.as_ref().is_some_and(|s| s.is_closed()) {
            *h2 = None;
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TokioIo<TcpStream>> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    stream.set_nodelay(true)?;
    Ok(TokioIo::new(stream))
}

fn spawn_connection<F>(conn: F)
where
    F: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
}

async fn handshake_http1(
    addr: SocketAddr,
    settings: &ConnSettings,
) -> Result<http1::SendRequest<ClientBody>, SendError> {
    let io = connect(addr, settings.connect_timeout)
        .await
        .map_err(SendError::Connect)?;
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| SendError::Connect(io::Error::other(e)))?;
    spawn_connection(conn);
    Ok(sender)
}

async fn handshake_h2(
    addr: SocketAddr,
    settings: &ConnSettings,
) -> Result<http2::SendRequest<ClientBody>, SendError> {
    let io = connect(addr, settings.connect_timeout)
        .await
        .map_err(SendError::Connect)?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(|e| SendError::Connect(io::Error::other(e)))?;
    spawn_connection(conn);
    Ok(sender)
}

/// What a response holds of its endpoint until its body ends.
struct Held {
    _in_flight: InFlight,
    /// The HTTP/1.1 connection, to go back to the idle ones.
    http1: Option<(
        http1::SendRequest<ClientBody>,
        Arc<EndpointState>,
        ConnSettings,
    )>,
}

impl Lease for Held {
    fn end(self: Box<Self>, whole: bool) {
        let Some((mut sender, state, settings)) = self.http1 else {
            return;
        };
        if !whole || sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            state.conns.checkin(sender, &settings);
            return;
        }
        // The connection task has not caught up with the end of the message yet (or the
        // request body is still on its way): it goes back once it is ready, if it ever is.
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(settings.idle_timeout, sender.ready()).await {
                state.conns.checkin(sender, &settings);
            }
        });
    }
}

/// Sends `req` to one endpoint: one attempt. A pooled connection the backend closed before
/// it could carry the request is replaced by a new one (the request never left), which is
/// not a retry.
pub(super) async fn send(
    state: &Arc<EndpointState>,
    addr: SocketAddr,
    protocol: AppProtocol,
    mut req: Request,
    settings: &ConnSettings,
) -> Result<(Response, Box<dyn Lease>), SendError> {
    let in_flight = InFlight::new(state);
    match protocol {
        AppProtocol::Http1 => loop {
            let (mut sender, reused) = match state.conns.checkout(settings) {
                Some(s) => (s, true),
                None => (handshake_http1(addr, settings).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let held = Held {
                        _in_flight: in_flight,
                        http1: Some((sender, state.clone(), *settings)),
                    };
                    return Ok((resp, Box::new(held)));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back,
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        },
        AppProtocol::H2c => loop {
            let shared = state.conns.h2.lock().clone().filter(|s| s.is_ready());
            let (mut sender, reused) = match shared {
                Some(s) => (s, true),
                None => {
                    let s = handshake_h2(addr, settings).await?;
                    *state.conns.h2.lock() = Some(s.clone());
                    (s, false)
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let held = Held {
                        _in_flight: in_flight,
                        http1: None,
                    };
                    return Ok((resp, Box::new(held)));
                }
                // The shared connection is no longer ready: the next pass replaces it.
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back,
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        },
    }
}
