//! The history API: serves, over HTTP, the stored ticks a client missed.
//!
//! A client that was offline asks `GET /v1/ticks?since=…` and gets every stored tick from that
//! time on, oldest first, each as the exact bytes of its MQTT payload, together with what it needs
//! to trust the answer: the gaps the publisher recorded, the earliest time this server holds, and a
//! cursor when `limit` cut the page. `GET /v1/stream` sends the same ticks, then the live ones, as
//! Server-Sent Events. The same listener answers `/healthz`, `/readyz`, `/metrics` and
//! `/openapi.json`, the hand-written description of all of it, and serves at `/` a live page that
//! draws both (the browser does the drawing).
//!
//! It reads the SQLite file the publisher writes (WAL lets it read beside the writer), either
//! inside the publisher process ([`serve`] with the publisher's store, metrics and broker flag) or
//! as the standalone `history-api` binary. It is not a second publisher and never writes a tick;
//! it computes nothing from the ticks (no charts' aggregates): it answers ticks.
//!
//! # Layout
//!
//! Imports point one way, down this list:
//!
//! - `server`: [`app`] builds the router (routes, request timeout, request metrics) so tests can
//!   drive it in-process; [`serve`] runs it on a listener until a shutdown future resolves.
//! - `page`: the `/v1/ticks` handler, alone: cache, else tail, else blocks, else SQLite, then
//!   encode; then
//!   `304 Not Modified` if the client's `If-None-Match` names the answer. [`ticks_json`] is the
//!   same answer's body for another transport (gRPC).
//! - `sse`: `/v1/stream`, the feed as Server-Sent Events: a [`relay`] stream as events, with
//!   the stream's position as each tick's id (what `Last-Event-ID` resumes from).
//! - [`relay`]: the live feed for streaming transports (SSE, and gRPC in `grpc-api`): one
//!   `pricesub` subscription to this process's own feed per stream, how many may be open, and how
//!   far a client may fall behind.
//! - `health`: `/healthz`, `/readyz` and the `/metrics` scrape.
//! - `web`: the live page at `/`, its files (`web/`) compiled in, with their Content-Security-Policy
//!   and entity tags.
//! - `state`: [`ApiState`], what the handlers share, the cache and the tail included.
//! - `cache`: the answer cache, whole answers kept for the store version they were computed at.
//! - `tail`: the newest ticks of each currency held in memory, already encoded, so that the
//!   questions nearly every client asks (what happened since a recent time) skip SQLite.
//! - `blocks`: older ticks held in memory in fixed blocks of time, already encoded, once a
//!   question has read them: what questions about the older past reach while the store counts no
//!   rewrite.
//! - `stored`: the same answer read from SQLite, in one transaction.
//! - `answer`: what an answer says ([`FeedFacts`] and the assembled page), how the limit cuts it,
//!   whether it is closed (can never change), and its JSON with its entity tag; the tail and the
//!   SQLite path each produce one.
//! - `conditional`: the entity tag of a body, the `If-None-Match` test, and the `Cache-Control`
//!   of closed and open answers.
//! - `query`: the strict reading of the `/v1/ticks` query string into a [`TicksQuery`].
//! - `cursor`: the continuation [`Cursor`] and the merged order it points into.
//! - [`metrics`]: [`Metrics`], the process's counters in Prometheus text format.
//! - `limits`: [`Limits`], what one client address may take (rate, connections, request size) and
//!   the cap on requests in flight.
//! - `error`: [`ApiError`], every failure and its JSON body.
//! - `tls`: HTTPS: the [`TlsArgs`] flags, the rustls configuration from [`TlsFiles`], and the
//!   [`HttpListener`] that [`serve`] takes, plain or with TLS.

mod answer;
mod blocks;
mod cache;
mod conditional;
mod cursor;
mod error;
mod health;
mod limits;
pub mod metrics;
mod page;
mod query;
pub mod relay;
mod server;
mod sse;
mod state;
mod stored;
mod tail;
#[cfg(test)]
mod test_store;
mod tls;
mod web;
mod wire;

pub use answer::FeedFacts;
pub use cursor::{BadCursor, Cursor, PageKey};
pub use error::ApiError;
pub use limits::Limits;
pub use metrics::Metrics;
pub use page::ticks_json;
pub use query::{DEFAULT_LIMIT, MAX_LIMIT, TicksQuery};
pub use server::{
    HEADER_READ_TIMEOUT, OPENAPI, REQUEST_TIMEOUT, ServeOptions, app, app_with_timeout, serve,
    serve_router,
};
pub use sse::StreamArgs;
pub use state::{ApiState, MqttClients, MqttClientsGauge};
pub use tls::{HttpListener, TlsArgs, TlsError, TlsFiles};
