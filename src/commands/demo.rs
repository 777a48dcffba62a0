//! `iotpipe demo`: the simulated fleet through the dataflow in real time, with a live view in
//! the terminal and on the dashboard, and the same outputs as `run` (InfluxDB, notifications).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::{Concat, Probe};

use crate::commands::setup::{ChannelStop, SetupError, SideOutputs, schemas_and_pipeline};
use crate::dataflow::PipelineConfig;
use crate::dataflow::alert::AlertControl;
use crate::dataflow::ingest::{Ingestor, Provenance};
use crate::dataflow::metadata::MetadataHistory;
use crate::dataflow::registry::{RegistryChange, parse_registry};
use crate::dataflow::schema::SchemaSet;
use crate::io::connect::influx::config::InfluxConfig;
use crate::io::connect::influx::write::InfluxSinkFailure;
use crate::io::connect::store::registry::RegistryEntry;
use crate::io::connect::store::{Store, StoreConfig, StoreError};
use crate::io::serve::dashboard::Dashboard;
use crate::io::serve::registry_api::auth::{Role, TokenConfig, Tokens};
use crate::io::sinks::influx::pool::{InfluxPool, InfluxUnwritten};
use crate::io::sinks::influx::sink::HeldBack;
use crate::io::sinks::influx::write_outputs;
use crate::io::sinks::live_view::{LiveStats, ViewedStreams, deliver_to_view};
use crate::io::sinks::notify::{
    ChannelReport, Notification, Notifier, NotifierHandle, NotifyConfig,
};
use crate::io::sources::fleet::{Fleet, FleetConfig};
use crate::io::sources::inputs::{PipelineSources, feed_live};
use crate::io::sources::store::ControlFollower;
use crate::io::support::cluster::{ClusterConfig, ClusterError};
use crate::io::support::latency::ArrivalLatency;
use crate::io::support::metrics::{Metrics, count_outputs};
use crate::io::support::summary::RunSummary;

/// Fleet time a worker sends per step while it catches up with the wall clock (the history at
/// the start, or after InfluxDB held it back).
const CATCH_UP_MS: u64 = 5_000;

/// How often each worker moves the fleet's clock forward.
const TICK: Duration = Duration::from_millis(100);

/// The whole configuration of a demo: what `iotpipe demo`'s flags and the files they name
/// become. Every field is documented; unknown fields are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Simulated devices.
    pub devices: usize,
    /// Messages per second per device.
    pub rate_per_device: f64,
    /// Random seed of the fleet.
    pub seed: u64,
    /// Share of devices with an injected fault (spike, level shift, stuck value, silence).
    pub fault_share: f64,
    /// Seconds after the fleet's start (the history's) when the first faults begin.
    pub fault_start_s: u64,
    /// Seconds over which fault starts spread after `fault_start_s`, beyond the history.
    pub fault_spread_s: u64,
    /// How long to run, seconds (none: until stopped).
    pub duration_s: Option<f64>,
    /// Seconds of simulated history before now, run at full speed at the start (faults
    /// included), so charts, anomalies and alerts are there within seconds; then real time.
    pub history_s: u64,
    /// A directory of schema files (default: the schemas built into iotpipe).
    pub schemas: Option<PathBuf>,
    /// Windows, event time, anomaly scoring and alert rules.
    pub pipeline: PipelineConfig,
    /// Where process 0 serves the dashboard and `/metrics` (port 0 picks a free one); none:
    /// no dashboard.
    pub dashboard: Option<SocketAddr>,
    /// The live view in process 0's terminal (`plain` or `screen`); none: no view.
    pub terminal: Option<Terminal>,
    /// Where alert events are notified (process 0 sends them); none: nowhere.
    pub notify: Option<NotifyConfig>,
    /// The InfluxDB every output is also written to; none: not written.
    pub influx: Option<InfluxConfig>,
    /// The metadata store: the fleet's registry is written into it at start (a device already
    /// there as the fleet has it gets no new version), the pipeline enriches from the registry
    /// read back from it (edits made there before the start included), and the dashboard
    /// navigates its hierarchy. Its silences and acknowledgements are followed live, and every
    /// alert event is recorded there. None: the fleet's embedded registry, no store.
    pub store: Option<StoreConfig>,
    /// The environment variable holding the token the dashboard's actions need (acknowledge,
    /// silence: `Authorization: Bearer`, as the registry API's write role); none: the
    /// dashboard only shows.
    pub action_token_env: Option<String>,
    /// The timely cluster.
    pub cluster: ClusterConfig,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            devices: 2_000,
            rate_per_device: 1.0,
            seed: 42,
            fault_share: 0.01,
            fault_start_s: 180,
            fault_spread_s: 420,
            duration_s: None,
            history_s: 1_800,
            schemas: None,
            pipeline: PipelineConfig::default(),
            dashboard: None,
            terminal: None,
            notify: None,
            influx: None,
            store: None,
            action_token_env: None,
            cluster: ClusterConfig::default(),
        }
    }
}

impl DemoConfig {
    /// Checks the fleet's numbers; the error names the field.
    pub fn validate(&self) -> Result<(), DemoError> {
        let invalid = |field, message: String| Err(DemoError::Config { field, message });
        if self.devices == 0 {
            return invalid("devices", "must be at least 1 (default 2000)".into());
        }
        if !(self.rate_per_device > 0.0 && self.rate_per_device <= 1000.0) {
            return invalid(
                "rate_per_device",
                "must be above 0 and at most 1000 messages/s per device (default 1)".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.fault_share) {
            return invalid(
                "fault_share",
                "must be between 0 and 1 (default 0.01)".into(),
            );
        }
        if let Some(duration) = self.duration_s
            && !(duration.is_finite() && duration >= 0.0)
        {
            return invalid(
                "duration_s",
                format!(
                    "is {duration} but must be a finite number at least 0 (default: until \
                     stopped)"
                ),
            );
        }
        Ok(())
    }
}

/// What a demo did.
#[derive(Debug)]
pub struct DemoReport {
    /// The totals (on process 0; `None` on the others), InfluxDB's points included.
    pub summary: Option<RunSummary>,
    /// What each notification channel did.
    pub channels: Vec<ChannelReport>,
    /// The process's metrics (InfluxDB latency and batch times, for the report).
    pub metrics: Arc<Metrics>,
}

/// Runs the demo `config` describes until `stop` is set or its duration passes: starts the
/// InfluxDB writers, the notification channels and the dashboard, runs the fleet, closes the
/// open windows, and finishes them.
pub fn run_demo(config: DemoConfig, stop: Arc<AtomicBool>) -> Result<DemoReport, DemoError> {
    config.validate()?;
    let cluster = &config.cluster;
    cluster.to_timely()?;
    let (schemas, pipeline) = schemas_and_pipeline(config.schemas.as_deref(), &config.pipeline)?;
    let action_tokens = match &config.action_token_env {
        Some(name) => Tokens::load(
            &[TokenConfig {
                role: Role::Write,
                token_env: name.clone(),
            }],
            |name| std::env::var(name).ok(),
        )
        .map_err(|_| DemoError::Config {
            field: "action_token_env",
            message: format!("${name} is not set (or empty): export the token there"),
        })?,
        None => Tokens::default(),
    };
    // With a store, every alert event is recorded there too (the alert API lists them).
    let notify = match (&config.store, &config.notify) {
        (Some(store), notify) => Some(NotifyConfig {
            store: Some(store.clone()),
            ..notify.clone().unwrap_or_default()
        }),
        (None, notify) => notify.clone(),
    };
    let outputs = SideOutputs::start(config.influx.as_ref(), notify.as_ref(), cluster.is_leader())?;
    let (metrics, influx) = (Arc::clone(&outputs.metrics), outputs.influx.clone());
    let stats = Arc::new(Mutex::new(
        LiveStats::new().with_device_windows(influx.is_none()),
    ));
    // Process 0 receives every alert event, so only it serves the dashboard.
    if let (Some(listen), true) = (config.dashboard, cluster.is_leader()) {
        let dashboard = Dashboard::new(
            Arc::clone(&stats),
            Arc::clone(&metrics),
            Arc::clone(schemas.catalog()),
            influx.as_ref(),
            pipeline.window.length_ms,
        )
        .with_store(config.store.as_ref())
        .with_action_tokens(action_tokens);
        let local = dashboard
            .serve(listen)
            .map_err(|source| DemoError::Dashboard { listen, source })?;
        // Printed before the live view takes the screen, and for scripts that wait for it.
        println!("dashboard at http://{local}/");
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    // The fleet starts `history_s` before now and catches up at full speed.
    let start_ms = now_ms.saturating_sub(config.history_s * 1000);
    // Faults start `fault_start_s` into the fleet's time and spread over the history too, so
    // some show within seconds of the start and some are still to come after it reaches now.
    let fault_start_ms = config.fault_start_s * 1000;
    let fault_spread_ms = (config.history_s + config.fault_spread_s) * 1000;
    tracing::info!(
        devices = config.devices,
        rate = config.rate_per_device,
        workers = cluster.workers,
        "demo starting"
    );
    let fleet = FleetConfig {
        devices: config.devices,
        rate_per_device: config.rate_per_device,
        seed: config.seed,
        start_ms,
        fault_share: config.fault_share,
        fault_start_ms: (fault_start_ms, fault_start_ms + fault_spread_ms),
        ..FleetConfig::default()
    };
    let registry_lines = match &config.store {
        Some(store) => Some(registry_through_store(store, &fleet)?),
        None => None,
    };
    // Process 0's worker 0 feeds the silences and acknowledgements the store holds and gets.
    let (controls, control_follower) = match (&config.store, cluster.is_leader()) {
        (Some(store), true) => {
            let (sender, receiver) = std::sync::mpsc::channel();
            let follower = ControlFollower::start(
                store,
                Arc::clone(schemas.catalog()),
                sender,
                Arc::clone(&stop),
            )?;
            (Some(receiver), Some(follower))
        }
        _ => (None, None),
    };
    let job = DemoJob {
        fleet,
        now_ms,
        schemas,
        pipeline,
        duration: config.duration_s.map(Duration::from_secs_f64),
        stop,
        terminal: config.terminal,
        stats,
        metrics: Arc::clone(&metrics),
        influx,
        notifier: outputs.notifier.as_ref().map(Notifier::handle),
        registry_lines,
        controls: Arc::new(Mutex::new(controls)),
    };
    let result = run_demo_job(job, cluster);
    if let Some(follower) = control_follower {
        follower.join();
    }
    let (summary, channels) = outputs.finish(result)?;
    Ok(DemoReport {
        summary,
        channels,
        metrics,
    })
}

/// How the live view is drawn in the terminal, once a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Terminal {
    /// One summary line a second (for logs and pipes).
    Plain,
    /// The whole screen redrawn.
    Screen,
}

/// Everything a demo needs, its servers and channels started by the caller.
#[derive(Clone)]
pub struct DemoJob {
    /// The simulated fleet; its `start_ms` is where its history starts, in wall-clock ms.
    pub fleet: FleetConfig,
    /// Wall-clock ms at the demo's start: the fleet runs at full speed until it gets there.
    pub now_ms: u64,
    /// Message schemas.
    pub schemas: SchemaSet,
    /// Pipeline semantics.
    pub pipeline: PipelineConfig,
    /// How long to run (`None`: until `stop`).
    pub duration: Option<Duration>,
    /// Set to stop: the open windows are then closed and emitted.
    pub stop: Arc<AtomicBool>,
    /// The live view in the terminal, if any (drawn by process 0).
    pub terminal: Option<Terminal>,
    /// What the terminal and the dashboard show (fed by process 0's worker 0).
    pub stats: Arc<Mutex<LiveStats>>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// The InfluxDB every output is also written to, if any.
    pub influx: Option<InfluxPool>,
    /// Where alert events are notified (process 0's).
    pub notifier: Option<NotifierHandle>,
    /// The registry lines read from the metadata store (none: the fleet's own).
    pub registry_lines: Option<Vec<String>>,
    /// Silences and acknowledgements as the store gets them (worker 0 takes the receiver; none:
    /// there are none).
    pub controls: Arc<Mutex<Option<Receiver<AlertControl>>>>,
}

/// A demo that could not run, or stopped on a failure.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A field of the configuration cannot work.
    #[error("{field} {message}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The schemas, alert rules, InfluxDB writers or notification channels could not be set
    /// up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The dashboard could not listen.
    #[error("dashboard {listen}: {source}")]
    Dashboard {
        /// The address.
        listen: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A notification channel gave up (what each did is inside).
    #[error(transparent)]
    ChannelStop(#[from] ChannelStop),
    /// The cluster shape is wrong.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The fleet's registry could not be read (a schema without its metrics).
    #[error("the fleet's registry: {0}")]
    Registry(String),
    /// The metadata store could not be opened, written or read.
    #[error("the metadata store: {0}")]
    Store(#[from] StoreError),
    /// Timely could not start.
    #[error("timely: {0}")]
    Timely(String),
    /// A worker failed.
    #[error("worker failed: {0}")]
    Worker(String),
    /// InfluxDB says it cannot be written to.
    #[error(transparent)]
    Influx(#[from] InfluxSinkFailure),
    /// InfluxDB took nothing for `influx.drain_timeout_ms` as the demo finished.
    #[error(transparent)]
    InfluxUnwritten(#[from] InfluxUnwritten),
}

/// Writes the fleet's registry into the metadata store and reads the registry back from it, as
/// registry lines. Importing again what is already there makes no new version, so a demo
/// restarted on the same store keeps its history; edits made through `iotpipe registry serve`
/// (a building moved, a model's thresholds) hold for the devices they concern.
fn registry_through_store(
    config: &StoreConfig,
    fleet: &FleetConfig,
) -> Result<Vec<String>, DemoError> {
    let entries = Fleet::new(fleet.clone())
        .registry_lines()
        .iter()
        .map(|line| serde_json::from_str::<RegistryEntry>(line))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DemoError::Registry(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DemoError::Registry(format!("a runtime for the store: {e}")))?;
    let exported = runtime.block_on(async {
        let store = Store::open(config, |name| std::env::var(name).ok()).await?;
        let report = store.import_registry(&entries).await?;
        tracing::info!(
            lines = report.lines,
            changes = report.changes,
            "the fleet's registry is in the metadata store"
        );
        store.export_registry().await
    })?;
    Ok(exported
        .iter()
        .map(|entry| serde_json::to_string(entry).expect("registry entries serialise"))
        .collect())
}

/// Runs a demo whose servers and channels are started: until `job.stop` or its duration;
/// returns the totals on process 0, `None` on the others. A notification channel that gives up
/// stops it early; the caller finds why when it finishes the notifier.
pub fn run_demo_job(
    job: DemoJob,
    cluster: &ClusterConfig,
) -> Result<Option<RunSummary>, DemoError> {
    let timely_config = cluster.to_timely()?;
    if cluster.processes > 1 {
        crate::io::support::cluster::end_on_lost_peer();
    }
    let DemoJob {
        fleet: fleet_config,
        now_ms,
        schemas,
        pipeline: pipeline_config,
        duration,
        stop,
        terminal,
        stats,
        metrics,
        influx,
        notifier,
        registry_lines,
        controls,
    } = job;
    let devices = fleet_config.devices;
    let registry_text = registry_lines
        .unwrap_or_else(|| Fleet::new(fleet_config.clone()).registry_lines())
        .join("\n");
    let registry = parse_registry(&registry_text, schemas.catalog())
        .map_err(|e| DemoError::Registry(e.to_string()))?;
    let history = Arc::new(MetadataHistory::of_changes(&registry));
    let registry = Arc::new(registry);
    let worker_influx = influx.clone();
    let worker_metrics = Arc::clone(&metrics);
    let worker_stats = Arc::clone(&stats);
    let draws = cluster.is_leader().then_some(terminal).flatten();

    let guards = timely::execute(timely_config, move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let mut fleet = Fleet::share(fleet_config.clone(), index, peers);
        let mut ingestor = Ingestor::new(
            schemas.clone(),
            Arc::clone(&history),
            pipeline_config.event_time,
        )
        .with_max_message_bytes(pipeline_config.ingest.max_message_bytes);
        let view = (index == 0).then(|| Arc::clone(&worker_stats));
        let started = Instant::now();
        let mut sources = PipelineSources::new();
        let influx_full = HeldBack::default();
        let progress = ProbeHandle::new();
        let stored = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let (outputs, counts) = sources.build(scope, &pipeline_config);
            let counts = counts.probe_with(&progress);
            let mut dead_letters = outputs.dead_letters.clone();
            if let Some(pool) = &worker_influx {
                let written = write_outputs(&outputs, pool, 0, &influx_full, schemas.catalog());
                written.readings.probe_with(&stored);
                dead_letters = dead_letters.concat(written.rejected);
            }
            let (counts, dead_letters) =
                count_outputs(&worker_metrics, counts, dead_letters, &outputs.late);
            let notifier = notifier.clone();
            let catalog = schemas.catalog().clone();
            let streams = ViewedStreams {
                counts,
                dead_letters,
            };
            deliver_to_view(&outputs, streams, &view, move |events| {
                if let Some(notifier) = &notifier {
                    notifier.send(&Notification::for_events(events, &catalog));
                }
            });
        });
        let changes: &[RegistryChange] = if index == 0 { &registry } else { &[] };
        sources.load_registry_and_close(changes);
        let controls = if index == 0 {
            controls.lock().expect("not poisoned").take()
        } else {
            None
        };
        let mut controls_input = match controls {
            Some(_) => sources.take_controls_input(),
            None => {
                sources.load_controls_and_close(&[]);
                None
            }
        };
        // A worker with no devices (more workers than devices) closes its input at once, so
        // it does not hold everyone's frontier back.
        let mut source = (fleet.device_count() > 0).then_some(sources.source);

        let mut lines = Vec::new();
        let mut next_render = started + Duration::from_secs(1);
        let mut stdout = std::io::stdout();
        // The fleet's clock: real time, unless InfluxDB held the worker back, as a broker
        // holds messages for a consumer that is behind.
        let mut fleet_ms = fleet_config.start_ms;
        let mut unstored = ArrivalLatency::default();
        let influx_failed = || {
            worker_influx
                .as_ref()
                .and_then(InfluxPool::failure)
                .is_some()
        };
        // A notification channel that gave up stops the demo (it says why at the end).
        let notify_failed = || notifier.as_ref().is_some_and(|n| n.failure().is_some());
        while !stop.load(Ordering::SeqCst) && duration.is_none_or(|d| started.elapsed() < d) {
            if influx_failed() || notify_failed() {
                break;
            }
            if let Some(source) = source.as_mut() {
                let wall_ms = now_ms + started.elapsed().as_millis() as u64;
                if !influx_full.is_held() && fleet_ms < wall_ms {
                    let until_ms = wall_ms.min(fleet_ms + CATCH_UP_MS);
                    lines.clear();
                    fleet.advance_to(until_ms, &mut lines);
                    let mut batch = ingestor.start_batch();
                    for (arrival_ms, line) in &lines {
                        let provenance = Provenance {
                            arrival_ms: Some(*arrival_ms),
                            offset: None,
                        };
                        ingestor.ingest(line.as_bytes(), provenance, &mut batch);
                    }
                    // The fleet has said all it has for now: a start still held is judged.
                    ingestor.release_held(&mut batch);
                    // Latency counts from when the batch's first messages were due (kept only
                    // when InfluxDB is there to store them, or it would only grow).
                    // (History has no due time to count from.)
                    if worker_influx.is_some() && fleet_ms >= now_ms {
                        let due = started + Duration::from_millis(fleet_ms - now_ms);
                        unstored.arrived(batch.time_ms, due, lines.len() as u64);
                    }
                    fleet_ms = until_ms;
                    worker_metrics.messages_in.inc_by(lines.len() as u64);
                    source.send(&mut batch);
                    source.advance_to(ingestor.watermarker().watermark_ms());
                    source.flush();
                }
            }
            if let (Some(receiver), Some(input)) = (&controls, controls_input.as_mut()) {
                // At the frontier: the policy sees a control from its next tick on.
                feed_live(receiver.try_iter(), input, true, &progress, 0);
            }
            let behind = now_ms + (started.elapsed().as_millis() as u64) > fleet_ms + CATCH_UP_MS;
            if behind && !influx_full.is_held() {
                // Catching up: on to the next stretch once the dataflow has taken this one.
                worker.step();
            } else {
                let tick_end = Instant::now() + TICK;
                while Instant::now() < tick_end {
                    worker.step_or_park(Some(tick_end.saturating_duration_since(Instant::now())));
                }
            }
            if worker_influx.is_some() {
                let frontier = stored.with_frontier(|f| f.first().copied());
                unstored.passed(frontier, &worker_metrics.influx_latency);
            }
            if index == 0
                && let Some(frontier) = progress.with_frontier(|f| f.first().copied())
            {
                let wall_ms = now_ms + started.elapsed().as_millis() as u64;
                worker_metrics.set_watermark_lag_ms(wall_ms as i64 - frontier as i64);
            }
            if let (0, Some(terminal)) = (index, draws)
                && Instant::now() >= next_render
            {
                next_render += Duration::from_secs(1);
                let stats = worker_stats.lock().expect("not poisoned");
                let elapsed = started.elapsed().as_secs_f64();
                match terminal {
                    Terminal::Plain => println!("{}", stats.line(elapsed)),
                    Terminal::Screen => {
                        // Clear the screen and draw from the top.
                        let _ = write!(stdout, "\x1b[2J\x1b[H{}", stats.screen(elapsed, devices));
                        let _ = stdout.flush();
                    }
                }
            }
        }
        // Close the sources: the frontier empties and every open window is emitted.
        drop(source);
        drop(controls_input);
        while worker.has_dataflows() {
            // Failed, or taking nothing for `drain_timeout_ms`: the sinks hold what InfluxDB
            // did not take, so nothing more completes (finishing the pool says how much).
            let influx_stalled = worker_influx.as_ref().is_some_and(InfluxPool::stalled);
            if influx_failed() || influx_stalled {
                for dataflow in worker.installed_dataflows() {
                    worker.drop_dataflow(dataflow);
                }
                break;
            }
            worker.step_or_park(Some(Duration::from_millis(10)));
            if worker_influx.is_some() {
                let frontier = stored.with_frontier(|f| f.first().copied());
                unstored.passed(frontier, &worker_metrics.influx_latency);
            }
        }
        // What InfluxDB never acknowledged by the end counts at the end; without InfluxDB
        // nothing was stored and there is no latency to count.
        if worker_influx.is_some() {
            unstored.passed(None, &worker_metrics.influx_latency);
        }
        (index == 0).then(|| {
            let mut totals = worker_stats.lock().expect("not poisoned").totals.clone();
            totals.elapsed_s = started.elapsed().as_secs_f64();
            totals
        })
    })
    .map_err(DemoError::Timely)?;
    let results = guards.join();
    if let Some(failure) = influx.as_ref().and_then(InfluxPool::failure) {
        return Err(DemoError::Influx(failure));
    }
    let mut summary = None;
    for result in results {
        match result {
            Ok(Some(totals)) => summary = Some(totals),
            Ok(None) => {}
            Err(e) => return Err(DemoError::Worker(e)),
        }
    }
    Ok(summary)
}
