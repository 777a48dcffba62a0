//! Detection floor: on a simulated fleet with injected spikes, level shifts, stuck values and
//! silences, alerts must catch the faults soon after they start and stay quiet on healthy
//! devices. (docs/benchmarks.md has the full table on the workload's 10,000-device file.)

mod common;
// Shared with examples/detection.rs, which reads manifests as well.
#[allow(dead_code)]
#[path = "common/detection.rs"]
mod detection;

use std::sync::Arc;

use detection::{InjectedFault, evaluate, read_alerts};
use iotpipe::commands::replay::{ReplayJob, replay};
use iotpipe::dataflow::PipelineConfig;
use iotpipe::dataflow::schema::SchemaSet;
use iotpipe::io::sources::fleet::{Fleet, FleetConfig};
use iotpipe::io::support::cluster::ClusterConfig;
use iotpipe::io::support::schema_files::load_registry;

const DEVICES: usize = 400;
const SECONDS: u64 = 1_200;

#[test]
fn alerts_catch_injected_faults_within_two_minutes_without_false_alarms() {
    let dir = tempfile::tempdir().unwrap();
    let config = FleetConfig {
        devices: DEVICES,
        start_ms: common::START_MS,
        fault_share: 0.1,
        fault_start_ms: (240_000, 720_000),
        fault_duration_ms: (60_000, 300_000),
        ..FleetConfig::default()
    };
    let mut fleet = Fleet::new(config);
    let mut lines = Vec::new();
    fleet.advance_to(common::START_MS + SECONDS * 1000, &mut lines);
    let events = dir.path().join("events.jsonl");
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    std::fs::write(&events, text).unwrap();
    let registry = dir.path().join("registry.jsonl");
    std::fs::write(&registry, fleet.registry_lines().join("\n")).unwrap();
    let faults: Vec<InjectedFault> = fleet
        .faults()
        .into_iter()
        .map(|f| InjectedFault {
            device_id: f.device_id,
            kind: f.kind.code().to_string(),
            metric: f.metric.to_string(),
            start_ms: f.start_ms,
            end_ms: f.end_ms,
        })
        .collect();
    assert!(faults.len() >= 30, "too few faults: {}", faults.len());

    let schemas = SchemaSet::embedded();
    let out = dir.path().join("out");
    let job = ReplayJob {
        events,
        registry: Arc::new(load_registry(&registry, &schemas).unwrap()),
        alert_controls: Default::default(),
        out: out.clone(),
        schemas,
        pipeline: PipelineConfig::default(),
        chunk_bytes: 1 << 20,
        notifier: None,
        influx: None,
        stop: Default::default(),
    };
    let cluster = ClusterConfig {
        workers: 2,
        ..ClusterConfig::default()
    };
    replay(job, &cluster).unwrap();
    // Registry thresholds catch some faults too; the floor is the scorer's own.
    let alerts: Vec<_> = read_alerts(&out.join("alerts.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|a| a.cause != "threshold")
        .collect();
    let report = evaluate(&faults, &alerts, DEVICES, SECONDS * 1000, 120_000, 300_000);
    println!("{}", report.table());
    // Every kind of fault must be in the data, or its floor would pass unchecked.
    let kinds: Vec<&str> = report.by_kind.keys().map(|k| k.as_str()).collect();
    for kind in ["level_shift", "silence", "spike", "stuck"] {
        assert!(
            kinds.contains(&kind),
            "no {kind} injected: {}",
            report.table()
        );
    }
    for (kind, k) in &report.by_kind {
        assert!(k.injected > 0);
        assert!(k.share() >= 0.8, "{kind}: {}", report.table());
    }
    assert!(report.share() >= 0.9, "{}", report.table());
    assert!(report.false_alerts <= 1, "{}", report.table());
}
