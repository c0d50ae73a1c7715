//! `/healthz`, `/readyz` and `/metrics`: is the process alive, can it answer, how is the feed doing.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::try_join_all;
use serde::Serialize;
use serde_json::json;
use ticks::{Currency, NodeRole, Timedate};

use crate::answer::ByCurrency;
use crate::error::chain;
use crate::metrics::header;
use crate::state::ApiState;

/// How long readiness and the age gauge wait for the store. Shorter than the request timeout, so
/// a stuck store shows as `"store": "timed out …"` rather than as a timed-out probe.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The Prometheus text format the scrape is written in.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Seconds since the newest stored tick of each currency (`None`: no tick yet), or why the store
/// could not say.
async fn newest_tick_ages(state: &ApiState) -> Result<Vec<(Currency, Option<f64>)>, String> {
    let latest = try_join_all(Currency::ALL.map(|c| state.store.latest(c)));
    let latest = match tokio::time::timeout(STORE_CHECK_TIMEOUT, latest).await {
        Ok(Ok(latest)) => latest,
        Ok(Err(e)) => return Err(chain(&e)),
        Err(_) => {
            return Err(format!(
                "timed out after {}s",
                STORE_CHECK_TIMEOUT.as_secs()
            ));
        }
    };
    let now = Timedate::now();
    Ok(Currency::ALL
        .into_iter()
        .zip(latest)
        .map(|(c, tick)| {
            let age = tick.map(|t| now.duration_since(t.timedate).as_millis() as f64 / 1000.0);
            (c, age)
        })
        .collect())
}

#[derive(Serialize)]
struct Readiness<'a> {
    ready: bool,
    store: &'a str,
    broker: &'static str,
    newest_tick_age_seconds: ByCurrency<'a, Option<f64>>,
    demo: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<NodeReport>,
}

#[derive(Serialize)]
struct NodeReport {
    id: u64,
    role: NodeRole,
}

fn node_report(state: &ApiState) -> Option<NodeReport> {
    state.node.as_ref().map(|(id, role)| NodeReport {
        id: *id,
        role: *role.borrow(),
    })
}

/// The broker link's state as `/readyz` reports it.
fn broker_state(state: &ApiState) -> &'static str {
    match &state.broker_connected {
        None => "not_used",
        Some(flag) if flag.load(Ordering::Acquire) => "connected",
        Some(_) => "disconnected",
    }
}

/// Whether this process can serve: the store answers, the broker link (if any) is up, and a node
/// of several is a standby or active (not still catching up).
fn is_ready(
    ages: &Result<Vec<(Currency, Option<f64>)>, String>,
    broker: &str,
    node: Option<&NodeReport>,
) -> bool {
    let serving = node.is_none_or(|n| matches!(n.role, NodeRole::Standby | NodeRole::Active));
    ages.is_ok() && broker != "disconnected" && serving
}

pub(crate) async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    let ages = newest_tick_ages(&state).await;
    let broker = broker_state(&state);
    let no_ages = Currency::ALL.map(|c| (c, None));
    let (store, age_list) = match &ages {
        Ok(ages) => ("ok", ages.as_slice()),
        Err(e) => (e.as_str(), no_ages.as_slice()),
    };
    let node = node_report(&state);
    let ready = is_ready(&ages, broker, node.as_ref());
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        store,
        broker,
        newest_tick_age_seconds: ByCurrency(age_list),
        demo: state.feed.demo,
        node,
    };
    (status, Json(body)).into_response()
}

pub(crate) async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let mut text = state.metrics.render();
    let ages = newest_tick_ages(&state).await;
    header(
        &mut text,
        "pricefeed_store_up",
        "gauge",
        "1 if the history store answered this scrape's query, else 0.",
    );
    let _ = writeln!(text, "pricefeed_store_up {}", u8::from(ages.is_ok()));
    let ready = is_ready(&ages, broker_state(&state), node_report(&state).as_ref());
    header(
        &mut text,
        "pricefeed_ready",
        "gauge",
        "1 if /readyz answers ready (store answers, broker connected, node not catching up), else 0.",
    );
    let _ = writeln!(text, "pricefeed_ready {}", u8::from(ready));
    header(
        &mut text,
        "pricefeed_interval_seconds",
        "gauge",
        "The slot length: one tick per currency per slot.",
    );
    let _ = writeln!(
        text,
        "pricefeed_interval_seconds {}",
        state.feed.interval.as_duration().as_secs_f64()
    );
    header(
        &mut text,
        "pricefeed_newest_tick_age_seconds",
        "gauge",
        "Seconds since the timedate of the newest stored tick, by currency (absent: no tick).",
    );
    for (currency, age) in ages.iter().flatten() {
        if let Some(age) = age {
            let _ = writeln!(
                text,
                "pricefeed_newest_tick_age_seconds{{currency=\"{currency}\"}} {age}"
            );
        }
    }
    if let Some(gauge) = &state.mqtt_clients {
        let clients = gauge();
        header(
            &mut text,
            "pricefeed_mqtt_sessions",
            "gauge",
            "MQTT sessions the embedded broker holds, the publisher's own included (what --max-clients caps); absent with --broker.",
        );
        let _ = writeln!(text, "pricefeed_mqtt_sessions {}", clients.sessions);
        header(
            &mut text,
            "pricefeed_mqtt_connections",
            "gauge",
            "MQTT connections open to the embedded broker; absent with --broker.",
        );
        let _ = writeln!(text, "pricefeed_mqtt_connections {}", clients.connections);
    }
    if let Some(node) = node_report(&state) {
        header(
            &mut text,
            "pricefeed_node_role",
            "gauge",
            "1 for the role this cluster node has now (catching_up, standby, active), 0 for the others.",
        );
        for role in [NodeRole::CatchingUp, NodeRole::Standby, NodeRole::Active] {
            let _ = writeln!(
                text,
                "pricefeed_node_role{{node=\"{}\",role=\"{}\"}} {}",
                node.id,
                role.as_str(),
                u8::from(node.role == role)
            );
        }
        header(
            &mut text,
            "pricefeed_node_active",
            "gauge",
            "1 while this node is the one publishing, else 0 (nodes of several only): summed over a feed's nodes, it must be 1.",
        );
        let _ = writeln!(
            text,
            "pricefeed_node_active {}",
            u8::from(node.role == NodeRole::Active)
        );
    }
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], text).into_response()
}
