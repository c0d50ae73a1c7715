//! The test kit: what the crates' integration tests and the end-to-end tests share.
//!
//! - [`FixtureServer`]: a local HTTP server (127.0.0.1, free port) serving the recorded price-API
//!   bodies in `tests/fixtures/sources/`, switchable to failing modes. No test reaches the internet.
//! - [`TickSubscriber`]: a real MQTT 3.1.1 client collecting what arrives on the tick topics.
//! - [`Mosquitto`]: Debian's Mosquitto started on a free port with pricefeed's ACL.
//! - [`binary`]: the path of a workspace binary built by `cargo test`.
//!
//! It is not a test framework: helpers here start real things and get out of the way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

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

#[derive(Clone)]
struct FixtureState {
    bodies: Arc<HashMap<String, String>>,
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
        let state = FixtureState {
            bodies: Arc::new(
                routes
                    .iter()
                    .map(|(p, b)| (p.to_string(), b.clone()))
                    .collect(),
            ),
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

    /// The CoinDesk BPI v1 format of the original brief.
    pub async fn coindesk() -> FixtureServer {
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
        Mode::Serve => match state.bodies.get(&path) {
            Some(body) => (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body.clone(),
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

/// One message as received: topic, payload text, retain flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

/// A real MQTT 3.1.1 subscriber on a topic filter.
pub struct TickSubscriber {
    rx: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl TickSubscriber {
    /// Connects anonymously and subscribes to `filter` at QoS 1; returns once the SUBACK arrived.
    pub async fn connect(addr: SocketAddr, client_id: &str, filter: &str) -> TickSubscriber {
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(10));
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _client = client;
            let mut subscribed = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(s) = subscribed.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Received {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(15), subscribed_rx)
            .await
            .expect("SUBACK within 15 s")
            .unwrap();
        TickSubscriber { rx, task }
    }

    /// The next message, or `None` after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Received> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Collects messages until `n` arrived; panics after `within`.
    pub async fn collect(&mut self, n: usize, within: Duration) -> Vec<Received> {
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + within;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => out.push(m),
                _ => panic!(
                    "only {} of {n} messages within {within:?}: {out:?}",
                    out.len()
                ),
            }
        }
        out
    }
}

impl Drop for TickSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` every 50 ms until it is true; panics with `what` after `within`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port that was free a moment ago. Only for programs that cannot be told to bind port 0 and
/// report it (Mosquitto); everything of ours binds port 0 itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The path of a binary of this workspace, as built by `cargo test` / `cargo build`.
pub fn binary(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Is a program on the PATH?
pub fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Debian's Mosquitto on a free loopback port, with pricefeed's ACL and a publisher password.
pub struct Mosquitto {
    pub port: u16,
    pub password: String,
    child: tokio::process::Child,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts it and waits until it accepts connections.
    pub async fn start() -> Mosquitto {
        assert!(
            have("mosquitto") && have("mosquitto_passwd"),
            "Debian's mosquitto is required (apt-get install mosquitto mosquitto-clients)"
        );
        let dir = tempfile::tempdir().unwrap();
        let password = "mosquitto-test-password".to_string();
        let passwd = dir.path().join("passwd");
        let acl = dir.path().join("acl");
        std::fs::write(&acl, broker_config::mosquitto::acl_file()).unwrap();
        let status = std::process::Command::new("mosquitto_passwd")
            .args(["-c", "-b"])
            .arg(&passwd)
            .args([broker_config::PUBLISHER_USER, &password])
            .status()
            .unwrap();
        assert!(status.success(), "mosquitto_passwd failed");
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                broker_config::mosquitto::config("127.0.0.1", port, &passwd, &acl),
            )
            .unwrap();
            match spawn_mosquitto(&conf, port).await {
                Ok(child) => {
                    return Mosquitto {
                        port,
                        password,
                        child,
                        conf,
                        _dir: dir,
                    };
                }
                Err(e) => last_err = e,
            }
        }
        panic!("mosquitto did not start: {last_err}");
    }

    /// Kills it and starts it again on the same port (a broker restart: connections and retained
    /// messages are lost).
    pub async fn restart(&mut self) {
        let _ = self.child.kill().await;
        let mut last_err = String::new();
        for _ in 0..50 {
            match spawn_mosquitto(&self.conf, self.port).await {
                Ok(child) => {
                    self.child = child;
                    return;
                }
                Err(e) => last_err = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mosquitto did not restart: {last_err}");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Stops it (SIGKILL); retained messages are lost, as configured (no persistence).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A built binary running as a child process, its stderr log collected.
pub struct Process {
    pub child: tokio::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `binary(name)` with `args`; stderr lines are collected for [`Process::wait_for_log`].
    pub fn spawn(name: &str, args: &[&str]) -> Process {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(binary(name))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Process { child, log }
    }

    /// The stderr lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(line) = self.log().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no log line with {needle:?} within {within:?}; log:\n{}",
                    self.log().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no exit within {within:?} of SIGTERM; log:\n{}",
                    self.log().join("\n")
                )
            })
            .unwrap()
    }
}

/// Extracts `key=VALUE` from a text log line (tracing's default format).
pub fn log_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    let rest = &line[start..];
    // tracing writes ANSI-free `key=value` separated by spaces when not on a terminal.
    Some(
        rest.split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

/// A running `pricefeed` binary with its real ports.
pub struct FeedProcess {
    pub process: Process,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
}

impl FeedProcess {
    /// Starts `pricefeed` on free loopback ports with `extra` flags; waits until it runs.
    pub async fn start(db: &Path, extra: &[&str]) -> FeedProcess {
        let db = db.to_str().unwrap().to_string();
        let mut args = vec![
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--db",
            &db,
        ];
        args.extend_from_slice(extra);
        let process = Process::spawn("pricefeed", &args);
        let running = process
            .wait_for_log("pricefeed running", Duration::from_secs(30))
            .await;
        let http = log_field(&running, "http").unwrap().parse().unwrap();
        let mqtt = match log_field(&running, "broker") {
            Some(url) => url.trim_start_matches("mqtt://").parse().unwrap(),
            None => panic!("no broker in {running}"),
        };
        FeedProcess {
            process,
            mqtt,
            http,
        }
    }

    /// Starts `pricefeed` sampling only the Kraken fixture `kraken` every `interval`.
    pub async fn kraken(db: &Path, kraken: &FixtureServer, interval: &str) -> FeedProcess {
        let url = format!("kraken={}", kraken.url());
        let flags = [
            "--interval",
            interval,
            "--source",
            "kraken",
            "--source-url",
            &url,
        ];
        FeedProcess::start(db, &flags).await
    }
}

/// Runs a command to completion with a time limit; returns (status, stdout, stderr).
pub async fn run_command(
    program: &str,
    args: &[&str],
    within: Duration,
) -> (std::process::ExitStatus, String, String) {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let out = tokio::time::timeout(within, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {within:?}"))
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A TCP proxy on a free loopback port that a test can cut: every connection through it dropped at
/// once (a client's network failing), or new connections refused for a while (a server down).
pub struct Proxy {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    refusing: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (conns, refuse) = (connections.clone(), refusing.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if refuse.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut list = conns.lock().unwrap();
                list.retain(|h| !h.is_finished());
                list.push(handle);
            }
        });
        Proxy {
            addr,
            connections,
            refusing,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection through the proxy.
    pub fn cut(&self) {
        for handle in self.connections.lock().unwrap().drain(..) {
            handle.abort();
        }
    }

    /// While true, new connections are closed as soon as they are accepted.
    pub fn set_refusing(&self, refusing: bool) {
        self.refusing
            .store(refusing, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn spawn_mosquitto(conf: &Path, port: u16) -> Result<tokio::process::Child, String> {
    let mut child = tokio::process::Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("mosquitto exited with {status}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill().await;
    Err("mosquitto did not listen within 5 s".into())
}
