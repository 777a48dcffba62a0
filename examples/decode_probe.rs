//! Decode cost on a recorded file, without the dataflow: `cargo run --release --example
//! decode_probe -- FILE` (used for the profiles in docs/benchmarks.md).
//!
//! Parsing alone is compared with the SIMD JSON crates the field trusts, each the way a source
//! would use it on a message it does not own: `simd-json` parses in place, so each line is first
//! copied into a reused buffer; `sonic-rs` builds its arena-backed `Value`.
use iotpipe::dataflow::schema::SchemaSet;
use iotpipe::dataflow::schema::json::Tape;
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).expect("usage: decode_probe FILE");
    let text = std::fs::read_to_string(path).expect("readable file");
    let lines: Vec<&str> = text.lines().take(400_000).collect();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    // Parses every line with `parse` and prints the time per message, throughput and how many
    // parsed.
    let measure = |what: &str, parse: &mut dyn FnMut(&str) -> bool| {
        let started = Instant::now();
        let ok = lines.iter().filter(|l| parse(l)).count();
        let e = started.elapsed();
        println!(
            "{what:<10}{:>6.0} ns/message {:>6.0} MB/s ({ok} ok)",
            e.as_nanos() as f64 / lines.len() as f64,
            bytes as f64 / e.as_secs_f64() / 1e6
        );
    };
    for _round in 0..3 {
        let mut tape = Tape::default();
        measure("tape", &mut |l| tape.parse(l.as_bytes()).is_ok());

        let mut buffer = Vec::new();
        let mut buffers = simd_json::Buffers::default();
        measure("simd-json", &mut |l| {
            buffer.clear();
            buffer.extend_from_slice(l.as_bytes());
            simd_json::to_tape_with_buffers(&mut buffer, &mut buffers).is_ok()
        });

        measure("sonic-rs", &mut |l| {
            sonic_rs::from_slice::<sonic_rs::Value>(l.as_bytes()).is_ok()
        });

        measure("serde", &mut |l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok()
        });

        let mut decoder = SchemaSet::embedded().decoder();
        measure("decode", &mut |l| decoder.decode(l.as_bytes()).is_ok());
    }
}
