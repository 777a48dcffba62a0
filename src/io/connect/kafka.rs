//! Kafka client settings shared by the telemetry source, the registry changelog and the sinks
//! ([`crate::io::sources::kafka`], [`crate::io::sinks::kafka`]), over librdkafka.
//!
//! Nothing here depends on transactions, CreatePartitions or DeleteRecords: exactly-once output
//! comes from a frontier-driven offset commit plus idempotent, keyed records (see
//! [`crate::io::sources::kafka::checkpoint`]), so any Kafka-protocol broker works: Apache Kafka, Redpanda, tansu. Security
//! (SASL, TLS) is librdkafka's own configuration, passed through [`KafkaConfig::properties`].

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// How iotpipe reaches Kafka, and which topics it uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]` (env `IOTPIPE_KAFKA_BROKERS`).
    pub brokers: String,
    /// The consumer group under which each partition's resume point is committed.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Topic names.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Extra librdkafka properties for every client, e.g. `security.protocol = "SASL_SSL"`,
    /// `sasl.mechanism`, `sasl.username`, `ssl.ca.location`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_group_id() -> String {
    "iotpipe".into()
}

/// The topics iotpipe reads and writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Raw device messages (JSON), any key; read.
    pub telemetry: String,
    /// The device registry changelog: key = device id, value = the registry JSON line, an
    /// empty value deletes the device; read from the beginning, then followed.
    pub registry: String,
    /// Dead letters, keyed by `topic/partition/offset` of the message; written.
    pub dead_letters: String,
    /// Alert events, keyed by alert id (a compacted topic keeps each alert's latest state).
    pub alerts: String,
    /// Closed window aggregates, keyed by `device_id/metric/window_start_ms/site`; written when set.
    pub aggregates: Option<String>,
    /// Each partition's resume point, keyed by `topic/partition` (make it compacted; one
    /// partition is enough); written and read at start.
    pub checkpoints: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            telemetry: "iotpipe.telemetry".into(),
            registry: "iotpipe.registry".into(),
            dead_letters: "iotpipe.dead-letters".into(),
            alerts: "iotpipe.alerts".into(),
            aggregates: None,
            checkpoints: "iotpipe.checkpoints".into(),
        }
    }
}

impl KafkaConfig {
    /// A client configuration with the brokers and the pass-through properties.
    pub fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// A Kafka client could not be created or used.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// librdkafka refused the configuration or the call.
    #[error("kafka {what}: {source}")]
    Client {
        /// What was being done.
        what: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// A topic stopped answering before it was read to its end.
    #[error("kafka topic {topic}: no answer while reading it to its end (is the broker up?)")]
    Stalled {
        /// The topic.
        topic: String,
    },
    /// A topic has no partitions (it does not exist, or the broker is unreachable).
    #[error(
        "kafka topic {topic}: not found on {brokers} (create it, or check kafka.brokers and \
         kafka.topics)"
    )]
    NoTopic {
        /// The topic.
        topic: String,
        /// The brokers asked.
        brokers: String,
    },
}

/// Wraps a librdkafka error with what was being done.
pub(crate) fn client_error(
    what: impl Into<String>,
) -> impl FnOnce(rdkafka::error::KafkaError) -> KafkaSetupError {
    let what = what.into();
    move |source| KafkaSetupError::Client { what, source }
}

/// The partition count of `topic`, from the broker's metadata.
pub fn partition_count<X, C>(
    consumer: &C,
    topic: &str,
    brokers: &str,
    timeout: std::time::Duration,
) -> Result<i32, KafkaSetupError>
where
    X: rdkafka::consumer::ConsumerContext,
    C: rdkafka::consumer::Consumer<X>,
{
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(client_error(format!("metadata of {topic}")))?;
    let count = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if count == 0 {
        return Err(KafkaSetupError::NoTopic {
            topic: topic.into(),
            brokers: brokers.into(),
        });
    }
    Ok(count as i32)
}

/// A producer of records nothing waits for: checkpoints, where a later one supersedes an
/// earlier one. The sinks' process-wide producer is one; the telemetry source commits its
/// resume points through it without knowing the sinks.
pub trait DetachedProducer: Send + Sync {
    /// Produces `value` under `key` to `topic`, counted in `written` once the broker has it;
    /// `false` if the queue is full (the caller tries again later with a newer record).
    fn send_detached(
        &self,
        topic: &str,
        key: &str,
        value: &str,
        written: std::sync::Arc<crate::io::support::metrics::Counter>,
    ) -> bool;
}
