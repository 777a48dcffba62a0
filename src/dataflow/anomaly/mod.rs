//! Anomaly scoring: every on-time reading gets a score in [0, 1] and a kind, and silence and
//! stuck values are found from event-time progress. See [`track`] for the method and why.
//!
//! Work in progress (issue #3): the stage is not yet part of [`pipeline`](crate::dataflow::pipeline).
//! Wired into replay (experimentally) on a 2,000-device, 20-minute W1 file (seed 42) it found
//! 5/5 level shifts, 5/5 stuck values, 5/5 silences and 4/5 spikes (median delays 0.3 s, 14 s,
//! 19 s, 21 s) with no anomaly on any of the 1,980 healthy devices (666 device-hours); but it
//! cost about a third of replay's throughput with 2 workers (517,000 -> 333,000 messages/s on
//! that file), above the 15% budget: timely clones every enriched message for each extra
//! consumer (5-8% each, two here), and the per-reading bucket updates repeat the window
//! operator's own per-device lookup. Folding the scorer's state into `AggregateWindows` (one
//! lookup, no clones; progress taken from the closed aggregates) is the next step.

pub mod track;

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;

pub use track::{AnomalyKind, ScorerParams, Track};

use crate::dataflow::EventStream;
use crate::dataflow::model::{
    DeviceId, EnrichedMessage, MetricId, Reading, SharedDeviceInfo, TimeMs,
};
use crate::dataflow::window::WindowConfig;

/// Scorer tuning: defaults, and overrides per device type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Parameters for device types without an override.
    pub defaults: ScorerParams,
    /// Parameters per device type (`thermostat`, `power_meter`, ...).
    pub by_device_type: BTreeMap<String, ScorerParams>,
    /// Emit every reading's score, not only anomalies (for evaluation).
    pub emit_all_scores: bool,
}

impl AnomalyConfig {
    /// The parameters for a device type.
    pub fn params(&self, device_type: &str) -> &ScorerParams {
        self.by_device_type
            .get(device_type)
            .unwrap_or(&self.defaults)
    }
}

/// One reading's score, or a silence or stuck finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyScore {
    /// The device.
    pub device_id: DeviceId,
    /// The metric.
    pub metric: MetricId,
    /// Event time of the reading (for silence: when the track fell silent).
    pub ts_ms: TimeMs,
    /// The reading's value (none for silence).
    pub value: Option<f64>,
    /// Score in [0, 1].
    pub score: f64,
    /// What the score points at.
    pub kind: AnomalyKind,
}

/// Scores readings for anomalies.
pub trait ScoreAnomalies<'scope> {
    /// Scores each on-time reading against its (device, metric) baseline as of the close of
    /// the window before the previous one, and reports stuck runs and silence when windows close. Emits anomalies
    /// (score at or above the reporting threshold, and every stuck and silence finding), or every
    /// score with [`AnomalyConfig::emit_all_scores`]. The input must be partitioned by device.
    ///
    /// Silence is judged against fleet-wide event-time progress: every worker publishes the
    /// latest event time of each window it closes, and a track is silent once the fleet has
    /// moved the timeout past its last reading. (The frontier alone would not do: it jumps to the
    /// end when an input closes, which would make every device look silent.)
    fn score_anomalies(
        self,
        config: AnomalyConfig,
        window: WindowConfig,
    ) -> EventStream<'scope, AnomalyScore>;
}

/// A device's registry entry (its type selects the parameters) and its tracks by metric.
type DeviceTracks = (SharedDeviceInfo, Vec<(MetricId, Track)>);

/// Messages waiting to be scored.
type Held = (Capability<TimeMs>, Vec<EnrichedMessage>);

/// Per worker, each window's latest event time, published at the window's close.
fn window_progress<'scope>(
    messages: EventStream<'scope, EnrichedMessage>,
    window: WindowConfig,
) -> EventStream<'scope, (TimeMs, TimeMs)> {
    messages.unary_frontier(Pipeline, "WindowProgress", move |_cap, _info| {
        let mut latest: BTreeMap<TimeMs, (Capability<TimeMs>, TimeMs)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                // Readings come in runs of one window: touch the map once per run.
                let mut run: Option<(TimeMs, TimeMs)> = None;
                let mut flush = |run: Option<(TimeMs, TimeMs)>| {
                    if let Some((close, ts)) = run {
                        let entry = latest
                            .entry(close)
                            .or_insert_with(|| (cap.delayed(&close, 0), ts));
                        entry.1 = entry.1.max(ts);
                    }
                };
                for message in data.iter() {
                    for r in &message.readings {
                        let close = window.close_time(window.start_of(r.ts_ms));
                        match &mut run {
                            Some((c, ts)) if *c == close => *ts = (*ts).max(r.ts_ms),
                            _ => {
                                flush(run);
                                run = Some((close, r.ts_ms));
                            }
                        }
                    }
                }
                flush(run);
            });
            while let Some(entry) = latest.first_entry() {
                if frontier.less_than(entry.key()) {
                    break;
                }
                let close = *entry.key();
                let (cap, ts) = entry.remove();
                output.session(&cap).give((close, ts));
            }
        }
    })
}

impl<'scope> ScoreAnomalies<'scope> for EventStream<'scope, EnrichedMessage> {
    fn score_anomalies(
        self,
        config: AnomalyConfig,
        window: WindowConfig,
    ) -> EventStream<'scope, AnomalyScore> {
        let progress = window_progress(self.clone(), window).broadcast();
        self.binary_frontier(
            progress,
            Pipeline,
            Pipeline,
            "ScoreAnomalies",
            move |_cap, _info| {
                let mut tracks: FxHashMap<DeviceId, DeviceTracks> = FxHashMap::default();
                // Window close times, with a capability to report stuck runs and silence at, and the
                // fleet's latest event time in that window (once published).
                let mut closes: BTreeMap<TimeMs, (Capability<TimeMs>, Option<TimeMs>)> =
                    BTreeMap::new();
                // Messages keyed by the time their earliest reading can be scored: its previous
                // window has closed.
                let mut held: BTreeMap<TimeMs, Held> = BTreeMap::new();
                // The fleet's latest event time over the windows closed so far.
                let mut fleet_latest_ms: TimeMs = 0;
                let mut findings = Vec::new();
                let len = window.length_ms;
                // A reading of window k is scored against the baseline after window k - 2 closed:
                // that has almost always happened when it arrives, so readings are scored on
                // arrival instead of being held for the lateness bound.
                let ready = move |ts_ms: TimeMs, arrived: TimeMs| {
                    window.start_of(ts_ms).saturating_sub(len + 1).max(arrived)
                };
                move |(input, frontier), (progress, progress_frontier), output| {
                    input.for_each(|cap, data| {
                        let Some(&arrived) = cap.least() else { return };
                        let mut last_close = None;
                        for message in data.drain(..) {
                            let params = config.params(&message.device.device_type);
                            let (_, device_tracks) = tracks
                                .entry(message.device_id.clone())
                                .or_insert_with(|| (Arc::clone(&message.device), Vec::new()));
                            for r in &message.readings {
                                let start = window.start_of(r.ts_ms);
                                let track =
                                    match device_tracks.iter().position(|(m, _)| *m == r.metric) {
                                        Some(i) => &mut device_tracks[i].1,
                                        None => {
                                            device_tracks.push((r.metric, Track::default()));
                                            &mut device_tracks.last_mut().expect("just pushed").1
                                        }
                                    };
                                track.observe(r, start, params);
                                let close = window.close_time(start);
                                if last_close != Some(close) {
                                    last_close = Some(close);
                                    closes
                                        .entry(close)
                                        .or_insert_with(|| (cap.delayed(&close, 0), None));
                                }
                            }
                            let Some(first) = message
                                .readings
                                .iter()
                                .map(|r| ready(r.ts_ms, arrived))
                                .min()
                            else {
                                continue;
                            };
                            held.entry(first)
                                .or_insert_with(|| (cap.delayed(&first, 0), Vec::new()))
                                .1
                                .push(message);
                        }
                    });
                    progress.for_each(|cap, data| {
                        for (close, latest) in data.drain(..) {
                            let entry = closes
                                .entry(close)
                                .or_insert_with(|| (cap.delayed(&close, 0), None));
                            entry.1 = Some(entry.1.map_or(latest, |l| l.max(latest)));
                        }
                    });

                    // Closes and scoring in event-time order; a close before scoring at equal times,
                    // so a reading of window k sees exactly the windows before k - 1. A close also waits
                    // for every worker's progress of that window, and scoring never overtakes a
                    // close it comes after.
                    loop {
                        let first_close = closes.keys().next().copied();
                        let next_close = first_close
                            .filter(|c| !frontier.less_than(c) && !progress_frontier.less_equal(c));
                        let next_held = held.keys().next().copied().filter(|t| {
                            !frontier.less_than(t)
                                && first_close.is_none_or(|c| c > *t || Some(c) == next_close)
                        });
                        match (next_close, next_held) {
                            (Some(c), h) if h.is_none_or(|h| c <= h) => {
                                let (cap, latest) = closes.remove(&c).expect("listed");
                                fleet_latest_ms = fleet_latest_ms.max(latest.unwrap_or(0));
                                let start = c + 1 - len;
                                let mut session = output.session(&cap);
                                tracks.retain(|device_id, (device, device_tracks)| {
                                    let params = config.params(&device.device_type);
                                    device_tracks.retain_mut(|(metric, track)| {
                                        findings.clear();
                                        track.close(start, params, &mut findings);
                                        findings
                                            .extend(track.check_silence(fleet_latest_ms, params));
                                        for f in findings.drain(..) {
                                            session.give(AnomalyScore {
                                                device_id: device_id.clone(),
                                                metric: *metric,
                                                ts_ms: f.ts_ms,
                                                value: f.value,
                                                score: 1.0,
                                                kind: f.kind,
                                            });
                                        }
                                        !track.forgettable(fleet_latest_ms, params)
                                    });
                                    !device_tracks.is_empty()
                                });
                            }
                            (_, Some(h)) => {
                                let (cap, messages) = held.remove(&h).expect("listed");
                                let mut session = output.session(&cap);
                                for mut message in messages {
                                    let params = config.params(&message.device.device_type);
                                    // Readings of a later window (a batch across a boundary) wait.
                                    let later: Vec<Reading> = message
                                        .readings
                                        .iter()
                                        .filter(|r| ready(r.ts_ms, h) > h)
                                        .copied()
                                        .collect();
                                    message.readings.retain(|r| ready(r.ts_ms, h) <= h);
                                    for r in &message.readings {
                                        let Some(track) =
                                            tracks.get(&message.device_id).and_then(|(_, ts)| {
                                                ts.iter()
                                                    .find(|(m, _)| *m == r.metric)
                                                    .map(|(_, t)| t)
                                            })
                                        else {
                                            continue;
                                        };
                                        let (score, kind) = track.score(r, params);
                                        if config.emit_all_scores
                                            || score >= params.report_threshold
                                        {
                                            session.give(AnomalyScore {
                                                device_id: message.device_id.clone(),
                                                metric: r.metric,
                                                ts_ms: r.ts_ms,
                                                value: Some(r.value),
                                                score,
                                                kind,
                                            });
                                        }
                                    }
                                    if let Some(next) =
                                        later.iter().map(|r| ready(r.ts_ms, h)).min()
                                    {
                                        message.readings = later;
                                        held.entry(next)
                                            .or_insert_with(|| (cap.delayed(&next), Vec::new()))
                                            .1
                                            .push(message);
                                    }
                                }
                            }
                            _ => break,
                        }
                    }
                }
            },
        )
    }
}
