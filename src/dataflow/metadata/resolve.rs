//! The registry as the incremental join of devices, models and the place hierarchy.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use differential_dataflow::operators::Iterate;
use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use super::{
    DeviceRecord, Entity, EntityKey, ModelRecord, PlaceRecord, RegistryUpdate, Version,
    effective_thresholds,
};
use crate::dataflow::EventStream;
use crate::dataflow::enrich::RegistryArrangement;
use crate::dataflow::model::{DeviceInfo, TimeMs};

/// Levels above a place that are followed at most: a hierarchy deeper than this (or a cycle
/// someone wrote into it) ends here instead of looping.
pub const MAX_PLACE_DEPTH: u8 = 8;

type Collection<'scope, D> = VecCollection<'scope, TimeMs, D>;

/// The names a place's readings carry: the nearest place of each level at or above it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PlacePath {
    /// The organisation.
    pub org: String,
    /// The site.
    pub site: String,
    /// The building.
    pub building: String,
}

/// Turns metadata changes into each device's registry entry.
pub trait ResolveRegistry<'scope> {
    /// Joins every device with its model and the places above it into its [`DeviceInfo`],
    /// arranged by device id. Each entity's change holds from its effective time (its timely
    /// time) on, and so does every entry it changes: a model's new default thresholds reach
    /// each device of the model, a building moved to another site moves its devices, from
    /// that time on. A device whose model or place is missing has no entry.
    ///
    /// # Examples
    ///
    /// ```
    /// use iotpipe::dataflow::metadata::{
    ///     DeviceRecord, Entity, EntityKey, ModelRecord, PlaceRecord, ResolveRegistry,
    /// };
    /// use iotpipe::dataflow::model::{MetricId, Threshold};
    /// use iotpipe::dataflow::RegistryUpdate;
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::{Capture, Input};
    ///
    /// let place = |id: &str, kind: &str, parent: Option<&str>| -> RegistryUpdate {
    ///     let record = PlaceRecord { kind: kind.into(), parent_id: parent.map(Into::into), name: id.into() };
    ///     (EntityKey::Place(id.into()), Some(Entity::Place(record)), 0)
    /// };
    /// let model = |max: f64, at| -> RegistryUpdate {
    ///     let thresholds = vec![(MetricId(0), Threshold { min: 0.0, max })];
    ///     let record = ModelRecord { device_type: "pump".into(), default_thresholds: thresholds };
    ///     (EntityKey::Model("P-1".into()), Some(Entity::Model(record)), at)
    /// };
    /// let device = DeviceRecord {
    ///     model_id: "P-1".into(),
    ///     place_id: "hall".into(),
    ///     firmware: "1.0".into(),
    ///     schema: "v1".into(),
    ///     device_type: None,
    ///     threshold_overrides: Vec::new(),
    /// };
    /// // The model's default threshold changes at 60 s: the device's entry changes with it.
    /// let entries = timely::example(move |scope| {
    ///     let (mut input, updates) = scope.new_input::<Vec<RegistryUpdate>>();
    ///     for update in [
    ///         place("acme", "org", None),
    ///         place("plant", "site", Some("acme")),
    ///         place("hall", "building", Some("plant")),
    ///         model(10.0, 0),
    ///         model(20.0, 60_000),
    ///         (EntityKey::Device("pump-7".into()), Some(Entity::Device(device)), 0),
    ///     ] {
    ///         input.send(update);
    ///     }
    ///     updates
    ///         .resolve_registry()
    ///         .as_collection(|id, version| {
    ///             let info = version.value.as_ref().unwrap();
    ///             (id.to_string(), info.site.clone(), info.thresholds[0].1.max as i64)
    ///         })
    ///         .inner
    ///         .capture()
    /// });
    /// let mut updates: Vec<_> = entries.extract().into_iter().flat_map(|(_, d)| d).collect();
    /// updates.sort_by_key(|(_, time, diff)| (*time, *diff));
    /// let plant = |max: i64| ("pump-7".to_string(), "plant".to_string(), max);
    /// assert_eq!(updates, vec![(plant(10), 0, 1), (plant(10), 60_000, -1), (plant(20), 60_000, 1)]);
    /// ```
    fn resolve_registry(self) -> RegistryArrangement<'scope>;
}

impl<'scope> ResolveRegistry<'scope> for EventStream<'scope, RegistryUpdate> {
    fn resolve_registry(self) -> RegistryArrangement<'scope> {
        // A change counts in the dataflow from when it is known (its timely time), and holds
        // from its effective time: both go into the arrangement (see `Version`).
        let known = self.unary(Pipeline, "KnowVersions", |_, _| {
            // The knowledge times each key was given, while they may still collide.
            let mut known: FxHashMap<EntityKey, Vec<TimeMs>> = FxHashMap::default();
            move |input, output| {
                input.for_each(|cap, updates| {
                    let Some(&known_ms) = cap.least() else { return };
                    known.retain(|_, times| {
                        times.retain(|t| *t >= known_ms);
                        !times.is_empty()
                    });
                    let mut session = output.session(&cap);
                    for (key, value, effective_ms) in updates.drain(..) {
                        let mut at = effective_ms.max(known_ms);
                        // Two versions of one entity at one time are both versions, the later
                        // in arrival order known a millisecond later (an upsert keeps one value
                        // per time): a correction of the same effective time wins, as in the
                        // store's history. Versions at other times keep their own.
                        let times = known.entry(key.clone()).or_default();
                        while times.contains(&at) {
                            at += 1;
                        }
                        times.push(at);
                        let version = Version {
                            effective_ms,
                            value,
                        };
                        session.give((key, Some(version), at));
                    }
                })
            }
        });
        let entities = arrange_from_upsert::<
            ValBuilder<EntityKey, Version<Entity>, TimeMs, isize>,
            ValSpine<EntityKey, Version<Entity>, TimeMs, isize>,
            EntityKey,
            Version<Entity>,
        >(known, "ArrangeMetadata")
        .as_collection(|key, version| (key.clone(), version.clone()));
        let places = entities
            .clone()
            .flat_map(|(key, version)| match (key, version) {
                (EntityKey::Place(id), v) => Some((
                    id,
                    v.map(|e| match e {
                        Entity::Place(place) => Some(place),
                        _ => None,
                    }),
                )),
                _ => None,
            });
        let models = entities.clone().flat_map(|(key, version)| match key {
            EntityKey::Model(id) => Some((
                id,
                version.map(|e| match e {
                    Entity::Model(model) => Some(model),
                    _ => None,
                }),
            )),
            _ => None,
        });
        let devices = entities.flat_map(|(key, version)| match key {
            EntityKey::Device(id) => Some((
                id,
                version.map(|e| match e {
                    Entity::Device(device) => Some(device),
                    _ => None,
                }),
            )),
            _ => None,
        });
        // A removed device is out from its removal on, whatever its model and place.
        let removed = devices.clone().flat_map(|(id, version)| {
            version.value.is_none().then_some((
                id,
                Version {
                    effective_ms: version.effective_ms,
                    value: None,
                },
            ))
        });
        let paths = place_paths(places).arrange_by_key_named("ArrangePlacePaths");
        devices
            .flat_map(|(id, version)| {
                let device = version.value?;
                Some((device.model_id.clone(), (id, version.effective_ms, device)))
            })
            .arrange_by_key_named("ArrangeDevicesByModel")
            .join_core(
                models.arrange_by_key_named("ArrangeModels"),
                |_, (id, effective_ms, device), model: &Version<ModelRecord>| {
                    Some((
                        device.place_id.clone(),
                        (
                            id.clone(),
                            (*effective_ms).max(model.effective_ms),
                            device.clone(),
                            model.value.clone(),
                        ),
                    ))
                },
            )
            .arrange_by_key_named("ArrangeDevicesByPlace")
            .join_core(
                paths,
                |_, (id, effective_ms, device, model), path: &Version<PlacePath>| {
                    let info = match (model, &path.value) {
                        (Some(model), Some(path)) => {
                            Some(Arc::new(device_info(device, model, path)))
                        }
                        _ => None,
                    };
                    Some((
                        id.clone(),
                        Version {
                            effective_ms: (*effective_ms).max(path.effective_ms),
                            value: info,
                        },
                    ))
                },
            )
            .concat(removed)
            .arrange_by_key_named("ArrangeRegistry")
    }
}

/// A device's entry: its record, its model's type and thresholds under its own, its places.
pub(super) fn device_info(
    device: &DeviceRecord,
    model: &ModelRecord,
    path: &PlacePath,
) -> DeviceInfo {
    DeviceInfo {
        device_type: device
            .device_type
            .clone()
            .unwrap_or_else(|| model.device_type.clone()),
        firmware: device.firmware.clone(),
        schema: device.schema.clone(),
        org: path.org.clone(),
        site: path.site.clone(),
        building: path.building.clone(),
        model: device.model_id.clone(),
        thresholds: effective_thresholds(&model.default_thresholds, &device.threshold_overrides),
    }
}

/// Each place's path: the place and those above it, followed through `parent_id` (an
/// iteration, so any number of levels up to [`MAX_PLACE_DEPTH`]), the nearest of each level
/// naming it. A path holds from the latest effective time of the places on it; a removed
/// place has no path from its removal on.
fn place_paths<'scope>(
    places: Collection<'scope, (String, Version<PlaceRecord>)>,
) -> Collection<'scope, (String, Version<PlacePath>)> {
    // (parent, child), and (place, (distance up, effective time, level and name)); a removed
    // place is a level without a name, and links to nothing above.
    let children = places.clone().flat_map(|(id, version)| {
        let parent = version.value?.parent_id?;
        Some((parent, id))
    });
    let own = places.map(|(id, version)| {
        let level = version.value.map(|place| (place.kind, place.name));
        (id, (0_u8, version.effective_ms, level))
    });
    let levels = own.clone().iterate(|scope, above| {
        let children = children.enter(scope);
        let own = own.enter(scope);
        children
            .join_map(above, |_, child, (depth, effective_ms, level)| {
                (child.clone(), (depth + 1, *effective_ms, level.clone()))
            })
            .filter(|(_, (depth, _, _))| *depth <= MAX_PLACE_DEPTH)
            .concat(own)
            .distinct()
    });
    levels.reduce_named("PlacePaths", |_, levels, paths| {
        let effective_ms = levels.iter().map(|((_, t, _), _)| *t).max().unwrap_or(0);
        // Sorted by distance: the place itself first.
        let removed = levels
            .first()
            .is_some_and(|((depth, _, level), _)| *depth == 0 && level.is_none());
        if removed {
            paths.push((
                Version {
                    effective_ms,
                    value: None,
                },
                1,
            ));
            return;
        }
        let mut path = PlacePath::default();
        // The farthest first, so the nearest of each level names it.
        for ((_, _, level), _) in levels.iter().rev() {
            let Some((kind, name)) = level else { continue };
            match kind.as_str() {
                "org" => path.org.clone_from(name),
                "site" => path.site.clone_from(name),
                "building" => path.building.clone_from(name),
                _ => {}
            }
        }
        paths.push((
            Version {
                effective_ms,
                value: Some(path),
            },
            1,
        ));
    })
}
