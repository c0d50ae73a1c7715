//! What the scenarios measure and measure against: the server side of a scenario (`pricefeed`
//! with its embedded broker, Debian's Mosquitto with `pricefeed --broker`, or a cluster of three
//! nodes), nginx, and a plain HTTP GET. Started with the test kit's processes; loopback only,
//! free ports.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use testkit::{Cluster, FeedProcess, Mosquitto, Process, free_port, wait_listening, which};

/// Which broker carries the MQTT traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// `pricefeed` with its embedded rmqtt broker.
    Pricefeed,
    /// Debian's Mosquitto, `pricefeed --broker` publishing to it.
    Mosquitto,
    /// Three `pricefeed` nodes of the cluster build (`pricefeed-cluster` beside the other
    /// binaries), their brokers in one raft cluster, on this one machine.
    Cluster,
}

impl BrokerKind {
    /// How tables name it.
    pub fn label(self) -> &'static str {
        match self {
            BrokerKind::Pricefeed => "pricefeed",
            BrokerKind::Mosquitto => "mosquitto + pricefeed --broker",
            BrokerKind::Cluster => "pricefeed, 3-node cluster",
        }
    }
}

/// The publisher's password on every server a scenario starts: Mosquitto's, which the test kit
/// sets, given to the embedded broker too.
pub const PUBLISHER_PASSWORD: &str = testkit::mosquitto::MOSQUITTO_PUBLISHER_PASSWORD;

/// The cluster build of `pricefeed`, which `bench/run.sh` keeps beside the default one.
pub const CLUSTER_BINARY: &str = "pricefeed-cluster";

/// How long a server may take to stop before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// How long a cluster may take to elect its publishing node.
const SETTLE_WITHIN: Duration = Duration::from_secs(120);

/// The server side of a scenario: `pricefeed --source demo` with its embedded broker, Debian's
/// Mosquitto with `pricefeed --broker` publishing to it, or a cluster of three nodes.
pub struct Server {
    single: Option<FeedProcess>,
    mosquitto: Option<Mosquitto>,
    cluster: Option<Cluster>,
}

impl Server {
    /// `max_clients`: the embedded broker's session limit; `mosquitto_extra`: lines appended to
    /// Mosquitto's configuration.
    pub async fn start(
        bins: &Path,
        kind: BrokerKind,
        db: &Path,
        interval: &str,
        max_clients: usize,
        mosquitto_extra: &[String],
    ) -> anyhow::Result<Server> {
        Server::start_with(bins, kind, db, interval, max_clients, mosquitto_extra, &[]).await
    }

    /// [`Server::start`] with more flags for `pricefeed` (not for a cluster's nodes).
    pub async fn start_with(
        bins: &Path,
        kind: BrokerKind,
        db: &Path,
        interval: &str,
        max_clients: usize,
        mosquitto_extra: &[String],
        pricefeed_extra: &[&str],
    ) -> anyhow::Result<Server> {
        if kind == BrokerKind::Cluster {
            let program = testkit::binary_in(bins, CLUSTER_BINARY)?;
            let mut cluster = Cluster::with_program(program, 3, interval).await;
            cluster.start_all().await;
            cluster.settled(SETTLE_WITHIN).await;
            return Ok(Server {
                single: None,
                mosquitto: None,
                cluster: Some(cluster),
            });
        }
        let mosquitto = match kind {
            BrokerKind::Mosquitto => Some(Mosquitto::launch(mosquitto_extra).await?),
            _ => None,
        };
        let max_clients = max_clients.to_string();
        let broker = mosquitto.as_ref().map(|m| format!("mqtt://{}", m.addr()));
        let mut flags = vec![
            "--source",
            "demo",
            "--interval",
            interval,
            // The generated stores hold a random walk unrelated to the demo source's prices, so
            // the first live price is a jump that --max-move holds back (no second source to
            // confirm it) until the last stored tick is 12 slots old: every scenario's first
            // live tick would come seconds late.
            "--max-move",
            "0",
            // The embedded broker takes it too, so the harness can publish timed ticks as the
            // publisher on either broker.
            "--broker-password",
            PUBLISHER_PASSWORD,
        ];
        match &broker {
            Some(url) => flags.extend(["--broker", url]),
            None => flags.extend(["--max-clients", &max_clients]),
        }
        flags.extend_from_slice(pricefeed_extra);
        let feed = FeedProcess::launch(bins, db, &flags).await?;
        Ok(Server {
            single: Some(feed),
            mosquitto,
            cluster: None,
        })
    }

    /// The `pricefeed` process (a cluster's first node).
    pub fn feed(&self) -> &FeedProcess {
        match (&self.single, &self.cluster) {
            (Some(feed), _) => feed,
            (None, Some(cluster)) => cluster.nodes[0]
                .process
                .as_ref()
                .expect("a started cluster"),
            (None, None) => unreachable!("a server has a pricefeed"),
        }
    }

    /// Every MQTT address clients may use.
    pub fn mqtt(&self) -> Vec<SocketAddr> {
        match &self.cluster {
            Some(cluster) => cluster.nodes.iter().map(|n| n.mqtt).collect(),
            None => vec![self.feed().mqtt],
        }
    }

    /// The publisher's password on the broker(s).
    pub fn password(&self) -> &'static str {
        match &self.cluster {
            Some(_) => testkit::cluster::CLUSTER_PASSWORD,
            None => PUBLISHER_PASSWORD,
        }
    }

    /// The processes that carry the MQTT traffic.
    pub fn broker_pids(&self) -> Vec<u32> {
        match (&self.mosquitto, &self.cluster) {
            (Some(m), _) => vec![m.process.pid],
            (None, Some(cluster)) => cluster.pids(),
            (None, None) => vec![self.feed().process.pid],
        }
    }

    /// `pricefeed` when it only publishes to Mosquitto.
    pub fn publisher_pid(&self) -> Option<u32> {
        self.mosquitto.as_ref().map(|_| self.feed().process.pid)
    }

    /// Every process of the server.
    pub fn pids(&self) -> Vec<u32> {
        match &self.cluster {
            Some(cluster) => cluster.pids(),
            None => std::iter::once(self.feed().process.pid)
                .chain(self.mosquitto.as_ref().map(|m| m.process.pid))
                .collect(),
        }
    }

    /// Mosquitto, when it is the broker.
    pub fn mosquitto(&self) -> Option<&Mosquitto> {
        self.mosquitto.as_ref()
    }

    pub async fn stop(self) {
        if let Some(feed) = self.single {
            feed.process.stop(STOP_WITHIN).await;
        }
        if let Some(m) = self.mosquitto {
            m.process.stop(STOP_WITHIN).await;
        }
        if let Some(cluster) = self.cluster {
            cluster.stop(STOP_WITHIN).await;
        }
    }
}

/// nginx as a foreground process with its own minimal configuration, serving `root` on a free
/// loopback port, logs and pid in a temporary directory.
pub struct Nginx {
    pub process: Process,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub async fn start(root: &Path) -> anyhow::Result<Nginx> {
        let program =
            which("nginx").context("nginx is required (apt-get install -y nginx-light)")?;
        let dir = tempfile::tempdir()?;
        // As root, nginx's workers switch to `nobody`: they must be able to read the files.
        let is_root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        use std::os::unix::fs::PermissionsExt;
        for path in [dir.path(), root] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        }
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let d = dir.path().display();
            let conf = format!(
                "{user}worker_processes auto;\n\
                 daemon off;\n\
                 master_process on;\n\
                 pid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n\
                 \x20 default_type application/json;\n\
                 \x20 # history-api writes no per-request log either.\n\
                 \x20 access_log off;\n\
                 \x20 sendfile on;\n\
                 \x20 # tcp_nopush (TCP_CORK), which Debian's stock configuration turns on, stalls\n\
                 \x20 # 1% of these answers for 40 ms (delayed ACK); nginx's default is off.\n\
                 \x20 keepalive_requests 1000000;\n\
                 \x20 client_body_temp_path {d}/body;\n\
                 \x20 proxy_temp_path {d}/proxy;\n\
                 \x20 fastcgi_temp_path {d}/fastcgi;\n\
                 \x20 uwsgi_temp_path {d}/uwsgi;\n\
                 \x20 scgi_temp_path {d}/scgi;\n\
                 \x20 server {{\n\
                 \x20   listen 127.0.0.1:{port};\n\
                 \x20   root {root};\n\
                 \x20 }}\n\
                 }}\n",
                user = if is_root {
                    "user nobody nogroup;\n"
                } else {
                    ""
                },
                root = root.display(),
            );
            let path = dir.path().join("nginx.conf");
            std::fs::write(&path, conf)?;
            let error_log = dir.path().join("error.log");
            let args = [
                "-p".as_ref(),
                dir.path().as_os_str(),
                "-e".as_ref(),
                error_log.as_os_str(),
                "-c".as_ref(),
                path.as_os_str(),
            ];
            let mut process = Process::start(&program, &args)?;
            if wait_listening(port, Duration::from_secs(5)).await && process.is_running() {
                return Ok(Nginx {
                    process,
                    port,
                    _dir: dir,
                });
            }
            last = format!(
                "{}\n{}",
                process.log().join("\n"),
                std::fs::read_to_string(&error_log).unwrap_or_default()
            );
            process.stop(Duration::from_secs(1)).await;
        }
        bail!("nginx did not start: {last}")
    }
}

/// A plain HTTP/1.1 GET over loopback; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let (status, _, body) = http_get_with(addr, path, &[]).await?;
    Ok((status, body))
}

/// [`http_get`] with request headers (`Name: value` lines); also returns the response's header
/// lines, names lower-cased.
pub async fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[String],
) -> anyhow::Result<(u16, Vec<(String, String)>, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut raw))
        .await
        .with_context(|| format!("GET {path} took over 60 s"))??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of HTTP headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no HTTP status")?
        .parse()?;
    let fields: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let body = raw[split + 4..].to_vec();
    if fields
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"))
    {
        bail!("GET {path}: chunked answers are not handled");
    }
    Ok((status, fields, body))
}
