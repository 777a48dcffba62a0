//! Windowing throughput: enriched readings through `AggregateWindows` and `RollupSites` on one
//! worker, from input to closed windows.

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use iotpipe::dataflow::anomaly::AnomalyConfig;
use iotpipe::dataflow::model::{
    DeviceId, DeviceInfo, EnrichedMessage, MetricId, Reading, Threshold,
};
use iotpipe::dataflow::{
    AggregateWindows, RegistryUpdate, ResolveRegistry, RollupSites, WindowConfig,
};
use timely::dataflow::operators::{Probe, ToStream};
use timely::dataflow::{InputHandle, ProbeHandle};

const DEVICES: usize = 10_000;
const SECONDS: u64 = 120;

fn messages() -> Vec<(u64, EnrichedMessage)> {
    let devices: Vec<(DeviceId, Arc<DeviceInfo>)> = (0..DEVICES)
        .map(|i| {
            let info = DeviceInfo {
                device_type: "thermostat".into(),
                firmware: "1.0.0".into(),
                schema: "v1".into(),
                org: format!("org-{:03}", i / 500),
                site: format!("site-{:04}", i / 50),
                building: "B1".into(),
                model: "TH-100".into(),
                thresholds: vec![(
                    MetricId(0),
                    Threshold {
                        min: 16.0,
                        max: 27.0,
                    },
                )],
            };
            (DeviceId::from(format!("dev-{i:06}")), Arc::new(info))
        })
        .collect();
    let mut out = Vec::with_capacity(DEVICES * SECONDS as usize);
    for second in 0..SECONDS {
        for (i, (id, info)) in devices.iter().enumerate() {
            let ts_ms = second * 1000 + i as u64 % 1000;
            let readings = (0..3)
                .map(|m| Reading {
                    metric: MetricId(m),
                    ts_ms,
                    value: 20.0 + (i % 7) as f64 + m as f64,
                })
                .collect();
            out.push((
                ts_ms,
                EnrichedMessage {
                    device_id: id.clone(),
                    device: Arc::clone(info),
                    ts_ms,
                    stamp_ms: ts_ms,
                    readings,
                },
            ));
        }
    }
    out
}

fn window(c: &mut Criterion) {
    let input = messages();
    let mut group = c.benchmark_group("window");
    group.throughput(Throughput::Elements(input.len() as u64 * 3));
    group.sample_size(10);
    group.bench_function("aggregate_and_rollup_10k_devices_3_metrics", |b| {
        b.iter_batched(
            || input.clone(),
            |messages| {
                timely::execute_directly(move |worker| {
                    let mut handle = InputHandle::new();
                    let probe = ProbeHandle::new();
                    worker.dataflow::<u64, _, _>(|scope| {
                        let registry = Vec::<RegistryUpdate>::new()
                            .to_stream(scope)
                            .resolve_registry();
                        handle
                            .to_stream(scope)
                            .aggregate_windows(
                                &registry,
                                WindowConfig::default(),
                                &AnomalyConfig::default(),
                            )
                            .aggregates
                            .rollup_sites()
                            .probe_with(&probe);
                    });
                    for (time, message) in messages {
                        if time > *handle.time() + 1000 {
                            handle.advance_to(time);
                            worker.step();
                        }
                        handle.send(message);
                    }
                })
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, window);
criterion_main!(benches);
