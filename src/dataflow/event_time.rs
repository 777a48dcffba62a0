//! Event time at the edge of the dataflow: watermarks, lateness and the clock-skew guard.
//!
//! SPEC.md defines the watermark reading by reading, in arrival order: `W = (largest event time
//! among the valid readings seen before this one) - allowed lateness`. A reading is late when its
//! window's last millisecond is at or behind `W`. Because that is a prefix computation over the
//! arrival order, it runs where the order is known: in the source, one [`Watermarker`] per
//! partition (a Kafka partition, a simulated device group, or the whole file for `replay`).
//!
//! Each reading leaves the source stamped with its `W`, and each batch of messages enters the
//! dataflow at a timely time no later than the least `W` in it. The dataflow's frontier is then a
//! lower bound of every partition's watermark, and windows close by progress tracking alone.

use serde::{Deserialize, Serialize};

use crate::dataflow::model::{DeviceMessage, TimeMs, TimedMessage};

/// How far event time may run behind or ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// How far behind the largest valid event time a reading may arrive and still count.
    pub allowed_lateness_ms: u64,
    /// How far ahead of the largest valid event time a message may be stamped before it is
    /// a dead letter (`future_timestamp`) rather than a jump of everyone's watermark.
    pub max_clock_skew_ms: u64,
}

impl Default for EventTimeConfig {
    fn default() -> Self {
        Self {
            allowed_lateness_ms: 30_000,
            max_clock_skew_ms: 600_000,
        }
    }
}

/// The watermark of one partition, advanced message by message in arrival order.
#[derive(Clone, Debug)]
pub struct Watermarker {
    config: EventTimeConfig,
    /// Largest event time among valid readings admitted so far.
    max_valid_ms: Option<TimeMs>,
    /// A watermark the partition was raised to from outside (it was idle while the others
    /// moved on); it does not move the skew guard, which only real readings move.
    floor_ms: TimeMs,
}

/// A message the skew guard refused: it is too far ahead of the watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooFarAhead {
    /// The message's latest event time.
    pub ts_ms: TimeMs,
    /// The largest valid event time it was compared with.
    pub max_valid_ms: TimeMs,
}

impl Watermarker {
    /// A watermarker that has seen nothing yet.
    pub fn new(config: EventTimeConfig) -> Self {
        Self::resume(config, None)
    }

    /// A watermarker that continues after readings whose largest valid event time was `max_valid_ms`.
    pub fn resume(config: EventTimeConfig, max_valid_ms: Option<TimeMs>) -> Self {
        Self {
            config,
            max_valid_ms,
            floor_ms: 0,
        }
    }

    /// Raises the watermark to at least `floor_ms`, leaving the skew guard where it is.
    pub fn raise_to(&mut self, floor_ms: TimeMs) {
        self.floor_ms = self.floor_ms.max(floor_ms);
    }

    /// The floor the watermark was raised to (0 if never).
    pub fn floor_ms(&self) -> TimeMs {
        self.floor_ms
    }

    /// Largest valid event time admitted so far.
    pub fn max_valid_ms(&self) -> Option<TimeMs> {
        self.max_valid_ms
    }

    /// The current watermark: the largest valid event time minus the allowed lateness.
    pub fn watermark_ms(&self) -> TimeMs {
        watermark_after(self.config, self.max_valid_ms).max(self.floor_ms)
    }

    /// Admits a decoded message from a registered device, stamping it with the watermark before
    /// its first reading; refuses it whole if it is stamped too far ahead.
    ///
    /// A message with no valid readings is admitted (its readings are none) and moves nothing.
    pub fn admit(&mut self, message: DeviceMessage) -> Result<TimedMessage, TooFarAhead> {
        if let Some(max_valid_ms) = self.max_valid_ms
            && message.ts_ms > max_valid_ms.saturating_add(self.config.max_clock_skew_ms)
        {
            return Err(TooFarAhead {
                ts_ms: message.ts_ms,
                max_valid_ms,
            });
        }
        let watermark_ms = self.watermark_ms();
        if let Some(latest) = message.readings.iter().map(|r| r.ts_ms).max() {
            self.max_valid_ms = Some(self.max_valid_ms.map_or(latest, |m| m.max(latest)));
        }
        Ok(TimedMessage {
            device_id: message.device_id,
            ts_ms: message.ts_ms,
            watermark_ms,
            readings: message.readings,
        })
    }
}

/// The watermark that follows a largest valid event time (`0` before any).
pub fn watermark_after(config: EventTimeConfig, max_valid_ms: Option<TimeMs>) -> TimeMs {
    max_valid_ms.map_or(0, |m| m.saturating_sub(config.allowed_lateness_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::model::{MetricId, Reading};

    fn message(ts: &[u64]) -> DeviceMessage {
        DeviceMessage {
            device_id: "d".into(),
            ts_ms: *ts.iter().max().unwrap(),
            readings: ts
                .iter()
                .map(|&ts_ms| Reading {
                    metric: MetricId(0),
                    ts_ms,
                    value: 1.0,
                })
                .collect(),
        }
    }

    #[test]
    fn watermark_trails_the_largest_valid_time_reading_by_reading() {
        let mut w = Watermarker::new(EventTimeConfig::default());
        let m = w.admit(message(&[100_000, 140_000])).unwrap();
        let stamps: Vec<u64> = m.stamped(30_000).map(|(_, w)| w).collect();
        assert_eq!(stamps, [0, 70_000]);
        assert_eq!(w.watermark_ms(), 110_000);
        // An older reading does not move it back.
        w.admit(message(&[50_000])).unwrap();
        assert_eq!(w.watermark_ms(), 110_000);
    }

    #[test]
    fn skew_guard_refuses_the_whole_message_and_keeps_the_watermark() {
        let mut w = Watermarker::new(EventTimeConfig::default());
        w.admit(message(&[1_000_000])).unwrap();
        let refused = w.admit(message(&[1_000_001, 1_600_001])).unwrap_err();
        assert_eq!(refused.max_valid_ms, 1_000_000);
        assert_eq!(w.max_valid_ms(), Some(1_000_000));
        // Exactly at the bound is accepted.
        assert!(w.admit(message(&[1_600_000])).is_ok());
    }

    #[test]
    fn a_raised_floor_lifts_stamps_but_not_the_skew_guard() {
        let mut w = Watermarker::new(EventTimeConfig::default());
        w.raise_to(5_000);
        assert_eq!(w.watermark_ms(), 5_000);
        // Far ahead of the floor, but no real reading has set the guard yet.
        let m = w.admit(message(&[1_000_000])).unwrap();
        assert_eq!(m.watermark_ms, 5_000);
        assert_eq!(w.watermark_ms(), 970_000);
        w.raise_to(2_000_000);
        let m = w.admit(message(&[1_500_000])).unwrap();
        assert_eq!(m.watermark_ms, 2_000_000);
        assert_eq!(w.max_valid_ms(), Some(1_500_000));
    }
}
