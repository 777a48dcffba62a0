//! The closed windows `run` and `replay` wrote to InfluxDB (`iotpipe_aggregate`), read back for
//! the warehouse, with as much of the aggregation as InfluxQL can do left to InfluxDB.
//!
//! - [`WindowStore::fingerprint`]: a day's windows in one small answer (a row per hour), to
//!   tell whether the day changed since it was rolled up;
//! - [`WindowStore::device_hours`]: each device's hours, per metric (`GROUP BY time(1h), *`):
//!   a device-hour is one row however many windows it holds;
//! - [`WindowStore::device_windows`]: one device's minute windows, for the hours in which it
//!   moved between places and its windows go to more than one.
//!
//! A window split between two sites (a device moved inside it) is two points at one time under
//! two `site` tags; grouping by device and metric adds them back together.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::dataflow::model::TimeMs;
use crate::dataflow::warehouse::rollup::Aggregate;
use crate::io::connect::influx::query::{InfluxQueryError, InfluxReader, Series, string_literal};

/// The measurement of closed device windows.
pub const MEASUREMENT: &str = "iotpipe_aggregate";

/// The mergeable fields of a window, as selected from InfluxDB.
const FIELDS: [&str; 7] = [
    "count",
    "sum",
    "sum_squares",
    "min",
    "max",
    "first_ts_ms",
    "last_ts_ms",
];

/// A day's fingerprint: what its windows add up to, hour by hour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// Hash of the hourly sums (count of windows, readings, sum of values).
    pub hash: String,
    /// Windows (points) in the day.
    pub windows: u64,
}

/// A device's readings of one metric over one hour (or one minute window).
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSlice {
    /// Start of the hour (or window).
    pub start_ms: TimeMs,
    /// The device.
    pub device_id: String,
    /// The metric's name.
    pub metric: String,
    /// The `site` tag the stream wrote it under (a window split between sites is two pieces).
    pub piece: String,
    /// What its windows add up to.
    pub aggregate: Aggregate,
}

/// Reads the windows of one database.
#[derive(Clone, Debug)]
pub struct WindowStore {
    reader: InfluxReader,
}

fn number(value: Option<&Value>) -> Option<f64> {
    value.and_then(Value::as_f64)
}

fn time_range(from_ms: TimeMs, to_ms: TimeMs) -> String {
    format!("time >= {from_ms}ms AND time < {to_ms}ms")
}

impl WindowStore {
    /// Reads through `reader`.
    pub fn new(reader: InfluxReader) -> Self {
        Self { reader }
    }

    /// The fingerprint of `[from_ms, to_ms)`: any window added or removed, or rewritten with
    /// another count or sum, changes it (a rewrite that keeps every hour's number of windows,
    /// of readings and sum of values does not). Three aggregates over two fields: InfluxDB
    /// reads each field's blocks, and the six that would also cover squares, minima and maxima
    /// took twice as long over a 10,000-device day (35 s against 17 s, docs/benchmarks.md).
    pub async fn fingerprint(
        &self,
        from_ms: TimeMs,
        to_ms: TimeMs,
    ) -> Result<Fingerprint, InfluxQueryError> {
        let q = format!(
            "SELECT count(\"count\"), sum(\"count\"), sum(\"sum\") FROM \"{MEASUREMENT}\" WHERE {} GROUP BY time(1h) fill(none)",
            time_range(from_ms, to_ms)
        );
        let mut hash = Sha256::new();
        let mut windows = 0;
        for series in self.reader.query_series(&q).await? {
            for row in &series.rows {
                windows += row.get(1).and_then(Value::as_u64).unwrap_or(0);
                // InfluxDB adds the series' floats in no fixed order: their last bits vary
                // from query to query. Integers are exact; sums are taken to 9 digits.
                for cell in row {
                    match cell {
                        Value::Number(n) if n.is_f64() => {
                            hash.update(format!("{:.8e}", n.as_f64().unwrap_or(0.0)))
                        }
                        other => hash.update(other.to_string()),
                    }
                    hash.update(b",");
                }
                hash.update(b"\n");
            }
        }
        Ok(Fingerprint {
            hash: hex::encode(&hash.finalize()[..16]),
            windows,
        })
    }

    /// Every device's hours of `[from_ms, to_ms)` (whole hours), per metric, sorted by hour,
    /// device and metric.
    pub async fn device_hours(
        &self,
        from_ms: TimeMs,
        to_ms: TimeMs,
    ) -> Result<Vec<DeviceSlice>, InfluxQueryError> {
        let selected: Vec<String> = FIELDS
            .iter()
            .map(|f| {
                let function = match *f {
                    "min" | "first_ts_ms" => "min",
                    "max" | "last_ts_ms" => "max",
                    _ => "sum",
                };
                format!("{function}(\"{f}\") AS \"{f}\"")
            })
            .collect();
        // Grouped by every tag, so that each sum is over one series, in time order: InfluxDB
        // adds several series' floats in no fixed order, and the same data would give sums
        // that differ in their last bits from run to run. The pieces are added here, in order.
        let q = format!(
            "SELECT {} FROM \"{MEASUREMENT}\" WHERE {} GROUP BY time(1h), * fill(none)",
            selected.join(", "),
            time_range(from_ms, to_ms)
        );
        let mut pieces = slices(self.reader.query_series(&q).await?, None);
        pieces.sort_by(|a, b| {
            (a.start_ms, &a.device_id, &a.metric, &a.piece).cmp(&(
                b.start_ms,
                &b.device_id,
                &b.metric,
                &b.piece,
            ))
        });
        let mut hours: Vec<DeviceSlice> = Vec::with_capacity(pieces.len());
        for piece in pieces {
            match hours.last_mut() {
                Some(last)
                    if (last.start_ms, &last.device_id, &last.metric)
                        == (piece.start_ms, &piece.device_id, &piece.metric) =>
                {
                    last.aggregate.merge(&piece.aggregate)
                }
                _ => hours.push(piece),
            }
        }
        Ok(hours)
    }

    /// One device's windows of `[from_ms, to_ms)`, per metric and piece (a window split
    /// between sites is a piece per site, each with its own first reading), sorted by start,
    /// metric and piece.
    pub async fn device_windows(
        &self,
        device_id: &str,
        from_ms: TimeMs,
        to_ms: TimeMs,
    ) -> Result<Vec<DeviceSlice>, InfluxQueryError> {
        let selected: Vec<String> = FIELDS.iter().map(|f| format!("\"{f}\"")).collect();
        let q = format!(
            "SELECT {} FROM \"{MEASUREMENT}\" WHERE \"device_id\" = {} AND {} GROUP BY *",
            selected.join(", "),
            string_literal(device_id),
            time_range(from_ms, to_ms)
        );
        let mut pieces = slices(self.reader.query_series(&q).await?, Some(device_id));
        pieces.sort_by(|a, b| {
            (a.start_ms, &a.metric, &a.piece).cmp(&(b.start_ms, &b.metric, &b.piece))
        });
        Ok(pieces)
    }
}

/// The rows of series grouped by (at least) metric, and device unless `device_id` names it.
fn slices(series: Vec<Series>, device_id: Option<&str>) -> Vec<DeviceSlice> {
    let mut out = Vec::new();
    for s in series {
        let column = |name: &str| s.columns.iter().position(|c| c == name);
        let indices: Vec<Option<usize>> = FIELDS.iter().map(|f| column(f)).collect();
        let (Some(metric), Some(device)) = (
            s.tags.get("metric"),
            device_id.or(s.tags.get("device_id").map(String::as_str)),
        ) else {
            continue;
        };
        for row in &s.rows {
            let get = |i: usize| number(indices[i].and_then(|at| row.get(at)));
            let (Some(start_ms), Some(count)) = (row.first().and_then(Value::as_u64), get(0))
            else {
                continue;
            };
            out.push(DeviceSlice {
                start_ms,
                device_id: device.to_owned(),
                metric: metric.clone(),
                piece: s.tags.get("site").cloned().unwrap_or_default(),
                aggregate: Aggregate {
                    count: count as u64,
                    sum: get(1).unwrap_or(f64::NAN),
                    sum_squares: get(2).unwrap_or(f64::NAN),
                    min: get(3).unwrap_or(f64::NAN),
                    max: get(4).unwrap_or(f64::NAN),
                    first_ts_ms: get(5).map(|t| t as TimeMs),
                    last_ts_ms: get(6).map(|t| t as TimeMs),
                },
            });
        }
    }
    out
}
