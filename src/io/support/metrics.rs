//! Process metrics in the Prometheus text format, served at `/metrics`.
//!
//! Labels are bounded: sinks, dead-letter reasons and partitions, never devices.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::dataflow::model::{DeadLetterReason, IngestCounts};
use crate::io::support::failure::FailureClass;

/// A monotone counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency histograms, seconds: fine below a second, where the goal is.
const LATENCY_BUCKETS_S: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
];

/// A histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
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
        let seconds = duration.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(LATENCY_BUCKETS_S) {
            if seconds <= bound {
                bucket.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(n, Ordering::Relaxed);
        self.sum_us
            .fetch_add(duration.as_micros() as u64 * n, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The upper bound of the bucket holding quantile `q` (0 to 1), seconds; `None` when empty
    /// or beyond the last bucket.
    pub fn quantile_bound_s(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = (q * count as f64).ceil().max(1.0) as u64;
        self.buckets
            .iter()
            .zip(LATENCY_BUCKETS_S)
            .find(|(bucket, _)| bucket.load(Ordering::Relaxed) >= rank)
            .map(|(_, bound)| bound)
    }

    /// The mean duration, seconds.
    pub fn mean_s(&self) -> Option<f64> {
        let count = self.count();
        (count > 0).then(|| self.sum_us.load(Ordering::Relaxed) as f64 / 1e6 / count as f64)
    }
}

/// Everything a running process reports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages read from the telemetry topic.
    pub messages_in: Counter,
    /// Dead letters, by [`DeadLetterReason::ALL`] index.
    pub dead_letters: [Counter; DeadLetterReason::ALL.len()],
    /// Readings that arrived after their window closed.
    pub late_readings: Counter,
    /// Messages admitted with their readings (every other message read is a dead letter).
    pub messages_admitted: Counter,
    /// Messages stamped more than the allowed skew ahead of the fleet time or their arrival.
    pub clock_ahead: Counter,
    /// Messages stamped more than the allowed skew behind it.
    pub clock_behind: Counter,
    /// Registry changes applied, and registry records skipped as malformed.
    pub registry_changes: Counter,
    /// Registry records skipped as malformed.
    pub registry_rejects: Counter,
    /// Records that failed delivery and were sent again.
    pub delivery_retries: Counter,
    /// Wall clock minus the dataflow's frontier (the least partition watermark), ms.
    pub watermark_lag_ms: Gauge,
    /// The frontier of everything the sinks have written, ms.
    pub written_frontier_ms: Gauge,
    /// From reading a batch to the written frontier passing its watermark (everything the
    /// dataflow emitted at or before the batch's time is then durable).
    pub batch_latency: Histogram,
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
    records_out: Mutex<BTreeMap<String, Arc<Counter>>>,
    sink_failures: Mutex<BTreeMap<(String, &'static str), Arc<Counter>>>,
    consumer_lag: Mutex<BTreeMap<i32, i64>>,
}

impl Metrics {
    /// The counter of records written by `sink`.
    pub fn records_out(&self, sink: &str) -> Arc<Counter> {
        let mut sinks = self.records_out.lock().expect("not poisoned");
        Arc::clone(sinks.entry(sink.to_owned()).or_default())
    }

    /// The counter of `sink`'s failures of `class` (see [`crate::io::support::failure`]).
    pub fn sink_failures(&self, sink: &str, class: FailureClass) -> Arc<Counter> {
        let mut failures = self.sink_failures.lock().expect("not poisoned");
        Arc::clone(
            failures
                .entry((sink.to_owned(), class.label()))
                .or_default(),
        )
    }

    /// Counts what a source batch admitted and what clocks it found off.
    pub fn ingest(&self, counts: &IngestCounts) {
        self.messages_admitted.add(counts.admitted);
        self.clock_ahead.add(counts.clock_ahead);
        self.clock_behind.add(counts.clock_behind);
    }

    /// Counts a dead letter.
    pub fn dead_letter(&self, reason: DeadLetterReason) {
        let index = DeadLetterReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is in ALL");
        self.dead_letters[index].inc();
    }

    /// Sets a partition's consumer lag (messages behind its end).
    pub fn set_consumer_lag(&self, partition: i32, lag: i64) {
        self.consumer_lag
            .lock()
            .expect("not poisoned")
            .insert(partition, lag);
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut text = TextFormat::default();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            text.family(name, kind, help, samples)
        };
        family(
            "messages_in_total",
            "counter",
            "Messages read from the telemetry topic.",
            &TextFormat::plain(self.messages_in.get().to_string()),
        );
        let sinks: Vec<_> = self
            .records_out
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(sink, c)| (format!("{{sink=\"{sink}\"}}"), c.get().to_string()))
            .collect();
        family(
            "records_out_total",
            "counter",
            "Records acknowledged by the broker, by sink.",
            &sinks,
        );
        let failures: Vec<_> = self
            .sink_failures
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|((sink, class), c)| {
                (
                    format!("{{sink=\"{sink}\",class=\"{class}\"}}"),
                    c.get().to_string(),
                )
            })
            .collect();
        family(
            "sink_failures_total",
            "counter",
            "Failures handing records to a service, by sink and class (transient: retried; \
             record: a sink_rejected dead letter; sink: the service stops).",
            &failures,
        );
        let reasons: Vec<_> = DeadLetterReason::ALL
            .iter()
            .zip(&self.dead_letters)
            .map(|(r, c)| (format!("{{reason=\"{}\"}}", r.code()), c.get().to_string()))
            .collect();
        family(
            "dead_letters_total",
            "counter",
            "Messages rejected, by reason.",
            &reasons,
        );
        family(
            "late_readings_total",
            "counter",
            "Readings that arrived after their window closed.",
            &TextFormat::plain(self.late_readings.get().to_string()),
        );
        family(
            "messages_admitted_total",
            "counter",
            "Messages admitted with their readings; every other message read is a dead letter.",
            &TextFormat::plain(self.messages_admitted.get().to_string()),
        );
        let clocks = [
            (
                "{direction=\"ahead\"}".to_owned(),
                self.clock_ahead.get().to_string(),
            ),
            (
                "{direction=\"behind\"}".to_owned(),
                self.clock_behind.get().to_string(),
            ),
        ];
        family(
            "clock_faults_total",
            "counter",
            "Messages of registered devices stamped more than the allowed skew off the fleet \
             time or their arrival, by direction.",
            &clocks,
        );
        family(
            "registry_changes_total",
            "counter",
            "Registry changelog records applied.",
            &TextFormat::plain(self.registry_changes.get().to_string()),
        );
        family(
            "registry_rejects_total",
            "counter",
            "Registry changelog records skipped as malformed.",
            &TextFormat::plain(self.registry_rejects.get().to_string()),
        );
        family(
            "delivery_retries_total",
            "counter",
            "Records whose delivery failed and that were sent again.",
            &TextFormat::plain(self.delivery_retries.get().to_string()),
        );
        let lags: Vec<_> = self
            .consumer_lag
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(p, lag)| (format!("{{partition=\"{p}\"}}"), lag.to_string()))
            .collect();
        family(
            "consumer_lag_messages",
            "gauge",
            "Messages between a partition's read position and its end.",
            &lags,
        );
        family(
            "watermark_lag_seconds",
            "gauge",
            "Wall clock minus the least partition watermark.",
            &TextFormat::plain(format!(
                "{:.3}",
                self.watermark_lag_ms.get() as f64 / 1000.0
            )),
        );
        family(
            "written_frontier_seconds",
            "gauge",
            "Event time before which every output has been written.",
            &TextFormat::plain(format!(
                "{:.3}",
                self.written_frontier_ms.get() as f64 / 1000.0
            )),
        );
        text.histogram(
            "batch_latency_seconds",
            "From reading a batch to the written frontier passing its watermark.",
            &self.batch_latency,
        );
        text.family(
            "influx_points_total",
            "counter",
            "Points InfluxDB accepted.",
            &TextFormat::plain(self.influx_points.get()),
        );
        text.family(
            "influx_retries_total",
            "counter",
            "InfluxDB requests that failed and were made again.",
            &TextFormat::plain(self.influx_retries.get()),
        );
        text.histogram(
            "influx_request_seconds",
            "How long each InfluxDB batch took to be written, retries included.",
            &self.influx_request,
        );
        text.histogram(
            "influx_latency_seconds",
            "From a message's arrival to InfluxDB accepting its readings.",
            &self.influx_latency,
        );
        text.finish()
    }
}

impl Exposed for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }
}

/// Metrics a process serves at `/metrics`.
pub trait Exposed: Send + Sync + 'static {
    /// The metrics in the Prometheus text exposition format.
    fn render(&self) -> String;
}

/// A Prometheus text exposition being written; names get the `iotpipe_` prefix.
#[derive(Debug, Default)]
pub struct TextFormat {
    text: String,
}

impl TextFormat {
    /// One family: `samples` are (label set or name suffix, value).
    pub fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
        let _ = writeln!(self.text, "# HELP iotpipe_{name} {help}");
        let _ = writeln!(self.text, "# TYPE iotpipe_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.text, "iotpipe_{name}{labels} {value}");
        }
    }

    /// The samples of a family without labels.
    pub fn plain(value: impl ToString) -> Vec<(String, String)> {
        vec![(String::new(), value.to_string())]
    }

    /// A histogram family.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        let mut samples: Vec<_> = LATENCY_BUCKETS_S
            .iter()
            .zip(&h.buckets)
            .map(|(bound, c)| {
                (
                    format!("_bucket{{le=\"{bound}\"}}"),
                    c.load(Ordering::Relaxed).to_string(),
                )
            })
            .collect();
        samples.push(("_bucket{le=\"+Inf\"}".into(), h.count().to_string()));
        samples.push((
            "_sum".into(),
            format!("{:.6}", h.sum_us.load(Ordering::Relaxed) as f64 / 1e6),
        ));
        samples.push(("_count".into(), h.count().to_string()));
        self.family(name, "histogram", help, &samples);
    }

    /// The exposition's text.
    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bounded_labels_in_the_text_format() {
        let metrics = Metrics::default();
        metrics.messages_in.add(3);
        metrics.dead_letter(DeadLetterReason::UnknownDevice);
        metrics.records_out("alerts").add(2);
        metrics
            .sink_failures("aggregates", FailureClass::Record)
            .inc();
        metrics.set_consumer_lag(7, 12);
        metrics.batch_latency.observe(Duration::from_millis(30));
        let text = metrics.render();
        for line in [
            "iotpipe_messages_in_total 3",
            "iotpipe_dead_letters_total{reason=\"unknown_device\"} 1",
            "iotpipe_records_out_total{sink=\"alerts\"} 2",
            "iotpipe_sink_failures_total{sink=\"aggregates\",class=\"record\"} 1",
            "iotpipe_consumer_lag_messages{partition=\"7\"} 12",
            "iotpipe_batch_latency_seconds_bucket{le=\"0.025\"} 0",
            "iotpipe_batch_latency_seconds_bucket{le=\"0.05\"} 1",
            "iotpipe_batch_latency_seconds_count 1",
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
