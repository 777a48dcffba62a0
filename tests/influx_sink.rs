//! The InfluxDB sink operator against a real InfluxDB 1.6: a point InfluxDB refuses comes out
//! as a dead letter with its reason, and the rest of its batch lands; an InfluxDB gone when the
//! writers finish is given up on after `drain_timeout_ms`, with the points it did not take.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::influx::Influx;
use iotpipe::dataflow::model::{DeadLetter, DeadLetterReason, ExactSum, MetricId, WindowAggregate};
use iotpipe::dataflow::schema::SchemaSet;
use iotpipe::io::connect::influx::config::InfluxConfig;
use iotpipe::io::sinks::influx::lines::aggregate_line;
use iotpipe::io::sinks::influx::pool::{InfluxPool, Lane};
use iotpipe::io::sinks::influx::sink::{HeldBack, InfluxTarget, WriteToInflux};
use iotpipe::io::support::backoff::Backoff;
use iotpipe::io::support::metrics::Metrics;
use timely::dataflow::InputHandle;
use timely::dataflow::operators::Input;
use timely::dataflow::operators::Inspect;

const START_MS: u64 = 1_704_067_200_000;

fn aggregate(device: usize, window: u64, min: f64) -> WindowAggregate {
    WindowAggregate {
        device_id: format!("dev-{device:06}").into(),
        metric: MetricId(0),
        window_start_ms: START_MS + window * 60_000,
        site: "site-1".into(),
        count: 2,
        min,
        max: 2.0,
        sum: ExactSum(3_000_000_000),
        sum_squares: 0.0,
        first_ts_ms: 0,
        last_ts_ms: 0,
        threshold_breaches: 0,
    }
}

#[test]
fn a_refused_point_is_a_dead_letter_and_the_rest_of_its_batch_lands() {
    let influx = Influx::start();
    let metrics = Arc::new(Metrics::default());
    // Plain bodies here (the replay tests send gzip), so both encodings meet a real server.
    let config = InfluxConfig {
        gzip: false,
        ..InfluxConfig::for_url(&influx.url())
    };
    let pool = InfluxPool::start(&config, Arc::clone(&metrics)).unwrap();
    // 1,000 windows in one batch; two of them hold a value InfluxDB cannot store.
    let bad = [(17, 3), (64, 9)];
    let records: Vec<WindowAggregate> = (0..100)
        .flat_map(|device| (0..10).map(move |window| (device, window)))
        .map(|(device, window)| {
            let min = if bad.contains(&(device, window)) {
                f64::NAN
            } else {
                1.0
            };
            aggregate(device, window, min)
        })
        .collect();
    let dead = write_and_drain(&pool, records);
    pool.finish().expect("every point answered");
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in dead.iter() {
        assert_eq!(d.reason, DeadLetterReason::StoreRejected);
        assert!(d.raw.contains("min=NaN"), "{}", d.raw);
        assert!(d.detail.contains("HTTP 400"), "{}", d.detail);
    }
    let answer = influx.query(
        "iotpipe",
        &format!(
            "SELECT count(\"count\") FROM iotpipe_aggregate WHERE time >= {START_MS}ms AND \
             time < {}ms",
            START_MS + 3_600_000
        ),
    );
    assert_eq!(answer["results"][0]["series"][0]["values"][0][1], 998);
    assert_eq!(metrics.influx_points.get(), 998);
}

/// Writes `records` through a sink into `pool` and closes its input; steps until every time is
/// written or the pool has stalled, then drops the dataflow (as the commands' drains do).
/// Returns the records InfluxDB refused, as dead letters.
fn write_and_drain(pool: &InfluxPool, records: Vec<WindowAggregate>) -> Vec<DeadLetter> {
    let catalog = Arc::clone(SchemaSet::embedded().catalog());
    let dead: Arc<Mutex<Vec<DeadLetter>>> = Arc::default();
    let seen = Arc::clone(&dead);
    let worker_pool = pool.clone();
    timely::execute_directly(move |worker| {
        let mut input = InputHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let target = InfluxTarget {
                pool: worker_pool.clone(),
                skip_before_ms: 0,
                full: HeldBack::default(),
                lane: Lane::Derived,
            };
            scope
                .input_from(&mut input)
                .container::<Vec<WindowAggregate>>()
                .write_to_influx("Aggregates", target, move |a, buffer| {
                    aggregate_line(buffer, a, &catalog)
                })
                .inspect(move |d| seen.lock().unwrap().push(d.clone()));
        });
        for record in records {
            input.send(record);
        }
        drop(input);
        while worker.has_dataflows() && !worker_pool.stalled() {
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
        for dataflow in worker.installed_dataflows() {
            worker.drop_dataflow(dataflow);
        }
    });
    std::mem::take(&mut *dead.lock().unwrap())
}

#[test]
fn writers_whose_influxdb_is_gone_give_up_after_the_drain_timeout_and_count_what_is_unwritten() {
    let mut influx = Influx::start();
    let config = InfluxConfig {
        batch_points: 100,
        timeout_ms: 500,
        drain_timeout_ms: 2_000,
        backoff: Backoff {
            initial_ms: 50,
            max_ms: 200,
        },
        ..InfluxConfig::for_url(&influx.url())
    };
    let pool = InfluxPool::start(&config, Arc::new(Metrics::default())).unwrap();
    // While InfluxDB answers, finishing waits for everything and owes nothing.
    write_and_drain(&pool, (0..300).map(|d| aggregate(d, 0, 1.0)).collect());
    assert!(!pool.stalled());
    influx.kill();
    let started = Instant::now();
    write_and_drain(&pool, (0..250).map(|d| aggregate(d, 1, 1.0)).collect());
    // On a thread of its own, so that writers that never give up fail the test, not hang it.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(pool.finish()).unwrap());
    let unwritten = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("the writers gave up within 30 s")
        .expect_err("InfluxDB is gone");
    let waited = started.elapsed();
    // Every point of the second lot, and only those: one point per window.
    assert_eq!(unwritten.points, 250, "{unwritten}");
    let message = unwritten.to_string();
    assert!(message.contains("influx.drain_timeout_ms"), "{message}");
    assert!(message.contains(&influx.url()[7..]), "{message}");
    // Given up after the drain timeout, not before, and not much after.
    assert!(
        waited >= Duration::from_millis(2_000) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
}
