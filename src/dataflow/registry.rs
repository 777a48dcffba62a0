//! The device registry: its changelog format and an as-of view of it.
//!
//! The registry is a changelog of JSON objects, one a line, as the workload writes it:
//! `{"device_id", "device_type", "firmware", "schema", "org", "site", "building", "model",
//! "thresholds": {metric: {min, max}}}`. Two optional fields make it a changelog:
//! `effective_ms` (the event time from which the entry holds; absent = from the beginning) and
//! `"deleted": true` (the device leaves the registry at `effective_ms`).
//!
//! In the dataflow each line becomes changes of its device, places and model
//! ([`RegistryChange::to_updates`]), which [`crate::dataflow::metadata`] joins back into entries; [`RegistryHistory`] answers the same as-of question
//! outside the dataflow, for sources that must know whether a device is registered before the
//! message enters (a reading of an unregistered device must not advance the watermark).

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Deserialize;

use crate::dataflow::model::{DeviceId, DeviceInfo, SharedDeviceInfo, Threshold, TimeMs};
use crate::dataflow::schema::MetricCatalog;

/// One registry change: from `effective_ms` on, the device is `info` (or absent if `None`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RegistryChange {
    /// The device.
    pub device_id: DeviceId,
    /// Event time from which the change holds.
    pub effective_ms: TimeMs,
    /// The new entry, or `None` for a delete.
    pub info: Option<SharedDeviceInfo>,
}

/// A registry line that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("registry line {line}: {message}")]
pub struct RegistryError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryLine {
    device_id: String,
    #[serde(default)]
    effective_ms: TimeMs,
    #[serde(default)]
    deleted: bool,
    device_type: Option<String>,
    firmware: Option<String>,
    schema: Option<String>,
    org: Option<String>,
    site: Option<String>,
    building: Option<String>,
    model: Option<String>,
    #[serde(default)]
    thresholds: BTreeMap<String, ThresholdLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdLine {
    min: f64,
    max: f64,
}

/// Parses one changelog line (`line` is 1-based, for the error).
pub fn parse_registry_line(
    text: &str,
    line: usize,
    catalog: &MetricCatalog,
) -> Result<RegistryChange, RegistryError> {
    let error = |message: String| RegistryError { line, message };
    let entry: RegistryLine = serde_json::from_str(text).map_err(|e| error(format!("{e}")))?;
    if entry.device_id.is_empty() {
        return Err(error("device_id is empty".into()));
    }
    if entry.deleted {
        return Ok(RegistryChange {
            device_id: entry.device_id.into(),
            effective_ms: entry.effective_ms,
            info: None,
        });
    }
    let field = |value: Option<String>, name: &str| {
        value.ok_or_else(|| error(format!("`{name}` is missing (or set \"deleted\": true)")))
    };
    let mut thresholds = Vec::with_capacity(entry.thresholds.len());
    for (metric, t) in entry.thresholds {
        let id = catalog.id(&metric).ok_or_else(|| {
            error(format!(
                "thresholds.{metric}: no such metric in the schema catalog"
            ))
        })?;
        thresholds.push((
            id,
            Threshold {
                min: t.min,
                max: t.max,
            },
        ));
    }
    thresholds.sort_by_key(|(m, _)| *m);
    let info = DeviceInfo {
        device_type: field(entry.device_type, "device_type")?,
        firmware: field(entry.firmware, "firmware")?,
        schema: field(entry.schema, "schema")?,
        org: field(entry.org, "org")?,
        site: field(entry.site, "site")?,
        building: field(entry.building, "building")?,
        model: field(entry.model, "model")?,
        thresholds,
    };
    Ok(RegistryChange {
        device_id: entry.device_id.into(),
        effective_ms: entry.effective_ms,
        info: Some(Arc::new(info)),
    })
}

/// Parses a whole changelog, skipping blank lines.
pub fn parse_registry(
    text: &str,
    catalog: &MetricCatalog,
) -> Result<Vec<RegistryChange>, RegistryError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_registry_line(l, i + 1, catalog))
        .collect()
}

/// Every device's registry history, to ask "what was this device at time t?".
#[derive(Clone, Debug, Default)]
pub struct RegistryHistory {
    /// Per device, changes sorted by time; one per time.
    devices: FxHashMap<DeviceId, Vec<(TimeMs, Option<SharedDeviceInfo>)>>,
}

impl RegistryHistory {
    /// Builds the history of a changelog.
    ///
    /// Two changes to a device at the same time resolve as the arrangement resolves them: the
    /// greater `Option<DeviceInfo>` wins (an entry over a delete).
    pub fn new(changes: &[RegistryChange]) -> Self {
        let mut devices: FxHashMap<DeviceId, Vec<(TimeMs, Option<SharedDeviceInfo>)>> =
            FxHashMap::default();
        for change in changes {
            devices
                .entry(change.device_id.clone())
                .or_default()
                .push((change.effective_ms, change.info.clone()));
        }
        for history in devices.values_mut() {
            history.sort();
            // Keep the last (greatest) change at each time.
            history.reverse();
            history.dedup_by_key(|(t, _)| *t);
            history.reverse();
        }
        Self { devices }
    }

    /// Adds one change, resolved as [`new`](Self::new) resolves it.
    pub fn apply(&mut self, change: &RegistryChange) {
        let history = self.devices.entry(change.device_id.clone()).or_default();
        let entry = (change.effective_ms, change.info.clone());
        match history.binary_search_by_key(&change.effective_ms, |(t, _)| *t) {
            Ok(at) => history[at] = history[at].clone().max(entry),
            Err(at) => history.insert(at, entry),
        }
    }

    /// The device's entry at `ts_ms`, if it is registered then.
    pub fn at(&self, device_id: &str, ts_ms: TimeMs) -> Option<&SharedDeviceInfo> {
        let history = self.devices.get(device_id)?;
        let after = history.partition_point(|(t, _)| *t <= ts_ms);
        history[..after].last().and_then(|(_, info)| info.as_ref())
    }
}

/// The registry parser on input no one wrote: never a panic, an error naming the line.
#[cfg(test)]
mod poison {
    use super::*;
    use crate::dataflow::schema::SchemaSet;
    use proptest::prelude::*;

    const LINE: &str = r#"{"device_id":"dev-1","device_type":"thermostat","firmware":"1.0","schema":"v1","org":"o","site":"s","building":"b","model":"m","thresholds":{"temperature":{"min":10,"max":30}}}"#;

    proptest! {
        #[test]
        fn arbitrary_text_is_a_change_or_an_error_naming_its_line(text in "\\PC{0,300}", line in 1usize..10_000) {
            let schemas = SchemaSet::embedded();
            if let Err(e) = parse_registry_line(&text, line, schemas.catalog()) {
                prop_assert_eq!(e.line, line);
            }
        }

        #[test]
        fn mutations_of_a_valid_line_never_panic(at in 0usize..LINE.len(), byte in any::<u8>(), remove in any::<bool>()) {
            let mut bytes = LINE.as_bytes().to_vec();
            if remove { bytes.remove(at); } else { bytes.insert(at, byte); }
            let text = String::from_utf8_lossy(&bytes);
            let schemas = SchemaSet::embedded();
            let _ = parse_registry_line(&text, 1, schemas.catalog());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::schema::SchemaSet;

    const LINE: &str = r#"{"device_id":"dev-1","device_type":"thermostat","firmware":"1.0.0","schema":"v1","org":"org-000","site":"site-0001","building":"B1","model":"TH-100","thresholds":{"temperature":{"min":16.2,"max":27.3}}}"#;

    #[test]
    fn parses_the_workload_registry_format() {
        let schemas = SchemaSet::embedded();
        let change = parse_registry_line(LINE, 1, schemas.catalog()).unwrap();
        let info = change.info.unwrap();
        assert_eq!((change.effective_ms, info.site.as_str()), (0, "site-0001"));
        let temp = schemas.catalog().id("temperature").unwrap();
        assert!(info.threshold(temp).unwrap().is_breached_by(27.4));
    }

    #[test]
    fn history_answers_as_of_a_time() {
        let catalog = SchemaSet::embedded().catalog().clone();
        let moved = LINE
            .replace("site-0001", "site-0002")
            .replace("{\"device_id\"", "{\"effective_ms\":1000,\"device_id\"");
        let deleted = r#"{"device_id":"dev-1","effective_ms":2000,"deleted":true}"#;
        let changes = parse_registry(&format!("{LINE}\n{moved}\n\n{deleted}\n"), &catalog).unwrap();
        let history = RegistryHistory::new(&changes);
        assert_eq!(history.at("dev-1", 999).unwrap().site, "site-0001");
        assert_eq!(history.at("dev-1", 1000).unwrap().site, "site-0002");
        assert!(history.at("dev-1", 2000).is_none());
        assert!(history.at("dev-2", 0).is_none());

        let mut applied = RegistryHistory::default();
        for change in changes.iter().rev() {
            applied.apply(change);
        }
        for ts_ms in [0, 999, 1000, 1999, 2000] {
            assert_eq!(applied.at("dev-1", ts_ms), history.at("dev-1", ts_ms));
        }
    }

    #[test]
    fn bad_lines_name_the_line_and_field() {
        let catalog = SchemaSet::embedded().catalog().clone();
        let err =
            parse_registry(&format!("{LINE}\n{{\"device_id\":\"x\"}}"), &catalog).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("device_type"), "{err}");
    }
}
