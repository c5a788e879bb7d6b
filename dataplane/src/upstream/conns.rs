//! Connections to one endpoint, on hyper's `client::conn` (no pool keyed by URI, no
//! connector service, no task per request).
//!
//! - HTTP/1.1: **no task per connection either.** The task of the request that holds a
//!   connection drives it (writes the request, reads the response, streams the body through
//!   [`Lease::poll_io`]), so a request costs no hop between tasks; nobody drives an idle
//!   connection, whose socket is looked at when it is checked out (a backend that closed it
//!   is noticed then, and by the sweep). Idle connections are kept newest first and a
//!   connection goes back to them only once its response body has been read whole.
//! - HTTP/2 shares one connection among all requests, driven by a task of its own (streams
//!   of many requests interleave on it).

use super::endpoint::{EndpointState, InFlight};
use crate::body::{ClientBody, Lease};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use portico_model::AppProtocol;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
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

/// An HTTP/1.1 connection: the handle requests are sent with and the connection state
/// machine, polled by whoever holds them.
struct Http1 {
    sender: http1::SendRequest<ClientBody>,
    /// `None` once the connection ended. Boxed: the state machine is large, and this value
    /// moves in and out of the idle list with every request.
    conn: Option<Box<http1::Connection<TokioIo<TcpStream>, ClientBody>>>,
}

impl Http1 {
    /// Drives the connection (writes what is queued, reads what arrived) with `cx`'s waker.
    /// `Ready` once it has ended.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(conn) = &mut self.conn else {
            return Poll::Ready(());
        };
        match Pin::new(&mut **conn).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
                self.conn = None;
                Poll::Ready(())
            }
        }
    }

    /// Looks at the connection without waking anyone later (an idle connection is nobody's):
    /// whether it can take a request now.
    fn settle(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.poll_io(&mut cx).is_pending() && self.sender.is_ready()
    }
}

struct Idle {
    conn: Http1,
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
    fn checkout(&self, settings: &ConnSettings) -> Option<Http1> {
        let mut idle = self.http1.lock();
        while let Some(mut c) = idle.pop() {
            if c.since.elapsed() < settings.idle_timeout && c.conn.settle() {
                return Some(c.conn);
            }
        }
        None
    }

    /// Keeps a connection that finished its exchange for the next request.
    fn checkin(&self, conn: Http1, settings: &ConnSettings) {
        let mut idle = self.http1.lock();
        if idle.len() < settings.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections past the idle timeout or closed by the backend (looked at
    /// here, since nobody drives them while idle).
    pub(super) fn prune(&self, idle_timeout: Duration) {
        self.http1
            .lock()
            .retain_mut(|c| c.since.elapsed() < idle_timeout && c.conn.settle());
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

fn spawn_h2_connection<F>(conn: F)
where
    F: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
}

async fn handshake_http1(addr: SocketAddr, settings: &ConnSettings) -> Result<Http1, SendError> {
    let io = connect(addr, settings.connect_timeout)
        .await
        .map_err(SendError::Connect)?;
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| SendError::Connect(io::Error::other(e)))?;
    Ok(Http1 {
        sender,
        conn: Some(Box::new(conn)),
    })
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
    spawn_h2_connection(conn);
    Ok(sender)
}

/// What a response holds of its endpoint until its body ends.
struct Held {
    _in_flight: InFlight,
    /// The HTTP/1.1 connection the body comes on, driven by the body's reader, and where it
    /// goes back to.
    http1: Option<(Http1, Arc<EndpointState>, ConnSettings)>,
}

impl Lease for Held {
    fn poll_io(&mut self, cx: &mut Context<'_>) {
        if let Some((conn, ..)) = &mut self.http1 {
            let _ = conn.poll_io(cx);
        }
    }

    fn end(self: Box<Self>, whole: bool) {
        let Some((mut conn, state, settings)) = self.http1 else {
            return;
        };
        if !whole {
            return;
        }
        if conn.settle() {
            state.conns.checkin(conn, &settings);
            return;
        }
        if conn.conn.is_none() {
            return;
        }
        // The request body is still on its way (the backend answered early), or the
        // connection has not reached the end of the exchange: drive it there on a task of
        // its own, then it goes back (if it ever gets there).
        tokio::spawn(async move {
            let ready = poll_fn(|cx| {
                if conn.poll_io(cx).is_ready() {
                    return Poll::Ready(false);
                }
                conn.sender.poll_ready(cx).map(|r| r.is_ok())
            });
            if let Ok(true) = tokio::time::timeout(settings.idle_timeout, ready).await
                && conn.settle()
            {
                state.conns.checkin(conn, &settings);
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
            let (mut conn, reused) = match state.conns.checkout(settings) {
                Some(c) => (c, true),
                // Boxed: a new connection is the rare case, and its future is large.
                None => (Box::pin(handshake_http1(addr, settings)).await?, false),
            };
            // This task drives the connection until the response head is here (and then,
            // through the lease, while the body streams).
            let mut answer = pin!(conn.sender.try_send_request(req));
            let answered = poll_fn(|cx| {
                let _ = conn.poll_io(cx);
                answer.as_mut().poll(cx)
            })
            .await;
            match answered {
                Ok(resp) => {
                    let held = Held {
                        _in_flight: in_flight,
                        http1: Some((conn, state.clone(), *settings)),
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
                    let s = Box::pin(handshake_h2(addr, settings)).await?;
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
