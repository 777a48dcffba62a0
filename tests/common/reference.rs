//! SPEC.md computed the plain way: one pass over the file in arrival order, no dataflow.
//!
//! Decoding is shared with iotpipe (it has its own unit tests); everything after it, the
//! registry's as-of lookup, watermarks, clock trust (the hold at the start, the fleet time, the
//! skew guard and the lead), lateness, windows and rollups, is written again here as simply as
//! possible.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use iotpipe::dataflow::PipelineConfig;
use iotpipe::dataflow::event_time::HOLD_MAX_MESSAGES;
use iotpipe::dataflow::model::{
    DeadLetterReason, DeviceId, ExactSum, LateReading, MetricId, SiteRollup, WindowAggregate,
};
use iotpipe::dataflow::registry::RegistryChange;
use iotpipe::dataflow::schema::Decoded;
use iotpipe::dataflow::schema::SchemaSet;
use iotpipe::io::sinks::files::jsonl;

/// (device, metric, window start, site)
type WindowKey = (DeviceId, MetricId, u64, String);
/// (count, min, max, sum, breaches)
/// A window's running aggregate, as the batch computation keeps it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowState {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: ExactSum,
    /// The squares of values rounded to 10^-6, as the dataflow keeps them.
    pub sum_squares_micro2: i128,
    pub first_ts_ms: u64,
    pub last_ts_ms: u64,
    pub breaches: u64,
}

/// A window with no reading yet.
pub const EMPTY_WINDOW: WindowState = WindowState {
    count: 0,
    min: f64::INFINITY,
    max: f64::NEG_INFINITY,
    sum: ExactSum(0),
    sum_squares_micro2: 0,
    first_ts_ms: u64::MAX,
    last_ts_ms: 0,
    breaches: 0,
};

/// Folds a reading (`value` at `ts_ms`) into a window's state (`breach`: outside its
/// thresholds).
pub fn fold_reading(w: &mut WindowState, ts_ms: u64, value: f64, breach: bool) {
    w.count += 1;
    w.min = w.min.min(value);
    w.max = w.max.max(value);
    w.sum.add(value);
    let micro = (value * 1e6).round() as i64 as i128;
    w.sum_squares_micro2 += micro * micro;
    w.first_ts_ms = w.first_ts_ms.min(ts_ms);
    w.last_ts_ms = w.last_ts_ms.max(ts_ms);
    w.breaches += breach as u64;
}

impl WindowState {
    /// The aggregate of this window.
    pub fn aggregate(
        &self,
        device_id: DeviceId,
        metric: MetricId,
        start_ms: u64,
        site: String,
    ) -> WindowAggregate {
        WindowAggregate {
            device_id,
            metric,
            window_start_ms: start_ms,
            site,
            count: self.count,
            min: self.min,
            max: self.max,
            sum: self.sum,
            sum_squares: self.sum_squares_micro2 as f64 / 1e12,
            first_ts_ms: self.first_ts_ms,
            last_ts_ms: self.last_ts_ms,
            threshold_breaches: self.breaches,
        }
    }

    /// What an aggregate says of its window, comparable with a batch computation's state.
    pub fn comparable(a: &WindowAggregate) -> (u64, f64, f64, ExactSum, f64, u64, u64, u64) {
        (
            a.count,
            a.min,
            a.max,
            a.sum,
            a.sum_squares,
            a.first_ts_ms,
            a.last_ts_ms,
            a.threshold_breaches,
        )
    }

    /// This state as [`Self::comparable`] reads an aggregate.
    pub fn as_comparable(&self) -> (u64, f64, f64, ExactSum, f64, u64, u64, u64) {
        Self::comparable(&self.aggregate(DeviceId::from(""), MetricId(0), 0, String::new()))
    }
}

/// The reference outputs, as sorted lines and dead-letter pairs.
pub struct Expected {
    pub aggregates: Vec<String>,
    pub site_rollups: Vec<String>,
    pub late: Vec<String>,
    pub dead_letters: Vec<(String, String)>,
    pub messages: u64,
    pub out_of_range: u64,
}

fn registered<'a>(
    changes: &'a [RegistryChange],
    device: &str,
    ts_ms: u64,
) -> Option<&'a RegistryChange> {
    let mut current: Option<&RegistryChange> = None;
    for c in changes {
        if c.device_id == device
            && c.effective_ms <= ts_ms
            && current.is_none_or(|p| p.effective_ms <= c.effective_ms)
        {
            current = Some(c);
        }
    }
    current.filter(|c| c.info.is_some())
}

/// Computes SPEC.md over `events`.
pub fn compute(
    events: &Path,
    changes: &[RegistryChange],
    schemas: &SchemaSet,
    config: PipelineConfig,
) -> Expected {
    compute_partitions(&[events.to_owned()], changes, schemas, config)
}

/// Computes SPEC.md over partitions, each in arrival order with its own watermark.
pub fn compute_partitions(
    partitions: &[std::path::PathBuf],
    changes: &[RegistryChange],
    schemas: &SchemaSet,
    config: PipelineConfig,
) -> Expected {
    let catalog = schemas.catalog();
    let window = config.window.length_ms;
    let mut dead = Vec::new();
    let mut late = Vec::new();
    let mut out_of_range = 0;
    let mut messages = 0;
    // (device, metric, start, site) -> (count, min, max, sum, breaches)
    let mut windows: BTreeMap<WindowKey, WindowState> = BTreeMap::new();
    let lateness = config.event_time.allowed_lateness_ms;
    let skew = config.event_time.max_clock_skew_ms;
    let quorum = config.event_time.clock_quorum as usize;
    let lead = config.event_time.max_lead_ms;
    for events in partitions {
        let text = std::fs::read(events).unwrap();
        let mut max_valid: Option<u64> = None;
        // Each device's latest valid event time in this partition.
        let mut latest: HashMap<DeviceId, u64> = HashMap::new();
        // The fleet time: the quorum-th latest device time (the least, with fewer devices).
        let fleet = |latest: &HashMap<DeviceId, u64>| -> Option<u64> {
            let mut times: Vec<u64> = latest.values().copied().collect();
            times.sort_unstable_by(|a, b| b.cmp(a));
            times.get(quorum.min(times.len()).checked_sub(1)?).copied()
        };
        // Registered messages held at the start, until the quorum has spoken.
        let mut held: Vec<(Decoded, String)> = Vec::new();
        let mut settled = false;
        // Admits a registered device's message, or hands it back as too far ahead.
        let mut admit = |decoded: Decoded,
                         raw_text: String,
                         hold_reference: Option<u64>,
                         max_valid: &mut Option<u64>,
                         latest: &mut HashMap<DeviceId, u64>|
         -> Result<(), String> {
            let m = decoded.message;
            let fleet_ms = fleet(latest);
            let ahead = |reference: Option<u64>| reference.is_some_and(|r| m.ts_ms > r + skew);
            if ahead(hold_reference) || ahead(fleet_ms) {
                return Err(raw_text);
            }
            out_of_range += decoded.out_of_range as u64;
            let entry = registered(changes, &m.device_id, m.ts_ms).unwrap();
            let info = entry.info.as_ref().unwrap();
            let ceiling = fleet_ms.map_or(u64::MAX, |f| f + lead);
            for r in &m.readings {
                let watermark =
                    max_valid.map_or(0, |max| max.min(ceiling).saturating_sub(lateness));
                let start = r.ts_ms / window * window;
                if start + window - 1 <= watermark {
                    late.push(LateReading {
                        device_id: m.device_id.clone(),
                        metric: r.metric,
                        ts_ms: r.ts_ms,
                        value: r.value,
                    });
                } else {
                    let breach = info
                        .threshold(r.metric)
                        .is_some_and(|t| r.value < t.min || r.value > t.max);
                    let key = (m.device_id.clone(), r.metric, start, info.site.clone());
                    fold_reading(
                        windows.entry(key).or_insert(EMPTY_WINDOW),
                        r.ts_ms,
                        r.value,
                        breach,
                    );
                }
                *max_valid = Some(max_valid.map_or(r.ts_ms, |max| max.max(r.ts_ms)));
            }
            if let Some(t) = m.readings.iter().map(|r| r.ts_ms).max() {
                let l = latest.entry(m.device_id.clone()).or_insert(t);
                *l = (*l).max(t);
            }
            Ok(())
        };
        let future = |raw_text| {
            (
                DeadLetterReason::FutureTimestamp.code().to_owned(),
                raw_text,
            )
        };
        let lines: Vec<&[u8]> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        for (i, raw) in lines.iter().enumerate() {
            messages += 1;
            let raw_text = String::from_utf8_lossy(raw).into_owned();
            let decoded = match schemas.decode(raw) {
                Ok(d) => d,
                Err(d) => {
                    dead.push((d.reason.code().to_owned(), raw_text));
                    continue;
                }
            };
            if registered(changes, &decoded.message.device_id, decoded.message.ts_ms).is_none() {
                dead.push((DeadLetterReason::UnknownDevice.code().to_owned(), raw_text));
                continue;
            }
            if settled {
                if let Err(raw_text) = admit(decoded, raw_text, None, &mut max_valid, &mut latest) {
                    dead.push(future(raw_text));
                }
                continue;
            }
            held.push((decoded, raw_text));
            let devices: BTreeSet<&str> = held
                .iter()
                .map(|(d, _)| d.message.device_id.as_str())
                .collect();
            let last = i + 1 == lines.len();
            if devices.len() >= quorum || held.len() >= HOLD_MAX_MESSAGES || last {
                settled = true;
                // Each held device's lower median stamp; of those the quorum-th latest.
                let mut stamps: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
                for (d, _) in &held {
                    stamps
                        .entry(d.message.device_id.as_str())
                        .or_default()
                        .push(d.message.ts_ms);
                }
                let mut medians: Vec<u64> = stamps
                    .into_values()
                    .map(|mut s| {
                        s.sort_unstable();
                        s[(s.len() - 1) / 2]
                    })
                    .collect();
                medians.sort_unstable_by(|a, b| b.cmp(a));
                let reference = medians[quorum.min(medians.len()) - 1];
                for (decoded, raw_text) in std::mem::take(&mut held) {
                    let admitted = admit(
                        decoded,
                        raw_text,
                        Some(reference),
                        &mut max_valid,
                        &mut latest,
                    );
                    if let Err(raw_text) = admitted {
                        dead.push(future(raw_text));
                    }
                }
            }
        }
    }
    let mut rollups: BTreeMap<(String, MetricId, u64), (u64, ExactSum)> = BTreeMap::new();
    let mut aggregates = Vec::new();
    for ((device_id, metric, start, site), w) in windows {
        let r = rollups.entry((site.clone(), metric, start)).or_default();
        r.0 += w.count;
        r.1.merge(w.sum);
        aggregates.push(jsonl::aggregate_line(
            &w.aggregate(device_id, metric, start, site),
            catalog,
        ));
    }
    let mut site_rollups: Vec<String> = rollups
        .into_iter()
        .map(|((site, metric, start), (count, sum))| {
            jsonl::rollup_line(
                &SiteRollup {
                    site,
                    metric,
                    window_start_ms: start,
                    count,
                    sum,
                },
                catalog,
            )
        })
        .collect();
    let mut late: Vec<String> = late.iter().map(|l| jsonl::late_line(l, catalog)).collect();
    aggregates.sort();
    site_rollups.sort();
    late.sort();
    dead.sort();
    Expected {
        aggregates,
        site_rollups,
        late,
        dead_letters: dead,
        messages,
        out_of_range,
    }
}
