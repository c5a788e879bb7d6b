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

/// Failures counted where they happen (the status writer, the provisioner).
#[derive(Debug, Default)]
pub struct Counters {
    pub status_write_errors: AtomicU64,
    pub provision_errors: AtomicU64,
}

/// What the admin port reports, updated by the compile loop.
#[derive(Debug)]
pub struct Health {
    pub ready: AtomicBool,
    pub compiles: AtomicU64,
    /// Time spent compiling, in microseconds (with `compiles`: a summary).
    pub compile_us: AtomicU64,
    pub gateways: AtomicU64,
    /// Conditions that say something is wrong in the last status report.
    pub problems: AtomicU64,
    pub counters: Arc<Counters>,
    leading: watch::Receiver<bool>,
    /// The snapshot channel's token checks, once the channel serves.
    tokens: std::sync::OnceLock<Arc<crate::channel::Authenticator>>,
    /// The snapshot channel, for the dataplanes per Gateway.
    hub: std::sync::OnceLock<Arc<crate::channel::Hub>>,
    /// The objects the watches cannot read, per kind.
    unreadable: std::sync::OnceLock<Arc<crate::index::UnreadableObjects>>,
}

impl Health {
    pub fn new(leading: watch::Receiver<bool>) -> Self {
        Self {
            ready: AtomicBool::new(false),
            compiles: AtomicU64::new(0),
            compile_us: AtomicU64::new(0),
            gateways: AtomicU64::new(0),
            problems: AtomicU64::new(0),
            counters: Arc::default(),
            leading,
            tokens: std::sync::OnceLock::new(),
            hub: std::sync::OnceLock::new(),
            unreadable: std::sync::OnceLock::new(),
        }
    }

    pub fn set_hub(&self, hub: Arc<crate::channel::Hub>) {
        let _ = self.hub.set(hub);
    }

    pub fn set_tokens(&self, auth: Arc<crate::channel::Authenticator>) {
        let _ = self.tokens.set(auth);
    }

    /// Reports the index's count of objects it cannot read.
    pub fn set_unreadable(&self, unreadable: Arc<crate::index::UnreadableObjects>) {
        let _ = self.unreadable.set(unreadable);
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
        let _ = writeln!(
            out,
            "# HELP portico_controller_compile_duration_seconds Time spent compiling\n# TYPE portico_controller_compile_duration_seconds summary\nportico_controller_compile_duration_seconds_sum {}\nportico_controller_compile_duration_seconds_count {}",
            self.compile_us.load(Ordering::Relaxed) as f64 / 1e6,
            self.compiles.load(Ordering::Relaxed)
        );
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "portico_controller_problems",
            "gauge",
            "Conditions in the last status report that say something is wrong (rejected routes, unresolved references, ...)",
            self.problems.load(Ordering::Relaxed),
        );
        metric(
            "portico_controller_status_write_errors_total",
            "counter",
            "Status writes that failed (retried)",
            self.counters.status_write_errors.load(Ordering::Relaxed),
        );
        metric(
            "portico_controller_provision_errors_total",
            "counter",
            "Provisioning attempts that failed (retried with back-off) or were refused (Warning Event on the Gateway)",
            self.counters.provision_errors.load(Ordering::Relaxed),
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
        if let Some(unreadable) = self.unreadable.get() {
            let _ = writeln!(
                out,
                "# HELP portico_controller_unreadable_objects Objects the API server holds but the controller cannot decode (the Rust type rejects them), per kind, logged: each is skipped as if absent, except an AuthPolicy, which is kept as invalid and refuses its targets' requests\n# TYPE portico_controller_unreadable_objects gauge"
            );
            for (kind, n) in unreadable.counts() {
                let _ = writeln!(
                    out,
                    "portico_controller_unreadable_objects{{kind=\"{kind}\"}} {n}"
                );
            }
        }
        if let Some(hub) = self.hub.get() {
            let dataplanes = hub.dataplanes();
            let _ = writeln!(
                out,
                "# HELP portico_controller_dataplanes Dataplanes connected per Gateway, and those that acknowledged its current snapshot\n# TYPE portico_controller_dataplanes gauge"
            );
            for (gw, connected, current) in dataplanes {
                let _ = writeln!(
                    out,
                    "portico_controller_dataplanes{{gateway=\"{gw}\",state=\"connected\"}} {connected}\nportico_controller_dataplanes{{gateway=\"{gw}\",state=\"current\"}} {current}"
                );
            }
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
