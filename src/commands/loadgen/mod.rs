//! `iotpipe loadgen`: the simulated fleet of `demo` (its variants, bad, late and future-stamped
//! messages, injected faults) sent to an MQTT broker, straight to Kafka, or to a file.
//!
//! The messages are a function of the fleet settings and the time span alone, so a run to a
//! file records exactly what a run to MQTT sends; pacing (real time, or as fast as the target
//! takes them) only decides when.

pub mod config;
pub mod credentials;
mod kafka;
mod mqtt;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::io::connect::mqtt::MqttConnectionConfig;
use crate::io::sources::fleet::{Fleet, FleetConfig, FleetMessage};
pub use config::{LoadgenConfig, LoadgenConfigError, LoadgenMqttConfig};
pub use mqtt::{Connections, MqttTarget};

/// Where the messages go.
#[derive(Debug)]
pub enum Target {
    /// An MQTT broker.
    Mqtt(Box<MqttTarget>),
    /// Kafka: keyed by device id, as the bridge writes them.
    Kafka {
        /// Bootstrap brokers.
        brokers: String,
        /// The topic.
        topic: String,
    },
    /// A file, one message per line (the input `iotpipe replay --events` reads).
    File(PathBuf),
}

impl Target {
    /// Parses the `to` field: `mqtt://host[:port]`, `mqtts://host[:port]` (TLS, CA from
    /// `ca_file`), `kafka://host:port[,host:port]/topic` or `file:PATH`; the MQTT connection
    /// settings come from `connections`.
    pub fn parse(
        to: &str,
        connections: Connections,
        ca_file: Option<PathBuf>,
    ) -> Result<Self, LoadgenConfigError> {
        let to_error = |message: String| LoadgenConfigError {
            field: "to",
            message,
        };
        let fix = "use mqtt://HOST:PORT, mqtts://HOST:PORT, kafka://HOST:PORT/TOPIC or file:PATH";
        if ca_file.is_some() && !to.starts_with("mqtts://") {
            return Err(LoadgenConfigError {
                field: "mqtt.ca_file",
                message: format!("is for mqtts:// targets, and `to` is {to}"),
            });
        }
        if let Some(path) = to.strip_prefix("file:") {
            if path.is_empty() {
                return Err(to_error(format!("{to}: no path ({fix})")));
            }
            return Ok(Self::File(path.into()));
        }
        if let Some(rest) = to.strip_prefix("kafka://") {
            let Some((brokers, topic)) = rest.split_once('/') else {
                return Err(to_error(format!("{to}: no topic ({fix})")));
            };
            if brokers.is_empty() || topic.is_empty() {
                return Err(to_error(format!(
                    "{to}: brokers and topic are both needed ({fix})"
                )));
            }
            return Ok(Self::Kafka {
                brokers: brokers.into(),
                topic: topic.into(),
            });
        }
        let (rest, tls, default_port) = if let Some(rest) = to.strip_prefix("mqtt://") {
            (rest, false, 1883)
        } else if let Some(rest) = to.strip_prefix("mqtts://") {
            (rest, true, 8883)
        } else {
            return Err(to_error(format!("{to}: unknown target ({fix})")));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse()
                    .map_err(|_| to_error(format!("{to}: port {port:?} is not a number")))?,
            ),
            None => (rest, default_port),
        };
        let mut connection = MqttConnectionConfig::plain(host, port, "iotpipe-loadgen");
        match (tls, ca_file) {
            (true, Some(ca_file)) => {
                connection.tls = Some(crate::io::connect::tls::TlsConfig {
                    ca_file,
                    ..Default::default()
                });
            }
            (true, None) => {
                return Err(to_error(format!(
                    "{to}: TLS needs the broker's CA (mqtt.ca_file)"
                )));
            }
            (false, _) => {}
        }
        Ok(Self::Mqtt(Box::new(MqttTarget {
            connection,
            connections,
            qos: rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            topic: "devices/{device}/telemetry".into(),
        })))
    }
}

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    /// The fleet (its `rate_per_device` sets the total rate).
    pub fleet: FleetConfig,
    /// Span of fleet time to send, ms: every message arriving in
    /// `[fleet.start_ms, fleet.start_ms + span_ms)`.
    pub span_ms: u64,
    /// Send in real time (a message when its arrival time comes); otherwise as fast as the
    /// target takes them.
    pub paced: bool,
    /// How long to wait at the end for outstanding acknowledgements.
    pub drain_timeout: Duration,
}

/// Fleet time generated at once: the fleet's messages depend on how its clock is stepped, so
/// the step is fixed, whatever the pacing.
const GENERATION_STEP_MS: u64 = 1_000;

impl LoadPlan {
    /// The plan's messages, in arrival order, a second of fleet time at a time.
    pub fn messages(&self) -> PlannedMessages {
        PlannedMessages {
            fleet: Fleet::new(self.fleet.clone()),
            next_ms: self.fleet.start_ms,
            end_ms: self.fleet.start_ms + self.span_ms,
        }
    }
}

/// The messages of a [`LoadPlan`].
pub struct PlannedMessages {
    fleet: Fleet,
    next_ms: u64,
    end_ms: u64,
}

impl PlannedMessages {
    /// Appends the next step's messages to `out`; false when the span is done.
    pub fn next_batch(&mut self, out: &mut Vec<FleetMessage>) -> bool {
        if self.next_ms >= self.end_ms {
            return false;
        }
        self.next_ms = (self.next_ms + GENERATION_STEP_MS).min(self.end_ms);
        self.fleet.advance_messages_to(self.next_ms, out);
        true
    }
}

/// Counts, updated while running (for a progress display).
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages handed to the target.
    pub sent: AtomicU64,
    /// Messages the target acknowledged (MQTT PUBACK, Kafka delivery, file written).
    pub acknowledged: AtomicU64,
    /// Failures: refused publishes, lost connections, failed deliveries.
    pub errors: AtomicU64,
    /// MQTT: acknowledged with "no matching subscribers" (the broker dropped them: no bridge
    /// was subscribed).
    pub unrouted: AtomicU64,
}

/// The final report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LoadReport {
    /// The target, as given.
    pub target: String,
    /// Simulated devices.
    pub devices: usize,
    /// Messages sent.
    pub sent: u64,
    /// Messages acknowledged.
    pub acknowledged: u64,
    /// Failures (see [`Progress::errors`]).
    pub errors: u64,
    /// Acknowledged but dropped by the broker for want of a subscriber (see
    /// [`Progress::unrouted`]).
    pub unrouted: u64,
    /// Wall time from the first message to the last acknowledgement, s.
    pub elapsed_s: f64,
    /// `sent / elapsed_s`.
    pub sent_per_s: f64,
}

/// A load generation that could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] LoadgenConfigError),
    /// The target could not be opened or written.
    #[error("{0}")]
    Target(String),
}

/// Runs the load `config` describes (secrets from the environment, a missing `start_ms` from
/// the clock) until done or `stop`, counting into `progress` as it goes.
pub async fn run_loadgen(
    config: &LoadgenConfig,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
) -> Result<LoadReport, LoadError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (plan, target) = config.resolve(|name| std::env::var(name).ok(), now_ms)?;
    run_load(&plan, target, &config.to, progress, stop).await
}

/// Sends `plan` to `target`, counting into `progress`, until done or `stop`.
pub async fn run_load(
    plan: &LoadPlan,
    target: Target,
    target_name: &str,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
) -> Result<LoadReport, LoadError> {
    let mut sink = match target {
        Target::Mqtt(mqtt) => {
            Sink::Mqtt((*mqtt).connect(plan.fleet.devices, Arc::clone(&progress))?)
        }
        Target::Kafka { brokers, topic } => Sink::Kafka(kafka::KafkaSink::create(
            &brokers,
            topic,
            Arc::clone(&progress),
        )?),
        Target::File(path) => {
            let file = std::fs::File::create(&path)
                .map_err(|e| LoadError::Target(format!("{}: {e}", path.display())))?;
            Sink::File(std::io::BufWriter::new(file), path)
        }
    };
    let mut messages = plan.messages();
    let started = Instant::now();
    let mut batch: Vec<FleetMessage> = Vec::new();
    while messages.next_batch(&mut batch) && !stop.load(Ordering::Relaxed) {
        for message in batch.drain(..) {
            if plan.paced {
                let due = started + Duration::from_millis(message.arrival_ms - plan.fleet.start_ms);
                // Sleeping per message would cost more than sending at high rates.
                if due > Instant::now() + Duration::from_millis(2) {
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            sink.send(message, &progress).await?;
        }
    }
    sink.finish(&progress, plan.drain_timeout).await?;
    let elapsed_s = started.elapsed().as_secs_f64();
    let sent = progress.sent.load(Ordering::Relaxed);
    Ok(LoadReport {
        target: target_name.to_owned(),
        devices: plan.fleet.devices,
        sent,
        acknowledged: progress.acknowledged.load(Ordering::Relaxed),
        errors: progress.errors.load(Ordering::Relaxed),
        unrouted: progress.unrouted.load(Ordering::Relaxed),
        elapsed_s,
        sent_per_s: sent as f64 / elapsed_s.max(1e-9),
    })
}

enum Sink {
    Mqtt(mqtt::MqttFleet),
    Kafka(kafka::KafkaSink),
    File(std::io::BufWriter<std::fs::File>, PathBuf),
}

impl Sink {
    async fn send(&mut self, message: FleetMessage, progress: &Progress) -> Result<(), LoadError> {
        match self {
            Sink::Mqtt(fleet) => fleet.send(message, progress).await,
            Sink::Kafka(kafka) => kafka.send(message, progress).await,
            Sink::File(file, path) => {
                writeln!(file, "{}", message.line)
                    .map_err(|e| LoadError::Target(format!("{}: {e}", path.display())))?;
                progress.sent.fetch_add(1, Ordering::Relaxed);
                progress.acknowledged.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    async fn finish(self, progress: &Progress, timeout: Duration) -> Result<(), LoadError> {
        match self {
            Sink::Mqtt(fleet) => {
                fleet.finish(progress, timeout).await;
                Ok(())
            }
            Sink::Kafka(kafka) => {
                kafka.finish(timeout);
                Ok(())
            }
            Sink::File(mut file, path) => file
                .flush()
                .map_err(|e| LoadError::Target(format!("{}: {e}", path.display()))),
        }
    }
}
