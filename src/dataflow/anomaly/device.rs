//! One device's joint score: whether its metrics still move together.
//!
//! Why. A fault of a machine often shows in several sensors at once, each a little: a closed
//! valve lowers flow and pressure a few percent and changes the pump's current and vibration,
//! each within its own normal range. A per-metric score misses that; a device-level distance
//! of the metrics' joint deviation finds it, and finds a metric that stops following the
//! others (a sensor drifting away from its physical partners).
//!
//! The method. Every bucket of a closed window (10 s by default) in which every metric of the
//! device was heard gives a vector of bucket means. The model learns, over event time, their
//! mean and covariance (exponentially weighted with time constant `learn_ms`, so slow drift is
//! followed; a vector that scores as anomalous is not learnt, so a fault is not learnt away).
//! A vector's distance is Hotelling's T², `dᵀ Σ⁻¹ d` with `d` its deviation from the mean and
//! the correlations shrunk a little towards none (`shrinkage`) so a near-singular covariance
//! does not turn rounding into alarms. Bucket means of real sensors are autocorrelated and
//! heavier-tailed than a Gaussian, so T² is not χ²(k) distributed: it is calibrated by its own
//! typical size on normal data (a scaled χ², Satterthwaite's approximation), and the score is
//! the χ²(k) probability below `T² / c` with `c` the running mean of `T² / k` on vectors
//! learnt as normal. A score of 0.99 is a vector that normal operation exceeds about one time
//! in a hundred, whatever the device, its number of metrics or its sampling rate.
//!
//! Regime changes. A device anomalous without a break for `relearn_ms` has changed regime
//! (a new set point, a replaced part): the model starts over from there, and says so once with
//! a [`AnomalyKind::RegimeChange`] record.
//!
//! Determinism. The inputs are exact bucket sums of closed windows, taken in window order, so
//! the scores are the same for any number of workers and any arrival order.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::track::{AnomalyKind, WindowEvidence};
use crate::dataflow::model::{MetricId, TimeMs};

/// Tuning of the device-level score, per device type (the `multivariate` table of
/// [`ScorerParams`](super::ScorerParams)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MultivariateParams {
    /// Score devices with two metrics or more jointly. Off: per-metric scores only.
    pub enabled: bool,
    /// Scores at or above this are reported, and mark the device anomalous (so not learnt
    /// from). Higher: fewer false alarms, later and fewer detections.
    pub report_threshold: f64,
    /// Time constant of the learnt mean and covariance, ms of event time. Longer: a steadier
    /// model that follows a slow drift later; shorter: follows drift, forgets sooner.
    pub learn_ms: u64,
    /// Event time a new model learns before it scores, ms.
    pub warmup_ms: u64,
    /// Vectors a new model learns before it scores (whatever `warmup_ms`): a device heard
    /// every 5 minutes scores from its `warmup_vectors + 1`th report on.
    pub warmup_vectors: u32,
    /// A device anomalous without a break this long (event time, ms) has changed regime: the
    /// model starts over. Longer: a long fault stays reported; shorter: a new normal is learnt
    /// sooner.
    pub relearn_ms: u64,
    /// How far the learnt correlations are shrunk towards none, 0 to 1. Higher: steadier with
    /// few vectors or nearly dependent metrics, blinder to metrics that stop moving together.
    pub shrinkage: f64,
    /// Smallest standard deviation of a metric's bucket mean, relative to its mean: a metric
    /// that never moves (a flow meter reporting a constant) is not infinitely sensitive.
    pub min_scale_relative: f64,
    /// Smallest standard deviation of a metric's bucket mean, absolute (unit of the metric).
    pub min_scale: f64,
}

impl Default for MultivariateParams {
    fn default() -> Self {
        Self {
            enabled: true,
            report_threshold: 0.995,
            learn_ms: 900_000,
            warmup_ms: 300_000,
            warmup_vectors: 3,
            relearn_ms: 900_000,
            shrinkage: 0.05,
            min_scale_relative: 1e-3,
            min_scale: 1e-9,
        }
    }
}

/// A device-level score of one bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceFinding {
    /// The end of the bucket.
    pub ts_ms: TimeMs,
    /// `T² / c`: the calibrated distance (about the number of metrics when normal).
    pub distance: f64,
    /// The score in [0, 1].
    pub score: f64,
    /// [`AnomalyKind::Multivariate`] at or above the threshold, [`AnomalyKind::RegimeChange`]
    /// when the model starts over, else [`AnomalyKind::None`].
    pub kind: AnomalyKind,
}

/// The learnt joint behaviour of one device's metrics.
#[derive(Clone, Debug, Default)]
pub struct DeviceModel {
    metrics: SmallVec<[MetricId; 8]>,
    mean: Vec<f64>,
    /// Row-major k × k.
    covariance: Vec<f64>,
    learnt: u32,
    first_ts_ms: TimeMs,
    last_ts_ms: TimeMs,
    /// Running mean of `T² / k` on normal vectors, and how many went into it.
    calibration: f64,
    calibrated: u32,
    anomalous_since_ms: Option<TimeMs>,
}

impl DeviceModel {
    /// The last event time the model learnt or scored.
    pub fn last_ts_ms(&self) -> Option<TimeMs> {
        (self.learnt > 0).then_some(self.last_ts_ms)
    }

    /// Scores and learns the closed window starting at `window_start_ms`: `metrics` holds each
    /// metric's evidence, sorted by metric. Buckets in which every metric was heard are taken
    /// in order; their scores go to `out` (all of them with `emit_all`, else those at or above
    /// the threshold and regime changes).
    pub fn close_window(
        &mut self,
        window_start_ms: TimeMs,
        bucket_ms: u64,
        metrics: &[(MetricId, &WindowEvidence)],
        params: &MultivariateParams,
        emit_all: bool,
        out: &mut Vec<DeviceFinding>,
    ) {
        if !params.enabled || metrics.len() < 2 {
            return;
        }
        let has = |metric: &MetricId| metrics.iter().any(|(m, _)| m == metric);
        if self.metrics.iter().all(has) && metrics.len() > self.metrics.len() {
            // A metric the model has not seen: a new model over all of them (a window lacking
            // one of the model's metrics is only skipped, so a sensor's gap does not reset it).
            *self = Self {
                metrics: metrics.iter().map(|(m, _)| *m).collect(),
                ..Self::default()
            };
        }
        let metrics: SmallVec<[(MetricId, &WindowEvidence); 8]> = metrics
            .iter()
            .filter(|(m, _)| self.metrics.contains(m))
            .copied()
            .collect();
        if metrics.len() < self.metrics.len() {
            return;
        }
        let buckets = metrics
            .iter()
            .map(|(_, e)| e.bucket_count())
            .max()
            .unwrap_or(0);
        let mut vector = vec![0.0; metrics.len()];
        for bucket in 0..buckets {
            let complete = metrics
                .iter()
                .zip(vector.iter_mut())
                .all(|((_, e), x)| e.bucket_mean(bucket).map(|mean| *x = mean).is_some());
            if complete {
                let ts_ms = window_start_ms + (bucket as u64 + 1) * bucket_ms - 1;
                if let Some(finding) = self.observe(ts_ms, &vector, params)
                    && (emit_all || finding.kind != AnomalyKind::None)
                {
                    out.push(finding);
                }
            }
        }
    }

    /// Scores one vector, then learns it unless it is anomalous.
    fn observe(
        &mut self,
        ts_ms: TimeMs,
        x: &[f64],
        params: &MultivariateParams,
    ) -> Option<DeviceFinding> {
        let k = x.len();
        if self.learnt == 0 {
            self.start(ts_ms, x);
            return None;
        }
        let deviation: Vec<f64> = x.iter().zip(&self.mean).map(|(x, m)| x - m).collect();
        let t2 = self.hotelling(&deviation, params);
        let ready = self.learnt >= params.warmup_vectors
            && ts_ms - self.first_ts_ms >= params.warmup_ms
            && self.calibrated > 0;
        let (distance, score) = match (ready, t2) {
            (true, Some(t2)) => {
                let distance = t2 / self.calibration.max(f64::MIN_POSITIVE);
                (distance, 1.0 - chi_squared_tail(distance, k))
            }
            _ => (0.0, 0.0),
        };
        let anomalous = ready && score >= params.report_threshold;
        let mut kind = if anomalous {
            AnomalyKind::Multivariate
        } else {
            AnomalyKind::None
        };
        if anomalous {
            let since = *self.anomalous_since_ms.get_or_insert(ts_ms);
            if ts_ms - since >= params.relearn_ms {
                self.start(ts_ms, x);
                kind = AnomalyKind::RegimeChange;
            }
        } else {
            self.anomalous_since_ms = None;
            self.learn(ts_ms, &deviation, t2, params);
        }
        self.last_ts_ms = ts_ms;
        ready.then_some(DeviceFinding {
            ts_ms,
            distance,
            score,
            kind,
        })
    }

    fn start(&mut self, ts_ms: TimeMs, x: &[f64]) {
        let k = x.len();
        self.mean = x.to_vec();
        self.covariance = vec![0.0; k * k];
        self.learnt = 1;
        self.first_ts_ms = ts_ms;
        self.last_ts_ms = ts_ms;
        self.calibration = 0.0;
        self.calibrated = 0;
        self.anomalous_since_ms = None;
    }

    fn learn(
        &mut self,
        ts_ms: TimeMs,
        deviation: &[f64],
        t2: Option<f64>,
        params: &MultivariateParams,
    ) {
        let k = deviation.len();
        let elapsed = (ts_ms - self.last_ts_ms) as f64;
        // Equal weights while the model is young, then exponential forgetting in event time.
        let decay = 1.0 - (-elapsed / params.learn_ms.max(1) as f64).exp();
        let alpha = decay.max(1.0 / (self.learnt as f64 + 1.0));
        for i in 0..k {
            for j in 0..k {
                let c = &mut self.covariance[i * k + j];
                *c += alpha * (deviation[i] * deviation[j] - *c);
            }
            self.mean[i] += alpha * deviation[i];
        }
        // Calibrate on the second half of the warm-up on: the first vectors' covariance is
        // too young to say what a normal distance is.
        if let Some(t2) = t2
            && ts_ms - self.first_ts_ms >= params.warmup_ms / 2
        {
            self.calibrated += 1;
            let weight = decay.max(1.0 / self.calibrated as f64);
            self.calibration += weight * (t2 / k as f64 - self.calibration);
        }
        self.learnt = self.learnt.saturating_add(1);
    }

    /// `dᵀ Σ⁻¹ d` under the shrunk, floored covariance; none while it is singular.
    fn hotelling(&self, deviation: &[f64], params: &MultivariateParams) -> Option<f64> {
        let k = deviation.len();
        if self.learnt < 2 {
            return None;
        }
        let mut sigma = self.covariance.clone();
        for i in 0..k {
            let floor = (params.min_scale_relative * self.mean[i].abs()).max(params.min_scale);
            sigma[i * k + i] = sigma[i * k + i].max(floor * floor);
            for j in 0..k {
                if i != j {
                    sigma[i * k + j] *= 1.0 - params.shrinkage;
                }
            }
        }
        let solved = cholesky_solve(&mut sigma, deviation)?;
        Some(deviation.iter().zip(&solved).map(|(d, s)| d * s).sum())
    }
}

/// Solves `A x = b` for a symmetric positive definite `A` (row-major, overwritten by its
/// Cholesky factor); none if `A` is not positive definite.
fn cholesky_solve(a: &mut [f64], b: &[f64]) -> Option<Vec<f64>> {
    let k = b.len();
    for j in 0..k {
        let mut diagonal = a[j * k + j];
        for p in 0..j {
            diagonal -= a[j * k + p] * a[j * k + p];
        }
        // NaN fails too.
        if diagonal.is_nan() || diagonal <= 0.0 {
            return None;
        }
        let l = diagonal.sqrt();
        a[j * k + j] = l;
        for i in j + 1..k {
            let mut v = a[i * k + j];
            for p in 0..j {
                v -= a[i * k + p] * a[j * k + p];
            }
            a[i * k + j] = v / l;
        }
    }
    let mut y = b.to_vec();
    for i in 0..k {
        for p in 0..i {
            y[i] -= a[i * k + p] * y[p];
        }
        y[i] /= a[i * k + i];
    }
    for i in (0..k).rev() {
        for p in i + 1..k {
            y[i] -= a[p * k + i] * y[p];
        }
        y[i] /= a[i * k + i];
    }
    Some(y)
}

/// `P(X > x)` for `X` χ²-distributed with `k` degrees of freedom (closed forms for integer
/// `k`: a finite sum for even `k`, plus the complementary error function for odd `k`).
pub fn chi_squared_tail(x: f64, k: usize) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let h = x / 2.0;
    let even = k.is_multiple_of(2);
    let (mut tail, mut term, mut i) = if even {
        (0.0, (-h).exp(), 0.0)
    } else {
        // Γ(1/2, h) / Γ(1/2) = erfc(√h); then terms h^(i - 1/2) e^-h / Γ(i + 1/2).
        (
            erfc(h.sqrt()),
            (-h).exp() * h.sqrt() / std::f64::consts::PI.sqrt() * 2.0,
            0.5,
        )
    };
    let terms = if even { k / 2 } else { (k - 1) / 2 };
    for _ in 0..terms {
        tail += term;
        i += 1.0;
        term *= h / i;
    }
    tail.clamp(0.0, 1.0)
}

/// The complementary error function, with relative error below 1.2·10⁻⁷ everywhere (a
/// Chebyshev fit; Press et al., Numerical Recipes, §6.2).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::anomaly::track::Slots;
    use crate::dataflow::model::Reading;

    const MINUTE: u64 = 60_000;
    const BUCKET_MS: u64 = 10_000;

    /// A deterministic wobble in [-0.5, 0.5).
    fn noise(i: u64, salt: u64) -> f64 {
        ((i * 7919 + salt * 104_729) % 1000) as f64 / 1000.0 - 0.5
    }

    /// Closes minute `minute` of a device whose metrics read `values(second)` every
    /// `every_s` seconds (when the minute has such a second), and returns its findings.
    fn close_minute(
        model: &mut DeviceModel,
        minute: u64,
        every_s: u64,
        values: impl Fn(u64) -> [f64; 2],
    ) -> Vec<DeviceFinding> {
        let start = minute * MINUTE;
        let slots = Slots::new(MINUTE, BUCKET_MS);
        let mut evidence = [WindowEvidence::default(), WindowEvidence::default()];
        for second in (start / 1000..(start + MINUTE) / 1000).filter(|s| s % every_s == 0) {
            for (metric, value) in values(second).into_iter().enumerate() {
                let reading = Reading {
                    metric: MetricId(metric as u16),
                    ts_ms: second * 1000,
                    value,
                };
                evidence[metric].observe(&reading, start, &slots);
            }
        }
        let metrics = [(MetricId(0), &evidence[0]), (MetricId(1), &evidence[1])];
        let mut out = Vec::new();
        model.close_window(
            start,
            BUCKET_MS,
            &metrics,
            &MultivariateParams::default(),
            true,
            &mut out,
        );
        out
    }

    /// Two metrics that move together over a wide range (load and current, say), each with
    /// its own noise.
    fn coupled(second: u64) -> [f64; 2] {
        let load = 50.0 + 30.0 * ((second as f64) / 97.0).sin();
        [load + noise(second, 1), 2.0 * load + noise(second, 2)]
    }

    #[test]
    fn a_metric_that_stops_following_its_partner_scores_high_within_its_own_range() {
        let mut model = DeviceModel::default();
        let mut normal_max: f64 = 0.0;
        for minute in 0..30 {
            for f in close_minute(&mut model, minute, 1, coupled) {
                normal_max = normal_max.max(f.score);
            }
        }
        assert!(normal_max < 0.999, "coupled minutes score {normal_max}");
        // The second metric holds a value well inside the range it always had, while the
        // first goes on moving: each is normal alone, together they are not.
        let decoupled = |second: u64| [coupled(second)[0], 100.0 + noise(second, 2)];
        let findings: Vec<DeviceFinding> = (30..35)
            .flat_map(|minute| close_minute(&mut model, minute, 1, decoupled))
            .collect();
        // Flagged for most of the time the first metric is away from the level at which the
        // second's value would fit it, and far beyond anything the coupled minutes scored.
        let flagged = findings
            .iter()
            .filter(|f| f.kind == AnomalyKind::Multivariate)
            .count();
        assert!(
            flagged * 2 >= findings.len(),
            "{flagged} of {}",
            findings.len()
        );
        let highest = findings.iter().map(|f| f.score).fold(0.0, f64::max);
        assert!(highest > 0.9999, "{highest}");
    }

    #[test]
    fn a_device_heard_every_5_minutes_is_scored_from_its_fourth_report() {
        let mut model = DeviceModel::default();
        let mut reports = 0;
        let mut first_scored = None;
        for minute in 0..40 {
            if minute % 5 != 0 {
                continue;
            }
            reports += 1;
            let findings = close_minute(&mut model, minute, 300, coupled);
            if first_scored.is_none() && !findings.is_empty() {
                first_scored = Some(reports);
            }
        }
        assert_eq!(first_scored, Some(4));
    }

    #[test]
    fn a_lasting_step_is_reported_until_relearn_ms_then_once_as_a_regime_change() {
        let mut model = DeviceModel::default();
        for minute in 0..30 {
            close_minute(&mut model, minute, 1, coupled);
        }
        let stepped = |second: u64| {
            let [a, b] = coupled(second);
            [a + 40.0, b - 40.0]
        };
        let mut kinds = Vec::new();
        for minute in 30..60 {
            kinds.extend(
                close_minute(&mut model, minute, 1, stepped)
                    .into_iter()
                    .map(|f| (f.ts_ms, f.kind)),
            );
        }
        let changes: Vec<u64> = kinds
            .iter()
            .filter(|(_, k)| *k == AnomalyKind::RegimeChange)
            .map(|(ts, _)| *ts)
            .collect();
        let params = MultivariateParams::default();
        // Anomalous from the step until relearn_ms has passed, then re-learnt once.
        assert_eq!(changes.len(), 1, "{kinds:?}");
        assert!(changes[0] - 30 * MINUTE <= params.relearn_ms + BUCKET_MS);
        assert!(
            kinds
                .iter()
                .filter(|(ts, _)| *ts < changes[0])
                .all(|(_, k)| *k == AnomalyKind::Multivariate)
        );
        // The new level is normal once the new model has warmed up.
        let after = changes[0] + params.warmup_ms + MINUTE;
        assert!(
            kinds
                .iter()
                .filter(|(ts, _)| *ts > after)
                .all(|(_, k)| *k == AnomalyKind::None),
            "{kinds:?}"
        );
    }

    #[test]
    fn chi_squared_tails_match_tables() {
        // Quantiles from standard tables: (x, k, upper tail).
        for (x, k, p) in [
            (3.841, 1, 0.05),
            (6.635, 1, 0.01),
            (5.991, 2, 0.05),
            (11.345, 3, 0.01),
            (20.090, 8, 0.01),
            (26.124, 8, 0.001),
            (29.588, 10, 0.001),
        ] {
            let tail = chi_squared_tail(x, k);
            assert!((tail - p).abs() < p * 0.01, "x={x} k={k}: {tail} vs {p}");
        }
    }

    #[test]
    fn state_per_device_is_a_few_hundred_bytes() {
        // docs/benchmarks.md quotes these: the struct plus k + k² numbers on the heap.
        let inline = std::mem::size_of::<DeviceModel>();
        assert!(inline <= 160, "{inline}");
        eprintln!("DeviceModel: {inline} bytes + 8·(k + k²) on the heap");
        let track = std::mem::size_of::<crate::dataflow::anomaly::Track>();
        assert!(track <= 560, "{track}");
        eprintln!("Track (per device and metric): {track} bytes");
    }

    #[test]
    fn cholesky_solves_a_small_system() {
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let x = cholesky_solve(&mut a, &[2.0, 1.0]).unwrap();
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12, "{x:?}");
        assert!(cholesky_solve(&mut [1.0, 1.0, 1.0, 1.0], &[1.0, 1.0]).is_none());
    }
}
