//! For tests: a guard, the store its events go to, and the counts it keeps, the parts of one
//! kind's watch loop, fed events as the loop feeds them.

use super::{Guard, ReadInPart, UnreadableObjects};
use kube::Resource;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher::Event;
use std::hash::Hash;
use std::sync::Arc;

pub(in crate::index) struct Watch<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    kind: &'static str,
    partly: ReadInPart<K>,
    guard: Guard,
    pub(in crate::index) store: Store<K>,
    writer: Writer<K>,
    pub(in crate::index) counts: Arc<UnreadableObjects>,
}

impl<K> Watch<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    /// A watch of `kind`, whose objects `partly` says are readable only in part.
    pub(in crate::index) fn new(kind: &'static str, partly: ReadInPart<K>) -> Self {
        let counts = Arc::new(UnreadableObjects::default());
        let (store, writer) = reflector::store();
        Self {
            kind,
            partly,
            guard: Guard::new(kind, counts.clone()),
            store,
            writer,
            counts,
        }
    }

    /// Feeds one event as the watch loop does; returns what the store and change log saw.
    pub(in crate::index) fn feed(&mut self, event: Event<DeserializeGuard<K>>) -> Option<Event<K>> {
        let admitted = self.guard.admit(event, &self.store, self.partly);
        if let Some(e) = &admitted {
            self.writer.apply_watcher_event(e);
        }
        admitted
    }

    /// The names in the store, sorted.
    pub(in crate::index) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .store
            .state()
            .iter()
            .filter_map(|o| o.meta().name.clone())
            .collect();
        names.sort();
        names
    }

    /// How many objects of this kind are counted unreadable.
    pub(in crate::index) fn unreadable(&self) -> usize {
        self.counts
            .counts()
            .into_iter()
            .find(|(kind, _)| kind == self.kind)
            .map_or(0, |(_, n)| n)
    }
}
