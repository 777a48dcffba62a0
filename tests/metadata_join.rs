//! Reference test of the registry join: for any history of places, models and devices, fed to
//! a running dataflow a few changes at a time, each device's resolved entry at every time
//! equals a plain lookup over the entities in force then.

use std::collections::BTreeMap;
use std::sync::Arc;

use iotpipe::dataflow::RegistryUpdate;
use iotpipe::dataflow::metadata::{
    DeviceRecord, Entity, EntityKey, MAX_PLACE_DEPTH, ModelRecord, PlaceRecord, ResolveRegistry,
    Version, effective_thresholds,
};
use iotpipe::dataflow::model::{DeviceInfo, MetricId, Threshold};
use iotpipe::io::sources::inputs::VecInput;
use proptest::prelude::*;
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::capture::Event;
use timely::dataflow::operators::{Capture, Probe};

const KINDS: [&str; 4] = ["org", "site", "building", "zone"];

/// One generated change: which entity, its new state (none: removed), and when.
fn change() -> impl Strategy<Value = RegistryUpdate> {
    let time = (0_u64..12).prop_map(|t| t * 1_000);
    let place = (0_u8..6, 0_usize..4, proptest::option::of(0_u8..6), 0_u8..3).prop_map(
        |(id, kind, parent, name)| {
            let record = PlaceRecord {
                kind: KINDS[kind].into(),
                parent_id: parent.map(|p| format!("p{p}")),
                name: format!("{}-{name}", KINDS[kind]),
            };
            (EntityKey::Place(format!("p{id}")), Entity::Place(record))
        },
    );
    let model = (
        0_u8..3,
        0_u8..2,
        proptest::collection::vec((0_u16..3, 0_u8..4), 0..3),
    )
        .prop_map(|(id, kind, thresholds)| {
            let record = ModelRecord {
                device_type: format!("type-{kind}"),
                default_thresholds: thresholds_of(thresholds),
            };
            (EntityKey::Model(format!("m{id}")), Entity::Model(record))
        });
    let device = (
        0_u8..5,
        0_u8..4,
        0_u8..6,
        proptest::option::of(0_u8..2),
        proptest::collection::vec((0_u16..3, 0_u8..4), 0..3),
    )
        .prop_map(|(id, model, place, kind, thresholds)| {
            let record = DeviceRecord {
                model_id: format!("m{model}"),
                place_id: format!("p{place}"),
                firmware: "1.0".into(),
                schema: "v1".into(),
                device_type: kind.map(|k| format!("own-{k}")),
                threshold_overrides: thresholds_of(thresholds),
            };
            (
                EntityKey::Device(format!("d{id}").into()),
                Entity::Device(record),
            )
        });
    let entity = prop_oneof![place, model, device];
    // About one change in seven removes its entity.
    (entity, proptest::bool::weighted(0.15), time)
        .prop_map(|((key, entity), removed, time)| (key, (!removed).then_some(entity), time))
}

fn thresholds_of(pairs: Vec<(u16, u8)>) -> Vec<(MetricId, Threshold)> {
    let mut thresholds: BTreeMap<MetricId, Threshold> = BTreeMap::new();
    for (metric, max) in pairs {
        thresholds.insert(
            MetricId(metric),
            Threshold {
                min: 0.0,
                max: f64::from(max),
            },
        );
    }
    thresholds.into_iter().collect()
}

/// The batch computation: each entity's state at `t`, then each device's entry by lookups.
fn expected_at(changes: &[RegistryUpdate], t: u64) -> BTreeMap<String, DeviceInfo> {
    let mut state: BTreeMap<EntityKey, Entity> = BTreeMap::new();
    for (key, value, _) in changes.iter().filter(|(_, _, time)| *time <= t) {
        match value {
            Some(entity) => state.insert(key.clone(), entity.clone()),
            None => state.remove(key),
        };
    }
    let place = |id: &str| match state.get(&EntityKey::Place(id.into())) {
        Some(Entity::Place(place)) => Some(place),
        _ => None,
    };
    let mut entries = BTreeMap::new();
    for (key, entity) in &state {
        let (EntityKey::Device(id), Entity::Device(device)) = (key, entity) else {
            continue;
        };
        let Some(Entity::Model(model)) = state.get(&EntityKey::Model(device.model_id.clone()))
        else {
            continue;
        };
        if place(&device.place_id).is_none() {
            continue;
        }
        // Walk up to MAX_PLACE_DEPTH levels; the nearest place of each kind names it. A
        // cycle meets places again further up, which never name a level already named.
        let mut names: BTreeMap<&str, String> = BTreeMap::new();
        let mut at = Some(device.place_id.clone());
        for _ in 0..=MAX_PLACE_DEPTH {
            let Some(current) = at.as_deref().and_then(place) else {
                break;
            };
            names
                .entry(current.kind.as_str())
                .or_insert_with(|| current.name.clone());
            at = current.parent_id.clone();
        }
        let name = |kind: &str| names.get(kind).cloned().unwrap_or_default();
        entries.insert(
            id.to_string(),
            DeviceInfo {
                device_type: device
                    .device_type
                    .clone()
                    .unwrap_or_else(|| model.device_type.clone()),
                firmware: device.firmware.clone(),
                schema: device.schema.clone(),
                org: name("org"),
                site: name("site"),
                building: name("building"),
                model: device.model_id.clone(),
                thresholds: effective_thresholds(
                    &model.default_thresholds,
                    &device.threshold_overrides,
                ),
            },
        );
    }
    entries
}

/// Feeds `changes` (sorted by time) in `chunks` rounds, advancing the input between them, and
/// returns every update of the resolved registry.
/// An update of the resolved registry: a device's version, its time and diff.
type Resolved = ((String, Version<Arc<DeviceInfo>>), u64, isize);

fn resolved(changes: &[RegistryUpdate], chunks: usize) -> Vec<Resolved> {
    let changes = changes.to_vec();
    timely::execute_directly(move |worker| {
        let mut input: VecInput<u64, RegistryUpdate> = VecInput::new();
        let probe = ProbeHandle::new();
        let captured = worker.dataflow::<u64, _, _>(|scope| {
            input
                .to_stream(scope)
                .resolve_registry()
                .as_collection(|id, info| (id.to_string(), info.clone()))
                .inner
                .probe_with(&probe)
                .capture()
        });
        let size = changes.len().div_ceil(chunks.max(1)).max(1);
        for chunk in changes.chunks(size) {
            for change in chunk {
                input.send(change.clone());
            }
            let next = chunk.last().map_or(0, |(_, _, t)| *t);
            input.advance_to(next);
            while probe.less_than(&next) {
                worker.step();
            }
        }
        drop(input);
        while !probe.done() {
            worker.step();
        }
        captured
            .try_iter()
            .flat_map(|event| match event {
                Event::Messages(_, updates) => updates,
                Event::Progress(_) => Vec::new(),
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn resolved_entries_equal_lookups_over_the_history(
        changes in proptest::collection::vec(change(), 1..40),
        chunks in 1_usize..5,
    ) {
        // One change per entity and time: two at once have no order to follow.
        let mut by_key_time: BTreeMap<(u64, EntityKey), Option<Entity>> = BTreeMap::new();
        for (key, value, time) in changes {
            by_key_time.insert((time, key), value);
        }
        let changes: Vec<RegistryUpdate> = by_key_time
            .into_iter()
            .map(|((time, key), value)| (key, value, time))
            .collect();
        let updates = resolved(&changes, chunks);
        for t in (0..12).map(|t| t * 1_000) {
            let mut counts: BTreeMap<(String, Version<Arc<DeviceInfo>>), isize> = BTreeMap::new();
            for (entry, _, diff) in updates.iter().filter(|(_, time, _)| *time <= t) {
                *counts.entry(entry.clone()).or_default() += diff;
            }
            counts.retain(|_, count| *count != 0);
            prop_assert!(counts.values().all(|count| *count == 1), "{counts:?}");
            // One version per device; a removed one is not registered.
            let devices: Vec<&String> = counts.keys().map(|(id, _)| id).collect();
            prop_assert!(devices.windows(2).all(|w| w[0] != w[1]), "{counts:?}");
            let got: BTreeMap<String, DeviceInfo> = counts
                .into_keys()
                .filter_map(|(id, version)| Some((id, (*version.value?).clone())))
                .collect();
            prop_assert_eq!(got, expected_at(&changes, t), "at {} ms", t);
        }
    }
}
