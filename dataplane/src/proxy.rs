//! The request path: route, filter, choose a backend and an endpoint, forward over a pooled
//! connection, filter the response, record metrics and the access log.

use crate::body::{BackendBody, BodyFault, BodyLimits, ClientBody, ProxyBody, RequestBody};
use crate::cache::step::{Invalidation, Lookup, RuleCache};
use crate::compress::{Compressed, CompressionPolicy, Negotiated};
use crate::errors::{self, ProxyError};
use crate::metrics::{Metrics, RouteMetrics, RouteSeries};
use crate::mirror::Mirrors;
use crate::policy::Chain;
use crate::request::{Downstream, RequestCtx};
use crate::router::SocketRouter;
use crate::rule::{CompiledRule, Target};
use crate::sanitize::{EdgeSettings, Upgrade};
use crate::tunnel::{self, Tunnel, TunnelSlot};
use crate::upstream::{self, ConnSettings, Outcome, session};
use crate::{filters, path, sanitize, util};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use portico_model::AppProtocol;
use portico_model::backend::SessionKind;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub access_log: bool,
    pub edge: EdgeSettings,
    pub body: BodyLimits,
    /// An upgraded connection (WebSocket) through which nothing moved for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// An upgraded connection whose backend reads nothing of what is written to it for this
    /// long is closed (the client's side has its connection's write timeout).
    pub tunnel_write_timeout: Duration,
}

impl ProxySettings {
    pub fn conn(&self) -> ConnSettings {
        ConnSettings {
            connect_timeout: self.connect_timeout,
            idle_timeout: self.pool_idle_timeout,
            max_idle: self.pool_max_idle_per_host,
            ..ConnSettings::default()
        }
    }
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
            tunnel_idle_timeout: Duration::from_secs(3600),
            tunnel_write_timeout: Duration::from_secs(60),
        }
    }
}

/// How long a background cache refresh may take when its rule sets no request timeout.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Proxy {
    /// Itself, for work that outlives a request (background cache refreshes).
    me: std::sync::Weak<Proxy>,
    unmatched: RouteMetrics,
    access_log: bool,
    edge: EdgeSettings,
    body: BodyLimits,
    tunnel_idle_timeout: Duration,
    tunnel_write_timeout: Duration,
    mirrors: Mirrors,
    /// Places for responses being compressed at once.
    encoders: Arc<tokio::sync::Semaphore>,
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
    pub fn new(settings: &ProxySettings, metrics: &Arc<Metrics>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            unmatched: metrics.route(&RouteSeries::unmatched()),
            access_log: settings.access_log,
            edge: settings.edge,
            body: settings.body,
            tunnel_idle_timeout: settings.tunnel_idle_timeout,
            tunnel_write_timeout: settings.tunnel_write_timeout,
            mirrors: Mirrors::new(settings.body, metrics.clone()),
            encoders: Arc::new(tokio::sync::Semaphore::new(crate::compress::MAX_ENCODERS)),
            metrics: metrics.clone(),
        })
    }

    /// Serves one request. Never fails: every error becomes a response here. The sequence:
    /// check the request → route → the rule's policy chain → filters and the upstream
    /// (within the request timeout) → the response's headers → metrics and the access log.
    pub async fn serve(
        &self,
        router: &SocketRouter,
        mut req: Request<RequestBody>,
        down: Downstream,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        self.metrics.in_flight.inc();
        let _in_flight = InFlightGuard(&self.metrics.in_flight);
        let id = util::request_id(req.headers());
        let grpc = errors::is_grpc(req.headers());
        let mut cx = RequestCtx::new(id, down, self.edge.trusted_hops, grpc);
        let log = self
            .access_log
            .then(|| AccessLog::new(&req, cx.down.client));
        let http1 = req.version() <= Version::HTTP_11;
        cx.upgrade = sanitize::upgrade(&mut req);
        let h = req.headers();
        cx.credentials =
            h.contains_key(header::AUTHORIZATION) || h.contains_key(header::PROXY_AUTHORIZATION);
        cx.cookie = h.contains_key(header::COOKIE);
        let routed = sanitize::inbound(&mut req, &self.edge)
            .map_err(ProxyError::BadRequest)
            .and_then(|()| route(router, &mut req, &mut cx));
        // A CORS filter answers preflights itself (before any policy: browsers send them
        // without credentials), and gives actual requests' responses their headers below.
        let mut origin = None;
        let (result, routed, upstream) = match routed {
            Err(e) => (Err(e), None, None),
            Ok(routed) => {
                let cors = routed.rule.filters().cors.as_deref();
                match cors.and_then(|c| c.preflight(&req)) {
                    Some(answer) => (Ok(answer), Some(routed), None),
                    None => {
                        origin = cors.and_then(|_| req.headers().get(header::ORIGIN).cloned());
                        let (result, upstream) = self.handle(&routed, req, &mut cx).await;
                        (result, Some(routed), upstream)
                    }
                }
            }
        };
        let mut reason = None;
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                reason = Some(e.reason());
                self.respond(e, &cx, http1)
            }
        };
        let rule = routed.as_ref().map(|r| &*r.rule);
        if let Some(ops) = rule.and_then(|r| r.filters().response_headers.as_ref()) {
            ops.apply(resp.headers_mut());
        }
        if let (Some(origin), Some(cors)) =
            (&origin, rule.and_then(|r| r.filters().cors.as_deref()))
        {
            cors.on_response(origin, resp.headers_mut());
        }
        let headers = resp.headers_mut();
        cx.response_headers.apply_to(headers);
        headers.insert(&util::X_REQUEST_ID, cx.id.clone());
        let elapsed = start.elapsed();
        let status = resp.status().as_u16();
        routed
            .as_ref()
            .map_or(&self.unmatched, |r| &*r.metrics)
            .record(status, elapsed);
        if let Some(mut log) = log {
            log.reason = reason;
            log.emit(&cx, status, rule, upstream.as_ref(), elapsed);
        }
        resp
    }

    /// The routed part: the rule's policies, then its filters and the upstream, within the
    /// rule's request timeout.
    async fn handle(
        &self,
        routed: &Routed,
        mut req: Request<RequestBody>,
        cx: &mut RequestCtx,
    ) -> (Result<Response<ProxyBody>, ProxyError>, Option<SocketAddr>) {
        // Pinned here, once: a future moved into a combinator would be stored twice.
        let fut = pin!(async {
            // The consumer header comes from an AuthPolicy or from nobody, on every route
            // (also where a policy names another header), so a backend can trust it.
            req.headers_mut().remove(&CONSUMER_HEADER);
            // Boxed: policies' futures are large, and most routes have none.
            if routed.chain.has_steps()
                && let Err(e) = Box::pin(routed.chain.on_request(&mut req, cx)).await
            {
                return (Err(e), None);
            }
            // An unsafe request makes what it changed stale in the caches of its listener's
            // routes, whether or not its own rule caches.
            let invalidation = routed
                .chain
                .invalidates()
                .and_then(|(shared, reach)| Some((shared, Invalidation::of(&req, cx, reach)?)));
            let (result, addr) = match routed.chain.cache() {
                // Boxed, like the policies: most routes have no cache.
                Some(cache) => Box::pin(self.cached(routed, cache, req, cx)).await,
                None => self.forward(&routed.rule, req, cx).await,
            };
            if let (Some((shared, inv)), Ok(resp)) = (invalidation, &result) {
                shared.invalidate_after(&inv, resp);
            }
            (result, addr)
        });
        match routed.rule.request_timeout {
            Some(d) => tokio::time::timeout(d, fut)
                .await
                .unwrap_or((Err(ProxyError::RequestTimeout), None)),
            None => fut.await,
        }
    }

    /// The upstream through the rule's cache: answered from it, forwarded and stored, or
    /// answered stale while a refresh goes upstream in the background.
    async fn cached(
        &self,
        routed: &Routed,
        cache: &RuleCache,
        mut req: Request<RequestBody>,
        cx: &mut RequestCtx,
    ) -> (Result<Response<ProxyBody>, ProxyError>, Option<SocketAddr>) {
        match cache.lookup(&mut req, cx).await {
            Lookup::Answer(resp) => (Ok(resp), None),
            Lookup::Forward(pending) => {
                let (result, addr) = self.forward(&routed.rule, req, cx).await;
                (cache.complete(*pending, result), addr)
            }
            Lookup::AnswerAndRefresh(resp, pending) => {
                if let Some(me) = self.me.upgrade() {
                    let rule = routed.rule.clone();
                    let chain = routed.chain.clone();
                    let mut bg = cx.fork();
                    // The client's body (a GET has none worth sending) stays with it.
                    let (parts, _) = req.into_parts();
                    let req = Request::from_parts(parts, RequestBody::Empty);
                    let limit = rule.request_timeout.unwrap_or(REFRESH_TIMEOUT);
                    tokio::spawn(async move {
                        let refresh = async {
                            let (result, _) = me.forward(&rule, req, &mut bg).await;
                            let Some(cache) = chain.cache() else { return };
                            // Read to its end (and dropped: the cache keeps its copy): the
                            // entry is stored when the body is whole.
                            if let Ok(resp) = cache.complete(*pending, result) {
                                let mut body = resp.into_body();
                                while let Some(Ok(_)) = body.frame().await {}
                            }
                        };
                        if tokio::time::timeout(limit, refresh).await.is_err() {
                            tracing::debug!("a background cache refresh timed out");
                        }
                    });
                }
                (Ok(resp), None)
            }
        }
    }

    /// The one place a failure becomes the client's answer (and its metrics).
    fn respond(&self, e: ProxyError, cx: &RequestCtx, http1: bool) -> Response<ProxyBody> {
        if e.status().is_server_error() {
            tracing::debug!(request_id = ?cx.id, error = %e, source = ?e.source_kind(), "proxy error");
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
        let mut resp = e.into_response(cx.grpc);
        // A client that sent something malformed does not get to send more on this
        // connection: its framing can no longer be trusted.
        if close && http1 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// Reads a request body whole (it fits [`Replay::fits`]), within the body limits.
    async fn read_whole(&self, body: RequestBody, streaming: bool) -> Result<Bytes, BodyFault> {
        let (body, outcome) = ClientBody::new(body, self.body, streaming);
        let limit =
            usize::try_from(portico_model::RouteRetry::MAX_REPLAY_BYTES).unwrap_or(usize::MAX);
        match http_body_util::Limited::new(body, limit).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(_) => Err(outcome.fault().unwrap_or(BodyFault::Framing)),
        }
    }

    async fn forward(
        &self,
        rule: &CompiledRule,
        mut req: Request<RequestBody>,
        cx: &mut RequestCtx,
    ) -> (Result<Response<ProxyBody>, ProxyError>, Option<SocketAddr>) {
        let prefix = cx.prefix.as_deref();
        let matching = cx.matching.as_deref();
        // Only HTTP/2 connections watch their streams for a stall (HTTP/1's writes have
        // their own timeout).
        let watched = req.version() == Version::HTTP_2;
        let filters = rule.filters();
        if let Some(r) = &filters.redirect {
            return (
                Ok(filters::redirect(
                    r,
                    &req,
                    prefix,
                    matching,
                    cx.down.scheme,
                    cx.down.local_port,
                )),
                None,
            );
        }
        // A rule's own session pins the backend as well as the endpoint; one of a backend's
        // policy only the endpoint.
        let rule_session = rule.session.as_deref();
        let now = rule_session.map_or(0, |_| session::now_secs());
        let mut held = None;
        let target = match rule_session.and_then(|s| Some((s, s.own.as_ref()?))) {
            Some((s, sp)) => {
                held = session::read(&s.sealer, &s.scope, sp, &sp.name, req.headers(), now);
                held.and_then(|p| rule.target_tagged(p.backend))
                    .or_else(|| rule.pick())
            }
            None => rule.pick(),
        };
        let Some(target @ Target::Pool { pool, .. }) = target else {
            return (Err(ProxyError::NoBackend), None);
        };
        let backend_filters = target.filters();
        let settings = pool.settings();
        let sticky =
            rule_session.and_then(|s| Some((s, s.own.as_ref().or(settings.session.as_ref())?)));
        // A policy's session is the rule's too, under a cookie of the rule's own (its name
        // and the rule's tag), so that two rules sending to the Service never overwrite each
        // other's; a header keeps the name (the client sends back what it was given).
        let session_name: Cow<'_, str> = match sticky {
            Some((s, sp)) if s.own.is_none() && sp.kind == SessionKind::Cookie => {
                Cow::Owned(format!("{}-{}", sp.name, s.tag))
            }
            Some((_, sp)) => Cow::Borrowed(sp.name.as_str()),
            None => Cow::Borrowed(""),
        };
        if let Some((s, sp)) = sticky.filter(|(s, _)| s.own.is_none()) {
            held = session::read(&s.sealer, &s.scope, sp, &session_name, req.headers(), now);
        }
        // The client showed a session cookie this gateway sealed: not a credential of its.
        let own_cookie =
            matches!(sticky, Some((_, sp)) if sp.kind == SessionKind::Cookie) && held.is_some();
        let held = held.filter(|p| p.backend == pool.tag);
        let endpoints = pool.endpoints();
        let hash = settings
            .hash_on
            .as_ref()
            .and_then(|on| upstream::hash_key(on, req.headers(), req.uri(), cx.peer()));
        let mut candidates = pool.candidates(&endpoints, &settings, hash);
        if let Some(p) = held {
            // An endpoint that is gone, ejected or failing its checks ends the session: the
            // balancer's choice stands, and the response starts a new one.
            candidates = candidates.pinned_first(p.addr);
        }
        let Some(mut endpoint) = candidates.next() else {
            pool.metrics.failed("no_endpoints");
            return (Err(ProxyError::NoEndpoints(pool.id.to_string())), None);
        };
        // The authority the request was routed by (sanitize left exactly one Host), before
        // any rewrite.
        let original_host = req.headers().get(header::HOST).cloned();
        if let Some(rw) = &filters.rewrite {
            filters::rewrite(rw, &mut req, prefix, matching);
        }
        let xff = if cx.trusted_hops == 0 {
            // At the edge: the peer, formatted once per connection.
            Ok(cx.down.client_ip.clone())
        } else {
            let (xff, malformed) =
                sanitize::forwarded_for(req.headers(), cx.peer(), cx.trusted_hops);
            if malformed {
                self.metrics.forwarded_for_invalid.inc();
            }
            // From the String's own buffer: one allocation, not two.
            HeaderValue::from_maybe_shared(Bytes::from(xff))
        };
        let headers = req.headers_mut();
        // Room for what is added below, grown once.
        headers.reserve(6);
        match xff {
            Ok(v) => {
                headers.insert(&util::X_FORWARDED_FOR, v);
            }
            Err(_) => {
                headers.remove(&util::X_FORWARDED_FOR);
            }
        }
        headers.insert(
            &util::X_FORWARDED_PROTO,
            HeaderValue::from_static(cx.down.scheme),
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
        headers.insert(&util::X_REQUEST_ID, cx.id.clone());
        // A WebSocket goes to the backend as an HTTP/1.1 upgrade, whichever way it came.
        let ws_key = match cx.upgrade {
            None => None,
            Some(_) if pool.protocol != AppProtocol::Http1 => {
                let e = ProxyError::BadUpgrade(pool.id.to_string(), "it speaks HTTP/2 (h2c)");
                return (Err(e), None);
            }
            Some(kind) => tunnel::upgrade_request(headers, kind),
        };

        if let Some(upstream::tls::UpstreamTls::Refused(why)) = pool.tls.as_ref() {
            // A BackendTLSPolicy that cannot be honoured refuses: never plaintext, never
            // unverified, and no endpoint blamed for it.
            tracing::debug!(backend = %pool.id, why, "request refused: the backend's TLS policy cannot be used");
            let id = pool.tls_policy.clone().unwrap_or_default();
            return (
                Err(ProxyError::PolicyInvalid {
                    policy: "BackendTLSPolicy",
                    id,
                }),
                None,
            );
        }
        if let Err(e) = upstream::wire_target(&mut req, pool.protocol, pool.tls.is_some()) {
            return (Err(e), None);
        }
        let streaming = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        // Credentials as the client sent them, or an identity a policy established (an API
        // key in any header or the query): the policy may have stripped them by now.
        // A cookie counts unless all the client sent is the one session cookie the gateway
        // sealed (an endpoint pin, not the user's secret; or sticky sessions would turn
        // compression off). Cookies removed on the way cannot be told apart: they count; so
        // does a second cookie of the same name, whatever it holds.
        let cookie = cx.cookie && {
            let mut names = util::cookie_names(req.headers());
            let only_own = own_cookie
                && names.next() == Some(session_name.as_bytes())
                && names.next().is_none();
            !only_own
        };
        let credentials = cx.credentials
            || cookie
            || cx.identity.consumer.is_some()
            || cx.identity.claims.is_some();
        let negotiated = settings
            .compression
            .as_ref()
            .map(|c| c.negotiate(req.headers(), credentials));
        let head_request = req.method() == http::Method::HEAD;
        let (parts, body) = req.into_parts();
        let body = match &filters.mirrors {
            mirrors if mirrors.is_empty() || cx.upgrade.is_some() => body,
            mirrors => self
                .mirrors
                .start(mirrors, &parts, body, rule.request_timeout),
        };
        // A rule that retries reads a small enough body whole first, so it can be sent again.
        // Only idempotent methods, unless the backend's policy allows the others: a retried
        // POST may have been acted on already.
        // A rule's own retry, else its backend policy's; likewise the per-attempt timeout.
        // Not a WebSocket's: its handshake is answered once, by the endpoint it stays with.
        let retry = rule.retry.as_deref().or(settings.rule_retry.as_ref());
        let retry = retry.filter(|_| cx.upgrade.is_none());
        let per_try = rule.backend_timeout.or(settings.per_try_timeout);
        let replayable = retry.is_some()
            && (parts.method.is_idempotent() || settings.retry_non_idempotent)
            && Replay::fits(&body);
        let (body, replay) = if replayable {
            match self.read_whole(body, streaming).await {
                Ok(bytes) => {
                    let replay = Replay::new(&parts, bytes);
                    (replay.body(), Some(replay))
                }
                Err(fault) => return (Err(ProxyError::ClientBody(fault)), None),
            }
        } else {
            (body, None)
        };
        // Admitted once the request is ready to go (a slow upload holds no permit), held
        // until the response body ends (with the lease) or the request fails.
        let admitted = match pool.admit(&settings) {
            Ok(admitted) => admitted,
            Err(upstream::Overloaded { limit }) => {
                let backend = pool.id.to_string();
                return (Err(ProxyError::Overloaded { backend, limit }), None);
            }
        };
        let (body, mut outcome) = ClientBody::new(body, self.body, streaming);
        let mut req = Request::from_parts(parts, body);
        let mut retries_left = retry.map_or(0, |r| r.attempts);
        let mut _retrying = None;
        cx.attempts = 1;
        // A connection that cannot be made never reached the backend, whatever the method:
        // the next endpoint is tried with the same request, within the backend's budget. A
        // rule's `retry` adds the statuses it names, broken exchanges and backend request
        // timeouts, for requests whose body was kept.
        let (sent, sent_at) = loop {
            let sent_at = Instant::now();
            // Pinned here, once, whichever wait applies (the attempt future is large).
            let mut answer = pin!(upstream::attempt(pool, endpoint, req, &settings.conn));
            let sent = match per_try {
                Some(d) => tokio::time::timeout(d, answer.as_mut()).await.ok(),
                // Without a timeout of the route's own: the backend has the idle timeout to
                // answer once the request body is complete.
                None if rule.request_timeout.is_none() => {
                    crate::body::answered_within(answer.as_mut(), &outcome, self.body.idle_timeout)
                        .await
                }
                None => Some(answer.as_mut().await),
            };
            let route_retry = retry.filter(|_| retries_left > 0);
            match sent {
                Some(Err((e, Some(back)))) if e.retryable() => {
                    pool.record(endpoint, Outcome::GatewayError, &settings);
                    let allowed = settings.retry_connect_failure
                        && (retry.is_none() || route_retry.is_some());
                    let next = candidates
                        .next()
                        .filter(|_| allowed)
                        .and_then(|next| pool.may_retry(&settings).map(|p| (next, p)));
                    match next {
                        Some((next, permit)) => {
                            _retrying = Some(permit);
                            // The failed attempt is counted here; a final failure below.
                            if let Some(r) = e.reason().strip_prefix("upstream=") {
                                pool.metrics.failed(r);
                            }
                            tracing::debug!(
                                request_id = ?cx.id,
                                endpoint = %endpoint.addr,
                                next = %next.addr,
                                error = %e,
                                "retrying on another endpoint"
                            );
                            endpoint = next;
                            req = *back;
                            cx.attempts += 1;
                            retries_left = retries_left.saturating_sub(1);
                        }
                        None => break (Some(Err(e)), sent_at),
                    }
                }
                sent => {
                    let retried = match (route_retry, &replay) {
                        (Some(r), Some(replay)) => {
                            retried_as(r, &sent, &outcome).map(|health| (r, replay, health))
                        }
                        _ => None,
                    };
                    let Some((r, replay, health)) = retried else {
                        break (sent.map(|r| r.map_err(|(e, _)| e)), sent_at);
                    };
                    // Refused, the attempt is the final one and is counted below.
                    let Some(permit) = pool.may_retry(&settings) else {
                        break (sent.map(|r| r.map_err(|(e, _)| e)), sent_at);
                    };
                    pool.record(endpoint, health, &settings);
                    _retrying = Some(permit);
                    let what = match &sent {
                        Some(Ok((resp, _))) => resp.status().as_str().to_string(),
                        Some(Err((e, _))) => e.reason(),
                        None => "timeout".to_string(),
                    };
                    // The failed attempt's answer is dropped (its connection with it).
                    drop(sent);
                    let retry_no = r.attempts - retries_left + 1;
                    tokio::time::sleep(backoff(r, retry_no)).await;
                    let next = candidates.next().unwrap_or(endpoint);
                    tracing::debug!(
                        request_id = ?cx.id,
                        endpoint = %endpoint.addr,
                        next = %next.addr,
                        after = %what,
                        "retrying as the route asks"
                    );
                    endpoint = next;
                    let (body, o) = ClientBody::new(replay.body(), self.body, streaming);
                    outcome = o;
                    req = replay.request(body);
                    cx.attempts += 1;
                    retries_left -= 1;
                }
            }
        };
        let backend = || pool.id.to_string();
        let Some(sent) = sent else {
            pool.record(endpoint, Outcome::GatewayError, &settings);
            pool.metrics.failed("timeout");
            return (
                Err(ProxyError::BackendTimeout(backend())),
                Some(endpoint.addr),
            );
        };
        match &sent {
            Ok((resp, _)) if resp.status().is_server_error() => {
                pool.record(endpoint, Outcome::ServerError, &settings);
            }
            Ok(_) => pool.record(endpoint, Outcome::Success, &settings),
            // The client's fault says nothing of the endpoint.
            Err(_) if outcome.fault().is_some() => {}
            Err(ProxyError::Connect { .. } | ProxyError::Upstream { .. }) => {
                pool.record(endpoint, Outcome::GatewayError, &settings);
            }
            Err(_) => {}
        }
        let mut result = match sent {
            Ok((resp, _)) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                match cx.upgrade {
                    Some(kind) => self
                        .switched(resp, kind, ws_key.as_ref(), admitted, backend)
                        .map(|mut resp| {
                            if let Some(ops) = &backend_filters.response_headers {
                                ops.apply(resp.headers_mut());
                            }
                            resp
                        }),
                    // Only WebSocket upgrades are forwarded: a 101 to anything else is an
                    // answer to a question nobody asked.
                    None => Err(ProxyError::UnexpectedUpgrade(backend())),
                }
            }
            Ok((resp, lease)) => {
                let lease = upstream::hold_with(lease, admitted);
                let idle = self.body.idle_timeout;
                let progress = watched.then(|| crate::body::StreamProgress(outcome.clone()));
                let outcome = outcome.clone();
                let mut resp =
                    resp.map(|b| ProxyBody::Streamed(BackendBody::new(b, lease, outcome, idle)));
                if let Some(p) = progress {
                    resp.extensions_mut().insert(p);
                }
                util::strip_hop_by_hop(resp.headers_mut());
                if let Some(ops) = &backend_filters.response_headers {
                    ops.apply(resp.headers_mut());
                }
                if let (Some(policy), Some(n)) = (settings.compression.as_deref(), &negotiated) {
                    resp = self.compress(policy, n, head_request, resp, &pool.id);
                }
                Ok(resp)
            }
            // The client's body failed (framing, too slow): the client's fault, whatever the
            // upstream connection made of it (hyper discards that connection).
            Err(_) if outcome.fault().is_some() => Err(ProxyError::ClientBody(
                outcome.fault().unwrap_or(BodyFault::Framing),
            )),
            Err(e) => Err(e),
        };
        // Every answer of the backend (a WebSocket's 101 too: a reconnecting client goes back
        // to the same endpoint) carries the session it is part of.
        if let Ok(resp) = &mut result
            && let Some((s, sp)) = sticky
            && let Some(pin) = session::renew(sp, held, pool.tag, endpoint.addr, now)
        {
            // A rule's cookie is for the path it matched; a policy's has no path
            // (GEP-1619: several routes may send to the Service).
            let path = s.own.is_some().then(|| prefix.unwrap_or("/"));
            let secure = cx.down.scheme == "https";
            if let Some((name, value)) =
                session::issue(&s.sealer, &s.scope, sp, &session_name, &pin, path, secure)
            {
                if name == header::SET_COOKIE {
                    resp.headers_mut().append(name, value);
                } else {
                    resp.headers_mut().insert(name, value);
                }
                // One client's pin: a cache must not replay it to the others.
                resp.extensions_mut().insert(crate::cache::step::Personal);
            }
        }
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
        (result, Some(endpoint.addr))
    }
}

impl Proxy {
    /// A backend's response, compressed when its policy, the client and the response allow.
    fn compress(
        &self,
        policy: &CompressionPolicy,
        n: &Negotiated,
        head_request: bool,
        resp: Response<ProxyBody>,
        backend: &portico_model::BackendId,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        let length = body.size_hint().exact();
        // At the limit of encoders at once, this one goes uncompressed (Vary still said).
        let slot = n
            .encoding
            .and_then(|_| self.encoders.clone().try_acquire_owned().ok());
        let n = &Negotiated {
            encoding: n.encoding.filter(|_| slot.is_some() || head_request),
            ..*n
        };
        let chosen = policy.on_response(n, head_request, parts.status, &mut parts.headers, length);
        let body = match (chosen, body) {
            (Some(encoding), ProxyBody::Streamed(b)) => match Compressed::new(b, encoding, slot) {
                Ok(c) => {
                    self.metrics.compressed(encoding.token());
                    ProxyBody::Compressed(Box::new(c))
                }
                // An encoder that cannot start (zstd's context): never the case in practice;
                // the headers already say the body is encoded, so the response fails.
                Err(e) => {
                    tracing::warn!(error = %e, "response compression could not start");
                    return ProxyError::Upstream {
                        backend: backend.to_string(),
                        source: Box::new(e),
                        kind: "compression",
                    }
                    .into_response(false);
                }
            },
            (_, body) => body,
        };
        Response::from_parts(parts, body)
    }

    /// The client's answer to a WebSocket the backend accepted (101): the backend's
    /// connection becomes a tunnel the client's connection takes from the response.
    fn switched(
        &self,
        resp: Response<crate::body::Upstream>,
        kind: Upgrade,
        key: Option<&HeaderValue>,
        admitted: Option<upstream::Admitted>,
        backend: impl Fn() -> String,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = resp.into_parts();
        let crate::body::Upstream::Switched(mut io) = body else {
            return Err(ProxyError::BadUpgrade(
                backend(),
                "its 101 came without its connection",
            ));
        };
        tunnel::check_switched(&parts.headers, key)
            .map_err(|why| ProxyError::BadUpgrade(backend(), why))?;
        util::strip_hop_by_hop(&mut parts.headers);
        tunnel::upgrade_response(&mut parts, kind);
        let mut resp = Response::from_parts(parts, ProxyBody::empty());
        // An open WebSocket is a request in flight to its backend for the circuit breaker
        // (`maxRequests`) as long as it lasts, as it is for the balancer.
        let hold = std::mem::replace(&mut io.hold, Box::new(()));
        io.hold = Box::new((hold, admitted));
        let tunnel = Tunnel::new(
            *io,
            self.tunnel_idle_timeout,
            self.tunnel_write_timeout,
            self.metrics.tunnels.clone(),
        );
        resp.extensions_mut().insert(TunnelSlot::new(tunnel));
        Ok(resp)
    }
}

/// What a retrying rule keeps of a request to send it again: the head as it went to the
/// backend, and the body read whole.
struct Replay {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Replay {
    /// Whether a body is small enough to keep (known to be at most the limit).
    fn fits(body: &RequestBody) -> bool {
        body.is_end_stream()
            || body
                .size_hint()
                .upper()
                .is_some_and(|n| n <= portico_model::RouteRetry::MAX_REPLAY_BYTES)
    }

    fn new(parts: &http::request::Parts, body: Bytes) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body,
        }
    }

    fn body(&self) -> RequestBody {
        RequestBody::Full((!self.body.is_empty()).then(|| self.body.clone()))
    }

    fn request(&self, body: ClientBody) -> Request<ClientBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Whether a rule's `retry` retries this end of an attempt, and how it counts for the
/// endpoint's health: a status it names, an exchange that broke (not by the client's
/// fault), or no answer within the backend request timeout.
fn retried_as(
    r: &portico_model::RouteRetry,
    sent: &Option<upstream::Attempted>,
    outcome: &crate::body::BodyOutcome,
) -> Option<Outcome> {
    match sent {
        Some(Ok((resp, _))) => {
            let status = resp.status();
            r.codes
                .contains(&status.as_u16())
                .then_some(if status.is_server_error() {
                    Outcome::ServerError
                } else {
                    Outcome::Success
                })
        }
        Some(Err((ProxyError::Upstream { .. }, _))) if outcome.fault().is_none() => {
            Some(Outcome::GatewayError)
        }
        Some(Err(_)) => None,
        None => Some(Outcome::GatewayError),
    }
}

/// The wait before retry `n` (1: the first): the route's backoff doubled for each retry
/// before, at most ten times it, plus up to half again (jitter), never less than the
/// backoff itself.
fn backoff(r: &portico_model::RouteRetry, n: u32) -> Duration {
    let base = r.backoff_ms;
    let wait = base
        .saturating_mul(1u64 << n.saturating_sub(1).min(10))
        .min(base.saturating_mul(10));
    Duration::from_millis(wait.saturating_add(fastrand::u64(0..=wait / 2)))
}

static CONSUMER_HEADER: header::HeaderName =
    header::HeaderName::from_static(portico_model::auth::DEFAULT_CONSUMER_HEADER);

/// Counts a request out of `portico_requests_in_flight` however its handling ends.
struct InFlightGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What routing chose for a request.
struct Routed {
    rule: Arc<CompiledRule>,
    chain: Arc<Chain>,
    metrics: Arc<RouteMetrics>,
}

/// Normalises the request's path (the backend gets the path that was routed and checked) and
/// finds its rule, or the error that answers it; notes in `cx` what routing matched.
fn route(
    router: &SocketRouter,
    req: &mut Request<RequestBody>,
    cx: &mut RequestCtx,
) -> Result<Routed, ProxyError> {
    let host = util::request_host(req.uri(), req.headers())
        .ok_or(ProxyError::BadRequest("missing Host"))?;
    if let Some(sni) = cx.down.sni.as_deref()
        && !router.same_listener(sni, &host)
    {
        return Err(ProxyError::Misdirected);
    }
    let normalized = path::normalize(req.uri().path()).map_err(ProxyError::BadRequest)?;
    let m = router
        .route(
            &host,
            &normalized.matching,
            req.method(),
            req.headers(),
            req.uri().query(),
        )
        .ok_or(ProxyError::NoRoute)?;
    let c = m.candidate;
    cx.route = Some(c.rule.route.clone());
    cx.rule_index = c.order.1;
    cx.prefix = c.prefix.clone();
    cx.matching =
        (normalized.matching != normalized.forward).then(|| normalized.matching.to_string());
    let routed = Routed {
        rule: c.rule.clone(),
        chain: c.chain.clone(),
        metrics: c.metrics.clone(),
    };
    // The backend gets the path that was routed and checked.
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
    Ok(routed)
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
        cx: &RequestCtx,
        status: u16,
        rule: Option<&CompiledRule>,
        upstream: Option<&SocketAddr>,
        elapsed: Duration,
    ) {
        tracing::info!(
            target: "access",
            request_id = cx.id.to_str().unwrap_or_default(),
            client = %self.client.ip(),
            method = %self.method,
            host = %self.host,
            path = %self.path,
            protocol = ?self.version,
            status,
            route = rule.map_or("none", |r| &*r.route),
            upstream = upstream.map(|u| u.to_string()).unwrap_or_default(),
            consumer = cx.identity.consumer.as_deref().unwrap_or_default(),
            attempts = cx.attempts,
            reason = self.reason.as_deref().unwrap_or_default(),
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        );
    }
}
