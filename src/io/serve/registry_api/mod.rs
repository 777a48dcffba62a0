//! The registry API: places, models and devices over HTTP, on axum (a router on hyper 1).
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/{places,models,devices}` | a page by id: `?after=` (cursor), `?limit=`, `?as_of=`, filters on body fields |
//! | `POST /v1/{kind}` | create (the id in the body); 409 if it exists |
//! | `GET /v1/{kind}/{id}` | the entity, with its `ETag`; `?as_of=` an event time |
//! | `PUT /v1/{kind}/{id}` | create or replace; `If-Match` (412 if stale), `If-None-Match: *` |
//! | `DELETE /v1/{kind}/{id}` | remove from `?effective_ms=` on; 409 while others name it |
//! | `GET /v1/{kind}/{id}/history` | every version |
//! | `GET /v1/places/{id}/tree` | the places below and their devices |
//! | `GET /v1/devices/{id}/resolved` | the device as enrichment sees it (`?as_of=`) |
//! | `GET /v1/changes` | the change log (`?after=`, `?limit=`) |
//! | `GET /v1/alerts` | a page of alerts: `?state=open\|resolved\|all`, filters on site, building, severity, device_id, cause, rule, org |
//! | `GET /v1/alerts/{id}/history` | the alert's events |
//! | `POST /v1/alerts/{id}/ack` | acknowledge (`by`, `note`): no more reminders, no escalation |
//! | `GET /v1/silences` | silences (`?state=pending\|active\|expired\|current\|all`) |
//! | `POST /v1/silences` | create: `matchers`, `starts_ms`, `ends_ms`, `created_by`, `comment` |
//! | `GET /v1/silences/{id}`, `DELETE /v1/silences/{id}` | one silence; expire it now |
//! | `GET /v1/alert-controls` | every silence version, acknowledgement and rules change, JSON Lines (`replay --alert-controls`) |
//! | `GET`, `PUT /v1/alert-rules` | the alert rules (`PUT`: a rules file, TOML; `?effective_ms=`, default now): in force without a restart |
//! | `GET /openapi.json` | this, as OpenAPI 3.1 |
//!
//! Every `/v1` route needs `Authorization: Bearer TOKEN` (401 without a known token); a token
//! of the `read` role may not write (403). Ids are one path segment: a place id holding `/`
//! is sent percent-encoded (`org-1%2Fsite-2`). A body's `effective_ms` says from when a
//! change holds (default: now); the wrong field of a body is named in a 400's `field`.

pub mod alerts;
pub mod auth;
pub mod error;
mod handlers;
mod openapi;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::dataflow::schema::MetricCatalog;
use crate::io::connect::store::Store;
use crate::io::connect::store::entities::Kind;
use auth::Tokens;

pub use handlers::{percent_encode, plural};
pub use openapi::openapi_document;

/// What the handlers share.
pub struct ApiState {
    /// The store.
    pub store: Store,
    /// The tokens the API accepts.
    pub tokens: Tokens,
    /// Metric names bodies are checked against.
    pub catalog: Arc<MetricCatalog>,
}

/// The API's routes over `state`.
pub fn router(state: Arc<ApiState>) -> Router {
    let mut router = Router::new()
        .route(
            "/openapi.json",
            get(|| async { axum::Json(openapi_document()) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/changes", get(handlers::changes))
        .route("/v1/places/{id}/tree", get(handlers::tree))
        .route("/v1/devices/{id}/resolved", get(handlers::resolved))
        .route("/v1/alerts", get(alerts::list))
        .route("/v1/alerts/{id}/history", get(alerts::history))
        .route("/v1/alerts/{id}/ack", post(alerts::acknowledge))
        .route(
            "/v1/silences",
            get(alerts::list_silences).post(alerts::create_silence),
        )
        .route(
            "/v1/silences/{id}",
            get(alerts::get_silence).delete(alerts::expire_silence),
        )
        .route("/v1/alert-controls", get(alerts::control_log))
        .route(
            "/v1/alert-rules",
            get(alerts::get_rules).put(alerts::put_rules),
        );
    for kind in Kind::ALL {
        let plural = plural(kind);
        router = router
            .route(
                &format!("/v1/{plural}"),
                get(move |s, h, q| handlers::list(s, h, kind, q))
                    .post(move |s, h, b| handlers::create(s, h, kind, b)),
            )
            .route(
                &format!("/v1/{plural}/{{id}}"),
                get(move |s, h, p, q| handlers::get_one(s, h, kind, p, q))
                    .put(move |s, h, p, b| handlers::put_one(s, h, kind, p, b))
                    .delete(move |s, h, p, q| handlers::delete_one(s, h, kind, p, q)),
            )
            .route(
                &format!("/v1/{plural}/{{id}}/history"),
                get(move |s, h, p| handlers::history(s, h, kind, p)),
            );
    }
    router.with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
