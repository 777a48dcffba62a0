//! Event time at the edge of the dataflow: watermarks, lateness and clock trust.
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
//!
//! # Clock trust
//!
//! One device's clock must not decide everyone's watermark. A partition's [`PartitionClock`]
//! keeps, besides the largest valid event time, the latest valid time of the
//! `clock_quorum` distinct devices furthest ahead. The least of those is the **fleet time** `F`:
//! a time that `clock_quorum` devices have reached (with fewer devices in the partition, all of
//! them). Then, message by message:
//! - a message stamped more than `max_clock_skew_ms` ahead of `F`, or of its own arrival time
//!   where the source knows one (the Kafka record timestamp), is a `future_timestamp` dead
//!   letter and moves nothing;
//! - the watermark is `min(largest valid time, F + max_lead_ms) - allowed lateness`: a device
//!   running ahead, alone or with fewer than `clock_quorum` others, carries the watermark at
//!   most `max_lead_ms` beyond the fleet.
//!
//! At a partition's start there is no fleet time yet, so the first messages cannot be judged on
//! arrival. They are **held** (see [`ClockHold`]) until they come from `clock_quorum` distinct
//! devices or [`HOLD_MAX_MESSAGES`] are held, then judged in arrival order against the hold's
//! reference: the `clock_quorum`-th largest of the held devices' median stamps. A poisoned first
//! message is therefore a dead letter like any other, and holding changes no stamp: each held
//! message gets the watermark it would have had.
//!
//! On inputs whose devices agree (every device within `max_lead_ms` of the others' latest
//! times), the cap never binds and the guard never refuses a reading that the SPEC's rule would
//! keep, so the outputs are exactly SPEC.md's.

use serde::{Deserialize, Serialize};

use crate::dataflow::model::{DeviceMessage, TimeMs, TimedMessage};

/// The largest `clock_quorum` a partition clock can hold.
pub const MAX_CLOCK_QUORUM: usize = 8;

/// At most this many messages wait at a partition's start for the quorum to speak.
pub const HOLD_MAX_MESSAGES: usize = 256;

/// How far event time may run behind or ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// How far behind the largest valid event time a reading may arrive and still count.
    pub allowed_lateness_ms: u64,
    /// How far ahead of the fleet time (or of its arrival time) a message may be stamped
    /// before it is a dead letter (`future_timestamp`) rather than a reading.
    pub max_clock_skew_ms: u64,
    /// How many distinct devices must have reached a time before it is the fleet time
    /// (1 to 8). More resists more devices with clocks ahead; fewer closes windows of a
    /// sparse fleet sooner.
    #[serde(default = "default_clock_quorum")]
    pub clock_quorum: u8,
    /// How far beyond the fleet time the largest valid event time may carry the watermark:
    /// the most a device running ahead can take from everyone's allowed lateness.
    #[serde(default = "default_max_lead_ms")]
    pub max_lead_ms: u64,
}

fn default_clock_quorum() -> u8 {
    3
}

fn default_max_lead_ms() -> u64 {
    5_000
}

impl Default for EventTimeConfig {
    fn default() -> Self {
        Self {
            allowed_lateness_ms: 30_000,
            max_clock_skew_ms: 600_000,
            clock_quorum: default_clock_quorum(),
            max_lead_ms: default_max_lead_ms(),
        }
    }
}

/// An event-time setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event_time.{field}: {problem}")]
pub struct EventTimeConfigError {
    /// The field, as written in the config.
    pub field: &'static str,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl EventTimeConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), EventTimeConfigError> {
        if !(1..=MAX_CLOCK_QUORUM as u8).contains(&self.clock_quorum) {
            return Err(EventTimeConfigError {
                field: "clock_quorum",
                problem: format!(
                    "is {} but must be between 1 and {MAX_CLOCK_QUORUM}",
                    self.clock_quorum
                ),
            });
        }
        Ok(())
    }

    fn quorum(&self) -> usize {
        (self.clock_quorum as usize).clamp(1, MAX_CLOCK_QUORUM)
    }
}

/// A stable 64-bit id for a device (FNV-1a of its id), so clocks are the same in every
/// process and version.
pub fn device_clock_id(device_id: &str) -> u64 {
    device_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One device's latest valid event time, among the devices furthest ahead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    /// [`device_clock_id`] of the device.
    pub device: u64,
    /// Its latest valid event time.
    pub ts_ms: TimeMs,
}

/// What a partition's readings say the time is: the state a restart resumes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionClock {
    /// Largest event time among the valid readings admitted so far.
    pub max_valid_ms: Option<TimeMs>,
    /// The devices furthest ahead, latest first; the first `leader_count` are used.
    pub leaders: [Leader; MAX_CLOCK_QUORUM],
    /// How many leaders there are.
    pub leader_count: u8,
    /// Whether the partition's start has been judged (its hold released).
    pub settled: bool,
}

impl PartitionClock {
    /// A settled clock that knows only a largest valid time (a checkpoint from before
    /// fleet time was kept).
    pub fn from_max_valid(max_valid_ms: Option<TimeMs>) -> Self {
        Self {
            max_valid_ms,
            settled: max_valid_ms.is_some(),
            ..Self::default()
        }
    }

    fn leaders(&self) -> &[Leader] {
        &self.leaders[..self.leader_count as usize]
    }

    /// The fleet time: the least of the first `quorum` leaders (`None` before any reading).
    pub fn fleet_ms(&self, quorum: usize) -> Option<TimeMs> {
        let leaders = self.leaders();
        leaders
            .get(quorum.min(leaders.len()).checked_sub(1)?)
            .map(|l| l.ts_ms)
    }

    /// Notes a valid reading time of `device`.
    fn observe(&mut self, device: u64, ts_ms: TimeMs, quorum: usize) {
        self.max_valid_ms = Some(self.max_valid_ms.map_or(ts_ms, |m| m.max(ts_ms)));
        let count = self.leader_count as usize;
        let at = match self.leaders[..count]
            .iter()
            .position(|l| l.device == device)
        {
            Some(i) if self.leaders[i].ts_ms >= ts_ms => return,
            Some(i) => i,
            None if count < quorum => {
                self.leader_count += 1;
                count
            }
            // Not ahead of the last leader: it changes nothing.
            None if self.leaders[count - 1].ts_ms >= ts_ms => return,
            None => count - 1,
        };
        self.leaders[at] = Leader { device, ts_ms };
        // Keep latest first: move the updated leader up past those it overtook.
        let mut i = at;
        while i > 0 && self.leaders[i - 1].ts_ms < self.leaders[i].ts_ms {
            self.leaders.swap(i - 1, i);
            i -= 1;
        }
    }
}

/// The watermark of one partition, advanced message by message in arrival order.
#[derive(Clone, Debug)]
pub struct Watermarker {
    config: EventTimeConfig,
    clock: PartitionClock,
    /// A watermark the partition was raised to from outside (it was idle while the others
    /// moved on); it does not move the skew guard, which only real readings move.
    floor_ms: TimeMs,
}

/// A message the skew guard refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooFarAhead {
    /// The message's latest event time.
    pub ts_ms: TimeMs,
    /// The time it was compared with.
    pub reference_ms: TimeMs,
    /// What that time is.
    pub reference: ClockReference,
}

/// What a message's stamp was judged against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockReference {
    /// The partition's fleet time.
    Fleet,
    /// The message's own arrival time.
    Arrival,
    /// The reference of the messages held at the partition's start.
    Hold,
}

impl std::fmt::Display for TooFarAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.reference {
            ClockReference::Fleet => "the fleet time",
            ClockReference::Arrival => "its arrival time",
            ClockReference::Hold => "the fleet time at the partition's start",
        };
        write!(
            f,
            "stamped {} ms, more than the allowed skew ahead of {what}, {} ms",
            self.ts_ms, self.reference_ms
        )
    }
}

impl Watermarker {
    /// A watermarker that has seen nothing yet.
    pub fn new(config: EventTimeConfig) -> Self {
        Self::resume(config, PartitionClock::default())
    }

    /// A watermarker that continues from `clock`.
    pub fn resume(config: EventTimeConfig, clock: PartitionClock) -> Self {
        Self {
            config,
            clock,
            floor_ms: 0,
        }
    }

    /// The settings it runs with.
    pub fn config(&self) -> EventTimeConfig {
        self.config
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
        self.clock.max_valid_ms
    }

    /// The partition's clock, to resume it elsewhere.
    pub fn clock(&self) -> PartitionClock {
        self.clock
    }

    /// Whether the partition's start has been judged.
    pub fn is_settled(&self) -> bool {
        self.clock.settled
    }

    /// Marks the partition's start as judged.
    pub fn settle(&mut self) {
        self.clock.settled = true;
    }

    /// The fleet time (see the module docs).
    pub fn fleet_ms(&self) -> Option<TimeMs> {
        self.clock.fleet_ms(self.config.quorum())
    }

    /// The current watermark.
    pub fn watermark_ms(&self) -> TimeMs {
        watermark_after(self.config, &self.clock).max(self.floor_ms)
    }

    /// The most a message's own readings may raise the watermark to: the fleet time plus the
    /// lead, less the lateness (no bound before any reading).
    pub fn watermark_ceiling_ms(&self) -> TimeMs {
        match self.fleet_ms() {
            Some(fleet_ms) => fleet_ms
                .saturating_add(self.config.max_lead_ms)
                .saturating_sub(self.config.allowed_lateness_ms)
                .max(self.floor_ms),
            None => TimeMs::MAX,
        }
    }

    /// If a message stamped `ts_ms` is more than the allowed skew behind the fleet time: that
    /// time. Such a message is admitted (its readings will be late); many of them are a clock
    /// far behind. Only the fleet can say so: a message behind its arrival may be history
    /// replayed through Kafka.
    pub fn behind(&self, ts_ms: TimeMs) -> Option<TimeMs> {
        self.fleet_ms()
            .filter(|fleet_ms| ts_ms.saturating_add(self.config.max_clock_skew_ms) < *fleet_ms)
    }

    /// Admits a decoded message from a registered device, stamping it with the watermark before
    /// its first reading; refuses it whole if it is stamped too far ahead of the fleet time or
    /// of `arrival_ms`.
    ///
    /// A message with no valid readings is admitted (its readings are none) and moves nothing.
    pub fn admit(
        &mut self,
        message: DeviceMessage,
        arrival_ms: Option<TimeMs>,
    ) -> Result<TimedMessage, TooFarAhead> {
        let skew = self.config.max_clock_skew_ms;
        let references = [
            (arrival_ms, ClockReference::Arrival),
            (self.fleet_ms(), ClockReference::Fleet),
        ];
        for (reference_ms, reference) in references {
            if let Some(reference_ms) = reference_ms
                && message.ts_ms > reference_ms.saturating_add(skew)
            {
                return Err(TooFarAhead {
                    ts_ms: message.ts_ms,
                    reference_ms,
                    reference,
                });
            }
        }
        let watermark_ms = self.watermark_ms();
        let watermark_ceiling_ms = self.watermark_ceiling_ms();
        if let Some(latest) = message.readings.iter().map(|r| r.ts_ms).max() {
            let device = device_clock_id(&message.device_id);
            self.clock.observe(device, latest, self.config.quorum());
        }
        Ok(TimedMessage {
            device_id: message.device_id,
            ts_ms: message.ts_ms,
            watermark_ms,
            watermark_ceiling_ms,
            readings: message.readings,
        })
    }
}

/// The watermark that follows a clock, before any floor (`0` before any valid reading).
pub fn watermark_after(config: EventTimeConfig, clock: &PartitionClock) -> TimeMs {
    let Some(max_valid_ms) = clock.max_valid_ms else {
        return 0;
    };
    let capped = match clock.fleet_ms(config.quorum()) {
        Some(fleet_ms) => max_valid_ms.min(fleet_ms.saturating_add(config.max_lead_ms)),
        None => max_valid_ms,
    };
    capped.saturating_sub(config.allowed_lateness_ms)
}

/// The messages held at a partition's start, until the quorum has spoken.
#[derive(Clone, Debug, Default)]
pub struct ClockHold {
    /// (device, stamp) of each held message, in arrival order.
    votes: Vec<(u64, TimeMs)>,
    /// Distinct devices among them (up to the quorum).
    devices: Vec<u64>,
}

impl ClockHold {
    /// Notes a held message; returns whether the hold should now be released.
    pub fn vote(&mut self, device_id: &str, ts_ms: TimeMs, config: EventTimeConfig) -> bool {
        let device = device_clock_id(device_id);
        self.votes.push((device, ts_ms));
        if self.devices.len() < config.quorum() && !self.devices.contains(&device) {
            self.devices.push(device);
        }
        self.devices.len() >= config.quorum() || self.votes.len() >= HOLD_MAX_MESSAGES
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.votes.is_empty()
    }

    /// The time the held messages agree on: each device's lower median stamp, and of those
    /// the `clock_quorum`-th largest (the least, with fewer devices). Empties the hold.
    pub fn take_reference(&mut self, config: EventTimeConfig) -> Option<TimeMs> {
        let mut votes = std::mem::take(&mut self.votes);
        self.devices.clear();
        votes.sort_unstable();
        let mut medians: Vec<TimeMs> = votes
            .chunk_by(|a, b| a.0 == b.0)
            .map(|stamps| stamps[(stamps.len() - 1) / 2].1)
            .collect();
        medians.sort_unstable_by(|a, b| b.cmp(a));
        let at = config.quorum().min(medians.len()).checked_sub(1)?;
        Some(medians[at])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::model::{MetricId, Reading};

    fn message_from(device: &str, ts: &[u64]) -> DeviceMessage {
        DeviceMessage {
            device_id: device.into(),
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

    fn message(ts: &[u64]) -> DeviceMessage {
        message_from("d", ts)
    }

    fn quorum(clock_quorum: u8) -> EventTimeConfig {
        EventTimeConfig {
            clock_quorum,
            ..EventTimeConfig::default()
        }
    }

    #[test]
    fn watermark_trails_the_largest_valid_time_reading_by_reading() {
        let mut w = Watermarker::new(EventTimeConfig::default());
        let m = w.admit(message(&[100_000, 140_000]), None).unwrap();
        let stamps: Vec<u64> = m.stamped(30_000).map(|(_, w)| w).collect();
        assert_eq!(stamps, [0, 70_000]);
        assert_eq!(w.watermark_ms(), 110_000);
        // An older reading does not move it back.
        w.admit(message(&[50_000]), None).unwrap();
        assert_eq!(w.watermark_ms(), 110_000);
    }

    #[test]
    fn skew_guard_refuses_the_whole_message_and_keeps_the_watermark() {
        let mut w = Watermarker::new(EventTimeConfig::default());
        w.admit(message(&[1_000_000]), None).unwrap();
        let refused = w.admit(message(&[1_000_001, 1_600_001]), None).unwrap_err();
        assert_eq!(refused.reference_ms, 1_000_000);
        assert_eq!(refused.reference, ClockReference::Fleet);
        assert_eq!(w.max_valid_ms(), Some(1_000_000));
        // Exactly at the bound is accepted.
        assert!(w.admit(message(&[1_600_000]), None).is_ok());
    }

    #[test]
    fn a_message_ahead_of_its_arrival_is_refused_whatever_the_fleet_says() {
        let mut w = Watermarker::new(EventTimeConfig::default());
        let refused = w
            .admit(message(&[4_102_444_800_000]), Some(1_704_067_200_000))
            .unwrap_err();
        assert_eq!(refused.reference, ClockReference::Arrival);
        assert_eq!(w.max_valid_ms(), None);
        assert!(w.admit(message(&[1_000]), Some(1_000)).is_ok());
    }

    #[test]
    fn a_device_ahead_of_the_quorum_moves_the_watermark_at_most_the_lead() {
        let config = EventTimeConfig::default();
        let mut w = Watermarker::new(config);
        for d in ["a", "b", "c"] {
            w.admit(message_from(d, &[1_000_000]), None).unwrap();
        }
        assert_eq!(w.watermark_ms(), 970_000);
        // Two devices 5 minutes ahead: within the skew, so admitted, but not corroborated.
        w.admit(message_from("x", &[1_300_000]), None).unwrap();
        w.admit(message_from("y", &[1_300_000]), None).unwrap();
        assert_eq!(w.max_valid_ms(), Some(1_300_000));
        assert_eq!(w.fleet_ms(), Some(1_000_000));
        assert_eq!(w.watermark_ms(), 1_000_000 + 5_000 - 30_000);
        // Nor can they creep: the guard is judged from the fleet time.
        assert!(w.admit(message_from("x", &[1_600_001]), None).is_err());
        // A third device there makes it the fleet's time.
        w.admit(message_from("z", &[1_300_000]), None).unwrap();
        assert_eq!(w.watermark_ms(), 1_270_000);
    }

    #[test]
    fn a_raised_floor_lifts_stamps_but_not_the_skew_guard() {
        let mut w = Watermarker::new(EventTimeConfig::default());
        w.raise_to(5_000);
        assert_eq!(w.watermark_ms(), 5_000);
        // Far ahead of the floor, but no real reading has set the guard yet.
        let m = w.admit(message(&[1_000_000]), None).unwrap();
        assert_eq!(m.watermark_ms, 5_000);
        assert_eq!(w.watermark_ms(), 970_000);
        w.raise_to(2_000_000);
        let m = w.admit(message(&[1_500_000]), None).unwrap();
        assert_eq!(m.watermark_ms, 2_000_000);
        assert_eq!(w.max_valid_ms(), Some(1_500_000));
    }

    #[test]
    fn leaders_are_the_latest_distinct_devices() {
        // Against the plain computation: each device's latest time, sorted, the first q.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for q in 1..=MAX_CLOCK_QUORUM {
            let mut clock = PartitionClock::default();
            let mut latest = std::collections::HashMap::new();
            for _ in 0..2_000 {
                let device = next() % 12;
                let ts = next() % 10_000;
                clock.observe(device, ts, q);
                let l = latest.entry(device).or_insert(ts);
                *l = (*l).max(ts);
                let mut want: Vec<u64> = latest.values().copied().collect();
                want.sort_unstable_by(|a, b| b.cmp(a));
                want.truncate(q);
                let got: Vec<u64> = clock.leaders().iter().map(|l| l.ts_ms).collect();
                assert_eq!(got, want, "quorum {q}");
                assert_eq!(clock.fleet_ms(q), want.last().copied());
            }
        }
    }

    #[test]
    fn the_hold_reference_ignores_a_minority_of_clocks_ahead() {
        let config = quorum(3);
        let mut hold = ClockHold::default();
        assert!(!hold.vote("poisoned", 4_102_444_800_000, config));
        assert!(!hold.vote("also-ahead", 4_102_444_800_000, config));
        assert!(hold.vote("sane", 1_704_067_200_000, config));
        assert_eq!(hold.take_reference(config), Some(1_704_067_200_000));
        assert!(hold.is_empty());
        // One device: its median stamp, not its first.
        let mut hold = ClockHold::default();
        hold.vote("one", 4_102_444_800_000, config);
        for ts in [1_000, 2_000, 3_000] {
            hold.vote("one", ts, config);
        }
        assert_eq!(hold.take_reference(config), Some(2_000));
    }

    #[test]
    fn the_hold_releases_at_its_bound_with_fewer_devices() {
        let config = quorum(3);
        let mut hold = ClockHold::default();
        let released = (0..HOLD_MAX_MESSAGES).map(|i| hold.vote("one", i as u64, config));
        assert_eq!(released.filter(|r| *r).count(), 1);
    }

    #[test]
    fn a_stamp_far_behind_the_fleet_is_noticed() {
        let mut w = Watermarker::new(EventTimeConfig::default());
        assert_eq!(w.behind(0), None);
        w.admit(message(&[10_000_000]), None).unwrap();
        assert_eq!(w.behind(9_400_000), None);
        assert_eq!(w.behind(9_399_999), Some(10_000_000));
    }

    #[test]
    fn quorum_outside_its_range_names_the_field() {
        let error = quorum(0).validate().unwrap_err();
        assert_eq!(error.field, "clock_quorum");
        assert!(quorum(9).validate().is_err());
        assert!(quorum(8).validate().is_ok());
    }
}
