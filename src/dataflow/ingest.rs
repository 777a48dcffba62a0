//! What a source does to each raw message before it enters the dataflow.
//!
//! Decode ([`SchemaSet::decode`]), check the device is registered at the message's time, and
//! stamp the readings with the partition's watermark ([`Watermarker`]). Sources call this in
//! arrival order, one [`Ingestor`] per partition, and send each [`IngestBatch`] into the
//! dataflow at the batch's [`time_ms`](IngestBatch::time_ms).

use std::sync::Arc;

use crate::dataflow::event_time::{EventTimeConfig, Watermarker};
use crate::dataflow::model::{DeadLetter, DeadLetterReason, IngestCounts, TimeMs, TimedMessage};
use crate::dataflow::registry::RegistryHistory;
use crate::dataflow::schema::{Decoded, Decoder, SchemaSet};

/// Messages admitted together, and what was rejected among them.
#[derive(Clone, Debug, Default)]
pub struct IngestBatch {
    /// The watermark before the batch's first message: a lower bound of every reading's
    /// watermark in it, so a valid timely time for all of it.
    pub time_ms: TimeMs,
    /// Admitted messages with at least one reading.
    pub messages: Vec<TimedMessage>,
    /// Rejected messages.
    pub dead_letters: Vec<DeadLetter>,
    /// Counts over the batch.
    pub counts: IngestCounts,
}

/// One partition's admission logic.
#[derive(Debug)]
pub struct Ingestor {
    decoder: Decoder,
    registry: Arc<RegistryHistory>,
    watermarker: Watermarker,
}

impl Ingestor {
    /// An ingestor at the start of a partition.
    pub fn new(
        schemas: SchemaSet,
        registry: Arc<RegistryHistory>,
        event_time: EventTimeConfig,
    ) -> Self {
        Self {
            decoder: schemas.decoder(),
            registry,
            watermarker: Watermarker::new(event_time),
        }
    }

    /// The partition's watermarker (to resume it elsewhere, or read its watermark).
    pub fn watermarker(&self) -> &Watermarker {
        &self.watermarker
    }

    /// Replaces the watermarker, to continue a partition whose prefix was scanned elsewhere.
    pub fn set_watermarker(&mut self, watermarker: Watermarker) {
        self.watermarker = watermarker;
    }

    /// Replaces the registry view, for sources that follow a live changelog.
    pub fn set_registry(&mut self, registry: Arc<RegistryHistory>) {
        self.registry = registry;
    }

    /// An empty batch starting at the current watermark.
    pub fn start_batch(&self) -> IngestBatch {
        IngestBatch {
            time_ms: self.watermarker.watermark_ms(),
            ..IngestBatch::default()
        }
    }

    /// Decodes and admits one raw message into `batch`.
    pub fn ingest(&mut self, raw: &[u8], batch: &mut IngestBatch) {
        let decoded = self.decoder.decode(raw);
        self.admit(raw, decoded, batch);
    }

    /// Admits a message decoded earlier (sources may decode in parallel and admit in order).
    pub fn admit(
        &mut self,
        raw: &[u8],
        decoded: Result<Decoded, DeadLetter>,
        batch: &mut IngestBatch,
    ) {
        batch.counts.messages += 1;
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(dead) => {
                batch.dead_letters.push(dead);
                return;
            }
        };
        let message = decoded.message;
        let reject = |reason, detail| DeadLetter {
            reason,
            detail,
            raw: String::from_utf8_lossy(raw).into_owned(),
            origin: None,
        };
        if self
            .registry
            .at(&message.device_id, message.ts_ms)
            .is_none()
        {
            let detail = format!(
                "{} is not registered at {} ms",
                message.device_id, message.ts_ms
            );
            batch
                .dead_letters
                .push(reject(DeadLetterReason::UnknownDevice, detail));
            return;
        }
        match self.watermarker.admit(message) {
            Ok(timed) => {
                batch.counts.readings += decoded.readings_seen as u64;
                batch.counts.out_of_range += decoded.out_of_range as u64;
                if !timed.readings.is_empty() {
                    batch.messages.push(timed);
                }
            }
            Err(ahead) => {
                let detail = format!(
                    "stamped {} ms, more than the allowed skew ahead of {} ms",
                    ahead.ts_ms, ahead.max_valid_ms
                );
                batch
                    .dead_letters
                    .push(reject(DeadLetterReason::FutureTimestamp, detail));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::registry::parse_registry;

    fn ingestor() -> Ingestor {
        let schemas = SchemaSet::embedded();
        let registry = r#"{"device_id":"dev-1","device_type":"thermostat","firmware":"1","schema":"v1","org":"o","site":"s","building":"b","model":"m"}"#;
        let changes = parse_registry(registry, schemas.catalog()).unwrap();
        Ingestor::new(
            schemas,
            Arc::new(RegistryHistory::new(&changes)),
            EventTimeConfig::default(),
        )
    }

    #[test]
    fn unknown_devices_and_future_stamps_are_dead_letters_that_do_not_move_the_watermark() {
        let mut ingestor = ingestor();
        let mut batch = ingestor.start_batch();
        ingestor.ingest(
            br#"{"device_id":"dev-1","ts":1000000,"temp":20}"#,
            &mut batch,
        );
        ingestor.ingest(
            br#"{"device_id":"dev-9","ts":5000000,"temp":20}"#,
            &mut batch,
        );
        ingestor.ingest(
            br#"{"device_id":"dev-1","ts":1600001,"temp":20}"#,
            &mut batch,
        );
        let reasons: Vec<_> = batch.dead_letters.iter().map(|d| d.reason).collect();
        assert_eq!(
            reasons,
            [
                DeadLetterReason::UnknownDevice,
                DeadLetterReason::FutureTimestamp
            ]
        );
        assert_eq!(batch.messages.len(), 1);
        assert_eq!(ingestor.watermarker().max_valid_ms(), Some(1_000_000));
        assert_eq!(batch.counts.messages, 3);
    }
}
