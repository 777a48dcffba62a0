//! Anomaly scoring: every on-time reading gets a score in [0, 1] and a kind, and silence and
//! stuck values are found from event-time progress. See [`track`] for the method and why.
//!
//! Work in progress (issue #3): the stage is not yet part of [`pipeline`](crate::dataflow::pipeline).
//! Before it is: silence must be judged against fleet-wide event-time progress (a broadcast of
//! each closed window's latest event time) rather than the local frontier, which jumps to the
//! end when an input closes; the baseline must follow fast periodic signals (the workload's power
//! meters swing by up to 75% within minutes) without false alerts; and held readings should
//! carry the registry entry rather than a cloned device type, to keep replay throughput.

pub mod track;

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

pub use track::{AnomalyKind, ScorerParams, Track};

use crate::dataflow::EventStream;
use crate::dataflow::model::{DeviceId, EnrichedMessage, MetricId, TimeMs};
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
    fn score_anomalies(
        self,
        config: AnomalyConfig,
        window: WindowConfig,
    ) -> EventStream<'scope, AnomalyScore>;
}

type TrackKey = (DeviceId, MetricId);

/// Readings waiting to be scored, with the device type that selects their parameters.
type Held = (
    Capability<TimeMs>,
    Vec<(DeviceId, String, crate::dataflow::model::Reading)>,
);

impl<'scope> ScoreAnomalies<'scope> for EventStream<'scope, EnrichedMessage> {
    fn score_anomalies(
        self,
        config: AnomalyConfig,
        window: WindowConfig,
    ) -> EventStream<'scope, AnomalyScore> {
        self.unary_frontier(Pipeline, "ScoreAnomalies", move |_cap, _info| {
            let mut tracks: FxHashMap<TrackKey, (String, Track)> = FxHashMap::default();
            // Window close times, with a capability to report stuck runs and silence at.
            let mut closes: BTreeMap<TimeMs, Capability<TimeMs>> = BTreeMap::new();
            // Readings keyed by the time they can be scored at: their previous window closed.
            let mut held: BTreeMap<TimeMs, Held> = BTreeMap::new();
            let len = window.length_ms;
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some(&arrived) = cap.least() else { return };
                    for message in data.drain(..) {
                        let device_type = &message.device.device_type;
                        let params = config.params(device_type);
                        for r in &message.readings {
                            let start = window.start_of(r.ts_ms);
                            let key = (message.device_id.clone(), r.metric);
                            let (_, track) = tracks
                                .entry(key)
                                .or_insert_with(|| (device_type.clone(), Track::default()));
                            track.observe(r, start, params);
                            let close = window.close_time(start);
                            closes
                                .entry(close)
                                .or_insert_with(|| cap.delayed(&close, 0));
                            // Scored once the previous window has closed, and not before arrival.
                            let ready = (start.saturating_sub(1)).max(arrived);
                            held.entry(ready)
                                .or_insert_with(|| (cap.delayed(&ready, 0), Vec::new()))
                                .1
                                .push((message.device_id.clone(), device_type.clone(), *r));
                        }
                    }
                });

                // Closes and scoring in event-time order; a close before scoring at equal times,
                // so a reading of window k sees exactly the windows before k.
                loop {
                    let next_close = closes
                        .keys()
                        .next()
                        .copied()
                        .filter(|t| !frontier.less_than(t));
                    let next_held = held
                        .keys()
                        .next()
                        .copied()
                        .filter(|t| !frontier.less_than(t));
                    match (next_close, next_held) {
                        (Some(c), h) if h.is_none_or(|h| c <= h) => {
                            let cap = closes.remove(&c).expect("listed");
                            let start = c + 1 - len;
                            let mut session = output.session(&cap);
                            tracks.retain(|(device_id, metric), (device_type, track)| {
                                let params = config.params(device_type);
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
                                if let Some(silent_at) = track.check_silence(c + 1, params) {
                                    session.give(AnomalyScore {
                                        device_id: device_id.clone(),
                                        metric: *metric,
                                        ts_ms: silent_at,
                                        value: None,
                                        score: 1.0,
                                        kind: AnomalyKind::Silence,
                                    });
                                }
                                !track.forgettable(c + 1, params)
                            });
                        }
                        (_, Some(h)) => {
                            let (cap, readings) = held.remove(&h).expect("listed");
                            let mut session = output.session(&cap);
                            for (device_id, device_type, r) in readings {
                                let params = config.params(&device_type);
                                let Some((_, track)) = tracks.get(&(device_id.clone(), r.metric))
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
        })
    }
}
