//! `iotpipe run`: the pipeline as a service, from Kafka to Kafka, on a timely cluster.
//!
//! Each process follows the registry changelog ([`RegistryFollower`]), shares one producer
//! among its workers' sinks ([`SinkProducer`]) and serves `/metrics`. Each worker reads its
//! share of the telemetry partitions ([`KafkaSource`]) into the one dataflow of
//! [`crate::dataflow::pipeline`], whose dead letters, alert events and (optionally) window
//! aggregates it writes to their topics, and commits its partitions' resume points as the
//! written frontier moves ([`crate::io::sources::kafka::checkpoint`]).
//!
//! Stopping: on SIGTERM or Ctrl-C every worker stops reading, waits (up to `drain_timeout_ms`)
//! for what it produced to be acknowledged, commits, and leaves the dataflow without closing
//! its inputs, so windows still open are not emitted half-full; the next run rebuilds them.
//! A timely cluster stops and starts as a whole: a process that loses a peer exits with an
//! error, and the cluster is restarted, with the same shape or another.

pub mod config;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concat, Concatenate, Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

use crate::dataflow::PipelineConfig;
use crate::dataflow::alert::AlertControl;
use crate::dataflow::model::{DeadLetterReason, TimeMs};
use crate::dataflow::schema::SchemaSet;
use crate::io::connect::influx::config::{InfluxConfig, InfluxConfigError};
use crate::io::connect::kafka::{KafkaConfig, KafkaSetupError};
use crate::io::connect::store::StoreConfig;
use crate::io::serve::dashboard::Dashboard;
use crate::io::sinks::files::jsonl;
use crate::io::sinks::influx::pool::InfluxPool;
use crate::io::sinks::influx::sink::HeldBack;
use crate::io::sinks::influx::write_outputs;
use crate::io::sinks::kafka::{ProduceTo, SinkFailure, SinkProducer, SinkTarget};
use crate::io::sinks::live_view::{LiveStats, ViewedStreams, deliver_to_view};
use crate::io::sources::inputs::{PipelineSources, VecInput, feed_live};
use crate::io::sources::kafka::registry::RegistryFollower;
use crate::io::sources::kafka::telemetry::{IdleFloor, KafkaSource, PartitionReport, SourceConfig};
use crate::io::sources::live_registry::{ForwardedChange, LiveRegistry};
use crate::io::sources::store::StoreFollower;
use crate::io::support::cluster::{ClusterConfig, ClusterError};
use crate::io::support::latency::ArrivalLatency;
use crate::io::support::metrics::{Metrics, count_outputs};
use config::{RunConfig, RunConfigError};

/// Everything `iotpipe run` needs.
#[derive(Clone)]
pub struct ServiceJob {
    /// Brokers and topics.
    pub kafka: KafkaConfig,
    /// Reading, idleness and commits.
    pub source: SourceConfig,
    /// Message schemas.
    pub schemas: SchemaSet,
    /// Pipeline semantics.
    pub pipeline: PipelineConfig,
    /// Where `/metrics` is served (none: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// Where process 0 serves the dashboard (none: not served). The same on every process.
    pub dashboard_listen: Option<SocketAddr>,
    /// The tokens the dashboard's actions need (none: it only shows).
    pub dashboard_tokens: crate::io::serve::registry_api::auth::Tokens,
    /// How long a stopping worker waits for its records to be acknowledged (ms).
    pub drain_timeout_ms: u64,
    /// Set to stop (SIGTERM).
    pub stop: Arc<AtomicBool>,
    /// The InfluxDB readings, aggregates, rollups, anomalies and alert events also go to.
    pub influx: Option<InfluxConfig>,
    /// The metadata store whose change log the registry follows (none: the registry topic).
    pub store: Option<StoreConfig>,
}

/// What this process of the service did, from its counters when it stopped.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServiceReport {
    /// Messages read from the telemetry topic.
    pub messages_in: u64,
    /// Messages admitted with their readings.
    pub messages_admitted: u64,
    /// Dead letters by reason (reasons never seen left out).
    pub dead_letters: BTreeMap<DeadLetterReason, u64>,
    /// Readings that arrived after their window closed.
    pub late_readings: u64,
    /// Records the broker acknowledged, by sink (`alerts`, `aggregates`, `dead_letters`,
    /// `checkpoints`).
    pub records_out: BTreeMap<&'static str, u64>,
    /// Points InfluxDB accepted.
    pub influx_points: u64,
    /// Wall-clock seconds from start to stop.
    pub elapsed_s: f64,
}

impl ServiceReport {
    fn from_metrics(metrics: &Metrics, elapsed: Duration) -> Self {
        let dead_letters = DeadLetterReason::ALL
            .into_iter()
            .map(|reason| (reason, metrics.dead_letter_count(reason)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let records_out = ["alerts", "aggregates", "dead_letters", "checkpoints"]
            .into_iter()
            .map(|sink| (sink, metrics.records_out(sink).get()))
            .collect();
        Self {
            messages_in: metrics.messages_in.get(),
            messages_admitted: metrics.messages_admitted.get(),
            dead_letters,
            late_readings: metrics.late_readings.get(),
            records_out,
            influx_points: metrics.influx_points.get(),
            elapsed_s: elapsed.as_secs_f64(),
        }
    }
}

impl std::fmt::Display for ServiceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "read {} messages ({} admitted, {} dead letters, {} late readings) in {:.1} s; \
             written:",
            self.messages_in,
            self.messages_admitted,
            self.dead_letters.values().sum::<u64>(),
            self.late_readings,
            self.elapsed_s
        )?;
        for (sink, n) in &self.records_out {
            write!(f, " {sink} {n},")?;
        }
        write!(f, " influxdb points {}", self.influx_points)
    }
}

/// Runs the service `config` describes until `stop` is set: loads its schemas, resolves its
/// alert rules, and runs [`run_service_job`] on its cluster.
pub fn run_service(
    config: RunConfig,
    stop: Arc<AtomicBool>,
) -> Result<ServiceReport, ServiceError> {
    let mut config = config;
    let schemas = config.schemas()?;
    config.resolve(&schemas)?;
    let dashboard_tokens = match &config.dashboard.action_token_env {
        Some(name) => {
            use crate::io::serve::registry_api::auth::{Role, TokenConfig, Tokens};
            let token = TokenConfig {
                role: Role::Write,
                token_env: name.clone(),
            };
            Tokens::load(&[token], |n| std::env::var(n).ok()).map_err(|_| {
                RunConfigError::Invalid {
                    field: "dashboard.action_token_env",
                    message: format!("${name} is not set (or empty): export the token there"),
                }
            })?
        }
        None => Default::default(),
    };
    let job = ServiceJob {
        kafka: config.kafka.clone(),
        source: config.source.clone(),
        schemas,
        pipeline: config.pipeline.clone(),
        metrics_listen: config.metrics.listen,
        dashboard_listen: config.dashboard.listen,
        dashboard_tokens,
        drain_timeout_ms: config.drain_timeout_ms,
        stop,
        influx: config.influx.clone(),
        store: config.store.clone(),
    };
    run_service_job(job, &config.cluster)
}

/// The service could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] RunConfigError),
    /// The cluster shape is wrong.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Kafka could not be set up.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// The dashboard could not listen.
    #[error("dashboard.listen {addr}: {source}")]
    Dashboard {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics endpoint could not listen.
    #[error("metrics.listen {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// InfluxDB could not be set up.
    #[error(transparent)]
    Influx(#[from] InfluxConfigError),
    /// The metadata store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::io::connect::store::StoreError),
    /// Timely could not start (a peer is unreachable, for example).
    #[error("timely: {0}")]
    Timely(String),
    /// A worker failed.
    #[error("worker failed: {0}")]
    Worker(String),
    /// InfluxDB says it cannot be written to (authorisation, database).
    #[error(transparent)]
    InfluxSink(#[from] crate::io::connect::influx::write::InfluxSinkFailure),
    /// An output topic is missing.
    #[error(transparent)]
    MissingTopic(#[from] crate::io::sinks::kafka::MissingTopic),
    /// Kafka refuses every record for one of the output topics.
    #[error("{field}: {failure}")]
    Sink {
        /// The config field naming the topic.
        field: &'static str,
        /// What Kafka said.
        failure: SinkFailure,
    },
}

/// Runs until `job.stop` is set, and reports what this process did.
pub fn run_service_job(
    job: ServiceJob,
    cluster: &ClusterConfig,
) -> Result<ServiceReport, ServiceError> {
    let started = Instant::now();
    let timely_config = cluster.to_timely()?;
    if cluster.processes > 1 {
        crate::io::support::cluster::end_on_lost_peer();
    }
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = job.metrics_listen {
        let local = crate::io::serve::metrics::serve(addr, Arc::clone(&metrics))
            .map_err(|source| ServiceError::Metrics { addr, source })?;
        tracing::info!(%local, "metrics at /metrics");
    }
    let live = Arc::new(LiveRegistry::default());
    let (forward, changes) = channel();
    let forward = cluster.is_leader().then_some(forward);
    let catalog = Arc::clone(job.schemas.catalog());
    let (live_view, follower_metrics, stop) = (
        Arc::clone(&live),
        Arc::clone(&metrics),
        Arc::clone(&job.stop),
    );
    // Silences and acknowledgements live in the store: without one, there are none.
    let (forward_controls, controls) = match (&job.store, cluster.is_leader()) {
        (Some(_), true) => {
            let (sender, receiver) = channel();
            (Some(sender), Some(receiver))
        }
        _ => (None, None),
    };
    let follower = match &job.store {
        Some(store) => Follower::Store(StoreFollower::start(
            store,
            catalog,
            live_view,
            forward,
            forward_controls,
            follower_metrics,
            stop,
        )?),
        None => Follower::Topic(RegistryFollower::start(
            &job.kafka,
            catalog,
            live_view,
            forward,
            follower_metrics,
            stop,
        )?),
    };
    let producer = SinkProducer::create(&job.kafka, Arc::clone(&metrics))?;
    let topics = &job.kafka.topics;
    let mut outputs = vec![
        ("kafka.topics.dead_letters", topics.dead_letters.as_str()),
        ("kafka.topics.alerts", topics.alerts.as_str()),
    ];
    if let Some(aggregates) = &topics.aggregates {
        outputs.push(("kafka.topics.aggregates", aggregates.as_str()));
    }
    producer.check_topics(&outputs, &job.kafka.brokers, Duration::from_secs(10))?;
    let worker_producer = producer.clone();
    let influx = match &job.influx {
        Some(config) => Some(InfluxPool::start(config, Arc::clone(&metrics))?),
        None => None,
    };
    let worker_influx = influx.clone();
    // Every process follows the view when the dashboard is on (their dataflows must match);
    // process 0's worker 0 receives the records and serves them.
    let view = job.dashboard_listen.map(|_| {
        Arc::new(Mutex::new(
            LiveStats::new().with_device_windows(influx.is_none()),
        ))
    });
    if let (Some(addr), Some(stats), true) = (job.dashboard_listen, &view, cluster.is_leader()) {
        let dashboard = Dashboard::new(
            Arc::clone(stats),
            Arc::clone(&metrics),
            Arc::clone(job.schemas.catalog()),
            influx.as_ref(),
            job.pipeline.window.length_ms,
        )
        .with_store(job.store.as_ref())
        .with_action_tokens(job.dashboard_tokens.clone());
        let local = dashboard
            .serve(addr)
            .map_err(|source| ServiceError::Dashboard { addr, source })?;
        tracing::info!(%local, "dashboard at /");
    }
    let changes = Arc::new(Mutex::new(Some(changes)));
    let controls = Arc::new(Mutex::new(controls));
    tracing::info!(
        brokers = %job.kafka.brokers,
        workers = cluster.workers,
        processes = cluster.processes,
        process = cluster.process,
        "service starting"
    );
    let worker_job = job.clone();
    let report_metrics = Arc::clone(&metrics);
    let guards = timely::execute(timely_config, move |worker| {
        let (changes, controls) = if worker.index() == 0 {
            (
                changes.lock().expect("not poisoned").take(),
                controls.lock().expect("not poisoned").take(),
            )
        } else {
            (None, None)
        };
        let context = WorkerContext {
            job: &worker_job,
            live: &live,
            metrics: &metrics,
            producer: &worker_producer,
            influx: worker_influx.as_ref(),
            view: view.as_ref().map(|v| (worker.index() == 0, v)),
            changes,
            controls,
        };
        run_worker(worker, context)
    })
    .map_err(ServiceError::Timely)?;
    let mut failure = None;
    for result in guards.join() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(ServiceError::Kafka(e)),
            Err(e) => failure = Some(ServiceError::Worker(e)),
        }
    }
    if let Some(sink) = producer.failure() {
        let topics = &job.kafka.topics;
        let field = if sink.topic == topics.dead_letters {
            "kafka.topics.dead_letters"
        } else if sink.topic == topics.alerts {
            "kafka.topics.alerts"
        } else if Some(&sink.topic) == topics.aggregates.as_ref() {
            "kafka.topics.aggregates"
        } else {
            "kafka.topics.checkpoints"
        };
        failure = Some(ServiceError::Sink {
            field,
            failure: sink,
        });
    }
    // Checkpoints are produced detached: make sure the last ones are out.
    if !producer.flush(Duration::from_millis(job.drain_timeout_ms)) {
        tracing::warn!("stopped with records unacknowledged; the next run writes them again");
    }
    if let Some(sink) = influx.as_ref().and_then(InfluxPool::failure) {
        failure = Some(ServiceError::InfluxSink(sink));
    }
    if let Some(Err(unwritten)) = influx.map(InfluxPool::finish) {
        // Not lost: their offsets are not committed, so the next run writes them.
        tracing::warn!(%unwritten, "stopped with points unwritten; the next run writes them");
    }
    tracing::info!("workers stopped");
    job.stop.store(true, Ordering::Release);
    follower.join();
    match failure {
        Some(e) => Err(e),
        None => {
            let report = ServiceReport::from_metrics(&report_metrics, started.elapsed());
            tracing::info!(%report, "service stopped");
            Ok(report)
        }
    }
}

/// Whichever reads the registry: the changelog topic or the store's change log.
enum Follower {
    Topic(RegistryFollower),
    Store(StoreFollower),
}

impl Follower {
    fn join(self) {
        match self {
            Follower::Topic(follower) => follower.join(),
            Follower::Store(follower) => follower.join(),
        }
    }
}

struct WorkerContext<'a> {
    job: &'a ServiceJob,
    live: &'a Arc<LiveRegistry>,
    metrics: &'a Arc<Metrics>,
    producer: &'a SinkProducer,
    influx: Option<&'a InfluxPool>,
    /// With the dashboard on: whether this worker receives the view's records, and the view.
    view: Option<(bool, &'a Arc<Mutex<LiveStats>>)>,
    changes: Option<Receiver<ForwardedChange>>,
    /// Silences and acknowledgements the store follower forwards (worker 0 of process 0,
    /// with a store).
    controls: Option<Receiver<AlertControl>>,
}

fn wall_clock_ms() -> TimeMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as TimeMs)
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    context: WorkerContext<'_>,
) -> Result<(), KafkaSetupError> {
    let WorkerContext {
        job,
        live,
        metrics,
        producer,
        influx,
        view,
        changes,
        controls,
    } = context;
    let index = worker.index();
    let peers = worker.peers();
    // Sources consult the registry before a message enters: wait until it is whole.
    while !live.is_loaded() {
        if job.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let event_time = job.pipeline.event_time;
    let mut source = KafkaSource::open(
        &job.kafka,
        job.source.clone(),
        &job.schemas,
        &job.pipeline,
        Arc::clone(live),
        Arc::clone(metrics),
        Arc::new(producer.clone()),
        index,
        peers,
    )?;

    // Every worker's partition report, seen by all: the floor of workers whose partitions are
    // all idle.
    let floor = Rc::new(RefCell::new(IdleFloor::new(
        peers,
        job.source.idle_advance_ms_per_s,
    )));
    let mut reports: VecInput<u64, (usize, PartitionReport)> = InputHandle::new();
    worker.dataflow::<u64, _, _>(|scope| {
        let floor = Rc::clone(&floor);
        scope
            .input_from(&mut reports)
            .broadcast()
            .inspect(move |(worker, report)| {
                floor.borrow_mut().report(*worker, *report, Instant::now())
            });
    });

    let full = Rc::new(Cell::new(false));
    let influx_full = HeldBack::default();
    let source_probe = ProbeHandle::new();
    let registry_probe = ProbeHandle::new();
    // Registry changes sent, not yet seen by enrichment: (time sent at, wall time made).
    let mut in_flight: Vec<(TimeMs, i64)> = Vec::new();
    let written_probe = ProbeHandle::new();
    let influx_probe = ProbeHandle::new();
    let mut sources = PipelineSources::new();
    let target = |topic: &str| SinkTarget {
        producer: producer.clone(),
        topic: topic.to_owned(),
        skip_before_ms: source.skip_before_ms(),
        full: Rc::clone(&full),
        metrics: Arc::clone(metrics),
    };
    worker.dataflow::<TimeMs, _, _>(|scope| {
        let (outputs, counts) = sources.build(scope, &job.pipeline);
        let counts = counts.probe_with(&source_probe);
        outputs.registry.stream.clone().probe_with(&registry_probe);
        let topics = &job.kafka.topics;
        let catalog = Arc::clone(job.schemas.catalog());
        let mut dead_letters = outputs.dead_letters.clone();
        if let Some(pool) = influx {
            let written = write_outputs(
                &outputs,
                pool,
                source.skip_before_ms(),
                &influx_full,
                &catalog,
            );
            written.readings.probe_with(&influx_probe);
            // Refused points are dead letters like any other; the dead-letter sink's frontier
            // then waits for InfluxDB too, so commits do.
            dead_letters = dead_letters.concat(written.rejected);
        }
        // Late readings are counted here; the file of them is `replay`'s.
        let (counts, dead_letters) = count_outputs(metrics, counts, dead_letters, &outputs.late);
        if let Some((receives, stats)) = view {
            let streams = ViewedStreams {
                counts,
                dead_letters: dead_letters.clone(),
            };
            let target = receives.then(|| Arc::clone(stats));
            deliver_to_view(&outputs, streams, &target, |_| {});
        }
        // The output topics first: what they refuse for good goes on as dead letters.
        let alert_catalog = Arc::clone(&catalog);
        let mut written =
            vec![
                outputs
                    .alerts
                    .produce_to("alerts", target(&topics.alerts), move |a| {
                        (a.alert_id.clone(), jsonl::alert_line(a, &alert_catalog))
                    }),
            ];
        if let Some(topic) = &topics.aggregates {
            written.push(
                outputs
                    .aggregates
                    .produce_to("aggregates", target(topic), move |a| {
                        // A device that moves site mid-window has one aggregate per site.
                        let key = format!(
                            "{}/{}/{}/{}",
                            a.device_id,
                            catalog.name(a.metric),
                            a.window_start_ms,
                            a.site
                        );
                        (key, jsonl::aggregate_line(a, &catalog))
                    }),
            );
        }
        let refused = scope.concatenate(written.clone());
        let counted = Arc::clone(metrics);
        let refused = refused.inspect(move |d| counted.dead_letter(d.reason));
        // A dead letter the broker refuses has nowhere further to go: it is counted
        // (`sink_failures_total{sink="dead_letters",class="record"}`) and logged, with its hash.
        written.push(dead_letters.concat(refused).produce_to(
            "dead_letters",
            target(&topics.dead_letters),
            |d| {
                let key = d.origin.as_ref().map_or_else(
                    || format!("{}/{}", d.reason.code(), d.raw_sha256),
                    |o| format!("{}/{}/{}", o.topic, o.partition, o.offset),
                );
                (key, jsonl::dead_letter_line(d))
            },
        ));
        scope.concatenate(written).probe_with(&written_probe);
    });
    let registry_changes = changes;
    if registry_changes.is_none() {
        sources.close_registry();
    }
    if controls.is_none() {
        sources.load_controls_and_close(&[]);
    }
    sources.source.advance_to(source.start_time_ms());

    let lead_ms = event_time.allowed_lateness_ms + event_time.max_clock_skew_ms;
    let mut round = 0_u64;
    let mut last_report = Instant::now() - Duration::from_secs(1);
    // Batches read, observed as latency once written; messages, once InfluxDB has them.
    let mut unwritten = ArrivalLatency::default();
    let mut unstored = ArrivalLatency::default();
    let mut last_status = Instant::now();
    while !job.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let read = if full.get() || influx_full.is_held() {
            0
        } else {
            let floor = floor.borrow().floor(now);
            let frontier = source_probe.with_frontier(|f| f.first().copied());
            source.poll(&mut sources.source, floor, frontier)
        };
        if read > 0 {
            unwritten.first_arrival(sources.source.time(), now);
            if influx.is_some() {
                unstored.arrived(sources.source.time(), now, read as u64);
            }
        }
        sources.source.flush();
        if let (Some(changes), Some(input)) = (&registry_changes, sources.registry_input()) {
            feed_registry(
                changes,
                input,
                live.is_loaded(),
                &source_probe,
                lead_ms,
                &mut in_flight,
            );
        }
        if let (Some(controls), Some(input)) = (&controls, sources.controls_input()) {
            // At the frontier, not ahead of it like the registry: a control holds from its own
            // event times, and the notification policy sees it from its next tick on.
            feed_live(
                controls.try_iter(),
                input,
                live.is_loaded(),
                &source_probe,
                0,
            );
        }
        observe_propagation(&mut in_flight, &registry_probe, metrics);
        if now.duration_since(last_report) >= Duration::from_millis(100) {
            last_report = now;
            if producer.failure().is_some() || influx.and_then(InfluxPool::failure).is_some() {
                // Flush what can be written, commit it, and stop: see `run_service`.
                job.stop.store(true, Ordering::Release);
            }
            reports.send((index, source.report()));
            round += 1;
            reports.advance_to(round);
            reports.flush();
            source.report_lag();
            if let Some(frontier) = source_probe.with_frontier(|f| f.first().copied()) {
                metrics.set_watermark_lag_ms(wall_clock_ms() as i64 - frontier as i64);
            }
        }
        if now.duration_since(last_status) >= Duration::from_secs(5) {
            last_status = now;
            tracing::debug!(
                worker = index,
                input_ms = sources.source.time(),
                frontier_ms = ?source_probe.with_frontier(|f| f.first().copied()),
                written_ms = ?written_probe.with_frontier(|f| f.first().copied()),
                registry_ms = ?sources.registry_input().map(|i| *i.time()),
                floor_ms = ?floor.borrow().floor(now),
                partitions = %source.describe(),
                "progress"
            );
        }
        producer.resend_failed();
        if let Some(written) = written_probe.with_frontier(|f| f.first().copied()) {
            metrics.set_written_frontier_ms(written);
            unwritten.passed(Some(written), &metrics.batch_latency);
            source.commit(written, false);
        }
        if influx.is_some() {
            let stored = influx_probe.with_frontier(|f| f.first().copied());
            unstored.passed(stored, &metrics.influx_latency);
        }
        let park = (read == 0).then_some(Duration::from_millis(1));
        worker.step_or_park(park);
    }

    // Stopping: wait for acknowledgements, commit, and leave without closing the inputs.
    tracing::info!(worker = index, in_flight = producer.in_flight(), "stopping");
    let deadline = Instant::now() + Duration::from_millis(job.drain_timeout_ms);
    while producer.in_flight() > 0 && Instant::now() < deadline {
        producer.resend_failed();
        worker.step_or_park(Some(Duration::from_millis(5)));
    }
    for _ in 0..10 {
        worker.step();
    }
    if let Some(written) = written_probe.with_frontier(|f| f.first().copied()) {
        source.commit(written, true);
        tracing::info!(worker = index, written_ms = written, "committed");
    }
    // The dataflows go first: dropping the inputs then closes nothing anyone will step.
    for dataflow in worker.installed_dataflows() {
        worker.drop_dataflow(dataflow);
    }
    drop(sources);
    drop(reports);
    Ok(())
}

/// [`feed_live`] for registry changes: those whose making time is known go into `in_flight`
/// with the time they were sent at.
fn feed_registry(
    changes: &Receiver<ForwardedChange>,
    input: &mut VecInput<TimeMs, crate::dataflow::RegistryUpdate>,
    loaded: bool,
    source_probe: &ProbeHandle<TimeMs>,
    lead_ms: TimeMs,
    in_flight: &mut Vec<(TimeMs, i64)>,
) {
    let mut made = Vec::new();
    let updates = changes.try_iter().map(|change| {
        made.extend(change.made_ms);
        change.update
    });
    if let Some(sent_at) = feed_live(updates, input, loaded, source_probe, lead_ms) {
        in_flight.extend(made.into_iter().map(|made_ms| (sent_at, made_ms)));
    }
}

/// Observes the propagation of the changes enrichment now sees (the registry's frontier has
/// passed the time they were sent at).
fn observe_propagation(
    in_flight: &mut Vec<(TimeMs, i64)>,
    registry_probe: &ProbeHandle<TimeMs>,
    metrics: &Metrics,
) {
    if in_flight.is_empty() {
        return;
    }
    let frontier = registry_probe.with_frontier(|f| f.first().copied());
    let now_ms = wall_clock_ms() as i64;
    in_flight.retain(|(sent_at, made_ms)| {
        let seen = frontier.is_none_or(|f| f > *sent_at);
        if seen {
            let ms = (now_ms - made_ms).max(0) as u64;
            metrics
                .registry_propagation
                .observe(Duration::from_millis(ms));
        }
        !seen
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dashboard_token_variable_that_is_not_set_is_one_error_naming_the_field() {
        let config = RunConfig::parse(
            "[kafka]\nbrokers = \"127.0.0.1:9\"\n[dashboard]\nlisten = \"127.0.0.1:0\"\n\
             action_token_env = \"IOTPIPE_TEST_TOKEN_THAT_IS_NOT_SET\"\n",
            |_| None,
        )
        .unwrap();
        let error = run_service(config, Arc::new(AtomicBool::new(true))).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("dashboard.action_token_env: $IOTPIPE_TEST_TOKEN_THAT_IS_NOT_SET"),
            "{error}"
        );
    }
}
