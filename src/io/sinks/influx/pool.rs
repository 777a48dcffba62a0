//! One process's InfluxDB writers: a bounded queue of batches, `max_in_flight` requests at a
//! time, and each batch's outcome sent back to the sink that made it.
//!
//! A refused batch (400, 413, 422) is halved and each half written again until every refused
//! record stands alone: good points land (writing a point twice leaves one point), and only the
//! records InfluxDB refuses on their own become dead letters, with its reason.
//!
//! Readings have a lane of their own, served first: the burst of windows, scores and rollups
//! that a window close emits at once does not queue ahead of the readings that dashboards wait
//! for. Every writer takes a readings batch when one waits, the others' batches otherwise.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use timely::scheduling::SyncActivator;
use tokio::sync::mpsc::error::TrySendError;

use crate::dataflow::model::{DeadLetter, DeadLetterReason, TimeMs};
use crate::io::connect::http::HttpEndpoint;
use crate::io::connect::influx::config::{InfluxConfig, InfluxConfigError};
use crate::io::connect::influx::write::{
    InfluxApi, InfluxSinkFailure, InfluxWriter, Rejected, WriteError,
};
use crate::io::support::metrics::Metrics;

/// Records' line protocol, on their way to InfluxDB together.
pub struct InfluxBatch {
    /// The line protocol of every record, one or more points each.
    pub lines: Vec<u8>,
    /// Points in `lines` (counted as it is sealed, see [`InfluxPool::sealed`]).
    points: u64,
    /// Where each record's points end in `lines`.
    pub ends: Vec<usize>,
    /// Each record's timely time.
    pub times: Vec<TimeMs>,
    /// Where the outcome goes.
    pub reply: BatchReply,
}

impl InfluxBatch {
    /// An empty batch answering to `reply`, filling `lines` (empty, perhaps a used buffer).
    pub fn new(reply: BatchReply, lines: Vec<u8>) -> Self {
        Self {
            lines,
            points: 0,
            ends: Vec::new(),
            times: Vec::new(),
            reply,
        }
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The line protocol of records `from..to`.
    fn records(&self, from: usize, to: usize) -> &[u8] {
        let start = if from == 0 { 0 } else { self.ends[from - 1] };
        &self.lines[start..self.ends[to - 1]]
    }
}

/// The channel back to a sink, and the handle that wakes it.
#[derive(Clone)]
pub struct BatchReply {
    /// Outcomes of the sink's batches.
    pub outcomes: Sender<BatchOutcome>,
    /// Schedules the sink's operator.
    pub activator: SyncActivator,
}

/// What became of a batch: it is written, but for the records in `rejected`.
pub struct BatchOutcome {
    /// The times of the batch's records, one entry per record.
    pub times: Vec<TimeMs>,
    /// The batch's line buffer, emptied, for the sink to fill again: the worker that made it
    /// reuses it instead of the writer thread freeing it.
    pub spare_lines: Vec<u8>,
    /// The records InfluxDB refused on their own, as dead letters, at their times.
    pub rejected: Vec<(TimeMs, DeadLetter)>,
}

/// Which queue a sink's batches take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Readings: written first.
    Readings,
    /// Everything derived from them (windows, rollups, scores, alert events).
    Derived,
}

type Queue = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<InfluxBatch>>>;

/// A process's InfluxDB writers; clones share them.
#[derive(Clone)]
pub struct InfluxPool {
    readings: tokio::sync::mpsc::Sender<InfluxBatch>,
    derived: tokio::sync::mpsc::Sender<InfluxBatch>,
    /// Batch size and linger, for the sinks.
    pub config: Arc<InfluxConfig>,
    /// Where InfluxDB is, TLS included, for readers of the same database.
    pub endpoint: HttpEndpoint,
    /// The API resolved at start, for readers of the same database.
    pub api: InfluxApi,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Set once InfluxDB says writing cannot work; the writers then stop, their batches
    /// unacknowledged, and the command stops with it.
    failure: Arc<Mutex<Option<InfluxSinkFailure>>>,
    /// What is unwritten and whether the writers are getting anywhere with it.
    progress: Arc<Progress>,
}

/// What a finishing command needs to know to stop waiting for an InfluxDB that is gone.
struct Progress {
    /// Where the `busy_since_ms` count from.
    epoch: Instant,
    /// Per writer: when (ms after `epoch`, plus one) it took the batch it is writing; 0: idle.
    busy_since_ms: Vec<AtomicU64>,
    /// Points sealed into batches and not yet answered (written or refused).
    pending_points: AtomicU64,
    /// Notified to stop the writers, whatever they are writing.
    abandon: tokio::sync::Notify,
}

impl Progress {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether InfluxDB has taken nothing for `timeout_ms` while the writers had something to
    /// write: the youngest unanswered request is that old (a writer that got an answer took
    /// its next batch since). Never while no writer is busy.
    fn stalled_for(&self, timeout_ms: u64) -> bool {
        let now = self.now_ms();
        self.busy_since_ms
            .iter()
            .map(|since| since.load(Ordering::Acquire))
            .filter(|&since| since > 0)
            .max()
            .is_some_and(|youngest| now.saturating_sub(youngest) >= timeout_ms)
    }
}

/// What a finishing command gave up on: InfluxDB took nothing for `influx.drain_timeout_ms`.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "influxdb at {authority} took nothing for {waited_s} s as the command finished: {points} \
     points were not written (influx.drain_timeout_ms; is InfluxDB running?)"
)]
pub struct InfluxUnwritten {
    /// InfluxDB's host and port.
    pub authority: String,
    /// How long it was waited for, seconds.
    pub waited_s: f64,
    /// Points sealed into batches that it did not take.
    pub points: u64,
}

impl InfluxPool {
    /// Resolves the API (asking `/ping` for `auto`), creates the 1.x database if missing, and
    /// starts the writers on a thread of their own.
    pub fn start(config: &InfluxConfig, metrics: Arc<Metrics>) -> Result<Self, InfluxConfigError> {
        let endpoint = config.validate()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| InfluxConfigError {
                field: "url".into(),
                message: format!("cannot start the writer runtime: {e}"),
            })?;
        let api = runtime.block_on(config.resolve(&endpoint))?;
        let mut writers = (0..config.max_in_flight)
            .map(|_| {
                let writer =
                    InfluxWriter::new(endpoint.clone(), &api, config.timeout(), config.backoff)?;
                Ok(if config.gzip {
                    writer
                } else {
                    writer.without_gzip()
                })
            })
            .collect::<Result<Vec<_>, InfluxConfigError>>()?;
        runtime.block_on(writers[0].ensure_database());
        let (readings, readings_queue) = tokio::sync::mpsc::channel(config.queue_batches);
        let (derived, derived_queue) = tokio::sync::mpsc::channel(config.queue_batches);
        let queues: (Queue, Queue) = (
            Arc::new(tokio::sync::Mutex::new(readings_queue)),
            Arc::new(tokio::sync::Mutex::new(derived_queue)),
        );
        let failure: Arc<Mutex<Option<InfluxSinkFailure>>> = Arc::default();
        let failed = Arc::clone(&failure);
        let progress = Arc::new(Progress {
            epoch: Instant::now(),
            busy_since_ms: (0..writers.len()).map(|_| AtomicU64::new(0)).collect(),
            pending_points: AtomicU64::new(0),
            abandon: tokio::sync::Notify::new(),
        });
        let shared = Arc::clone(&progress);
        let thread = std::thread::Builder::new()
            .name("influx-writer".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let tasks: Vec<_> = writers
                        .into_iter()
                        .enumerate()
                        .map(|(slot, writer)| {
                            tokio::spawn(write_batches(
                                Writer {
                                    writer,
                                    slot,
                                    progress: Arc::clone(&shared),
                                },
                                (Arc::clone(&queues.0), Arc::clone(&queues.1)),
                                Arc::clone(&metrics),
                                Arc::clone(&failed),
                            ))
                        })
                        .collect();
                    let all_written = async {
                        for task in tasks {
                            let _ = task.await;
                        }
                    };
                    // Abandoned: the runtime, dropped as the thread ends, cancels the writes.
                    tokio::select! {
                        () = all_written => {}
                        () = shared.abandon.notified() => {}
                    }
                })
            })
            .map_err(|e| InfluxConfigError {
                field: "url".into(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        tracing::info!(url = %config.url, ?api, "writing to influxdb");
        Ok(Self {
            readings,
            derived,
            config: Arc::new(config.clone()),
            endpoint,
            api,
            thread: Arc::new(Mutex::new(Some(thread))),
            failure,
            progress,
        })
    }

    /// Counts a batch's points as it is sealed, before it waits for the queue: from then on
    /// they are pending until InfluxDB answers for them.
    pub fn sealed(&self, batch: &mut InfluxBatch) {
        batch.points = batch.lines.iter().filter(|b| **b == b'\n').count() as u64;
        self.progress
            .pending_points
            .fetch_add(batch.points, Ordering::Relaxed);
    }

    /// Whether InfluxDB has taken nothing for `drain_timeout_ms` while there was something to
    /// write: a finishing command gives up on it then (while running, an outage is waited
    /// out, however long).
    pub fn stalled(&self) -> bool {
        self.progress.stalled_for(self.config.drain_timeout_ms)
    }

    /// Why InfluxDB cannot be written to, once it has said so (see [`crate::io::support::failure`]).
    pub fn failure(&self) -> Option<InfluxSinkFailure> {
        self.failure.lock().expect("not poisoned").clone()
    }

    /// Moves batches from the front of `waiting` into `lane`'s queue until it is full (the
    /// caller then holds the dataflow back and tries again).
    pub fn send_waiting(&self, lane: Lane, waiting: &mut VecDeque<InfluxBatch>) {
        let queue = match lane {
            Lane::Readings => &self.readings,
            Lane::Derived => &self.derived,
        };
        while !waiting.is_empty() {
            match queue.try_reserve() {
                Ok(permit) => permit.send(waiting.pop_front().expect("not empty")),
                Err(TrySendError::Full(())) => return,
                // The writers stopped on a sink failure: the batches stay unwritten (their
                // capabilities held) until the command, seeing `failure`, stops.
                Err(TrySendError::Closed(())) => return,
            }
        }
    }

    /// Waits for the writers to finish what is queued, the sinks' clones gone; gives up once
    /// InfluxDB has taken nothing for `drain_timeout_ms`, saying how many points it did not
    /// take.
    pub fn finish(self) -> Result<(), InfluxUnwritten> {
        let thread = self.thread.lock().expect("not poisoned").take();
        drop(self.readings);
        drop(self.derived);
        let Some(thread) = thread else {
            return Ok(());
        };
        let mut abandoned = false;
        while !thread.is_finished() {
            if self.progress.stalled_for(self.config.drain_timeout_ms) {
                self.progress.abandon.notify_one();
                abandoned = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = thread.join();
        let points = self.progress.pending_points.load(Ordering::Relaxed);
        if abandoned && points > 0 {
            return Err(InfluxUnwritten {
                authority: self.endpoint.authority().to_owned(),
                waited_s: self.config.drain_timeout_ms as f64 / 1000.0,
                points,
            });
        }
        Ok(())
    }
}

/// One of the writers, and where it says what it is doing.
struct Writer {
    writer: InfluxWriter,
    /// Its entry in `progress.busy_since_ms`.
    slot: usize,
    progress: Arc<Progress>,
}

async fn write_batches(
    Writer {
        mut writer,
        slot,
        progress,
    }: Writer,
    (readings, derived): (Queue, Queue),
    metrics: Arc<Metrics>,
    failure: Arc<Mutex<Option<InfluxSinkFailure>>>,
) {
    loop {
        // Readings first; a lane that is closed and empty drops out.
        let next = tokio::select! {
            biased;
            Some(batch) = async { readings.lock().await.recv().await } => Some(batch),
            Some(batch) = async { derived.lock().await.recv().await } => Some(batch),
            else => None,
        };
        let Some(batch) = next else {
            return;
        };
        let busy_since = &progress.busy_since_ms[slot];
        busy_since.store(progress.now_ms(), Ordering::Release);
        let retries_before = writer.retries();
        let started = std::time::Instant::now();
        let rejected = match write_halving(&mut writer, &batch).await {
            Ok(rejected) => rejected,
            Err(sink) => {
                tracing::error!(error = %sink, "influxdb cannot be written to; stopping");
                metrics
                    .sink_failures("influx", crate::io::support::failure::FailureClass::Sink)
                    .inc();
                failure.lock().expect("not poisoned").get_or_insert(sink);
                return;
            }
        };
        metrics.influx_request.observe(started.elapsed());
        metrics
            .influx_retries
            .inc_by(writer.retries() - retries_before);
        busy_since.store(0, Ordering::Release);
        progress
            .pending_points
            .fetch_sub(batch.points, Ordering::Relaxed);
        let points = batch.points as usize;
        let refused: usize = rejected
            .iter()
            .map(|(i, _)| {
                batch
                    .records(*i, *i + 1)
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
            })
            .sum();
        metrics.influx_points.inc_by((points - refused) as u64);
        if !rejected.is_empty() {
            metrics
                .sink_failures("influx", crate::io::support::failure::FailureClass::Record)
                .inc_by(rejected.len() as u64);
        }
        let rejected = rejected
            .into_iter()
            .map(|(i, refusal)| {
                let raw = batch.records(i, i + 1).trim_ascii_end();
                tracing::warn!(status = refusal.status, reason = %refusal.message, "influxdb refused a point");
                let dead = DeadLetter::new(
                    DeadLetterReason::StoreRejected,
                    format!("influxdb: HTTP {}: {}", refusal.status, refusal.message),
                    raw,
                );
                (batch.times[i], dead)
            })
            .collect();
        let InfluxBatch {
            times,
            reply,
            mut lines,
            ..
        } = batch;
        lines.clear();
        let outcome = BatchOutcome {
            times,
            spare_lines: lines,
            rejected,
        };
        // A sink that is gone (its dataflow dropped on shutdown) needs no answer.
        if reply.outcomes.send(outcome).is_ok() {
            let _ = reply.activator.activate();
        }
    }
}

/// Writes the batch; on a refusal, each half again, down to single records. Returns the
/// records refused on their own, or the sink's failure.
async fn write_halving(
    writer: &mut InfluxWriter,
    batch: &InfluxBatch,
) -> Result<Vec<(usize, Rejected)>, InfluxSinkFailure> {
    let mut refused = Vec::new();
    let mut ranges = vec![(0, batch.len())];
    while let Some((from, to)) = ranges.pop() {
        if from == to {
            continue;
        }
        match writer.write(batch.records(from, to)).await {
            Ok(()) => {}
            Err(WriteError::Sink(failure)) => return Err(failure),
            Err(WriteError::Rejected(refusal)) if to - from == 1 => refused.push((from, refusal)),
            Err(WriteError::Rejected(_)) => {
                let middle = from + (to - from) / 2;
                ranges.push((middle, to));
                ranges.push((from, middle));
            }
        }
    }
    Ok(refused)
}
