//! Every entity's history, to ask outside the dataflow "was this device registered at time t,
//! and as what?".

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::resolve::{PlacePath, device_info};
use super::{DeviceRecord, Entity, EntityKey, ModelRecord, PlaceRecord, RegistryUpdate};
use crate::dataflow::metadata::MAX_PLACE_DEPTH;
use crate::dataflow::model::{DeviceId, SharedDeviceInfo, TimeMs};
use crate::dataflow::registry::RegistryChange;

/// One entity's changes, sorted by time, one per time.
type Changes<T> = Vec<(TimeMs, Option<T>)>;

/// Places, models and devices over event time: what sources consult before a message enters
/// the dataflow (a reading of an unregistered device must not advance the watermark).
///
/// Each entity's version at `t` is the one with the latest effective time by `t` (of two with
/// the same, the later applied), as the store's history answers and as
/// [`ResolveRegistry`](super::ResolveRegistry) resolves changes known in time. A device is
/// registered at `t` when its record holds then; [`Self::device_at`] resolves its entry
/// through the model and places in force at `t`.
#[derive(Clone, Debug, Default)]
pub struct MetadataHistory {
    places: FxHashMap<String, Changes<PlaceRecord>>,
    models: FxHashMap<String, Changes<ModelRecord>>,
    devices: FxHashMap<DeviceId, Changes<DeviceRecord>>,
}

/// Adds a change; of two at the same time the later applied wins (a correction).
fn insert<T>(changes: &mut Changes<T>, time: TimeMs, value: Option<T>) {
    match changes.binary_search_by_key(&time, |(t, _)| *t) {
        Ok(at) => changes[at].1 = value,
        Err(at) => changes.insert(at, (time, value)),
    }
}

fn at<T>(changes: &Changes<T>, ts_ms: TimeMs) -> Option<&T> {
    let after = changes.partition_point(|(t, _)| *t <= ts_ms);
    changes[..after].last().and_then(|(_, v)| v.as_ref())
}

impl MetadataHistory {
    /// The history of `updates`, in any order.
    pub fn new(updates: &[RegistryUpdate]) -> Self {
        let mut history = Self::default();
        for update in updates {
            history.apply(update);
        }
        history
    }

    /// The history of a JSON Lines registry.
    pub fn of_changes(changes: &[RegistryChange]) -> Self {
        let mut history = Self::default();
        for change in changes {
            history.apply_change(change);
        }
        history
    }

    /// Adds one update.
    pub fn apply(&mut self, (key, value, time): &RegistryUpdate) {
        let time = *time;
        match (key, value) {
            (EntityKey::Place(id), Some(Entity::Place(place))) => insert(
                self.places.entry(id.clone()).or_default(),
                time,
                Some(place.clone()),
            ),
            (EntityKey::Place(id), _) => {
                insert(self.places.entry(id.clone()).or_default(), time, None)
            }
            (EntityKey::Model(id), Some(Entity::Model(model))) => insert(
                self.models.entry(id.clone()).or_default(),
                time,
                Some(model.clone()),
            ),
            (EntityKey::Model(id), _) => {
                insert(self.models.entry(id.clone()).or_default(), time, None)
            }
            (EntityKey::Device(id), Some(Entity::Device(device))) => insert(
                self.devices.entry(id.clone()).or_default(),
                time,
                Some(device.clone()),
            ),
            (EntityKey::Device(id), _) => {
                insert(self.devices.entry(id.clone()).or_default(), time, None)
            }
        }
    }

    /// Adds a registry line's device, places and model.
    pub fn apply_change(&mut self, change: &RegistryChange) {
        for update in change.to_updates() {
            self.apply(&update);
        }
    }

    /// Whether the device's record holds at `ts_ms`: one lookup, on every message's path.
    pub fn is_registered(&self, device_id: &str, ts_ms: TimeMs) -> bool {
        self.devices
            .get(device_id)
            .is_some_and(|changes| at(changes, ts_ms).is_some())
    }

    /// The device's entry at `ts_ms`, resolved through the model and places in force then
    /// (none if any is missing).
    pub fn device_at(&self, device_id: &str, ts_ms: TimeMs) -> Option<SharedDeviceInfo> {
        let device = at(self.devices.get(device_id)?, ts_ms)?;
        let model = at(self.models.get(&device.model_id)?, ts_ms)?;
        // The device's own place must exist, as the join requires.
        at(self.places.get(&device.place_id)?, ts_ms)?;
        let (mut org, mut site, mut building) = (None, None, None);
        let mut place_id = Some(device.place_id.as_str());
        for _ in 0..=MAX_PLACE_DEPTH {
            let Some(place) = place_id
                .and_then(|id| self.places.get(id))
                .and_then(|changes| at(changes, ts_ms))
            else {
                break;
            };
            // The nearest place of each level names it.
            let slot = match place.kind.as_str() {
                "org" => &mut org,
                "site" => &mut site,
                "building" => &mut building,
                _ => &mut None,
            };
            slot.get_or_insert_with(|| place.name.clone());
            place_id = place.parent_id.as_deref();
        }
        let path = PlacePath {
            org: org.unwrap_or_default(),
            site: site.unwrap_or_default(),
            building: building.unwrap_or_default(),
        };
        Some(Arc::new(device_info(device, model, &path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::registry::parse_registry;
    use crate::dataflow::schema::SchemaSet;

    const LINE: &str = r#"{"device_id":"dev-1","device_type":"thermostat","firmware":"1.0.0","schema":"v1","org":"org-000","site":"site-0001","building":"B1","model":"TH-100","thresholds":{"temperature":{"min":16.2,"max":27.3}}}"#;

    #[test]
    fn history_answers_as_of_a_time() {
        let catalog = SchemaSet::embedded().catalog().clone();
        let moved = LINE
            .replace("site-0001", "site-0002")
            .replace("{\"device_id\"", "{\"effective_ms\":1000,\"device_id\"");
        let deleted = r#"{"device_id":"dev-1","effective_ms":2000,"deleted":true}"#;
        let changes = parse_registry(&format!("{LINE}\n{moved}\n\n{deleted}\n"), &catalog).unwrap();
        let history = MetadataHistory::of_changes(&changes);
        assert_eq!(history.device_at("dev-1", 999).unwrap().site, "site-0001");
        assert_eq!(
            history.device_at("dev-1", 1000).unwrap(),
            changes[1].info.clone().unwrap()
        );
        assert!(history.is_registered("dev-1", 1999));
        assert!(!history.is_registered("dev-1", 2000));
        assert!(history.device_at("dev-1", 2000).is_none());
        assert!(!history.is_registered("dev-2", 0));

        let mut applied = MetadataHistory::default();
        for change in changes.iter().rev() {
            applied.apply_change(change);
        }
        for ts_ms in [0, 999, 1000, 1999, 2000] {
            assert_eq!(
                applied.device_at("dev-1", ts_ms),
                history.device_at("dev-1", ts_ms)
            );
        }
    }
}
