//! What changed since the compile loop last looked: every watch (the kinds' and the Secrets')
//! records the [`DepKey`] of each object it saw change, and the compile loop takes the set to
//! recompile only the Gateways that read them.
//!
//! Its own module, below both the watches ([`super`]) and the Secret watches
//! ([`super::secrets`]), so neither imports the other for it.

use parking_lot::Mutex;
use portico_compile::incremental::{Changes, DepKey};
use std::collections::BTreeSet;
use std::sync::Arc;

/// What changed since the compile loop last looked.
#[derive(Default)]
struct Dirty {
    /// A watch re-listed (and may have missed deletions): recompile everything.
    all: bool,
    keys: BTreeSet<DepKey>,
}

/// Shared between the watches (which record) and the compile loop (which takes).
#[derive(Clone, Default)]
pub struct ChangeLog(Arc<Mutex<Dirty>>);

impl ChangeLog {
    /// Records that the object behind `key` changed.
    pub fn record(&self, key: DepKey) {
        self.0.lock().keys.insert(key);
    }

    /// Records that anything may have changed.
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
