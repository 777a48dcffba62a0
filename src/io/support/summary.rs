//! The counts a run reports.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::dataflow::alert::{AlertEvent, AlertEventKind};
use crate::dataflow::anomaly::{AnomalyKind, AnomalyScore};
use crate::dataflow::model::{DeadLetterReason, IngestCounts};

/// What a run saw and produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Messages, readings and out-of-range readings at the source.
    pub ingest: IngestCounts,
    /// Dead letters by reason.
    pub dead_letters: BTreeMap<DeadLetterReason, u64>,
    /// Late readings.
    pub late: u64,
    /// Device windows closed.
    pub windows: u64,
    /// Site rollups closed.
    pub site_rollups: u64,
    /// Readings aggregated into windows.
    pub aggregated_readings: u64,
    /// Aggregated readings outside registry thresholds.
    pub threshold_breaches: u64,
    /// Anomalies by kind.
    pub anomalies: BTreeMap<AnomalyKind, u64>,
    /// Alert events by kind.
    pub alert_events: BTreeMap<AlertEventKind, u64>,
    /// Points InfluxDB accepted (none without InfluxDB).
    #[serde(default)]
    pub influx_points: u64,
    /// Wall-clock seconds of the run.
    pub elapsed_s: f64,
}

impl RunSummary {
    /// Dead letters over all reasons.
    pub fn dead_letter_total(&self) -> u64 {
        self.dead_letters.values().sum()
    }

    /// Counts anomalies (scores of kind none are not anomalies).
    pub fn count_anomalies(&mut self, scores: &[AnomalyScore]) {
        for s in scores.iter().filter(|s| s.kind != AnomalyKind::None) {
            *self.anomalies.entry(s.kind).or_default() += 1;
        }
    }

    /// Counts alert events.
    pub fn count_alert_events(&mut self, events: &[AlertEvent]) {
        for e in events {
            *self.alert_events.entry(e.event).or_default() += 1;
        }
    }

    /// Messages neither admitted nor a dead letter (0 unless something is lost), and readings
    /// neither aggregated, late nor out of range (0 likewise). Dead letters of outputs
    /// (`store_rejected`, `sink_rejected`) are not messages and do not count.
    pub fn unaccounted(&self) -> (i64, i64) {
        let input_dead: u64 = self
            .dead_letters
            .iter()
            .filter(|(reason, _)| {
                !matches!(
                    reason,
                    DeadLetterReason::StoreRejected | DeadLetterReason::SinkRejected
                )
            })
            .map(|(_, n)| n)
            .sum();
        let ingest = &self.ingest;
        let messages = ingest.messages as i64 - ingest.admitted as i64 - input_dead as i64;
        let readings = ingest.readings as i64
            - self.aggregated_readings as i64
            - self.late as i64
            - ingest.out_of_range as i64;
        (messages, readings)
    }

    /// Anomalies over all kinds.
    pub fn anomaly_total(&self) -> u64 {
        self.anomalies.values().sum()
    }

    /// Messages per second of wall-clock time.
    pub fn messages_per_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.ingest.messages as f64 / self.elapsed_s
        } else {
            0.0
        }
    }
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "messages          {}", self.ingest.messages)?;
        writeln!(f, "readings          {}", self.ingest.readings)?;
        writeln!(f, "  aggregated      {}", self.aggregated_readings)?;
        writeln!(f, "  late            {}", self.late)?;
        writeln!(f, "  out of range    {}", self.ingest.out_of_range)?;
        writeln!(f, "  over threshold  {}", self.threshold_breaches)?;
        writeln!(f, "dead letters      {}", self.dead_letter_total())?;
        for (reason, count) in &self.dead_letters {
            writeln!(f, "  {:<20}{count}", reason.code())?;
        }
        writeln!(
            f,
            "clock faults      {} ahead, {} behind",
            self.ingest.clock_ahead, self.ingest.clock_behind
        )?;
        let (messages, readings) = self.unaccounted();
        writeln!(
            f,
            "unaccounted       {messages} messages, {readings} readings"
        )?;
        writeln!(f, "windows           {}", self.windows)?;
        writeln!(f, "site rollups      {}", self.site_rollups)?;
        writeln!(f, "anomalies         {}", self.anomaly_total())?;
        for (kind, count) in &self.anomalies {
            writeln!(f, "  {:<20}{count}", kind.code())?;
        }
        writeln!(
            f,
            "alert events      {}",
            self.alert_events.values().sum::<u64>()
        )?;
        for (kind, count) in &self.alert_events {
            writeln!(f, "  {:<20}{count}", kind.code())?;
        }
        if self.influx_points > 0 {
            writeln!(f, "influxdb points   {}", self.influx_points)?;
        }
        writeln!(f, "elapsed           {:.3} s", self.elapsed_s)?;
        write!(
            f,
            "throughput        {:.0} messages/s",
            self.messages_per_s()
        )
    }
}
