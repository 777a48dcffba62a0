//! What a bridge reports at `/metrics`.

use prometheus_client::registry::{Registry, Unit};

use crate::io::support::metrics::{Counter, Exposed, Gauge, Histogram, encode_registry};

/// The bridge's counters, and the registry that exposes them; no per-device labels.
#[derive(Debug)]
pub struct BridgeMetrics {
    /// Messages the MQTT broker delivered.
    pub received: Counter,
    /// Deliveries the broker marked as repeated (sent before, not acknowledged).
    pub redelivered: Counter,
    /// Messages Kafka acknowledged and that were then acknowledged on MQTT.
    pub forwarded: Counter,
    /// Messages Kafka acknowledged on a connection since lost, left for the broker to deliver
    /// again (they will reach Kafka twice).
    pub left_for_redelivery: Counter,
    /// Connection attempts after the first (lost connections, refused or failed connects).
    pub reconnects: Counter,
    /// Messages Kafka refused for good, written to the dead-letter topic instead.
    pub rejected: Counter,
    /// 1 while connected to the MQTT broker.
    pub connected: Gauge,
    /// Messages received and not yet acknowledged by Kafka.
    pub in_flight: Gauge,
    /// From a message's arrival at the bridge to Kafka's acknowledgement.
    pub forward_latency: Histogram,
    registry: Registry,
}

impl Default for BridgeMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("iotpipe_bridge");
        let metrics = Self {
            received: Counter::default(),
            redelivered: Counter::default(),
            forwarded: Counter::default(),
            left_for_redelivery: Counter::default(),
            reconnects: Counter::default(),
            rejected: Counter::default(),
            connected: Gauge::default(),
            in_flight: Gauge::default(),
            forward_latency: Histogram::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "received",
            "Messages the MQTT broker delivered to the bridge",
            metrics.received.clone(),
        );
        r.register(
            "redelivered",
            "Deliveries the broker marked as repeats of unacknowledged messages",
            metrics.redelivered.clone(),
        );
        r.register(
            "forwarded",
            "Messages written to Kafka and then acknowledged on MQTT",
            metrics.forwarded.clone(),
        );
        r.register(
            "left_for_redelivery",
            "Messages in Kafka whose MQTT connection was lost before they were acknowledged",
            metrics.left_for_redelivery.clone(),
        );
        r.register(
            "rejected",
            "Messages Kafka refused for good, written to the dead-letter topic instead",
            metrics.rejected.clone(),
        );
        r.register(
            "reconnects",
            "MQTT connection attempts after the first",
            metrics.reconnects.clone(),
        );
        r.register(
            "connected",
            "1 while connected to the MQTT broker",
            metrics.connected.clone(),
        );
        r.register_with_unit(
            "in_flight",
            "Messages received and not yet acknowledged by Kafka",
            Unit::Other("messages".into()),
            metrics.in_flight.clone(),
        );
        r.register_with_unit(
            "forward_latency",
            "From a message's arrival at the bridge to Kafka's acknowledgement",
            Unit::Seconds,
            metrics.forward_latency.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Exposed for BridgeMetrics {
    fn render(&self) -> String {
        encode_registry(&self.registry)
    }
}
