//! [`PriceFeedService`]: `Subscribe` and `History` on one type.

use std::sync::Arc;

use history_api::ApiState;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::pb;
use crate::stream::{EventStream, FeedAccess, StreamLimits, Streams};

/// The `pricefeed.v1.PriceFeed` service.
pub struct PriceFeedService {
    history: Arc<ApiState>,
    streams: Streams,
}

impl PriceFeedService {
    /// Answers `History` from `history` and opens each `Subscribe` stream on `feed`; cancelling
    /// `shutdown` ends every open stream with UNAVAILABLE (so clients resume elsewhere or later).
    pub fn new(
        history: Arc<ApiState>,
        feed: FeedAccess,
        limits: StreamLimits,
        shutdown: CancellationToken,
    ) -> PriceFeedService {
        PriceFeedService {
            history,
            streams: Streams::new(feed, limits, shutdown),
        }
    }
}

#[tonic::async_trait]
impl pb::price_feed_server::PriceFeed for PriceFeedService {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.streams.open(request.into_inner()).map(Response::new)
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        crate::history::answer(&self.history, request.into_inner())
            .await
            .map(Response::new)
    }
}
