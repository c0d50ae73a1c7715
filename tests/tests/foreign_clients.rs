//! MQTT clients we did not write, as users run them against the built `pricefeed`: Debian's
//! `mosquitto_sub`, Eclipse Paho for Python and MQTT.js from npm (the client of browser pages and
//! Node dashboards, over plain MQTT and over WebSocket), each with MQTT 3.1.1 and 5, on the
//! embedded broker and on Debian's Mosquitto with our configuration.
//!
//! - Subscriptions to `btc/USD`, `btc/+` and `btc/#`: the retained tick first, then every tick
//!   history holds after it, each payload byte for byte what `/v1/ticks` holds for its timedate,
//!   and nothing else under `btc/`.
//! - Persistent sessions (clean session off; MQTT 5: a session expiry): a client that subscribed,
//!   went away for three intervals and came back without subscribing again gets the ticks
//!   published meanwhile, in order, none missing against history, then the live ones.
//!
//! The clients' scripts are `tests/clients/paho_clients.py` and `tests/clients/mqttjs_clients.js`;
//! `tests/run.sh` installs paho-mqtt and MQTT.js (`npm ci` in `tests/clients`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use testkit::{FeedProcess, Mosquitto, assert_refused, binary, log_field, run_command};
use ticks::{Tick, Timedate};

const INTERVAL: &str = "250ms";
/// Away for three intervals and a half: three slots' ticks are queued for the session.
const AWAY_MS: u64 = 875;
const WAIT: Duration = Duration::from_secs(60);
/// Each filter, and how many messages a client takes on it: the retained ticks and a few live.
const FILTERS: [(&str, usize); 3] = [("btc/USD", 4), ("btc/+", 8), ("btc/#", 8)];
const VERSIONS: [&str; 2] = ["3.1.1", "5"];
/// A session takes this many messages before leaving (the two retained ticks and two live) and
/// after coming back (the three slots it missed, both currencies, and four live).
const BEFORE: usize = 4;
const AFTER: usize = 14;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// The third-party clients are installed (tests/run.sh does it).
async fn require_clients() {
    for program in ["mosquitto_sub", "python3", "node"] {
        assert!(
            testkit::have(program),
            "{program} is required; tests/run.sh installs it"
        );
    }
    let (paho, _, _) = run_command(
        "python3",
        &["-c", "import paho.mqtt.client"],
        Duration::from_secs(20),
    )
    .await;
    assert!(
        paho.success(),
        "paho-mqtt is required (tests/run.sh installs it)"
    );
    assert!(
        clients_dir().join("node_modules/mqtt").is_dir(),
        "MQTT.js is required: npm ci in tests/clients (tests/run.sh does it)"
    );
}

/// One client run: who it is, and what it printed.
struct Run {
    who: String,
    lines: Vec<Line>,
}

/// A line the clients print: `LABEL<TAB>TOPIC<TAB>RETAIN<TAB>PAYLOAD`.
#[derive(Debug, Clone)]
struct Line {
    label: String,
    topic: String,
    retain: bool,
    payload: String,
}

fn parse(who: &str, stdout: &str) -> Vec<Line> {
    stdout
        .lines()
        .map(|line| {
            let mut parts = line.splitn(4, '\t');
            let mut next = || {
                parts
                    .next()
                    .unwrap_or_else(|| panic!("{who}: not LABEL TOPIC RETAIN PAYLOAD: {line:?}"))
            };
            Line {
                label: next().to_string(),
                topic: next().to_string(),
                retain: next() == "1",
                payload: next().to_string(),
            }
        })
        .collect()
}

/// Runs `program` with `args` in the background; the handle yields what it printed, and panics
/// if it failed.
fn spawn(who: String, program: &'static str, args: Vec<String>) -> tokio::task::JoinHandle<Run> {
    tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, stdout, stderr) = run_command(program, &args, WAIT).await;
        assert!(
            status.success(),
            "{who} failed: {stderr}\nprinted:\n{stdout}"
        );
        let lines = parse(&who, &stdout);
        Run { who, lines }
    })
}

fn script(name: &str) -> String {
    clients_dir().join(name).to_str().unwrap().to_string()
}

fn mosquitto_version(version: &str) -> &'static str {
    if version == "5" { "mqttv5" } else { "mqttv311" }
}

/// Every client, both versions, all three filters, at once.
fn subscriptions(mqtt: SocketAddr, ws: SocketAddr) -> Vec<tokio::task::JoinHandle<Run>> {
    let mut runs = Vec::new();
    let filters: Vec<String> = FILTERS.iter().map(|(f, n)| format!("{f}={n}")).collect();
    for version in VERSIONS {
        for (filter, count) in FILTERS {
            let args = [
                "-h",
                "127.0.0.1",
                "-p",
                &mqtt.port().to_string(),
                "-t",
                filter,
                "-q",
                "1",
                "-C",
                &count.to_string(),
                "-W",
                "30",
                "-V",
                mosquitto_version(version),
                "-F",
                &format!("{filter}\\t%t\\t%r\\t%p"),
            ]
            .map(String::from);
            runs.push(spawn(
                format!("mosquitto_sub {version} {filter}"),
                "mosquitto_sub",
                args.to_vec(),
            ));
        }
        let mut paho = vec![
            script("paho_clients.py"),
            "subscribe".into(),
            "127.0.0.1".into(),
            mqtt.port().to_string(),
            version.into(),
        ];
        paho.extend(filters.iter().cloned());
        runs.push(spawn(format!("Paho {version}"), "python3", paho));
        for (transport, url) in [
            ("MQTT", format!("mqtt://{mqtt}")),
            ("WebSocket", format!("ws://{ws}/mqtt")),
        ] {
            let mut js = vec![
                script("mqttjs_clients.js"),
                "subscribe".into(),
                url,
                version.into(),
            ];
            js.extend(filters.iter().cloned());
            runs.push(spawn(format!("MQTT.js {version} {transport}"), "node", js));
        }
    }
    runs
}

/// Every client, both versions: a persistent session that goes away and comes back.
fn sessions(mqtt: SocketAddr, ws: SocketAddr, broker: &str) -> Vec<tokio::task::JoinHandle<Run>> {
    let mut runs = Vec::new();
    for version in VERSIONS {
        let id = |client: &str| format!("{client}-{}-{broker}", version.replace('.', ""));
        let session = |id: String| {
            [
                id,
                BEFORE.to_string(),
                AWAY_MS.to_string(),
                AFTER.to_string(),
            ]
        };
        let mut paho = vec![
            script("paho_clients.py"),
            "session".into(),
            "127.0.0.1".into(),
            mqtt.port().to_string(),
            version.into(),
        ];
        paho.extend(session(id("paho")));
        runs.push(spawn(format!("Paho {version} session"), "python3", paho));
        for (transport, url) in [
            ("MQTT", format!("mqtt://{mqtt}")),
            ("WebSocket", format!("ws://{ws}/mqtt")),
        ] {
            let mut js = vec![
                script("mqttjs_clients.js"),
                "session".into(),
                url,
                version.into(),
            ];
            js.extend(session(id(&format!("mqttjs-{transport}"))));
            runs.push(spawn(
                format!("MQTT.js {version} {transport} session"),
                "node",
                js,
            ));
        }
        // mosquitto_sub -c: one run to subscribe and leave, another to come back. It subscribes
        // again, so the broker sends the retained ticks again; -R leaves them out.
        let id = id("mosquitto_sub");
        let port = mqtt.port().to_string();
        runs.push(tokio::spawn(async move {
            let run = |label: &'static str, count: usize, extra: &'static [&'static str]| {
                let mut args = vec![
                    "-h".to_string(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.clone(),
                    "-c".into(),
                    "-i".into(),
                    id.clone(),
                    "-t".into(),
                    "btc/#".into(),
                    "-q".into(),
                    "1".into(),
                    "-C".into(),
                    count.to_string(),
                    "-W".into(),
                    "30".into(),
                    "-V".into(),
                    mosquitto_version(version).into(),
                    "-F".into(),
                    format!("{label}\\t%t\\t%r\\t%p"),
                ];
                if version == "5" {
                    args.extend(["-x".to_string(), "300".into()]);
                }
                args.extend(extra.iter().map(|a| a.to_string()));
                spawn(
                    format!("mosquitto_sub {version} session {label}"),
                    "mosquitto_sub",
                    args,
                )
            };
            let before = run("before", BEFORE, &[]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(AWAY_MS)).await;
            let after = run("after", AFTER, &["-R"]).await.unwrap();
            let mut lines = before.lines;
            lines.extend(after.lines);
            Run {
                who: format!("mosquitto_sub {version} session"),
                lines,
            }
        }));
    }
    runs
}

/// What `/v1/ticks` holds: for each tick topic, the exact tick text by timedate.
struct History(BTreeMap<String, BTreeMap<Timedate, String>>);

#[derive(Deserialize)]
struct Answer {
    ticks: BTreeMap<String, Vec<Box<RawValue>>>,
}

async fn history(http: SocketAddr) -> History {
    let url = format!("http://{http}/v1/ticks?since=0&currency=USD,EUR&limit=50000");
    let (status, body, stderr) = run_command("curl", &["-sS", "--fail", &url], WAIT).await;
    assert!(status.success(), "history: {stderr}");
    let answer: Answer = serde_json::from_str(&body).unwrap();
    let mut topics = BTreeMap::new();
    for (currency, ticks) in answer.ticks {
        let topic = format!("btc/{currency}");
        let by_time: BTreeMap<Timedate, String> = ticks
            .into_iter()
            .map(|raw| {
                let text = raw.get().to_string();
                let tick = Tick::from_message(&topic, text.as_bytes()).unwrap();
                (tick.timedate, text)
            })
            .collect();
        topics.insert(topic, by_time);
    }
    History(topics)
}

impl History {
    /// The tick of `line`, which must be exactly what history holds for its timedate.
    fn exact(&self, who: &str, line: &Line) -> Timedate {
        let tick = Tick::from_message(&line.topic, line.payload.as_bytes())
            .unwrap_or_else(|e| panic!("{who}: {line:?}: {e}"));
        let held = self
            .0
            .get(&line.topic)
            .and_then(|ticks| ticks.get(&tick.timedate));
        assert_eq!(
            held,
            Some(&line.payload),
            "{who}: the payload is what history holds for {} {}",
            line.topic,
            tick.timedate
        );
        tick.timedate
    }

    /// The timedates history holds on `topic` after `after`, up to and with `until`.
    fn between(&self, topic: &str, after: Timedate, until: Timedate) -> Vec<Timedate> {
        self.0[topic]
            .keys()
            .filter(|t| **t > after && **t <= until)
            .copied()
            .collect()
    }
}

fn tick_topics(filter: &str) -> &'static [&'static str] {
    if filter == "btc/USD" {
        &["btc/USD"]
    } else {
        &["btc/USD", "btc/EUR"]
    }
}

/// One subscription's messages: only tick topics the filter matches; per topic the retained tick
/// first (on rmqtt, one live tick may come before it: see [`Order`]), then live ticks, none
/// missing against history, each exact.
fn check_subscription(history: &History, who: &str, filter: &str, lines: &[&Line], order: Order) {
    let who = format!("{who} on {filter}");
    let topics = tick_topics(filter);
    for line in lines {
        assert!(
            topics.contains(&line.topic.as_str()),
            "{who}: {} is not a tick topic {filter} matches",
            line.topic
        );
    }
    let overtaken = match order {
        Order::Strict => 0,
        Order::RetainedMayBeOvertaken => 1,
    };
    for topic in topics {
        let on_topic: Vec<&&Line> = lines.iter().filter(|l| l.topic == *topic).collect();
        assert!(!on_topic.is_empty(), "{who}: nothing on {topic}");
        let at = on_topic
            .iter()
            .position(|l| l.retain)
            .filter(|&at| at <= overtaken)
            .unwrap_or_else(|| {
                panic!("{who}: the first message on {topic} is the retained tick: {on_topic:?}")
            });
        let retained = history.exact(&who, on_topic[at]);
        let mut live = Vec::new();
        let mut retained_came_live = false;
        for (i, line) in on_topic.iter().enumerate() {
            if i == at {
                continue;
            }
            assert!(
                !line.retain,
                "{who}: message {i} on {topic} is live, not retained"
            );
            let timedate = history.exact(&who, line);
            // A tick published while the subscription was being made can come both as the
            // retained tick and live, next to each other.
            if timedate == retained && !retained_came_live && i <= at + 1 {
                retained_came_live = true;
                continue;
            }
            live.push(timedate);
        }
        if let Some(last) = live.last() {
            assert_eq!(
                live,
                history.between(topic, retained, *last),
                "{who}: the live ticks on {topic} after the retained one, in order, none missing"
            );
        }
    }
}

/// How a broker orders a new subscription's messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Per topic, the retained tick first, then live ones in the order published (Mosquitto).
    Strict,
    /// A tick published as the subscription is made can come before the retained tick (rmqtt
    /// 0.24 sends the retained ones from a task of their own; seen with mosquitto_sub over 3.1.1
    /// and 5, and MQTT.js over WebSocket).
    RetainedMayBeOvertaken,
}

/// A session's messages: after it came back, every tick on each topic after the last it had
/// taken, none missing against history, none twice (a redelivery of one it had is allowed: QoS 1
/// is at least once), in the order published, at least the three slots it was away. On both
/// brokers: the embedded one carries a patched rmqtt that loses none and orders them
/// (patches/rmqtt/Cargo.toml).
fn check_session(history: &History, who: &str, lines: &[Line]) {
    for topic in ["btc/USD", "btc/EUR"] {
        let before: Vec<Timedate> = lines
            .iter()
            .filter(|l| l.label == "before" && l.topic == topic)
            .map(|l| history.exact(who, l))
            .collect();
        let last = *before
            .iter()
            .max()
            .unwrap_or_else(|| panic!("{who}: nothing on {topic} before leaving"));
        let mut after = Vec::new();
        for line in lines
            .iter()
            .filter(|l| l.label == "after" && l.topic == topic)
        {
            assert!(
                !line.retain,
                "{who}: {line:?} came from the session, not retained"
            );
            let timedate = history.exact(who, line);
            if timedate <= last {
                assert!(
                    before.contains(&timedate),
                    "{who}: {line:?} is older than what it had, and new to it"
                );
            } else {
                after.push(timedate);
            }
        }
        assert!(
            after.len() >= 3,
            "{who}: {} ticks on {topic} after coming back: {lines:?}",
            after.len()
        );
        let newest = *after.iter().max().unwrap();
        assert_eq!(
            after,
            history.between(topic, last, newest),
            "{who}: on {topic}, the ticks published while it was away and after, none missing, \
             none twice, in order"
        );
    }
}

/// Waits until history holds a tick of each currency: then both are retained on the broker, and
/// a subscriber's first message is a retained tick.
async fn wait_for_first_ticks(http: SocketAddr) {
    testkit::wait_until(WAIT, "the first tick of each currency", || async move {
        let url = format!("http://{http}/v1/ticks?since=0&currency=USD,EUR&limit=1000");
        let (status, body, _) = run_command("curl", &["-sS", "--fail", &url], WAIT).await;
        status.success()
            && serde_json::from_str::<Answer>(&body)
                .is_ok_and(|a| a.ticks.len() == 2 && a.ticks.values().all(|t| !t.is_empty()))
    })
    .await;
}

async fn check_all(
    order: Order,
    history_at: SocketAddr,
    subscriptions: Vec<tokio::task::JoinHandle<Run>>,
    sessions: Vec<tokio::task::JoinHandle<Run>>,
) -> usize {
    let mut subscribed = Vec::new();
    for run in subscriptions {
        subscribed.push(run.await.unwrap());
    }
    let mut sessioned = Vec::new();
    for run in sessions {
        sessioned.push(run.await.unwrap());
    }
    // Read after every client finished: history then holds every tick any of them received.
    let history = history(history_at).await;
    let mut checked = 0;
    for run in &subscribed {
        let filters: Vec<&str> = if run.who.starts_with("mosquitto_sub") {
            vec![run.who.rsplit(' ').next().unwrap()]
        } else {
            FILTERS.iter().map(|(f, _)| *f).collect()
        };
        for filter in filters {
            let lines: Vec<&Line> = run.lines.iter().filter(|l| l.label == filter).collect();
            check_subscription(&history, &run.who, filter, &lines, order);
            checked += 1;
        }
    }
    for run in &sessioned {
        check_session(&history, &run.who, &run.lines);
        checked += 1;
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_clients_on_the_embedded_broker_over_mqtt_and_websocket() {
    require_clients().await;
    let dir = tempfile::tempdir().unwrap();
    let feed = FeedProcess::start(
        &dir.path().join("feed.db"),
        &[
            "--source",
            "demo",
            "--interval",
            INTERVAL,
            "--mqtt-ws-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let ws: SocketAddr = feed
        .process
        .log()
        .iter()
        .find(|l| l.contains("listening for MQTT over WebSocket"))
        .and_then(|l| log_field(l, "addr"))
        .expect("the broker says where it listens for MQTT over WebSocket")
        .parse()
        .unwrap();
    wait_for_first_ticks(feed.http).await;
    let subscriptions = subscriptions(feed.mqtt, ws);
    let sessions = sessions(feed.mqtt, ws, "embedded");
    let checked = check_all(
        Order::RetainedMayBeOvertaken,
        feed.http,
        subscriptions,
        sessions,
    )
    .await;
    // 3 filters × 2 versions × (mosquitto_sub, Paho, MQTT.js over MQTT and over WebSocket), and
    // 2 versions × 4 sessions.
    assert_eq!(checked, 3 * 2 * 4 + 2 * 4);
    assert!(feed.process.terminate(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_clients_on_mosquitto_with_our_configuration() {
    require_clients().await;
    let mosquitto = Mosquitto::start_with_websockets().await;
    let ws = SocketAddr::from(([127, 0, 0, 1], mosquitto.ws_port.unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("mqtt://{}", mosquitto.addr());
    let feed = FeedProcess::start(
        &dir.path().join("feed.db"),
        &[
            "--source",
            "demo",
            "--interval",
            INTERVAL,
            "--broker",
            &broker,
            "--broker-password",
            &mosquitto.password,
        ],
    )
    .await;
    assert_eq!(feed.mqtt, mosquitto.addr());
    wait_for_first_ticks(feed.http).await;
    let subscriptions = subscriptions(feed.mqtt, ws);
    let sessions = sessions(feed.mqtt, ws, "mosquitto");
    let checked = check_all(Order::Strict, feed.http, subscriptions, sessions).await;
    assert_eq!(checked, 3 * 2 * 4 + 2 * 4);
    assert!(feed.process.terminate(WAIT).await.success());
    mosquitto.stop().await;
}

#[tokio::test]
async fn websocket_and_session_flags_are_checked_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("feed.db");
    let db = db.to_str().unwrap();
    let bin = binary("pricefeed");
    let bin = bin.to_str().unwrap();
    for (args, needle) in [
        (
            vec![
                "--broker",
                "mqtt://127.0.0.1:1883",
                "--broker-password",
                "secret",
                "--mqtt-ws-listen",
                "127.0.0.1:0",
            ],
            "--mqtt-ws-listen is for the embedded broker",
        ),
        (vec!["--mqtt-session-expiry", "500ms"], "at least 1s"),
        (
            vec!["--mqtt-max-queued-messages", "0"],
            "--mqtt-max-queued-messages",
        ),
    ] {
        let mut all = args;
        all.extend([
            "--db",
            db,
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ]);
        assert_refused(bin, &all, needle, WAIT).await;
    }
    assert!(!Path::new(db).exists(), "a refused start leaves no store");
}
