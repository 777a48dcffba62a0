//! Anomaly scoring: every on-time reading gets a score in [0, 1] and a kind; stuck values and
//! level shifts are found when windows close, and silence from fleet-wide event-time progress.
//!
//! Where it runs. Scoring needs the same per-device state lookup as windowing, and every extra
//! consumer of the enriched stream costs a clone of every message, so the per-reading half
//! lives in the window operator ([`AggregateWindows`](crate::dataflow::AggregateWindows)),
//! which calls a [`DeviceScorer`] per device. Silence needs fleet-wide progress and runs
//! downstream on one small record per device and window ([`DetectSilence`]).
//!
//! The method and why are in [`track`] (values) and [`silence`] (gaps).

pub mod device;
pub mod silence;
pub mod track;

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

pub use device::{DeviceFinding, DeviceModel, MultivariateParams};
pub use silence::{DetectSilence, DeviceActivity, FleetProgress};
pub use track::{AnomalyKind, Finding, Judge, ScorerParams, Slots, Track, WindowEvidence};

use crate::dataflow::model::{DeviceId, ExactSum, MetricId, SharedDeviceInfo, TimeMs};

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

    /// The parameters as a table indexed by a small number, so per-device state holds an index
    /// instead of a copy or a string; `window_ms` is the window length.
    pub fn table(&self, window_ms: u64) -> ParamsTable {
        let mut params = vec![self.defaults.clone()];
        let mut by_type = FxHashMap::default();
        for (device_type, p) in &self.by_device_type {
            by_type.insert(device_type.clone(), params.len());
            params.push(p.clone());
        }
        let report_distances = params.iter().map(|p| p.report_distance()).collect();
        let slots = params
            .iter()
            .map(|p| Slots::new(window_ms, p.bucket_ms))
            .collect();
        ParamsTable {
            params,
            report_distances,
            slots,
            by_type,
            emit_all_scores: self.emit_all_scores,
            window_ms,
        }
    }
}

/// [`AnomalyConfig`]'s parameters, indexed.
#[derive(Clone, Debug)]
pub struct ParamsTable {
    params: Vec<ScorerParams>,
    report_distances: Vec<f64>,
    slots: Vec<Slots>,
    by_type: FxHashMap<String, usize>,
    emit_all_scores: bool,
    window_ms: u64,
}

impl ParamsTable {
    /// The index of a device type's parameters.
    pub fn index_of(&self, device_type: &str) -> usize {
        self.by_type.get(device_type).copied().unwrap_or(0)
    }

    /// The parameters at an index from [`Self::index_of`].
    pub fn get(&self, index: usize) -> &ScorerParams {
        &self.params[index]
    }
}

/// One reading's score, or a stuck, level-shift or silence finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyScore {
    /// The device.
    pub device_id: DeviceId,
    /// Its registry entry (alert rules match on its type and site).
    pub device: SharedDeviceInfo,
    /// The metric (none for silence, which is the device's).
    pub metric: Option<MetricId>,
    /// Event time of the reading; for stuck, the run's last reading; for silence, the moment
    /// the timeout passed.
    pub ts_ms: TimeMs,
    /// The reading's value (the stuck value, the new level; none for silence).
    pub value: Option<f64>,
    /// Score in [0, 1].
    pub score: f64,
    /// What the score points at.
    pub kind: AnomalyKind,
}

impl AnomalyScore {
    /// A finding made when a window closed (stuck value, bucket-to-bucket level shift or spike,
    /// regime change), with its calibrated score.
    pub fn from_finding(
        device_id: DeviceId,
        device: SharedDeviceInfo,
        metric: MetricId,
        finding: Finding,
    ) -> Self {
        Self {
            device_id,
            device,
            metric: Some(metric),
            ts_ms: finding.ts_ms,
            value: Some(finding.value),
            score: finding.score,
            kind: finding.kind,
        }
    }
}

/// One device's scoring state: a [`Track`] per metric, and the device-level model.
#[derive(Clone, Debug)]
pub struct DeviceScorer {
    params: usize,
    tracks: Vec<(MetricId, Track)>,
    joint: DeviceModel,
}

impl DeviceScorer {
    /// A scorer for a device of `device_type`.
    pub fn new(device_type: &str, table: &ParamsTable) -> Self {
        Self {
            params: table.index_of(device_type),
            tracks: Vec::new(),
            joint: DeviceModel::default(),
        }
    }

    /// Follows a registry change of the device's type.
    pub fn set_type(&mut self, device_type: &str, table: &ParamsTable) {
        self.params = table.index_of(device_type);
    }

    /// The distance at which the device's scores are reported (see [`Judge::distance`]).
    pub fn report_distance(&self, table: &ParamsTable) -> f64 {
        table.report_distances[self.params]
    }

    /// Where readings of the device fall in a window.
    pub fn slots<'t>(&self, table: &'t ParamsTable) -> &'t Slots {
        &table.slots[self.params]
    }

    /// The device's parameters.
    pub fn params<'t>(&self, table: &'t ParamsTable) -> &'t ScorerParams {
        table.get(self.params)
    }

    /// The judge for readings of `metric` in the window starting at `window_start_ms`; the
    /// caller guarantees every window up to two before it has closed (see [`Track`]).
    pub fn judge(
        &self,
        metric: MetricId,
        window_start_ms: TimeMs,
        window_ms: TimeMs,
        table: &ParamsTable,
    ) -> Judge {
        let params = table.get(self.params);
        match self.tracks.iter().find(|(m, _)| *m == metric) {
            Some((_, track)) => track.judge(window_start_ms, window_ms, params),
            None => Track::default().judge(window_start_ms, window_ms, params),
        }
    }

    /// Closes a window of `metric`: learns it, and reports its stuck runs and level shifts.
    #[allow(clippy::too_many_arguments)]
    pub fn close_window(
        &mut self,
        device_id: &DeviceId,
        device: &SharedDeviceInfo,
        metric: MetricId,
        window_start_ms: TimeMs,
        count: u64,
        sum: ExactSum,
        evidence: &WindowEvidence,
        table: &ParamsTable,
        findings: &mut Vec<AnomalyScore>,
    ) {
        let params = table.get(self.params);
        let track = match self.tracks.iter().position(|(m, _)| *m == metric) {
            Some(i) => &mut self.tracks[i].1,
            None => {
                // Room for exactly one more: a device has a handful of metrics, and doubling
                // would leave a track's worth of bytes unused in most devices.
                self.tracks.reserve_exact(1);
                self.tracks.push((metric, Track::default()));
                &mut self.tracks.last_mut().expect("just pushed").1
            }
        };
        let mut found = Vec::new();
        track.close(
            window_start_ms,
            table.window_ms,
            count,
            sum,
            evidence,
            params,
            &mut found,
        );
        findings.extend(
            found
                .into_iter()
                .map(|f| AnomalyScore::from_finding(device_id.clone(), device.clone(), metric, f)),
        );
    }

    /// Scores the closed window starting at `window_start_ms` of the device as a whole
    /// (see [`device`]): `metrics` holds each metric's evidence, sorted by metric.
    pub fn close_device_window(
        &mut self,
        device_id: &DeviceId,
        device: &SharedDeviceInfo,
        window_start_ms: TimeMs,
        metrics: &[(MetricId, &WindowEvidence)],
        table: &ParamsTable,
        findings: &mut Vec<AnomalyScore>,
    ) {
        let params = table.get(self.params);
        let mut found = Vec::new();
        self.joint.close_window(
            window_start_ms,
            params.bucket_ms,
            metrics,
            &params.multivariate,
            table.emit_all_scores,
            &mut found,
        );
        findings.extend(found.into_iter().map(|f| AnomalyScore {
            device_id: device_id.clone(),
            device: device.clone(),
            metric: None,
            ts_ms: f.ts_ms,
            value: Some(f.distance),
            score: f.score,
            kind: f.kind,
        }));
    }

    /// Drops tracks no window after `closed_through_ms` can see; true when none is left.
    pub fn evict(&mut self, closed_through_ms: TimeMs, table: &ParamsTable) -> bool {
        let params = table.get(self.params);
        self.tracks
            .retain(|(_, track)| !track.is_evictable(closed_through_ms, params));
        if self
            .joint
            .last_ts_ms()
            .is_some_and(|t| closed_through_ms.saturating_sub(t) > params.forget_after_ms)
        {
            self.joint = DeviceModel::default();
        }
        self.tracks.is_empty() && self.joint.last_ts_ms().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_keeps_a_track_per_metric_it_has_and_no_room_for_more() {
        let table = AnomalyConfig::default().table(60_000);
        let mut scorer = DeviceScorer::new("thermostat", &table);
        let device = SharedDeviceInfo::default();
        let mut findings = Vec::new();
        for metric in [MetricId(0), MetricId(3), MetricId(5)] {
            scorer.close_window(
                &"dev-1".into(),
                &device,
                metric,
                0,
                0,
                ExactSum::default(),
                &WindowEvidence::default(),
                &table,
                &mut findings,
            );
        }
        assert_eq!(scorer.tracks.len(), 3);
        // Tracks are kept per device and metric: doubling would leave one unused here.
        assert_eq!(scorer.tracks.capacity(), 3);
    }
}
