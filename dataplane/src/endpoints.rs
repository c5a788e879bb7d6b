//! Endpoints from the cluster: EndpointSlice watches pushing into the dataplane's pools, so
//! an endpoint that becomes ready, unready or goes away shifts traffic with no new snapshot.
//!
//! Only the namespaces the snapshots send traffic to are watched (one watch each, started
//! before a snapshot that needs it is applied, stopped a snapshot after the last route into
//! it is gone), so a dataplane never holds the endpoints of a whole cluster. Slices are kept
//! by Service, and a slice event refreshes only the pools of its Service.

use crate::dataplane::{Dataplane, Discovery};
use crate::upstream::{ServiceEndpoints, ServiceKey, Upstreams};
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;
use portico_crds::endpointslice::{SERVICE_NAME_LABEL, endpoints_from_slices};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use tokio::sync::watch;

/// A Service's slices by slice name.
type Slices = BTreeMap<String, Arc<EndpointSlice>>;

struct NamespaceWatch {
    task: tokio::task::AbortHandle,
    synced: watch::Receiver<bool>,
}

/// EndpointSlices of Services (those with the `kubernetes.io/service-name` label) in the
/// namespaces the dataplane's snapshots use.
pub struct SliceWatcher {
    client: Client,
    /// Weak: the watches end with the pools they feed.
    upstreams: Weak<Upstreams>,
    by_service: Mutex<HashMap<ServiceKey, Slices>>,
    watches: Mutex<BTreeMap<String, NamespaceWatch>>,
}

impl Discovery for SliceWatcher {
    fn scope(self: Arc<Self>, namespaces: &BTreeSet<String>) -> Vec<watch::Receiver<bool>> {
        let mut watches = self.watches.lock();
        let gone: Vec<String> = watches
            .keys()
            .filter(|ns| !namespaces.contains(*ns))
            .cloned()
            .collect();
        for ns in gone {
            if let Some(w) = watches.remove(&ns) {
                w.task.abort();
            }
            self.by_service.lock().retain(|(n, _), _| *n != ns);
            if let Some(u) = self.upstreams.upgrade() {
                u.push_namespace(&ns, None);
            }
            tracing::debug!(namespace = %ns, "no longer watching EndpointSlices");
        }
        let mut out = Vec::new();
        for ns in namespaces {
            let w = watches.entry(ns.clone()).or_insert_with(|| {
                let (tx, synced) = watch::channel(false);
                let task =
                    tokio::spawn(self.clone().watch_namespace(ns.clone(), tx)).abort_handle();
                tracing::debug!(namespace = %ns, "watching EndpointSlices");
                NamespaceWatch { task, synced }
            });
            out.push(w.synced.clone());
        }
        out
    }
}

/// A Service's endpoints by port name, from its slices.
fn service_endpoints(slices: &Slices) -> ServiceEndpoints {
    let names: BTreeSet<String> = slices
        .values()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| p.name.clone().unwrap_or_default())
        .collect();
    ServiceEndpoints(
        names
            .into_iter()
            .map(|name| {
                let eps = endpoints_from_slices(slices.values().map(|s| &**s), Some(name.as_str()));
                (name, eps)
            })
            .collect(),
    )
}

fn service_of(slice: &EndpointSlice) -> Option<ServiceKey> {
    let svc = slice.labels().get(SERVICE_NAME_LABEL)?;
    Some((slice.namespace().unwrap_or_default(), svc.clone()))
}

impl SliceWatcher {
    async fn watch_namespace(self: Arc<Self>, ns: String, synced: watch::Sender<bool>) {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &ns);
        let config = watcher::Config::default().labels(SERVICE_NAME_LABEL);
        let stream = watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        // A (re-)list is collected whole, then replaces the namespace's slices.
        let mut listing: HashMap<ServiceKey, Slices> = HashMap::new();
        while let Some(event) = stream.next().await {
            let Some(upstreams) = self.upstreams.upgrade() else {
                return;
            };
            match event {
                Ok(watcher::Event::Init) => listing.clear(),
                Ok(watcher::Event::InitApply(s)) => {
                    if let Some(key) = service_of(&s) {
                        listing
                            .entry(key)
                            .or_default()
                            .insert(s.name_any(), Arc::new(s));
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let services = listing
                        .iter()
                        .map(|((_, name), slices)| (name.clone(), service_endpoints(slices)))
                        .collect();
                    {
                        let mut by_service = self.by_service.lock();
                        by_service.retain(|(n, _), _| *n != ns);
                        by_service.extend(listing.drain());
                    }
                    upstreams.push_namespace(&ns, Some(services));
                    let _ = synced.send(true);
                }
                Ok(watcher::Event::Apply(s)) => {
                    if let Some(key) = service_of(&s) {
                        let eps = {
                            let mut by_service = self.by_service.lock();
                            let slices = by_service.entry(key.clone()).or_default();
                            slices.insert(s.name_any(), Arc::new(s));
                            service_endpoints(slices)
                        };
                        upstreams.push(&key.0, &key.1, Some(eps));
                    }
                }
                Ok(watcher::Event::Delete(s)) => {
                    if let Some(key) = service_of(&s) {
                        let eps = {
                            let mut by_service = self.by_service.lock();
                            let left = by_service.get_mut(&key).and_then(|slices| {
                                slices.remove(&s.name_any());
                                (!slices.is_empty()).then(|| service_endpoints(slices))
                            });
                            if left.is_none() {
                                by_service.remove(&key);
                            }
                            left
                        };
                        upstreams.push(&key.0, &key.1, eps);
                    }
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "EndpointSlice watch failed; retrying with back-off")
                }
            }
        }
    }
}

/// Makes `dp` take its endpoints from the cluster's EndpointSlices.
pub fn start(client: Client, dp: &Arc<Dataplane>) -> Arc<SliceWatcher> {
    let source = Arc::new(SliceWatcher {
        client,
        upstreams: Arc::downgrade(dp.upstreams()),
        by_service: Mutex::new(HashMap::new()),
        watches: Mutex::new(BTreeMap::new()),
    });
    dp.set_discovery(source.clone());
    source
}
