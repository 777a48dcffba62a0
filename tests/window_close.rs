//! A window's close spread over event time (`WindowConfig::close_spread_ms`): the same windows,
//! scores and activity as one close at once, handed on as the input advances over the spread
//! instead of in one step, and complete once the input has passed the close plus the spread.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use iotpipe::dataflow::anomaly::AnomalyConfig;
use iotpipe::dataflow::model::{DeviceId, DeviceInfo, EnrichedMessage, MetricId, Reading};
use iotpipe::dataflow::{AggregateWindows, RegistryUpdate, ResolveRegistry, WindowConfig};
use iotpipe::io::sources::inputs::VecInput;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Inspect, Probe, ToStream};

const START: u64 = 1_704_067_200_000;
const DEVICES: u64 = 2_000;

/// What came out of the windows, sorted, and at which advance of the input the first close's
/// aggregates did.
struct Outcome {
    /// Aggregates, scores and activity, each rendered with the exact bits of its numbers.
    records: Vec<String>,
    /// The advances of the input at which aggregates of the first window came out.
    first_window_steps: Vec<usize>,
}

/// `DEVICES` devices, two metrics, one message a second each for 150 s, sent in 50 ms steps of
/// event time with the input's time 5 s behind; after each, the worker steps until the output
/// has caught up with the input less the spread (a close that waited for more would hang).
fn run(close_spread_ms: u64) -> Outcome {
    let config = WindowConfig {
        close_spread_ms,
        ..WindowConfig::default()
    };
    let info = Arc::new(DeviceInfo {
        device_type: "t".into(),
        site: "s".into(),
        ..DeviceInfo::default()
    });
    timely::execute_directly(move |worker| {
        let step = Rc::new(RefCell::new(0usize));
        let records = Rc::new(RefCell::new(Vec::new()));
        let first_window_steps = Rc::new(RefCell::new(Vec::new()));
        let mut input: VecInput<u64, EnrichedMessage> = VecInput::new();
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            let registry = Vec::<RegistryUpdate>::new()
                .to_stream(scope)
                .resolve_registry();
            let windowed = input.to_stream(scope).aggregate_windows(
                &registry,
                config,
                &AnomalyConfig::default(),
            );
            let (at_step, first_steps) = (step.clone(), first_window_steps.clone());
            let aggregates = windowed.aggregates.inspect_core(move |event| {
                if let Ok((_, batch)) = event
                    && batch.iter().any(|a| a.window_start_ms == START)
                {
                    first_steps.borrow_mut().push(*at_step.borrow());
                }
            });
            let aggregates = aggregates.map(|a| {
                format!(
                    "{} {} {} {} {:?} {} {} {}",
                    a.device_id,
                    a.metric.0,
                    a.window_start_ms,
                    a.count,
                    a.sum,
                    a.min.to_bits(),
                    a.max.to_bits(),
                    a.sum_squares.to_bits()
                )
            });
            let scores = windowed.scores.map(|s| {
                format!(
                    "score {} {} {:?} {} {}",
                    s.device_id,
                    s.ts_ms,
                    s.metric,
                    s.kind.code(),
                    s.score.to_bits()
                )
            });
            let activity = windowed.activity.map(|a| {
                format!(
                    "activity {} {} {} {}",
                    a.device_id, a.window_start_ms, a.first_ts_ms, a.last_ts_ms
                )
            });
            let out = records.clone();
            aggregates
                .concat(scores)
                .concat(activity)
                .inspect(move |line| out.borrow_mut().push(line.clone()))
                .probe()
                .0
        });
        let mut ts = START;
        while ts < START + 150_000 {
            let time = ts - 5_000;
            if time > *input.time() {
                input.advance_to(time);
            }
            for device in 0..DEVICES {
                // Each device sends once a second, at its own offset.
                let offset = device * 1_000 / DEVICES;
                let due = (ts - START) % 1_000;
                if offset < due || offset >= due + 50 {
                    continue;
                }
                let at = ts + offset - due;
                let value = ((device * 7_919 + at / 1_000 * 104_729) % 1_000) as f64 / 10.0;
                input.send(EnrichedMessage {
                    device_id: DeviceId::from(format!("dev-{device}")),
                    device: Arc::clone(&info),
                    ts_ms: at,
                    stamp_ms: time,
                    readings: smallvec::smallvec![
                        Reading {
                            metric: MetricId(0),
                            ts_ms: at,
                            value
                        },
                        Reading {
                            metric: MetricId(1),
                            ts_ms: at,
                            value: -value
                        },
                    ],
                });
            }
            ts += 50;
            *step.borrow_mut() += 1;
            let caught_up = input
                .time()
                .saturating_sub(config.applied_close_spread_ms());
            let mut steps = 0;
            worker.step();
            worker.step_while(|| {
                steps += 1;
                assert!(
                    steps < 10_000,
                    "the output does not catch up with the input less the spread"
                );
                probe.less_than(&caught_up)
            });
        }
        input.close();
        while !probe.done() {
            worker.step();
        }
        let mut records = records.take();
        records.sort();
        Outcome {
            records,
            first_window_steps: first_window_steps.take(),
        }
    })
}

#[test]
fn a_close_spread_over_event_time_emits_what_one_close_does_as_the_input_advances() {
    let at_once = run(0);
    let spread = run(2_000);
    let windows = |o: &Outcome| {
        o.records
            .iter()
            .filter(|r| !r.starts_with("score") && !r.starts_with("activity"))
            .count()
    };
    // Two metrics per device in each of the three windows the data touches (the last one
    // closes when the input does).
    assert_eq!(windows(&at_once), 3 * 2 * DEVICES as usize);
    assert!(at_once.records.iter().any(|r| r.starts_with("activity")));
    assert!(
        at_once.records == spread.records,
        "a spread close changed what came out"
    );
    // At once: the first window's aggregates come out at one advance of the input. Spread over
    // 2 s: 20 slices of 100 ms, one each second advance of 50 ms.
    let distinct = |steps: &[usize]| {
        let mut steps = steps.to_vec();
        steps.dedup();
        steps.len()
    };
    assert_eq!(distinct(&at_once.first_window_steps), 1);
    assert!(
        distinct(&spread.first_window_steps) >= 19,
        "the close came out at advances {:?}",
        spread.first_window_steps
    );
}
