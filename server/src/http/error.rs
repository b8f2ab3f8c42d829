//! The one error → response mapping: `{"error":{"code","message"}}` with the
//! stable code; 5xx bodies are generic, details go to the log only.

use crate::error::ApiError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Internal(detail) => tracing::error!(%detail, "internal error"),
            ApiError::StorageUnavailable(detail) => {
                tracing::warn!(%detail, "storage unavailable")
            }
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::KeyRotation = self {
            response.insert_header((actix_web::http::header::RETRY_AFTER, 10));
        }
        if let ApiError::TooManyAuthFailures { retry_after } = self {
            response.insert_header((actix_web::http::header::RETRY_AFTER, *retry_after));
        }
        if let ApiError::BodyTimeout = self {
            // The rest of the body is never read: the connection cannot be reused.
            response.force_close();
        }
        response.json(
            serde_json::json!({"error": {"code": self.code(), "message": self.public_message()}}),
        )
    }
}
