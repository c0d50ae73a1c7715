//! [`ApiError`]: every way a request can fail, and the JSON body each one answers with.

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use history_store::StoreError;
use serde::Serialize;

/// Why a request failed. Each variant is one `error` code in the body; see `openapi.json`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Something in the query string is wrong. `parameter` names it when it is about one parameter.
    #[error("{message}")]
    BadRequest {
        parameter: Option<String>,
        message: String,
    },
    #[error("no route for {path}; the routes are listed in /openapi.json")]
    NotFound { path: String },
    #[error("method {method} is not allowed here; use GET")]
    MethodNotAllowed { method: String },
    #[error("the history store is unavailable")]
    StoreUnavailable(#[source] StoreError),
    #[error("the request took longer than {}", seconds(*.0))]
    Timeout(Duration),
    /// A bug on our side (an answer that did not encode); never caused by what a client sent.
    #[error("the answer could not be built")]
    Internal(String),
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

impl ApiError {
    pub(crate) fn bad(parameter: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            parameter: Some(parameter.into()),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::StoreUnavailable(_) | ApiError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::NotFound { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::StoreUnavailable(_) => "store_unavailable",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal(_) => "internal",
        }
    }
}

/// The message with its causes, `outer: inner: innermost`, so one line says everything.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    /// Present (possibly null) on `bad_request` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<Option<&'a str>>,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = chain(&self);
        match &self {
            ApiError::StoreUnavailable(_) => {
                tracing::warn!(error = %message, "history request failed")
            }
            ApiError::Internal(detail) => {
                tracing::error!(error = %message, detail = %detail, "history request failed");
            }
            ApiError::Timeout(_) => tracing::warn!(error = %message, "history request timed out"),
            _ => tracing::debug!(error = %message, "history request refused"),
        }
        let body = ErrorBody {
            error: self.code(),
            parameter: match &self {
                ApiError::BadRequest { parameter, .. } => Some(parameter.as_deref()),
                _ => None,
            },
            message,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"error":"internal","message":"the error could not be encoded"}"#.to_vec()
        });
        (
            self.status(),
            [(header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response()
    }
}
