//! Poison input: a replay with a poisoned first message, a 3-hour-ahead burst from one device
//! mid-stream and absurd values everywhere gives exactly the clean replay's outputs, apart from
//! one dead letter per poison line, for 1, 2 and 4 workers.

mod common;

use std::collections::BTreeMap;

use common::{START_MS, dead_letter_pairs, sorted_lines};

/// Random bytes that are the same in every run.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    common::split_mix(seed)
        .take(len)
        .map(|z| z as u8)
        // A line break would make two lines of one; leading bytes keep it from being blank.
        .filter(|b| *b != b'\n' && *b != b'\r')
        .collect()
}

/// The poison lines and the reason each must be a dead letter for.
fn poison(mid_ms: u64) -> (Vec<u8>, Vec<(Vec<u8>, &'static str)>) {
    let v1 = |device: &str, ts: &str| format!(r#"{{"device_id":"{device}","ts":{ts},"t":21.5}}"#);
    let first = v1("dev-000010", "4102444800000").into_bytes();
    let mut lines: Vec<(Vec<u8>, &str)> = vec![(first.clone(), "future_timestamp")];
    // Three hours ahead, from one registered device, many times.
    for i in 0..30 {
        let ts = (mid_ms + 3 * 3_600_000 + i * 1_000).to_string();
        lines.push((v1("dev-000011", &ts).into_bytes(), "future_timestamp"));
    }
    let v2_9999 = r#"{"id":"dev-000012","time":"9999-12-31T23:59:59.999Z","metrics":{"temperature":{"value":20,"unit":"C"}}}"#;
    lines.extend([
        (
            v1("dev-000013", "18446744073709551615").into_bytes(),
            "bad_timestamp",
        ),
        (v1("dev-000013", "1e30").into_bytes(), "bad_timestamp"),
        (
            v1("dev-000013", "-1704067200000").into_bytes(),
            "bad_timestamp",
        ),
        (v2_9999.as_bytes().to_vec(), "future_timestamp"),
        (
            format!(r#"{{"device_id":"dev-000013","ts":{mid_ms},"t":1e400}}"#).into_bytes(),
            "wrong_value_type",
        ),
        (
            ("[".repeat(100_000) + &"]".repeat(100_000)).into_bytes(),
            "too_large",
        ),
        (
            ("{\"a\":".repeat(5_000) + "1" + &"}".repeat(5_000)).into_bytes(),
            "invalid_json",
        ),
        (
            format!(
                r#"{{"device_id":"dev-000013","ts":{mid_ms},"blob":"{}","t":20}}"#,
                "x".repeat(4 << 20)
            )
            .into_bytes(),
            "too_large",
        ),
        (
            b"{\"device_id\":\"dev-000013\",\xff\xfe\"ts\":1}".to_vec(),
            "invalid_json",
        ),
        (b"\0\0\0\0{}\0".to_vec(), "invalid_json"),
    ]);
    for seed in 0..20 {
        let mut bytes = b"#".to_vec();
        bytes.extend(random_bytes(seed, 200));
        lines.push((bytes, "invalid_json"));
    }
    (first, lines)
}

#[test]
fn poison_changes_nothing_but_its_own_dead_letters() {
    let data = common::dataset(120, 400);
    let clean = std::fs::read(&data.events).unwrap();
    let clean_lines: Vec<&[u8]> = clean
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mid_ms = START_MS + 200_000;
    let (first, lines) = poison(mid_ms);
    // The first line is the poisoned clock; the rest is spread over the stream.
    let mut poisoned = first;
    poisoned.push(b'\n');
    let rest = &lines[1..];
    let every = clean_lines.len() / (rest.len() + 1);
    for (i, line) in clean_lines.iter().enumerate() {
        poisoned.extend_from_slice(line);
        poisoned.push(b'\n');
        if i % every == every / 2
            && let Some((bad, _)) = rest.get(i / every)
        {
            poisoned.extend_from_slice(bad);
            poisoned.push(b'\n');
        }
    }
    let poisoned_path = data.dir.path().join("poisoned.jsonl");
    std::fs::write(&poisoned_path, &poisoned).unwrap();

    let clean_out = data.dir.path().join("clean");
    let clean_summary = common::replay_in_process(&data.events, &data.registry, 2, &clean_out);
    let clean_dead = dead_letter_pairs(&clean_out.join("dead_letters.jsonl"));
    for workers in [1, 2, 4] {
        let out = data.dir.path().join(format!("poisoned-w{workers}"));
        let summary = common::replay_in_process(&poisoned_path, &data.registry, workers, &out);
        for file in [
            "aggregates.jsonl",
            "site_rollups.jsonl",
            "late.jsonl",
            "anomalies.jsonl",
            "alerts.jsonl",
            "scores.jsonl",
        ] {
            let (mut got, want) = (
                sorted_lines(&out.join(file)),
                sorted_lines(&clean_out.join(file)),
            );
            if file == "alerts.jsonl" {
                // The device stamped 3 hours ahead again and again gets a clock alert: the
                // one output the poison adds.
                let (clock, rest): (Vec<String>, Vec<String>) = got
                    .into_iter()
                    .partition(|l| l.contains("\"cause\":\"clock\""));
                assert!(!clock.is_empty(), "{workers} workers: no clock alert");
                assert!(
                    clock
                        .iter()
                        .all(|l| l.contains("\"device_id\":\"dev-000011\"")),
                    "{clock:#?}"
                );
                got = rest;
            }
            assert!(!want.is_empty() || file == "late.jsonl", "{file} is empty");
            assert!(
                got == want,
                "{workers} workers: {file} differs from the clean replay"
            );
        }
        // Every clean dead letter, and one more per poison line.
        let mut extra: BTreeMap<(String, String), i64> = BTreeMap::new();
        for pair in dead_letter_pairs(&out.join("dead_letters.jsonl")) {
            *extra.entry(pair).or_default() += 1;
        }
        for pair in &clean_dead {
            *extra.get_mut(pair).expect("a clean dead letter is missing") -= 1;
        }
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for ((reason, _), n) in extra {
            assert!(n >= 0);
            if n > 0 {
                *reasons.entry(reason).or_default() += n as usize;
            }
        }
        let mut want: BTreeMap<String, usize> = BTreeMap::new();
        for (_, reason) in &lines {
            *want.entry((*reason).to_owned()).or_default() += 1;
        }
        assert_eq!(
            reasons, want,
            "{workers} workers: the poison lines' dead letters"
        );
        assert_eq!(
            summary.ingest.messages,
            clean_summary.ingest.messages + lines.len() as u64
        );
        assert_eq!(summary.windows, clean_summary.windows);
        // Every message is admitted or one dead letter; every reading aggregated, late or out
        // of range.
        assert_eq!(
            summary.unaccounted(),
            (0, 0),
            "{workers} workers:\n{summary}"
        );
        // The first line, the burst and the year 9999: clocks ahead.
        assert_eq!(
            summary.ingest.clock_ahead - clean_summary.ingest.clock_ahead,
            32,
            "{summary}"
        );
    }
}
