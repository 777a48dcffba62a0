//! Every entity's history, to ask outside the dataflow "was this device registered at time t,
//! and as what?".

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::resolve::{PlacePath, device_info};
use super::{DeviceRecord, Entity, EntityKey, ModelRecord, PlaceRecord, RegistryUpdate};
use crate::dataflow::metadata::MAX_PLACE_DEPTH;
use crate::dataflow::model::{DeviceId, DeviceInfo, SharedDeviceInfo, TimeMs};
use crate::dataflow::registry::RegistryChange;

/// `(kind, name)` of the nearest place of each kind on a device's path, nearest first.
pub type Levels = Vec<(String, String)>;

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
    devices: FxHashMap<DeviceId, DeviceChanges>,
}

/// A device's changes, with its latest one's time and whether it registers the device kept
/// beside them in the map: sources ask on every message, nearly always about the present, and
/// this answers without reading the changes, a second cache miss per message.
#[derive(Clone, Debug, Default)]
struct DeviceChanges {
    latest: (TimeMs, bool),
    changes: Changes<DeviceRecord>,
}

impl DeviceChanges {
    fn insert(&mut self, time: TimeMs, record: Option<DeviceRecord>) {
        insert(&mut self.changes, time, record);
        if let Some((t, record)) = self.changes.last() {
            self.latest = (*t, record.is_some());
        }
    }

    fn is_registered(&self, ts_ms: TimeMs) -> bool {
        match self.latest {
            (latest_ms, registered) if latest_ms <= ts_ms => registered,
            _ => at(&self.changes, ts_ms).is_some(),
        }
    }
}

/// Adds a change; of two at the same time the later applied wins (a correction).
fn insert<T>(changes: &mut Changes<T>, time: TimeMs, value: Option<T>) {
    match changes.binary_search_by_key(&time, |(t, _)| *t) {
        Ok(at) => changes[at].1 = value,
        Err(at) => changes.insert(at, (time, value)),
    }
}

fn at<T>(changes: &Changes<T>, ts_ms: TimeMs) -> Option<&T> {
    // Nearly every question is about the present, which the latest change answers: checking
    // it first saves a binary search over records on every message a source admits.
    if let Some((t, value)) = changes.last()
        && *t <= ts_ms
    {
        return value.as_ref();
    }
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
            (EntityKey::Device(id), Some(Entity::Device(device))) => self
                .devices
                .entry(id.clone())
                .or_default()
                .insert(time, Some(device.clone())),
            (EntityKey::Device(id), _) => self
                .devices
                .entry(id.clone())
                .or_default()
                .insert(time, None),
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
            .is_some_and(|changes| changes.is_registered(ts_ms))
    }

    /// The device's entry at `ts_ms`, resolved through the model and places in force then
    /// (none if any is missing).
    pub fn device_at(&self, device_id: &str, ts_ms: TimeMs) -> Option<SharedDeviceInfo> {
        let (device, model, levels) = self.resolve(device_id, ts_ms)?;
        let name_of = |kind: &str| level_of(&levels, kind).unwrap_or_default().to_owned();
        let path = PlacePath {
            org: name_of("org"),
            site: name_of("site"),
            building: name_of("building"),
        };
        Some(Arc::new(device_info(device, model, &path)))
    }

    /// The device's entry at `ts_ms` with every level of its place path (`(kind, name)`, the
    /// nearest place of each kind, nearest first), not only the org, site and building readings
    /// carry: what the warehouse's device dimension records.
    pub fn device_version_at(&self, device_id: &str, ts_ms: TimeMs) -> Option<DeviceVersion> {
        let (device, model, levels) = self.resolve(device_id, ts_ms)?;
        Some(DeviceVersion {
            info: device_info(device, model, &PlacePath::default()),
            levels,
        })
    }

    /// The device's record, model and place levels in force at `ts_ms`.
    fn resolve(
        &self,
        device_id: &str,
        ts_ms: TimeMs,
    ) -> Option<(&DeviceRecord, &ModelRecord, Levels)> {
        let device = at(&self.devices.get(device_id)?.changes, ts_ms)?;
        let model = at(self.models.get(&device.model_id)?, ts_ms)?;
        // The device's own place must exist, as the join requires.
        at(self.places.get(&device.place_id)?, ts_ms)?;
        let mut levels: Levels = Vec::new();
        let mut place_id = Some(device.place_id.as_str());
        for _ in 0..=MAX_PLACE_DEPTH {
            let Some(place) = place_id
                .and_then(|id| self.places.get(id))
                .and_then(|changes| at(changes, ts_ms))
            else {
                break;
            };
            // The nearest place of each level names it.
            if levels.iter().all(|(kind, _)| *kind != place.kind) {
                levels.push((place.kind.clone(), place.name.clone()));
            }
            place_id = place.parent_id.as_deref();
        }
        Some((device, model, levels))
    }

    /// The device's own record at `ts_ms` (its model and place unresolved).
    pub fn device_record_at(&self, device_id: &str, ts_ms: TimeMs) -> Option<&DeviceRecord> {
        at(&self.devices.get(device_id)?.changes, ts_ms)
    }

    /// Every device the history knows, sorted.
    pub fn device_ids(&self) -> Vec<&DeviceId> {
        let mut ids: Vec<&DeviceId> = self.devices.keys().collect();
        ids.sort();
        ids
    }

    /// The times at which the device's entry may change: its own changes', its models' and
    /// those of every place that was ever on its path, sorted, without repeats. Between two of
    /// them (and after the last) [`Self::device_version_at`] answers the same.
    pub fn change_times(&self, device_id: &str) -> Vec<TimeMs> {
        let Some(DeviceChanges { changes, .. }) = self.devices.get(device_id) else {
            return Vec::new();
        };
        let mut times: Vec<TimeMs> = changes.iter().map(|(t, _)| *t).collect();
        let mut places: Vec<&str> = Vec::new();
        let mut models: Vec<&str> = Vec::new();
        for device in changes.iter().filter_map(|(_, d)| d.as_ref()) {
            places.push(&device.place_id);
            models.push(&device.model_id);
        }
        // Every place any version of a place on the path names as its parent, to a fixed point.
        let mut next = 0;
        while next < places.len() && places.len() <= 4096 {
            if let Some(versions) = self.places.get(places[next]) {
                for parent in versions
                    .iter()
                    .filter_map(|(_, p)| p.as_ref()?.parent_id.as_deref())
                {
                    if !places.contains(&parent) {
                        places.push(parent);
                    }
                }
            }
            next += 1;
        }
        for id in &places {
            times.extend(self.places.get(*id).into_iter().flatten().map(|(t, _)| *t));
        }
        for id in &models {
            times.extend(self.models.get(*id).into_iter().flatten().map(|(t, _)| *t));
        }
        times.sort_unstable();
        times.dedup();
        times
    }
}

/// A device as the registry had it over some span of time, with every level of its place.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceVersion {
    /// Its entry (org, site and building left empty: they are in `levels`).
    pub info: DeviceInfo,
    /// `(kind, name)` of the nearest place of each kind on its path, nearest first.
    pub levels: Levels,
}

impl DeviceVersion {
    /// The name of its place of `kind`, if it has one.
    pub fn level(&self, kind: &str) -> Option<&str> {
        level_of(&self.levels, kind)
    }
}

/// The name of the place of `kind` among `levels`.
fn level_of<'a>(levels: &'a Levels, kind: &str) -> Option<&'a str> {
    levels
        .iter()
        .find(|(k, _)| k == kind)
        .map(|(_, name)| name.as_str())
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
        // Applied latest first, the latest change is still the one a source checks first.
        for ts_ms in [0, 999, 1000, 1999, 2000] {
            assert_eq!(
                applied.device_at("dev-1", ts_ms),
                history.device_at("dev-1", ts_ms)
            );
            assert_eq!(
                applied.is_registered("dev-1", ts_ms),
                history.is_registered("dev-1", ts_ms)
            );
        }
        // Registered again after its deletion, and asked about the past.
        let again = LINE.replace("{\"device_id\"", "{\"effective_ms\":3000,\"device_id\"");
        applied.apply_change(&parse_registry(&again, &catalog).unwrap()[0]);
        assert!(applied.is_registered("dev-1", 3000));
        assert!(!applied.is_registered("dev-1", 2500));
        assert!(applied.is_registered("dev-1", 1500));
    }
}
