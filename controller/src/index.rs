//! Watches feed reflector stores; every change wakes the compile loop.
//!
//! ```text
//!  GatewayClass ─┐
//!  Gateway ──────┤
//!  HTTPRoute ────┤
//!  GRPCRoute ────┤ watch → reflector store ─┐
//!  ReferenceGrant┤                          ├─ notify ─▶ compile loop ─▶ Inputs ─▶ compile
//!  Service ──────┤                          │                │
//!  Namespace ────┘                          │                │ referenced Secrets
//!  Secret (one watch per referenced name) ──┘ ◀──────────────┘
//! ```
//!
//! Secrets are watched one by one, only those our listeners may use ([`crate::secrets`]).
//! EndpointSlices are not watched here: dataplanes resolve endpoints themselves, so an endpoint
//! change never costs a recompile. A watch that fails (a CRD that is not installed, RBAC)
//! backs off and is reported; it never ends the process.

use crate::secrets::SecretWatches;
use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use portico_compile::Inputs;
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
use portico_crds::gateway_api::grpcroutes::GrpcRoute;
use portico_crds::gateway_api::httproutes::HttpRoute;
use portico_crds::gateway_api::referencegrants::ReferenceGrant;
use portico_crds::k8s_openapi::api::core::v1::{Namespace, Service};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The stores of every watched kind.
#[derive(Clone)]
pub struct Index {
    pub classes: Store<GatewayClass>,
    pub gateways: Store<Gateway>,
    pub routes: Store<HttpRoute>,
    pub grpc_routes: Store<GrpcRoute>,
    pub grants: Store<ReferenceGrant>,
    pub services: Store<Service>,
    pub namespaces: Store<Namespace>,
    pub secrets: SecretWatches,
}

fn watch<K>(api: Api<K>, changed: Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying with back-off"),
            }
        }
    });
    reader
}

impl Index {
    /// Starts one watch per kind across all namespaces.
    pub fn start(client: &Client, changed: &Arc<Notify>) -> Self {
        Self {
            classes: watch(Api::all(client.clone()), changed.clone()),
            gateways: watch(Api::all(client.clone()), changed.clone()),
            routes: watch(Api::all(client.clone()), changed.clone()),
            grpc_routes: watch(Api::all(client.clone()), changed.clone()),
            grants: watch(Api::all(client.clone()), changed.clone()),
            services: watch(Api::all(client.clone()), changed.clone()),
            namespaces: watch(Api::all(client.clone()), changed.clone()),
            secrets: SecretWatches::new(client.clone(), changed.clone()),
        }
    }

    /// Waits until every store has its first full list, reporting the kinds still missing
    /// (typically a CRD that is not installed) every `report_every`.
    pub async fn wait_ready(&self, report_every: Duration) {
        let all = async {
            let _ = self.classes.wait_until_ready().await;
            let _ = self.gateways.wait_until_ready().await;
            let _ = self.routes.wait_until_ready().await;
            let _ = self.grpc_routes.wait_until_ready().await;
            let _ = self.grants.wait_until_ready().await;
            let _ = self.services.wait_until_ready().await;
            let _ = self.namespaces.wait_until_ready().await;
        };
        tokio::pin!(all);
        loop {
            tokio::select! {
                _ = &mut all => return,
                _ = tokio::time::sleep(report_every) => {
                    tracing::warn!("still waiting for the first list of every watched kind; are the Gateway API CRDs installed?");
                }
            }
        }
    }

    /// A consistent-enough copy of everything compile reads. The Secrets are those watched
    /// now; the caller syncs the watches with what these inputs reference first.
    pub fn inputs(&self) -> Inputs {
        fn all<K: Resource + Clone>(s: &Store<K>) -> Vec<K>
        where
            K::DynamicType: Eq + Hash + Clone,
        {
            s.state().iter().map(|k| (**k).clone()).collect()
        }
        Inputs {
            gateway_classes: all(&self.classes),
            gateways: all(&self.gateways),
            http_routes: all(&self.routes),
            grpc_routes: all(&self.grpc_routes),
            reference_grants: all(&self.grants),
            services: all(&self.services),
            secrets: self.secrets.secrets(),
            endpoint_slices: Vec::new(),
            namespaces: all(&self.namespaces),
        }
    }
}
