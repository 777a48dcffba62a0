//! The metadata store's change log as a source: read whole at start (the snapshot), then
//! followed, entry by entry.
//!
//! Why `run` reads the log itself rather than a topic a relay fills: the log is already
//! ordered and gap-free (each writer numbers its change under the counter's lock, see
//! [`crate::io::connect::store`]), so a follower that takes entry `n + 1` after `n` applies
//! every committed change once, in commit order; a relay into Kafka would be a second copy
//! whose own exactly-once (produce, then record how far) is the problem the store already
//! solved. A handful of processes polling an index range is no load for PostgreSQL.
//!
//! `run` keeps no registry state across restarts: it rebuilds its windows from the telemetry
//! it rewinds to, and with them the registry history they need, so its position is "the end
//! of the log it has read", rebuilt at every start by reading the log from entry 1. A change
//! made while `run` was down is in the log, and is applied on restart, once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::dataflow::RegistryUpdate;
use crate::dataflow::alert::AlertControl;
use crate::dataflow::metadata::MetadataHistory;
use crate::dataflow::schema::MetricCatalog;
use crate::io::connect::store::entities::to_entity;
use crate::io::connect::store::read::Change;
use crate::io::connect::store::{Store, StoreConfig, StoreError};
use crate::io::sources::live_registry::{ForwardedChange, LiveRegistry};
use crate::io::support::metrics::Metrics;
use crate::io::support::schema_files::resolve_matchers;

/// Log entries read per query.
const PAGE: i64 = 5_000;

/// The thread that follows the store's change log.
pub struct StoreFollower {
    handle: JoinHandle<()>,
}

impl StoreFollower {
    /// Opens the store (an error names the field if it cannot be reached) and starts
    /// following its logs from entry 1. Changes go into `live`, and into `forward` when given;
    /// silences and acknowledgements into `controls` when given. `live` is marked loaded once
    /// both logs were read to where they ended. The thread ends when `stop` is set.
    pub fn start(
        config: &StoreConfig,
        catalog: Arc<MetricCatalog>,
        live: Arc<LiveRegistry>,
        forward: Option<Sender<ForwardedChange>>,
        controls: Option<Sender<AlertControl>>,
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, StoreError> {
        let (runtime, store) = open_for_a_follower(config)?;
        let poll = Duration::from_millis(config.poll_interval_ms.max(1));
        let handle = std::thread::Builder::new()
            .name("store-follower".into())
            .spawn(move || {
                let mut follower = Follower {
                    history: MetadataHistory::default(),
                    last_seq: 0,
                    last_control_seq: 0,
                    catalog,
                    forward,
                    controls,
                    metrics,
                };
                while !stop.load(Ordering::Acquire) {
                    let more_controls = match runtime.block_on(follower.follow_controls(&store)) {
                        Ok(more) => more,
                        Err(e) => {
                            tracing::warn!(error = %e, seq = follower.last_control_seq, "alert control log read failed; retrying");
                            std::thread::sleep(Duration::from_secs(1));
                            continue;
                        }
                    };
                    match runtime.block_on(store.changes_after(follower.last_seq, PAGE)) {
                        Ok(page) => {
                            let more = page.len() as i64 == PAGE || more_controls;
                            if follower.apply(page) {
                                live.publish(&follower.history);
                            }
                            if !live.is_loaded() && !more {
                                live.publish(&follower.history);
                                live.mark_loaded();
                                tracing::info!(seq = follower.last_seq, "registry loaded from the store");
                            }
                            if more {
                                continue;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, seq = follower.last_seq, "change log read failed; retrying");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                    std::thread::sleep(poll);
                }
            })
            .expect("spawn the store follower");
        Ok(Self { handle })
    }

    /// Waits for the thread (after `stop` was set).
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

/// What the follower has read.
struct Follower {
    history: MetadataHistory,
    last_seq: i64,
    last_control_seq: i64,
    catalog: Arc<MetricCatalog>,
    forward: Option<Sender<ForwardedChange>>,
    controls: Option<Sender<AlertControl>>,
    metrics: Arc<Metrics>,
}

impl Follower {
    /// Reads a page of the alert control log and forwards it; whether more may follow.
    async fn follow_controls(&mut self, store: &Store) -> Result<bool, StoreError> {
        let Some(controls) = &self.controls else {
            return Ok(false);
        };
        forward_controls(store, &mut self.last_control_seq, &self.catalog, controls).await
    }

    /// Applies a page of the log, in order; whether anything changed.
    fn apply(&mut self, page: Vec<Change>) -> bool {
        let mut changed = false;
        for change in page {
            if change.seq != self.last_seq + 1 {
                // Only a writer that went around iotpipe leaves a gap; say so, and go on.
                tracing::warn!(
                    after = self.last_seq,
                    seq = change.seq,
                    "gap in the change log"
                );
            }
            self.last_seq = change.seq;
            match update_of(&change, &self.catalog) {
                Ok(update) => {
                    self.history.apply(&update);
                    if let Some(forward) = &self.forward {
                        // The receiver is gone only when the dataflow is shutting down.
                        let _ = forward.send(ForwardedChange {
                            update,
                            made_ms: Some(change.committed_ms),
                        });
                    }
                    self.metrics.registry_changes.inc();
                    changed = true;
                }
                Err(e) => {
                    self.metrics.registry_rejects.inc();
                    tracing::warn!(seq = change.seq, kind = change.kind.name(), id = change.id, error = %e, "change skipped");
                }
            }
        }
        changed
    }
}

/// What the dataflow makes of a log entry (an error if its body is not one of its kind).
fn update_of(
    change: &Change,
    catalog: &MetricCatalog,
) -> Result<RegistryUpdate, serde_json::Error> {
    let body = (!change.deleted).then_some(&change.body);
    let (key, value) = to_entity(change.kind, &change.id, body, catalog)?;
    Ok((key, value, change.effective_ms.max(0) as u64))
}

/// The whole history the store's change log holds, read once (`iotpipe etl`'s view of the
/// hierarchy over time); entries that are not of their kind are skipped and logged, as the
/// follower does.
pub async fn read_history(
    store: &Store,
    catalog: &MetricCatalog,
) -> Result<MetadataHistory, StoreError> {
    let mut history = MetadataHistory::default();
    let mut last_seq = 0;
    loop {
        let page = store.changes_after(last_seq, PAGE).await?;
        let more = page.len() as i64 == PAGE;
        for change in page {
            last_seq = change.seq;
            match update_of(&change, catalog) {
                Ok(update) => history.apply(&update),
                Err(e) => {
                    tracing::warn!(seq = change.seq, kind = change.kind.name(), id = change.id, error = %e, "change skipped");
                }
            }
        }
        if !more {
            return Ok(history);
        }
    }
}

/// Forwards a page of the alert control log after `last_seq` (which it moves on), metric
/// names resolved; whether more may follow.
async fn forward_controls(
    store: &Store,
    last_seq: &mut i64,
    catalog: &MetricCatalog,
    controls: &Sender<AlertControl>,
) -> Result<bool, StoreError> {
    let page = store.controls_after(*last_seq, PAGE).await?;
    let more = page.len() as i64 == PAGE;
    for (seq, mut control) in page {
        *last_seq = seq;
        match &mut control {
            AlertControl::Silence(silence) => {
                if let Err(e) = resolve_matchers(&mut silence.matchers, catalog) {
                    // The API checks names; a metric gone from the catalog since leaves the
                    // silence matching no metric name, which is what it said.
                    tracing::warn!(seq, silence = %silence.id, error = %e, "silence names an unknown metric");
                }
            }
            AlertControl::Rules(change) => {
                if let Err(e) = change.rules.resolve(catalog) {
                    // The API checks them; rules naming a metric the catalog lost since are
                    // not half applied: the rules in force stay.
                    tracing::error!(seq, version = change.version, error = %e, "alert rules skipped");
                    continue;
                }
            }
            AlertControl::Acknowledgement(_) => {}
        }
        // The receiver is gone only when the dataflow is shutting down.
        let _ = controls.send(control);
    }
    Ok(more)
}

/// The thread that follows the alert control log alone (for `demo`, whose registry is read
/// once at its start).
pub struct ControlFollower {
    handle: JoinHandle<()>,
}

impl ControlFollower {
    /// Opens the store, forwards the whole control log into `controls` before it returns (so
    /// the silences and acknowledgements made before the start hold from the first message),
    /// then follows it from a thread of its own until `stop` is set.
    pub fn start(
        config: &StoreConfig,
        catalog: Arc<MetricCatalog>,
        controls: Sender<AlertControl>,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, StoreError> {
        let (runtime, store) = open_for_a_follower(config)?;
        let mut last_seq = 0;
        while runtime.block_on(forward_controls(&store, &mut last_seq, &catalog, &controls))? {}
        let poll = Duration::from_millis(config.poll_interval_ms.max(1));
        let handle = std::thread::Builder::new()
            .name("control-follower".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if let Err(e) =
                        runtime.block_on(forward_controls(&store, &mut last_seq, &catalog, &controls))
                    {
                        tracing::warn!(error = %e, seq = last_seq, "alert control log read failed; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    std::thread::sleep(poll);
                }
            })
            .expect("spawn the control follower");
        Ok(Self { handle })
    }

    /// Waits for the thread (after `stop` was set).
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

/// The runtime a follower's thread drives its connections on, and the store opened on it (an
/// error names the field if it cannot be reached).
fn open_for_a_follower(
    config: &StoreConfig,
) -> Result<(tokio::runtime::Runtime, Store), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Connect(e.to_string()))?;
    let store = runtime.block_on(Store::open(config, |name| std::env::var(name).ok()))?;
    Ok((runtime, store))
}
