//! Alert state over HTTP: open alerts and their history, acknowledgements, silences, and the
//! control log `replay --alert-controls` reads. Same tokens as the registry: reading needs
//! the `read` role, acting the `write` role.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Role;
use super::error::ApiError;
use super::handlers::{Params, Shared, now_ms, page_limit};
use crate::dataflow::alert::AlertConfig;
use crate::dataflow::alert::control::{Acknowledgement, Silence, SilenceMatch};
use crate::dataflow::schema::MetricCatalog;
use crate::io::connect::store::Store;
use crate::io::connect::store::alert_state::{ALERT_FILTER_FIELDS, AlertFilter, rules_json};
use crate::io::connect::store::entities::Invalid;
use crate::io::support::schema_files::resolve_matchers;

/// `GET /v1/alerts`: a page of alerts (`?state=open|resolved|all`, default open), filtered by
/// `site`, `building`, `severity`, `device_id`, `cause`, `rule`, `org`.
pub async fn list(
    State(state): Shared,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Json<Value>, ApiError> {
    state.tokens.authorize(&headers, Role::Read)?;
    let mut filter = AlertFilter {
        open: Some(true),
        fields: Vec::new(),
    };
    for (name, value) in &params {
        match name.as_str() {
            "after" | "limit" => {}
            "state" => {
                filter.open = match value.as_str() {
                    "open" => Some(true),
                    "resolved" => Some(false),
                    "all" => None,
                    _ => return Err(Invalid::new("state", "must be open, resolved or all").into()),
                }
            }
            field => {
                let Some(field) = ALERT_FILTER_FIELDS.iter().find(|f| **f == field) else {
                    return Err(Invalid::new(
                        field,
                        format!(
                            "not a filter of alerts: use state, after, limit or {}",
                            ALERT_FILTER_FIELDS.join(", ")
                        ),
                    )
                    .into());
                };
                filter.fields.push((field, value.clone()));
            }
        }
    }
    filter.fields.sort();
    let limit = page_limit(&params)?;
    let after = params.get("after").map(String::as_str);
    let page = state.store.alerts(&filter, after, limit).await?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last().map(|a| a["alert_id"].clone()))
        .flatten();
    Ok(Json(json!({ "items": page, "next": next })))
}

/// `GET /v1/alerts/{id}/history`: the alert's events, in event-time order.
pub async fn history(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.tokens.authorize(&headers, Role::Read)?;
    let items = state.store.alert_history(&id).await?;
    if items.is_empty() {
        return Err(ApiError::NotFound(format!("no alert {id}")));
    }
    Ok(Json(json!({ "items": items })))
}

/// What `POST /v1/alerts/{id}/ack` takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    /// Who takes the alert on.
    by: String,
    /// Their note.
    #[serde(default)]
    note: String,
}

fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        // serde names the field it stopped at: "unknown field `x`", "missing field `by`".
        let message = e.to_string();
        let field = message
            .split('`')
            .nth(1)
            .filter(|_| message.contains("field"))
            .unwrap_or("body")
            .to_owned();
        Invalid::new(field, message).into()
    })
}

/// `POST /v1/alerts/{id}/ack`: acknowledges it now (201; 200 with the first one if it was).
pub async fn acknowledge(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    state.tokens.authorize(&headers, Role::Write)?;
    let (ack, new) = acknowledge_from(&state.store, &id, &bytes).await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(serde_json::to_value(ack).expect("serialises"))).into_response())
}

/// Checks an acknowledgement's body (`by`, `note`) and stores it now; the acknowledgement
/// and whether it is new. What the API's and the dashboard's acknowledge do.
pub async fn acknowledge_from(
    store: &Store,
    alert_id: &str,
    bytes: &[u8],
) -> Result<(Acknowledgement, bool), ApiError> {
    let body: AckBody = json_body(bytes)?;
    if body.by.trim().is_empty() {
        return Err(Invalid::new("by", "must name who takes the alert on").into());
    }
    Ok(store
        .acknowledge(alert_id, body.by.trim(), &body.note, now_ms() as u64)
        .await?)
}

/// What `POST /v1/silences` takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceBody {
    /// Which alerts (at least one list).
    matchers: SilenceMatch,
    /// From (ms since the epoch; default and at the earliest: now).
    #[serde(default)]
    starts_ms: Option<u64>,
    /// Until (exclusive).
    ends_ms: u64,
    /// Who.
    created_by: String,
    /// Why.
    #[serde(default)]
    comment: String,
}

/// Where a silence is now: `pending`, `active` or `expired`.
fn silence_state(silence: &Silence, now_ms: u64) -> &'static str {
    // One expired before it started ends where it starts.
    if now_ms >= silence.ends_ms || silence.ends_ms <= silence.starts_ms {
        "expired"
    } else if now_ms < silence.starts_ms {
        "pending"
    } else {
        "active"
    }
}

/// A silence as the API shows it: its fields and its `state` at `now_ms`.
pub fn silence_json(silence: &Silence, now_ms: u64) -> Value {
    let mut value = silence.to_json();
    value["state"] = json!(silence_state(silence, now_ms));
    value
}

/// `POST /v1/silences`: creates a silence (201, its id in `Location`).
pub async fn create_silence(
    State(state): Shared,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    state.tokens.authorize(&headers, Role::Write)?;
    let silence = create_silence_from(&state.store, &state.catalog, &bytes).await?;
    let body = silence_json(&silence, now_ms() as u64);
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(location) = format!("/v1/silences/{}", silence.id).parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Checks a silence's body and stores it. A start in the past is now: a silence cannot
/// rewrite what was already notified. What the API's and the dashboard's silence do.
pub async fn create_silence_from(
    store: &Store,
    catalog: &MetricCatalog,
    bytes: &[u8],
) -> Result<Silence, ApiError> {
    let mut body: SilenceBody = json_body(bytes)?;
    if body.matchers.is_empty() {
        return Err(Invalid::new(
            "matchers",
            "needs at least one of devices, sites, buildings, metrics, rules, severities, causes",
        )
        .into());
    }
    resolve_matchers(&mut body.matchers, catalog)
        .map_err(|message| Invalid::new("matchers.metrics", message))?;
    if body.created_by.trim().is_empty() {
        return Err(Invalid::new("created_by", "must name who silences").into());
    }
    let now = now_ms() as u64;
    let starts_ms = body.starts_ms.unwrap_or(now).max(now);
    if body.ends_ms <= starts_ms {
        return Err(Invalid::new("ends_ms", "must be after starts_ms (and after now)").into());
    }
    Ok(store
        .create_silence(
            body.matchers,
            starts_ms,
            body.ends_ms,
            body.created_by.trim(),
            &body.comment,
        )
        .await?)
}

/// `GET /v1/silences?state=`: silences by id; `state` one of pending, active, expired, or
/// `current` (pending and active, the default) or `all`.
pub async fn list_silences(
    State(state): Shared,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Json<Value>, ApiError> {
    state.tokens.authorize(&headers, Role::Read)?;
    let wanted = params.get("state").map_or("current", String::as_str);
    if !["pending", "active", "expired", "current", "all"].contains(&wanted) {
        return Err(
            Invalid::new("state", "must be pending, active, expired, current or all").into(),
        );
    }
    let now = now_ms() as u64;
    let items: Vec<Value> = state
        .store
        .silences()
        .await?
        .iter()
        .filter(|s| {
            let at = silence_state(s, now);
            wanted == "all" || wanted == at || (wanted == "current" && at != "expired")
        })
        .map(|s| silence_json(s, now))
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/silences/{id}`.
pub async fn get_silence(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.tokens.authorize(&headers, Role::Read)?;
    let silence = state
        .store
        .silence(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no silence {id}")))?;
    Ok(Json(silence_json(&silence, now_ms() as u64)))
}

/// `DELETE /v1/silences/{id}`: expires it now (a pending one never starts).
pub async fn expire_silence(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.tokens.authorize(&headers, Role::Write)?;
    let now = now_ms() as u64;
    let silence = state
        .store
        .expire_silence(&id, now)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no silence {id}")))?;
    Ok(Json(silence_json(&silence, now)))
}

/// `GET /v1/alert-controls`: every silence version and acknowledgement in commit order, as
/// JSON Lines: the file `iotpipe replay --alert-controls` reads.
pub async fn control_log(
    State(state): Shared,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Response, ApiError> {
    state.tokens.authorize(&headers, Role::Read)?;
    if let Some(name) = params.keys().next() {
        return Err(Invalid::new(name.as_str(), "takes no parameters").into());
    }
    let lines: String = state
        .store
        .control_log()
        .await?
        .iter()
        .map(|v| format!("{v}\n"))
        .collect();
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], lines).into_response())
}

/// `PUT /v1/alert-rules?effective_ms=`: new alert rules (the body is a rules file, TOML, as
/// `datasets/alert_rules.toml`), in force from `effective_ms` (default, and at the earliest:
/// now) in every `run` following the store, without a restart. A rule that cannot be used is
/// a 400 naming it (`rules.NAME`).
pub async fn put_rules(
    State(state): Shared,
    headers: HeaderMap,
    Query(params): Params,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    state.tokens.authorize(&headers, Role::Write)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Invalid::new("body", "is not UTF-8"))?;
    let mut rules: AlertConfig = toml::from_str(text)
        .map_err(|e| Invalid::new("body", format!("not alert rules (TOML): {}", e.message())))?;
    rules
        .resolve(&state.catalog)
        .map_err(|e| Invalid::new(e.at, e.message))?;
    let now = now_ms() as u64;
    let effective_ms = match params.get("effective_ms") {
        None => now,
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| Invalid::new("effective_ms", "must be an integer (ms since the epoch)"))?
            .max(now),
    };
    let change = state.store.put_rules(rules, effective_ms).await?;
    Ok((StatusCode::CREATED, Json(rules_json(&change))).into_response())
}

/// `GET /v1/alert-rules`: the latest rules put through the API (404: none; each `run` then
/// uses its own file).
pub async fn get_rules(State(state): Shared, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    state.tokens.authorize(&headers, Role::Read)?;
    let change =
        state.store.rules().await?.ok_or_else(|| {
            ApiError::NotFound("no alert rules were put: runs use their own".into())
        })?;
    Ok(Json(rules_json(&change)))
}
