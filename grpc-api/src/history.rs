//! `History`: the request read by the history API's own validation, answered with the history
//! API's own answer, re-shaped into a `HistoryResponse`.

use std::collections::BTreeMap;

use history_api::{ApiError, ApiState, TicksQuery};
use serde::Deserialize;
use ticks::wire::WireTick;
use ticks::{Currency, Gap, Tick, Timedate};
use tonic::Status;

use crate::pb;
use crate::stream::{gap_message, tick_message};

/// The page as `GET /v1/ticks` sends it.
#[derive(Deserialize)]
struct Page {
    since: Timedate,
    currencies: Vec<Currency>,
    /// Ordered by currency, which is the order of `currencies`.
    ticks: BTreeMap<Currency, Vec<WireTick>>,
    gaps: Vec<Gap>,
    earliest: Option<Timedate>,
    since_before_earliest: bool,
    latest: Option<Timedate>,
    interval: String,
    demo: bool,
    next_cursor: Option<String>,
}

pub(crate) async fn answer(
    state: &ApiState,
    request: pb::HistoryRequest,
) -> Result<pb::HistoryResponse, Status> {
    let currency = (!request.currencies.is_empty()).then(|| request.currencies.join(","));
    let query = TicksQuery::from_fields(
        request.since,
        currency,
        request.limit.map(|n| n.to_string()),
        request.cursor,
    )
    .map_err(|e| status(&e))?;
    let body = history_api::ticks_json(state, &query)
        .await
        .map_err(|e| status(&e))?;
    let page: Page = serde_json::from_slice(&body).map_err(|e| {
        tracing::error!(error = %e, "a history answer did not read back");
        Status::internal("the answer could not be built")
    })?;
    let ticks = page
        .ticks
        .into_iter()
        .flat_map(|(currency, run)| {
            run.into_iter().map(move |wire| {
                tick_message(&Tick {
                    currency,
                    timedate: wire.timedate,
                    price: wire.price,
                })
            })
        })
        .collect();
    Ok(pb::HistoryResponse {
        since: page.since.to_string(),
        currencies: page.currencies.iter().map(|c| c.code().into()).collect(),
        ticks,
        gaps: page.gaps.iter().map(gap_message).collect(),
        earliest: page.earliest.map(|t| t.to_string()),
        since_before_earliest: page.since_before_earliest,
        latest: page.latest.map(|t| t.to_string()),
        interval: page.interval,
        demo: page.demo,
        next_cursor: page.next_cursor,
    })
}

/// The status of a history error: what a client sent is never INTERNAL.
fn status(error: &ApiError) -> Status {
    match error {
        ApiError::BadRequest {
            parameter: Some(parameter),
            message,
        } => Status::invalid_argument(format!("{}: {message}", field(parameter))),
        ApiError::BadRequest {
            parameter: None,
            message,
        } => Status::invalid_argument(message.clone()),
        ApiError::RateLimited { .. } | ApiError::Overloaded => {
            Status::resource_exhausted(error.to_string())
        }
        ApiError::StoreUnavailable(_) | ApiError::Timeout(_) => {
            tracing::warn!(error = %error, "gRPC history request failed");
            Status::unavailable(error.to_string())
        }
        _ => {
            tracing::error!(error = ?error, "gRPC history request failed");
            Status::internal(error.to_string())
        }
    }
}

/// The request field a query parameter is read from.
fn field(parameter: &str) -> &str {
    match parameter {
        "currency" => "currencies",
        other => other,
    }
}
