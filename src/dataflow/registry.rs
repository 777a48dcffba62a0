//! The device registry: its changelog format and an as-of view of it.
//!
//! The registry is a changelog of JSON objects, one a line, as the workload writes it:
//! `{"device_id", "device_type", "firmware", "schema", "org", "site", "building", "model",
//! "thresholds": {metric: {min, max}}}`. Two optional fields make it a changelog:
//! `effective_ms` (the event time from which the entry holds; absent = from the beginning) and
//! `"deleted": true` (the device leaves the registry at `effective_ms`).
//!
//! In the dataflow each line becomes changes of its device, places and model
//! ([`RegistryChange::to_updates`]), which [`crate::dataflow::metadata`] joins back into
//! entries; [`MetadataHistory`](crate::dataflow::metadata::MetadataHistory) answers the same
//! question outside the dataflow, for sources that must know whether a device is registered before the
//! message enters (a reading of an unregistered device must not advance the watermark).

use std::collections::BTreeMap;
use std::sync::Arc;

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
    fn bad_lines_name_the_line_and_field() {
        let catalog = SchemaSet::embedded().catalog().clone();
        let err =
            parse_registry(&format!("{LINE}\n{{\"device_id\":\"x\"}}"), &catalog).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("device_type"), "{err}");
    }
}
