//! MQTT: each alert event published at QoS 1, delivered once the broker acknowledged it.

use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Backoff, Channel, ChannelConfigError, Failure, Notification};
use crate::dataflow::alert::Severity;

/// An MQTT broker to publish alert events to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// The channel's name (ledger file name, logs).
    pub name: String,
    /// Broker host.
    pub host: String,
    /// Broker port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Client id (default: `iotpipe-alerts-<name>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Topic; `{site}` and `{severity}` are replaced by the event's.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// User name, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// Name of the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// How long to wait for the broker's acknowledgement before publishing again.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// Events below this severity are not sent.
    #[serde(default)]
    pub min_severity: Severity,
    /// An escalation: only events of alerts left unacknowledged past their escalation time
    /// (see the alert rules' `notification`) are sent.
    #[serde(default)]
    pub overdue_only: bool,
    /// Waits between retries.
    #[serde(default)]
    pub backoff: Backoff,
}

fn default_port() -> u16 {
    1883
}

fn default_topic() -> String {
    "iotpipe/alerts/{site}/{severity}".into()
}

fn default_ack_timeout_ms() -> u64 {
    5_000
}

/// The MQTT channel: a client whose event loop runs in its own task and reports
/// acknowledgements and refusals.
pub struct MqttChannel {
    config: MqttConfig,
    client: AsyncClient,
    broker: mpsc::UnboundedReceiver<BrokerSaid>,
}

/// What the event loop heard from the broker that a delivery waits for.
enum BrokerSaid {
    /// A publish was acknowledged.
    Ack,
    /// The broker refused the connection.
    Refused(ConnectReturnCode),
}

/// The failure of a connection the broker refused: credentials and client ids are the
/// channel's to fix; a broker that says it is unavailable is transient.
fn refusal(code: ConnectReturnCode) -> Failure {
    let reason = format!("the broker refused the connection: {code:?}");
    match code {
        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
            Failure::sink("username and password_env", reason)
        }
        ConnectReturnCode::BadClientId => Failure::sink("client_id", reason),
        ConnectReturnCode::RefusedProtocolVersion => Failure::sink("host and port", reason),
        ConnectReturnCode::ServiceUnavailable | ConnectReturnCode::Success => {
            Failure::transient(reason)
        }
    }
}

impl MqttChannel {
    /// Connects (lazily: the event loop connects and reconnects on its own). Must be called
    /// inside a Tokio runtime.
    pub fn new(config: MqttConfig) -> Result<Self, ChannelConfigError> {
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| format!("iotpipe-alerts-{}", config.name));
        let mut options = MqttOptions::new(client_id, config.host.clone(), config.port);
        options.set_keep_alive(Duration::from_secs(15));
        if let Some(user) = &config.username {
            let password = match &config.password_env {
                Some(var) => std::env::var(var).map_err(|_| ChannelConfigError {
                    kind: "mqtt",
                    channel: config.name.clone(),
                    field: "password_env".into(),
                    message: format!("${var} is not set"),
                })?,
                None => String::new(),
            };
            options.set_credentials(user.clone(), password);
        }
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        let (broker_said, broker) = mpsc::unbounded_channel();
        let name = config.name.clone();
        tokio::spawn(async move {
            let mut connected = false;
            loop {
                let said = match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => Some(BrokerSaid::Ack),
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        tracing::info!(channel = %name, "mqtt connected");
                        None
                    }
                    Ok(_) => None,
                    Err(e) => {
                        if connected {
                            tracing::warn!(channel = %name, error = %e, "mqtt connection lost; reconnecting");
                        }
                        connected = false;
                        if broker_said.is_closed() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        match e {
                            ConnectionError::ConnectionRefused(code) => {
                                Some(BrokerSaid::Refused(code))
                            }
                            _ => None,
                        }
                    }
                };
                if let Some(said) = said
                    && broker_said.send(said).is_err()
                {
                    return;
                }
            }
        });
        Ok(Self {
            config,
            client,
            broker,
        })
    }
}

impl Channel for MqttChannel {
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
        // What the broker said of earlier, timed-out attempts is stale.
        while self.broker.try_recv().is_ok() {}
        let topic = self
            .config
            .topic
            .replace("{site}", &n.site)
            .replace("{severity}", n.severity.code());
        self.client
            .publish(topic, QoS::AtLeastOnce, false, n.json.clone().into_bytes())
            .await
            .map_err(|e| Failure::transient(format!("publish: {e}")))?;
        match tokio::time::timeout(
            Duration::from_millis(self.config.ack_timeout_ms),
            self.broker.recv(),
        )
        .await
        {
            Ok(Some(BrokerSaid::Ack)) => Ok(()),
            Ok(Some(BrokerSaid::Refused(code))) => Err(refusal(code)),
            Ok(None) => Err(Failure::transient("event loop stopped")),
            Err(_) => Err(Failure::transient("no acknowledgement")),
        }
    }

    async fn flush(&mut self) {
        let _ = self.client.disconnect().await;
    }
}
