//! The JSON Lines registry and the store: importing lines as entities, exporting the store as
//! lines, and a device as it was known at an event time, resolved through its model and places.
//!
//! A registry line names its device's model, device type, org, site and building by name; the
//! store keeps them as entities of their own: a model (created with the line's device type),
//! places `org`, `org/site` and `org/site/building` (each created the first time a line names
//! it), and the device, which names its model and building. Each is a change of its own in
//! the log.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::entities::{Device, Kind, Limits, Model, Place};
use super::write::{Precondition, WriteError, lock_log, prepared, put_in};
use super::{Store, StoreError};
use crate::dataflow::metadata::{MAX_PLACE_DEPTH, building_id, site_id};

/// One registry line: the device as it is from `effective_ms` on, or its removal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// The device.
    pub device_id: String,
    /// Event time from which the line holds (0: from the beginning).
    #[serde(default)]
    pub effective_ms: i64,
    /// The device leaves the registry at `effective_ms`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// thermostat, power_meter, pump, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// Firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// Schema variant the firmware speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Owning organisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Site within the organisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Building within the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<String>,
    /// Equipment model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The device's thresholds per metric (on export: its model's defaults under its own).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub thresholds: BTreeMap<String, Limits>,
}

/// What an import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Registry lines applied.
    pub lines: usize,
    /// Entries the change log gained (places and models created along the way included).
    pub changes: usize,
}

/// Lines applied per transaction on import: one commit per batch, the log still gap-free.
const IMPORT_BATCH: usize = 1_000;

fn import_error(e: WriteError) -> StoreError {
    match e {
        WriteError::Store(e) => e,
        other => StoreError::Config {
            field: "registry",
            message: other.to_string(),
        },
    }
}

impl Store {
    /// Applies registry lines in order, as changes; each batch of lines commits at once.
    pub async fn import_registry(
        &self,
        entries: &[RegistryEntry],
    ) -> Result<ImportReport, StoreError> {
        let mut report = ImportReport::default();
        // A place or model holds from the earliest line naming it, whichever line comes first
        // in the file: a device registered from the beginning in a building a later-joining
        // device named first is in that building from the beginning too.
        let mut first_named: HashMap<String, i64> = HashMap::new();
        for entry in entries.iter().filter(|e| !e.deleted) {
            let (Some(org), Some(site), Some(building)) =
                (&entry.org, &entry.site, &entry.building)
            else {
                continue;
            };
            for id in [
                org.clone(),
                site_id(org, site),
                building_id(org, site, building),
                format!("model:{}", entry.model.as_deref().unwrap_or_default()),
            ] {
                let at = first_named.entry(id).or_insert(entry.effective_ms);
                *at = (*at).min(entry.effective_ms);
            }
        }
        // Places and models this import has already written as its lines want them: a line
        // naming one again needs no query (the import holds the log's lock per batch, and
        // lines never change a place).
        let mut ensured: HashSet<String> = HashSet::new();
        let mut client = self.client().await?;
        for batch in entries.chunks(IMPORT_BATCH) {
            let tx = client
                .transaction()
                .await
                .map_err(StoreError::query("starting an import"))?;
            lock_log(&tx).await?;
            for entry in batch {
                report.changes += apply(&tx, entry, &first_named, &mut ensured)
                    .await
                    .map_err(import_error)?;
                report.lines += 1;
            }
            tx.commit()
                .await
                .map_err(StoreError::query("committing an import"))?;
        }
        Ok(report)
    }

    /// The registry as lines, in log order: a line for each device change, and for each device
    /// a change of its model or of a place above it changes (its entry as resolved then).
    pub async fn export_registry(&self) -> Result<Vec<RegistryEntry>, StoreError> {
        let mut lines = Vec::new();
        let mut state = ExportState::default();
        let mut after = 0;
        loop {
            let page = self.changes_after(after, 10_000).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.seq;
            for change in &page {
                state.apply(
                    change.kind,
                    &change.id,
                    change.effective_ms,
                    change.deleted,
                    &change.body,
                    &mut lines,
                );
            }
        }
        Ok(lines)
    }

    /// The device as known at event time `at_ms`, resolved through the model and places in
    /// force then (one query over the history): none if it was not registered yet, removed or
    /// decommissioned.
    pub async fn device_as_of(
        &self,
        device_id: &str,
        at_ms: i64,
    ) -> Result<Option<RegistryEntry>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "WITH RECURSIVE
                 d AS (SELECT effective_ms, deleted, body FROM history
                       WHERE kind = 'device' AND id = $1 AND effective_ms <= $2
                       ORDER BY effective_ms DESC, version DESC LIMIT 1),
                 up(id, body, depth) AS (
                     SELECT p.id, p.body, 0 FROM d, LATERAL (
                         SELECT id, body, deleted FROM history
                         WHERE kind = 'place' AND id = d.body->>'place_id' AND effective_ms <= $2
                         ORDER BY effective_ms DESC, version DESC LIMIT 1) p
                     WHERE NOT p.deleted
                     UNION ALL
                     SELECT p.id, p.body, up.depth + 1 FROM up, LATERAL (
                         SELECT id, body, deleted FROM history
                         WHERE kind = 'place' AND id = up.body->>'parent_id' AND effective_ms <= $2
                         ORDER BY effective_ms DESC, version DESC LIMIT 1) p
                     WHERE NOT p.deleted AND up.depth < $3)
                 SELECT d.effective_ms, d.deleted, d.body,
                     (SELECT body FROM history WHERE kind = 'model' AND id = d.body->>'model_id'
                          AND effective_ms <= $2 AND NOT deleted
                      ORDER BY effective_ms DESC, version DESC LIMIT 1),
                     (SELECT coalesce(jsonb_agg(body ORDER BY depth), '[]') FROM up)
                 FROM d",
                &[&device_id, &at_ms, &i32::from(MAX_PLACE_DEPTH)],
            )
            .await
            .map_err(StoreError::query("resolving a device as of a time"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        if row.get::<_, bool>(1) {
            return Ok(None);
        }
        let (Ok(device), Some(Ok(model))) = (
            serde_json::from_value::<Device>(row.get(2)),
            row.get::<_, Option<Value>>(3)
                .map(serde_json::from_value::<Model>),
        ) else {
            return Ok(None);
        };
        let places: Vec<Place> = serde_json::from_value(row.get(4)).unwrap_or_default();
        Ok(entry_of(
            device_id,
            row.get(0),
            &device,
            &model,
            places.iter(),
        ))
    }
}

/// A device's line from its record, model and places (nearest first); none if decommissioned.
fn entry_of<'a>(
    device_id: &str,
    effective_ms: i64,
    device: &Device,
    model: &Model,
    places: impl Iterator<Item = &'a Place>,
) -> Option<RegistryEntry> {
    if device.status != super::entities::DeviceStatus::Active {
        return None;
    }
    let mut names: HashMap<&str, &str> = HashMap::new();
    for place in places.take(usize::from(MAX_PLACE_DEPTH) + 1) {
        names.entry(place.kind.as_str()).or_insert(&place.name);
    }
    let name = |kind: &str| names.get(kind).map(|n| (*n).to_owned());
    let mut thresholds = model.default_thresholds.clone();
    thresholds.extend(device.threshold_overrides.clone());
    Some(RegistryEntry {
        device_id: device_id.to_owned(),
        effective_ms,
        deleted: false,
        device_type: Some(model.device_type.clone()),
        firmware: Some(device.firmware.clone()),
        schema: Some(device.schema.clone()),
        org: name("org"),
        site: name("site"),
        building: name("building"),
        model: Some(device.model_id.clone()),
        thresholds,
    })
}

/// The entities as the log has them so far, and the line last written for each device.
#[derive(Default)]
struct ExportState {
    places: HashMap<String, Place>,
    models: HashMap<String, Model>,
    devices: BTreeMap<String, Device>,
    written: HashMap<String, RegistryEntry>,
}

impl ExportState {
    fn apply(
        &mut self,
        kind: Kind,
        id: &str,
        effective_ms: i64,
        deleted: bool,
        body: &Value,
        lines: &mut Vec<RegistryEntry>,
    ) {
        fn set<T: serde::de::DeserializeOwned>(
            map: &mut HashMap<String, T>,
            id: &str,
            deleted: bool,
            body: &Value,
        ) {
            match serde_json::from_value(body.clone()) {
                Ok(value) if !deleted => {
                    map.insert(id.to_owned(), value);
                }
                _ => {
                    map.remove(id);
                }
            }
        }
        let affected: Vec<String> = match kind {
            Kind::Place => {
                set(&mut self.places, id, deleted, body);
                let under = |device: &Device| self.path(&device.place_id).any(|p| p == id);
                self.devices
                    .iter()
                    .filter(|(_, d)| under(d))
                    .map(|(d, _)| d.clone())
                    .collect()
            }
            Kind::Model => {
                set(&mut self.models, id, deleted, body);
                self.devices
                    .iter()
                    .filter(|(_, d)| d.model_id == id)
                    .map(|(d, _)| d.clone())
                    .collect()
            }
            Kind::Device => {
                let parsed = serde_json::from_value::<Device>(body.clone());
                match parsed {
                    Ok(device) if !deleted => {
                        self.devices.insert(id.to_owned(), device);
                    }
                    _ => {
                        self.devices.remove(id);
                    }
                }
                vec![id.to_owned()]
            }
        };
        for device_id in affected {
            let entry = self
                .devices
                .get(&device_id)
                .and_then(|device| {
                    let model = self.models.get(&device.model_id)?;
                    let places: Vec<&Place> = self
                        .path(&device.place_id)
                        .filter_map(|p| self.places.get(p))
                        .collect();
                    entry_of(&device_id, effective_ms, device, model, places.into_iter())
                })
                .unwrap_or_else(|| RegistryEntry {
                    device_id: device_id.clone(),
                    effective_ms,
                    deleted: true,
                    device_type: None,
                    firmware: None,
                    schema: None,
                    org: None,
                    site: None,
                    building: None,
                    model: None,
                    thresholds: BTreeMap::new(),
                });
            let same = |last: &RegistryEntry| {
                RegistryEntry {
                    effective_ms,
                    ..last.clone()
                } == entry
            };
            match self.written.get(&device_id) {
                Some(last) if same(last) => {}
                // A device never written needs no removal line.
                None if entry.deleted => {}
                _ => {
                    self.written.insert(device_id, entry.clone());
                    lines.push(entry);
                }
            }
        }
    }

    /// The ids of a place and those above it, nearest first.
    fn path<'a>(&'a self, place_id: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        std::iter::successors(Some(place_id), move |id| {
            self.places.get(*id)?.parent_id.as_deref()
        })
        .take(usize::from(MAX_PLACE_DEPTH) + 1)
    }
}

/// Applies one registry line; the number of changes it made.
async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    entry: &RegistryEntry,
    first_named: &HashMap<String, i64>,
    ensured: &mut HashSet<String>,
) -> Result<usize, WriteError> {
    let id = entry.device_id.as_str();
    let t = entry.effective_ms;
    let changed = |written: super::write::Written| usize::from(written.seq.is_some());
    if entry.deleted {
        let version = tx
            .query_opt(
                &prepared(tx, "SELECT version FROM devices WHERE id = $1").await?,
                &[&id],
            )
            .await
            .map_err(|e| WriteError::Store(StoreError::query("reading a device")(e)))?;
        if version.is_none() {
            return Ok(0);
        }
        let mut body: Value = tx
            .query_one(
                &prepared(
                    tx,
                    "SELECT body FROM history WHERE kind = 'device' AND id = $1
                 ORDER BY version DESC LIMIT 1",
                )
                .await?,
                &[&id],
            )
            .await
            .map_err(|e| WriteError::Store(StoreError::query("reading a device")(e)))?
            .get(0);
        // A removal line decommissions the device: its record stays, out of service.
        body["status"] = json!("decommissioned");
        return Ok(changed(
            put_in(tx, Kind::Device, id, &body, t, Precondition::None).await?,
        ));
    }
    let field = |value: &Option<String>, name: &'static str| {
        value.clone().ok_or_else(|| {
            WriteError::Invalid(super::entities::Invalid::new(
                name,
                format!("device {id}: missing (or set \"deleted\": true)"),
            ))
        })
    };
    let (org, site, building) = (
        field(&entry.org, "org")?,
        field(&entry.site, "site")?,
        field(&entry.building, "building")?,
    );
    let (model, device_type) = (
        field(&entry.model, "model")?,
        field(&entry.device_type, "device_type")?,
    );
    let (firmware, schema) = (
        field(&entry.firmware, "firmware")?,
        field(&entry.schema, "schema")?,
    );
    let site_place = site_id(&org, &site);
    let building_place = building_id(&org, &site, &building);
    let mut changes = 0;
    for (place, kind, parent, name) in [
        (&org, "org", None, &org),
        (&site_place, "site", Some(&org), &site),
        (&building_place, "building", Some(&site_place), &building),
    ] {
        if !ensured.insert(format!("place:{place}")) {
            continue;
        }
        let body = json!({"kind": kind, "parent_id": parent, "name": name});
        let from = first_named.get(place.as_str()).copied().unwrap_or(t).min(t);
        match put_in(tx, Kind::Place, place, &body, from, Precondition::Absent).await {
            Ok(written) => changes += changed(written),
            // It exists: lines never change a place.
            Err(WriteError::Stale { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    // The model keeps what the catalogue says of it; a line only sets its device type.
    let model_key = format!("model:{model}:{device_type}");
    if ensured.contains(&model_key) {
        let device = device_body(&model, building_place, firmware, schema, entry);
        return Ok(
            changes + changed(put_in(tx, Kind::Device, id, &device, t, Precondition::None).await?)
        );
    }
    ensured.retain(|k| !k.starts_with(&format!("model:{model}:")));
    ensured.insert(model_key);
    let current: Option<Value> = tx
        .query_opt(
            &prepared(
                tx,
                "SELECT h.body FROM models m JOIN history h ON h.kind = 'model' AND h.id = m.id
                 AND h.version = m.version WHERE m.id = $1",
            )
            .await?,
            &[&model],
        )
        .await
        .map_err(|e| WriteError::Store(StoreError::query("reading a model")(e)))?
        .map(|r| r.get(0));
    let model_at = match &current {
        // A new model holds from the earliest line naming it.
        None => first_named
            .get(&format!("model:{model}"))
            .copied()
            .unwrap_or(t)
            .min(t),
        Some(_) => t,
    };
    let mut model_body = current.unwrap_or_else(|| json!({}));
    model_body["device_type"] = json!(device_type);
    changes += changed(
        put_in(
            tx,
            Kind::Model,
            &model,
            &model_body,
            model_at,
            Precondition::None,
        )
        .await?,
    );
    let body = device_body(&model, building_place, firmware, schema, entry);
    changes += changed(put_in(tx, Kind::Device, id, &body, t, Precondition::None).await?);
    Ok(changes)
}

/// The device a registry line describes, as the store keeps it.
fn device_body(
    model: &str,
    place_id: String,
    firmware: String,
    schema: String,
    entry: &RegistryEntry,
) -> Value {
    let device = Device {
        model_id: model.to_owned(),
        place_id,
        firmware,
        schema,
        threshold_overrides: entry.thresholds.clone(),
        attributes: Default::default(),
        status: super::entities::DeviceStatus::Active,
    };
    serde_json::to_value(device).expect("devices serialise")
}
