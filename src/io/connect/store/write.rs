//! Writing entities: each write one transaction that takes the change log's lock, checks the
//! caller's precondition, stores the new version and logs it.

use serde_json::{Value, json};
use tokio_postgres::types::ToSql;

use super::entities::{Invalid, Kind};
use super::{Store, StoreError};

/// What must hold for a write to happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Nothing: create or replace.
    None,
    /// The entity exists at this version (`If-Match`).
    Version(i64),
    /// The entity does not exist (`If-None-Match: *`).
    Absent,
    /// The entity exists, at any version (`If-Match: *`).
    Exists,
}

/// A write that happened (or found nothing to change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The entity's version now.
    pub version: i64,
    /// Its position in the change log (none: the body was the current one, nothing changed).
    pub seq: Option<i64>,
}

/// A write that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The body cannot be stored.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// There is no such entity.
    #[error("no such {kind}: {id}")]
    NotFound {
        /// Its kind.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The precondition does not hold: the entity changed since the caller read it.
    #[error("the {kind} is at version {current:?}, not the one expected")]
    Stale {
        /// Its kind.
        kind: &'static str,
        /// Its version now (none: it does not exist).
        current: Option<i64>,
    },
    /// Other entities still name this one.
    #[error("{0}")]
    InUse(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> WriteError {
    move |e| WriteError::Store(StoreError::query(what)(e))
}

impl Store {
    /// Stores `body` (checked by [`super::entities::check_body`]) as the entity's next version,
    /// holding from `effective_ms` on. A body equal to the current one changes nothing.
    pub async fn put(
        &self,
        kind: Kind,
        id: &str,
        body: &Value,
        effective_ms: i64,
        precondition: Precondition,
    ) -> Result<Written, WriteError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(query("starting a write"))?;
        let written = put_in(&tx, kind, id, body, effective_ms, precondition).await?;
        tx.commit().await.map_err(query("committing a write"))?;
        Ok(written)
    }

    /// Removes the entity from `effective_ms` on (its history stays).
    pub async fn delete(
        &self,
        kind: Kind,
        id: &str,
        effective_ms: i64,
        precondition: Precondition,
    ) -> Result<Written, WriteError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(query("starting a delete"))?;
        lock_log(&tx).await?;
        let current = current_version(&tx, kind, id).await?;
        check(kind, current, precondition)?;
        if current.is_none() {
            return Err(WriteError::NotFound {
                kind: kind.name(),
                id: id.to_owned(),
            });
        }
        let users: &[(&str, &str)] = match kind {
            Kind::Place => &[
                (
                    "SELECT id FROM places WHERE parent_id = $1 LIMIT 3",
                    "places",
                ),
                (
                    "SELECT id FROM devices WHERE place_id = $1 LIMIT 3",
                    "devices",
                ),
            ],
            Kind::Model => &[(
                "SELECT id FROM devices WHERE model_id = $1 LIMIT 3",
                "devices",
            )],
            Kind::Device => &[],
        };
        for (sql, what) in users {
            let rows = tx
                .query(&prepared(&tx, sql).await?, &[&id])
                .await
                .map_err(query("finding what names an entity"))?;
            if !rows.is_empty() {
                let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                return Err(WriteError::InUse(format!(
                    "{} {id} is still named by {what} ({}{}): move or delete them first",
                    kind.name(),
                    ids.join(", "),
                    if ids.len() == 3 { ", ..." } else { "" }
                )));
            }
        }
        tx.execute(
            &prepared(&tx, &format!("DELETE FROM {} WHERE id = $1", kind.table())).await?,
            &[&id],
        )
        .await
        .map_err(query("deleting an entity"))?;
        let version = next_version(&tx, kind, id).await?;
        let seq = record(&tx, kind, id, version, effective_ms, None).await?;
        tx.commit().await.map_err(query("committing a delete"))?;
        Ok(Written {
            version,
            seq: Some(seq),
        })
    }
}

fn check(kind: Kind, current: Option<i64>, precondition: Precondition) -> Result<(), WriteError> {
    let holds = match precondition {
        Precondition::None => true,
        Precondition::Version(expected) => current == Some(expected),
        Precondition::Absent => current.is_none(),
        Precondition::Exists => current.is_some(),
    };
    if holds {
        Ok(())
    } else {
        Err(WriteError::Stale {
            kind: kind.name(),
            current,
        })
    }
}

async fn current_version(
    tx: &deadpool_postgres::Transaction<'_>,
    kind: Kind,
    id: &str,
) -> Result<Option<i64>, WriteError> {
    let row = tx
        .query_opt(
            &prepared(
                tx,
                &format!(
                    "SELECT version FROM {} WHERE id = $1 FOR UPDATE",
                    kind.table()
                ),
            )
            .await?,
            &[&id],
        )
        .await
        .map_err(query("reading an entity's version"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Every version is in the history (removals included), and writers hold the change log's
/// lock, so the next version is the history's next.
async fn next_version(
    tx: &deadpool_postgres::Transaction<'_>,
    kind: Kind,
    id: &str,
) -> Result<i64, WriteError> {
    Ok(tx
        .query_one(
            &prepared(
                tx,
                "SELECT coalesce(max(version), 0) + 1 FROM history WHERE kind = $1 AND id = $2",
            )
            .await?,
            &[&kind.name(), &id],
        )
        .await
        .map_err(query("reading an entity's history"))?
        .get(0))
}

/// Writes within a transaction the caller commits (an import writes many at once).
pub(crate) async fn put_in(
    tx: &deadpool_postgres::Transaction<'_>,
    kind: Kind,
    id: &str,
    body: &Value,
    effective_ms: i64,
    precondition: Precondition,
) -> Result<Written, WriteError> {
    super::entities::check_id("id", id)?;
    lock_log(tx).await?;
    let current = current_version(tx, kind, id).await?;
    check(kind, current, precondition)?;
    if let Some(version) = current {
        let same = tx
            .query_one(&prepared(tx, "SELECT body = $3 FROM history WHERE kind = $1 AND id = $2 ORDER BY version DESC
                 LIMIT 1").await?,
                &[&kind.name(), &id, body],
            )
            .await
            .map_err(query("reading an entity's body"))?
            .get::<_, bool>(0);
        if same {
            return Ok(Written { version, seq: None });
        }
    }
    check_references(tx, kind, id, body, effective_ms).await?;
    let version = next_version(tx, kind, id).await?;
    let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_owned);
    let object = |field: &str| body.get(field).cloned().unwrap_or_else(|| json!({}));
    let (sql, params): (&str, Vec<Box<dyn ToSql + Sync + Send>>) = match kind {
        Kind::Place => (
            "INSERT INTO places (id, kind, parent_id, name, time_zone, latitude, longitude,
                                 attributes, version, effective_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind,
                 parent_id = EXCLUDED.parent_id, name = EXCLUDED.name,
                 time_zone = EXCLUDED.time_zone, latitude = EXCLUDED.latitude,
                 longitude = EXCLUDED.longitude, attributes = EXCLUDED.attributes,
                 version = EXCLUDED.version, effective_ms = EXCLUDED.effective_ms",
            vec![
                Box::new(id.to_owned()),
                Box::new(text("kind")),
                Box::new(text("parent_id")),
                Box::new(text("name")),
                Box::new(text("time_zone")),
                Box::new(body.get("latitude").and_then(Value::as_f64)),
                Box::new(body.get("longitude").and_then(Value::as_f64)),
                Box::new(object("attributes")),
                Box::new(version),
                Box::new(effective_ms),
            ],
        ),
        Kind::Model => (
            "INSERT INTO models (id, manufacturer, device_type, schemas, metrics,
                                 default_thresholds, version, effective_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET manufacturer = EXCLUDED.manufacturer,
                 device_type = EXCLUDED.device_type, schemas = EXCLUDED.schemas,
                 metrics = EXCLUDED.metrics, default_thresholds = EXCLUDED.default_thresholds,
                 version = EXCLUDED.version, effective_ms = EXCLUDED.effective_ms",
            vec![
                Box::new(id.to_owned()),
                Box::new(text("manufacturer")),
                Box::new(text("device_type")),
                Box::new(
                    body.get("schemas")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default(),
                ),
                Box::new(object("metrics")),
                Box::new(object("default_thresholds")),
                Box::new(version),
                Box::new(effective_ms),
            ],
        ),
        Kind::Device => (
            "INSERT INTO devices (id, model_id, place_id, firmware, schema,
                                  threshold_overrides, attributes, status, version, effective_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO UPDATE SET model_id = EXCLUDED.model_id,
                 place_id = EXCLUDED.place_id, firmware = EXCLUDED.firmware,
                 schema = EXCLUDED.schema, threshold_overrides = EXCLUDED.threshold_overrides,
                 attributes = EXCLUDED.attributes, status = EXCLUDED.status,
                 version = EXCLUDED.version, effective_ms = EXCLUDED.effective_ms",
            vec![
                Box::new(id.to_owned()),
                Box::new(text("model_id")),
                Box::new(text("place_id")),
                Box::new(text("firmware")),
                Box::new(text("schema")),
                Box::new(object("threshold_overrides")),
                Box::new(object("attributes")),
                Box::new(text("status").unwrap_or_else(|| "active".into())),
                Box::new(version),
                Box::new(effective_ms),
            ],
        ),
    };
    let params: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    tx.execute(&prepared(tx, sql).await?, &params)
        .await
        .map_err(query("writing an entity"))?;
    let seq = record(tx, kind, id, version, effective_ms, Some(body)).await?;
    Ok(Written {
        version,
        seq: Some(seq),
    })
}

/// The entities a body names exist (from `effective_ms` on), a place does not become its own
/// ancestor, and a time zone is one PostgreSQL knows.
async fn check_references(
    tx: &deadpool_postgres::Transaction<'_>,
    kind: Kind,
    id: &str,
    body: &Value,
    effective_ms: i64,
) -> Result<(), WriteError> {
    let named = |field: &str| body.get(field).and_then(Value::as_str);
    // What a body names must exist, and from the change's effective time on: history read as
    // of any time after it must resolve.
    let exists = |table: &'static str, field: &'static str| async move {
        let Some(named) = named(field) else {
            return Ok(());
        };
        let what = &table[..table.len() - 1];
        let current = tx
            .query_opt(
                &prepared(tx, &format!("SELECT 1 FROM {table} WHERE id = $1")).await?,
                &[&named],
            )
            .await
            .map_err(query("checking a reference"))?;
        if current.is_none() {
            return Err(WriteError::Invalid(Invalid::new(
                field,
                format!("no {what} {named} exists: create it first"),
            )));
        }
        let then = tx
            .query_opt(
                &prepared(
                    tx,
                    "SELECT deleted FROM history WHERE kind = $1 AND id = $2 AND effective_ms <= $3
                 ORDER BY effective_ms DESC, version DESC LIMIT 1",
                )
                .await?,
                &[&what, &named, &effective_ms],
            )
            .await
            .map_err(query("checking a reference's history"))?;
        if then.is_none_or(|row| row.get::<_, bool>(0)) {
            return Err(WriteError::Invalid(Invalid::new(
                field,
                format!(
                    "{what} {named} does not exist at {effective_ms} ms, when this change takes \
                     effect: give it an earlier effective_ms, or this change a later one"
                ),
            )));
        }
        Ok(())
    };
    match kind {
        Kind::Place => {
            exists("places", "parent_id").await?;
            if let Some(parent) = named("parent_id") {
                let cycle = tx
                    .query_opt(
                        &prepared(
                            tx,
                            "WITH RECURSIVE up(id) AS (
                             SELECT $1::text UNION
                             SELECT p.parent_id FROM places p JOIN up ON p.id = up.id
                             WHERE p.parent_id IS NOT NULL)
                         SELECT 1 FROM up WHERE id = $2",
                        )
                        .await?,
                        &[&parent, &id],
                    )
                    .await
                    .map_err(query("checking a place's ancestry"))?;
                if cycle.is_some() {
                    return Err(WriteError::Invalid(Invalid::new(
                        "parent_id",
                        format!("{parent} is {id} or below it: a place cannot be its own ancestor"),
                    )));
                }
            }
            if let Some(zone) = named("time_zone") {
                let known = tx
                    .query_opt(
                        &prepared(tx, "SELECT 1 FROM pg_timezone_names WHERE name = $1").await?,
                        &[&zone],
                    )
                    .await
                    .map_err(query("checking a time zone"))?;
                if known.is_none() {
                    return Err(WriteError::Invalid(Invalid::new(
                        "time_zone",
                        format!(
                            "{zone} is not an IANA time zone (Europe/Berlin, America/Chicago, UTC)"
                        ),
                    )));
                }
            }
        }
        Kind::Model => {}
        Kind::Device => {
            exists("models", "model_id").await?;
            exists("places", "place_id").await?;
        }
    }
    Ok(())
}

/// A statement prepared once per connection: a write is a dozen of them, each otherwise two
/// round trips (parse, then execute) instead of one.
pub(crate) async fn prepared(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
) -> Result<tokio_postgres::Statement, StoreError> {
    tx.prepare_cached(sql)
        .await
        .map_err(StoreError::query("preparing a statement"))
}

/// Takes the change log's counter before anything else, so writers queue there in one order
/// (a writer that locked a model first and the counter second could deadlock with one that did
/// the opposite) and commit one at a time.
pub(crate) async fn lock_log(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        &prepared(tx, "SELECT last_seq FROM change_counter FOR UPDATE").await?,
        &[],
    )
    .await
    .map_err(StoreError::query("locking the change log"))?;
    Ok(())
}

/// Records a change: its version in the history, its entry in the log, numbered by the
/// counter. The counter's row stays locked until the transaction ends, so numbers are taken
/// and made visible in commit order, without gaps. `body` none: the entity was removed.
async fn record(
    tx: &deadpool_postgres::Transaction<'_>,
    kind: Kind,
    id: &str,
    version: i64,
    effective_ms: i64,
    body: Option<&Value>,
) -> Result<i64, StoreError> {
    let seq: i64 = tx
        .query_one(
            &prepared(
                tx,
                "UPDATE change_counter SET last_seq = last_seq + 1 RETURNING last_seq",
            )
            .await?,
            &[],
        )
        .await
        .map_err(StoreError::query("numbering a change"))?
        .get(0);
    let deleted = body.is_none();
    let empty = json!({});
    let body = body.unwrap_or(&empty);
    let kind = kind.name();
    tx.execute(
        &prepared(
            tx,
            "INSERT INTO history (kind, id, version, effective_ms, deleted, body, change_seq)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?,
        &[&kind, &id, &version, &effective_ms, &deleted, body, &seq],
    )
    .await
    .map_err(StoreError::query("recording a version"))?;
    tx.execute(
        &prepared(
            tx,
            "INSERT INTO change_log (seq, kind, id, version, effective_ms, deleted, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?,
        &[&seq, &kind, &id, &version, &effective_ms, &deleted, body],
    )
    .await
    .map_err(StoreError::query("logging a change"))?;
    Ok(seq)
}
