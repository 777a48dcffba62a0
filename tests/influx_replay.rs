//! `iotpipe replay --influx-url` against a real InfluxDB 1.6 (Debian `influxdb`): what InfluxDB
//! holds afterwards, read back with InfluxQL, is what the output files say; a second replay
//! leaves the same points; InfluxDB stopped for 30 s mid-replay loses nothing; a replay stopped
//! while InfluxDB is gone ends after `drain_timeout_ms`, saying what it did not write; and the
//! Grafana dashboard's queries answer over the same measurements.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::influx::{Influx, Windows, windows_of_lines};
use common::{Dataset, START_MS};
use serde_json::Value;

const DEVICES: usize = 200;
const SECONDS: u64 = 420;

/// Time bounds of every query: InfluxDB scans only what they cover.
fn span() -> String {
    format!(
        "time >= {}ms AND time < {}ms",
        START_MS - 3_600_000,
        START_MS + 3_600_000
    )
}

fn replay_command(data: &Dataset, out: &Path, influx_args: &[&str]) -> Command {
    let mut command = common::replay_command(data, out);
    command.args(influx_args);
    command
}

fn replay(data: &Dataset, out: &Path, influx: &Influx) -> String {
    common::succeed(&mut replay_command(
        data,
        out,
        &["--influx-url", &influx.url()],
    ))
}

fn windows_in_file(out: &Path) -> Windows {
    windows_of_lines(&common::sorted_lines(&out.join("aggregates.jsonl")))
}

/// One number from a query of one row (`None` when no series answers).
fn number(influx: &Influx, q: &str) -> Option<u64> {
    let answer = influx.query("iotpipe", q);
    answer["results"][0]["series"][0]["values"][0][1].as_u64()
}

fn line_count(path: &Path) -> u64 {
    std::fs::read_to_string(path).unwrap().lines().count() as u64
}

/// Aggregates, rollups, readings and alert events in InfluxDB match the replay's files.
fn assert_influx_holds_the_outputs(influx: &Influx, out: &Path) {
    let expected = windows_in_file(out);
    assert!(
        expected.len() > 1_000,
        "too few windows: {}",
        expected.len()
    );
    let stored = influx.windows(&span());
    assert_eq!(stored.len(), expected.len(), "aggregate points");
    for (key, want) in &expected {
        assert_eq!(stored.get(key), Some(want), "window {key:?}");
    }
    let rollups = number(
        influx,
        &format!(
            "SELECT count(\"count\") FROM iotpipe_site_rollup WHERE {}",
            span()
        ),
    );
    assert_eq!(rollups, Some(line_count(&out.join("site_rollups.jsonl"))));
    let alerts = number(
        influx,
        &format!("SELECT count(alert_id) FROM iotpipe_alert WHERE {}", span()),
    );
    assert_eq!(
        alerts.unwrap_or(0),
        line_count(&out.join("alerts.jsonl")),
        "alert events"
    );
    // Every aggregated reading is a field of a reading point.
    let aggregated: u64 = expected.values().map(|w| w.0).sum();
    let answer = influx.query(
        "iotpipe",
        &format!("SELECT count(*) FROM iotpipe_reading WHERE {}", span()),
    );
    let row = answer["results"][0]["series"][0]["values"][0]
        .as_array()
        .unwrap();
    let readings: u64 = row[1..].iter().filter_map(Value::as_u64).sum();
    assert_eq!(readings, aggregated, "reading fields");
}

#[test]
fn a_replay_lands_in_influxdb_as_its_files_say_and_a_second_leaves_the_same_points() {
    let data = common::dataset(DEVICES, SECONDS);
    let influx = Influx::start();
    let out = data.dir.path().join("out");
    let stdout = replay(&data, &out, &influx);
    assert!(stdout.contains("influxdb points"), "{stdout}");
    assert_influx_holds_the_outputs(&influx, &out);
    let series = influx.query("iotpipe", "SHOW SERIES CARDINALITY");
    replay(&data, &out, &influx);
    assert_influx_holds_the_outputs(&influx, &out);
    assert_eq!(
        influx.query("iotpipe", "SHOW SERIES CARDINALITY"),
        series,
        "a second replay made new series"
    );
    grafana_queries_answer(&influx, &out);
}

/// Every panel query of `deploy/grafana` runs against what a replay wrote, and answers.
fn grafana_queries_answer(influx: &Influx, out: &Path) {
    // The dashboard's variables: a device of the replay, its site and a metric it has.
    let first = &common::sorted_lines(&out.join("aggregates.jsonl"))[0];
    let first: Value = serde_json::from_str(first).unwrap();
    let dashboard: Value =
        serde_json::from_str(include_str!("../deploy/grafana/dashboards/iotpipe.json")).unwrap();
    let mut queries = 0;
    // The InfluxDB panels (the metadata store's are checked in tests/registry_store.rs).
    let influx_panels = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|panel| panel["datasource"]["type"] == "influxdb");
    for panel in influx_panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let q = target["query"].as_str().unwrap();
            // Grafana's macros, for a range over the data and a 1-minute interval.
            let q = q
                .replace("$timeFilter", &span())
                .replace("$__interval", "1m")
                .replace("$site", first["site"].as_str().unwrap())
                .replace("$device", first["device_id"].as_str().unwrap())
                .replace("$metric", first["metric"].as_str().unwrap());
            let answer = influx.query("iotpipe", &q);
            assert!(
                answer["results"][0]["series"][0]["values"]
                    .as_array()
                    .is_some_and(|v| !v.is_empty()),
                "panel {:?}: {q} answered {answer}",
                panel["title"]
            );
            queries += 1;
        }
    }
    assert!(queries >= 6, "only {queries} queries");
}

/// An `--influx-config` file for `influx` with small batches, one request at a time and a short
/// queue, so a replay of `data` is mid-way when InfluxDB stops; `settings` adds fields.
fn small_batches_config(data: &Dataset, influx: &Influx, settings: &str) -> std::path::PathBuf {
    let config = data.dir.path().join("influx.toml");
    let text = format!(
        "url = \"{}\"\nbatch_points = 200\nmax_in_flight = 1\nqueue_batches = 2\n{settings}\n",
        influx.url()
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn wait_for_points(influx: &Influx, at_least: u64, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = format!(
            "SELECT count(\"count\") FROM iotpipe_aggregate WHERE {}",
            span()
        );
        if number(influx, &q).unwrap_or(0) >= at_least {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "replay ended early");
        assert!(Instant::now() < deadline, "no points arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn influxdb_stopped_for_30_s_mid_replay_loses_nothing() {
    let data = common::dataset(DEVICES, SECONDS);
    let mut influx = Influx::start();
    let out = data.dir.path().join("out");
    // A short backoff: it notices InfluxDB is back within a second.
    let config = small_batches_config(
        &data,
        &influx,
        "timeout_ms = 2000\nbackoff = { initial_ms = 100, max_ms = 1000 }",
    );
    let mut child = replay_command(&data, &out, &["--influx-config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_points(&influx, 100, &mut child);
    influx.kill();
    std::thread::sleep(Duration::from_secs(30));
    // Held back by InfluxDB, not finished without it.
    assert!(
        child.try_wait().unwrap().is_none(),
        "the replay finished while InfluxDB was down"
    );
    influx.run();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_influx_holds_the_outputs(&influx, &out);
    assert!(
        !std::fs::read_to_string(out.join("dead_letters.jsonl"))
            .unwrap()
            .contains("store_rejected"),
        "an outage is not a refusal"
    );
}

#[test]
fn a_replay_stopped_while_influxdb_is_gone_ends_after_the_drain_timeout_saying_what_is_unwritten() {
    let data = common::dataset(DEVICES, SECONDS);
    let mut influx = Influx::start();
    let out = data.dir.path().join("out");
    let config = small_batches_config(
        &data,
        &influx,
        "timeout_ms = 500\ndrain_timeout_ms = 2000\nbackoff = { initial_ms = 50, max_ms = 200 }",
    );
    let mut child = replay_command(&data, &out, &["--influx-config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_points(&influx, 100, &mut child);
    influx.kill();
    // Longer than the drain timeout: running, an outage is waited out.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the replay ended while InfluxDB was down"
    );
    // Stopped (SIGTERM), it waits 2 s more for InfluxDB, then says what it did not write.
    assert!(common::send_signal(child.id(), "TERM"));
    let (status, stderr) = common::wait_for_end(&mut child, Duration::from_secs(30));
    assert!(!status.success(), "{stderr}");
    let error = common::error_line(&stderr);
    assert!(
        error.contains("points were not written") && error.contains("influx.drain_timeout_ms"),
        "{error}"
    );
}

#[test]
fn replay_writes_to_an_influxdb_that_speaks_https_only() {
    let influx = Influx::start_with_tls();
    let data = common::dataset(60, 240);
    let out = data.dir.path().join("out");
    let ca = influx.tls.as_ref().unwrap().join("ca.pem");
    let config = data.dir.path().join("influx.toml");
    std::fs::write(
        &config,
        format!(
            "url = \"https://127.0.0.1:{}\"\napi = \"v1\"\ntls = {{ ca_file = {:?} }}\n",
            influx.port,
            ca.display().to_string()
        ),
    )
    .unwrap();
    common::succeed(&mut replay_command(
        &data,
        &out,
        &["--influx-config", config.to_str().unwrap()],
    ));
    // Read back over https by another client (curl), trusting the same test CA.
    let answer = influx.query_over_tls(
        "iotpipe",
        &format!(
            "SELECT count(\"count\") FROM iotpipe_aggregate WHERE {}",
            span()
        ),
    );
    let stored = answer["results"][0]["series"][0]["values"][0][1].as_u64();
    let expected = windows_in_file(&out).len() as u64;
    assert!(expected > 100, "too few windows: {expected}");
    assert_eq!(stored, Some(expected), "{answer}");
    // Without the test CA, the system's roots do not trust the server: one error naming the
    // tls settings and exit 1, whether the writers or the version question meet it first.
    for api in ["api = \"v1\"\n", ""] {
        let url = format!("url = \"https://127.0.0.1:{}\"\n", influx.port);
        std::fs::write(&config, format!("{url}{api}")).unwrap();
        let output = replay_command(
            &data,
            &data.dir.path().join("out2"),
            &["--influx-config", config.to_str().unwrap()],
        )
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        let last = stderr.trim().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("iotpipe: ") && last.contains("influx.tls (ca_file"),
            "{api}: {stderr}"
        );
    }
}
