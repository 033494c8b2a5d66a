//! API errors: one JSON shape (`title`, `details`, `causes[{field, message}]`) and the one place
//! where store errors become HTTP statuses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meshzone_model::{Violation, Violations};
use meshzone_store::StoreError;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub title: String,
    pub details: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Violation>,
}

impl ApiError {
    pub fn new(status: StatusCode, title: &str, details: impl Into<String>) -> Self {
        ApiError {
            status,
            title: title.to_string(),
            details: details.into(),
            causes: Vec::new(),
        }
    }

    pub fn not_found(details: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", details)
    }

    pub fn bad_request(details: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", details)
    }

    pub fn invalid(violations: Violations) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            title: "Could not process a resource".into(),
            details: "Resource is not valid".into(),
            causes: violations.violations,
        }
    }

    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::invalid(Violations::one(field, message))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => ApiError::not_found(e.to_string()),
            StoreError::AlreadyExists(_) | StoreError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string())
            }
            StoreError::MeshNotFound(ref mesh) => {
                ApiError::invalid_field("mesh", format!("mesh {mesh:?} does not exist"))
            }
            StoreError::OwnerNotFound(_) => ApiError::bad_request(e.to_string()),
            StoreError::Invalid(v) => ApiError::invalid(v),
            StoreError::Backend(msg) => {
                tracing::error!(error = %msg, "store failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal server error",
                    msg,
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}
