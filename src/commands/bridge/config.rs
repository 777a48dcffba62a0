//! `iotpipe bridge`'s configuration file, with environment overrides.
//!
//! | variable | field |
//! |---|---|
//! | `IOTPIPE_MQTT_HOST` | `mqtt.host` |
//! | `IOTPIPE_MQTT_PORT` | `mqtt.port` |
//! | `IOTPIPE_MQTT_CLIENT_ID` | `mqtt.client_id` |
//! | `IOTPIPE_MQTT_USERNAME` | `mqtt.username` |
//! | `IOTPIPE_KAFKA_BROKERS` | `kafka.brokers` |
//! | `IOTPIPE_METRICS_LISTEN` | `metrics.listen` |
//!
//! The password is never an override of its own: `mqtt.password_env` names the variable.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::commands::run::config::MetricsConfig;
use crate::io::connect::mqtt::{MqttConfigError, MqttConnectionConfig};
use crate::io::support::backoff::Backoff;
use crate::io::support::config::{
    ConfigError, EnvOverride, integer, load_toml_with_overrides, parse_toml_with_overrides, text,
};

/// The whole configuration of `iotpipe bridge`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// The MQTT broker the devices publish to, and the bridge's identity there.
    pub mqtt: MqttConnectionConfig,
    /// What to subscribe to, and how much may be unacknowledged.
    #[serde(default)]
    pub subscription: SubscriptionConfig,
    /// Where messages go.
    pub kafka: BridgeKafkaConfig,
    /// Waits between reconnection attempts to the MQTT broker.
    #[serde(default = "default_reconnect")]
    pub reconnect: Backoff,
    /// The metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// How long a stopping bridge waits for Kafka to acknowledge what it has sent (ms); what
    /// is not acknowledged by then stays unacknowledged on MQTT, and the broker delivers it
    /// again.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

fn default_reconnect() -> Backoff {
    Backoff {
        initial_ms: 250,
        max_ms: 15_000,
    }
}

fn default_drain_timeout_ms() -> u64 {
    10_000
}

/// The subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionConfig {
    /// Topic filter of device messages. The level matched by its first `+` is the device id
    /// and the Kafka key; without a `+`, the whole topic is the key.
    pub filter: String,
    /// Shared-subscription group (`$share/<group>/<filter>`), for several bridges to split the
    /// messages between them. Empty (the default): a plain subscription, for one bridge. On
    /// mosquitto 2.0 a shared subscription does not survive a broker restart: until the bridges
    /// subscribe again, device messages find no subscriber and the broker drops them (see the
    /// README); a plain persistent subscription loses nothing.
    pub share_group: String,
    /// How long the broker keeps the bridge's session (its subscription and unacknowledged
    /// messages) while the bridge is away, seconds.
    pub session_expiry_s: u32,
    /// Messages the broker may have delivered that Kafka has not yet acknowledged, announced
    /// as the MQTT 5 receive maximum: the bound on the bridge's memory, and what makes a slow
    /// Kafka push back on the broker. mosquitto 2.0.11 does not honour it (measured; 2.0.13
    /// lists in-flight quota fixes): the bridge then stops reading at the bound, which pauses
    /// its keep-alive too.
    pub max_in_flight: u16,
    /// The largest MQTT packet the bridge takes, bytes, announced to the broker as the MQTT 5
    /// maximum packet size. Match the broker's `max_packet_size` (`deploy/mosquitto`: 256 KiB):
    /// smaller, and the broker drops larger messages for the bridge; the pipeline itself
    /// dead-letters messages over its own `max_message_bytes`.
    pub max_packet_bytes: u32,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self {
            filter: "devices/+/telemetry".into(),
            share_group: String::new(),
            session_expiry_s: 86_400,
            max_in_flight: 1_000,
            max_packet_bytes: 262_144,
        }
    }
}

impl SubscriptionConfig {
    /// The filter to subscribe with (shared when a group is set).
    pub fn subscribe_filter(&self) -> String {
        if self.share_group.is_empty() {
            self.filter.clone()
        } else {
            format!("$share/{}/{}", self.share_group, self.filter)
        }
    }

    /// The topic level holding the device id: the filter's first `+`.
    pub fn device_level(&self) -> Option<usize> {
        self.filter.split('/').position(|level| level == "+")
    }
}

/// Kafka, as the bridge uses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeKafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The topic device messages are written to (the pipeline's `kafka.topics.telemetry`).
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Where a message Kafka refuses for good (larger than the broker takes) goes instead, as a
    /// `sink_rejected` dead letter (the pipeline's `kafka.topics.dead_letters`); it is then
    /// acknowledged on MQTT, so it does not come back on every restart.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Extra librdkafka producer properties (security, compression, batching).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_topic() -> String {
    "iotpipe.telemetry".into()
}

fn default_dead_letter_topic() -> String {
    "iotpipe.dead_letters".into()
}

/// A bridge configuration that cannot be used; names the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum BridgeConfigError {
    /// The file could not be read or parsed, or an environment override does not fit.
    #[error(transparent)]
    File(#[from] ConfigError),
    /// A field's value cannot work.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The MQTT section cannot work.
    #[error(transparent)]
    Mqtt(#[from] MqttConfigError),
}

const OVERRIDES: [EnvOverride; 6] = [
    text("IOTPIPE_MQTT_HOST", &["mqtt", "host"]),
    integer("IOTPIPE_MQTT_PORT", &["mqtt", "port"]),
    text("IOTPIPE_MQTT_CLIENT_ID", &["mqtt", "client_id"]),
    text("IOTPIPE_MQTT_USERNAME", &["mqtt", "username"]),
    text("IOTPIPE_KAFKA_BROKERS", &["kafka", "brokers"]),
    text("IOTPIPE_METRICS_LISTEN", &["metrics", "listen"]),
];

impl BridgeConfig {
    /// Reads `path`, applies the overrides `env` finds, and validates.
    pub fn load(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, BridgeConfigError> {
        let config: BridgeConfig = load_toml_with_overrides(path, &OVERRIDES, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (see [`load`](Self::load)).
    pub fn parse(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, BridgeConfigError> {
        let config: BridgeConfig = parse_toml_with_overrides(Path::new(""), text, &OVERRIDES, env)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), BridgeConfigError> {
        let invalid = |field, message: &str| {
            Err(BridgeConfigError::Invalid {
                field,
                message: message.into(),
            })
        };
        let filter = &self.subscription.filter;
        if filter.is_empty() || filter.starts_with('$') {
            return invalid(
                "subscription.filter",
                "must be a topic filter such as devices/+/telemetry (set share_group for a \
                 shared subscription instead of writing $share/ here)",
            );
        }
        if filter
            .split('/')
            .any(|level| level != "+" && level != "#" && (level.contains(['+', '#'])))
        {
            return invalid(
                "subscription.filter",
                "a wildcard must fill a whole level (devices/+/telemetry, devices/#)",
            );
        }
        if self.subscription.share_group.contains(['/', '+', '#']) {
            return invalid(
                "subscription.share_group",
                "must not contain '/', '+' or '#'",
            );
        }
        if self.subscription.max_in_flight == 0 {
            return invalid("subscription.max_in_flight", "must be at least 1");
        }
        if self.subscription.max_packet_bytes < 1024 {
            return invalid(
                "subscription.max_packet_bytes",
                "must be at least 1024 (default 262144, the deploy broker's max_packet_size)",
            );
        }
        if self.subscription.session_expiry_s == 0 {
            return invalid(
                "subscription.session_expiry_s",
                "must be at least 1: with 0 the broker forgets unacknowledged messages when \
                 the bridge disconnects",
            );
        }
        if self.kafka.brokers.trim().is_empty() {
            return invalid(
                "kafka.brokers",
                "is empty: set host:port of a broker (or IOTPIPE_KAFKA_BROKERS)",
            );
        }
        if self.kafka.topic.is_empty() {
            return invalid("kafka.topic", "is empty: name the telemetry topic");
        }
        if self.kafka.dead_letter_topic.is_empty() {
            return invalid(
                "kafka.dead_letter_topic",
                "is empty: name the pipeline's dead-letter topic",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [mqtt]
        host = "127.0.0.1"
        client_id = "bridge-0"
        [kafka]
        brokers = "127.0.0.1:9092"
    "#;

    #[test]
    fn defaults_subscribe_to_device_telemetry_and_groups_share() {
        let mut config = BridgeConfig::parse(MINIMAL, |_| None).unwrap();
        assert_eq!(
            config.subscription.subscribe_filter(),
            "devices/+/telemetry"
        );
        config.subscription.share_group = "iotpipe".into();
        assert_eq!(
            config.subscription.subscribe_filter(),
            "$share/iotpipe/devices/+/telemetry"
        );
        assert_eq!(config.subscription.device_level(), Some(1));
        assert_eq!(config.kafka.topic, "iotpipe.telemetry");
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let text = include_str!("../../../datasets/bridge.example.toml");
        let env = |name: &str| (name == "IOTPIPE_MQTT_PASSWORD").then(|| "pw".to_owned());
        let config = BridgeConfig::parse(text, env).unwrap();
        assert_eq!(config.subscription, SubscriptionConfig::default());
        assert_eq!(config.reconnect, default_reconnect());
        assert_eq!(config.drain_timeout_ms, default_drain_timeout_ms());
        assert_eq!(config.mqtt.keep_alive_s, 30);
        let password = config.mqtt.resolve_password("mqtt", env).unwrap();
        assert!(config.mqtt.options("mqtt", password.as_ref()).is_ok());
    }

    #[test]
    fn environment_overrides_fields() {
        let env = |name: &str| match name {
            "IOTPIPE_MQTT_PORT" => Some("1999".to_owned()),
            "IOTPIPE_MQTT_CLIENT_ID" => Some("bridge-7".to_owned()),
            _ => None,
        };
        let config = BridgeConfig::parse(MINIMAL, env).unwrap();
        assert_eq!(config.mqtt.port, 1999);
        assert_eq!(config.mqtt.client_id, "bridge-7");
        let bad = |name: &str| (name == "IOTPIPE_MQTT_PORT").then(|| "high".to_owned());
        let error = BridgeConfig::parse(MINIMAL, bad).unwrap_err().to_string();
        assert_eq!(error, "IOTPIPE_MQTT_PORT: \"high\" is not a whole number");
    }

    #[test]
    fn errors_name_the_field() {
        let text = format!("{MINIMAL}\n[subscription]\nfilter = \"$share/g/devices/+\"\n");
        let error = BridgeConfig::parse(&text, |_| None)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("subscription.filter: "), "{error}");
        let text = format!("{MINIMAL}\n[subscription]\nmax_inflight = 5\n");
        let error = BridgeConfig::parse(&text, |_| None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("max_inflight"), "{error}");
    }
}
