//! Notification channels for alert events: webhooks, MQTT and JSON Lines files.
//!
//! The dataflow hands each completed time's alert events to a [`NotifierHandle`], which never
//! blocks: events queue in memory per channel (alert events are few; a storm of a hundred
//! thousand is a few tens of megabytes), and one task per channel delivers them in order,
//! retrying with backoff while the receiver is down. A channel with a ledger directory records
//! each delivered event id and skips ids it has delivered before, so a replay or a restart
//! never sends an event twice.

mod ledger;
mod mqtt;
mod spool;
mod webhook;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use crate::io::backoff::Backoff;
pub use mqtt::MqttChannel;
pub use webhook::{WebhookChannel, signature};

use crate::dataflow::alert::{AlertEvent, Severity};
use crate::dataflow::schema::MetricCatalog;
use ledger::Ledger;

/// One event as channels send it: its id, severity and site (for filters and topics), and the
/// JSON line (the `alerts.jsonl` shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The event id.
    pub id: String,
    /// Its severity.
    pub severity: Severity,
    /// Its site.
    pub site: String,
    /// The JSON object sent.
    pub json: String,
}

impl Notification {
    /// The notifications for events, as `alerts.jsonl` lines.
    pub fn for_events(events: &[AlertEvent], catalog: &MetricCatalog) -> Vec<Self> {
        events
            .iter()
            .map(|e| Self::new(e, crate::io::jsonl::alert_line(e, catalog)))
            .collect()
    }

    /// The notification for an event, given its JSON line.
    pub fn new(event: &AlertEvent, json: String) -> Self {
        Self {
            id: event.id.clone(),
            severity: event.severity,
            site: event.site.clone(),
            json,
        }
    }
}

/// Where alert events go. Every field is documented; unknown fields are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Directory of per-channel ledgers of delivered event ids, and of events still undelivered
    /// when a run ended (sent first by the next run). None: no deduplication across runs, and
    /// undelivered events are only logged.
    pub ledger_dir: Option<PathBuf>,
    /// How long the end of a run waits for channels to deliver what is queued.
    pub drain_timeout_ms: u64,
    /// Webhooks.
    pub webhook: Vec<webhook::WebhookConfig>,
    /// MQTT brokers.
    pub mqtt: Vec<mqtt::MqttConfig>,
    /// JSON Lines files.
    pub file: Vec<FileConfig>,
}

/// A JSON Lines file that alert events are appended to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The channel's name (ledger file name, logs).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Events below this severity are not sent.
    #[serde(default)]
    pub min_severity: Severity,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            ledger_dir: None,
            drain_timeout_ms: 60_000,
            webhook: Vec::new(),
            mqtt: Vec::new(),
            file: Vec::new(),
        }
    }
}

/// Counts of one channel.
#[derive(Debug, Default)]
pub struct ChannelCounts {
    /// Events delivered.
    pub delivered: AtomicU64,
    /// Events skipped because the ledger had them (delivered by an earlier run).
    pub already_delivered: AtomicU64,
    /// Events the receiver refused for good (a 4xx other than 429).
    pub rejected: AtomicU64,
    /// Failed attempts that were retried.
    pub retries: AtomicU64,
    /// Events still queued when the notifier was finished.
    pub undelivered: AtomicU64,
}

/// What a channel did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelReport {
    /// The channel's name.
    pub name: String,
    /// Events delivered.
    pub delivered: u64,
    /// Events skipped as delivered before.
    pub already_delivered: u64,
    /// Events refused for good.
    pub rejected: u64,
    /// Retried attempts.
    pub retries: u64,
    /// Events not delivered when the notifier finished.
    pub undelivered: u64,
}

/// A channel that can deliver one notification (retrying is the caller's).
pub trait Channel: Send + 'static {
    /// The channel's name.
    fn name(&self) -> &str;
    /// Events below this severity are skipped.
    fn min_severity(&self) -> Severity;
    /// Delivers one notification: `Ok` when delivered, `Err(Retry)` to retry after backoff,
    /// `Err(Reject)` when the receiver refused it for good.
    fn deliver(
        &mut self,
        n: &Notification,
    ) -> impl std::future::Future<Output = Result<(), Failure>> + Send;
    /// Waits for deliveries still in flight (MQTT acknowledgements).
    fn flush(&mut self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Try again later (connection refused, timeout, 5xx, 429).
    #[error("retry: {0}")]
    Retry(String),
    /// Refused for good.
    #[error("rejected: {0}")]
    Reject(String),
}

/// A file channel.
struct FileChannel {
    config: FileConfig,
    file: Option<std::fs::File>,
}

impl Channel for FileChannel {
    fn name(&self) -> &str {
        &self.config.name
    }
    fn min_severity(&self) -> Severity {
        self.config.min_severity
    }
    async fn deliver(&mut self, n: &Notification) -> Result<(), Failure> {
        use std::io::Write;
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.config.path)
                .map_err(|e| Failure::Retry(format!("{}: {e}", self.config.path.display())))?;
            self.file = Some(file);
        }
        let file = self.file.as_mut().expect("opened above");
        writeln!(file, "{}", n.json).map_err(|e| {
            self.file = None;
            Failure::Retry(e.to_string())
        })
    }
}

/// The sending side, cloned into the dataflow's sinks.
#[derive(Clone)]
pub struct NotifierHandle {
    senders: Vec<mpsc::UnboundedSender<Notification>>,
}

impl NotifierHandle {
    /// Queues notifications on every channel. Never blocks.
    pub fn send(&self, notifications: &[Notification]) {
        for sender in &self.senders {
            for n in notifications {
                // A closed channel has finished; what it missed is counted there.
                let _ = sender.send(n.clone());
            }
        }
    }
}

/// The running channels.
pub struct Notifier {
    handle: Option<NotifierHandle>,
    runtime: tokio::runtime::Runtime,
    tasks: Vec<(String, Arc<ChannelCounts>, tokio::task::JoinHandle<()>)>,
    /// Tells channels the drain time is over: spool what is left.
    stop: tokio::sync::watch::Sender<bool>,
    drain_timeout: Duration,
}

/// A notifier that could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The runtime could not start.
    #[error("notifier runtime: {0}")]
    Runtime(std::io::Error),
    /// A ledger could not be opened.
    #[error("ledger {path}: {source}")]
    Ledger {
        /// The ledger file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A channel is misconfigured.
    #[error("{0}")]
    Config(String),
}

impl Notifier {
    /// Starts every configured channel.
    pub fn start(config: &NotifyConfig) -> Result<Self, NotifyError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("iotpipe-notify")
            .enable_all()
            .build()
            .map_err(NotifyError::Runtime)?;
        let mut notifier = Notifier {
            handle: Some(NotifierHandle {
                senders: Vec::new(),
            }),
            runtime,
            tasks: Vec::new(),
            stop: tokio::sync::watch::channel(false).0,
            drain_timeout: Duration::from_millis(config.drain_timeout_ms),
        };
        for c in &config.webhook {
            let channel = WebhookChannel::new(c.clone()).map_err(NotifyError::Config)?;
            let backoff = c.backoff;
            notifier.spawn(channel, backoff, config.ledger_dir.as_ref())?;
        }
        for c in &config.mqtt {
            let channel = {
                let _guard = notifier.runtime.enter();
                MqttChannel::new(c.clone()).map_err(NotifyError::Config)?
            };
            notifier.spawn(channel, c.backoff, config.ledger_dir.as_ref())?;
        }
        for c in &config.file {
            let channel = FileChannel {
                config: c.clone(),
                file: None,
            };
            notifier.spawn(channel, Backoff::default(), config.ledger_dir.as_ref())?;
        }
        Ok(notifier)
    }

    fn spawn<C: Channel>(
        &mut self,
        mut channel: C,
        backoff: Backoff,
        ledger_dir: Option<&PathBuf>,
    ) -> Result<(), NotifyError> {
        let name = channel.name().to_string();
        let mut ledger = match ledger_dir {
            Some(dir) => {
                let path = dir.join(format!("{name}.ids"));
                Some(Ledger::open(&path).map_err(|source| NotifyError::Ledger { path, source })?)
            }
            None => None,
        };
        let spool_path = ledger_dir.map(|dir| dir.join(format!("{name}.pending.jsonl")));
        let mut pending: std::collections::VecDeque<Notification> = match &spool_path {
            Some(path) => spool::take(path).map_err(|source| NotifyError::Ledger {
                path: path.clone(),
                source,
            })?,
            None => Default::default(),
        };
        let mut stop = self.stop.subscribe();
        let counts = Arc::new(ChannelCounts::default());
        let (sender, mut receiver) = mpsc::unbounded_channel::<Notification>();
        self.handle
            .as_mut()
            .expect("channels start before the handle is taken")
            .senders
            .push(sender);
        let task_counts = Arc::clone(&counts);
        let task = self.runtime.spawn(async move {
            let counts = task_counts;
            'events: loop {
                let n = match pending.pop_front() {
                    Some(n) => n,
                    None => match receiver.recv().await {
                        Some(n) => n,
                        None => break,
                    },
                };
                if n.severity < channel.min_severity() {
                    continue;
                }
                if ledger.as_ref().is_some_and(|l| l.contains(&n.id)) {
                    counts.already_delivered.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let mut attempt = 0;
                loop {
                    let outcome = tokio::select! {
                        outcome = channel.deliver(&n) => Some(outcome),
                        _ = stop.changed() => None,
                    };
                    let Some(outcome) = outcome else {
                        pending.push_front(n);
                        spool::keep(&channel, &counts, pending, receiver, spool_path.as_deref());
                        break 'events;
                    };
                    match outcome {
                        Ok(()) => {
                            counts.delivered.fetch_add(1, Ordering::Relaxed);
                            if let Some(l) = ledger.as_mut()
                                && let Err(e) = l.record(&n.id)
                            {
                                tracing::error!(channel = %channel.name(), error = %e, "ledger write failed");
                            }
                            break;
                        }
                        Err(Failure::Reject(reason)) => {
                            counts.rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(channel = %channel.name(), id = %n.id, %reason, "alert event rejected");
                            break;
                        }
                        Err(Failure::Retry(reason)) => {
                            counts.retries.fetch_add(1, Ordering::Relaxed);
                            let wait = backoff.wait(attempt);
                            tracing::warn!(channel = %channel.name(), id = %n.id, %reason, wait_ms = wait.as_millis() as u64, "delivery failed; retrying");
                            let stopped = tokio::select! {
                                _ = tokio::time::sleep(wait) => false,
                                _ = stop.changed() => true,
                            };
                            if stopped {
                                pending.push_front(n);
                                spool::keep(&channel, &counts, pending, receiver, spool_path.as_deref());
                                break 'events;
                            }
                            attempt += 1;
                        }
                    }
                }
            }
            channel.flush().await;
        });
        self.tasks.push((name, counts, task));
        Ok(())
    }

    /// The handle to send through.
    pub fn handle(&self) -> NotifierHandle {
        self.handle.clone().expect("the notifier has not finished")
    }

    /// Stops accepting events and waits up to the drain timeout for the queues to drain;
    /// reports what each channel did. Events left undelivered are counted and kept for the next
    /// run in the ledger directory (or, without one, logged by id).
    pub fn finish(mut self) -> Vec<ChannelReport> {
        self.handle = None;
        let tasks = std::mem::take(&mut self.tasks);
        let runtime = self.runtime;
        let until = tokio::time::Instant::now() + self.drain_timeout;
        let mut reports = Vec::new();
        for (name, counts, mut task) in tasks {
            let done =
                runtime.block_on(async { tokio::time::timeout_at(until, &mut task).await.is_ok() });
            if !done {
                // Out of time: the channel keeps (or logs) what it still holds.
                let _ = self.stop.send(true);
                let _ = runtime.block_on(async {
                    tokio::time::timeout(Duration::from_secs(5), &mut task).await
                });
                task.abort();
            }
            reports.push(ChannelReport {
                name,
                delivered: counts.delivered.load(Ordering::Relaxed),
                already_delivered: counts.already_delivered.load(Ordering::Relaxed),
                rejected: counts.rejected.load(Ordering::Relaxed),
                retries: counts.retries.load(Ordering::Relaxed),
                undelivered: counts.undelivered.load(Ordering::Relaxed),
            });
        }
        runtime.shutdown_timeout(Duration::from_secs(1));
        reports
    }
}
