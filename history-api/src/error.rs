//! [`ApiError`]: every way a request can fail, and the JSON body each one answers with.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
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
    /// The client's address made more requests than its rate allows.
    #[error("too many requests from {client}; retry in {}", seconds(*.retry_after))]
    RateLimited {
        client: std::net::IpAddr,
        retry_after: Duration,
    },
    /// More requests are in flight than the server takes at once.
    #[error("the server is answering as many requests as it takes at once; retry shortly")]
    Overloaded,
    /// As many streams are open as the server serves at once.
    #[error("this server serves {max} streams at once; retry shortly")]
    TooManyStreams { max: usize },
    /// This server cannot stream the live feed (a standalone history-api without `--broker`).
    #[error("{0}")]
    StreamUnavailable(&'static str),
    #[error("the request target is {length} bytes; the most this server reads is {max}")]
    UriTooLong { length: usize, max: usize },
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
            ApiError::StoreUnavailable(_)
            | ApiError::Timeout(_)
            | ApiError::Overloaded
            | ApiError::TooManyStreams { .. }
            | ApiError::StreamUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
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
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Overloaded => "overloaded",
            ApiError::TooManyStreams { .. } => "too_many_streams",
            ApiError::StreamUnavailable(_) => "stream_unavailable",
            ApiError::UriTooLong { .. } => "uri_too_long",
            ApiError::Internal(_) => "internal",
        }
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_seconds(wait: Duration) -> u64 {
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.max(1)
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
        let mut response = (
            self.status(),
            [
                (header::CONTENT_TYPE, "application/json"),
                // What failed now may not fail on the next try: no cache in front keeps it.
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes,
        )
            .into_response();
        let retry_after = match &self {
            ApiError::RateLimited { retry_after, .. } => Some(retry_after_seconds(*retry_after)),
            ApiError::Overloaded => Some(1),
            // A stream ends when its client goes: a place frees up soon, but not at once.
            ApiError::TooManyStreams { .. } => Some(5),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1_001)), 2);
    }
}
