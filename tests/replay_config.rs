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
    let report = run_replay(config.clone(), Default::default()).unwrap();
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
    // Stopped before it starts: nothing is read, and the outputs are there, empty.
    let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let report = run_replay(config, stopped).unwrap();
    let summary = report.summary.expect("process 0 reports");
    assert_eq!(
        (summary.ingest.messages, summary.windows),
        (0, 0),
        "{summary}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("aggregates.jsonl")).unwrap(),
        ""
    );
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
    let error = run_replay(config, Default::default()).unwrap_err();
    assert!(matches!(error, ReplayError::Registry(_)), "{error}");
    assert!(
        error.to_string().starts_with("registry: /nonexistent"),
        "{error}"
    );
}

/// Stopped mid-file: what was read is finished whole (every message it read is accounted for,
/// every window it opened is written), and it read less than the file.
#[test]
fn a_replay_stopped_mid_file_finishes_what_it_read() {
    let data = common::dataset(200, 600);
    let out = data.dir.path().join("out");
    let text = format!(
        "events = {:?}\nregistry = {:?}\nout = {:?}\nchunk_bytes = 4096\n\n[cluster]\nworkers = 2\n",
        data.events.display().to_string(),
        data.registry.display().to_string(),
        out.display().to_string()
    );
    let config: ReplayConfig = toml::from_str(&text).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopper = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(500));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let report = run_replay(config, stop).unwrap();
    stopper.join().unwrap();
    let summary = report.summary.expect("process 0 reports");
    let lines = std::fs::read_to_string(&data.events)
        .unwrap()
        .lines()
        .count() as u64;
    assert!(summary.ingest.messages > 0, "{summary}");
    assert!(
        summary.ingest.messages < lines,
        "it read the whole file before the stop: {summary}"
    );
    assert_eq!(summary.unaccounted(), (0, 0), "{summary}");
    let windows = std::fs::read_to_string(out.join("aggregates.jsonl"))
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(summary.windows, windows);
}
