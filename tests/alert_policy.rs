//! Silences and acknowledgements as data: a replay with them mutes what a silence covers,
//! stops reminders of what was acknowledged, sends nothing silenced to any channel, and gives
//! byte-identical alert events for 1 and 2 workers.

mod common;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The shipped rules with reminders every minute and escalation after two.
fn quick_policy_rules(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/datasets/alert_rules.toml"
    ))
    .unwrap();
    let rules = shipped
        .lines()
        .map(|line| {
            if line.starts_with("repeat_after_ms") {
                "repeat_after_ms = { warning = 60000, minor = 60000, major = 60000, critical = 60000 }"
            } else if line.starts_with("escalate_after_ms") {
                "escalate_after_ms = { warning = 120000, minor = 120000, major = 120000, critical = 120000 }"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(
        rules, shipped,
        "the shipped rules have a [notification] section"
    );
    let path = dir.join("rules.toml");
    std::fs::write(&path, rules).unwrap();
    path
}

fn events_of(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn replay(
    data: &common::Dataset,
    out: &Path,
    rules: &Path,
    workers: usize,
    extra: &[&std::ffi::OsStr],
) {
    common::succeed(
        common::replay_command_with_workers(data, out, workers)
            .arg("--alert-rules")
            .arg(rules)
            .args(extra),
    );
}

/// The quick rules for `data`, and the alert events of a replay with them and no controls.
fn quick_baseline(data: &common::Dataset) -> (PathBuf, Vec<Value>) {
    let rules = quick_policy_rules(data.dir.path());
    let out = data.dir.path().join("baseline");
    replay(data, &out, &rules, 2, &[]);
    (rules, events_of(&out.join("alerts.jsonl")))
}

/// The events of one alert, in order.
fn of_alert(events: &[Value], alert: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["alert_id"] == alert)
        .cloned()
        .collect()
}

#[test]
fn silences_and_acknowledgements_replay_to_the_same_events_for_1_and_2_workers() {
    let data = common::dataset(200, 420);
    let dir = data.dir.path();
    let (rules, baseline) = quick_baseline(&data);
    // A device alert reminded at least twice: it is acknowledged right after it opens.
    let reminded = baseline
        .iter()
        .filter(|e| e["event"] == "repeated")
        .map(|e| e["alert_id"].as_str().unwrap().to_owned())
        .find(|id| {
            of_alert(&baseline, id)
                .iter()
                .filter(|e| e["event"] == "repeated")
                .count()
                >= 2
        })
        .expect("an alert reminded twice");
    let acked_opened = of_alert(&baseline, &reminded)[0]["ts_ms"].as_u64().unwrap();
    let acked_at = acked_opened + 1_000;
    // A device alert of another building opens: its building is silenced around it.
    let target = baseline
        .iter()
        .find(|e| {
            e["event"] == "opened"
                && e["device_id"].is_string()
                && e["alert_id"] != reminded.as_str()
        })
        .expect("a device alert")
        .clone();
    let building = target["building"].as_str().unwrap().to_owned();
    let starts_ms = target["ts_ms"].as_u64().unwrap() - 1;
    let ends_ms = starts_ms + 90_000;
    let controls = dir.join("controls.jsonl");
    std::fs::write(
        &controls,
        format!(
            "{}\n{}\n",
            json!({"kind": "silence", "id": "rewiring", "version": 1,
                   "matchers": {"buildings": [building]}, "starts_ms": starts_ms,
                   "ends_ms": ends_ms, "created_by": "ops", "comment": "rewiring"}),
            json!({"kind": "acknowledgement", "alert_id": reminded, "by": "ana",
                   "note": "on it", "at_ms": acked_at}),
        ),
    )
    .unwrap();

    let mut outputs = Vec::new();
    for workers in [1, 2] {
        let out = dir.join(format!("out-w{workers}"));
        let notify = dir.join(format!("notify-w{workers}.toml"));
        let channel = dir.join(format!("channel-w{workers}.jsonl"));
        std::fs::write(
            &notify,
            format!(
                "[[file]]\nname = \"archive\"\npath = {:?}\n",
                channel.display().to_string()
            ),
        )
        .unwrap();
        replay(
            &data,
            &out,
            &rules,
            workers,
            &[
                "--alert-controls".as_ref(),
                controls.as_os_str(),
                "--notify".as_ref(),
                notify.as_os_str(),
            ],
        );
        outputs.push((std::fs::read(out.join("alerts.jsonl")).unwrap(), channel));
    }
    assert!(
        outputs[0].0 == outputs[1].0,
        "alert events differ between 1 and 2 workers"
    );
    let events = events_of(&dir.join("out-w2/alerts.jsonl"));

    // The silence: every lifecycle event in the building within it is marked, none outside.
    let in_silence = |e: &Value| {
        e["building"] == building.as_str()
            && (starts_ms..ends_ms).contains(&e["ts_ms"].as_u64().unwrap())
    };
    let marked: Vec<&Value> = events
        .iter()
        .filter(|e| e["silenced_by"].is_string())
        .collect();
    assert!(
        marked.iter().any(|e| e["alert_id"] == target["alert_id"]),
        "the target alert is silenced: {target}"
    );
    for e in &events {
        if e["event"] == "opened" && e["silenced_by"].is_string() {
            assert!(in_silence(e), "silenced outside the silence: {e}");
            assert_eq!(e["silenced_by"], "rewiring");
        }
        if e["event"] == "opened" && in_silence(e) {
            assert!(e["silenced_by"].is_string(), "not silenced inside it: {e}");
        }
    }
    // No channel hears of a silenced event; it hears of everything else.
    for (_, channel) in &outputs {
        let sent = events_of(channel);
        assert!(sent.iter().all(|e| e["silenced_by"].is_null()));
        assert_eq!(sent.len(), events.len() - marked.len());
    }

    // The acknowledgement: announced once, and no reminder or escalation after it.
    let acked = of_alert(&events, &reminded);
    let acknowledged: Vec<&Value> = acked
        .iter()
        .filter(|e| e["event"] == "acknowledged")
        .collect();
    assert_eq!(acknowledged.len(), 1, "{acked:?}");
    assert_eq!(acknowledged[0]["ts_ms"], acked_at);
    assert_eq!(acknowledged[0]["acknowledged_by"], "ana: on it");
    assert!(
        acked
            .iter()
            .all(|e| !(e["event"] == "repeated" || e["event"] == "overdue")
                || e["ts_ms"].as_u64().unwrap() < acked_at),
        "{acked:?}"
    );
    // Without it, the same alert was reminded after that time.
    assert!(
        of_alert(&baseline, &reminded)
            .iter()
            .any(|e| e["event"] == "repeated" && e["ts_ms"].as_u64().unwrap() > acked_at)
    );
}

#[test]
fn a_bad_line_of_alert_controls_is_one_error_naming_the_line() {
    let data = common::dataset(5, 30);
    let controls = data.dir.path().join("controls.jsonl");
    std::fs::write(
        &controls,
        "{\"kind\": \"silence\", \"id\": \"s\", \"version\": 1, \"matchers\": {\"metrics\": [\"no_such_metric\"]}, \"starts_ms\": 0, \"ends_ms\": 1}\n",
    )
    .unwrap();
    let output = common::replay_command(&data, &data.dir.path().join("out"))
        .arg("--alert-controls")
        .arg(&controls)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--alert-controls")
            && stderr.contains(":1:")
            && stderr.contains("no_such_metric"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn the_api_acknowledges_and_silences_and_a_replay_of_its_log_agrees_for_1_and_2_workers() {
    use common::api::{Api, READ, expect, expect_field};
    let api = Api::start();
    // Data from two minutes on: a silence made through the API cannot start in the past.
    let start_ms = (now_ms() / 60_000 + 2) * 60_000;
    let data = common::dataset_from(start_ms, 200, 420);
    let dir = data.dir.path();
    let (rules, baseline) = quick_baseline(&data);
    let reminded = baseline
        .iter()
        .find(|e| e["event"] == "repeated")
        .map(|e| e["alert_id"].as_str().unwrap().to_owned())
        .expect("a reminded alert");
    let target = baseline
        .iter()
        .find(|e| {
            e["event"] == "opened"
                && e["device_id"].is_string()
                && e["alert_id"] != reminded.as_str()
        })
        .expect("a device alert")
        .clone();
    let (site, building) = (
        target["site"].as_str().unwrap(),
        target["building"].as_str().unwrap(),
    );
    let opened_ms = target["ts_ms"].as_u64().unwrap();

    // Acknowledge: 201, then 200 with the first; a reader may not; `by` is needed.
    let ack_path = format!("/v1/alerts/{}/ack", common::url_encode(&reminded));
    let ack = expect(
        &api.write("POST", &ack_path, json!({"by": "ana", "note": "on it"})),
        201,
    );
    assert_eq!(ack["by"], "ana");
    let again = expect(&api.write("POST", &ack_path, json!({"by": "bo"})), 200);
    assert_eq!(again["by"], "ana");
    expect(
        &api.call("POST", &ack_path, Some(READ), &[], Some(json!({"by": "x"}))),
        403,
    );
    expect_field(&api.write("POST", &ack_path, json!({"note": "who?"})), "by");

    // Silence the target's building around its opening; bad bodies name their field.
    let silence = json!({"matchers": {"sites": [site], "buildings": [building]},
                         "starts_ms": opened_ms - 1, "ends_ms": opened_ms + 90_000,
                         "created_by": "ops", "comment": "rewiring"});
    let created = expect(&api.write("POST", "/v1/silences", silence.clone()), 201);
    let silence_id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "pending");
    expect_field(
        &api.write(
            "POST",
            "/v1/silences",
            json!({"matchers": {}, "ends_ms": opened_ms, "created_by": "ops"}),
        ),
        "matchers",
    );
    expect_field(
        &api.write(
            "POST",
            "/v1/silences",
            json!({"matchers": {"metrics": ["colour"]}, "ends_ms": opened_ms, "created_by": "ops"}),
        ),
        "matchers.metrics",
    );
    expect_field(
        &api.write(
            "POST",
            "/v1/silences",
            json!({"matchers": {"sites": [site]}, "ends_ms": 5, "created_by": "ops"}),
        ),
        "ends_ms",
    );
    expect_field(
        &api.write("POST", "/v1/silences", json!({"matchers": {"sites": [site]}, "ends_ms": opened_ms, "created_by": "ops", "colour": 1})),
        "colour",
    );
    // A silence of everything silent there, expired before it starts: it never does.
    let expired = expect(
        &api.write(
            "POST",
            "/v1/silences",
            json!({"matchers": {"causes": ["silence", "anomaly", "threshold"]}, "starts_ms": start_ms,
                   "ends_ms": start_ms + 3_600_000, "created_by": "ops"}),
        ),
        201,
    );
    let expired_path = format!("/v1/silences/{}", expired["id"].as_str().unwrap());
    assert_eq!(
        expect(&api.write("DELETE", &expired_path, json!({})), 200)["state"],
        "expired"
    );
    assert_eq!(expect(&api.read(&expired_path), 200)["version"], 2);
    let current = expect(&api.read("/v1/silences"), 200);
    assert_eq!(current["items"].as_array().unwrap().len(), 1, "{current}");
    assert_eq!(current["items"][0]["id"], silence_id.as_str());
    assert_eq!(
        expect(&api.read("/v1/silences?state=all"), 200)["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    expect(&api.read("/v1/silences/silence-999"), 404);

    // The control log, replayed with 1 and 2 workers, every event recorded in the store.
    let log = api.read("/v1/alert-controls");
    assert_eq!(log.status, 200);
    assert_eq!(log.body.lines().count(), 4, "{}", log.body);
    let controls = dir.join("controls.jsonl");
    std::fs::write(&controls, &log.body).unwrap();
    let notify = dir.join("notify.toml");
    std::fs::write(&notify, format!("[store]\nurl = {:?}\n", api.server.url())).unwrap();
    let mut outputs = Vec::new();
    for workers in [1, 2] {
        let out = dir.join(format!("out-w{workers}"));
        replay(
            &data,
            &out,
            &rules,
            workers,
            &[
                "--alert-controls".as_ref(),
                controls.as_os_str(),
                "--notify".as_ref(),
                notify.as_os_str(),
            ],
        );
        outputs.push(std::fs::read(out.join("alerts.jsonl")).unwrap());
    }
    assert!(
        outputs[0] == outputs[1],
        "alert events differ between 1 and 2 workers"
    );
    let events = events_of(&dir.join("out-w2/alerts.jsonl"));

    let target_events = of_alert(&events, target["alert_id"].as_str().unwrap());
    assert_eq!(
        target_events[0]["silenced_by"],
        silence_id.as_str(),
        "{target_events:?}"
    );
    // Acknowledged before it opened: announced at its opening, never reminded.
    let acked = of_alert(&events, &reminded);
    let kinds: Vec<&str> = acked.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(&kinds[..2], ["opened", "acknowledged"], "{acked:?}");
    assert_eq!(acked[1]["ts_ms"], acked[0]["ts_ms"]);
    assert_eq!(acked[1]["acknowledged_by"], "ana: on it");
    assert!(
        !kinds.contains(&"repeated") && !kinds.contains(&"overdue"),
        "{kinds:?}"
    );

    // The store has every event once, and each alert's state.
    let history = expect(
        &api.read(&format!(
            "/v1/alerts/{}/history",
            common::url_encode(&reminded)
        )),
        200,
    );
    assert_eq!(history["items"].as_array().unwrap().len(), acked.len());
    let listed = expect(
        &api.read(&format!(
            "/v1/alerts?state=all&building={}&site={}",
            common::url_encode(building),
            common::url_encode(site)
        )),
        200,
    );
    let items = listed["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .all(|a| a["building"] == building && a["site"] == site)
    );
    let expected: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|e| e["building"] == building && e["site"] == site)
        .map(|e| e["alert_id"].as_str().unwrap())
        .collect();
    let got: std::collections::BTreeSet<&str> = items
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, expected);
    let open = expect(&api.read("/v1/alerts"), 200);
    let still_open: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|e| e["alert_id"].as_str().unwrap())
        .filter(|id| of_alert(&events, id).last().unwrap()["event"] != "resolved")
        .collect();
    let listed_open: std::collections::BTreeSet<&str> = open["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed_open, still_open);
    let acked_state = open["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(
            expect(&api.read("/v1/alerts?state=resolved"), 200)["items"]
                .as_array()
                .unwrap(),
        )
        .find(|a| a["alert_id"] == reminded.as_str())
        .cloned()
        .expect("the acknowledged alert is listed");
    assert_eq!(acked_state["acknowledged_by"], "ana: on it");
    expect_field(&api.read("/v1/alerts?colour=red"), "colour");
    expect_field(&api.read("/v1/alerts?state=maybe"), "state");
}

/// The quick rules as the dataflow takes them, parsed and resolved.
fn parsed_rules(path: &Path) -> iotpipe::dataflow::alert::AlertConfig {
    let mut rules: iotpipe::dataflow::alert::AlertConfig =
        toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    rules
        .resolve(iotpipe::dataflow::schema::SchemaSet::embedded().catalog())
        .unwrap();
    rules
}

#[test]
fn a_rules_change_holds_from_its_effective_time_for_1_and_2_workers() {
    let data = common::dataset(200, 420);
    let dir = data.dir.path();
    let (rules, baseline) = quick_baseline(&data);
    // The single-window threshold warnings: the change removes their rule halfway through.
    let warned: Vec<u64> = baseline
        .iter()
        .filter(|e| e["rule"] == "over-threshold" && e["event"] == "opened")
        .map(|e| e["ts_ms"].as_u64().unwrap())
        .collect();
    assert!(warned.len() >= 2, "{warned:?}");
    let effective_ms = (warned[0] + warned[warned.len() - 1]) / 2;
    let mut changed = parsed_rules(&rules);
    changed.rules.retain(|r| r.name != "over-threshold");
    let change = iotpipe::dataflow::alert::control::RulesChange {
        version: 1,
        effective_ms,
        rules: changed,
    };
    let mut line = serde_json::to_value(&change).unwrap();
    line["kind"] = json!("rules");
    let controls = dir.join("controls.jsonl");
    std::fs::write(&controls, format!("{line}\n")).unwrap();

    let mut outputs = Vec::new();
    for workers in [1, 2] {
        let out = dir.join(format!("out-w{workers}"));
        replay(
            &data,
            &out,
            &rules,
            workers,
            &["--alert-controls".as_ref(), controls.as_os_str()],
        );
        outputs.push(std::fs::read(out.join("alerts.jsonl")).unwrap());
    }
    assert!(
        outputs[0] == outputs[1],
        "alert events differ between 1 and 2 workers"
    );
    let events = events_of(&dir.join("out-w2/alerts.jsonl"));
    let opened = |events: &[Value], before: bool| {
        events
            .iter()
            .filter(|e| e["rule"] == "over-threshold" && e["event"] == "opened")
            .filter(|e| (e["ts_ms"].as_u64().unwrap() < effective_ms) == before)
            .count()
    };
    // Before the change, the same as without it; from it on, none.
    assert_eq!(opened(&events, true), opened(&baseline, true));
    assert!(opened(&baseline, false) > 0);
    assert_eq!(
        opened(&events, false),
        0,
        "warnings after the rule was removed"
    );
}

#[test]
fn rules_put_through_the_api_are_checked_and_join_the_control_log() {
    use common::api::{Api, expect, expect_field};
    let api = Api::start();
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/datasets/alert_rules.toml"
    ))
    .unwrap();
    expect(&api.read("/v1/alert-rules"), 404);
    let put = |body: &str| {
        let auth = format!("Bearer {}", common::api::WRITE);
        common::http_request(
            api.port,
            "PUT",
            "/v1/alert-rules",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/toml"),
            ],
            Some(body),
        )
        .unwrap()
    };
    let bad = shipped.replace("kinds = [\"spike\"]", "kinds = [\"spike\"] }\n[[rules]]\nname = \"hot\"\nseverity = \"major\"\nmatch = { metrics = [\"colour\"] }\nwhen.threshold = {");
    expect_field(&put(&bad), "rules.hot");
    expect_field(&put("this is not toml = ["), "body");
    let created = expect(&put(&shipped), 201);
    assert_eq!(created["version"], 1);
    let again = expect(&put(&shipped), 201);
    assert_eq!(again["version"], 2);
    let current = expect(&api.read("/v1/alert-rules"), 200);
    assert_eq!(current["version"], 2);
    assert!(current["rules"]["rules"].as_array().unwrap().len() >= 8);
    // In the log the replay reads: two rules lines, which it loads.
    let log = api.read("/v1/alert-controls");
    assert_eq!(
        log.body
            .lines()
            .filter(|l| l.contains("\"kind\":\"rules\""))
            .count(),
        2
    );
    let file = api.server.dir().join("controls.jsonl");
    std::fs::write(&file, &log.body).unwrap();
    let loaded = iotpipe::io::support::schema_files::load_alert_controls(
        &file,
        iotpipe::dataflow::schema::SchemaSet::embedded().catalog(),
    )
    .unwrap();
    assert_eq!(loaded.len(), 2);
}
