//! Scores a replay's alerts against a workload manifest's injected faults (the detection table
//! of docs/benchmarks.md).
//!
//! ```text
//! cargo run --release --example detection -- EVENTS.manifest.json OUT/alerts.jsonl
//! ```

use std::path::Path;

#[path = "../tests/common/detection.rs"]
mod detection;

use detection::{evaluate, read_alerts, read_manifest};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [manifest, alerts] = args.as_slice() else {
        return Err("usage: detection MANIFEST.json ALERTS.jsonl".into());
    };
    let (faults, devices, span_ms) = read_manifest(Path::new(manifest))?;
    let alerts = read_alerts(Path::new(alerts))?;
    // Alerted within 2 minutes; an alert up to the clear time after a fault ends is its tail.
    let report = evaluate(&faults, &alerts, devices, span_ms, 120_000, 300_000);
    print!("{}", report.table());
    Ok(())
}
