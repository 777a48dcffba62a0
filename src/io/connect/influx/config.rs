//! The `[influx]` configuration: where to write, through which API, and how to batch.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde::{Deserialize, Serialize};

use crate::io::connect::http::{HttpConnection, HttpEndpoint};
use crate::io::connect::influx::write::InfluxApi;
use crate::io::connect::secret::Secret;
use crate::io::connect::tls::TlsConfig;
use crate::io::support::backoff::Backoff;
use crate::io::support::failure::FailureClass;

/// Which HTTP API to write with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiChoice {
    /// Ask `GET /ping` which version answers (`X-Influxdb-Version`).
    #[default]
    Auto,
    /// InfluxDB 1.x: `/write`, database and retention policy, basic authentication.
    V1,
    /// InfluxDB 2.x and 3.x: `/api/v2/write`, org and bucket, token authentication.
    V2,
}

/// Where and how iotpipe writes to InfluxDB.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT` of InfluxDB (Cloud and 3.x are https only).
    pub url: String,
    /// TLS for an `https` url: the certificate authorities to trust (without this section, the
    /// system's), a client certificate, the name on the server's certificate.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// `v1`, `v2` (2.x and 3.x) or `auto` (ask `/ping`; the default).
    #[serde(default)]
    pub api: ApiChoice,
    /// 1.x: the database (created if missing); 2.x: the bucket; 3.x: the database.
    #[serde(default = "default_database")]
    pub database: String,
    /// 1.x: the retention policy (default: the database's default).
    #[serde(default)]
    pub retention_policy: Option<String>,
    /// 1.x: the user name, when authentication is on.
    #[serde(default)]
    pub username: Option<String>,
    /// 1.x: its password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// 2.x: the organisation (3.x needs none).
    #[serde(default)]
    pub org: Option<String>,
    /// 2.x and 3.x: the API token.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Points per request, at most.
    #[serde(default = "default_batch_points")]
    pub batch_points: usize,
    /// The longest a point waits for its batch to fill before the batch is sent, ms.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Requests in flight at once, per process.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Full batches waiting for a request, per process and lane (readings, the rest); when a
    /// lane's are all taken the dataflow stops reading until InfluxDB catches up.
    #[serde(default = "default_queue_batches")]
    pub queue_batches: usize,
    /// Compress request bodies (gzip, fast level): a fifth of the bytes on a network, but CPU
    /// on both ends, which costs more than it saves when InfluxDB shares the machine.
    #[serde(default = "default_gzip")]
    pub gzip: bool,
    /// Time limit of one request, ms (then it is retried).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Waits between retries.
    #[serde(default)]
    pub backoff: Backoff,
    /// How long a stopping command (`demo` at its end, `replay`, `demo` or `run` on SIGTERM or
    /// Ctrl-C) waits while InfluxDB takes nothing before it gives up on what is still
    /// unwritten and says how many points that is, ms (until then outages are waited out). At
    /// least `timeout_ms`: one slow request is not an outage.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

fn default_database() -> String {
    "iotpipe".into()
}
fn default_batch_points() -> usize {
    5_000
}
fn default_linger_ms() -> u64 {
    50
}
fn default_max_in_flight() -> usize {
    2
}
fn default_queue_batches() -> usize {
    8
}
fn default_gzip() -> bool {
    true
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_drain_timeout_ms() -> u64 {
    20_000
}

/// An `[influx]` section that cannot work; the message names the field and the fix.
#[derive(Debug, thiserror::Error)]
#[error("influx.{field}: {message}")]
pub struct InfluxConfigError {
    /// The field.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl InfluxConfig {
    /// The defaults for `url`, InfluxDB 1.x or later, database `iotpipe`.
    pub fn for_url(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            tls: None,
            api: ApiChoice::Auto,
            database: default_database(),
            retention_policy: None,
            username: None,
            password: None,
            org: None,
            token: None,
            batch_points: default_batch_points(),
            linger_ms: default_linger_ms(),
            max_in_flight: default_max_in_flight(),
            queue_batches: default_queue_batches(),
            gzip: default_gzip(),
            timeout_ms: default_timeout_ms(),
            backoff: Backoff::default(),
            drain_timeout_ms: default_drain_timeout_ms(),
        }
    }

    /// Checks every field, which needs no server; returns where to connect (the URL with its
    /// TLS settings, certificate files read), so that starting does not read them again.
    pub fn validate(&self) -> Result<HttpEndpoint, InfluxConfigError> {
        let invalid = |field: &str, message: &str| {
            Err(InfluxConfigError {
                field: field.to_owned(),
                message: message.to_owned(),
            })
        };
        let endpoint = self.endpoint()?;
        // They go into the Authorization header, which cannot hold control characters: a
        // trailing newline from an env file is the usual cause.
        let credentials = [
            ("username", self.username.as_deref()),
            ("password", self.password.as_ref().map(|p| p.0.as_str())),
            ("token", self.token.as_ref().map(|t| t.0.as_str())),
        ];
        for (field, value) in credentials {
            if value.is_some_and(|v| v.chars().any(char::is_control)) {
                return invalid(
                    field,
                    "holds a control character (a trailing newline?): remove it",
                );
            }
        }
        if self.batch_points == 0 {
            return invalid("batch_points", "must be at least 1 (default 5000)");
        }
        if self.max_in_flight == 0 {
            return invalid("max_in_flight", "must be at least 1 (default 2)");
        }
        if self.queue_batches == 0 {
            return invalid("queue_batches", "must be at least 1 (default 8)");
        }
        if self.timeout_ms == 0 {
            return invalid("timeout_ms", "must be at least 1 (default 10000)");
        }
        if self.drain_timeout_ms < self.timeout_ms {
            return Err(InfluxConfigError {
                field: "drain_timeout_ms".into(),
                message: format!(
                    "is {} but must be at least timeout_ms ({}): one slow request would count as \
                     InfluxDB gone (default 20000)",
                    self.drain_timeout_ms, self.timeout_ms
                ),
            });
        }
        Ok(endpoint)
    }

    /// Where the writers and readers connect, checked: `http(s)://HOST:PORT` and no path.
    pub fn endpoint(&self) -> Result<HttpEndpoint, InfluxConfigError> {
        let endpoint =
            HttpEndpoint::parse(&self.url, self.tls.as_ref()).map_err(|e| InfluxConfigError {
                field: e.field,
                message: e.message,
            })?;
        if endpoint.path() != "/" {
            return Err(InfluxConfigError {
                field: "url".into(),
                message: format!(
                    "{:?}: use http(s)://HOST:PORT, without a path (the API's paths are \
                     iotpipe's)",
                    self.url
                ),
            });
        }
        Ok(endpoint)
    }

    /// The request time limit.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The API to write with: `api`, or with `auto` the one `/ping` at `endpoint` names
    /// (asked for up to `timeout_ms`, so a server still starting is waited for).
    pub async fn resolve(&self, endpoint: &HttpEndpoint) -> Result<InfluxApi, InfluxConfigError> {
        let major = match self.api {
            ApiChoice::V1 => 1,
            ApiChoice::V2 => 2,
            ApiChoice::Auto => self.ping_major_version(endpoint).await?,
        };
        if major == 1 {
            return Ok(InfluxApi::V1 {
                database: self.database.clone(),
                retention_policy: self.retention_policy.clone(),
                username: self.username.clone(),
                password: self.password.clone(),
            });
        }
        let Some(token) = self.token.clone() else {
            return Err(InfluxConfigError {
                field: "token".into(),
                message: format!(
                    "InfluxDB {major}.x at {} needs an API token: set influx.token",
                    self.url
                ),
            });
        };
        Ok(InfluxApi::V2 {
            org: self.org.clone().unwrap_or_default(),
            bucket: self.database.clone(),
            token,
        })
    }

    async fn ping_major_version(&self, endpoint: &HttpEndpoint) -> Result<u32, InfluxConfigError> {
        let authority = endpoint.authority().to_owned();
        let mut http = HttpConnection::to(endpoint.clone());
        let deadline = tokio::time::Instant::now() + self.timeout();
        let mut attempt = 0;
        let failure = loop {
            let request = Request::get("/ping")
                .header(hyper::header::HOST, &authority)
                .body(Full::new(Bytes::new()))
                .expect("a valid request");
            let failure = match http.send_with_headers(request, self.timeout()).await {
                Ok((status, headers, _)) if status.is_success() => {
                    let version = headers
                        .get("x-influxdb-version")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    match major_version(version) {
                        Some(major) => {
                            tracing::info!(url = %self.url, version, "influxdb answered /ping");
                            return Ok(major);
                        }
                        None => format!("/ping named no version ({version:?})"),
                    }
                }
                Ok((status, _, _)) => format!("/ping answered HTTP {status}"),
                // An untrusted certificate or an answer that is not HTTP: no wait mends it.
                Err(e) if e.class() == FailureClass::Sink => {
                    return Err(InfluxConfigError {
                        field: e.field().into(),
                        message: format!("{e} (asking {}/ping)", self.url),
                    });
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                break failure;
            }
            tokio::time::sleep(self.backoff.wait(attempt)).await;
            attempt += 1;
        };
        Err(InfluxConfigError {
            field: "api".into(),
            message: format!(
                "cannot tell the InfluxDB version at {}: {failure}; set influx.api to \"v1\" or \
                 \"v2\" to start without asking",
                self.url
            ),
        })
    }
}

/// The major version in an `X-Influxdb-Version` header (`1.6.7`, `v2.7.1`, `3.0.1`).
fn major_version(header: &str) -> Option<u32> {
    let digits: String = header
        .trim_start_matches('v')
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|major| *major >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_every_release_line_are_read() {
        assert_eq!(major_version("1.6.7"), Some(1));
        assert_eq!(major_version("v2.7.1"), Some(2));
        assert_eq!(major_version("3.0.1"), Some(3));
        assert_eq!(major_version(""), None);
        assert_eq!(major_version("OSS"), None);
    }

    #[test]
    fn credentials_and_urls_that_cannot_be_sent_are_named() {
        let mut config = InfluxConfig::for_url("http://h:1");
        config.token = Some(crate::io::connect::secret::Secret("t0k3n\n".into()));
        let error = config.validate().unwrap_err();
        assert_eq!(error.field, "token");
        assert!(
            !error.to_string().contains("t0k3n"),
            "the secret is not shown"
        );
        config.token = None;
        config.username = Some("ad\rmin".into());
        assert_eq!(config.validate().unwrap_err().field, "username");
        let config = InfluxConfig::for_url("http://bad host:1");
        assert_eq!(config.validate().unwrap_err().field, "url");
    }

    #[test]
    fn unknown_fields_and_bad_numbers_are_named() {
        let error = toml::from_str::<InfluxConfig>("url = \"http://h:1\"\nbatch = 3\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `batch`"), "{error}");
        let mut config: InfluxConfig = toml::from_str("url = \"http://h:1\"").unwrap();
        assert_eq!(config, InfluxConfig::for_url("http://h:1"));
        config.batch_points = 0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("influx.batch_points:")
        );
        // Shorter than one request: one slow request would count as InfluxDB gone.
        let config = InfluxConfig {
            timeout_ms: 30_000,
            ..InfluxConfig::for_url("http://h:1")
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("influx.drain_timeout_ms: is 20000 but must be at least timeout_ms"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn v2_without_a_token_is_refused_by_name() {
        let mut config = InfluxConfig::for_url("http://127.0.0.1:1");
        config.api = ApiChoice::V2;
        let endpoint = config.validate().unwrap();
        let error = config.resolve(&endpoint).await.unwrap_err();
        assert_eq!(error.field, "token");
    }
}
