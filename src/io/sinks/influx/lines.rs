//! iotpipe's outputs as InfluxDB line protocol (escaping by the `influxdb-line-protocol` crate).
//!
//! | measurement | tags | fields | time |
//! |---|---|---|---|
//! | `iotpipe_reading` | `device_id`, `org`, `site`, `building`, `device_type` | one per metric read at that instant (`temperature`, `humidity`, ...), in the catalog's unit | the reading's event time |
//! | `iotpipe_aggregate` | `device_id`, `metric`, `site` | `count` (integer), `min`, `max`, `mean`, `sum`, `sum_squares`, `first_ts_ms` and `last_ts_ms` (integers), `threshold_breaches` (integer) | window start |
//! | `iotpipe_site_rollup` | `site`, `metric` | `count` (integer), `mean`, `sum` | window start |
//! | `iotpipe_anomaly` | `device_id`, `site`, `device_type`, `metric` (absent for silence), `kind` | `score`, `value` (absent for silence) | the reading's event time |
//! | `iotpipe_alert` | `site`, `device_id` (absent for a site alert), `metric` (where one applies), `rule`, `severity`, `cause`, `event` | `alert_id` (string), `score`, `value` (where known) | the event's time |
//!
//! `sum` is the window's exact sum (kept in fixed point by the dataflow) next to the mean, and
//! `sum_squares`, `first_ts_ms` and `last_ts_ms` make the window mergeable: a rollup over windows
//! (hours into days, devices into sites, `iotpipe etl`'s warehouse) adds counts, sums and
//! squares and takes the extremes, rather than averaging means.
//!
//! Tags are bounded sets (devices, sites, metrics, rule names, codes); values and ids are
//! fields. Empty registry values are left out rather than written as empty tags, which line
//! protocol cannot carry. Every point's series and timestamp follow from the record alone, so
//! writing a record twice (a replay, a restart) leaves the same points.

use influxdb_line_protocol::LineProtocolBuilder;
use influxdb_line_protocol::builder::{AfterMeasurement, BeforeMeasurement};

use crate::dataflow::alert::AlertEvent;
use crate::dataflow::anomaly::AnomalyScore;
use crate::dataflow::model::{EnrichedMessage, SiteRollup, WindowAggregate};
use crate::dataflow::schema::MetricCatalog;

type Builder<S> = LineProtocolBuilder<Vec<u8>, S>;

/// Starts a point of `measurement` on `buffer`'s bytes (given back by [`finish`]).
fn start(buffer: &mut Vec<u8>, measurement: &str) -> Builder<AfterMeasurement> {
    LineProtocolBuilder::new_with(std::mem::take(buffer)).measurement(measurement)
}

fn finish(buffer: &mut Vec<u8>, lines: Builder<BeforeMeasurement>) {
    *buffer = lines.build();
}

/// Adds a tag unless its value is empty.
fn tag(point: Builder<AfterMeasurement>, key: &str, value: &str) -> Builder<AfterMeasurement> {
    if value.is_empty() {
        point
    } else {
        point.tag(key, &one_line(value))
    }
}

/// What a tag value can be in line protocol as InfluxDB 1.x parses it.
///
/// - A line break has no escape (the crate leaves it, and the line would end there), and
///   InfluxDB echoes a line it cannot parse in a response header, where any control character
///   makes the whole answer unreadable (hyper refuses it, and the batch would be retried
///   forever): every control character (line breaks, tabs, DEL) becomes a space.
/// - A value ending in a backslash cannot be parsed by InfluxDB 1.x (its escaped form runs
///   into the separator): trailing backslashes become `/`.
///
/// Found by `tests/influx_write.rs` sending 300 values of hostile characters through influxd.
fn one_line(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(char::is_control) && !value.ends_with('\\') {
        return value.into();
    }
    let mut text: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let kept = text.trim_end_matches('\\').len();
    let trailing = text.len() - kept;
    text.truncate(kept);
    text.extend(std::iter::repeat_n('/', trailing));
    text.into()
}

/// Appends the points of a validated message: one per instant, with a field per metric.
pub fn reading_lines(buffer: &mut Vec<u8>, m: &EnrichedMessage, catalog: &MetricCatalog) {
    let device = &m.device;
    let mut rest = m.readings.as_slice();
    while let Some(first) = rest.first() {
        // Readings of one instant are adjacent: a batch message lists its instants in turn.
        let same = rest.iter().take_while(|r| r.ts_ms == first.ts_ms).count();
        let (instant, later) = rest.split_at(same);
        rest = later;
        let mut point = tag(start(buffer, "iotpipe_reading"), "device_id", &m.device_id);
        for (key, value) in [
            ("org", &device.org),
            ("site", &device.site),
            ("building", &device.building),
            ("device_type", &device.device_type),
        ] {
            point = tag(point, key, value);
        }
        let mut point = point.field(catalog.name(first.metric), first.value);
        for (i, r) in instant.iter().enumerate().skip(1) {
            // A metric twice at one instant: the first value stands, as in the aggregates.
            if instant[..i]
                .iter()
                .all(|earlier| earlier.metric != r.metric)
            {
                point = point.field(catalog.name(r.metric), r.value);
            }
        }
        finish(buffer, point.timestamp(first.ts_ms as i64).close_line());
    }
}

/// Appends the point of a closed device window.
pub fn aggregate_line(buffer: &mut Vec<u8>, a: &WindowAggregate, catalog: &MetricCatalog) {
    let point = tag(
        start(buffer, "iotpipe_aggregate"),
        "device_id",
        &a.device_id,
    )
    .tag("metric", catalog.name(a.metric));
    let point = tag(point, "site", &a.site)
        .field("count", a.count as i64)
        .field("min", a.min)
        .field("max", a.max)
        .field("mean", a.mean())
        .field("sum", a.sum.value())
        .field("sum_squares", a.sum_squares)
        .field("first_ts_ms", a.first_ts_ms as i64)
        .field("last_ts_ms", a.last_ts_ms as i64)
        .field("threshold_breaches", a.threshold_breaches as i64)
        .timestamp(a.window_start_ms as i64)
        .close_line();
    finish(buffer, point);
}

/// Appends the point of a closed site window.
pub fn rollup_line(buffer: &mut Vec<u8>, r: &SiteRollup, catalog: &MetricCatalog) {
    let point = start(buffer, "iotpipe_site_rollup");
    let point = tag(point, "site", &r.site)
        .tag("metric", catalog.name(r.metric))
        .field("count", r.count as i64)
        .field("mean", r.mean())
        .field("sum", r.sum.value())
        .timestamp(r.window_start_ms as i64)
        .close_line();
    finish(buffer, point);
}

/// Appends the point of an anomaly score or finding.
pub fn anomaly_line(buffer: &mut Vec<u8>, a: &AnomalyScore, catalog: &MetricCatalog) {
    let mut point = tag(start(buffer, "iotpipe_anomaly"), "device_id", &a.device_id);
    point = tag(point, "site", &a.device.site);
    point = tag(point, "device_type", &a.device.device_type);
    if let Some(metric) = a.metric {
        point = point.tag("metric", catalog.name(metric));
    }
    let mut point = point.tag("kind", a.kind.code()).field("score", a.score);
    if let Some(value) = a.value {
        point = point.field("value", value);
    }
    finish(buffer, point.timestamp(a.ts_ms as i64).close_line());
}

/// Appends the point of an alert event.
pub fn alert_line(buffer: &mut Vec<u8>, a: &AlertEvent, catalog: &MetricCatalog) {
    let mut point = tag(start(buffer, "iotpipe_alert"), "site", &a.site);
    if let Some(device_id) = &a.device_id {
        point = tag(point, "device_id", device_id);
    }
    if let Some(metric) = a.metric {
        point = point.tag("metric", catalog.name(metric));
    }
    let mut point = tag(point, "rule", &a.rule)
        .tag("severity", a.severity.code())
        .tag("cause", a.cause.code())
        .tag("event", a.event.code())
        .field("alert_id", one_line(&a.alert_id).as_ref());
    if let Some(score) = a.score {
        point = point.field("score", score);
    }
    if let Some(value) = a.value {
        point = point.field("value", value);
    }
    finish(buffer, point.timestamp(a.ts_ms as i64).close_line());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::dataflow::model::{DeviceInfo, ExactSum, MetricId, Reading};
    use crate::dataflow::schema::SchemaSet;

    #[test]
    fn tags_are_escaped_and_counts_are_integers() {
        let schemas = SchemaSet::embedded();
        let catalog = schemas.catalog();
        let aggregate = WindowAggregate {
            device_id: "dev 1,a=b".into(),
            metric: MetricId(0),
            window_start_ms: 1_704_067_200_000,
            site: "site=0".into(),
            count: 2,
            min: 1.0,
            max: 3.0,
            sum: ExactSum(4_000_000_000),
            sum_squares: 10.0,
            first_ts_ms: 1_704_067_201_000,
            last_ts_ms: 1_704_067_259_000,
            threshold_breaches: 1,
        };
        let mut buffer = Vec::new();
        aggregate_line(&mut buffer, &aggregate, catalog);
        let line = String::from_utf8(buffer).unwrap();
        let metric = catalog.name(MetricId(0));
        assert_eq!(
            line,
            format!(
                "iotpipe_aggregate,device_id=dev\\ 1\\,a\\=b,metric={metric},site=site\\=0 \
                 count=2i,min=1,max=3,mean=2,sum=4,sum_squares=10,first_ts_ms=1704067201000i,last_ts_ms=1704067259000i,threshold_breaches=1i 1704067200000\n"
            )
        );
    }

    #[test]
    fn a_message_is_one_point_per_instant_and_empty_tags_and_line_breaks_are_left_out() {
        let schemas = SchemaSet::embedded();
        let catalog = schemas.catalog();
        let (a, b) = (MetricId(0), MetricId(1));
        let reading = |metric, ts_ms, value| Reading {
            metric,
            ts_ms,
            value,
        };
        let message = EnrichedMessage {
            device_id: "dev-1".into(),
            device: Arc::new(DeviceInfo {
                device_type: "thermostat".into(),
                org: "org-1".into(),
                site: "site\n1".into(),
                ..DeviceInfo::default()
            }),
            ts_ms: 0,
            stamp_ms: 0,
            readings: smallvec::smallvec![
                reading(a, 10, 1.5),
                reading(b, 10, 2.0),
                reading(a, 10, 9.0),
                reading(a, 20, 3.0),
            ],
        };
        let mut buffer = Vec::new();
        reading_lines(&mut buffer, &message, catalog);
        let (na, nb) = (catalog.name(a), catalog.name(b));
        assert_eq!(
            String::from_utf8(buffer).unwrap(),
            format!(
                "iotpipe_reading,device_id=dev-1,org=org-1,site=site\\ 1,device_type=thermostat \
                 {na}=1.5,{nb}=2 10\n\
                 iotpipe_reading,device_id=dev-1,org=org-1,site=site\\ 1,device_type=thermostat \
                 {na}=3 20\n"
            )
        );
    }
}
