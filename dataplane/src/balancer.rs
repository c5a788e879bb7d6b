//! Endpoint pools: one per backend (Service port), shared by every rule that uses it, so that
//! round-robin state survives a snapshot swap and endpoints can change without rebuilding
//! routes.

use arc_swap::ArcSwap;
use http::uri::Authority;
use parking_lot::Mutex;
use portico_model::{AppProtocol, Backend, BackendId, Endpoint};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// An endpoint in the form the HTTP client wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub authority: Authority,
}

impl Upstream {
    fn new(e: &Endpoint) -> Option<Self> {
        let ip: IpAddr = e.address.parse().ok()?;
        let addr = SocketAddr::new(ip, e.port);
        let authority = Authority::try_from(addr.to_string()).ok()?;
        Some(Self { addr, authority })
    }
}

/// The endpoints to balance over: ready ones, and serving-but-terminating ones used only when
/// none is ready (as kube-proxy does).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EndpointSet {
    ready: Vec<Upstream>,
    terminating: Vec<Upstream>,
}

impl EndpointSet {
    pub fn new(endpoints: &[Endpoint]) -> Self {
        let mut set = Self::default();
        for e in endpoints {
            let Some(u) = Upstream::new(e) else { continue };
            if e.ready {
                set.ready.push(u);
            } else if e.serving && e.terminating {
                set.terminating.push(u);
            }
        }
        set
    }

    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.terminating.is_empty()
    }
}

/// Where endpoints come from when not from the snapshot: the EndpointSlices a dataplane
/// watches in a cluster.
pub trait EndpointSource: Send + Sync {
    /// The endpoints of a Service port (`port_name` matches the slices' port names).
    fn endpoints(&self, id: &BackendId, port_name: Option<&str>) -> Vec<Endpoint>;

    /// Narrows the source to the Services of these namespaces; each receiver turns true once
    /// its namespace is known (a source that always knows everything returns none).
    fn scope(
        self: std::sync::Arc<Self>,
        namespaces: &std::collections::BTreeSet<String>,
    ) -> Vec<tokio::sync::watch::Receiver<bool>> {
        let _ = namespaces;
        Vec::new()
    }
}

#[derive(Debug)]
pub struct EndpointPool {
    pub id: BackendId,
    pub protocol: AppProtocol,
    pub port_name: Option<String>,
    endpoints: ArcSwap<EndpointSet>,
    next: AtomicUsize,
    /// This backend's series (`portico_upstream_*`).
    pub metrics: crate::metrics::UpstreamMetrics,
}

impl EndpointPool {
    fn new(b: &Backend) -> Self {
        Self {
            id: b.id.clone(),
            protocol: b.protocol,
            port_name: b.port_name.clone(),
            endpoints: ArcSwap::from_pointee(EndpointSet::new(&b.endpoints)),
            next: AtomicUsize::new(0),
            metrics: crate::metrics::UpstreamMetrics::default(),
        }
    }

    /// Round robin over the ready endpoints (or the terminating ones when none is ready).
    pub fn pick(&self) -> Option<Upstream> {
        let set = self.endpoints.load();
        let list = if set.ready.is_empty() {
            &set.terminating
        } else {
            &set.ready
        };
        if list.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % list.len();
        Some(list[i].clone())
    }

    pub fn update(&self, endpoints: &[Endpoint]) {
        let new = EndpointSet::new(endpoints);
        if **self.endpoints.load() != new {
            self.endpoints.store(Arc::new(new));
        }
    }
}

/// Every pool the current snapshots use, keyed by backend.
#[derive(Debug, Default)]
pub struct Pools {
    pools: Mutex<HashMap<(BackendId, AppProtocol), Arc<EndpointPool>>>,
    /// Endpoints come from an [`EndpointSource`], not from snapshots.
    external: AtomicBool,
}

impl Pools {
    /// The pool for `b`, reused when it exists (endpoints updated in place from the snapshot,
    /// unless they come from elsewhere).
    pub fn get(&self, b: &Backend, metrics: &crate::metrics::Metrics) -> Arc<EndpointPool> {
        let mut pools = self.pools.lock();
        let pool = pools.entry((b.id.clone(), b.protocol)).or_insert_with(|| {
            let mut pool = EndpointPool::new(b);
            pool.metrics = metrics.upstream(&b.id.to_string());
            Arc::new(pool)
        });
        if !self.external.load(Ordering::Relaxed) {
            pool.update(&b.endpoints);
        }
        pool.clone()
    }

    pub fn set_external(&self) {
        self.external.store(true, Ordering::Relaxed);
    }

    /// Refreshes the endpoints of the pools whose backend `which` selects from `source`.
    pub fn refresh(&self, source: &dyn EndpointSource, which: impl Fn(&BackendId) -> bool) {
        let pools: Vec<Arc<EndpointPool>> = self
            .pools
            .lock()
            .values()
            .filter(|p| which(&p.id))
            .cloned()
            .collect();
        for p in pools {
            p.update(&source.endpoints(&p.id, p.port_name.as_deref()));
        }
    }

    /// The namespaces of the backends in use.
    pub fn namespaces(&self) -> std::collections::BTreeSet<String> {
        self.pools
            .lock()
            .keys()
            .map(|(id, _)| id.namespace.clone())
            .collect()
    }

    /// Drops pools no snapshot uses any more, and their series.
    pub fn retain(&self, used: &[(BackendId, AppProtocol)], metrics: &crate::metrics::Metrics) {
        let mut pools = self.pools.lock();
        let before: std::collections::BTreeSet<BackendId> =
            pools.keys().map(|(id, _)| id.clone()).collect();
        pools.retain(|k, _| used.contains(k));
        for id in before {
            if !pools.keys().any(|(kept, _)| *kept == id) {
                metrics.forget_upstream(&id.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: &str, ready: bool, terminating: bool) -> Endpoint {
        Endpoint {
            address: addr.into(),
            port: 80,
            ready,
            serving: true,
            terminating,
        }
    }

    fn backend(endpoints: Vec<Endpoint>) -> Backend {
        Backend {
            id: BackendId {
                namespace: "ns".into(),
                name: "svc".into(),
                port: 80,
            },
            protocol: AppProtocol::Http1,
            port_name: None,
            endpoints,
        }
    }

    #[test]
    fn round_robin_over_ready_endpoints() {
        let pool = EndpointPool::new(&backend(vec![
            ep("127.0.0.1", true, false),
            ep("127.0.0.2", true, false),
            ep("127.0.0.3", false, true),
        ]));
        let picks: Vec<String> = (0..4)
            .filter_map(|_| pool.pick())
            .map(|u| u.authority.to_string())
            .collect();
        assert_eq!(
            picks,
            [
                "127.0.0.1:80",
                "127.0.0.2:80",
                "127.0.0.1:80",
                "127.0.0.2:80"
            ]
        );
    }

    #[test]
    fn terminating_endpoints_only_when_none_is_ready() {
        let pool = EndpointPool::new(&backend(vec![ep("127.0.0.3", false, true)]));
        assert_eq!(
            pool.pick().map(|u| u.authority.to_string()).as_deref(),
            Some("127.0.0.3:80")
        );
        pool.update(&[]);
        assert!(pool.pick().is_none());
    }

    #[test]
    fn ipv6_endpoints_get_bracketed_authorities() {
        let pool = EndpointPool::new(&backend(vec![ep("::1", true, false)]));
        assert_eq!(
            pool.pick().map(|u| u.authority.to_string()).as_deref(),
            Some("[::1]:80")
        );
    }

    #[test]
    fn pools_are_reused_across_snapshots() {
        let pools = Pools::default();
        let m = crate::metrics::Metrics::default();
        let a = pools.get(&backend(vec![ep("127.0.0.1", true, false)]), &m);
        let b = pools.get(&backend(vec![ep("127.0.0.9", true, false)]), &m);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(
            a.pick().map(|u| u.authority.to_string()).as_deref(),
            Some("127.0.0.9:80")
        );
    }
}
