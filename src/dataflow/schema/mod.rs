//! Message schemas as data.
//!
//! `datasets/schemas/` holds a `catalog.toml` (metrics, canonical units, physical ranges, unit
//! conversions) and one file per message variant (where the device id, the timestamp and the
//! metrics are). A new firmware variant is a new file, not new code. [`SchemaSet`] compiles them
//! once; [`SchemaSet::decode`] turns raw bytes into a [`DeviceMessage`](crate::dataflow::model::DeviceMessage) or a
//! [`DeadLetter`](crate::dataflow::model::DeadLetter).
//!
//! Variant matching is by key presence: each variant names top-level keys that identify it
//! (`match_keys`), and the first variant, most specific first, whose keys are all present wins.
//! Decoding walks a message's top level once, putting every key any variant reads in its slot,
//! so matching costs a few slot checks per message, never a trial parse per variant.

mod catalog;
mod decode;
pub mod json;
mod time_format;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

pub use catalog::{Metric, MetricCatalog};
pub use decode::{DEFAULT_MAX_MESSAGE_BYTES, Decoded, Decoder, MAX_TIMESTAMP_MS};
pub use time_format::{TimeFormat, format_rfc3339_ms, parse_rfc3339_ms};

use crate::dataflow::model::MetricId;

/// A schema file that does not parse or does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file is not valid TOML of the expected shape.
    #[error("schema file {file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// What the parser said.
        message: String,
    },
    /// The file parses but refers to something that does not exist.
    #[error("schema file {file}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// A variant file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantFile {
    /// The variant's name (reported in logs and metrics).
    name: String,
    /// Top-level keys whose presence identifies this variant.
    match_keys: Vec<String>,
    /// Top-level key holding the device id (a non-empty string).
    device_id: String,
    /// Where the message timestamp is.
    timestamp: TimestampDef,
    /// Where the metrics are.
    metrics: MetricsDef<String>,
}

/// Where a timestamp is and how it is written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimestampDef {
    /// Top-level key.
    field: String,
    /// Its format.
    format: TimeFormat,
}

/// The layouts metrics come in; `M` names a metric (a catalog name as written, a
/// [`MetricId`] once compiled).
#[derive(Debug, Deserialize)]
#[serde(tag = "layout", rename_all = "snake_case")]
enum MetricsDef<M> {
    /// Metrics are top-level numeric fields in canonical units, under their own names.
    Flat {
        /// Top-level field name -> metric. Other fields are ignored.
        fields: BTreeMap<String, M>,
    },
    /// Metrics are an object of `{name: {value, unit}}`.
    Nested(NestedLayout),
    /// An array of readings, each with its own time and a nested metrics object.
    Batch(BatchLayout),
}

/// Where nested metrics are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NestedLayout {
    /// Top-level key of the metrics object.
    field: String,
    /// Key of the value inside each metric object.
    value_key: String,
    /// Key of the unit inside each metric object (absent unit = canonical).
    unit_key: String,
}

/// Where a batch of readings is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLayout {
    /// Top-level key of the array.
    field: String,
    /// Key of each element's time.
    time_field: String,
    /// Format of each element's time.
    time_format: TimeFormat,
    /// Key of each element's metrics object.
    metrics_field: String,
    /// Key of the value inside each metric object.
    value_key: String,
    /// Key of the unit inside each metric object.
    unit_key: String,
}

/// Compiled metric layout.
type Layout = MetricsDef<MetricId>;

/// A compiled variant.
#[derive(Debug)]
struct Variant {
    name: String,
    match_keys: Vec<String>,
    device_id: String,
    timestamp_field: String,
    timestamp_format: TimeFormat,
    layout: Layout,
    /// Where each top-level key it reads lands in [`RootKeys`].
    slots: VariantSlots,
}

/// A variant's top-level keys as [`RootKeys`] slots.
#[derive(Debug, Default)]
struct VariantSlots {
    match_keys: Vec<usize>,
    device_id: usize,
    timestamp: usize,
    /// The nested metrics object or the batch array (none for a flat layout).
    metrics: Option<usize>,
}

/// Every top-level key any variant reads, each with a slot: decoding walks a message's top
/// level once, putting each wanted value in its slot, instead of scanning the object again
/// for every key of every variant it tries.
#[derive(Debug, Default)]
struct RootKeys {
    slots: rustc_hash::FxHashMap<String, usize>,
}

impl RootKeys {
    fn slot(&mut self, key: &str) -> usize {
        let next = self.slots.len();
        *self.slots.entry(key.to_owned()).or_insert(next)
    }
}

/// Every message variant, compiled against one catalog.
#[derive(Clone, Debug)]
pub struct SchemaSet {
    catalog: Arc<MetricCatalog>,
    variants: Arc<Vec<Variant>>,
    root_keys: Arc<RootKeys>,
}

/// The schemas shipped in `datasets/schemas/`, built into the binary.
const EMBEDDED_CATALOG: &str = include_str!("../../../datasets/schemas/catalog.toml");
const EMBEDDED_VARIANTS: [(&str, &str); 3] = [
    (
        "v1_flat.toml",
        include_str!("../../../datasets/schemas/v1_flat.toml"),
    ),
    (
        "v2_nested.toml",
        include_str!("../../../datasets/schemas/v2_nested.toml"),
    ),
    (
        "v3_batch.toml",
        include_str!("../../../datasets/schemas/v3_batch.toml"),
    ),
];

impl SchemaSet {
    /// The schemas shipped with iotpipe (`datasets/schemas/`).
    pub fn embedded() -> Self {
        Self::from_toml(EMBEDDED_CATALOG, &EMBEDDED_VARIANTS)
            .expect("the embedded schemas are valid (checked by tests)")
    }

    /// Compiles a catalog and variant files given as `(file name, text)`.
    pub fn from_toml<S: AsRef<str>>(
        catalog: &str,
        variants: &[(S, S)],
    ) -> Result<Self, SchemaError> {
        let catalog = MetricCatalog::from_toml(catalog)?;
        let mut compiled = Vec::with_capacity(variants.len());
        for (file, text) in variants {
            let file = file.as_ref();
            let def: VariantFile =
                toml::from_str(text.as_ref()).map_err(|e| SchemaError::Parse {
                    file: file.into(),
                    message: e.to_string(),
                })?;
            compiled.push(compile_variant(file, def, &catalog)?);
        }
        if compiled.is_empty() {
            return Err(SchemaError::Invalid {
                file: "(schema directory)".into(),
                message: "no variant files: add at least one *.toml besides catalog.toml".into(),
            });
        }
        // Most specific first; ties by name so every process matches the same way.
        compiled.sort_by(|a, b| {
            b.match_keys
                .len()
                .cmp(&a.match_keys.len())
                .then_with(|| a.name.cmp(&b.name))
        });
        let mut root_keys = RootKeys::default();
        for variant in &mut compiled {
            variant.slots = VariantSlots {
                match_keys: variant
                    .match_keys
                    .iter()
                    .map(|k| root_keys.slot(k))
                    .collect(),
                device_id: root_keys.slot(&variant.device_id),
                timestamp: root_keys.slot(&variant.timestamp_field),
                metrics: match &variant.layout {
                    Layout::Flat { .. } => None,
                    Layout::Nested(nested) => Some(root_keys.slot(&nested.field)),
                    Layout::Batch(batch) => Some(root_keys.slot(&batch.field)),
                },
            };
        }
        Ok(Self {
            catalog: Arc::new(catalog),
            variants: Arc::new(compiled),
            root_keys: Arc::new(root_keys),
        })
    }

    /// The metric catalog.
    pub fn catalog(&self) -> &Arc<MetricCatalog> {
        &self.catalog
    }

    /// Names of the variants, in matching order.
    pub fn variant_names(&self) -> Vec<&str> {
        self.variants.iter().map(|v| v.name.as_str()).collect()
    }
}

fn compile_variant(
    file: &str,
    def: VariantFile,
    catalog: &MetricCatalog,
) -> Result<Variant, SchemaError> {
    let invalid = |message: String| SchemaError::Invalid {
        file: file.into(),
        message,
    };
    if def.match_keys.is_empty() {
        return Err(invalid(
            "match_keys is empty: name at least one top-level key that identifies the variant"
                .into(),
        ));
    }
    let layout = match def.metrics {
        MetricsDef::Flat { fields } => {
            let mut compiled = BTreeMap::new();
            for (field, metric) in fields {
                let id = catalog.id(&metric).ok_or_else(|| {
                    invalid(format!(
                        "metrics.fields.{field} = \"{metric}\": no such metric in catalog.toml"
                    ))
                })?;
                compiled.insert(field, id);
            }
            Layout::Flat { fields: compiled }
        }
        MetricsDef::Nested(nested) => Layout::Nested(nested),
        MetricsDef::Batch(batch) => Layout::Batch(batch),
    };
    Ok(Variant {
        name: def.name,
        match_keys: def.match_keys,
        device_id: def.device_id,
        timestamp_field: def.timestamp.field,
        timestamp_format: def.timestamp.format,
        layout,
        slots: VariantSlots::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_schemas_compile() {
        let set = SchemaSet::embedded();
        assert_eq!(set.variant_names(), ["v1_flat", "v2_nested", "v3_batch"]);
        assert_eq!(set.catalog().len(), 14);
    }

    #[test]
    fn unknown_metric_in_a_variant_names_the_field() {
        let variant = r#"
            name = "x"
            match_keys = ["ts"]
            device_id = "id"
            [timestamp]
            field = "ts"
            format = "epoch_ms"
            [metrics]
            layout = "flat"
            [metrics.fields]
            tmp = "temprature"
        "#;
        let err = SchemaSet::from_toml(EMBEDDED_CATALOG, &[("x.toml", variant)]).unwrap_err();
        assert!(err.to_string().contains("metrics.fields.tmp"), "{err}");
    }

    #[test]
    fn unknown_keys_in_a_variant_are_rejected() {
        let variant = EMBEDDED_VARIANTS[0]
            .1
            .replace("device_id = ", "devce = \"x\"\ndevice_id = ");
        let err =
            SchemaSet::from_toml(EMBEDDED_CATALOG, &[("v1.toml", variant.as_str())]).unwrap_err();
        assert!(err.to_string().contains("devce"), "{err}");
    }
}
