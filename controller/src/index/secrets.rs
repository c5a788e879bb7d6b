//! Secrets, watched one by one: only those a listener of ours may use.
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
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use parking_lot::Mutex;
use portico_compile::incremental::DepKey;
use portico_crds::k8s_openapi::api::core::v1::Secret;
use portico_model::ObjectRef;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

struct Watch {
    task: tokio::task::AbortHandle,
    /// True once the watch has listed its Secret (present or not).
    synced: watch::Receiver<bool>,
}

/// The watched Secrets and their current contents.
#[derive(Clone)]
pub struct SecretWatches {
    client: Client,
    changed: Arc<Notify>,
    log: ChangeLog,
    watches: Arc<Mutex<BTreeMap<ObjectRef, Watch>>>,
    store: Store,
    /// How to let the controller read Secrets in a namespace (`{namespace}` is replaced).
    hint: Arc<str>,
}

/// What the watches know: the Secrets read, and those the API server refused to show.
#[derive(Clone, Default)]
struct Store {
    secrets: Arc<Mutex<BTreeMap<ObjectRef, Secret>>>,
    refused: Arc<Mutex<BTreeMap<ObjectRef, String>>>,
}

impl SecretWatches {
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
            self.store.secrets.lock().remove(&id);
            self.store.refused.lock().remove(&id);
            tracing::debug!(secret = %id, "no longer watching Secret");
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
            tracing::debug!(secret = %id, "watching Secret");
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
            tracing::warn!(secrets = ?waiting, "Secret watches have not listed yet (RBAC?); compiling without them");
        }
    }

    /// The current contents of the watched Secrets.
    pub fn secrets(&self) -> Vec<Secret> {
        self.store.secrets.lock().values().cloned().collect()
    }

    /// The watched Secrets the API server does not let the controller read, and why.
    pub fn unreadable(&self) -> BTreeMap<ObjectRef, String> {
        self.store.refused.lock().clone()
    }
}

async fn watch_one(
    api: Api<Secret>,
    id: ObjectRef,
    store: Store,
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
                let had = store.secrets.lock().remove(&id).is_some();
                let _ = synced.send(true);
                if first || had {
                    tracing::warn!(secret = %id, "the API server does not let the controller read this Secret (RBAC); retrying with back-off");
                    log.record(DepKey::Secret(id.clone()));
                    changed.notify_one();
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(secret = %id, error = %e, "Secret watch failed; retrying with back-off");
                continue;
            }
        };
        // An answer with the list's contents means it is readable (again).
        let was_refused =
            !matches!(event, watcher::Event::Init) && store.refused.lock().remove(&id).is_some();
        let update = |secret: Option<Secret>| {
            let mut store = store.secrets.lock();
            let before = store.get(&id).map(|s| s.metadata.resource_version.clone());
            match secret {
                Some(s) => {
                    let after = Some(s.metadata.resource_version.clone());
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
            log.record(DepKey::Secret(id.clone()));
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
