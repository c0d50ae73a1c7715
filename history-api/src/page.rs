//! `GET /v1/ticks`: one page of stored ticks, with what a client needs to trust it. Answered from
//! the answer cache, else the in-memory tail, else SQLite; then as `304 Not Modified` if the
//! client's `If-None-Match` already names it.

use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ticks::Timedate;

use crate::answer::{Answer, Assembled};
use crate::conditional;
use crate::error::ApiError;
use crate::metrics::AnswerSource;
use crate::query::TicksQuery;
use crate::state::ApiState;
use crate::stored::StoredPage;
use crate::wire::SentInPieces;

pub(crate) async fn ticks(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: TicksQuery,
) -> Result<Response, ApiError> {
    let answer = answer(&state, &query).await?;
    let cache_control = if answer.closed {
        conditional::CLOSED
    } else {
        conditional::open(state.feed.interval, Timedate::now())
    };
    let headers_out = [
        (header::ETAG, answer.etag.clone()),
        (header::CACHE_CONTROL, cache_control),
    ];
    if conditional::none_match(&headers, &answer.etag) {
        return Ok((StatusCode::NOT_MODIFIED, headers_out).into_response());
    }
    let content_type = [(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    )];
    let body = Body::new(PiecesBody {
        left: answer.len as u64,
        pieces: answer.body.clone(),
        next: 0,
    });
    let pieces = Extension(SentInPieces(answer.body));
    Ok((content_type, headers_out, pieces, body).into_response())
}

/// A body sent in its pieces as they are, one frame each, and the exact length makes it a
/// `Content-Length` body, as one piece would. On the way to hyper, [`crate::wire`] sends the
/// same pieces as one buffer instead.
struct PiecesBody {
    pieces: Arc<[Bytes]>,
    next: usize,
    /// Bytes not yet sent.
    left: u64,
}

impl HttpBody for PiecesBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let body = &mut *self;
        let piece = body.pieces.get(body.next).cloned();
        if let Some(piece) = &piece {
            body.next += 1;
            body.left -= piece.len() as u64;
        }
        std::task::Poll::Ready(piece.map(|piece| Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.next == self.pieces.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// The JSON body `GET /v1/ticks` answers `query` with, from the same cache, tail and store: for
/// transports other than HTTP (gRPC's `History`), so that their answers are this one's.
pub async fn ticks_json(state: &ApiState, query: &TicksQuery) -> Result<Bytes, ApiError> {
    answer(state, query).await.map(|answer| answer.joined())
}

/// The answer from the cache, else computed (and then cached if the history is final).
async fn answer(state: &ApiState, query: &TicksQuery) -> Result<Answer, ApiError> {
    // Read before anything else: a commit after this makes what follows stale, never wrong.
    let version = state.store.version().map_err(ApiError::StoreUnavailable)?;
    // A node still catching up may yet rewrite its history: it serves nothing as closed, and keeps
    // nothing in (nor takes anything from) the answer cache, whose answers assume a final past.
    let history_final = state.history_final();
    let cached = history_final
        .then(|| state.cache.get(query, version))
        .flatten();
    Ok(match cached {
        Some(answer) => {
            state.metrics.history_answer(AnswerSource::Cache);
            answer
        }
        None => {
            let answer = compute(state, query, version, history_final).await?;
            if history_final {
                state.cache.put(query, version, answer.clone());
            }
            answer
        }
    })
}

/// The answer from the tail if it holds the page, else from blocks and the tail, else from SQLite.
async fn compute(
    state: &ApiState,
    query: &TicksQuery,
    version: history_store::StoreVersion,
    history_final: bool,
) -> Result<Answer, ApiError> {
    let finish = |page: Assembled<'_>| {
        let closed = history_final && page.closed();
        Answer::encode(query, &page, &state.feed, closed)
            .map_err(|e| ApiError::Internal(e.to_string()))
    };
    match state.tail.at(version) {
        Some(recent) if recent.covers(query) => {
            state.metrics.history_answer(AnswerSource::Memory);
            return finish(recent.assemble(query));
        }
        Some(recent) => {
            let from_blocks = state
                .blocks
                .page(&state.store, &recent, query)
                .await
                .map_err(ApiError::StoreUnavailable)?;
            if let Some(page) = from_blocks {
                state.metrics.history_answer(AnswerSource::Blocks);
                return finish(page.assemble(query));
            }
        }
        None => state.tail.refresh(state.store.clone(), version),
    }
    state.metrics.history_answer(AnswerSource::Store);
    let stored = StoredPage::read(&state.store, query)
        .await
        .map_err(ApiError::StoreUnavailable)?;
    finish(stored.assemble())
}
