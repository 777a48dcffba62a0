//! `iotpipe alerts`: the dispatcher. It reads the alert events `iotpipe run` writes to the
//! alerts topic and delivers them to the notification channels (webhook, MQTT, file,
//! Alertmanager), as `replay` and `demo` do.
//!
//! Exactly once from the receiver's point of view, whatever is killed when:
//! - the topic is keyed by alert id, so an alert's events are in one partition, in order, and
//!   each channel delivers in the order it is given;
//! - the consumer group's offsets are committed only up to events every channel is done with
//!   (delivered, refused for good and kept, or below its severity), so a dispatcher killed at
//!   any moment starts again from events some channel had not finished, and loses none;
//! - each channel's ledger records every event id it delivered, so what a restarted
//!   dispatcher reads again is not sent again; and every delivery carries the event id (the
//!   `x-iotpipe-event-id` header, Alertmanager's `event_id` annotation), so a receiver can drop
//!   the one event a kill between its acknowledgement and the ledger's write sends twice.
//!
//! Why a service of its own rather than a part of `run`: a receiver that is slow or down then
//! holds back nothing but its own queue. `run` commits its input as soon as its outputs are in
//! Kafka and never waits for a webhook; the dispatcher restarts, scales and is upgraded on its
//! own; and the alerts topic is already the durable, ordered log a dispatcher needs.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::dataflow::alert::Severity;
use crate::io::connect::kafka::{KafkaConfig, KafkaSetupError, client_error};
use crate::io::sinks::notify::{
    ChannelFailure, ChannelReport, Notification, Notifier, NotifyConfig, NotifyError,
};
use crate::io::support::config::{ConfigError, load_toml};
use crate::io::support::metrics::Metrics;

/// Records read per poll round at most.
const BATCH: usize = 1_000;

/// The dispatcher's configuration. Every field is documented; unknown fields are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// The Kafka `run` writes to: brokers, properties, and `topics.alerts`, the topic read.
    /// Offsets are committed under the consumer group `GROUP_ID-alerts`.
    pub kafka: KafkaConfig,
    /// The channels, as `--notify` files give them to `replay` and `demo`; set `ledger_dir`,
    /// or a restarted dispatcher sends again what it had delivered.
    pub notify: NotifyConfig,
    /// The Prometheus endpoint (`/metrics`: deliveries, failures, and
    /// `iotpipe_notify_latency_seconds`, from the topic to the receiver's acknowledgement).
    #[serde(default)]
    pub metrics: crate::commands::run::config::MetricsConfig,
}

impl AlertsConfig {
    /// Reads a TOML file and checks it; an error names the field.
    pub fn load(path: &Path) -> Result<Self, AlertsError> {
        let config: Self = load_toml(path)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), AlertsError> {
        let invalid = |field, message: &str| {
            Err(AlertsError::Invalid {
                field,
                message: message.into(),
            })
        };
        if self.kafka.brokers.trim().is_empty() {
            return invalid("kafka.brokers", "is empty: set host:port of a broker");
        }
        let n = &self.notify;
        if n.webhook.is_empty()
            && n.mqtt.is_empty()
            && n.file.is_empty()
            && n.alertmanager.is_empty()
            && n.store.is_none()
        {
            return invalid(
                "notify",
                "has no channel: add a [[notify.webhook]], [[notify.mqtt]], [[notify.file]], \
                 [[notify.alertmanager]] or [notify.store]",
            );
        }
        if n.ledger_dir.is_none() {
            tracing::warn!(
                "notify.ledger_dir is not set: a restarted dispatcher sends again what it had delivered"
            );
        }
        Ok(())
    }

    /// The consumer group whose offsets say what every channel is done with.
    pub fn group_id(&self) -> String {
        format!("{}-alerts", self.kafka.group_id)
    }
}

/// A dispatcher that could not run, or stopped on a failure.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    /// The configuration file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A field that cannot work.
    #[error("{field} {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Kafka.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// A channel could not start.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// A channel gave up (its events stay uncommitted, so the next start sends them).
    #[error(transparent)]
    Channel(#[from] ChannelFailure),
}

/// What a dispatcher did.
#[derive(Debug, Default)]
pub struct AlertsReport {
    /// Alert events read from the topic.
    pub events: u64,
    /// Records that were not alert events (skipped, and logged).
    pub skipped: u64,
    /// What each channel did.
    pub channels: Vec<ChannelReport>,
}

/// One alert-topic record as a notification; `None` for a record that is not an alert event.
fn notification(payload: &[u8]) -> Option<Notification> {
    let json = std::str::from_utf8(payload).ok()?;
    let event: serde_json::Value = serde_json::from_str(json).ok()?;
    let severity: Severity = serde_json::from_value(event["severity"].clone()).ok()?;
    Some(Notification {
        id: event["id"].as_str()?.to_owned(),
        severity,
        site: event["site"].as_str().unwrap_or_default().to_owned(),
        silenced: event["silenced_by"].is_string(),
        overdue: event["overdue"].as_bool().unwrap_or(false),
        emitted_ms: None,
        members: Vec::new(),
        json: json.to_owned(),
    })
}

/// Dispatches until `stop` is set or a channel gives up; then lets the channels drain (up to
/// `notify.drain_timeout_ms`) and commits what they finished.
pub fn run_alerts(
    config: &AlertsConfig,
    stop: &AtomicBool,
    metrics: &Arc<Metrics>,
) -> Result<AlertsReport, AlertsError> {
    let topic = config.kafka.topics.alerts.clone();
    let group = config.group_id();
    let mut client = config.kafka.client();
    client
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    // A dispatcher restarted after a crash waits for its old self to leave the group: the
    // broker's shortest session (6 s by default), not librdkafka's 45 s, unless set.
    // Alerts are few and urgent: a fetch returns within 50 ms rather than waiting up to
    // librdkafka's 500 ms for more, unless set.
    for (property, value) in [("session.timeout.ms", "6000"), ("fetch.wait.max.ms", "50")] {
        if !config.kafka.properties.contains_key(property) {
            client.set(property, value);
        }
    }
    let consumer: BaseConsumer = client
        .create()
        .map_err(client_error("creating the alerts consumer"))?;
    consumer
        .subscribe(&[&topic])
        .map_err(client_error(format!("subscribing to {topic}")))?;
    if let Some(listen) = config.metrics.listen {
        let local = crate::io::serve::metrics::serve(listen, Arc::clone(metrics)).map_err(|e| {
            AlertsError::Invalid {
                field: "metrics.listen",
                message: format!("cannot listen on {listen}: {e}"),
            }
        })?;
        tracing::info!(%local, "metrics at /metrics");
    }
    let notifier = Notifier::start(&config.notify, metrics)?;
    let handle = notifier.handle();
    tracing::info!(%topic, %group, "dispatching alert events");

    let mut report = AlertsReport::default();
    // Offsets to commit once every channel has handled the events sent before them.
    let mut waiting: VecDeque<(u64, BTreeMap<i32, i64>)> = VecDeque::new();
    let commit = |waiting: &mut VecDeque<(u64, BTreeMap<i32, i64>)>, handled: u64, mode| {
        let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
        while waiting.front().is_some_and(|(sent, _)| *sent <= handled) {
            let (_, next) = waiting.pop_front().expect("checked");
            offsets.extend(next);
        }
        if offsets.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in &offsets {
            let _ = list.add_partition_offset(&topic, *partition, Offset::Offset(*offset));
        }
        // A failed commit is retried with the next one; at worst events are read again, and
        // the ledgers skip them.
        if let Err(e) = consumer.commit(&list, mode) {
            tracing::warn!(error = %e, "committing the alerts topic's offsets failed; retried with the next");
            let mut back: BTreeMap<i32, i64> = BTreeMap::new();
            back.extend(offsets);
            waiting.push_front((0, back));
        }
    };
    let mut failure = None;
    while !stop.load(Ordering::Acquire) {
        if let Some(f) = notifier.failure() {
            failure = Some(f);
            break;
        }
        let mut batch = Vec::new();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut wait = Duration::from_millis(100);
        while batch.len() < BATCH {
            let Some(message) = consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the alerts topic");
                    break;
                }
            };
            next.insert(message.partition(), message.offset() + 1);
            match message.payload().and_then(notification) {
                Some(mut n) => {
                    n.emitted_ms = message.timestamp().to_millis();
                    batch.push(n);
                }
                None => {
                    report.skipped += 1;
                    tracing::warn!(
                        partition = message.partition(),
                        offset = message.offset(),
                        "a record of the alerts topic is not an alert event; skipped"
                    );
                }
            }
        }
        if !batch.is_empty() {
            report.events += batch.len() as u64;
            handle.send(&batch);
        }
        if !next.is_empty() {
            waiting.push_back((report.events, next));
        }
        // Asynchronous while running (one lost is made good by the next, or by the ledgers);
        // synchronous at the end.
        commit(&mut waiting, notifier.handled(), CommitMode::Async);
    }
    drop(handle);
    // What the channels finish while draining is committed; the rest is read again next time.
    let channels = notifier.finish();
    let handled = channels.iter().map(|c| c.handled).min().unwrap_or(0);
    commit(&mut waiting, handled, CommitMode::Sync);
    report.channels = channels;
    match failure.or_else(|| report.channels.iter().find_map(|c| c.failure.clone())) {
        Some(failure) => Err(AlertsError::Channel(failure)),
        None => Ok(report),
    }
}
