//! The controller's admin port: `/healthz` (alive), `/readyz` (every watch has listed once and
//! the first compile is done) and `/metrics` (Prometheus text).

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the admin port reports, updated by the compile loop.
#[derive(Debug)]
pub struct Health {
    pub ready: AtomicBool,
    pub compiles: AtomicU64,
    pub gateways: AtomicU64,
    leading: watch::Receiver<bool>,
    /// The snapshot channel's token checks, once the channel serves.
    tokens: std::sync::OnceLock<Arc<crate::channel::Authenticator>>,
}

impl Health {
    pub fn new(leading: watch::Receiver<bool>) -> Self {
        Self {
            ready: AtomicBool::new(false),
            compiles: AtomicU64::new(0),
            gateways: AtomicU64::new(0),
            leading,
            tokens: std::sync::OnceLock::new(),
        }
    }

    pub fn set_tokens(&self, auth: Arc<crate::channel::Authenticator>) {
        let _ = self.tokens.set(auth);
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "portico_controller_leader",
            "gauge",
            "1 on the replica that writes status and provisions dataplanes",
            u64::from(*self.leading.borrow()),
        );
        metric(
            "portico_controller_compiles_total",
            "counter",
            "Compiles run (each recompiles the Gateways a change touched)",
            self.compiles.load(Ordering::Relaxed),
        );
        metric(
            "portico_controller_gateways",
            "gauge",
            "Gateways of this controller",
            self.gateways.load(Ordering::Relaxed),
        );
        metric(
            "portico_controller_ready",
            "gauge",
            "1 once every watch has listed and the first compile is done",
            u64::from(self.ready.load(Ordering::Relaxed)),
        );
        if let Some(t) = self.tokens.get() {
            let c = &t.counters;
            metric(
                "portico_controller_token_reviews_total",
                "counter",
                "TokenReviews sent for snapshot clients (answers are cached per token)",
                c.reviews.load(Ordering::Relaxed),
            );
            metric(
                "portico_controller_token_cache_hits_total",
                "counter",
                "Snapshot client tokens answered from the cache",
                c.cache_hits.load(Ordering::Relaxed),
            );
            metric(
                "portico_controller_token_throttled_total",
                "counter",
                "Snapshot requests refused (429) because their address had too many refused tokens",
                c.throttled.load(Ordering::Relaxed),
            );
        }
        out
    }
}

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

fn handle(h: &Health, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if h.ready.load(Ordering::Relaxed) => {
            respond(StatusCode::OK, "text/plain", "ready\n")
        }
        "/readyz" => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            h.metrics(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serves the admin endpoints until the process ends.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let h = health.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = handle(&h, &req);
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
