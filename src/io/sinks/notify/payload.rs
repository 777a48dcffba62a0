//! What a webhook sends: the alert event's own JSON, a Slack message, or a PagerDuty Events v2
//! event, each made from the `alerts.jsonl` line.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::dataflow::schema::format_rfc3339_ms;

/// A webhook's payload shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The alert event as `alerts.jsonl` has it.
    #[default]
    Json,
    /// A Slack incoming-webhook message (`text`, and `blocks` with the details): also what
    /// Mattermost and Rocket.Chat incoming webhooks take.
    Slack,
    /// A PagerDuty Events API v2 event (`trigger` or `resolve`, deduplicated by the alert's
    /// id); the URL is `https://events.pagerduty.com/v2/enqueue`, the routing key from
    /// `routing_key_env`.
    Pagerduty,
}

/// The body of `event` (an `alerts.jsonl` line, `json` its text) in `format`.
pub fn body(format: WebhookFormat, event: &Value, json: &str, routing_key: Option<&str>) -> String {
    match format {
        WebhookFormat::Json => json.to_owned(),
        WebhookFormat::Slack if event.get("group").is_some() => slack_group(event).to_string(),
        WebhookFormat::Slack => slack(event).to_string(),
        WebhookFormat::Pagerduty => pagerduty(event, routing_key.unwrap_or_default()).to_string(),
    }
}

fn text(event: &Value, name: &str) -> String {
    event[name].as_str().unwrap_or("-").to_owned()
}

/// What the alert is about: its device, else its site.
fn subject(event: &Value) -> String {
    event["device_id"]
        .as_str()
        .map_or_else(|| format!("site {}", text(event, "site")), str::to_owned)
}

/// One line: severity, event, rule, subject, cause, metric and value.
fn summary(event: &Value) -> String {
    let metric = event["metric"]
        .as_str()
        .map(|m| format!(" {m}"))
        .unwrap_or_default();
    let value = event["value"]
        .as_f64()
        .map(|v| format!(" = {v}"))
        .unwrap_or_default();
    format!(
        "[{}] {} {}: {} ({}){metric}{value}",
        text(event, "severity").to_uppercase(),
        text(event, "event"),
        text(event, "rule"),
        subject(event),
        text(event, "cause"),
    )
}

fn slack(event: &Value) -> Value {
    let place = ["org", "site", "building"]
        .iter()
        .filter_map(|k| event[*k].as_str().filter(|v| !v.is_empty()))
        .collect::<Vec<_>>()
        .join(" / ");
    let when = format_rfc3339_ms(event["ts_ms"].as_u64().unwrap_or(0));
    json!({
        "text": summary(event),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*", summary(event))}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": format!("{place} · {when} · alert `{}`", text(event, "alert_id"))}
            ]}
        ],
    })
}

/// Subjects a grouped Slack message names at most.
const GROUP_NAMED: usize = 20;

/// One message for a group of events (see `Notification::group`): how many, of what, where,
/// and the first subjects.
fn slack_group(group: &Value) -> Value {
    let events = group["events"].as_array().cloned().unwrap_or_default();
    let head = &group["group"];
    let severity = events
        .iter()
        .filter_map(|e| e["severity"].as_str())
        .max_by_key(|s| {
            ["warning", "minor", "major", "critical"]
                .iter()
                .position(|k| k == s)
        })
        .unwrap_or("-")
        .to_uppercase();
    let line = format!(
        "[{severity}] {} alerts {} at site {} ({})",
        events.len(),
        head["event"].as_str().unwrap_or("-"),
        head["site"].as_str().unwrap_or("-"),
        head["cause"].as_str().unwrap_or("-"),
    );
    let mut named: Vec<String> = events.iter().take(GROUP_NAMED).map(summary).collect();
    if events.len() > GROUP_NAMED {
        named.push(format!("… and {} more", events.len() - GROUP_NAMED));
    }
    json!({
        "text": line,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{line}*")}},
            {"type": "section", "text": {"type": "mrkdwn", "text": named.join("\n")}},
        ],
    })
}

fn pagerduty(event: &Value, routing_key: &str) -> Value {
    let action = if event["event"] == "resolved" {
        "resolve"
    } else {
        "trigger"
    };
    // PagerDuty's four severities.
    let severity = match event["severity"].as_str() {
        Some("critical") => "critical",
        Some("major") => "error",
        Some("minor") | Some("warning") => "warning",
        _ => "info",
    };
    json!({
        "routing_key": routing_key,
        "event_action": action,
        // Every event of one alert updates one incident.
        "dedup_key": event["alert_id"],
        "payload": {
            "summary": summary(event),
            "source": subject(event),
            "severity": severity,
            "timestamp": format_rfc3339_ms(event["ts_ms"].as_u64().unwrap_or(0)),
            "component": event["metric"],
            "group": event["site"],
            "class": event["cause"],
            "custom_details": event,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str) -> Value {
        json!({
            "id": "dev-1/m0/threshold/0/opened/0", "alert_id": "dev-1/m0/threshold/0",
            "event": kind, "device_id": "dev-1", "site": "s1", "org": "acme", "building": "B1",
            "metric": "temperature", "rule": "hot", "severity": "major", "cause": "threshold",
            "ts_ms": 1_704_067_200_000_u64, "score": null, "value": 41.5,
        })
    }

    #[test]
    fn slack_gets_a_line_and_the_place() {
        let body: Value =
            serde_json::from_str(&body(WebhookFormat::Slack, &event("opened"), "", None)).unwrap();
        assert_eq!(
            body["text"],
            "[MAJOR] opened hot: dev-1 (threshold) temperature = 41.5"
        );
        let context = body["blocks"][1]["elements"][0]["text"].as_str().unwrap();
        assert!(
            context.starts_with("acme / s1 / B1 · 2024-01-01T00:00:00.000Z"),
            "{context}"
        );
    }

    #[test]
    fn slack_gets_one_message_for_a_group() {
        let events: Vec<Value> = (0..25).map(|_| event("opened")).collect();
        let group = json!({"group": {"site": "s1", "cause": "threshold", "event": "opened",
                                      "count": 25}, "events": events});
        let body: Value =
            serde_json::from_str(&body(WebhookFormat::Slack, &group, "", None)).unwrap();
        assert_eq!(
            body["text"],
            "[MAJOR] 25 alerts opened at site s1 (threshold)"
        );
        let list = body["blocks"][1]["text"]["text"].as_str().unwrap();
        assert_eq!(list.lines().count(), 21, "{list}");
        assert!(list.ends_with("… and 5 more"), "{list}");
    }

    #[test]
    fn pagerduty_triggers_and_resolves_one_incident_per_alert() {
        let trigger: Value = serde_json::from_str(&body(
            WebhookFormat::Pagerduty,
            &event("opened"),
            "",
            Some("KEY"),
        ))
        .unwrap();
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["routing_key"], "KEY");
        assert_eq!(trigger["dedup_key"], "dev-1/m0/threshold/0");
        assert_eq!(trigger["payload"]["severity"], "error");
        assert_eq!(trigger["payload"]["source"], "dev-1");
        let resolve: Value = serde_json::from_str(&body(
            WebhookFormat::Pagerduty,
            &event("resolved"),
            "",
            Some("KEY"),
        ))
        .unwrap();
        assert_eq!(resolve["event_action"], "resolve");
        assert_eq!(resolve["dedup_key"], trigger["dedup_key"]);
    }
}
