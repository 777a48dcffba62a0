//! A device's open windows: running aggregates folded reading by reading, and what closing
//! them produces.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::dataflow::anomaly::{
    AnomalyScore, DeviceActivity, DeviceScorer, ParamsTable, Slots, WindowEvidence,
};
use crate::dataflow::metadata::lookup::History;
use crate::dataflow::model::{
    DeviceId, ExactSum, MetricId, Reading, SharedDeviceInfo, ThresholdBreach, TimeMs,
    WindowAggregate,
};

use super::reattribute::reattribute;

/// An open window's running aggregate, and its evidence for the anomaly scorer. In C layout
/// with what every reading updates first, so a reading touches two or three cache lines.
///
/// The count, minimum and maximum are not kept here: the evidence's buckets hold them per
/// bucket (10 s of a minute's window by default), and the aggregate takes them from there at
/// close. Copies would cost 24
/// bytes, and with the 16-byte alignment of the exact sums 32, of each of the ~250,000 windows
/// open at 100,000 devices (see "State per device-metric" in `docs/benchmarks.md`).
#[derive(Clone, Debug)]
#[repr(C)]
pub(super) struct OpenWindow {
    pub(super) sum: ExactSum,
    /// The earliest and latest time the device was looked up at for these readings (their
    /// messages' times, which enrichment and [`reattribute`] go by). Every reading updates it:
    /// it sits in the first 64 bytes with the sum.
    pub(super) looked_up_ms: (TimeMs, TimeMs),
    pub(super) breaches: u64,
    pub(super) start_ms: TimeMs,
    pub(super) evidence: WindowEvidence,
    /// The registry entry the readings were enriched with (its site keys the aggregate).
    pub(super) device: SharedDeviceInfo,
    pub(super) metric: MetricId,
}

impl OpenWindow {
    /// How many readings the window holds.
    pub(super) fn count(&self) -> u64 {
        self.evidence.count()
    }

    /// The window's smallest and largest reading.
    pub(super) fn min_max(&self) -> (f64, f64) {
        self.evidence.min_max()
    }

    fn closed(&self, device_id: &DeviceId) -> WindowAggregate {
        let (min, max) = self.min_max();
        WindowAggregate {
            device_id: device_id.clone(),
            metric: self.metric,
            window_start_ms: self.start_ms,
            site: self.device.site.clone(),
            count: self.count(),
            min,
            max,
            sum: self.sum,
            sum_squares: self.evidence.sum_squares(),
            first_ts_ms: self.evidence.first_ts_ms,
            last_ts_ms: self.evidence.last_ts_ms,
            threshold_breaches: self.breaches,
        }
    }
}

/// A device's open windows, with their keys kept apart: finding a reading's window scans a few
/// small keys in one cache line instead of windows hundreds of bytes apart. Up to three keys
/// (a device's metrics, most devices have two or three) sit in the device's entry itself,
/// which the lookup has just read: no second block of memory per reading, and no more room
/// than the vector and its separate block took.
#[derive(Default)]
pub(super) struct OpenWindows {
    /// (metric, window start, registry entry's address) of each window, in step with `windows`.
    keys: SmallVec<[(MetricId, TimeMs, usize); 3]>,
    pub(super) windows: Vec<OpenWindow>,
}

impl OpenWindows {
    /// Folds a reading into its open window (opening it if needed): the aggregate and the
    /// evidence, whose buckets fall on `slots`. Returns the window's index and whether it was
    /// opened.
    pub(super) fn fold(
        &mut self,
        reading: &Reading,
        start_ms: TimeMs,
        device: &SharedDeviceInfo,
        looked_up_ms: TimeMs,
        slots: &Slots,
    ) -> (usize, bool) {
        let address = Arc::as_ptr(device) as usize;
        let found = self.keys.iter().position(|&(metric, start, at)| {
            metric == reading.metric && start == start_ms && at == address
        });
        // Readings enriched with another version of the device open a window of their own, so
        // that each can be attributed again at close (see `reattribute`); windows of one site
        // are merged then.
        let (index, opened) = match found {
            Some(i) => (i, false),
            None => {
                // Room for exactly one more: a device's windows are kept per metric and minute
                // (hundreds of bytes each), and doubling would leave most devices a window's
                // worth of unused room or more. A window opens once a minute per metric.
                self.keys.reserve_exact(1);
                self.windows.reserve_exact(1);
                self.keys.push((reading.metric, start_ms, address));
                self.windows.push(OpenWindow {
                    metric: reading.metric,
                    start_ms,
                    device: Arc::clone(device),
                    sum: ExactSum::default(),
                    breaches: 0,
                    evidence: WindowEvidence::default(),
                    looked_up_ms: (looked_up_ms, looked_up_ms),
                });
                (self.windows.len() - 1, true)
            }
        };
        let window = &mut self.windows[index];
        window.looked_up_ms.0 = window.looked_up_ms.0.min(looked_up_ms);
        window.looked_up_ms.1 = window.looked_up_ms.1.max(looked_up_ms);
        window.sum.add(reading.value);
        window.evidence.observe(reading, start_ms, slots);
        window.breaches += device
            .threshold(reading.metric)
            .is_some_and(|t| t.is_breached_by(reading.value)) as u64;
        (index, opened)
    }

    /// Removes and returns the windows starting at or before `start_ms`.
    fn take_through(&mut self, start_ms: TimeMs) -> Vec<OpenWindow> {
        let staying = self
            .windows
            .iter()
            .filter(|w| w.start_ms > start_ms)
            .count();
        // The windows that stay take exactly their room (see `fold`).
        let mut open = Vec::with_capacity(staying);
        let mut closing = Vec::with_capacity(self.windows.len() - staying);
        for window in std::mem::take(&mut self.windows) {
            if window.start_ms <= start_ms {
                closing.push(window);
            } else {
                open.push(window);
            }
        }
        self.keys = open
            .iter()
            .map(|w| (w.metric, w.start_ms, Arc::as_ptr(&w.device) as usize))
            .collect();
        self.windows = open;
        closing
    }

    pub(super) fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

/// A device's open windows and its scoring state.
pub(super) struct DeviceState {
    /// The registry entry last seen (its type selects the scorer's parameters).
    pub(super) device: SharedDeviceInfo,
    pub(super) windows: OpenWindows,
    pub(super) scorer: DeviceScorer,
}

impl DeviceState {
    /// Closes the windows starting at or before `start_ms`: their aggregates, the scorer's
    /// findings and the device's activity go to the buffers.
    ///
    /// With `changed`, the device's history and the time its last change became known, the
    /// windows starting before that time are attributed again to the versions in force over
    /// their readings (see [`reattribute`]).
    pub(super) fn close(
        &mut self,
        device_id: &DeviceId,
        start_ms: TimeMs,
        changed: Option<(&History, TimeMs)>,
        table: &ParamsTable,
        out: &mut CloseBuffers,
    ) {
        let mut closing = self.windows.take_through(start_ms);
        if let Some((history, known_ms)) = changed {
            for window in closing.iter_mut().filter(|w| w.start_ms < known_ms) {
                reattribute(device_id, window, history);
            }
        }
        // Windows close in order of start; a metric moved to another site mid-window has one
        // piece per site, which the scorer sees as one window.
        let closing = merge_same_site(closing);
        let mut activity: Option<DeviceActivity> = None;
        let mut joint: Vec<(TimeMs, MetricId, WindowEvidence, SharedDeviceInfo)> = Vec::new();
        let params = self.scorer.params(table);
        for group in closing.chunk_by(|a, b| a.start_ms == b.start_ms && a.metric == b.metric) {
            let mut evidence = group[0].evidence.clone();
            let mut sum = group[0].sum;
            for piece in &group[1..] {
                evidence.merge(&piece.evidence);
                sum.merge(piece.sum);
            }
            let count = evidence.count();
            let w = &group[0];
            match &mut activity {
                Some(a) if a.window_start_ms == w.start_ms => {
                    a.first_ts_ms = a.first_ts_ms.min(evidence.first_ts_ms);
                    a.last_ts_ms = a.last_ts_ms.max(evidence.last_ts_ms);
                    a.slots |= evidence.slots;
                }
                _ => {
                    out.activity.extend(activity.take());
                    activity = Some(DeviceActivity {
                        device_id: device_id.clone(),
                        device: Arc::clone(&w.device),
                        window_start_ms: w.start_ms,
                        first_ts_ms: evidence.first_ts_ms,
                        last_ts_ms: evidence.last_ts_ms,
                        slots: evidence.slots,
                        silence_timeout_ms: params.silence_timeout_ms,
                        forget_after_ms: params.forget_after_ms,
                    });
                }
            }
            self.scorer.close_window(
                device_id,
                &w.device,
                w.metric,
                w.start_ms,
                count,
                sum,
                &evidence,
                table,
                &mut out.findings,
            );
            joint.push((w.start_ms, w.metric, evidence, Arc::clone(&w.device)));
        }
        out.activity.extend(activity);
        // The device as a whole, window by window (metrics sorted within each).
        for window in joint.chunk_by(|a, b| a.0 == b.0) {
            let metrics: Vec<(MetricId, &WindowEvidence)> =
                window.iter().map(|(_, m, e, _)| (*m, e)).collect();
            self.scorer.close_device_window(
                device_id,
                &window[0].3,
                window[0].0,
                &metrics,
                table,
                &mut out.findings,
            );
        }
        for w in &closing {
            let aggregate = w.closed(device_id);
            if w.breaches > 0 {
                out.breaches.push(ThresholdBreach {
                    window: aggregate.clone(),
                    device: Arc::clone(&w.device),
                });
            }
            out.aggregates.push(aggregate);
        }
    }
}

/// What closing windows produces, gathered over devices.
#[derive(Default)]
pub(super) struct CloseBuffers {
    pub(super) aggregates: Vec<WindowAggregate>,
    pub(super) findings: Vec<AnomalyScore>,
    pub(super) activity: Vec<DeviceActivity>,
    pub(super) breaches: Vec<ThresholdBreach>,
}

/// Sorts closing windows by start, metric and site, and merges those of one site (readings
/// enriched with different versions of the device that agree on its site) into one. The
/// merged window keeps the entry of its latest readings.
fn merge_same_site(mut closing: Vec<OpenWindow>) -> Vec<OpenWindow> {
    closing.sort_by(|a, b| {
        (a.start_ms, a.metric, &a.device.site, a.evidence.last_ts_ms).cmp(&(
            b.start_ms,
            b.metric,
            &b.device.site,
            b.evidence.last_ts_ms,
        ))
    });
    let mut merged: Vec<OpenWindow> = Vec::with_capacity(closing.len());
    for window in closing {
        match merged.last_mut() {
            Some(last)
                if last.start_ms == window.start_ms
                    && last.metric == window.metric
                    && last.device.site == window.device.site =>
            {
                last.sum.merge(window.sum);
                last.breaches += window.breaches;
                last.evidence.merge(&window.evidence);
                last.looked_up_ms.0 = last.looked_up_ms.0.min(window.looked_up_ms.0);
                last.looked_up_ms.1 = last.looked_up_ms.1.max(window.looked_up_ms.1);
                last.device = window.device;
            }
            _ => merged.push(window),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_window_takes_384_bytes_at_most() {
        // One is open per device-metric at a time, mostly: the goal of 1 KB of state per
        // device-metric counts on it (docs/benchmarks.md, "State per device-metric").
        assert!(std::mem::size_of::<OpenWindow>() <= 384);
    }

    #[test]
    fn a_window_s_count_minimum_and_maximum_come_from_its_readings() {
        let device = SharedDeviceInfo::default();
        let mut windows = OpenWindows::default();
        let slots = Slots::new(60_000, 10_000);
        for (ts_ms, value) in [(5_000, 3.0), (59_000, -2.5), (31_000, 7.25), (32_000, 0.0)] {
            let reading = Reading {
                metric: MetricId(0),
                ts_ms,
                value,
            };
            windows.fold(&reading, 0, &device, ts_ms, &slots);
        }
        let window = &windows.windows[0];
        assert_eq!((window.count(), window.min_max()), (4, (-2.5, 7.25)));
    }

    #[test]
    fn a_device_s_open_windows_take_exactly_their_room() {
        let device = SharedDeviceInfo::default();
        let mut windows = OpenWindows::default();
        let slots = Slots::new(60_000, 10_000);
        let fold_minute = |windows: &mut OpenWindows, minute: u64| {
            for metric in [MetricId(0), MetricId(1), MetricId(4)] {
                let ts_ms = minute * 60_000 + 5;
                let reading = Reading {
                    metric,
                    ts_ms,
                    value: 1.0,
                };
                windows.fold(&reading, minute * 60_000, &device, ts_ms, &slots);
            }
        };
        fold_minute(&mut windows, 0);
        fold_minute(&mut windows, 1);
        assert_eq!((windows.windows.len(), windows.windows.capacity()), (6, 6));
        let closed = windows.take_through(0);
        assert_eq!(closed.len(), 3);
        // Windows are hundreds of bytes, kept per device and metric: no room left unused.
        assert_eq!((windows.windows.len(), windows.windows.capacity()), (3, 3));
        assert!(!windows.keys.spilled());
    }
}
