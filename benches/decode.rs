//! Decoding throughput per schema variant, on messages from the simulated fleet.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iotpipe::dataflow::schema::SchemaSet;
use iotpipe::io::sources::fleet::{Fleet, FleetConfig};

fn messages() -> Vec<String> {
    let mut fleet = Fleet::new(FleetConfig {
        devices: 2_000,
        bad_rate: 0.0,
        ..FleetConfig::default()
    });
    let mut out = Vec::new();
    fleet.advance_to(FleetConfig::default().start_ms + 20_000, &mut out);
    out.into_iter().map(|(_, line)| line).collect()
}

fn decode(c: &mut Criterion) {
    let all = messages();
    let schemas = SchemaSet::embedded();
    let mut group = c.benchmark_group("decode");
    for (variant, marker) in [
        ("v1_flat", "\"ts\""),
        ("v2_nested", "\"metrics\""),
        ("v3_batch", "\"batch\""),
    ] {
        let lines: Vec<&String> = all
            .iter()
            .filter(|l| l.contains(marker) && (marker != "\"metrics\"" || !l.contains("\"batch\"")))
            .take(10_000)
            .collect();
        let bytes: usize = lines.iter().map(|l| l.len()).sum();
        group.throughput(Throughput::Bytes(bytes as u64));
        let mut decoder = schemas.decoder();
        group.bench_function(variant, |b| {
            b.iter(|| {
                let mut readings = 0;
                for line in &lines {
                    readings += decoder
                        .decode(line.as_bytes())
                        .map_or(0, |d| d.message.readings.len());
                }
                readings
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
