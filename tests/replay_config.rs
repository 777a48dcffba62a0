//! `iotpipe replay` as a library call: a [`ReplayConfig`] (from TOML, unknown fields refused)
//! and `run_replay`, with no binary in between.

mod common;

use iotpipe::commands::replay::{ReplayConfig, ReplayError, run_replay};

#[test]
fn a_replay_config_from_toml_runs_and_reports() {
    let data = common::dataset(40, 180);
    let out = data.dir.path().join("out");
    let text = format!(
        "events = {:?}\nregistry = {:?}\nout = {:?}\nchunk_bytes = 65536\n\n[cluster]\nworkers = 2\n",
        data.events.display().to_string(),
        data.registry.display().to_string(),
        out.display().to_string()
    );
    let config: ReplayConfig = toml::from_str(&text).unwrap();
    let report = run_replay(config).unwrap();
    let summary = report.summary.expect("process 0 reports");
    let lines = std::fs::read_to_string(&data.events)
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(summary.ingest.messages, lines);
    assert_eq!(summary.unaccounted(), (0, 0));
    let windows = std::fs::read_to_string(out.join("aggregates.jsonl"))
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(summary.windows, windows);
    assert!(report.channels.is_empty());
}

#[test]
fn a_replay_config_names_what_is_wrong() {
    let error = toml::from_str::<ReplayConfig>(
        "events = \"e\"\nregistry = \"r\"\nout = \"o\"\nchunk_size = 1\n",
    )
    .unwrap_err();
    assert!(error.to_string().contains("chunk_size"), "{error}");
    let config: ReplayConfig =
        toml::from_str("events = \"e\"\nregistry = \"/nonexistent\"\nout = \"o\"\n").unwrap();
    let error = run_replay(config).unwrap_err();
    assert!(matches!(error, ReplayError::Registry(_)), "{error}");
    assert!(
        error.to_string().starts_with("registry: /nonexistent"),
        "{error}"
    );
}
