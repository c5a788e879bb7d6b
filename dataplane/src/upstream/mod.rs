//! The upstream layer: backend pools of endpoints with state, a balancer that yields them in
//! order, and per-endpoint connections on hyper's `client::conn`.
//!
//! ```text
//!  table::build ──get──▶ Upstreams ──▶ BackendPool (per backend) ──▶ EndpointSet (ArcSwap)
//!  discovery ────push──▶    │              balancer: candidates()        Endpoint { addr, state }
//!                           └─ sweep: idle connections                         └─ Conns (idle http1, shared h2)
//!  proxy ──▶ attempt(pool, endpoint, request) ──▶ conns::send ──▶ h1 (ours) or h2 (hyper) ──▶ response
//! ```

mod balance;
mod client;
mod conns;
mod endpoint;
mod gate;
mod h1;
mod health;
mod maglev;
mod outlier;
mod pool;
mod retry;
pub mod session;
pub mod tls;

pub use balance::{Balancer, Candidates};
pub use client::{CallBody, CallError, HttpClient};
pub use conns::{ConnSettings, SendError};
use endpoint::InFlight;
pub use endpoint::{Endpoint, EndpointSet, EndpointState};
pub use h1::{H1Error, read_response};
pub use outlier::{Outcome, OutlierSettings};
pub use pool::{
    Admitted, BackendPool, Overloaded, PoolKey, PoolSettings, RetryPermit, ServiceEndpoints,
    ServiceKey, StreamHold, Upstreams, hash_key, pool_key,
};
pub use retry::BudgetSettings;

use crate::body::{ClientBody, Lease, Upstream};
use crate::errors::ProxyError;
use http::header;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use portico_model::AppProtocol;

/// How an attempt failed: the error, and the request when it never left (a connection that
/// could not be made), so another endpoint can be tried with it.
pub type Failed = (ProxyError, Option<Box<Request<ClientBody>>>);

/// The lease of a response body, extended to hold the request's circuit-breaker permit
/// until the body ends.
pub fn hold_with(
    lease: Option<Box<dyn Lease>>,
    admitted: Option<Admitted>,
) -> Option<Box<dyn Lease>> {
    match admitted {
        None => lease,
        Some(admitted) => Some(Box::new(WithPermit {
            inner: lease,
            _admitted: admitted,
        })),
    }
}

struct WithPermit {
    inner: Option<Box<dyn Lease>>,
    _admitted: Admitted,
}

impl Lease for WithPermit {
    fn end(self: Box<Self>, whole: bool) {
        if let Some(inner) = self.inner {
            inner.end(whole);
        }
    }
}

/// How an attempt ended: the answer (with what its body holds of the endpoint), or why not.
pub type Attempted = Result<(Response<Upstream>, Option<Box<dyn Lease>>), Failed>;

/// One attempt: `req` to `endpoint` of `pool`. The request must be ready for the wire
/// (origin-form for HTTP/1.1, an authority for HTTP/2). Failures come back as the
/// [`ProxyError`] they are, counted in the pool's series by the caller once final.
pub async fn attempt(
    pool: &BackendPool,
    endpoint: &Endpoint,
    req: Request<ClientBody>,
    settings: &ConnSettings,
) -> Attempted {
    let in_flight = InFlight::new(&endpoint.state);
    let conns = &endpoint.state.conns;
    // At the backend's connection limit, an idle connection of another endpoint is closed
    // to make room for this one.
    let make_room = || {
        pool.endpoints()
            .all()
            .any(|e| e.addr != endpoint.addr && e.state.conns.close_one_idle())
    };
    let limit = conns::Limit {
        gate: &pool.gate,
        make_room: &make_room,
    };
    conns::send(
        conns,
        endpoint.addr,
        pool.protocol,
        pool.tls.as_ref(),
        req,
        settings,
        &limit,
        in_flight,
    )
    .await
    .map_err(|e| match e {
        SendError::Overloaded(limit) => {
            pool.metrics.overloaded(limit);
            (
                ProxyError::Overloaded {
                    backend: pool.id.to_string(),
                    limit,
                },
                None,
            )
        }
        SendError::Connect(source, req) => (
            ProxyError::Connect {
                backend: pool.id.to_string(),
                source,
            },
            req,
        ),
        SendError::Request(source) => {
            let kind = match source.downcast_ref::<H1Error>() {
                Some(H1Error::Invalid(_)) => "invalid_response",
                Some(H1Error::Truncated) => "truncated",
                Some(H1Error::Closed { .. }) => "closed",
                _ => "failed",
            };
            (
                ProxyError::Upstream {
                    backend: pool.id.to_string(),
                    source,
                    kind,
                },
                None,
            )
        }
    })
}

/// Puts the request target in the form the backend's protocol wants: origin-form for
/// HTTP/1.1 (the Host header, already the routed one, names the authority); for HTTP/2 an
/// `:authority` equal to that Host, as RFC 9113 §8.3.1 asks of an intermediary, and the
/// `:scheme` of the connection (`https` over TLS to the backend).
pub fn wire_target<B>(
    req: &mut Request<B>,
    protocol: AppProtocol,
    tls: bool,
) -> Result<(), ProxyError> {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match protocol {
        AppProtocol::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            *req.uri_mut() = Uri::from(pq);
        }
        AppProtocol::H2c => {
            *req.version_mut() = Version::HTTP_2;
            let authority = req
                .headers()
                .get(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .ok_or(ProxyError::BadRequest("request host cannot be forwarded"))?;
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
            parts.authority = Some(authority);
            parts.path_and_query = Some(pq);
            *req.uri_mut() = Uri::from_parts(parts)
                .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;
        }
    }
    Ok(())
}
