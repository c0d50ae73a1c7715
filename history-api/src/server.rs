//! The router ([`app`]) and the accept loop that serves it ([`serve`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::http::{Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower::ServiceBuilder;

use crate::error::ApiError;
use crate::limits::{ConnectionCounts, Limits, Peer, RequestLimits, limit_request};
use crate::metrics::Metrics;
use crate::state::ApiState;
use crate::tls::HttpListener;
use crate::{health, page, sse};

/// The OpenAPI 3.1 description of every route, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// A request that takes longer is answered 503 `timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// After shutdown is asked for, how long requests in flight may take to finish. Longer than the
/// request timeout, so only a client stalling its own request is cut off.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Every route, with the [`REQUEST_TIMEOUT`], the state's [`Limits`] and request metrics.
pub fn app(state: ApiState) -> Router {
    app_with_timeout(state, REQUEST_TIMEOUT)
}

/// [`app`] with another request timeout.
pub fn app_with_timeout(state: ApiState, timeout: Duration) -> Router {
    let metrics = state.metrics.clone();
    let limits = Arc::new(RequestLimits::new(&state.limits));
    let in_flight = (state.limits.in_flight > 0)
        .then(|| tower::limit::GlobalConcurrencyLimitLayer::new(state.limits.in_flight));
    let cors = cors(&state.cors_origins);
    let state = Arc::new(state);
    // Streams last as long as their clients stay: outside the request timeout, the cap on
    // requests in flight (they have their own cap) and the request latency histogram, but
    // under the same per-address request rate.
    let streams = Router::new()
        .route("/v1/stream", get(sse::stream))
        .with_state(state.clone())
        .layer(middleware::from_fn_with_state(
            limits.clone(),
            limit_request,
        ));
    Router::new()
        .route("/v1/ticks", get(page::ticks))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi))
        .merge(crate::web::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                // Outermost, so that refusals and timeouts are counted and timed too.
                .layer(middleware::from_fn_with_state(metrics, record_request))
                .layer(middleware::from_fn_with_state(limits, limit_request))
                .layer(HandleErrorLayer::new(
                    move |error: tower::BoxError| async move {
                        if error.is::<tower::timeout::error::Elapsed>() {
                            ApiError::Timeout(timeout)
                        } else if error.is::<tower::load_shed::error::Overloaded>() {
                            ApiError::Overloaded
                        } else {
                            ApiError::Internal(error.to_string())
                        }
                    },
                ))
                // Past the cap, refuse at once: a queue would only make every answer late.
                .load_shed()
                .option_layer(in_flight)
                .timeout(timeout),
        )
        .merge(streams)
        .layer(tower::util::option_layer(cors))
}

/// CORS for pages of `origins` (`*`: any): simple GETs, and the preflight a browser sends
/// before a request with `If-None-Match` or `Last-Event-ID`. None when no origin is allowed.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};

    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| axum::http::HeaderValue::from_str(o).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::HEAD])
            .allow_headers([
                header::IF_NONE_MATCH,
                axum::http::HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([header::ETAG, header::RETRY_AFTER])
            .max_age(Duration::from_secs(86_400)),
    )
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound {
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
    }
}

async fn record_request(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.history_request(response.status().as_u16(), started.elapsed());
    response
}

/// Counts a connection as closed when its task ends, however it ends.
struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.history_connection(false);
    }
}

/// A client that has not sent a whole request head this long after connecting (or after its
/// previous request) is disconnected: a slow-headers attack holds a socket for this long at most.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How [`serve_router`] treats connections.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// The per-address connection cap and the request head's size are applied here.
    pub limits: Limits,
    /// Where connections opened and refused are counted.
    pub metrics: Arc<Metrics>,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            header_read_timeout: HEADER_READ_TIMEOUT,
            limits: Limits::default(),
            metrics: Arc::default(),
        }
    }
}

/// Serves [`app`] on `listener` (plain HTTP, or HTTPS: [`HttpListener::https`]) until `shutdown`
/// resolves, then lets requests in flight finish (closing idle connections at once) for at most
/// 15 s, and returns.
pub async fn serve(
    listener: impl Into<HttpListener>,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let options = ServeOptions {
        header_read_timeout: HEADER_READ_TIMEOUT,
        limits: state.limits.clone(),
        metrics: state.metrics.clone(),
    };
    serve_router(listener, app(state), options, shutdown).await
}

/// [`serve`] for any router. axum's own `serve` sets no timer, so hyper's header timeout would
/// never fire, and sees no peer address: this accept loop is axum's, with the timer, the peer
/// address on each request and the per-address connection cap.
pub async fn serve_router(
    listener: impl Into<HttpListener>,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt as _;

    let ServeOptions {
        header_read_timeout,
        limits,
        metrics,
    } = options;
    let counts = ConnectionCounts::new(&limits);
    let max_head = (limits.header_bytes as usize).max(8_192);
    let mut refused = 0u64;

    let HttpListener { tcp: listener, tls } = listener.into();
    let address = listener.local_addr()?;
    tracing::info!(%address, https = tls.is_some(), "history API listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut accept_errors = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: back off instead of spinning, log sparingly.
                    accept_errors += 1;
                    if accept_errors.is_power_of_two() {
                        tracing::warn!(%error, count = accept_errors, "cannot accept an HTTP connection");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let Some(counted) = counts.admit(peer.ip()) else {
            // Closed before reading anything: the cheapest answer to an address that holds many.
            refused += 1;
            metrics.history_connection_refused();
            if refused.is_power_of_two() {
                tracing::warn!(%peer, count = refused, "HTTP connection refused: its address holds its share of connections");
            }
            drop(stream);
            continue;
        };
        // An answer larger than the socket's send buffer, and a stream's events, still go out in
        // several writes: without this, the last short write waits for the client's delayed ACK
        // of the one before, 40 ms on Linux. (A `/v1/ticks` answer is handed over as one buffer,
        // see `wire`.)
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            router
                .clone()
                .map_request(
                    move |mut request: axum::http::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(Peer(peer));
                        request
                    },
                )
                .map_response(crate::wire::wire),
        );
        let stopped = stopped.clone();
        let metrics = metrics.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _counted = counted;
            metrics.history_connection(true);
            let _open = OpenConnection(&metrics);
            let limits = (header_read_timeout, max_head);
            let Some(tls) = tls else {
                return serve_connection(stream, service, limits, stopped).await;
            };
            // The handshake gets the header timeout too: a client that starts one and stalls is
            // a slow-headers client. Failures are the client's (no TLS, a certificate it refused).
            if let Ok(Ok(stream)) =
                tokio::time::timeout(header_read_timeout, tls.accept(stream)).await
            {
                serve_connection(stream, service, limits, stopped).await;
            }
        });
    }
    drop(listener);
    tracing::info!("history API stopping: finishing requests in flight");
    let _ = stop.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            timeout_s = DRAIN_TIMEOUT.as_secs(),
            "history API stopped with requests still in flight"
        );
        connections.abort_all();
    }
    Ok(())
}

/// Serves one connection, plain or after its TLS handshake, until it ends or shutdown is asked
/// for; then lets its request in flight finish.
async fn serve_connection<I, S>(
    io: I,
    service: S,
    (header_read_timeout, max_head): (Duration, usize),
    mut stopped: tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::{TokioIo, TokioTimer};

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(max_head);
    let connection = http.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        // Errors here are the client's (reset, timed out, malformed): nothing to report.
        _ = connection.as_mut() => return,
        _ = stopped.wait_for(|stop| *stop) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}
