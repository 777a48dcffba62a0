//! Alert state people act on: silences and acknowledgements (a gap-free log the dataflow
//! follows, see `migrations/0002_alert_state.sql`), and the alert events recorded, with each
//! alert's latest state.

use serde_json::{Value, json};

use super::{Store, StoreError};
use crate::dataflow::alert::control::{Acknowledgement, RulesChange, Silence, SilenceMatch};
use crate::dataflow::alert::{AlertConfig, AlertControl, AlertEventKind};

/// Which recorded alerts a list shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertFilter {
    /// `Some(true)`: open ones, `Some(false)`: resolved ones, `None`: both.
    pub open: Option<bool>,
    /// Only these fields' values: `site`, `building`, `severity`, `device_id`, `cause`,
    /// `rule`, `org`.
    pub fields: Vec<(&'static str, String)>,
}

/// The columns of `alerts` a list may be filtered on.
pub const ALERT_FILTER_FIELDS: [&str; 7] = [
    "site",
    "building",
    "severity",
    "device_id",
    "cause",
    "rule",
    "org",
];

/// An alert event that could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The line lacks a field an alert event has (it is not one).
    #[error("not an alert event: no `{0}`")]
    NotAnEvent(&'static str),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    StoreError::query(what)
}

/// Appends to the control log under its counter's lock; the entry's number.
async fn append_control(
    tx: &deadpool_postgres::Transaction<'_>,
    seq: i64,
    kind: &str,
    id: &str,
    version: i64,
    body: &Value,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO alert_controls (seq, kind, id, version, body) VALUES ($1, $2, $3, $4, $5)",
        &[&seq, &kind, &id, &version, body],
    )
    .await
    .map_err(query("appending to the alert control log"))?;
    Ok(())
}

/// Takes the next number of the control log; its row stays locked until the transaction ends,
/// so entries become visible in number order, without gaps.
async fn next_control_seq(tx: &deadpool_postgres::Transaction<'_>) -> Result<i64, StoreError> {
    Ok(tx
        .query_one(
            "UPDATE alert_control_counter SET last_seq = last_seq + 1 RETURNING last_seq",
            &[],
        )
        .await
        .map_err(query("numbering an alert control"))?
        .get(0))
}

fn silence_of(body: Value) -> Option<Silence> {
    serde_json::from_value(body).ok()
}

impl Store {
    /// Stores a new silence (its id `silence-N`, version 1) and answers with it.
    pub async fn create_silence(
        &self,
        matchers: SilenceMatch,
        starts_ms: u64,
        ends_ms: u64,
        created_by: &str,
        comment: &str,
    ) -> Result<Silence, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(query("starting a silence"))?;
        let seq = next_control_seq(&tx).await?;
        let silence = Silence {
            id: format!("silence-{seq}"),
            version: 1,
            matchers,
            starts_ms,
            ends_ms,
            created_by: created_by.to_owned(),
            comment: comment.to_owned(),
        };
        let body = silence.to_json();
        append_control(&tx, seq, "silence", &silence.id, 1, &body).await?;
        tx.commit().await.map_err(query("committing a silence"))?;
        Ok(silence)
    }

    /// Ends a silence at `now_ms` (one that has not started never starts): a new version.
    /// `None` if there is no such silence; an ended one is answered as it is.
    pub async fn expire_silence(
        &self,
        id: &str,
        now_ms: u64,
    ) -> Result<Option<Silence>, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(query("starting an expiry"))?;
        let seq = next_control_seq(&tx).await?;
        let Some(mut silence) = latest_silence(&tx, id).await? else {
            return Ok(None);
        };
        if silence.ends_ms <= now_ms {
            return Ok(Some(silence));
        }
        silence.ends_ms = now_ms.max(silence.starts_ms);
        silence.version += 1;
        let body = silence.to_json();
        append_control(&tx, seq, "silence", id, silence.version as i64, &body).await?;
        tx.commit().await.map_err(query("committing an expiry"))?;
        Ok(Some(silence))
    }

    /// A silence as it is now.
    pub async fn silence(&self, id: &str) -> Result<Option<Silence>, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(query("reading a silence"))?;
        latest_silence(&tx, id).await
    }

    /// Every silence as it is now, by id.
    pub async fn silences(&self) -> Result<Vec<Silence>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT DISTINCT ON (id) body FROM alert_controls WHERE kind = 'silence'
                 ORDER BY id, version DESC",
                &[],
            )
            .await
            .map_err(query("listing silences"))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| silence_of(r.get(0)))
            .collect())
    }

    /// Acknowledges an alert at `at_ms`; the acknowledgement, and whether it is new (an alert
    /// is acknowledged once: a second one answers with the first).
    pub async fn acknowledge(
        &self,
        alert_id: &str,
        by: &str,
        note: &str,
        at_ms: u64,
    ) -> Result<(Acknowledgement, bool), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(query("starting an acknowledgement"))?;
        let seq = next_control_seq(&tx).await?;
        let existing = tx
            .query_opt(
                "SELECT body FROM alert_controls WHERE kind = 'acknowledgement' AND id = $1",
                &[&alert_id],
            )
            .await
            .map_err(query("reading an acknowledgement"))?
            .and_then(|r| serde_json::from_value::<Acknowledgement>(r.get(0)).ok());
        if let Some(ack) = existing {
            return Ok((ack, false));
        }
        let ack = Acknowledgement {
            alert_id: alert_id.to_owned(),
            by: by.to_owned(),
            note: note.to_owned(),
            at_ms,
        };
        let body = serde_json::to_value(&ack).expect("acknowledgements serialise");
        append_control(&tx, seq, "acknowledgement", alert_id, 1, &body).await?;
        tx.execute(
            "UPDATE alerts SET acknowledged_by = $2 WHERE alert_id = $1",
            &[&alert_id, &by],
        )
        .await
        .map_err(query("marking an alert acknowledged"))?;
        tx.commit()
            .await
            .map_err(query("committing an acknowledgement"))?;
        Ok((ack, true))
    }

    /// Stores new alert rules, in force from `effective_ms`; the change (its version one more
    /// than the last).
    pub async fn put_rules(
        &self,
        rules: AlertConfig,
        effective_ms: u64,
    ) -> Result<RulesChange, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(query("starting a rules change"))?;
        let seq = next_control_seq(&tx).await?;
        let version: i64 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) + 1 FROM alert_controls WHERE kind = 'rules'",
                &[],
            )
            .await
            .map_err(query("numbering a rules change"))?
            .get(0);
        let change = RulesChange {
            version: version as u64,
            effective_ms,
            rules,
        };
        let body = rules_json(&change);
        append_control(&tx, seq, "rules", "rules", version, &body).await?;
        tx.commit()
            .await
            .map_err(query("committing a rules change"))?;
        Ok(change)
    }

    /// The latest rules change, if any was made.
    pub async fn rules(&self) -> Result<Option<RulesChange>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT body FROM alert_controls WHERE kind = 'rules' ORDER BY version DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(query("reading the alert rules"))?
            .and_then(|r| serde_json::from_value(r.get(0)).ok()))
    }

    /// The acknowledgements of those of `alert_ids` that have one, by alert.
    pub async fn acknowledgements(
        &self,
        alert_ids: &[String],
    ) -> Result<Vec<Acknowledgement>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT body FROM alert_controls WHERE kind = 'acknowledgement' AND id = ANY($1)",
                &[&alert_ids],
            )
            .await
            .map_err(query("reading acknowledgements"))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| serde_json::from_value(r.get(0)).ok())
            .collect())
    }

    /// Up to `limit` entries of the control log after `seq`, in order, each as the dataflow
    /// takes it (metric names not yet resolved).
    pub async fn controls_after(
        &self,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, AlertControl)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, kind, body FROM alert_controls WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&seq, &limit],
            )
            .await
            .map_err(query("reading the alert control log"))?;
        let mut controls = Vec::with_capacity(rows.len());
        for row in rows {
            let body: Value = row.get(2);
            let control = match row.get::<_, &str>(1) {
                "silence" => {
                    serde_json::from_value(body).map(|s| AlertControl::Silence(Box::new(s)))
                }
                _ => serde_json::from_value(body).map(AlertControl::Acknowledgement),
            };
            match control {
                Ok(control) => controls.push((row.get(0), control)),
                Err(e) => {
                    tracing::warn!(seq = row.get::<_, i64>(0), error = %e, "alert control skipped")
                }
            }
        }
        Ok(controls)
    }

    /// Records an alert event (its JSON line, the `alerts.jsonl` shape) once: a second record
    /// of the same id changes nothing. Whether it was new; `Err(field)` for a line that is not
    /// an alert event.
    pub async fn record_alert_event(&self, line: &Value) -> Result<bool, RecordError> {
        let text = |field: &'static str| -> Result<&str, RecordError> {
            line.get(field)
                .and_then(Value::as_str)
                .ok_or(RecordError::NotAnEvent(field))
        };
        let optional = |field: &str| line.get(field).and_then(Value::as_str);
        let (id, alert_id, event) = (text("id")?, text("alert_id")?, text("event")?);
        let ts_ms = line
            .get("ts_ms")
            .and_then(Value::as_i64)
            .ok_or(RecordError::NotAnEvent("ts_ms"))?;
        let (site, rule, severity, cause) = (
            text("site")?,
            text("rule")?,
            text("severity")?,
            text("cause")?,
        );
        let (building, org) = (
            optional("building").unwrap_or(""),
            optional("org").unwrap_or(""),
        );
        let overdue = line
            .get("overdue")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(query("starting an alert record"))?;
        let inserted = tx
            .execute(
                "INSERT INTO alert_events (id, alert_id, event, ts_ms, body)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                &[&id, &alert_id, &event, &ts_ms, line],
            )
            .await
            .map_err(query("recording an alert event"))?;
        if inserted == 0 {
            return Ok(false);
        }
        let open = event != AlertEventKind::Resolved.code();
        tx.execute(
            "INSERT INTO alerts (alert_id, open, opened_ms, last_ms, device_id, site, building,
                 org, metric, rule, severity, cause, silenced_by, overdue, acknowledged_by, latest)
             VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (alert_id) DO UPDATE SET
                 open = alerts.open AND EXCLUDED.open,
                 last_ms = GREATEST(alerts.last_ms, EXCLUDED.last_ms),
                 rule = EXCLUDED.rule,
                 severity = EXCLUDED.severity,
                 silenced_by = EXCLUDED.silenced_by,
                 overdue = alerts.overdue OR EXCLUDED.overdue,
                 acknowledged_by = COALESCE(EXCLUDED.acknowledged_by, alerts.acknowledged_by),
                 latest = EXCLUDED.latest",
            &[
                &alert_id,
                &open,
                &ts_ms,
                &optional("device_id"),
                &site,
                &building,
                &org,
                &optional("metric"),
                &rule,
                &severity,
                &cause,
                &optional("silenced_by"),
                &overdue,
                &optional("acknowledged_by"),
                line,
            ],
        )
        .await
        .map_err(query("recording an alert's state"))?;
        tx.commit()
            .await
            .map_err(query("committing an alert record"))?;
        Ok(true)
    }

    /// A page of recorded alerts by id, after the cursor `after`, as JSON objects.
    pub async fn alerts(
        &self,
        filter: &AlertFilter,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Value>, StoreError> {
        let client = self.client().await?;
        let mut sql = String::from(
            "SELECT alert_id, open, opened_ms, last_ms, device_id, site, building, org, metric,
                 rule, severity, cause, silenced_by, overdue, acknowledged_by
             FROM alerts WHERE alert_id > $1",
        );
        let mut params: Vec<String> = vec![after.unwrap_or("").to_owned()];
        for (field, value) in &filter.fields {
            params.push(value.clone());
            // The field is one of ALERT_FILTER_FIELDS, never the caller's text.
            sql.push_str(&format!(" AND {field} = ${}", params.len()));
        }
        match filter.open {
            Some(true) => sql.push_str(" AND open"),
            Some(false) => sql.push_str(" AND NOT open"),
            None => {}
        }
        sql.push_str(&format!(" ORDER BY alert_id LIMIT {limit}"));
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = client
            .query(&sql, &refs)
            .await
            .map_err(query("listing alerts"))?;
        Ok(rows
            .iter()
            .map(|r| {
                json!({
                    "alert_id": r.get::<_, String>(0),
                    "open": r.get::<_, bool>(1),
                    "opened_ms": r.get::<_, i64>(2),
                    "last_ms": r.get::<_, i64>(3),
                    "device_id": r.get::<_, Option<String>>(4),
                    "site": r.get::<_, String>(5),
                    "building": r.get::<_, String>(6),
                    "org": r.get::<_, String>(7),
                    "metric": r.get::<_, Option<String>>(8),
                    "rule": r.get::<_, String>(9),
                    "severity": r.get::<_, String>(10),
                    "cause": r.get::<_, String>(11),
                    "silenced_by": r.get::<_, Option<String>>(12),
                    "overdue": r.get::<_, bool>(13),
                    "acknowledged_by": r.get::<_, Option<String>>(14),
                })
            })
            .collect())
    }

    /// An alert's recorded events, in event-time order.
    pub async fn alert_history(&self, alert_id: &str) -> Result<Vec<Value>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT body FROM alert_events WHERE alert_id = $1 ORDER BY ts_ms, recorded_at",
                &[&alert_id],
            )
            .await
            .map_err(query("reading an alert's history"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The whole control log, in order, as JSON Lines bodies (what `replay --alert-controls`
    /// reads).
    pub async fn control_log(&self) -> Result<Vec<Value>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT kind, body FROM alert_controls ORDER BY seq", &[])
            .await
            .map_err(query("reading the alert control log"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let mut body: Value = r.get(1);
                body["kind"] = json!(r.get::<_, &str>(0));
                body
            })
            .collect())
    }
}

async fn latest_silence(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
) -> Result<Option<Silence>, StoreError> {
    Ok(tx
        .query_opt(
            "SELECT body FROM alert_controls WHERE kind = 'silence' AND id = $1
             ORDER BY version DESC LIMIT 1",
            &[&id],
        )
        .await
        .map_err(query("reading a silence"))?
        .and_then(|r| silence_of(r.get(0))))
}

/// A rules change as the store and the API keep it: metric names, not the catalog's ids.
pub fn rules_json(change: &RulesChange) -> Value {
    let mut value = serde_json::to_value(change).expect("rules serialise");
    let strip = |selector: &mut Value| {
        if let Some(selector) = selector.as_object_mut() {
            selector.remove("metric_ids");
        }
    };
    if let Some(rules) = value["rules"]["rules"].as_array_mut() {
        for rule in rules {
            strip(&mut rule["match"]);
        }
    }
    if let Some(windows) = value["rules"]["maintenance"].as_array_mut() {
        for window in windows {
            strip(&mut window["match"]);
        }
    }
    value
}
