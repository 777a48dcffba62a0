//! Closing a window on every device: at once, or in slices as the frontier passes (see
//! [`WindowConfig::close_spread_ms`]).

use rustc_hash::FxHashMap;
use timely::dataflow::operators::Capability;

use crate::dataflow::anomaly::ParamsTable;
use crate::dataflow::metadata::lookup::{History, RegistryLookup};
use crate::dataflow::model::{DeviceId, TimeMs};

use super::open::{CloseBuffers, DeviceState};
use super::{CLOSE_SLICE_MS, WindowConfig};

/// Capabilities to emit at one close time, one per output.
pub(super) struct CloseCaps {
    pub(super) aggregates: Capability<TimeMs>,
    pub(super) findings: Capability<TimeMs>,
    pub(super) activity: Capability<TimeMs>,
    pub(super) breaches: Capability<TimeMs>,
}

/// A close under way: the devices whose windows it has not closed yet. Slice `k` is due once
/// the frontier reaches `close_ms + k * CLOSE_SLICE_MS`; the close holds its capabilities at
/// `close_ms`, so what follows it downstream waits for its last slice, as it would for one
/// burst; and every slice sees the registry as it was when the close began.
pub(super) struct Closing {
    /// The close time: windows starting at or before `close_ms + 1 - length` close.
    pub(super) close_ms: TimeMs,
    pub(super) caps: CloseCaps,
    /// Devices not closed yet; slices are taken from the end.
    remaining: Vec<DeviceId>,
    /// Devices the close started with.
    total: usize,
    slices: u64,
    /// The changed devices with a closing window from before their change, with their
    /// histories and the time the change became known, as when the close began.
    corrections: Corrections,
}

/// Histories of changed devices, each with the time its change became known.
pub(super) type Corrections = FxHashMap<DeviceId, (History, TimeMs)>;

impl Closing {
    /// A close at `close_ms` of `devices`, over `config`'s slices.
    pub(super) fn new(
        close_ms: TimeMs,
        caps: CloseCaps,
        devices: Vec<DeviceId>,
        corrections: Corrections,
        config: &WindowConfig,
    ) -> Self {
        Self {
            close_ms,
            caps,
            total: devices.len(),
            remaining: devices,
            slices: config.close_slices(),
            corrections,
        }
    }

    /// The devices of every slice due with the frontier at `reached_ms` (at or after the close
    /// time) and not taken yet.
    pub(super) fn take_due(&mut self, reached_ms: TimeMs) -> Vec<DeviceId> {
        let elapsed_ms = reached_ms.saturating_sub(self.close_ms);
        let slices_due = (elapsed_ms / CLOSE_SLICE_MS)
            .saturating_add(1)
            .min(self.slices);
        let per_slice = self.total.div_ceil(self.slices as usize);
        let closed_by_now = (slices_due as usize)
            .saturating_mul(per_slice)
            .min(self.total);
        let closed = self.total - self.remaining.len();
        let take = closed_by_now.saturating_sub(closed);
        self.remaining.split_off(self.remaining.len() - take)
    }

    /// Whether every device has been closed.
    pub(super) fn is_done(&self) -> bool {
        self.remaining.is_empty()
    }
}

/// The corrections a close at `start_ms` (the start of the windows it closes) applies: the
/// `changed` devices with a window starting at or before `start_ms` and before their change,
/// with their histories, read in one pass over the registry's trace.
pub(super) fn corrections(
    devices: &FxHashMap<DeviceId, DeviceState>,
    changed: &FxHashMap<DeviceId, TimeMs>,
    start_ms: TimeMs,
    lookup: &mut RegistryLookup,
) -> Corrections {
    let stale: Vec<(&DeviceId, TimeMs)> = changed
        .iter()
        .filter(|(device_id, known_ms)| {
            devices.get(*device_id).is_some_and(|state| {
                state
                    .windows
                    .windows
                    .iter()
                    .any(|w| w.start_ms <= start_ms && w.start_ms < **known_ms)
            })
        })
        .map(|(device_id, known_ms)| (device_id, *known_ms))
        .collect();
    lookup.keep_only(|device_id| changed.contains_key(device_id));
    lookup.load(stale.iter().map(|(device_id, _)| *device_id));
    stale
        .into_iter()
        .filter_map(|(device_id, known_ms)| {
            let history = lookup.history(device_id)?.clone();
            Some((device_id.clone(), (history, known_ms)))
        })
        .collect()
}

/// Closes the windows of the devices of `closing`'s slices due at `reached_ms` into `out`,
/// dropping devices left with neither an open window nor a model.
pub(super) fn close_due(
    devices: &mut FxHashMap<DeviceId, DeviceState>,
    closing: &mut Closing,
    reached_ms: TimeMs,
    config: &WindowConfig,
    table: &ParamsTable,
    out: &mut CloseBuffers,
) {
    let start_ms = config.start_of(closing.close_ms);
    for device_id in closing.take_due(reached_ms) {
        let Some(state) = devices.get_mut(&device_id) else {
            continue;
        };
        let changed = closing
            .corrections
            .get(&device_id)
            .map(|(history, known_ms)| (history, *known_ms));
        state.close(&device_id, start_ms, changed, table, out);
        let no_model = state.scorer.evict(start_ms + 1, table);
        if state.windows.is_empty() && no_model {
            devices.remove(&device_id);
        }
    }
}
