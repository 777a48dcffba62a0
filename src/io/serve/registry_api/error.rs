//! The API's errors and the status and body each answers with.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::io::connect::store::StoreError;
use crate::io::connect::store::entities::Invalid;
use crate::io::connect::store::write::WriteError;

/// A request that cannot be answered as asked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a field of the request is wrong.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// 401: no token, or one the API does not know.
    #[error("a bearer token is needed (Authorization: Bearer TOKEN)")]
    Unauthenticated,
    /// 403: the token's role may not do this.
    #[error("this token may only read")]
    Forbidden,
    /// 404: no such entity.
    #[error("{0}")]
    NotFound(String),
    /// 409: the entity exists (create), or others still name it (delete).
    #[error("{0}")]
    Conflict(String),
    /// 412: `If-Match` or `If-None-Match` does not hold.
    #[error("the entity is at version {current:?}, not the one expected")]
    Stale {
        /// Its version now (none: it does not exist).
        current: Option<i64>,
    },
    /// 503: the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Invalid(invalid) => ApiError::Invalid(invalid),
            WriteError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            WriteError::Stale { current, .. } => ApiError::Stale { current },
            WriteError::InUse(message) => ApiError::Conflict(message),
            WriteError::Store(e) => ApiError::Store(e),
        }
    }
}

impl ApiError {
    /// The status and JSON body the error answers with.
    pub fn status_and_body(&self) -> (StatusCode, serde_json::Value) {
        let (status, code) = match self {
            ApiError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            ApiError::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Stale { .. } => (StatusCode::PRECONDITION_FAILED, "stale"),
            ApiError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        };
        if let ApiError::Store(e) = self {
            tracing::warn!(error = %e, "registry API: store failed");
        }
        let mut body = json!({"error": code, "message": self.to_string()});
        if let ApiError::Invalid(invalid) = self {
            body["field"] = json!(invalid.field);
            body["message"] = json!(invalid.message);
        }
        (status, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        let mut response = (status, Json(body)).into_response();
        match &self {
            ApiError::Unauthenticated => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"iotpipe registry\""),
                );
            }
            ApiError::Stale {
                current: Some(version),
            } => {
                if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
                    response.headers_mut().insert(header::ETAG, etag);
                }
            }
            _ => {}
        }
        response
    }
}
