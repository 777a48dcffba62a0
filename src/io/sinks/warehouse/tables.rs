//! The warehouse's tables as Arrow schemas and record batches (the README's "Warehouse" section
//! documents them for analysts).

use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::dataflow::warehouse::dimension::{Dimension, FIXED_LEVELS};
use crate::dataflow::warehouse::rollup::{Aggregate, DeviceKey, PlaceKey, Rows};

/// The version of the tables' layout, in every file's key-value metadata
/// (`iotpipe.schema_version`). Columns are only ever added, nullable; a reader that meets a new
/// version sees new columns and none gone.
pub const SCHEMA_VERSION: &str = "1";

/// The period a rollup table's rows cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grain {
    /// An hour: the column `hour_start`, the table suffix `_1h`.
    Hour,
    /// A UTC day: `day_start`, `_1d`.
    Day,
}

impl Grain {
    /// The period's start column.
    pub fn column(self) -> &'static str {
        match self {
            Grain::Hour => "hour_start",
            Grain::Day => "day_start",
        }
    }

    /// The table's name at `level` (`device`, `building`, `site`, `org`).
    pub fn table(self, level: &str) -> String {
        match self {
            Grain::Hour => format!("{level}_1h"),
            Grain::Day => format!("{level}_1d"),
        }
    }
}

/// The table of device versions.
pub const DIMENSION_TABLE: &str = "device_dim";

fn timestamp(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        nullable,
    )
}

fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

/// A column name for a kind of place: lower case letters, digits and `_`; a kind that would
/// take a column of its own (`metric`, `count`, ...) gets `place_` in front.
pub fn level_column(kind: &str) -> String {
    let name: String = kind
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    const TAKEN: [&str; 16] = [
        "hour_start",
        "day_start",
        "device_id",
        "metric",
        "count",
        "sum",
        "sum_squares",
        "min",
        "max",
        "first_ts",
        "last_ts",
        "valid_from",
        "valid_to",
        "device_type",
        "model",
        "firmware",
    ];
    if FIXED_LEVELS.contains(&kind) {
        return kind.to_owned();
    }
    if TAKEN.contains(&name.as_str()) || name == "schema" || name.is_empty() {
        format!("place_{name}")
    } else {
        name
    }
}

fn aggregate_fields() -> Vec<Field> {
    vec![
        Field::new("count", DataType::Int64, false),
        Field::new("sum", DataType::Float64, false),
        Field::new("sum_squares", DataType::Float64, false),
        Field::new("min", DataType::Float64, false),
        Field::new("max", DataType::Float64, false),
        timestamp("first_ts", true),
        timestamp("last_ts", true),
    ]
}

/// The columns of a device table: the period, the device and metric, one per level of `levels`
/// (nullable), then the aggregate.
pub fn device_schema(grain: Grain, levels: &[String]) -> SchemaRef {
    let mut fields = vec![
        timestamp(grain.column(), false),
        text("device_id", false),
        text("metric", false),
    ];
    fields.extend(levels.iter().map(|l| text(&level_column(l), true)));
    fields.extend(aggregate_fields());
    Arc::new(Schema::new(fields))
}

/// The columns of a place table `depth` levels deep (1: org; 2: org, site; 3: org, site,
/// building).
pub fn place_schema(grain: Grain, depth: usize) -> SchemaRef {
    let mut fields = vec![timestamp(grain.column(), false)];
    fields.extend(FIXED_LEVELS[..depth].iter().map(|l| text(l, true)));
    fields.push(text("metric", false));
    fields.extend(aggregate_fields());
    Arc::new(Schema::new(fields))
}

/// The columns of the device dimension: the device, its span, one per level, what it was.
pub fn dimension_schema(dimension: &Dimension) -> SchemaRef {
    let mut fields = vec![
        text("device_id", false),
        timestamp("valid_from", false),
        timestamp("valid_to", true),
    ];
    fields.extend(FIXED_LEVELS.iter().map(|l| text(l, true)));
    fields.extend(
        dimension
            .extra_levels()
            .iter()
            .map(|l| text(&level_column(l), true)),
    );
    fields.extend([
        text("device_type", false),
        text("model", false),
        text("firmware", false),
        text("schema", false),
    ]);
    Arc::new(Schema::new(fields))
}

/// Appends aggregates as the last seven columns.
fn aggregate_columns<'a>(
    aggregates: impl Iterator<Item = &'a Aggregate>,
    len: usize,
) -> Vec<ArrayRef> {
    let mut count = Int64Builder::with_capacity(len);
    let mut sum = Float64Builder::with_capacity(len);
    let mut squares = Float64Builder::with_capacity(len);
    let mut min = Float64Builder::with_capacity(len);
    let mut max = Float64Builder::with_capacity(len);
    let mut first = TimestampMillisecondBuilder::with_capacity(len).with_timezone("UTC");
    let mut last = TimestampMillisecondBuilder::with_capacity(len).with_timezone("UTC");
    for a in aggregates {
        count.append_value(a.count as i64);
        sum.append_value(a.sum);
        squares.append_value(a.sum_squares);
        min.append_value(a.min);
        max.append_value(a.max);
        first.append_option(a.first_ts_ms.map(|t| t as i64));
        last.append_option(a.last_ts_ms.map(|t| t as i64));
    }
    vec![
        Arc::new(count.finish()),
        Arc::new(sum.finish()),
        Arc::new(squares.finish()),
        Arc::new(min.finish()),
        Arc::new(max.finish()),
        Arc::new(first.finish()),
        Arc::new(last.finish()),
    ]
}

fn timestamps(values: impl Iterator<Item = Option<u64>>, len: usize) -> ArrayRef {
    let mut column = TimestampMillisecondBuilder::with_capacity(len).with_timezone("UTC");
    for v in values {
        column.append_option(v.map(|t| t as i64));
    }
    Arc::new(column.finish())
}

fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>, len: usize) -> ArrayRef {
    let mut column = StringBuilder::with_capacity(len, len * 12);
    for v in values {
        column.append_option(v);
    }
    Arc::new(column.finish())
}

/// Device rows as a batch of `schema` (from [`device_schema`] with as many levels as the rows
/// have places).
pub fn device_batch(schema: &SchemaRef, rows: &Rows<DeviceKey>) -> RecordBatch {
    let len = rows.len();
    let keys = || rows.keys();
    let mut columns = vec![
        timestamps(keys().map(|k| Some(k.period_start_ms)), len),
        strings(keys().map(|k| Some(k.device_id.as_str())), len),
        strings(keys().map(|k| Some(k.metric.as_str())), len),
    ];
    let levels = schema.fields().len() - 3 - 7;
    for level in 0..levels {
        columns.push(strings(keys().map(|k| k.places[level].as_deref()), len));
    }
    columns.extend(aggregate_columns(rows.values(), len));
    RecordBatch::try_new(schema.clone(), columns).expect("columns match the device schema")
}

/// Place rows as a batch of `schema` (from [`place_schema`] at the rows' depth).
pub fn place_batch(schema: &SchemaRef, rows: &Rows<PlaceKey>) -> RecordBatch {
    let len = rows.len();
    let keys = || rows.keys();
    let mut columns = vec![timestamps(keys().map(|k| Some(k.period_start_ms)), len)];
    let depth = schema.fields().len() - 2 - 7;
    for level in 0..depth {
        columns.push(strings(keys().map(|k| k.places[level].as_deref()), len));
    }
    columns.push(strings(keys().map(|k| Some(k.metric.as_str())), len));
    columns.extend(aggregate_columns(rows.values(), len));
    RecordBatch::try_new(schema.clone(), columns).expect("columns match the place schema")
}

/// The dimension as one batch of [`dimension_schema`].
pub fn dimension_batch(schema: &SchemaRef, dimension: &Dimension) -> RecordBatch {
    let rows = dimension.rows();
    let len = rows.len();
    let mut columns = vec![
        strings(rows.iter().map(|r| Some(r.device_id.as_str())), len),
        timestamps(rows.iter().map(|r| Some(r.valid_from_ms)), len),
        timestamps(rows.iter().map(|r| r.valid_to_ms), len),
    ];
    let kinds = FIXED_LEVELS
        .iter()
        .map(|k| k.to_string())
        .chain(dimension.extra_levels().iter().cloned());
    for kind in kinds {
        columns.push(strings(rows.iter().map(|r| r.version.level(&kind)), len));
    }
    columns.push(strings(
        rows.iter()
            .map(|r| Some(r.version.info.device_type.as_str())),
        len,
    ));
    columns.push(strings(
        rows.iter().map(|r| Some(r.version.info.model.as_str())),
        len,
    ));
    columns.push(strings(
        rows.iter().map(|r| Some(r.version.info.firmware.as_str())),
        len,
    ));
    columns.push(strings(
        rows.iter().map(|r| Some(r.version.info.schema.as_str())),
        len,
    ));
    RecordBatch::try_new(schema.clone(), columns).expect("columns match the dimension schema")
}
