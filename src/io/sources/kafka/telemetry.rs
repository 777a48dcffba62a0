//! The telemetry topic as the dataflow's source: partitions spread over workers, one watermark
//! per partition, idle partitions set aside.
//!
//! Partition `p` is read by global worker `p % workers`, so the assignment follows the shape of
//! the cluster and a restart with another shape spreads the partitions again; each partition
//! resumes where its last commit says (see [`super::checkpoint`]).
//!
//! Watermarks follow SPEC.md per partition: each partition has its own [`Ingestor`], which
//! stamps every message with the partition's watermark. A worker's input time is the least
//! watermark of its partitions, and timely's frontier, the least over all workers, is the
//! dataflow's watermark.
//!
//! Idle partitions. A partition is *idle* once it has been read to its end and nothing new has
//! come for `idle_timeout_ms`; it then stops holding the frontier back:
//! - a worker's input time is the least watermark of its *active* partitions;
//! - a worker whose partitions are all idle follows the largest watermark of any partition in
//!   the cluster, which the workers tell each other ([`IdleFloor`]);
//! - when every partition in the cluster is idle, that watermark advances with the wall clock
//!   (`idle_advance_ms_per_s`), so the last windows of a stream that stopped still close;
//! - a partition that speaks again resumes at the input time if its own watermark fell behind
//!   it: its messages are stamped no earlier than what the dataflow has already passed, so
//!   readings for closed windows are late, never lost.
//!
//! Alignment. Each partition is read from its own librdkafka queue, and one whose watermark
//! runs more than `max_lead_ms` ahead of the dataflow's frontier is not read until the
//! frontier catches up (Flink's watermark alignment). Without it, the messages of partitions
//! fetched early wait inside the dataflow for the slowest partition (enrichment cannot answer
//! before the frontier says the registry is complete): at the start of a catch-up that was
//! most of a topic. Not reading is not pausing: librdkafka goes on fetching the partition from
//! where it was, up to its queue limits, and never fetches from inside a stored batch again.
//!
//! Oversized records. A partition with data in the broker that gets nothing from the broker's
//! answers for `stuck_after_ms` has its next record fetched apart, with larger responses
//! ([`super::oversized`]): tansu does not return a record larger than a fetch response, and the
//! consumer's responses are kept small because each one stays in memory until its last message
//! is read.
//!
//! Catching up. A worker whose partitions lag the broker while its queues run dry re-creates
//! its consumer with larger responses, and goes back once caught up ([`super::catch_up`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::dataflow::PipelineConfig;
use crate::dataflow::event_time::Watermarker;
use crate::dataflow::ingest::{IngestBatch, Ingestor, Provenance};
use crate::dataflow::model::TimeMs;
use crate::dataflow::schema::SchemaSet;
use crate::io::connect::kafka::{
    DetachedProducer, KafkaConfig, KafkaSetupError, client_error, partition_count,
};
use crate::io::sources::inputs::SourceInputs;
use crate::io::sources::kafka::catch_up::{PollSeen, ResponseSizer};
use crate::io::sources::kafka::checkpoint::{
    Checkpoint, ResumePoint, ResumeTrail, read_checkpoints,
};
use crate::io::sources::kafka::oversized::{FETCH_MAX_BYTES_DEFAULT, Fetched, OversizedFetch};
use crate::io::sources::kafka::prefetch::{QUEUED_MIN_MESSAGES_DEFAULT, prefetch_properties};
use crate::io::sources::live_registry::LiveRegistry;
use crate::io::support::metrics::{Counter, Metrics};

/// How the source reads, sets idle partitions aside, and commits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// A partition read to its end with nothing new for this long (wall clock, ms) is idle and
    /// stops holding the frontier back.
    pub idle_timeout_ms: u64,
    /// When every partition is idle, the watermark advances this many event-time ms per
    /// wall-clock second (1000: as fast as the clock), so the last windows close.
    pub idle_advance_ms_per_s: u64,
    /// At most this many messages are read per worker between dataflow steps.
    pub max_batch_messages: usize,
    /// How much event time before the written frontier each partition's commit resumes at:
    /// at least a window, the allowed lateness and the clock skew, so windows are rebuilt
    /// whole; more gives anomaly models a longer history to rebuild from.
    pub rewind_ms: u64,
    /// How often each worker commits its partitions' resume points (ms).
    pub commit_interval_ms: u64,
    /// Watermark alignment: a partition whose watermark is more than this (event-time ms)
    /// ahead of the dataflow's frontier is not read until the frontier catches up, so the
    /// messages of a partition that runs ahead (or of every partition, while the slowest has
    /// not delivered its first batch) wait in the broker instead of in memory. librdkafka
    /// keeps prefetching it only up to its per-partition queue limits. 0 reads every
    /// partition as fast as it comes.
    pub max_lead_ms: u64,
    /// A partition with data in the broker that gets nothing from the broker's answers for this
    /// long (wall clock, ms) has its next record fetched by a client of its own with larger
    /// responses, doubled until it comes (tansu 0.6.0 never returns a record larger than a
    /// fetch response, so such a record would stop the partition for good). 0 never does.
    pub stuck_after_ms: u64,
    /// A worker whose partitions lag the broker by more than it prefetches, while its queues
    /// run dry, for this long (wall clock, ms) doubles its fetch responses (up to 8 MiB), and
    /// again after each further such wait; back to its share once its lag has stayed within
    /// the prefetch for twice as long. On a broker whose fetches cost the backlog they scan
    /// (tansu's sqlite engine), larger responses are what lets a consumer that fell behind
    /// catch up. The share is `fetch.max.bytes` under `[kafka.properties]` if set there. 0
    /// keeps the responses fixed.
    pub grow_responses_after_ms: u64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            idle_timeout_ms: 10_000,
            idle_advance_ms_per_s: 1_000,
            max_batch_messages: 10_000,
            rewind_ms: 3_600_000,
            commit_interval_ms: 1_000,
            max_lead_ms: 60_000,
            stuck_after_ms: 2_000,
            grow_responses_after_ms: 5_000,
        }
    }
}

/// Keeps what librdkafka's statistics (once a second) say of each partition: where it ends,
/// for the consumer lag metric, and how many fetches its leader has been sent, for telling a
/// partition stuck behind an oversized record from a slow one.
#[derive(Default)]
struct SourceContext {
    topic: String,
    partitions: Mutex<FxHashMap<i32, PartitionStats>>,
}

#[derive(Clone, Copy, Default)]
struct PartitionStats {
    /// The partition's end offset (high watermark), once known.
    end: Option<i64>,
    /// Fetch requests sent to the partition's leader. librdkafka has one fetch in flight per
    /// broker, so all but the last have been answered.
    fetches: i64,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut partitions = self.partitions.lock().expect("not poisoned");
        for (p, partition) in &topic.partitions {
            if *p < 0 {
                continue;
            }
            let stats = partitions.entry(*p).or_default();
            if partition.hi_offset >= 0 {
                stats.end = Some(partition.hi_offset);
            }
            if let Some(fetches) = statistics
                .brokers
                .values()
                .find(|broker| broker.nodeid == partition.leader)
                .and_then(|broker| broker.req.get("Fetch"))
            {
                stats.fetches = *fetches;
            }
        }
    }
}

impl ConsumerContext for SourceContext {}

impl SourceContext {
    fn stats_of(&self, partition: i32) -> PartitionStats {
        self.partitions
            .lock()
            .expect("not poisoned")
            .get(&partition)
            .copied()
            .unwrap_or_default()
    }

    fn end(&self, partition: i32) -> Option<i64> {
        self.stats_of(partition).end
    }
}

/// One partition this worker reads.
struct PartitionReader {
    partition: i32,
    ingestor: Ingestor,
    batch: Option<IngestBatch>,
    next_offset: i64,
    last_message: Instant,
    trail: ResumeTrail,
    /// Since when messages wait at the partition's start for the fleet time.
    holding_since: Option<Instant>,
    /// Idle, as last decided; and when the broker was last asked where the partition ends.
    idle: bool,
    end_checked: Option<Instant>,
    /// Not read in the last poll: too far ahead of the frontier (see `max_lead_ms`).
    ahead: bool,
    /// The fetch of a record the consumer's responses are too small for, while it runs; and
    /// when the last one ended without the record, so that the next waits `stuck_after_ms`.
    oversized: Option<OversizedFetch>,
    oversized_failed: Option<Instant>,
    /// The position and the leader's fetch count when the position last moved.
    progress: (i64, i64),
}

/// A worker's share of the telemetry topic.
pub struct KafkaSource {
    consumer: Arc<BaseConsumer<SourceContext>>,
    /// Each reader's partition queue, in the readers' order: reading partition by partition
    /// is what lets one that runs ahead wait.
    queues: Vec<PartitionQueue<SourceContext>>,
    /// A client of its own for end offsets: on the consumer's connection the request would
    /// wait behind a long-polling fetch.
    ends: BaseConsumer,
    topic: String,
    /// The shared client settings, for [`OversizedFetch`]es.
    client: ClientConfig,
    /// The consumer's settings, for re-creating it with another response size.
    consumer_config: ClientConfig,
    /// The consumer's `fetch.max.bytes`: an oversized fetch starts at twice it.
    fetch_max_bytes: u64,
    /// Grows the responses while the broker holds the worker back; `None` keeps them fixed.
    sizer: Option<ResponseSizer>,
    readers: Vec<PartitionReader>,
    by_partition: FxHashMap<i32, usize>,
    config: SourceConfig,
    registry: Arc<LiveRegistry>,
    registry_version: u64,
    metrics: Arc<Metrics>,
    checkpoints: Arc<dyn DetachedProducer>,
    checkpoint_topic: String,
    checkpoints_written: Arc<Counter>,
    committed_written_ms: Option<TimeMs>,
    last_commit: Instant,
    skip_before_ms: TimeMs,
}

/// What a worker tells the others about its partitions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionReport {
    /// The largest watermark of its partitions.
    pub max_watermark_ms: TimeMs,
    /// Whether all its partitions are idle (or it has none).
    pub all_idle: bool,
}

/// The input time a worker whose partitions are all idle moves to, from every worker's
/// [`PartitionReport`].
#[derive(Debug)]
pub struct IdleFloor {
    reports: Vec<Option<PartitionReport>>,
    all_idle_since: Option<(Instant, TimeMs)>,
    advance_ms_per_s: u64,
}

impl IdleFloor {
    /// No reports yet, from `peers` workers.
    pub fn new(peers: usize, advance_ms_per_s: u64) -> Self {
        Self {
            reports: vec![None; peers],
            all_idle_since: None,
            advance_ms_per_s,
        }
    }

    /// Takes a worker's latest report.
    pub fn report(&mut self, worker: usize, report: PartitionReport, now: Instant) {
        self.reports[worker] = Some(report);
        let all_idle = self.reports.iter().all(|r| r.is_some_and(|r| r.all_idle));
        self.all_idle_since = match (all_idle, self.all_idle_since) {
            (false, _) => None,
            (true, Some(since)) => Some(since),
            (true, None) => Some((now, self.largest_watermark())),
        };
    }

    fn largest_watermark(&self) -> TimeMs {
        self.reports
            .iter()
            .flatten()
            .map(|r| r.max_watermark_ms)
            .max()
            .unwrap_or(0)
    }

    /// The floor now: the largest watermark in the cluster, advancing with the wall clock
    /// while every partition is idle; `None` until every worker has reported.
    pub fn floor(&self, now: Instant) -> Option<TimeMs> {
        if self.reports.iter().any(Option::is_none) {
            return None;
        }
        let largest = self.largest_watermark();
        Some(match self.all_idle_since {
            Some((since, at)) => {
                let elapsed_ms = now.duration_since(since).as_millis() as u64;
                largest.max(at + elapsed_ms * self.advance_ms_per_s / 1000)
            }
            None => largest,
        })
    }
}

/// Why [`open_consumer`] failed.
enum OpenError {
    /// librdkafka refused a step, named.
    Client(&'static str, rdkafka::error::KafkaError),
    /// The topic has no such partition.
    NoPartition,
}

/// The consumer with `config`, assigned each of `topic`'s partitions at its start offset, and
/// each partition's queue split off, in `starts`' order; its statistics start from `ends`, end
/// offsets known before it (asked at the start, or what an earlier client knew).
#[allow(clippy::type_complexity)]
fn open_consumer(
    config: &ClientConfig,
    topic: &str,
    starts: &[(i32, Offset)],
    ends: FxHashMap<i32, i64>,
) -> Result<
    (
        Arc<BaseConsumer<SourceContext>>,
        Vec<PartitionQueue<SourceContext>>,
    ),
    OpenError,
> {
    let partitions = ends
        .into_iter()
        .map(|(partition, end)| {
            let stats = PartitionStats {
                end: Some(end),
                fetches: 0,
            };
            (partition, stats)
        })
        .collect();
    let context = SourceContext {
        topic: topic.to_string(),
        partitions: Mutex::new(partitions),
    };
    let consumer: Arc<BaseConsumer<SourceContext>> = config
        .create_with_context(context)
        .map(Arc::new)
        .map_err(|e| OpenError::Client("telemetry consumer", e))?;
    let mut assignment = TopicPartitionList::new();
    for (partition, start) in starts {
        assignment
            .add_partition_offset(topic, *partition, *start)
            .map_err(|e| OpenError::Client("assignment", e))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| OpenError::Client("assignment", e))?;
    // Split after assigning (an assignment deactivates earlier queues) and before the first
    // poll, so that every message comes through its partition's queue.
    let queues = starts
        .iter()
        .map(|(partition, _)| consumer.split_partition_queue(topic, *partition))
        .collect::<Option<Vec<_>>>()
        .ok_or(OpenError::NoPartition)?;
    Ok((consumer, queues))
}

/// Admits one message of `reader`'s partition into its open batch, unless the partition is
/// already past it (read by an oversized fetch, and fetched again by the consumer before its
/// seek); returns whether it was admitted.
fn take_message(
    reader: &mut PartitionReader,
    message: &BorrowedMessage<'_>,
    inputs: &SourceInputs,
    now: Instant,
) -> bool {
    if message.offset() < reader.next_offset {
        return false;
    }
    let input_time = inputs.time();
    let batch = reader.batch.get_or_insert_with(|| {
        // Back from idle behind the frontier: stamped no earlier than the input time.
        let mut watermarker = reader.ingestor.watermarker().clone();
        watermarker.raise_to(input_time);
        reader.ingestor.set_watermarker(watermarker);
        reader.ingestor.start_batch()
    });
    // A message still held cannot be resumed after: its clock is not yet decided.
    if !reader.ingestor.is_holding() {
        let watermarker = reader.ingestor.watermarker();
        reader.trail.record(ResumePoint {
            time_ms: watermarker.watermark_ms(),
            offset: message.offset(),
            clock: watermarker.clock(),
            floor_ms: watermarker.floor_ms(),
        });
    }
    let provenance = Provenance {
        // The bridge sets it to the MQTT arrival; a negative one is no time.
        arrival_ms: message
            .timestamp()
            .to_millis()
            .and_then(|ms| u64::try_from(ms).ok()),
        offset: Some(message.offset()),
    };
    reader
        .ingestor
        .ingest(message.payload().unwrap_or_default(), provenance, batch);
    if reader.ingestor.is_holding() {
        reader.holding_since.get_or_insert(now);
    }
    reader.next_offset = message.offset() + 1;
    reader.last_message = now;
    reader.idle = false;
    true
}

impl KafkaSource {
    /// Opens this worker's partitions (`p % peers == index`) at their committed resume points.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        kafka: &KafkaConfig,
        config: SourceConfig,
        schemas: &SchemaSet,
        pipeline: &PipelineConfig,
        registry: Arc<LiveRegistry>,
        metrics: Arc<Metrics>,
        checkpoints: Arc<dyn DetachedProducer>,
        index: usize,
        peers: usize,
    ) -> Result<Self, KafkaSetupError> {
        let topic = kafka.topics.telemetry.clone();
        let ends: BaseConsumer = kafka
            .client()
            .set("group.id", &kafka.group_id)
            .create()
            .map_err(client_error("end offset client"))?;
        let timeout = Duration::from_secs(10);
        let partitions = partition_count(&ends, &topic, &kafka.brokers, timeout)?;
        let mine = (0..partitions)
            .filter(|p| *p as usize % peers == index)
            .count();
        let mut client = kafka.client();
        client
            .set("statistics.interval.ms", "1000")
            .set("group.id", &kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        for (key, value) in prefetch_properties(mine, &kafka.properties) {
            client.set(key, value);
        }
        let fetch_max_bytes = client
            .get("fetch.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(FETCH_MAX_BYTES_DEFAULT);
        let partition_messages: u64 = client
            .get("queued.min.messages")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(QUEUED_MIN_MESSAGES_DEFAULT);
        let sizer = (config.grow_responses_after_ms > 0).then(|| {
            ResponseSizer::new(
                fetch_max_bytes,
                partition_messages * mine as u64,
                Duration::from_millis(config.grow_responses_after_ms),
            )
        });
        let resume = read_checkpoints(kafka, &topic)?;
        let skip_before_ms = resume.values().map(|c| c.written_ms).max().unwrap_or(0);
        let initial = registry.snapshot();
        let mut assignment = Vec::new();
        let mut readers = Vec::new();
        for p in (0..partitions).filter(|p| *p as usize % peers == index) {
            let checkpoint = resume.get(&p).copied();
            let start = match checkpoint {
                Some(c) => Offset::Offset(c.offset),
                None => Offset::Beginning,
            };
            let checkpoint = checkpoint.unwrap_or_default();
            assignment.push((p, start));
            let mut ingestor =
                Ingestor::new(schemas.clone(), Arc::clone(&initial.1), pipeline.event_time)
                    .with_max_message_bytes(pipeline.ingest.max_message_bytes);
            ingestor.set_origin(&topic, p);
            let clock = checkpoint.resume_clock();
            let mut watermarker = Watermarker::resume(pipeline.event_time, clock);
            watermarker.raise_to(checkpoint.floor_ms);
            let point = ResumePoint {
                time_ms: watermarker.watermark_ms(),
                offset: checkpoint.offset,
                clock,
                floor_ms: checkpoint.floor_ms,
            };
            tracing::info!(
                topic,
                partition = p,
                offset = point.offset,
                watermark_ms = point.time_ms,
                "partition resumes"
            );
            ingestor.set_watermarker(watermarker);
            readers.push(PartitionReader {
                partition: p,
                ingestor,
                batch: None,
                next_offset: checkpoint.offset,
                last_message: Instant::now(),
                trail: ResumeTrail::new(point, 1_000),
                holding_since: None,
                idle: false,
                end_checked: None,
                ahead: false,
                oversized: None,
                oversized_failed: None,
                progress: (checkpoint.offset, 0),
            });
        }
        // Where each partition ends, asked now: librdkafka's statistics report an end only
        // once the broker has answered the partition's first fetch, which on a slow broker
        // comes seconds in, and until then a worker behind cannot tell it is (see
        // `ResponseSizer`). An end that cannot be had now is left to the statistics.
        let known_ends = assignment
            .iter()
            .filter_map(|&(partition, _)| {
                match ends.fetch_watermarks(&topic, partition, Duration::from_secs(2)) {
                    Ok((_, end)) => Some((partition, end)),
                    Err(error) => {
                        tracing::debug!(topic, partition, %error, "end offset not known at start");
                        None
                    }
                }
            })
            .collect();
        let (consumer, queues) = open_consumer(&client, &topic, &assignment, known_ends).map_err(
            |error| match error {
                OpenError::Client(what, error) => client_error(what)(error),
                OpenError::NoPartition => KafkaSetupError::NoTopic {
                    topic: topic.clone(),
                    brokers: kafka.brokers.clone(),
                },
            },
        )?;
        tracing::info!(
            topic,
            worker = index,
            partitions = ?readers.iter().map(|r| r.partition).collect::<Vec<_>>(),
            skip_before_ms,
            "telemetry partitions assigned"
        );
        let checkpoints_written = metrics.records_out("checkpoints");
        let by_partition = readers
            .iter()
            .enumerate()
            .map(|(i, r)| (r.partition, i))
            .collect();
        Ok(Self {
            consumer,
            queues,
            ends,
            topic,
            client: kafka.client().set("group.id", &kafka.group_id).clone(),
            consumer_config: client,
            fetch_max_bytes,
            sizer,
            readers,
            by_partition,
            config,
            registry,
            registry_version: initial.0,
            metrics,
            checkpoints,
            checkpoint_topic: kafka.topics.checkpoints.clone(),
            checkpoints_written,
            committed_written_ms: None,
            last_commit: Instant::now(),
            skip_before_ms,
        })
    }

    /// Outputs at times before this were written by an earlier run (the largest written
    /// frontier any partition committed).
    pub fn skip_before_ms(&self) -> TimeMs {
        self.skip_before_ms
    }

    /// The least watermark of this worker's partitions as resumed: where its input starts.
    pub fn start_time_ms(&self) -> TimeMs {
        self.readers
            .iter()
            .map(|r| r.ingestor.watermarker().watermark_ms())
            .min()
            .unwrap_or(0)
    }

    /// Reads what is there (at most `max_batch_messages`, a share from each partition in
    /// turn), sends it into the dataflow, and advances the input to the least watermark of the
    /// active partitions (or to `floor` when all are idle). A partition more than
    /// `max_lead_ms` ahead of `frontier` (the dataflow's, when known) is not read. Returns how
    /// many messages were read.
    pub fn poll(
        &mut self,
        inputs: &mut SourceInputs,
        floor: Option<TimeMs>,
        frontier: Option<TimeMs>,
    ) -> usize {
        if self.registry.version() != self.registry_version {
            let (version, history) = self.registry.snapshot();
            for reader in &mut self.readers {
                reader.ingestor.set_registry(Arc::clone(&history));
            }
            self.registry_version = version;
        }
        let now = Instant::now();
        let mut read = 0;
        // The consumer's own queue serves callbacks (statistics, errors); a message there was
        // fetched before its partition's queue was split off.
        while let Some(result) = self.consumer.poll(Duration::ZERO) {
            match result {
                Ok(message) => {
                    if let Some(&at) = self.by_partition.get(&message.partition())
                        && take_message(&mut self.readers[at], &message, inputs, now)
                    {
                        read += 1;
                    }
                }
                Err(error) => {
                    tracing::warn!(topic = %self.topic, %error, "telemetry read failed; retrying");
                    break;
                }
            }
        }
        let limit = (self.config.max_lead_ms > 0)
            .then(|| frontier.map(|f| f.saturating_add(self.config.max_lead_ms)))
            .flatten();
        let max = self.config.max_batch_messages;
        let share = (max / self.readers.len().max(1)).max(1);
        let mut progressed = true;
        while progressed && read < max {
            progressed = false;
            for (reader, queue) in self.readers.iter_mut().zip(&self.queues) {
                let mut taken = 0;
                while taken < share && read < max {
                    let ahead = limit
                        .is_some_and(|limit| reader.ingestor.watermarker().watermark_ms() > limit);
                    if ahead != reader.ahead {
                        reader.ahead = ahead;
                        if ahead {
                            self.metrics.partitions_ahead.inc();
                        } else {
                            self.metrics.partitions_ahead.dec();
                        }
                    }
                    if ahead {
                        break;
                    }
                    let message = match queue.poll(Duration::ZERO) {
                        None => break,
                        Some(Ok(message)) => message,
                        Some(Err(error)) => {
                            tracing::warn!(topic = %self.topic, partition = reader.partition, %error, "telemetry read failed; retrying");
                            break;
                        }
                    };
                    if !take_message(reader, &message, inputs, now) {
                        continue;
                    }
                    taken += 1;
                    read += 1;
                }
                progressed |= taken > 0;
            }
        }
        read += self.fetch_oversized(inputs, now);
        self.size_responses(now, read == 0);
        self.metrics.messages_in.inc_by(read as u64);
        self.update_idle(now);
        let hold_limit = Duration::from_millis(self.config.idle_timeout_ms);
        for reader in &mut self.readers {
            // Fewer devices than the quorum, and quiet or waiting long enough: judge the start.
            if let Some(since) = reader.holding_since
                && (reader.idle || now.duration_since(since) >= hold_limit)
            {
                let ingestor = &mut reader.ingestor;
                let batch = reader.batch.get_or_insert_with(|| ingestor.start_batch());
                ingestor.release_held(batch);
                reader.holding_since = None;
            }
            if let Some(mut batch) = reader.batch.take() {
                inputs.send_now(&mut batch);
            }
        }
        let active_min = self
            .readers
            .iter()
            .filter(|r| !r.idle)
            .map(|r| r.ingestor.watermarker().watermark_ms())
            .min();
        if let Some(target) = active_min.or(floor) {
            inputs.advance_to(target);
        }
        read
    }

    /// Starts, polls and finishes the fetches of records too large for the consumer's
    /// responses (see `stuck_after_ms`); returns how many messages they read.
    fn fetch_oversized(&mut self, inputs: &SourceInputs, now: Instant) -> usize {
        if self.config.stuck_after_ms == 0 {
            return 0;
        }
        let stuck_after = Duration::from_millis(self.config.stuck_after_ms);
        let mut read = 0;
        // A partition that was in this many answered fetches and got nothing was not starved by
        // the others (librdkafka starts each fetch at the next partition) but stopped.
        let empty_fetches = 2 * self.readers.len() as i64 + 3;
        // One fetch apart at a time: each may grow to FETCH_MAX_BYTES_CAP, and a response that
        // large costs librdkafka several times its size; stuck partitions take their turns.
        let mut fetching = self.readers.iter().any(|r| r.oversized.is_some());
        for reader in &mut self.readers {
            let stats = self.consumer.context().stats_of(reader.partition);
            if reader.progress.0 != reader.next_offset {
                reader.progress = (reader.next_offset, stats.fetches);
            }
            let Some(fetch) = reader.oversized.take() else {
                let behind = stats.end.is_some_and(|end| end > reader.next_offset);
                let answered = stats.fetches - reader.progress.1 > empty_fetches;
                let waited = |since: Instant| now.duration_since(since) >= stuck_after;
                if !fetching
                    && behind
                    && answered
                    && !reader.ahead
                    && waited(reader.last_message)
                    && reader.oversized_failed.is_none_or(waited)
                {
                    match OversizedFetch::start(
                        &self.client,
                        &self.topic,
                        reader.partition,
                        reader.next_offset,
                        self.fetch_max_bytes.saturating_mul(2),
                    ) {
                        Ok(fetch) => {
                            tracing::info!(topic = %self.topic, partition = reader.partition, offset = reader.next_offset, fetch_max_bytes = fetch.fetch_max_bytes(), "partition stuck; fetching its next record apart");
                            reader.oversized = Some(fetch);
                            fetching = true;
                        }
                        Err(error) => {
                            tracing::warn!(topic = %self.topic, partition = reader.partition, %error, "oversized fetch client");
                            reader.oversized_failed = Some(now);
                        }
                    }
                }
                continue;
            };
            // The consumer got past it by itself: the partition was slow, not stuck.
            if reader.next_offset > fetch.offset() {
                continue;
            }
            let larger = match fetch.poll() {
                Ok(Fetched::Record(message)) => {
                    if take_message(reader, &message, inputs, now) {
                        tracing::warn!(
                            topic = %self.topic,
                            partition = reader.partition,
                            offset = message.offset(),
                            bytes = message.payload().map_or(0, <[u8]>::len),
                            fetch_max_bytes = fetch.fetch_max_bytes(),
                            "record fetched apart: larger than the consumer's fetch.max.bytes, or the partition was slow"
                        );
                        read += 1;
                        self.metrics.messages_fetched_apart.inc();
                        // Stale copies the consumer still delivers are skipped by offset.
                        if let Err(error) = self.consumer.seek(
                            &self.topic,
                            reader.partition,
                            Offset::Offset(reader.next_offset),
                            Duration::ZERO,
                        ) {
                            tracing::warn!(topic = %self.topic, partition = reader.partition, %error, "seek past a record fetched apart");
                        }
                    }
                    false
                }
                Ok(Fetched::TooSmall) => true,
                Ok(Fetched::Waiting) => {
                    reader.oversized = Some(fetch);
                    continue;
                }
                Err(error) => {
                    tracing::warn!(topic = %self.topic, partition = reader.partition, %error, "oversized fetch failed; retrying");
                    reader.oversized_failed = Some(now);
                    false
                }
            };
            if larger {
                match fetch.larger() {
                    Some(Ok(next)) => reader.oversized = Some(next),
                    Some(Err(error)) => {
                        tracing::warn!(topic = %self.topic, partition = reader.partition, %error, "oversized fetch client");
                        reader.oversized_failed = Some(now);
                    }
                    None => {
                        tracing::error!(topic = %self.topic, partition = reader.partition, offset = reader.next_offset, fetch_max_bytes = fetch.fetch_max_bytes(), "partition stuck: the broker returns nothing at this offset even with the largest response; retrying");
                        reader.oversized_failed = Some(now);
                    }
                }
            }
        }
        read
    }

    /// Grows or shrinks the consumer's responses by what this poll saw (see
    /// `grow_responses_after_ms`): re-creates the consumer at the partitions' positions when
    /// the size changes, keeping the old one if that fails.
    fn size_responses(&mut self, now: Instant, dry: bool) {
        let Some(sizer) = &mut self.sizer else {
            return;
        };
        let context = self.consumer.context();
        // A partition held back for running ahead waits by choice, not for the broker. One whose
        // end could not be asked at the start, and that the statistics have not reported yet,
        // counts nothing until they do.
        let (mut lag_messages, mut lag_complete) = (None, true);
        for reader in self.readers.iter().filter(|r| !r.ahead) {
            match context.end(reader.partition) {
                Some(end) => {
                    let lag = (end - reader.next_offset).max(0) as u64;
                    *lag_messages.get_or_insert(0) += lag;
                }
                None => lag_complete = false,
            }
        }
        let was_grown = sizer.grown();
        let Some(bytes) = sizer.observe(
            now,
            PollSeen {
                dry,
                lag_messages,
                lag_complete,
            },
        ) else {
            return;
        };
        let mut config = self.consumer_config.clone();
        config.set("fetch.max.bytes", bytes.to_string());
        let starts: Vec<_> = self
            .readers
            .iter()
            .map(|r| (r.partition, Offset::Offset(r.next_offset)))
            .collect();
        let opened = Instant::now();
        // Ends only grow, so the old client's stand until the new one's statistics; its fetch
        // counts do not (see `progress` below).
        let ends = self
            .readers
            .iter()
            .filter_map(|r| Some((r.partition, context.end(r.partition)?)))
            .collect();
        match open_consumer(&config, &self.topic, &starts, ends) {
            Ok((consumer, queues)) => {
                // What the old client fetched ahead is fetched again from the positions. It
                // closes on a thread of its own: closing waits for its fetch in flight, which
                // on a slow broker takes seconds the worker would stand still.
                let old = (
                    std::mem::replace(&mut self.queues, queues),
                    std::mem::replace(&mut self.consumer, consumer),
                );
                let closing = std::thread::Builder::new()
                    .name("close-consumer".into())
                    .spawn(move || drop(old));
                if let Err(error) = closing {
                    tracing::warn!(%error, "no thread to close the old consumer on; closing it here");
                }
                self.fetch_max_bytes = bytes;
                sizer.resized(bytes);
                for reader in &mut self.readers {
                    // The new client counts its fetches from 0.
                    reader.progress = (reader.next_offset, 0);
                }
                if sizer.grown() != was_grown {
                    if sizer.grown() {
                        self.metrics.workers_catching_up.inc();
                    } else {
                        self.metrics.workers_catching_up.dec();
                    }
                }
                tracing::info!(
                    topic = %self.topic,
                    fetch_max_bytes = bytes,
                    lag_messages,
                    reopen_ms = opened.elapsed().as_millis() as u64,
                    "consumer re-created with another response size: larger while the broker holds the worker back, its share once caught up"
                );
            }
            Err(OpenError::Client(what, error)) => {
                tracing::warn!(topic = %self.topic, what, %error, "consumer with another response size; keeping the current one");
            }
            Err(OpenError::NoPartition) => {
                tracing::warn!(topic = %self.topic, "consumer with another response size lost a partition; keeping the current one");
            }
        }
    }

    /// A partition quiet for `idle_timeout_ms` is idle if the broker says it has been read to
    /// its end; asked at most once per timeout (statistics may be a second old, and a
    /// partition the fetcher has not reached yet must not be mistaken for an idle one). If the
    /// broker cannot say, the partition keeps holding the frontier: waiting is safe, guessing
    /// is not.
    ///
    /// A quiet partition behind an end already known (asked at the start, or in the
    /// statistics) is not idle, and the broker is not asked: ends only grow. A worker catching
    /// up on a slow broker has every partition quiet for seconds at a time, and asking each
    /// one's end on every poll stood its poll loop still for ~10 s on tansu's sqlite engine.
    fn update_idle(&mut self, now: Instant) {
        let timeout = Duration::from_millis(self.config.idle_timeout_ms);
        let context = self.consumer.context();
        for reader in &mut self.readers {
            let quiet = now.duration_since(reader.last_message) >= timeout;
            let asked_recently = reader
                .end_checked
                .is_some_and(|at| now.duration_since(at) < timeout.min(Duration::from_secs(1)));
            // Only a quiet partition looks at its known end: this runs at every poll.
            if !quiet
                || context
                    .end(reader.partition)
                    .is_some_and(|end| end > reader.next_offset)
            {
                reader.idle = false;
            } else if !asked_recently {
                reader.end_checked = Some(now);
                reader.idle = match self.ends.fetch_watermarks(
                    &self.topic,
                    reader.partition,
                    Duration::from_secs(5),
                ) {
                    Ok((_, end)) => reader.next_offset >= end,
                    Err(error) => {
                        tracing::warn!(topic = %self.topic, partition = reader.partition, %error, "end offset unknown");
                        false
                    }
                };
            }
        }
    }

    /// Each partition's watermark, position and idleness, for logs.
    pub fn describe(&self) -> String {
        self.readers
            .iter()
            .map(|r| {
                format!(
                    "{}@{}:{}{}{}{}",
                    r.partition,
                    r.next_offset,
                    r.ingestor.watermarker().watermark_ms(),
                    if r.idle { " idle" } else { "" },
                    if r.ahead { " ahead" } else { "" },
                    if r.oversized.is_some() {
                        " oversized"
                    } else {
                        ""
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// This worker's partitions, for the others.
    pub fn report(&self) -> PartitionReport {
        PartitionReport {
            max_watermark_ms: self
                .readers
                .iter()
                .map(|r| r.ingestor.watermarker().watermark_ms())
                .max()
                .unwrap_or(0),
            all_idle: self.readers.iter().all(|r| r.idle),
        }
    }

    /// Publishes each partition's consumer lag.
    pub fn report_lag(&self) {
        for reader in &self.readers {
            if let Some(high) = self.consumer.context().end(reader.partition) {
                self.metrics
                    .set_consumer_lag(reader.partition, (high - reader.next_offset).max(0));
            }
        }
    }

    /// Commits each partition's resume point for the written frontier, at most once per
    /// `commit_interval_ms` and only when the frontier moved.
    pub fn commit(&mut self, written_ms: TimeMs, force: bool) {
        let due =
            self.last_commit.elapsed() >= Duration::from_millis(self.config.commit_interval_ms);
        // Until the written frontier passes where this run resumed, the committed checkpoints
        // are newer than anything it could commit: a restarted process that committed its
        // catch-up frontier would make a peer still starting resume behind, and write again
        // what was written before.
        if self.committed_written_ms == Some(written_ms)
            || written_ms <= self.skip_before_ms
            || !(due || force)
            || self.readers.is_empty()
        {
            return;
        }
        let mut offsets = TopicPartitionList::new();
        for reader in &mut self.readers {
            let point = reader.trail.commit_point(written_ms, self.config.rewind_ms);
            let checkpoint = Checkpoint {
                offset: point.offset,
                max_valid_ms: point.clock.max_valid_ms,
                clock: Some(point.clock),
                floor_ms: point.floor_ms,
                written_ms,
            };
            let value = serde_json::to_string(&checkpoint).expect("plain struct");
            let key = Checkpoint::key(&self.topic, reader.partition);
            if !self.checkpoints.send_detached(
                &self.checkpoint_topic,
                &key,
                &value,
                Arc::clone(&self.checkpoints_written),
            ) {
                // The queue is full: the next round writes a newer checkpoint.
                return;
            }
            // The group's offsets are for lag tooling; resuming reads the checkpoints.
            let _ = offsets.add_partition_offset(
                &self.topic,
                reader.partition,
                Offset::Offset(point.offset),
            );
        }
        let mode = if force {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        match self.consumer.commit(&offsets, mode) {
            Ok(()) => {
                tracing::debug!(written_ms, offsets = ?offsets.to_topic_map(), "commit");
                self.committed_written_ms = Some(written_ms);
                self.last_commit = Instant::now();
            }
            Err(error) => tracing::warn!(topic = %self.topic, %error, "offset commit failed"),
        }
    }
}
