//! `iotpipe etl`: the time-series store rolled up into a Parquet warehouse.
//!
//! Each run looks at a range of UTC days (`--from/--to`, or the trailing `horizon_days` and
//! today), and for each day compares three fingerprints with those the state file recorded
//! when the day was last written: the store's windows of the day, the device versions over
//! the day, and the code. A day whose fingerprints all match is skipped; any other is rolled
//! up again whole and its partitions replaced. So a run repeated is a no-op, a run killed
//! anywhere and started again converges to the same files, data that reached the store late
//! rewrites only its day, and a registry correction in the past rewrites only the days it
//! touches.
//!
//! A day is read an hour-chunk at a time (`chunk_hours`), InfluxDB adding each device's
//! windows into hours (one row per device, metric and hour); only the hours in which a device
//! moved between places are read window by window, to attribute each window to the places the
//! device was in at its start. Memory is bounded by a chunk's device-hours and a day's
//! device-days, whatever the data's volume.

pub mod config;
mod day;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::dataflow::metadata::MetadataHistory;
use crate::dataflow::registry::parse_registry;
use crate::dataflow::warehouse::dimension::Dimension;
use crate::dataflow::warehouse::rollup::{DAY_MS, date_of};
use crate::io::connect::influx::query::InfluxReader;
use crate::io::connect::store::Store;
use crate::io::sinks::warehouse::state::{DayState, EtlState};
use crate::io::sinks::warehouse::tables::{
    DIMENSION_TABLE, SCHEMA_VERSION, dimension_batch, dimension_schema,
};
use crate::io::sinks::warehouse::{PART_FILE, WarehouseError, write_table};
use crate::io::sources::influx_windows::WindowStore;
use crate::io::sources::store::read_history;
use crate::io::support::schema_files::load_schema_dir;

pub use config::{EtlConfig, EtlConfigError, EtlRun};
use day::{DayOutcome, roll_up_day};

/// What the code that writes the tables is: a change of either rewrites every day it looks at.
pub fn code_version() -> String {
    format!(
        "iotpipe {} schema {SCHEMA_VERSION}",
        env!("CARGO_PKG_VERSION")
    )
}

/// What went wrong in a run.
#[derive(Debug, thiserror::Error)]
pub enum EtlError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] EtlConfigError),
    /// The metadata could not be read.
    #[error("metadata: {0}")]
    Metadata(String),
    /// The store's windows could not be read.
    #[error("{date}: reading the store: {source}")]
    Read {
        /// The day.
        date: String,
        /// Why.
        source: crate::io::connect::influx::query::InfluxQueryError,
    },
    /// A file could not be written.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EtlReport {
    /// Passes over the range (more than one with `--every`).
    pub passes: u64,
    /// Days looked at.
    pub days_examined: u64,
    /// Days rolled up and written.
    pub days_written: u64,
    /// Days whose fingerprints matched: nothing written.
    pub days_unchanged: u64,
    /// Days the store has no windows of: nothing written (a partition is never emptied).
    pub days_empty: u64,
    /// Days the store now has fewer windows of than were rolled up (its retention dropped
    /// some): kept as they were, unless `--force`.
    pub days_kept: u64,
    /// Device-hour rows read from the store.
    pub rows_read: u64,
    /// Minute windows read for hours in which a device moved.
    pub windows_read: u64,
    /// Rows written, over all tables.
    pub rows_written: u64,
    /// Parquet bytes written.
    pub bytes_written: u64,
    /// Rows of the device dimension.
    pub dimension_rows: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl EtlReport {
    fn add(&mut self, other: &EtlReport) {
        self.passes += other.passes;
        self.days_examined += other.days_examined;
        self.days_written += other.days_written;
        self.days_unchanged += other.days_unchanged;
        self.days_empty += other.days_empty;
        self.days_kept += other.days_kept;
        self.rows_read += other.rows_read;
        self.windows_read += other.windows_read;
        self.rows_written += other.rows_written;
        self.bytes_written += other.bytes_written;
        self.dimension_rows = other.dimension_rows;
    }
}

/// The UTC days a pass looks at: `[from, to)` when given (`to` defaults to tomorrow), else the
/// `horizon_days` before today and today.
pub fn plan_days(
    now_ms: u64,
    horizon_days: u32,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
) -> Vec<u64> {
    let today = now_ms - now_ms % DAY_MS;
    let from = from_ms.unwrap_or_else(|| today.saturating_sub(horizon_days as u64 * DAY_MS));
    let to = to_ms.unwrap_or(today + DAY_MS);
    (from / DAY_MS..to.div_ceil(DAY_MS))
        .map(|d| d * DAY_MS)
        .collect()
}

/// Runs `config` as `run` asks: one pass, or one every `run.every_ms` until `stop` is set.
pub fn run_etl(
    config: &EtlConfig,
    run: &EtlRun,
    stop: Arc<AtomicBool>,
) -> Result<EtlReport, EtlError> {
    let (from_ms, to_ms) = config.validate(run)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers.max(1))
        .enable_all()
        .build()
        .map_err(|e| EtlError::Metadata(e.to_string()))?;
    let endpoint = config.influx.validate().map_err(EtlConfigError::from)?;
    let api = runtime
        .block_on(config.influx.resolve(&endpoint))
        .map_err(EtlConfigError::from)?;
    let timeout = Duration::from_millis(config.query_timeout_ms);
    let windows = WindowStore::new(InfluxReader::new(endpoint, &api, timeout));
    let mut total = EtlReport::default();
    loop {
        let started = Instant::now();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64;
        let days = plan_days(now_ms, config.horizon_days, from_ms, to_ms);
        match pass(config, run, &runtime, &windows, &days, &stop) {
            Ok(mut report) => {
                report.seconds = started.elapsed().as_secs_f64();
                tracing::info!(
                    days = report.days_examined,
                    written = report.days_written,
                    unchanged = report.days_unchanged,
                    seconds = report.seconds,
                    "etl pass done"
                );
                total.add(&report);
                total.seconds += report.seconds;
            }
            // A service keeps its schedule through a store that is down for a while.
            Err(e) if run.every_ms.is_some() => {
                tracing::error!(error = %e, "etl pass failed; next at the next tick");
            }
            Err(e) => return Err(e),
        }
        let Some(every_ms) = run.every_ms else {
            return Ok(total);
        };
        let next = started + Duration::from_millis(every_ms);
        while Instant::now() < next {
            if stop.load(Ordering::Acquire) {
                return Ok(total);
            }
            std::thread::sleep(Duration::from_millis(200).min(next - Instant::now()));
        }
        if stop.load(Ordering::Acquire) {
            return Ok(total);
        }
    }
}

/// The device history, from the store or the registry file.
fn load_history(
    config: &EtlConfig,
    runtime: &tokio::runtime::Runtime,
) -> Result<MetadataHistory, EtlError> {
    let schemas = match &config.schemas {
        Some(dir) => {
            load_schema_dir(dir).map_err(|e| EtlError::Metadata(format!("schemas: {e}")))?
        }
        None => crate::dataflow::schema::SchemaSet::embedded(),
    };
    let catalog = schemas.catalog();
    if let Some(store) = &config.store {
        return runtime.block_on(async {
            let store = Store::open(store, |name| std::env::var(name).ok())
                .await
                .map_err(|e| EtlError::Metadata(e.to_string()))?;
            read_history(&store, catalog)
                .await
                .map_err(|e| EtlError::Metadata(e.to_string()))
        });
    }
    let path = config
        .registry
        .as_ref()
        .expect("validated: a store or a registry");
    let text = std::fs::read_to_string(path)
        .map_err(|e| EtlError::Metadata(format!("registry {}: {e}", path.display())))?;
    let changes = parse_registry(&text, catalog)
        .map_err(|e| EtlError::Metadata(format!("registry {}: {e}", path.display())))?;
    Ok(MetadataHistory::of_changes(&changes))
}

/// One pass: the dimension, then each day that changed.
fn pass(
    config: &EtlConfig,
    run: &EtlRun,
    runtime: &tokio::runtime::Runtime,
    windows: &WindowStore,
    days: &[u64],
    stop: &AtomicBool,
) -> Result<EtlReport, EtlError> {
    let warehouse = config.warehouse.as_path();
    let dimension = Dimension::of(&load_history(config, runtime)?);
    let mut state = EtlState::load(warehouse)?;
    let mut report = EtlReport {
        passes: 1,
        dimension_rows: dimension.rows().len() as u64,
        ..EtlReport::default()
    };
    let fingerprint = format!("{} {}", dimension.fingerprint(), code_version());
    let dimension_dir = warehouse.join(DIMENSION_TABLE);
    if run.force
        || state.dimension.as_deref() != Some(&fingerprint)
        || !dimension_dir.join(PART_FILE).exists()
    {
        let batch = dimension_batch(&dimension_schema(&dimension), &dimension);
        let (rows, bytes) = write_table(&dimension_dir, PART_FILE, DIMENSION_TABLE, &batch)?;
        report.rows_written += rows;
        report.bytes_written += bytes;
        state.dimension = Some(fingerprint);
        state.save(warehouse)?;
    }
    let progress = progress_bar(days.len() as u64, run.progress);
    let state = Mutex::new(state);
    let report = Mutex::new(report);
    let next_day = std::sync::atomic::AtomicUsize::new(0);
    let failure: Mutex<Option<EtlError>> = Mutex::new(None);
    // Days are independent: `workers` of them at once, each its own queries and files.
    std::thread::scope(|scope| {
        for _ in 0..config.workers.max(1) {
            scope.spawn(|| {
                loop {
                    let index = next_day.fetch_add(1, Ordering::SeqCst);
                    if index >= days.len()
                        || stop.load(Ordering::Acquire)
                        || failure.lock().unwrap().is_some()
                    {
                        return;
                    }
                    let day = days[index];
                    let known = state.lock().unwrap().days.get(&date_of(day)).cloned();
                    let outcome =
                        runtime.block_on(examine_day(config, run, windows, &dimension, day, known));
                    progress.inc(1);
                    let mut report = report.lock().unwrap();
                    report.days_examined += 1;
                    match outcome {
                        Ok(DayOutcome::Written {
                            state: day_state,
                            report: day_report,
                        }) => {
                            report.days_written += 1;
                            report.rows_read += day_report.rows_read;
                            report.windows_read += day_report.windows_read;
                            report.rows_written += day_report.rows_written;
                            report.bytes_written += day_report.bytes_written;
                            let mut state = state.lock().unwrap();
                            state.days.insert(date_of(day), day_state);
                            if let Err(e) = state.save(&config.warehouse) {
                                failure.lock().unwrap().get_or_insert(e.into());
                            }
                        }
                        Ok(DayOutcome::Unchanged) => report.days_unchanged += 1,
                        Ok(DayOutcome::Empty) => report.days_empty += 1,
                        Ok(DayOutcome::Kept) => report.days_kept += 1,
                        Err(e) => {
                            failure.lock().unwrap().get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    progress.finish_and_clear();
    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e);
    }
    Ok(report.into_inner().unwrap())
}

/// Fingerprints a day and rolls it up if anything it depends on changed.
async fn examine_day(
    config: &EtlConfig,
    run: &EtlRun,
    windows: &WindowStore,
    dimension: &Dimension,
    day: u64,
    known: Option<DayState>,
) -> Result<DayOutcome, EtlError> {
    let date = date_of(day);
    let read_error = |source| EtlError::Read {
        date: date.clone(),
        source,
    };
    let source = windows
        .fingerprint(day, day + DAY_MS)
        .await
        .map_err(read_error)?;
    if source.windows == 0 {
        return Ok(DayOutcome::Empty);
    }
    let wanted = DayState {
        source: source.hash,
        windows: source.windows,
        dimension: dimension.fingerprint_during(day, day + DAY_MS),
        code: code_version(),
        rows: Default::default(),
    };
    if let Some(known) = &known {
        let same = known.source == wanted.source
            && known.dimension == wanted.dimension
            && known.code == wanted.code;
        if !run.force && same && files_present(&config.warehouse, known, &date) {
            return Ok(DayOutcome::Unchanged);
        }
        if !run.force && known.windows > wanted.windows {
            tracing::warn!(
                date,
                rolled_up = known.windows,
                in_store = wanted.windows,
                "the store holds fewer windows of this day than were rolled up (its retention dropped some?); the day is kept as it was (--force rewrites it)"
            );
            return Ok(DayOutcome::Kept);
        }
    }
    roll_up_day(
        &config.warehouse,
        windows,
        dimension,
        day,
        config.chunk_hours,
        wanted,
    )
    .await
    .map_err(|e| match e {
        day::DayError::Read(source) => read_error(source),
        day::DayError::Warehouse(e) => EtlError::Warehouse(e),
    })
}

fn files_present(warehouse: &Path, known: &DayState, date: &str) -> bool {
    known.rows.keys().all(|table| {
        crate::io::sinks::warehouse::partition_dir(warehouse, table, date)
            .join(PART_FILE)
            .exists()
    })
}

fn progress_bar(days: u64, shown: bool) -> indicatif::ProgressBar {
    if !shown {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(days);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} days, {eta} left",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_looks_at_the_range_or_the_horizon_and_today() {
        let now = 10 * DAY_MS + 5 * 3_600_000;
        assert_eq!(
            plan_days(now, 2, None, None),
            vec![8 * DAY_MS, 9 * DAY_MS, 10 * DAY_MS]
        );
        assert_eq!(plan_days(now, 0, None, None), vec![10 * DAY_MS]);
        assert_eq!(
            plan_days(now, 2, Some(DAY_MS), Some(3 * DAY_MS)),
            vec![DAY_MS, 2 * DAY_MS]
        );
        assert_eq!(
            plan_days(now, 2, Some(9 * DAY_MS), None),
            vec![9 * DAY_MS, 10 * DAY_MS]
        );
        assert!(plan_days(now, 2, Some(3 * DAY_MS), Some(3 * DAY_MS)).is_empty());
    }
}
