//! The device registry as a Kafka changelog: read whole at start, then followed.
//!
//! Records: key = device id, value = one registry JSON line (the file format of
//! [`crate::dataflow::registry`]), an empty value (a tombstone, as a compacted topic keeps it)
//! deletes the device. A change holds from its `effective_ms` on; without one it holds from the
//! beginning when read at start, and from as soon as the dataflow sees it when it arrives later.
//!
//! Each process runs one [`RegistryFollower`] thread. It keeps the process's [`LiveRegistry`],
//! the view sources consult before a message enters the dataflow, and on process 0 it also
//! forwards every change to the worker that feeds the dataflow's registry input.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::dataflow::metadata::MetadataHistory;
use crate::dataflow::registry::{RegistryChange, parse_registry_line};
use crate::dataflow::schema::MetricCatalog;
use crate::io::connect::kafka::{KafkaConfig, KafkaSetupError, client_error, partition_count};
use crate::io::sources::live_registry::{ForwardedChange, LiveRegistry};
use crate::io::support::metrics::Metrics;

/// A changelog record that is not a registry change (skipped and counted).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RegistryRecordError(String);

/// Parses one changelog record; `None` value or an empty one is a delete.
pub fn parse_record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    offset: i64,
    catalog: &MetricCatalog,
) -> Result<RegistryChange, RegistryRecordError> {
    let error = |message: String| RegistryRecordError(message);
    let key = key
        .map(String::from_utf8_lossy)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| error("the record has no key (the key must be the device id)".into()))?;
    match value.filter(|v| !v.is_empty()) {
        None => Ok(RegistryChange {
            device_id: key.as_ref().into(),
            effective_ms: 0,
            info: None,
        }),
        Some(value) => {
            let text = std::str::from_utf8(value).map_err(|e| error(format!("value: {e}")))?;
            let change = parse_registry_line(text, offset.max(0) as usize, catalog)
                .map_err(|e| error(e.message))?;
            if change.device_id.as_str() != key {
                return Err(error(format!(
                    "key {key} differs from the value's device_id {}",
                    change.device_id
                )));
            }
            Ok(change)
        }
    }
}

/// The thread that follows the registry changelog.
pub struct RegistryFollower {
    handle: JoinHandle<()>,
}

impl RegistryFollower {
    /// Starts following `config.topics.registry` from its beginning. Changes go into `live`,
    /// and into `forward` when given. The thread ends when `stop` is set.
    pub fn start(
        config: &KafkaConfig,
        catalog: Arc<MetricCatalog>,
        live: Arc<LiveRegistry>,
        forward: Option<Sender<ForwardedChange>>,
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, KafkaSetupError> {
        let topic = config.topics.registry.clone();
        let consumer: BaseConsumer = config
            .client()
            .set("group.id", format!("{}.registry", config.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(client_error("registry consumer"))?;
        let timeout = Duration::from_secs(10);
        let partitions = partition_count(&consumer, &topic, &config.brokers, timeout)?;
        let mut assignment = TopicPartitionList::new();
        let mut end_offsets = Vec::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(&topic, p, Offset::Beginning)
                .map_err(client_error("registry assignment"))?;
            let (_, high) = consumer
                .fetch_watermarks(&topic, p, timeout)
                .map_err(client_error(format!("end of {topic}/{p}")))?;
            end_offsets.push(high);
        }
        consumer
            .assign(&assignment)
            .map_err(client_error("registry assignment"))?;
        let handle = std::thread::Builder::new()
            .name("registry-follower".into())
            .spawn(move || {
                follow(
                    consumer,
                    &topic,
                    end_offsets,
                    &catalog,
                    &live,
                    forward,
                    &metrics,
                    &stop,
                )
            })
            .expect("spawn the registry follower");
        Ok(Self { handle })
    }

    /// Waits for the thread (after `stop` was set).
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

#[allow(clippy::too_many_arguments)]
fn follow(
    consumer: BaseConsumer,
    topic: &str,
    end_offsets: Vec<i64>,
    catalog: &MetricCatalog,
    live: &LiveRegistry,
    forward: Option<Sender<ForwardedChange>>,
    metrics: &Metrics,
    stop: &AtomicBool,
) {
    let mut history = MetadataHistory::default();
    let mut lines = crate::dataflow::metadata::LineEntities::default();
    // Where each partition has been read to; loaded once every one reaches its end at start.
    let mut next_offsets = vec![0_i64; end_offsets.len()];
    let loaded = |next: &[i64]| next.iter().zip(&end_offsets).all(|(n, e)| n >= e);
    if loaded(&next_offsets) {
        live.publish(&history);
        live.mark_loaded();
    }
    while !stop.load(Ordering::Acquire) {
        let mut changed = false;
        let mut timeout = Duration::from_millis(100);
        while let Some(result) = consumer.poll(timeout) {
            timeout = Duration::ZERO;
            let message = match result {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(topic, error = %e, "registry changelog read failed; retrying");
                    break;
                }
            };
            let partition = message.partition() as usize;
            if let Some(next) = next_offsets.get_mut(partition) {
                *next = message.offset() + 1;
            }
            match parse_record(message.key(), message.payload(), message.offset(), catalog) {
                Ok(change) => {
                    history.apply_change(&change);
                    if let Some(forward) = &forward {
                        let made_ms = message.timestamp().to_millis();
                        for update in lines.updates(&change) {
                            // The receiver is gone only when the dataflow is shutting down.
                            let _ = forward.send(ForwardedChange { update, made_ms });
                        }
                    }
                    metrics.registry_changes.inc();
                    changed = true;
                }
                Err(reason) => {
                    metrics.registry_rejects.inc();
                    tracing::warn!(
                        topic,
                        partition,
                        offset = message.offset(),
                        %reason,
                        "registry record skipped"
                    );
                }
            }
        }
        if !live.is_loaded() {
            if loaded(&next_offsets) {
                live.publish(&history);
                live.mark_loaded();
                tracing::info!(topic, "registry loaded");
            }
        } else if changed {
            live.publish(&history);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::schema::SchemaSet;

    #[test]
    fn records_are_upserts_and_tombstones_keyed_by_device() {
        let catalog = SchemaSet::embedded().catalog().clone();
        let line = br#"{"device_id":"dev-1","effective_ms":5,"device_type":"thermostat","firmware":"1","schema":"v1","org":"o","site":"s","building":"b","model":"m"}"#;
        let change = parse_record(Some(b"dev-1"), Some(line), 3, &catalog).unwrap();
        assert_eq!(
            (change.effective_ms, change.info.unwrap().site.as_str()),
            (5, "s")
        );
        let deleted = parse_record(Some(b"dev-1"), Some(b""), 4, &catalog).unwrap();
        assert!(deleted.info.is_none());
        assert!(parse_record(None, Some(line), 5, &catalog).is_err());
        let wrong_key = parse_record(Some(b"dev-2"), Some(line), 6, &catalog).unwrap_err();
        assert!(wrong_key.to_string().contains("differs"), "{wrong_key}");
    }
}
