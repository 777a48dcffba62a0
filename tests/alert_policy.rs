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
    workers: &str,
    extra: &[&std::ffi::OsStr],
) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_iotpipe"));
    command
        .args(["replay", "--events"])
        .arg(&data.events)
        .arg("--registry")
        .arg(&data.registry)
        .arg("--out")
        .arg(out)
        .arg("--alert-rules")
        .arg(rules)
        .args(["-w", workers])
        .args(extra);
    common::succeed(&mut command);
}

#[test]
fn silences_and_acknowledgements_replay_to_the_same_events_for_1_and_2_workers() {
    let data = common::dataset(200, 420);
    let dir = data.dir.path();
    let rules = quick_policy_rules(dir);
    let baseline_out = dir.join("baseline");
    replay(&data, &baseline_out, &rules, "2", &[]);
    let baseline = events_of(&baseline_out.join("alerts.jsonl"));
    let of = |events: &[Value], alert: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["alert_id"] == alert)
            .cloned()
            .collect()
    };
    // A device alert reminded at least twice: it is acknowledged right after it opens.
    let reminded = baseline
        .iter()
        .filter(|e| e["event"] == "repeated")
        .map(|e| e["alert_id"].as_str().unwrap().to_owned())
        .find(|id| {
            of(&baseline, id)
                .iter()
                .filter(|e| e["event"] == "repeated")
                .count()
                >= 2
        })
        .expect("an alert reminded twice");
    let acked_opened = of(&baseline, &reminded)[0]["ts_ms"].as_u64().unwrap();
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
    for workers in ["1", "2"] {
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
    let acked = of(&events, &reminded);
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
        of(&baseline, &reminded)
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
