//! Process metrics on the Prometheus project's client library (`prometheus-client`), in the
//! OpenMetrics text format, served at `/metrics` by [`crate::io::serve::metrics`].
//!
//! Labels are bounded: sinks, failure classes, dead-letter reasons, clock directions and
//! partitions, never devices. The latency histogram is iotpipe's own (it takes a batch's
//! messages in one call and answers quantiles for the dashboard), encoded through the library.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use timely::dataflow::operators::Inspect;

use crate::dataflow::EventStream;
use crate::dataflow::model::{DeadLetter, DeadLetterReason, IngestCounts, LateReading};
use crate::io::support::failure::FailureClass;

/// A monotone counter (the library's).
pub type Counter = prometheus_client::metrics::counter::Counter;

/// A value that goes up and down (the library's, integer).
pub type Gauge = prometheus_client::metrics::gauge::Gauge;

/// A gauge of seconds (the library's, floating point).
pub type SecondsGauge = prometheus_client::metrics::gauge::Gauge<f64, AtomicU64>;

/// Upper bounds of the latency histograms, seconds: fine below a second, where the goal is.
const LATENCY_BUCKETS_S: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
];

/// A histogram of durations; clones share their counts (one is registered, one is observed).
#[derive(Clone, Debug, Default)]
pub struct Histogram(Arc<HistogramCounts>);

#[derive(Debug, Default)]
struct HistogramCounts {
    /// Durations at or below each bound, cumulative.
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, duration: Duration) {
        self.observe_many(duration, 1);
    }

    /// Records `n` equal durations (the messages of one batch).
    pub fn observe_many(&self, duration: Duration, n: u64) {
        let counts = &self.0;
        let seconds = duration.as_secs_f64();
        for (bucket, bound) in counts.buckets.iter().zip(LATENCY_BUCKETS_S) {
            if seconds <= bound {
                bucket.fetch_add(n, Ordering::Relaxed);
            }
        }
        counts.count.fetch_add(n, Ordering::Relaxed);
        counts
            .sum_us
            .fetch_add(duration.as_micros() as u64 * n, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    /// The upper bound of the bucket holding quantile `q` (0 to 1), seconds; `None` when empty
    /// or beyond the last bucket.
    pub fn quantile_bound_s(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = (q * count as f64).ceil().max(1.0) as u64;
        self.0
            .buckets
            .iter()
            .zip(LATENCY_BUCKETS_S)
            .find(|(bucket, _)| bucket.load(Ordering::Relaxed) >= rank)
            .map(|(_, bound)| bound)
    }

    /// The mean duration, seconds.
    pub fn mean_s(&self) -> Option<f64> {
        let count = self.count();
        (count > 0).then(|| self.sum_s() / count as f64)
    }

    fn sum_s(&self) -> f64 {
        self.0.sum_us.load(Ordering::Relaxed) as f64 / 1e6
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder takes each bucket's own count and accumulates them itself.
        let mut below = 0;
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_S
            .iter()
            .zip(&self.0.buckets)
            .map(|(bound, cumulative)| {
                let cumulative = cumulative.load(Ordering::Relaxed);
                let own = cumulative - below;
                below = cumulative;
                (*bound, own)
            })
            .collect();
        let count = self.count();
        buckets.push((f64::INFINITY, count.saturating_sub(below)));
        encoder.encode_histogram::<NoLabelSet>(self.sum_s(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The `sink` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

/// The `sink` and `class` labels of a failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    sink: String,
    class: &'static str,
}

/// The `reason` label of a dead letter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The `direction` label of a clock fault.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// The `partition` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    partition: i32,
}

/// Everything a running process reports, and the registry that exposes it.
#[derive(Debug)]
pub struct Metrics {
    /// Messages read from the telemetry topic.
    pub messages_in: Counter,
    /// Readings that arrived after their window closed.
    pub late_readings: Counter,
    /// Messages admitted with their readings (every other message read is a dead letter).
    pub messages_admitted: Counter,
    /// Registry changes applied.
    pub registry_changes: Counter,
    /// Registry records skipped as malformed.
    pub registry_rejects: Counter,
    /// Records that failed delivery and were sent again.
    pub delivery_retries: Counter,
    /// From reading a batch to the written frontier passing its watermark (everything the
    /// dataflow emitted at or before the batch's time is then durable).
    pub batch_latency: Histogram,
    /// From a registry change being made to enrichment seeing it.
    pub registry_propagation: Histogram,
    /// From an alert event's writing to the alerts topic (its record's timestamp) to a
    /// receiver's acknowledgement of it (`iotpipe alerts`).
    pub notify_latency: Histogram,
    /// From a message's arrival at iotpipe to InfluxDB accepting its readings' points, one
    /// observation per message.
    pub influx_latency: Histogram,
    /// How long each InfluxDB batch took, from its first request to the last answer (retries
    /// and halving included).
    pub influx_request: Histogram,
    /// Points InfluxDB accepted.
    pub influx_points: Counter,
    /// InfluxDB requests that failed and were made again.
    pub influx_retries: Counter,
    /// Wall clock minus the dataflow's frontier (the least partition watermark).
    watermark_lag: SecondsGauge,
    /// The frontier of everything the sinks have written.
    written_frontier: SecondsGauge,
    dead_letters: Family<ReasonLabel, Counter>,
    clock_faults: Family<DirectionLabel, Counter>,
    records_out: Family<SinkLabel, Counter>,
    sink_failures: Family<FailureLabels, Counter>,
    consumer_lag: Family<PartitionLabel, Gauge>,
    /// Partitions not read for running too far ahead of the frontier (`source.max_lead_ms`).
    pub partitions_ahead: Gauge,
    /// Messages read by a fetch of their own, past a partition stuck behind a record larger
    /// than the consumer's responses (`source.stuck_after_ms`).
    pub messages_fetched_apart: Counter,
    /// Workers fetching with responses larger than their share, to catch up with a broker
    /// that holds them back (`source.grow_responses_after_ms`).
    pub workers_catching_up: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("iotpipe");
        let metrics = Self {
            messages_in: Counter::default(),
            late_readings: Counter::default(),
            messages_admitted: Counter::default(),
            registry_changes: Counter::default(),
            registry_rejects: Counter::default(),
            delivery_retries: Counter::default(),
            batch_latency: Histogram::default(),
            registry_propagation: Histogram::default(),
            notify_latency: Histogram::default(),
            influx_latency: Histogram::default(),
            influx_request: Histogram::default(),
            influx_points: Counter::default(),
            influx_retries: Counter::default(),
            watermark_lag: SecondsGauge::default(),
            written_frontier: SecondsGauge::default(),
            dead_letters: Family::default(),
            clock_faults: Family::default(),
            records_out: Family::default(),
            sink_failures: Family::default(),
            consumer_lag: Family::default(),
            partitions_ahead: Gauge::default(),
            messages_fetched_apart: Counter::default(),
            workers_catching_up: Gauge::default(),
            registry: Registry::default(),
        };
        // Every reason and direction is a series from the start, at 0: a rate over a series
        // that appears only with its first event misses that event.
        for reason in DeadLetterReason::ALL {
            let _created = metrics.dead_letters.get_or_create(&ReasonLabel {
                reason: reason.code(),
            });
        }
        for direction in ["ahead", "behind"] {
            let _created = metrics
                .clock_faults
                .get_or_create(&DirectionLabel { direction });
        }
        let r = &mut registry;
        r.register(
            "messages_in",
            "Messages read from the telemetry topic",
            metrics.messages_in.clone(),
        );
        r.register(
            "records_out",
            "Records acknowledged by the broker, by sink",
            metrics.records_out.clone(),
        );
        r.register(
            "sink_failures",
            "Failures handing records to a service, by sink and class (transient: retried; \
             record: a sink_rejected dead letter; sink: the service stops)",
            metrics.sink_failures.clone(),
        );
        r.register(
            "dead_letters",
            "Messages rejected, by reason",
            metrics.dead_letters.clone(),
        );
        r.register(
            "late_readings",
            "Readings that arrived after their window closed",
            metrics.late_readings.clone(),
        );
        r.register(
            "messages_admitted",
            "Messages admitted with their readings; every other message read is a dead letter",
            metrics.messages_admitted.clone(),
        );
        r.register(
            "clock_faults",
            "Messages of registered devices stamped more than the allowed skew off the fleet \
             time or their arrival, by direction",
            metrics.clock_faults.clone(),
        );
        r.register(
            "registry_changes",
            "Registry changelog records applied",
            metrics.registry_changes.clone(),
        );
        r.register(
            "registry_rejects",
            "Registry changelog records skipped as malformed",
            metrics.registry_rejects.clone(),
        );
        r.register(
            "delivery_retries",
            "Records whose delivery failed and that were sent again",
            metrics.delivery_retries.clone(),
        );
        r.register_with_unit(
            "consumer_lag",
            "Messages between a partition's read position and its end",
            Unit::Other("messages".into()),
            metrics.consumer_lag.clone(),
        );
        r.register(
            "partitions_ahead",
            "Partitions not read because their watermark runs more than source.max_lead_ms \
             ahead of the frontier",
            metrics.partitions_ahead.clone(),
        );
        r.register(
            "messages_fetched_apart",
            "Messages read by a fetch of their own with larger responses, because their \
             partition delivered nothing for source.stuck_after_ms with data in the broker",
            metrics.messages_fetched_apart.clone(),
        );
        r.register(
            "workers_catching_up",
            "Workers fetching with responses larger than their share, because their partitions \
             lag the broker while their queues run dry (source.grow_responses_after_ms)",
            metrics.workers_catching_up.clone(),
        );
        r.register_with_unit(
            "watermark_lag",
            "Wall clock minus the least partition watermark",
            Unit::Seconds,
            metrics.watermark_lag.clone(),
        );
        r.register_with_unit(
            "written_frontier",
            "Event time before which every output has been written",
            Unit::Seconds,
            metrics.written_frontier.clone(),
        );
        r.register_with_unit(
            "batch_latency",
            "From reading a batch to the written frontier passing its watermark",
            Unit::Seconds,
            metrics.batch_latency.clone(),
        );
        r.register_with_unit(
            "registry_propagation",
            "From a registry change being made (committed to the store, or produced to the \
             changelog topic) to enrichment seeing it",
            Unit::Seconds,
            metrics.registry_propagation.clone(),
        );
        r.register_with_unit(
            "notify_latency",
            "From an alert event's writing to the alerts topic to a receiver's acknowledgement \
             of it",
            Unit::Seconds,
            metrics.notify_latency.clone(),
        );
        r.register(
            "influx_points",
            "Points InfluxDB accepted",
            metrics.influx_points.clone(),
        );
        r.register(
            "influx_retries",
            "InfluxDB requests that failed and were made again",
            metrics.influx_retries.clone(),
        );
        r.register_with_unit(
            "influx_request",
            "How long each InfluxDB batch took to be written, retries included",
            Unit::Seconds,
            metrics.influx_request.clone(),
        );
        r.register_with_unit(
            "influx_latency",
            "From a message's arrival to InfluxDB accepting its readings",
            Unit::Seconds,
            metrics.influx_latency.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The counter of records written by `sink` (shared: every clone counts in the series).
    pub fn records_out(&self, sink: &str) -> Arc<Counter> {
        let label = SinkLabel {
            sink: sink.to_owned(),
        };
        Arc::new(self.records_out.get_or_create(&label).clone())
    }

    /// The counter of `sink`'s failures of `class` (see [`crate::io::support::failure`]).
    pub fn sink_failures(&self, sink: &str, class: FailureClass) -> Arc<Counter> {
        let labels = FailureLabels {
            sink: sink.to_owned(),
            class: class.label(),
        };
        Arc::new(self.sink_failures.get_or_create(&labels).clone())
    }

    /// Counts what a source batch admitted and what clocks it found off.
    pub fn ingest(&self, counts: &IngestCounts) {
        self.messages_admitted.inc_by(counts.admitted);
        let direction = |direction| DirectionLabel { direction };
        self.clock_faults
            .get_or_create(&direction("ahead"))
            .inc_by(counts.clock_ahead);
        self.clock_faults
            .get_or_create(&direction("behind"))
            .inc_by(counts.clock_behind);
    }

    /// Counts a dead letter.
    pub fn dead_letter(&self, reason: DeadLetterReason) {
        self.dead_letters
            .get_or_create(&ReasonLabel {
                reason: reason.code(),
            })
            .inc();
    }

    /// Dead letters of `reason` counted so far.
    pub fn dead_letter_count(&self, reason: DeadLetterReason) -> u64 {
        self.dead_letters
            .get_or_create(&ReasonLabel {
                reason: reason.code(),
            })
            .get()
    }

    /// Sets a partition's consumer lag (messages behind its end).
    pub fn set_consumer_lag(&self, partition: i32, lag: i64) {
        self.consumer_lag
            .get_or_create(&PartitionLabel { partition })
            .set(lag);
    }

    /// Sets the watermark lag: wall clock minus the dataflow's frontier, ms.
    pub fn set_watermark_lag_ms(&self, lag_ms: i64) {
        self.watermark_lag.set(lag_ms as f64 / 1000.0);
    }

    /// The watermark lag, seconds.
    pub fn watermark_lag_s(&self) -> f64 {
        self.watermark_lag.get()
    }

    /// Sets the written frontier, ms of event time.
    pub fn set_written_frontier_ms(&self, frontier_ms: u64) {
        self.written_frontier.set(frontier_ms as f64 / 1000.0);
    }

    /// The metrics in the OpenMetrics text exposition format.
    pub fn render(&self) -> String {
        encode_registry(&self.registry)
    }
}

/// Counts what a command's dataflow reports: each batch's ingest counts, every dead letter by
/// reason (pass the stream that holds the sinks' refusals too) and every late reading. The
/// streams come back unchanged; `run` and `demo` count the same way.
pub fn count_outputs<'scope>(
    metrics: &Arc<Metrics>,
    counts: EventStream<'scope, IngestCounts>,
    dead_letters: EventStream<'scope, DeadLetter>,
    late: &EventStream<'scope, LateReading>,
) -> (
    EventStream<'scope, IngestCounts>,
    EventStream<'scope, DeadLetter>,
) {
    let counted = Arc::clone(metrics);
    let counts = counts.inspect(move |c| counted.ingest(c));
    let counted = Arc::clone(metrics);
    let dead_letters = dead_letters.inspect(move |d| counted.dead_letter(d.reason));
    let counted = Arc::clone(metrics);
    late.clone().inspect(move |_| {
        counted.late_readings.inc();
    });
    (counts, dead_letters)
}

/// A registry in the OpenMetrics text format.
pub fn encode_registry(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

impl Exposed for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }
}

/// Metrics a process serves at `/metrics`.
pub trait Exposed: Send + Sync + 'static {
    /// The metrics in the OpenMetrics text exposition format.
    fn render(&self) -> String;
}

/// The content type of [`Exposed::render`]'s text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bounded_labels_in_the_openmetrics_format() {
        let metrics = Metrics::default();
        metrics.messages_in.inc_by(3);
        metrics.dead_letter(DeadLetterReason::UnknownDevice);
        metrics.records_out("alerts").inc_by(2);
        metrics
            .sink_failures("aggregates", FailureClass::Record)
            .inc();
        metrics.set_consumer_lag(7, 12);
        metrics.set_watermark_lag_ms(1_500);
        metrics.batch_latency.observe(Duration::from_millis(30));
        let text = metrics.render();
        for line in [
            "iotpipe_messages_in_total 3",
            "iotpipe_dead_letters_total{reason=\"unknown_device\"} 1",
            "iotpipe_dead_letters_total{reason=\"invalid_json\"} 0",
            "iotpipe_clock_faults_total{direction=\"ahead\"} 0",
            "iotpipe_records_out_total{sink=\"alerts\"} 2",
            "iotpipe_sink_failures_total{sink=\"aggregates\",class=\"record\"} 1",
            "iotpipe_consumer_lag_messages{partition=\"7\"} 12",
            "iotpipe_watermark_lag_seconds 1.5",
            "iotpipe_batch_latency_seconds_bucket{le=\"0.025\"} 0",
            "iotpipe_batch_latency_seconds_bucket{le=\"0.05\"} 1",
            "iotpipe_batch_latency_seconds_bucket{le=\"+Inf\"} 1",
            "iotpipe_batch_latency_seconds_count 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn quantiles_are_the_bounds_of_their_buckets() {
        let h = Histogram::default();
        assert_eq!(h.quantile_bound_s(0.5), None);
        h.observe_many(Duration::from_millis(30), 98);
        h.observe_many(Duration::from_millis(900), 2);
        assert_eq!(h.quantile_bound_s(0.5), Some(0.05));
        assert_eq!(h.quantile_bound_s(0.98), Some(0.05));
        assert_eq!(h.quantile_bound_s(0.99), Some(1.0));
        h.observe(Duration::from_secs(100));
        assert_eq!(h.quantile_bound_s(1.0), None);
    }
}
