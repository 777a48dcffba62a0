//! The SKAB benchmark (`../shared/datasets/skab`) run through iotpipe with its shipped defaults:
//! F1, false alarm rate and missing alarm rate of rows 401 onward, as the benchmark's
//! leaderboard reports them (docs/benchmarks.md has the table).
//!
//! ```text
//! cargo run --release --example skab [-- SKAB_DATA_DIR]
//! ```

#[path = "../tests/common/skab.rs"]
mod skab;

use std::path::PathBuf;

fn main() -> Result<(), String> {
    let dir = match std::env::args().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => skab::skab_dir().ok_or("no SKAB data: pass its data directory")?,
    };
    let experiments = skab::read_experiments(&dir)?;
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    // A second argument: an anomaly configuration (TOML) to try instead of the shipped one.
    let mut pipeline = iotpipe::dataflow::PipelineConfig::default();
    if let Some(path) = std::env::args().nth(2) {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        pipeline.anomaly = toml::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    }
    let figures = skab::run_protocol(&experiments, work.path(), pipeline)?;
    if std::env::var_os("SKAB_DETAIL").is_some() {
        for (name, false_alarms, missed) in &figures.by_experiment {
            println!("{name:<12} false alarms {false_alarms:>4} rows, missed {missed:>4} rows");
        }
    }
    println!(
        "SKAB, {} experiments, {} rows scored: F1 {:.3}, FAR {:.1}%, MAR {:.1}%",
        experiments.len(),
        figures.rows,
        figures.f1,
        figures.far * 100.0,
        figures.mar * 100.0
    );
    println!(
        "alerts (machine-decoupled): opened during the anomaly in {} of {} experiments, {} \
         opened away from it",
        figures.alerted,
        experiments.len(),
        figures.false_alerts
    );
    Ok(())
}
