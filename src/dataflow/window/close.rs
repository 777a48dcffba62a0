//! Closing a window on every device: at once, or a slice of devices per step of the worker
//! (see [`WindowConfig::close_slice_devices`]).

use rustc_hash::FxHashMap;
use timely::dataflow::operators::Capability;

use crate::dataflow::anomaly::ParamsTable;
use crate::dataflow::metadata::lookup::RegistryLookup;
use crate::dataflow::model::{DeviceId, TimeMs};

use super::WindowConfig;
use super::open::{CloseBuffers, DeviceState};

/// Capabilities to emit at one close time, one per output.
pub(super) struct CloseCaps {
    pub(super) aggregates: Capability<TimeMs>,
    pub(super) findings: Capability<TimeMs>,
    pub(super) activity: Capability<TimeMs>,
    pub(super) breaches: Capability<TimeMs>,
}

/// A close under way: the devices whose windows it has not closed yet, a slice of them each
/// time the operator runs. The close holds its capabilities, so what follows it downstream
/// waits for its last slice, as it would for one burst.
pub(super) struct Closing {
    /// The close time: windows starting at or before `close_ms + 1 - length` close.
    pub(super) close_ms: TimeMs,
    pub(super) caps: CloseCaps,
    /// Devices not closed yet; slices are taken from the end.
    remaining: Vec<DeviceId>,
    /// Devices per slice (0: all).
    slice_devices: usize,
}

impl Closing {
    /// A close at `close_ms` of `devices`, in `config`'s slices.
    pub(super) fn new(
        close_ms: TimeMs,
        caps: CloseCaps,
        devices: Vec<DeviceId>,
        config: &WindowConfig,
    ) -> Self {
        Self {
            close_ms,
            caps,
            remaining: devices,
            slice_devices: config.close_slice_devices,
        }
    }

    /// The devices of the next slice.
    pub(super) fn take_slice(&mut self) -> Vec<DeviceId> {
        let take = match self.slice_devices {
            0 => self.remaining.len(),
            n => n.min(self.remaining.len()),
        };
        self.remaining.split_off(self.remaining.len() - take)
    }

    /// Whether every device has been closed.
    pub(super) fn is_done(&self) -> bool {
        self.remaining.is_empty()
    }
}

/// What a close reads besides the devices: the registry changes and their histories, and the
/// scorer's parameters.
pub(super) struct CloseContext<'a> {
    /// Changed devices, with the latest time a change became known.
    pub(super) changed: &'a FxHashMap<DeviceId, TimeMs>,
    pub(super) table: &'a ParamsTable,
}

/// Closes `slice`'s windows starting at or before `start_ms` into `out`, dropping devices left
/// with neither an open window nor a model.
pub(super) fn close_slice(
    devices: &mut FxHashMap<DeviceId, DeviceState>,
    slice: &[DeviceId],
    start_ms: TimeMs,
    lookup: &mut RegistryLookup,
    context: CloseContext<'_>,
    out: &mut CloseBuffers,
) {
    // The changed devices with a closing window from before the change are attributed again:
    // their histories are read in one pass over the registry's trace.
    lookup.load(slice.iter().filter(|device_id| {
        context.changed.get(*device_id).is_some_and(|known_ms| {
            devices.get(*device_id).is_some_and(|state| {
                state
                    .windows
                    .windows
                    .iter()
                    .any(|w| w.start_ms <= start_ms && w.start_ms < *known_ms)
            })
        })
    }));
    for device_id in slice {
        let Some(state) = devices.get_mut(device_id) else {
            continue;
        };
        let changed = context
            .changed
            .get(device_id)
            .and_then(|known_ms| Some((lookup.history(device_id)?, *known_ms)));
        state.close(device_id, start_ms, changed, context.table, out);
        let no_model = state.scorer.evict(start_ms + 1, context.table);
        if state.windows.is_empty() && no_model {
            devices.remove(device_id);
        }
    }
}
