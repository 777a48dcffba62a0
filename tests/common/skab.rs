//! The SKAB protocol (`../shared/datasets/skab/README.md`) run through iotpipe: each labelled
//! experiment replayed as one `pump` device with the shipped defaults, its device-level state
//! turned into a 0/1 prediction per row, rows 401 onward scored by binary F1, false alarm rate
//! and missing alarm rate. Evaluation code: it stays out of the production library; the data
//! (GPL-3.0) is read where it lies, never copied.
//!
//! A row is predicted anomalous when the device's last device-level decision before it (the
//! `multivariate` score of the bucket that ended before the row, threshold as shipped) found the
//! device anomalous: the prediction uses nothing after the row.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use iotpipe::commands::replay::{ReplayConfig, run_replay};
use iotpipe::dataflow::PipelineConfig;
use serde::Deserialize;

/// Where the experiments are: `IOTPIPE_SKAB_DIR`, else `../shared/datasets/skab/data` beside
/// the project; none when neither exists.
pub fn skab_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("IOTPIPE_SKAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/skab/data")
        });
    dir.is_dir().then_some(dir)
}

/// Event time of every experiment's first row: the experiments run side by side.
const START_MS: u64 = 1_704_067_200_000;
/// Rows the protocol leaves for learning.
const TRAIN_ROWS: usize = 400;
/// The sensors, in file order, and the v1 field each is sent as.
const FIELDS: [&str; 8] = ["a1", "a2", "i", "pres", "t", "tf", "v", "flow"];

/// One labelled experiment.
pub struct Experiment {
    /// `valve1/3` and so on.
    pub name: String,
    /// The device it is replayed as.
    pub device_id: String,
    /// Event time, the eight sensor values, and the label.
    pub rows: Vec<(u64, [f64; 8], bool)>,
}

/// The labelled experiments under `dir` (the anomaly-free run has no labels to score).
pub fn read_experiments(dir: &Path) -> Result<Vec<Experiment>, String> {
    let mut experiments = Vec::new();
    for group in ["other", "valve1", "valve2"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(group))
            .map_err(|e| format!("{}: {e}", dir.join(group).display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .collect();
        files.sort();
        for path in files {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            experiments.push(read_experiment(&path, &format!("{group}/{stem}"))?);
        }
    }
    Ok(experiments)
}

fn read_experiment(path: &Path, name: &str) -> Result<Experiment, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    let mut first_s = None;
    for (n, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split(';').collect();
        let bad = || format!("{}:{}: not a SKAB row", path.display(), n + 1);
        if fields.len() < 10 {
            return Err(bad());
        }
        let seconds = seconds_of(fields[0]).ok_or_else(bad)?;
        let first = *first_s.get_or_insert(seconds);
        let mut values = [0.0; 8];
        for (value, field) in values.iter_mut().zip(&fields[1..9]) {
            *value = field.parse().map_err(|_| bad())?;
        }
        let label = fields[9].parse::<f64>().map_err(|_| bad())? > 0.5;
        rows.push((START_MS + (seconds - first) * 1000, values, label));
    }
    Ok(Experiment {
        name: name.to_owned(),
        device_id: format!("skab-{}", name.replace('/', "-")),
        rows,
    })
}

/// Seconds since an arbitrary origin of `YYYY-MM-DD hh:mm:ss` (days counted as in the
/// proleptic Gregorian calendar, enough to order and difference times).
fn seconds_of(datetime: &str) -> Option<u64> {
    let (date, time) = datetime.split_once(' ')?;
    let d: Vec<u64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from civil (Howard Hinnant's algorithm), shifted to stay unsigned.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe;
    Some(((days * 24 + t[0]) * 60 + t[1]) * 60 + t[2])
}

/// Writes the experiments as one replay input (v1 messages in event-time order) and their
/// registry (one `pump` per experiment) into `dir`.
pub fn write_inputs(experiments: &[Experiment], dir: &Path) -> (PathBuf, PathBuf) {
    let events = dir.join("skab-events.jsonl");
    let registry = dir.join("skab-registry.jsonl");
    let mut lines: Vec<(u64, usize, String)> = Vec::new();
    let mut devices = String::new();
    for (index, e) in experiments.iter().enumerate() {
        devices.push_str(&format!(
            "{{\"device_id\":\"{}\",\"device_type\":\"pump\",\"firmware\":\"1.0.0\",\
             \"schema\":\"v1\",\"org\":\"skab\",\"site\":\"testbed\",\"building\":\"B1\",\
             \"model\":\"SKAB\",\"thresholds\":{{}}}}\n",
            e.device_id
        ));
        for (ts_ms, values, _) in &e.rows {
            let mut line = format!("{{\"device_id\":\"{}\",\"ts\":{ts_ms}", e.device_id);
            for (field, value) in FIELDS.iter().zip(values) {
                line.push_str(&format!(",\"{field}\":{value}"));
            }
            line.push('}');
            lines.push((*ts_ms, index, line));
        }
    }
    lines.sort();
    let mut out = std::io::BufWriter::new(std::fs::File::create(&events).unwrap());
    for (_, _, line) in lines {
        writeln!(out, "{line}").unwrap();
    }
    out.flush().unwrap();
    std::fs::write(&registry, devices).unwrap();
    (events, registry)
}

/// The benchmark's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    /// Binary F1 of the anomalous class.
    pub f1: f64,
    /// False alarm rate, FP / (FP + TN).
    pub far: f64,
    /// Missing alarm rate, FN / (FN + TP).
    pub mar: f64,
    /// Rows scored.
    pub rows: usize,
    /// Per experiment: its name, and its false and missed alarms (rows).
    pub by_experiment: Vec<(String, usize, usize)>,
    /// Experiments in which the default `machine-decoupled` alert opened during the labelled
    /// anomaly.
    pub alerted: usize,
    /// Those alerts opened in the test part outside the anomaly (before it, or after it and the
    /// alert clear time).
    pub false_alerts: usize,
}

#[derive(Deserialize)]
struct AlertLine {
    event: String,
    device_id: Option<String>,
    rule: String,
    ts_ms: u64,
}

#[derive(Deserialize)]
struct ScoreLine {
    device_id: String,
    metric: Option<String>,
    ts_ms: u64,
    kind: String,
}

/// Replays the experiments through `run_replay` with `pipeline` (every score emitted) into
/// `dir`, and scores the device-level state against the labels.
pub fn run_protocol(
    experiments: &[Experiment],
    dir: &Path,
    mut pipeline: PipelineConfig,
) -> Result<Figures, String> {
    let (events, registry) = write_inputs(experiments, dir);
    pipeline.anomaly.emit_all_scores = true;
    let out = dir.join("out");
    let config = ReplayConfig {
        events,
        registry,
        alert_controls: None,
        out: out.clone(),
        schemas: None,
        pipeline,
        chunk_bytes: iotpipe::commands::replay::default_chunk_bytes(),
        notify: None,
        influx: None,
        cluster: Default::default(),
    };
    run_replay(config, Default::default()).map_err(|e| e.to_string())?;
    let scores = std::fs::read_to_string(out.join("scores.jsonl")).map_err(|e| e.to_string())?;
    // Each device's decisions, in event time: anomalous or not.
    let mut decisions: BTreeMap<String, Vec<(u64, bool)>> = BTreeMap::new();
    for line in scores.lines() {
        let s: ScoreLine = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
        if s.metric.is_none()
            && matches!(s.kind.as_str(), "none" | "multivariate" | "regime_change")
        {
            decisions
                .entry(s.device_id)
                .or_default()
                .push((s.ts_ms, s.kind == "multivariate"));
        }
    }
    let (mut tp, mut fp, mut tn, mut fn_) = (0usize, 0usize, 0usize, 0usize);
    let mut by_experiment = Vec::new();
    for e in experiments {
        let (fp_before, fn_before) = (fp, fn_);
        let mut device = decisions.remove(&e.device_id).unwrap_or_default();
        device.sort();
        let mut next = 0;
        let mut state = false;
        for (ts_ms, _, label) in &e.rows[TRAIN_ROWS.min(e.rows.len())..] {
            while next < device.len() && device[next].0 < *ts_ms {
                state = device[next].1;
                next += 1;
            }
            match (state, *label) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, false) => tn += 1,
                (false, true) => fn_ += 1,
            }
        }
        by_experiment.push((e.name.clone(), fp - fp_before, fn_ - fn_before));
    }
    let (alerted, false_alerts) = alerts_against_labels(experiments, &out)?;
    let ratio = |a: usize, b: usize| a as f64 / (a + b).max(1) as f64;
    Ok(Figures {
        f1: 2.0 * tp as f64 / (2 * tp + fp + fn_).max(1) as f64,
        far: ratio(fp, tn),
        mar: ratio(fn_, tp),
        rows: tp + fp + tn + fn_,
        by_experiment,
        alerted,
        false_alerts,
    })
}

/// How many experiments had a `machine-decoupled` alert open during their anomaly, and how
/// many such alerts opened in the test part away from it (the 3-minute clear time after the
/// anomaly still counts as its tail).
fn alerts_against_labels(experiments: &[Experiment], out: &Path) -> Result<(usize, usize), String> {
    let text = std::fs::read_to_string(out.join("alerts.jsonl")).map_err(|e| e.to_string())?;
    let mut opened: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in text.lines() {
        let a: AlertLine = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
        if a.event == "opened" && a.rule == "machine-decoupled" {
            opened
                .entry(a.device_id.unwrap_or_default())
                .or_default()
                .push(a.ts_ms);
        }
    }
    let (mut alerted, mut false_alerts) = (0, 0);
    for e in experiments {
        let labelled: Vec<u64> = e.rows.iter().filter(|r| r.2).map(|r| r.0).collect();
        let (Some(first), Some(last)) = (labelled.first(), labelled.last()) else {
            continue;
        };
        let test_from = e.rows.get(TRAIN_ROWS).map_or(u64::MAX, |r| r.0);
        let alerts = opened
            .get(&e.device_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if alerts.iter().any(|t| (first..=last).contains(&t)) {
            alerted += 1;
        }
        false_alerts += alerts
            .iter()
            .filter(|t| **t >= test_from && (**t < *first || **t > last + 180_000))
            .count();
    }
    Ok((alerted, false_alerts))
}
