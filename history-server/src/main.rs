//! `history-api`: serves the publisher's SQLite store over HTTP, standalone; with `--broker`, the
//! live feed as Server-Sent Events too (`/v1/stream`); with the `grpc` feature and
//! `--grpc-listen`, over gRPC (`History`, and `Subscribe` streams that follow the feed on
//! `--broker`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use history_api::{ApiState, FeedFacts, HttpListener, TlsArgs};
use history_store::HistoryStore;
use startup::{Fatal, LogFormat, Runtime};
use ticks::{BrokerUrl, Interval};
use tokio_util::sync::CancellationToken;

/// Serves the BTC ticks the publisher stored: GET /v1/ticks?since=…, /healthz, /readyz, /metrics
/// and /openapi.json; with --broker, GET /v1/stream (the live feed as Server-Sent Events).
#[derive(Debug, Parser)]
#[command(name = "history-api", version)]
struct Cli {
    /// The SQLite file the publisher writes.
    #[arg(long, env = "PRICEFEED_DB", default_value = "pricefeed.db")]
    db: PathBuf,

    /// Address and port to listen on for HTTP.
    #[arg(long, env = "PRICEFEED_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    http_listen: String,

    #[command(flatten)]
    limits: history_api::Limits,

    #[command(flatten)]
    streams: history_api::StreamArgs,

    /// The publish interval of the feed, as reported in answers, if the store does not record it
    /// (a publisher records its interval and demo flag in the store, and those win).
    #[arg(long, env = "PRICEFEED_INTERVAL", default_value = "5s")]
    interval: Interval,

    /// The feed runs on the demo price source, if the store does not record it.
    #[arg(long, env = "PRICEFEED_DEMO")]
    demo: bool,

    /// Log lines as human-readable text or as JSON objects. RUST_LOG sets the level (default info).
    #[arg(long, env = "PRICEFEED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(flatten)]
    tls: TlsArgs,

    /// Also serve the gRPC API (pricefeed.v1: History, and Subscribe streams following --broker)
    /// here, e.g. 0.0.0.0:50051. Needs a build with the `grpc` feature.
    #[arg(
        long,
        env = "PRICEFEED_GRPC_LISTEN",
        requires = "broker",
        help_heading = "gRPC"
    )]
    grpc_listen: Option<SocketAddr>,

    /// The broker the feed is published to (mqtt://host:port): SSE streams (/v1/stream) and gRPC
    /// Subscribe streams follow it, as anonymous subscribers. Without it /v1/stream answers 503.
    #[arg(long, env = "PRICEFEED_BROKER")]
    broker: Option<BrokerUrl>,

    /// Subscribe streams open at once; one more gets RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "PRICEFEED_GRPC_MAX_STREAMS",
        default_value_t = 1000,
        help_heading = "gRPC"
    )]
    grpc_max_streams: usize,

    /// Live events held for a client that reads slowly; past it, its stream ends with
    /// RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "PRICEFEED_GRPC_STREAM_BUFFER",
        default_value_t = 1024,
        help_heading = "gRPC"
    )]
    grpc_stream_buffer: usize,
}

fn main() -> ExitCode {
    let cli: Cli = match startup::parse("history-api") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    startup::init_tracing(cli.log_format, "info");
    startup::run("history-api", Runtime::MultiThread, run(cli))
}

async fn run(cli: Cli) -> Result<(), Fatal> {
    if cli.grpc_listen.is_some() && !cfg!(feature = "grpc") {
        return Err(anyhow::anyhow!(
            "this history-api was built without gRPC: build with --features history-server/grpc"
        )
        .into());
    }
    if cli.grpc_listen.is_some() && cli.tls.files().is_some() {
        // Each stream backfills from this server's own HTTP listener, which would then be HTTPS
        // with a certificate for the public name, not for loopback.
        return Err(anyhow::anyhow!("--grpc-listen cannot be combined with --tls-cert yet").into());
    }
    // TlsError names the file to fix.
    let tls = cli.tls.files().map(|f| f.acceptor()).transpose()?;
    // Bind first: a port in use is the likeliest start-up failure, and should not leave a new,
    // empty store file behind.
    let listener = tokio::net::TcpListener::bind(&cli.http_listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.http_listen))?;
    let grpc = match cli.grpc_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen for gRPC on {address}"))?,
        ),
        None => None,
    };
    // A typo in --db must not become a server answering "no ticks" from a new, empty file.
    if !cli.db.exists() {
        return Err(anyhow::anyhow!(
            "no store at {} (the file pricefeed --db writes)",
            cli.db.display()
        )
        .into());
    }
    // StoreError::Open already names the file.
    let store = HistoryStore::open(&cli.db)?;
    // The publisher records its interval and whether it runs on demo data; that beats our flags.
    let feed = match store.feed_info().await? {
        Some(info) => FeedFacts {
            interval: info.interval,
            demo: info.demo,
        },
        None => FeedFacts {
            interval: cli.interval,
            demo: cli.demo,
        },
    };
    let shutdown = CancellationToken::new();
    let http = listener
        .local_addr()
        .context("the HTTP listener's address")?;
    // Streams backfill from this server over loopback; over HTTPS, from a plain listener on
    // loopback only (the certificate names the public host, not loopback).
    let internal = match (&tls, &cli.broker) {
        (Some(_), Some(_)) => Some(
            tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
                .await
                .context("cannot listen on loopback for the streams' backfills")?,
        ),
        _ => None,
    };
    let backfill = match &internal {
        Some(listener) => listener
            .local_addr()
            .context("the loopback listener's address")?,
        None => http,
    };
    let mut state = ApiState::new(store, feed)
        .with_limits(cli.limits)
        .with_cors(cli.streams.cors_origin.clone());
    if let Some(broker) = &cli.broker {
        let relay = history_api::relay::Relay::new(
            history_api::relay::FeedAccess::local(broker.clone(), backfill, None),
            cli.streams.limits(),
            shutdown.clone(),
            "pricefeed-sse",
        );
        state = state.with_streams(std::sync::Arc::new(relay), cli.streams.sse_heartbeat);
    }
    let stop = shutdown.clone();
    tokio::spawn(async move {
        startup::shutdown_signal().await;
        stop.cancel();
    });
    let grpc_task = match (grpc, &cli.broker) {
        (Some(grpc), Some(broker)) => {
            let limits = (cli.grpc_max_streams, cli.grpc_stream_buffer);
            Some(start_grpc(
                grpc, &state, broker, backfill, limits, &shutdown,
            ))
        }
        _ => None,
    };
    let listener = match tls {
        Some(tls) => HttpListener::https(listener, tls),
        None => listener.into(),
    };
    let options = history_api::ServeOptions {
        header_read_timeout: history_api::HEADER_READ_TIMEOUT,
        limits: state.limits.clone(),
        metrics: state.metrics.clone(),
    };
    let router = history_api::app(state);
    let internal_task = internal.map(|listener| {
        let stopped = shutdown.clone();
        tokio::spawn(history_api::serve_router(
            listener,
            router.clone(),
            options.clone(),
            async move { stopped.cancelled().await },
        ))
    });
    let stopped = shutdown.clone();
    history_api::serve_router(listener, router, options, async move {
        stopped.cancelled().await
    })
    .await
    .context("serving HTTP failed")
    .map_err(Fatal::runtime)?;
    shutdown.cancel();
    if let Some(task) = internal_task {
        task.await
            .context("the loopback HTTP server panicked")
            .map_err(Fatal::runtime)?
            .context("serving HTTP on loopback failed")
            .map_err(Fatal::runtime)?;
    }
    if let Some(task) = grpc_task {
        task.await
            .context("the gRPC server panicked")
            .map_err(Fatal::runtime)?
            .map_err(Fatal::runtime)?;
    }
    tracing::info!("stopped");
    Ok(())
}

type GrpcTask = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Serves gRPC on `listener` until `shutdown`: `History` from its own copy of the HTTP server's
/// state (same store, limits and metrics), each `Subscribe` stream on `broker`, backfilling from
/// this server's HTTP listener over loopback.
#[cfg(feature = "grpc")]
fn start_grpc(
    listener: tokio::net::TcpListener,
    state: &ApiState,
    broker: &BrokerUrl,
    http: SocketAddr,
    (max_streams, buffer): (usize, usize),
    shutdown: &CancellationToken,
) -> GrpcTask {
    let history = ApiState::new(state.store.clone(), state.feed)
        .with_metrics(state.metrics.clone())
        .with_limits(state.limits.clone());
    let feed = history_api::relay::FeedAccess::local(broker.clone(), http, None);
    let limits = history_api::relay::StreamLimits {
        max_streams,
        buffer,
    };
    let relay = history_api::relay::Relay::new(feed, limits, shutdown.clone(), "pricefeed-grpc");
    let service =
        grpc_api::PriceFeedService::new(std::sync::Arc::new(history), std::sync::Arc::new(relay));
    let stop = shutdown.clone();
    tokio::spawn(async move {
        grpc_api::serve(listener, service, async move { stop.cancelled().await })
            .await
            .context("serving gRPC failed")
    })
}

#[cfg(not(feature = "grpc"))]
fn start_grpc(
    _listener: tokio::net::TcpListener,
    _state: &ApiState,
    _broker: &BrokerUrl,
    _http: SocketAddr,
    _limits: (usize, usize),
    _shutdown: &CancellationToken,
) -> GrpcTask {
    unreachable!("run refuses --grpc-listen without the grpc feature")
}
