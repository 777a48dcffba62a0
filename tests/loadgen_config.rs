//! `iotpipe loadgen` as a library call: a [`LoadgenConfig`] (from TOML, unknown fields
//! refused) and `run_loadgen`, with no binary in between.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use iotpipe::commands::loadgen::{LoadError, LoadgenConfig, Progress, run_loadgen};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_loadgen_config_from_toml_writes_exactly_its_plan_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sent.jsonl");
    let text = format!(
        "to = \"file:{}\"\ndevices = 25\nrate_per_s = 50.0\nduration_s = 20.0\nseed = 7\n\
         start_ms = 1704067200000\npaced = false\n",
        path.display()
    );
    let config: LoadgenConfig = toml::from_str(&text).unwrap();
    let progress = Arc::new(Progress::default());
    let report = runtime()
        .block_on(run_loadgen(
            &config,
            Arc::clone(&progress),
            Arc::new(AtomicBool::new(false)),
        ))
        .unwrap();

    // What the plan holds is what the file holds and what the report counts.
    let (plan, _) = config.resolve(|_| None, 0).unwrap();
    let mut planned = plan.messages();
    let mut messages = Vec::new();
    while planned.next_batch(&mut messages) {}
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(written.lines().eq(messages.iter().map(|m| m.line.as_str())));
    assert_eq!(report.sent, messages.len() as u64);
    assert_eq!(report.acknowledged, report.sent);
    assert_eq!(report.devices, 25);
    // 50 messages a second for 20 s, give or take the fleet's own faults and jitter.
    assert!((800..=1200).contains(&report.sent), "{}", report.sent);
}

#[test]
fn an_unusable_field_stops_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never.jsonl");
    let text = format!(
        "to = \"file:{}\"\n[mqtt]\nclients = 2\npassword_env = \"IOTPIPE_TEST_NEVER_SET\"\n",
        path.display()
    );
    let config: LoadgenConfig = toml::from_str(&text).unwrap();
    let error = runtime()
        .block_on(run_loadgen(
            &config,
            Arc::default(),
            Arc::new(AtomicBool::new(false)),
        ))
        .unwrap_err();
    let LoadError::Config(error) = error else {
        panic!("not a configuration error: {error}");
    };
    assert_eq!(error.field, "mqtt.password_env");
    assert!(error.message.contains("IOTPIPE_TEST_NEVER_SET"), "{error}");
    assert!(!path.exists(), "nothing is written");
}
