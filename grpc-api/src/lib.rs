//! The feed over gRPC, package `pricefeed.v1` (`proto/pricefeed.proto`).
//!
//! `Subscribe` streams the ticks of the asked currencies, from an optional `since`, then live,
//! with the guarantees of the MQTT feed and `pricesub`: in timedate order per currency, each once,
//! gaps reported as they are reached. It does not re-implement the hand-off: each stream is one
//! [`pricesub::subscribe`] against this process's own broker and history API, whose events are
//! translated one for one. `History` answers exactly what `GET /v1/ticks` answers, from the same
//! validation and the same cache, tail and store ([`history_api::ticks_json`]). Standard health
//! checking (`grpc.health.v1`) and server reflection run on the same listener.
//!
//! It is not a second feed: it publishes nothing and stores nothing; it is only built with the
//! `grpc` feature of `publisher`.
//!
//! # Layout
//!
//! - [`pb`] (here): the messages, server and client generated from the `.proto`.
//! - [`serve`] (here): every service on a listener until shutdown.
//! - `stream`: `Subscribe`: one [`history_api::relay`] stream (a `pricesub` subscription) per
//!   call, shared with SSE: its limits and where it subscribes are the relay's.
//! - `history`: `History`: the request as a [`history_api::TicksQuery`], the answer's JSON as a
//!   `HistoryResponse`.
//! - `service`: [`PriceFeedService`], the two calls on one type, and how errors become statuses.

// tonic's `Status` (176 bytes) is what every gRPC handler returns: boxing it here would only be
// undone at the trait's boundary.
#![allow(clippy::result_large_err)]

mod history;
mod service;
mod stream;

use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use crate::service::PriceFeedService;

/// The generated `pricefeed.v1` code.
pub mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("pricefeed.v1");

    /// The encoded descriptor set of `pricefeed.proto`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("pricefeed_descriptor");
}

/// Serves `pricefeed.v1.PriceFeed`, `grpc.health.v1.Health` (the feed service and the server as a
/// whole reported SERVING) and reflection on `listener` until `shutdown` resolves; then waits for
/// the calls in flight, whose streams the service's own shutdown token has already ended.
pub async fn serve(
    listener: TcpListener,
    service: PriceFeedService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<pb::price_feed_server::PriceFeedServer<PriceFeedService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the descriptor sets are built by protoc");
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "gRPC listening");
    }
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(pb::price_feed_server::PriceFeedServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
