//! `iotpipe bridge`: MQTT device messages into the Kafka telemetry topic, acknowledged on MQTT
//! only once Kafka has them.
//!
//! The broker delivers at QoS 1 to a persistent MQTT 5 session (optionally a shared
//! subscription, so bridges split the load). Each message is produced to Kafka keyed by the
//! device id from its topic, payload untouched, with the topic and arrival time in headers; its
//! PUBACK goes out after Kafka acknowledged the write, in arrival order. A bridge killed at any
//! point has acknowledged only what Kafka holds: the broker delivers the rest again (to it when
//! it is back, or to another bridge of the group). The MQTT 5 receive maximum bounds what is
//! in flight, so a slow Kafka stops the broker sending instead of growing the bridge's memory.

pub mod config;
pub mod metrics;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop};
use tokio::sync::mpsc;

use crate::dataflow::model::{DeadLetter, DeadLetterReason};
use crate::io::connect::secret::Secret;
use crate::io::sinks::files::jsonl;
use crate::io::support::failure::FailureClass;
pub use config::BridgeConfig;
pub use metrics::BridgeMetrics;

/// Kafka header holding the MQTT topic a message was published to.
pub const TOPIC_HEADER: &str = "mqtt_topic";
/// Kafka header holding the bridge's arrival time of a message, epoch ms (decimal text).
pub const RECEIVED_HEADER: &str = "mqtt_received_ms";

/// Why a bridge stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The broker refused the bridge's first connection: wrong credentials or identity.
    #[error(
        "mqtt broker {broker} refused the connection ({code:?}): check mqtt.username, the \
         password and mqtt.client_id"
    )]
    Refused {
        /// host:port.
        broker: String,
        /// The broker's reason.
        code: ConnectReturnCode,
    },
    /// The broker refused the subscription (usually its ACL).
    #[error(
        "mqtt broker refused the subscription to {filter} ({code:?}): allow the bridge's user \
         to read it in the broker's ACL, or fix subscription.filter"
    )]
    SubscriptionRefused {
        /// The filter subscribed to.
        filter: String,
        /// The broker's reason.
        code: SubscribeReasonCode,
    },
    /// Kafka cannot take messages at all (the message stays unacknowledged on MQTT).
    #[error(
        "kafka refused a message for {topic}: {source} (check kafka.topic, \
         kafka.dead_letter_topic and the credentials in kafka.properties)"
    )]
    Kafka {
        /// The telemetry topic.
        topic: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The Kafka producer could not be created.
    #[error("kafka producer: {0}")]
    Producer(KafkaError),
}

/// What a bridge did, for its final report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BridgeReport {
    /// Messages delivered by the broker.
    pub received: u64,
    /// Of those, repeats of earlier unacknowledged deliveries.
    pub redelivered: u64,
    /// Messages written to Kafka and acknowledged on MQTT.
    pub forwarded: u64,
    /// Messages written to Kafka whose connection was lost before they were acknowledged.
    pub left_for_redelivery: u64,
    /// Connection attempts after the first.
    pub reconnects: u64,
}

/// A message from the broker, as the bridge got it.
struct Arrival {
    publish: Publish,
    /// The connection it came on (see [`Connection::generation`]).
    generation: u64,
    at: Instant,
    received_ms: i64,
}

/// Runs the bridge until `stop` is set (then drains for up to `config.drain_timeout_ms`) or a
/// fatal error. Must be called inside a *current-thread* Tokio runtime: acknowledging checks
/// the connection generation and queues the PUBACK without the poll loop running in between
/// (see `Acks::hand_over`).
pub async fn run_bridge(
    config: &BridgeConfig,
    password: Option<Secret>,
    metrics: Arc<BridgeMetrics>,
    stop: Arc<AtomicBool>,
) -> Result<BridgeReport, BridgeError> {
    let producer = producer(config)?;
    let subscription = &config.subscription;
    let max_in_flight = subscription.max_in_flight;
    let mut options = config
        .mqtt
        .options("mqtt", password.as_ref())
        .expect("validated when the configuration was loaded");
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(subscription.session_expiry_s))
        .set_receive_maximum(Some(max_in_flight))
        .set_max_packet_size(Some(subscription.max_packet_bytes))
        .set_manual_acks(true);
    let (client, event_loop) = AsyncClient::new(options, max_in_flight as usize + 64);
    let (arrivals, mut arrived) = mpsc::channel(max_in_flight as usize);
    let mut warned = false;
    let generation = Arc::new(AtomicU64::new(0));
    let connection = Connection {
        client: client.clone(),
        generation: Arc::clone(&generation),
        filter: subscription.subscribe_filter(),
        broker: format!("{}:{}", config.mqtt.host, config.mqtt.port),
        reconnect: config.reconnect,
        metrics: Arc::clone(&metrics),
    };
    let poller = tokio::spawn(connection.poll(event_loop, arrivals));

    let device_level = subscription.device_level();
    let topic = config.kafka.topic.as_str();
    let topics = Topics {
        telemetry: config.kafka.topic.clone(),
        dead_letters: config.kafka.dead_letter_topic.clone(),
    };
    let mut in_flight = FuturesOrdered::new();
    let mut acks = Acks {
        waiting: VecDeque::new(),
        client: client.clone(),
        generation,
        metrics: Arc::clone(&metrics),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut retry = tokio::time::interval(Duration::from_millis(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outcome = Ok(());
    loop {
        tokio::select! {
            biased;
            Some((arrival, delivered)) = in_flight.next(), if !in_flight.is_empty() => {
                metrics.in_flight.set(in_flight.len() as i64);
                if let Err(e) = acks.settle(arrival, delivered, topic) {
                    outcome = Err(e);
                    break;
                }
            }
            _ = retry.tick(), if !acks.waiting.is_empty() => acks.hand_over(),
            // At the bound the bridge stops taking messages; the poll loop then waits to hand
            // one over, which stops reading (and keep-alives) until Kafka catches up.
            // Acknowledgements never count against the bound: only the poll loop sends them.
            next = arrived.recv(), if in_flight.len() < max_in_flight as usize => match next {
                Some(arrival) => {
                    let forward = produce(&producer, &topics, device_level, &metrics, arrival);
                    in_flight.push_back(forward.await);
                    metrics.in_flight.set(in_flight.len() as i64);
                    let unacknowledged = in_flight.len() + acks.waiting.len() + arrived.len();
                    if !warned && unacknowledged > max_in_flight as usize {
                        warned = true;
                        tracing::warn!(
                            max_in_flight,
                            unacknowledged,
                            "the mqtt broker sends more unacknowledged messages than the \
                             receive maximum (subscription.max_in_flight); mosquitto 2.0.11 \
                             does not honour it"
                        );
                    }
                }
                // The poll loop ended: a fatal MQTT error.
                None => break,
            },
            _ = tick.tick() => {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
    }
    // From here on new deliveries are refused; they stay unacknowledged and come back.
    arrived.close();
    if outcome.is_ok() {
        let drain = async {
            while let Some((arrival, delivered)) = in_flight.next().await {
                metrics.in_flight.set(in_flight.len() as i64);
                acks.settle(arrival, delivered, topic)?;
            }
            while !acks.waiting.is_empty() {
                retry.tick().await;
                acks.hand_over();
            }
            Ok(())
        };
        let timeout = Duration::from_millis(config.drain_timeout_ms);
        match tokio::time::timeout(timeout, drain).await {
            Ok(result) => outcome = result,
            Err(_) => tracing::warn!(
                unacknowledged = in_flight.len() + acks.waiting.len(),
                "kafka did not acknowledge everything in time; the broker will deliver the \
                 rest again"
            ),
        }
    }
    // With the broker away the request queue may be full and never drain: bounded waits.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.disconnect()).await;
    let abort = poller.abort_handle();
    let polled = match tokio::time::timeout(Duration::from_secs(5), poller).await {
        Ok(Ok(result)) => result,
        _ => {
            abort.abort();
            Ok(())
        }
    };
    outcome?;
    polled?;
    Ok(BridgeReport {
        received: metrics.received.get(),
        redelivered: metrics.redelivered.get(),
        forwarded: metrics.forwarded.get(),
        left_for_redelivery: metrics.left_for_redelivery.get(),
        reconnects: metrics.reconnects.get(),
    })
}

fn producer(config: &BridgeConfig) -> Result<FutureProducer, BridgeError> {
    let mut client = rdkafka::ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka.brokers)
        // Exactly once per produce call even across broker retries, and never given up on:
        // while Kafka is away, messages wait unacknowledged on MQTT.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("compression.type", "lz4");
    for (key, value) in &config.kafka.properties {
        client.set(key, value);
    }
    client.create().map_err(BridgeError::Producer)
}

/// The Kafka key of a message published to `mqtt_topic`: the level the filter's `+` matched
/// (the device id: with the broker's ACL, the publisher's own identity), or the whole topic.
pub fn kafka_key(mqtt_topic: &str, device_level: Option<usize>) -> &str {
    match device_level {
        Some(level) => mqtt_topic.split('/').nth(level).unwrap_or(mqtt_topic),
        None => mqtt_topic,
    }
}

/// Where the bridge writes.
struct Topics {
    telemetry: String,
    dead_letters: String,
}

/// Hands `arrival` to the producer; the future resolves when Kafka acknowledged it, or, if Kafka
/// refused it for good (see [`crate::io::support::failure`]), acknowledged a `sink_rejected` dead letter
/// of it in the dead-letter topic instead. Any other refusal is the error.
async fn produce(
    producer: &FutureProducer,
    topics: &Topics,
    device_level: Option<usize>,
    metrics: &Arc<BridgeMetrics>,
    arrival: Arrival,
) -> impl Future<Output = (Arrival, Result<(), KafkaError>)> + use<> {
    let topic = topics.telemetry.as_str();
    let mqtt_topic = String::from_utf8_lossy(&arrival.publish.topic).into_owned();
    let key = kafka_key(&mqtt_topic, device_level);
    let received_ms = arrival.received_ms.to_string();
    let headers = OwnedHeaders::new_with_capacity(2)
        .insert(Header {
            key: TOPIC_HEADER,
            value: Some(mqtt_topic.as_str()),
        })
        .insert(Header {
            key: RECEIVED_HEADER,
            value: Some(received_ms.as_str()),
        });
    let mut record = FutureRecord::to(topic)
        .key(key)
        .payload(&arrival.publish.payload[..])
        .timestamp(arrival.received_ms)
        .headers(headers);
    let delivery = loop {
        match producer.send_result(record) {
            Ok(delivery) => break Ok(delivery),
            // The local queue is full: librdkafka drains it on its own threads.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => break Err(e),
        }
    };
    let producer = producer.clone();
    let dead_letters = topics.dead_letters.clone();
    let telemetry = topics.telemetry.clone();
    let metrics = Arc::clone(metrics);
    async move {
        let result = match delivery {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e),
                Err(_) => Err(KafkaError::Canceled),
            },
            Err(e) => Err(e),
        };
        let result = match result {
            Err(error) if FailureClass::of_kafka(&error) == FailureClass::Record => {
                let mqtt_topic = String::from_utf8_lossy(&arrival.publish.topic);
                tracing::warn!(
                    %mqtt_topic,
                    %error,
                    bytes = arrival.publish.payload.len(),
                    "kafka refused a message for good; writing it as a dead letter"
                );
                metrics.rejected.inc();
                let dead = DeadLetter::new(
                    DeadLetterReason::SinkRejected,
                    format!("kafka refused the message from {mqtt_topic} for {telemetry}: {error}"),
                    &arrival.publish.payload,
                );
                let key = format!("{}/{}", dead.reason.code(), dead.raw_sha256);
                let line = jsonl::dead_letter_line(&dead);
                let record = FutureRecord::to(&dead_letters).key(&key).payload(&line);
                match producer.send(record, rdkafka::util::Timeout::Never).await {
                    Ok(_) => Ok(()),
                    Err((e, _)) => Err(e),
                }
            }
            other => other,
        };
        (arrival, result)
    }
}

/// Acknowledgements of messages Kafka has, waiting for room in rumqttc's request queue
/// (its poll loop sends one request per turn, and incoming messages can outpace it).
struct Acks {
    waiting: VecDeque<Arrival>,
    client: AsyncClient,
    generation: Arc<AtomicU64>,
    metrics: Arc<BridgeMetrics>,
}

impl Acks {
    /// Takes Kafka's answer for `arrival`: acknowledges it, or stops the bridge on a refusal
    /// (the message then stays unacknowledged on MQTT).
    fn settle(
        &mut self,
        arrival: Arrival,
        delivered: Result<(), KafkaError>,
        topic: &str,
    ) -> Result<(), BridgeError> {
        delivered.map_err(|source| BridgeError::Kafka {
            topic: topic.to_owned(),
            source,
        })?;
        self.push(arrival);
        Ok(())
    }

    fn push(&mut self, mut arrival: Arrival) {
        self.metrics.forward_latency.observe(arrival.at.elapsed());
        // A PUBACK needs only the packet id: the payload is in Kafka and can go.
        arrival.publish.payload = Bytes::new();
        arrival.publish.topic = Bytes::new();
        self.waiting.push_back(arrival);
        self.hand_over();
    }

    /// Queues as many acknowledgements as fit, in arrival order.
    ///
    /// A PUBACK names a packet id, which the broker reuses once it is acknowledged. After a
    /// reconnect the broker sends unacknowledged messages again under their old ids, then new
    /// ones under freed ids: an acknowledgement from the old connection could then confirm a
    /// new message Kafka does not have. So only the current connection's messages are
    /// acknowledged; older ones come again and are forwarded twice (a counted duplicate, never
    /// a loss). Checking the generation and queueing happen with no await in between, and the
    /// bridge runs on one thread, so the poll loop cannot move to a new connection in between.
    fn hand_over(&mut self) {
        let current = self.generation.load(Ordering::SeqCst);
        while let Some(arrival) = self.waiting.front() {
            if arrival.generation != current {
                self.metrics.left_for_redelivery.inc();
            } else if self.client.try_ack(&arrival.publish).is_ok() {
                self.metrics.forwarded.inc();
            } else {
                return;
            }
            self.waiting.pop_front();
        }
    }
}

/// The MQTT side: connects, (re)subscribes, hands messages over, reconnects with backoff.
struct Connection {
    client: AsyncClient,
    /// Counts lost connections; moved on in the same step as rumqttc discards the PUBACKs
    /// queued for the lost connection.
    generation: Arc<AtomicU64>,
    filter: String,
    broker: String,
    reconnect: crate::io::support::backoff::Backoff,
    metrics: Arc<BridgeMetrics>,
}

impl Connection {
    async fn poll(
        self,
        mut event_loop: EventLoop,
        arrivals: mpsc::Sender<Arrival>,
    ) -> Result<(), BridgeError> {
        let mut connected_once = false;
        let mut failures = 0u32;
        loop {
            match event_loop.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    self.metrics.received.inc();
                    if publish.dup {
                        self.metrics.redelivered.inc();
                    }
                    let arrival = Arrival {
                        publish,
                        generation: self.generation.load(Ordering::SeqCst),
                        at: Instant::now(),
                        received_ms: SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as i64),
                    };
                    // A closed channel means the bridge is stopping: the message stays
                    // unacknowledged and the broker delivers it again.
                    let _ = arrivals.send(arrival).await;
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connected_once = true;
                    failures = 0;
                    self.metrics.connected.set(1);
                    tracing::info!(
                        broker = %self.broker,
                        session_present = ack.session_present,
                        "mqtt connected"
                    );
                    // Subscribing again replaces the session's subscription, so it is safe on
                    // a resumed session, and needed: mosquitto 2.0 resumes a persisted session
                    // after its own restart without its shared subscriptions
                    // (tests/mqtt_bridge.rs shows it).
                    let _ = self
                        .client
                        .try_subscribe(self.filter.clone(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if let Some(code) = ack
                        .return_codes
                        .into_iter()
                        .find(|code| !matches!(code, SubscribeReasonCode::Success(_)))
                    {
                        return Err(BridgeError::SubscriptionRefused {
                            filter: self.filter,
                            code,
                        });
                    }
                    tracing::info!(filter = %self.filter, "mqtt subscribed");
                }
                Ok(Event::Incoming(Packet::Disconnect(disconnect))) => {
                    tracing::warn!(
                        broker = %self.broker,
                        reason = ?disconnect.reason_code,
                        "mqtt broker disconnected the bridge"
                    );
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(ConnectionError::RequestsDone) => return Ok(()),
                Err(ConnectionError::ConnectionRefused(code))
                    if !connected_once && refuses_identity(code) =>
                {
                    return Err(BridgeError::Refused {
                        broker: self.broker,
                        code,
                    });
                }
                Err(e) => {
                    // No await since `poll` dropped the queued PUBACKs: no acknowledgement
                    // for the old connection can be queued after them.
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    if self.metrics.connected.get() == 1 {
                        tracing::warn!(broker = %self.broker, error = %e, "mqtt connection lost");
                    } else {
                        tracing::warn!(
                            broker = %self.broker,
                            error = %e,
                            attempt = failures + 1,
                            "mqtt connection failed"
                        );
                    }
                    self.metrics.connected.set(0);
                    self.metrics.reconnects.inc();
                    tokio::time::sleep(self.reconnect.wait(failures)).await;
                    failures = failures.saturating_add(1);
                }
            }
        }
    }
}

/// Refusals that retrying with the same identity cannot cure.
fn refuses_identity(code: ConnectReturnCode) -> bool {
    matches!(
        code,
        ConnectReturnCode::BadUserNamePassword
            | ConnectReturnCode::NotAuthorized
            | ConnectReturnCode::BadClientId
            | ConnectReturnCode::ClientIdentifierNotValid
            | ConnectReturnCode::Banned
            | ConnectReturnCode::BadAuthenticationMethod
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::bridge::config::SubscriptionConfig;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_key_is_the_device_a_filter_names(id in "[A-Za-z0-9_.:-]{1,40}", tail in "(/[a-z]{1,8}){0,2}") {
            let subscription = SubscriptionConfig::default();
            let level = subscription.device_level();
            let topic = format!("devices/{id}/telemetry{tail}");
            prop_assert_eq!(kafka_key(&topic, level), id.as_str());
        }

        #[test]
        fn any_topic_has_a_key_and_no_panic(topic in "\\PC{0,80}", level in proptest::option::of(0usize..6)) {
            let key = kafka_key(&topic, level);
            prop_assert!(topic.contains(key));
        }
    }
}
