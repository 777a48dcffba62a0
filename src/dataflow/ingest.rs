//! What a source does to each raw message before it enters the dataflow.
//!
//! Decode ([`SchemaSet::decode`]), check the device is registered at the message's time, and
//! stamp the readings with the partition's watermark ([`Watermarker`]). Sources call this in
//! arrival order, one [`Ingestor`] per partition, and send each [`IngestBatch`] into the
//! dataflow at the batch's [`time_ms`](IngestBatch::time_ms).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::dataflow::event_time::{
    ClockHold, ClockReference, EventTimeConfig, TooFarAhead, Watermarker,
};
use crate::dataflow::metadata::MetadataHistory;
use crate::dataflow::model::{
    ClockDirection, ClockFault, DeadLetter, DeadLetterReason, DeviceId, IngestCounts,
    MessageOrigin, TimeMs, TimedMessage,
};
use crate::dataflow::schema::{DEFAULT_MAX_MESSAGE_BYTES, Decoded, Decoder, SchemaSet};

/// What a source accepts before decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// A message larger than this many bytes is a `too_large` dead letter, never parsed.
    pub max_message_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Messages admitted together, and what was rejected among them.
#[derive(Clone, Debug, Default)]
pub struct IngestBatch {
    /// The watermark before the batch's first message: a lower bound of every reading's
    /// watermark in it, so a valid timely time for all of it.
    pub time_ms: TimeMs,
    /// Admitted messages with at least one reading.
    pub messages: Vec<TimedMessage>,
    /// Rejected messages, each with the watermark before it: its stamp, a time that depends
    /// on the input alone (see [`crate::dataflow::stamp`]).
    pub dead_letters: Vec<(TimeMs, DeadLetter)>,
    /// Messages of registered devices stamped far off the fleet time, with their stamps.
    pub clock_faults: Vec<(TimeMs, ClockFault)>,
    /// Counts over the batch.
    pub counts: IngestCounts,
}

/// What the source knows of a message besides its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    /// When it reached the system (the Kafka record timestamp, set by the bridge to the MQTT
    /// arrival), if known: a message stamped further ahead than the skew is a dead letter.
    pub arrival_ms: Option<TimeMs>,
    /// Its offset in the partition the ingestor reads (see [`Ingestor::set_origin`]).
    pub offset: Option<i64>,
}

/// A message waiting at the partition's start for the fleet time.
#[derive(Debug)]
struct Held {
    raw: Vec<u8>,
    decoded: Decoded,
    provenance: Provenance,
}

/// One partition's admission logic.
#[derive(Debug)]
pub struct Ingestor {
    decoder: Decoder,
    registry: Arc<MetadataHistory>,
    watermarker: Watermarker,
    /// The partition's topic and number, for dead letters' origins.
    origin: Option<(String, i32)>,
    hold: ClockHold,
    held: Vec<Held>,
}

impl Ingestor {
    /// An ingestor at the start of a partition.
    pub fn new(
        schemas: SchemaSet,
        registry: Arc<MetadataHistory>,
        event_time: EventTimeConfig,
    ) -> Self {
        Self {
            decoder: schemas.decoder(),
            registry,
            watermarker: Watermarker::new(event_time),
            origin: None,
            hold: ClockHold::default(),
            held: Vec::new(),
        }
    }

    /// Sets the largest message it decodes; larger ones are `too_large` dead letters.
    pub fn with_max_message_bytes(mut self, max_message_bytes: usize) -> Self {
        self.decoder = self.decoder.with_max_message_bytes(max_message_bytes);
        self
    }

    /// Names the partition the ingestor reads, so dead letters say where they came from.
    pub fn set_origin(&mut self, topic: &str, partition: i32) {
        self.origin = Some((topic.to_owned(), partition));
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
    pub fn set_registry(&mut self, registry: Arc<MetadataHistory>) {
        self.registry = registry;
    }

    /// Whether messages are held at the partition's start, waiting for the fleet time.
    pub fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// An empty batch starting at the current watermark.
    pub fn start_batch(&self) -> IngestBatch {
        IngestBatch {
            time_ms: self.watermarker.watermark_ms(),
            ..IngestBatch::default()
        }
    }

    /// Empties `batch` to start again at the current watermark, keeping its buffers' memory:
    /// a source that reuses one batch does not grow a fresh vector of messages per batch.
    pub fn restart_batch(&self, batch: &mut IngestBatch) {
        batch.time_ms = self.watermarker.watermark_ms();
        batch.messages.clear();
        batch.dead_letters.clear();
        batch.clock_faults.clear();
        batch.counts = IngestCounts::default();
    }

    /// Decodes and admits one raw message into `batch`.
    pub fn ingest(&mut self, raw: &[u8], provenance: Provenance, batch: &mut IngestBatch) {
        let decoded = self.decoder.decode(raw);
        self.admit(raw, decoded, provenance, batch);
    }

    /// Admits a message decoded earlier (sources may decode in parallel and admit in order).
    ///
    /// At the partition's start, messages of registered devices are held until the fleet time
    /// can judge them (see [`crate::dataflow::event_time`]); they are admitted into a later
    /// batch, or by [`Self::release_held`].
    pub fn admit(
        &mut self,
        raw: &[u8],
        decoded: Result<Decoded, DeadLetter>,
        provenance: Provenance,
        batch: &mut IngestBatch,
    ) {
        batch.counts.messages += 1;
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(dead) => {
                self.reject(dead, provenance, batch);
                return;
            }
        };
        let message = &decoded.message;
        if !self
            .registry
            .is_registered(&message.device_id, message.ts_ms)
        {
            let detail = format!(
                "{} is not registered at {} ms",
                message.device_id, message.ts_ms
            );
            let dead = DeadLetter::new(DeadLetterReason::UnknownDevice, detail, raw);
            self.reject(dead, provenance, batch);
            return;
        }
        if self.watermarker.is_settled() {
            self.stamp(raw, decoded, provenance, batch);
            return;
        }
        let config = self.watermarker.config();
        let release = self.hold.vote(&message.device_id, message.ts_ms, config);
        self.held.push(Held {
            raw: raw.to_vec(),
            decoded,
            provenance,
        });
        if release {
            self.release_held(batch);
        }
    }

    /// Judges the messages held at the partition's start against what they agree on and
    /// admits them into `batch`, in arrival order. Sources call it when their input ends or
    /// goes quiet, so that a partition with fewer devices than the quorum is not held forever.
    pub fn release_held(&mut self, batch: &mut IngestBatch) {
        self.watermarker.settle();
        let config = self.watermarker.config();
        let Some(reference_ms) = self.hold.take_reference(config) else {
            return;
        };
        for held in std::mem::take(&mut self.held) {
            let ts_ms = held.decoded.message.ts_ms;
            if ts_ms > reference_ms.saturating_add(config.max_clock_skew_ms) {
                let ahead = TooFarAhead {
                    ts_ms,
                    reference_ms,
                    reference: ClockReference::Hold,
                };
                let dead = DeadLetter::new(
                    DeadLetterReason::FutureTimestamp,
                    ahead.to_string(),
                    &held.raw,
                );
                self.clock_fault(&held.decoded.message.device_id, &ahead, batch);
                self.reject(dead, held.provenance, batch);
            } else {
                self.stamp(&held.raw, held.decoded, held.provenance, batch);
            }
        }
    }

    /// Stamps a registered device's message, or refuses it as too far ahead.
    fn stamp(
        &mut self,
        raw: &[u8],
        decoded: Decoded,
        provenance: Provenance,
        batch: &mut IngestBatch,
    ) {
        let message = &decoded.message;
        if let Some(reference_ms) = self.watermarker.behind(message.ts_ms) {
            let behind = TooFarAhead {
                ts_ms: message.ts_ms,
                reference_ms,
                reference: ClockReference::Fleet,
            };
            self.clock_fault(&message.device_id, &behind, batch);
        }
        // Kept for a refusal, which consumes the message (a cheap clone: ids are inline).
        let device = decoded.message.device_id.clone();
        match self
            .watermarker
            .admit(decoded.message, provenance.arrival_ms)
        {
            Ok(timed) => {
                batch.counts.admitted += 1;
                batch.counts.readings += decoded.readings_seen as u64;
                batch.counts.out_of_range += decoded.out_of_range as u64;
                if !timed.readings.is_empty() {
                    batch.messages.push(timed);
                }
            }
            Err(ahead) => {
                self.clock_fault(&device, &ahead, batch);
                let dead =
                    DeadLetter::new(DeadLetterReason::FutureTimestamp, ahead.to_string(), raw);
                self.reject(dead, provenance, batch);
            }
        }
    }

    /// Notes a registered device's message stamped `off.ts_ms` against `off.reference_ms`.
    fn clock_fault(&self, device_id: &DeviceId, off: &TooFarAhead, batch: &mut IngestBatch) {
        let Some(device) = self.registry.device_at(device_id, off.ts_ms) else {
            return;
        };
        let offset_ms = off.ts_ms as i64 - off.reference_ms as i64;
        let direction = if offset_ms > 0 {
            batch.counts.clock_ahead += 1;
            ClockDirection::Ahead
        } else {
            batch.counts.clock_behind += 1;
            ClockDirection::Behind
        };
        let fault = ClockFault {
            device_id: device_id.clone(),
            device,
            at_ms: off.reference_ms,
            offset_ms,
            direction,
        };
        batch
            .clock_faults
            .push((self.watermarker.watermark_ms(), fault));
    }

    fn reject(&self, mut dead: DeadLetter, provenance: Provenance, batch: &mut IngestBatch) {
        if let (Some((topic, partition)), Some(offset)) = (&self.origin, provenance.offset) {
            dead.origin = Some(MessageOrigin {
                topic: topic.clone(),
                partition: *partition,
                offset,
            });
        }
        batch
            .dead_letters
            .push((self.watermarker.watermark_ms(), dead));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::registry::parse_registry;

    fn ingestor() -> Ingestor {
        let schemas = SchemaSet::embedded();
        let registry: String = (1..=3)
            .map(|i| format!(r#"{{"device_id":"dev-{i}","device_type":"thermostat","firmware":"1","schema":"v1","org":"o","site":"s","building":"b","model":"m"}}"#) + "\n")
            .collect();
        let changes = parse_registry(&registry, schemas.catalog()).unwrap();
        Ingestor::new(
            schemas,
            Arc::new(MetadataHistory::of_changes(&changes)),
            EventTimeConfig::default(),
        )
    }

    fn line(device: &str, ts_ms: u64) -> Vec<u8> {
        format!(r#"{{"device_id":"{device}","ts":{ts_ms},"temp":20}}"#).into_bytes()
    }

    fn reasons(batch: &IngestBatch) -> Vec<DeadLetterReason> {
        batch.dead_letters.iter().map(|(_, d)| d.reason).collect()
    }

    #[test]
    fn unknown_devices_and_future_stamps_are_dead_letters_that_do_not_move_the_watermark() {
        let mut ingestor = ingestor();
        let mut batch = ingestor.start_batch();
        for (device, ts) in [
            ("dev-1", 1_000_000),
            ("dev-9", 5_000_000),
            ("dev-2", 1_000_000),
            ("dev-3", 1_000_000),
            ("dev-1", 1_600_001),
        ] {
            ingestor.ingest(&line(device, ts), Provenance::default(), &mut batch);
        }
        assert_eq!(
            reasons(&batch),
            [
                DeadLetterReason::UnknownDevice,
                DeadLetterReason::FutureTimestamp
            ]
        );
        assert_eq!(batch.messages.len(), 3);
        assert_eq!(ingestor.watermarker().max_valid_ms(), Some(1_000_000));
        assert_eq!(batch.counts.messages, 5);
        assert_eq!(batch.counts.admitted + batch.dead_letters.len() as u64, 5);
    }

    #[test]
    fn a_poisoned_first_message_is_held_then_refused_and_stamps_are_unchanged() {
        let mut ingestor = ingestor();
        let mut batch = ingestor.start_batch();
        let poison = line("dev-1", 4_102_444_800_000);
        ingestor.ingest(&poison, Provenance::default(), &mut batch);
        ingestor.ingest(&line("dev-2", 1_000_000), Provenance::default(), &mut batch);
        assert!(ingestor.is_holding());
        assert!(batch.messages.is_empty() && batch.dead_letters.is_empty());
        ingestor.ingest(&line("dev-3", 1_100_000), Provenance::default(), &mut batch);
        assert!(!ingestor.is_holding());
        assert_eq!(reasons(&batch), [DeadLetterReason::FutureTimestamp]);
        assert_eq!(batch.dead_letters[0].1.raw.as_bytes(), poison.as_slice());
        let stamps: Vec<_> = batch.messages.iter().map(|m| m.watermark_ms).collect();
        assert_eq!(stamps, [0, 1_000_000 - 30_000]);
        assert_eq!(
            ingestor.watermarker().watermark_ms(),
            1_000_000 + 5_000 - 30_000
        );
    }

    #[test]
    fn fewer_devices_than_the_quorum_are_released_by_the_source() {
        let mut ingestor = ingestor();
        let mut batch = ingestor.start_batch();
        ingestor.ingest(
            &line("dev-1", 4_102_444_800_000),
            Provenance::default(),
            &mut batch,
        );
        for ts in [1_000_000, 1_001_000] {
            ingestor.ingest(&line("dev-1", ts), Provenance::default(), &mut batch);
        }
        ingestor.release_held(&mut batch);
        assert_eq!(reasons(&batch), [DeadLetterReason::FutureTimestamp]);
        assert_eq!(batch.messages.len(), 2);
        // Settled: later messages go straight through.
        ingestor.ingest(&line("dev-1", 1_002_000), Provenance::default(), &mut batch);
        assert_eq!(batch.messages.len(), 3);
    }

    #[test]
    fn dead_letters_carry_their_origin_and_arrival_refusals() {
        let mut ingestor = ingestor();
        ingestor.set_origin("telemetry", 3);
        let mut batch = ingestor.start_batch();
        let at = |arrival_ms, offset| Provenance {
            arrival_ms: Some(arrival_ms),
            offset: Some(offset),
        };
        ingestor.ingest(&line("dev-1", 1_000_000), at(1_000_000, 7), &mut batch);
        ingestor.ingest(&line("dev-2", 1_000_000), at(1_000_000, 8), &mut batch);
        ingestor.ingest(b"not json", at(1_000_000, 9), &mut batch);
        // Within the skew of the fleet, but not of its own arrival.
        ingestor.ingest(&line("dev-3", 1_500_000), at(800_000, 10), &mut batch);
        assert_eq!(
            reasons(&batch),
            [
                DeadLetterReason::InvalidJson,
                DeadLetterReason::FutureTimestamp
            ]
        );
        let offsets: Vec<_> = batch
            .dead_letters
            .iter()
            .map(|(_, d)| d.origin.as_ref().unwrap().offset)
            .collect();
        assert_eq!(offsets, [9, 10]);
        assert!(batch.dead_letters[1].1.detail.contains("arrival"));
    }
}
