//! The store's entities as the API, the history and the change log show them, their checks,
//! and what the dataflow makes of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::dataflow::metadata::{DeviceRecord, Entity, EntityKey, ModelRecord, PlaceRecord};
use crate::dataflow::model::{MetricId, Threshold};
use crate::dataflow::schema::MetricCatalog;

/// The three kinds of entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A place of the hierarchy.
    Place,
    /// An equipment model.
    Model,
    /// A device.
    Device,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Place, Kind::Model, Kind::Device];

    /// The name the history and the change log use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Place => "place",
            Kind::Model => "model",
            Kind::Device => "device",
        }
    }

    /// The kind a history or log row names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The table holding the current versions.
    pub(crate) fn table(self) -> &'static str {
        match self {
            Kind::Place => "places",
            Kind::Model => "models",
            Kind::Device => "devices",
        }
    }
}

/// A place of the hierarchy: an org, a site, a building, or any level between (zone, floor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    /// The level: `org`, `site`, `building`, or another (`zone`, `floor`).
    pub kind: String,
    /// The place above (required for every level but `org`).
    #[serde(default)]
    pub parent_id: Option<String>,
    /// The name readings carry for this level.
    pub name: String,
    /// IANA time zone (`Europe/Berlin`), for sites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Degrees north.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Degrees east.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    /// Free attributes.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
}

/// An equipment model of the catalogue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Who makes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// thermostat, power_meter, pump, ...
    pub device_type: String,
    /// The schema variants its firmware speaks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
    /// What it measures, by metric name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, MetricSpec>,
    /// Thresholds of each of its devices, unless the device overrides them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default_thresholds: BTreeMap<String, Limits>,
}

/// A metric a model measures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// The unit it reports in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A threshold: readings outside `[min, max]` breach it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Lowest reading within the threshold.
    pub min: f64,
    /// Highest reading within the threshold.
    pub max: f64,
}

/// Whether a device is in service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// In service: its readings are enriched.
    #[default]
    Active,
    /// Out of service: its readings are dead letters (`unknown_device`).
    Decommissioned,
}

impl DeviceStatus {
    /// The name the table uses.
    pub fn name(self) -> &'static str {
        match self {
            DeviceStatus::Active => "active",
            DeviceStatus::Decommissioned => "decommissioned",
        }
    }
}

/// A device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Its equipment model.
    pub model_id: String,
    /// The lowest place it is in (a building, or a zone within one).
    pub place_id: String,
    /// Firmware version.
    pub firmware: String,
    /// Schema variant the firmware speaks.
    pub schema: String,
    /// Its own thresholds, laid over its model's defaults metric by metric.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub threshold_overrides: BTreeMap<String, Limits>,
    /// Free attributes.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
    /// In service or not.
    #[serde(default)]
    pub status: DeviceStatus,
}

/// A body that cannot be stored: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field, as a path (`default_thresholds.temperature.max`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Invalid {
    /// An error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks an id from a path or a body: non-empty, printable, without `?` or `#`.
pub fn check_id(field: &str, id: &str) -> Result<(), Invalid> {
    if id.is_empty() || id.len() > 200 {
        return Err(Invalid::new(field, "must be 1 to 200 characters"));
    }
    if id.chars().any(|c| c.is_control() || c == '?' || c == '#') {
        return Err(Invalid::new(
            field,
            "must not hold control characters, ? or #",
        ));
    }
    Ok(())
}

/// Parses and checks a body of `kind`: the body as stored, or the field that is wrong.
pub fn check_body(kind: Kind, body: Value, catalog: &MetricCatalog) -> Result<Value, Invalid> {
    let parsed = |e: serde_json::Error| {
        // serde_json names the field in its message ("missing field `name`", "unknown field
        // `colour`, expected one of ..."); the field it names is the one to report.
        let text = e.to_string();
        let field = text
            .split('`')
            .nth(1)
            .map_or_else(|| "body".to_owned(), str::to_owned);
        Invalid::new(field, text)
    };
    match kind {
        Kind::Place => {
            let place: Place = serde_json::from_value(body).map_err(parsed)?;
            check_place(&place)?;
            Ok(serde_json::to_value(place).expect("places serialise"))
        }
        Kind::Model => {
            let model: Model = serde_json::from_value(body).map_err(parsed)?;
            check_word("device_type", &model.device_type)?;
            for metric in model.metrics.keys() {
                check_metric(&format!("metrics.{metric}"), metric, catalog)?;
            }
            check_limits("default_thresholds", &model.default_thresholds, catalog)?;
            Ok(serde_json::to_value(model).expect("models serialise"))
        }
        Kind::Device => {
            let device: Device = serde_json::from_value(body).map_err(parsed)?;
            check_id("model_id", &device.model_id)?;
            check_id("place_id", &device.place_id)?;
            check_word("firmware", &device.firmware)?;
            check_word("schema", &device.schema)?;
            check_limits("threshold_overrides", &device.threshold_overrides, catalog)?;
            Ok(serde_json::to_value(device).expect("devices serialise"))
        }
    }
}

fn check_place(place: &Place) -> Result<(), Invalid> {
    check_word("kind", &place.kind)?;
    if !place
        .kind
        .chars()
        .all(|c| c.is_ascii_lowercase() || c == '_')
    {
        return Err(Invalid::new(
            "kind",
            "must be a lower-case word (org, site, building, zone)",
        ));
    }
    check_word("name", &place.name)?;
    match (&place.parent_id, place.kind.as_str()) {
        (Some(_), "org") => return Err(Invalid::new("parent_id", "an org has no parent")),
        (None, kind) if kind != "org" => {
            return Err(Invalid::new(
                "parent_id",
                format!("a {kind} needs the place above it"),
            ));
        }
        (Some(parent), _) => check_id("parent_id", parent)?,
        (None, _) => {}
    }
    if let Some(latitude) = place.latitude
        && !(-90.0..=90.0).contains(&latitude)
    {
        return Err(Invalid::new("latitude", "must lie in [-90, 90]"));
    }
    if let Some(longitude) = place.longitude
        && !(-180.0..=180.0).contains(&longitude)
    {
        return Err(Invalid::new("longitude", "must lie in [-180, 180]"));
    }
    Ok(())
}

fn check_word(field: &str, value: &str) -> Result<(), Invalid> {
    if value.trim().is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    Ok(())
}

fn check_metric(field: &str, metric: &str, catalog: &MetricCatalog) -> Result<MetricId, Invalid> {
    catalog
        .id(metric)
        .ok_or_else(|| Invalid::new(field, "no such metric in the schema catalog"))
}

fn check_limits(
    field: &str,
    limits: &BTreeMap<String, Limits>,
    catalog: &MetricCatalog,
) -> Result<(), Invalid> {
    for (metric, limit) in limits {
        let at = format!("{field}.{metric}");
        check_metric(&at, metric, catalog)?;
        if !limit.min.is_finite() || !limit.max.is_finite() || limit.min > limit.max {
            return Err(Invalid::new(at, "needs finite min <= max"));
        }
    }
    Ok(())
}

/// Thresholds by metric id; metrics the catalog lacks are left out (the store checked them
/// against the catalog it had; a run with another catalog cannot use them).
fn thresholds(
    limits: &BTreeMap<String, Limits>,
    catalog: &MetricCatalog,
) -> Vec<(MetricId, Threshold)> {
    let mut thresholds: Vec<(MetricId, Threshold)> = limits
        .iter()
        .filter_map(|(metric, l)| {
            let id = catalog.id(metric)?;
            Some((
                id,
                Threshold {
                    min: l.min,
                    max: l.max,
                },
            ))
        })
        .collect();
    thresholds.sort_by_key(|(m, _)| *m);
    thresholds
}

/// What the dataflow makes of a stored entity: its key and its state (none: removed, or a
/// decommissioned device). An error if the body is not one of `kind`.
pub fn to_entity(
    kind: Kind,
    id: &str,
    body: Option<&Value>,
    catalog: &MetricCatalog,
) -> Result<(EntityKey, Option<Entity>), serde_json::Error> {
    let key = match kind {
        Kind::Place => EntityKey::Place(id.to_owned()),
        Kind::Model => EntityKey::Model(id.to_owned()),
        Kind::Device => EntityKey::Device(id.into()),
    };
    let Some(body) = body else {
        return Ok((key, None));
    };
    let entity = match kind {
        Kind::Place => {
            let place: Place = serde_json::from_value(body.clone())?;
            Some(Entity::Place(PlaceRecord {
                kind: place.kind,
                parent_id: place.parent_id,
                name: place.name,
            }))
        }
        Kind::Model => {
            let model: Model = serde_json::from_value(body.clone())?;
            Some(Entity::Model(ModelRecord {
                default_thresholds: thresholds(&model.default_thresholds, catalog),
                device_type: model.device_type,
            }))
        }
        Kind::Device => {
            let device: Device = serde_json::from_value(body.clone())?;
            (device.status == DeviceStatus::Active).then(|| {
                Entity::Device(DeviceRecord {
                    threshold_overrides: thresholds(&device.threshold_overrides, catalog),
                    model_id: device.model_id,
                    place_id: device.place_id,
                    firmware: device.firmware,
                    schema: device.schema,
                    device_type: None,
                })
            })
        }
    };
    Ok((key, entity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::schema::SchemaSet;
    use serde_json::json;

    #[test]
    fn bodies_are_checked_field_by_field() {
        let schemas = SchemaSet::embedded();
        let catalog = schemas.catalog();
        let error = |kind, body| check_body(kind, body, catalog).unwrap_err().field;
        assert_eq!(
            error(Kind::Place, json!({"kind": "site", "name": "x"})),
            "parent_id"
        );
        assert_eq!(error(Kind::Place, json!({"kind": "org"})), "name");
        assert_eq!(
            error(
                Kind::Place,
                json!({"kind": "org", "name": "o", "colour": 1})
            ),
            "colour"
        );
        assert_eq!(
            error(
                Kind::Model,
                json!({"device_type": "pump", "default_thresholds": {"flux": {"min": 0, "max": 1}}})
            ),
            "default_thresholds.flux"
        );
        assert_eq!(
            error(
                Kind::Device,
                json!({"model_id": "m", "place_id": "p", "firmware": "1", "schema": "v1",
                       "threshold_overrides": {"temperature": {"min": 5, "max": 1}}})
            ),
            "threshold_overrides.temperature"
        );
        let device = json!({"model_id": "m", "place_id": "p", "firmware": "1", "schema": "v1"});
        let stored = check_body(Kind::Device, device, catalog).unwrap();
        assert_eq!(stored["status"], "active");
    }

    #[test]
    fn a_decommissioned_device_is_no_entity_for_the_dataflow() {
        let schemas = SchemaSet::embedded();
        let body = json!({"model_id": "m", "place_id": "p", "firmware": "1", "schema": "v1",
                          "status": "decommissioned"});
        let (key, entity) = to_entity(Kind::Device, "d", Some(&body), schemas.catalog()).unwrap();
        assert_eq!((key, entity), (EntityKey::Device("d".into()), None));
    }
}
