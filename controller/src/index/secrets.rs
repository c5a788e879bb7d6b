//! Secrets, watched one by one: only those a listener of ours may use. ConfigMaps the same
//! way (those BackendTLSPolicies name for CA certificates), with the same machinery:
//! [`NamedWatches`] over any namespaced kind.
//!
//! Watching every Secret in the cluster would put every credential of every team in the
//! controller's memory. Instead, after each compile the controller asks compile which Secrets
//! its Gateways reference ([`portico_compile::referenced_secrets`]: same namespace, or allowed
//! by a ReferenceGrant) and keeps exactly one watch per such Secret (a field selector on its
//! name), starting and stopping watches as references come and go.
//!
//! The controller holds no cluster-wide grant on Secrets: the installer binds the
//! `secret-reader` ClusterRole in the namespaces whose Secrets it may read. A watch the API
//! server refuses (403) marks its Secret unreadable, with `hint` (what would allow it), so
//! the listener or policy that names it says why instead of "not found", and compile does
//! not wait for it; the watch keeps retrying, and the Secret is read once a binding exists.

use super::changes::ChangeLog;
use futures::StreamExt;
use kube::Resource;
use kube::core::NamespaceResourceScope;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use parking_lot::Mutex;
use portico_compile::incremental::DepKey;
use portico_crds::k8s_openapi::api::core::v1::{ConfigMap, Secret};
use portico_model::ObjectRef;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

struct Watch {
    task: tokio::task::AbortHandle,
    /// True once the watch has listed its Secret (present or not).
    synced: watch::Receiver<bool>,
}

/// A kind watched object by object: its dependency key, and its name for logs.
pub trait Named:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    fn dep(id: ObjectRef) -> DepKey;
}

impl Named for Secret {
    const KIND: &'static str = "Secret";
    fn dep(id: ObjectRef) -> DepKey {
        DepKey::Secret(id)
    }
}

impl Named for ConfigMap {
    const KIND: &'static str = "ConfigMap";
    fn dep(id: ObjectRef) -> DepKey {
        DepKey::ConfigMap(id)
    }
}

/// The watched Secrets and their current contents.
pub type SecretWatches = NamedWatches<Secret>;
/// The watched ConfigMaps and their current contents.
pub type ConfigMapWatches = NamedWatches<ConfigMap>;

/// The watched objects of one kind and their current contents.
#[derive(Clone)]
pub struct NamedWatches<K> {
    client: Client,
    changed: Arc<Notify>,
    log: ChangeLog,
    watches: Arc<Mutex<BTreeMap<ObjectRef, Watch>>>,
    store: Store<K>,
    /// How to let the controller read them in a namespace (`{namespace}` is replaced).
    hint: Arc<str>,
}

/// What the watches know: the objects read, and those the API server refused to show.
#[derive(Clone)]
struct Store<K> {
    objects: Arc<Mutex<BTreeMap<ObjectRef, K>>>,
    refused: Arc<Mutex<BTreeMap<ObjectRef, String>>>,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Self {
            objects: Arc::default(),
            refused: Arc::default(),
        }
    }
}

impl<K: Named> NamedWatches<K> {
    pub fn new(client: Client, changed: Arc<Notify>, log: ChangeLog, hint: &str) -> Self {
        Self {
            client,
            changed,
            log,
            watches: Arc::default(),
            store: Store::default(),
            hint: hint.into(),
        }
    }

    /// Watches exactly `wanted`: starts the missing watches, stops (and forgets) the others.
    pub fn sync(&self, wanted: &BTreeSet<ObjectRef>) {
        let mut watches = self.watches.lock();
        let gone: Vec<ObjectRef> = watches
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for id in gone {
            if let Some(w) = watches.remove(&id) {
                w.task.abort();
            }
            self.store.objects.lock().remove(&id);
            self.store.refused.lock().remove(&id);
            tracing::debug!(kind = K::KIND, object = %id, "no longer watching");
        }
        for id in wanted {
            if watches.contains_key(id) {
                continue;
            }
            let (tx, rx) = watch::channel(false);
            let refusal = self.hint.replace("{namespace}", &id.namespace);
            let task = tokio::spawn(watch_one(
                Api::namespaced(self.client.clone(), &id.namespace),
                id.clone(),
                self.store.clone(),
                refusal,
                self.changed.clone(),
                self.log.clone(),
                tx,
            ))
            .abort_handle();
            tracing::debug!(kind = K::KIND, object = %id, "watching");
            watches.insert(id.clone(), Watch { task, synced: rx });
        }
    }

    /// Waits until every watch in `wanted` has listed its Secret, at most `limit`, so a first
    /// compile does not report a Secret as missing only because its watch has not answered.
    pub async fn wait_synced(&self, wanted: &BTreeSet<ObjectRef>, limit: Duration) {
        let receivers: Vec<(ObjectRef, watch::Receiver<bool>)> = {
            let watches = self.watches.lock();
            wanted
                .iter()
                .filter_map(|id| watches.get(id).map(|w| (id.clone(), w.synced.clone())))
                .collect()
        };
        let all = async {
            for (_, mut rx) in receivers.clone() {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            let waiting: Vec<String> = receivers
                .iter()
                .filter(|(_, rx)| !*rx.borrow())
                .map(|(id, _)| id.to_string())
                .collect();
            tracing::warn!(kind = K::KIND, objects = ?waiting, "watches have not listed yet (RBAC?); compiling without them");
        }
    }

    /// The current contents of the watched objects.
    pub fn objects(&self) -> Vec<K> {
        self.store.objects.lock().values().cloned().collect()
    }

    /// The watched objects the API server does not let the controller read, and why.
    pub fn unreadable(&self) -> BTreeMap<ObjectRef, String> {
        self.store.refused.lock().clone()
    }
}

async fn watch_one<K: Named>(
    api: Api<K>,
    id: ObjectRef,
    store: Store<K>,
    refusal: String,
    changed: Arc<Notify>,
    log: ChangeLog,
    synced: watch::Sender<bool>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", id.name));
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    // During a (re-)list: whether the Secret showed up, to forget it if it did not. The
    // compile loop waits for the first list itself (`wait_synced`).
    let mut seen_in_list = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) if forbidden(&e) => {
                // Known now: compile says why instead of waiting for it.
                let first = store
                    .refused
                    .lock()
                    .insert(id.clone(), refusal.clone())
                    .is_none();
                let had = store.objects.lock().remove(&id).is_some();
                let _ = synced.send(true);
                if first || had {
                    tracing::warn!(kind = K::KIND, object = %id, "the API server does not let the controller read this object (RBAC); retrying with back-off");
                    log.record(K::dep(id.clone()));
                    changed.notify_one();
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(kind = K::KIND, object = %id, error = %e, "watch failed; retrying with back-off");
                continue;
            }
        };
        // An answer with the list's contents means it is readable (again).
        let was_refused =
            !matches!(event, watcher::Event::Init) && store.refused.lock().remove(&id).is_some();
        let update = |object: Option<K>| {
            let mut store = store.objects.lock();
            let before = store.get(&id).map(|s| s.meta().resource_version.clone());
            match object {
                Some(s) => {
                    let after = Some(s.meta().resource_version.clone());
                    store.insert(id.clone(), s);
                    before != after
                }
                None => before.is_some() && store.remove(&id).is_some(),
            }
        };
        let changed_now = match event {
            watcher::Event::Init => {
                seen_in_list = false;
                false
            }
            watcher::Event::InitApply(s) => {
                seen_in_list = true;
                update(Some(s))
            }
            watcher::Event::InitDone => {
                let gone = !seen_in_list && update(None);
                let _ = synced.send(true);
                gone
            }
            watcher::Event::Apply(s) => update(Some(s)),
            watcher::Event::Delete(_) => update(None),
        };
        if changed_now || was_refused {
            log.record(K::dep(id.clone()));
            changed.notify_one();
        }
    }
}

/// Whether a watch failed because RBAC refuses it.
fn forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 403,
        watcher::Error::WatchError(s) => s.code == 403,
        _ => false,
    }
}
