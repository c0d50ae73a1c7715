//! Helpers shared by the integration tests: a filled store, in-process requests, a raw HTTP client.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use history_api::{ApiState, FeedFacts};
use history_store::HistoryStore;
use serde_json::Value;
use serde_json::value::RawValue;
use ticks::{Currency, Interval, Tick, Timedate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// The first slot of the test data.
pub const T0: &str = "2026-11-24T01:40:00Z";

pub fn t(s: &str) -> Timedate {
    s.parse().unwrap()
}

/// `T0` plus `slots` slots of 5 s.
pub fn slot(slots: i64) -> Timedate {
    Timedate::from_unix_millis(t(T0).unix_millis() + slots * 5_000).unwrap()
}

/// Tick number `i` of a currency: USD 97000 + i/2, EUR 89000.25 + i.
pub fn tick(currency: Currency, i: i64) -> Tick {
    let price = match currency {
        Currency::USD => format!("{}", 97_000.0 + i as f64 / 2.0),
        Currency::EUR => format!("{}.25", 89_000 + i),
    };
    Tick {
        currency,
        timedate: slot(i),
        price: price.parse().unwrap(),
    }
}

/// A store holding ticks `0..n` of every currency.
pub async fn store_with(n: i64) -> HistoryStore {
    let store = HistoryStore::open_in_memory().unwrap();
    let ticks = (0..n)
        .flat_map(|i| Currency::ALL.map(|c| tick(c, i)))
        .collect();
    store.insert_ticks(ticks).await.unwrap();
    store
}

pub fn state(store: HistoryStore) -> ApiState {
    ApiState::new(
        store,
        FeedFacts {
            interval: Interval::DEFAULT,
            demo: false,
        },
    )
}

pub fn state_with_broker(store: HistoryStore, connected: bool) -> ApiState {
    state(store).with_broker(Arc::new(AtomicBool::new(connected)))
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    pub fn content_type(&self) -> &str {
        self.headers["content-type"].to_str().unwrap()
    }

    /// A response header, `""` if absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    /// The raw JSON text of each tick object under `ticks.<currency>`.
    pub fn raw_ticks(&self, currency: Currency) -> Vec<String> {
        let page: std::collections::HashMap<String, &RawValue> =
            serde_json::from_slice(&self.body).unwrap();
        let lists: std::collections::HashMap<String, Vec<&RawValue>> =
            serde_json::from_str(page["ticks"].get()).unwrap();
        lists[currency.code()]
            .iter()
            .map(|raw| raw.get().to_string())
            .collect()
    }
}

/// One in-process request through the router, as hyper would deliver it.
pub async fn request(app: &Router, method: &str, uri: &str) -> Answer {
    request_with(app, method, uri, &[]).await
}

pub async fn get(app: &Router, uri: &str) -> Answer {
    request(app, "GET", uri).await
}

/// A GET with these request headers.
pub async fn get_with(app: &Router, uri: &str, headers: &[(&str, &str)]) -> Answer {
    request_with(app, "GET", uri, headers).await
}

async fn request_with(app: &Router, method: &str, uri: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// A minimal HTTP/1.1 GET over a real socket (`Connection: close`, read to the end), so the test
/// sees exactly what a client on the wire gets.
pub async fn http_get(address: SocketAddr, target: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}
