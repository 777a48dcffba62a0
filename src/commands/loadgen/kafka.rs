//! Load straight to Kafka, keyed by device id as the bridge writes it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};

use super::{LoadError, Progress};
use crate::io::sources::fleet::{FleetMessage, device_id};

/// Counts deliveries as librdkafka reports them.
struct Counting(Arc<Progress>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = match result {
            Ok(_) => &self.0.acknowledged,
            Err(_) => &self.0.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub(super) struct KafkaSink {
    producer: ThreadedProducer<Counting>,
    topic: String,
}

impl KafkaSink {
    pub(super) fn create(
        brokers: &str,
        topic: String,
        progress: Arc<Progress>,
    ) -> Result<Self, LoadError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .create_with_context(Counting(progress))
            .map_err(|e| LoadError::Target(format!("kafka producer: {e}")))?;
        Ok(Self { producer, topic })
    }

    pub(super) async fn send(
        &mut self,
        message: FleetMessage,
        progress: &Progress,
    ) -> Result<(), LoadError> {
        let key = device_id(message.device);
        let mut record = BaseRecord::to(&self.topic).key(&key).payload(&message.line);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => {
                    return Err(LoadError::Target(format!("kafka {}: {e}", self.topic)));
                }
            }
        }
        progress.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn finish(self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}
