//! The metadata the dataflow enriches with: places, equipment models and devices, each an
//! entity that changes over event time.
//!
//! The metadata store keeps them apart (a device names its model and its place; a place names
//! the place above it), and so does the dataflow: a change of a model's default thresholds or
//! of a building's site is one update, and [`ResolveRegistry`] turns the three into each
//! device's [`DeviceInfo`](crate::dataflow::model::DeviceInfo) by an incremental join, so the change reaches every device it
//! concerns from its effective time on.
//!
//! A registry line of the JSON Lines changelog, which names its device's org, site, building
//! and model, becomes the same entities ([`RegistryChange::to_updates`]).

mod history;
pub mod lookup;
mod resolve;

use serde::{Deserialize, Serialize};

use crate::dataflow::model::{DeviceId, MetricId, Threshold, TimeMs};
use crate::dataflow::registry::RegistryChange;

pub use history::{DeviceVersion, MetadataHistory};
pub use resolve::{MAX_PLACE_DEPTH, PlacePath, ResolveRegistry};

/// Which entity a change is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntityKey {
    /// A place of the hierarchy (org, site, building, zone, ...), by id.
    Place(String),
    /// An equipment model, by id.
    Model(String),
    /// A device, by id.
    Device(DeviceId),
}

/// An entity as it is from a change's effective time on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Entity {
    /// A place.
    Place(PlaceRecord),
    /// An equipment model.
    Model(ModelRecord),
    /// A device.
    Device(DeviceRecord),
}

/// A place of the hierarchy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlaceRecord {
    /// The level: `org`, `site` and `building` are what readings carry; other levels (a zone,
    /// a floor) sit between them and the device and change nothing downstream.
    pub kind: String,
    /// The place above (none for an org).
    pub parent_id: Option<String>,
    /// The name readings carry for this level.
    pub name: String,
}

/// An equipment model of the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModelRecord {
    /// thermostat, power_meter, pump, ...
    pub device_type: String,
    /// Thresholds of every device of the model, unless the device overrides them; sorted by
    /// metric.
    pub default_thresholds: Vec<(MetricId, Threshold)>,
}

/// A device as the registry records it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Its equipment model.
    pub model_id: String,
    /// The lowest place it is in (a building, or a zone within one).
    pub place_id: String,
    /// Firmware version.
    pub firmware: String,
    /// Schema variant the firmware speaks.
    pub schema: String,
    /// Its own device type, where a registry line gives one (else the model's).
    pub device_type: Option<String>,
    /// Its own thresholds, laid over its model's defaults; sorted by metric.
    pub threshold_overrides: Vec<(MetricId, Threshold)>,
}

/// A change as the dataflow takes it: from the effective time (the third field) on, the
/// entity is as given (or gone). Its timely time is when the dataflow learns of it, which may
/// be later (a correction of the past).
pub type RegistryUpdate = (EntityKey, Option<Entity>, TimeMs);

/// What a change says of its entity: from `effective_ms` on, it is `value` (none: removed).
///
/// A version holds from its effective time until the version with the next effective time (of
/// two with one effective time, the later written), as the store's history answers. The
/// registry keeps the effective time beside the timely time at which a change became known,
/// so a change known late (a correction whose effective time the dataflow has passed, as every
/// live change is in `run`, whose registry input runs a clock skew ahead of the messages)
/// still holds from its effective time for every message looked up after it arrives, and for
/// every window still open then (see [`AggregateWindows`](crate::dataflow::AggregateWindows)).
/// A device's entry is derived from its device, model and place versions, and holds from the
/// latest of their effective times: a correction of the device record that predates the
/// current model or place version takes effect from that version's time in the stream (the
/// store's history, which later batch jobs read, has it from its own time).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version<T> {
    /// Event time from which the version holds.
    pub effective_ms: TimeMs,
    /// The state from then on (none: removed).
    pub value: Option<T>,
}

impl<T> Version<T> {
    /// The same version of a part of the value.
    pub fn map<U>(self, f: impl FnOnce(T) -> Option<U>) -> Version<U> {
        Version {
            effective_ms: self.effective_ms,
            value: self.value.and_then(f),
        }
    }
}

/// The id a JSON Lines registry gives a site: its org's and its own name.
pub fn site_id(org: &str, site: &str) -> String {
    format!("{org}/{site}")
}

/// The id a JSON Lines registry gives a building: its site's id and its own name.
pub fn building_id(org: &str, site: &str, building: &str) -> String {
    format!("{org}/{site}/{building}")
}

impl RegistryChange {
    /// The line's device, its places and its model as entity updates, all at the line's
    /// effective time (the device's removal alone for a delete).
    ///
    /// A line names its places (`org`, `org/site`, `org/site/building`) and its model, which
    /// become entities that other lines share. The line's device type and thresholds stay the
    /// device's own, so the entries enrichment resolves are the lines' own.
    pub fn to_updates(&self) -> Vec<RegistryUpdate> {
        let at = self.effective_ms;
        let device = EntityKey::Device(self.device_id.clone());
        let Some(info) = &self.info else {
            return vec![(device, None, at)];
        };
        let place = |id: String, kind: &str, parent_id: Option<String>, name: &str| {
            let record = PlaceRecord {
                kind: kind.into(),
                parent_id,
                name: name.into(),
            };
            (EntityKey::Place(id), Some(Entity::Place(record)), at)
        };
        let site = site_id(&info.org, &info.site);
        let building = building_id(&info.org, &info.site, &info.building);
        let model = ModelRecord {
            device_type: info.device_type.clone(),
            default_thresholds: Vec::new(),
        };
        let record = DeviceRecord {
            model_id: info.model.clone(),
            place_id: building.clone(),
            firmware: info.firmware.clone(),
            schema: info.schema.clone(),
            device_type: Some(info.device_type.clone()),
            threshold_overrides: info.thresholds.clone(),
        };
        vec![
            place(info.org.clone(), "org", None, &info.org),
            place(site.clone(), "site", Some(info.org.clone()), &info.site),
            place(building, "building", Some(site), &info.building),
            (
                EntityKey::Model(info.model.clone()),
                Some(Entity::Model(model)),
                at,
            ),
            (device, Some(Entity::Device(record)), at),
        ]
    }
}

/// Turns registry lines into entity updates, each place and model sent once for as long as the
/// lines agree on it: a line repeats its places and model, and 100,000 lines naming one site
/// need not be 100,000 versions of it. A place or model holds from the earliest line naming
/// it (a later-joining device's line may come first in the file).
#[derive(Debug, Default)]
pub struct LineEntities {
    sent: rustc_hash::FxHashMap<EntityKey, (Entity, TimeMs)>,
}

impl LineEntities {
    /// The updates of `change` not already sent.
    pub fn updates(&mut self, change: &RegistryChange) -> Vec<RegistryUpdate> {
        let mut updates = change.to_updates();
        updates.retain(|(key, value, effective_ms)| {
            let (EntityKey::Place(_) | EntityKey::Model(_), Some(entity)) = (key, value) else {
                return true;
            };
            match self.sent.get(key) {
                Some((same, since)) if same == entity && *since <= *effective_ms => false,
                _ => {
                    self.sent
                        .insert(key.clone(), (entity.clone(), *effective_ms));
                    true
                }
            }
        });
        updates
    }
}

/// The thresholds in force for a device: its model's defaults, each overridden by the device's
/// own for the same metric; sorted by metric.
pub fn effective_thresholds(
    defaults: &[(MetricId, Threshold)],
    overrides: &[(MetricId, Threshold)],
) -> Vec<(MetricId, Threshold)> {
    let mut thresholds: Vec<(MetricId, Threshold)> = overrides.to_vec();
    for (metric, threshold) in defaults {
        if !overrides.iter().any(|(m, _)| m == metric) {
            thresholds.push((*metric, *threshold));
        }
    }
    thresholds.sort_by_key(|(m, _)| *m);
    thresholds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(min: f64, max: f64) -> Threshold {
        Threshold { min, max }
    }

    #[test]
    fn overrides_replace_defaults_metric_by_metric() {
        let defaults = [(MetricId(0), t(0.0, 10.0)), (MetricId(2), t(1.0, 2.0))];
        let overrides = [(MetricId(1), t(5.0, 6.0)), (MetricId(2), t(3.0, 4.0))];
        assert_eq!(
            effective_thresholds(&defaults, &overrides),
            vec![
                (MetricId(0), t(0.0, 10.0)),
                (MetricId(1), t(5.0, 6.0)),
                (MetricId(2), t(3.0, 4.0)),
            ]
        );
    }
}
