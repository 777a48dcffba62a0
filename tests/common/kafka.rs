//! A real Kafka-protocol broker for tests: tansu, started on a free loopback port in a temp
//! dir and killed on drop; and plain clients to create topics, produce and read them back.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// Where `tansu` is: on PATH, or where `cargo install` puts it.
fn tansu_binary() -> PathBuf {
    let installed = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cargo/bin/tansu"))
        .filter(|p| p.exists());
    installed.unwrap_or_else(|| PathBuf::from("tansu"))
}

/// A running tansu broker.
pub struct Tansu {
    child: Child,
    engine: Engine,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

/// tansu's storage engines.
#[derive(Clone, Copy, Debug)]
pub enum Engine {
    /// Durable and correct; about 22k msg/s.
    Sqlite,
    /// Fast, for throughput runs that read from the beginning only.
    Memory,
}

impl Tansu {
    /// Starts a broker and waits until it accepts connections.
    pub fn start(engine: Engine) -> Tansu {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let child = Self::spawn(engine, port, dir.path());
        Tansu {
            child,
            engine,
            port,
            dir,
        }
    }

    /// Kills the broker (SIGKILL) and starts it again on the same port and data.
    pub fn restart_after(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Self::spawn(self.engine, self.port, self.dir.path());
    }

    fn spawn(engine: Engine, port: u16, dir: &std::path::Path) -> Child {
        let url = format!("tcp://127.0.0.1:{port}");
        let storage = match engine {
            Engine::Sqlite => "sqlite://tansu.db",
            Engine::Memory => "memory://tansu/",
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("tansu.log"))
            .unwrap();
        let child = Command::new(tansu_binary())
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", storage, "--cluster-id", "iotpipe-test"])
            .current_dir(dir)
            .env_remove("STORAGE_ENGINE")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("CLUSTER_ID")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("tansu: {e} (scripts/test.sh installs it: cargo install tansu)")
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// The bootstrap address.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates topics through the admin API.
    pub fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .unwrap();
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let results = runtime
            .block_on(admin.create_topics(&new, &AdminOptions::new()))
            .unwrap();
        for result in results {
            result.unwrap();
        }
    }

    /// Produces `(partition, key, value)` records (partition `None`: by key) and waits for
    /// every acknowledgement.
    pub fn produce<'a>(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = (Option<i32>, &'a str, &'a [u8])>,
    ) {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            // Order within a partition is the test's input: retries must not reorder it.
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000")
            // Room for the poison tests' oversized messages.
            .set("message.max.bytes", "8000000")
            .create()
            .unwrap();
        for (partition, key, value) in records {
            let mut record = BaseRecord::to(topic).key(key).payload(value);
            if let Some(p) = partition {
                record = record.partition(p);
            }
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(120)).unwrap();
    }

    /// Reads a whole topic as it stands, `(key, value)` in partition order: every partition
    /// up to the end offset it had when the read began.
    pub fn read_all(&self, topic: &str) -> Vec<(String, String)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", "iotpipe-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let timeout = Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(Some(topic), timeout).unwrap();
        let partitions = metadata.topics()[0].partitions().len() as i32;
        let mut assignment = TopicPartitionList::new();
        let mut remaining = std::collections::BTreeMap::new();
        for p in 0..partitions {
            let (low, high) = consumer.fetch_watermarks(topic, p, timeout).unwrap();
            if high > low {
                remaining.insert(p, high);
            }
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !remaining.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{topic}: could not read to its end"
            );
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message.unwrap();
            let text =
                |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
            let partition = message.partition();
            if remaining
                .get(&partition)
                .is_some_and(|end| message.offset() < *end)
            {
                records.push((text(message.key()), text(message.payload())));
                if message.offset() + 1 >= remaining[&partition] {
                    remaining.remove(&partition);
                }
            }
        }
        records
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
