//! `iotpipe loadgen`'s configuration: what to send, where, and how to connect.
//!
//! Secrets are never fields: `mqtt.password_env` and `mqtt.device_secret_env` name the
//! environment variables that hold them, read when the configuration is resolved.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use serde::{Deserialize, Serialize};

use super::{Connections, LoadPlan, Target};
use crate::io::connect::secret::Secret;
use crate::io::sources::fleet::FleetConfig;

/// The whole configuration of `iotpipe loadgen`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadgenConfig {
    /// Where the messages go: `mqtt://HOST[:PORT]`, `mqtts://HOST[:PORT]`,
    /// `kafka://HOST:PORT[,HOST:PORT]/TOPIC` or `file:PATH`.
    pub to: String,
    /// Simulated devices (`dev-000000` ...).
    #[serde(default = "default_devices")]
    pub devices: usize,
    /// Messages per second, the whole fleet together.
    #[serde(default = "default_rate_per_s")]
    pub rate_per_s: f64,
    /// Seconds of fleet time to send.
    #[serde(default = "default_duration_s")]
    pub duration_s: f64,
    /// Random seed of the fleet.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Event time of the first message, epoch ms (none: now). With it, runs are repeatable:
    /// the same configuration sends the same messages.
    #[serde(default)]
    pub start_ms: Option<u64>,
    /// Send in real time (a message when its arrival time comes); false: as fast as the
    /// target takes them.
    #[serde(default = "default_paced")]
    pub paced: bool,
    /// Seconds to wait at the end for outstanding acknowledgements.
    #[serde(default = "default_drain_timeout_s")]
    pub drain_timeout_s: f64,
    /// How an `mqtt://` or `mqtts://` target is reached.
    #[serde(default)]
    pub mqtt: LoadgenMqttConfig,
}

/// How the simulated fleet connects to an MQTT broker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadgenMqttConfig {
    /// QoS of every publish: 0 or 1.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Share this many connections between all devices (device `d` on connection
    /// `d % clients`); none: one connection per device, each as itself.
    #[serde(default)]
    pub clients: Option<usize>,
    /// With `clients`: the user name of the shared connections.
    #[serde(default)]
    pub username: Option<String>,
    /// With `clients`: the environment variable holding their password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// One connection per device: the environment variable holding the fleet secret from
    /// which each device's password is derived (see `iotpipe fleet-passwords`).
    #[serde(default)]
    pub device_secret_env: Option<String>,
    /// `mqtts://`: the broker's CA certificate file (PEM).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl Default for LoadgenMqttConfig {
    fn default() -> Self {
        Self {
            qos: default_qos(),
            clients: None,
            username: None,
            password_env: None,
            device_secret_env: None,
            ca_file: None,
        }
    }
}

fn default_devices() -> usize {
    1_000
}
fn default_rate_per_s() -> f64 {
    1_000.0
}
fn default_duration_s() -> f64 {
    60.0
}
fn default_seed() -> u64 {
    42
}
fn default_paced() -> bool {
    true
}
fn default_drain_timeout_s() -> f64 {
    30.0
}
fn default_qos() -> u8 {
    1
}

/// A configuration that cannot run: the field, and what is wrong with it and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct LoadgenConfigError {
    /// The field (`mqtt.qos`, `to`, ...).
    pub field: &'static str,
    /// What is wrong and the fix.
    pub message: String,
}

impl LoadgenConfigError {
    pub(super) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl LoadgenConfig {
    /// A configuration sending to `to` with every other field at its default.
    pub fn to(to: impl Into<String>) -> Self {
        Self {
            to: to.into(),
            devices: default_devices(),
            rate_per_s: default_rate_per_s(),
            duration_s: default_duration_s(),
            seed: default_seed(),
            start_ms: None,
            paced: default_paced(),
            drain_timeout_s: default_drain_timeout_s(),
            mqtt: LoadgenMqttConfig::default(),
        }
    }

    /// The plan and the target, secrets read through `env` and a missing `start_ms` taken as
    /// `now_ms`; or the first field that cannot work.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
        now_ms: u64,
    ) -> Result<(LoadPlan, Target), LoadgenConfigError> {
        if self.devices == 0 {
            return Err(LoadgenConfigError::new("devices", "must be at least 1"));
        }
        positive("rate_per_s", self.rate_per_s, false, "1000")?;
        positive("duration_s", self.duration_s, false, "60")?;
        positive("drain_timeout_s", self.drain_timeout_s, true, "30")?;
        let mqtt = &self.mqtt;
        let secret = |field: &'static str, name: &str| {
            env(name)
                .map(Secret)
                .ok_or_else(|| LoadgenConfigError::new(field, format!("${name} is not set")))
        };
        let connections = match mqtt.clients {
            Some(0) => {
                return Err(LoadgenConfigError::new(
                    "mqtt.clients",
                    "must be at least 1",
                ));
            }
            Some(clients) => Connections::Shared {
                clients,
                username: mqtt.username.clone(),
                password: mqtt
                    .password_env
                    .as_deref()
                    .map(|name| secret("mqtt.password_env", name))
                    .transpose()?,
            },
            None => {
                if mqtt.username.is_some() || mqtt.password_env.is_some() {
                    return Err(LoadgenConfigError::new(
                        "mqtt.username",
                        "a user name and password are for shared connections: set \
                         mqtt.clients, or use mqtt.device_secret_env for one connection per \
                         device",
                    ));
                }
                Connections::PerDevice {
                    secret: mqtt
                        .device_secret_env
                        .as_deref()
                        .map(|name| secret("mqtt.device_secret_env", name))
                        .transpose()?,
                }
            }
        };
        let qos = match mqtt.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            other => {
                return Err(LoadgenConfigError::new(
                    "mqtt.qos",
                    format!("{other} is not supported: use 0 or 1"),
                ));
            }
        };
        let mut target = Target::parse(&self.to, connections, mqtt.ca_file.clone())?;
        if let Target::Mqtt(mqtt) = &mut target {
            mqtt.qos = qos;
        }
        let plan = LoadPlan {
            fleet: FleetConfig {
                devices: self.devices,
                rate_per_device: self.rate_per_s / self.devices as f64,
                seed: self.seed,
                start_ms: self.start_ms.unwrap_or(now_ms),
                ..FleetConfig::default()
            },
            span_ms: (self.duration_s * 1000.0) as u64,
            paced: self.paced,
            drain_timeout: Duration::from_secs_f64(self.drain_timeout_s),
        };
        Ok((plan, target))
    }
}

fn positive(
    field: &'static str,
    value: f64,
    zero_fits: bool,
    default: &str,
) -> Result<(), LoadgenConfigError> {
    if value.is_finite() && (value > 0.0 || (zero_fits && value == 0.0)) {
        return Ok(());
    }
    let bound = if zero_fits { "at least 0" } else { "above 0" };
    Err(LoadgenConfigError::new(
        field,
        format!("is {value} but must be a finite number {bound} (default {default})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_file_target_with_defaults_plans_the_default_fleet_from_now() {
        let (plan, target) = LoadgenConfig::to("file:/tmp/out.jsonl")
            .resolve(no_env, 1_700_000_000_000)
            .unwrap();
        assert!(matches!(target, Target::File(path) if path.ends_with("out.jsonl")));
        assert_eq!(plan.fleet.devices, 1_000);
        assert_eq!(plan.fleet.rate_per_device, 1.0);
        assert_eq!(plan.fleet.start_ms, 1_700_000_000_000);
        assert_eq!(plan.span_ms, 60_000);
        assert!(plan.paced);
    }

    #[test]
    fn each_unusable_field_is_named() {
        let base = LoadgenConfig::to("mqtt://127.0.0.1:1883");
        let cases: Vec<(LoadgenConfig, &str)> = vec![
            (
                LoadgenConfig {
                    devices: 0,
                    ..base.clone()
                },
                "devices",
            ),
            (
                LoadgenConfig {
                    rate_per_s: f64::NAN,
                    ..base.clone()
                },
                "rate_per_s",
            ),
            (
                LoadgenConfig {
                    duration_s: -5.0,
                    ..base.clone()
                },
                "duration_s",
            ),
            (
                LoadgenConfig {
                    mqtt: LoadgenMqttConfig {
                        qos: 2,
                        ..Default::default()
                    },
                    ..base.clone()
                },
                "mqtt.qos",
            ),
            (
                LoadgenConfig {
                    mqtt: LoadgenMqttConfig {
                        username: Some("fleet".into()),
                        ..Default::default()
                    },
                    ..base.clone()
                },
                "mqtt.username",
            ),
            (
                LoadgenConfig {
                    mqtt: LoadgenMqttConfig {
                        clients: Some(4),
                        password_env: Some("IOTPIPE_TEST_UNSET_PASSWORD".into()),
                        ..Default::default()
                    },
                    ..base.clone()
                },
                "mqtt.password_env",
            ),
            (LoadgenConfig::to("amqp://127.0.0.1"), "to"),
            (LoadgenConfig::to("mqtts://127.0.0.1"), "to"),
            (
                LoadgenConfig {
                    mqtt: LoadgenMqttConfig {
                        ca_file: Some("ca.pem".into()),
                        ..Default::default()
                    },
                    ..LoadgenConfig::to("file:/tmp/out.jsonl")
                },
                "mqtt.ca_file",
            ),
            (
                LoadgenConfig {
                    mqtt: LoadgenMqttConfig {
                        ca_file: Some("ca.pem".into()),
                        ..Default::default()
                    },
                    ..base.clone()
                },
                "mqtt.ca_file",
            ),
        ];
        for (config, field) in cases {
            let error = config.resolve(no_env, 0).unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error = toml::from_str::<LoadgenConfig>("to = \"file:x\"\nrate = 5.0\n").unwrap_err();
        assert!(
            error.to_string().contains("unknown field `rate`"),
            "{error}"
        );
    }
}
