//! How much of the telemetry topic librdkafka fetches ahead of the dataflow, and how it fetches:
//! the consumer settings iotpipe sets unless `[kafka.properties]` sets them itself.
//!
//! librdkafka bounds a partition's queue in payload bytes (`queued.max.messages.kbytes`) and in
//! messages (`queued.min.messages`), but every fetched message also costs an `rd_kafka_op_t`
//! of 1,024 bytes that neither bound counts: with ~200-byte telemetry a byte limit of 16 MiB
//! holds some 80,000 messages, about 100 MB. So the bound here is the message count. A fetch
//! response arrives whole before any limit is checked again, and its buffers live until its
//! last message is read, so its size (`fetch.max.bytes`) bounds the rest; tansu 0.6.0 ignores
//! the per-partition limit, so only the total bounds it there. With small queues, librdkafka's
//! pause after a full queue (`fetch.queue.backoff.ms`, 1 s) would let them run dry, so it is
//! short.
//!
//! Measured (docs/benchmarks.md, "Records larger than a response"): W1 through `iotpipe run`
//! from 8 partitions on tansu's memory engine, peak RSS 283-290 MiB at 1 worker and 388-419 MiB
//! at 2 (1.7x and 1.6x replay's), against 400-463 and 426-464 MiB with the previous 4 MiB
//! responses, at the same or better throughput.

use std::collections::BTreeMap;

/// Messages a worker's partitions may hold fetched ahead, together: about 25 MB of librdkafka
/// memory (1 KiB of bookkeeping and the payload each), 0.2 s of a worker's input at 100,000
/// messages/s.
const WORKER_MESSAGES: usize = 20_000;

/// Fewest messages a partition's queue is kept at, however many partitions a worker reads.
const PARTITION_MESSAGES_MIN: usize = 1_000;

/// Payload a worker's partitions may hold, together: librdkafka's own default for its single
/// consumer queue, so that messages far larger than telemetry's are bounded too.
const WORKER_KBYTES: usize = 65_536;

/// Fewest kilobytes a partition's queue is kept at, so that a fetch of one still fits.
const PARTITION_KBYTES_MIN: usize = 4_096;

/// Fetch responses a worker's partitions may hold, together, in bytes: `fetch.max.bytes` is
/// this split over the worker's partitions, between the two bounds below. A response arrives
/// whole before a queue limit is checked again and its buffers live until its last message is
/// read; tansu 0.6.0 fills a response from one partition first (it ignores
/// `max.partition.fetch.bytes`), so each partition can hold about one response beyond its
/// queue. Each MiB of response cost ~60 MB of peak RSS on W1 (8 partitions, 1 or 2 workers).
/// Larger responses are faster on tansu's sqlite engine, which reads a partition's whole
/// backlog for every fetch (docs/benchmarks.md, "Records larger than a response"), so a worker
/// the broker holds back grows them for a while ([`super::catch_up`]).
const WORKER_FETCH_BYTES: u64 = 12 << 20;

/// Smallest fetch response, in bytes, however many partitions a worker reads: twice Kafka's
/// default largest message, and enough that a catch-up on tansu's sqlite engine, whose fetches
/// cost in proportion to the backlog and not to the response, keeps half its speed (W1 at
/// 1 worker: 6,900 messages/s with 1.5 MiB responses, 17,300 with librdkafka's 8 MiB).
const FETCH_MAX_BYTES_MIN: u64 = 2 << 20;

/// Largest fetch response, in bytes, however few partitions a worker reads.
///
/// A record larger than a response is still read: tansu 0.6.0 never returns one (Kafka does,
/// to make progress), so the source fetches it apart with larger responses
/// ([`super::oversized`]).
const FETCH_MAX_BYTES_MAX: u64 = 4 << 20;

/// How long a partition whose queue is full waits before it is fetched again; short, because
/// a queue of a few thousand messages drains in tens of milliseconds.
const FETCH_QUEUE_BACKOFF_MS: u64 = 10;

/// How long the broker may hold a fetch for data to arrive. Kafka answers as soon as there is
/// data, so this only sets how often an idle consumer asks (20 times a second here); tansu
/// 0.6.0 sleeps it out on every fetch (half of it from 250 ms up), so with the response size it
/// caps the throughput there: W1 at 2 workers with 3 MiB responses every 50 ms 536,000-595,000
/// messages/s, with 4 MiB every 500 ms (librdkafka's default wait) 313,000.
const FETCH_WAIT_MAX_MS: u64 = 50;

/// librdkafka's default for `queued.min.messages`, for a user who sets it to nothing else.
pub const QUEUED_MIN_MESSAGES_DEFAULT: u64 = 100_000;

/// librdkafka's default for `message.max.bytes`, which `fetch.max.bytes` may not be below.
const MESSAGE_MAX_BYTES_DEFAULT: u64 = 1_000_000;

/// The consumer properties for a worker reading `partitions` partitions, leaving out each one
/// `user` (the `[kafka.properties]` table) sets.
///
/// ```
/// # use std::collections::BTreeMap;
/// # use iotpipe::io::sources::kafka::prefetch::prefetch_properties;
/// let set = prefetch_properties(4, &BTreeMap::new());
/// assert!(set.contains(&("queued.min.messages", "5000".to_string())));
/// ```
pub fn prefetch_properties(
    partitions: usize,
    user: &BTreeMap<String, String>,
) -> Vec<(&'static str, String)> {
    let partitions = partitions.max(1);
    // librdkafka refuses a fetch.max.bytes below message.max.bytes.
    let message_max_bytes = user
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(MESSAGE_MAX_BYTES_DEFAULT);
    let defaults = [
        (
            "queued.min.messages",
            (WORKER_MESSAGES / partitions)
                .max(PARTITION_MESSAGES_MIN)
                .to_string(),
        ),
        (
            "queued.max.messages.kbytes",
            (WORKER_KBYTES / partitions)
                .max(PARTITION_KBYTES_MIN)
                .to_string(),
        ),
        (
            "fetch.max.bytes",
            (WORKER_FETCH_BYTES / partitions as u64)
                .clamp(FETCH_MAX_BYTES_MIN, FETCH_MAX_BYTES_MAX)
                .max(message_max_bytes)
                .to_string(),
        ),
        ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS.to_string()),
        ("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string()),
    ];
    defaults
        .into_iter()
        .filter(|(key, _)| !user.contains_key(*key))
        .collect()
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::BaseConsumer;

    use super::*;

    fn value(set: &[(&str, String)], key: &str) -> Option<u64> {
        set.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.parse().unwrap())
    }

    #[test]
    fn a_workers_budget_is_split_over_its_partitions_down_to_a_floor() {
        let none = BTreeMap::new();
        let one = prefetch_properties(1, &none);
        assert_eq!(value(&one, "queued.min.messages"), Some(20_000));
        assert_eq!(value(&one, "queued.max.messages.kbytes"), Some(65_536));
        let four = prefetch_properties(4, &none);
        assert_eq!(value(&four, "queued.min.messages"), Some(5_000));
        assert_eq!(value(&four, "queued.max.messages.kbytes"), Some(16_384));
        let many = prefetch_properties(64, &none);
        assert_eq!(value(&many, "queued.min.messages"), Some(1_000));
        assert_eq!(value(&many, "queued.max.messages.kbytes"), Some(4_096));
        // No partitions yet is one partition's worth, not a division by zero.
        assert_eq!(
            value(&prefetch_properties(0, &none), "queued.min.messages"),
            Some(20_000)
        );
        assert_eq!(value(&one, "fetch.max.bytes"), Some(4 << 20));
        assert_eq!(value(&four, "fetch.max.bytes"), Some(3 << 20));
        assert_eq!(value(&many, "fetch.max.bytes"), Some(2 << 20));
        assert_eq!(value(&four, "fetch.queue.backoff.ms"), Some(10));
        assert_eq!(value(&four, "fetch.wait.max.ms"), Some(50));
    }

    #[test]
    fn what_the_user_sets_is_left_to_the_user() {
        let user = BTreeMap::from([
            ("queued.min.messages".to_string(), "100000".to_string()),
            ("fetch.wait.max.ms".to_string(), "500".to_string()),
        ]);
        let set = prefetch_properties(4, &user);
        assert_eq!(value(&set, "queued.min.messages"), None);
        assert_eq!(value(&set, "fetch.wait.max.ms"), None);
        assert_eq!(value(&set, "queued.max.messages.kbytes"), Some(16_384));
    }

    /// librdkafka checks its configuration when a client is created: the defaults must pass
    /// with its own defaults and with a user's larger `message.max.bytes`.
    #[test]
    fn librdkafka_accepts_the_defaults_beside_a_larger_message_max_bytes() {
        for user in [
            BTreeMap::new(),
            BTreeMap::from([("message.max.bytes".to_string(), "8000000".to_string())]),
        ] {
            let set = prefetch_properties(4, &user);
            let mut config = ClientConfig::new();
            config
                .set("bootstrap.servers", "127.0.0.1:1")
                .set("group.id", "prefetch-test");
            for (key, value) in user.iter().map(|(k, v)| (k.as_str(), v.as_str())) {
                config.set(key, value);
            }
            for (key, value) in &set {
                config.set(*key, value);
            }
            let created: Result<BaseConsumer, _> = config.create();
            assert!(created.is_ok(), "{user:?}: {:?}", created.err());
            if !user.is_empty() {
                assert_eq!(value(&set, "fetch.max.bytes"), Some(8_000_000));
            }
        }
    }
}
