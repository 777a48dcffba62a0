//! Resume points: what a partition commits so that a restart loses nothing and repeats nothing.
//!
//! The rule. Every sink holds a timely capability at each time until the broker has
//! acknowledged every record it produced at that time, so the frontier of the sinks' outputs,
//! the *written frontier* `W`, is cluster-wide: everything the dataflow emits before `W` is
//! durable. Each worker then commits, for each partition it reads, the offset where the
//! partition's stamps reach `W - rewind` (with the watermark state there, as the commit's
//! metadata, and `W` itself).
//!
//! On restart, every partition resumes at its committed offset with the watermark it had
//! there, so every message after it gets the stamp it had before; the sinks drop what they
//! emit before the largest committed `W` (written already) and write the rest. Window
//! aggregates are exact when `rewind` covers a window, the allowed lateness and the clock
//! skew, because every reading of a window not yet written is then read again. Anomaly models
//! and open alerts are rebuilt from the `rewind` of history that is read again: with the
//! default hour they have left their warm-up long before `W`, and the records re-emitted are
//! keyed (alert ids derive from the alert's subject, cause and opening time), so what lands
//! twice lands on the same key.

use std::collections::VecDeque;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::dataflow::event_time::PartitionClock;
use crate::dataflow::model::TimeMs;
use crate::io::connect::kafka::{KafkaConfig, KafkaSetupError, client_error, partition_count};

/// A partition's resume point, as the checkpoint topic holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The offset to resume at.
    pub offset: i64,
    /// The partition's largest valid event time before the offset (also in `clock`; kept for
    /// people reading the topic and for checkpoints written before `clock` was).
    pub max_valid_ms: Option<TimeMs>,
    /// The partition's clock before the offset: its fleet time and whether its start was
    /// judged (see [`crate::dataflow::event_time`]).
    #[serde(default)]
    pub clock: Option<PartitionClock>,
    /// The floor its watermark had been raised to there (after an idle spell).
    #[serde(default)]
    pub floor_ms: TimeMs,
    /// The written frontier when the checkpoint was taken.
    pub written_ms: TimeMs,
}

impl Checkpoint {
    /// The clock to resume with.
    pub fn resume_clock(&self) -> PartitionClock {
        self.clock
            .unwrap_or_else(|| PartitionClock::from_max_valid(self.max_valid_ms))
    }

    /// The record's key: `topic/partition`.
    pub fn key(topic: &str, partition: i32) -> String {
        format!("{topic}/{partition}")
    }

    /// The partition a key names, if it is one of `topic`'s.
    pub fn partition_of(key: &str, topic: &str) -> Option<i32> {
        key.strip_prefix(topic)?.strip_prefix('/')?.parse().ok()
    }
}

/// Every partition's latest checkpoint in `kafka.topics.checkpoints` for `telemetry`, read to
/// the topic's end.
pub fn read_checkpoints(
    kafka: &KafkaConfig,
    telemetry: &str,
) -> Result<FxHashMap<i32, Checkpoint>, KafkaSetupError> {
    let topic = &kafka.topics.checkpoints;
    let consumer: BaseConsumer = kafka
        .client()
        .set("group.id", format!("{}.checkpoints", kafka.group_id))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(client_error("checkpoint reader"))?;
    let timeout = Duration::from_secs(10);
    let partitions = partition_count(&consumer, topic, &kafka.brokers, timeout)?;
    let mut assignment = TopicPartitionList::new();
    let mut ends: FxHashMap<i32, i64> = FxHashMap::default();
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(client_error(format!("end of {topic}/{p}")))?;
        if high > low {
            ends.insert(p, high);
        }
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .map_err(client_error("checkpoint assignment"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(client_error("checkpoint assignment"))?;
    let mut checkpoints = FxHashMap::default();
    while !ends.is_empty() {
        let message = match consumer.poll(timeout) {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(client_error(format!("reading {topic}"))(e)),
            None => {
                return Err(KafkaSetupError::Stalled {
                    topic: topic.clone(),
                });
            }
        };
        let partition = message.partition();
        if ends
            .get(&partition)
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&partition);
        }
        let key = message.key().map(String::from_utf8_lossy);
        let Some(p) = key.and_then(|k| Checkpoint::partition_of(&k, telemetry)) else {
            continue;
        };
        match serde_json::from_slice::<Checkpoint>(message.payload().unwrap_or_default()) {
            Ok(checkpoint) => {
                checkpoints.insert(p, checkpoint);
            }
            Err(error) => tracing::warn!(topic, partition = p, %error, "checkpoint skipped"),
        }
    }
    Ok(checkpoints)
}

/// Where a partition can resume: an offset, the stamp of the message there, and the state of
/// its watermark just before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    /// The partition's watermark (timely time) at the offset.
    pub time_ms: TimeMs,
    /// The offset.
    pub offset: i64,
    /// The partition's clock before the offset.
    pub clock: PartitionClock,
    /// The floor the partition's watermark had been raised to.
    pub floor_ms: TimeMs,
}

/// A partition's trail of resume points, one per `spacing_ms` of its watermark, kept back to
/// the newest point that may still be committed.
#[derive(Clone, Debug)]
pub struct ResumeTrail {
    points: VecDeque<ResumePoint>,
    spacing_ms: TimeMs,
}

impl ResumeTrail {
    /// A trail starting at `start` (where the partition was resumed).
    pub fn new(start: ResumePoint, spacing_ms: TimeMs) -> Self {
        Self {
            points: VecDeque::from([start]),
            spacing_ms: spacing_ms.max(1),
        }
    }

    /// Notes that a batch starts at `point`; kept when the watermark has moved `spacing_ms`
    /// since the last kept point.
    pub fn record(&mut self, point: ResumePoint) {
        match self.points.back() {
            Some(last) if point.time_ms < last.time_ms.saturating_add(self.spacing_ms) => {}
            _ => self.points.push_back(point),
        }
    }

    /// The point to commit when everything before `written_ms` is written: the newest one at
    /// or before `written_ms - rewind_ms`. Older points are forgotten.
    pub fn commit_point(&mut self, written_ms: TimeMs, rewind_ms: TimeMs) -> ResumePoint {
        let horizon = written_ms.saturating_sub(rewind_ms);
        while self.points.len() > 1 && self.points[1].time_ms <= horizon {
            self.points.pop_front();
        }
        self.points[0]
    }

    /// How many points are kept.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether no point is kept (never: a trail keeps its start).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(time_ms: TimeMs, offset: i64) -> ResumePoint {
        ResumePoint {
            time_ms,
            offset,
            clock: PartitionClock {
                max_valid_ms: Some(time_ms + 30_000),
                ..PartitionClock::default()
            },
            floor_ms: 0,
        }
    }

    #[test]
    fn commits_the_newest_point_a_rewind_behind_the_written_frontier() {
        let mut trail = ResumeTrail::new(point(0, 0), 1_000);
        for (i, t) in [500, 1_000, 1_999, 2_000, 5_000, 9_000]
            .into_iter()
            .enumerate()
        {
            trail.record(point(t, 10 * (i as i64 + 1)));
        }
        // 500 and 1_999 are within a spacing of the point before them.
        assert_eq!(trail.len(), 5);
        assert_eq!(trail.commit_point(3_000, 10_000).offset, 0);
        assert_eq!(trail.commit_point(12_000, 4_000).offset, 50);
        assert_eq!(trail.commit_point(12_000, 4_000).time_ms, 5_000);
        // Forgotten points stay forgotten; the frontier only moves forward.
        assert_eq!(trail.len(), 2);
        assert_eq!(trail.commit_point(20_000, 0).offset, 60);
        assert_eq!(trail.len(), 1);
    }

    #[test]
    fn checkpoint_keys_name_the_partition_of_one_topic() {
        let key = Checkpoint::key("telemetry", 7);
        assert_eq!(Checkpoint::partition_of(&key, "telemetry"), Some(7));
        assert_eq!(Checkpoint::partition_of(&key, "tele"), None);
        assert_eq!(Checkpoint::partition_of("telemetry/x", "telemetry"), None);
    }
}
