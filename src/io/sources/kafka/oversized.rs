//! Getting a partition past a record larger than a fetch response.
//!
//! Kafka returns the first record batch of a fetch whatever its size, so that a consumer always
//! makes progress (KIP-74). tansu 0.6.0 does not: it never returns a record larger than the
//! request's `max_bytes`, so the consumer asks again and again for the same offset and the
//! partition, and with it the dataflow's frontier, stops. Raising `fetch.max.bytes` for every
//! fetch would cost memory on every response (a response lives until its last message is read),
//! so the source keeps its responses small and fetches the one record apart: when a partition
//! has data in the broker, has been in several answered fetches (twice as many as the worker
//! has partitions, and three more) and got nothing from them for `stuck_after_ms`, an
//! [`OversizedFetch`] reads that offset with a client of its own, assigned that partition
//! alone, at twice the consumer's response size, doubling each time the broker has answered and
//! given nothing, up to [`FETCH_MAX_BYTES_CAP`]. A slow broker answers no fetches and a
//! broker that is down none at all, so neither looks stuck. A worker runs one such fetch at a
//! time (a response of the cap costs librdkafka several times its size); partitions stuck
//! together take turns.
//!
//! On a broker that follows KIP-74 a partition is never stuck so; if one is starved by the
//! others for that many fetches, its next record is read one fetch early: the source takes it,
//! moves the consumer past it, and skips any copy the consumer fetched meanwhile, so nothing is
//! read twice.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

/// Largest response an oversized fetch asks for: librdkafka's own default `fetch.max.bytes`
/// (50 MiB) rounded up; larger messages than this are not telemetry.
pub const FETCH_MAX_BYTES_CAP: u64 = 64 << 20;

/// Fetch requests the broker must have answered, with nothing for the partition, before the
/// response is judged too small: one more is in flight when they are counted.
const EMPTY_ANSWERS: i64 = 3;

/// librdkafka's default `fetch.max.bytes`, for a consumer whose properties do not set it.
pub const FETCH_MAX_BYTES_DEFAULT: u64 = 52_428_800;

/// Counts the fetch requests the client has sent, from its statistics.
#[derive(Default)]
struct FetchCounter {
    fetches: AtomicI64,
}

impl ClientContext for FetchCounter {
    fn stats(&self, statistics: Statistics) {
        let fetches = statistics
            .brokers
            .values()
            .filter_map(|broker| broker.req.get("Fetch"))
            .sum();
        self.fetches.store(fetches, Ordering::Relaxed);
    }
}

impl ConsumerContext for FetchCounter {}

/// What one poll of an [`OversizedFetch`] found.
pub enum Fetched<'a> {
    /// The record at the offset asked for (or, if the broker skipped ahead, the first after it).
    Record(BorrowedMessage<'a>),
    /// The broker has answered several fetches with nothing for the partition: the record is
    /// larger than this fetch's responses; ask again with [`OversizedFetch::larger`].
    TooSmall,
    /// Nothing yet.
    Waiting,
}

/// A client reading one partition from one offset with larger responses than the source's.
pub struct OversizedFetch {
    consumer: BaseConsumer<FetchCounter>,
    base: ClientConfig,
    topic: String,
    partition: i32,
    offset: i64,
    fetch_max_bytes: u64,
}

impl OversizedFetch {
    /// Starts reading `topic`'s `partition` at `offset` with responses of `fetch_max_bytes`
    /// (capped at [`FETCH_MAX_BYTES_CAP`]); `base` is the shared client settings (brokers,
    /// security, and a `group.id`, which librdkafka wants for an assignment). It assigns,
    /// never subscribes, so it does not join the group, and it never commits.
    pub fn start(
        base: &ClientConfig,
        topic: &str,
        partition: i32,
        offset: i64,
        fetch_max_bytes: u64,
    ) -> rdkafka::error::KafkaResult<Self> {
        let fetch_max_bytes = fetch_max_bytes.min(FETCH_MAX_BYTES_CAP);
        let mut config = base.clone();
        config
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "100")
            .set("fetch.wait.max.ms", "100")
            .set("queued.min.messages", "1")
            .set("fetch.max.bytes", fetch_max_bytes.to_string())
            // librdkafka wants room for a response's framing beyond fetch.max.bytes.
            .set(
                "receive.message.max.bytes",
                (fetch_max_bytes + 1024).max(100_000_000).to_string(),
            );
        let consumer: BaseConsumer<FetchCounter> =
            config.create_with_context(FetchCounter::default())?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        consumer.assign(&assignment)?;
        Ok(Self {
            consumer,
            base: base.clone(),
            topic: topic.to_owned(),
            partition,
            offset,
            fetch_max_bytes,
        })
    }

    /// The offset asked for.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The response size asked for.
    pub fn fetch_max_bytes(&self) -> u64 {
        self.fetch_max_bytes
    }

    /// What has come, without waiting.
    pub fn poll(&self) -> rdkafka::error::KafkaResult<Fetched<'_>> {
        match self.consumer.poll(Duration::ZERO) {
            Some(Ok(message)) => Ok(Fetched::Record(message)),
            Some(Err(error)) => Err(error),
            None if self.consumer.context().fetches.load(Ordering::Relaxed) > EMPTY_ANSWERS => {
                Ok(Fetched::TooSmall)
            }
            None => Ok(Fetched::Waiting),
        }
    }

    /// The same fetch with twice the response size, or `None` at the cap.
    pub fn larger(&self) -> Option<rdkafka::error::KafkaResult<Self>> {
        (self.fetch_max_bytes < FETCH_MAX_BYTES_CAP).then(|| {
            Self::start(
                &self.base,
                &self.topic,
                self.partition,
                self.offset,
                self.fetch_max_bytes * 2,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No broker listens there: the client is created and waits.
    fn base() -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("group.id", "oversized-test");
        config
    }

    #[test]
    fn each_larger_fetch_asks_twice_as_much_up_to_the_cap() {
        let fetch = OversizedFetch::start(&base(), "telemetry", 3, 42, 2 << 20).unwrap();
        assert_eq!((fetch.offset(), fetch.fetch_max_bytes()), (42, 2 << 20));
        let next = fetch.larger().unwrap().unwrap();
        assert_eq!((next.offset(), next.fetch_max_bytes()), (42, 4 << 20));
        // librdkafka accepts the largest, whose responses exceed its default receive limit.
        let capped = OversizedFetch::start(&base(), "telemetry", 3, 42, u64::MAX).unwrap();
        assert_eq!(capped.fetch_max_bytes(), FETCH_MAX_BYTES_CAP);
        assert!(capped.larger().is_none());
    }

    #[test]
    fn a_broker_that_answers_nothing_is_waited_for_not_judged() {
        let fetch = OversizedFetch::start(&base(), "telemetry", 0, 0, 1 << 20).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(matches!(fetch.poll(), Ok(Fetched::Waiting)));
    }
}
