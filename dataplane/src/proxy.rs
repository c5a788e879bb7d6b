//! The request path: route, filter, choose a backend and an endpoint, forward over a pooled
//! connection, filter the response, record metrics and the access log.

use crate::auth::AuthEngine;
use crate::balancer::Upstream;
use crate::body::{BackendBody, BodyFault, BodyLimits, ClientBody};
use crate::errors::ProxyError;
use crate::metrics::{Metrics, RouteMetrics, RouteSeries};
use crate::router::SocketRouter;
use crate::rule::{CompiledRule, Target};
use crate::sanitize::EdgeSettings;
use crate::{filters, path, sanitize, util};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portico_model::AppProtocol;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Response bodies: streamed from the backend, or generated here.
pub type ProxyBody = Either<BackendBody, Full<Bytes>>;

/// What the proxy knows about the downstream connection.
#[derive(Clone, Debug)]
pub struct Downstream {
    pub client: SocketAddr,
    pub local_port: u16,
    pub scheme: &'static str,
    /// The TLS server name the client asked for, if it did: a request for a host that another
    /// listener (another certificate) serves gets 421.
    pub sni: Option<Arc<str>>,
}

#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub access_log: bool,
    pub edge: EdgeSettings,
    pub body: BodyLimits,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 1024,
            access_log: true,
            edge: EdgeSettings::default(),
            body: BodyLimits::default(),
        }
    }
}

pub struct Proxy {
    http1: Client<HttpConnector, ClientBody>,
    h2c: Client<HttpConnector, ClientBody>,
    unmatched: RouteMetrics,
    access_log: bool,
    edge: EdgeSettings,
    body: BodyLimits,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("access_log", &self.access_log)
            .finish()
    }
}

impl Proxy {
    pub fn new(settings: &ProxySettings, metrics: &Arc<Metrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle_per_host);
        let http1 = builder.build(connector.clone());
        let h2c = builder.http2_only(true).build(connector);
        Self {
            http1,
            h2c,
            unmatched: metrics.route(&RouteSeries::unmatched()),
            access_log: settings.access_log,
            edge: settings.edge,
            body: settings.body,
            metrics: metrics.clone(),
        }
    }

    /// Serves one request. Never fails: every error becomes a response here.
    pub async fn serve(
        &self,
        router: &SocketRouter,
        req: Request<Incoming>,
        down: Downstream,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        self.metrics.in_flight.inc();
        let _in_flight = InFlightGuard(&self.metrics.in_flight);
        let id = util::request_id(req.headers());
        let log = self.access_log.then(|| AccessLog::new(&req, down.client));
        let http1 = req.version() <= Version::HTTP_11;
        let mut req = req;
        let mut who = crate::auth::Authenticated::default();
        let mut limit_headers = None;
        let routed = sanitize::inbound(&mut req, &self.edge)
            .map_err(ProxyError::BadRequest)
            .and_then(|()| route(router, &mut req, down.sni.as_deref()));
        let (result, rule, upstream, route_metrics) = match routed {
            Err(e) => (Err(e), None, None, None),
            Ok(routed) => {
                let rule = routed.rule.clone();
                let route_metrics = routed.metrics.clone();
                let request_timeout = rule.request_timeout;
                let who = &mut who;
                let limit_headers = &mut limit_headers;
                let fut = async {
                    // The consumer header comes from an AuthPolicy or from nobody, on every
                    // route (also where a policy names another header), so a backend can
                    // trust it.
                    req.headers_mut()
                        .remove(portico_model::auth::DEFAULT_CONSUMER_HEADER);
                    if let Some(auth) = &routed.auth {
                        // The client as the trusted proxies in front say (`--trusted-hops`),
                        // as rate limits see it: clientCidrs and the password-failure budget
                        // are about the client, not the load balancer.
                        let trusted_client = crate::ratelimit::trusted_client(
                            req.headers(),
                            down.client.ip(),
                            self.edge.trusted_hops,
                        );
                        let facts = crate::auth::RequestFacts {
                            client: trusted_client.unwrap_or(down.client.ip()),
                            trusted_client,
                            scheme: down.scheme,
                        };
                        match auth
                            .check(&mut req, routed.matching.as_deref(), &facts)
                            .await
                        {
                            Ok(w) => *who = w,
                            Err(e) => return (Err(e), None),
                        }
                    }
                    if let Some(limiter) = &routed.rate_limit {
                        let facts = crate::ratelimit::LimitFacts {
                            peer: down.client.ip(),
                            consumer: who.consumer.as_deref(),
                            claims: who.claims.as_deref(),
                            route: &routed.rule.route,
                            rule: routed.rule_index,
                            path: routed.matching.as_deref().unwrap_or(req.uri().path()),
                            trusted_hops: self.edge.trusted_hops,
                            forwarded_for_invalid: &self.metrics.forwarded_for_invalid,
                        };
                        match limiter.check(&req, &facts).await {
                            Ok(h) => *limit_headers = h,
                            Err(e) => return (Err(e), None),
                        }
                    }
                    let paths = RoutedPaths {
                        prefix: routed.prefix.as_deref(),
                        matching: routed.matching.as_deref(),
                    };
                    self.forward(&routed.rule, paths, req, down, &id).await
                };
                let (result, upstream) = match request_timeout {
                    Some(d) => tokio::time::timeout(d, fut)
                        .await
                        .unwrap_or((Err(ProxyError::RequestTimeout), None)),
                    None => fut.await,
                };
                (result, Some(rule), upstream, Some(route_metrics))
            }
        };
        let mut reason = None;
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                reason = Some(e.reason());
                if e.status().is_server_error() {
                    tracing::debug!(request_id = ?id, error = %e, source = ?e.source_kind(), "proxy error");
                }
                let close = match &e {
                    ProxyError::BadRequest(_) => {
                        self.metrics.downstream_error("bad_request");
                        true
                    }
                    ProxyError::ClientBody(fault) => {
                        self.metrics.downstream_error(match fault {
                            BodyFault::Framing => "body_framing",
                            BodyFault::Idle => "body_idle",
                            BodyFault::TooSlow => "body_too_slow",
                        });
                        true
                    }
                    _ => false,
                };
                let mut resp = e.into_response();
                // A client that sent something malformed does not get to send more on this
                // connection: its framing can no longer be trusted.
                if close && http1 {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
        };
        if let Some(ops) = rule
            .as_ref()
            .and_then(|r| r.filters().response_headers.as_ref())
        {
            ops.apply(resp.headers_mut());
        }
        if let Some(h) = &limit_headers {
            h.apply(resp.headers_mut());
        }
        resp.headers_mut().insert(&util::X_REQUEST_ID, id.clone());
        let elapsed = start.elapsed();
        let status = resp.status().as_u16();
        route_metrics
            .as_deref()
            .unwrap_or(&self.unmatched)
            .record(status, elapsed);
        if let Some(mut log) = log {
            log.reason = reason;
            log.emit(
                &id,
                status,
                rule.as_deref(),
                upstream.as_ref(),
                who.consumer.as_deref(),
                elapsed,
            );
        }
        resp
    }

    async fn forward(
        &self,
        rule: &CompiledRule,
        paths: RoutedPaths<'_>,
        mut req: Request<Incoming>,
        down: Downstream,
        id: &HeaderValue,
    ) -> (Result<Response<ProxyBody>, ProxyError>, Option<Upstream>) {
        // Only HTTP/2 connections watch their streams for a stall (HTTP/1's writes have
        // their own timeout).
        let watched = req.version() == Version::HTTP_2;
        let filters = rule.filters();
        if let Some(r) = &filters.redirect {
            return (
                Ok(filters::redirect(
                    r,
                    &req,
                    paths.prefix,
                    paths.matching,
                    down.scheme,
                    down.local_port,
                )),
                None,
            );
        }
        let Some(target @ Target::Pool { pool, .. }) = rule.pick() else {
            return (Err(ProxyError::NoBackend), None);
        };
        let backend_filters = target.filters();
        let Some(upstream) = pool.pick() else {
            pool.metrics.failed("no_endpoints");
            return (Err(ProxyError::NoEndpoints(pool.id.to_string())), None);
        };

        // The authority the request was routed by (sanitize left exactly one Host), before
        // any rewrite.
        let original_host = req.headers().get(header::HOST).cloned();
        if let Some(rw) = &filters.rewrite {
            filters::rewrite(rw, &mut req, paths.prefix, paths.matching);
        }
        let (xff, malformed) =
            sanitize::forwarded_for(req.headers(), down.client.ip(), self.edge.trusted_hops);
        if malformed {
            self.metrics.forwarded_for_invalid.inc();
        }
        let headers = req.headers_mut();
        // From the String's own buffer: one allocation, not two.
        match HeaderValue::from_maybe_shared(Bytes::from(xff)) {
            Ok(v) => {
                headers.insert(&util::X_FORWARDED_FOR, v);
            }
            Err(_) => {
                headers.remove(&util::X_FORWARDED_FOR);
            }
        }
        headers.insert(
            &util::X_FORWARDED_PROTO,
            HeaderValue::from_static(down.scheme),
        );
        if let Some(h) = original_host {
            headers.insert(&util::X_FORWARDED_HOST, h);
        }
        for ops in [&filters.request_headers, &backend_filters.request_headers]
            .into_iter()
            .flatten()
        {
            ops.apply(headers);
        }
        headers.insert(&util::X_REQUEST_ID, id.clone());

        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(upstream.authority.clone());
        parts.path_and_query = Some(pq);
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => {
                return (
                    Err(ProxyError::BadRequest("request target cannot be forwarded")),
                    None,
                );
            }
        }
        let client = match pool.protocol {
            AppProtocol::Http1 => {
                *req.version_mut() = Version::HTTP_11;
                &self.http1
            }
            AppProtocol::H2c => {
                *req.version_mut() = Version::HTTP_2;
                &self.h2c
            }
        };
        let backend = || pool.id.to_string();
        let streaming = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let (req, outcome) = {
            let (parts, body) = req.into_parts();
            let (body, outcome) = ClientBody::new(body, self.body, streaming);
            (Request::from_parts(parts, body), outcome)
        };
        let sent_at = Instant::now();
        let fut = client.request(req);
        let sent = match rule.backend_timeout {
            Some(d) => match tokio::time::timeout(d, fut).await {
                Ok(r) => r,
                Err(_) => {
                    pool.metrics.failed("timeout");
                    return (Err(ProxyError::BackendTimeout(backend())), Some(upstream));
                }
            },
            // Without a timeout of the route's own: the backend has the idle timeout to
            // answer once the request body is complete.
            None if rule.request_timeout.is_none() => {
                let idle = self.body.idle_timeout;
                match crate::body::answered_within(fut, &outcome, idle).await {
                    Some(r) => r,
                    None => {
                        pool.metrics.failed("timeout");
                        return (Err(ProxyError::BackendTimeout(backend())), Some(upstream));
                    }
                }
            }
            None => fut.await,
        };
        let result = match sent {
            // We never forward Upgrade, so a 101 is an answer to a question nobody asked.
            Ok(resp) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                Err(ProxyError::UnexpectedUpgrade(backend()))
            }
            Ok(resp) => {
                let idle = self.body.idle_timeout;
                let progress = watched.then(|| crate::body::StreamProgress(outcome.clone()));
                let outcome = outcome.clone();
                let mut resp = resp.map(|b| Either::Left(BackendBody::new(b, outcome, idle)));
                if let Some(p) = progress {
                    resp.extensions_mut().insert(p);
                }
                util::strip_hop_by_hop(resp.headers_mut());
                if let Some(ops) = &backend_filters.response_headers {
                    ops.apply(resp.headers_mut());
                }
                Ok(resp)
            }
            // The client's body failed (framing, too slow): the client's fault, whatever the
            // upstream connection made of it (hyper discards that connection).
            Err(_) if outcome.fault().is_some() => Err(ProxyError::ClientBody(
                outcome.fault().unwrap_or(BodyFault::Framing),
            )),
            Err(source) if source.is_connect() => Err(ProxyError::Connect {
                backend: backend(),
                source,
            }),
            Err(source) => Err(ProxyError::Upstream {
                backend: backend(),
                source,
            }),
        };
        match &result {
            Ok(resp) => pool
                .metrics
                .answered(resp.status().as_u16(), sent_at.elapsed()),
            Err(e) => {
                if let Some(r) = e.reason().strip_prefix("upstream=") {
                    pool.metrics.failed(r);
                }
            }
        }
        (result, Some(upstream))
    }
}

/// Counts a request out of `portico_requests_in_flight` however its handling ends.
struct InFlightGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The paths routing chose by, for filters that rewrite them.
#[derive(Clone, Copy)]
struct RoutedPaths<'a> {
    /// The PathPrefix the rule matched, if it did.
    prefix: Option<&'a str>,
    /// The path matched, when it differs from the forwarded one (`;parameters`).
    matching: Option<&'a str>,
}

/// What routing chose for a request.
struct Routed {
    rule: Arc<CompiledRule>,
    prefix: Option<Arc<str>>,
    auth: Option<Arc<AuthEngine>>,
    rate_limit: Option<Arc<crate::ratelimit::RateLimitEngine>>,
    metrics: Arc<RouteMetrics>,
    /// The rule's index in its route (a `Route` rate-limit key).
    rule_index: usize,
    /// The path matched, when it differs from the forwarded one (`;parameters`).
    matching: Option<String>,
}

/// Normalises the request's path (the backend gets the path that was routed and checked) and
/// finds its rule, or the error that answers it.
fn route(
    router: &SocketRouter,
    req: &mut Request<Incoming>,
    sni: Option<&str>,
) -> Result<Routed, ProxyError> {
    {
        let host = util::request_host(req.uri(), req.headers())
            .ok_or(ProxyError::BadRequest("missing Host"))?;
        if let Some(sni) = sni
            && !router.same_listener(sni, &host)
        {
            return Err(ProxyError::Misdirected);
        }
    }
    let normalized = path::normalize(req.uri().path()).map_err(ProxyError::BadRequest)?;
    let matching =
        (normalized.matching != normalized.forward).then(|| normalized.matching.to_string());
    if let Cow::Owned(forward) = normalized.forward {
        let pq = match req.uri().query() {
            Some(q) => format!("{forward}?{q}"),
            None => forward,
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(
            pq.parse()
                .map_err(|_| ProxyError::BadRequest("request target cannot be normalised"))?,
        );
        *req.uri_mut() = Uri::from_parts(parts)
            .map_err(|_| ProxyError::BadRequest("request target cannot be normalised"))?;
    }
    let host = util::request_host(req.uri(), req.headers())
        .ok_or(ProxyError::BadRequest("missing Host"))?;
    let path = matching.as_deref().unwrap_or(req.uri().path());
    let m = router
        .route(&host, path, req.method(), req.headers(), req.uri().query())
        .ok_or(ProxyError::NoRoute)?;
    Ok(Routed {
        rule: m.candidate.rule.clone(),
        prefix: m.candidate.prefix.clone(),
        auth: m.candidate.auth.clone(),
        rate_limit: m.candidate.rate_limit.clone(),
        metrics: m.candidate.metrics.clone(),
        rule_index: m.candidate.order.1,
        matching,
    })
}

/// The fields of one access log line, taken before the request is consumed.
struct AccessLog {
    method: http::Method,
    host: String,
    path: String,
    client: SocketAddr,
    version: Version,
    /// Why the gateway answered itself ([`ProxyError::reason`]), if it did.
    reason: Option<String>,
}

impl AccessLog {
    fn new<B>(req: &Request<B>, client: SocketAddr) -> Self {
        Self {
            method: req.method().clone(),
            // Escaped: a Host is client input and must not forge log fields.
            host: util::request_host(req.uri(), req.headers())
                .map(|h| util::log_safe(&h))
                .unwrap_or_default(),
            // The path only: query strings often carry tokens.
            path: req.uri().path().to_string(),
            client,
            version: req.version(),
            reason: None,
        }
    }

    fn emit(
        self,
        id: &HeaderValue,
        status: u16,
        rule: Option<&CompiledRule>,
        upstream: Option<&Upstream>,
        consumer: Option<&str>,
        elapsed: Duration,
    ) {
        tracing::info!(
            target: "access",
            request_id = id.to_str().unwrap_or_default(),
            client = %self.client.ip(),
            method = %self.method,
            host = %self.host,
            path = %self.path,
            protocol = ?self.version,
            status,
            route = rule.map_or("none", |r| &*r.route),
            upstream = upstream.map(|u| u.addr.to_string()).unwrap_or_default(),
            consumer = consumer.unwrap_or_default(),
            reason = self.reason.as_deref().unwrap_or_default(),
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        );
    }
}
