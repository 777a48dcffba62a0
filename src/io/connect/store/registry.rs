//! The device registry in the store: importing the JSON Lines changelog, reading it back out
//! (the same lines, so `replay --registry` and the registry topic take it), the change log in
//! order, and a device as it was known at a point of event time.
//!
//! A registry line names its device's model, device type, org, site and building by name; the
//! store keeps them as entities of their own: a model (created with the line's device type),
//! places `org`, `org/site` and `org/site/building`, each created the first time a line names
//! it, and each creation is a change of its own in the log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Store, StoreError};

/// One registry line: the device as it is from `effective_ms` on, or its removal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// The device.
    pub device_id: String,
    /// Event time from which the line holds (0: from the beginning).
    #[serde(default)]
    pub effective_ms: i64,
    /// The device leaves the registry at `effective_ms`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// thermostat, power_meter, pump, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// Firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// Schema variant the firmware speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Owning organisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Site within the organisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Building within the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<String>,
    /// Equipment model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The device's own thresholds per metric.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub thresholds: BTreeMap<String, ThresholdEntry>,
}

/// A threshold: readings outside `[min, max]` breach it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdEntry {
    /// Lowest reading within the threshold.
    pub min: f64,
    /// Highest reading within the threshold.
    pub max: f64,
}

/// One entry of the change log.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Position in the log: 1, 2, 3, ... in commit order, no gaps.
    pub seq: i64,
    /// `place`, `model` or `device`.
    pub kind: String,
    /// The entity.
    pub id: String,
    /// Its version after the change (1 for a new entity).
    pub version: i64,
    /// Event time from which the change holds.
    pub effective_ms: i64,
    /// The entity was removed.
    pub deleted: bool,
    /// The entity as it is after the change.
    pub body: Value,
}

/// What an import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Registry lines applied.
    pub lines: usize,
    /// Entries the change log gained (places and models created along the way included).
    pub changes: usize,
}

/// Lines applied per transaction on import: one commit per batch, the log still gap-free.
const IMPORT_BATCH: usize = 1_000;

impl Store {
    /// Applies registry lines in order, as changes; each batch of lines commits at once.
    pub async fn import_registry(
        &self,
        entries: &[RegistryEntry],
    ) -> Result<ImportReport, StoreError> {
        let mut report = ImportReport::default();
        let mut client = self.client().await?;
        for batch in entries.chunks(IMPORT_BATCH) {
            let tx = client
                .transaction()
                .await
                .map_err(StoreError::query("starting an import"))?;
            lock_log(&tx).await?;
            for entry in batch {
                report.changes += apply(&tx, entry).await?;
                report.lines += 1;
            }
            tx.commit()
                .await
                .map_err(StoreError::query("committing an import"))?;
        }
        Ok(report)
    }

    /// The registry as lines, every device change in log order: what was imported, and
    /// every change since.
    pub async fn export_registry(&self) -> Result<Vec<RegistryEntry>, StoreError> {
        let changes = self.changes_after(0, i64::MAX).await?;
        Ok(changes
            .into_iter()
            .filter(|c| c.kind == "device")
            .map(|c| entry_of(&c.id, c.effective_ms, c.deleted, &c.body))
            .collect())
    }

    /// Up to `limit` log entries after `seq`, in order.
    pub async fn changes_after(&self, seq: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, kind, id, version, effective_ms, deleted, body FROM change_log
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&seq, &limit],
            )
            .await
            .map_err(StoreError::query("reading the change log"))?;
        Ok(rows
            .iter()
            .map(|r| Change {
                seq: r.get(0),
                kind: r.get(1),
                id: r.get(2),
                version: r.get(3),
                effective_ms: r.get(4),
                deleted: r.get(5),
                body: r.get(6),
            })
            .collect())
    }

    /// The device as known at event time `at_ms`: the latest version effective by then (none
    /// if it was not registered yet, or removed).
    pub async fn device_as_of(
        &self,
        device_id: &str,
        at_ms: i64,
    ) -> Result<Option<RegistryEntry>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT effective_ms, deleted, body FROM history
                 WHERE kind = 'device' AND id = $1 AND effective_ms <= $2
                 ORDER BY effective_ms DESC, version DESC LIMIT 1",
                &[&device_id, &at_ms],
            )
            .await
            .map_err(StoreError::query("reading a device's history"))?;
        Ok(row
            .filter(|r| !r.get::<_, bool>(1))
            .map(|r| entry_of(device_id, r.get(0), false, &r.get(2))))
    }
}

/// A registry line from a device's log body.
fn entry_of(device_id: &str, effective_ms: i64, deleted: bool, body: &Value) -> RegistryEntry {
    let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_owned);
    let thresholds = body
        .get("thresholds")
        .cloned()
        .and_then(|t| serde_json::from_value(t).ok())
        .unwrap_or_default();
    RegistryEntry {
        device_id: device_id.to_owned(),
        effective_ms,
        deleted,
        device_type: text("device_type"),
        firmware: text("firmware"),
        schema: text("schema"),
        org: text("org"),
        site: text("site"),
        building: text("building"),
        model: text("model"),
        thresholds,
    }
}

/// Takes the change log's counter before anything else, so writers queue there in one order
/// (a writer that locked a model first and the counter second could deadlock with one that did
/// the opposite) and commit one at a time.
async fn lock_log(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT last_seq FROM change_counter FOR UPDATE", &[])
        .await
        .map_err(StoreError::query("locking the change log"))?;
    Ok(())
}

/// The next number of the change log. The counter's row stays locked until the transaction
/// ends, so numbers are taken and made visible in commit order, without gaps.
async fn next_seq(tx: &deadpool_postgres::Transaction<'_>) -> Result<i64, StoreError> {
    let row = tx
        .query_one(
            "UPDATE change_counter SET last_seq = last_seq + 1 RETURNING last_seq",
            &[],
        )
        .await
        .map_err(StoreError::query("numbering a change"))?;
    Ok(row.get(0))
}

/// Records a change: its version in the history, its entry in the log.
async fn record(
    tx: &deadpool_postgres::Transaction<'_>,
    kind: &str,
    id: &str,
    version: i64,
    effective_ms: i64,
    deleted: bool,
    body: &Value,
) -> Result<(), StoreError> {
    let seq = next_seq(tx).await?;
    tx.execute(
        "INSERT INTO history (kind, id, version, effective_ms, deleted, body, change_seq)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&kind, &id, &version, &effective_ms, &deleted, body, &seq],
    )
    .await
    .map_err(StoreError::query("recording a version"))?;
    tx.execute(
        "INSERT INTO change_log (seq, kind, id, version, effective_ms, deleted, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&seq, &kind, &id, &version, &effective_ms, &deleted, body],
    )
    .await
    .map_err(StoreError::query("logging a change"))?;
    Ok(())
}

/// Creates a place the first time it is named; the number of changes it made (0 or 1).
async fn ensure_place(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
    kind: &str,
    parent_id: Option<&str>,
    name: &str,
    effective_ms: i64,
) -> Result<usize, StoreError> {
    let created = tx
        .execute(
            "INSERT INTO places (id, kind, parent_id, name, version, effective_ms)
             VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (id) DO NOTHING",
            &[&id, &kind, &parent_id, &name, &effective_ms],
        )
        .await
        .map_err(StoreError::query("creating a place"))?;
    if created == 0 {
        return Ok(0);
    }
    let body = json!({"kind": kind, "parent_id": parent_id, "name": name});
    record(tx, "place", id, 1, effective_ms, false, &body).await?;
    Ok(1)
}

/// Creates a model the first time it is named, or moves it to another device type; the
/// number of changes it made.
async fn ensure_model(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
    device_type: &str,
    effective_ms: i64,
) -> Result<usize, StoreError> {
    let known = tx
        .query_opt(
            "SELECT device_type, version FROM models WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(StoreError::query("reading a model"))?;
    let version = match known {
        Some(row) if row.get::<_, String>(0) == device_type => return Ok(0),
        Some(row) => row.get::<_, i64>(1) + 1,
        None => 1,
    };
    tx.execute(
        "INSERT INTO models (id, device_type, version, effective_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET device_type = EXCLUDED.device_type,
             version = EXCLUDED.version, effective_ms = EXCLUDED.effective_ms",
        &[&id, &device_type, &version, &effective_ms],
    )
    .await
    .map_err(StoreError::query("writing a model"))?;
    let body = json!({"device_type": device_type});
    record(tx, "model", id, version, effective_ms, false, &body).await?;
    Ok(1)
}

/// Applies one registry line; the number of changes it made.
async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    entry: &RegistryEntry,
) -> Result<usize, StoreError> {
    let id = entry.device_id.as_str();
    let t = entry.effective_ms;
    // Every version is in the history (a removal of a device never stored included), and
    // writers hold the change log's lock, so the next version is the history's next.
    let version = tx
        .query_one(
            "SELECT coalesce(max(version), 0) + 1 FROM history WHERE kind = 'device' AND id = $1",
            &[&id],
        )
        .await
        .map_err(StoreError::query("reading a device's history"))?
        .get::<_, i64>(0);
    let mut changes = 0;
    if entry.deleted {
        tx.execute(
            "UPDATE devices SET status = 'decommissioned', version = $2, effective_ms = $3
             WHERE id = $1",
            &[&id, &version, &t],
        )
        .await
        .map_err(StoreError::query("removing a device"))?;
        record(tx, "device", id, version, t, true, &json!({})).await?;
        return Ok(changes + 1);
    }
    let field = |value: &Option<String>, name: &'static str| {
        value.clone().ok_or_else(|| StoreError::Config {
            field: "registry",
            message: format!("device {id}: `{name}` is missing (or set \"deleted\": true)"),
        })
    };
    let (org, site, building) = (
        field(&entry.org, "org")?,
        field(&entry.site, "site")?,
        field(&entry.building, "building")?,
    );
    let (model, device_type) = (
        field(&entry.model, "model")?,
        field(&entry.device_type, "device_type")?,
    );
    let (firmware, schema) = (
        field(&entry.firmware, "firmware")?,
        field(&entry.schema, "schema")?,
    );
    let site_id = format!("{org}/{site}");
    let building_id = format!("{site_id}/{building}");
    changes += ensure_place(tx, &org, "org", None, &org, t).await?;
    changes += ensure_place(tx, &site_id, "site", Some(&org), &site, t).await?;
    changes += ensure_place(tx, &building_id, "building", Some(&site_id), &building, t).await?;
    changes += ensure_model(tx, &model, &device_type, t).await?;
    let overrides = serde_json::to_value(&entry.thresholds).expect("thresholds serialise");
    tx.execute(
        "INSERT INTO devices (id, model_id, place_id, firmware, schema, threshold_overrides,
                              status, version, effective_ms)
         VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8)
         ON CONFLICT (id) DO UPDATE SET model_id = EXCLUDED.model_id,
             place_id = EXCLUDED.place_id, firmware = EXCLUDED.firmware,
             schema = EXCLUDED.schema, threshold_overrides = EXCLUDED.threshold_overrides,
             status = 'active', version = EXCLUDED.version,
             effective_ms = EXCLUDED.effective_ms",
        &[
            &id,
            &model,
            &building_id,
            &firmware,
            &schema,
            &overrides,
            &version,
            &t,
        ],
    )
    .await
    .map_err(StoreError::query("writing a device"))?;
    let body = json!({
        "device_type": device_type, "firmware": firmware, "schema": schema, "org": org,
        "site": site, "building": building, "model": model, "thresholds": overrides,
    });
    record(tx, "device", id, version, t, false, &body).await?;
    Ok(changes + 1)
}
