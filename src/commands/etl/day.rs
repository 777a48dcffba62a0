//! One day rolled up: read hour-chunk by hour-chunk, attributed, grouped, written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use arrow_array::RecordBatch;

use crate::dataflow::warehouse::dimension::Dimension;
use crate::dataflow::warehouse::rollup::{
    DAY_MS, DeviceKey, HOUR_MS, LEVELS, PlaceKey, Rows, add, add_to_day, date_of, group_places,
};
use crate::io::connect::influx::query::InfluxQueryError;
use crate::io::sinks::warehouse::state::DayState;
use crate::io::sinks::warehouse::tables::{
    Grain, device_batch, device_schema, place_batch, place_schema,
};
use crate::io::sinks::warehouse::{
    PART_FILE, TableFile, WarehouseError, partition_dir, write_table,
};
use crate::io::sources::influx_windows::WindowStore;

/// What became of a day.
pub(super) enum DayOutcome {
    /// Rolled up and written.
    Written {
        /// What it was computed from, and the rows of each table.
        state: DayState,
        /// What was read and written.
        report: super::EtlReport,
    },
    /// Its fingerprints matched the state's.
    Unchanged,
    /// The store has no windows of it.
    Empty,
    /// The store has fewer windows of it than were rolled up.
    Kept,
}

/// Why a day could not be rolled up.
pub(super) enum DayError {
    /// The store did not answer.
    Read(InfluxQueryError),
    /// A file could not be written.
    Warehouse(WarehouseError),
}

impl From<InfluxQueryError> for DayError {
    fn from(e: InfluxQueryError) -> Self {
        DayError::Read(e)
    }
}

impl From<WarehouseError> for DayError {
    fn from(e: WarehouseError) -> Self {
        DayError::Warehouse(e)
    }
}

/// Rolls up the day starting at `day` into every table's partition of it, `state` recording
/// what it was computed from.
pub(super) async fn roll_up_day(
    warehouse: &Path,
    windows: &WindowStore,
    dimension: &Dimension,
    day: u64,
    chunk_hours: u32,
    mut state: DayState,
) -> Result<DayOutcome, DayError> {
    let date = date_of(day);
    let levels = dimension.levels_during(day, day + DAY_MS);
    let mut report = super::EtlReport::default();
    let device_hours_table = Grain::Hour.table("device");
    let hourly_schema = device_schema(Grain::Hour, &levels);
    let mut device_hours = TableFile::create(
        &partition_dir(warehouse, &device_hours_table, &date),
        PART_FILE,
        &device_hours_table,
        &hourly_schema,
    )?;
    let mut device_days: Rows<DeviceKey> = Rows::new();
    let mut place_hours: Vec<Rows<PlaceKey>> = vec![Rows::new(); LEVELS.len()];
    let chunk_ms = chunk_hours as u64 * HOUR_MS;
    for chunk in (day..day + DAY_MS).step_by(chunk_ms as usize) {
        let rows = read_chunk(
            windows,
            dimension,
            &levels,
            chunk,
            chunk + chunk_ms,
            &mut report,
        )
        .await?;
        if rows.is_empty() {
            continue;
        }
        device_hours.write(&device_batch(&hourly_schema, &rows))?;
        add_to_day(&mut device_days, &rows, day);
        for (hours, (_, depth)) in place_hours.iter_mut().zip(LEVELS) {
            // Chunks hold distinct hours: their rows add without meeting.
            hours.extend(group_places(&rows, depth));
        }
    }
    let mut written: BTreeMap<String, u64> = BTreeMap::new();
    let (rows, bytes) = device_hours.commit()?;
    written.insert(device_hours_table, rows);
    report.bytes_written += bytes;
    // One day table: its partition replaced, its rows and bytes counted.
    let mut write_day = |table: String, batch: RecordBatch| -> Result<(), WarehouseError> {
        let dir = partition_dir(warehouse, &table, &date);
        let (rows, bytes) = write_table(&dir, PART_FILE, &table, &batch)?;
        written.insert(table, rows);
        report.bytes_written += bytes;
        Ok(())
    };
    let device_days = device_batch(&device_schema(Grain::Day, &levels), &device_days);
    write_day(Grain::Day.table("device"), device_days)?;
    for (hours, (level, depth)) in place_hours.iter().zip(LEVELS) {
        let mut days = Rows::new();
        add_to_day(&mut days, hours, day);
        for (grain, rows) in [(Grain::Hour, hours), (Grain::Day, &days)] {
            write_day(
                grain.table(level),
                place_batch(&place_schema(grain, depth), rows),
            )?;
        }
    }
    report.rows_written = written.values().sum();
    state.rows = written;
    Ok(DayOutcome::Written { state, report })
}

/// The device-hour rows of `[from, to)`, each at the places its device was in: whole hours as
/// InfluxDB adds them, but window by window for hours in which the device moved.
async fn read_chunk(
    windows: &WindowStore,
    dimension: &Dimension,
    levels: &[String],
    from: u64,
    to: u64,
    report: &mut super::EtlReport,
) -> Result<Rows<DeviceKey>, DayError> {
    let mut rows: Rows<DeviceKey> = Rows::new();
    let mut moved: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let slices = windows.device_hours(from, to).await?;
    report.rows_read += slices.len() as u64;
    for slice in slices {
        if dimension.changes_within_hour(&slice.device_id, slice.start_ms) {
            moved
                .entry(slice.device_id)
                .or_default()
                .insert(slice.start_ms);
            continue;
        }
        let key = DeviceKey {
            period_start_ms: slice.start_ms,
            places: dimension.places_at(&slice.device_id, slice.start_ms, levels),
            device_id: slice.device_id,
            metric: slice.metric,
        };
        add(&mut rows, key, &slice.aggregate);
    }
    for (device_id, hours) in moved {
        let (first, last) = (hours.first().copied(), hours.last().copied());
        let (Some(first), Some(last)) = (first, last) else {
            continue;
        };
        let pieces = windows
            .device_windows(&device_id, first, last + HOUR_MS)
            .await?;
        report.windows_read += pieces.len() as u64;
        for window in pieces {
            let hour = window.start_ms - window.start_ms % HOUR_MS;
            if !hours.contains(&hour) {
                continue;
            }
            // A window belongs to the places its device was in at its first reading (the
            // window's start when unknown): a device that joined inside it counts there.
            let key = DeviceKey {
                period_start_ms: hour,
                places: dimension.places_at(
                    &device_id,
                    window.aggregate.first_ts_ms.unwrap_or(window.start_ms),
                    levels,
                ),
                device_id: device_id.clone(),
                metric: window.metric,
            };
            add(&mut rows, key, &window.aggregate);
        }
    }
    Ok(rows)
}
