//! The JSON Lines shapes of iotpipe's outputs.

use serde::Serialize;

use crate::dataflow::alert::AlertEvent;
use crate::dataflow::anomaly::AnomalyScore;
use crate::dataflow::model::{DeadLetter, LateReading, SiteRollup, WindowAggregate};
use crate::dataflow::schema::MetricCatalog;

#[derive(Serialize)]
struct AggregateLine<'a> {
    device_id: &'a str,
    metric: &'a str,
    window_start_ms: u64,
    site: &'a str,
    count: u64,
    min: f64,
    max: f64,
    mean: f64,
    sum: f64,
    sum_squares: f64,
    first_ts_ms: u64,
    last_ts_ms: u64,
    threshold_breaches: u64,
}

#[derive(Serialize)]
struct RollupLine<'a> {
    site: &'a str,
    metric: &'a str,
    window_start_ms: u64,
    count: u64,
    mean: f64,
}

#[derive(Serialize)]
struct DeadLetterLine<'a> {
    reason: &'a str,
    detail: &'a str,
    raw: &'a str,
    raw_len: u32,
    raw_sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<i64>,
}

#[derive(Serialize)]
struct LateLine<'a> {
    device_id: &'a str,
    metric: &'a str,
    ts_ms: u64,
    value: f64,
}

#[derive(Serialize)]
struct AnomalyLine<'a> {
    device_id: &'a str,
    metric: Option<&'a str>,
    ts_ms: u64,
    value: Option<f64>,
    score: f64,
    kind: &'a str,
}

#[derive(Serialize)]
struct AlertLine<'a> {
    id: &'a str,
    alert_id: &'a str,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<&'a str>,
    site: &'a str,
    org: &'a str,
    building: &'a str,
    metric: Option<&'a str>,
    rule: &'a str,
    severity: &'a str,
    cause: &'a str,
    ts_ms: u64,
    score: Option<f64>,
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    silenced_by: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    overdue: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    acknowledged_by: Option<&'a str>,
}

fn line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("output lines serialise")
}

/// `aggregates.jsonl`: `device_id, metric, window_start_ms, site, count, min, max, mean, sum,
/// sum_squares, first_ts_ms, last_ts_ms, threshold_breaches`.
pub fn aggregate_line(a: &WindowAggregate, catalog: &MetricCatalog) -> String {
    line(&AggregateLine {
        device_id: &a.device_id,
        metric: catalog.name(a.metric),
        window_start_ms: a.window_start_ms,
        site: &a.site,
        count: a.count,
        min: a.min,
        max: a.max,
        mean: a.mean(),
        sum: a.sum.value(),
        sum_squares: a.sum_squares,
        first_ts_ms: a.first_ts_ms,
        last_ts_ms: a.last_ts_ms,
        threshold_breaches: a.threshold_breaches,
    })
}

/// `site_rollups.jsonl`: `site, metric, window_start_ms, count, mean`.
pub fn rollup_line(r: &SiteRollup, catalog: &MetricCatalog) -> String {
    line(&RollupLine {
        site: &r.site,
        metric: catalog.name(r.metric),
        window_start_ms: r.window_start_ms,
        count: r.count,
        mean: r.mean(),
    })
}

/// `dead_letters.jsonl`: `reason, detail, raw` (at most 4 KiB of it), `raw_len, raw_sha256`, and `topic, partition, offset` when the message
/// was read from Kafka.
pub fn dead_letter_line(d: &DeadLetter) -> String {
    let origin = d.origin.as_ref();
    line(&DeadLetterLine {
        reason: d.reason.code(),
        detail: &d.detail,
        raw: &d.raw,
        raw_len: d.raw_len,
        raw_sha256: &d.raw_sha256,
        topic: origin.map(|o| o.topic.as_str()),
        partition: origin.map(|o| o.partition),
        offset: origin.map(|o| o.offset),
    })
}

/// `late.jsonl`: `device_id, metric, ts_ms, value`.
pub fn late_line(l: &LateReading, catalog: &MetricCatalog) -> String {
    line(&LateLine {
        device_id: &l.device_id,
        metric: catalog.name(l.metric),
        ts_ms: l.ts_ms,
        value: l.value,
    })
}

/// `anomalies.jsonl` and `scores.jsonl`: `device_id, metric, ts_ms, value, score, kind` (metric
/// and value are null for silence, which is the device's).
pub fn anomaly_line(a: &AnomalyScore, catalog: &MetricCatalog) -> String {
    line(&AnomalyLine {
        device_id: &a.device_id,
        metric: a.metric.map(|m| catalog.name(m)),
        ts_ms: a.ts_ms,
        value: a.value,
        score: a.score,
        kind: a.kind.code(),
    })
}

/// `alerts.jsonl` (and every notification): `id, event, device_id` (absent for a site alert),
/// `site, org, building` (empty for a site alert's building), `metric, rule, severity, cause, ts_ms,
/// score, value`, the `alert_id` events of one alert share, and where they apply `silenced_by`,
/// `overdue` and `acknowledged_by`.
pub fn alert_line(a: &AlertEvent, catalog: &MetricCatalog) -> String {
    line(&AlertLine {
        id: &a.id,
        alert_id: &a.alert_id,
        event: a.event.code(),
        device_id: a.device_id.as_deref(),
        site: &a.site,
        org: &a.org,
        building: &a.building,
        metric: a.metric.map(|m| catalog.name(m)),
        rule: &a.rule,
        severity: a.severity.code(),
        cause: a.cause.code(),
        ts_ms: a.ts_ms,
        score: a.score,
        value: a.value,
        silenced_by: a.silenced_by.as_deref(),
        overdue: a.overdue,
        acknowledged_by: a.acknowledged_by.as_deref(),
    })
}
