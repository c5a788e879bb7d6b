//! The dataplane as a whole: takes snapshots (from standalone mode now, from the controller
//! later) and serves them.

use crate::listen::{Server, ServerSettings};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, ProxySettings};
use crate::table;
use crate::upstream::Upstreams;
use parking_lot::Mutex;
use portico_model::Snapshot;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct DataplaneSettings {
    /// Address for listeners whose Gateway names none.
    pub default_bind: IpAddr,
    pub proxy: ProxySettings,
    pub server: ServerSettings,
    /// Keys a local rate limit holds per replica at most.
    pub rate_limit_max_keys: usize,
    /// The memory cache's budget in bytes (responses, headers and keys).
    pub cache_memory_bytes: usize,
}

/// What applying a configuration did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub warnings: Vec<String>,
    /// Sockets the change needed and could not bind: when any, the change was refused and
    /// the running configuration left as it was.
    pub bind_failures: BTreeMap<SocketAddr, String>,
    pub sockets: Vec<String>,
    pub routes: usize,
}

pub struct Dataplane {
    pub metrics: Arc<Metrics>,
    upstreams: Arc<Upstreams>,
    /// JWKS caches, verified credentials and the client for auth calls, kept across
    /// snapshots.
    auth: crate::auth::AuthShared,
    /// Rate-limit counters and Redis connections, likewise.
    limits: Arc<crate::ratelimit::RateLimitShared>,
    /// The memory cache and its coalescing table, likewise.
    pub cache: Arc<crate::cache::step::CacheShared>,
    server: Server,
    default_bind: IpAddr,
    routes: Mutex<BTreeSet<String>>,
    /// The route series the metrics hold, to remove those no longer configured.
    route_series: Mutex<BTreeSet<crate::metrics::RouteSeries>>,
    auth_policies: Mutex<BTreeSet<String>>,
    rate_limit_policies: Mutex<BTreeSet<String>>,
    cache_series: Mutex<BTreeSet<crate::metrics::CacheSeries>>,
    /// The ids of the CacheInvalidations applied, among those the snapshots carry.
    purges_applied: Mutex<BTreeSet<String>>,
    ready: AtomicBool,
    discovery: std::sync::OnceLock<Arc<dyn Discovery>>,
}

/// Where endpoints come from when not from the snapshots: the EndpointSlices a dataplane
/// watches in a cluster. Discovery pushes what it finds into [`Dataplane::upstreams`]; the
/// dataplane only tells it which namespaces to watch.
pub trait Discovery: Send + Sync {
    /// Narrows discovery to the Services of these namespaces; each receiver turns true once
    /// its namespace's endpoints have been pushed.
    fn scope(
        self: Arc<Self>,
        namespaces: &BTreeSet<String>,
    ) -> Vec<tokio::sync::watch::Receiver<bool>>;
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("server", &self.server)
            .finish()
    }
}

impl Dataplane {
    pub fn new(settings: &DataplaneSettings) -> Self {
        let metrics = Arc::new(Metrics::default());
        let proxy = Proxy::new(&settings.proxy, &metrics);
        let cache = crate::cache::step::CacheShared::new(settings.cache_memory_bytes, &metrics);
        Self {
            cache,
            server: Server::new(proxy, metrics.clone(), &settings.server),
            metrics,
            upstreams: Upstreams::new(settings.proxy.conn()),
            auth: crate::auth::AuthShared::default(),
            limits: {
                let l = Arc::new(crate::ratelimit::RateLimitShared::new(
                    settings.rate_limit_max_keys,
                ));
                // Idle rate-limit keys are dropped every 10 s, not only when a store fills.
                if tokio::runtime::Handle::try_current().is_ok() {
                    l.start_sweeper(Duration::from_secs(10));
                }
                l
            },
            default_bind: settings.default_bind,
            routes: Mutex::new(BTreeSet::new()),
            route_series: Mutex::new(BTreeSet::new()),
            auth_policies: Mutex::new(BTreeSet::new()),
            rate_limit_policies: Mutex::new(BTreeSet::new()),
            cache_series: Mutex::new(BTreeSet::new()),
            purges_applied: Mutex::new(BTreeSet::new()),
            ready: AtomicBool::new(false),
            discovery: std::sync::OnceLock::new(),
        }
    }

    /// The Prometheus text of this dataplane's metrics (what the admin port serves).
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// The backend pools, for discovery to push endpoints into.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// From now on endpoints come from `discovery` (a cluster's EndpointSlices) instead of
    /// from snapshots.
    pub fn set_discovery(&self, discovery: Arc<dyn Discovery>) {
        self.upstreams.discover();
        let _ = self.discovery.set(discovery);
    }

    /// Gets the endpoint source ready for `snapshots` before they are applied: it learns the
    /// namespaces they send traffic to (and those in use now, until the swap) and is waited
    /// for, at most `limit`, so new routes do not start without endpoints.
    pub async fn prepare(&self, snapshots: &[Snapshot], limit: Duration) {
        let Some(source) = self.discovery.get() else {
            return;
        };
        let mut namespaces = self.upstreams.namespaces();
        namespaces.extend(
            snapshots
                .iter()
                .flat_map(|s| s.backends.iter().map(|b| b.id.namespace.clone())),
        );
        let waits = source.clone().scope(&namespaces);
        let all = async {
            for mut w in waits {
                let _ = w.wait_for(|synced| *synced).await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("EndpointSlices of some namespaces are not listed yet; applying anyway");
        }
    }

    /// Applies the purges of `snapshots` this replica has not applied yet, each once; forgets
    /// those no snapshot carries any more.
    fn purge(&self, snapshots: &[Snapshot]) {
        let mut applied = self.purges_applied.lock();
        let mut current = BTreeSet::new();
        for p in snapshots.iter().flat_map(|s| &s.purges) {
            current.insert(p.id.clone());
            if applied.contains(&p.id) {
                continue;
            }
            let at = if p.created > 0 {
                p.created
            } else {
                crate::cache::freshness::now()
            };
            let n = self
                .cache
                .purge_scoped(&crate::cache::step::Purge::of(p), &p.routes, at);
            tracing::info!(invalidation = %p.id, kind = ?p.kind, value = %p.value, removed = n, "cache purge");
        }
        *applied = current;
    }

    /// Serves `snapshots` from now on (one per Gateway), without dropping requests in flight.
    /// Their cache purges are applied first, whatever else becomes of the configuration.
    pub fn apply(&self, snapshots: &[Snapshot], version: u64) -> ApplyReport {
        self.purge(snapshots);
        let tables = table::build(
            snapshots,
            self.default_bind,
            &self.upstreams,
            &self.metrics,
            &self.auth,
            &self.limits,
            &self.cache,
        );
        let warnings = tables.warnings.clone();
        let backends = tables.backends.clone();
        let routes = tables.routes.clone();
        let route_series = tables.route_series.clone();
        let certificates = tables.certificates.clone();
        let policies = tables.auth_policies.clone();
        let limit_policies = tables.rate_limit_policies.clone();
        let cache_series = tables.cache_series.clone();
        if let Err(bind_failures) = self.server.apply(tables) {
            // Refused whole: the running configuration keeps serving as it was.
            return ApplyReport {
                warnings,
                bind_failures,
                sockets: self.server.addresses(),
                routes: self.routes.lock().len(),
            };
        }
        let bind_failures = BTreeMap::new();
        self.upstreams.retain(&backends, &self.metrics);
        *self.routes.lock() = routes;
        self.metrics.certificates(certificates);
        {
            let mut known = self.route_series.lock();
            for gone in known.difference(&route_series) {
                self.metrics.forget_route(gone);
            }
            *known = route_series;
        }
        {
            let mut known = self.auth_policies.lock();
            for gone in known.difference(&policies) {
                self.metrics.forget_auth(gone);
            }
            *known = policies;
        }
        {
            let mut known = self.rate_limit_policies.lock();
            for gone in known.difference(&limit_policies) {
                self.metrics.forget_rate_limit(gone);
            }
            *known = limit_policies;
        }
        {
            let mut known = self.cache_series.lock();
            for gone in known.difference(&cache_series) {
                self.metrics.forget_cache(gone);
            }
            *known = cache_series;
        }
        self.metrics
            .config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        self.metrics.config_reloads.inc();
        // Ready once it serves a Gateway's configuration, whatever that holds: a Gateway
        // with nothing to serve (its one listener's Secret missing, not accepted) has ready
        // pods serving no socket, as its status says, rather than pods that never become
        // ready and so hold up every rollout and, through the PDB, every node drain. In a
        // cluster that is every snapshot applied (one Gateway's, even a deleted Gateway's
        // empty one, whose pods are removed next); standalone, a directory without a single
        // Gateway is not ready.
        self.ready.store(!snapshots.is_empty(), Ordering::Release);
        ApplyReport {
            warnings,
            bind_failures,
            sockets: self.server.addresses(),
            routes: self.routes.lock().len(),
        }
    }

    /// Ready once a configuration of at least one Gateway is applied (every socket bound),
    /// even one that serves no socket.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Graceful drain; see [`Server::shutdown`].
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.ready.store(false, Ordering::Release);
        self.server.shutdown(deadline).await
    }
}
