//! The alert book: one worker's open device alerts and their lifecycle.
//!
//! Every decision is a function of the signals and of event-time ticks (window close times,
//! which every worker sees), applied in event-time order, so a replay or a restart with any
//! number of workers opens, escalates and resolves the same alerts at the same times, with the
//! same ids.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::rules::{AlertConfig, Cause, Condition, Severity};
use super::{AlertEvent, AlertEventKind, Signal};
use crate::dataflow::anomaly::AnomalyKind;
use crate::dataflow::model::{DeviceId, MetricId, SharedDeviceInfo, TimeMs};

/// One open alert per device, metric (none for silence) and cause.
type AlertKey = (DeviceId, Option<MetricId>, Cause);

/// Why an open alert sends nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mute {
    /// It opened in a maintenance window that ends then; it is announced if it outlives it.
    Maintenance(TimeMs),
    /// Its key opened too often lately.
    Flapping,
}

#[derive(Clone, Debug)]
struct OpenAlert {
    alert_id: String,
    device: SharedDeviceInfo,
    /// The rule that fired (by name: rules may change while it is open).
    rule: String,
    severity: Severity,
    last_fired_ms: TimeMs,
    score: Option<f64>,
    value: Option<f64>,
    mute: Option<Mute>,
}

/// One worker's device alerts.
pub struct AlertBook {
    config: Arc<AlertConfig>,
    window_ms: u64,
    open: BTreeMap<AlertKey, OpenAlert>,
    /// Recent opens per key, for flapping.
    opened: FxHashMap<AlertKey, VecDeque<TimeMs>>,
    /// Per (device, metric, rule): the last window that met a threshold rule, and the run of
    /// consecutive such windows it ends.
    runs: FxHashMap<(DeviceId, MetricId, usize), (TimeMs, u32)>,
    /// Per (device, rule): the times of its recent clock faults, within the rule's span.
    clock_faults: FxHashMap<(DeviceId, usize), VecDeque<TimeMs>>,
}

/// What fired.
struct Firing<'a> {
    device_id: &'a DeviceId,
    device: &'a SharedDeviceInfo,
    metric: Option<MetricId>,
    rule: usize,
    ts_ms: TimeMs,
    score: Option<f64>,
    value: Option<f64>,
}

impl AlertBook {
    /// An empty book.
    pub fn new(config: Arc<AlertConfig>, window_ms: u64) -> Self {
        Self {
            config,
            window_ms,
            open: BTreeMap::new(),
            opened: FxHashMap::default(),
            runs: FxHashMap::default(),
            clock_faults: FxHashMap::default(),
        }
    }

    /// The rules from now on (a change that took effect): open alerts stay open under the
    /// rule that fired them; runs of windows and recent clock faults are kept for the rules
    /// that keep their name, and forgotten for the others.
    pub fn set_config(&mut self, config: Arc<AlertConfig>) {
        let old = std::mem::replace(&mut self.config, config);
        let new = &self.config;
        let index_of = |i: usize| {
            let name = &old.rules.get(i)?.name;
            new.rules.iter().position(|r| &r.name == name)
        };
        self.runs = std::mem::take(&mut self.runs)
            .into_iter()
            .filter_map(|((d, m, i), run)| Some(((d, m, index_of(i)?), run)))
            .collect();
        self.clock_faults = std::mem::take(&mut self.clock_faults)
            .into_iter()
            .filter_map(|((d, i), faults)| Some(((d, index_of(i)?), faults)))
            .collect();
    }

    /// Applies a signal.
    pub fn apply(&mut self, signal: &Signal, out: &mut Vec<AlertEvent>) {
        let config = Arc::clone(&self.config);
        match signal {
            Signal::Anomaly(a) => {
                for (i, rule) in config.rules.iter().enumerate() {
                    let Condition::Anomaly { min_score, kinds } = &rule.when else {
                        if a.kind == AnomalyKind::Silence
                            && matches!(rule.when, Condition::Silence {})
                            && rule.selector.matches(&a.device_id, &a.device, None)
                        {
                            self.fire(
                                Firing {
                                    device_id: &a.device_id,
                                    device: &a.device,
                                    metric: None,
                                    rule: i,
                                    ts_ms: a.ts_ms,
                                    score: None,
                                    value: None,
                                },
                                out,
                            );
                        }
                        continue;
                    };
                    let kind_fires = if kinds.is_empty() {
                        matches!(
                            a.kind,
                            AnomalyKind::Spike | AnomalyKind::LevelShift | AnomalyKind::Stuck
                        )
                    } else {
                        kinds.contains(&a.kind)
                    };
                    if kind_fires
                        && a.score >= *min_score
                        && rule.selector.matches(&a.device_id, &a.device, a.metric)
                    {
                        self.fire(
                            Firing {
                                device_id: &a.device_id,
                                device: &a.device,
                                metric: a.metric,
                                rule: i,
                                ts_ms: a.ts_ms,
                                score: Some(a.score),
                                value: a.value,
                            },
                            out,
                        );
                    }
                }
            }
            Signal::Breach(b) => {
                let w = &b.window;
                for (i, rule) in config.rules.iter().enumerate() {
                    let Condition::Threshold {
                        min_breaches,
                        for_windows,
                    } = rule.when
                    else {
                        continue;
                    };
                    if w.threshold_breaches < min_breaches
                        || !rule
                            .selector
                            .matches(&w.device_id, &b.device, Some(w.metric))
                    {
                        continue;
                    }
                    let run = self
                        .runs
                        .entry((w.device_id.clone(), w.metric, i))
                        .or_insert((w.window_start_ms, 0));
                    let extends = run.1 > 0 && run.0 + self.window_ms == w.window_start_ms;
                    // A second piece of the same window (a site move) neither extends nor
                    // breaks the run.
                    let repeats = run.1 > 0 && run.0 == w.window_start_ms;
                    if extends {
                        run.1 += 1;
                    } else if !repeats {
                        run.1 = 1;
                    }
                    run.0 = w.window_start_ms;
                    if run.1 >= for_windows {
                        // The window's value furthest from its mean stands for it.
                        let mean = w.mean();
                        let value = if w.max - mean >= mean - w.min {
                            w.max
                        } else {
                            w.min
                        };
                        self.fire(
                            Firing {
                                device_id: &w.device_id,
                                device: &b.device,
                                metric: Some(w.metric),
                                rule: i,
                                ts_ms: w.window_start_ms + self.window_ms - 1,
                                score: None,
                                value: Some(value),
                            },
                            out,
                        );
                    }
                }
            }
            Signal::Clock(c) => {
                for (i, rule) in config.rules.iter().enumerate() {
                    let Condition::Clock {
                        min_faults,
                        within_ms,
                    } = rule.when
                    else {
                        continue;
                    };
                    if !rule.selector.matches(&c.device_id, &c.device, None) {
                        continue;
                    }
                    let recent = self
                        .clock_faults
                        .entry((c.device_id.clone(), i))
                        .or_default();
                    recent.push_back(c.at_ms);
                    while recent.front().is_some_and(|t| t + within_ms <= c.at_ms) {
                        recent.pop_front();
                    }
                    if recent.len() >= min_faults as usize {
                        self.fire(
                            Firing {
                                device_id: &c.device_id,
                                device: &c.device,
                                metric: None,
                                rule: i,
                                ts_ms: c.at_ms,
                                score: None,
                                // Seconds off: positive ahead, negative behind.
                                value: Some(c.offset_ms as f64 / 1000.0),
                            },
                            out,
                        );
                    }
                }
            }
            Signal::Heard(h) => {
                let key = (h.device_id.clone(), None, Cause::Silence);
                if let Some(alert) = self.open.get(&key)
                    && h.last_ts_ms >= alert.last_fired_ms
                {
                    let at = alert.last_fired_ms.max(h.window_start_ms);
                    let alert = self.open.remove(&key).expect("found above");
                    self.emit(&key, &alert, AlertEventKind::Resolved, at, out);
                }
            }
        }
    }

    fn fire(&mut self, f: Firing<'_>, out: &mut Vec<AlertEvent>) {
        let rule = &self.config.rules[f.rule];
        let key: AlertKey = (f.device_id.clone(), f.metric, rule.when.cause());
        if let Some(alert) = self.open.get_mut(&key) {
            alert.last_fired_ms = alert.last_fired_ms.max(f.ts_ms);
            if rule.severity > alert.severity {
                // A finding may date from before the alert opened; the escalation happens now.
                let at = f.ts_ms.max(alert.last_fired_ms);
                alert.severity = rule.severity;
                alert.rule.clone_from(&rule.name);
                alert.score = f.score;
                alert.value = f.value;
                let alert = alert.clone();
                self.emit(&key, &alert, AlertEventKind::Escalated, at, out);
            }
            return;
        }
        let lifecycle = &self.config.lifecycle;
        let recent = self.opened.entry(key.clone()).or_default();
        while recent
            .front()
            .is_some_and(|t| t + lifecycle.flap_window_ms <= f.ts_ms)
        {
            recent.pop_front();
        }
        let flapping = recent.len() >= lifecycle.flap_max_opens;
        recent.push_back(f.ts_ms);
        let mute = if flapping {
            Some(Mute::Flapping)
        } else {
            self.config
                .maintenance_until(f.device_id, f.device, f.metric, f.ts_ms)
                .map(Mute::Maintenance)
        };
        let alert = OpenAlert {
            alert_id: alert_id(f.device_id, f.metric, key.2, f.ts_ms),
            device: Arc::clone(f.device),
            rule: rule.name.clone(),
            severity: rule.severity,
            last_fired_ms: f.ts_ms,
            score: f.score,
            value: f.value,
            mute,
        };
        self.emit(&key, &alert, AlertEventKind::Opened, f.ts_ms, out);
        self.open.insert(key, alert);
    }

    /// Event time has reached `clock_ms` everywhere: resolves alerts whose condition has not
    /// held for the clear time, and announces alerts that outlived their maintenance window.
    pub fn tick(&mut self, clock_ms: TimeMs, out: &mut Vec<AlertEvent>) {
        let clear_ms = self.config.lifecycle.clear_after_ms;
        let mut resolved = Vec::new();
        for (key, alert) in &mut self.open {
            if key.2 != Cause::Silence && alert.last_fired_ms + clear_ms <= clock_ms {
                resolved.push(key.clone());
            } else if let Some(Mute::Maintenance(until)) = alert.mute
                && until <= clock_ms
            {
                alert.mute = None;
                let alert = alert.clone();
                push_event(key, &alert, AlertEventKind::Opened, until, out);
            }
        }
        for key in resolved {
            let alert = self.open.remove(&key).expect("listed");
            let at = alert.last_fired_ms + clear_ms;
            self.emit(&key, &alert, AlertEventKind::Resolved, at, out);
        }
        let flap_ms = self.config.lifecycle.flap_window_ms;
        self.opened
            .retain(|_, recent| recent.back().is_some_and(|t| t + flap_ms > clock_ms));
        let window_ms = self.window_ms;
        self.runs
            .retain(|_, (last, _)| *last + 2 * window_ms > clock_ms);
        let rules = &self.config.rules;
        self.clock_faults.retain(|(_, rule), recent| {
            let within_ms = match rules[*rule].when {
                Condition::Clock { within_ms, .. } => within_ms,
                _ => 0,
            };
            recent.back().is_some_and(|t| t + within_ms > clock_ms)
        });
    }

    fn emit(
        &self,
        key: &AlertKey,
        alert: &OpenAlert,
        event: AlertEventKind,
        ts_ms: TimeMs,
        out: &mut Vec<AlertEvent>,
    ) {
        if alert.mute.is_none() {
            push_event(key, alert, event, ts_ms, out);
        }
    }

    /// Open alerts (muted ones included).
    pub fn open_count(&self) -> usize {
        self.open.len()
    }
}

fn push_event(
    key: &AlertKey,
    alert: &OpenAlert,
    event: AlertEventKind,
    ts_ms: TimeMs,
    out: &mut Vec<AlertEvent>,
) {
    out.push(AlertEvent {
        id: format!("{}/{}/{ts_ms}", alert.alert_id, event.code()),
        alert_id: alert.alert_id.clone(),
        event,
        device_id: Some(key.0.clone()),
        site: alert.device.site.clone(),
        org: alert.device.org.clone(),
        building: alert.device.building.clone(),
        metric: key.1,
        rule: alert.rule.clone(),
        severity: alert.severity,
        cause: key.2,
        ts_ms,
        score: alert.score,
        value: alert.value,
        silenced_by: None,
        overdue: false,
        acknowledged_by: None,
    });
}

/// An alert's id: what it is about and when it opened, so a replay gives it the same id.
pub fn alert_id(
    subject: &str,
    metric: Option<MetricId>,
    cause: Cause,
    opened_ms: TimeMs,
) -> String {
    match metric {
        Some(m) => format!("{subject}/m{}/{}/{opened_ms}", m.0, cause.code()),
        None => format!("{subject}/{}/{opened_ms}", cause.code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::anomaly::{AnomalyScore, DeviceActivity};
    use crate::dataflow::model::{DeviceInfo, ExactSum, ThresholdBreach, WindowAggregate};

    const MINUTE: u64 = 60_000;

    fn device() -> SharedDeviceInfo {
        Arc::new(DeviceInfo {
            device_type: "thermostat".into(),
            site: "site-1".into(),
            ..DeviceInfo::default()
        })
    }

    fn anomaly(kind: AnomalyKind, ts_ms: TimeMs, score: f64) -> Signal {
        Signal::Anomaly(AnomalyScore {
            device_id: "dev-1".into(),
            device: device(),
            metric: (kind != AnomalyKind::Silence).then_some(MetricId(0)),
            ts_ms,
            value: Some(1.0),
            score,
            kind,
        })
    }

    fn breach(window: u64, breaches: u64) -> Signal {
        Signal::Breach(ThresholdBreach {
            window: WindowAggregate {
                device_id: "dev-1".into(),
                metric: MetricId(0),
                window_start_ms: window * MINUTE,
                site: "site-1".into(),
                count: 60,
                min: 0.0,
                max: 99.0,
                sum: ExactSum::default(),
                sum_squares: 0.0,
                first_ts_ms: 0,
                last_ts_ms: 0,
                threshold_breaches: breaches,
            },
            device: device(),
        })
    }

    fn book(extra: &str) -> AlertBook {
        let mut config: AlertConfig =
            toml::from_str(&format!("{}\n{extra}", super::super::rules::DEFAULT_RULES)).unwrap();
        config
            .resolve(crate::dataflow::schema::SchemaSet::embedded().catalog())
            .unwrap();
        AlertBook::new(Arc::new(config), MINUTE)
    }

    fn events(out: &[AlertEvent]) -> Vec<(AlertEventKind, &str, TimeMs)> {
        out.iter()
            .map(|e| (e.event, e.rule.as_str(), e.ts_ms))
            .collect()
    }

    #[test]
    fn an_alert_escalates_and_resolves_after_the_clear_time_without_firing() {
        let mut book = book("");
        let mut out = Vec::new();
        book.apply(
            &anomaly(AnomalyKind::Spike, 10 * MINUTE, 0.999_999_999_5),
            &mut out,
        );
        book.apply(
            &anomaly(AnomalyKind::Spike, 11 * MINUTE, 0.999_999_999_9),
            &mut out,
        );
        book.apply(
            &anomaly(AnomalyKind::LevelShift, 12 * MINUTE, 1.0),
            &mut out,
        );
        book.tick(14 * MINUTE, &mut out);
        book.tick(15 * MINUTE, &mut out);
        assert_eq!(
            events(&out),
            [
                (AlertEventKind::Opened, "reading-spike", 10 * MINUTE),
                (AlertEventKind::Escalated, "level-shift", 12 * MINUTE),
                (AlertEventKind::Resolved, "level-shift", 15 * MINUTE),
            ]
        );
        // One alert, one id prefix, and event ids that differ.
        assert!(out.iter().all(|e| e.alert_id == out[0].alert_id));
        assert_eq!(book.open_count(), 0);
    }

    fn clock(at_ms: TimeMs, offset_ms: i64) -> Signal {
        Signal::Clock(crate::dataflow::model::ClockFault {
            device_id: "dev-1".into(),
            device: device(),
            at_ms,
            offset_ms,
            direction: if offset_ms > 0 {
                crate::dataflow::model::ClockDirection::Ahead
            } else {
                crate::dataflow::model::ClockDirection::Behind
            },
        })
    }

    #[test]
    fn a_clock_alert_needs_many_faults_close_together_and_clears_after_them() {
        let mut book = book("");
        let mut out = Vec::new();
        // Nine scattered faults: a chance, not a clock.
        for i in 0..9 {
            book.apply(&clock(i * 2 * MINUTE, 900_000), &mut out);
        }
        book.tick(20 * MINUTE, &mut out);
        assert!(out.is_empty(), "{:?}", events(&out));
        // Ten within ten minutes (an hour behind, every second): the clock is wrong.
        for s in 0..10 {
            book.apply(&clock(30 * MINUTE + s * 1000, -3_600_000), &mut out);
        }
        book.tick(31 * MINUTE, &mut out);
        book.tick(34 * MINUTE, &mut out);
        assert_eq!(
            events(&out),
            [
                (AlertEventKind::Opened, "device-clock", 30 * MINUTE + 9_000),
                (
                    AlertEventKind::Resolved,
                    "device-clock",
                    33 * MINUTE + 9_000
                ),
            ]
        );
        assert_eq!(out[0].cause, Cause::Clock);
        assert_eq!(out[0].value, Some(-3_600.0));
    }

    #[test]
    fn a_flapping_alert_is_muted() {
        let mut book = book("");
        let mut out = Vec::new();
        for i in 0..6 {
            let t = i * 10 * MINUTE;
            book.apply(&anomaly(AnomalyKind::Spike, t, 0.999_999_999_5), &mut out);
            book.tick(t + 5 * MINUTE, &mut out);
        }
        let opened = out
            .iter()
            .filter(|e| e.event == AlertEventKind::Opened)
            .count();
        assert_eq!(opened, 4, "{:?}", events(&out));
    }

    #[test]
    fn maintenance_mutes_and_an_alert_that_outlives_it_is_announced() {
        let mut book = book(&format!(
            "[[maintenance]]\nmatch = {{ sites = [\"site-1\"] }}\nfrom_ms = 0\nto_ms = {}\n",
            20 * MINUTE
        ));
        let mut out = Vec::new();
        book.apply(
            &anomaly(AnomalyKind::Spike, 10 * MINUTE, 0.999_999_999_5),
            &mut out,
        );
        book.apply(
            &anomaly(AnomalyKind::Spike, 19 * MINUTE, 0.999_999_999_5),
            &mut out,
        );
        book.tick(20 * MINUTE, &mut out);
        assert_eq!(
            events(&out),
            [(AlertEventKind::Opened, "reading-spike", 20 * MINUTE)]
        );
    }

    #[test]
    fn a_sustained_threshold_rule_needs_consecutive_windows() {
        let mut book = book("");
        let mut out = Vec::new();
        book.apply(&breach(1, 40), &mut out);
        book.apply(&breach(2, 40), &mut out);
        assert_eq!(
            events(&out),
            [(AlertEventKind::Opened, "over-threshold", 2 * MINUTE - 1)]
        );
        book.apply(&breach(3, 40), &mut out);
        assert_eq!(
            events(&out)[1],
            (
                AlertEventKind::Escalated,
                "over-threshold-sustained",
                4 * MINUTE - 1
            )
        );
    }

    #[test]
    fn a_silence_alert_resolves_when_the_device_is_heard_again() {
        let mut book = book("");
        let mut out = Vec::new();
        book.apply(&anomaly(AnomalyKind::Silence, 10 * MINUTE, 1.0), &mut out);
        book.tick(30 * MINUTE, &mut out);
        assert_eq!(book.open_count(), 1, "silence does not clear by time");
        book.apply(
            &Signal::Heard(DeviceActivity {
                device_id: "dev-1".into(),
                device: device(),
                window_start_ms: 31 * MINUTE,
                first_ts_ms: 31 * MINUTE + 5_000,
                last_ts_ms: 31 * MINUTE + 59_000,
                slots: u64::MAX,
                silence_timeout_ms: 20_000,
                forget_after_ms: 3_600_000,
            }),
            &mut out,
        );
        assert_eq!(
            events(&out),
            [
                (AlertEventKind::Opened, "device-silent", 10 * MINUTE),
                (AlertEventKind::Resolved, "device-silent", 31 * MINUTE),
            ]
        );
    }

    #[test]
    fn a_rule_on_the_device_level_score_opens_one_alert_for_the_device() {
        let mut with_rule = book(
            "[[rules]]\nname = \"pump-decoupled\"\nseverity = \"major\"\n\
             when.anomaly = { min_score = 0.999, kinds = [\"multivariate\"] }\n",
        );
        let mut out = Vec::new();
        let device_level = |ts_ms: TimeMs, score: f64| {
            Signal::Anomaly(AnomalyScore {
                device_id: "dev-1".into(),
                device: device(),
                metric: None,
                ts_ms,
                value: Some(40.0),
                score,
                kind: AnomalyKind::Multivariate,
            })
        };
        // Below the rule's score: nothing; above it, one alert however many buckets follow.
        with_rule.apply(&device_level(10 * MINUTE, 0.995), &mut out);
        for bucket in 0..6 {
            with_rule.apply(
                &device_level(11 * MINUTE + bucket * 10_000, 0.9999),
                &mut out,
            );
        }
        with_rule.tick(20 * MINUTE, &mut out);
        assert_eq!(
            events(&out),
            [
                (AlertEventKind::Opened, "pump-decoupled", 11 * MINUTE),
                // The clear time after the last firing bucket.
                (
                    AlertEventKind::Resolved,
                    "pump-decoupled",
                    11 * MINUTE + 50_000 + 180_000
                ),
            ]
        );
        assert_eq!(out[0].metric, None);
        // The default rules alert on it for pumps only.
        let mut defaults = book("");
        let mut none = Vec::new();
        defaults.apply(&device_level(11 * MINUTE, 1.0), &mut none);
        assert!(none.is_empty(), "{none:?}");
        let pump = Arc::new(DeviceInfo {
            device_type: "pump".into(),
            site: "site-1".into(),
            ..DeviceInfo::default()
        });
        let Signal::Anomaly(mut on_a_pump) = device_level(11 * MINUTE, 0.996) else {
            unreachable!()
        };
        on_a_pump.device = pump;
        defaults.apply(&Signal::Anomaly(on_a_pump), &mut none);
        assert_eq!(
            events(&none),
            [(AlertEventKind::Opened, "machine-decoupled", 11 * MINUTE)]
        );
    }
}
