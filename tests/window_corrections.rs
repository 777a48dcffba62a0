//! Corrections reach open windows: a registry change known after its effective time (a device
//! recorded at the wrong building, a building recorded at the wrong site, a model's thresholds
//! set wrong) re-attributes the readings of every window still open when it becomes known, so
//! their aggregates and site rollups equal a batch computation over the corrected history.
//! Windows closed before it stay as emitted (a batch computation over the history known then).
//!
//! The registry input runs far ahead of the messages, as `run` advances it, so each correction
//! is known long after its effective time. The whole pipeline runs, as `run` builds it.

mod common;

use std::collections::BTreeMap;

use common::reference::{EMPTY_WINDOW, WindowState, fold_reading};

use iotpipe::dataflow::metadata::{
    DeviceRecord, Entity, EntityKey, MetadataHistory, ModelRecord, PlaceRecord,
};
use iotpipe::dataflow::model::{
    ClockFault, DeadLetter, DeviceId, ExactSum, MetricId, Reading, SiteRollup, Threshold,
    TimedMessage, WindowAggregate,
};
use iotpipe::dataflow::{PipelineConfig, PipelineInputs, RegistryUpdate, pipeline};
use iotpipe::io::sources::inputs::VecInput;
use proptest::prelude::*;
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::capture::Event;
use timely::dataflow::operators::{Capture, Probe};

const WINDOW_MS: u64 = 60_000;
const END_MS: u64 = 600_000;
/// Where the registry input runs: far ahead of every message.
const REGISTRY_AHEAD_MS: u64 = 1_000_000_000;
const SITES: [&str; 3] = ["north", "south", "east"];
const BUILDINGS: usize = 4;
const MODELS: [f64; 2] = [50.0, 80.0];

fn place(id: String, kind: &str, parent: Option<String>, effective_ms: u64) -> RegistryUpdate {
    let record = PlaceRecord {
        kind: kind.into(),
        parent_id: parent,
        name: id.clone(),
    };
    (
        EntityKey::Place(id),
        Some(Entity::Place(record)),
        effective_ms,
    )
}

fn building(b: usize, site: usize, effective_ms: u64) -> RegistryUpdate {
    place(
        format!("b{b}"),
        "building",
        Some(SITES[site].into()),
        effective_ms,
    )
}

fn model(m: usize, max: f64, effective_ms: u64) -> RegistryUpdate {
    let record = ModelRecord {
        device_type: "pump".into(),
        default_thresholds: vec![(MetricId(0), Threshold { min: 0.0, max })],
    };
    (
        EntityKey::Model(format!("m{m}")),
        Some(Entity::Model(record)),
        effective_ms,
    )
}

fn device(d: usize, m: usize, b: usize, effective_ms: u64) -> RegistryUpdate {
    let record = DeviceRecord {
        model_id: format!("m{m}"),
        place_id: format!("b{b}"),
        firmware: "1.0".into(),
        schema: "v1".into(),
        device_type: None,
        threshold_overrides: Vec::new(),
    };
    (
        EntityKey::Device(format!("d{d}").into()),
        Some(Entity::Device(record)),
        effective_ms,
    )
}

/// The fleet as first recorded, all from time 0: each device's model and building, each
/// building's site.
#[derive(Clone, Debug)]
struct Fleet {
    devices: Vec<(usize, usize)>,
    buildings: Vec<usize>,
}

impl Fleet {
    fn updates(&self) -> Vec<RegistryUpdate> {
        let mut updates = vec![place("acme".into(), "org", None, 0)];
        for site in SITES {
            updates.push(place(site.into(), "site", Some("acme".into()), 0));
        }
        for (b, site) in self.buildings.iter().enumerate() {
            updates.push(building(b, *site, 0));
        }
        for (m, max) in MODELS.iter().enumerate() {
            updates.push(model(m, *max, 0));
        }
        for (d, (m, b)) in self.devices.iter().enumerate() {
            updates.push(device(d, *m, *b, 0));
        }
        updates
    }
}

/// Corrections of one kind, each of a different entity, so that each device is changed through
/// at most one of its device record, building and model (the registry's entry of a device holds
/// from the latest effective time of the three; see `Version`).
#[derive(Clone, Debug)]
enum Corrections {
    /// Devices recorded in the wrong building: (device, building, effective time).
    DeviceBuilding(Vec<(usize, usize, u64)>),
    /// Buildings recorded at the wrong site: (building, site, effective time).
    BuildingSite(Vec<(usize, usize, u64)>),
    /// Models with the wrong default threshold: (model, max, effective time).
    ModelThreshold(Vec<(usize, f64, u64)>),
}

impl Corrections {
    fn updates(&self, fleet: &Fleet) -> Vec<RegistryUpdate> {
        match self {
            Corrections::DeviceBuilding(moves) => moves
                .iter()
                .map(|(d, b, at)| device(*d, fleet.devices[*d].0, *b, *at))
                .collect(),
            Corrections::BuildingSite(moves) => moves
                .iter()
                .map(|(b, site, at)| building(*b, *site, *at))
                .collect(),
            Corrections::ModelThreshold(changes) => changes
                .iter()
                .map(|(m, max, at)| model(*m, *max, *at))
                .collect(),
        }
    }
}

/// An effective time: 0 (what was recorded from the start was wrong: the correction replaces
/// it) or a window boundary.
fn effective() -> impl Strategy<Value = u64> {
    (0..END_MS / WINDOW_MS).prop_map(|k| k * WINDOW_MS)
}

fn distinct<T: Clone>(picks: Vec<(usize, T)>) -> Vec<(usize, T)> {
    let mut seen = std::collections::BTreeSet::new();
    picks.into_iter().filter(|(i, _)| seen.insert(*i)).collect()
}

fn corrections(devices: usize) -> impl Strategy<Value = Corrections> {
    prop_oneof![
        proptest::collection::vec((0..devices, 0..BUILDINGS, effective()), 1..4).prop_map(|v| {
            let picks = distinct(v.into_iter().map(|(d, b, at)| (d, (b, at))).collect());
            Corrections::DeviceBuilding(picks.into_iter().map(|(d, (b, at))| (d, b, at)).collect())
        }),
        proptest::collection::vec((0..BUILDINGS, 0..SITES.len(), effective()), 1..3).prop_map(
            |v| {
                let picks = distinct(v.into_iter().map(|(b, s, at)| (b, (s, at))).collect());
                Corrections::BuildingSite(
                    picks.into_iter().map(|(b, (s, at))| (b, s, at)).collect(),
                )
            }
        ),
        proptest::collection::vec(
            (
                0..MODELS.len(),
                prop_oneof![Just(30.0), Just(50.0), Just(80.0)],
                effective()
            ),
            1..3
        )
        .prop_map(|v| {
            let picks = distinct(v.into_iter().map(|(m, max, at)| (m, (max, at))).collect());
            Corrections::ModelThreshold(
                picks
                    .into_iter()
                    .map(|(m, (max, at))| (m, max, at))
                    .collect(),
            )
        }),
    ]
}

/// Readings of every device every 7 s. Within a (device, window) the values are all low or
/// all high, so that a threshold correction's breaches are decided by the window's minimum and
/// maximum (see `reattribute`), and the breach counts can be compared exactly too.
fn readings(devices: usize, high: &[bool]) -> Vec<(DeviceId, Reading)> {
    let mut readings = Vec::new();
    for d in 0..devices {
        let mut ts_ms = 1_000 + d as u64 * 1_300;
        while ts_ms < END_MS {
            let window = (ts_ms / WINDOW_MS) as usize;
            let is_high = high[(d * 31 + window) % high.len()];
            let value = if is_high { 90.0 } else { 10.0 } + (ts_ms % 9_000) as f64 / 1_000.0;
            let reading = Reading {
                metric: MetricId(0),
                ts_ms,
                value,
            };
            readings.push((DeviceId::from(format!("d{d}")), reading));
            ts_ms += 7_000;
        }
    }
    readings.sort_by_key(|(_, r)| r.ts_ms);
    readings
}

type Key = (String, u64, String);
/// A window's count, minimum, maximum, sum, squares, first and last times and breaches.
type Window = (u64, f64, f64, ExactSum, f64, u64, u64, u64);
/// A site's count and sum per window start.
type Sites = BTreeMap<(String, u64), (u64, ExactSum)>;

/// The batch computation: each reading attributed by the history known when its window closed
/// (the corrected one for windows open at `known_at_ms`).
fn batch(
    readings: &[(DeviceId, Reading)],
    before: &MetadataHistory,
    after: &MetadataHistory,
    known_at_ms: u64,
) -> (BTreeMap<Key, Window>, Sites) {
    let mut windows: BTreeMap<Key, WindowState> = BTreeMap::new();
    let mut sites: Sites = BTreeMap::new();
    for (device_id, r) in readings {
        let start = r.ts_ms - r.ts_ms % WINDOW_MS;
        let closed_before = start + WINDOW_MS - 1 < known_at_ms;
        let history = if closed_before { before } else { after };
        let info = history.device_at(device_id, r.ts_ms).expect("registered");
        let breach = info
            .threshold(r.metric)
            .is_some_and(|t| t.is_breached_by(r.value));
        let key = (device_id.to_string(), start, info.site.clone());
        fold_reading(
            windows.entry(key).or_insert(EMPTY_WINDOW),
            r.ts_ms,
            r.value,
            breach,
        );
        let s = sites
            .entry((info.site.clone(), start))
            .or_insert((0, ExactSum::default()));
        s.0 += 1;
        s.1.add(r.value);
    }
    let windows = windows
        .into_iter()
        .map(|(key, w)| (key, w.as_comparable()))
        .collect();
    (windows, sites)
}

type Outputs = (Vec<WindowAggregate>, Vec<SiteRollup>);

/// Runs the pipeline: the fleet from the start, the readings before `known_at_ms`, then the
/// corrections (known at the registry's time, far ahead), then the rest of the readings.
fn run(
    initial: Vec<RegistryUpdate>,
    corrections: Vec<RegistryUpdate>,
    readings: Vec<(DeviceId, Reading)>,
    known_at_ms: u64,
) -> Outputs {
    let (aggregates, rollups) = timely::execute_directly(move |worker| {
        let mut messages: VecInput<u64, TimedMessage> = VecInput::new();
        let mut dead_letters: VecInput<u64, DeadLetter> = VecInput::new();
        let mut clock_faults: VecInput<u64, ClockFault> = VecInput::new();
        let mut registry: VecInput<u64, RegistryUpdate> = VecInput::new();
        let probe = ProbeHandle::new();
        let registry_probe = ProbeHandle::new();
        let (aggregates, rollups) = worker.dataflow::<u64, _, _>(|scope| {
            let outputs = pipeline(
                PipelineInputs {
                    messages: messages.to_stream(scope),
                    dead_letters: dead_letters.to_stream(scope),
                    clock_faults: clock_faults.to_stream(scope),
                    registry: registry.to_stream(scope),
                    alert_controls: timely::dataflow::operators::ToStream::to_stream(
                        Vec::<iotpipe::dataflow::alert::AlertControl>::new(),
                        scope,
                    ),
                },
                &PipelineConfig::default(),
            );
            outputs.registry.stream.clone().probe_with(&registry_probe);
            let rollups = outputs.site_rollups.probe_with(&probe);
            (outputs.aggregates.capture(), rollups.capture())
        });
        dead_letters.close();
        clock_faults.close();
        for update in initial {
            registry.send(update);
        }
        registry.advance_to(REGISTRY_AHEAD_MS);
        let (before, after): (Vec<_>, Vec<_>) = readings
            .into_iter()
            .partition(|(_, r)| r.ts_ms < known_at_ms);
        let send = |messages: &mut VecInput<u64, TimedMessage>,
                    (device_id, r): (DeviceId, Reading)| {
            messages.advance_to(r.ts_ms.max(*messages.time()));
            messages.send(TimedMessage {
                device_id,
                ts_ms: r.ts_ms,
                watermark_ms: r.ts_ms,
                watermark_ceiling_ms: u64::MAX,
                readings: smallvec::smallvec![r],
            });
        };
        for reading in before {
            send(&mut messages, reading);
        }
        messages.advance_to(known_at_ms);
        // Every window closing before `known_at_ms` has begun to close (a close spread over
        // event time takes the corrections known as it begins, and completes once the input
        // has passed its spread): its outputs are out up to the spread, and a few more steps
        // let the window operator see the frontier.
        let spread_ms = PipelineConfig::default().window.applied_close_spread_ms();
        while probe.less_than(&known_at_ms.saturating_sub(spread_ms)) {
            worker.step();
        }
        for _ in 0..10 {
            worker.step();
        }
        for update in corrections {
            registry.send(update);
        }
        registry.advance_to(REGISTRY_AHEAD_MS + 1);
        while registry_probe.less_than(&(REGISTRY_AHEAD_MS + 1)) {
            worker.step();
        }
        for reading in after {
            send(&mut messages, reading);
        }
        messages.close();
        registry.close();
        while worker.step() {}
        (aggregates, rollups)
    });
    (data(aggregates), data(rollups))
}

fn data<D>(captured: std::sync::mpsc::Receiver<Event<u64, Vec<D>>>) -> Vec<D> {
    captured
        .try_iter()
        .flat_map(|event| match event {
            Event::Messages(_, data) => data,
            Event::Progress(_) => Vec::new(),
        })
        .collect()
}

fn check(fleet: &Fleet, corrections: &[RegistryUpdate], high: &[bool], known_at_ms: u64) {
    let initial = fleet.updates();
    let readings = readings(fleet.devices.len(), high);
    let before = MetadataHistory::new(&initial);
    let after = MetadataHistory::new(&[initial.clone(), corrections.to_vec()].concat());
    let (want_windows, want_sites) = batch(&readings, &before, &after, known_at_ms);
    let (aggregates, rollups) = run(initial, corrections.to_vec(), readings, known_at_ms);
    let got_windows: BTreeMap<Key, Window> = aggregates
        .into_iter()
        .map(|a| {
            (
                (a.device_id.to_string(), a.window_start_ms, a.site.clone()),
                WindowState::comparable(&a),
            )
        })
        .collect();
    assert_same(&got_windows, &want_windows, "window aggregates");
    let got_sites: Sites = rollups
        .into_iter()
        .map(|r| ((r.site, r.window_start_ms), (r.count, r.sum)))
        .collect();
    assert_same(&got_sites, &want_sites, "site rollups");
}

/// Fails with the entries that differ, not the whole maps.
fn assert_same<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    got: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    what: &str,
) {
    let keys: std::collections::BTreeSet<&K> = got.keys().chain(want.keys()).collect();
    let differ: Vec<(&K, Option<&V>, Option<&V>)> = keys
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| (k, got.get(k), want.get(k)))
        .collect();
    assert!(
        differ.is_empty(),
        "{what} differ (key, got, want): {differ:?}"
    );
}

fn fleet() -> impl Strategy<Value = Fleet> {
    (
        proptest::collection::vec((0..MODELS.len(), 0..BUILDINGS), 2..6),
        proptest::collection::vec(0..SITES.len(), BUILDINGS),
    )
        .prop_map(|(devices, buildings)| Fleet { devices, buildings })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn open_windows_equal_a_batch_computation_over_the_corrected_history(
        (fleet, corrections) in fleet().prop_flat_map(|f| {
            let n = f.devices.len();
            (Just(f), corrections(n))
        }),
        high in proptest::collection::vec(any::<bool>(), 1..40),
        known_at_s in 30_u64..570,
    ) {
        let updates = corrections.updates(&fleet);
        check(&fleet, &updates, &high, known_at_s * 1_000);
    }
}

/// The example: a device recorded at the wrong site since 10:00, fixed at 10:05:30.
/// The windows of 10:00 to 10:04 had closed and stay at the wrong site; the window of 10:05 was
/// open and moves whole, with the readings it already held, as does every later one.
#[test]
fn a_device_recorded_at_the_wrong_site_since_ten_is_fixed_at_five_past() {
    let ten = 10 * 3_600_000;
    let fleet = Fleet {
        devices: vec![(0, 0), (1, 1)],
        buildings: vec![0, 1, 2, 0],
    };
    let mut initial = fleet.updates();
    // Recorded: d0 moved to b1 (south) at 10:00. The truth: b2 (east).
    initial.push(device(0, 0, 1, ten));
    let correction = vec![device(0, 0, 2, ten)];
    let readings: Vec<(DeviceId, Reading)> = (0..9 * 60)
        .map(|s| {
            let r = Reading {
                metric: MetricId(0),
                ts_ms: ten - 120_000 + s * 1_000,
                value: (s % 7) as f64,
            };
            (DeviceId::from("d0"), r)
        })
        .collect();
    let known_at_ms = ten + 5 * 60_000 + 30_000;
    let before = MetadataHistory::new(&initial);
    let after = MetadataHistory::new(&[initial.clone(), correction.clone()].concat());
    let (want, _) = batch(&readings, &before, &after, known_at_ms);
    let (aggregates, _) = run(initial, correction, readings, known_at_ms);
    let mut got: Vec<(u64, String, u64)> = aggregates
        .iter()
        .map(|a| (a.window_start_ms, a.site.clone(), a.count))
        .collect();
    got.sort();
    let sites: Vec<&str> = got.iter().map(|(_, site, _)| site.as_str()).collect();
    assert_eq!(
        sites,
        [
            "north", "north", "south", "south", "south", "south", "south", "east", "east"
        ],
        "{got:?}"
    );
    assert!(got.iter().all(|(_, _, count)| *count == 60), "{got:?}");
    let want: Vec<(u64, String, u64)> = want
        .into_iter()
        .map(|((_, start, site), w)| (start, site, w.0))
        .collect();
    assert_eq!(got, want);
}
