//! The files `replay` writes, and the summary it keeps while writing them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dataflow::alert::AlertEvent;
use crate::dataflow::anomaly::{AnomalyKind, AnomalyScore};
use crate::dataflow::model::{DeadLetter, IngestCounts, LateReading, SiteRollup, WindowAggregate};
use crate::dataflow::schema::MetricCatalog;
use crate::io::sinks::files::jsonl;
use crate::io::sinks::notify::Notification;
use crate::io::support::summary::RunSummary;

/// The output directory's files.
pub struct ReplayFiles {
    catalog: Arc<MetricCatalog>,
    aggregates: BufWriter<File>,
    site_rollups: BufWriter<File>,
    dead_letters: BufWriter<File>,
    late: BufWriter<File>,
    anomalies: BufWriter<File>,
    alerts: BufWriter<File>,
    /// Every score, when the run asked for them.
    scores: Option<BufWriter<File>>,
    /// Counts of what was written.
    pub summary: RunSummary,
    error: Option<std::io::Error>,
}

fn create(dir: &Path, name: &str) -> std::io::Result<BufWriter<File>> {
    Ok(BufWriter::with_capacity(
        1 << 20,
        File::create(dir.join(name))?,
    ))
}

impl ReplayFiles {
    /// Creates (or truncates) the output files in `dir`.
    pub fn create(
        dir: &Path,
        catalog: Arc<MetricCatalog>,
        all_scores: bool,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let scores_path = dir.join("scores.jsonl");
        if !all_scores && scores_path.exists() {
            // A stale file from an earlier run would pass for this run's.
            std::fs::remove_file(&scores_path)?;
        }
        Ok(Self {
            catalog,
            aggregates: create(dir, "aggregates.jsonl")?,
            site_rollups: create(dir, "site_rollups.jsonl")?,
            dead_letters: create(dir, "dead_letters.jsonl")?,
            late: create(dir, "late.jsonl")?,
            anomalies: create(dir, "anomalies.jsonl")?,
            alerts: create(dir, "alerts.jsonl")?,
            scores: all_scores
                .then(|| create(dir, "scores.jsonl"))
                .transpose()?,
            summary: RunSummary::default(),
            error: None,
        })
    }

    /// The paths written, for messages.
    pub fn names() -> [&'static str; 6] {
        [
            "aggregates.jsonl",
            "site_rollups.jsonl",
            "dead_letters.jsonl",
            "late.jsonl",
            "anomalies.jsonl",
            "alerts.jsonl",
        ]
    }

    /// Writes one time's lines sorted, so the file is the same for any number of workers.
    fn write_sorted(
        out: &mut BufWriter<File>,
        mut lines: Vec<String>,
        error: &mut Option<std::io::Error>,
    ) {
        lines.sort_unstable();
        Self::write_lines(out, lines, error);
    }

    fn write_lines(
        out: &mut BufWriter<File>,
        lines: Vec<String>,
        error: &mut Option<std::io::Error>,
    ) {
        for line in lines {
            if let Err(e) = out
                .write_all(line.as_bytes())
                .and_then(|_| out.write_all(b"\n"))
            {
                error.get_or_insert(e);
            }
        }
    }

    /// Writes closed windows.
    pub fn aggregates(&mut self, records: Vec<WindowAggregate>) {
        self.summary.windows += records.len() as u64;
        for a in &records {
            self.summary.aggregated_readings += a.count;
            self.summary.threshold_breaches += a.threshold_breaches;
        }
        let lines = records
            .iter()
            .map(|a| jsonl::aggregate_line(a, &self.catalog))
            .collect();
        Self::write_sorted(&mut self.aggregates, lines, &mut self.error);
    }

    /// Writes closed site rollups.
    pub fn site_rollups(&mut self, records: Vec<SiteRollup>) {
        self.summary.site_rollups += records.len() as u64;
        let lines = records
            .iter()
            .map(|r| jsonl::rollup_line(r, &self.catalog))
            .collect();
        Self::write_sorted(&mut self.site_rollups, lines, &mut self.error);
    }

    /// Writes dead letters.
    pub fn dead_letters(&mut self, records: Vec<DeadLetter>) {
        for d in &records {
            *self.summary.dead_letters.entry(d.reason).or_default() += 1;
        }
        let lines = records.iter().map(jsonl::dead_letter_line).collect();
        Self::write_sorted(&mut self.dead_letters, lines, &mut self.error);
    }

    /// Writes late readings.
    pub fn late(&mut self, records: Vec<LateReading>) {
        self.summary.late += records.len() as u64;
        let lines = records
            .iter()
            .map(|l| jsonl::late_line(l, &self.catalog))
            .collect();
        Self::write_sorted(&mut self.late, lines, &mut self.error);
    }

    /// Writes anomalies (and every score, when asked for).
    pub fn anomalies(&mut self, records: Vec<AnomalyScore>) {
        self.summary.count_anomalies(&records);
        if let Some(scores) = &mut self.scores {
            let lines = records
                .iter()
                .map(|a| jsonl::anomaly_line(a, &self.catalog))
                .collect();
            Self::write_sorted(scores, lines, &mut self.error);
        }
        let lines = records
            .iter()
            .filter(|a| a.kind != AnomalyKind::None)
            .map(|a| jsonl::anomaly_line(a, &self.catalog))
            .collect();
        Self::write_sorted(&mut self.anomalies, lines, &mut self.error);
    }

    /// Writes alert events.
    pub fn alerts(&mut self, records: Vec<AlertEvent>) {
        self.summary.count_alert_events(&records);
        // In the order notification channels send them (each alert's events as they happened).
        let lines = Notification::for_events(&records, &self.catalog)
            .into_iter()
            .map(|n| n.json)
            .collect();
        Self::write_lines(&mut self.alerts, lines, &mut self.error);
    }

    /// Adds ingest counts.
    pub fn counts(&mut self, records: Vec<IngestCounts>) {
        for c in &records {
            self.summary.ingest.merge(c);
        }
    }

    /// Flushes everything; the first write error, if any, is returned.
    pub fn finish(mut self) -> Result<RunSummary, (PathBuf, std::io::Error)> {
        for out in [
            &mut self.aggregates,
            &mut self.site_rollups,
            &mut self.dead_letters,
            &mut self.late,
            &mut self.anomalies,
            &mut self.alerts,
        ]
        .into_iter()
        .chain(self.scores.as_mut())
        {
            if let Err(e) = out.flush() {
                self.error.get_or_insert(e);
            }
        }
        match self.error {
            Some(e) => Err((PathBuf::from("output directory"), e)),
            None => Ok(self.summary),
        }
    }
}
