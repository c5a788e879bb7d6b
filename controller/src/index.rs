//! Watches feed reflector stores; every change wakes the compile loop.
//!
//! ```text
//!  GatewayClass ─┐
//!  Gateway ──────┤
//!  HTTPRoute ────┤
//!  GRPCRoute ────┤ watch → reflector store ─┐
//!  AuthPolicy ───┤                          │
//!  RateLimitPol.─┤                          │
//!  GatewayConfig ┤                          │
//!  ReferenceGrant┤                          ├─ notify ─▶ compile loop ─▶ Inputs ─▶ compile
//!  Service ──────┤                          │                │
//!  Namespace ────┘                          │                │ referenced Secrets
//!  Secret (one watch per referenced name) ──┘ ◀──────────────┘
//! ```
//!
//! Every event also records which object changed ([`Dirty`]), so the compile loop recompiles
//! only the Gateways that read it ([`portico_compile::incremental`]); a watch that re-lists
//! (and may have missed deletions) asks for a full recompile.
//!
//! Secrets are watched one by one, only those our listeners may use ([`crate::secrets`]).
//! EndpointSlices are not watched here: dataplanes resolve endpoints themselves, so an endpoint
//! change never costs a recompile. A watch that fails (a CRD that is not installed, RBAC)
//! backs off and is reported; it never ends the process.

use crate::secrets::SecretWatches;
use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use parking_lot::Mutex;
use portico_compile::Inputs;
use portico_compile::incremental::{Changes, DepKey};
use portico_crds::auth::AuthPolicy;
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
use portico_crds::gateway_api::grpcroutes::GrpcRoute;
use portico_crds::gateway_api::httproutes::HttpRoute;
use portico_crds::gateway_api::referencegrants::ReferenceGrant;
use portico_crds::gatewayconfig::GatewayConfig;
use portico_crds::k8s_openapi::api::core::v1::{Namespace, Service};
use portico_crds::ratelimit::RateLimitPolicy;
use portico_model::{ObjectRef, RouteKind};
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// What changed since the compile loop last looked.
#[derive(Default)]
pub struct Dirty {
    all: bool,
    keys: BTreeSet<DepKey>,
}

/// Shared between the watches (which record) and the compile loop (which takes).
#[derive(Clone, Default)]
pub struct ChangeLog(Arc<Mutex<Dirty>>);

impl ChangeLog {
    pub fn record(&self, key: DepKey) {
        self.0.lock().keys.insert(key);
    }

    pub fn record_all(&self) {
        self.0.lock().all = true;
    }

    /// Whether anything was recorded since the last [`ChangeLog::take`].
    pub fn pending(&self) -> bool {
        let d = self.0.lock();
        d.all || !d.keys.is_empty()
    }

    /// Takes what was recorded, leaving nothing.
    pub fn take(&self) -> Changes {
        let d = std::mem::take(&mut *self.0.lock());
        if d.all {
            Changes::All
        } else {
            Changes::Keys(d.keys)
        }
    }
}

fn id<K: ResourceExt>(k: &K) -> ObjectRef {
    ObjectRef::new(k.namespace().unwrap_or_default(), k.name_any())
}

/// The stores of every watched kind.
#[derive(Clone)]
pub struct Index {
    pub classes: Store<GatewayClass>,
    pub gateways: Store<Gateway>,
    pub routes: Store<HttpRoute>,
    pub grpc_routes: Store<GrpcRoute>,
    pub auth_policies: Store<AuthPolicy>,
    pub rate_limit_policies: Store<RateLimitPolicy>,
    pub gateway_configs: Store<GatewayConfig>,
    pub grants: Store<ReferenceGrant>,
    pub services: Store<Service>,
    pub namespaces: Store<Namespace>,
    pub secrets: SecretWatches,
    pub changes: ChangeLog,
}

/// Whether compile reads all of an object or only what `metadata.generation` covers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reads {
    Everything,
    /// Spec (and metadata) only: a change that keeps the generation is a status write (most
    /// often our own) and wakes the loop to compare status, not to recompile.
    Spec,
}

/// Watches one kind into a store, recording `key` of every changed object.
fn watch<K>(
    api: Api<K>,
    changed: Arc<Notify>,
    log: ChangeLog,
    reads: Reads,
    key: fn(&K) -> DepKey,
) -> Store<K>
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
        // The generation last seen of each object, for `Reads::Spec`.
        let mut generations: std::collections::HashMap<DepKey, Option<i64>> =
            std::collections::HashMap::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(k)) => {
                    let key = key(&k);
                    let generation = k.meta().generation;
                    let spec_changed = reads == Reads::Everything
                        || generations.insert(key.clone(), generation) != Some(generation);
                    if spec_changed {
                        log.record(key);
                    }
                    changed.notify_one();
                }
                Ok(watcher::Event::Delete(k)) => {
                    let key = key(&k);
                    generations.remove(&key);
                    log.record(key);
                    changed.notify_one();
                }
                Ok(watcher::Event::InitApply(k)) if reads == Reads::Spec => {
                    generations.insert(key(&k), k.meta().generation);
                }
                // A (re-)list may have missed deletions: recompile everything once it is done.
                Ok(watcher::Event::InitDone) => {
                    log.record_all();
                    changed.notify_one();
                }
                Ok(watcher::Event::Init) => generations.clear(),
                Ok(watcher::Event::InitApply(_)) => {}
                Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying with back-off"),
            }
        }
    });
    reader
}

impl Index {
    /// Starts one watch per kind across all namespaces.
    pub fn start(client: &Client, changed: &Arc<Notify>, secret_hint: &str) -> Self {
        let log = ChangeLog::default();
        Self {
            classes: watch(
                Api::all(client.clone()),
                changed.clone(),
                log.clone(),
                Reads::Spec,
                |c: &GatewayClass| DepKey::GatewayClass(c.name_any()),
            ),
            gateways: watch(
                Api::all(client.clone()),
                changed.clone(),
                log.clone(),
                Reads::Spec,
                |g: &Gateway| DepKey::Gateway(id(g)),
            ),
            routes: watch(
                Api::all(client.clone()),
                changed.clone(),
                log.clone(),
                Reads::Spec,
                |r: &HttpRoute| DepKey::Route(RouteKind::Http, id(r)),
            ),
            grpc_routes: watch(
                Api::all(client.clone()),
                changed.clone(),
                log.clone(),
                Reads::Spec,
                |r: &GrpcRoute| DepKey::Route(RouteKind::Grpc, id(r)),
            ),
            auth_policies: watch(
                Api::all(client.clone()),
                changed.clone(),
                log.clone(),
                Reads::Spec,
                |p: &AuthPolicy| DepKey::AuthPolicy(id(p)),
            ),
            rate_limit_policies: watch(
                Api::all(client.clone()),
                changed.clone(),
                log.clone(),
                Reads::Spec,
                |p: &RateLimitPolicy| DepKey::RateLimitPolicy(id(p)),
            ),
            gateway_configs: watch(
                Api::all(client.clone()),
                changed.clone(),
                log.clone(),
                Reads::Spec,
                |c: &GatewayConfig| DepKey::GatewayConfig(id(c)),
            ),
            grants: watch(
                Api::all(client.clone()),
                changed.clone(),
                log.clone(),
                Reads::Everything,
                |g: &ReferenceGrant| DepKey::ReferenceGrants(g.namespace().unwrap_or_default()),
            ),
            services: watch(
                Api::all(client.clone()),
                changed.clone(),
                log.clone(),
                Reads::Everything,
                |s: &Service| DepKey::Service(id(s)),
            ),
            namespaces: watch(
                Api::all(client.clone()),
                changed.clone(),
                log.clone(),
                Reads::Everything,
                |n: &Namespace| DepKey::Namespace(n.name_any()),
            ),
            secrets: SecretWatches::new(client.clone(), changed.clone(), log.clone(), secret_hint),
            changes: log,
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
            // Routes are not served before their policies are known: a route must never be
            // open for a moment because its AuthPolicy was not listed yet.
            let _ = self.auth_policies.wait_until_ready().await;
            let _ = self.rate_limit_policies.wait_until_ready().await;
            let _ = self.gateway_configs.wait_until_ready().await;
            let _ = self.grants.wait_until_ready().await;
            let _ = self.services.wait_until_ready().await;
            let _ = self.namespaces.wait_until_ready().await;
        };
        tokio::pin!(all);
        loop {
            tokio::select! {
                _ = &mut all => return,
                _ = tokio::time::sleep(report_every) => {
                    tracing::warn!("still waiting for the first list of every watched kind; are the Gateway API CRDs and Portico's CRDs (crds/yaml) installed?");
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
            auth_policies: all(&self.auth_policies),
            rate_limit_policies: all(&self.rate_limit_policies),
            gateway_configs: all(&self.gateway_configs),
            redis_url: None,
            reference_grants: all(&self.grants),
            services: all(&self.services),
            secrets: self.secrets.secrets(),
            unreadable_secrets: self.secrets.unreadable(),
            dataplane_namespace: String::new(),
            endpoint_slices: Vec::new(),
            namespaces: all(&self.namespaces),
        }
    }
}
