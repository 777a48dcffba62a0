//! A simulated device fleet: the workload's three firmware variants, with bad, late and
//! future-stamped messages and injected faults (spikes, level shifts, stuck values, silence, as
//! the workload generator injects them), generated deterministically from a seed.
//!
//! `demo` drives it from the wall clock; tests and `replay` users drive it from a virtual clock
//! and write it to a file. Each message comes out at its *arrival* time, which trails its event
//! time by a network delay, so event times are out of order as in the field.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde_json::{Value, json};

use crate::dataflow::schema::format_rfc3339_ms;

/// What to simulate.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetConfig {
    /// Number of devices (`dev-000000` ...).
    pub devices: usize,
    /// Messages per second per device.
    pub rate_per_device: f64,
    /// Seed: the same seed gives the same fleet and the same messages.
    pub seed: u64,
    /// Event time of the first message, epoch ms.
    pub start_ms: u64,
    /// Share of messages made bad (invalid JSON, missing id, wrong types, impossible values,
    /// unknown devices).
    pub bad_rate: f64,
    /// Share of messages delayed by `delayed_ms` (with the defaults, mostly still on time).
    pub delayed_rate: f64,
    /// Range of the delay of delayed messages, ms.
    pub delayed_ms: (u64, u64),
    /// Share of messages delayed 2-5 minutes (late).
    pub late_rate: f64,
    /// Share of messages stamped 15 minutes ahead (a device with a wrong clock).
    pub future_rate: f64,
    /// Share of devices with an injected fault on one metric (or silence).
    pub fault_share: f64,
    /// When faults start, ms after `start_ms` (uniform in the range).
    pub fault_start_ms: (u64, u64),
    /// How long faults last, ms (uniform in the range).
    pub fault_duration_ms: (u64, u64),
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            devices: 2_000,
            rate_per_device: 1.0,
            seed: 42,
            start_ms: 1_704_067_200_000,
            bad_rate: 0.005,
            delayed_rate: 0.01,
            delayed_ms: (5_000, 30_000),
            late_rate: 0.001,
            future_rate: 0.0002,
            fault_share: 0.01,
            fault_start_ms: (180_000, 600_000),
            fault_duration_ms: (60_000, 240_000),
        }
    }
}

/// SplitMix64: small, fast and good enough for a simulation.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
    fn gauss(&mut self) -> f64 {
        // Box-Muller; one value per call keeps the state simple.
        let u = self.unit().max(f64::MIN_POSITIVE);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// (metric, v1 short name, unit, base range, noise, amplitude, threshold)
type MetricSpec = (
    &'static str,
    &'static str,
    &'static str,
    (f64, f64),
    f64,
    f64,
    (f64, f64),
);

const TYPES: [(&str, f64, &[MetricSpec], &[&str]); 4] = [
    (
        "thermostat",
        0.40,
        &[
            (
                "temperature",
                "temp",
                "C",
                (19.0, 23.0),
                0.08,
                0.6,
                (16.0, 27.0),
            ),
            ("humidity", "hum", "%", (35.0, 55.0), 0.4, 2.0, (20.0, 70.0)),
        ],
        &["TH-100", "TH-200", "NestLike-3"],
    ),
    (
        "power_meter",
        0.25,
        &[
            (
                "voltage",
                "v",
                "V",
                (228.0, 232.0),
                0.6,
                1.5,
                (215.0, 245.0),
            ),
            ("current", "i", "A", (2.0, 15.0), 0.25, 1.5, (0.0, 25.0)),
            (
                "power",
                "p",
                "W",
                (500.0, 3000.0),
                20.0,
                200.0,
                (0.0, 5500.0),
            ),
        ],
        &["PM-3P", "PM-1P", "EM-540"],
    ),
    (
        "vibration",
        0.20,
        &[
            (
                "vibration_rms",
                "rms",
                "mm/s",
                (1.0, 4.0),
                0.15,
                0.4,
                (0.0, 7.1),
            ),
            (
                "vibration_peak",
                "pk",
                "mm/s",
                (3.0, 11.0),
                0.3,
                1.0,
                (0.0, 22.0),
            ),
            (
                "temperature",
                "t",
                "C",
                (35.0, 55.0),
                0.08,
                0.6,
                (-10.0, 70.0),
            ),
        ],
        &["VB-10", "VB-20X"],
    ),
    (
        "air_quality",
        0.15,
        &[
            ("pm25", "pm25", "ug/m3", (5.0, 20.0), 1.0, 3.0, (0.0, 35.0)),
            (
                "co2",
                "co2",
                "ppm",
                (450.0, 850.0),
                8.0,
                60.0,
                (350.0, 1200.0),
            ),
        ],
        &["AQ-5", "AQ-Pro"],
    ),
];

/// Physically impossible values (outside the catalog's ranges).
fn impossible(metric: &str) -> f64 {
    match metric {
        "temperature" => 999.0,
        "humidity" => 250.0,
        "voltage" => 10_000.0,
        "co2" => 50_000.0,
        _ => -5.0,
    }
}

/// The kinds of fault the fleet injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// About one reading in twenty jumps far off.
    Spike,
    /// The level moves by 60% (at least 8 units) for the duration.
    LevelShift,
    /// The sensor repeats one value.
    Stuck,
    /// The device sends nothing.
    Silent,
}

impl FaultKind {
    /// The code the workload manifest and iotpipe's anomaly kinds use.
    pub fn code(self) -> &'static str {
        match self {
            Self::Spike => "spike",
            Self::LevelShift => "level_shift",
            Self::Stuck => "stuck",
            Self::Silent => "silence",
        }
    }
}

/// A fault injected into one device (the fleet's manifest entry).
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// The device.
    pub device_id: String,
    /// What goes wrong.
    pub kind: FaultKind,
    /// The metric it goes wrong on (every metric for silence).
    pub metric: &'static str,
    /// Event time the fault starts.
    pub start_ms: u64,
    /// Event time it ends (exclusive).
    pub end_ms: u64,
}

#[derive(Clone, Debug)]
struct Device {
    /// Index in the whole fleet.
    index: usize,
    id: String,
    type_index: usize,
    variant: u8,
    batch: usize,
    site: String,
    org: String,
    building: String,
    model: String,
    thresholds: Vec<(f64, f64)>,
    /// Per metric: base, period (s), phase.
    signal: Vec<(f64, f64, f64)>,
    next_send_ms: f64,
    /// The injected fault: kind, metric index, start, end.
    fault: Option<(FaultKind, usize, u64, u64)>,
}

/// One message of the simulated fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetMessage {
    /// When it arrives, epoch ms.
    pub arrival_ms: u64,
    /// The sending device's index in the whole fleet (its id is [`device_id`] of it).
    pub device: usize,
    /// The message as the device sent it.
    pub line: String,
}

/// The id of the fleet's device `index`.
pub fn device_id(index: usize) -> String {
    format!("dev-{index:06}")
}

/// The simulated fleet (or one worker's share of it).
#[derive(Debug)]
pub struct Fleet {
    config: FleetConfig,
    devices: Vec<Device>,
    rng: Rng,
    in_flight: BinaryHeap<Reverse<(u64, u64, usize, String)>>,
    sequence: u64,
    period_ms: f64,
}

impl Fleet {
    /// The whole fleet.
    pub fn new(config: FleetConfig) -> Self {
        Self::share(config, 0, 1)
    }

    /// The devices `i` with `i % shares == share`, so workers can each simulate a part; the
    /// devices are the same as in the whole fleet, their messages are drawn per share.
    pub fn share(config: FleetConfig, share: usize, shares: usize) -> Self {
        let mut rng = Rng(config.seed);
        let period_ms = 1000.0 / config.rate_per_device;
        let n_sites = (config.devices / 50).max(1);
        let n_orgs = (config.devices / 500).max(1);
        let mut devices = Vec::new();
        // Faults draw from their own stream, so the fleet is the same with or without them.
        let mut fault_rng = Rng(config.seed ^ 0x5EED_FA17);
        for i in 0..config.devices {
            let r = rng.unit();
            let mut acc = 0.0;
            let type_index = TYPES
                .iter()
                .position(|(_, w, _, _)| {
                    acc += w;
                    r < acc
                })
                .unwrap_or(TYPES.len() - 1);
            let (_, _, metrics, models) = TYPES[type_index];
            let v = rng.unit();
            let variant = if v < 0.4 {
                1
            } else if v < 0.8 {
                2
            } else {
                3
            };
            let site = rng.below(n_sites);
            let mut thresholds = Vec::new();
            let mut signal = Vec::new();
            for &(_, _, _, base, _, _, (lo, hi)) in metrics {
                let f = rng.range(0.97, 1.03);
                thresholds.push((
                    (lo * f * 10.0).round() / 10.0,
                    (hi * f * 10.0).round() / 10.0,
                ));
                signal.push((
                    rng.range(base.0, base.1),
                    rng.range(60.0, 900.0),
                    rng.range(0.0, 6.3),
                ));
            }
            let device = Device {
                index: i,
                id: device_id(i),
                type_index,
                variant,
                batch: 2 + rng.below(4),
                site: format!("site-{site:04}"),
                org: format!("org-{:03}", site % n_orgs),
                building: format!("B{}", 1 + rng.below(4)),
                model: models[rng.below(models.len())].to_string(),
                thresholds,
                signal,
                next_send_ms: config.start_ms as f64 + rng.unit() * period_ms,
                fault: (fault_rng.unit() < config.fault_share).then(|| {
                    let kinds = [
                        FaultKind::Spike,
                        FaultKind::LevelShift,
                        FaultKind::Stuck,
                        FaultKind::Silent,
                    ];
                    let kind = kinds[fault_rng.below(kinds.len())];
                    let metric = fault_rng.below(metrics.len());
                    let (s0, s1) = config.fault_start_ms;
                    let (d0, d1) = config.fault_duration_ms;
                    let start = config.start_ms + fault_rng.range(s0 as f64, s1 as f64) as u64;
                    let end = start + fault_rng.range(d0 as f64, d1 as f64) as u64;
                    (kind, metric, start, end)
                }),
            };
            if i % shares == share {
                devices.push(device);
            }
        }
        let rng = Rng(config.seed ^ (share as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        Self {
            config,
            devices,
            rng,
            in_flight: BinaryHeap::new(),
            sequence: 0,
            period_ms,
        }
    }

    /// The faults injected into this share's devices.
    pub fn faults(&self) -> Vec<Fault> {
        self.devices
            .iter()
            .filter_map(|d| {
                let (kind, metric, start_ms, end_ms) = d.fault?;
                Some(Fault {
                    device_id: d.id.clone(),
                    kind,
                    metric: TYPES[d.type_index].2[metric].0,
                    start_ms,
                    end_ms,
                })
            })
            .collect()
    }

    /// Number of devices simulated here.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// The registry of this share's devices, one JSON object a line (the workload's format).
    pub fn registry_lines(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|d| {
                let (device_type, _, metrics, _) = TYPES[d.type_index];
                let thresholds: serde_json::Map<String, Value> = metrics
                    .iter()
                    .zip(&d.thresholds)
                    .map(|(m, (lo, hi))| (m.0.to_string(), json!({"min": lo, "max": hi})))
                    .collect();
                json!({
                    "device_id": d.id, "device_type": device_type,
                    "firmware": format!("{}.0.0", d.variant),
                    "schema": format!("v{}", d.variant), "org": d.org, "site": d.site,
                    "building": d.building, "model": d.model, "thresholds": thresholds,
                })
                .to_string()
            })
            .collect()
    }

    /// Appends every message that arrives before `until_ms` (event clock), in arrival order,
    /// as `(arrival_ms, line)`.
    pub fn advance_to(&mut self, until_ms: u64, out: &mut Vec<(u64, String)>) {
        let mut messages = Vec::new();
        self.advance_messages_to(until_ms, &mut messages);
        out.extend(messages.into_iter().map(|m| (m.arrival_ms, m.line)));
    }

    /// Appends every message that arrives before `until_ms` (event clock), in arrival order,
    /// with the device that sent it (which a bad message's payload may not name).
    pub fn advance_messages_to(&mut self, until_ms: u64, out: &mut Vec<FleetMessage>) {
        // Messages are sent up to `until_ms`; none arrives before it is sent.
        for d in 0..self.devices.len() {
            while self.devices[d].next_send_ms < until_ms as f64 {
                let send_ms = self.devices[d].next_send_ms as u64;
                self.devices[d].next_send_ms += self.period_ms;
                if let Some((FaultKind::Silent, _, start, end)) = self.devices[d].fault
                    && (start..end).contains(&send_ms)
                {
                    continue;
                }
                let line = self.message(d, send_ms);
                let delay = self.delay_ms();
                self.sequence += 1;
                self.in_flight
                    .push(Reverse((send_ms + delay, self.sequence, d, line)));
            }
        }
        while let Some(Reverse((arrival, _, _, _))) = self.in_flight.peek() {
            if *arrival >= until_ms {
                break;
            }
            let Reverse((arrival_ms, _, d, line)) = self.in_flight.pop().expect("peeked");
            out.push(FleetMessage {
                arrival_ms,
                device: self.devices[d].index,
                line,
            });
        }
    }

    fn delay_ms(&mut self) -> u64 {
        let r = self.rng.unit();
        if r < self.config.late_rate {
            self.rng.range(120_000.0, 300_000.0) as u64
        } else if r < self.config.late_rate + self.config.delayed_rate {
            self.rng.range(
                self.config.delayed_ms.0 as f64,
                self.config.delayed_ms.1 as f64,
            ) as u64
        } else {
            self.rng.range(0.0, 2_000.0) as u64
        }
    }

    fn values(&mut self, d: usize, ts_ms: u64) -> Vec<f64> {
        let (_, _, metrics, _) = TYPES[self.devices[d].type_index];
        let start_ms = self.config.start_ms as f64;
        let signal = |t_ms: u64, (base, period, phase): (f64, f64, f64), amplitude: f64| {
            let t_s = (t_ms as f64 - start_ms) / 1000.0;
            base + amplitude * (std::f64::consts::TAU * t_s / period + phase).sin()
        };
        let fault = self.devices[d]
            .fault
            .filter(|(_, _, start, end)| (*start..*end).contains(&ts_ms));
        metrics
            .iter()
            .zip(self.devices[d].signal.clone())
            .enumerate()
            .map(|(i, (m, s))| {
                let mut v = signal(ts_ms, s, m.5) + m.4 * self.rng.gauss();
                match fault {
                    Some((FaultKind::Spike, f, _, _)) if f == i && self.rng.unit() < 0.05 => {
                        v = if m.0 == "temperature" {
                            v + 30.0
                        } else {
                            v * 2.5 + 10.0
                        };
                    }
                    Some((FaultKind::LevelShift, f, _, _)) if f == i => {
                        v += (v.abs() * 0.6).max(8.0);
                    }
                    Some((FaultKind::Stuck, f, start, _)) if f == i => v = signal(start, s, m.5),
                    _ => {}
                }
                let v = match m.0 {
                    "temperature" => v,
                    "humidity" => v.clamp(0.0, 100.0),
                    _ => v.max(0.0),
                };
                (v * 100.0).round() / 100.0
            })
            .collect()
    }

    fn message(&mut self, d: usize, send_ms: u64) -> String {
        let future = self.rng.unit() < self.config.future_rate;
        let stamp_ms = if future {
            send_ms + 15 * 60_000
        } else {
            send_ms
        };
        let device = self.devices[d].clone();
        let (_, _, metrics, _) = TYPES[device.type_index];
        let mut message = match device.variant {
            1 => {
                let mut m = serde_json::Map::new();
                m.insert("device_id".into(), json!(device.id));
                m.insert("ts".into(), json!(stamp_ms));
                for (spec, v) in metrics.iter().zip(self.values(d, send_ms)) {
                    m.insert(spec.1.into(), json!(v));
                }
                Value::Object(m)
            }
            2 => {
                let values = self.values(d, send_ms);
                json!({"id": device.id, "time": format_rfc3339_ms(stamp_ms), "fw": "2.0.0",
                       "metrics": nested(metrics, &values, false)})
            }
            _ => {
                let step = self.period_ms / device.batch as f64;
                let batch: Vec<Value> = (0..device.batch)
                    .map(|j| {
                        let t = stamp_ms - ((device.batch - 1 - j) as f64 * step) as u64;
                        let values = self.values(d, t.min(send_ms));
                        json!({"time": format_rfc3339_ms(t), "metrics": nested(metrics, &values, true)})
                    })
                    .collect();
                json!({"id": device.id, "time": format_rfc3339_ms(stamp_ms), "fw": "3.0.0", "batch": batch})
            }
        };
        if self.rng.unit() < self.config.bad_rate {
            return self.spoil(&mut message, device.variant, metrics);
        }
        message.to_string()
    }

    /// Makes a message bad in one of the ways devices do.
    fn spoil(&mut self, message: &mut Value, variant: u8, metrics: &[MetricSpec]) -> String {
        let id_key = if variant == 1 { "device_id" } else { "id" };
        let metric = metrics[self.rng.below(metrics.len())];
        let object = message.as_object_mut().expect("messages are objects");
        let holder: Option<&mut Value> = match variant {
            1 => object.get_mut(metric.1),
            2 => object
                .get_mut("metrics")
                .and_then(|m| m.get_mut(metric.0))
                .and_then(|m| m.get_mut("value")),
            _ => object
                .get_mut("batch")
                .and_then(|b| b.get_mut(0))
                .and_then(|e| e.get_mut("metrics"))
                .and_then(|m| m.get_mut(metric.0))
                .and_then(|m| m.get_mut("value")),
        };
        match self.rng.below(6) {
            0 => {
                let line = message.to_string();
                let cut = 10 + self.rng.below(line.len() - 12);
                return line[..cut].to_string();
            }
            1 => {
                object.remove(id_key);
            }
            2 => {
                let bad = [
                    json!("ERR"),
                    json!(true),
                    json!(null),
                    json!({"raw": 1}),
                    json!("21.5"),
                ];
                if let Some(h) = holder {
                    *h = bad[self.rng.below(bad.len())].clone();
                }
            }
            3 => {
                let ts_key = if variant == 1 { "ts" } else { "time" };
                let bad = if variant == 1 {
                    json!("2024-01-01T00:00:00.000Z")
                } else {
                    json!("yesterday")
                };
                object.insert(ts_key.into(), bad);
            }
            4 => {
                if let Some(h) = holder {
                    *h = json!(impossible(metric.0));
                }
            }
            _ => {
                let unknown = self.config.devices + self.rng.below(900_000);
                object.insert(id_key.into(), json!(format!("dev-{unknown:06}")));
            }
        }
        message.to_string()
    }
}

fn nested(metrics: &[MetricSpec], values: &[f64], fahrenheit: bool) -> Value {
    let entries: serde_json::Map<String, Value> = metrics
        .iter()
        .zip(values)
        .map(|(m, &v)| {
            let (value, unit) = if fahrenheit && m.0 == "temperature" {
                (((v * 1.8 + 32.0) * 100.0).round() / 100.0, "F")
            } else {
                (v, m.2)
            };
            (m.0.to_string(), json!({"value": value, "unit": unit}))
        })
        .collect();
    Value::Object(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::schema::SchemaSet;

    #[test]
    fn the_fleet_speaks_every_variant_and_arrives_in_order() {
        let mut fleet = Fleet::new(FleetConfig {
            devices: 200,
            bad_rate: 0.05,
            ..FleetConfig::default()
        });
        let mut out = Vec::new();
        fleet.advance_to(1_704_067_200_000 + 60_000, &mut out);
        assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
        let schemas = SchemaSet::embedded();
        let (mut good, mut bad) = (0, 0);
        for (_, line) in &out {
            match schemas.decode(line.as_bytes()) {
                Ok(_) => good += 1,
                Err(_) => bad += 1,
            }
        }
        assert!(out.iter().any(|(_, l)| l.contains("\"batch\"")));
        assert!(
            out.iter()
                .any(|(_, l)| l.contains("\"metrics\"") && !l.contains("\"batch\""))
        );
        assert!(out.iter().any(|(_, l)| l.contains("\"ts\"")));
        assert!(good > 10_000 && bad > 100, "good {good} bad {bad}");
    }

    #[test]
    fn shares_partition_the_same_fleet() {
        let config = FleetConfig {
            devices: 10,
            ..FleetConfig::default()
        };
        let whole = Fleet::new(config.clone()).registry_lines();
        let mut parts: Vec<String> = (0..3)
            .flat_map(|s| Fleet::share(config.clone(), s, 3).registry_lines())
            .collect();
        parts.sort();
        let mut whole_sorted = whole.clone();
        whole_sorted.sort();
        assert_eq!(parts, whole_sorted);
    }
}
