//! Reference tests: the dataflow's outputs equal a plain batch computation of SPEC.md, for any
//! number of workers and processes.

mod common;

use std::path::Path;
use std::process::Command;

use iotpipe::dataflow::PipelineConfig;
use iotpipe::dataflow::schema::SchemaSet;
use iotpipe::io::support::schema_files::load_registry;

use common::reference::{Expected, compute};
use common::{Dataset, dead_letter_pairs, sorted_lines};

fn expected(data: &Dataset) -> Expected {
    let schemas = SchemaSet::embedded();
    let changes = load_registry(&data.registry, &schemas).unwrap();
    let expected = compute(&data.events, &changes, &schemas, PipelineConfig::default());
    // The data must exercise what the test claims to check.
    let reasons: std::collections::BTreeSet<&str> = expected
        .dead_letters
        .iter()
        .map(|(r, _)| r.as_str())
        .collect();
    for reason in [
        "invalid_json",
        "missing_device_id",
        "bad_timestamp",
        "wrong_value_type",
        "unknown_device",
        "future_timestamp",
    ] {
        assert!(
            reasons.contains(reason),
            "the dataset has no {reason} dead letters"
        );
    }
    assert!(
        expected.late.len() > 10,
        "the dataset has too few late readings"
    );
    assert!(expected.out_of_range > 0);
    assert!(
        expected
            .aggregates
            .iter()
            .any(|l| l.contains("\"site-moved\"")),
        "no window after the site move"
    );
    assert!(
        expected
            .aggregates
            .iter()
            .any(|l| l.contains("\"dev-000001\"") && !l.contains("site-moved")),
        "no window before the site move"
    );
    expected
}

fn assert_outputs_equal(out: &Path, expected: &Expected, what: &str) {
    let check = |file: &str, want: &Vec<String>| {
        let got = sorted_lines(&out.join(file));
        assert_eq!(got.len(), want.len(), "{what}: {file} line count");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g, w, "{what}: {file} differs");
        }
    };
    check("aggregates.jsonl", &expected.aggregates);
    check("site_rollups.jsonl", &expected.site_rollups);
    check("late.jsonl", &expected.late);
    assert_eq!(
        dead_letter_pairs(&out.join("dead_letters.jsonl")),
        expected.dead_letters,
        "{what}: dead letters"
    );
}

#[test]
fn dataflow_equals_batch_computation_for_1_2_and_4_workers() {
    let data = common::dataset(200, 420);
    let expected = expected(&data);
    let mut first_scores: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = None;
    for workers in [1, 2, 4] {
        let out = data.dir.path().join(format!("out-w{workers}"));
        let summary = common::replay_in_process(&data.events, &data.registry, workers, &out);
        assert_outputs_equal(&out, &expected, &format!("{workers} workers"));
        // Every reading's score, bit for bit, and the anomalies and alert events (ids
        // included), line for line, in file order.
        let scores = (
            std::fs::read(out.join("scores.jsonl")).unwrap(),
            std::fs::read(out.join("anomalies.jsonl")).unwrap(),
            std::fs::read(out.join("alerts.jsonl")).unwrap(),
        );
        assert!(scores.0.len() > 1_000_000, "too few scores");
        // Devices with several metrics are scored as a whole too, once warmed up.
        let device_level = String::from_utf8_lossy(&scores.0)
            .lines()
            .filter(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["metric"].is_null() && v["kind"] != "silence"
            })
            .count();
        assert!(
            device_level > 1_000,
            "too few device-level scores: {device_level}"
        );
        let alerts = String::from_utf8_lossy(&scores.2).lines().count();
        assert!(alerts >= 10, "too few alert events: {alerts}");
        match &first_scores {
            None => first_scores = Some(scores),
            Some(first) => assert!(first == &scores, "{workers} workers: scores differ"),
        }
        assert_eq!(summary.ingest.messages, expected.messages);
        assert_eq!(summary.ingest.out_of_range, expected.out_of_range);
        assert_eq!(summary.late as usize, expected.late.len());
        assert_eq!(summary.unaccounted(), (0, 0), "{summary}");
    }
}

#[test]
fn dataflow_equals_batch_computation_for_2_processes() {
    let data = common::dataset(120, 400);
    let expected = expected(&data);
    let hosts = data.dir.path().join("hosts.txt");
    common::write_hostfile(&hosts, 2);
    let out = data.dir.path().join("out-p2");
    let children: Vec<_> = (0..2)
        .map(|p| {
            Command::new(env!("CARGO_BIN_EXE_iotpipe"))
                .args(["replay", "--events"])
                .arg(&data.events)
                .arg("--registry")
                .arg(&data.registry)
                .arg("--out")
                .arg(&out)
                .args([
                    "--chunk-bytes",
                    "65536",
                    "-w",
                    "2",
                    "-n",
                    "2",
                    "-p",
                    &p.to_string(),
                    "-h",
                ])
                .arg(&hosts)
                .output_spawn()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_outputs_equal(&out, &expected, "2 processes x 2 workers");
}

/// Spawning with captured output.
trait OutputSpawn {
    fn output_spawn(&mut self) -> std::process::Child;
}

impl OutputSpawn for Command {
    fn output_spawn(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}
