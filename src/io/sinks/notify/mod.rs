//! Notification channels for alert events: webhooks, MQTT, JSON Lines files, Prometheus
//! Alertmanager, and the metadata store (which records every event, for the alert API).
//!
//! The dataflow hands each completed time's alert events to a [`NotifierHandle`], which never
//! blocks: events queue in memory per channel (alert events are few; a storm of a hundred
//! thousand is a few tens of megabytes), and one task per channel delivers them in order,
//! retrying with backoff while the receiver is down. A channel with a ledger directory records
//! each delivered event id and skips ids it has delivered before, so a replay or a restart
//! never sends an event twice.
//!
//! Failures follow [`crate::io::support::failure`]: a transient one (refused connection, timeout, 5xx,
//! 429) is retried with backoff; an event the receiver refuses for good (400, 413, 422) is
//! kept in `LEDGER_DIR/NAME.rejected.jsonl` with the receiver's reason, and the channel moves
//! on; answers that say the channel cannot work (401, 403, 404, a broker refusing the
//! credentials, a file that cannot be opened), [`SINK_FAILURE_TRIES`] in a row, end the
//! channel: what it still holds is kept for the next run, and the command stops with one error
//! naming the channel's config field.

mod alertmanager;
mod ledger;
mod mqtt;
mod payload;
mod spool;
mod store;
mod webhook;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use crate::io::support::backoff::Backoff;
pub use alertmanager::{AlertmanagerChannel, AlertmanagerConfig};
pub use mqtt::MqttChannel;
pub use payload::WebhookFormat;
pub use webhook::{WebhookChannel, signature};

use crate::dataflow::alert::{AlertEvent, AlertEventKind, Severity};
use crate::dataflow::model::TimeMs;
use crate::dataflow::schema::MetricCatalog;
use crate::io::connect::http::HttpConnection;
use crate::io::support::failure::{FailureClass, SINK_FAILURE_TRIES, SinkStrikes};
use crate::io::support::metrics::Metrics;
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
    /// A silence keeps it from people: no channel sends it.
    #[serde(default)]
    pub silenced: bool,
    /// Its alert is overdue: escalation channels (`overdue_only`) send it.
    #[serde(default)]
    pub overdue: bool,
    /// When it was written to the alerts topic (ms since the epoch), for a dispatcher's
    /// latency (`iotpipe_notify_latency_seconds`); none outside one.
    #[serde(default)]
    pub emitted_ms: Option<i64>,
    /// For a group (see [`Notification::group`]): the ids of the events it stands for, each
    /// recorded in the ledger once the group is delivered; empty for one event.
    #[serde(default)]
    pub members: Vec<String>,
    /// The JSON object sent.
    pub json: String,
}

impl Notification {
    /// The notifications for events, as `alerts.jsonl` lines, in the order channels send them:
    /// by event time, the events of one alert at one time as they happened (opened, escalated,
    /// resolved), then by line, so that every run sends them in the same order.
    pub fn for_events(events: &[AlertEvent], catalog: &MetricCatalog) -> Vec<Self> {
        let mut ordered: Vec<(TimeMs, AlertEventKind, Self)> = events
            .iter()
            .map(|e| {
                let line = crate::io::sinks::files::jsonl::alert_line(e, catalog);
                (e.ts_ms, e.event, Self::new(e, line))
            })
            .collect();
        ordered.sort_by(|a, b| (a.0, a.1, &a.2.json).cmp(&(b.0, b.1, &b.2.json)));
        ordered.into_iter().map(|(_, _, n)| n).collect()
    }

    /// The notification for an event, given its JSON line.
    pub fn new(event: &AlertEvent, json: String) -> Self {
        Self {
            id: event.id.clone(),
            severity: event.severity,
            site: event.site.clone(),
            silenced: event.silenced_by.is_some(),
            overdue: event.overdue,
            emitted_ms: None,
            members: Vec::new(),
            json,
        }
    }

    /// What a group is made by: events of one site, cause and kind (`opened`, `resolved`, ...).
    fn group_key(&self) -> (String, String, String) {
        let event: serde_json::Value = serde_json::from_str(&self.json).unwrap_or_default();
        let text = |name: &str| event[name].as_str().unwrap_or_default().to_owned();
        (self.site.clone(), text("cause"), text("event"))
    }

    /// One notification for `members` (at least one; one is itself): its JSON is
    /// `{"group": {"site", "cause", "event", "count"}, "events": [...]}`, its id the first
    /// member's and the count, its severity the highest.
    pub fn group(mut members: Vec<Notification>) -> Notification {
        if members.len() == 1 {
            return members.pop().expect("one");
        }
        let (site, cause, event) = members[0].group_key();
        let events: Vec<serde_json::Value> = members
            .iter()
            .map(|m| serde_json::from_str(&m.json).unwrap_or(serde_json::Value::Null))
            .collect();
        let json = serde_json::json!({
            "group": {"site": site, "cause": cause, "event": event, "count": members.len()},
            "events": events,
        });
        Notification {
            id: format!("{}+{}", members[0].id, members.len() - 1),
            severity: members.iter().map(|m| m.severity).max().expect("members"),
            site,
            silenced: false,
            overdue: members.iter().any(|m| m.overdue),
            emitted_ms: members.iter().filter_map(|m| m.emitted_ms).min(),
            members: members.into_iter().map(|m| m.id).collect(),
            json: json.to_string(),
        }
    }

    /// The events it stands for: its members, or itself.
    fn ids(&self) -> impl Iterator<Item = &str> {
        let own = self.members.is_empty().then_some(self.id.as_str());
        own.into_iter()
            .chain(self.members.iter().map(String::as_str))
    }
}

/// Events one group request carries at most.
const MAX_GROUP: usize = 500;

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
    /// Prometheus Alertmanagers.
    pub alertmanager: Vec<AlertmanagerConfig>,
    /// The metadata store every alert event is recorded in (silenced ones too, once by id):
    /// the registry API's `/v1/alerts` and the dashboard list, acknowledge and silence from
    /// it. None: not recorded.
    pub store: Option<crate::io::connect::store::StoreConfig>,
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
    /// An escalation: only events of alerts left unacknowledged past their escalation time
    /// (see the alert rules' `notification`) are sent.
    #[serde(default)]
    pub overdue_only: bool,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            ledger_dir: None,
            drain_timeout_ms: 60_000,
            webhook: Vec::new(),
            mqtt: Vec::new(),
            file: Vec::new(),
            alertmanager: Vec::new(),
            store: None,
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
    /// Events the receiver refused for good (400, 413, 422).
    pub rejected: AtomicU64,
    /// Failed attempts that were retried.
    pub retries: AtomicU64,
    /// Events still queued when the notifier was finished.
    pub undelivered: AtomicU64,
    /// Events the channel is done with: delivered, skipped (below its severity, or delivered
    /// before) or refused for good and kept. A dispatcher commits its input up to what every
    /// channel is done with.
    pub handled: AtomicU64,
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
    /// Events sent to the notifier that the channel is done with (see
    /// [`ChannelCounts::handled`]).
    pub handled: u64,
    /// Why the channel gave up, if it did (the command then ends with this error).
    pub failure: Option<ChannelFailure>,
}

/// A channel that can deliver one notification (retrying is the caller's).
pub trait Channel: Send + 'static {
    /// The channel's name.
    fn name(&self) -> &str;
    /// Events below this severity are skipped.
    fn min_severity(&self) -> Severity;
    /// Whether the channel is an escalation: it sends only events of overdue alerts.
    fn overdue_only(&self) -> bool;
    /// How long events wait for others of their site, cause and kind to go in one request
    /// (none: one request per event).
    fn group_wait(&self) -> Option<Duration> {
        None
    }
    /// Whether the channel sends `n` (a silenced event never).
    fn takes(&self, n: &Notification) -> bool {
        !n.silenced && n.severity >= self.min_severity() && (n.overdue || !self.overdue_only())
    }
    /// Delivers one notification: `Ok` when delivered, else a [`Failure`] of its class
    /// (retrying is the caller's).
    fn deliver(
        &mut self,
        n: &Notification,
    ) -> impl std::future::Future<Output = Result<(), Failure>> + Send;
    /// Waits for deliveries still in flight (MQTT acknowledgements).
    fn flush(&mut self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
    /// Learns of an event the ledger says an earlier run delivered (it is not sent again), so
    /// that a channel keeping state across events (Alertmanager's open alerts) has it.
    fn already_delivered(&mut self, _n: &Notification) {}
    /// How long until [`idle`](Self::idle) is due while no event waits (none: never).
    fn idle_interval(&self) -> Option<Duration> {
        None
    }
    /// Work between events (Alertmanager: post the open alerts again).
    fn idle(&mut self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
}

/// Why a delivery failed, classed by [`crate::io::support::failure`].
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Failure {
    /// What the failure means for the event and the channel.
    pub class: FailureClass,
    /// The channel's config field to check when the channel cannot work.
    pub field: &'static str,
    /// What the receiver or the system said.
    pub reason: String,
}

impl Failure {
    /// Try again later (connection refused, timeout, 5xx, 429).
    pub fn transient(reason: impl Into<String>) -> Self {
        Self {
            class: FailureClass::Transient,
            field: "",
            reason: reason.into(),
        }
    }

    /// This event is refused for good.
    pub fn record(reason: impl Into<String>) -> Self {
        Self {
            class: FailureClass::Record,
            field: "",
            reason: reason.into(),
        }
    }

    /// The channel cannot work until `field` is fixed.
    pub fn sink(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            class: FailureClass::Sink,
            field,
            reason: reason.into(),
        }
    }

    /// The failure of an answer with HTTP `status`, `field` naming what to check when it says
    /// the channel cannot work.
    pub fn of_http_status(status: u16, field: &'static str) -> Self {
        Self {
            class: FailureClass::of_http_status(status),
            field,
            reason: format!("HTTP {status}"),
        }
    }
}

/// How much of a receiver's answer a failure carries.
const ANSWER_SHOWN_BYTES: usize = 512;

/// Sends an HTTP channel's `request` within `timeout`: `Ok` on a 2xx answer, else the failure
/// of its class, with the field `field_of(status)` names and the receiver's answer (bounded:
/// it ends up in logs and the rejected file).
async fn send_http(
    http: &mut HttpConnection,
    request: hyper::Request<http_body_util::Full<bytes::Bytes>>,
    timeout: Duration,
    field_of: impl Fn(u16) -> &'static str,
) -> Result<(), Failure> {
    let (status, answer) = http.send(request, timeout).await.map_err(|e| Failure {
        class: e.class(),
        field: e.field(),
        reason: e.to_string(),
    })?;
    if status.is_success() {
        return Ok(());
    }
    let status = status.as_u16();
    let mut failure = Failure::of_http_status(status, field_of(status));
    let answer = String::from_utf8_lossy(&answer).trim().to_owned();
    if !answer.is_empty() {
        failure.reason = format!(
            "{}: {}",
            failure.reason,
            crate::dataflow::model::bounded(answer, ANSWER_SHOWN_BYTES)
        );
    }
    Err(failure)
}

/// A channel whose settings cannot work: which, the field and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} `{channel}`: {field}: {message}")]
pub struct ChannelConfigError {
    /// `webhook`, `mqtt` or `file`.
    pub kind: &'static str,
    /// The channel's name.
    pub channel: String,
    /// The field.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A channel that gave up: the receiver said it cannot take events
/// [`SINK_FAILURE_TRIES`] times in a row.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "notify channel `{channel}`: {field}: {reason} ({tries} times in a row); its undelivered \
     events are {kept}"
)]
pub struct ChannelFailure {
    /// The channel's name.
    pub channel: String,
    /// The config field to check.
    pub field: &'static str,
    /// The last answer.
    pub reason: String,
    /// How many answers in a row said so.
    pub tries: u32,
    /// Where the undelivered events are kept.
    pub kept: String,
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
    fn overdue_only(&self) -> bool {
        self.config.overdue_only
    }
    async fn deliver(&mut self, n: &Notification) -> Result<(), Failure> {
        use std::io::Write;
        let path = &self.config.path;
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| file_failure(path, &e))?;
            self.file = Some(file);
        }
        let file = self.file.as_mut().expect("opened above");
        writeln!(file, "{}", n.json).map_err(|e| {
            self.file = None;
            file_failure(path, &e)
        })
    }
}

/// A file error's class: one that no retry mends (no such directory, no permission, not a
/// file, a read-only file system) is the channel's; the rest (a full disk) pass.
fn file_failure(path: &std::path::Path, error: &std::io::Error) -> Failure {
    use std::io::ErrorKind as K;
    let reason = format!("{}: {error}", path.display());
    match error.kind() {
        K::NotFound
        | K::PermissionDenied
        | K::IsADirectory
        | K::NotADirectory
        | K::ReadOnlyFilesystem
        | K::InvalidInput => Failure::sink("path", reason),
        _ => Failure::transient(reason),
    }
}

/// The sending side, cloned into the dataflow's sinks.
#[derive(Clone)]
pub struct NotifierHandle {
    senders: Vec<mpsc::UnboundedSender<Notification>>,
    failures: Vec<Arc<Mutex<Option<ChannelFailure>>>>,
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

    /// The first channel that gave up, if one did: the command is to stop with it.
    pub fn failure(&self) -> Option<ChannelFailure> {
        self.failures
            .iter()
            .find_map(|f| f.lock().expect("not poisoned").clone())
    }
}

/// The running channels.
pub struct Notifier {
    handle: Option<NotifierHandle>,
    runtime: tokio::runtime::Runtime,
    tasks: Vec<ChannelTask>,
    /// Tells channels the drain time is over: spool what is left.
    stop: tokio::sync::watch::Sender<bool>,
    drain_timeout: Duration,
}

/// One channel's delivery task and what it shares.
struct ChannelTask {
    name: String,
    counts: Arc<ChannelCounts>,
    failure: Arc<Mutex<Option<ChannelFailure>>>,
    task: tokio::task::JoinHandle<()>,
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
    #[error(transparent)]
    Config(#[from] ChannelConfigError),
}

/// Where a channel keeps what it cannot deliver, and how it tells.
struct Keeping {
    /// Events still to send when a run ended or the channel gave up.
    spool: Option<PathBuf>,
    /// Events the receiver refused for good, with its reason.
    rejected: Option<PathBuf>,
    metrics: Arc<Metrics>,
    /// The `sink` label of the channel's failures.
    sink_label: String,
}

impl Keeping {
    fn count(&self, class: FailureClass) {
        self.metrics.sink_failures(&self.sink_label, class).inc();
    }

    /// Appends a refused event, with the reason, to the rejected file (or the log).
    fn reject(&self, channel: &str, n: &Notification, reason: &str) {
        let line = serde_json::json!({ "id": n.id, "reason": reason, "event": n.json });
        let written = self.rejected.as_ref().map(|path| {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut file| writeln!(file, "{line}"))
        });
        match written {
            Some(Ok(())) => {
                tracing::error!(%channel, id = %n.id, %reason, "alert event refused by the receiver; kept as rejected")
            }
            Some(Err(e)) => {
                tracing::error!(%channel, id = %n.id, %reason, error = %e, "alert event refused by the receiver; could not keep it")
            }
            None => {
                tracing::error!(%channel, id = %n.id, %reason, event = %n.json, "alert event refused by the receiver")
            }
        }
    }

    fn kept_where(&self) -> String {
        match &self.spool {
            Some(path) => format!("kept in {} for the next run", path.display()),
            None => "logged by id (set ledger_dir to keep them)".into(),
        }
    }
}

impl Notifier {
    /// Starts every configured channel; their failures are counted in `metrics`
    /// (`iotpipe_sink_failures_total{sink="notify_NAME"}`).
    pub fn start(config: &NotifyConfig, metrics: &Arc<Metrics>) -> Result<Self, NotifyError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("iotpipe-notify")
            .enable_all()
            .build()
            .map_err(NotifyError::Runtime)?;
        let mut notifier = Notifier {
            handle: Some(NotifierHandle {
                senders: Vec::new(),
                failures: Vec::new(),
            }),
            runtime,
            tasks: Vec::new(),
            stop: tokio::sync::watch::channel(false).0,
            drain_timeout: Duration::from_millis(config.drain_timeout_ms),
        };
        let ledger_dir = config.ledger_dir.as_ref();
        for c in &config.webhook {
            let channel = WebhookChannel::new(c.clone()).map_err(NotifyError::Config)?;
            notifier.spawn(channel, c.backoff, ledger_dir, metrics)?;
        }
        for c in &config.mqtt {
            let channel = {
                let _guard = notifier.runtime.enter();
                MqttChannel::new(c.clone()).map_err(NotifyError::Config)?
            };
            notifier.spawn(channel, c.backoff, ledger_dir, metrics)?;
        }
        for c in &config.alertmanager {
            let channel = AlertmanagerChannel::new(c.clone()).map_err(NotifyError::Config)?;
            notifier.spawn(channel, c.backoff, ledger_dir, metrics)?;
        }
        for c in &config.file {
            let channel = FileChannel {
                config: c.clone(),
                file: None,
            };
            notifier.spawn(channel, Backoff::default(), ledger_dir, metrics)?;
        }
        if let Some(c) = &config.store {
            let channel = store::StoreChannel::new(c.clone());
            notifier.spawn(channel, Backoff::default(), ledger_dir, metrics)?;
        }
        Ok(notifier)
    }

    fn spawn<C: Channel>(
        &mut self,
        mut channel: C,
        backoff: Backoff,
        ledger_dir: Option<&PathBuf>,
        metrics: &Arc<Metrics>,
    ) -> Result<(), NotifyError> {
        let name = channel.name().to_string();
        let mut ledger = match ledger_dir {
            Some(dir) => {
                let path = dir.join(format!("{name}.ids"));
                Some(Ledger::open(&path).map_err(|source| NotifyError::Ledger { path, source })?)
            }
            None => None,
        };
        let keeping = Keeping {
            spool: ledger_dir.map(|dir| dir.join(format!("{name}.pending.jsonl"))),
            rejected: ledger_dir.map(|dir| dir.join(format!("{name}.rejected.jsonl"))),
            metrics: Arc::clone(metrics),
            sink_label: format!("notify_{name}"),
        };
        let mut pending: std::collections::VecDeque<Notification> = match &keeping.spool {
            Some(path) => spool::take(path).map_err(|source| NotifyError::Ledger {
                path: path.clone(),
                source,
            })?,
            None => Default::default(),
        };
        let mut stop = self.stop.subscribe();
        let counts = Arc::new(ChannelCounts::default());
        let failure: Arc<Mutex<Option<ChannelFailure>>> = Arc::default();
        let (sender, mut receiver) = mpsc::unbounded_channel::<Notification>();
        let handle = self
            .handle
            .as_mut()
            .expect("channels start before the handle is taken");
        handle.senders.push(sender);
        handle.failures.push(Arc::clone(&failure));
        let task_counts = Arc::clone(&counts);
        let task_failure = Arc::clone(&failure);
        let task = self.runtime.spawn(async move {
            let counts = task_counts;
            let mut strikes = SinkStrikes::default();
            // The spooled events go first and are not among those sent to this notifier: they
            // do not count as handled.
            let mut spooled = pending.len();
            let handled = Arc::clone(&counts);
            let mut done = move || {
                if spooled > 0 {
                    spooled -= 1;
                } else {
                    handled.handled.fetch_add(1, Ordering::Release);
                }
            };
            loop {
                let n = match pending.pop_front() {
                    Some(n) => n,
                    None => {
                        // Between events, the channel's own work when it is due.
                        let next = loop {
                            match channel.idle_interval() {
                                Some(wait) => tokio::select! {
                                    next = receiver.recv() => break next,
                                    _ = tokio::time::sleep(wait) => channel.idle().await,
                                },
                                None => break receiver.recv().await,
                            }
                        };
                        match next {
                            Some(n) => n,
                            None => break,
                        }
                    }
                };
                if !channel.takes(&n) {
                    done();
                    continue;
                }
                if ledger.as_ref().is_some_and(|l| l.contains(&n.id)) {
                    counts.already_delivered.fetch_add(1, Ordering::Relaxed);
                    channel.already_delivered(&n);
                    done();
                    continue;
                }
                // A grouping channel takes the events of the same site, cause and kind that are
                // queued or come within its wait; the others keep their order for later.
                let n = match channel.group_wait() {
                    Some(wait) if n.members.is_empty() => {
                        let key = n.group_key();
                        let mut members = vec![n];
                        let mut others = VecDeque::new();
                        let deadline = tokio::time::Instant::now() + wait;
                        while members.len() < MAX_GROUP {
                            let next = match pending.pop_front() {
                                Some(m) => m,
                                None => match tokio::time::timeout_at(deadline, receiver.recv()).await {
                                    Ok(Some(m)) => m,
                                    _ => break,
                                },
                            };
                            if !channel.takes(&next) {
                                done();
                            } else if ledger.as_ref().is_some_and(|l| l.contains(&next.id)) {
                                counts.already_delivered.fetch_add(1, Ordering::Relaxed);
                                done();
                            } else if next.members.is_empty() && next.group_key() == key {
                                members.push(next);
                            } else {
                                others.push_back(next);
                            }
                        }
                        while let Some(other) = others.pop_back() {
                            pending.push_front(other);
                        }
                        Notification::group(members)
                    }
                    _ => n,
                };
                let count = n.ids().count() as u64;
                // How the delivery of `n` ended: delivered or refused for good (`None`), or the
                // channel stops holding it (`Some`: `true` when it gave up, and then keeps
                // everything still sent to it until the end).
                let mut attempt = 0;
                let stopped = loop {
                    let outcome = tokio::select! {
                        outcome = channel.deliver(&n) => Some(outcome),
                        _ = stop.changed() => None,
                    };
                    let Some(outcome) = outcome else {
                        break Some(false);
                    };
                    let failure = match outcome {
                        Ok(()) => {
                            strikes.note(None);
                            counts.delivered.fetch_add(count, Ordering::Relaxed);
                            if let Some(emitted_ms) = n.emitted_ms {
                                let ms = (now_ms() - emitted_ms).max(0) as u64;
                                keeping
                                    .metrics
                                    .notify_latency
                                    .observe(Duration::from_millis(ms));
                            }
                            if let Some(l) = ledger.as_mut() {
                                for id in n.ids() {
                                    if let Err(e) = l.record(id) {
                                        tracing::error!(channel = %channel.name(), error = %e, "ledger write failed");
                                    }
                                }
                            }
                            break None;
                        }
                        Err(failure) => failure,
                    };
                    keeping.count(failure.class);
                    if failure.class == FailureClass::Record {
                        strikes.note(Some(FailureClass::Record));
                        counts.rejected.fetch_add(count, Ordering::Relaxed);
                        keeping.reject(channel.name(), &n, &failure.reason);
                        break None;
                    }
                    if strikes.note(Some(failure.class)) {
                        let given_up = ChannelFailure {
                            channel: channel.name().to_owned(),
                            field: failure.field,
                            reason: failure.reason,
                            tries: SINK_FAILURE_TRIES,
                            kept: keeping.kept_where(),
                        };
                        tracing::error!(channel = %given_up.channel, field = given_up.field, reason = %given_up.reason, "notify channel cannot work; giving up");
                        *task_failure.lock().expect("not poisoned") = Some(given_up);
                        break Some(true);
                    }
                    counts.retries.fetch_add(1, Ordering::Relaxed);
                    let wait = backoff.wait(attempt);
                    tracing::warn!(channel = %channel.name(), id = %n.id, reason = %failure.reason, class = failure.class.label(), wait_ms = wait.as_millis() as u64, "delivery failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => break Some(false),
                    }
                    attempt += 1;
                };
                let Some(gave_up) = stopped else {
                    for _ in 0..count {
                        done();
                    }
                    continue;
                };
                pending.push_front(n);
                if gave_up {
                    loop {
                        tokio::select! {
                            next = receiver.recv() => match next {
                                Some(n) => pending.push_back(n),
                                None => break,
                            },
                            _ = stop.changed() => break,
                        }
                    }
                }
                spool::keep(&channel, &counts, pending, receiver, keeping.spool.as_deref());
                break;
            }
            channel.flush().await;
        });
        self.tasks.push(ChannelTask {
            name,
            counts,
            failure,
            task,
        });
        Ok(())
    }

    /// How many of the events sent every channel is done with (see
    /// [`ChannelCounts::handled`]); events are handled in the order sent.
    pub fn handled(&self) -> u64 {
        self.tasks
            .iter()
            .map(|t| t.counts.handled.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The first channel that gave up, if one did.
    pub fn failure(&self) -> Option<ChannelFailure> {
        self.handle.as_ref().and_then(NotifierHandle::failure)
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
        for ChannelTask {
            name,
            counts,
            failure,
            mut task,
        } in tasks
        {
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
                handled: counts.handled.load(Ordering::Acquire),
                failure: failure.lock().expect("not poisoned").clone(),
            });
        }
        runtime.shutdown_timeout(Duration::from_secs(1));
        reports
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
