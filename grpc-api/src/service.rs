//! [`PriceFeedService`]: `Subscribe` and `History` on one type.

use std::sync::Arc;

use history_api::ApiState;
use history_api::relay::Relay;
use tonic::{Request, Response, Status};

use crate::pb;
use crate::stream::EventStream;

/// The `pricefeed.v1.PriceFeed` service.
pub struct PriceFeedService {
    history: Arc<ApiState>,
    streams: Arc<Relay>,
}

impl PriceFeedService {
    /// Answers `History` from `history` and opens each `Subscribe` stream on `streams`; the
    /// relay's shutdown ends every open stream with UNAVAILABLE (so clients resume elsewhere or
    /// later).
    pub fn new(history: Arc<ApiState>, streams: Arc<Relay>) -> PriceFeedService {
        PriceFeedService { history, streams }
    }
}

#[tonic::async_trait]
impl pb::price_feed_server::PriceFeed for PriceFeedService {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        crate::stream::open(&self.streams, request.into_inner()).map(Response::new)
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
