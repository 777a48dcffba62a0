//! `iotpipe replay`: the whole dataflow over a recorded file, as fast as it goes.
//!
//! The file is one partition in arrival order, but it is decoded by all workers at once: it is
//! cut into chunks of whole lines, worker `w` decodes chunks `w, w + peers, ...`, and the only
//! sequential step is the cheap scan that stamps watermarks, which needs the largest valid event
//! time of all earlier chunks. Workers pass that prefix along through a small *ledger* dataflow
//! (chunk `k` publishes the prefix through `k`), so the scan of chunk `k` starts as soon as chunk
//! `k - 1` is scanned, while every worker is already decoding its next chunk.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::dataflow::InputHandle;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concat, Input, Inspect, Probe};

use crate::commands::setup::{ChannelStop, SetupError, SideOutputs, schemas_and_pipeline};
use crate::dataflow::PipelineConfig;
use crate::dataflow::alert::AlertControl;
use crate::dataflow::event_time::{PartitionClock, Watermarker, watermark_after};
use crate::dataflow::ingest::{Ingestor, Provenance};
use crate::dataflow::metadata::MetadataHistory;
use crate::dataflow::model::{DeadLetter, TimeMs};
use crate::dataflow::registry::RegistryChange;
use crate::dataflow::schema::Decoded;
use crate::dataflow::schema::SchemaSet;
use crate::io::connect::influx::config::InfluxConfig;
use crate::io::sinks::deliver::{DeliverInOrder, to_shared};
use crate::io::sinks::files::replay::ReplayFiles;
use crate::io::sinks::influx::pool::InfluxPool;
use crate::io::sinks::influx::sink::HeldBack;
use crate::io::sinks::influx::write_outputs;
use crate::io::sinks::notify::{
    ChannelReport, Notification, Notifier, NotifierHandle, NotifyConfig,
};
use crate::io::sources::file::{Chunk, ChunkedFile};
use crate::io::sources::inputs::{PipelineSources, SourceInputs, VecInput};
use crate::io::support::cluster::{ClusterConfig, ClusterError};
use crate::io::support::schema_files::{LoadError, load_alert_controls, load_registry};
use crate::io::support::summary::RunSummary;

/// Everything a replay needs.
#[derive(Clone)]
pub struct ReplayJob {
    /// The recorded messages, JSON Lines in arrival order.
    pub events: PathBuf,
    /// The registry changelog.
    pub registry: Arc<Vec<RegistryChange>>,
    /// Silences and acknowledgements.
    pub alert_controls: Arc<Vec<AlertControl>>,
    /// Where the outputs go (written by process 0).
    pub out: PathBuf,
    /// Message schemas.
    pub schemas: SchemaSet,
    /// Pipeline semantics.
    pub pipeline: PipelineConfig,
    /// Bytes per chunk of the events file.
    pub chunk_bytes: u64,
    /// Where alert events are notified (process 0's).
    pub notifier: Option<NotifierHandle>,
    /// The InfluxDB every output is also written to, if any.
    pub influx: Option<InfluxPool>,
    /// Set to stop early: no further chunk is read, and what was read is finished, so the
    /// outputs are those of the file's first chunks.
    pub stop: Arc<AtomicBool>,
}

/// The whole configuration of a replay: what `iotpipe replay`'s flags and the files they name
/// become. Every field is documented; unknown fields are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// The recorded messages, JSON Lines in arrival order.
    pub events: PathBuf,
    /// The device registry changelog, JSON Lines.
    pub registry: PathBuf,
    /// Silences and acknowledgements, JSON Lines (`GET /v1/alert-controls` of the registry
    /// API); none: no silences, nothing acknowledged.
    #[serde(default)]
    pub alert_controls: Option<PathBuf>,
    /// The output directory (written by process 0).
    pub out: PathBuf,
    /// A directory of schema files (default: the schemas built into iotpipe).
    #[serde(default)]
    pub schemas: Option<PathBuf>,
    /// Windows, event time, anomaly scoring and alert rules.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Bytes of the events file each worker decodes at a time.
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes: u64,
    /// Where alert events are notified (process 0 sends them); none: nowhere.
    #[serde(default)]
    pub notify: Option<NotifyConfig>,
    /// The InfluxDB every output is also written to (each process its share); none: not
    /// written.
    #[serde(default)]
    pub influx: Option<InfluxConfig>,
    /// The timely cluster.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// The default chunk of the events file, 4 MiB.
pub fn default_chunk_bytes() -> u64 {
    4 << 20
}

/// What a replay did.
#[derive(Debug)]
pub struct ReplayReport {
    /// The totals (on process 0; `None` on the others), InfluxDB's points included.
    pub summary: Option<RunSummary>,
    /// What each notification channel did.
    pub channels: Vec<ChannelReport>,
}

/// Runs the replay `config` describes to the end of its file, or until `stop` is set (then the
/// outputs are those of the file's first chunks): loads the schemas and the registry, starts
/// the InfluxDB writers and the notification channels, replays, and finishes them.
pub fn run_replay(
    config: ReplayConfig,
    stop: Arc<AtomicBool>,
) -> Result<ReplayReport, ReplayError> {
    if config.chunk_bytes == 0 {
        return Err(ReplayError::Config {
            field: "chunk_bytes",
            message: "must be at least 1 (default 4194304)".into(),
        });
    }
    let (schemas, pipeline) = schemas_and_pipeline(config.schemas.as_deref(), &config.pipeline)?;
    let registry = load_registry(&config.registry, &schemas).map_err(ReplayError::Registry)?;
    let alert_controls = match &config.alert_controls {
        Some(path) => {
            load_alert_controls(path, schemas.catalog()).map_err(ReplayError::AlertControls)?
        }
        None => Vec::new(),
    };
    let cluster = &config.cluster;
    let outputs = SideOutputs::start(
        config.influx.as_ref(),
        config.notify.as_ref(),
        cluster.is_leader(),
    )?;
    let job = ReplayJob {
        influx: outputs.influx.clone(),
        notifier: outputs.notifier.as_ref().map(Notifier::handle),
        events: config.events.clone(),
        registry: Arc::new(registry),
        alert_controls: Arc::new(alert_controls),
        out: config.out.clone(),
        schemas,
        pipeline,
        chunk_bytes: config.chunk_bytes,
        stop,
    };
    let (summary, channels) = outputs.finish(replay(job, cluster))?;
    Ok(ReplayReport { summary, channels })
}

/// A replay that could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A field of the configuration cannot work.
    #[error("{field} {message}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The silences and acknowledgements could not be loaded.
    #[error("alert_controls: {0}")]
    AlertControls(LoadError),
    /// The registry could not be loaded.
    #[error("registry: {0}")]
    Registry(LoadError),
    /// The schemas, alert rules, InfluxDB writers or notification channels could not be set
    /// up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A notification channel gave up (what each did is inside).
    #[error(transparent)]
    ChannelStop(#[from] ChannelStop),
    /// The cluster shape is wrong.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Timely could not start (e.g. a cluster peer is unreachable).
    #[error("timely: {0}")]
    Timely(String),
    /// A worker failed.
    #[error("worker failed: {0}")]
    Worker(String),
    /// InfluxDB says it cannot be written to: the replay stopped.
    #[error(transparent)]
    Influx(#[from] crate::io::connect::influx::write::InfluxSinkFailure),
    /// InfluxDB took nothing for `influx.drain_timeout_ms` as the replay finished.
    #[error(transparent)]
    InfluxUnwritten(#[from] crate::io::sinks::influx::pool::InfluxUnwritten),
}

/// Runs a replay; returns the summary on process 0, `None` on the others.
pub fn replay(job: ReplayJob, cluster: &ClusterConfig) -> Result<Option<RunSummary>, ReplayError> {
    let started = Instant::now();
    let timely_config = cluster.to_timely()?;
    if cluster.processes > 1 {
        crate::io::support::cluster::end_on_lost_peer();
    }
    let io_error = |path: &PathBuf| {
        let path = path.clone();
        move |source| ReplayError::Io { path, source }
    };
    // Fail before starting workers if the input is unreadable.
    let chunks = ChunkedFile::open(&job.events, job.chunk_bytes)
        .map_err(io_error(&job.events))?
        .chunk_count();
    tracing::info!(
        events = %job.events.display(),
        chunks,
        workers = cluster.workers,
        processes = cluster.processes,
        process = cluster.process,
        "replay starting"
    );
    let files = if cluster.is_leader() {
        Some(
            ReplayFiles::create(
                &job.out,
                job.schemas.catalog().clone(),
                job.pipeline.anomaly.emit_all_scores,
            )
            .map_err(io_error(&job.out))?,
        )
    } else {
        None
    };
    let files = Arc::new(Mutex::new(files));
    let history = Arc::new(MetadataHistory::of_changes(&job.registry));
    let worker_files = Arc::clone(&files);
    let job_influx = job.influx.clone();
    let guards = timely::execute(timely_config, move |worker| {
        let leader_files = if worker.index() == 0 {
            worker_files.lock().expect("not poisoned").take()
        } else {
            None
        };
        run_worker(worker, &job, &history, leader_files)
    })
    .map_err(ReplayError::Timely)?;
    let results = guards.join();
    if let Some(failure) = job_influx.as_ref().and_then(InfluxPool::failure) {
        return Err(ReplayError::Influx(failure));
    }
    let mut summary = None;
    for result in results {
        match result {
            Ok(Some(Ok(s))) => summary = Some(s),
            Ok(Some(Err((path, source)))) => return Err(ReplayError::Io { path, source }),
            Ok(None) => {}
            Err(e) => return Err(ReplayError::Worker(e)),
        }
    }
    Ok(summary.map(|mut s| {
        s.elapsed_s = started.elapsed().as_secs_f64();
        tracing::info!(
            messages = s.ingest.messages,
            windows = s.windows,
            dead_letters = s.dead_letter_total(),
            elapsed_s = s.elapsed_s,
            "replay finished"
        );
        s
    }))
}

type WorkerResult = Option<Result<RunSummary, (PathBuf, std::io::Error)>>;

fn run_worker(
    worker: &mut timely::worker::Worker,
    job: &ReplayJob,
    history: &Arc<MetadataHistory>,
    files: Option<ReplayFiles>,
) -> WorkerResult {
    let index = worker.index();
    let peers = worker.peers();
    let files = files.map(|f| Rc::new(RefCell::new(f)));

    // The ledger: chunk k's prefix (the partition clock through chunk k), seen by all.
    let prefixes: Rc<RefCell<HashMap<u64, PartitionClock>>> = Rc::default();
    let mut ledger: VecInput<u64, (u64, PartitionClock)> = InputHandle::new();
    worker.dataflow::<u64, _, _>(|scope| {
        let seen = Rc::clone(&prefixes);
        scope
            .input_from(&mut ledger)
            .broadcast()
            .inspect(move |(k, prefix)| {
                seen.borrow_mut().insert(*k, *prefix);
            });
    });

    let mut sources = PipelineSources::new();
    let influx_full = HeldBack::default();
    let registry_probe = worker.dataflow::<TimeMs, _, _>(|scope| {
        let (outputs, counts) = sources.build(scope, &job.pipeline);
        let (registry_probe, _) = outputs.registry.stream.clone().probe();
        let mut dead_letters = outputs.dead_letters.clone();
        if let Some(pool) = &job.influx {
            let written = write_outputs(&outputs, pool, 0, &influx_full, job.schemas.catalog());
            dead_letters = dead_letters.concat(written.rejected);
        }
        outputs.aggregates.deliver_in_order(
            "WriteAggregates",
            to_shared(&files, ReplayFiles::aggregates),
        );
        outputs.site_rollups.deliver_in_order(
            "WriteSiteRollups",
            to_shared(&files, ReplayFiles::site_rollups),
        );
        dead_letters.deliver_in_order(
            "WriteDeadLetters",
            to_shared(&files, ReplayFiles::dead_letters),
        );
        outputs
            .late
            .deliver_in_order("WriteLate", to_shared(&files, ReplayFiles::late));
        outputs
            .anomalies
            .deliver_in_order("WriteAnomalies", to_shared(&files, ReplayFiles::anomalies));
        let alert_files = files.clone();
        let notifier = job.notifier.clone();
        let catalog = job.schemas.catalog().clone();
        outputs
            .alerts
            .deliver_in_order("WriteAlerts", move |_, events| {
                if let Some(notifier) = &notifier {
                    notifier.send(&Notification::for_events(&events, &catalog));
                }
                if let Some(files) = &alert_files {
                    files.borrow_mut().alerts(events);
                }
            });
        counts.deliver_in_order("CountIngest", to_shared(&files, ReplayFiles::counts));
        registry_probe
    });
    // The registry is known up front: worker 0 loads it whole, every worker closes its input.
    let changes: &[RegistryChange] = if index == 0 { &job.registry } else { &[] };
    sources.load_registry_and_close(changes);
    let controls: &[AlertControl] = if index == 0 { &job.alert_controls } else { &[] };
    sources.load_controls_and_close(controls);
    // Resolve the registry before the first message: messages wait in `Enrich` until it is
    // complete, and released all at once they would reach the windows ahead of the frontier
    // that lets them be scored, so each would be held and looked up a second time.
    while !registry_probe.done() {
        worker.step();
    }

    let result = feed_chunks(
        worker,
        job,
        history,
        &mut sources.source,
        &mut ledger,
        &prefixes,
        (index, peers),
        &influx_full,
    );
    drop(sources);
    drop(ledger);
    // Failed, or stopped and taking nothing for `drain_timeout_ms`: the sinks hold what
    // InfluxDB did not take, so nothing more can complete (finishing the pool says how much).
    // Not stopped, the end of the file waits out an outage as the rest of it does.
    let influx_gone = |pool: &InfluxPool| {
        pool.failure().is_some() || (job.stop.load(Ordering::Relaxed) && pool.stalled())
    };
    while worker.has_dataflows() {
        if job.influx.as_ref().is_some_and(influx_gone) {
            for dataflow in worker.installed_dataflows() {
                worker.drop_dataflow(dataflow);
            }
            break;
        }
        // With InfluxDB, wake now and then to see whether it gave up.
        let park = job.influx.as_ref().map(|_| Duration::from_millis(50));
        worker.step_or_park(park);
    }
    if let Err(e) = result {
        return Some(Err((job.events.clone(), e)));
    }
    files.map(|f| {
        Rc::try_unwrap(f)
            .ok()
            .expect("the dataflow has finished with the files")
            .into_inner()
            .finish()
    })
}

#[allow(clippy::too_many_arguments)]
fn feed_chunks(
    worker: &mut timely::worker::Worker,
    job: &ReplayJob,
    history: &Arc<MetadataHistory>,
    source: &mut SourceInputs,
    ledger: &mut VecInput<u64, (u64, PartitionClock)>,
    prefixes: &Rc<RefCell<HashMap<u64, PartitionClock>>>,
    (index, peers): (usize, usize),
    influx_full: &HeldBack,
) -> std::io::Result<()> {
    type DecodedChunk = (Chunk, Vec<Result<Decoded, DeadLetter>>);
    let mut file = ChunkedFile::open(&job.events, job.chunk_bytes)?;
    let chunk_count = file.chunk_count();
    let event_time = job.pipeline.event_time;
    let max_message_bytes = job.pipeline.ingest.max_message_bytes;
    let mut ingestor = Ingestor::new(job.schemas.clone(), Arc::clone(history), event_time)
        .with_max_message_bytes(max_message_bytes);
    let mut decoder = job
        .schemas
        .decoder()
        .with_max_message_bytes(max_message_bytes);
    // Two chunks are alive at a time (one scanned, one decoded ahead); their buffers are reused.
    let mut read_and_decode =
        |k: u64, (mut chunk, mut decoded): DecodedChunk| -> std::io::Result<DecodedChunk> {
            file.read_into(k, &mut chunk)?;
            decoded.clear();
            decoded.extend((0..chunk.lines.len()).map(|i| decoder.decode(chunk.line(i))));
            Ok((chunk, decoded))
        };
    let mut k = index as u64;
    let mut spare = DecodedChunk::default();
    let mut batch = ingestor.start_batch();
    let mut current = if k < chunk_count {
        Some(read_and_decode(k, DecodedChunk::default())?)
    } else {
        None
    };
    while let Some((chunk, mut decoded)) = current.take() {
        // Stopping between chunks keeps what was sent a prefix of the file: chunk k is only
        // sent once chunk k - 1's prefix is out, which its worker publishes as it sends it.
        if job.stop.load(Ordering::Relaxed) {
            break;
        }
        // Decode our next chunk before waiting, so the wait overlaps work.
        let next_k = k + peers as u64;
        let next = if next_k < chunk_count {
            Some(read_and_decode(next_k, std::mem::take(&mut spare))?)
        } else {
            None
        };
        let prefix = if k == 0 {
            PartitionClock::default()
        } else {
            loop {
                if let Some(prefix) = prefixes.borrow().get(&(k - 1)) {
                    break *prefix;
                }
                if job.stop.load(Ordering::Relaxed) {
                    // Chunk k - 1's worker stopped before it: so does this one.
                    return Ok(());
                }
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
        };
        ingestor.set_watermarker(Watermarker::resume(event_time, prefix));
        ingestor.restart_batch(&mut batch);
        for (i, result) in decoded.drain(..).enumerate() {
            ingestor.admit(chunk.line(i), result, Provenance::default(), &mut batch);
        }
        // A file has no arrival times; a hold still open here (fewer devices than the quorum
        // so far) is judged at the chunk's end, the same for any number of workers.
        ingestor.release_held(&mut batch);
        let prefix_after = ingestor.watermarker().clock();
        tracing::debug!(
            chunk = k,
            messages = batch.counts.messages,
            dead_letters = batch.dead_letters.len(),
            watermark_ms = batch.time_ms,
            "chunk admitted"
        );
        ledger.send((k, prefix_after));
        ledger.advance_to(next_k);
        ledger.flush();
        source.send(&mut batch);
        source.advance_to(watermark_after(event_time, &prefix_after));
        source.flush();
        prefixes.borrow_mut().retain(|&j, _| j + 1 >= k);
        worker.step();
        // InfluxDB is behind: wait for it rather than queue the file in memory; stop if it
        // says it cannot be written to.
        while influx_full.is_held() {
            // Stopped while waiting: finish (the drain gives up on an InfluxDB that is gone).
            if job.influx.as_ref().and_then(InfluxPool::failure).is_some()
                || job.stop.load(Ordering::Relaxed)
            {
                return Ok(());
            }
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        spare = (chunk, decoded);
        k = next_k;
        current = next;
    }
    Ok(())
}
