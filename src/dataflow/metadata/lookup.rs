//! Reading a device's versions out of the arranged registry, for the operators that look
//! devices up as of a time: [`Enrich`](crate::dataflow::Enrich) for each message, and
//! [`AggregateWindows`](crate::dataflow::AggregateWindows) again when a window closes.

use differential_dataflow::trace::cursor::cursor_list;
use differential_dataflow::trace::{Cursor, Navigable, TraceReader};
use rustc_hash::FxHashMap;
use timely::progress::Antichain;

use super::Version;
use crate::dataflow::enrich::RegistryTrace;
use crate::dataflow::model::{DeviceId, SharedDeviceInfo, TimeMs};

/// A batch of the arranged registry, as its stream carries it.
pub type RegistryBatch = <RegistryTrace as TraceReader>::Batch;

/// A device's versions in the order they became known: each version's effective time and
/// entry (none: not registered from then on). Most devices have one version, held inline in
/// the cache's map so that enriching a message does not read a second block of memory.
pub type History = smallvec::SmallVec<[(TimeMs, Option<SharedDeviceInfo>); 1]>;

/// The version of `history` in force at `ts_ms`: the one with the latest effective time at or
/// before it, and of several with that time the one known last (a correction), as the store's
/// history answers. Its index.
///
/// As `ts_ms` grows, the answer moves only to versions of later effective times, so two times
/// with the same answer have it for every time between them.
pub fn in_force(history: &History, ts_ms: TimeMs) -> Option<usize> {
    let mut found: Option<usize> = None;
    for (at, (effective_ms, _)) in history.iter().enumerate() {
        if *effective_ms <= ts_ms && found.is_none_or(|f| history[f].0 <= *effective_ms) {
            found = Some(at);
        }
    }
    found
}

/// The registry's trace with each looked-up device's history cached until a registry batch
/// changes the device: the hot path is one hash lookup.
pub struct RegistryLookup {
    trace: RegistryTrace,
    histories: FxHashMap<DeviceId, History>,
}

impl RegistryLookup {
    /// Looks devices up in `trace` (a handle of its own, whose compaction this lookup sets).
    pub fn new(trace: RegistryTrace) -> Self {
        Self {
            trace,
            histories: FxHashMap::default(),
        }
    }

    /// Forgets the cached histories of the devices `batch` changes, and tells `changed` of
    /// each with the latest time at which the batch changes it.
    pub fn forget_changed(
        &mut self,
        batch: &RegistryBatch,
        mut changed: impl FnMut(&DeviceId, TimeMs),
    ) {
        let mut cursor = batch.cursor();
        while let Some(key) = cursor.get_key(batch) {
            self.histories.remove(key);
            let mut latest_ms = 0;
            while cursor.get_val(batch).is_some() {
                cursor.map_times(batch, |time, _| latest_ms = latest_ms.max(*time));
                cursor.step_val(batch);
            }
            changed(key, latest_ms);
            cursor.step_key(batch);
        }
    }

    /// Reads the histories of `devices` that are not cached, in one pass over the trace.
    pub fn load<'a>(&mut self, devices: impl IntoIterator<Item = &'a DeviceId>) {
        let mut missing: Vec<&DeviceId> = devices
            .into_iter()
            .filter(|id| !self.histories.contains_key(*id))
            .collect();
        if missing.is_empty() {
            return;
        }
        missing.sort_unstable();
        missing.dedup();
        let batches = self
            .trace
            .batches_through(Antichain::new().borrow())
            .expect("the registry trace is readable from our compaction frontier");
        let (mut cursor, storage) = cursor_list(batches);
        for id in missing {
            cursor.seek_key(&storage, id);
            let mut changes = Vec::new();
            if cursor.get_key(&storage) == Some(id) {
                while let Some(version) = cursor.get_val(&storage) {
                    cursor.map_times(&storage, |time, diff| {
                        changes.push((*time, *diff, version.clone()))
                    });
                    cursor.step_val(&storage);
                }
            }
            self.histories.insert(id.clone(), history_of(changes));
        }
    }

    /// Forgets the cached histories of the devices `keep` says no to.
    pub fn keep_only(&mut self, keep: impl Fn(&DeviceId) -> bool) {
        self.histories.retain(|device_id, _| keep(device_id));
    }

    /// The history of a device [`load`](Self::load)ed since its last change.
    pub fn history(&self, device_id: &DeviceId) -> Option<&History> {
        self.histories.get(device_id)
    }

    /// Lets the trace forget what no lookup needs: versions replaced before `readable_ms`
    /// (none: nothing will be looked up again).
    pub fn compact_to(&mut self, readable_ms: Option<TimeMs>) {
        let readable = readable_ms.map_or_else(Antichain::new, Antichain::from_elem);
        self.trace.set_logical_compaction(readable.borrow());
        self.trace.set_physical_compaction(readable.borrow());
    }
}

/// Turns a key's `(known time, diff, version)` updates into the versions ever inserted, in the
/// order they became known. A version replaced later stays: it still holds before the
/// replacing version's effective time (compaction drops it once no lookup can be that old).
fn history_of(mut changes: Vec<(TimeMs, isize, Version<SharedDeviceInfo>)>) -> History {
    changes.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
    let mut history = History::new();
    let mut i = 0;
    while i < changes.len() {
        let (known_ms, _, version) = &changes[i];
        let mut net = 0;
        let mut j = i;
        while j < changes.len() && changes[j].0 == *known_ms && changes[j].2 == *version {
            net += changes[j].1;
            j += 1;
        }
        if net > 0 {
            history.push((version.effective_ms, version.value.clone()));
        }
        i = j;
    }
    history
}
