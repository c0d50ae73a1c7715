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
use crate::metrics::Metrics;
use crate::state::ApiState;
use crate::{health, page};

/// The OpenAPI 3.1 description of every route, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// A request that takes longer is answered 503 `timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// After shutdown is asked for, how long requests in flight may take to finish. Longer than the
/// request timeout, so only a client stalling its own request is cut off.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Every route, with the [`REQUEST_TIMEOUT`] and request metrics.
pub fn app(state: ApiState) -> Router {
    app_with_timeout(state, REQUEST_TIMEOUT)
}

/// [`app`] with another request timeout.
pub fn app_with_timeout(state: ApiState, timeout: Duration) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/v1/ticks", get(page::ticks))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Arc::new(state))
        .layer(
            ServiceBuilder::new()
                // Outermost, so that refusals and timeouts are counted and timed too.
                .layer(middleware::from_fn_with_state(metrics, record_request))
                .layer(HandleErrorLayer::new(
                    move |error: tower::BoxError| async move {
                        if error.is::<tower::timeout::error::Elapsed>() {
                            ApiError::Timeout(timeout)
                        } else {
                            ApiError::Internal(error.to_string())
                        }
                    },
                ))
                .timeout(timeout),
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

/// A client that has not sent a whole request head this long after connecting (or after its
/// previous request) is disconnected: a slow-headers attack holds a socket for this long at most.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves [`app`] on `listener` until `shutdown` resolves, then lets requests in flight finish
/// (closing idle connections at once) for at most 15 s, and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, app(state), HEADER_READ_TIMEOUT, shutdown).await
}

/// [`serve`] for any router, with another header timeout. axum's own `serve` sets no timer, so
/// hyper's header timeout would never fire: this accept loop is axum's, with the timer.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let address = listener.local_addr()?;
    tracing::info!(%address, "history API listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut accept_errors = 0u64;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
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
        let service = TowerToHyperService::new(router.clone());
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                // Errors here are the client's (reset, timed out, malformed): nothing to report.
                _ = connection.as_mut() => return,
                _ = stopped.wait_for(|stop| *stop) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
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
