//! Writing streams to Kafka topics, and knowing when they are written.
//!
//! A sink holds a capability at each timely time until the broker has acknowledged every
//! record it produced at that time. Its output carries no data, only that capability, so a
//! probe on the outputs of all sinks sees the cluster-wide *written frontier*: the time before
//! which everything the dataflow emitted is durable. Offsets are committed by that frontier
//! (see [`crate::io::sources::kafka::checkpoint`]).
//!
//! Failures follow [`crate::io::support::failure`]. A transient one never gives up: the producer is
//! idempotent, waits for all in-sync replicas and retries without a deadline; a record whose
//! delivery fails anyway is sent again, and while the producer's queue is full the sink keeps
//! records back and tells the source to stop reading (backpressure) rather than drop them. A
//! record the broker refuses for good (too large) comes out of the sink as a `sink_rejected`
//! dead letter at its time, and the sink moves on. A producer told again and again that it
//! cannot write (unknown topic, authorisation refused) reports [`SinkFailure`], and `run` stops
//! with it.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::dataflow::EventStream;
use crate::dataflow::model::{DeadLetter, DeadLetterReason, TimeMs};
use crate::io::connect::kafka::{DetachedProducer, KafkaConfig, KafkaSetupError, client_error};
use crate::io::support::failure::{FailureClass, SinkStrikes};
use crate::io::support::metrics::{Counter, Metrics};

/// Records still on their way to the broker, for one sink and time.
#[derive(Debug, Default)]
struct InFlight(AtomicUsize);

/// Records of one sink the broker refused for good, with their times: the sink turns them
/// into dead letters (and only then counts them as settled).
type Refused = Arc<Mutex<Vec<(TimeMs, DeadLetter)>>>;

/// What the producer hands back with each delivery report.
struct Delivery {
    in_flight: Arc<InFlight>,
    written: Arc<Counter>,
    /// Where a refusal goes, and the record's time; `None` for records nothing waits for.
    refused: Option<(Refused, TimeMs)>,
}

/// A producer that cannot write to a topic at all: `run` stops with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "kafka cannot write to topic {topic}: {error} (check the topic exists and the credentials in kafka.properties may write to it)"
)]
pub struct SinkFailure {
    /// The topic.
    pub topic: String,
    /// librdkafka's last error.
    pub error: String,
}

/// An output topic the broker does not have (or will not describe).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{field}: kafka topic {topic} cannot be written on {brokers}: {reason} (create it, or check \
     kafka.brokers and {field})"
)]
pub struct MissingTopic {
    /// The config field naming the topic.
    pub field: &'static str,
    /// The topic.
    pub topic: String,
    /// The brokers asked.
    pub brokers: String,
    /// What the broker said.
    pub reason: String,
}

/// The dead letter for a record the broker refused for good.
fn refused_record(topic: &str, error: &KafkaError, payload: &[u8]) -> DeadLetter {
    DeadLetter::new(
        DeadLetterReason::SinkRejected,
        format!("kafka refused a record for {topic}: {error}"),
        payload,
    )
}

/// A record to send again.
struct Resend {
    topic: String,
    key: Vec<u8>,
    payload: Vec<u8>,
    delivery: Box<Delivery>,
}

/// Collects delivery reports.
struct DeliveryContext {
    resend: Mutex<Vec<Resend>>,
    metrics: Arc<Metrics>,
    health: Health,
}

/// Answers that say the producer cannot write, in a row, and the failure once they are enough.
#[derive(Default)]
struct Health {
    strikes: Mutex<SinkStrikes>,
    failure: Mutex<Option<SinkFailure>>,
}

impl Health {
    /// Notes an answer for `topic` (`None`: a success).
    fn note(&self, topic: &str, error: Option<&KafkaError>) {
        let class = error.map(FailureClass::of_kafka);
        if self.strikes.lock().expect("not poisoned").note(class)
            && let Some(error) = error
        {
            let mut failure = self.failure.lock().expect("not poisoned");
            if failure.is_none() {
                tracing::error!(topic, %error, "kafka refuses every record for the topic");
                *failure = Some(SinkFailure {
                    topic: topic.to_owned(),
                    error: error.to_string(),
                });
            }
        }
    }
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        match result {
            Ok(message) => {
                self.health.note(message.topic(), None);
                delivery.written.inc();
                delivery.in_flight.0.fetch_sub(1, Ordering::AcqRel);
            }
            Err((error, message)) => {
                let topic = message.topic();
                let class = FailureClass::of_kafka(error);
                self.metrics.sink_failures(topic, class).inc();
                self.health.note(topic, Some(error));
                if class == FailureClass::Record {
                    let payload = message.payload().unwrap_or_default();
                    tracing::warn!(topic, %error, bytes = payload.len(), "kafka refused a record for good");
                    match &delivery.refused {
                        // Settled by the sink once it has sent the dead letter on.
                        Some((refused, time)) => refused
                            .lock()
                            .expect("not poisoned")
                            .push((*time, refused_record(topic, error, payload))),
                        None => {
                            delivery.in_flight.0.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                    return;
                }
                tracing::warn!(topic, %error, class = class.label(), "delivery failed; sending again");
                self.metrics.delivery_retries.inc();
                self.resend.lock().expect("not poisoned").push(Resend {
                    topic: topic.to_owned(),
                    key: message.key().unwrap_or_default().to_vec(),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    delivery,
                });
            }
        }
    }
}

impl DetachedProducer for SinkProducer {
    fn send_detached(&self, topic: &str, key: &str, value: &str, written: Arc<Counter>) -> bool {
        let delivery = Box::new(Delivery {
            in_flight: Arc::new(InFlight(AtomicUsize::new(1))),
            written,
            refused: None,
        });
        let record = BaseRecord::with_opaque_to(topic, delivery)
            .key(key)
            .payload(value);
        self.producer.send(record).is_ok()
    }
}

/// One process's producer, shared by the sinks of all its workers.
#[derive(Clone)]
pub struct SinkProducer {
    producer: ThreadedProducer<DeliveryContext>,
}

impl SinkProducer {
    /// An idempotent producer that retries without a deadline.
    pub fn create(config: &KafkaConfig, metrics: Arc<Metrics>) -> Result<Self, KafkaSetupError> {
        let context = DeliveryContext {
            resend: Mutex::default(),
            metrics,
            health: Health::default(),
        };
        let producer = config
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // 0 = no deadline: a broker that is down delays delivery, it never drops it.
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "500000")
            .create_with_context(context)
            .map_err(client_error("producer"))?;
        Ok(Self { producer })
    }

    /// Checks that the broker has each `(config field, topic)`: a producer with no delivery
    /// deadline would otherwise hold a missing topic's records forever, and with them the
    /// written frontier, without an error to show for it.
    pub fn check_topics(
        &self,
        topics: &[(&'static str, &str)],
        brokers: &str,
        timeout: std::time::Duration,
    ) -> Result<(), MissingTopic> {
        for (field, topic) in topics {
            let missing = |reason: String| MissingTopic {
                field,
                topic: (*topic).to_owned(),
                brokers: brokers.to_owned(),
                reason,
            };
            let metadata = self
                .producer
                .client()
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| missing(e.to_string()))?;
            let found = metadata.topics().iter().find(|t| t.name() == *topic);
            match found {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {}
                Some(t) => {
                    let reason = t.error().map_or("no partitions".to_owned(), |e| {
                        RDKafkaErrorCode::from(e).to_string()
                    });
                    return Err(missing(reason));
                }
                None => return Err(missing("not in the broker's metadata".into())),
            }
        }
        Ok(())
    }

    /// Sends again the records whose delivery failed; returns how many are still waiting.
    pub fn resend_failed(&self) -> usize {
        let resend = &self.producer.context().resend;
        let failed = std::mem::take(&mut *resend.lock().expect("not poisoned"));
        if failed.is_empty() {
            return 0;
        }
        let mut waiting = Vec::new();
        for Resend {
            topic,
            key,
            payload,
            delivery,
        } in failed
        {
            let record = BaseRecord::with_opaque_to(&topic, delivery)
                .key(&key)
                .payload(&payload);
            if let Err((_, record)) = self.producer.send(record) {
                let delivery = record.delivery_opaque;
                waiting.push(Resend {
                    topic,
                    key,
                    payload,
                    delivery,
                });
            }
        }
        let count = waiting.len();
        resend.lock().expect("not poisoned").extend(waiting);
        count
    }

    /// Why the producer cannot write, once Kafka has said so [`SINK_FAILURE_TRIES`] times in a
    /// row.
    ///
    /// [`SINK_FAILURE_TRIES`]: crate::io::support::failure::SINK_FAILURE_TRIES
    pub fn failure(&self) -> Option<SinkFailure> {
        self.producer
            .context()
            .health
            .failure
            .lock()
            .expect("not poisoned")
            .clone()
    }

    /// Records produced and not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Waits up to `timeout` for every record to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.producer.flush(timeout).is_ok()
    }
}

/// Where a sink writes.
#[derive(Clone)]
pub struct SinkTarget {
    /// The process's producer.
    pub producer: SinkProducer,
    /// The topic.
    pub topic: String,
    /// Records at times before this were written by an earlier run: they are dropped.
    pub skip_before_ms: TimeMs,
    /// Set while records wait for room in the producer's queue: the source should pause.
    pub full: Rc<Cell<bool>>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
}

/// Writes a stream to a Kafka topic.
pub trait ProduceTo<'scope, D> {
    /// Produces each record as `encode` turns it into `(key, value)`. Returns the records the
    /// broker refused for good, as `sink_rejected` dead letters at their times; the stream's
    /// frontier is the time before which this sink has settled everything (written, or handed
    /// on as a dead letter).
    fn produce_to<F>(
        self,
        name: &str,
        target: SinkTarget,
        encode: F,
    ) -> EventStream<'scope, DeadLetter>
    where
        F: FnMut(&D) -> (String, String) + 'static;
}

impl<'scope, D: Clone + 'static> ProduceTo<'scope, D> for EventStream<'scope, D> {
    fn produce_to<F>(
        self,
        name: &str,
        target: SinkTarget,
        mut encode: F,
    ) -> EventStream<'scope, DeadLetter>
    where
        F: FnMut(&D) -> (String, String) + 'static,
    {
        let scope = self.scope();
        let written = target.metrics.records_out(name);
        let refused: Refused = Arc::default();
        self.unary_frontier::<CapacityContainerBuilder<Vec<DeadLetter>>, _, _, _>(
            Pipeline,
            name,
            move |_initial, info| {
                let activator = scope.activator_for(info.address);
                let mut in_flight: BTreeMap<TimeMs, (Capability<TimeMs>, Arc<InFlight>)> =
                    BTreeMap::new();
                let mut waiting: VecDeque<(TimeMs, String, String, Arc<InFlight>)> =
                    VecDeque::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, records| {
                        let Some(time) = cap.least().copied() else {
                            return;
                        };
                        if time < target.skip_before_ms {
                            return;
                        }
                        let Some(held) = cap.retain_least(0) else {
                            return;
                        };
                        let count = &in_flight
                            .entry(time)
                            .or_insert_with(|| (held, Arc::default()))
                            .1;
                        count.0.fetch_add(records.len(), Ordering::AcqRel);
                        for record in records.drain(..) {
                            let (key, value) = encode(&record);
                            waiting.push_back((time, key, value, Arc::clone(count)));
                        }
                    });
                    let context = target.producer.producer.context();
                    while let Some((time, key, value, count)) = waiting.pop_front() {
                        let delivery = Box::new(Delivery {
                            in_flight: Arc::clone(&count),
                            written: Arc::clone(&written),
                            refused: Some((Arc::clone(&refused), time)),
                        });
                        let record = BaseRecord::with_opaque_to(&target.topic, delivery)
                            .key(&key)
                            .payload(&value);
                        let Err((error, _)) = target.producer.producer.send(record) else {
                            continue;
                        };
                        if error == KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) {
                            waiting.push_front((time, key, value, count));
                            break;
                        }
                        let class = FailureClass::of_kafka(&error);
                        target.metrics.sink_failures(&target.topic, class).inc();
                        context.health.note(&target.topic, Some(&error));
                        if class == FailureClass::Record {
                            tracing::warn!(topic = %target.topic, %error, bytes = value.len(), "kafka refused a record for good");
                            let dead = refused_record(&target.topic, &error, value.as_bytes());
                            refused.lock().expect("not poisoned").push((time, dead));
                            continue;
                        }
                        tracing::warn!(topic = %target.topic, %error, class = class.label(), "produce failed; retrying");
                        waiting.push_front((time, key, value, count));
                        break;
                    }
                    target.full.set(!waiting.is_empty());
                    // Refused records go on as dead letters at their times, whose
                    // capabilities are still held: only now are they settled.
                    let refusals = std::mem::take(&mut *refused.lock().expect("not poisoned"));
                    for (time, dead) in refusals {
                        let (cap, count) = in_flight.get(&time).expect("held until settled");
                        output.session(cap).give(dead);
                        count.0.fetch_sub(1, Ordering::AcqRel);
                    }
                    // A time is written once no record can still come for it and the broker
                    // has acknowledged every record of it.
                    in_flight.retain(|time, (_, count)| {
                        frontier.less_equal(time) || count.0.load(Ordering::Acquire) > 0
                    });
                    if !in_flight.is_empty() {
                        activator.activate_after(Duration::from_millis(2));
                    }
                }
            },
        )
    }
}
