//! What people do on the dashboard: acknowledge an alert, silence one (or its device, or its
//! site), expire a silence. Each is the registry API's own action on the metadata store (same
//! checks, same answers), behind the same bearer tokens: without a token configured for the
//! dashboard, it only shows.
//!
//! | route | what |
//! |---|---|
//! | `POST /api/alerts/{id}/ack` | `{by, note}`: as `POST /v1/alerts/{id}/ack` |
//! | `POST /api/silences` | as `POST /v1/silences` |
//! | `POST /api/silences/{id}/expire` | as `DELETE /v1/silences/{id}` |
//! | `GET /api/silences` | the silences pending or active |

use std::collections::HashMap;

use serde_json::{Value, json};

use super::metadata::MetadataView;
use crate::dataflow::alert::AlertEvent;
use crate::dataflow::alert::control::Silence;
use crate::dataflow::schema::MetricCatalog;
use crate::io::serve::registry_api::alerts::{acknowledge_from, create_silence_from, silence_json};
use crate::io::serve::registry_api::auth::{Role, Tokens};
use crate::io::serve::registry_api::error::ApiError;
use crate::io::support::schema_files::resolve_matchers;

/// A path segment, percent-decoded (alert ids hold `/`).
fn decoded(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the action `path` names with `body`, as the holder of `authorization`; the status and
/// JSON to answer with.
pub async fn act(
    view: Option<&MetadataView>,
    tokens: &Tokens,
    catalog: &MetricCatalog,
    path: &str,
    authorization: &str,
    body: &[u8],
) -> (u16, Value) {
    let Some(view) = view else {
        let error = "no metadata store: start with --database-url (demo) or [store] url (run)";
        return (404, json!({"error": "not_found", "message": error}));
    };
    if tokens.is_empty() {
        let message = "the dashboard only shows: give it a write token (demo \
                       --action-token-env VAR, run [dashboard] action_token_env) to acknowledge \
                       and silence";
        return (403, json!({"error": "forbidden", "message": message}));
    }
    let answer = async {
        tokens.authorize_value(Some(authorization).filter(|a| !a.is_empty()), Role::Write)?;
        let store = view.store().await?;
        let segments: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
        match segments.as_slice() {
            ["alerts", id, "ack"] => {
                let (ack, new) = acknowledge_from(store, &decoded(id), body).await?;
                let status = if new { 201 } else { 200 };
                Ok((status, serde_json::to_value(ack).expect("serialises")))
            }
            ["silences"] => {
                let silence = create_silence_from(store, catalog, body).await?;
                Ok((201, silence_json(&silence, now_ms())))
            }
            ["silences", id, "expire"] => {
                let id = decoded(id);
                let silence = store
                    .expire_silence(&id, now_ms())
                    .await?
                    .ok_or_else(|| ApiError::NotFound(format!("no silence {id}")))?;
                Ok((200, silence_json(&silence, now_ms())))
            }
            _ => Err(ApiError::NotFound(format!("no action {path}"))),
        }
    };
    match answer.await {
        Ok(ok) => ok,
        Err(e) => {
            let (status, body) = e.status_and_body();
            (status.as_u16(), body)
        }
    }
}

/// The silences pending or active now, and the acknowledgements of `alerts`: what the page
/// shows beside each open alert before the pipeline's own events say so.
pub async fn alert_state(
    view: &MetadataView,
    catalog: &MetricCatalog,
    alerts: &[AlertEvent],
) -> Result<(Vec<Silence>, HashMap<String, String>), crate::io::connect::store::StoreError> {
    let store = view.store().await?;
    let now = now_ms();
    let mut silences: Vec<Silence> = store
        .silences()
        .await?
        .into_iter()
        .filter(|s| s.ends_ms > now && s.ends_ms > s.starts_ms)
        .collect();
    for silence in &mut silences {
        // A name the catalog lost matches nothing, as the pipeline has it.
        let _ = resolve_matchers(&mut silence.matchers, catalog);
    }
    let ids: Vec<String> = alerts.iter().map(|a| a.alert_id.clone()).collect();
    let acks = store
        .acknowledgements(&ids)
        .await?
        .into_iter()
        .map(|a| (a.alert_id.clone(), a.by))
        .collect();
    Ok((silences, acks))
}

/// The silence of `silences` that mutes `alert` now, if one does.
pub fn silenced_now<'a>(silences: &'a [Silence], alert: &AlertEvent) -> Option<&'a Silence> {
    let now = now_ms();
    silences.iter().find(|s| s.mutes(alert, now))
}
