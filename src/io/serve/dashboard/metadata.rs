//! The dashboard's view of the metadata store: the hierarchy one level at a time, and a
//! device with its model, firmware, thresholds and change history.
//!
//! The store is opened on the dashboard's own runtime, on first use: its pooled connections
//! are driven by the runtime that made them.

use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::io::connect::store::entities::Kind;
use crate::io::connect::store::{Store, StoreConfig, StoreError};

/// Places or devices listed per level at most: a level with more says so (`truncated`).
const LEVEL_LIMIT: i64 = 500;

/// The store as the dashboard reads it.
pub struct MetadataView {
    config: StoreConfig,
    store: OnceCell<Store>,
}

impl MetadataView {
    /// A view of the store `config` names (opened on first use).
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            store: OnceCell::new(),
        }
    }

    /// The store, opened on first use.
    pub async fn store(&self) -> Result<&Store, StoreError> {
        self.store
            .get_or_try_init(|| Store::open(&self.config, |name| std::env::var(name).ok()))
            .await
    }

    /// A place with its child places and its devices; without `place_id`, the orgs.
    pub async fn level(&self, place_id: Option<&str>) -> Result<Option<Value>, StoreError> {
        let store = self.store().await?;
        let (place, children, devices) = match place_id {
            None => {
                let orgs = store
                    .list(
                        Kind::Place,
                        &[("kind", "org".into())],
                        None,
                        None,
                        None,
                        LEVEL_LIMIT,
                    )
                    .await?;
                (Value::Null, orgs, Vec::new())
            }
            Some(id) => {
                let Some(place) = store.get(Kind::Place, id, None).await? else {
                    return Ok(None);
                };
                let children = store
                    .list(
                        Kind::Place,
                        &[("parent_id", id.into())],
                        None,
                        None,
                        None,
                        LEVEL_LIMIT,
                    )
                    .await?;
                let devices = store
                    .list(
                        Kind::Device,
                        &[("place_id", id.into())],
                        None,
                        None,
                        None,
                        LEVEL_LIMIT,
                    )
                    .await?;
                let path = self.path(store, &place.body).await?;
                (
                    json!({"id": place.id, "body": place.body, "path": path}),
                    children,
                    devices,
                )
            }
        };
        let truncated = children.len() as i64 == LEVEL_LIMIT || devices.len() as i64 == LEVEL_LIMIT;
        Ok(Some(json!({
            "place": place,
            "places": children.iter().map(|p| json!({
                "id": p.id,
                "kind": p.body["kind"],
                "name": p.body["name"],
            })).collect::<Vec<_>>(),
            "devices": devices.iter().map(|d| json!({
                "id": d.id,
                "model_id": d.body["model_id"],
                "firmware": d.body["firmware"],
                "status": d.body["status"],
            })).collect::<Vec<_>>(),
            "truncated": truncated,
        })))
    }

    /// The places above a place's parent, farthest first, for the breadcrumb.
    async fn path(&self, store: &Store, place: &Value) -> Result<Vec<Value>, StoreError> {
        let mut path = Vec::new();
        let mut parent = place["parent_id"].as_str().map(str::to_owned);
        // A cycle someone wrote into the store ends here, as in the dataflow.
        for _ in 0..crate::dataflow::metadata::MAX_PLACE_DEPTH {
            let Some(id) = parent.take() else { break };
            let Some(above) = store.get(Kind::Place, &id, None).await? else {
                break;
            };
            parent = above.body["parent_id"].as_str().map(str::to_owned);
            path.push(
                json!({"id": above.id, "kind": above.body["kind"], "name": above.body["name"]}),
            );
        }
        path.reverse();
        Ok(path)
    }

    /// A device now: its record, model, resolved entry (places and effective thresholds) and
    /// every version it had.
    pub async fn device(&self, device_id: &str) -> Result<Option<Value>, StoreError> {
        let store = self.store().await?;
        let Some(device) = store.get(Kind::Device, device_id, None).await? else {
            return Ok(None);
        };
        let model = match device.body["model_id"].as_str() {
            Some(model_id) => store.get(Kind::Model, model_id, None).await?,
            None => None,
        };
        let resolved = store.device_as_of(device_id, i64::MAX).await?;
        let history: Vec<Value> = store
            .history(Kind::Device, device_id)
            .await?
            .into_iter()
            .map(|(version, deleted)| {
                json!({
                    "version": version.version,
                    "effective_ms": version.effective_ms,
                    "deleted": deleted,
                    "body": version.body,
                })
            })
            .collect();
        Ok(Some(json!({
            "device": {"id": device.id, "version": device.version, "body": device.body},
            "model": model.map(|m| json!({"id": m.id, "body": m.body})),
            "resolved": resolved,
            "history": history,
        })))
    }
}
