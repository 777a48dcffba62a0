//! The Parquet warehouse on disk: Hive-style partitions (`TABLE/date=YYYY-MM-DD/part-0.parquet`),
//! each replaced atomically, and the state file that makes reruns no-ops.
//!
//! A partition's file is written beside the live one under a hidden name
//! (`.part-0.parquet.tmp`, which no reader's `*.parquet` glob matches), synced, renamed over
//! it, and the folder synced: a reader sees the old file or the new one, and a process killed
//! at any point leaves one of the two (and perhaps a temporary file, which the next write of
//! that partition removes).

pub mod state;
pub mod tables;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use tables::SCHEMA_VERSION;

/// The file of each partition.
pub const PART_FILE: &str = "part-0.parquet";

/// Rows per row group: a reader's unit of skipping, and the most a writer holds before writing
/// (bounded memory however large the day).
const ROW_GROUP_ROWS: usize = 131_072;

/// A file could not be written or replaced.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Parquet writer refused.
    #[error("{path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// Why.
        source: parquet::errors::ParquetError,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> WarehouseError + '_ {
    move |source| WarehouseError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The folder of a table's partition for `date`.
pub fn partition_dir(warehouse: &Path, table: &str, date: &str) -> PathBuf {
    warehouse.join(table).join(format!("date={date}"))
}

/// Where a write stops on purpose, for tests of what a kill leaves:
/// `IOTPIPE_ETL_FAILPOINT=before_rename:N` aborts the process at the `N`th rename (1-based),
/// after the new file was written and synced and before it replaces the old one.
fn failpoint_before_rename() {
    static RENAMES: AtomicUsize = AtomicUsize::new(0);
    let Ok(spec) = std::env::var("IOTPIPE_ETL_FAILPOINT") else {
        return;
    };
    let nth = spec
        .strip_prefix("before_rename:")
        .and_then(|n| n.parse::<usize>().ok());
    if nth == Some(RENAMES.fetch_add(1, Ordering::SeqCst) + 1) {
        eprintln!("iotpipe etl: failpoint {spec}: aborting");
        std::process::abort();
    }
}

/// One table file being written beside the one it replaces.
pub struct TableFile {
    path: PathBuf,
    temporary: PathBuf,
    writer: ArrowWriter<File>,
    rows: u64,
}

impl TableFile {
    /// Starts `dir/file` (created with its folders), of `schema`, with `table`'s name in its
    /// metadata. A temporary file a killed run left there is replaced.
    pub fn create(
        dir: &Path,
        file: &str,
        table: &str,
        schema: &SchemaRef,
    ) -> Result<Self, WarehouseError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let path = dir.join(file);
        let temporary = dir.join(format!(".{file}.tmp"));
        let out = File::create(&temporary).map_err(io_error(&temporary))?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_key_value_metadata(Some(vec![
                KeyValue::new("iotpipe.schema_version".into(), SCHEMA_VERSION.to_owned()),
                KeyValue::new("iotpipe.table".into(), table.to_owned()),
            ]))
            .build();
        let writer =
            ArrowWriter::try_new(out, schema.clone(), Some(properties)).map_err(|source| {
                WarehouseError::Parquet {
                    path: temporary.clone(),
                    source,
                }
            })?;
        Ok(Self {
            path,
            temporary,
            writer,
            rows: 0,
        })
    }

    /// Appends rows.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), WarehouseError> {
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(batch)
            .map_err(|source| WarehouseError::Parquet {
                path: self.temporary.clone(),
                source,
            })
    }

    /// Finishes the file, syncs it and renames it over the live one; its rows and bytes.
    pub fn commit(self) -> Result<(u64, u64), WarehouseError> {
        let parquet = |source| WarehouseError::Parquet {
            path: self.temporary.clone(),
            source,
        };
        let file = self.writer.into_inner().map_err(parquet)?;
        file.sync_all().map_err(io_error(&self.temporary))?;
        let bytes = file.metadata().map_err(io_error(&self.temporary))?.len();
        drop(file);
        failpoint_before_rename();
        std::fs::rename(&self.temporary, &self.path).map_err(io_error(&self.path))?;
        let dir = self.path.parent().expect("a file in a folder");
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))?;
        Ok((self.rows, bytes))
    }
}

/// Writes one batch as the whole of `dir/file`, replacing it atomically; its rows and bytes.
pub fn write_table(
    dir: &Path,
    file: &str,
    table: &str,
    batch: &RecordBatch,
) -> Result<(u64, u64), WarehouseError> {
    let mut out = TableFile::create(dir, file, table, &batch.schema())?;
    out.write(batch)?;
    out.commit()
}
