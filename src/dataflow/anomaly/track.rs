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

use std::collections::BTreeMap;

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
    /// Readings the baseline must have learnt before readings are scored against it.
    pub warmup_readings: u64,
    /// Weight of each closed window in the baseline.
    pub alpha: f64,
    /// Weight of a window that itself looks anomalous (slow, so a shift is not learnt away).
    pub alpha_anomalous: f64,
    /// Smallest scale, absolute, in the metric's unit.
    pub min_scale: f64,
    /// Smallest scale, relative to the baseline mean.
    pub min_scale_relative: f64,
    /// This many latest readings all equal, on a sensor that normally varies, is a stuck value.
    pub stuck_run: usize,
    /// Event time past a track's last reading after which it is silent.
    pub silence_timeout_ms: u64,
    /// A track silent this long is forgotten (bounded state for decommissioned devices).
    pub forget_after_ms: u64,
}

impl Default for ScorerParams {
    fn default() -> Self {
        Self {
            report_threshold: 0.9,
            z_mid: 6.0,
            z_slope: 1.5,
            shift_z: 3.0,
            warmup_readings: 30,
            alpha: 0.3,
            alpha_anomalous: 0.02,
            min_scale: 0.05,
            min_scale_relative: 0.005,
            stuck_run: 10,
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

/// An open window's accumulator.
#[derive(Clone, Debug, Default)]
struct WindowAcc {
    count: u64,
    sum: ExactSum,
    sum_squares: ExactSum,
    max_ts: TimeMs,
    /// The latest readings by (event time, value bits), at most `stuck_run` of them.
    latest: Vec<(TimeMs, u64)>,
}

/// Mean and sample variance of accumulated values, from exact sums.
fn moments(acc: &WindowAcc) -> Moments {
    let mean = acc.sum.mean(acc.count);
    let variance = if acc.count > 1 {
        ((acc.sum_squares.mean(1) - acc.sum.mean(1) * mean) / (acc.count as f64 - 1.0)).max(0.0)
    } else {
        0.0
    };
    Moments { mean, variance }
}

/// A stuck run found when a window closed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StuckRun {
    /// Event time of the latest reading of the run.
    pub ts_ms: TimeMs,
    /// The repeated value.
    pub value: f64,
}

/// One (device, metric)'s state.
#[derive(Clone, Debug, Default)]
pub struct Track {
    baseline: Option<Moments>,
    /// Readings learnt into the baseline so far.
    learnt: u64,
    /// Until `warmup_readings` are learnt, the baseline is the pooled moments of all windows.
    warmup: WindowAcc,
    last_window: Option<Moments>,
    open: BTreeMap<TimeMs, WindowAcc>,
    /// Latest event time among readings of closed windows.
    closed_max_ts: Option<TimeMs>,
    silent: bool,
}

impl Track {
    /// Adds a reading of the window starting at `window_start_ms`.
    pub fn observe(&mut self, reading: &Reading, window_start_ms: TimeMs, params: &ScorerParams) {
        let acc = self.open.entry(window_start_ms).or_default();
        acc.count += 1;
        acc.sum.add(reading.value);
        acc.sum_squares.add(reading.value * reading.value);
        acc.max_ts = acc.max_ts.max(reading.ts_ms);
        let key = (reading.ts_ms, reading.value.to_bits());
        let at = acc.latest.partition_point(|k| *k < key);
        acc.latest.insert(at, key);
        if acc.latest.len() > params.stuck_run.max(1) {
            acc.latest.remove(0);
        }
    }

    fn scale(&self, baseline: Moments, params: &ScorerParams) -> f64 {
        baseline
            .variance
            .sqrt()
            .max(params.min_scale)
            .max(params.min_scale_relative * baseline.mean.abs())
    }

    /// Scores a reading against the baseline of the windows closed so far.
    pub fn score(&self, reading: &Reading, params: &ScorerParams) -> (f64, AnomalyKind) {
        let Some(baseline) = self
            .baseline
            .filter(|_| self.learnt >= params.warmup_readings)
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

    /// Closes the window starting at `window_start_ms` (and any earlier one still open):
    /// learns it into the baseline and reports a stuck run at its end.
    pub fn close(&mut self, window_start_ms: TimeMs, params: &ScorerParams) -> Option<StuckRun> {
        let mut stuck = None;
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() > window_start_ms {
                break;
            }
            let acc = entry.remove();
            stuck = self.learn(acc, params);
        }
        stuck
    }

    fn learn(&mut self, acc: WindowAcc, params: &ScorerParams) -> Option<StuckRun> {
        let Moments { mean, variance } = moments(&acc);
        let window = Moments { mean, variance };
        let mut stuck = None;
        if self.learnt < params.warmup_readings {
            self.warmup.count += acc.count;
            self.warmup.sum.merge(acc.sum);
            self.warmup.sum_squares.merge(acc.sum_squares);
            self.baseline = Some(moments(&self.warmup));
        } else if let Some(baseline) = self.baseline {
            let scale = self.scale(baseline, params);
            let varies = baseline.variance.sqrt() > params.min_scale;
            let (first, last) = (acc.latest.first(), acc.latest.last());
            if let (Some(first), Some(last)) = (first, last)
                && varies
                && acc.latest.len() >= params.stuck_run
                && acc.latest.iter().all(|(_, bits)| *bits == first.1)
            {
                stuck = Some(StuckRun {
                    ts_ms: last.0,
                    value: f64::from_bits(last.1),
                });
            }
            // Exponentially weighted mean and variance over windows: the variance counts both
            // the spread within windows and the drift of their means. A window that looks
            // anomalous only nudges the mean, so a fault is not learnt as normal.
            let drift = mean - baseline.mean;
            let anomalous = drift.abs() / scale > params.z_mid || stuck.is_some();
            self.baseline = Some(if anomalous {
                Moments {
                    mean: baseline.mean + params.alpha_anomalous * drift,
                    variance: baseline.variance,
                }
            } else {
                let alpha = params.alpha;
                Moments {
                    mean: baseline.mean + alpha * drift,
                    variance: (1.0 - alpha) * (baseline.variance + alpha * drift * drift)
                        + alpha * variance,
                }
            });
        }
        self.learnt += acc.count;
        self.last_window = Some(window);
        if self.closed_max_ts.is_none_or(|t| acc.max_ts > t) {
            self.closed_max_ts = Some(acc.max_ts);
            self.silent = false;
        }
        stuck
    }

    /// With every window before `complete_until_ms` closed: the time at which the track fell
    /// silent, the first time it is found so. `None` also when it is not silent.
    pub fn check_silence(
        &mut self,
        complete_until_ms: TimeMs,
        params: &ScorerParams,
    ) -> Option<TimeMs> {
        let last = self.closed_max_ts?;
        let silent_at = last + params.silence_timeout_ms;
        if self.silent || silent_at > complete_until_ms {
            return None;
        }
        self.silent = true;
        Some(silent_at)
    }

    /// Whether the track has been silent so long it can be forgotten.
    pub fn forgettable(&self, complete_until_ms: TimeMs, params: &ScorerParams) -> bool {
        self.silent
            && self.open.is_empty()
            && self
                .closed_max_ts
                .is_some_and(|t| t + params.forget_after_ms <= complete_until_ms)
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

    /// A track that has learnt `windows` minutes of a noisy signal around 20.
    fn trained(windows: u64) -> (Track, ScorerParams) {
        let params = ScorerParams::default();
        let mut track = Track::default();
        for w in 0..windows {
            for s in 0..60 {
                let noise = ((s * 7919 + w * 104_729) % 100) as f64 / 100.0 - 0.5;
                track.observe(
                    &reading(w * MINUTE + s * 1000, 20.0 + noise),
                    w * MINUTE,
                    &params,
                );
            }
            assert_eq!(track.close(w * MINUTE, &params), None);
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
    fn a_level_shift_is_named_once_a_window_has_shifted() {
        let (mut track, params) = trained(3);
        for s in 0..60 {
            track.observe(
                &reading(3 * MINUTE + s * 1000, 32.0 + (s % 3) as f64 * 0.1),
                3 * MINUTE,
                &params,
            );
        }
        track.close(3 * MINUTE, &params);
        let (score, kind) = track.score(&reading(4 * MINUTE, 32.1), &params);
        assert!(
            score > 0.99 && kind == AnomalyKind::LevelShift,
            "{score} {kind:?}"
        );
    }

    #[test]
    fn a_repeated_value_is_stuck_whatever_the_arrival_order() {
        let (mut track, params) = trained(3);
        // Normal first half, then the same value; readings arrive out of order.
        let mut readings: Vec<Reading> = (0..60)
            .map(|s| {
                reading(
                    3 * MINUTE + s * 1000,
                    if s < 30 {
                        20.0 + (s % 5) as f64 * 0.1
                    } else {
                        21.37
                    },
                )
            })
            .collect();
        readings.reverse();
        for r in &readings {
            track.observe(r, 3 * MINUTE, &params);
        }
        assert_eq!(
            track.close(3 * MINUTE, &params),
            Some(StuckRun {
                ts_ms: 3 * MINUTE + 59_000,
                value: 21.37
            })
        );
    }

    #[test]
    fn silence_is_found_once_event_time_passes_the_timeout() {
        let (mut track, params) = trained(2);
        let last = MINUTE + 59_000;
        assert_eq!(track.check_silence(last + 10_000, &params), None);
        assert_eq!(
            track.check_silence(3 * MINUTE, &params),
            Some(last + params.silence_timeout_ms)
        );
        assert_eq!(
            track.check_silence(4 * MINUTE, &params),
            None,
            "reported once"
        );
        track.observe(&reading(5 * MINUTE, 20.0), 5 * MINUTE, &params);
        track.close(5 * MINUTE, &params);
        assert_eq!(
            track.check_silence(5 * MINUTE + 10_000, &params),
            None,
            "speaking again"
        );
    }
}
