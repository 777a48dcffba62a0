//! The warehouse's state file (`_iotpipe_etl_state.json`): for each day, the fingerprints of
//! what its partitions were computed from (the store's windows, the device versions over the
//! day, the code), so that a run skips a day nothing changed in and rewrites one that did.
//! Replaced by rename like the partitions; a run killed before it was saved redoes that day,
//! with the same result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::WarehouseError;

/// The state file's name, in the warehouse folder (an underscore: not a table).
pub const STATE_FILE: &str = "_iotpipe_etl_state.json";

/// What the warehouse was computed from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtlState {
    /// Fingerprint of the device dimension last written.
    #[serde(default)]
    pub dimension: Option<String>,
    /// Each day rolled up, by `YYYY-MM-DD`.
    #[serde(default)]
    pub days: BTreeMap<String, DayState>,
}

/// What one day's partitions were computed from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DayState {
    /// Fingerprint of the day's windows in the store.
    pub source: String,
    /// Windows the store held for the day.
    pub windows: u64,
    /// Fingerprint of the device versions over the day.
    pub dimension: String,
    /// The code that wrote them (iotpipe's version and the tables' schema version).
    pub code: String,
    /// Rows written, per table.
    pub rows: BTreeMap<String, u64>,
}

fn path(warehouse: &Path) -> PathBuf {
    warehouse.join(STATE_FILE)
}

impl EtlState {
    /// The state of `warehouse` (empty if it has none yet).
    pub fn load(warehouse: &Path) -> Result<Self, WarehouseError> {
        let path = path(warehouse);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| WarehouseError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(WarehouseError::Io { path, source }),
        }
    }

    /// Replaces the state file: written beside it, synced, renamed over it.
    pub fn save(&self, warehouse: &Path) -> Result<(), WarehouseError> {
        let path = path(warehouse);
        let temporary = warehouse.join(format!(".{STATE_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).expect("the state serialises");
        let io = |source| WarehouseError::Io {
            path: temporary.clone(),
            source,
        };
        std::fs::create_dir_all(warehouse).map_err(io)?;
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary).map_err(io)?;
            file.write_all(&json).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&temporary, &path).map_err(|source| WarehouseError::Io {
            path: path.clone(),
            source,
        })?;
        std::fs::File::open(warehouse)
            .and_then(|d| d.sync_all())
            .map_err(|source| WarehouseError::Io {
                path: warehouse.to_owned(),
                source,
            })
    }
}
