//! `iotpipe run` against a real Kafka-protocol broker (tansu, sqlite engine): two processes
//! of one worker over eight partitions, checked against the batch computation with one
//! watermark per partition; a registry change published while running; and a process killed
//! mid-stream, after which the restarted cluster's outputs equal an uninterrupted run's; and a
//! run that writes to a real InfluxDB 1.6 as well.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{Engine, Tansu};
use iotpipe::dataflow::PipelineConfig;
use iotpipe::dataflow::registry::parse_registry;
use iotpipe::dataflow::schema::SchemaSet;
use serde_json::Value;

const PARTITIONS: i32 = 8;
const TELEMETRY: &str = "telemetry";
const REGISTRY: &str = "registry";

/// The partition a producer keyed by device id would pick; lines without an id spread by
/// their text.
fn partition_of(line: &str) -> i32 {
    let key = device_of(line).unwrap_or_else(|| line.to_owned());
    // FNV-1a: stable across runs and platforms.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (hash % PARTITIONS as u64) as i32
}

/// The device id of a message, if it has one.
fn device_of(line: &str) -> Option<String> {
    serde_json::from_str::<Value>(line).ok().and_then(|v| {
        v.get("device_id")
            .or_else(|| v.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

struct Fixture {
    tansu: Tansu,
    data: common::Dataset,
    partition_files: Vec<PathBuf>,
    lines: Vec<(i32, String)>,
    registry_lines: Vec<(String, String)>,
}

/// A broker with the telemetry and registry topics, and the dataset split into partitions.
fn fixture(devices: usize, seconds: u64) -> Fixture {
    let tansu = Tansu::start(Engine::Sqlite);
    tansu.create_topics(&[(TELEMETRY, PARTITIONS), (REGISTRY, 1)]);
    let data = common::dataset(devices, seconds);
    let text = std::fs::read_to_string(&data.events).unwrap();
    let lines: Vec<(i32, String)> = text
        .lines()
        .map(|l| (partition_of(l), l.to_owned()))
        .collect();
    let partition_files: Vec<PathBuf> = (0..PARTITIONS)
        .map(|p| {
            let path = data.dir.path().join(format!("partition-{p}.jsonl"));
            let part: String = lines
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, l)| format!("{l}\n"))
                .collect();
            std::fs::write(&path, part).unwrap();
            path
        })
        .collect();
    let registry_lines = std::fs::read_to_string(&data.registry)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["device_id"].as_str().unwrap().to_owned(), l.to_owned())
        })
        .collect();
    Fixture {
        tansu,
        data,
        partition_files,
        lines,
        registry_lines,
    }
}

impl Fixture {
    fn produce_telemetry(&self) {
        self.tansu.produce(
            TELEMETRY,
            self.lines.iter().map(|(p, l)| (Some(*p), "", l.as_bytes())),
        );
    }

    /// Publishes the registry and the telemetry, and starts `processes` processes of one
    /// worker that write to the topics of `run` (partitions idle after 3 s).
    fn start_run(&self, run: &str, processes: usize, extra_toml: &str) -> (Outputs, Cluster) {
        self.start_run_with_source(run, processes, "idle_timeout_ms = 3000", extra_toml)
    }

    /// [`Self::start_run`] with `source_toml` as the `[source]` settings.
    fn start_run_with_source(
        &self,
        run: &str,
        processes: usize,
        source_toml: &str,
        extra_toml: &str,
    ) -> (Outputs, Cluster) {
        self.produce_registry(&self.registry_lines);
        self.produce_telemetry();
        let outputs = Outputs::named(run);
        outputs.create(&self.tansu, 2);
        let mut cluster = Cluster::configure(
            self.data.dir.path(),
            run,
            &self.tansu.brokers(),
            &outputs,
            processes,
            source_toml,
            extra_toml,
        );
        cluster.start();
        (outputs, cluster)
    }

    fn produce_registry(&self, lines: &[(String, String)]) {
        self.tansu.produce(
            REGISTRY,
            lines.iter().map(|(k, v)| (None, k.as_str(), v.as_bytes())),
        );
    }

    /// A store at `url` holding the fixture's registry, imported; the runtime that drives it
    /// and the registry's lines.
    fn store_with_registry(
        &self,
        url: &str,
    ) -> (
        tokio::runtime::Runtime,
        iotpipe::io::connect::store::Store,
        Vec<iotpipe::io::connect::store::registry::RegistryEntry>,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = runtime
            .block_on(iotpipe::io::connect::store::Store::open(
                &iotpipe::io::connect::store::StoreConfig::url(url),
                |_| None,
            ))
            .unwrap();
        let entries: Vec<_> = self
            .registry_lines
            .iter()
            .map(|(_, l)| serde_json::from_str(l).unwrap())
            .collect();
        runtime.block_on(store.import_registry(&entries)).unwrap();
        (runtime, store, entries)
    }

    /// Starts `run` (one process) following the store at `url`, streams the telemetry, waits
    /// for every window `expected` holds, stops it, and checks its aggregates and dead letters
    /// against `expected`; the topics it wrote.
    fn run_following_store(
        &self,
        name: &str,
        url: &str,
        expected: &common::reference::Expected,
    ) -> Outputs {
        let outputs = Outputs::named(name);
        outputs.create(&self.tansu, 2);
        let mut cluster = Cluster::configure(
            self.data.dir.path(),
            name,
            &self.tansu.brokers(),
            &outputs,
            1,
            "idle_timeout_ms = 3000",
            &format!("[store]\nurl = \"{url}\"\n"),
        );
        self.produce_telemetry();
        cluster.start();
        let aggregates = wait_for_all_aggregates(&self.tansu, &outputs, expected, &cluster);
        cluster.stop();
        assert_outputs(&self.tansu, &outputs, &aggregates, expected);
        outputs
    }

    /// The batch computation over the store's history, exported as registry lines.
    fn expected_from_store(
        &self,
        runtime: &tokio::runtime::Runtime,
        store: &iotpipe::io::connect::store::Store,
        config: PipelineConfig,
    ) -> common::reference::Expected {
        let exported = runtime.block_on(store.export_registry()).unwrap();
        let text: String = exported
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        let schemas = SchemaSet::embedded();
        let history = parse_registry(&text, schemas.catalog()).unwrap();
        common::reference::compute_partitions(&self.partition_files, &history, &schemas, config)
    }

    fn expected(&self) -> common::reference::Expected {
        self.expected_with(PipelineConfig::default())
    }

    fn expected_with(&self, config: PipelineConfig) -> common::reference::Expected {
        let schemas = SchemaSet::embedded();
        let registry = std::fs::read_to_string(&self.data.registry).unwrap();
        let changes = parse_registry(&registry, schemas.catalog()).unwrap();
        common::reference::compute_partitions(&self.partition_files, &changes, &schemas, config)
    }
}

/// Output topics of one run (and the telemetry topic it reads).
struct Outputs {
    telemetry: String,
    aggregates: String,
    alerts: String,
    dead_letters: String,
    checkpoints: String,
}

impl Outputs {
    fn create(&self, tansu: &Tansu, partitions: i32) {
        tansu.create_topics(&[
            (&self.aggregates, partitions),
            (&self.alerts, partitions),
            (&self.dead_letters, partitions),
            (&self.checkpoints, 1),
        ]);
    }

    fn named(run: &str) -> Outputs {
        Outputs {
            telemetry: TELEMETRY.to_owned(),
            aggregates: format!("{run}.aggregates"),
            alerts: format!("{run}.alerts"),
            dead_letters: format!("{run}.dead-letters"),
            checkpoints: format!("{run}.checkpoints"),
        }
    }
}

/// A cluster of `iotpipe run` processes.
struct Cluster {
    processes: usize,
    workers: usize,
    children: Vec<Child>,
    config: PathBuf,
    hosts: PathBuf,
    metrics_port: u16,
}

impl Cluster {
    fn configure(
        dir: &Path,
        run: &str,
        brokers: &str,
        outputs: &Outputs,
        processes: usize,
        source_toml: &str,
        extra_toml: &str,
    ) -> Cluster {
        let hosts = dir.join(format!("{run}-hosts.txt"));
        common::write_hostfile(&hosts, processes);
        let metrics_port = common::free_port();
        let config = dir.join(format!("{run}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
drain_timeout_ms = 5000

[kafka]
brokers = "{brokers}"
group_id = "{run}"

[kafka.topics]
telemetry = "{telemetry}"
registry = "{REGISTRY}"
dead_letters = "{dead}"
alerts = "{alerts}"
aggregates = "{aggregates}"
checkpoints = "{checkpoints}"

[source]
{source_toml}
# Once everything is read, close the last windows within seconds.
idle_advance_ms_per_s = 120000
commit_interval_ms = 200

[metrics]
listen = "127.0.0.1:{metrics_port}"

{extra_toml}
"#,
                telemetry = outputs.telemetry,
                dead = outputs.dead_letters,
                alerts = outputs.alerts,
                aggregates = outputs.aggregates,
                checkpoints = outputs.checkpoints,
            ),
        )
        .unwrap();
        Cluster {
            processes,
            workers: 1,
            children: Vec::new(),
            config,
            hosts,
            metrics_port,
        }
    }

    fn start(&mut self) {
        assert!(self.children.is_empty());
        for process in 0..self.processes {
            let log =
                std::fs::File::create(self.config.with_extension(format!("process-{process}.log")))
                    .unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_iotpipe"))
                .arg("run")
                .arg("--config")
                .arg(&self.config)
                .args(["-w", &self.workers.to_string()])
                .args(["-n", &self.processes.to_string()])
                .args(["-p", &process.to_string(), "-h"])
                .arg(&self.hosts)
                .arg("--report")
                .arg(self.report_path(process))
                // Only process 0 serves metrics: the port is the test's.
                .env(
                    "IOTPIPE_METRICS_LISTEN",
                    if process == 0 {
                        format!("127.0.0.1:{}", self.metrics_port)
                    } else {
                        "127.0.0.1:0".to_owned()
                    },
                )
                .env(
                    "IOTPIPE_LOG",
                    "info,iotpipe::commands::run=debug,iotpipe::io::connect::kafka=debug",
                )
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            self.children.push(child);
        }
    }

    fn signal(&self, process: usize, signal: &str) {
        assert!(common::send_signal(self.children[process].id(), signal));
    }

    /// SIGTERM to all; each must exit 0 within 30 s.
    fn stop(&mut self) {
        for process in 0..self.children.len() {
            self.signal(process, "TERM");
        }
        let children: Vec<Child> = self.children.drain(..).collect();
        for (process, mut child) in children.into_iter().enumerate() {
            let status = wait_with_timeout(&mut child, Duration::from_secs(30));
            assert_eq!(
                status,
                Some(0),
                "process {process} did not stop cleanly:\n{}",
                self.log(process)
            );
        }
    }

    fn kill_all(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self, process: usize) -> String {
        std::fs::read_to_string(self.config.with_extension(format!("process-{process}.log")))
            .unwrap_or_default()
    }

    fn metrics(&self) -> String {
        common::scrape_metrics(self.metrics_port)
    }

    fn report_path(&self, process: usize) -> PathBuf {
        self.config
            .with_extension(format!("process-{process}.report.json"))
    }

    /// The sum over processes of a number in their `--report`s (`path` into the JSON).
    fn reported(&self, path: &[&str]) -> u64 {
        (0..self.processes)
            .map(|process| {
                let text = std::fs::read_to_string(self.report_path(process))
                    .unwrap_or_else(|e| panic!("process {process} wrote no report: {e}"));
                let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
                for key in path {
                    value = value[key].take();
                }
                value.as_u64().unwrap_or(0)
            })
            .sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

/// The latest value per key, as sorted values.
fn latest_per_key(records: &[(String, String)]) -> Vec<String> {
    let latest: BTreeMap<&str, &str> = records
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut values: Vec<String> = latest.values().map(|v| v.to_string()).collect();
    values.sort();
    values
}

/// Asserts two sorted line lists are equal, showing only the lines that differ.
fn assert_same_lines(what: &str, got: &[String], want: &[String]) {
    let got_set: BTreeSet<&String> = got.iter().collect();
    let want_set: BTreeSet<&String> = want.iter().collect();
    let missing: Vec<_> = want_set.difference(&got_set).take(20).collect();
    let extra: Vec<_> = got_set.difference(&want_set).take(20).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && got.len() == want.len(),
        "{what}: {} lines, {} expected\nmissing: {missing:#?}\nextra: {extra:#?}",
        got.len(),
        want.len()
    );
}

/// Waits until `topic` holds `count` distinct keys (or the time is up); returns its records.
fn wait_for_keys(
    tansu: &Tansu,
    topic: &str,
    count: usize,
    timeout: Duration,
    cluster: &Cluster,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = tansu.read_all(topic);
        let keys: BTreeSet<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
        if keys.len() >= count || Instant::now() > deadline {
            if keys.len() < count {
                eprintln!(
                    "{topic}: {} of {count} keys after {timeout:?}\n{}",
                    keys.len(),
                    (0..cluster.processes)
                        .map(|p| format!("process {p}:\n{}", cluster.log(p)))
                        .collect::<String>()
                );
            }
            return records;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits (up to 4 minutes) until `outputs` holds every window of `expected`; its records.
fn wait_for_all_aggregates(
    tansu: &Tansu,
    outputs: &Outputs,
    expected: &common::reference::Expected,
    cluster: &Cluster,
) -> Vec<(String, String)> {
    let count = expected.aggregates.len();
    wait_for_keys(
        tansu,
        &outputs.aggregates,
        count,
        Duration::from_secs(240),
        cluster,
    )
}

fn dead_letter_pairs(records: &[(String, String)]) -> Vec<(String, String)> {
    common::dead_letter_pairs_of(&latest_per_key(records))
}

/// Asserts that a finished run's aggregates (the latest per key) and dead letters equal the
/// batch computation's; returns the dead-letter records.
fn assert_outputs(
    tansu: &Tansu,
    outputs: &Outputs,
    aggregates: &[(String, String)],
    expected: &common::reference::Expected,
) -> Vec<(String, String)> {
    assert_same_lines(
        "aggregates",
        &latest_per_key(aggregates),
        &expected.aggregates,
    );
    let dead = tansu.read_all(&outputs.dead_letters);
    assert_eq!(dead_letter_pairs(&dead), expected.dead_letters);
    dead
}

fn alert_event_ids(records: &[(String, String)]) -> BTreeSet<String> {
    records
        .iter()
        .map(|(_, v)| {
            let v: Value = serde_json::from_str(v).unwrap();
            v["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// What a run wrote to its output topics.
struct Written {
    aggregates: Vec<(String, String)>,
    alerts: Vec<(String, String)>,
    dead_letters: Vec<(String, String)>,
}

impl Written {
    /// Reads a run's outputs; dead letters name their telemetry topic, which is the run's own,
    /// as `telemetry`.
    fn read(tansu: &Tansu, outputs: &Outputs) -> Written {
        let topic = &outputs.telemetry;
        let dead_letters = tansu
            .read_all(&outputs.dead_letters)
            .into_iter()
            .map(|(k, v)| {
                (
                    k.replacen(&format!("{topic}/"), "telemetry/", 1),
                    v.replace(&format!("\"topic\":\"{topic}\""), "\"topic\":\"telemetry\""),
                )
            })
            .collect();
        Written {
            aggregates: tansu.read_all(&outputs.aggregates),
            alerts: tansu.read_all(&outputs.alerts),
            dead_letters,
        }
    }

    fn topics(&self) -> [(&str, &Vec<(String, String)>); 3] {
        [
            ("aggregates", &self.aggregates),
            ("alerts", &self.alerts),
            ("dead letters", &self.dead_letters),
        ]
    }

    /// Asserts that every topic holds exactly the records of `want` (the same keys with the
    /// same values, none missing, none extra); returns how many records came more than once.
    fn assert_same_as(&self, what: &str, want: &Written) -> usize {
        let mut duplicates = 0;
        for ((topic, got), (_, expected)) in self.topics().into_iter().zip(want.topics()) {
            let distinct: BTreeSet<&(String, String)> = got.iter().collect();
            let expected: BTreeSet<&(String, String)> = expected.iter().collect();
            let missing: Vec<_> = expected.difference(&distinct).take(5).collect();
            let extra: Vec<_> = distinct.difference(&expected).take(5).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{what}: {topic} differ from the uninterrupted run's\nmissing: {missing:#?}\nextra: {extra:#?}"
            );
            duplicates += got.len() - distinct.len();
        }
        duplicates
    }
}

/// Produces `lines` to `topic` in slices over about `over`, as a live fleet would.
fn stream_telemetry(tansu: &Tansu, topic: &str, lines: &[(i32, String)], over: Duration) {
    let slices = 20;
    for slice in lines.chunks(lines.len().div_ceil(slices).max(1)) {
        tansu.produce(
            topic,
            slice.iter().map(|(p, l)| (Some(*p), "", l.as_bytes())),
        );
        std::thread::sleep(over / slices as u32);
    }
}

/// Starts a cluster of two processes on `run`'s topics with the first third of the telemetry
/// already in Kafka and the rest streamed while it runs; SIGKILLs process 1 once `kill_at`
/// windows are out, checks that process 0 then stops on its own with one clear error, restarts
/// the cluster and lets it finish. Returns what the run wrote.
fn run_killed_at(fixture: &Fixture, run: &str, kill_at: usize, total: usize) -> Written {
    let outputs = Outputs {
        telemetry: format!("{run}.telemetry"),
        ..Outputs::named(run)
    };
    outputs.create(&fixture.tansu, 4);
    fixture
        .tansu
        .create_topics(&[(&outputs.telemetry, PARTITIONS)]);
    let dir = fixture.data.dir.path();
    let brokers = fixture.tansu.brokers();
    let source = "idle_timeout_ms = 3000";
    let mut cluster = Cluster::configure(dir, run, &brokers, &outputs, 2, source, "");
    let (first, rest) = fixture.lines.split_at(fixture.lines.len() / 3);
    stream_telemetry(&fixture.tansu, &outputs.telemetry, first, Duration::ZERO);
    cluster.start();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            stream_telemetry(
                &fixture.tansu,
                &outputs.telemetry,
                rest,
                Duration::from_secs(20),
            )
        });
        wait_for_keys(
            &fixture.tansu,
            &outputs.aggregates,
            kill_at,
            Duration::from_secs(120),
            &cluster,
        );
        cluster.signal(1, "KILL");
        // The survivor loses its peer: it must stop on its own, with one clear error.
        let status = wait_with_timeout(&mut cluster.children[0], Duration::from_secs(30));
        let log = cluster.log(0);
        assert!(
            status.is_some_and(|code| code != 0),
            "{run}: process 0 went on without its peer ({status:?})\n{log}"
        );
        assert!(
            log.contains("iotpipe: cluster peer lost") && !log.contains("panicked at"),
            "{run}: process 0 did not end with one clear error\n{log}"
        );
        cluster.kill_all();
        cluster.start();
    });
    wait_for_keys(
        &fixture.tansu,
        &outputs.aggregates,
        total,
        Duration::from_secs(240),
        &cluster,
    );
    cluster.stop();
    Written::read(&fixture.tansu, &outputs)
}

#[test]
fn a_cluster_killed_early_mid_or_late_writes_exactly_the_uninterrupted_runs_records() {
    let fixture = fixture(120, 480);
    let expected = fixture.expected();
    fixture.produce_registry(&fixture.registry_lines);
    let whole = Outputs {
        telemetry: "uninterrupted.telemetry".to_owned(),
        ..Outputs::named("uninterrupted")
    };
    whole.create(&fixture.tansu, 4);
    fixture
        .tansu
        .create_topics(&[(&whole.telemetry, PARTITIONS)]);
    stream_telemetry(
        &fixture.tansu,
        &whole.telemetry,
        &fixture.lines,
        Duration::ZERO,
    );
    let dir = fixture.data.dir.path();
    let brokers = fixture.tansu.brokers();
    let source = "idle_timeout_ms = 3000";
    let mut cluster = Cluster::configure(dir, "uninterrupted", &brokers, &whole, 2, source, "");
    cluster.start();
    wait_for_all_aggregates(&fixture.tansu, &whole, &expected, &cluster);
    cluster.stop();
    let want = Written::read(&fixture.tansu, &whole);
    assert_eq!(
        want.assert_same_as("uninterrupted", &want),
        0,
        "duplicates without a kill"
    );
    assert!(!want.alerts.is_empty() && !want.dead_letters.is_empty());
    // Each killed run reads the same telemetry from a topic of its own.
    let total = expected.aggregates.len();
    for (run, kill_at) in [
        ("killed-early", total / 10),
        ("killed-mid", total / 2),
        ("killed-late", total * 9 / 10),
    ] {
        let written = run_killed_at(&fixture, run, kill_at, total);
        let duplicates = written.assert_same_as(run, &want);
        let records: usize = written.topics().iter().map(|(_, r)| r.len()).sum();
        eprintln!("{run}: {records} records, {duplicates} written twice");
    }
}

#[test]
fn two_processes_over_eight_partitions_equal_the_batch_computation_and_survive_a_kill() {
    let fixture = fixture(150, 480);
    let expected = fixture.expected();
    let brokers = fixture.tansu.brokers();
    let dir = fixture.data.dir.path();
    fixture.produce_registry(&fixture.registry_lines);
    fixture.produce_telemetry();

    // An uninterrupted run.
    let whole = Outputs::named("whole");
    whole.create(&fixture.tansu, 4);
    let mut cluster = Cluster::configure(
        dir,
        "whole",
        &brokers,
        &whole,
        2,
        "idle_timeout_ms = 3000",
        "",
    );
    cluster.start();
    let aggregates = wait_for_all_aggregates(&fixture.tansu, &whole, &expected, &cluster);
    let metrics = cluster.metrics();
    cluster.stop();
    let dead = assert_outputs(&fixture.tansu, &whole, &aggregates, &expected);
    assert!(
        dead.iter()
            .all(|(k, v)| k.starts_with("telemetry/") && v.contains("\"offset\":")),
        "dead letters name topic, partition and offset"
    );
    let alerts = fixture.tansu.read_all(&whole.alerts);
    let alert_ids = alert_event_ids(&alerts);
    assert!(!alert_ids.is_empty(), "the dataset's faults raise alerts");
    // Each process reports on its stop what it read and wrote; together, everything.
    assert_eq!(
        cluster.reported(&["messages_in"]),
        fixture.lines.len() as u64
    );
    let written = |topic: &str| fixture.tansu.read_all(topic).len() as u64;
    for (sink, topic) in [
        ("aggregates", &whole.aggregates),
        ("alerts", &whole.alerts),
        ("dead_letters", &whole.dead_letters),
    ] {
        assert_eq!(
            cluster.reported(&["records_out", sink]),
            written(topic),
            "{sink}"
        );
    }
    for family in [
        "iotpipe_messages_in_total",
        "iotpipe_records_out_total{sink=\"aggregates\"}",
        "iotpipe_dead_letters_total{reason=\"invalid_json\"}",
        "iotpipe_late_readings_total",
        "iotpipe_consumer_lag_messages{partition=\"0\"}",
        "iotpipe_watermark_lag_seconds",
        "iotpipe_batch_latency_seconds_count",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }

    // Killed late, with the shortest rewind the clock skew allows: the restart resumes
    // mid-stream from the committed offsets and still rebuilds every unwritten window whole.
    let short_skew = PipelineConfig {
        event_time: iotpipe::dataflow::EventTimeConfig {
            max_clock_skew_ms: 60_000,
            ..Default::default()
        },
        ..PipelineConfig::default()
    };
    let expected = fixture.expected_with(short_skew);
    let resumed = Outputs::named("resumed");
    resumed.create(&fixture.tansu, 4);
    // The rewind is window 60 s + lateness 30 s + skew 60 s.
    let extra = "[pipeline.event_time]\nallowed_lateness_ms = 30000\nmax_clock_skew_ms = 60000\n";
    let source = "idle_timeout_ms = 3000\nrewind_ms = 150000";
    let mut cluster = Cluster::configure(dir, "resumed", &brokers, &resumed, 2, source, extra);
    cluster.start();
    wait_for_keys(
        &fixture.tansu,
        &resumed.aggregates,
        expected.aggregates.len() * 2 / 3,
        Duration::from_secs(120),
        &cluster,
    );
    cluster.kill_all();
    // Restarted in another shape: one process of two workers takes all eight partitions.
    cluster.processes = 1;
    cluster.workers = 2;
    cluster.start();
    let aggregates = wait_for_all_aggregates(&fixture.tansu, &resumed, &expected, &cluster);
    let resumed_at: Vec<i64> = (0..cluster.processes)
        .flat_map(|p| {
            cluster
                .log(p)
                .lines()
                .filter(|l| l.contains("partition resumes"))
                .filter_map(|l| l.split("offset=").nth(1)?.split(' ').next()?.parse().ok())
                .collect::<Vec<i64>>()
        })
        .collect();
    cluster.stop();
    assert_eq!(resumed_at.len(), PARTITIONS as usize);
    assert!(
        resumed_at.iter().all(|o| *o > 0),
        "every partition resumes mid-stream: {resumed_at:?}\n{}",
        cluster.log(0)
    );
    assert_outputs(&fixture.tansu, &resumed, &aggregates, &expected);
}

#[test]
fn poison_at_every_partitions_start_and_two_2_mb_messages_leave_every_window_exact() {
    let fixture = fixture(60, 240);
    let expected = fixture.expected();
    fixture.produce_registry(&fixture.registry_lines);
    // Each partition's first message: one of its own registered devices, stamped 2100.
    let mut first_device: BTreeMap<i32, String> = BTreeMap::new();
    for (p, line) in &fixture.lines {
        if let Some(id) = device_of(line) {
            first_device.entry(*p).or_insert(id);
        }
    }
    let poisoned: Vec<(i32, String)> = first_device
        .iter()
        .map(|(p, id)| {
            (
                *p,
                format!(r#"{{"device_id":"{id}","ts":4102444800000,"t":21.5}}"#),
            )
        })
        .collect();
    assert_eq!(poisoned.len(), PARTITIONS as usize);
    // Two 2 MB messages at the same point of partitions 0 and 2, both read by process 0's
    // worker: both partitions get stuck at once.
    let huge: Vec<(i32, String)> = [0, 2]
        .into_iter()
        .map(|p| {
            let line = format!(
                r#"{{"device_id":"{}","ts":1704067300000,"blob":"{}","t":21.5}}"#,
                first_device[&p],
                "x".repeat(2 << 20)
            );
            (p, line)
        })
        .collect();
    let middle = fixture.lines.len() / 2;
    let mut records: Vec<(Option<i32>, &str, &[u8])> = poisoned
        .iter()
        .map(|(p, l)| (Some(*p), "", l.as_bytes()))
        .collect();
    for (i, (p, line)) in fixture.lines.iter().enumerate() {
        if i == middle {
            records.extend(huge.iter().map(|(p, l)| (Some(*p), "", l.as_bytes())));
        }
        records.push((Some(*p), "", line.as_bytes()));
    }
    fixture.tansu.produce(TELEMETRY, records);
    let outputs = Outputs::named("poisoned");
    outputs.create(&fixture.tansu, 2);
    let dir = fixture.data.dir.path();
    let brokers = fixture.tansu.brokers();
    // Responses smaller than the 2 MB message, whatever the default, and never grown: tansu
    // never returns a record larger than a response, so the source must fetch it apart.
    let source = "idle_timeout_ms = 3000\ngrow_responses_after_ms = 0";
    let properties = "[kafka.properties]\n\"fetch.max.bytes\" = \"1048576\"";
    let mut cluster =
        Cluster::configure(dir, "poisoned", &brokers, &outputs, 2, source, properties);
    cluster.start();
    let aggregates = wait_for_all_aggregates(&fixture.tansu, &outputs, &expected, &cluster);
    // Partitions 0 and 2 (process 0, whose metrics the test serves) got past their messages,
    // fetched apart one after the other, never two at once.
    let fetched_apart =
        metric_value(&cluster.metrics(), "iotpipe_messages_fetched_apart_total").unwrap_or(0.0);
    cluster.stop();
    assert!(
        fetched_apart >= 2.0,
        "{fetched_apart} messages fetched apart"
    );
    let log = cluster.log(0);
    let turns: Vec<&str> = log
        .lines()
        .filter_map(|line| {
            if line.contains("fetching its next record apart") {
                Some("start")
            } else if line.contains("record fetched apart:") {
                Some("done")
            } else {
                None
            }
        })
        .collect();
    assert!(
        turns.len() >= 4 && turns.chunks(2).all(|pair| pair == ["start", "done"]),
        "fetches apart overlapped or did not end: {turns:?}"
    );
    assert_same_lines(
        "aggregates",
        &latest_per_key(&aggregates),
        &expected.aggregates,
    );
    // Every expected dead letter, and one per poison message, bounded.
    let dead = fixture.tansu.read_all(&outputs.dead_letters);
    let mut want = expected.dead_letters.clone();
    want.extend(
        poisoned
            .iter()
            .map(|(_, l)| ("future_timestamp".to_owned(), l.clone())),
    );
    want.extend(
        huge.iter()
            .map(|(_, l)| ("too_large".to_owned(), l[..4096].to_owned())),
    );
    want.sort();
    assert_eq!(dead_letter_pairs(&dead), want);
    for (_, too_large) in dead.iter().filter(|(_, v)| v.contains("\"too_large\"")) {
        assert!(too_large.len() < 16 * 1024, "{} bytes", too_large.len());
        assert!(
            huge.iter()
                .any(|(_, l)| too_large.contains(&format!("\"raw_len\":{}", l.len())))
        );
    }
}

/// The `fetch_max_bytes` of each "consumer re-created" line of a process's log, in order.
fn response_sizes(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains("consumer re-created with another response size"))
        .filter_map(|line| {
            let (_, rest) = line.split_once("fetch_max_bytes=")?;
            rest.split(' ').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn workers_the_broker_holds_back_grow_their_responses_go_back_once_caught_up_and_lose_nothing() {
    let fixture = fixture(100, 600);
    let expected = fixture.expected();
    // Responses of 128 KiB (librdkafka wants message.max.bytes below them) and 250 messages
    // fetched ahead a partition: the sqlite engine answers a fetch in tens of milliseconds, so
    // the 60,000 messages hold each worker back for seconds, its polls mostly finding nothing.
    let share: u64 = 128 << 10;
    let properties = format!(
        "[kafka.properties]\n\"message.max.bytes\" = \"100000\"\n\"fetch.max.bytes\" = \"{share}\"\n\"queued.min.messages\" = \"250\""
    );
    let source = "idle_timeout_ms = 3000\ngrow_responses_after_ms = 300";
    let (outputs, mut cluster) =
        fixture.start_run_with_source("catching-up", 2, source, &properties);
    let aggregates = wait_for_all_aggregates(&fixture.tansu, &outputs, &expected, &cluster);
    // Caught up, each worker goes back to its share after twice the step.
    let deadline = Instant::now() + Duration::from_secs(30);
    let sizes = loop {
        let sizes: Vec<Vec<u64>> = (0..2).map(|p| response_sizes(&cluster.log(p))).collect();
        if sizes.iter().all(|s| s.last() == Some(&share)) || Instant::now() > deadline {
            break sizes;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let catching_up = metric_value(&cluster.metrics(), "iotpipe_workers_catching_up");
    cluster.stop();
    eprintln!("response sizes by process: {sizes:?}");
    for (process, sizes) in sizes.iter().enumerate() {
        // Doubled at least once from the share while behind, then back to it, and nothing else.
        let (back, grown) = sizes.split_last().unwrap_or((&0, &[]));
        assert!(
            !grown.is_empty()
                && *back == share
                && grown
                    .iter()
                    .enumerate()
                    .all(|(i, bytes)| *bytes == share << (i + 1)),
            "process {process} did not grow its responses and go back: {sizes:?}\n{}",
            cluster.log(process)
        );
    }
    assert_eq!(
        catching_up,
        Some(0.0),
        "a worker still counts as catching up"
    );
    assert_outputs(&fixture.tansu, &outputs, &aggregates, &expected);
}

#[test]
fn a_broker_down_mid_stream_delays_the_outputs_and_loses_nothing() {
    let mut fixture = fixture(60, 480);
    let expected = fixture.expected();
    let (outputs, mut cluster) = fixture.start_run("outage", 1, "");
    // Down as soon as the first windows are out.
    let before = wait_for_keys(
        &fixture.tansu,
        &outputs.aggregates,
        1,
        Duration::from_secs(120),
        &cluster,
    );
    fixture.tansu.restart_after(Duration::from_secs(3));
    let written_before: BTreeSet<&str> = before.iter().map(|(k, _)| k.as_str()).collect();
    eprintln!(
        "broker down after {} of {} windows",
        written_before.len(),
        expected.aggregates.len()
    );
    assert!(
        written_before.len() < expected.aggregates.len(),
        "the broker went down only after everything was written"
    );
    let aggregates = wait_for_all_aggregates(&fixture.tansu, &outputs, &expected, &cluster);
    cluster.stop();
    assert_outputs(&fixture.tansu, &outputs, &aggregates, &expected);
}

/// The value of an unlabelled metric in a `/metrics` page.
fn metric_value(metrics: &str, family: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(family)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn partitions_that_run_ahead_wait_for_the_slowest_and_nothing_is_lost() {
    let fixture = fixture(60, 480);
    let expected = fixture.expected();
    fixture.produce_registry(&fixture.registry_lines);
    // Seven partitions are in Kafka whole; the last streams in over 20 s, so the frontier
    // creeps through the 480 s of event time and the other seven may run only
    // `max_lead_ms` (60 s) ahead of it.
    let slow_partition = PARTITIONS - 1;
    let (slow, fast): (Vec<_>, Vec<_>) = fixture
        .lines
        .iter()
        .cloned()
        .partition(|(p, _)| *p == slow_partition);
    fixture.tansu.produce(
        TELEMETRY,
        fast.iter().map(|(p, l)| (Some(*p), "", l.as_bytes())),
    );
    let outputs = Outputs::named("aligned");
    outputs.create(&fixture.tansu, 2);
    let mut cluster = Cluster::configure(
        fixture.data.dir.path(),
        "aligned",
        &fixture.tansu.brokers(),
        &outputs,
        1,
        "idle_timeout_ms = 3000",
        "",
    );
    cluster.start();
    let held_back = std::thread::scope(|scope| {
        let streaming = scope
            .spawn(|| stream_telemetry(&fixture.tansu, TELEMETRY, &slow, Duration::from_secs(20)));
        // While the slow partition streams, the others are held back: the gauge says so, and
        // seconds into the stream fewer messages have been read than they hold (unaligned,
        // they are read whole within a second or two).
        let started = Instant::now();
        let mut held_back = None;
        while !streaming.is_finished() {
            // Not served yet while the process starts.
            let Some(metrics) = common::try_scrape_metrics(cluster.metrics_port) else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let ahead = metric_value(&metrics, "iotpipe_partitions_ahead").unwrap_or(0.0);
            let read = metric_value(&metrics, "iotpipe_messages_in_total").unwrap_or(0.0);
            if started.elapsed() >= Duration::from_secs(6) && ahead > 0.0 && held_back.is_none() {
                held_back = Some((ahead, read));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        streaming.join().unwrap();
        held_back
    });
    let (ahead, read) = held_back.expect("no partition was held back 6 s into the stream");
    eprintln!(
        "6 s into the stream: {ahead} partitions held back, {read} of the other partitions' {} \
         messages read",
        fast.len()
    );
    assert!(
        read < fast.len() as f64,
        "the fast partitions were read whole while the slow one was still streaming"
    );
    let aggregates = wait_for_all_aggregates(&fixture.tansu, &outputs, &expected, &cluster);
    assert_eq!(
        metric_value(&cluster.metrics(), "iotpipe_partitions_ahead"),
        Some(0.0),
        "a partition is still held back once the frontier caught up"
    );
    cluster.stop();
    assert_outputs(&fixture.tansu, &outputs, &aggregates, &expected);
}

#[test]
fn a_registry_change_published_while_running_moves_a_device_from_its_time_on() {
    let fixture = fixture(40, 480);
    let expected = fixture.expected();
    let dir = fixture.data.dir.path();
    let (live_change, at_start): (Vec<_>, Vec<_>) = fixture
        .registry_lines
        .iter()
        .cloned()
        .partition(|(_, line)| line.contains("site-moved"));
    assert_eq!(live_change.len(), 1);
    fixture.produce_registry(&at_start);
    let outputs = Outputs::named("live");
    outputs.create(&fixture.tansu, 1);
    // No partition goes idle: the telemetry comes after the start, and none of it may be
    // stamped late for having come after its partition was set aside.
    let mut cluster = Cluster::configure(
        dir,
        "live",
        &fixture.tansu.brokers(),
        &outputs,
        1,
        "idle_timeout_ms = 600000",
        "",
    );
    cluster.start();
    std::thread::sleep(Duration::from_secs(3));
    fixture.produce_registry(&live_change);
    fixture.produce_telemetry();
    // Windows of the moved device, up to the last that closes while every partition speaks.
    let moved_device = |line: &String| line.contains("\"device_id\":\"dev-000001\"");
    let want: Vec<String> = expected
        .aggregates
        .iter()
        .filter(|l| moved_device(l))
        .cloned()
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    let got = loop {
        let records = fixture.tansu.read_all(&outputs.aggregates);
        let got: Vec<String> = latest_per_key(&records)
            .into_iter()
            .filter(|l| moved_device(l))
            .collect();
        if got.iter().filter(|l| l.contains("site-moved")).count() >= 2 || Instant::now() > deadline
        {
            break got;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    cluster.stop();
    assert!(
        got.iter().any(|l| l.contains("site-moved"))
            && got.iter().any(|l| !l.contains("site-moved")),
        "dev-000001 has windows before and after its move: {got:#?}\n{}",
        cluster.log(0)
    );
    for line in &got {
        assert!(
            want.contains(line),
            "{line} is not in the batch computation"
        );
    }
}

#[test]
fn run_with_an_alerts_topic_the_broker_does_not_have_stops_with_one_error_naming_the_field() {
    let fixture = fixture(30, 240);
    fixture.produce_registry(&fixture.registry_lines);
    fixture.produce_telemetry();
    let outputs = Outputs {
        alerts: "no-such-topic".into(),
        ..Outputs::named("missing-topic")
    };
    fixture.tansu.create_topics(&[
        (&outputs.aggregates, 2),
        (&outputs.dead_letters, 2),
        (&outputs.checkpoints, 1),
    ]);
    let mut cluster = Cluster::configure(
        fixture.data.dir.path(),
        "missing-topic",
        &fixture.tansu.brokers(),
        &outputs,
        1,
        "idle_timeout_ms = 3000",
        "",
    );
    cluster.start();
    let mut child = cluster.children.pop().unwrap();
    // Before reading anything: a producer without a delivery deadline would hold the missing
    // topic's records, and the written frontier, forever.
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    let log = cluster.log(0);
    assert_eq!(status, Some(1), "{log}");
    let last = log.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "iotpipe: kafka.topics.alerts: kafka topic no-such-topic cannot be written"
        ) && last.contains("create it"),
        "{log}"
    );
}

#[test]
fn run_into_an_influxdb_that_refuses_its_credentials_stops_with_one_error_and_loses_nothing() {
    let fixture = fixture(30, 240);
    let expected = fixture.expected();
    let influx = common::influx::Influx::start_with_auth();
    const WRONG: &str = "not-the-password-4711";
    let influx_toml = |password: &str| {
        format!(
            "[influx]\nurl = \"{}\"\nlinger_ms = 20\nusername = \"admin\"\npassword = \"{password}\"\n\
             backoff = {{ initial_ms = 50, max_ms = 200 }}\n",
            influx.url()
        )
    };
    let (outputs, mut cluster) = fixture.start_run("influx-auth", 2, &influx_toml(WRONG));
    // Every process stops by itself, with exit 1: its own InfluxDB writer gives up, or its peer
    // is lost.
    let children: Vec<Child> = cluster.children.drain(..).collect();
    for (process, mut child) in children.into_iter().enumerate() {
        let status = wait_with_timeout(&mut child, Duration::from_secs(90));
        assert_eq!(
            status,
            Some(1),
            "process {process}:\n{}",
            cluster.log(process)
        );
    }
    let log = cluster.log(0);
    let last = log.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("iotpipe: influx.username and influx.password")
            && last.contains("HTTP 401"),
        "{log}"
    );
    assert!(!log.contains(WRONG), "the password is not shown:\n{log}");
    // The password fixed, a restart writes every window to both, as if nothing had happened:
    // nothing InfluxDB refused was checkpointed.
    let mut fixed = Cluster::configure(
        fixture.data.dir.path(),
        "influx-auth",
        &fixture.tansu.brokers(),
        &outputs,
        2,
        "idle_timeout_ms = 3000",
        &influx_toml("secret"),
    );
    fixed.start();
    let aggregates = wait_for_all_aggregates(&fixture.tansu, &outputs, &expected, &fixed);
    let want = common::influx::windows_of_lines(&expected.aggregates);
    assert_eq!(influx.wait_for_windows(want.len()), want);
    fixed.stop();
    assert_outputs(&fixture.tansu, &outputs, &aggregates, &expected);
}

/// InfluxDB is down from the start: `run` holds its outputs back (an outage, not a refusal);
/// SIGTERM ends it within `influx.drain_timeout_ms`, exit 0, saying points are unwritten and
/// committing none of them; with InfluxDB back, the next run writes every window to both.
#[test]
fn run_stopped_while_influxdb_is_down_exits_after_the_drain_timeout_and_loses_nothing() {
    let fixture = fixture(30, 240);
    let expected = fixture.expected();
    let mut influx = common::influx::Influx::start();
    influx.kill();
    // `api` set: nothing to ask of an InfluxDB that is not there.
    let influx_toml = format!(
        "[influx]\nurl = \"{}\"\napi = \"v1\"\nlinger_ms = 20\ntimeout_ms = 500\n\
         drain_timeout_ms = 2000\nbackoff = {{ initial_ms = 50, max_ms = 200 }}\n",
        influx.url()
    );
    let (outputs, mut cluster) = fixture.start_run("influx-down", 1, &influx_toml);
    let log = cluster.config.with_extension("process-0.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("influxdb write failed; retrying")
    {
        assert!(Instant::now() < deadline, "{}", cluster.log(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped = Instant::now();
    cluster.stop();
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "{:?}",
        stopped.elapsed()
    );
    assert!(
        cluster.log(0).contains("points were not written"),
        "{}",
        cluster.log(0)
    );
    influx.run();
    let mut again = Cluster::configure(
        fixture.data.dir.path(),
        "influx-down",
        &fixture.tansu.brokers(),
        &outputs,
        1,
        "idle_timeout_ms = 3000",
        &influx_toml,
    );
    again.start();
    let aggregates = wait_for_all_aggregates(&fixture.tansu, &outputs, &expected, &again);
    let want = common::influx::windows_of_lines(&expected.aggregates);
    assert_eq!(influx.wait_for_windows(want.len()), want);
    again.stop();
    assert_outputs(&fixture.tansu, &outputs, &aggregates, &expected);
}

#[test]
fn run_writes_to_influxdb_what_it_writes_to_kafka_exports_the_latency_and_serves_the_dashboard() {
    let fixture = fixture(60, 480);
    let expected = fixture.expected();
    let influx = common::influx::Influx::start();
    let dashboard_port = common::free_port();
    let influx_toml = format!(
        "[influx]\nurl = \"{}\"\nlinger_ms = 20\n\n[dashboard]\nlisten = \"127.0.0.1:{dashboard_port}\"\n",
        influx.url()
    );
    let (outputs, mut cluster) = fixture.start_run("influx", 2, &influx_toml);
    let aggregates = wait_for_all_aggregates(&fixture.tansu, &outputs, &expected, &cluster);
    // What Kafka got, InfluxDB got: the windows of the batch computation, field for field.
    let want = common::influx::windows_of_lines(&expected.aggregates);
    assert_eq!(influx.wait_for_windows(want.len()), want);
    // Process 0's dashboard follows the whole cluster and charts from InfluxDB.
    let api = |path: &str| -> Value {
        let (status, body) = common::http_get(dashboard_port, path).expect("dashboard answers");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    };
    let overview = api("/api/overview");
    assert_eq!(
        overview["windows"].as_u64(),
        Some(want.len() as u64),
        "{overview}"
    );
    let ((device, metric, _, _), _) = want.first_key_value().unwrap();
    let series = api(&format!("/api/series?device={device}&metric={metric}"));
    assert_eq!(series["source"], "influxdb");
    let charted = want
        .keys()
        .filter(|(d, m, _, _)| d == device && m == metric)
        .count();
    assert_eq!(
        series["points"].as_array().unwrap().len(),
        charted.min(60),
        "{series}"
    );
    let metrics = cluster.metrics();
    for family in [
        "iotpipe_influx_points_total",
        "iotpipe_influx_latency_seconds_count",
    ] {
        let value: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(family)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {family} in\n{metrics}"));
        assert!(value > 0.0, "{family} {value}");
    }
    // A real Prometheus scrapes process 0 (in OpenMetrics, as it asks) and answers PromQL with
    // the message counter that /metrics shows.
    let prometheus = common::prometheus::Prometheus::scraping(cluster.metrics_port);
    let scraped = prometheus.value("iotpipe_messages_in_total", Duration::from_secs(30));
    let shown: f64 = cluster
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("iotpipe_messages_in_total ")?.parse().ok())
        .unwrap();
    assert!(shown > 0.0);
    assert_eq!(scraped, Some(shown), "{}", prometheus.log());
    let histogram = prometheus.value(
        "iotpipe_influx_latency_seconds_count",
        Duration::from_secs(10),
    );
    assert!(histogram.is_some_and(|n| n > 0.0), "{histogram:?}");
    cluster.stop();
    assert_outputs(&fixture.tansu, &outputs, &aggregates, &expected);
}

/// `run` following the metadata store: the registry imported, then, in the store, a model's
/// devices lose their own thresholds, the model's default thresholds tighten, and a building
/// moves to another site, each from an event time inside the data. The aggregates equal the
/// batch computation over the store's history (exported as registry lines), and the new
/// thresholds and site show from their effective times on.
#[test]
fn run_following_the_store_rethresholds_a_model_and_moves_a_building_from_their_effective_times() {
    use iotpipe::io::connect::store::entities::Kind;
    use iotpipe::io::connect::store::write::Precondition;
    use serde_json::json;

    let fixture = fixture(40, 360);
    let postgres = common::postgres::Postgres::start();
    let (runtime, store, _) = fixture.store_with_registry(&postgres.url());

    let start = common::START_MS as i64;
    let (unset_at, tighten_at, move_at) = (start + 210_000, start + 240_000, start + 300_000);
    let put = |kind, id: &str, body: &Value, at| {
        runtime
            .block_on(store.put(kind, id, body, at, Precondition::None))
            .unwrap_or_else(|e| panic!("{id}: {e}"));
    };
    let active = |filters: &[(&str, String)]| {
        runtime
            .block_on(store.list(Kind::Device, filters, None, None, None, 1000))
            .unwrap()
    };
    // The model most devices have; its devices lose their own thresholds.
    let mut by_model: BTreeMap<String, usize> = BTreeMap::new();
    for device in active(&[("status", "active".into())]) {
        *by_model
            .entry(device.body["model_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let (model, _) = by_model.iter().max_by_key(|(_, n)| **n).unwrap();
    let devices = active(&[("model_id", model.clone()), ("status", "active".into())]);
    assert!(devices.len() >= 2, "{by_model:?}");
    let metric = devices[0].body["threshold_overrides"]
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .expect("imported devices have thresholds");
    for device in &devices {
        let mut body = device.body.clone();
        body["threshold_overrides"] = json!({});
        put(Kind::Device, &device.id, &body, unset_at);
    }
    // The model's default threshold for that metric: every reading breaches it.
    let mut model_body = runtime
        .block_on(store.get(Kind::Model, model, None))
        .unwrap()
        .unwrap()
        .body;
    model_body["default_thresholds"] = json!({ metric.clone(): {"min": 1e9, "max": 1e9} });
    put(Kind::Model, model, &model_body, tighten_at);
    // The building of dev-000005 moves to another site of the store.
    let building_id = active(&[])
        .into_iter()
        .find(|d| d.id == "dev-000005")
        .unwrap()
        .body["place_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let building = runtime
        .block_on(store.get(Kind::Place, &building_id, None))
        .unwrap()
        .unwrap();
    let sites = runtime
        .block_on(store.list(
            Kind::Place,
            &[("kind", "site".into())],
            None,
            None,
            None,
            1000,
        ))
        .unwrap();
    let new_site = sites
        .iter()
        .find(|s| Some(s.id.as_str()) != building.body["parent_id"].as_str())
        .unwrap();
    let mut moved = building.body.clone();
    moved["parent_id"] = json!(new_site.id);
    put(Kind::Place, &building_id, &moved, move_at);

    // The batch computation over the store's history, as registry lines.
    let expected = fixture.expected_from_store(&runtime, &store, PipelineConfig::default());
    let window_of = |line: &String| -> Value { serde_json::from_str(line).unwrap() };
    let of_model: BTreeSet<String> = devices.iter().map(|d| d.id.clone()).collect();
    let breaches = |from: i64, to: i64| -> u64 {
        expected
            .aggregates
            .iter()
            .map(window_of)
            .filter(|w| {
                of_model.contains(w["device_id"].as_str().unwrap())
                    && w["metric"] == metric.as_str()
            })
            .filter(|w| (from..to).contains(&w["window_start_ms"].as_i64().unwrap()))
            .map(|w| w["threshold_breaches"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        breaches(unset_at, tighten_at),
        0,
        "no thresholds between the two changes"
    );
    assert!(
        breaches(tighten_at, i64::MAX) > 0,
        "the model's default applies from its time"
    );
    let new_site_name = new_site.body["name"].as_str().unwrap();
    assert!(
        expected
            .aggregates
            .iter()
            .map(window_of)
            .any(|w| w["device_id"] == "dev-000005"
                && w["site"] == new_site_name
                && w["window_start_ms"].as_i64().unwrap() >= move_at),
        "dev-000005 is at its building's new site after the move"
    );

    fixture.run_following_store("store", &postgres.url(), &expected);
}

/// `run` following the store is SIGKILLed while changes keep coming (devices moved to other
/// buildings, models re-thresholded, one change made while it is down), then restarted: every
/// change is applied exactly once, so the outputs equal the batch computation over the
/// store's final history. Each change holds from an event time ahead of the data streamed so
/// far, so it is known before any message it concerns.
#[test]
fn run_following_the_store_killed_while_changes_keep_coming_applies_each_change_once() {
    use iotpipe::io::connect::store::entities::Kind;
    use iotpipe::io::connect::store::write::Precondition;
    use serde_json::json;

    const SECONDS: u64 = 480;
    const SLICES: usize = 24;
    let fixture = fixture(60, SECONDS);
    let postgres = common::postgres::Postgres::start();
    let url = postgres.create_database("killed");
    let (runtime, store, entries) = fixture.store_with_registry(&url);
    let devices = runtime
        .block_on(store.list(
            Kind::Device,
            &[("status", "active".into())],
            None,
            None,
            None,
            1000,
        ))
        .unwrap();
    // A second site with a building, from the beginning, for devices to move to.
    let org = entries[0].org.clone().unwrap();
    let east = format!("{org}/site-east");
    for (id, body) in [
        (
            east.clone(),
            json!({"kind": "site", "parent_id": org, "name": "site-east"}),
        ),
        (
            format!("{east}/B1"),
            json!({"kind": "building", "parent_id": east, "name": "B1"}),
        ),
    ] {
        runtime
            .block_on(store.put(Kind::Place, &id, &body, 0, Precondition::None))
            .unwrap();
    }
    let buildings = runtime
        .block_on(store.list(
            Kind::Place,
            &[("kind", "building".into())],
            None,
            None,
            None,
            1000,
        ))
        .unwrap();
    let models = runtime
        .block_on(store.list(Kind::Model, &[], None, None, None, 1000))
        .unwrap();
    assert!(buildings.len() >= 2 && models.len() >= 2);
    // The dataset's own registry changes (dev-000001 to dev-000004) stay out of the way: the
    // test's changes concern other devices, and models none of those four has. Those models'
    // devices lose their own thresholds, so their model's defaults apply.
    let special = |id: &str| ["dev-000001", "dev-000002", "dev-000003", "dev-000004"].contains(&id);
    let devices: Vec<_> = devices.into_iter().filter(|d| !special(&d.id)).collect();
    let taken: BTreeSet<String> = entries
        .iter()
        .filter(|e| special(&e.device_id))
        .filter_map(|e| e.model.clone())
        .collect();
    let models: Vec<_> = models
        .into_iter()
        .filter(|m| !taken.contains(&m.id))
        .collect();
    assert!(
        !models.is_empty(),
        "every model has one of the dataset's changed devices"
    );
    for device in devices
        .iter()
        .filter(|d| models.iter().any(|m| d.body["model_id"] == m.id.as_str()))
    {
        let mut body = device.body.clone();
        body["threshold_overrides"] = json!({});
        runtime
            .block_on(store.put(Kind::Device, &device.id, &body, 0, Precondition::None))
            .unwrap();
    }

    // The changes, each made once the stream reaches its slice, holding from 120 s of event
    // time past the data streamed by then: moves and tightened model thresholds, alternating.
    let start = common::START_MS as i64;
    let slice_end_ms =
        |slice: usize| start + (slice as i64 + 1) * (SECONDS as i64 * 1000) / SLICES as i64;
    let metric_of = |model: &str| -> String {
        let entry = entries
            .iter()
            .find(|e| e.model.as_deref() == Some(model))
            .unwrap();
        entry.thresholds.keys().next().unwrap().clone()
    };
    let mut changes: Vec<(usize, Kind, String, Value, i64)> = Vec::new();
    for (n, slice) in (2..16).step_by(2).enumerate() {
        let at = slice_end_ms(slice) + 120_000;
        if n % 2 == 0 {
            let device = &devices[(n * 7 + 10) % devices.len()];
            let mut body = device.body.clone();
            // To a building of another site, so the move shows in the windows' site.
            let here = body["place_id"].as_str().unwrap().to_owned();
            let site_of = |id: &str| {
                buildings
                    .iter()
                    .find(|b| b.id == id)
                    .map(|b| b.body["parent_id"].clone())
            };
            let there = buildings
                .iter()
                .find(|b| {
                    Some(b.body["parent_id"].clone()) != site_of(&here) && b.effective_ms <= at
                })
                .unwrap();
            body["place_id"] = json!(there.id);
            changes.push((slice, Kind::Device, device.id.clone(), body, at));
        } else {
            let model = &models[n % models.len()];
            let mut body = model.body.clone();
            body["default_thresholds"] =
                json!({ metric_of(&model.id): {"min": 1e9, "max": 1e9 + n as f64} });
            changes.push((slice, Kind::Model, model.id.clone(), body, at));
        }
    }
    let apply = |(_, kind, id, body, at): &(usize, Kind, String, Value, i64)| {
        runtime
            .block_on(store.put(*kind, id, body, *at, Precondition::None))
            .unwrap_or_else(|e| panic!("{id}: {e}"));
    };

    let outputs = Outputs {
        telemetry: "killed-store.telemetry".to_owned(),
        ..Outputs::named("killed-store")
    };
    outputs.create(&fixture.tansu, 2);
    fixture
        .tansu
        .create_topics(&[(&outputs.telemetry, PARTITIONS)]);
    let skew = "[pipeline.event_time]\nallowed_lateness_ms = 30000\nmax_clock_skew_ms = 10000\n";
    let mut cluster = Cluster::configure(
        fixture.data.dir.path(),
        "killed-store",
        &fixture.tansu.brokers(),
        &outputs,
        1,
        "idle_timeout_ms = 3000",
        &format!("[store]\nurl = \"{url}\"\n\n{skew}"),
    );
    cluster.start();
    let slice_len = fixture.lines.len().div_ceil(SLICES);
    let mut pending = changes.iter().peekable();
    let kill_after = 9;
    for (slice, lines) in fixture.lines.chunks(slice_len).enumerate() {
        fixture.tansu.produce(
            &outputs.telemetry,
            lines.iter().map(|(p, l)| (Some(*p), "", l.as_bytes())),
        );
        while let Some(change) = pending.next_if(|c| c.0 <= slice) {
            apply(change);
        }
        if slice == kill_after {
            cluster.signal(0, "KILL");
            cluster.kill_all();
            // A change made while the service is down.
            if let Some(change) = pending.next() {
                apply(change);
            }
            cluster.start();
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    for change in pending {
        apply(change);
    }

    let mut config = PipelineConfig::default();
    config.event_time.max_clock_skew_ms = 10_000;
    let expected = fixture.expected_from_store(&runtime, &store, config);
    // Every change shows in the batch computation: the data must exercise them.
    let windows: Vec<Value> = expected
        .aggregates
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (_, kind, id, body, at) in &changes {
        let after = |w: &&Value| w["window_start_ms"].as_i64().unwrap() + 60_000 > *at;
        let shows = match kind {
            Kind::Device => {
                let site_id = buildings
                    .iter()
                    .find(|b| b.id == body["place_id"].as_str().unwrap())
                    .unwrap()
                    .body["parent_id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let site = site_id.rsplit('/').next().unwrap().to_owned();
                windows
                    .iter()
                    .filter(after)
                    .any(|w| w["device_id"] == id.as_str() && w["site"] == site.as_str())
            }
            _ => {
                let of_model: BTreeSet<&str> = devices
                    .iter()
                    .filter(|d| d.body["model_id"] == id.as_str())
                    .map(|d| d.id.as_str())
                    .collect();
                let metric = metric_of(id);
                windows.iter().filter(after).any(|w| {
                    of_model.contains(w["device_id"].as_str().unwrap())
                        && w["metric"] == metric.as_str()
                        && w["threshold_breaches"].as_u64().unwrap() > 0
                })
            }
        };
        assert!(
            shows,
            "{kind:?} {id} from {at} shows in no window: {body}\n{:?}",
            windows
                .iter()
                .filter(|w| w["device_id"] == id.as_str())
                .map(|w| (
                    w["window_start_ms"].clone(),
                    w["site"].clone(),
                    w["metric"].clone()
                ))
                .collect::<Vec<_>>()
        );
    }
    let aggregates = wait_for_all_aggregates(&fixture.tansu, &outputs, &expected, &cluster);
    // How long changes took to reach enrichment is measured.
    let metrics = cluster.metrics();
    let propagated = metrics
        .lines()
        .find(|l| l.starts_with("iotpipe_registry_propagation_seconds_count"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(propagated > 0, "{metrics}");
    cluster.stop();
    assert_outputs(&fixture.tansu, &outputs, &aggregates, &expected);
}

/// `run` following the store applies the silences the store holds: with one over every cause
/// from the data's start, every alert event it writes is kept, marked with the silence, so no
/// channel of the dispatcher sends it.
#[test]
fn run_following_the_store_marks_what_a_stored_silence_covers() {
    use iotpipe::dataflow::alert::Cause;
    use iotpipe::dataflow::alert::control::SilenceMatch;

    let fixture = fixture(40, 360);
    let postgres = common::postgres::Postgres::start();
    let (runtime, store, _) = fixture.store_with_registry(&postgres.url());
    let everything = SilenceMatch {
        causes: vec![
            Cause::Anomaly,
            Cause::Threshold,
            Cause::Silence,
            Cause::Site,
            Cause::Building,
            Cause::Clock,
        ],
        ..SilenceMatch::default()
    };
    let silence = runtime
        .block_on(store.create_silence(
            everything,
            common::START_MS,
            common::START_MS + 24 * 3_600_000,
            "ops",
            "the whole test",
        ))
        .unwrap();
    let expected = fixture.expected_from_store(&runtime, &store, PipelineConfig::default());

    let outputs = fixture.run_following_store("silenced", &postgres.url(), &expected);
    let alerts = fixture.tansu.read_all(&outputs.alerts);
    assert!(!alerts.is_empty(), "the fixture's faults open alerts");
    for (_, value) in &alerts {
        let event: Value = serde_json::from_str(value).unwrap();
        assert_eq!(event["silenced_by"], silence.id.as_str(), "{event}");
    }
}
