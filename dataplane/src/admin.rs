//! The admin port: `/healthz` (the process is alive), `/readyz` (a configuration is being
//! served), `/metrics` (Prometheus / OpenMetrics text) and `POST /cache/purge` (removes
//! cached responses by `url`, `prefix` or `tag`, given as a query parameter).
//!
//! A purge changes what clients get, so it is refused unless the caller proves it may: with
//! `Authorization: Bearer <token>` matching the admin token (`--admin-token-file`, compared
//! in constant time), or, without a token configured, only on an admin port bound to a
//! loopback address (standalone on a laptop). An admin port open to the cluster without a
//! token serves no purge at all.

use crate::dataplane::Dataplane;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// Who may purge through the admin port.
#[derive(Clone, Debug)]
pub enum PurgeAccess {
    /// Callers presenting this bearer token.
    Token(Arc<[u8]>),
    /// Anyone who can reach the port (it is bound to loopback).
    Loopback,
    /// Nobody.
    Refused,
}

impl PurgeAccess {
    /// The access an admin port at `address` with an optional token has.
    pub fn new(token: Option<Vec<u8>>, address: std::net::SocketAddr) -> Self {
        match token {
            Some(t) if !t.is_empty() => PurgeAccess::Token(t.into()),
            _ if address.ip().is_loopback() => PurgeAccess::Loopback,
            _ => PurgeAccess::Refused,
        }
    }

    fn admits(&self, headers: &http::HeaderMap) -> Result<(), &'static str> {
        use subtle::ConstantTimeEq;
        // A browser's cross-site form or fetch carries Origin; purges come from tools.
        if headers.contains_key(header::ORIGIN) {
            return Err("purges are not taken from browsers (the request has an Origin)\n");
        }
        match self {
            PurgeAccess::Loopback => Ok(()),
            PurgeAccess::Refused => Err(
                "purges need an admin token (--admin-token-file) on an admin port that is not loopback\n",
            ),
            PurgeAccess::Token(expected) => {
                let given = headers
                    .get(header::AUTHORIZATION)
                    .map(|v| v.as_bytes())
                    .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
                    .map_or(&b""[..], |v| &v[7..]);
                if bool::from(given.ct_eq(expected)) {
                    Ok(())
                } else {
                    Err("a purge needs Authorization: Bearer <the admin token>\n")
                }
            }
        }
    }
}

/// `POST /cache/purge?url=…` (or `prefix=…`, `tag=…`): how many entries went, as JSON.
fn purge(dp: &Dataplane, access: &PurgeAccess, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if let Err(why) = access.admits(req.headers()) {
        let status = match access {
            PurgeAccess::Refused => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        return respond(status, "text/plain", why);
    }
    let query = req.uri().query().unwrap_or("");
    let mut asked = query.split('&').filter_map(|kv| kv.split_once('='));
    let (Some((kind, value)), None) = (asked.next(), asked.next()) else {
        return respond(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "name one of url=, prefix= or tag= (percent-encoded)\n",
        );
    };
    let value = crate::util::percent_decode(value);
    match crate::cache::step::Purge::parse(kind, &value) {
        Err(e) => respond(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
        Ok(p) => {
            let n = dp.cache.purge(&p);
            tracing::info!(purge = ?p, removed = n, "cache purge");
            respond(
                StatusCode::OK,
                "application/json",
                format!("{{\"purged\":{n}}}\n"),
            )
        }
    }
}

fn handle(dp: &Dataplane, access: &PurgeAccess, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/cache/purge" {
        if req.method() != Method::POST {
            return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "POST only\n");
        }
        return purge(dp, access, req);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if dp.ready() => respond(StatusCode::OK, "text/plain", "ready\n"),
        "/readyz" => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            dp.metrics.encode(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serves the admin endpoints until the process ends.
pub async fn serve(listener: TcpListener, dp: Arc<Dataplane>, access: PurgeAccess) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let dp = dp.clone();
        let access = access.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = handle(&dp, &access, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
