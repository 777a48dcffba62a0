//! Webhook: an HTTP POST of each alert event (its JSON, a Slack message or a PagerDuty event),
//! signed with HMAC-SHA256.

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::Request;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::payload::{WebhookFormat, body};
use super::{Backoff, Channel, ChannelConfigError, Failure, Notification, send_http};
use crate::dataflow::alert::Severity;
use crate::io::connect::http::{HttpConnection, HttpEndpoint};
use crate::io::connect::tls::TlsConfig;

/// A webhook receiver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The channel's name (ledger file name, logs).
    pub name: String,
    /// `http://host:port/path` or `https://...`.
    pub url: String,
    /// TLS for an `https` url: the certificate authorities to trust (without this section, the
    /// system's), a client certificate, the name on the receiver's certificate.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Name of the environment variable holding the signing secret (secrets stay out of
    /// config files and logs). Without one, requests are not signed.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Per-request timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// At most this many requests per second.
    #[serde(default = "default_rate")]
    pub max_per_second: f64,
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
    /// The payload: `json` (the alert event), `slack` or `pagerduty` (see [`WebhookFormat`]).
    #[serde(default)]
    pub format: WebhookFormat,
    /// For `format = "pagerduty"`: the environment variable holding the integration's routing
    /// key.
    #[serde(default)]
    pub routing_key_env: Option<String>,
    /// Events of one site, cause and kind that come within this long of the first go in one
    /// request (`json`: `{"group": {site, cause, event, count}, "events": [...]}`; `slack`: one
    /// message naming them), so a storm is a few requests; 0: one request per event. Not with
    /// `pagerduty`, which takes one event per alert and groups incidents itself.
    #[serde(default)]
    pub group_wait_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5_000
}

fn default_rate() -> f64 {
    20.0
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`: the `X-Iotpipe-Signature`
/// header, which receivers recompute to check the sender.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The webhook channel.
pub struct WebhookChannel {
    config: WebhookConfig,
    http: HttpConnection,
    path: String,
    secret: Option<Vec<u8>>,
    routing_key: Option<String>,
    next_send: tokio::time::Instant,
}

impl WebhookChannel {
    /// Checks the configuration: an `http` or `https` URL, TLS files that can be read, a
    /// secret variable that is set.
    pub fn new(config: WebhookConfig) -> Result<Self, ChannelConfigError> {
        let invalid = |field: &str, message: String| ChannelConfigError {
            kind: "webhook",
            channel: config.name.clone(),
            field: field.to_owned(),
            message,
        };
        let endpoint = HttpEndpoint::parse(&config.url, config.tls.as_ref())
            .map_err(|e| invalid(&e.field, e.message))?;
        let path = endpoint.path().to_owned();
        let secret = match &config.secret_env {
            None => None,
            Some(var) => Some(
                std::env::var(var)
                    .map_err(|_| invalid("secret_env", format!("${var} is not set")))?
                    .into_bytes(),
            ),
        };
        let routing_key = match (config.format, &config.routing_key_env) {
            (WebhookFormat::Pagerduty, None) => {
                return Err(invalid(
                    "routing_key_env",
                    "is needed with format = \"pagerduty\": name the variable holding the routing key".into(),
                ));
            }
            (WebhookFormat::Pagerduty, Some(var)) => Some(
                std::env::var(var)
                    .map_err(|_| invalid("routing_key_env", format!("${var} is not set")))?,
            ),
            _ => None,
        };
        if config.group_wait_ms > 0 && config.format == WebhookFormat::Pagerduty {
            return Err(invalid(
                "group_wait_ms",
                "must be 0 with format = \"pagerduty\" (PagerDuty takes one event per alert)"
                    .into(),
            ));
        }
        if !(config.max_per_second.is_finite() && config.max_per_second > 0.0) {
            return Err(invalid(
                "max_per_second",
                "must be a finite number above 0".into(),
            ));
        }
        Ok(Self {
            http: HttpConnection::to(endpoint),
            path,
            secret,
            routing_key,
            next_send: tokio::time::Instant::now(),
            config,
        })
    }
}

impl Channel for WebhookChannel {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn min_severity(&self) -> Severity {
        self.config.min_severity
    }
    fn overdue_only(&self) -> bool {
        self.config.overdue_only
    }
    fn group_wait(&self) -> Option<Duration> {
        (self.config.group_wait_ms > 0).then(|| Duration::from_millis(self.config.group_wait_ms))
    }

    async fn deliver(&mut self, n: &Notification) -> Result<(), Failure> {
        // The rate limit: one request per 1/max_per_second, retries included.
        tokio::time::sleep_until(self.next_send).await;
        self.next_send =
            tokio::time::Instant::now() + Duration::from_secs_f64(1.0 / self.config.max_per_second);
        let mut request = Request::post(&self.path)
            .header(hyper::header::HOST, self.http.authority())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("x-iotpipe-event-id", &n.id);
        let payload = match self.config.format {
            WebhookFormat::Json => n.json.clone(),
            format => {
                let event: serde_json::Value = serde_json::from_str(&n.json)
                    .map_err(|e| Failure::record(format!("not an alert event: {e}")))?;
                body(format, &event, &n.json, self.routing_key.as_deref())
            }
        };
        if let Some(secret) = &self.secret {
            request = request.header("x-iotpipe-signature", signature(secret, payload.as_bytes()));
        }
        let request = request
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| Failure::record(format!("request: {e}")))?;
        let timeout = Duration::from_millis(self.config.timeout_ms);
        send_http(&mut self.http, request, timeout, |status| match status {
            // A receiver that checks signatures answers so to a wrong secret.
            401 | 403 => "secret_env (the receiver refused the request's signature or sender)",
            _ => "url",
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bad_urls_and_missing_secrets_are_named() {
        let config = WebhookConfig {
            name: "ops".into(),
            url: "ftp://example.org/hook".into(),
            tls: None,
            secret_env: None,
            timeout_ms: 1000,
            max_per_second: 1.0,
            min_severity: Severity::Warning,
            overdue_only: false,
            group_wait_ms: 0,
            backoff: Backoff::default(),
            format: WebhookFormat::Json,
            routing_key_env: None,
        };
        let err = WebhookChannel::new(config.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("webhook `ops`: url"), "{err}");
        let err = WebhookChannel::new(WebhookConfig {
            url: "http://127.0.0.1:9/hook".into(),
            secret_env: Some("IOTPIPE_TEST_SECRET_THAT_IS_NOT_SET".into()),
            ..config
        })
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("webhook `ops`: secret_env"), "{err}");
    }
}
