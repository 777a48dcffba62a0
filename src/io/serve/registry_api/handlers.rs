//! What each route does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::ApiState;
use super::auth::Role;
use super::error::ApiError;
use crate::io::connect::store::entities::{Invalid, Kind, check_body, check_id};
use crate::io::connect::store::read::{Stored, filter_fields};
use crate::io::connect::store::write::Precondition;

/// Entities a page holds unless `limit` says otherwise, and at most.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1_000;

pub(super) type Params = Query<HashMap<String, String>>;
pub(super) type Shared = State<Arc<ApiState>>;

/// The entity as the API shows it: its fields, its id, version and effective time.
fn entity_json(stored: &Stored) -> Value {
    let mut object = match &stored.body {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    object.insert("id".into(), json!(stored.id));
    object.insert("version".into(), json!(stored.version));
    object.insert("effective_ms".into(), json!(stored.effective_ms));
    Value::Object(object)
}

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header")
}

fn with_etag(status: StatusCode, stored: &Stored) -> Response {
    let mut response = (status, Json(entity_json(stored))).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(stored.version));
    response
}

fn integer(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                Invalid::new(name, "must be an integer (ms since the epoch for times)")
            })
        })
        .transpose()
        .map_err(ApiError::from)
}

/// The `limit` of a page: 1 to [`MAX_PAGE`], default [`DEFAULT_PAGE`].
pub(super) fn page_limit(params: &HashMap<String, String>) -> Result<i64, ApiError> {
    let limit = integer(params, "limit")?.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Invalid::new("limit", format!("must lie in [1, {MAX_PAGE}]")).into());
    }
    Ok(limit)
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The precondition `If-Match` / `If-None-Match` state.
fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let header_text = |name| {
        headers
            .get(name)
            .map(|v| v.to_str().map(str::trim).unwrap_or(""))
    };
    if let Some(value) = header_text(header::IF_MATCH) {
        if value == "*" {
            return Ok(Precondition::Exists);
        }
        let version = value
            .trim_start_matches("W/")
            .trim_matches('"')
            .parse::<i64>()
            .map_err(|_| Invalid::new("If-Match", "must be an ETag this API gave (\"3\") or *"))?;
        return Ok(Precondition::Version(version));
    }
    match header_text(header::IF_NONE_MATCH) {
        Some("*") => Ok(Precondition::Absent),
        Some(_) => Err(Invalid::new("If-None-Match", "only * is supported (create only)").into()),
        None => Ok(Precondition::None),
    }
}

/// `GET /v1/{kind}`: a page of entities, filtered by body fields, after a cursor.
pub async fn list(
    State(state): Shared,
    headers: HeaderMap,
    kind: Kind,
    Query(params): Params,
) -> Result<Json<Value>, ApiError> {
    state.tokens.authorize(&headers, Role::Read)?;
    let mut filters = Vec::new();
    for (name, value) in &params {
        match name.as_str() {
            "after" | "limit" | "as_of" => {}
            field => {
                let known = filter_fields(kind);
                let Some(field) = known.iter().find(|f| **f == field) else {
                    return Err(Invalid::new(
                        field,
                        format!(
                            "not a filter of {}: use after, limit, as_of or {}",
                            plural(kind),
                            known.join(", ")
                        ),
                    )
                    .into());
                };
                filters.push((*field, value.clone()));
            }
        }
    }
    let limit = page_limit(&params)?;
    let as_of = integer(&params, "as_of")?;
    let after = params.get("after").map(String::as_str);
    let page = state
        .store
        .list(kind, &filters, None, as_of, after, limit)
        .await?;
    // A full page may have more after it: its last id is the next cursor.
    let next = (page.len() as i64 == limit)
        .then(|| page.last().map(|s| s.id.clone()))
        .flatten();
    Ok(Json(json!({
        "items": page.iter().map(entity_json).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// `GET /v1/{kind}/{id}`: the entity now, or `?as_of=` an event time.
pub async fn get_one(
    State(state): Shared,
    headers: HeaderMap,
    kind: Kind,
    Path(id): Path<String>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    state.tokens.authorize(&headers, Role::Read)?;
    let as_of = integer(&params, "as_of")?;
    match state.store.get(kind, &id, as_of).await? {
        Some(stored) => Ok(with_etag(StatusCode::OK, &stored)),
        None => Err(ApiError::NotFound(format!("no {} {id}", kind.name()))),
    }
}

/// Parses a request body into the entity's fields and its effective time (default: now).
fn body_of(
    bytes: &Bytes,
    id: Option<&str>,
    state: &ApiState,
    kind: Kind,
) -> Result<(String, Value, i64), ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Invalid::new("body", format!("not JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(Invalid::new("body", "must be a JSON object").into());
    };
    // What a GET shows beside the fields may come back: the id must agree, the version is
    // the ETag's business, the effective time says when the change holds.
    let body_id = object.remove("id");
    object.remove("version");
    let effective_ms = match object.remove("effective_ms") {
        None => now_ms(),
        Some(v) => v.as_i64().ok_or_else(|| {
            Invalid::new("effective_ms", "must be an integer (ms since the epoch)")
        })?,
    };
    let id = match (id, body_id) {
        (Some(path), None) => path.to_owned(),
        (Some(path), Some(Value::String(body))) if body == path => body,
        (Some(_), Some(_)) => {
            return Err(Invalid::new("id", "differs from the id in the path").into());
        }
        (None, Some(Value::String(body))) => body,
        (None, _) => return Err(Invalid::new("id", "is needed (a string)").into()),
    };
    check_id("id", &id)?;
    let body = check_body(kind, Value::Object(object), &state.catalog)?;
    Ok((id, body, effective_ms))
}

/// Stores a write and answers with the entity as it now is.
async fn write(
    state: &ApiState,
    kind: Kind,
    id: &str,
    body: &Value,
    effective_ms: i64,
    precondition: Precondition,
) -> Result<Response, ApiError> {
    let written = state
        .store
        .put(kind, id, body, effective_ms, precondition)
        .await?;
    let stored = state
        .store
        .get(kind, id, None)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no {} {id}", kind.name())))?;
    let status = if written.version == 1 && written.seq.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = with_etag(status, &stored);
    if status == StatusCode::CREATED {
        let location = format!("/v1/{}/{}", plural(kind), percent_encode(id));
        if let Ok(location) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, location);
        }
    }
    Ok(response)
}

/// `PUT /v1/{kind}/{id}`: create or replace (`If-Match`, `If-None-Match: *`).
pub async fn put_one(
    State(state): Shared,
    headers: HeaderMap,
    kind: Kind,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    state.tokens.authorize(&headers, Role::Write)?;
    let precondition = precondition(&headers)?;
    let (id, body, effective_ms) = body_of(&bytes, Some(&id), &state, kind)?;
    write(&state, kind, &id, &body, effective_ms, precondition).await
}

/// `POST /v1/{kind}`: create; the id is in the body. 409 if it exists.
pub async fn create(
    State(state): Shared,
    headers: HeaderMap,
    kind: Kind,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    state.tokens.authorize(&headers, Role::Write)?;
    let (id, body, effective_ms) = body_of(&bytes, None, &state, kind)?;
    match write(&state, kind, &id, &body, effective_ms, Precondition::Absent).await {
        Err(ApiError::Stale { .. }) => Err(ApiError::Conflict(format!(
            "{} {id} exists: PUT /v1/{}/{} to change it",
            kind.name(),
            plural(kind),
            percent_encode(&id)
        ))),
        other => other,
    }
}

/// `DELETE /v1/{kind}/{id}`: removes it from `?effective_ms=` (default now) on.
pub async fn delete_one(
    State(state): Shared,
    headers: HeaderMap,
    kind: Kind,
    Path(id): Path<String>,
    Query(params): Params,
) -> Result<StatusCode, ApiError> {
    state.tokens.authorize(&headers, Role::Write)?;
    let precondition = precondition(&headers)?;
    let effective_ms = integer(&params, "effective_ms")?.unwrap_or_else(now_ms);
    state
        .store
        .delete(kind, &id, effective_ms, precondition)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/{kind}/{id}/history`: every version, oldest first.
pub async fn history(
    State(state): Shared,
    headers: HeaderMap,
    kind: Kind,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.tokens.authorize(&headers, Role::Read)?;
    let versions = state.store.history(kind, &id).await?;
    if versions.is_empty() {
        return Err(ApiError::NotFound(format!("no {} {id}", kind.name())));
    }
    let items: Vec<Value> = versions
        .iter()
        .map(|(stored, deleted)| {
            let mut v = entity_json(stored);
            v["deleted"] = json!(deleted);
            v
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/places/{id}/tree`: the place, the places below it and their devices.
pub async fn tree(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.tokens.authorize(&headers, Role::Read)?;
    let tree = state
        .store
        .tree(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no place {id}")))?;
    fn render(tree: &crate::io::connect::store::read::PlaceTree) -> Value {
        let mut place = entity_json(&tree.place);
        place["children"] = tree.children.iter().map(render).collect();
        place["devices"] = tree.devices.iter().map(entity_json).collect();
        place
    }
    Ok(Json(render(&tree)))
}

/// `GET /v1/devices/{id}/resolved?as_of=`: the device as enrichment sees it then: its places'
/// names, its model's type, its thresholds (the model's defaults under its own).
pub async fn resolved(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Params,
) -> Result<Json<Value>, ApiError> {
    state.tokens.authorize(&headers, Role::Read)?;
    let at = integer(&params, "as_of")?.unwrap_or_else(now_ms);
    let entry =
        state.store.device_as_of(&id, at).await?.ok_or_else(|| {
            ApiError::NotFound(format!("device {id} is not registered at {at} ms"))
        })?;
    Ok(Json(
        serde_json::to_value(entry).expect("entries serialise"),
    ))
}

/// `GET /v1/changes?after=&limit=`: the change log, in order.
pub async fn changes(
    State(state): Shared,
    headers: HeaderMap,
    Query(params): Params,
) -> Result<Json<Value>, ApiError> {
    state.tokens.authorize(&headers, Role::Read)?;
    let after = integer(&params, "after")?.unwrap_or(0);
    let limit = page_limit(&params)?;
    let page = state.store.changes_after(after, limit).await?;
    let items: Vec<Value> = page
        .iter()
        .map(|c| {
            json!({"seq": c.seq, "kind": c.kind, "id": c.id, "version": c.version,
                   "effective_ms": c.effective_ms, "deleted": c.deleted, "body": c.body})
        })
        .collect();
    let next = page.last().map(|c| c.seq);
    Ok(Json(json!({ "items": items, "next": next })))
}

/// The path segment of a kind.
pub fn plural(kind: Kind) -> &'static str {
    match kind {
        Kind::Place => "places",
        Kind::Model => "models",
        Kind::Device => "devices",
    }
}

/// An id as one path segment (place ids hold `/`).
pub fn percent_encode(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}
