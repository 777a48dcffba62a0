//! Scoring alerts against injected faults: the detection table of `docs/benchmarks.md`
//! (`examples/detection.rs`) and the floor test (`tests/detection.rs`). Evaluation code: it stays
//! out of the production library.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// A fault injected into the data (a workload manifest entry or the simulated fleet's).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct InjectedFault {
    /// The device.
    pub device_id: String,
    /// `spike`, `level_shift`, `stuck` or `silence` (the manifest's `silent` is read as that).
    pub kind: String,
    /// The metric (any metric for silence).
    pub metric: String,
    /// Event time the fault starts.
    pub start_ms: u64,
    /// Event time it ends.
    pub end_ms: u64,
}

/// An alert as the evaluation sees it: an `opened` (or `escalated`) line of `alerts.jsonl`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct RaisedAlert {
    /// The event.
    pub event: String,
    /// The device (none for site alerts).
    pub device_id: Option<String>,
    /// The metric, where one applies.
    pub metric: Option<String>,
    /// The cause.
    pub cause: String,
    /// When.
    pub ts_ms: u64,
}

/// Detection of one fault kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KindDetection {
    /// Faults injected.
    pub injected: usize,
    /// Faults alerted within the allowed delay.
    pub detected: usize,
    /// Delays from fault start to its first alert, ms (detected faults only).
    pub delays_ms: Vec<u64>,
}

impl KindDetection {
    /// Share detected.
    pub fn share(&self) -> f64 {
        self.detected as f64 / self.injected.max(1) as f64
    }

    /// Median delay, ms.
    pub fn median_delay_ms(&self) -> Option<u64> {
        let mut d = self.delays_ms.clone();
        d.sort_unstable();
        d.get(d.len() / 2).copied()
    }
}

/// The detection report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DetectionReport {
    /// Per fault kind.
    pub by_kind: BTreeMap<String, KindDetection>,
    /// Alerts opened on healthy devices, or on faulty ones away from their fault.
    pub false_alerts: usize,
    /// Device-hours of healthy operation observed.
    pub healthy_device_hours: f64,
}

impl DetectionReport {
    /// Faults detected over all kinds, as a share.
    pub fn share(&self) -> f64 {
        let injected: usize = self.by_kind.values().map(|k| k.injected).sum();
        let detected: usize = self.by_kind.values().map(|k| k.detected).sum();
        detected as f64 / injected.max(1) as f64
    }

    /// False alerts per 1,000 healthy device-hours.
    pub fn false_per_1000_device_hours(&self) -> f64 {
        self.false_alerts as f64 * 1000.0 / self.healthy_device_hours.max(f64::MIN_POSITIVE)
    }

    /// The table, Markdown.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| fault | injected | alerted in time | share | median delay |\n|---|---|---|---|---|\n",
        );
        for (kind, k) in &self.by_kind {
            s += &format!(
                "| {kind} | {} | {} | {:.0}% | {} |\n",
                k.injected,
                k.detected,
                k.share() * 100.0,
                k.median_delay_ms()
                    .map_or("-".into(), |d| format!("{:.1} s", d as f64 / 1000.0))
            );
        }
        s += &format!(
            "\nall faults: {:.1}% alerted in time; false alerts: {} over {:.0} healthy device-hours = {:.2} per 1,000 device-hours\n",
            self.share() * 100.0,
            self.false_alerts,
            self.healthy_device_hours,
            self.false_per_1000_device_hours()
        );
        s
    }
}

/// Scores alerts against faults. A fault is detected when an alert of its device (on its metric,
/// or a silence alert for silence) opens or escalates between its start and `max_delay_ms`
/// after. An alert is false when no fault of its device explains it: none whose span, widened
/// by `grace_ms` after its end, holds the alert's time. `devices` and `span_ms` give the
/// device-hours observed.
pub fn evaluate(
    faults: &[InjectedFault],
    alerts: &[RaisedAlert],
    devices: usize,
    span_ms: u64,
    max_delay_ms: u64,
    grace_ms: u64,
) -> DetectionReport {
    let mut report = DetectionReport::default();
    let matches = |f: &InjectedFault, a: &RaisedAlert| {
        a.device_id.as_deref() == Some(f.device_id.as_str())
            && if f.kind == "silence" {
                a.cause == "silence"
            } else {
                a.metric.as_deref() == Some(f.metric.as_str())
            }
    };
    let raised: Vec<&RaisedAlert> = alerts
        .iter()
        .filter(|a| a.event == "opened" || a.event == "escalated")
        .collect();
    for f in faults {
        let k = report.by_kind.entry(f.kind.clone()).or_default();
        k.injected += 1;
        let first = raised
            .iter()
            .filter(|a| matches(f, a) && a.ts_ms >= f.start_ms)
            .map(|a| a.ts_ms - f.start_ms)
            .min();
        if let Some(delay) = first.filter(|d| *d <= max_delay_ms) {
            k.detected += 1;
            k.delays_ms.push(delay);
        }
    }
    report.false_alerts = raised
        .iter()
        .filter(|a| a.event == "opened" && a.device_id.is_some())
        .filter(|a| {
            !faults.iter().any(|f| {
                a.device_id.as_deref() == Some(f.device_id.as_str())
                    && (f.start_ms..f.end_ms + grace_ms).contains(&a.ts_ms)
            })
        })
        .count();
    let faulty_ms: u64 = faults.iter().map(|f| f.end_ms - f.start_ms).sum();
    report.healthy_device_hours =
        (devices as f64 * span_ms as f64 - faulty_ms as f64) / 3_600_000.0;
    report
}

/// Reads a workload manifest's faults (`anomalies`), its device count and span.
pub fn read_manifest(path: &Path) -> Result<(Vec<InjectedFault>, usize, u64), String> {
    #[derive(Deserialize)]
    struct Args {
        devices: usize,
    }
    #[derive(Deserialize)]
    struct Manifest {
        args: Args,
        base_ms: u64,
        end_ms: u64,
        anomalies: Vec<InjectedFault>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut m: Manifest =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for f in &mut m.anomalies {
        if f.kind == "silent" {
            f.kind = "silence".into();
        }
    }
    Ok((m.anomalies, m.args.devices, m.end_ms - m.base_ms))
}

/// Reads `alerts.jsonl`.
pub fn read_alerts(path: &Path) -> Result<Vec<RaisedAlert>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{}: {e}", path.display())))
        .collect()
}
