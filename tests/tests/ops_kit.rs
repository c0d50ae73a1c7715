//! The operations kit names only what pricefeed really exports. Every metric the Grafana dashboard
//! (`ops/grafana/pricefeed-dashboard.json`) and the Prometheus alert rules
//! (`ops/prometheus/alerts.yml`) read must be in a scrape of a running `pricefeed`'s `/metrics`:
//! a renamed or misspelt metric would leave a panel at "No data" and an alert silent forever,
//! with no error anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use history_api::{ApiState, FeedFacts};
use history_store::HistoryStore;
use serde_json::Value;
use testkit::promql::{exported_series, metric_names};
use testkit::{FeedProcess, FixtureServer, run_command};
use ticks::{Interval, NodeRole};

const WAIT: Duration = Duration::from_secs(60);

fn ops_file(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ops")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn curl(url: &str) -> String {
    let (status, body, stderr) = run_command("curl", &["-sS", "--fail", url], WAIT).await;
    assert!(status.success(), "curl {url}: {stderr}");
    body
}

/// What a single `pricefeed` (the default build, embedded broker) exports once it has stored a
/// tick and answered a history request.
async fn scrape_of_a_running_feed() -> String {
    let kraken = FixtureServer::kraken().await;
    let dir = tempfile::tempdir().unwrap();
    let feed = FeedProcess::kraken(&dir.path().join("feed.db"), &kraken, "500ms").await;
    let base = format!("http://{}", feed.http);
    curl(&format!("{base}/v1/ticks?since=0")).await;
    let url = format!("{base}/metrics");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let scrape = curl(&url).await;
        if scrape.contains("pricefeed_newest_tick_age_seconds{") {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no stored tick's age in /metrics after {WAIT:?}:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The series only a node of several exports (its role), from the history API a node serves,
/// over HTTP: the node builds (cluster, etcd) are not part of the default test run.
async fn scrape_of_a_node() -> String {
    let (_role_tx, role) = tokio::sync::watch::channel(NodeRole::Active);
    let state = ApiState::new(
        HistoryStore::open_in_memory().unwrap(),
        FeedFacts {
            interval: Interval::DEFAULT,
            demo: false,
        },
    )
    .with_node(1, role);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(history_api::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let scrape = curl(&format!("http://{addr}/metrics")).await;
    let _ = stop.send(());
    let _ = server.await;
    scrape
}

/// Every PromQL expression of the dashboard, by where it is: each panel's targets and each
/// templating variable's query (`label_values(METRIC{…}, label)` reads METRIC).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((format!("panel {title:?}"), expr.to_string()));
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = variable["name"].as_str().unwrap_or("?");
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .unwrap_or("");
        let expr = match query.strip_prefix("label_values(") {
            // Its first argument is the selector; the second a label name.
            Some(args) => args.rsplit_once(',').map_or(args, |(selector, _)| selector),
            None => query,
        };
        queries.push((format!("variable ${name}"), expr.to_string()));
    }
    queries
}

/// The metric names `queries` read that `exported` lacks, with where each is read.
fn missing(queries: &[(String, String)], exported: &BTreeSet<String>) -> Vec<String> {
    let mut missing = Vec::new();
    for (place, expr) in queries {
        for name in metric_names(expr) {
            if !exported.contains(&name) {
                missing.push(format!("{place} reads {name}"));
            }
        }
    }
    missing
}

/// The `expr:` of every rule in a Prometheus rules file: one line, or a block (`|`, `>-`) of the
/// lines indented deeper than the key.
fn rule_exprs(rules: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = rules.lines().collect();
    let mut exprs = Vec::new();
    let mut alert = String::from("?");
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = name.trim().to_string();
        }
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        let expr = if value.starts_with('|') || value.starts_with('>') {
            let indent = line.len() - trimmed.len();
            lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            value.to_string()
        };
        exprs.push((format!("alert {alert}"), expr));
    }
    exprs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_read_is_exported() {
    let feed = exported_series(&scrape_of_a_running_feed().await);
    let dashboard: Value = serde_json::from_str(&ops_file("grafana/pricefeed-dashboard.json"))
        .expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 12, "{queries:?}");
    assert_eq!(
        missing(&queries, &feed),
        Vec::<String>::new(),
        "the dashboard reads metrics a running pricefeed does not export: {feed:?}"
    );

    // The check itself finds a metric that does not exist.
    let mut misspelt = dashboard.clone();
    misspelt["panels"][0]["targets"][0]["expr"] =
        Value::from(r#"max by (instance) (pricefeed_tick_age_seconds{job=~"$job"})"#);
    assert_eq!(
        missing(&dashboard_queries(&misspelt), &feed),
        [r#"panel "Ready" reads pricefeed_tick_age_seconds"#]
    );

    // The alert rules: the same, with a node's role series (only nodes of several export them)
    // and Prometheus's own `up`.
    let rules = rule_exprs(&ops_file("prometheus/alerts.yml"));
    assert!(rules.len() >= 13, "{rules:?}");
    let mut exported = feed.clone();
    exported.extend(exported_series(&scrape_of_a_node().await));
    exported.insert("up".to_string());
    assert_eq!(
        missing(&rules, &exported),
        Vec::<String>::new(),
        "the alert rules read metrics pricefeed does not export: {exported:?}"
    );
}

/// Each panel the operations kit promises is there and reads what its title says.
#[test]
fn the_dashboard_has_its_panels_on_the_prometheus_input() {
    let dashboard: Value =
        serde_json::from_str(&ops_file("grafana/pricefeed-dashboard.json")).unwrap();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 39);
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let mut reads: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().to_string();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id twice"
        );
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains(r#"job=~"$job""#) && expr.contains(r#"instance=~"$instance""#),
                "{title}: {expr} follows the job and node selection"
            );
            reads
                .entry(title.clone())
                .or_default()
                .extend(metric_names(expr));
        }
    }
    for (title, metric) in [
        ("Tick age", "pricefeed_newest_tick_age_seconds"),
        ("Slots missed", "pricefeed_slots_missed_total"),
        ("Source errors by kind", "pricefeed_source_errors_total"),
        ("MQTT sessions", "pricefeed_mqtt_sessions"),
        (
            "History latency",
            "pricefeed_history_request_duration_seconds_bucket",
        ),
        (
            "History answers by source",
            "pricefeed_history_answers_total",
        ),
    ] {
        assert!(
            reads.get(title).is_some_and(|m| m.contains(metric)),
            "a panel {title:?} reading {metric}: {reads:?}"
        );
    }
}
