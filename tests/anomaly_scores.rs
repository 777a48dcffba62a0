//! The anomaly scorer over a stream: faults are found, and scores do not depend on the order in
//! which readings arrive (the ground of "the same scores for any number of workers").

use std::sync::Arc;

use iotpipe::dataflow::anomaly::{
    AnomalyConfig, AnomalyKind, AnomalyScore, DetectSilence, FleetProgress,
};
use iotpipe::dataflow::model::{DeviceId, DeviceInfo, EnrichedMessage, MetricId, Reading};
use iotpipe::dataflow::{AggregateWindows, RegistryUpdate, ResolveRegistry, WindowConfig};
use iotpipe::io::sources::inputs::VecInput;
use timely::dataflow::operators::capture::Event;
use timely::dataflow::operators::{Capture, Concat, ToStream};

const START: u64 = 1_704_067_200_000;

/// 20 devices, one reading a second for 7 minutes; dev-3 spikes at 260 s, dev-5 sticks from
/// 280 s, dev-7 falls silent at 300 s.
fn readings() -> Vec<(u64, DeviceId, Reading)> {
    let mut out = Vec::new();
    for second in 0..420u64 {
        for d in 0..20u64 {
            if d == 7 && second >= 300 {
                continue;
            }
            let ts = START + second * 1000 + d * 37;
            let noise = ((second * 7919 + d * 104_729) % 100) as f64 / 50.0;
            let mut value = 20.0 + d as f64 + (second as f64 / 40.0).sin() + noise;
            if d == 3 && second == 260 {
                value += 40.0;
            }
            if d == 5 && second >= 280 {
                value = 42.42;
            }
            out.push((
                ts,
                DeviceId::from(format!("dev-{d}")),
                Reading {
                    metric: MetricId(0),
                    ts_ms: ts,
                    value,
                },
            ));
        }
    }
    out
}

fn run(shuffle_seed: u64) -> Vec<(String, u64, String, u64)> {
    run_with(readings(), AnomalyConfig::default(), shuffle_seed)
}

fn run_with(
    all: Vec<(u64, DeviceId, Reading)>,
    config: AnomalyConfig,
    shuffle_seed: u64,
) -> Vec<(String, u64, String, u64)> {
    let info = Arc::new(DeviceInfo {
        device_type: "thermostat".into(),
        firmware: "1".into(),
        schema: "v1".into(),
        org: "o".into(),
        site: "s".into(),
        building: "b".into(),
        model: "m".into(),
        thresholds: Vec::new(),
    });
    let captured = timely::execute_directly(move |worker| {
        let all = all.clone();
        let mut input: VecInput<u64, EnrichedMessage> = VecInput::new();
        let captured = worker.dataflow::<u64, _, _>(|scope| {
            let registry = Vec::<RegistryUpdate>::new()
                .to_stream(scope)
                .resolve_registry();
            let windowed = input.to_stream(scope).aggregate_windows(
                &registry,
                WindowConfig::default(),
                &config,
            );
            let progress = windowed.activity.clone().fleet_progress();
            let silences = windowed
                .activity
                .detect_silence(progress, WindowConfig::default());
            windowed.scores.concat(silences).capture()
        });
        // Send in batches at a watermark 30 s behind, shuffled within each batch.
        for batch in all.chunks(200) {
            let mut batch = batch.to_vec();
            let mut state = shuffle_seed.wrapping_add(batch[0].0);
            for i in (1..batch.len()).rev() {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                batch.swap(i, (state >> 33) as usize % (i + 1));
            }
            let time = batch
                .iter()
                .map(|(ts, _, _)| *ts)
                .min()
                .unwrap()
                .saturating_sub(30_000);
            if time > *input.time() {
                input.advance_to(time);
            }
            for (_, device_id, reading) in batch {
                input.send(EnrichedMessage {
                    device_id,
                    device: Arc::clone(&info),
                    ts_ms: reading.ts_ms,
                    stamp_ms: *input.time(),
                    readings: smallvec::smallvec![reading],
                });
            }
            worker.step();
        }
        captured
    });
    let mut found: Vec<(String, u64, String, u64)> = captured
        .try_iter()
        .flat_map(|event| match event {
            Event::Messages(_, scores) => scores,
            Event::Progress(_) => Vec::new(),
        })
        .map(|s: AnomalyScore| {
            (
                s.device_id.to_string(),
                s.ts_ms - START,
                s.kind.code().to_string(),
                s.score.to_bits(),
            )
        })
        .collect();
    found.sort();
    found
}

#[test]
fn faults_are_found_and_scores_do_not_depend_on_arrival_order() {
    let first = run(1);
    assert_eq!(first, run(2), "scores depend on arrival order");
    let kinds = |device: &str| -> Vec<String> {
        first
            .iter()
            .filter(|f| f.0 == device)
            .map(|f| f.2.clone())
            .collect()
    };
    assert!(
        kinds("dev-3").contains(&AnomalyKind::Spike.code().to_string()),
        "{first:?}"
    );
    assert!(
        kinds("dev-5").contains(&AnomalyKind::Stuck.code().to_string()),
        "{first:?}"
    );
    assert!(
        kinds("dev-7").contains(&AnomalyKind::Silence.code().to_string()),
        "{first:?}"
    );
    // Healthy devices raise nothing, and the end of the input is not silence.
    for d in (0..20).filter(|d| ![3, 5, 7].contains(d)) {
        let raised = kinds(&format!("dev-{d}"));
        assert!(raised.is_empty(), "dev-{d}: {raised:?}");
    }
    // dev-7 is reported silent once, 20 s (the default timeout) after its last reading.
    let silences: Vec<_> = first.iter().filter(|f| f.2 == "silence").collect();
    assert_eq!(silences.len(), 1, "{silences:?}");
    assert_eq!(silences[0].1, 299_000 + 7 * 37 + 20_000);
}

/// Three slow senders over 50 minutes: one a minute, one every 5 minutes, one at irregular
/// gaps of 1 to 9 minutes; each reports a value far off its usual at its last report.
fn slow_readings() -> Vec<(u64, DeviceId, Reading)> {
    let mut out = Vec::new();
    let mut push = |device: &str, second: u64, i: u64, last: bool| {
        let ts = START + second * 1000;
        let noise = ((i * 7919 + second * 31) % 100) as f64 / 50.0;
        let value = if last { 80.0 } else { 20.0 + noise };
        let reading = Reading {
            metric: MetricId(0),
            ts_ms: ts,
            value,
        };
        out.push((ts, DeviceId::from(device), reading));
    };
    let minutes = 50;
    for i in 0..minutes {
        push("every-minute", i * 60 + 7, i, i == minutes - 1);
    }
    for i in 0..minutes / 5 {
        push("every-5-minutes", i * 300 + 11, i, i == minutes / 5 - 1);
    }
    let (mut second, mut i) = (13, 0);
    while second < minutes * 60 - 600 {
        push("irregular", second, i, false);
        second += 60 * (1 + (i * 7 % 9));
        i += 1;
    }
    push("irregular", second, i, true);
    out.sort_by_key(|(ts, _, _)| *ts);
    out
}

#[test]
fn slow_and_irregular_senders_are_scored_from_their_fourth_report_whatever_the_order() {
    let config = AnomalyConfig {
        emit_all_scores: true,
        ..AnomalyConfig::default()
    };
    let first = run_with(slow_readings(), config.clone(), 1);
    assert_eq!(first, run_with(slow_readings(), config, 2));
    for device in ["every-minute", "every-5-minutes", "irregular"] {
        let reports: Vec<u64> = slow_readings()
            .iter()
            .filter(|(_, d, _)| d.as_str() == device)
            .map(|(ts, _, _)| ts - START)
            .collect();
        let scored: Vec<&(String, u64, String, u64)> = first
            .iter()
            .filter(|f| f.0 == device && reports.contains(&f.1) && f.3 != 0)
            .collect();
        // Every report from the fourth on has a score (before, they score 0 while the model
        // warms up); the last one, far off, is a spike.

        // (A reading meets the model of the windows up to two before its own, so a sender
        // reporting every minute waits for a fifth report.)
        let first_scored = reports.iter().position(|r| *r == scored[0].1).unwrap() + 1;
        let expected = if device == "every-minute" { 5 } else { 4 };
        assert_eq!(first_scored, expected, "{device}: {scored:?}");
        assert_eq!(scored.len(), reports.len() + 1 - expected, "{device}");
        let last = scored.last().unwrap();
        assert_eq!(last.2, "spike", "{device}: {scored:?}");
        assert!(f64::from_bits(last.3) > 0.99, "{device}");
        assert!(
            scored[..scored.len() - 1].iter().all(|f| f.2 == "none"),
            "{device}: {scored:?}"
        );
    }
}
