//! What a bridge reports at `/metrics`.

use crate::io::support::metrics::{Counter, Exposed, Gauge, Histogram, TextFormat};

/// The bridge's counters; no per-device labels.
#[derive(Debug, Default)]
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
}

impl Exposed for BridgeMetrics {
    fn render(&self) -> String {
        let mut text = TextFormat::default();
        let mut counter = |name: &str, help: &str, value: u64| {
            text.family(name, "counter", help, &TextFormat::plain(value))
        };
        counter(
            "bridge_received_total",
            "Messages the MQTT broker delivered to the bridge.",
            self.received.get(),
        );
        counter(
            "bridge_redelivered_total",
            "Deliveries the broker marked as repeats of unacknowledged messages.",
            self.redelivered.get(),
        );
        counter(
            "bridge_forwarded_total",
            "Messages written to Kafka and then acknowledged on MQTT.",
            self.forwarded.get(),
        );
        counter(
            "bridge_left_for_redelivery_total",
            "Messages in Kafka whose MQTT connection was lost before they were acknowledged.",
            self.left_for_redelivery.get(),
        );
        counter(
            "bridge_rejected_total",
            "Messages Kafka refused for good, written to the dead-letter topic instead.",
            self.rejected.get(),
        );
        counter(
            "bridge_reconnects_total",
            "MQTT connection attempts after the first.",
            self.reconnects.get(),
        );
        text.family(
            "bridge_connected",
            "gauge",
            "1 while connected to the MQTT broker.",
            &TextFormat::plain(self.connected.get()),
        );
        text.family(
            "bridge_in_flight_messages",
            "gauge",
            "Messages received and not yet acknowledged by Kafka.",
            &TextFormat::plain(self.in_flight.get()),
        );
        text.histogram(
            "bridge_forward_latency_seconds",
            "From a message's arrival at the bridge to Kafka's acknowledgement.",
            &self.forward_latency,
        );
        text.finish()
    }
}
