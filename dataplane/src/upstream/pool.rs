//! Backend pools: one per backend (Service port and protocol), shared by every rule that
//! uses it, so balancing state and endpoint state survive a snapshot swap and endpoints can
//! change without rebuilding routes.
//!
//! Endpoints reach the pools one way only: pushed. In standalone mode each snapshot carries
//! them; in a cluster, discovery (the EndpointSlice watcher) pushes a Service's endpoints
//! whenever its slices change, and the pools keep the last push of every Service so that a
//! pool a later snapshot creates starts with them. Nothing here calls back into discovery.

use super::balance::{Balancer, Candidates};
use super::conns::{ConnSettings, H2Settings};
use super::endpoint::EndpointSet;
use super::gate::ConnGate;
use super::health;
use super::outlier::{self, Outcome, OutlierSettings, Verdict};
use super::retry::{BudgetSettings, RetryBudget};
use crate::compress::CompressionPolicy;
use crate::metrics::{Metrics, UpstreamMetrics};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use portico_model::BackendSettings;
use portico_model::backend::{
    CircuitBreaker, HashOn, HealthCheck, Http2, LoadBalancer, SessionPersistence, SlowStart,
};
use portico_model::{AppProtocol, Backend, BackendId, BackendTls, Endpoint, RouteRetry};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// A Service: (namespace, name).
pub type ServiceKey = (String, String);

/// A Service's endpoints by port name (`""` for an unnamed port), as discovery found them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceEndpoints(pub BTreeMap<String, Vec<Endpoint>>);

impl ServiceEndpoints {
    fn port(&self, name: Option<&str>) -> &[Endpoint] {
        self.0.get(name.unwrap_or("")).map_or(&[], Vec::as_slice)
    }
}

/// A backend's settings: its BackendPolicy's, or the defaults (on the dataplane's own
/// connection settings).
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSettings {
    /// The BackendPolicy they come from.
    pub policy: Option<portico_model::ObjectRef>,
    pub balancer: LoadBalancer,
    /// The key of a consistent-hash balancer.
    pub hash_on: Option<HashOn>,
    pub slow_start: Option<SlowStart>,
    pub outlier: OutlierSettings,
    pub health_check: Option<HealthCheck>,
    /// Whether a connect failure moves on to the next endpoint.
    pub retry_connect_failure: bool,
    /// Whether route retries apply to non-idempotent methods (POST, PATCH, ...).
    pub retry_non_idempotent: bool,
    pub budget: BudgetSettings,
    pub breaker: CircuitBreaker,
    pub conn: ConnSettings,
    /// Session persistence for rules without their own.
    pub session: Option<SessionPersistence>,
    /// Retries for rules without their own.
    pub rule_retry: Option<RouteRetry>,
    /// Each attempt's time to answer, for rules without a backend request timeout.
    pub per_try_timeout: Option<Duration>,
    /// Responses compressed on the way to clients.
    pub compression: Option<Arc<CompressionPolicy>>,
    /// The PROXY protocol header a stream route's connections start with.
    pub proxy_protocol: Option<portico_model::backend::ProxyProtocol>,
}

impl PoolSettings {
    /// `settings` (none: the defaults) over the dataplane's connection settings `base`.
    pub fn new(settings: Option<&BackendSettings>, base: &ConnSettings) -> Self {
        let defaults = BackendSettings::default();
        let s = settings.unwrap_or(&defaults);
        let ms = Duration::from_millis;
        Self {
            policy: settings.map(|s| s.policy.clone()),
            balancer: s.load_balancer,
            hash_on: s.hash_on.clone(),
            slow_start: s.slow_start,
            outlier: OutlierSettings::from_model(&s.outlier_detection),
            health_check: s.health_check.clone(),
            retry_connect_failure: s.retry.on_connect_failure,
            retry_non_idempotent: s.retry.non_idempotent,
            budget: BudgetSettings::from_model(&s.retry),
            breaker: s.circuit_breaker,
            conn: ConnSettings {
                connect_timeout: s
                    .connection
                    .connect_timeout_ms
                    .map_or(base.connect_timeout, ms),
                idle_timeout: s.connection.idle_timeout_ms.map_or(base.idle_timeout, ms),
                keepalive: s.connection.tcp_keepalive.or(base.keepalive),
                max_connections: s.circuit_breaker.max_connections,
                max_pending: s
                    .circuit_breaker
                    .max_pending_requests
                    .unwrap_or(ConnSettings::DEFAULT_MAX_PENDING),
                h2: match s.connection.http2 {
                    None => base.h2,
                    Some(h) => H2Settings {
                        max_streams: h.max_concurrent_streams,
                        ping_interval: h.keepalive_interval_ms.map(ms),
                        ping_timeout: ms(h
                            .keepalive_timeout_ms
                            .unwrap_or(Http2::DEFAULT_KEEPALIVE_TIMEOUT_MS)),
                    },
                },
                ..*base
            },
            session: s.session_persistence.clone(),
            rule_retry: s.retry.rules.clone(),
            per_try_timeout: s.retry.per_try_timeout_ms.map(ms),
            compression: s
                .compression
                .as_ref()
                .map(|c| Arc::new(CompressionPolicy::new(c))),
            proxy_protocol: s.connection.proxy_protocol,
        }
    }
}

/// A circuit breaker refused a request: `limit` names the field (`maxRequests`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overloaded {
    pub limit: &'static str,
}

/// One forwarded TCP or TLS connection, or UDP flow, counted against its backend until
/// dropped: a place under the circuit breaker's `maxConnections` (shared with the HTTP
/// connections to the same backend), and its endpoint's in-flight count, so least-request
/// balancing sees long-lived connections as load.
#[derive(Debug)]
pub struct StreamHold {
    _place: super::gate::Open,
    in_flight: Option<super::endpoint::InFlight>,
}

impl StreamHold {
    /// The connection goes to `endpoint` (it is connecting, or connected): counted there,
    /// and no longer at the endpoint it tried before.
    pub fn to(&mut self, endpoint: &super::endpoint::Endpoint) {
        self.in_flight = Some(super::endpoint::InFlight::new(&endpoint.state));
    }
}

/// A retry the budget and the circuit breaker let through.
#[derive(Debug)]
pub struct RetryPermit {
    _held: Option<Admitted>,
}

/// A request (or retry) a circuit breaker let through, counted until it is dropped.
#[derive(Debug)]
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes one from `count` if it stays within `max` (`None`: no limit, nothing counted).
fn admit(count: &Arc<AtomicUsize>, max: Option<u32>) -> Result<Option<Admitted>, ()> {
    let Some(max) = max else { return Ok(None) };
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    count
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .map(|_| Some(Admitted(count.clone())))
        .map_err(|_| ())
}

#[derive(Debug)]
pub struct BackendPool {
    pub id: BackendId,
    /// What names this backend in a session token ([`super::session::backend_tag`]).
    pub tag: u64,
    pub protocol: AppProtocol,
    pub port_name: Option<String>,
    /// TLS to the endpoints (a BackendTLSPolicy); a pool's TLS never changes (another
    /// policy makes another pool, so no connection outlives the settings it was made with).
    pub tls: Option<super::tls::UpstreamTls>,
    /// The same TLS without ALPN, for TCPRoute and terminated TLSRoute connections.
    pub stream_tls: Option<super::tls::UpstreamTls>,
    /// The BackendTLSPolicy, for errors.
    pub tls_policy: Option<String>,
    endpoints: ArcSwap<EndpointSet>,
    balancer: Balancer,
    settings: ArcSwap<PoolSettings>,
    /// Endpoints ejected, as last counted (a hint: 0 lets requests skip the clock).
    ejected: AtomicUsize,
    budget: RetryBudget,
    /// Endpoints failing their active health checks, as last counted.
    unhealthy: AtomicUsize,
    /// Endpoints ramping up under slow start, as last counted (a hint: 0 lets requests skip
    /// the clock).
    warming: AtomicUsize,
    /// Whether the health-check task runs.
    checking: AtomicBool,
    /// Wakes the health-check task when the settings change (it may be asleep for a long
    /// interval, or asked to stop).
    recheck: Arc<tokio::sync::Notify>,
    /// Requests and retries in flight, counted while a circuit breaker limits them.
    requests: Arc<AtomicUsize>,
    retries: Arc<AtomicUsize>,
    /// This backend's series (`portico_upstream_*`).
    pub metrics: UpstreamMetrics,
    /// Connections open to the endpoints, under `maxConnections`.
    pub(super) gate: Arc<ConnGate>,
}

impl BackendPool {
    fn new(b: &Backend, settings: PoolSettings, metrics: UpstreamMetrics) -> Self {
        Self {
            id: b.id.clone(),
            tag: super::session::backend_tag(&b.id),
            protocol: b.protocol,
            port_name: b.port_name.clone(),
            tls: b
                .tls
                .as_ref()
                .map(|t| super::tls::UpstreamTls::new(t, b.protocol)),
            stream_tls: b.tls.as_ref().map(super::tls::UpstreamTls::for_streams),
            tls_policy: b.tls.as_ref().map(|t| t.policy.to_string()),
            endpoints: ArcSwap::default(),
            balancer: Balancer::default(),
            settings: ArcSwap::from_pointee(settings),
            ejected: AtomicUsize::new(0),
            unhealthy: AtomicUsize::new(0),
            warming: AtomicUsize::new(0),
            checking: AtomicBool::new(false),
            recheck: Arc::default(),
            budget: RetryBudget::default(),
            requests: Arc::default(),
            retries: Arc::default(),
            metrics,
            gate: Arc::default(),
        }
    }

    /// Counts one forwarded connection or flow, if the circuit breaker's `maxConnections`
    /// has room for it now: at the limit, idle HTTP connections to the backend give their
    /// places up first (as they do for a request); then a stream is refused, never queued
    /// (counted in `portico_upstream_overloaded{limit="maxConnections"}`). Taken before
    /// connecting, so a refused client costs the backend nothing.
    pub fn hold_stream(&self, settings: &PoolSettings) -> Result<StreamHold, Overloaded> {
        let max = settings.breaker.max_connections;
        loop {
            if let Some(place) = self.gate.try_open(max) {
                return Ok(StreamHold {
                    _place: place,
                    in_flight: None,
                });
            }
            if !self
                .endpoints()
                .all()
                .any(|e| e.state.conns.close_one_idle())
            {
                break;
            }
        }
        let limit = "maxConnections";
        self.metrics.overloaded(limit);
        Err(Overloaded { limit })
    }

    /// The settings now.
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    /// Takes new settings (a policy changed); endpoint state, balancing position and the
    /// retry budget's window stay.
    fn configure(self: &Arc<Self>, settings: PoolSettings) {
        if **self.settings.load() != settings {
            if settings.policy.is_some() || self.settings.load().policy.is_some() {
                tracing::info!(backend = %self.id, policy = ?settings.policy.as_ref().map(ToString::to_string), "backend settings changed");
            }
            self.settings.store(Arc::new(settings));
            self.recheck.notify_one();
        }
        self.start_checks();
    }

    /// Starts the active health-check task if the settings ask for one and none runs.
    fn start_checks(self: &Arc<Self>) {
        let wanted = self.settings.load().health_check.is_some();
        if wanted
            && tokio::runtime::Handle::try_current().is_ok()
            && !self.checking.swap(true, Ordering::SeqCst)
        {
            tokio::spawn(check_endpoints(Arc::downgrade(self), self.recheck.clone()));
        }
    }

    /// One round of active health checks over every endpoint, concurrently. Returns how
    /// many are out afterwards.
    async fn check_round(&self, check: &HealthCheck) -> usize {
        let set = self.endpoints();
        let mut probes = tokio::task::JoinSet::new();
        for e in set.all() {
            // A TCP probe opens what a TCPRoute's connection would (TLS without ALPN); an HTTP
            // or gRPC one speaks the pool's protocol.
            let tls = match check.probe {
                portico_model::backend::Probe::Tcp => self.stream_tls.clone(),
                _ => self.tls.clone(),
            };
            let (e, check) = (e.clone(), check.clone());
            // Probes take the PROXY protocol as stream routes' connections do.
            let proxy = self.settings.load().proxy_protocol;
            probes.spawn(async move {
                let passed = health::probe(e.addr, &check, tls.as_ref(), proxy).await;
                (e, passed)
            });
        }
        while let Some(Ok((e, passed))) = probes.join_next().await {
            if passed {
                self.metrics.health_passed.inc();
            } else {
                self.metrics.health_failed.inc();
            }
            match e.state.health.record(passed, check) {
                health::Change::Down => tracing::warn!(
                    backend = %self.id,
                    endpoint = %e.addr,
                    failures = check.unhealthy_threshold,
                    "endpoint out of balancing: it failed its active health checks"
                ),
                health::Change::Up => {
                    // Passing its probes also ends an ejection by passive checks: the
                    // endpoint that came back is used now, not when its ejection runs out.
                    let ejected = e.state.outlier.end_ejection(outlier::now_ms());
                    if ejected {
                        let _ =
                            self.ejected
                                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                    n.checked_sub(1)
                                });
                        self.metrics.ejected.dec();
                    }
                    tracing::info!(
                        backend = %self.id,
                        endpoint = %e.addr,
                        ejection_ended = ejected,
                        "endpoint back in balancing: it passed its active health checks"
                    );
                }
                health::Change::None => {}
            }
        }
        self.count_unhealthy(&set, outlier::now_ms())
    }

    /// Checks were turned off: every endpoint is back in.
    fn stop_checks(&self) {
        for e in self.endpoints().all() {
            e.state.health.reset();
        }
        self.unhealthy.store(0, Ordering::Relaxed);
        self.metrics.unhealthy.set(0);
    }

    /// The endpoints now: hold the set for as long as the request uses its endpoints.
    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    /// The serving endpoints of `set` in the order this request should try them, ejected
    /// ones passed over (unless so many are out that all are used).
    ///
    /// `hash`: the request's consistent-hash key, hashed (see [`hash_key`]).
    pub fn candidates<'a>(
        &self,
        set: &'a EndpointSet,
        settings: &PoolSettings,
        hash: Option<u64>,
    ) -> Candidates<'a> {
        let serving = set.serving();
        let ejected = self.ejected.load(Ordering::Relaxed);
        let unhealthy = self.unhealthy.load(Ordering::Relaxed);
        let out = ejected + unhealthy;
        // When too many are out (passively or actively), all are used.
        let panicking = out > 0 && outlier::panicking(&settings.outlier, serving.len(), out);
        let now = if ejected == 0 || panicking {
            0
        } else {
            outlier::now_ms()
        };
        let skip_unhealthy = unhealthy > 0 && !panicking && settings.health_check.is_some();
        let hashed = match settings.balancer {
            LoadBalancer::ConsistentHash => hash.and_then(|h| set.hashed(h)),
            _ => None,
        };
        let candidates =
            self.balancer
                .candidates(settings.balancer, serving, now, skip_unhealthy, hashed);
        match settings.slow_start {
            Some(s)
                if settings.balancer != LoadBalancer::ConsistentHash
                    && self.warming.load(Ordering::Relaxed) > 0 =>
            {
                candidates.slow_start(s, outlier::now_ms())
            }
            _ => candidates,
        }
    }

    /// Counts the endpoints still ramping up (forgetting the ramp of those done).
    fn count_warming(&self, set: &EndpointSet, settings: &PoolSettings, now: u64) {
        let window = settings.slow_start.map(|s| s.window_ms);
        let warming = set
            .all()
            .filter(|e| e.state.still_warming(window, now))
            .count();
        self.warming.store(warming, Ordering::Relaxed);
    }

    /// Lets a request through the `maxRequests` circuit breaker (counted until the permit
    /// drops: hold it until the response body ends), and counts it in the retry budget.
    /// `Err`: over the limit (counted); answer 503 at once.
    pub fn admit(&self, settings: &PoolSettings) -> Result<Option<Admitted>, Overloaded> {
        let permit = admit(&self.requests, settings.breaker.max_requests).map_err(|()| {
            self.metrics.overloaded_requests.inc();
            Overloaded {
                limit: "maxRequests",
            }
        })?;
        self.budget.deposit();
        Ok(permit)
    }

    /// Whether a failed attempt may be retried on another endpoint: within the retry budget
    /// (charged) and the `maxRetries` circuit breaker (the permit is held for the retry).
    /// `None`: no retry; the failure stands (and is counted).
    pub fn may_retry(&self, settings: &PoolSettings) -> Option<RetryPermit> {
        if !self.budget.withdraw(&settings.budget) {
            self.metrics.budget_exhausted.inc();
            return None;
        }
        let Ok(permit) = admit(&self.retries, settings.breaker.max_retries) else {
            self.metrics.overloaded_retries.inc();
            return None;
        };
        self.metrics.retries.inc();
        Some(RetryPermit { _held: permit })
    }

    /// Counts how an attempt at `endpoint` ended, ejecting it when it keeps failing.
    pub fn record(
        &self,
        endpoint: &super::endpoint::Endpoint,
        outcome: Outcome,
        settings: &PoolSettings,
    ) {
        // A success needs no clock.
        let now = if outcome == Outcome::Success {
            0
        } else {
            outlier::now_ms()
        };
        let may_eject = || {
            let set = self.endpoints.load();
            let ejected = set
                .all()
                .filter(|e| e.state.outlier.is_ejected(now))
                .count();
            outlier::room_for_one_more(&settings.outlier, set.serving().len(), ejected)
        };
        match endpoint
            .state
            .outlier
            .record(outcome, &settings.outlier, now, may_eject)
        {
            Verdict::Keep => {}
            Verdict::Eject { for_ms, reason } => {
                self.ejected.fetch_add(1, Ordering::Relaxed);
                self.metrics.ejections.inc();
                self.metrics.ejected.inc();
                tracing::warn!(
                    backend = %self.id,
                    endpoint = %endpoint.addr,
                    reason,
                    seconds = for_ms / 1000,
                    "endpoint ejected by passive health checks"
                );
            }
            Verdict::Spared => {
                tracing::info!(
                    backend = %self.id,
                    endpoint = %endpoint.addr,
                    "endpoint not ejected: the most endpoints that may be out already are"
                );
            }
        }
    }

    /// Once a second: ends ejections whose time is over (and says so), recounts those out,
    /// moves the retry budget's window on.
    fn tick(&self) {
        self.budget.tick();
        self.metrics
            .connections
            .set(i64::try_from(self.gate.open()).unwrap_or(i64::MAX));
        let settings = self.settings.load();
        let now = outlier::now_ms();
        let set = self.endpoints.load();
        self.metrics
            .endpoints
            .set(i64::try_from(set.serving().len()).unwrap_or(i64::MAX));
        let mut ejected = 0;
        for e in set.all() {
            let (out, returned) = e.state.outlier.check(now);
            if returned {
                tracing::info!(backend = %self.id, endpoint = %e.addr, "ejected endpoint back in balancing");
            }
            ejected += usize::from(out);
            if !out {
                e.state
                    .outlier
                    .forget_after(now, settings.outlier.max_ejection);
            }
        }
        self.ejected.store(ejected, Ordering::Relaxed);
        self.metrics
            .ejected
            .set(i64::try_from(ejected).unwrap_or(i64::MAX));
        // The endpoints may have changed since the last health-check round.
        if settings.health_check.is_some() {
            self.count_unhealthy(&set, now);
        }
        if self.warming.load(Ordering::Relaxed) > 0 {
            // The set as of now: an update since the start of this tick counted its own.
            self.count_warming(&self.endpoints.load(), &settings, now);
        }
    }

    /// Counts the serving endpoints out for failing their health checks (and not ejected
    /// too, so that none is counted twice against the panic threshold).
    fn count_unhealthy(&self, set: &EndpointSet, now: u64) -> usize {
        let out = set
            .serving()
            .iter()
            .filter(|e| e.state.health.is_unhealthy() && !e.state.outlier.is_ejected(now))
            .count();
        self.unhealthy.store(out, Ordering::Relaxed);
        self.metrics
            .unhealthy
            .set(i64::try_from(out).unwrap_or(i64::MAX));
        out
    }

    /// Replaces the endpoints; an address that stays keeps its state.
    fn update(&self, discovered: &[Endpoint]) {
        let current = self.endpoints.load();
        let new = EndpointSet::update(&current, discovered);
        if !new.same_addresses(&current) {
            self.count_warming(&new, &self.settings.load(), outlier::now_ms());
            self.endpoints.store(Arc::new(new));
        }
    }
}

/// What a pool is for: a backend, the protocol spoken to it, and its TLS.
pub type PoolKey = (BackendId, AppProtocol, Option<BackendTls>);

/// The key of `b`'s pool.
pub fn pool_key(b: &Backend) -> PoolKey {
    (b.id.clone(), b.protocol, b.tls.clone())
}

/// Every pool the current snapshots use, keyed by backend.
#[derive(Debug, Default)]
pub struct Upstreams {
    pools: Mutex<HashMap<PoolKey, Arc<BackendPool>>>,
    /// The last endpoints discovery pushed, by Service; `None` while endpoints come from
    /// snapshots.
    discovered: Mutex<Option<HashMap<ServiceKey, Arc<ServiceEndpoints>>>>,
    pub settings: ConnSettings,
}

impl Upstreams {
    pub fn new(settings: ConnSettings) -> Arc<Self> {
        let upstreams = Arc::new(Self {
            settings,
            ..Self::default()
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let every =
                (settings.idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
            tokio::spawn(sweep(Arc::downgrade(&upstreams), every));
            tokio::spawn(tick(Arc::downgrade(&upstreams)));
        }
        upstreams
    }

    /// The pool for `b`, reused when it exists. Endpoints come from the snapshot, unless
    /// discovery pushes them (then a new pool starts with the Service's last push).
    pub fn get(&self, b: &Backend, metrics: &Metrics) -> Arc<BackendPool> {
        let discovered = self.discovered.lock();
        let mut pools = self.pools.lock();
        let mut created = false;
        let settings = PoolSettings::new(b.settings.as_ref(), &self.settings);
        let pool = pools.entry(pool_key(b)).or_insert_with(|| {
            created = true;
            Arc::new(BackendPool::new(
                b,
                settings.clone(),
                metrics.upstream(&b.id.to_string()),
            ))
        });
        if created {
            pool.start_checks();
        } else {
            pool.configure(settings);
        }
        match discovered.as_ref() {
            None => pool.update(&b.endpoints),
            Some(by_service) if created => {
                let key = (b.id.namespace.clone(), b.id.name.clone());
                if let Some(eps) = by_service.get(&key) {
                    pool.update(eps.port(pool.port_name.as_deref()));
                }
            }
            Some(_) => {}
        }
        pool.clone()
    }

    /// From now on endpoints are pushed by discovery, not taken from snapshots.
    pub fn discover(&self) {
        self.discovered.lock().get_or_insert_with(HashMap::new);
    }

    fn pools_where(&self, which: impl Fn(&BackendId) -> bool) -> Vec<Arc<BackendPool>> {
        self.pools
            .lock()
            .values()
            .filter(|p| which(&p.id))
            .cloned()
            .collect()
    }

    /// The endpoints of one Service now (`None`: it has none, or is gone).
    pub fn push(&self, namespace: &str, name: &str, endpoints: Option<ServiceEndpoints>) {
        let endpoints = endpoints.map(Arc::new);
        {
            let mut discovered = self.discovered.lock();
            let by_service = discovered.get_or_insert_with(HashMap::new);
            let key = (namespace.to_string(), name.to_string());
            match &endpoints {
                Some(e) => by_service.insert(key, e.clone()),
                None => by_service.remove(&key),
            };
        }
        let none = ServiceEndpoints::default();
        let eps = endpoints.as_deref().unwrap_or(&none);
        for p in self.pools_where(|id| id.namespace == namespace && id.name == name) {
            p.update(eps.port(p.port_name.as_deref()));
        }
    }

    /// Every Service of a namespace at once (a fresh listing; a Service not in it has no
    /// endpoints any more). `None`: the namespace is no longer watched.
    pub fn push_namespace(
        &self,
        namespace: &str,
        services: Option<HashMap<String, ServiceEndpoints>>,
    ) {
        let services: HashMap<String, Arc<ServiceEndpoints>> = services
            .unwrap_or_default()
            .into_iter()
            .map(|(name, e)| (name, Arc::new(e)))
            .collect();
        {
            let mut discovered = self.discovered.lock();
            let by_service = discovered.get_or_insert_with(HashMap::new);
            by_service.retain(|(ns, _), _| ns != namespace);
            by_service.extend(
                services
                    .iter()
                    .map(|(name, e)| ((namespace.to_string(), name.clone()), e.clone())),
            );
        }
        let none = ServiceEndpoints::default();
        for p in self.pools_where(|id| id.namespace == namespace) {
            let eps = services.get(&p.id.name).map_or(&none, |e| &**e);
            p.update(eps.port(p.port_name.as_deref()));
        }
    }

    /// The namespaces of the backends in use.
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.pools
            .lock()
            .keys()
            .map(|(id, _, _)| id.namespace.clone())
            .collect()
    }

    /// Drops pools no snapshot uses any more (their endpoints' connections close), and their
    /// series.
    pub fn retain(&self, used: &[PoolKey], metrics: &Metrics) {
        let mut pools = self.pools.lock();
        let before: BTreeSet<BackendId> = pools.keys().map(|(id, _, _)| id.clone()).collect();
        pools.retain(|k, _| used.contains(k));
        for id in before {
            if !pools.keys().any(|(kept, _, _)| *kept == id) {
                metrics.forget_upstream(&id.to_string());
            }
        }
    }

    /// Closes idle connections past the idle timeout, in every pool.
    pub fn prune_idle(&self) {
        let pools: Vec<Arc<BackendPool>> = self.pools.lock().values().cloned().collect();
        for p in pools {
            for e in p.endpoints().all() {
                e.state.conns.prune(p.settings.load().conn.idle_timeout);
            }
        }
    }
}

/// The consistent-hash key of a request, hashed the same way on every replica (`None`: the
/// request does not have it). `client`: the client's address as the gateway sees it.
pub fn hash_key(
    on: &HashOn,
    headers: &http::HeaderMap,
    uri: &http::Uri,
    client: std::net::IpAddr,
) -> Option<u64> {
    use super::maglev::{FNV_BASIS, fnv1a};
    let hash = |b: &[u8]| fnv1a(b, FNV_BASIS);
    match on {
        HashOn::Header(name) => {
            let mut values = headers.get_all(name.as_str()).iter().peekable();
            values.peek()?;
            // Every value of a repeated header, in order.
            let mut h = FNV_BASIS;
            for v in values {
                h = fnv1a(v.as_bytes(), h);
                h = fnv1a(b",", h);
            }
            Some(h)
        }
        HashOn::Cookie(name) => crate::util::cookie_values(headers, name).next().map(hash),
        HashOn::QueryParameter(name) => uri.query().and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then(|| hash(v.as_bytes()))
            })
        }),
        HashOn::SourceIp => Some(match client {
            std::net::IpAddr::V4(ip) => hash(&ip.octets()),
            std::net::IpAddr::V6(ip) => hash(&ip.octets()),
        }),
    }
}

/// A pool's active health checks, round after round, until the pool is dropped or its
/// settings no longer ask for them.
async fn check_endpoints(pool: Weak<BackendPool>, recheck: Arc<tokio::sync::Notify>) {
    loop {
        let Some(p) = pool.upgrade() else { return };
        let Some(check) = p.settings.load().health_check.clone() else {
            p.stop_checks();
            p.checking.store(false, Ordering::SeqCst);
            // Turned back on meanwhile: this task goes on.
            if p.settings.load().health_check.is_some() && !p.checking.swap(true, Ordering::SeqCst)
            {
                continue;
            }
            return;
        };
        p.check_round(&check).await;
        drop(p);
        // Until the next round, or at once when the settings change.
        tokio::select! {
            () = tokio::time::sleep(health::next_round(&check)) => {}
            () = recheck.notified() => {}
        }
    }
}

/// Once a second, every pool's [`BackendPool::tick`].
async fn tick(upstreams: Weak<Upstreams>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(u) = upstreams.upgrade() else { return };
        let pools: Vec<Arc<BackendPool>> = u.pools.lock().values().cloned().collect();
        drop(u);
        for p in pools {
            p.tick();
        }
    }
}

async fn sweep(upstreams: Weak<Upstreams>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(u) = upstreams.upgrade() else { return };
        u.prune_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn ep(addr: &str, ready: bool, terminating: bool) -> Endpoint {
        Endpoint {
            address: addr.into(),
            port: 80,
            ready,
            serving: true,
            terminating,
        }
    }

    fn backend(name: &str, port_name: Option<&str>, endpoints: Vec<Endpoint>) -> Backend {
        Backend {
            id: BackendId {
                namespace: "ns".into(),
                name: name.into(),
                port: 80,
                udp: false,
            },
            protocol: AppProtocol::Http1,
            port_name: port_name.map(str::to_string),
            endpoints,
            settings: None,
            tls: None,
        }
    }

    fn first(pool: &BackendPool) -> Option<SocketAddr> {
        let set = pool.endpoints();
        pool.candidates(&set, &pool.settings(), None)
            .next()
            .map(|e| e.addr)
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        s.parse().ok()
    }

    #[test]
    fn hash_keys_from_headers_cookies_queries_and_addresses() {
        use std::net::IpAddr;
        let req = http::Request::get("/p?a=1&user=alice&b")
            .header("x-user", "alice")
            .header("cookie", "theme=dark; session=s-1")
            .body(())
            .expect("request");
        let (parts, ()) = req.into_parts();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let key = |on: HashOn| hash_key(&on, &parts.headers, &parts.uri, ip);
        let header = key(HashOn::Header("x-user".into()));
        let query = key(HashOn::QueryParameter("user".into()));
        assert!(header.is_some());
        // The same value hashes the same whatever it came from (one hash function).
        assert_eq!(query, key(HashOn::QueryParameter("user".into())));
        assert_eq!(
            key(HashOn::Cookie("session".into())),
            hash_key(
                &HashOn::QueryParameter("s".into()),
                &http::HeaderMap::new(),
                &"/?s=s-1".parse().expect("uri"),
                ip
            )
        );
        assert!(key(HashOn::SourceIp).is_some());
        assert_ne!(
            key(HashOn::SourceIp),
            hash_key(
                &HashOn::SourceIp,
                &parts.headers,
                &parts.uri,
                [10, 0, 0, 2].into()
            )
        );
        // Absent keys: none.
        assert_eq!(key(HashOn::Header("x-none".into())), None);
        assert_eq!(key(HashOn::Cookie("none".into())), None);
        assert_eq!(key(HashOn::QueryParameter("none".into())), None);
        // A bare parameter is present with an empty value.
        assert!(key(HashOn::QueryParameter("b".into())).is_some());
    }

    #[test]
    fn round_robin_over_ready_endpoints() {
        let pools = Upstreams::default();
        let pool = pools.get(
            &backend(
                "svc",
                None,
                vec![
                    ep("127.0.0.1", true, false),
                    ep("127.0.0.2", true, false),
                    ep("127.0.0.3", false, true),
                ],
            ),
            &Metrics::default(),
        );
        let picks: Vec<_> = (0..4).map(|_| first(&pool)).collect();
        assert_eq!(
            picks,
            [
                addr("127.0.0.1:80"),
                addr("127.0.0.2:80"),
                addr("127.0.0.1:80"),
                addr("127.0.0.2:80")
            ]
        );
    }

    #[test]
    fn terminating_endpoints_only_when_none_is_ready() {
        let pools = Upstreams::default();
        let m = Metrics::default();
        let pool = pools.get(
            &backend("svc", None, vec![ep("127.0.0.3", false, true)]),
            &m,
        );
        assert_eq!(first(&pool), addr("127.0.0.3:80"));
        pools.get(&backend("svc", None, vec![]), &m);
        assert_eq!(first(&pool), None);
    }

    #[test]
    fn ipv6_endpoints() {
        let pools = Upstreams::default();
        let pool = pools.get(
            &backend("svc", None, vec![ep("::1", true, false)]),
            &Metrics::default(),
        );
        assert_eq!(first(&pool), addr("[::1]:80"));
    }

    #[test]
    fn pools_are_reused_across_snapshots_and_endpoint_state_survives_updates() {
        let pools = Upstreams::default();
        let m = Metrics::default();
        let a = pools.get(
            &backend("svc", None, vec![ep("127.0.0.1", true, false)]),
            &m,
        );
        let before = a.endpoints().ready[0].state.clone();
        let b = pools.get(
            &backend(
                "svc",
                None,
                vec![ep("127.0.0.1", true, false), ep("127.0.0.9", true, false)],
            ),
            &m,
        );
        assert!(Arc::ptr_eq(&a, &b));
        let set = a.endpoints();
        assert_eq!(set.ready.len(), 2);
        assert!(
            Arc::ptr_eq(&set.ready[0].state, &before),
            "127.0.0.1 kept its state"
        );
        // Becoming terminating keeps it too.
        pools.get(
            &backend("svc", None, vec![ep("127.0.0.1", false, true)]),
            &m,
        );
        assert!(Arc::ptr_eq(&a.endpoints().terminating[0].state, &before));
    }

    #[test]
    fn discovery_pushes_endpoints_and_new_pools_start_with_the_last_push() {
        let pools = Upstreams::default();
        let m = Metrics::default();
        pools.discover();
        // Snapshot endpoints are ignored once discovery is on.
        let named = pools.get(
            &backend("svc", Some("http"), vec![ep("127.0.0.7", true, false)]),
            &m,
        );
        assert_eq!(first(&named), None);
        let mut by_port = BTreeMap::new();
        by_port.insert("http".to_string(), vec![ep("127.0.0.2", true, false)]);
        by_port.insert(String::new(), vec![ep("127.0.0.3", true, false)]);
        pools.push("ns", "svc", Some(ServiceEndpoints(by_port.clone())));
        assert_eq!(first(&named), addr("127.0.0.2:80"));
        // A pool created later (another port of the Service) starts with the last push.
        let mut unnamed = backend("svc", None, vec![]);
        unnamed.id.port = 81;
        let unnamed = pools.get(&unnamed, &m);
        assert_eq!(first(&unnamed), addr("127.0.0.3:80"));
        // A fresh listing of the namespace without the Service empties its pools.
        pools.push_namespace("ns", Some(HashMap::new()));
        assert_eq!(first(&named), None);
        assert_eq!(first(&unnamed), None);
        pools.push_namespace(
            "ns",
            Some(HashMap::from([(
                "svc".to_string(),
                ServiceEndpoints(by_port),
            )])),
        );
        assert_eq!(first(&named), addr("127.0.0.2:80"));
        pools.push("ns", "svc", None);
        assert_eq!(first(&named), None);
    }
}
