//! The SKAB benchmark (`../shared/datasets/skab`) run through iotpipe with its shipped defaults:
//! F1, false alarm rate and missing alarm rate of rows 401 onward, as the benchmark's
//! leaderboard reports them (docs/benchmarks.md has the table).
//!
//! ```text
//! cargo run --release --example skab [-- SKAB_DATA_DIR]
//! cargo run --release --example skab -- --write-inputs OUT_DIR [SKAB_DATA_DIR]
//! ```
//!
//! `--write-inputs` only writes the experiments as one input file (`events.jsonl`, its
//! `events.jsonl.manifest.json` with `base_ms` and `end_ms`, and `registry.jsonl`), for the
//! scripts that run a file through Kafka (`DATA=OUT_DIR scripts/bench-rescale.sh`).

#[path = "../tests/common/skab.rs"]
mod skab;

use std::path::{Path, PathBuf};

fn main() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let write_to = (args.first().map(String::as_str) == Some("--write-inputs")).then(|| {
        args.remove(0);
        (!args.is_empty()).then(|| PathBuf::from(args.remove(0)))
    });
    let dir = match args.first() {
        Some(dir) => PathBuf::from(dir),
        None => skab::skab_dir().ok_or("no SKAB data: pass its data directory")?,
    };
    let experiments = skab::read_experiments(&dir)?;
    if let Some(out) = write_to {
        let out = out.ok_or("--write-inputs needs an output directory")?;
        return write_inputs(&experiments, &out);
    }
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    // A second argument: an anomaly configuration (TOML) to try instead of the shipped one.
    let mut pipeline = iotpipe::dataflow::PipelineConfig::default();
    if let Some(path) = args.get(1) {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
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

/// Writes the experiments as `events.jsonl` (with its manifest) and `registry.jsonl` in `out`.
fn write_inputs(experiments: &[skab::Experiment], out: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let (events, registry) = skab::write_inputs(experiments, out);
    let rename = |from: &Path, to: &str| {
        std::fs::rename(from, out.join(to)).map_err(|e| format!("{}: {e}", from.display()))
    };
    rename(&events, "events.jsonl")?;
    rename(&registry, "registry.jsonl")?;
    let times = || {
        experiments
            .iter()
            .flat_map(|e| e.rows.iter().map(|(ts_ms, _, _)| *ts_ms))
    };
    let (base_ms, end_ms) = (times().min().unwrap_or(0), times().max().unwrap_or(0));
    let manifest = out.join("events.jsonl.manifest.json");
    let text = format!("{{\"base_ms\":{base_ms},\"end_ms\":{end_ms}}}\n");
    std::fs::write(&manifest, text).map_err(|e| format!("{}: {e}", manifest.display()))?;
    println!(
        "{} experiments written to {}",
        experiments.len(),
        out.display()
    );
    Ok(())
}
