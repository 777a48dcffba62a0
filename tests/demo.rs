//! The main job: `iotpipe demo` runs a simulated fleet through the dataflow and reports.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn demo_runs_the_fleet_and_closes_its_windows_on_exit() {
    let output = Command::new(env!("CARGO_BIN_EXE_iotpipe"))
        .args([
            "demo",
            "--devices",
            "300",
            "--duration",
            "3",
            "--history-s",
            "0",
            "--plain",
            "-w",
            "2",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with("dashboard at http://127.0.0.1:"),
        "{stdout}"
    );
    // One status line a second while running.
    assert!(
        stdout.lines().filter(|l| l.starts_with("t=")).count() >= 2,
        "{stdout}"
    );
    let total = |label: &str| -> u64 {
        stdout
            .lines()
            .rev()
            .find(|l| l.starts_with(label))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{label}` in\n{stdout}"))
    };
    // 300 devices at 1 message/s for 3 s, less those still in flight (up to 2 s of delay).
    let messages = total("messages");
    assert!(
        (400..=1000).contains(&messages),
        "{messages} messages\n{stdout}"
    );
    // Shutting down closes every open window.
    assert!(total("windows") >= 300, "{stdout}");
    assert!(total("  aggregated") > 0, "{stdout}");
}

/// A newcomer does not wait: the demo starts with ten minutes of history, faults included, run
/// at full speed, so closed windows, anomalies and alerts are there within seconds.
#[test]
fn demo_starts_with_history_so_windows_and_alerts_show_at_once() {
    let started = std::time::Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_iotpipe"))
        .args([
            "demo",
            "--devices",
            "200",
            "--duration",
            "4",
            "--history-s",
            "600",
        ])
        .args([
            "--fault-share",
            "0.2",
            "--fault-start-s",
            "120",
            "--fault-spread-s",
            "120",
        ])
        .args(["--plain", "--no-dashboard"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let total = |label: &str| -> u64 {
        stdout
            .lines()
            .rev()
            .find(|l| l.starts_with(label))
            .and_then(|l| {
                l.split_whitespace()
                    .nth(if label == "alert events" { 2 } else { 1 })
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{label}` in\n{stdout}"))
    };
    // In 4 s, at least two minutes of the history went through (far more in a release
    // build), closing windows of every device.
    let messages = total("messages");
    assert!(messages >= 200 * 120, "{messages} messages\n{stdout}");
    assert!(total("windows") >= 200, "{stdout}");
    assert!(total("anomalies") > 0, "{stdout}");
    assert!(total("alert events") > 0, "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(60), "{stdout}");
}

#[test]
fn demo_serves_metrics_that_promtool_accepts_and_openmetrics_to_those_who_ask() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_iotpipe"))
        .args(["demo", "--devices", "100", "--duration", "6", "--plain"])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let port: u16 = first
        .trim_start_matches("dashboard at http://127.0.0.1:")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|_| panic!("{first}"));
    std::thread::sleep(Duration::from_secs(3));
    // Checked by promtool inside.
    let text = common::scrape_metrics(port);
    let messages: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("iotpipe_messages_admitted_total ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{text}"));
    assert!(messages > 0.0, "{text}");
    // A scraper that asks for OpenMetrics gets it, with its end marker.
    let openmetrics = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Accept: application/openmetrics-text;version=1.0.0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    assert!(
        openmetrics.contains("content-type: application/openmetrics-text")
            && openmetrics.contains("# TYPE iotpipe_messages_in counter")
            && openmetrics.contains("# EOF"),
        "{openmetrics}"
    );
    for _ in lines {}
    assert!(child.wait().unwrap().success());
}

#[test]
fn bad_arguments_get_one_clear_error_naming_the_flag() {
    // Rules that parse but name a metric the catalog does not have: the command resolves them
    // against its schemas, and the error still names the flag and the rule.
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rules]]\nname = \"gauge\"\nseverity = \"minor\"\n\
         when.anomaly = { min_score = 0.9 }\nmatch = { metrics = [\"no_such_metric\"] }\n",
    )
    .unwrap();
    let rules = rules.to_str().unwrap();
    for (args, flag) in [
        (vec!["demo", "--alert-rules", rules], "--alert-rules"),
        (
            vec![
                "replay",
                "--events",
                "/dev/null",
                "--registry",
                "/dev/null",
                "--out",
                "/tmp/x",
                "--alert-rules",
                rules,
            ],
            "rules.gauge: unknown metric `no_such_metric`",
        ),
        (vec!["demo", "--devices", "0"], "--devices"),
        (vec!["demo", "--window-ms", "0"], "--window-ms"),
        (vec!["demo", "-n", "2", "-p", "0"], "hostfile"),
        (vec!["demo", "-n", "2", "-p", "5"], "process"),
        (vec!["demo", "--listen", "localhost"], "--listen"),
        (vec!["demo", "--influx-url", "ftp://h:1"], "--influx-url"),
        (vec!["demo", "--fault-share", "2"], "--fault-share"),
        (vec!["demo", "--fault-share", "NaN"], "--fault-share"),
        (vec!["demo", "--rate", "NaN"], "--rate"),
        (vec!["demo", "--rate=-1"], "--rate"),
        (vec!["demo", "--duration=-1"], "--duration"),
        (vec!["demo", "--duration", "inf"], "--duration"),
        (vec!["demo", "--clock-quorum", "0"], "--clock-quorum"),
        (
            vec!["demo", "--max-message-bytes", "0"],
            "--max-message-bytes",
        ),
        (
            vec!["loadgen", "--to", "file:/tmp/x", "--rate", "NaN"],
            "--rate",
        ),
        (
            vec!["loadgen", "--to", "file:/tmp/x", "--duration=-5"],
            "--duration",
        ),
        (
            vec![
                "replay",
                "--events",
                "/nonexistent",
                "--registry",
                "/nonexistent",
                "--out",
                "/tmp/x",
            ],
            "--registry",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_iotpipe"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn a_worker_without_devices_does_not_hold_windows_back() {
    // One device, two workers: one worker simulates nothing. Windows must still close while the
    // demo runs, not only when it stops.
    let output = Command::new(env!("CARGO_BIN_EXE_iotpipe"))
        .args([
            "demo",
            "--devices",
            "1",
            "-w",
            "2",
            "--duration",
            "6",
            "--plain",
            "--no-dashboard",
        ])
        .args(["--window-ms", "1000", "--lateness-ms", "500"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let running_windows = stdout
        .lines()
        .filter(|l| l.starts_with("t="))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("windows="))
        })
        .filter_map(|n| n.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    assert!(
        running_windows > 0,
        "no window closed while running:\n{stdout}"
    );
}

/// The demo is a library function: run in this process from its config, with no terminal,
/// dashboard or server, it reads the fleet and closes every window on stop.
#[test]
fn the_demo_runs_in_process_and_closes_its_windows() {
    use iotpipe::commands::demo::{DemoConfig, run_demo};
    use iotpipe::io::support::cluster::ClusterConfig;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    let config: DemoConfig = toml::from_str("devices = 50\nduration_s = 2.0\n").unwrap();
    let config = DemoConfig {
        cluster: ClusterConfig {
            workers: 2,
            ..ClusterConfig::default()
        },
        ..config
    };
    let report = run_demo(config, Arc::new(AtomicBool::new(false))).unwrap();
    let totals = report.summary.expect("process 0 reports");
    // 50 devices at 1 message/s for 2 s, less those still in flight (up to 2 s of delay).
    assert!(totals.ingest.messages >= 20, "{totals}");
    assert!(
        totals.windows >= 50,
        "the open windows close on stop: {totals}"
    );
    assert_eq!(
        report.metrics.messages_in.get(),
        totals.ingest.messages,
        "metrics count what the view counts"
    );
    // A field that is not the demo's is refused, naming it.
    let error = toml::from_str::<DemoConfig>("devices = 5\nrate = 2.0\n").unwrap_err();
    assert!(error.to_string().contains("rate"), "{error}");
}

/// The demo writes to InfluxDB until it goes away; at its end the demo waits
/// `drain_timeout_ms` for InfluxDB to take the rest, then stops with one error saying how many
/// points were not written, instead of waiting forever.
#[test]
fn a_demo_whose_influxdb_is_gone_ends_after_the_drain_timeout_saying_what_is_unwritten() {
    let mut influx = common::influx::Influx::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("influx.toml");
    std::fs::write(
        &config,
        format!(
            "url = \"{}\"\ntimeout_ms = 500\ndrain_timeout_ms = 2000\n\
             backoff = {{ initial_ms = 50, max_ms = 200 }}\n",
            influx.url()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_iotpipe"))
        .args([
            "demo",
            "--devices",
            "200",
            "--duration",
            "6",
            "--history-s",
            "0",
        ])
        .args(["--plain", "--no-dashboard", "--influx-config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Readings arrive, then InfluxDB goes while the demo runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = influx.query("iotpipe", "SELECT count(*) FROM iotpipe_reading");
        if answer["results"][0]["series"][0]["values"][0][1]
            .as_u64()
            .unwrap_or(0)
            > 0
        {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the demo ended early");
        assert!(std::time::Instant::now() < deadline, "no readings arrived");
        std::thread::sleep(Duration::from_millis(100));
    }
    influx.kill();
    // The rest of its 6 s, then 2 s of waiting, and not much more.
    let (status, stderr) = common::wait_for_end(&mut child, Duration::from_secs(30));
    assert!(!status.success(), "{stderr}");
    let error = common::error_line(&stderr);
    assert!(
        error.contains("points were not written") && error.contains("influx.drain_timeout_ms"),
        "{error}"
    );
}
