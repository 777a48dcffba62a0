//! SPEC.md computed the plain way: one pass over the file in arrival order, no dataflow.
//!
//! Decoding is shared with iotpipe (it has its own unit tests); everything after it, the
//! registry's as-of lookup, watermarks, the skew guard, lateness, windows and rollups, is
//! written again here as simply as possible.

use std::collections::BTreeMap;
use std::path::Path;

use iotpipe::dataflow::PipelineConfig;
use iotpipe::dataflow::model::{
    DeadLetterReason, DeviceId, ExactSum, LateReading, MetricId, SiteRollup, WindowAggregate,
};
use iotpipe::dataflow::registry::RegistryChange;
use iotpipe::dataflow::schema::SchemaSet;
use iotpipe::io::jsonl;

/// (device, metric, window start, site)
type WindowKey = (DeviceId, MetricId, u64, String);
/// (count, min, max, sum, breaches)
type WindowState = (u64, f64, f64, ExactSum, u64);

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
    for events in partitions {
        let text = std::fs::read(events).unwrap();
        let mut max_valid: Option<u64> = None;
        for raw in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            messages += 1;
            let raw_text = String::from_utf8_lossy(raw).into_owned();
            let decoded = match schemas.decode(raw) {
                Ok(d) => d,
                Err(d) => {
                    dead.push((d.reason.code().to_owned(), raw_text));
                    continue;
                }
            };
            let m = decoded.message;
            let Some(entry) = registered(changes, &m.device_id, m.ts_ms) else {
                dead.push((DeadLetterReason::UnknownDevice.code().to_owned(), raw_text));
                continue;
            };
            if max_valid.is_some_and(|max| m.ts_ms > max + config.event_time.max_clock_skew_ms) {
                dead.push((
                    DeadLetterReason::FutureTimestamp.code().to_owned(),
                    raw_text,
                ));
                continue;
            }
            out_of_range += decoded.out_of_range as u64;
            let info = entry.info.as_ref().unwrap();
            for r in m.readings {
                let watermark = max_valid.map_or(0, |max| {
                    max.saturating_sub(config.event_time.allowed_lateness_ms)
                });
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
                    let w = windows
                        .entry((m.device_id.clone(), r.metric, start, info.site.clone()))
                        .or_insert((0, f64::INFINITY, f64::NEG_INFINITY, ExactSum::default(), 0));
                    w.0 += 1;
                    w.1 = w.1.min(r.value);
                    w.2 = w.2.max(r.value);
                    w.3.add(r.value);
                    w.4 += breach as u64;
                }
                max_valid = Some(max_valid.map_or(r.ts_ms, |max| max.max(r.ts_ms)));
            }
        }
    }
    let mut rollups: BTreeMap<(String, MetricId, u64), (u64, ExactSum)> = BTreeMap::new();
    let mut aggregates = Vec::new();
    for ((device_id, metric, start, site), (count, min, max, sum, breaches)) in windows {
        let r = rollups.entry((site.clone(), metric, start)).or_default();
        r.0 += count;
        r.1.merge(sum);
        aggregates.push(jsonl::aggregate_line(
            &WindowAggregate {
                device_id,
                metric,
                window_start_ms: start,
                site,
                count,
                min,
                max,
                sum,
                threshold_breaches: breaches,
            },
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
