//! Raw bytes to readings, or a dead letter with its reason.

use super::json::{Node, Tape};
use super::{Layout, SchemaSet, TimeFormat, Variant};
use crate::dataflow::model::{
    DeadLetter, DeadLetterReason, DeviceId, DeviceMessage, MetricId, Reading, Readings,
};

/// A message that decoded, with what the range check dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// The device's message, holding only in-range readings.
    pub message: DeviceMessage,
    /// Readings the message carried, before the range check.
    pub readings_seen: u32,
    /// Readings dropped for lying outside their metric's physical range.
    pub out_of_range: u32,
}

/// A rejection before the raw bytes are attached.
type Reject = (DeadLetterReason, String);

/// The default largest message, in bytes: larger ones are `too_large` dead letters.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The latest timestamp a message may carry: 9999-12-31T23:59:59.999Z. Later ones are
/// `bad_timestamp`, so that event time plus any window or lateness stays far from overflow.
pub const MAX_TIMESTAMP_MS: u64 = 253_402_300_799_999;

/// Decodes messages with a schema set, reusing its parse buffers from message to message.
#[derive(Debug)]
pub struct Decoder {
    schemas: SchemaSet,
    tape: Tape,
    max_message_bytes: usize,
}

impl SchemaSet {
    /// Decodes one raw message (see [`Decoder::decode`]); a [`Decoder`] is faster for many.
    pub fn decode(&self, raw: &[u8]) -> Result<Decoded, DeadLetter> {
        self.decoder().decode(raw)
    }

    /// A decoder for many messages.
    pub fn decoder(&self) -> Decoder {
        Decoder {
            schemas: self.clone(),
            tape: Tape::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

impl Decoder {
    /// The schemas it decodes with.
    pub fn schemas(&self) -> &SchemaSet {
        &self.schemas
    }

    /// Sets the largest message it decodes; larger ones are `too_large` dead letters.
    pub fn with_max_message_bytes(mut self, max_message_bytes: usize) -> Self {
        self.max_message_bytes = max_message_bytes;
        self
    }

    /// Decodes one raw message.
    ///
    /// The checks run in a fixed order, so a message with several faults always gets the same
    /// reason: JSON object, variant, device id, timestamp(s), then each metric value and unit.
    pub fn decode(&mut self, raw: &[u8]) -> Result<Decoded, DeadLetter> {
        if raw.len() > self.max_message_bytes {
            let detail = format!(
                "{} bytes, more than max_message_bytes = {}",
                raw.len(),
                self.max_message_bytes
            );
            return Err(DeadLetter::new(DeadLetterReason::TooLarge, detail, raw));
        }
        let doc = self
            .tape
            .parse(raw)
            .map_err(|e| DeadLetter::new(DeadLetterReason::InvalidJson, e.to_string(), raw));
        doc.and_then(|doc| {
            self.schemas
                .decode_document(doc.root())
                .map_err(|(reason, detail)| DeadLetter::new(reason, detail, raw))
        })
    }
}

impl SchemaSet {
    fn decode_document(&self, object: Node<'_>) -> Result<Decoded, Reject> {
        if !object.is_object() {
            return Err((
                DeadLetterReason::InvalidJson,
                format!("{} is not a JSON object", object.type_name()),
            ));
        }
        // One walk of the top level fills every key any variant reads (the last of a repeated
        // key wins, as `Node::get` answers).
        let mut root: Root<'_> = smallvec::smallvec![None; self.root_keys.slots.len()];
        for (key, value) in object.entries() {
            if let Some(&slot) = self.root_keys.slots.get(key.key().as_ref()) {
                root[slot] = Some(value);
            }
        }
        let variant = self
            .variants
            .iter()
            .find(|v| v.slots.match_keys.iter().all(|&slot| root[slot].is_some()))
            .ok_or_else(|| {
                (
                    DeadLetterReason::NoMatchingSchema,
                    "no variant's match_keys are all present".into(),
                )
            })?;
        let device_id = match root[variant.slots.device_id].and_then(|n| n.as_str()) {
            Some(id) if !id.is_empty() => DeviceId::from(id.as_ref()),
            _ => {
                return Err((
                    DeadLetterReason::MissingDeviceId,
                    format!(
                        "{}: no non-empty string `{}`",
                        variant.name, variant.device_id
                    ),
                ));
            }
        };
        let header_ts = read_time(
            root[variant.slots.timestamp],
            &variant.timestamp_field,
            variant.timestamp_format,
        )
        .map_err(|detail| {
            (
                DeadLetterReason::BadTimestamp,
                format!("{}: {detail}", variant.name),
            )
        })?;
        let mut out = ReadingSink::new(self, header_ts);
        let metrics = variant.slots.metrics.and_then(|slot| root[slot]);
        self.read_metrics(variant, object, metrics, &mut out)?;
        Ok(out.finish(device_id))
    }

    /// Reads the variant's metrics; `metrics` is the top-level value holding them, if its
    /// layout has one.
    fn read_metrics(
        &self,
        variant: &Variant,
        object: Node<'_>,
        metrics: Option<Node<'_>>,
        out: &mut ReadingSink<'_>,
    ) -> Result<(), Reject> {
        match &variant.layout {
            Layout::Flat { fields } => {
                for (key, value) in object.entries() {
                    let key = key.key();
                    if let Some(&metric) = fields.get(key.as_ref()) {
                        let value = number(value, &key)?;
                        out.push(metric, out.header_ts, value);
                    }
                }
                Ok(())
            }
            Layout::Nested(nested) => {
                let metrics = as_object(metrics, &nested.field)?;
                let ts = out.header_ts;
                self.read_nested(metrics, &nested.value_key, &nested.unit_key, ts, out)
            }
            Layout::Batch(batch) => {
                let field = &batch.field;
                let entries = match metrics {
                    Some(list) if list.is_array() => list,
                    _ => {
                        return Err((
                            DeadLetterReason::WrongValueType,
                            format!("`{field}` is not an array"),
                        ));
                    }
                };
                for entry in entries.elements() {
                    let entry = as_object(Some(entry), field)?;
                    let ts = read_time(
                        entry.get(&batch.time_field),
                        &batch.time_field,
                        batch.time_format,
                    )
                    .map_err(|detail| {
                        (
                            DeadLetterReason::BadTimestamp,
                            format!("{field}[]: {detail}"),
                        )
                    })?;
                    let metrics = as_object(entry.get(&batch.metrics_field), &batch.metrics_field)?;
                    self.read_nested(metrics, &batch.value_key, &batch.unit_key, ts, out)?;
                }
                Ok(())
            }
        }
    }

    fn read_nested(
        &self,
        metrics: Node<'_>,
        value_key: &str,
        unit_key: &str,
        ts_ms: u64,
        out: &mut ReadingSink<'_>,
    ) -> Result<(), Reject> {
        for (name, entry) in metrics.entries() {
            let name = name.key();
            let metric_id = self.catalog.id(&name).ok_or_else(|| {
                (
                    DeadLetterReason::UnknownMetric,
                    format!("metric `{name}` is not in the catalog"),
                )
            })?;
            let entry = as_object(Some(entry), &name)?;
            let value = match entry.get(value_key) {
                Some(v) => number(v, &name)?,
                None => {
                    return Err((
                        DeadLetterReason::WrongValueType,
                        format!("{name}: no `{value_key}`"),
                    ));
                }
            };
            let metric = self.catalog.get(metric_id);
            let value = match entry.get(unit_key) {
                None => value,
                Some(unit) => match unit.as_str() {
                    Some(unit) => metric.to_canonical(value, &unit).ok_or_else(|| {
                        (
                            DeadLetterReason::UnknownUnit,
                            format!("{name}: no conversion from `{unit}` to `{}`", metric.unit),
                        )
                    })?,
                    None => {
                        return Err((
                            DeadLetterReason::UnknownUnit,
                            format!("{name}: unit is not a string"),
                        ));
                    }
                },
            };
            out.push(metric_id, ts_ms, value);
        }
        Ok(())
    }
}

/// Collects readings, applying the physical-range check.
struct ReadingSink<'a> {
    schemas: &'a SchemaSet,
    header_ts: u64,
    max_ts: u64,
    readings: Readings,
    seen: u32,
    out_of_range: u32,
}

impl<'a> ReadingSink<'a> {
    fn new(schemas: &'a SchemaSet, header_ts: u64) -> Self {
        Self {
            schemas,
            header_ts,
            max_ts: header_ts,
            readings: Readings::new(),
            seen: 0,
            out_of_range: 0,
        }
    }

    fn push(&mut self, metric: MetricId, ts_ms: u64, value: f64) {
        self.seen += 1;
        self.max_ts = self.max_ts.max(ts_ms);
        if self.schemas.catalog.get(metric).in_range(value) {
            self.readings.push(Reading {
                metric,
                ts_ms,
                value,
            });
        } else {
            self.out_of_range += 1;
        }
    }

    fn finish(self, device_id: DeviceId) -> Decoded {
        Decoded {
            message: DeviceMessage {
                device_id,
                ts_ms: self.max_ts,
                readings: self.readings,
            },
            readings_seen: self.seen,
            out_of_range: self.out_of_range,
        }
    }
}

/// The top level's values by [`RootKeys`](super::RootKeys) slot.
type Root<'t> = smallvec::SmallVec<[Option<Node<'t>>; 8]>;

/// The time `value` (found under `field`) holds.
fn read_time(value: Option<Node<'_>>, field: &str, format: TimeFormat) -> Result<u64, String> {
    match value {
        None => Err(format!("no `{field}`")),
        Some(value) => match format.parse(value) {
            Some(ts_ms) if ts_ms <= MAX_TIMESTAMP_MS => Ok(ts_ms),
            Some(ts_ms) => Err(format!("`{field}` = {ts_ms} ms is after the year 9999")),
            None => Err(format!("`{field}` = {} is not {format:?}", value.display())),
        },
    }
}

/// A metric value: a finite JSON number.
fn number(value: Node<'_>, name: &str) -> Result<f64, Reject> {
    value.as_f64().filter(|v| v.is_finite()).ok_or_else(|| {
        (
            DeadLetterReason::WrongValueType,
            format!("{name}: {} is not a number", value.display()),
        )
    })
}

fn as_object<'t>(value: Option<Node<'t>>, name: &str) -> Result<Node<'t>, Reject> {
    match value {
        Some(node) if node.is_object() => Ok(node),
        _ => Err((
            DeadLetterReason::WrongValueType,
            format!("`{name}` is not an object"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(line: &str) -> Result<Decoded, DeadLetter> {
        SchemaSet::embedded().decode(line.as_bytes())
    }

    fn metric(name: &str) -> MetricId {
        SchemaSet::embedded().catalog().id(name).unwrap()
    }

    fn reason(line: &str) -> DeadLetterReason {
        decode(line).unwrap_err().reason
    }

    #[test]
    fn v1_flat_renames_short_fields() {
        let d = decode(r#"{"device_id":"dev-000068","ts":1704067200065,"rms":1.05,"pk":3.64,"t":37.53,"fw":"1.2.3"}"#).unwrap();
        assert_eq!(d.message.device_id, "dev-000068");
        assert_eq!(d.message.ts_ms, 1_704_067_200_065);
        let mut got: Vec<_> = d
            .message
            .readings
            .iter()
            .map(|r| (r.metric, r.value))
            .collect();
        got.sort_by_key(|(m, _)| *m);
        let mut want = vec![
            (metric("vibration_rms"), 1.05),
            (metric("vibration_peak"), 3.64),
            (metric("temperature"), 37.53),
        ];
        want.sort_by_key(|(m, _)| *m);
        assert_eq!(got, want);
    }

    #[test]
    fn v2_nested_reads_value_and_unit() {
        let d = decode(r#"{"id":"dev-000844","time":"2024-01-01T00:00:00.001Z","fw":"2.8.5","metrics":{"temperature":{"value":38.82,"unit":"C"},"humidity":{"value":40.1,"unit":"%"}}}"#).unwrap();
        assert_eq!(d.message.ts_ms, 1_704_067_200_001);
        assert_eq!(d.readings_seen, 2);
        assert!(d.message.readings.contains(&Reading {
            metric: metric("temperature"),
            ts_ms: 1_704_067_200_001,
            value: 38.82
        }));
    }

    #[test]
    fn v3_batch_converts_fahrenheit_and_keeps_per_reading_times() {
        let d = decode(r#"{"id":"dev-1","time":"2024-01-01T00:00:01.000Z","fw":"3.1.1","batch":[{"time":"2024-01-01T00:00:00.500Z","metrics":{"temperature":{"value":100.4,"unit":"F"}}},{"time":"2024-01-01T00:00:01.000Z","metrics":{"temperature":{"value":212,"unit":"F"}}}]}"#).unwrap();
        let r = &d.message.readings;
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].ts_ms, 1_704_067_200_500);
        assert_eq!(r[0].value, (100.4 - 32.0) * 5.0 / 9.0);
        assert_eq!(r[1].value, 100.0);
        assert_eq!(d.message.ts_ms, 1_704_067_201_000);
    }

    #[test]
    fn out_of_range_readings_are_dropped_one_by_one() {
        let d = decode(r#"{"device_id":"d","ts":5,"temp":999.0,"hum":50}"#).unwrap();
        assert_eq!(
            (d.readings_seen, d.out_of_range, d.message.readings.len()),
            (2, 1, 1)
        );
        assert_eq!(d.message.readings[0].metric, metric("humidity"));
    }

    #[test]
    fn each_dead_letter_reason() {
        use DeadLetterReason::*;
        assert_eq!(reason(r#"{"device_id":"d","ts":5,"te"#), InvalidJson);
        assert_eq!(reason("[1,2]"), InvalidJson);
        assert_eq!(reason(r#"{"device_id":"d","when":5}"#), NoMatchingSchema);
        assert_eq!(reason(r#"{"ts":5,"temp":20}"#), MissingDeviceId);
        assert_eq!(reason(r#"{"device_id":"","ts":5}"#), MissingDeviceId);
        assert_eq!(
            reason(r#"{"device_id":"d","ts":"2024-01-01T00:00:00.000Z"}"#),
            BadTimestamp
        );
        assert_eq!(
            reason(r#"{"id":"d","time":1704067200000,"metrics":{}}"#),
            BadTimestamp
        );
        assert_eq!(
            reason(r#"{"id":"d","time":"yesterday","batch":[]}"#),
            BadTimestamp
        );
        assert_eq!(
            reason(
                r#"{"id":"d","time":"2024-01-01T00:00:00Z","batch":[{"time":"x","metrics":{}}]}"#
            ),
            BadTimestamp
        );
        assert_eq!(
            reason(r#"{"device_id":"d","ts":5,"temp":"ERR"}"#),
            WrongValueType
        );
        assert_eq!(
            reason(r#"{"device_id":"d","ts":5,"temp":true}"#),
            WrongValueType
        );
        assert_eq!(
            reason(r#"{"device_id":"d","ts":5,"temp":null}"#),
            WrongValueType
        );
        assert_eq!(
            reason(r#"{"device_id":"d","ts":5,"temp":"21.5"}"#),
            WrongValueType
        );
        assert_eq!(
            reason(
                r#"{"id":"d","time":"2024-01-01T00:00:00Z","metrics":{"co2":{"value":{"raw":5},"unit":"ppm"}}}"#
            ),
            WrongValueType
        );
        assert_eq!(
            reason(
                r#"{"id":"d","time":"2024-01-01T00:00:00Z","metrics":{"co2":{"value":5,"unit":"furlongs"}}}"#
            ),
            UnknownUnit
        );
        assert_eq!(
            reason(
                r#"{"id":"d","time":"2024-01-01T00:00:00Z","metrics":{"radon":{"value":5,"unit":"Bq"}}}"#
            ),
            UnknownMetric
        );
    }

    #[test]
    fn dead_letters_keep_the_raw_bytes() {
        let raw = b"{\"device_id\":\"d\",\xff}";
        let dl = SchemaSet::embedded().decode(raw).unwrap_err();
        assert_eq!(dl.reason, DeadLetterReason::InvalidJson);
        assert_eq!(dl.raw, String::from_utf8_lossy(raw));
    }
}

/// Inputs no device should send, and what becomes of them: never a panic, always readings or
/// one dead letter with a reason, and a dead letter no larger than its bound.
#[cfg(test)]
mod poison {
    use super::*;
    use crate::dataflow::model::{DEAD_LETTER_DETAIL_MAX_BYTES, DEAD_LETTER_RAW_MAX_BYTES};
    use proptest::prelude::*;

    const VALID: [&str; 3] = [
        r#"{"device_id":"dev-000068","ts":1704067200065,"rms":1.05,"pk":3.64,"t":37.53}"#,
        r#"{"id":"dev-000844","time":"2024-01-01T00:00:00.001Z","fw":"2.8.5","metrics":{"temperature":{"value":38.82,"unit":"C"},"humidity":{"value":40.1,"unit":"%"}}}"#,
        r#"{"id":"dev-1","time":"2024-01-01T00:00:01.000Z","fw":"3.1.1","batch":[{"time":"2024-01-01T00:00:00.500Z","metrics":{"temperature":{"value":100.4,"unit":"F"}}},{"time":"2024-01-01T00:00:01.000Z","metrics":{"temperature":{"value":212,"unit":"F"}}}]}"#,
    ];

    /// Decodes and checks what every outcome must satisfy.
    fn check(decoder: &mut Decoder, raw: &[u8]) -> Result<Decoded, DeadLetterReason> {
        match decoder.decode(raw) {
            Ok(d) => {
                for r in &d.message.readings {
                    assert!(r.value.is_finite(), "{r:?}");
                    assert!(r.ts_ms <= MAX_TIMESTAMP_MS, "{r:?}");
                }
                assert!(d.message.ts_ms <= MAX_TIMESTAMP_MS);
                assert!(!d.message.device_id.is_empty());
                assert_eq!(
                    d.readings_seen as usize,
                    d.message.readings.len() + d.out_of_range as usize
                );
                Ok(d)
            }
            Err(dead) => {
                assert!(
                    dead.raw.len() <= DEAD_LETTER_RAW_MAX_BYTES + 3 * 4,
                    "raw bound"
                );
                assert!(
                    dead.detail.len() <= DEAD_LETTER_DETAIL_MAX_BYTES + 3,
                    "detail bound"
                );
                assert_eq!(dead.raw_len as usize, raw.len());
                assert_eq!(dead.raw_sha256.len(), 64);
                Err(dead.reason)
            }
        }
    }

    fn reason(raw: &[u8]) -> DeadLetterReason {
        check(&mut SchemaSet::embedded().decoder(), raw).unwrap_err()
    }

    /// 4,096 cases a property in the test suite; `PROPTEST_CASES` and `PROPTEST_RNG_SEED` run
    /// a longer campaign with a seed of one's own (docs/benchmarks.md records them).
    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4096)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_are_readings_or_one_dead_letter(raw in proptest::collection::vec(any::<u8>(), 0..600)) {
            check(&mut SchemaSet::embedded().decoder(), &raw).ok();
        }

        #[test]
        fn mutated_messages_of_every_variant(
            variant in 0..VALID.len(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..8),
        ) {
            let mut raw = VALID[variant].as_bytes().to_vec();
            for (at, byte, op) in edits {
                let len = raw.len();
                let i = at.index(len.max(1));
                match op {
                    0 if len > 0 => raw[i.min(len - 1)] = byte,
                    1 => raw.insert(i.min(len), byte),
                    _ if len > 0 => {
                        raw.remove(i.min(len - 1));
                    }
                    _ => {}
                }
            }
            check(&mut SchemaSet::embedded().decoder(), &raw).ok();
        }

        #[test]
        fn any_number_in_a_field_is_a_reading_or_a_reason(number in "-?(0|[1-9][0-9]{0,29})(\\.[0-9]{1,20})?([eE][-+]?[0-9]{1,4})?") {
            let ts = format!(r#"{{"device_id":"d","ts":{number},"temp":20}}"#);
            let value = format!(r#"{{"device_id":"d","ts":1704067200000,"temp":{number}}}"#);
            let mut decoder = SchemaSet::embedded().decoder();
            if let Err(reason) = check(&mut decoder, ts.as_bytes()) {
                prop_assert_eq!(reason, DeadLetterReason::BadTimestamp);
            }
            check(&mut decoder, value.as_bytes()).ok();
        }
    }

    #[test]
    fn absurd_timestamps_are_bad_timestamps() {
        for ts in [
            "18446744073709551615",
            "18446744073709551616",
            "1e30",
            "-5",
            "253402300800000",
            "1704067200000.5",
        ] {
            let line = format!(r#"{{"device_id":"d","ts":{ts},"temp":20}}"#);
            assert_eq!(
                reason(line.as_bytes()),
                DeadLetterReason::BadTimestamp,
                "{ts}"
            );
        }
        let line = r#"{"id":"d","time":"9999-12-31T23:59:59.999Z","metrics":{"co2":{"value":5}}}"#;
        assert!(check(&mut SchemaSet::embedded().decoder(), line.as_bytes()).is_ok());
        let line = r#"{"id":"d","time":"10000-01-01T00:00:00.000Z","metrics":{}}"#;
        assert_eq!(reason(line.as_bytes()), DeadLetterReason::BadTimestamp);
    }

    #[test]
    fn absurd_values_and_shapes_are_dead_letters() {
        use DeadLetterReason::*;
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(reason(deep.as_bytes()), TooLarge);
        let deep_small = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(reason(deep_small.as_bytes()), InvalidJson);
        let nested_value = format!(
            r#"{{"device_id":"d","ts":1,"temp":{}1{}}}"#,
            "[".repeat(5_000),
            "]".repeat(5_000)
        );
        assert_eq!(reason(nested_value.as_bytes()), InvalidJson);
        assert_eq!(
            reason(br#"{"device_id":"d","ts":1,"temp":1e400}"#),
            WrongValueType
        );
        assert_eq!(reason(b"\0\0\0"), InvalidJson);
        assert_eq!(reason(b"{\"device_id\":\"d\0\",\"ts\":1}"), InvalidJson);
        assert_eq!(reason(&[0xff, 0xfe, 0x7b]), InvalidJson);
        let big = format!(
            r#"{{"device_id":"d","ts":1,"note":"{}","temp":20}}"#,
            "x".repeat(4 << 20)
        );
        let dead = SchemaSet::embedded().decode(big.as_bytes()).unwrap_err();
        assert_eq!(dead.reason, TooLarge);
        assert!(dead.is_truncated());
        assert_eq!(dead.raw.len(), DEAD_LETTER_RAW_MAX_BYTES);
        assert_eq!(dead.raw_len as usize, big.len());
    }

    #[test]
    fn the_size_limit_is_a_setting() {
        let line = VALID[0].as_bytes();
        let mut decoder = SchemaSet::embedded()
            .decoder()
            .with_max_message_bytes(line.len());
        assert!(decoder.decode(line).is_ok());
        let mut decoder = decoder.with_max_message_bytes(line.len() - 1);
        assert_eq!(
            decoder.decode(line).unwrap_err().reason,
            DeadLetterReason::TooLarge
        );
    }

    #[test]
    fn a_long_value_in_a_detail_is_cut() {
        let line = format!(
            r#"{{"device_id":"d","ts":"{}","temp":20}}"#,
            "9".repeat(20_000)
        );
        let dead = SchemaSet::embedded().decode(line.as_bytes()).unwrap_err();
        assert_eq!(dead.reason, DeadLetterReason::BadTimestamp);
        assert!(dead.detail.len() <= DEAD_LETTER_DETAIL_MAX_BYTES + 3);
    }
}
