//! `GET /v1/ticks`: one page of stored ticks, with what a client needs to trust it. Answered from
//! the answer cache, else the in-memory tail, else SQLite.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::answer::encode;
use crate::error::ApiError;
use crate::metrics::AnswerSource;
use crate::query::TicksQuery;
use crate::state::ApiState;
use crate::stored::StoredPage;

pub(crate) async fn ticks(
    State(state): State<Arc<ApiState>>,
    query: TicksQuery,
) -> Result<Response, ApiError> {
    // Read before anything else: a commit after this makes what follows stale, never wrong.
    let version = state.store.version().map_err(ApiError::StoreUnavailable)?;
    if let Some(body) = state.cache.get(&query, version) {
        state.metrics.history_answer(AnswerSource::Cache);
        return Ok(json(body));
    }
    let recent = state.tail.at(version);
    let encoded = match &recent {
        Some(recent) if recent.covers(&query) => {
            state.metrics.history_answer(AnswerSource::Memory);
            encode(&query, &recent.assemble(&query), &state.feed)
        }
        _ => {
            if recent.is_none() {
                state.tail.refresh(state.store.clone(), version);
            }
            state.metrics.history_answer(AnswerSource::Store);
            let page = StoredPage::read(&state.store, &query)
                .await
                .map_err(ApiError::StoreUnavailable)?;
            encode(&query, &page.assemble(), &state.feed)
        }
    };
    let body = Bytes::from(encoded.map_err(|e| ApiError::Internal(e.to_string()))?);
    state.cache.put(&query, version, body.clone());
    Ok(json(body))
}

fn json(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
