//! The metric catalog: canonical units, physical ranges and unit conversions.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::SchemaError;
use crate::dataflow::model::MetricId;

/// `catalog.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    /// Metric name -> its definition.
    metrics: BTreeMap<String, MetricDef>,
    /// Unit conversions into canonical units.
    #[serde(default)]
    conversions: Vec<ConversionDef>,
}

/// One metric as declared in the catalog.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricDef {
    /// Canonical unit of every normalised reading.
    unit: String,
    /// Lowest physically possible value, inclusive.
    min: f64,
    /// Highest physically possible value, inclusive.
    max: f64,
}

/// A conversion `((x - subtract) * multiply) / divide` from one unit to another.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversionDef {
    /// The unit a device reports.
    from: String,
    /// The canonical unit it converts to.
    to: String,
    /// Subtracted first.
    #[serde(default)]
    subtract: f64,
    /// Then multiplied by.
    #[serde(default = "one")]
    multiply: f64,
    /// Then divided by.
    #[serde(default = "one")]
    divide: f64,
}

fn one() -> f64 {
    1.0
}

/// A compiled metric.
#[derive(Clone, Debug)]
pub struct Metric {
    /// Its name, as in the output.
    pub name: String,
    /// Canonical unit.
    pub unit: String,
    /// Physical range, inclusive.
    pub min: f64,
    /// Physical range, inclusive.
    pub max: f64,
    /// Conversions from other units: (unit, subtract, multiply, divide).
    conversions: Vec<(String, f64, f64, f64)>,
}

impl Metric {
    /// Converts `value` reported in `unit` to the canonical unit; `None` if no conversion exists.
    pub fn to_canonical(&self, value: f64, unit: &str) -> Option<f64> {
        if unit == self.unit {
            return Some(value);
        }
        self.conversions
            .iter()
            .find(|(from, ..)| from == unit)
            .map(|(_, subtract, multiply, divide)| ((value - subtract) * multiply) / divide)
    }

    /// Whether `value` (canonical) is physically possible.
    pub fn in_range(&self, value: f64) -> bool {
        value >= self.min && value <= self.max
    }
}

/// All metrics, indexed by [`MetricId`] (names sorted, so every process agrees on the ids).
#[derive(Clone, Debug)]
pub struct MetricCatalog {
    metrics: Vec<Metric>,
    /// Each name's id: decoding looks up every reading's metric by name, and a hash of a short
    /// name beats a binary search of string comparisons.
    ids: rustc_hash::FxHashMap<String, MetricId>,
}

impl MetricCatalog {
    /// Parses `catalog.toml`.
    pub fn from_toml(text: &str) -> Result<Self, SchemaError> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| SchemaError::Parse {
            file: "catalog.toml".into(),
            message: e.to_string(),
        })?;
        if file.metrics.len() > u16::MAX as usize {
            return Err(SchemaError::Invalid {
                file: "catalog.toml".into(),
                message: "more than 65535 metrics".into(),
            });
        }
        let mut metrics = Vec::with_capacity(file.metrics.len());
        for (name, def) in file.metrics {
            if def.min > def.max {
                return Err(SchemaError::Invalid {
                    file: "catalog.toml".into(),
                    message: format!("metrics.{name}: min {} is above max {}", def.min, def.max),
                });
            }
            let conversions = file
                .conversions
                .iter()
                .filter(|c| c.to == def.unit)
                .map(|c| (c.from.clone(), c.subtract, c.multiply, c.divide))
                .collect();
            metrics.push(Metric {
                name,
                unit: def.unit,
                min: def.min,
                max: def.max,
                conversions,
            });
        }
        let ids = metrics
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), MetricId(i as u16)))
            .collect();
        Ok(Self { metrics, ids })
    }

    /// The id of the metric called `name`.
    pub fn id(&self, name: &str) -> Option<MetricId> {
        self.ids.get(name).copied()
    }

    /// The ids of the metrics `names` calls; the first name the catalog lacks is the error.
    pub fn ids(&self, names: &[String]) -> Result<Vec<MetricId>, String> {
        names
            .iter()
            .map(|name| self.id(name).ok_or_else(|| name.clone()))
            .collect()
    }

    /// The metric with this id.
    pub fn get(&self, id: MetricId) -> &Metric {
        &self.metrics[id.0 as usize]
    }

    /// The name of the metric with this id.
    pub fn name(&self, id: MetricId) -> &str {
        &self.get(id).name
    }

    /// Number of metrics.
    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    /// Whether the catalog is empty.
    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }
}
