//! The files `replay` writes, and the summary it keeps while writing them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dataflow::model::{DeadLetter, IngestCounts, LateReading, SiteRollup, WindowAggregate};
use crate::dataflow::schema::MetricCatalog;
use crate::io::jsonl;
use crate::io::summary::RunSummary;

/// The output directory's files.
pub struct ReplayFiles {
    catalog: Arc<MetricCatalog>,
    aggregates: BufWriter<File>,
    site_rollups: BufWriter<File>,
    dead_letters: BufWriter<File>,
    late: BufWriter<File>,
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
    pub fn create(dir: &Path, catalog: Arc<MetricCatalog>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            catalog,
            aggregates: create(dir, "aggregates.jsonl")?,
            site_rollups: create(dir, "site_rollups.jsonl")?,
            dead_letters: create(dir, "dead_letters.jsonl")?,
            late: create(dir, "late.jsonl")?,
            summary: RunSummary::default(),
            error: None,
        })
    }

    /// The paths written, for messages.
    pub fn names() -> [&'static str; 4] {
        [
            "aggregates.jsonl",
            "site_rollups.jsonl",
            "dead_letters.jsonl",
            "late.jsonl",
        ]
    }

    /// Writes one time's lines sorted, so the file is the same for any number of workers.
    fn write_sorted(
        out: &mut BufWriter<File>,
        mut lines: Vec<String>,
        error: &mut Option<std::io::Error>,
    ) {
        lines.sort_unstable();
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
        ] {
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
