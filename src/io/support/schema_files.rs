//! Loading schemas and the registry from files.

use std::path::{Path, PathBuf};

use crate::dataflow::alert::AlertControl;
use crate::dataflow::alert::control::{ControlLine, SilenceMatch};
use crate::dataflow::registry::{RegistryChange, RegistryError, parse_registry};
use crate::dataflow::schema::MetricCatalog;
use crate::dataflow::schema::{SchemaError, SchemaSet};

/// A file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A schema file is wrong.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A registry line is wrong.
    #[error("{path}: {source}")]
    Registry {
        /// The file.
        path: PathBuf,
        /// Which line and why.
        source: RegistryError,
    },
    /// A line of silences and acknowledgements is wrong.
    #[error("{path}:{line}: {message}")]
    AlertControl {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// What is wrong.
        message: String,
    },
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Loads `catalog.toml` and every other `*.toml` of a schema directory.
pub fn load_schema_dir(dir: &Path) -> Result<SchemaSet, LoadError> {
    let catalog = read(&dir.join("catalog.toml"))?;
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut variants = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| LoadError::Io {
                path: dir.to_owned(),
                source,
            })?
            .path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.ends_with(".toml") && name != "catalog.toml" {
            variants.push((name, read(&path)?));
        }
    }
    variants.sort();
    Ok(SchemaSet::from_toml(&catalog, &variants)?)
}

/// Loads a registry changelog file.
pub fn load_registry(path: &Path, schemas: &SchemaSet) -> Result<Vec<RegistryChange>, LoadError> {
    parse_registry(&read(path)?, schemas.catalog()).map_err(|source| LoadError::Registry {
        path: path.to_owned(),
        source,
    })
}

/// Loads silences, acknowledgements and rules changes, JSON Lines (what `GET /v1/alert-controls`
/// of the registry API gives): each a silence (`"kind": "silence"`), an acknowledgement
/// (`"kind": "acknowledgement"`) or new rules (`"kind": "rules"`), metric names checked
/// against the catalog.
pub fn load_alert_controls(
    path: &Path,
    catalog: &MetricCatalog,
) -> Result<Vec<AlertControl>, LoadError> {
    let text = read(path)?;
    let mut controls = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let error = |message: String| LoadError::AlertControl {
            path: path.to_owned(),
            line: i + 1,
            message,
        };
        let mut control: AlertControl = serde_json::from_str::<ControlLine>(line)
            .map_err(|e| error(e.to_string()))?
            .into();
        match &mut control {
            AlertControl::Silence(silence) => {
                resolve_matchers(&mut silence.matchers, catalog).map_err(error)?;
            }
            AlertControl::Rules(change) => {
                change
                    .rules
                    .resolve(catalog)
                    .map_err(|e| error(format!("rules.{e}")))?;
            }
            AlertControl::Acknowledgement(_) => {}
        }
        controls.push(control);
    }
    Ok(controls)
}

/// Resolves a silence's metric names; the error names the unknown one.
pub fn resolve_matchers(
    matchers: &mut SilenceMatch,
    catalog: &MetricCatalog,
) -> Result<(), String> {
    matchers.resolve(catalog).map_err(|name| {
        format!("matchers.metrics: unknown metric `{name}` (see the metric catalog)")
    })
}
