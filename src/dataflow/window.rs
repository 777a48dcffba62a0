//! Tumbling event-time windows per device and metric, closed by the frontier.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::dataflow::EventStream;
use crate::dataflow::model::{
    DeviceId, EnrichedMessage, ExactSum, MetricId, SharedDeviceInfo, TimeMs, WindowAggregate,
};

/// Window geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Window length; windows are `[k * length_ms, (k + 1) * length_ms)`.
    pub length_ms: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self { length_ms: 60_000 }
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
        self.start_of(ts_ms) + self.length_ms - 1 <= watermark_ms
    }

    /// The timely time at which the window starting at `start_ms` is emitted: its last
    /// millisecond. Every on-time reading of it travels at an earlier time, so once the frontier
    /// reaches this time the window is complete.
    pub fn close_time(&self, start_ms: TimeMs) -> TimeMs {
        start_ms + self.length_ms - 1
    }
}

/// An open window's running aggregate.
#[derive(Clone, Debug)]
struct OpenWindow {
    metric: MetricId,
    start_ms: TimeMs,
    /// The registry entry of the readings (its site keys the window).
    device: SharedDeviceInfo,
    count: u64,
    min: f64,
    max: f64,
    sum: ExactSum,
    breaches: u64,
}

/// Aggregates enriched readings into closed windows.
pub trait AggregateWindows<'scope> {
    /// Folds each on-time reading into its (device, metric, window, site) aggregate and emits
    /// the aggregate, at its window's [`close_time`](WindowConfig::close_time), once the input
    /// frontier reaches that time. State is dropped on emission: memory is bounded by the open
    /// windows, never by the readings.
    ///
    /// The input must be partitioned by device (as [`Enrich`](crate::dataflow::enrich::Enrich)
    /// leaves it), and carry only on-time readings.
    fn aggregate_windows(self, config: WindowConfig) -> EventStream<'scope, WindowAggregate>;
}

impl<'scope> AggregateWindows<'scope> for EventStream<'scope, EnrichedMessage> {
    fn aggregate_windows(self, config: WindowConfig) -> EventStream<'scope, WindowAggregate> {
        self.unary_frontier(Pipeline, "AggregateWindows", move |_cap, _info| {
            let mut open: FxHashMap<DeviceId, Vec<OpenWindow>> = FxHashMap::default();
            // One capability per pending close time.
            let mut closes: BTreeMap<TimeMs, Capability<TimeMs>> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for message in data.drain(..) {
                        let windows = match open.get_mut(&message.device_id) {
                            Some(w) => w,
                            None => open.entry(message.device_id.clone()).or_default(),
                        };
                        for &r in &message.readings {
                            let start_ms = config.start_of(r.ts_ms);
                            let breach = message
                                .device
                                .threshold(r.metric)
                                .is_some_and(|t| t.is_breached_by(r.value));
                            let window = match windows.iter_mut().position(|w| {
                                w.metric == r.metric
                                    && w.start_ms == start_ms
                                    && (Arc::ptr_eq(&w.device, &message.device)
                                        || w.device.site == message.device.site)
                            }) {
                                Some(i) => &mut windows[i],
                                None => {
                                    let close = config.close_time(start_ms);
                                    closes
                                        .entry(close)
                                        .or_insert_with(|| cap.delayed(&close, 0));
                                    windows.push(OpenWindow {
                                        metric: r.metric,
                                        start_ms,
                                        device: Arc::clone(&message.device),
                                        count: 0,
                                        min: f64::INFINITY,
                                        max: f64::NEG_INFINITY,
                                        sum: ExactSum::default(),
                                        breaches: 0,
                                    });
                                    windows.last_mut().expect("just pushed")
                                }
                            };
                            window.count += 1;
                            window.min = window.min.min(r.value);
                            window.max = window.max.max(r.value);
                            window.sum.add(r.value);
                            window.breaches += breach as u64;
                        }
                    }
                });

                // Close every window whose close time the frontier has reached.
                let closable: Vec<TimeMs> = closes
                    .keys()
                    .copied()
                    .take_while(|t| !frontier.less_than(t))
                    .collect();
                if closable.is_empty() {
                    return;
                }
                let last_close = *closable.last().expect("not empty");
                let mut closed: BTreeMap<TimeMs, Vec<WindowAggregate>> = BTreeMap::new();
                open.retain(|device_id, windows| {
                    windows.retain(|w| {
                        let close = config.close_time(w.start_ms);
                        if close > last_close {
                            return true;
                        }
                        closed.entry(close).or_default().push(WindowAggregate {
                            device_id: device_id.clone(),
                            metric: w.metric,
                            window_start_ms: w.start_ms,
                            site: w.device.site.clone(),
                            count: w.count,
                            min: w.min,
                            max: w.max,
                            sum: w.sum,
                            threshold_breaches: w.breaches,
                        });
                        false
                    });
                    !windows.is_empty()
                });
                for close in closable {
                    let cap = closes.remove(&close).expect("listed above");
                    if let Some(mut aggregates) = closed.remove(&close) {
                        output.session(&cap).give_container(&mut aggregates);
                    }
                }
            }
        })
    }
}
