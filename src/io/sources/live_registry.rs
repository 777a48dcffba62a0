//! The registry as a process knows it outside the dataflow: what sources consult before a
//! message enters, kept by whichever follower reads the registry (the changelog topic, or the
//! metadata store's change log).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::dataflow::metadata::MetadataHistory;

/// The registry as this process knows it, swapped whole when changes arrive.
#[derive(Debug, Default)]
pub struct LiveRegistry {
    history: Mutex<Arc<MetadataHistory>>,
    version: AtomicU64,
    loaded: AtomicBool,
}

impl LiveRegistry {
    /// The current view and its version (which grows with every swap).
    pub fn snapshot(&self) -> (u64, Arc<MetadataHistory>) {
        let history = self.history.lock().expect("not poisoned");
        (self.version.load(Ordering::Acquire), Arc::clone(&history))
    }

    /// The version of the current view, to check cheaply whether it changed.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Whether the changelog has been read up to where it ended at start.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Swaps in a new view.
    pub(crate) fn publish(&self, history: &MetadataHistory) {
        *self.history.lock().expect("not poisoned") = Arc::new(history.clone());
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Marks the changelog read up to where it ended at start.
    pub(crate) fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }
}

/// A registry change on its way to the dataflow, with when it was made (the store's commit,
/// the changelog record's timestamp), to measure how long it takes to reach enrichment.
#[derive(Clone, Debug)]
pub struct ForwardedChange {
    /// The change.
    pub update: crate::dataflow::RegistryUpdate,
    /// Wall-clock time it was made (ms since the epoch), if known.
    pub made_ms: Option<i64>,
}
