//! One (device, metric)'s anomaly state: a baseline learnt from closed windows, the open
//! windows' accumulators, and the evidence for stuck values and silence.
//!
//! Why this method. Telemetry is noisy, drifts slowly (daily cycles, load) and fails in four
//! ways: spikes, level shifts, stuck sensors and silence. A reading is scored by its robust
//! distance from a baseline (exponentially weighted over closed windows, adapting slowly while
//! windows look anomalous so a shift is not learnt away), with a floor on the scale so a very
//! quiet sensor does not turn rounding into alarms. Stuck values and silence are invisible to
//! any per-value score and get their own tests: the latest readings all equal while the sensor
//! normally varies, and event time moving past the last reading by a timeout.
//!
//! Determinism. Every decision depends only on data that is complete: a reading of window `k`
//! is scored against the baseline after window `k - 1` closed, window statistics are exact sums,
//! and "latest readings" are the top readings by event time, not by arrival. So scores are the
//! same for any number of workers and for a replay of the same input.

use serde::{Deserialize, Serialize};

use crate::dataflow::model::{ExactSum, Reading, TimeMs};

/// Tuning of the scorer, per device type (see [`AnomalyConfig`](super::AnomalyConfig)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScorerParams {
    /// Scores at or above this are reported as anomalies.
    pub report_threshold: f64,
    /// Robust distance (in baseline scales) that scores 0.5.
    pub z_mid: f64,
    /// Steepness of the score around `z_mid`, per unit of distance.
    pub z_slope: f64,
    /// Distance of the last window's mean from the baseline beyond which an anomalous reading
    /// near that mean is a level shift rather than a spike.
    pub shift_z: f64,
    /// Closed windows the baseline must have learnt before readings are scored against it.
    pub warmup_windows: u32,
    /// Windows with fewer readings than this are not learnt (devices slower than this per
    /// minute need a lower value for their type).
    pub min_window_readings: u64,
    /// Weight of each closed window in the baseline.
    pub alpha: f64,
    /// Weight of a window that itself looks anomalous (slow, so a shift is not learnt away).
    pub alpha_anomalous: f64,
    /// How many windows' worth of drift a reading may be ahead of the baseline: the scale
    /// grows by this times the typical change of the mean from one window to the next.
    pub drift_windows: f64,
    /// Smallest scale, absolute, in the metric's unit.
    pub min_scale: f64,
    /// Smallest scale, relative to the baseline mean.
    pub min_scale_relative: f64,
    /// Windows are summarised in buckets of this much event time: stuck values and gaps are
    /// found bucket by bucket, so state per window is a few numbers whatever the rate.
    pub bucket_ms: u64,
    /// A jump between consecutive bucket means this many times the typical jump is a level shift
    /// (a step, unlike the smooth drift of a periodic signal).
    pub shift_jumps: f64,
    /// A bucket whose readings are all one value, at least this many of them, on a sensor that
    /// normally varies, is a stuck value.
    pub stuck_min_readings: u32,
    /// A gap in a track's readings at least this long (event time) is silence; gaps shorter
    /// than two buckets may go unseen.
    pub silence_timeout_ms: u64,
    /// A track silent this long is forgotten (bounded state for decommissioned devices).
    pub forget_after_ms: u64,
}

impl Default for ScorerParams {
    fn default() -> Self {
        Self {
            report_threshold: 0.9,
            z_mid: 10.0,
            z_slope: 1.5,
            shift_z: 3.0,
            warmup_windows: 2,
            min_window_readings: 10,
            alpha: 0.3,
            alpha_anomalous: 0.02,
            drift_windows: 2.5,
            min_scale: 0.05,
            min_scale_relative: 0.005,
            bucket_ms: 10_000,
            shift_jumps: 12.0,
            stuck_min_readings: 5,
            silence_timeout_ms: 20_000,
            forget_after_ms: 3_600_000,
        }
    }
}

/// What kind of anomaly a score points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// Nothing unusual.
    None,
    /// One reading far from the baseline.
    Spike,
    /// Readings far from the baseline and close to each other: the level moved.
    LevelShift,
    /// The sensor repeats one value.
    Stuck,
    /// The device stopped sending.
    Silence,
}

impl AnomalyKind {
    /// The kind's stable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Spike => "spike",
            Self::LevelShift => "level_shift",
            Self::Stuck => "stuck",
            Self::Silence => "silence",
        }
    }
}

/// Mean and variance.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Moments {
    mean: f64,
    variance: f64,
}

/// A bucket of an open window: enough to find gaps and constant runs in any arrival order.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    count: u32,
    sum: ExactSum,
    min_ts: TimeMs,
    max_ts: TimeMs,
    min: f64,
    max: f64,
}

/// An open window's summary.
#[derive(Clone, Debug, Default)]
struct WindowAcc {
    start_ms: TimeMs,
    count: u64,
    sum: ExactSum,
    sum_squares: ExactSum,
    buckets: Vec<Bucket>,
}

impl WindowAcc {
    fn moments(&self) -> Moments {
        let n = self.count;
        let mean = self.sum.mean(n);
        let variance = if n > 1 {
            ((self.sum_squares.mean(1) - self.sum.mean(1) * mean) / (n as f64 - 1.0)).max(0.0)
        } else {
            0.0
        };
        Moments { mean, variance }
    }
}

/// A stuck run or a silence found when windows closed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Finding {
    /// Stuck: the run's last reading. Silence: the moment the timeout passed.
    pub ts_ms: TimeMs,
    /// Stuck: the repeated value. Silence: none.
    pub value: Option<f64>,
    /// [`AnomalyKind::Stuck`] or [`AnomalyKind::Silence`].
    pub kind: AnomalyKind,
}

/// One (device, metric)'s state.
#[derive(Clone, Debug, Default)]
pub struct Track {
    baseline: Option<Moments>,
    /// Typical change of the window mean from one window to the next (exponentially weighted).
    drift: f64,
    /// The last closed bucket's mean, and the typical jump between consecutive bucket means
    /// (exponentially weighted): a jump many times the typical one is a level shift.
    last_bucket_mean: Option<f64>,
    bucket_jump: Option<f64>,
    last_window: Option<Moments>,
    learnt_windows: u32,
    /// Open windows, by start (one or two at a time).
    open: Vec<WindowAcc>,
    /// The value of the stuck run being reported, so a run is reported once.
    stuck_value: Option<u64>,
    /// Latest event time among readings of closed windows.
    closed_max_ts: Option<TimeMs>,
    /// The reading after which a silence was last reported (each silence is reported once).
    silence_reported_after: Option<TimeMs>,
}

impl Track {
    /// Adds a reading of the window starting at `window_start_ms`.
    pub fn observe(&mut self, reading: &Reading, window_start_ms: TimeMs, params: &ScorerParams) {
        let index = match self.open.iter().position(|w| w.start_ms == window_start_ms) {
            Some(i) => i,
            None => {
                let acc = WindowAcc {
                    start_ms: window_start_ms,
                    ..WindowAcc::default()
                };
                let at = self.open.partition_point(|w| w.start_ms < window_start_ms);
                self.open.insert(at, acc);
                at
            }
        };
        let acc = &mut self.open[index];
        acc.count += 1;
        acc.sum.add(reading.value);
        acc.sum_squares.add(reading.value * reading.value);
        let b = ((reading.ts_ms - window_start_ms) / params.bucket_ms.max(1)) as usize;
        if acc.buckets.len() <= b {
            acc.buckets.resize(b + 1, Bucket::default());
        }
        let bucket = &mut acc.buckets[b];
        if bucket.count == 0 {
            *bucket = Bucket {
                count: 0,
                sum: ExactSum::default(),
                min_ts: reading.ts_ms,
                max_ts: reading.ts_ms,
                min: reading.value,
                max: reading.value,
            };
        }
        bucket.count += 1;
        bucket.sum.add(reading.value);
        bucket.min_ts = bucket.min_ts.min(reading.ts_ms);
        bucket.max_ts = bucket.max_ts.max(reading.ts_ms);
        bucket.min = bucket.min.min(reading.value);
        bucket.max = bucket.max.max(reading.value);
    }

    fn scale(&self, baseline: Moments, params: &ScorerParams) -> f64 {
        let drift = params.drift_windows * self.drift;
        (baseline.variance + drift * drift)
            .sqrt()
            .max(params.min_scale)
            .max(params.min_scale_relative * baseline.mean.abs())
    }

    /// Scores a reading against the baseline of the windows closed so far.
    pub fn score(&self, reading: &Reading, params: &ScorerParams) -> (f64, AnomalyKind) {
        let Some(baseline) = self
            .baseline
            .filter(|_| self.learnt_windows >= params.warmup_windows)
        else {
            return (0.0, AnomalyKind::None);
        };
        let scale = self.scale(baseline, params);
        let deviation = reading.value - baseline.mean;
        let z = deviation.abs() / scale;
        let score = 1.0 / (1.0 + (-(z - params.z_mid) * params.z_slope).exp());
        if score < params.report_threshold {
            return (score, AnomalyKind::None);
        }
        let shifted = self.last_window.is_some_and(|last| {
            let last_shift = last.mean - baseline.mean;
            last_shift.abs() / scale >= params.shift_z
                && last_shift.signum() == deviation.signum()
                && (reading.value - last.mean).abs() / self.scale(last, params) < params.z_mid
        });
        (
            score,
            if shifted {
                AnomalyKind::LevelShift
            } else {
                AnomalyKind::Spike
            },
        )
    }

    /// Closes every open window starting at or before `window_start_ms`: finds stuck runs and
    /// silent gaps inside them, and learns them into the baseline.
    pub fn close(
        &mut self,
        window_start_ms: TimeMs,
        params: &ScorerParams,
        findings: &mut Vec<Finding>,
    ) {
        while self
            .open
            .first()
            .is_some_and(|w| w.start_ms <= window_start_ms)
        {
            let acc = self.open.remove(0);
            let before = findings.len();
            self.find_gaps_and_runs(&acc, params, findings);
            let stuck = findings[before..]
                .iter()
                .any(|f| f.kind == AnomalyKind::Stuck);
            self.learn(&acc, params, stuck);
        }
    }

    fn varies(&self, params: &ScorerParams) -> bool {
        self.baseline
            .is_some_and(|b| b.variance.sqrt() > params.min_scale)
    }

    fn find_gaps_and_runs(
        &mut self,
        acc: &WindowAcc,
        params: &ScorerParams,
        findings: &mut Vec<Finding>,
    ) {
        let can_stick = self.varies(params) && self.learnt_windows >= params.warmup_windows;
        for bucket in acc.buckets.iter().filter(|b| b.count > 0) {
            if let Some(p) = self.closed_max_ts
                && p + params.silence_timeout_ms <= bucket.min_ts
                && self.silence_reported_after != Some(p)
            {
                self.silence_reported_after = Some(p);
                findings.push(Finding {
                    ts_ms: p + params.silence_timeout_ms,
                    value: None,
                    kind: AnomalyKind::Silence,
                });
            }
            self.closed_max_ts = Some(
                self.closed_max_ts
                    .map_or(bucket.max_ts, |p| p.max(bucket.max_ts)),
            );
            let mean = bucket.sum.mean(bucket.count as u64);
            if let Some(previous) = self.last_bucket_mean {
                let jump = (mean - previous).abs();
                match self.bucket_jump {
                    Some(typical)
                        if can_stick
                            && jump > params.shift_jumps * typical.max(params.min_scale) =>
                    {
                        findings.push(Finding {
                            ts_ms: bucket.min_ts,
                            value: Some(mean),
                            kind: AnomalyKind::LevelShift,
                        });
                    }
                    // Learn only from ordinary jumps, so a shift does not teach itself.
                    Some(typical) => self.bucket_jump = Some(typical + 0.1 * (jump - typical)),
                    None => self.bucket_jump = Some(jump),
                }
            }
            self.last_bucket_mean = Some(mean);
            let constant = bucket.min == bucket.max && bucket.count >= params.stuck_min_readings;
            if !constant {
                self.stuck_value = None;
            } else if can_stick && self.stuck_value != Some(bucket.min.to_bits()) {
                self.stuck_value = Some(bucket.min.to_bits());
                findings.push(Finding {
                    ts_ms: bucket.max_ts,
                    value: Some(bucket.min),
                    kind: AnomalyKind::Stuck,
                });
            }
        }
    }

    fn learn(&mut self, acc: &WindowAcc, params: &ScorerParams, stuck: bool) {
        // A window with few readings (a partial first window, a batch reaching back across a
        // boundary) says too little about the signal to learn from.
        if acc.count < params.min_window_readings {
            return;
        }
        let window = acc.moments();
        match self.baseline {
            None => self.baseline = Some(window),
            Some(baseline) => {
                let drift = window.mean - baseline.mean;
                let step = self
                    .last_window
                    .map_or(0.0, |last| (window.mean - last.mean).abs());
                let warming = self.learnt_windows < params.warmup_windows;
                let anomalous = !warming
                    && (drift.abs() / self.scale(baseline, params) > params.z_mid || stuck);
                // A window that looks anomalous only nudges the mean and the typical step
                // between windows, so a fault is not learnt as normal (yet a signal that moves
                // faster than first seen is eventually learnt).
                let alpha = if warming { 0.5 } else { params.alpha };
                let drift_alpha = if anomalous {
                    params.alpha_anomalous
                } else {
                    alpha
                };
                self.drift = if warming && self.learnt_windows <= 1 {
                    step
                } else {
                    self.drift + drift_alpha * (step - self.drift)
                };
                self.baseline = Some(if anomalous {
                    Moments {
                        mean: baseline.mean + params.alpha_anomalous * drift,
                        variance: baseline.variance,
                    }
                } else {
                    Moments {
                        mean: baseline.mean + alpha * drift,
                        variance: (1.0 - alpha) * baseline.variance + alpha * window.variance,
                    }
                });
            }
        }
        self.last_window = Some(window);
        self.learnt_windows += 1;
    }

    /// With the fleet's event time at `fleet_latest_ms`: a silence if the track's last reading
    /// is at least the timeout behind, reported once.
    pub fn check_silence(
        &mut self,
        fleet_latest_ms: TimeMs,
        params: &ScorerParams,
    ) -> Option<Finding> {
        let last = self.closed_max_ts?;
        let silent_at = last + params.silence_timeout_ms;
        if self.silence_reported_after == Some(last) || silent_at > fleet_latest_ms {
            return None;
        }
        self.silence_reported_after = Some(last);
        Some(Finding {
            ts_ms: silent_at,
            value: None,
            kind: AnomalyKind::Silence,
        })
    }

    /// Whether the track has been silent so long it can be forgotten.
    pub fn forgettable(&self, fleet_latest_ms: TimeMs, params: &ScorerParams) -> bool {
        self.open.is_empty()
            && self
                .closed_max_ts
                .is_some_and(|t| t + params.forget_after_ms <= fleet_latest_ms)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::model::MetricId;

    const MINUTE: u64 = 60_000;

    fn reading(ts_ms: u64, value: f64) -> Reading {
        Reading {
            metric: MetricId(0),
            ts_ms,
            value,
        }
    }

    fn noise(s: u64, w: u64) -> f64 {
        ((s * 7919 + w * 104_729) % 100) as f64 / 100.0 - 0.5
    }

    /// A track that has learnt `windows` minutes of a noisy signal around 20.
    fn trained(windows: u64) -> (Track, ScorerParams) {
        let params = ScorerParams::default();
        let mut track = Track::default();
        for w in 0..windows {
            for s in 0..60 {
                track.observe(
                    &reading(w * MINUTE + s * 1000, 20.0 + noise(s, w)),
                    w * MINUTE,
                    &params,
                );
            }
            let mut findings = Vec::new();
            track.close(w * MINUTE, &params, &mut findings);
            assert_eq!(findings, []);
        }
        (track, params)
    }

    #[test]
    fn normal_readings_score_low_and_spikes_high() {
        let (track, params) = trained(3);
        let (normal, kind) = track.score(&reading(3 * MINUTE, 20.3), &params);
        assert!(normal < 0.01 && kind == AnomalyKind::None, "{normal}");
        let (spike, kind) = track.score(&reading(3 * MINUTE, 60.0), &params);
        assert!(spike > 0.99 && kind == AnomalyKind::Spike, "{spike}");
    }

    #[test]
    fn nothing_is_scored_during_warm_up() {
        let (track, params) = trained(1);
        assert_eq!(
            track.score(&reading(MINUTE, 60.0), &params),
            (0.0, AnomalyKind::None)
        );
    }

    #[test]
    fn a_level_shift_is_named_once_a_window_has_shifted() {
        let (mut track, params) = trained(3);
        for s in 0..60 {
            track.observe(
                &reading(3 * MINUTE + s * 1000, 32.0 + (s % 3) as f64 * 0.1),
                3 * MINUTE,
                &params,
            );
        }
        track.close(3 * MINUTE, &params, &mut Vec::new());
        let (score, kind) = track.score(&reading(4 * MINUTE, 32.1), &params);
        assert!(
            score > 0.99 && kind == AnomalyKind::LevelShift,
            "{score} {kind:?}"
        );
    }

    #[test]
    fn a_run_of_one_value_inside_a_window_is_stuck_whatever_the_arrival_order() {
        let (mut track, params) = trained(3);
        // Normal, then 20 s of one value, then normal again; readings arrive out of order.
        let mut readings: Vec<Reading> = (0..60)
            .map(|s| {
                reading(
                    3 * MINUTE + s * 1000,
                    if (15..35).contains(&s) {
                        20.01
                    } else {
                        20.0 + noise(s, 3)
                    },
                )
            })
            .collect();
        readings.reverse();
        for r in &readings {
            track.observe(r, 3 * MINUTE, &params);
        }
        let mut findings = Vec::new();
        track.close(3 * MINUTE, &params, &mut findings);
        // The first constant bucket reports the run, once.
        assert_eq!(
            findings,
            [Finding {
                ts_ms: 3 * MINUTE + 29_000,
                value: Some(20.01),
                kind: AnomalyKind::Stuck
            }]
        );
    }

    #[test]
    fn a_gap_inside_a_window_is_silence_and_so_is_an_ongoing_one_reported_once() {
        let (mut track, params) = trained(3);
        for s in (0..10).chain(40..60) {
            track.observe(
                &reading(3 * MINUTE + s * 1000, 20.0 + noise(s, 3)),
                3 * MINUTE,
                &params,
            );
        }
        let mut findings = Vec::new();
        track.close(3 * MINUTE, &params, &mut findings);
        assert_eq!(
            findings,
            [Finding {
                ts_ms: 3 * MINUTE + 9_000 + 20_000,
                value: None,
                kind: AnomalyKind::Silence
            }]
        );
        let last = 3 * MINUTE + 59_000;
        assert_eq!(track.check_silence(last + 10_000, &params), None);
        let silent = track.check_silence(5 * MINUTE, &params).unwrap();
        assert_eq!(silent.ts_ms, last + params.silence_timeout_ms);
        assert_eq!(
            track.check_silence(6 * MINUTE, &params),
            None,
            "reported once"
        );
        // Speaking again does not report the same gap a second time.
        track.observe(&reading(6 * MINUTE, 20.0), 6 * MINUTE, &params);
        let mut findings = Vec::new();
        track.close(6 * MINUTE, &params, &mut findings);
        assert_eq!(findings, []);
    }
}
