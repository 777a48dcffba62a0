//! MQTT connections (v5, through rumqttc): broker address, identity, credentials and TLS, shared
//! by the bridge and the load generator.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::v5::MqttOptions;
use rumqttc::{TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};

use crate::io::connect::secret::Secret;
pub use crate::io::connect::tls::TlsConfig;

/// How to reach an MQTT broker and who to be there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConnectionConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (1883 plain, 8883 with TLS by convention).
    #[serde(default = "default_port")]
    pub port: u16,
    /// The client identifier. A persistent session belongs to it: give each process its own,
    /// stable across restarts.
    pub client_id: String,
    /// User name, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// The password. Prefer `password_env` or `password_file` over writing it here.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file holding the password (trailing newline ignored), e.g. a mounted secret.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS; none: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Seconds between keep-alive pings; the broker drops the connection after 1.5 times this
    /// without traffic.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
}

fn default_port() -> u16 {
    1883
}

fn default_keep_alive_s() -> u64 {
    30
}

/// An MQTT configuration that cannot be used; names the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum MqttConfigError {
    /// A field's value cannot work.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl MqttConnectionConfig {
    /// A plain-TCP connection without credentials.
    pub fn plain(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            client_id: client_id.into(),
            username: None,
            password: None,
            password_env: None,
            password_file: None,
            tls: None,
            keep_alive_s: default_keep_alive_s(),
        }
    }

    /// The password from `password`, `password_env` or `password_file`, in that order; `env`
    /// looks variables up. Errors name `section`'s field.
    pub fn resolve_password(
        &self,
        section: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Secret>, MqttConfigError> {
        let invalid = |field: &str, message: String| MqttConfigError::Invalid {
            field: format!("{section}.{field}"),
            message,
        };
        if let Some(password) = &self.password {
            return Ok(Some(password.clone()));
        }
        if let Some(variable) = &self.password_env {
            return match env(variable) {
                Some(value) => Ok(Some(Secret(value))),
                None => Err(invalid(
                    "password_env",
                    format!("${variable} is not set: export it, or name another variable"),
                )),
            };
        }
        if let Some(path) = &self.password_file {
            return match std::fs::read_to_string(path) {
                Ok(text) => Ok(Some(Secret(text.trim_end_matches(['\r', '\n']).to_owned()))),
                Err(e) => Err(invalid("password_file", format!("{}: {e}", path.display()))),
            };
        }
        Ok(None)
    }

    /// rumqttc v5 options for this connection, with `password` (see
    /// [`resolve_password`](Self::resolve_password)); persistent-session and flow-control
    /// settings are the caller's. Errors name `section`'s field.
    pub fn options(
        &self,
        section: &str,
        password: Option<&Secret>,
    ) -> Result<MqttOptions, MqttConfigError> {
        let invalid = |field: &str, message: &str| MqttConfigError::Invalid {
            field: format!("{section}.{field}"),
            message: message.to_owned(),
        };
        if self.host.trim().is_empty() {
            return Err(invalid("host", "is empty: set the broker's host name"));
        }
        if self.client_id.is_empty() {
            return Err(invalid(
                "client_id",
                "is empty: give each process a stable identifier of its own",
            ));
        }
        if self.keep_alive_s < 5 {
            return Err(invalid("keep_alive_s", "must be at least 5 (seconds)"));
        }
        if password.is_some() && self.username.is_none() {
            return Err(invalid(
                "username",
                "is missing: a password is set, so the broker expects a user name too",
            ));
        }
        let mut options = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        options.set_keep_alive(Duration::from_secs(self.keep_alive_s));
        if let Some(user) = &self.username {
            let password = password.map(|p| p.0.clone()).unwrap_or_default();
            options.set_credentials(user.clone(), password);
        }
        if let Some(tls_config) = &self.tls {
            let tls_invalid = |field: &str, message: String| MqttConfigError::Invalid {
                field: format!("{section}.tls.{field}"),
                message,
            };
            if tls_config.server_name.is_some() {
                return Err(tls_invalid(
                    "server_name",
                    "is for HTTP only: MQTT checks the certificate against `host`".into(),
                ));
            }
            let client_config = tls_config
                .client_config()
                .map_err(|e| tls_invalid(e.field, e.message))?;
            options.set_transport(Transport::Tls(TlsConfiguration::Rustls(client_config)));
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let mut config = MqttConnectionConfig::plain("localhost", 1883, "c");
        config.username = Some("bridge".into());
        config.password = Some(Secret("hunter2".into()));
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn passwords_come_from_the_first_source_set_and_name_the_field_when_missing() {
        let mut config = MqttConnectionConfig::plain("localhost", 1883, "c");
        assert_eq!(config.resolve_password("mqtt", |_| None).unwrap(), None);
        config.password_env = Some("PW".into());
        let found = config
            .resolve_password("mqtt", |v| (v == "PW").then(|| "s3".to_owned()))
            .unwrap();
        assert_eq!(found, Some(Secret("s3".into())));
        let error = config.resolve_password("mqtt", |_| None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "mqtt.password_env: $PW is not set: export it, or name another variable"
        );
        let error = config.options("mqtt", found.as_ref()).unwrap_err();
        assert!(error.to_string().starts_with("mqtt.username: is missing"));
    }

    #[test]
    fn a_missing_ca_file_names_the_field() {
        let mut config = MqttConnectionConfig::plain("localhost", 8883, "c");
        config.tls = Some(TlsConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            ..TlsConfig::default()
        });
        let error = config.options("mqtt", None).unwrap_err().to_string();
        assert!(
            error.starts_with("mqtt.tls.ca_file: /nonexistent/ca.pem"),
            "{error}"
        );
    }
}
