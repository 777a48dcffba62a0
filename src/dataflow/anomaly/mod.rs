//! Anomaly scoring: every on-time reading gets a score in [0, 1] and a kind, and silence and
//! stuck values are found from event-time progress. See [`track`] for the method and why.
//!
//! Work in progress (issue #3): the stage is not yet part of [`pipeline`](crate::dataflow::pipeline).
//! On the W1 workload it still raises false spikes on fast periodic signals (power meters swing
//! by up to 75% within minutes), and its per-reading state costs half of replay's throughput;
//! both must be fixed before it is wired in (see the closing note).

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
    /// Scores each on-time reading against its (device, metric) baseline as of the previous
    /// window's close, and reports stuck runs and silence when windows close. Emits anomalies
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

type TrackKey = (DeviceId, MetricId);

/// Readings waiting to be scored, with the registry entry that selects their parameters.
type Held = (
    Capability<TimeMs>,
    Vec<(DeviceId, SharedDeviceInfo, Reading)>,
);

/// Per worker, each window's latest event time, published at the window's close.
fn window_progress<'scope>(
    messages: EventStream<'scope, EnrichedMessage>,
    window: WindowConfig,
) -> EventStream<'scope, (TimeMs, TimeMs)> {
    messages.unary_frontier(Pipeline, "WindowProgress", move |_cap, _info| {
        let mut latest: BTreeMap<TimeMs, (Capability<TimeMs>, TimeMs)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                for message in data.iter() {
                    for r in &message.readings {
                        let close = window.close_time(window.start_of(r.ts_ms));
                        let entry = latest
                            .entry(close)
                            .or_insert_with(|| (cap.delayed(&close, 0), r.ts_ms));
                        entry.1 = entry.1.max(r.ts_ms);
                    }
                }
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
                let mut tracks: FxHashMap<TrackKey, (SharedDeviceInfo, Track)> =
                    FxHashMap::default();
                // Window close times, with a capability to report stuck runs and silence at, and the
                // fleet's latest event time in that window (once published).
                let mut closes: BTreeMap<TimeMs, (Capability<TimeMs>, Option<TimeMs>)> =
                    BTreeMap::new();
                // Readings keyed by the time they can be scored at: their previous window closed.
                let mut held: BTreeMap<TimeMs, Held> = BTreeMap::new();
                // The fleet's latest event time over the windows closed so far.
                let mut fleet_latest_ms: TimeMs = 0;
                let len = window.length_ms;
                move |(input, frontier), (progress, progress_frontier), output| {
                    input.for_each(|cap, data| {
                        let Some(&arrived) = cap.least() else { return };
                        for message in data.drain(..) {
                            let params = config.params(&message.device.device_type);
                            for r in &message.readings {
                                let start = window.start_of(r.ts_ms);
                                let key = (message.device_id.clone(), r.metric);
                                let (_, track) = tracks.entry(key).or_insert_with(|| {
                                    (Arc::clone(&message.device), Track::default())
                                });
                                track.observe(r, start, params);
                                let close = window.close_time(start);
                                closes
                                    .entry(close)
                                    .or_insert_with(|| (cap.delayed(&close, 0), None));
                                // Scored once the previous window has closed, and not before arrival.
                                let ready = (start.saturating_sub(1)).max(arrived);
                                held.entry(ready)
                                    .or_insert_with(|| (cap.delayed(&ready, 0), Vec::new()))
                                    .1
                                    .push((
                                        message.device_id.clone(),
                                        Arc::clone(&message.device),
                                        *r,
                                    ));
                            }
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
                    // so a reading of window k sees exactly the windows before k. A close also waits
                    // for every worker's progress of that window.
                    loop {
                        let next_close =
                            closes.keys().next().copied().filter(|c| {
                                !frontier.less_than(c) && !progress_frontier.less_equal(c)
                            });
                        // Scoring must not overtake a close it comes after, ready or not.
                        let first_close = closes.keys().next().copied();
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
                                tracks.retain(|(device_id, metric), (device, track)| {
                                    let params = config.params(&device.device_type);
                                    if let Some(stuck) = track.close(start, params) {
                                        session.give(AnomalyScore {
                                            device_id: device_id.clone(),
                                            metric: *metric,
                                            ts_ms: stuck.ts_ms,
                                            value: Some(stuck.value),
                                            score: 1.0,
                                            kind: AnomalyKind::Stuck,
                                        });
                                    }
                                    if let Some(silent_at) =
                                        track.check_silence(fleet_latest_ms, params)
                                    {
                                        session.give(AnomalyScore {
                                            device_id: device_id.clone(),
                                            metric: *metric,
                                            ts_ms: silent_at,
                                            value: None,
                                            score: 1.0,
                                            kind: AnomalyKind::Silence,
                                        });
                                    }
                                    !track.forgettable(fleet_latest_ms, params)
                                });
                            }
                            (_, Some(h)) => {
                                let (cap, readings) = held.remove(&h).expect("listed");
                                let mut session = output.session(&cap);
                                for (device_id, device, r) in readings {
                                    let params = config.params(&device.device_type);
                                    let Some((_, track)) =
                                        tracks.get(&(device_id.clone(), r.metric))
                                    else {
                                        continue;
                                    };
                                    let (score, kind) = track.score(&r, params);
                                    if config.emit_all_scores || score >= params.report_threshold {
                                        session.give(AnomalyScore {
                                            device_id,
                                            metric: r.metric,
                                            ts_ms: r.ts_ms,
                                            value: Some(r.value),
                                            score,
                                            kind,
                                        });
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
