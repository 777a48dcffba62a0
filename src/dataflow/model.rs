//! The records that flow through the dataflow.
//!
//! Every type here crosses worker boundaries, so each is `serde`-serialisable (timely encodes
//! it with its own bincode 1.3) and cheap to clone where it is cloned on a hot path.

use std::cmp::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Event time and watermarks: milliseconds since the Unix epoch. It is also the dataflow's
/// timely timestamp, so progress tracking *is* the watermark.
pub type TimeMs = u64;

/// A device id. Ids are short: they live inline (up to 24 bytes), so cloning, hashing and
/// comparing one touches no heap memory.
pub type DeviceId = compact_str::CompactString;

/// A metric's index in the [`MetricCatalog`](crate::dataflow::schema::MetricCatalog).
///
/// Metrics are interned at decode time so that readings carry two bytes instead of a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MetricId(pub u16);

/// One normalised sensor value, in the metric's canonical unit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// What was measured.
    pub metric: MetricId,
    /// When it was measured (event time).
    pub ts_ms: TimeMs,
    /// The value, converted to the metric's canonical unit.
    pub value: f64,
}

/// A message's readings. Most messages carry a handful, which live inline: a message then
/// moves through the dataflow without a heap block of its own, so no allocation per message on
/// the decoding worker and no cross-thread free on the windowing one.
pub type Readings = smallvec::SmallVec<[Reading; 4]>;

/// A message that decoded into readings: one device, one or more readings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceMessage {
    /// The sending device.
    pub device_id: DeviceId,
    /// The message's own time: the latest event time among its readings. The registry is
    /// consulted as of this time.
    pub ts_ms: TimeMs,
    /// The readings that passed the physical-range check, in message order.
    pub readings: Readings,
}

/// A validated message on its way into the dataflow, stamped with its partition's watermark.
///
/// Its timely time is at most `watermark_ms`. Each reading's own watermark follows from it: the
/// readings before it in the message are valid readings too, so reading `i` is judged against
/// `max(watermark_ms, min(max(ts of readings 0..i) - allowed lateness, watermark_ceiling_ms))`
/// (see [`Self::stamped`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimedMessage {
    /// The sending device.
    pub device_id: DeviceId,
    /// The message's time (latest reading), at which the registry is consulted.
    pub ts_ms: TimeMs,
    /// The partition's watermark just before the message's first reading.
    pub watermark_ms: TimeMs,
    /// The most the message's own readings can raise the watermark to: the fleet time plus
    /// the allowed lead, less the lateness (see [`crate::dataflow::event_time`]).
    pub watermark_ceiling_ms: TimeMs,
    /// The readings, in message order.
    pub readings: Readings,
}

impl TimedMessage {
    /// Each reading with the watermark in force just before it.
    pub fn stamped(
        &self,
        allowed_lateness_ms: u64,
    ) -> impl Iterator<Item = (Reading, TimeMs)> + '_ {
        let mut watermark_ms = self.watermark_ms;
        let ceiling_ms = self.watermark_ceiling_ms;
        self.readings.iter().map(move |r| {
            let before = watermark_ms;
            let raised = r.ts_ms.saturating_sub(allowed_lateness_ms).min(ceiling_ms);
            watermark_ms = watermark_ms.max(raised);
            (*r, before)
        })
    }
}

/// Why a message became a dead letter. The code is stable: dashboards and alerts key on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// Not a JSON object (not JSON at all, truncated, or another JSON type).
    InvalidJson,
    /// The object matches no declared schema variant.
    NoMatchingSchema,
    /// No non-empty device id where the schema says it is.
    MissingDeviceId,
    /// A timestamp of the wrong type or format.
    BadTimestamp,
    /// A metric value that is not a JSON number.
    WrongValueType,
    /// A unit that the catalog cannot convert to the metric's canonical unit.
    UnknownUnit,
    /// A metric that the catalog does not declare.
    UnknownMetric,
    /// The device is not in the registry at the message's time.
    UnknownDevice,
    /// A reading stamped too far ahead of the fleet time or of its arrival (a device with a
    /// wrong clock).
    FutureTimestamp,
    /// A message larger than the configured limit (`max_message_bytes`).
    TooLarge,
    /// An output point the time-series store refused for good (a field whose type conflicts
    /// with its series', a value it cannot hold); the raw text is the refused line protocol.
    StoreRejected,
    /// An output record another sink (Kafka, the bridge's producer) refused for good, such as
    /// one over the broker's size limit; the raw text is the refused record.
    SinkRejected,
}

impl DeadLetterReason {
    /// Every reason, in a stable order (for reports).
    pub const ALL: [DeadLetterReason; 12] = [
        Self::InvalidJson,
        Self::NoMatchingSchema,
        Self::MissingDeviceId,
        Self::BadTimestamp,
        Self::WrongValueType,
        Self::UnknownUnit,
        Self::UnknownMetric,
        Self::UnknownDevice,
        Self::FutureTimestamp,
        Self::TooLarge,
        Self::StoreRejected,
        Self::SinkRejected,
    ];

    /// The reason's stable snake_case code.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::NoMatchingSchema => "no_matching_schema",
            Self::MissingDeviceId => "missing_device_id",
            Self::BadTimestamp => "bad_timestamp",
            Self::WrongValueType => "wrong_value_type",
            Self::UnknownUnit => "unknown_unit",
            Self::UnknownMetric => "unknown_metric",
            Self::UnknownDevice => "unknown_device",
            Self::FutureTimestamp => "future_timestamp",
            Self::TooLarge => "too_large",
            Self::StoreRejected => "store_rejected",
            Self::SinkRejected => "sink_rejected",
        }
    }
}

/// A dead letter keeps at most this many bytes of the raw message, so that no dead letter can
/// exceed a sink's record limit, whatever came in.
pub const DEAD_LETTER_RAW_MAX_BYTES: usize = 4096;

/// A dead letter's detail is cut to this many bytes (it may quote a value of the message).
pub const DEAD_LETTER_DETAIL_MAX_BYTES: usize = 512;

/// A message that could not become readings, kept with the reason: the raw bytes whole up to
/// [`DEAD_LETTER_RAW_MAX_BYTES`], a prefix beyond, with the original length and a hash.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Why it was rejected.
    pub reason: DeadLetterReason,
    /// A human-readable detail (which field, what was expected).
    pub detail: String,
    /// The message as received (invalid UTF-8 replaced), or its first
    /// [`DEAD_LETTER_RAW_MAX_BYTES`] bytes.
    pub raw: String,
    /// The message's length in bytes as received (a `u32` keeps dead letters small in
    /// `Result`s; no transport here carries 4 GiB).
    pub raw_len: u32,
    /// SHA-256 of the message as received, hex: finds the whole message again (in Kafka, in a
    /// device's log) when `raw` is a prefix.
    pub raw_sha256: String,
    /// Where the message was read, when the source is a log (Kafka).
    pub origin: Option<MessageOrigin>,
}

impl DeadLetter {
    /// A dead letter for `raw`, bounded: see [`DEAD_LETTER_RAW_MAX_BYTES`].
    pub fn new(reason: DeadLetterReason, detail: impl Into<String>, raw: &[u8]) -> Self {
        use sha2::Digest;
        let kept = &raw[..raw.len().min(DEAD_LETTER_RAW_MAX_BYTES)];
        Self {
            reason,
            detail: bounded(detail.into(), DEAD_LETTER_DETAIL_MAX_BYTES),
            raw: String::from_utf8_lossy(kept).into_owned(),
            raw_len: u32::try_from(raw.len()).unwrap_or(u32::MAX),
            raw_sha256: hex::encode(sha2::Sha256::digest(raw)),
            origin: None,
        }
    }

    /// Whether `raw` holds only a prefix of the message.
    pub fn is_truncated(&self) -> bool {
        self.raw_len as usize > DEAD_LETTER_RAW_MAX_BYTES
    }
}

/// `text` cut to at most `max` bytes at a character boundary, marked when cut.
pub fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        text.push('…');
    }
    text
}

/// A message's place in a partitioned log: enough to find it again.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageOrigin {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The message's offset in the partition.
    pub offset: i64,
}

/// A registry threshold: readings outside `[min, max]` are threshold breaches.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Threshold {
    /// Lowest normal value, inclusive.
    pub min: f64,
    /// Highest normal value, inclusive.
    pub max: f64,
}

impl Threshold {
    /// Whether `value` lies outside the normal band.
    pub fn is_breached_by(&self, value: f64) -> bool {
        value < self.min || value > self.max
    }
}

// Thresholds live inside arranged registry values, which must be totally ordered.
impl PartialEq for Threshold {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Threshold {}
impl PartialOrd for Threshold {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Threshold {
    fn cmp(&self, other: &Self) -> Ordering {
        self.min
            .total_cmp(&other.min)
            .then(self.max.total_cmp(&other.max))
    }
}

/// What the registry knows about a device.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// thermostat, power_meter, ...
    pub device_type: String,
    /// Firmware version last reported to the registry.
    pub firmware: String,
    /// Schema variant name last reported to the registry.
    pub schema: String,
    /// Owning organisation.
    pub org: String,
    /// Site within the organisation.
    pub site: String,
    /// Building within the site.
    pub building: String,
    /// Hardware model.
    pub model: String,
    /// Alert thresholds per metric, sorted by metric.
    pub thresholds: Vec<(MetricId, Threshold)>,
}

impl DeviceInfo {
    /// The threshold for `metric`, if the registry sets one.
    pub fn threshold(&self, metric: MetricId) -> Option<&Threshold> {
        self.thresholds
            .iter()
            .find(|(m, _)| *m == metric)
            .map(|(_, t)| t)
    }
}

/// Registry values are shared, not copied, between the arrangement and enriched messages.
pub type SharedDeviceInfo = Arc<DeviceInfo>;

/// A message joined with the registry entry in force at its time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnrichedMessage {
    /// The sending device.
    pub device_id: DeviceId,
    /// Its registry entry as of the message's time.
    pub device: SharedDeviceInfo,
    /// The message's own time ([`TimedMessage::ts_ms`]), at which its device was looked up
    /// (its readings may carry other times).
    pub ts_ms: TimeMs,
    /// The message's watermark stamp ([`TimedMessage::watermark_ms`]): a function of the input
    /// alone, never of how it was batched, and never before the message's timely time. What
    /// the message causes (its anomaly scores) is emitted at this time, so that alert
    /// decisions come out the same whatever the batches, workers or restarts.
    pub stamp_ms: TimeMs,
    /// The readings, on time ones only.
    pub readings: Readings,
}

/// An exact, order-independent sum of values, in units of 10^-9.
///
/// Floating-point addition is not associative, so a plain `f64` sum would depend on the order in
/// which workers' readings interleave. Fixed point makes every worker count give the same bits.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ExactSum(pub i128);

impl ExactSum {
    const SCALE: f64 = 1e9;

    /// Adds one value.
    pub fn add(&mut self, value: f64) {
        let scaled = (value * Self::SCALE).round();
        // Through i64 when it fits: the same integer, without the slow float-to-i128 routine.
        self.0 += if scaled.abs() < 9.0e18 {
            scaled as i64 as i128
        } else {
            scaled as i128
        };
    }

    /// Adds another sum.
    pub fn merge(&mut self, other: ExactSum) {
        self.0 += other.0;
    }

    /// The sum as a float: exact to a part in 10^15, so sums of sums (hours into days, devices
    /// into sites) stay exact to far better than 10^-9.
    pub fn value(&self) -> f64 {
        self.0 as f64 / Self::SCALE
    }

    /// The mean of `count` values summing to this.
    pub fn mean(&self, count: u64) -> f64 {
        (self.0 as f64 / Self::SCALE) / count as f64
    }
}

/// One closed event-time window of one device's metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowAggregate {
    /// The device.
    pub device_id: DeviceId,
    /// The metric.
    pub metric: MetricId,
    /// Window start, inclusive.
    pub window_start_ms: TimeMs,
    /// The device's site for these readings (a device moved mid-window has one row per site).
    pub site: String,
    /// Readings aggregated.
    pub count: u64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Exact sum of values.
    pub sum: ExactSum,
    /// Sum of the squares of values, each rounded to 10^-6 (exact below that), so that a
    /// rollup over windows has a variance.
    pub sum_squares: f64,
    /// Event time of the window's first reading.
    pub first_ts_ms: TimeMs,
    /// Event time of its last reading.
    pub last_ts_ms: TimeMs,
    /// Readings outside the registry thresholds.
    pub threshold_breaches: u64,
}

/// A closed window with readings outside the registry thresholds, with the registry entry
/// (alert rules match on its type and site).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdBreach {
    /// The window.
    pub window: WindowAggregate,
    /// The device's registry entry for it.
    pub device: SharedDeviceInfo,
}

impl WindowAggregate {
    /// The mean value.
    pub fn mean(&self) -> f64 {
        self.sum.mean(self.count)
    }
}

/// One closed event-time window of one metric over all devices of a site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteRollup {
    /// The site.
    pub site: String,
    /// The metric.
    pub metric: MetricId,
    /// Window start, inclusive.
    pub window_start_ms: TimeMs,
    /// Readings over all devices.
    pub count: u64,
    /// Exact sum of values.
    pub sum: ExactSum,
}

impl SiteRollup {
    /// The mean value.
    pub fn mean(&self) -> f64 {
        self.sum.mean(self.count)
    }
}

/// A reading that arrived after its window closed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LateReading {
    /// The device.
    pub device_id: DeviceId,
    /// The metric.
    pub metric: MetricId,
    /// Event time.
    pub ts_ms: TimeMs,
    /// Value in canonical units.
    pub value: f64,
}

/// Which way a device's clock is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockDirection {
    /// Stamped more than the allowed skew ahead (the message is a `future_timestamp` dead
    /// letter).
    Ahead,
    /// Stamped more than the allowed skew behind the fleet time (the message is admitted; its
    /// readings are late).
    Behind,
}

impl ClockDirection {
    /// The direction's code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Ahead => "ahead",
            Self::Behind => "behind",
        }
    }
}

/// A registered device's message stamped more than the allowed clock skew ahead of the fleet
/// time or its arrival, or behind the fleet time: what the `clock` alert rule counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClockFault {
    /// The device.
    pub device_id: DeviceId,
    /// Its registry entry.
    pub device: SharedDeviceInfo,
    /// The time it was judged against (the fleet time or its arrival): the fault's event time.
    pub at_ms: TimeMs,
    /// How far off the device's stamp was, ms (positive: ahead).
    pub offset_ms: i64,
    /// Which way.
    pub direction: ClockDirection,
}

/// Counts from the edge of the dataflow, where messages are decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestCounts {
    /// Messages received.
    pub messages: u64,
    /// Messages of registered devices admitted with their readings (in range or not): every
    /// other message is one dead letter.
    #[serde(default)]
    pub admitted: u64,
    /// Messages stamped more than the allowed skew ahead of the fleet time or their arrival.
    #[serde(default)]
    pub clock_ahead: u64,
    /// Messages stamped more than the allowed skew behind it.
    #[serde(default)]
    pub clock_behind: u64,
    /// Readings in messages that decoded (before the range check).
    pub readings: u64,
    /// Readings dropped one by one for lying outside their metric's physical range.
    pub out_of_range: u64,
}

impl IngestCounts {
    /// Adds another set of counts.
    pub fn merge(&mut self, other: &IngestCounts) {
        self.messages += other.messages;
        self.admitted += other.admitted;
        self.clock_ahead += other.clock_ahead;
        self.clock_behind += other.clock_behind;
        self.readings += other.readings;
        self.out_of_range += other.out_of_range;
    }
}
