//! Tumbling event-time windows per device and metric, closed by the frontier, with anomaly
//! scoring folded into the same pass (see [`anomaly`](crate::dataflow::anomaly) for why).

mod close;
mod open;
mod reattribute;

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::dataflow::EventStream;
use crate::dataflow::anomaly::{
    AnomalyConfig, AnomalyScore, DeviceActivity, DeviceScorer, Judge, ParamsTable,
};
use crate::dataflow::enrich::RegistryArrangement;
use crate::dataflow::metadata::lookup::RegistryLookup;
use crate::dataflow::model::{
    DeviceId, EnrichedMessage, Reading, SharedDeviceInfo, ThresholdBreach, TimeMs, WindowAggregate,
};
use close::{CloseCaps, Closing, close_due, corrections};
use open::{CloseBuffers, DeviceState, OpenWindows};

/// Window geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Window length; windows are `[k * length_ms, (k + 1) * length_ms)`.
    pub length_ms: u64,
    /// Event time over which a window's close is spread: its devices close in slices, one
    /// more each [`CLOSE_SLICE_MS`] the frontier passes the window's end, so that the work of
    /// closing (scoring, rolling up, writing) does not land on the cores in one burst that
    /// readings wait behind (0: all at once). The window's outputs keep their time, its close
    /// time, and are complete once the frontier has passed the close time plus the spread; every
    /// slice sees the registry as it was at the close time. Cut to a quarter of `length_ms`.
    #[serde(default = "default_close_spread_ms")]
    pub close_spread_ms: u64,
}

/// The event time between two slices of a close (see [`WindowConfig::close_spread_ms`]).
pub const CLOSE_SLICE_MS: u64 = 100;

fn default_close_spread_ms() -> u64 {
    10_000
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            length_ms: 60_000,
            close_spread_ms: default_close_spread_ms(),
        }
    }
}

impl WindowConfig {
    /// Start of the window holding `ts_ms`.
    pub fn start_of(&self, ts_ms: TimeMs) -> TimeMs {
        ts_ms - ts_ms % self.length_ms
    }

    /// Whether a reading at `ts_ms` is late against watermark `watermark_ms`: its window's last
    /// millisecond is at or behind the watermark.
    pub fn is_late(&self, ts_ms: TimeMs, watermark_ms: TimeMs) -> bool {
        self.close_time(self.start_of(ts_ms)) <= watermark_ms
    }

    /// The timely time at which the window starting at `start_ms` is emitted: its last
    /// millisecond. Every on-time reading of it travels at an earlier time, so once the frontier
    /// reaches this time the window is complete.
    ///
    /// Saturates: the last window before `u64::MAX` closes at `u64::MAX` rather than wrapping
    /// to the start of time (decoding refuses stamps after the year 9999 anyway).
    pub fn close_time(&self, start_ms: TimeMs) -> TimeMs {
        start_ms.saturating_add(self.length_ms - 1)
    }

    /// How many slices a close is spread over: at least one, over at most a quarter of a
    /// window, so that a close ends long before the next one is due.
    pub fn close_slices(&self) -> u64 {
        let spread_ms = self.close_spread_ms.min(self.length_ms / 4);
        (spread_ms / CLOSE_SLICE_MS).max(1)
    }

    /// The event time over which a close is spread, as cut to a quarter of the window.
    pub fn applied_close_spread_ms(&self) -> u64 {
        (self.close_slices() - 1) * CLOSE_SLICE_MS
    }
}

/// Readings whose score waits for the window two before theirs to close, with a capability at
/// their arrival time: a score's time is its reading's, however long it waited.
type Held = Vec<(Capability<TimeMs>, Vec<(DeviceId, Reading)>)>;

/// What [`AggregateWindows`] produces.
pub struct Windowed<'scope> {
    /// Closed windows per device, metric and site, at their close time.
    pub aggregates: EventStream<'scope, WindowAggregate>,
    /// Anomaly scores of readings (at or above the reporting threshold, or all of them with
    /// [`AnomalyConfig::emit_all_scores`]) and stuck and level-shift findings of closed windows.
    pub scores: EventStream<'scope, AnomalyScore>,
    /// Each device's activity per closed window, for [`DetectSilence`](crate::dataflow::anomaly::DetectSilence).
    pub activity: EventStream<'scope, DeviceActivity>,
    /// Closed windows with readings outside the registry thresholds.
    pub breaches: EventStream<'scope, ThresholdBreach>,
}

/// Aggregates enriched readings into closed windows, and scores them.
pub trait AggregateWindows<'scope> {
    /// Folds each on-time reading into its (device, metric, window, site) aggregate and emits
    /// the aggregate, at its window's [`close_time`](WindowConfig::close_time), once the input
    /// frontier reaches that time. State is dropped on emission: memory is bounded by the open
    /// windows and the devices' scoring models, never by the readings.
    ///
    /// In the same pass each reading is scored against its (device, metric) model as of the
    /// close of the window two before its own (see [`Track`](crate::dataflow::anomaly::Track)):
    /// on arrival when that window has closed, which is almost always, else once it has. The
    /// model is copied into the window when its first reading is scored, so scoring a reading
    /// touches only its window.
    ///
    /// The input must be partitioned by device (as [`Enrich`](crate::dataflow::enrich::Enrich)
    /// leaves it), and carry only on-time readings.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use iotpipe::dataflow::anomaly::AnomalyConfig;
    /// use iotpipe::dataflow::model::{DeviceInfo, EnrichedMessage, MetricId, Reading};
    /// use iotpipe::dataflow::{AggregateWindows, RegistryUpdate, ResolveRegistry, WindowConfig};
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::Map;
    /// use timely::dataflow::operators::{Capture, ToStream};
    ///
    /// // Three readings of one device: two in the first minute, one in the second.
    /// let message = |ts_ms, value| EnrichedMessage {
    ///     device_id: "dev-1".into(),
    ///     device: Arc::new(DeviceInfo::default()),
    ///     ts_ms,
    ///     stamp_ms: 0,
    ///     readings: smallvec::smallvec![Reading { metric: MetricId(0), ts_ms, value }],
    /// };
    /// let messages = vec![message(10_000, 1.0), message(20_000, 3.0), message(70_000, 5.0)];
    /// let captured = timely::example(move |scope| {
    ///     // No registry changes: each window keeps the entry its readings came with.
    ///     let registry = Vec::<RegistryUpdate>::new().to_stream(scope).resolve_registry();
    ///     let windowed = messages.to_stream(scope).aggregate_windows(
    ///         &registry,
    ///         WindowConfig::default(),
    ///         &AnomalyConfig::default(),
    ///     );
    ///     let summary = |a: &iotpipe::dataflow::model::WindowAggregate| {
    ///         (a.window_start_ms, a.count, a.mean().to_string())
    ///     };
    ///     windowed.aggregates.map(move |a| summary(&a)).capture()
    /// });
    /// // Each window at its close time, its last millisecond.
    /// let windows = captured.extract();
    /// assert_eq!(windows[0], (59_999, vec![(0, 2, "2".to_string())]));
    /// assert_eq!(windows[1], (119_999, vec![(60_000, 1, "5".to_string())]));
    /// ```
    fn aggregate_windows(
        self,
        registry: &RegistryArrangement<'scope>,
        config: WindowConfig,
        anomaly: &AnomalyConfig,
    ) -> Windowed<'scope>;
}

/// An anomaly score for a reading, if it is reported. Most readings are far below the reporting
/// distance and cost one division.
fn reported(
    device_id: &DeviceId,
    device: &SharedDeviceInfo,
    reading: &Reading,
    judge: &Judge,
    scorer: &DeviceScorer,
    table: &ParamsTable,
    emit_all_scores: bool,
) -> Option<AnomalyScore> {
    if !emit_all_scores && judge.distance(reading) < scorer.report_distance(table) {
        return None;
    }
    let params = scorer.params(table);
    let (score, kind) = judge.score(reading, params);
    (emit_all_scores || score >= params.report_threshold).then(|| AnomalyScore {
        device_id: device_id.clone(),
        device: Arc::clone(device),
        metric: Some(reading.metric),
        ts_ms: reading.ts_ms,
        value: Some(reading.value),
        score,
        kind,
    })
}

impl<'scope> AggregateWindows<'scope> for EventStream<'scope, EnrichedMessage> {
    fn aggregate_windows(
        self,
        registry: &RegistryArrangement<'scope>,
        config: WindowConfig,
        anomaly: &AnomalyConfig,
    ) -> Windowed<'scope> {
        let mut builder = OperatorBuilder::new("AggregateWindows".to_owned(), self.scope());
        let mut input = builder.new_input(self, Pipeline);
        // The registry is partitioned by device like the readings, so its batches are local.
        let mut registry_batches = builder.new_input(registry.stream.clone(), Pipeline);
        let trace = registry.trace.clone();
        let (aggregates_out, aggregates) = builder.new_output();
        let (scores_out, scores) = builder.new_output();
        let (activity_out, activity) = builder.new_output();
        let (breaches_out, breaches) = builder.new_output();
        let mut aggregates_out: OutputBuilder<_, CapacityContainerBuilder<Vec<WindowAggregate>>> =
            OutputBuilder::from(aggregates_out);
        let mut scores_out: OutputBuilder<_, CapacityContainerBuilder<Vec<AnomalyScore>>> =
            OutputBuilder::from(scores_out);
        let mut activity_out: OutputBuilder<_, CapacityContainerBuilder<Vec<DeviceActivity>>> =
            OutputBuilder::from(activity_out);
        let mut breaches_out: OutputBuilder<_, CapacityContainerBuilder<Vec<ThresholdBreach>>> =
            OutputBuilder::from(breaches_out);
        let table: ParamsTable = anomaly.table(config.length_ms);
        let emit_all = anomaly.emit_all_scores;
        let len = config.length_ms;

        builder.build(move |_caps| {
            let mut devices: FxHashMap<DeviceId, DeviceState> = FxHashMap::default();
            let mut closes: BTreeMap<TimeMs, CloseCaps> = BTreeMap::new();
            let mut closing_now: Option<Closing> = None;
            let mut held: BTreeMap<TimeMs, Held> = BTreeMap::new();
            // Every window closing at or before this has been closed.
            let mut closed_through: Option<TimeMs> = None;
            let mut buffers = CloseBuffers::default();
            let mut lookup = RegistryLookup::new(trace);
            // Devices a registry batch changed, with the latest time it became known: their
            // windows starting before it may hold readings enriched without the change, and
            // are attributed again when they close (see `reattribute`).
            let mut changed: FxHashMap<DeviceId, TimeMs> = FxHashMap::default();
            move |frontiers| {
                let mut aggregates_out = aggregates_out.activate();
                let mut scores_out = scores_out.activate();
                let mut activity_out = activity_out.activate();
                let mut breaches_out = breaches_out.activate();
                registry_batches.for_each(|_, spans| {
                    for batch in spans.iter().filter_map(|span| span.inner.as_ref()) {
                        lookup.forget_changed(batch, |device_id, known_ms| {
                            let at = changed.entry(device_id.clone()).or_default();
                            *at = (*at).max(known_ms);
                        });
                    }
                });
                // Windows the frontier has reached close, and held readings are scored, in
                // event-time order: a window closing at `c` before readings waiting for `c`.
                // A window closes once the registry, too, is complete through its close, so
                // that every correction known by then reaches it.
                let reached = frontiers
                    .iter()
                    .map(|f| f.frontier().first().map_or(TimeMs::MAX, |t| *t))
                    .min()
                    .unwrap_or(TimeMs::MAX);
                loop {
                    // A close under way closes the slices the frontier has reached; what comes
                    // after it (a later close, readings waiting for it) waits for its end.
                    if let Some(closing) = closing_now.as_mut() {
                        close_due(
                            &mut devices,
                            closing,
                            reached,
                            &config,
                            &table,
                            &mut buffers,
                        );
                        if !buffers.aggregates.is_empty() {
                            aggregates_out
                                .session(&closing.caps.aggregates)
                                .give_container(&mut buffers.aggregates);
                        }
                        if !buffers.findings.is_empty() {
                            scores_out
                                .session(&closing.caps.findings)
                                .give_container(&mut buffers.findings);
                        }
                        if !buffers.activity.is_empty() {
                            activity_out
                                .session(&closing.caps.activity)
                                .give_container(&mut buffers.activity);
                        }
                        if !buffers.breaches.is_empty() {
                            breaches_out
                                .session(&closing.caps.breaches)
                                .give_container(&mut buffers.breaches);
                        }
                        if !closing.is_done() {
                            break;
                        }
                        // A change no open window started before has been applied.
                        let start = config.start_of(closing.close_ms);
                        changed.retain(|device_id, known_ms| {
                            *known_ms > start + len && devices.contains_key(device_id)
                        });
                        closed_through = Some(closing.close_ms);
                        closing_now = None;
                    }
                    let next_close = closes.keys().next().copied().filter(|c| *c <= reached);
                    let next_held = held.keys().next().copied().filter(|h| *h <= reached);
                    match (next_close, next_held) {
                        (Some(c), h) if h.is_none_or(|h| c <= h) => {
                            let caps = closes.remove(&c).expect("listed");
                            // The corrections are those known as the close begins.
                            let corrections =
                                corrections(&devices, &changed, config.start_of(c), &mut lookup);
                            let all = devices.keys().cloned().collect();
                            closing_now = Some(Closing::new(c, caps, all, corrections, &config));
                        }
                        (_, Some(h)) => {
                            for (cap, readings) in held.remove(&h).expect("listed") {
                                let mut session = scores_out.session(&cap);
                                for (device_id, r) in readings {
                                    let Some(state) = devices.get_mut(&device_id) else {
                                        continue;
                                    };
                                    let start = config.start_of(r.ts_ms);
                                    let judge = state.scorer.judge(r.metric, start, len, &table);
                                    for w in state
                                        .windows
                                        .windows
                                        .iter_mut()
                                        .filter(|w| w.metric == r.metric && w.start_ms == start)
                                    {
                                        w.evidence.judge = Some(judge);
                                    }
                                    if let Some(score) = reported(
                                        &device_id,
                                        &state.device,
                                        &r,
                                        &judge,
                                        &state.scorer,
                                        &table,
                                        emit_all,
                                    ) {
                                        session.give(score);
                                    }
                                }
                            }
                        }
                        _ => break,
                    }
                }
                // Every window closing before a close under way has closed.
                let through = closing_now.as_ref().map_or(reached, |c| c.close_ms - 1);
                if through > closed_through.unwrap_or(0) {
                    closed_through = Some(through);
                }
                // Open windows start after `through - len`: versions replaced before then are
                // in force for none of their readings.
                lookup.compact_to((through < TimeMs::MAX).then(|| through.saturating_sub(len)));

                input.for_each(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    let mut last_close = None;
                    // Scores go out at their message's stamp, not at the batch's time (see
                    // `EnrichedMessage::stamp_ms`); consecutive messages often share one.
                    let mut stamp_cap = cap.delayed(&time, 1);
                    let mut stamp_scores = Vec::new();
                    // Read in place rather than moved out one by one: a message is ~150 bytes.
                    for message in data.iter() {
                        let stamp_ms = message.stamp_ms.max(time);
                        if *stamp_cap.time() != stamp_ms {
                            if !stamp_scores.is_empty() {
                                scores_out
                                    .session(&stamp_cap)
                                    .give_container(&mut stamp_scores);
                            }
                            stamp_cap = cap.delayed(&stamp_ms, 1);
                        }
                        let state = match devices.get_mut(&message.device_id) {
                            Some(s) => s,
                            None => devices.entry(message.device_id.clone()).or_insert_with(|| {
                                DeviceState {
                                    device: Arc::clone(&message.device),
                                    windows: OpenWindows::default(),
                                    scorer: DeviceScorer::new(&message.device.device_type, &table),
                                }
                            }),
                        };
                        if !Arc::ptr_eq(&state.device, &message.device) {
                            state.scorer.set_type(&message.device.device_type, &table);
                            state.device = Arc::clone(&message.device);
                        }
                        let slots = state.scorer.slots(&table);
                        for r in &message.readings {
                            let start = config.start_of(r.ts_ms);
                            let (index, opened) =
                                state
                                    .windows
                                    .fold(r, start, &message.device, message.ts_ms, slots);
                            if opened {
                                let close = config.close_time(start);
                                if last_close != Some(close) {
                                    last_close = Some(close);
                                    closes.entry(close).or_insert_with(|| CloseCaps {
                                        aggregates: cap.delayed(&close, 0),
                                        findings: cap.delayed(&close, 1),
                                        activity: cap.delayed(&close, 2),
                                        breaches: cap.delayed(&close, 3),
                                    });
                                }
                            }
                            let window = &mut state.windows.windows[index];
                            // The window two before this one closes at `start - len - 1`.
                            let ready = start.saturating_sub(len + 1);
                            if window.evidence.judge.is_none()
                                && closed_through.is_some_and(|c| c >= ready)
                            {
                                window.evidence.judge =
                                    Some(state.scorer.judge(r.metric, start, len, &table));
                            }
                            match &state.windows.windows[index].evidence.judge {
                                Some(judge) => {
                                    if let Some(score) = reported(
                                        &message.device_id,
                                        &message.device,
                                        r,
                                        judge,
                                        &state.scorer,
                                        &table,
                                        emit_all,
                                    ) {
                                        stamp_scores.push(score);
                                    }
                                }
                                None => {
                                    let waiting = held.entry(ready).or_default();
                                    if waiting.last().is_none_or(|(c, _)| *c.time() != stamp_ms) {
                                        waiting.push((stamp_cap.clone(), Vec::new()));
                                    }
                                    let (_, readings) = waiting.last_mut().expect("just pushed");
                                    readings.push((message.device_id.clone(), *r));
                                }
                            }
                        }
                    }
                    if !stamp_scores.is_empty() {
                        scores_out
                            .session(&stamp_cap)
                            .give_container(&mut stamp_scores);
                    }
                    data.clear();
                });
            }
        });
        Windowed {
            aggregates,
            scores,
            activity,
            breaches,
        }
    }
}
