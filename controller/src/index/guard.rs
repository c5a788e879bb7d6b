//! Objects the controller cannot read.
//!
//! The API server validates an object against its CRD's schema; the controller decodes it into
//! a Rust type that can be stricter: an enum value of a newer Gateway API release (an
//! HTTPRoute filter type added after the release Portico's types come from), a CRD installed
//! ahead of this controller. Decoded plainly, one such object fails the list of its whole kind, and with it
//! every object of the kind: at start-up compile would never run. So every watch decodes
//! through kube's [`DeserializeGuard`], and [`Guard::admit`] turns an object that does not
//! decode into its absence:
//!
//! - it never enters the store, so compile reads the other objects of its kind as usual and
//!   this one as if it did not exist (it gets no status from us either);
//! - an object that was readable and is updated into an unreadable one leaves the store (the
//!   store must not keep serving a version the cluster no longer has);
//! - it is logged once (again if its error changes), with its kind, namespace, name and the
//!   decoding error, and counted per kind in [`UnreadableObjects`] (the admin port's
//!   `portico_controller_unreadable_objects`) until it is fixed or deleted.
//!
//! A kind for which absence is not safe decodes into a type that keeps what it can read of
//! such an object (AuthPolicy, [`super::auth`]); the watch tells the guard how to ask an
//! object whether it was read whole, and the guard admits one that was not like any other,
//! logging and counting it all the same.

use kube::Resource;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef as StoreKey, Store};
use kube::runtime::watcher::Event;
use parking_lot::Mutex;
use portico_model::ObjectRef;
use std::collections::BTreeMap;
use std::hash::Hash;
use std::sync::Arc;

/// Per kind, how many objects the watches cannot read right now.
#[derive(Debug, Default)]
pub struct UnreadableObjects(Mutex<BTreeMap<String, usize>>);

impl UnreadableObjects {
    /// Every watched kind with its count (0 included, so a dashboard sees the series).
    pub fn counts(&self) -> Vec<(String, usize)> {
        self.0
            .lock()
            .iter()
            .map(|(kind, n)| (kind.clone(), *n))
            .collect()
    }

    fn set(&self, kind: &str, n: usize) {
        self.0.lock().insert(kind.to_string(), n);
    }
}

/// Says why an object that decoded could be read only in part (`None`: read whole). Such an
/// object stays in the store, in the form its type gives it, and is reported and counted as
/// unreadable.
pub(super) type ReadInPart<K> = fn(&K) -> Option<&str>;

/// What becomes of an object the guard reports.
#[derive(Clone, Copy)]
enum Disposition {
    /// It did not decode and is left out of the store.
    Skipped,
    /// It decoded in part and is kept ([`ReadInPart`]).
    Kept,
}

/// One watch's view of the objects of its kind that do not decode.
pub(super) struct Guard {
    kind: String,
    /// The unreadable objects (skipped, or kept as read in part), with their errors.
    unreadable: BTreeMap<ObjectRef, String>,
    /// During a (re-)list: what the list has found so far; it replaces `unreadable` when the
    /// list is complete, so objects fixed or deleted meanwhile are forgotten.
    listing: Option<BTreeMap<ObjectRef, String>>,
    counts: Arc<UnreadableObjects>,
}

impl Guard {
    pub(super) fn new(kind: &str, counts: Arc<UnreadableObjects>) -> Self {
        counts.set(kind, 0);
        Self {
            kind: kind.to_string(),
            unreadable: BTreeMap::new(),
            listing: None,
            counts,
        }
    }

    /// The event the store and the change log should see for `event`, if any. `store` is the
    /// store the returned events are applied to (for what it holds of an object that stopped
    /// decoding). `partly` says why an object that decoded could be read only in part (see
    /// [`ReadInPart`]).
    pub(super) fn admit<K>(
        &mut self,
        event: Event<DeserializeGuard<K>>,
        store: &Store<K>,
        partly: ReadInPart<K>,
    ) -> Option<Event<K>>
    where
        K: Resource + Clone + 'static,
        K::DynamicType: Default + Eq + Hash + Clone,
    {
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                Some(Event::Init)
            }
            Event::InitApply(DeserializeGuard(Ok(k))) => {
                if let Some(error) = partly(&k) {
                    let id = id_of(k.meta());
                    self.report(&id, error, Disposition::Kept);
                    self.listing
                        .get_or_insert_with(BTreeMap::new)
                        .insert(id, error.to_string());
                }
                Some(Event::InitApply(k))
            }
            Event::InitApply(DeserializeGuard(Err(invalid))) => {
                let id = id_of(&invalid.metadata);
                self.report(&id, &invalid.error, Disposition::Skipped);
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(id, invalid.error);
                None
            }
            Event::InitDone => {
                if let Some(found) = self.listing.take() {
                    for id in self.unreadable.keys().filter(|id| !found.contains_key(*id)) {
                        self.cleared(id);
                    }
                    self.unreadable = found;
                }
                self.count();
                Some(Event::InitDone)
            }
            Event::Apply(DeserializeGuard(Ok(k))) => {
                let id = id_of(k.meta());
                match partly(&k) {
                    Some(error) => {
                        self.report(&id, error, Disposition::Kept);
                        self.unreadable.insert(id, error.to_string());
                        self.count();
                    }
                    None => {
                        if self.unreadable.remove(&id).is_some() {
                            self.cleared(&id);
                            self.count();
                        }
                    }
                }
                Some(Event::Apply(k))
            }
            Event::Apply(DeserializeGuard(Err(invalid))) => {
                let id = id_of(&invalid.metadata);
                self.report(&id, &invalid.error, Disposition::Skipped);
                self.unreadable.insert(id, invalid.error);
                self.count();
                // The version it replaces (if it was readable) goes: compile must not keep
                // serving what the cluster no longer holds.
                stale(store, &invalid.metadata).map(Event::Delete)
            }
            Event::Delete(guarded) => {
                let id = id_of(guarded.meta());
                if self.unreadable.remove(&id).is_some() {
                    self.cleared(&id);
                    self.count();
                }
                match guarded.0 {
                    Ok(k) => Some(Event::Delete(k)),
                    Err(invalid) => stale(store, &invalid.metadata).map(Event::Delete),
                }
            }
        }
    }

    /// Logs an unreadable object, unless it was reported already with the same error.
    fn report(&self, id: &ObjectRef, error: &str, disposition: Disposition) {
        let known = self
            .unreadable
            .get(id)
            .or_else(|| self.listing.as_ref().and_then(|l| l.get(id)));
        if known.map(String::as_str) == Some(error) {
            return;
        }
        let (kind, namespace, name) = (&self.kind, &id.namespace, &id.name);
        match disposition {
            Disposition::Skipped => tracing::warn!(
                %kind, %namespace, %name, error,
                "cannot read this object (the API server accepted what its Rust type rejects): it is skipped, as if it did not exist, until it is fixed"
            ),
            Disposition::Kept => tracing::warn!(
                %kind, %namespace, %name, error,
                "cannot read this object whole (the API server accepted what its Rust type rejects): it is kept as invalid, so that it fails closed (an AuthPolicy's targets refuse every request), until it is fixed or the controller upgraded"
            ),
        }
    }

    fn cleared(&self, id: &ObjectRef) {
        tracing::info!(
            kind = %self.kind,
            namespace = %id.namespace,
            name = %id.name,
            "an object that could not be read is readable again or gone"
        );
    }

    fn count(&self) {
        self.counts.set(&self.kind, self.unreadable.len());
    }
}

/// An object's namespace (empty for a cluster-scoped one) and name.
fn id_of(meta: &kube::core::ObjectMeta) -> ObjectRef {
    ObjectRef::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// What `store` holds of the object `meta` names.
fn stale<K>(store: &Store<K>, meta: &kube::core::ObjectMeta) -> Option<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let mut key = StoreKey::<K>::new(meta.name.as_deref()?);
    if let Some(ns) = meta.namespace.as_deref() {
        key = key.within(ns);
    }
    store.get(&key).map(|k| (*k).clone())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(super) mod watch;
