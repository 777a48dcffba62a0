//! Silence: a device that stops sending, found from event-time progress, never a wall clock.
//!
//! Why from closed windows. Each window a device sent in yields one [`DeviceActivity`]: its
//! first and last reading and which of 64 slots of the window heard from it. Gaps inside a
//! window show in the slots, gaps between windows in first and last times, so a silence that
//! ended is found whatever the order readings arrived in. A silence that is still going on has
//! no reading to show it: it is judged against the fleet's progress, the latest event time any
//! device reached in the windows closed so far (every worker publishes its own, broadcast).
//! The frontier would not do as that clock: it jumps to the end when an input closes, which
//! would make every device look silent at the end of a replay.
//!
//! Slots are 1/64 of a window (under a second for a minute), so an in-window gap is measured to
//! a slot: a gap is silence when the empty slots between two heard ones span the timeout.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;

use super::{AnomalyKind, AnomalyScore};
use crate::dataflow::EventStream;
use crate::dataflow::gather::GatherByTime;
use crate::dataflow::model::{DeviceId, SharedDeviceInfo, TimeMs};
use crate::dataflow::window::WindowConfig;

/// When a device was heard from in one closed window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceActivity {
    /// The device.
    pub device_id: DeviceId,
    /// Its registry entry.
    pub device: SharedDeviceInfo,
    /// The window.
    pub window_start_ms: TimeMs,
    /// Its first reading's event time.
    pub first_ts_ms: TimeMs,
    /// Its last reading's event time.
    pub last_ts_ms: TimeMs,
    /// Bit `i` set when a reading fell in the `i`th 64th of the window.
    pub slots: u64,
    /// The device type's silence timeout.
    pub silence_timeout_ms: u64,
    /// The device type's forget time: state of a device silent this long is dropped.
    pub forget_after_ms: u64,
}

impl DeviceActivity {
    /// Silent gaps inside the window: for each, the moment the timeout passed.
    fn inner_silences(&self, window: WindowConfig) -> Vec<TimeMs> {
        let slot_ms = window.length_ms.div_ceil(64);
        let heard: Vec<u64> = (0..64).filter(|i| self.slots & (1 << i) != 0).collect();
        heard
            .windows(2)
            .filter(|pair| (pair[1] - pair[0] - 1) * slot_ms >= self.silence_timeout_ms)
            .map(|pair| self.window_start_ms + (pair[0] + 1) * slot_ms + self.silence_timeout_ms)
            .collect()
    }
}

/// A device's silence state.
#[derive(Clone, Debug)]
struct Heard {
    device: SharedDeviceInfo,
    last_ts_ms: TimeMs,
    /// The last reading after which a silence was reported (each silence is reported once).
    reported_after: Option<TimeMs>,
    timeout_ms: u64,
    forget_after_ms: u64,
}

/// Publishes the fleet's event-time progress.
pub trait FleetProgress<'scope> {
    /// For each window close time, the latest event time any device reached in windows closing
    /// then, from every worker to every worker (so each worker sees every close time: a tick).
    fn fleet_progress(self) -> EventStream<'scope, TimeMs>;
}

impl<'scope> FleetProgress<'scope> for EventStream<'scope, DeviceActivity> {
    fn fleet_progress(self) -> EventStream<'scope, TimeMs> {
        self.unary(Pipeline, "FleetProgress", |_cap, _info| {
            move |input, output| {
                input.for_each(|cap, data| {
                    if let Some(latest) = data.iter().map(|a| a.last_ts_ms).max() {
                        output.session(&cap).give(latest);
                    }
                });
            }
        })
        .broadcast()
    }
}

/// Finds silent devices.
pub trait DetectSilence<'scope> {
    /// Reports each silence of a device once, at the moment its timeout passed: gaps inside and
    /// between windows when the device speaks again, and ongoing silence once the fleet's
    /// event time (`progress`, see [`FleetProgress`]) has moved the timeout past the device's
    /// last reading. The input must be partitioned by device.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use iotpipe::dataflow::WindowConfig;
    /// use iotpipe::dataflow::anomaly::{DetectSilence, DeviceActivity, FleetProgress};
    /// use iotpipe::dataflow::model::DeviceInfo;
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::Map;
    /// use timely::dataflow::operators::{Capture, Input};
    ///
    /// // Activity per device and 1-minute window, sent at the window's close time. "quiet"
    /// // speaks once at 10 s; "busy" every minute. With a 2-minute timeout, "quiet" is silent
    /// // from 130 s, which the fleet's progress shows once "busy" has passed it.
    /// let heard = |device: &str, window: u64, ts_ms: u64| DeviceActivity {
    ///     device_id: device.into(),
    ///     device: Arc::new(DeviceInfo::default()),
    ///     window_start_ms: window * 60_000,
    ///     first_ts_ms: ts_ms,
    ///     last_ts_ms: ts_ms,
    ///     slots: 1 << ((ts_ms % 60_000) * 64 / 60_000),
    ///     silence_timeout_ms: 120_000,
    ///     forget_after_ms: 3_600_000,
    /// };
    /// let silences = timely::example(move |scope| {
    ///     let (mut input, activity) = scope.new_input::<Vec<DeviceActivity>>();
    ///     let progress = activity.clone().fleet_progress();
    ///     let silences = activity
    ///         .detect_silence(progress, WindowConfig::default())
    ///         .map(|s| (s.device_id.to_string(), s.ts_ms))
    ///         .capture();
    ///     input.send(heard("quiet", 0, 10_000));
    ///     for minute in 0..4 {
    ///         input.advance_to(minute * 60_000 + 59_999);
    ///         input.send(heard("busy", minute, minute * 60_000 + 30_000));
    ///     }
    ///     silences
    /// });
    /// let silences: Vec<_> = silences.extract().into_iter().flat_map(|(_, s)| s).collect();
    /// assert_eq!(silences, vec![("quiet".to_string(), 130_000)]);
    /// ```
    fn detect_silence(
        self,
        progress: EventStream<'scope, TimeMs>,
        window: WindowConfig,
    ) -> EventStream<'scope, AnomalyScore>;
}

fn silence(device_id: &DeviceId, device: &SharedDeviceInfo, at_ms: TimeMs) -> AnomalyScore {
    AnomalyScore {
        device_id: device_id.clone(),
        device: device.clone(),
        metric: None,
        ts_ms: at_ms,
        value: None,
        score: 1.0,
        kind: AnomalyKind::Silence,
    }
}

impl<'scope> DetectSilence<'scope> for EventStream<'scope, DeviceActivity> {
    fn detect_silence(
        self,
        progress: EventStream<'scope, TimeMs>,
        window: WindowConfig,
    ) -> EventStream<'scope, AnomalyScore> {
        self.binary_frontier(
            progress,
            Pipeline,
            Pipeline,
            "DetectSilence",
            move |_cap, _info| {
                let mut devices: FxHashMap<DeviceId, Heard> = FxHashMap::default();
                // Per close time: the activity, and this worker's view of the fleet's latest
                // event time.
                let mut pending: GatherByTime<Capability<TimeMs>, Vec<DeviceActivity>, TimeMs> =
                    GatherByTime::default();
                let mut fleet_latest_ms: TimeMs = 0;
                move |(input, frontier), (progress, progress_frontier), output| {
                    input.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        pending.at(time, || cap.delayed(&time, 0)).0.append(data);
                    });
                    progress.for_each(|cap, data| {
                        let Some(&time) = cap.least() else { return };
                        let latest = pending.at(time, || cap.delayed(&time, 0)).1;
                        *latest = data.iter().copied().fold(*latest, TimeMs::max);
                    });
                    while let Some((_, cap, activity, latest)) =
                        pending.next_ready(&[frontier, progress_frontier])
                    {
                        let mut session = output.session(&cap);
                        for a in activity {
                            let heard = devices.entry(a.device_id.clone()).or_insert(Heard {
                                device: a.device.clone(),
                                last_ts_ms: a.first_ts_ms,
                                reported_after: None,
                                timeout_ms: a.silence_timeout_ms,
                                forget_after_ms: a.forget_after_ms,
                            });
                            let before = heard.last_ts_ms;
                            if before + a.silence_timeout_ms <= a.first_ts_ms
                                && heard.reported_after != Some(before)
                            {
                                session.give(silence(
                                    &a.device_id,
                                    &a.device,
                                    before + a.silence_timeout_ms,
                                ));
                            }
                            for at_ms in a.inner_silences(window) {
                                session.give(silence(&a.device_id, &a.device, at_ms));
                            }
                            *heard = Heard {
                                device: a.device.clone(),
                                last_ts_ms: before.max(a.last_ts_ms),
                                reported_after: heard.reported_after,
                                timeout_ms: a.silence_timeout_ms,
                                forget_after_ms: a.forget_after_ms,
                            };
                        }
                        fleet_latest_ms = fleet_latest_ms.max(latest);
                        devices.retain(|device_id, heard| {
                            let silent_at = heard.last_ts_ms + heard.timeout_ms;
                            if silent_at <= fleet_latest_ms
                                && heard.reported_after != Some(heard.last_ts_ms)
                            {
                                heard.reported_after = Some(heard.last_ts_ms);
                                session.give(silence(device_id, &heard.device, silent_at));
                            }
                            heard.last_ts_ms + heard.forget_after_ms > fleet_latest_ms
                        });
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_of_empty_slots_spanning_the_timeout_is_silence() {
        let window = WindowConfig::default();
        // 938 ms slots: heard in slots 0..=9 and 40..=63, a gap of 30 slots (28 s).
        let slots = (0..10).chain(40..64).fold(0u64, |s, i| s | (1 << i));
        let activity = DeviceActivity {
            device_id: "d".into(),
            device: std::sync::Arc::new(crate::dataflow::model::DeviceInfo::default()),
            window_start_ms: 60_000,
            first_ts_ms: 60_000,
            last_ts_ms: 119_000,
            slots,
            silence_timeout_ms: 20_000,
            forget_after_ms: 3_600_000,
        };
        assert_eq!(
            activity.inner_silences(window),
            [60_000 + 10 * 938 + 20_000]
        );
        let short = DeviceActivity {
            silence_timeout_ms: 30_000,
            ..activity
        };
        assert_eq!(short.inner_silences(window).len(), 0);
    }
}
