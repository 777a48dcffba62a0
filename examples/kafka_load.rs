//! Loads a JSON Lines file of device messages into a Kafka topic, keyed by device id, as fast
//! as the broker takes it or at a steady rate; and the registry changelog, keyed likewise.
//!
//! ```text
//! cargo run --release --example kafka_load -- --brokers 127.0.0.1:9092 \
//!     --topic iotpipe.telemetry --events target/w1/events.jsonl [--rate 100000]
//! ```
//!
//! Used by `scripts/bench-kafka.sh` to load recorded files; `iotpipe loadgen --to kafka://...`
//! sends a live simulated fleet instead.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// Arguments.
#[derive(Parser)]
struct Args {
    /// Bootstrap brokers.
    #[arg(long)]
    brokers: String,
    /// The topic to write.
    #[arg(long)]
    topic: String,
    /// JSON Lines to send, one message a line, in order.
    #[arg(long)]
    events: PathBuf,
    /// Messages per second (0: as fast as the broker takes them).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Send the file this many times (for a longer steady run).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
}

/// The device id of a message (`device_id` or `id`), or the line itself.
fn key(line: &str) -> &str {
    for field in ["\"device_id\":\"", "\"id\":\""] {
        if let Some(start) = line.find(field).map(|i| i + field.len())
            && let Some(len) = line[start..].find('"')
        {
            return &line[start..start + len];
        }
    }
    line
}

fn main() {
    let args = Args::parse();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let started = Instant::now();
    let mut sent: u64 = 0;
    for _ in 0..args.repeat {
        let file = std::fs::File::open(&args.events).expect("events file");
        for line in std::io::BufReader::with_capacity(1 << 20, file).lines() {
            let line = line.expect("read");
            if line.is_empty() {
                continue;
            }
            if args.rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / args.rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let mut record = BaseRecord::to(&args.topic).key(key(&line)).payload(&line);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            sent += 1;
        }
    }
    producer.flush(Duration::from_secs(300)).expect("flush");
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "sent {sent} messages in {elapsed:.2} s: {:.0} messages/s",
        sent as f64 / elapsed
    );
}
