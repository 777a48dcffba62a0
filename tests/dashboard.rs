//! The built-in dashboard of `iotpipe demo`, writing to a real InfluxDB 1.6, in headless
//! Chromium (Debian `chromium`): the page loads without console errors and shows charts read
//! back from InfluxDB and the open alerts, with real data. The screenshot is kept in
//! `target/test-artifacts/dashboard.png`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::influx::Influx;
use serde_json::Value;

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn api(port: u16, path: &str) -> Option<Value> {
    let (status, body) = common::http_get(port, path)?;
    assert_eq!(status, 200, "{path}: {body}");
    Some(serde_json::from_str(&body).unwrap())
}

/// Waits until `ready` holds for the page's data.
fn wait_for(port: u16, what: &str, ready: impl Fn() -> bool, demo: &mut Demo) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(demo.0.try_wait().unwrap().is_none(), "demo exited");
        assert!(Instant::now() < deadline, "dashboard on {port}: no {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn chromium(user_data: &Path, args: &[&str], url: &str) -> Output {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            // Long enough for the page's first round of requests and drawing.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", user_data.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs (scripts/test.sh installs the chromium package)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Charts in `html` that drew at least one window.
fn drawn_charts(html: &str) -> usize {
    html.split("data-points=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.parse::<u64>().ok())
        .filter(|points| *points > 0)
        .count()
}

#[test]
fn the_dashboard_shows_charts_from_influxdb_and_open_alerts_without_errors() {
    let influx = Influx::start();
    let dir = tempfile::tempdir().unwrap();
    // Alert on a single reading over its threshold, so alerts open within seconds.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/datasets/alert_rules.toml"
    ))
    .unwrap();
    let rule = "when.threshold = { min_breaches = 5, for_windows = 1 }";
    // The edit must find its rule: a renamed or retuned default would otherwise leave the test
    // waiting on the shipped rule and proving nothing about the edit.
    assert!(
        shipped.contains(rule),
        "the shipped rules no longer hold `{rule}`"
    );
    let rules = shipped.replace(
        rule,
        "when.threshold = { min_breaches = 1, for_windows = 1 }",
    );
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(&rules_path, rules).unwrap();
    let port = common::free_port();
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_iotpipe"))
            .args([
                "demo",
                "--devices",
                "300",
                "--rate",
                "2",
                "--duration",
                "120",
            ])
            .args(["--window-ms", "2000", "--lateness-ms", "500", "--plain"])
            // Faults from 10 s in, after the scorer's warm-up of three windows.
            .args([
                "--fault-share",
                "0.3",
                "--fault-start-s",
                "10",
                "--fault-spread-s",
                "10",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--influx-url", &influx.url(), "-w", "2"])
            .arg("--alert-rules")
            .arg(&rules_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(
        port,
        "closed windows",
        || api(port, "/api/overview").is_some_and(|o| o["windows"].as_u64() > Some(1_000)),
        &mut demo,
    );
    wait_for(
        port,
        "open alert",
        || api(port, "/api/alerts").is_some_and(|a| !a.as_array().unwrap().is_empty()),
        &mut demo,
    );
    // What the charts read: InfluxDB's answer to InfluxQL.
    let sites = api(port, "/api/sites").unwrap();
    let site = sites[0]["site"].as_str().unwrap();
    let metric = sites[0]["metrics"][0].as_str().unwrap();
    let series = api(port, &format!("/api/series?site={site}&metric={metric}")).unwrap();
    assert_eq!(series["source"], "influxdb");
    assert!(!series["points"].as_array().unwrap().is_empty(), "{series}");

    let url = format!("http://127.0.0.1:{port}/");
    let profile = dir.path().join("chromium");
    let output = chromium(&profile, &["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&output.stdout);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        dom.contains("data-errors=\"0\""),
        "errors on the page:\n{dom}"
    );
    for line in log.lines().filter(|l| l.contains("CONSOLE")) {
        assert!(
            !line.contains("Uncaught") && !line.contains("Error"),
            "console: {line}"
        );
    }
    // Site and device charts with drawn windows, and alert rows.
    let (site_part, device_part) = dom
        .split_once("id=\"device-charts\"")
        .expect("device charts");
    let device_part = device_part.split("Open alerts").next().unwrap();
    assert!(
        drawn_charts(site_part) >= 1,
        "no site chart with data:\n{dom}"
    );
    assert!(
        drawn_charts(device_part) >= 1,
        "no device chart with data:\n{dom}"
    );
    assert!(dom.contains("<polyline class=\"mean\""), "{dom}");
    assert!(dom.contains("<tr class=\"alert\">"), "no alert row:\n{dom}");
    assert!(dom.contains("charts from InfluxDB"), "{dom}");

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &profile,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,1600",
            "--hide-scrollbars",
        ],
        &url,
    );
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "screenshot"
    );
}
