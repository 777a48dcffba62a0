//! InfluxDB output: iotpipe's outputs as line protocol ([`lines`]), batched by a sink operator
//! per stream ([`sink`]) and written by the process's writers ([`pool`]) through the 1.x or
//! 2.x/3.x API ([`mod@write`]), as configured ([`config`]); [`query`] reads it back with InfluxQL.

pub mod config;
pub mod lines;
pub mod pool;
pub mod query;
pub mod sink;
pub mod write;

use std::sync::Arc;

use timely::dataflow::operators::Concatenate;

use crate::dataflow::model::DeadLetter;
use crate::dataflow::schema::MetricCatalog;
use crate::dataflow::{EventStream, PipelineOutputs};
use pool::Lane;
use sink::{InfluxTarget, WriteToInflux};

/// The streams of [`write_outputs`].
pub struct InfluxWritten<'scope> {
    /// Every point InfluxDB refused, as a dead letter; its frontier is the time before which
    /// InfluxDB holds every output.
    pub rejected: EventStream<'scope, DeadLetter>,
    /// The readings sink's output alone: its frontier is the time before which every reading
    /// is stored, which is what end-to-end latency measures.
    pub readings: EventStream<'scope, DeadLetter>,
}

/// Writes readings, aggregates, site rollups, anomalies and alert events to InfluxDB.
pub fn write_outputs<'scope>(
    outputs: &PipelineOutputs<'scope>,
    target: &InfluxTarget,
    catalog: &Arc<MetricCatalog>,
) -> InfluxWritten<'scope> {
    let c = Arc::clone(catalog);
    let readings_target = InfluxTarget {
        lane: Lane::Readings,
        ..target.clone()
    };
    let readings = outputs.readings.clone().write_to_influx(
        "InfluxReadings",
        readings_target,
        move |m, buffer| lines::reading_lines(buffer, m, &c),
    );
    let c = Arc::clone(catalog);
    let aggregates = outputs.aggregates.clone().write_to_influx(
        "InfluxAggregates",
        target.clone(),
        move |a, buffer| lines::aggregate_line(buffer, a, &c),
    );
    let c = Arc::clone(catalog);
    let rollups = outputs.site_rollups.clone().write_to_influx(
        "InfluxSiteRollups",
        target.clone(),
        move |r, buffer| lines::rollup_line(buffer, r, &c),
    );
    let c = Arc::clone(catalog);
    let anomalies = outputs.anomalies.clone().write_to_influx(
        "InfluxAnomalies",
        target.clone(),
        move |a, buffer| lines::anomaly_line(buffer, a, &c),
    );
    let c = Arc::clone(catalog);
    let alerts =
        outputs
            .alerts
            .clone()
            .write_to_influx("InfluxAlerts", target.clone(), move |a, buffer| {
                lines::alert_line(buffer, a, &c)
            });
    let scope = outputs.readings.scope();
    InfluxWritten {
        rejected: scope.concatenate([readings.clone(), aggregates, rollups, anomalies, alerts]),
        readings,
    }
}
