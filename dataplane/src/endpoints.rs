//! Endpoints from the cluster: a watch on EndpointSlices feeding the dataplane's pools, so an
//! endpoint that becomes ready, unready or goes away shifts traffic with no new snapshot.

use crate::balancer::EndpointSource;
use crate::dataplane::Dataplane;
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use portico_model::{BackendId, Endpoint};
use std::sync::Arc;

/// EndpointSlices of Services (those with the `kubernetes.io/service-name` label).
pub struct SliceWatcher {
    store: Store<EndpointSlice>,
}

impl EndpointSource for SliceWatcher {
    fn endpoints(&self, id: &BackendId, port_name: Option<&str>) -> Vec<Endpoint> {
        let slices: Vec<Arc<EndpointSlice>> = self
            .store
            .state()
            .into_iter()
            .filter(|s| {
                s.namespace().as_deref() == Some(id.namespace.as_str())
                    && s.labels().get(portico_compile::SERVICE_NAME_LABEL) == Some(&id.name)
            })
            .collect();
        portico_compile::endpoints_from_slices(slices.iter().map(|s| &**s), port_name)
    }
}

/// Starts watching EndpointSlices for `dp`, which refreshes its pools on every change.
pub fn start(client: Client, dp: Arc<Dataplane>) -> Arc<SliceWatcher> {
    let (store, writer) = reflector::store();
    let api: Api<EndpointSlice> = Api::all(client);
    let config = watcher::Config::default().labels(portico_compile::SERVICE_NAME_LABEL);
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    let source = Arc::new(SliceWatcher { store });
    dp.set_endpoint_source(source.clone());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => dp.refresh_endpoints(),
                Err(e) => {
                    tracing::warn!(error = %e, "EndpointSlice watch failed; retrying with back-off")
                }
            }
        }
    });
    source
}
