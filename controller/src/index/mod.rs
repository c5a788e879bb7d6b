//! Watches feed reflector stores; every change wakes the compile loop.
//!
//! ```text
//!  GatewayClass ─┐
//!  Gateway ──────┤
//!  ListenerSet ──┤
//!  HTTPRoute ────┤
//!  GRPCRoute ────┤ watch → reflector store ─┐
//!  TCPRoute ─────┤                          │
//!  TLSRoute ─────┤                          │
//!  UDPRoute ─────┤                          │
//!  AuthPolicy ───┤                          │
//!  RateLimitPol.─┤                          │
//!  CachePolicy ──┤                          │
//!  CacheInval. ──┤                          │
//!  BackendPolicy ┤                          │
//!  BackendTLSPol.┤                          │
//!  GatewayConfig ┤                          │
//!  ReferenceGrant┤                          ├─ notify ─▶ compile loop ─▶ Inputs ─▶ compile
//!  Service ──────┤                          │                │
//!  Namespace ────┘                          │                │ referenced Secrets
//!  Secret, ConfigMap (a watch per name) ────┘ ◀──────────────┘
//! ```
//!
//! Every event also records which object changed ([`ChangeLog`]), so the compile loop recompiles
//! only the Gateways that read it ([`portico_compile::incremental`]); a watch that re-lists
//! (and may have missed deletions) asks for a full recompile.
//!
//! Secrets are watched one by one, only those our listeners may use ([`secrets`]).
//! EndpointSlices are not watched here: dataplanes resolve endpoints themselves, so an endpoint
//! change never costs a recompile. A watch that fails (RBAC, the API server away) backs off
//! and is reported; it never ends the process. Kinds a cluster may lack (GRPCRoute, TCPRoute, TLSRoute, UDPRoute,
//! ListenerSet, ReferenceGrant, Portico's own CRDs) are optional: while discovery says one is not served,
//! it is reported once, read as empty and looked for again; compile never waits for it. One
//! object its Rust type cannot decode is skipped and reported ([`guard`]), never the failure
//! of its kind's whole list; except an AuthPolicy or a BackendTLSPolicy, which is kept as far
//! as it can be read and compiles into a policy that refuses its targets' requests
//! ([`policy_object`]), since skipping it would leave them open or in plaintext.

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use portico_compile::Inputs;
use portico_compile::incremental::DepKey;
use portico_crds::backend::BackendPolicy;
use portico_crds::cache::{CacheInvalidation, CachePolicy};
use portico_crds::gateway_api::experimental::grpcroutes::GrpcRoute;
use portico_crds::gateway_api::experimental::httproutes::HttpRoute;
use portico_crds::gateway_api::gatewayclasses::GatewayClass;
use portico_crds::gateway_api::gateways::Gateway;
use portico_crds::gateway_api::listenersets::ListenerSet;
use portico_crds::gateway_api::referencegrants::ReferenceGrant;
use portico_crds::gateway_api::tlsroutes::TlsRoute;
use portico_crds::gatewayconfig::GatewayConfig;
use portico_crds::k8s_openapi::api::core::v1::{Namespace, Service};
use portico_crds::l4::{TcpRoute, UdpRoute};
use portico_crds::ratelimit::RateLimitPolicy;
use portico_model::{ObjectRef, PolicyKind, RouteKind};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

mod changes;
mod guard;
mod policy_object;
pub mod secrets;

pub use changes::ChangeLog;
pub use guard::UnreadableObjects;
use guard::{Guard, ReadInPart};
use kube::core::DeserializeGuard;
pub use policy_object::{AuthPolicyObject, BackendTlsPolicyObject};
use secrets::{ConfigMapWatches, SecretWatches};

fn id<K: ResourceExt>(k: &K) -> ObjectRef {
    ObjectRef::new(k.namespace().unwrap_or_default(), k.name_any())
}

/// The stores of every watched kind.
#[derive(Clone)]
pub struct Index {
    pub classes: Store<GatewayClass>,
    pub gateways: Store<Gateway>,
    pub listener_sets: Store<ListenerSet>,
    pub routes: Store<HttpRoute>,
    pub grpc_routes: Store<GrpcRoute>,
    pub tcp_routes: Store<TcpRoute>,
    pub tls_routes: Store<TlsRoute>,
    pub udp_routes: Store<UdpRoute>,
    /// Read as far as this controller can ([`policy_object`]).
    pub auth_policies: Store<AuthPolicyObject>,
    pub rate_limit_policies: Store<RateLimitPolicy>,
    pub cache_policies: Store<CachePolicy>,
    pub cache_invalidations: Store<CacheInvalidation>,
    pub backend_policies: Store<BackendPolicy>,
    pub backend_tls_policies: Store<BackendTlsPolicyObject>,
    pub gateway_configs: Store<GatewayConfig>,
    pub grants: Store<ReferenceGrant>,
    pub services: Store<Service>,
    pub namespaces: Store<Namespace>,
    pub secrets: SecretWatches,
    /// The ConfigMaps BackendTLSPolicies name, watched one by one.
    pub config_maps: ConfigMapWatches,
    pub changes: ChangeLog,
    /// The objects of each kind that do not decode (skipped), for the admin port.
    pub unreadable: Arc<UnreadableObjects>,
    /// Per kind: whether its first list is in (or, optional, whether it is not served).
    listed: Arc<Vec<(String, tokio::sync::watch::Receiver<bool>)>>,
}

/// Whether compile reads all of an object or only what `metadata.generation` covers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reads {
    Everything,
    /// Spec (and metadata) only: a change that keeps the generation is a status write (most
    /// often our own) and wakes the loop to compare status, not to recompile.
    Spec,
}

/// Whether the cluster must serve a kind.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing compiles without it (GatewayClass, Gateway, HTTPRoute, Service, Namespace):
    /// compile waits for its first list.
    Required,
    /// A cluster may lack its CRD (an older or smaller Gateway API install; a Portico CRD a
    /// `helm upgrade` did not add): while discovery says the kind is not served, the store
    /// stays empty and counts as listed, and it is asked again every [`RECHECK`]; once
    /// served, its watch starts (and its first list recompiles everything).
    Optional,
}

/// How often an optional kind the cluster does not serve is looked for again.
const RECHECK: Duration = Duration::from_secs(30);

/// Whether discovery says the cluster serves `K`; `Err` when it could not tell.
async fn served<K>(client: &Client) -> Result<bool, kube::Error>
where
    K: Resource,
    K::DynamicType: Default,
{
    let dt = K::DynamicType::default();
    let gvk = kube::api::GroupVersionKind::gvk(&K::group(&dt), &K::version(&dt), &K::kind(&dt));
    match kube::discovery::pinned_kind(client, &gvk).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Discovery(kube::error::DiscoveryError::MissingKind(_))) => Ok(false),
        // The group version itself is not served.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// The watches of every kind, each with a flag that turns true on its first full list (or,
/// for an optional kind, when the cluster does not serve it).
struct Watches {
    client: Client,
    changed: Arc<Notify>,
    log: ChangeLog,
    unreadable: Arc<UnreadableObjects>,
    listed: Vec<(String, tokio::sync::watch::Receiver<bool>)>,
}

impl Watches {
    /// Watches one kind across all namespaces into a store, recording `key` of every
    /// changed object.
    fn watch<K>(&mut self, need: Need, reads: Reads, key: fn(&K) -> DepKey) -> Store<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + Hash + Clone,
    {
        self.watch_read_in_part(need, reads, key, |_| None)
    }

    /// [`Watches::watch`] for a kind whose type keeps what it can read of an object it cannot
    /// read whole: `partly` tells the guard which objects those are, so they are reported
    /// and counted although they stay in the store.
    fn watch_read_in_part<K>(
        &mut self,
        need: Need,
        reads: Reads,
        key: fn(&K) -> DepKey,
        partly: ReadInPart<K>,
    ) -> Store<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + Hash + Clone,
    {
        let (reader, mut writer) = reflector::store();
        let store = reader.clone();
        let kind = K::kind(&K::DynamicType::default()).to_string();
        let mut guard = Guard::new(&kind, self.unreadable.clone());
        let (listed, listed_rx) = tokio::sync::watch::channel(false);
        self.listed.push((kind.clone(), listed_rx));
        let (client, changed, log) = (self.client.clone(), self.changed.clone(), self.log.clone());
        tokio::spawn(async move {
            if need == Need::Optional {
                let mut absent = false;
                loop {
                    match served::<K>(&client).await {
                        Ok(true) => break,
                        Ok(false) => {
                            if !absent {
                                absent = true;
                                tracing::warn!(
                                    kind,
                                    "the cluster does not serve this kind (its CRD is not installed): objects of it are not read, and it is looked for again every {}s",
                                    RECHECK.as_secs()
                                );
                                let _ = listed.send(true);
                            }
                            tokio::time::sleep(RECHECK).await;
                        }
                        Err(e) => {
                            tracing::warn!(kind, error = %e, "cannot tell whether the cluster serves this kind; asking again");
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                    }
                }
                if absent {
                    tracing::info!(kind, "the cluster serves this kind now: watching it");
                }
            }
            // Decoded through the guard: one object the Rust type rejects is skipped and
            // reported ([`guard`]), never the failure of its kind's whole list.
            let api: Api<DeserializeGuard<K>> = Api::all(client);
            let stream = watcher(api, watcher::Config::default()).default_backoff();
            let mut stream = std::pin::pin!(stream);
            // The generation last seen of each object, for `Reads::Spec`.
            let mut generations: std::collections::HashMap<DepKey, Option<i64>> =
                std::collections::HashMap::new();
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!(kind, error = %e, "watch failed; retrying with back-off");
                        continue;
                    }
                };
                let Some(event) = guard.admit(event, &store, partly) else {
                    continue;
                };
                writer.apply_watcher_event(&event);
                match event {
                    watcher::Event::Apply(k) => {
                        let key = key(&k);
                        let generation = k.meta().generation;
                        let spec_changed = reads == Reads::Everything
                            || generations.insert(key.clone(), generation) != Some(generation);
                        if spec_changed {
                            log.record(key);
                        }
                        changed.notify_one();
                    }
                    watcher::Event::Delete(k) => {
                        let key = key(&k);
                        generations.remove(&key);
                        log.record(key);
                        changed.notify_one();
                    }
                    watcher::Event::InitApply(k) if reads == Reads::Spec => {
                        generations.insert(key(&k), k.meta().generation);
                    }
                    // A (re-)list may have missed deletions: recompile everything once it is
                    // done.
                    watcher::Event::InitDone => {
                        let _ = listed.send(true);
                        log.record_all();
                        changed.notify_one();
                    }
                    watcher::Event::Init => generations.clear(),
                    watcher::Event::InitApply(_) => {}
                }
            }
        });
        reader
    }
}

impl Index {
    /// Starts one watch per kind across all namespaces: one line per kind.
    pub fn start(client: &Client, changed: &Arc<Notify>, secret_hint: &str) -> Self {
        use Need::{Optional, Required};
        use Reads::{Everything, Spec};
        let log = ChangeLog::default();
        let unreadable = Arc::new(UnreadableObjects::default());
        let mut w = Watches {
            client: client.clone(),
            changed: changed.clone(),
            log: log.clone(),
            unreadable: unreadable.clone(),
            listed: Vec::new(),
        };
        Self {
            classes: w.watch(Required, Spec, |c: &GatewayClass| {
                DepKey::GatewayClass(c.name_any())
            }),
            gateways: w.watch(Required, Spec, |g: &Gateway| DepKey::Gateway(id(g))),
            listener_sets: w.watch(Optional, Spec, |l: &ListenerSet| DepKey::ListenerSet(id(l))),
            routes: w.watch(Required, Spec, |r: &HttpRoute| {
                DepKey::Route(RouteKind::Http, id(r))
            }),
            grpc_routes: w.watch(Optional, Spec, |r: &GrpcRoute| {
                DepKey::Route(RouteKind::Grpc, id(r))
            }),
            tcp_routes: w.watch(Optional, Spec, |r: &TcpRoute| {
                DepKey::Route(RouteKind::Tcp, id(r))
            }),
            tls_routes: w.watch(Optional, Spec, |r: &TlsRoute| {
                DepKey::Route(RouteKind::Tls, id(r))
            }),
            udp_routes: w.watch(Optional, Spec, |r: &UdpRoute| {
                DepKey::Route(RouteKind::Udp, id(r))
            }),
            // Routes are not served before their policies are listed: a route must never be
            // open for a moment because its AuthPolicy was not listed yet. (A kind the
            // cluster does not serve has no objects to wait for.) Nor because its
            // AuthPolicy cannot be read: that one is kept, and refuses ([`policy_object`]).
            auth_policies: w.watch_read_in_part(
                Optional,
                Spec,
                |p: &AuthPolicyObject| DepKey::Policy(PolicyKind::Auth, id(p)),
                AuthPolicyObject::unreadable,
            ),
            rate_limit_policies: w.watch(Optional, Spec, |p: &RateLimitPolicy| {
                DepKey::Policy(PolicyKind::RateLimit, id(p))
            }),
            cache_policies: w.watch(Optional, Spec, |p: &CachePolicy| {
                DepKey::Policy(PolicyKind::Cache, id(p))
            }),
            cache_invalidations: w.watch(Optional, Spec, |p: &CacheInvalidation| {
                DepKey::Policy(PolicyKind::Invalidation, id(p))
            }),
            backend_policies: w.watch(Optional, Spec, |p: &BackendPolicy| {
                DepKey::Policy(PolicyKind::Backend, id(p))
            }),
            // Read in part as AuthPolicies are: one that cannot be read still refuses its
            // Services' requests rather than letting them go in plaintext.
            backend_tls_policies: w.watch_read_in_part(
                Optional,
                Spec,
                |p: &BackendTlsPolicyObject| DepKey::BackendTlsPolicy(id(p)),
                BackendTlsPolicyObject::unreadable,
            ),
            gateway_configs: w.watch(Optional, Spec, |c: &GatewayConfig| {
                DepKey::GatewayConfig(id(c))
            }),
            grants: w.watch(Optional, Everything, |g: &ReferenceGrant| {
                DepKey::ReferenceGrants(g.namespace().unwrap_or_default())
            }),
            services: w.watch(Required, Everything, |s: &Service| DepKey::Service(id(s))),
            namespaces: w.watch(Required, Everything, |n: &Namespace| {
                DepKey::Namespace(n.name_any())
            }),
            secrets: SecretWatches::new(client.clone(), changed.clone(), log.clone(), secret_hint),
            config_maps: ConfigMapWatches::new(
                client.clone(),
                changed.clone(),
                log.clone(),
                "grant the controller get, list and watch on ConfigMaps in namespace {namespace}",
            ),
            changes: log,
            unreadable,
            listed: Arc::new(w.listed),
        }
    }

    /// Waits until every kind has its first full list (or, optional, is not served),
    /// naming the kinds still missing every `report_every`.
    pub async fn wait_ready(&self, report_every: Duration) {
        let all = futures::future::join_all(self.listed.iter().map(|(_, rx)| {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|listed| *listed).await;
            }
        }));
        tokio::pin!(all);
        loop {
            tokio::select! {
                _ = &mut all => return,
                _ = tokio::time::sleep(report_every) => {
                    let waiting: Vec<&str> = self
                        .listed
                        .iter()
                        .filter(|(_, rx)| !*rx.borrow())
                        .map(|(kind, _)| kind.as_str())
                        .collect();
                    tracing::warn!(?waiting, "still waiting for the first list of these kinds; are the Gateway API CRDs installed, and may the controller list them (RBAC)?");
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
        let policies = self.auth_policies.state();
        let (auth_policies, unreadable_auth_policies) =
            policy_object::split(policies.iter().map(|p| &**p));
        let policies = self.backend_tls_policies.state();
        let (backend_tls_policies, unreadable_backend_tls_policies) =
            policy_object::split(policies.iter().map(|p| &**p));
        Inputs {
            gateway_classes: all(&self.classes),
            gateways: all(&self.gateways),
            listener_sets: all(&self.listener_sets),
            http_routes: all(&self.routes),
            grpc_routes: all(&self.grpc_routes),
            tcp_routes: all(&self.tcp_routes),
            tls_routes: all(&self.tls_routes),
            udp_routes: all(&self.udp_routes),
            auth_policies,
            unreadable_auth_policies,
            rate_limit_policies: all(&self.rate_limit_policies),
            cache_policies: all(&self.cache_policies),
            cache_invalidations: all(&self.cache_invalidations),
            backend_policies: all(&self.backend_policies),
            backend_tls_policies,
            unreadable_backend_tls_policies,
            config_maps: self.config_maps.objects(),
            gateway_configs: all(&self.gateway_configs),
            redis_url: None,
            reference_grants: all(&self.grants),
            services: all(&self.services),
            secrets: self.secrets.objects(),
            unreadable_secrets: self.secrets.unreadable(),
            placement: Default::default(),
            // The compile loop says what addresses mean and names the dataplanes' own ports.
            addresses: Default::default(),
            reserved_ports: Default::default(),
            endpoint_slices: Vec::new(),
            namespaces: all(&self.namespaces),
        }
    }
}
