//! `iotpipe registry import` and `export`: the JSON Lines registry into the metadata store and
//! back out, in the lines `replay --registry` and the registry topic take.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dataflow::registry::parse_registry_line;
use crate::io::connect::store::registry::{ImportReport, RegistryEntry};
use crate::io::connect::store::{Store, StoreConfig, StoreError};
use crate::io::support::schema_files::load_schema_dir;

/// What `registry import` reads and where it writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportConfig {
    /// The registry changelog, JSON Lines.
    pub file: PathBuf,
    /// The store.
    pub store: StoreConfig,
    /// Schema directory whose metric catalog thresholds are checked against (none: the
    /// built-in schemas).
    #[serde(default)]
    pub schemas: Option<PathBuf>,
}

/// What `registry export` reads and where it writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// The store.
    pub store: StoreConfig,
    /// Where the lines go (none: standard output).
    #[serde(default)]
    pub out: Option<PathBuf>,
}

/// The registry could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum RegistryCommandError {
    /// The file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A line cannot be used: nothing was imported.
    #[error("{path}: {source}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The line and what is wrong with it.
        source: crate::dataflow::registry::RegistryError,
    },
    /// The schemas could not be loaded.
    #[error("schemas: {0}")]
    Schemas(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks every line of `config.file` (as `replay` would read it), then imports them all.
pub async fn run_import(config: &ImportConfig) -> Result<ImportReport, RegistryCommandError> {
    let file_error = |message: String| RegistryCommandError::File {
        path: config.file.clone(),
        message,
    };
    let text = std::fs::read_to_string(&config.file).map_err(|e| file_error(e.to_string()))?;
    let schemas = match &config.schemas {
        None => crate::dataflow::schema::SchemaSet::embedded(),
        Some(dir) => {
            load_schema_dir(dir).map_err(|e| RegistryCommandError::Schemas(e.to_string()))?
        }
    };
    let mut entries = Vec::new();
    for (index, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        parse_registry_line(line, index + 1, schemas.catalog()).map_err(|source| {
            RegistryCommandError::Line {
                path: config.file.clone(),
                source,
            }
        })?;
        let entry: RegistryEntry = serde_json::from_str(line)
            .map_err(|e| file_error(format!("line {}: {e}", index + 1)))?;
        entries.push(entry);
    }
    let store = Store::open(&config.store, |name| std::env::var(name).ok()).await?;
    Ok(store.import_registry(&entries).await?)
}

/// Writes every device change in the store as registry lines, in log order; the number of
/// lines.
pub async fn run_export(config: &ExportConfig) -> Result<usize, RegistryCommandError> {
    let store = Store::open(&config.store, |name| std::env::var(name).ok()).await?;
    let entries = store.export_registry().await?;
    let mut text = String::new();
    for entry in &entries {
        text.push_str(&serde_json::to_string(entry).expect("entries serialise"));
        text.push('\n');
    }
    match &config.out {
        Some(path) => std::fs::write(path, text).map_err(|e| RegistryCommandError::File {
            path: path.clone(),
            message: e.to_string(),
        })?,
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(|e| RegistryCommandError::File {
                path: "stdout".into(),
                message: e.to_string(),
            })?,
    }
    Ok(entries.len())
}
