//! Reading entities: now or as of an event time, one or a page at a time, a place's subtree,
//! an entity's history, and the change log.

use serde::Serialize;
use serde_json::Value;

use super::entities::Kind;
use super::{Store, StoreError};

/// One version of an entity.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stored {
    /// Its id.
    pub id: String,
    /// Its version (1, 2, ... for each change, removals included).
    pub version: i64,
    /// Event time from which this version holds.
    pub effective_ms: i64,
    /// The entity (an empty object for a removal).
    pub body: Value,
}

/// One entry of the change log.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Position in the log: 1, 2, 3, ... in commit order, no gaps.
    pub seq: i64,
    /// The entity's kind.
    pub kind: Kind,
    /// The entity.
    pub id: String,
    /// Its version after the change.
    pub version: i64,
    /// Event time from which the change holds.
    pub effective_ms: i64,
    /// The entity was removed.
    pub deleted: bool,
    /// The entity as it is after the change.
    pub body: Value,
    /// Wall-clock time of its commit (ms since the epoch).
    pub committed_ms: i64,
}

/// The body fields a list may be filtered on, by kind.
pub fn filter_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Place => &["kind", "parent_id", "name"],
        Kind::Model => &["device_type", "manufacturer"],
        Kind::Device => &["model_id", "place_id", "status", "firmware", "schema"],
    }
}

/// A place with what lies below it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlaceTree {
    /// The place.
    #[serde(flatten)]
    pub place: Stored,
    /// The places whose parent it is.
    pub children: Vec<PlaceTree>,
    /// The devices in it (not those of the places below).
    pub devices: Vec<Stored>,
}

fn stored(row: &tokio_postgres::Row) -> Stored {
    Stored {
        id: row.get(0),
        version: row.get(1),
        effective_ms: row.get(2),
        body: row.get(3),
    }
}

impl Store {
    /// The entity now (its latest version), or as of event time `as_of_ms` (the version in
    /// force then); none if it did not exist.
    pub async fn get(
        &self,
        kind: Kind,
        id: &str,
        as_of_ms: Option<i64>,
    ) -> Result<Option<Stored>, StoreError> {
        let page = self.list(kind, &[], Some(id), as_of_ms, None, 1).await?;
        Ok(page.into_iter().next())
    }

    /// Up to `limit` entities ordered by id, after the id `after` (the cursor), whose body
    /// fields equal `filters` (fields from [`filter_fields`]); `exact` names one id.
    pub async fn list(
        &self,
        kind: Kind,
        filters: &[(&str, String)],
        exact: Option<&str>,
        as_of_ms: Option<i64>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Stored>, StoreError> {
        let client = self.client().await?;
        let kind_name = kind.name();
        let as_of = as_of_ms.unwrap_or_default();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&kind_name];
        let mut conditions = Vec::new();
        for (field, value) in filters {
            debug_assert!(filter_fields(kind).contains(field));
            params.push(value);
            conditions.push(format!("h.body->>'{field}' = ${}", params.len()));
        }
        let exact_id = exact.map(str::to_owned);
        if let Some(id) = &exact_id {
            params.push(id);
            conditions.push(format!("h.id = ${}", params.len()));
        }
        let after_id = after.map(str::to_owned);
        if let Some(id) = &after_id {
            params.push(id);
            conditions.push(format!("h.id > ${}", params.len()));
        }
        params.push(&limit);
        let limit_at = params.len();
        let conditions = conditions
            .iter()
            .map(|c| format!(" AND {c}"))
            .collect::<String>();
        let sql = match as_of_ms {
            // Now: the version each current row points at.
            None => format!(
                "SELECT h.id, h.version, h.effective_ms, h.body
                 FROM {table} t JOIN history h ON h.kind = $1 AND h.id = t.id
                     AND h.version = t.version
                 WHERE true{conditions} ORDER BY h.id LIMIT ${limit_at}",
                table = kind.table()
            ),
            // As of a time: each entity's latest version effective by then, if not a removal.
            Some(_) => format!(
                "SELECT id, version, effective_ms, body FROM (
                     SELECT DISTINCT ON (h.id) h.id, h.version, h.effective_ms, h.body, h.deleted
                     FROM history h WHERE h.kind = $1 AND h.effective_ms <= ${at}{conditions}
                     ORDER BY h.id, h.effective_ms DESC, h.version DESC) v
                 WHERE NOT deleted ORDER BY id LIMIT ${limit_at}",
                at = limit_at + 1
            ),
        };
        if as_of_ms.is_some() {
            params.push(&as_of);
        }
        let rows = client
            .query(&sql, &params)
            .await
            .map_err(StoreError::query("listing entities"))?;
        Ok(rows.iter().map(stored).collect())
    }

    /// Every version of an entity, oldest first (removals with an empty body).
    pub async fn history(&self, kind: Kind, id: &str) -> Result<Vec<(Stored, bool)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, version, effective_ms, body, deleted FROM history
                 WHERE kind = $1 AND id = $2 ORDER BY version",
                &[&kind.name(), &id],
            )
            .await
            .map_err(StoreError::query("reading an entity's history"))?;
        Ok(rows.iter().map(|r| (stored(r), r.get(4))).collect())
    }

    /// The place and everything below it now: its places, level by level, and their devices.
    pub async fn tree(&self, place_id: &str) -> Result<Option<PlaceTree>, StoreError> {
        let client = self.client().await?;
        let places = client
            .query(
                "WITH RECURSIVE below(id) AS (
                     SELECT id FROM places WHERE id = $1 UNION
                     SELECT p.id FROM places p JOIN below ON p.parent_id = below.id)
                 SELECT h.id, h.version, h.effective_ms, h.body, p.parent_id
                 FROM below JOIN places p ON p.id = below.id
                 JOIN history h ON h.kind = 'place' AND h.id = p.id AND h.version = p.version
                 ORDER BY h.id",
                &[&place_id],
            )
            .await
            .map_err(StoreError::query("reading a place's subtree"))?;
        let ids: Vec<String> = places.iter().map(|r| r.get(0)).collect();
        let devices = client
            .query(
                "SELECT h.id, h.version, h.effective_ms, h.body, d.place_id
                 FROM devices d JOIN history h ON h.kind = 'device' AND h.id = d.id
                     AND h.version = d.version
                 WHERE d.place_id = ANY($1) ORDER BY h.id",
                &[&ids],
            )
            .await
            .map_err(StoreError::query("reading a subtree's devices"))?;
        let mut by_parent: std::collections::HashMap<String, Vec<Stored>> = Default::default();
        let mut root = None;
        for row in &places {
            let place = stored(row);
            match row.get::<_, Option<String>>(4) {
                _ if place.id == place_id => root = Some(place),
                Some(parent) => by_parent.entry(parent).or_default().push(place),
                None => {}
            }
        }
        let mut devices_in: std::collections::HashMap<String, Vec<Stored>> = Default::default();
        for row in &devices {
            devices_in
                .entry(row.get::<_, String>(4))
                .or_default()
                .push(stored(row));
        }
        fn build(
            place: Stored,
            by_parent: &mut std::collections::HashMap<String, Vec<Stored>>,
            devices_in: &mut std::collections::HashMap<String, Vec<Stored>>,
        ) -> PlaceTree {
            let children = by_parent.remove(&place.id).unwrap_or_default();
            let devices = devices_in.remove(&place.id).unwrap_or_default();
            PlaceTree {
                children: children
                    .into_iter()
                    .map(|c| build(c, by_parent, devices_in))
                    .collect(),
                devices,
                place,
            }
        }
        Ok(root.map(|root| build(root, &mut by_parent, &mut devices_in)))
    }

    /// Up to `limit` log entries after `seq`, in order.
    pub async fn changes_after(&self, seq: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, kind, id, version, effective_ms, deleted, body,
                     (extract(epoch FROM committed_at) * 1000)::bigint
                 FROM change_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&seq, &limit],
            )
            .await
            .map_err(StoreError::query("reading the change log"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(Change {
                    seq: r.get(0),
                    kind: Kind::from_name(r.get(1))?,
                    id: r.get(2),
                    version: r.get(3),
                    effective_ms: r.get(4),
                    deleted: r.get(5),
                    body: r.get(6),
                    committed_ms: r.get(7),
                })
            })
            .collect())
    }
}
