//! `iotpipe registry serve`: the registry API over the metadata store; `import` and `export`:
//! the JSON Lines registry into the store and back out, in the lines `replay --registry` and
//! the registry topic take.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dataflow::registry::parse_registry_line;
use crate::io::connect::store::registry::{ImportReport, RegistryEntry};
use crate::io::connect::store::{Store, StoreConfig, StoreError};
use crate::io::serve::registry_api::auth::{TokenConfig, Tokens};
use crate::io::serve::registry_api::{self, ApiState};
use crate::io::support::schema_files::load_schema_dir;
use std::sync::Arc;

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

/// What `registry serve` serves and with which tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// `host:port` to listen on.
    pub listen: std::net::SocketAddr,
    /// The store.
    pub store: StoreConfig,
    /// The bearer tokens accepted (at least one).
    pub tokens: Vec<TokenConfig>,
    /// Schema directory whose metric catalog bodies' thresholds are checked against (none:
    /// the built-in schemas).
    #[serde(default)]
    pub schemas: Option<PathBuf>,
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
    /// A setting of `registry serve` cannot work.
    #[error("{field}: {message}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The API could not listen.
    #[error("listen {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

fn load_schemas(
    dir: &Option<PathBuf>,
) -> Result<crate::dataflow::schema::SchemaSet, RegistryCommandError> {
    match dir {
        None => Ok(crate::dataflow::schema::SchemaSet::embedded()),
        Some(dir) => load_schema_dir(dir).map_err(|e| RegistryCommandError::Schemas(e.to_string())),
    }
}

/// Serves the registry API until `shutdown` completes; `ready` gets the address it listens on.
pub async fn run_serve(
    config: &ServeConfig,
    env: impl Fn(&str) -> Option<String>,
    ready: impl FnOnce(std::net::SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RegistryCommandError> {
    let tokens =
        Tokens::load(&config.tokens, &env).map_err(|message| RegistryCommandError::Config {
            field: "tokens",
            message,
        })?;
    if tokens.is_empty() {
        return Err(RegistryCommandError::Config {
            field: "tokens",
            message: "none given: the API needs a read token or a write token".into(),
        });
    }
    let schemas = load_schemas(&config.schemas)?;
    let store = Store::open(&config.store, &env).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RegistryCommandError::Listen {
            addr: config.listen,
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| RegistryCommandError::Listen {
            addr: config.listen,
            source,
        })?;
    tracing::info!(%local, "registry API at /v1, OpenAPI at /openapi.json");
    ready(local);
    let state = Arc::new(ApiState {
        store,
        tokens,
        catalog: Arc::clone(schemas.catalog()),
    });
    registry_api::serve(listener, state, shutdown)
        .await
        .map_err(|source| RegistryCommandError::Listen {
            addr: config.listen,
            source,
        })
}

/// Checks every line of `config.file` (as `replay` would read it), then imports them all.
pub async fn run_import(config: &ImportConfig) -> Result<ImportReport, RegistryCommandError> {
    let file_error = |message: String| RegistryCommandError::File {
        path: config.file.clone(),
        message,
    };
    let text = std::fs::read_to_string(&config.file).map_err(|e| file_error(e.to_string()))?;
    let schemas = load_schemas(&config.schemas)?;
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
