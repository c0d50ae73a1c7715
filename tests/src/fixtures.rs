//! [`FixtureServer`]: a local HTTP server (127.0.0.1, free port) serving the recorded price-API
//! bodies in `tests/fixtures/sources/`, switchable to failing modes. No test reaches the internet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// The recorded source bodies.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/sources")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// How the fake source answers.
#[derive(Debug, Clone)]
pub enum Mode {
    /// 200 with the body registered for the path.
    Serve,
    /// This status with a JSON error body.
    Status(u16),
    /// 200 with an HTML page (a captive portal, a CDN error page).
    Html,
    /// Never answers.
    Hang,
}

/// Requests seen by a fixture server: path and User-Agent.
type Hits = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// The body to answer for a path, computed per request.
type Bodies = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

#[derive(Clone)]
struct FixtureState {
    bodies: Bodies,
    mode: Arc<Mutex<Mode>>,
    hits: Hits,
}

/// A local stand-in for a public price API.
pub struct FixtureServer {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    hits: Hits,
    task: tokio::task::JoinHandle<()>,
}

impl FixtureServer {
    /// Serves `body` at each path (query strings are ignored).
    pub async fn start(routes: &[(&str, String)]) -> FixtureServer {
        let routes: HashMap<String, String> = routes
            .iter()
            .map(|(p, b)| (p.to_string(), b.clone()))
            .collect();
        FixtureServer::start_with(Arc::new(move |path: &str| routes.get(path).cloned())).await
    }

    /// Serves what `bodies` gives for each path, asked per request; a 404 where it gives none.
    async fn start_with(bodies: Bodies) -> FixtureServer {
        let state = FixtureState {
            bodies,
            mode: Arc::new(Mutex::new(Mode::Serve)),
            hits: Arc::new(Mutex::new(Vec::new())),
        };
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FixtureServer {
            addr,
            mode: state.mode,
            hits: state.hits,
            task,
        }
    }

    /// Kraken's ticker for USD and EUR (`tests/fixtures/sources/kraken.json`).
    pub async fn kraken() -> FixtureServer {
        FixtureServer::start(&[("/0/public/Ticker", fixture("kraken.json"))]).await
    }

    /// Kraken's ticker with a price that moves: the recorded answer, its last-trade prices
    /// stepped by a seeded random walk (about 0.02% a step at most) on every request, so that a chart of
    /// the feed has a shape and each tick its own price.
    pub async fn kraken_walk(seed: u64) -> FixtureServer {
        let recorded = fixture("kraken.json");
        // Last-trade prices in tenths: USD 77726.1 and EUR 68644.2, as recorded.
        let (usd, eur) = ("\"c\": [\"77726.10000\"", "\"c\": [\"68644.20000\"");
        assert!(recorded.contains(usd) && recorded.contains(eur));
        let walk = Mutex::new((fastrand::Rng::with_seed(seed), 777_261_i64, 686_442_i64));
        FixtureServer::start_with(Arc::new(move |path: &str| {
            if path != "/0/public/Ticker" {
                return None;
            }
            let mut walk = walk.lock().unwrap();
            let step = walk.0.i64(-150..=150);
            walk.1 += step;
            walk.2 += step * 883 / 1000 + walk.0.i64(-10..=10);
            let tenths = |t: i64| format!("\"c\": [\"{}.{}0000\"", t / 10, t % 10);
            Some(
                recorded
                    .replace(usd, &tenths(walk.1))
                    .replace(eur, &tenths(walk.2)),
            )
        }))
        .await
    }

    /// The CoinDesk BPI v1 format of the original brief: the recorded answer's prices, dated now
    /// (the feed refuses an answer its vendor dated long ago).
    pub async fn coindesk() -> FixtureServer {
        let recorded = fixture("coindesk.json");
        let now = ticks::Timedate::now().to_string();
        let fresh = recorded.replace("2024-08-18T04:19:23+00:00", &now);
        assert_ne!(fresh, recorded, "the recorded CoinDesk answer has its date");
        FixtureServer::start(&[("/v1/bpi/currentprice.json", fresh)]).await
    }

    /// The CoinDesk answer exactly as recorded, dated August 2024: a frozen source today.
    pub async fn coindesk_as_recorded() -> FixtureServer {
        FixtureServer::start(&[("/v1/bpi/currentprice.json", fixture("coindesk.json"))]).await
    }

    /// The base URL to configure the source with.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Requests seen so far: path and User-Agent.
    pub fn hits(&self) -> Vec<(String, Option<String>)> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(state): State<FixtureState>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let agent = request
        .headers()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state.hits.lock().unwrap().push((path.clone(), agent));
    let mode = state.mode.lock().unwrap().clone();
    match mode {
        Mode::Serve => match (state.bodies)(&path) {
            Some(body) => (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            None => (StatusCode::NOT_FOUND, "{\"error\":\"not found\"}").into_response(),
        },
        Mode::Status(code) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "{\"error\":\"fixture failure\"}",
        )
            .into_response(),
        Mode::Html => (
            [(axum::http::header::CONTENT_TYPE, "text/html")],
            "<!DOCTYPE html><html><body>Service Unavailable</body></html>",
        )
            .into_response(),
        Mode::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
    }
}
