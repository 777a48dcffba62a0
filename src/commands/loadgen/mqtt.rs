//! Load to an MQTT broker: one connection per device (each authenticating as itself), or a few
//! connections shared by the fleet for rates beyond what per-device connections reach.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop};
use tokio::task::JoinHandle;

use super::credentials::device_password;
use super::{LoadError, Progress};
use crate::io::connect::mqtt::MqttConnectionConfig;
use crate::io::connect::secret::Secret;
use crate::io::sources::fleet::{FleetMessage, device_id};
use crate::io::support::backoff::Backoff;

/// How the fleet connects.
#[derive(Clone, Debug)]
pub enum Connections {
    /// One connection per device: client id and user name are the device id; the password is
    /// derived from the fleet secret ([`device_password`]), or none without a secret.
    PerDevice {
        /// The fleet secret.
        secret: Option<Secret>,
    },
    /// `clients` connections carrying every device's messages (device `d` on client
    /// `d % clients`), all as one user, which the broker's ACL must let publish for every
    /// device.
    Shared {
        /// Number of connections.
        clients: usize,
        /// User name.
        username: Option<String>,
        /// Password.
        password: Option<Secret>,
    },
}

/// An MQTT target.
#[derive(Clone, Debug)]
pub struct MqttTarget {
    /// Broker address and TLS; identity comes from `connections`.
    pub connection: MqttConnectionConfig,
    /// Per-device or shared connections.
    pub connections: Connections,
    /// QoS of every publish.
    pub qos: QoS,
    /// Topic, `{device}` replaced by the device id.
    pub topic: String,
}

/// Connected clients, and the tasks driving them.
pub(super) struct MqttFleet {
    clients: Vec<AsyncClient>,
    drivers: Vec<JoinHandle<()>>,
    per_device: bool,
    qos: QoS,
    topic: String,
}

impl MqttTarget {
    /// Starts a client per connection (each connects on its own, with retries).
    pub(super) fn connect(
        self,
        devices: usize,
        progress: Arc<Progress>,
    ) -> Result<MqttFleet, LoadError> {
        let (count, per_device) = match &self.connections {
            Connections::PerDevice { .. } => (devices, true),
            Connections::Shared { clients, .. } => ((*clients).max(1), false),
        };
        let mut clients = Vec::with_capacity(count);
        let mut drivers = Vec::with_capacity(count);
        for index in 0..count {
            let mut connection = self.connection.clone();
            let password = match &self.connections {
                Connections::PerDevice { secret } => {
                    let id = device_id(index);
                    connection.client_id = id.clone();
                    let password = secret.as_ref().map(|s| Secret(device_password(&s.0, &id)));
                    connection.username = password.as_ref().map(|_| id);
                    password
                }
                Connections::Shared {
                    username, password, ..
                } => {
                    connection.client_id = format!("iotpipe-loadgen-{index}");
                    connection.username = username.clone();
                    password.clone()
                }
            };
            let mut options = connection
                .options("--to", password.as_ref())
                .map_err(|e| LoadError::Target(e.to_string()))?;
            // A persistent session: messages not yet acknowledged are sent again after a
            // reconnect to a broker that kept the session.
            options
                .set_clean_start(false)
                .set_session_expiry_interval(Some(3_600));
            let (client, event_loop) = AsyncClient::new(options, 1_024);
            clients.push(client);
            drivers.push(tokio::spawn(drive(
                event_loop,
                connection.client_id,
                Arc::clone(&progress),
            )));
        }
        Ok(MqttFleet {
            clients,
            drivers,
            per_device,
            qos: self.qos,
            topic: self.topic,
        })
    }
}

impl MqttFleet {
    pub(super) async fn send(
        &mut self,
        message: FleetMessage,
        progress: &Progress,
    ) -> Result<(), LoadError> {
        let client = if self.per_device {
            &self.clients[message.device]
        } else {
            &self.clients[message.device % self.clients.len()]
        };
        let topic = self.topic.replace("{device}", &device_id(message.device));
        // Waits while the client's queue is full: a slow broker slows the generator.
        match client
            .publish(topic, self.qos, false, message.line.into_bytes())
            .await
        {
            Ok(()) => {
                progress.sent.fetch_add(1, Ordering::Relaxed);
                if self.qos == QoS::AtMostOnce {
                    progress.acknowledged.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for every publish to be acknowledged, then disconnects.
    pub(super) async fn finish(self, progress: &Progress, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while progress.acknowledged.load(Ordering::Relaxed) < progress.sent.load(Ordering::Relaxed)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for client in &self.clients {
            let _ = client.try_disconnect();
        }
        drop(self.clients);
        for driver in self.drivers {
            let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
        }
    }
}

/// Polls one connection: counts acknowledgements and failures, reconnects with backoff.
async fn drive(mut event_loop: EventLoop, client_id: String, progress: Arc<Progress>) {
    let backoff = Backoff {
        initial_ms: 200,
        max_ms: 5_000,
    };
    let mut failures = 0;
    loop {
        match event_loop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ) {
                    progress.acknowledged.fetch_add(1, Ordering::Relaxed);
                    if ack.reason == PubAckReason::NoMatchingSubscribers {
                        progress.unrouted.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    tracing::warn!(client = %client_id, reason = ?ack.reason, "publish refused");
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => failures = 0,
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(ConnectionError::RequestsDone) => {
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(client = %client_id, error = %e, "mqtt connection failed");
                progress.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff.wait(failures)).await;
                failures += 1;
            }
        }
    }
}
