//! InfluxDB output: iotpipe's outputs as line protocol ([`lines`]), batched by a sink operator
//! per stream ([`sink`]) and written by the process's writers ([`pool`]) through the 1.x or
//! 2.x/3.x API ([`crate::io::connect::influx::write`]), as configured
//! ([`crate::io::connect::influx::config`]); [`crate::io::connect::influx::query`] reads it back
//! with InfluxQL.

pub mod lines;
pub mod pool;
pub mod sink;

use std::sync::Arc;

use timely::dataflow::operators::Concatenate;

use crate::dataflow::model::{DeadLetter, TimeMs};
use crate::dataflow::schema::MetricCatalog;
use crate::dataflow::{EventStream, PipelineOutputs};
use pool::{InfluxPool, Lane};
use sink::{HeldBack, InfluxTarget, WriteToInflux};

/// The streams of [`write_outputs`].
pub struct InfluxWritten<'scope> {
    /// Every point InfluxDB refused, as a dead letter; its frontier is the time before which
    /// InfluxDB holds every output.
    pub rejected: EventStream<'scope, DeadLetter>,
    /// The readings sink's output alone: its frontier is the time before which every reading
    /// is stored, which is what end-to-end latency measures.
    pub readings: EventStream<'scope, DeadLetter>,
}

/// Writes readings, aggregates, site rollups, anomalies and alert events to InfluxDB, readings
/// in a lane of their own. Records before `skip_before_ms` are not written (an earlier run
/// wrote them); `full` is held while a sink waits for room in the writers' queue.
pub fn write_outputs<'scope>(
    outputs: &PipelineOutputs<'scope>,
    pool: &InfluxPool,
    skip_before_ms: TimeMs,
    full: &HeldBack,
    catalog: &Arc<MetricCatalog>,
) -> InfluxWritten<'scope> {
    let target = |lane| InfluxTarget {
        pool: pool.clone(),
        skip_before_ms,
        full: full.clone(),
        lane,
    };
    let readings = write(
        &outputs.readings,
        "InfluxReadings",
        target(Lane::Readings),
        catalog,
        lines::reading_lines,
    );
    let derived = [
        write(
            &outputs.aggregates,
            "InfluxAggregates",
            target(Lane::Derived),
            catalog,
            lines::aggregate_line,
        ),
        write(
            &outputs.site_rollups,
            "InfluxSiteRollups",
            target(Lane::Derived),
            catalog,
            lines::rollup_line,
        ),
        write(
            &outputs.anomalies,
            "InfluxAnomalies",
            target(Lane::Derived),
            catalog,
            lines::anomaly_line,
        ),
        write(
            &outputs.alerts,
            "InfluxAlerts",
            target(Lane::Derived),
            catalog,
            lines::alert_line,
        ),
    ];
    let scope = outputs.readings.scope();
    InfluxWritten {
        rejected: scope.concatenate(std::iter::once(readings.clone()).chain(derived)),
        readings,
    }
}

/// One stream's sink, each record encoded by `line`.
fn write<'scope, D: Clone + 'static>(
    stream: &EventStream<'scope, D>,
    name: &str,
    target: InfluxTarget,
    catalog: &Arc<MetricCatalog>,
    line: fn(&mut Vec<u8>, &D, &MetricCatalog),
) -> EventStream<'scope, DeadLetter> {
    let catalog = Arc::clone(catalog);
    stream
        .clone()
        .write_to_influx(name, target, move |record, buffer| {
            line(buffer, record, &catalog)
        })
}
