//! Reads a keyed topic from its beginning to the end it has when the read begins and prints the
//! latest value of each key, sorted, one a line: what a compacted topic converges to, to
//! compare with a file `replay` wrote. Says on stderr how many records and keys it read.
//!
//! ```text
//! cargo run --release --example kafka_latest -- --brokers 127.0.0.1:9092 \
//!     --topic iotpipe.aggregates > latest.jsonl
//! ```
//!
//! Used by `scripts/bench-rescale.sh` to check that a restarted cluster lost nothing.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Arguments.
#[derive(Parser)]
struct Args {
    /// Bootstrap brokers.
    #[arg(long)]
    brokers: String,
    /// The topic to read.
    #[arg(long)]
    topic: String,
    /// Give up if the end is not reached in this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", "iotpipe-kafka-latest")
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(&args.topic), timeout)?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    // Each partition's end as the read begins; partitions already at it are done.
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(&args.topic, partition, timeout)?;
        if high > low {
            ends.insert(partition, high);
        }
        assignment.add_partition_offset(&args.topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let mut latest: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut records = 0u64;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(format!("{}: the end was not reached in time", args.topic).into());
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let Some(&end) = ends.get(&message.partition()) else {
            continue;
        };
        if message.offset() < end {
            records += 1;
            latest.insert(
                message.key().unwrap_or_default().to_vec(),
                message.payload().unwrap_or_default().to_vec(),
            );
        }
        if message.offset() + 1 >= end {
            ends.remove(&message.partition());
        }
    }
    let mut values: Vec<&Vec<u8>> = latest.values().collect();
    values.sort();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for value in values {
        out.write_all(value)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    eprintln!("records {records} keys {}", latest.len());
    Ok(())
}
