//! Each heavy stage of `iotpipe replay` alone, on a recorded file: how far decoding and
//! windowing each are from their own limit (issue 20). `scripts/bench-replay.sh --stage decode`
//! and `--stage window` run it.
//!
//! ```text
//! cargo run --release --example stages -- decode EVENTS REGISTRY WORKERS
//! cargo run --release --example stages -- window EVENTS REGISTRY WORKERS
//! ```
//!
//! - `decode`: the file already in memory, `WORKERS` threads each decode a contiguous share of
//!   its lines with the embedded schemas (the tape reader, variant matching, unit conversion,
//!   range checks): the source's work per message, without reading, admitting or the dataflow.
//! - `window`: every message already decoded, admitted at its watermark (as `replay` stamps it),
//!   stripped of late readings and enriched with its registry entry, all before the clock
//!   starts; then `AggregateWindows` (with scoring) and `RollupSites` on `WORKERS` timely
//!   workers, each fed its devices' messages in time order, until every window has closed.
//!
//! Both print `messages`, `readings` and `elapsed` lines as `replay` does.
use std::sync::Arc;
use std::time::Instant;

use differential_dataflow::Hashable;
use iotpipe::dataflow::anomaly::AnomalyConfig;
use iotpipe::dataflow::event_time::EventTimeConfig;
use iotpipe::dataflow::ingest::{Ingestor, Provenance};
use iotpipe::dataflow::metadata::{LineEntities, MetadataHistory};
use iotpipe::dataflow::model::{DeviceId, EnrichedMessage, SharedDeviceInfo, TimeMs};
use iotpipe::dataflow::schema::SchemaSet;
use iotpipe::dataflow::{AggregateWindows, ResolveRegistry, RollupSites, WindowConfig};
use iotpipe::io::support::schema_files::load_registry;
use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

/// Lines admitted per batch, as a replay chunk of a few hundred kilobytes holds.
const BATCH_LINES: usize = 2_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [stage, events, registry, workers] = &args[..] else {
        eprintln!("usage: stages decode|window EVENTS REGISTRY WORKERS");
        std::process::exit(2);
    };
    let workers: usize = workers.parse().expect("WORKERS is a number");
    let text = std::fs::read(events).expect("EVENTS is readable");
    let lines: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let schemas = SchemaSet::embedded();
    let changes = load_registry(registry.as_ref(), &schemas).expect("REGISTRY loads");
    match stage.as_str() {
        "decode" => decode(&lines, &schemas, workers),
        "window" => window(&lines, &schemas, &changes, workers),
        other => panic!("unknown stage {other}: decode or window"),
    }
}

fn report(messages: usize, readings: usize, started: Instant) {
    let elapsed = started.elapsed().as_secs_f64();
    println!("messages          {messages}");
    println!("readings          {readings}");
    println!("elapsed           {elapsed:.3} s");
    println!(
        "throughput        {:.0} messages/s",
        messages as f64 / elapsed
    );
}

fn decode(lines: &[&[u8]], schemas: &SchemaSet, workers: usize) {
    let share = lines.len().div_ceil(workers);
    let started = Instant::now();
    let readings: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = lines
            .chunks(share)
            .map(|part| {
                scope.spawn(move || {
                    let mut decoder = schemas.decoder();
                    part.iter()
                        .filter_map(|line| decoder.decode(line).ok())
                        .map(|d| d.message.readings.len())
                        .sum::<usize>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    report(lines.len(), readings, started);
}

/// What `replay` would hand `AggregateWindows`, per worker: `(time, message)` in time order.
fn enriched_shares(
    lines: &[&[u8]],
    schemas: &SchemaSet,
    history: &Arc<MetadataHistory>,
    workers: usize,
) -> Vec<Vec<(TimeMs, EnrichedMessage)>> {
    let event_time = EventTimeConfig::default();
    let window = WindowConfig::default();
    let mut ingestor = Ingestor::new(schemas.clone(), Arc::clone(history), event_time);
    let mut shares = vec![Vec::new(); workers];
    let mut entries: std::collections::HashMap<DeviceId, SharedDeviceInfo> = Default::default();
    for (i, batch_lines) in lines.chunks(BATCH_LINES).enumerate() {
        let mut batch = ingestor.start_batch();
        for line in batch_lines {
            ingestor.ingest(line, Provenance::default(), &mut batch);
        }
        if i == 0 {
            ingestor.release_held(&mut batch);
        }
        for mut message in batch.messages {
            let keep: Vec<bool> = message
                .stamped(event_time.allowed_lateness_ms)
                .map(|(r, w)| !window.is_late(r.ts_ms, w))
                .collect();
            let mut index = 0;
            message.readings.retain(|_| {
                index += 1;
                keep[index - 1]
            });
            let Some(device) = history.device_at(&message.device_id, message.ts_ms) else {
                continue;
            };
            // One shared entry per device version, as `Enrich`'s cache hands out.
            let device = match entries.get(&message.device_id) {
                Some(known) if **known == *device => Arc::clone(known),
                _ => {
                    entries.insert(message.device_id.clone(), Arc::clone(&device));
                    device
                }
            };
            if message.readings.is_empty() {
                continue;
            }
            let worker = (message.device_id.hashed() % workers as u64) as usize;
            shares[worker].push((
                batch.time_ms,
                EnrichedMessage {
                    device_id: message.device_id,
                    device,
                    ts_ms: message.ts_ms,
                    stamp_ms: message.watermark_ms,
                    readings: message.readings,
                },
            ));
        }
    }
    shares
}

fn window(
    lines: &[&[u8]],
    schemas: &SchemaSet,
    changes: &[iotpipe::dataflow::registry::RegistryChange],
    workers: usize,
) {
    let history = Arc::new(MetadataHistory::of_changes(changes));
    let prepared = Instant::now();
    let shares = enriched_shares(lines, schemas, &history, workers);
    eprintln!(
        "prepared in {:.1} s, shares {:?}",
        prepared.elapsed().as_secs_f64(),
        shares.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let messages: usize = shares.iter().map(Vec::len).sum();
    let readings: usize = shares.iter().flatten().map(|(_, m)| m.readings.len()).sum();
    let shares = Arc::new(std::sync::Mutex::new(shares));
    let changes = Arc::new(changes.to_vec());
    let started = Instant::now();
    timely::execute(timely::Config::process(workers), move |worker| {
        let share = std::mem::take(&mut shares.lock().unwrap()[worker.index()]);
        let mut messages = InputHandle::new();
        let mut registry = InputHandle::new();
        let probe = ProbeHandle::new();
        worker.dataflow::<TimeMs, _, _>(|scope| {
            let registry = scope.input_from(&mut registry).resolve_registry();
            scope
                .input_from(&mut messages)
                .aggregate_windows(
                    &registry,
                    WindowConfig::default(),
                    &AnomalyConfig::default(),
                )
                .aggregates
                .rollup_sites()
                .probe_with(&probe);
        });
        if worker.index() == 0 {
            let mut entities = LineEntities::default();
            for update in changes.iter().flat_map(|change| entities.updates(change)) {
                registry.send(update);
            }
        }
        drop(registry);
        for (time, message) in share {
            if time > *messages.time() {
                messages.advance_to(time);
                worker.step();
            }
            messages.send(message);
        }
        drop(messages);
        while !probe.done() {
            worker.step();
        }
    })
    .expect("timely runs");
    report(messages, readings, started);
}
