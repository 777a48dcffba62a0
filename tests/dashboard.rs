//! The built-in dashboard of `iotpipe demo`, writing to a real InfluxDB 1.6, in headless
//! Chromium (Debian `chromium`): the page loads without console errors and shows charts read
//! back from InfluxDB and the open alerts, with real data. The screenshot is kept in
//! `target/test-artifacts/dashboard.png`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::chromium::{dom_without_errors, drive, screenshot};
use common::influx::Influx;
use serde_json::{Value, json};

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
            // Real time from the start: the test is about InfluxDB's series of now.
            .args(["--history-s", "0"])
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
    let dom = dom_without_errors(&profile, &url);
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
    assert!(dom.contains("<tr class=\"alert\""), "no alert row:\n{dom}");
    assert!(dom.contains("charts from InfluxDB"), "{dom}");

    let png = screenshot(&profile, &url, "dashboard.png", (1280, 1600));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "screenshot"
    );
}

/// The `href`s of the links in the hierarchy list of a dumped page.
fn hierarchy_links(dom: &str, key: &str) -> Vec<String> {
    let list = dom
        .split_once("id=\"hierarchy\"")
        .and_then(|(_, rest)| rest.split_once("</ul>"))
        .map(|(list, _)| list)
        .unwrap_or_else(|| panic!("no hierarchy list:\n{dom}"));
    list.split(&format!("href=\"#{key}="))
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|id| format!("#{key}={id}"))
        .collect()
}

/// `iotpipe demo` of 40 devices on the store at `database_url`, with 2 s windows, its dashboard
/// on `port`; more arguments may follow.
fn demo_on_store(port: u16, database_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iotpipe"));
    command
        .args(["demo", "--devices", "40", "--rate", "1"])
        .args(["--window-ms", "2000", "--lateness-ms", "500", "--plain"])
        .args(["--listen", &format!("127.0.0.1:{port}"), "-w", "1"])
        .args(["--database-url", database_url])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// `iotpipe demo --database-url`: the fleet's registry goes into a real PostgreSQL 15 store,
/// and the page, in headless Chromium, drills down the store's hierarchy by its own links
/// (org, site, building, device) to a device's model, firmware, thresholds and change history,
/// including a change made in the store while the demo runs.
#[test]
fn the_dashboard_drills_down_the_hierarchy_of_the_metadata_store() {
    let postgres = common::postgres::Postgres::start();
    let database_url = postgres.create_database("demo");
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut demo = Demo(
        demo_on_store(port, &database_url)
            .args(["--duration", "120"])
            .spawn()
            .unwrap(),
    );
    wait_for(
        port,
        "hierarchy from the store",
        || {
            api(port, "/api/hierarchy")
                .is_some_and(|h| h["places"].as_array().is_some_and(|orgs| !orgs.is_empty()))
        },
        &mut demo,
    );
    let overview = api(port, "/api/overview").unwrap();
    assert_eq!(overview["metadata_store"], true, "{overview}");

    // Down the page's own links: org, site, building, then a device.
    let profile = dir.path().join("chromium");
    let base = format!("http://127.0.0.1:{port}/");
    let mut url = format!("{base}#top=");
    let mut levels = Vec::new();
    let device_link = loop {
        let dom = dom_without_errors(&profile, &url);
        assert!(
            !dom.contains("id=\"hierarchy-section\" hidden"),
            "hierarchy hidden:\n{dom}"
        );
        if let Some(device) = hierarchy_links(&dom, "device").first() {
            break device.clone();
        }
        let places = hierarchy_links(&dom, "place");
        assert!(
            !places.is_empty(),
            "a level with no place or device:\n{dom}"
        );
        levels.push(places[0].clone());
        assert!(
            levels.len() <= 4,
            "deeper than org, site, building: {levels:?}"
        );
        url = format!("{base}{}", places[0]);
    };
    assert_eq!(levels.len(), 3, "org, site, building: {levels:?}");
    let device_id = device_link.trim_start_matches("#device=").to_owned();

    // A change in the store while the demo runs: the device's firmware is upgraded.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let model_id = runtime.block_on(async {
        use iotpipe::io::connect::store::entities::Kind;
        use iotpipe::io::connect::store::write::Precondition;
        use iotpipe::io::connect::store::{Store, StoreConfig};
        let store = Store::open(&StoreConfig::url(database_url.clone()), |_| None)
            .await
            .unwrap();
        let current = store
            .get(Kind::Device, &device_id, None)
            .await
            .unwrap()
            .expect("the demo's device is in the store");
        let mut body = current.body.clone();
        body["firmware"] = "9.9.9".into();
        store
            .put(
                Kind::Device,
                &device_id,
                &body,
                current.effective_ms + 1,
                Precondition::None,
            )
            .await
            .unwrap();
        current.body["model_id"].as_str().unwrap().to_owned()
    });

    let dom = dom_without_errors(&profile, &format!("{base}{device_link}"));
    let fact = |name: &str| {
        dom.split_once(&format!("data-fact=\"{name}\">"))
            .and_then(|(_, rest)| rest.split_once('<'))
            .map(|(value, _)| value.to_owned())
            .unwrap_or_else(|| panic!("no {name} on the device page:\n{dom}"))
    };
    assert_eq!(fact("device"), device_id);
    assert_eq!(fact("firmware"), "9.9.9");
    assert!(
        fact("model").starts_with(&model_id),
        "model: {}",
        fact("model")
    );
    assert!(
        fact("thresholds").contains('…'),
        "thresholds: {}",
        fact("thresholds")
    );
    let place = fact("place");
    assert_eq!(
        place.split(" / ").count(),
        3,
        "org / site / building: {place}"
    );
    assert_eq!(
        dom.matches("<tr class=\"version\">").count(),
        2,
        "two versions in the history:\n{dom}"
    );
    // The breadcrumb names the device's building, the last level followed down.
    assert!(dom.contains("id=\"current-place\""), "{dom}");
    assert!(demo.0.try_wait().unwrap().is_none(), "demo exited");

    let url = format!("{base}{device_link}");
    let png = screenshot(&profile, &url, "dashboard-hierarchy.png", (1280, 1400));
    assert!(png.starts_with(b"\x89PNG"));
}

/// `iotpipe demo --database-url --action-token-env`: in headless Chromium, the page's own
/// buttons acknowledge one open alert and silence another (refused without the token, which
/// the page then takes); both show at once, the pipeline's own `acknowledged` event follows,
/// every alert event is recorded in the store, and the silence is expired from the page.
#[test]
fn the_dashboard_acknowledges_and_silences_open_alerts() {
    const TOKEN: &str = "dashboard-token-of-the-test";
    let postgres = common::postgres::Postgres::start();
    let database_url = postgres.create_database("actions");
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut demo = Demo(
        demo_on_store(port, &database_url)
            .args([
                "--duration",
                "180",
                "--fault-share",
                "0.5",
                "--history-s",
                "600",
            ])
            .args(["--action-token-env", "TEST_ACTION_TOKEN"])
            .env("TEST_ACTION_TOKEN", TOKEN)
            .spawn()
            .unwrap(),
    );
    let device_alerts = || {
        api(port, "/api/alerts")
            .and_then(|a| a.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["device_id"].is_string())
            .collect::<Vec<Value>>()
    };
    wait_for(
        port,
        "two open device alerts",
        || device_alerts().len() >= 2,
        &mut demo,
    );
    wait_for(
        port,
        "the store",
        || api(port, "/api/overview").is_some_and(|o| o["metadata_store"] == true),
        &mut demo,
    );

    let profile = dir.path().join("chromium");
    let url = format!("http://127.0.0.1:{port}/");
    let rows = "document.querySelectorAll('#alert-table tr.alert')";
    let click = |row: usize, button: &str| {
        format!(
            "(() => {{ const row = {rows}[{row}]; row.querySelector('button.{button}').click(); \
             return row.dataset.alert; }})()"
        )
    };
    let set = |id: &str, value: &str| {
        format!(
            "(() => {{ const input = document.getElementById('{id}'); input.value = '{value}'; \
             input.dispatchEvent(new Event('change')); return true; }})()"
        )
    };
    let state_of = |alert: &str| {
        format!(
            "[...{rows}].filter((r) => r.dataset.alert === {alert:?}).map((r) => \
             r.querySelector('td.state').textContent).join('')"
        )
    };
    // Without the token: refused, and the page says why. With it: done.
    let first = drive(
        &profile,
        &url,
        &[
            json!({"wait": format!("{rows}.length >= 2 && {rows}[0].querySelector('button.ack') !== null")}),
            json!({"eval": set("action-name", "ana")}),
            json!({"eval": click(0, "ack")}),
            json!({"wait": "document.getElementById('action-status').textContent"}),
        ],
    );
    assert!(
        first[3].as_str().unwrap().contains("token"),
        "refused without a token: {first:?}"
    );
    let acted = drive(
        &profile,
        &url,
        &[
            json!({"wait": format!("{rows}.length >= 2 && {rows}[1].querySelector('button.silence') !== null")}),
            json!({"eval": set("action-name", "ana")}),
            json!({"eval": set("action-token", TOKEN)}),
            json!({"eval": click(0, "ack")}),
            json!({"wait": "document.getElementById('action-status').textContent === 'done'"}),
            json!({"eval": click(1, "silence")}),
            json!({"wait": "document.querySelectorAll('#silence-table tr.silence').length === 1"}),
        ],
    );
    let acked = acted[3].as_str().unwrap().to_owned();
    let silenced = acted[5].as_str().unwrap().to_owned();
    assert_ne!(acked, silenced);
    // Both show on the page at once (from the store), before the pipeline's events follow.
    let shown = drive(
        &profile,
        &url,
        &[
            json!({"wait": format!("{}.includes('acknowledged by ana')", state_of(&acked))}),
            json!({"wait": format!("{}.includes('silenced')", state_of(&silenced))}),
        ],
    );
    assert!(shown.iter().all(|v| v.as_bool() == Some(true)), "{shown:?}");

    // The acknowledgement reaches the pipeline: its own `acknowledged` event (the page's
    // alert list holds each alert's latest event).
    wait_for(
        port,
        "the pipeline's acknowledged event",
        || {
            device_alerts()
                .iter()
                .any(|a| a["alert_id"] == acked.as_str() && a["event"] == "acknowledged")
        },
        &mut demo,
    );
    // Every alert event is recorded in the store, the acknowledgement among them.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let history = runtime.block_on(async {
        use iotpipe::io::connect::store::{Store, StoreConfig};
        let store = Store::open(&StoreConfig::url(database_url.clone()), |_| None)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let history = store.alert_history(&acked).await.unwrap();
            if history.iter().any(|e| e["event"] == "acknowledged") {
                break history;
            }
            assert!(Instant::now() < deadline, "not recorded: {history:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    assert_eq!(history[0]["event"], "opened", "{history:?}");

    // The silence is expired from the page.
    let expired = drive(
        &profile,
        &url,
        &[
            json!({"wait": "document.querySelectorAll('#silence-table button.expire').length === 1"}),
            // The token is kept for the browser session: this is a new one.
            json!({"eval": set("action-token", TOKEN)}),
            json!({"eval": "document.querySelector('#silence-table button.expire').click(); true"}),
            json!({"wait": "document.querySelectorAll('#silence-table tr.silence').length === 0"}),
        ],
    );
    assert_eq!(expired[3], json!(true));
    assert!(demo.0.try_wait().unwrap().is_none(), "demo exited");
    let png = screenshot(&profile, &url, "dashboard-alert-actions.png", (1280, 1400));
    assert!(png.starts_with(b"\x89PNG"));
}
