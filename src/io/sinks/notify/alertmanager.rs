//! Prometheus Alertmanager: alert events as Alertmanager alerts (`POST /api/v2/alerts`), so
//! that users who route with Alertmanager (grouping, inhibition, silences, receivers for
//! PagerDuty, Slack, e-mail) get iotpipe's alerts there.
//!
//! Alertmanager expects its clients to post firing alerts again and again: an alert not posted
//! for a while ends by itself at its `endsAt`. So, as Prometheus does, every post of an open
//! alert says it ends [`ENDS_AFTER_RESENDS`] resend intervals from now, and the channel posts
//! its open alerts again every `resend_interval_ms` (between events too). If iotpipe stops,
//! its alerts end in Alertmanager a few intervals later instead of firing forever. A resolved
//! event posts the alert with `endsAt` at the event's time.
//!
//! Labels identify an alert in Alertmanager: `alertname` (the rule), `severity`, `cause`,
//! `org`, `site`, `building`, `device_id` and `metric` (those an alert has), and the channel's
//! own `labels`. An escalation changes the severity, so it ends the alert under its old labels
//! and starts it under the new ones. Annotations carry the value, the score, the alert's id
//! and the event's id (the idempotency key every channel sends).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Backoff, Channel, ChannelConfigError, Failure, Notification, send_http};
use crate::dataflow::alert::Severity;
use crate::dataflow::schema::format_rfc3339_ms;
use crate::io::connect::http::{HttpConnection, HttpEndpoint};
use crate::io::connect::tls::TlsConfig;

/// An open alert's `endsAt` is this many resend intervals after each post.
pub const ENDS_AFTER_RESENDS: u32 = 4;

/// An Alertmanager.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// The channel's name (ledger file name, logs).
    pub name: String,
    /// Alertmanager's address, `http://host:9093` or `https://...` (alerts go to
    /// `/api/v2/alerts` under it).
    pub url: String,
    /// TLS for an `https` url.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How often open alerts are posted again, ms (Alertmanager ends an alert that is not).
    #[serde(default = "default_resend_ms")]
    pub resend_interval_ms: u64,
    /// Labels added to every alert (an environment, a team), for routing.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The link each alert carries back to its source (`generatorURL`), for example the
    /// dashboard.
    #[serde(default)]
    pub generator_url: Option<String>,
    /// Per-request timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
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

fn default_resend_ms() -> u64 {
    60_000
}

fn default_timeout_ms() -> u64 {
    5_000
}

/// The Alertmanager channel.
pub struct AlertmanagerChannel {
    config: AlertmanagerConfig,
    http: HttpConnection,
    path: String,
    /// Open alerts as last posted, by alert id.
    open: BTreeMap<String, Value>,
    /// When the open alerts were last posted together.
    resent_at: tokio::time::Instant,
}

impl AlertmanagerChannel {
    /// Checks the configuration: an `http` or `https` URL, a resend interval, label names
    /// Alertmanager accepts.
    pub fn new(config: AlertmanagerConfig) -> Result<Self, ChannelConfigError> {
        let invalid = |field: &str, message: String| ChannelConfigError {
            kind: "alertmanager",
            channel: config.name.clone(),
            field: field.to_owned(),
            message,
        };
        let endpoint = HttpEndpoint::parse(&config.url, config.tls.as_ref())
            .map_err(|e| invalid(&e.field, e.message))?;
        let path = format!("{}/api/v2/alerts", endpoint.path().trim_end_matches('/'));
        if config.resend_interval_ms < 1_000 {
            return Err(invalid(
                "resend_interval_ms",
                format!(
                    "is {} but must be at least 1000 (default 60000)",
                    config.resend_interval_ms
                ),
            ));
        }
        if let Some(name) = config.labels.keys().find(|name| !is_label_name(name)) {
            return Err(invalid(
                "labels",
                format!("{name:?} is not a label name (letters, digits and _, not first a digit)"),
            ));
        }
        Ok(Self {
            http: HttpConnection::to(endpoint),
            path,
            open: BTreeMap::new(),
            resent_at: tokio::time::Instant::now(),
            config,
        })
    }

    fn resend_interval(&self) -> Duration {
        Duration::from_millis(self.config.resend_interval_ms)
    }

    /// `endsAt` of an open alert posted now.
    fn open_until(&self) -> String {
        rfc3339(SystemTime::now() + self.resend_interval() * ENDS_AFTER_RESENDS)
    }

    /// The Alertmanager alert of an `alerts.jsonl` event: labels, annotations, `startsAt`.
    fn alert_of(&self, event: &Value) -> Value {
        let mut labels = serde_json::Map::new();
        for (name, value) in &self.config.labels {
            labels.insert(name.clone(), json!(value));
        }
        labels.insert("alertname".into(), event["rule"].clone());
        for name in [
            "severity",
            "cause",
            "org",
            "site",
            "building",
            "device_id",
            "metric",
        ] {
            if let Some(value) = event[name].as_str().filter(|v| !v.is_empty()) {
                labels.insert(name.into(), json!(value));
            }
        }
        let mut annotations = serde_json::Map::new();
        annotations.insert("alert_id".into(), event["alert_id"].clone());
        annotations.insert("event_id".into(), event["id"].clone());
        for name in ["value", "score"] {
            if let Some(number) = event[name].as_f64() {
                annotations.insert(name.into(), json!(number.to_string()));
            }
        }
        let subject = event["device_id"]
            .as_str()
            .or(event["site"].as_str())
            .unwrap_or("-");
        annotations.insert(
            "summary".into(),
            json!(format!(
                "{} {} on {subject}: {}",
                event["severity"].as_str().unwrap_or("-"),
                event["rule"].as_str().unwrap_or("-"),
                event["cause"].as_str().unwrap_or("-"),
            )),
        );
        let mut alert = json!({
            "labels": labels,
            "annotations": annotations,
            "startsAt": format_rfc3339_ms(event["ts_ms"].as_u64().unwrap_or(0)),
        });
        if let Some(url) = &self.config.generator_url {
            alert["generatorURL"] = json!(url);
        }
        alert
    }

    async fn post(&mut self, alerts: &[Value]) -> Result<(), Failure> {
        let body = serde_json::to_vec(alerts).expect("alerts serialise");
        let request = Request::post(&self.path)
            .header(hyper::header::HOST, self.http.authority())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::record(format!("request: {e}")))?;
        let timeout = Duration::from_millis(self.config.timeout_ms);
        send_http(&mut self.http, request, timeout, |_| "url").await
    }

    /// Keeps an alert open, or forgets it once resolved.
    fn remember(&mut self, event: &Value, alert_id: String, alert: Value) {
        if event["event"] == "resolved" {
            self.open.remove(&alert_id);
        } else {
            self.open.insert(alert_id, alert);
        }
    }

    /// The open alerts, each ending a few resend intervals from now.
    fn open_alerts(&self) -> Vec<Value> {
        let until = self.open_until();
        self.open
            .values()
            .map(|alert| {
                let mut alert = alert.clone();
                alert["endsAt"] = json!(until);
                alert
            })
            .collect()
    }
}

impl Channel for AlertmanagerChannel {
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
        let event: Value = serde_json::from_str(&n.json)
            .map_err(|e| Failure::record(format!("not an alert event: {e}")))?;
        let alert_id = event["alert_id"].as_str().unwrap_or(&n.id).to_owned();
        let alert = self.alert_of(&event);
        let ends_at = format_rfc3339_ms(event["ts_ms"].as_u64().unwrap_or(0));
        // Open alerts due to be posted again go along (the idle resend waits for a quiet
        // moment that a busy channel may not have).
        let resend = self.resent_at.elapsed() >= self.resend_interval();
        let mut posts = if resend {
            self.open_alerts()
                .into_iter()
                .filter(|a| a["annotations"]["alert_id"] != alert_id.as_str())
                .collect()
        } else {
            Vec::new()
        };
        let previous = self.open.get(&alert_id);
        match event["event"].as_str() {
            Some("resolved") => {
                // Under the labels it was posted with (a resolved event's severity is the
                // alert's last).
                let mut ended = previous.cloned().unwrap_or(alert);
                ended["endsAt"] = json!(ends_at);
                posts.push(ended);
            }
            _ => {
                // An escalation ends the alert under its old labels.
                if let Some(old) = previous.filter(|old| old["labels"] != alert["labels"]) {
                    let mut ended = old.clone();
                    ended["endsAt"] = json!(ends_at);
                    posts.push(ended);
                }
                let mut firing = alert.clone();
                if let Some(old) = previous.filter(|old| old["labels"] == alert["labels"]) {
                    firing["startsAt"] = old["startsAt"].clone();
                }
                firing["endsAt"] = json!(self.open_until());
                posts.push(firing);
            }
        }
        self.post(&posts).await?;
        if resend {
            self.resent_at = tokio::time::Instant::now();
        }
        // Only once Alertmanager has it: a failed post is retried as a whole.
        let firing = posts.pop().expect("one alert at least");
        self.remember(&event, alert_id, firing);
        Ok(())
    }

    fn already_delivered(&mut self, n: &Notification) {
        let Ok(event) = serde_json::from_str::<Value>(&n.json) else {
            return;
        };
        let alert_id = event["alert_id"].as_str().unwrap_or(&n.id).to_owned();
        let alert = self.alert_of(&event);
        self.remember(&event, alert_id, alert);
    }

    fn idle_interval(&self) -> Option<Duration> {
        (!self.open.is_empty()).then(|| {
            self.resend_interval()
                .saturating_sub(self.resent_at.elapsed())
        })
    }

    async fn idle(&mut self) {
        if self.resent_at.elapsed() < self.resend_interval() || self.open.is_empty() {
            return;
        }
        let alerts = self.open_alerts();
        match self.post(&alerts).await {
            Ok(()) => self.resent_at = tokio::time::Instant::now(),
            // Tried again at the next interval; the alerts' `endsAt` leaves room for a few.
            Err(e) => {
                tracing::warn!(channel = %self.config.name, open = alerts.len(), error = %e, "could not post the open alerts again")
            }
        }
    }
}

/// Whether `name` is a Prometheus label name.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn rfc3339(time: SystemTime) -> String {
    let ms = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format_rfc3339_ms(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AlertmanagerConfig {
        AlertmanagerConfig {
            name: "am".into(),
            url: "http://127.0.0.1:9093".into(),
            tls: None,
            resend_interval_ms: 60_000,
            labels: BTreeMap::new(),
            generator_url: None,
            timeout_ms: 1_000,
            min_severity: Severity::default(),
            overdue_only: false,
            backoff: Backoff::default(),
        }
    }

    #[test]
    fn settings_that_cannot_work_are_named() {
        let error = |config| AlertmanagerChannel::new(config).err().unwrap().to_string();
        let bad_url = error(AlertmanagerConfig {
            url: "udp://host:9093".into(),
            ..config()
        });
        assert!(bad_url.starts_with("alertmanager `am`: url"), "{bad_url}");
        let too_often = error(AlertmanagerConfig {
            resend_interval_ms: 10,
            ..config()
        });
        assert!(too_often.contains("resend_interval_ms"), "{too_often}");
        let label = error(AlertmanagerConfig {
            labels: [("team-a".to_string(), "x".to_string())].into(),
            ..config()
        });
        assert!(label.contains("labels: \"team-a\""), "{label}");
    }

    #[test]
    fn an_event_becomes_an_alert_with_its_labels_and_annotations() {
        let channel = AlertmanagerChannel::new(AlertmanagerConfig {
            labels: [("env".to_string(), "prod".to_string())].into(),
            ..config()
        })
        .unwrap();
        let event = json!({
            "id": "s/site/0/opened/0", "alert_id": "s/site/0", "event": "opened",
            "site": "s", "org": "o", "building": "", "metric": null, "rule": "site-silent",
            "severity": "critical", "cause": "site", "ts_ms": 1_704_067_200_000_u64,
            "score": null, "value": 0.75,
        });
        let alert = channel.alert_of(&event);
        assert_eq!(
            alert["labels"],
            json!({"alertname": "site-silent", "severity": "critical", "cause": "site",
                   "org": "o", "site": "s", "env": "prod"})
        );
        assert_eq!(alert["annotations"]["value"], "0.75");
        assert_eq!(alert["annotations"]["event_id"], "s/site/0/opened/0");
        assert_eq!(alert["startsAt"], "2024-01-01T00:00:00.000Z");
    }
}
