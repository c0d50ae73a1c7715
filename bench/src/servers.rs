//! Starting what is measured: `pricefeed` (embedded broker or `--broker` mode), Debian's
//! Mosquitto with pricefeed's ACL, the standalone `history-api`, nginx. Loopback only, free ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::fanout::BrokerKind;
use crate::sys::{self, Proc};

/// The publisher password every scenario gives `pricefeed --broker-password` and Mosquitto.
pub const PUBLISHER_PASSWORD: &str = "pricefeed-bench-password";

/// Where the workspace binaries are (`target/release` or `target/debug`).
#[derive(Debug, Clone)]
pub struct Bins(pub PathBuf);

impl Bins {
    pub fn path(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.0.join(name);
        if !path.exists() {
            bail!(
                "{} is missing: build first (cargo build --release --workspace)",
                path.display()
            );
        }
        Ok(path)
    }
}

/// A running `pricefeed`.
pub struct Feed {
    pub proc: Proc,
    /// The broker it publishes to (its own, or the external one).
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    /// From spawn to the "pricefeed running" log line.
    pub ready_after: Duration,
}

/// How to run `pricefeed`.
pub struct FeedOptions<'a> {
    pub db: &'a Path,
    pub interval: &'a str,
    /// `Some(port)`: publish to the broker on 127.0.0.1:port; `None`: embedded broker.
    pub external_broker: Option<u16>,
    pub max_clients: usize,
}

impl Feed {
    pub async fn start(bins: &Bins, opts: FeedOptions<'_>) -> anyhow::Result<Feed> {
        let mut args: Vec<String> = [
            "--source",
            "demo",
            "--interval",
            opts.interval,
            "--http-listen",
            "127.0.0.1:0",
            "--broker-password",
            PUBLISHER_PASSWORD,
            "--db",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(opts.db.display().to_string());
        match opts.external_broker {
            Some(port) => {
                args.push("--broker".into());
                args.push(format!("mqtt://127.0.0.1:{port}"));
            }
            None => {
                args.extend(["--mqtt-listen".into(), "127.0.0.1:0".into()]);
                args.extend(["--max-clients".into(), opts.max_clients.to_string()]);
            }
        }
        let mut proc = Proc::spawn(&bins.path("pricefeed")?, &args)?;
        let line = proc
            .wait_for_log("pricefeed running", Duration::from_secs(60))
            .await?;
        let ready_after = proc.started.elapsed();
        let http: SocketAddr = sys::log_field(&line, "http")
            .context("no http= in the running line")?
            .parse()?;
        let mqtt: SocketAddr = sys::log_field(&line, "broker")
            .context("no broker= in the running line")?
            .trim_start_matches("mqtt://")
            .parse()?;
        Ok(Feed {
            proc,
            mqtt,
            http,
            ready_after,
        })
    }
}

/// Debian's Mosquitto on a free loopback port with `broker_config::mosquitto`'s configuration and
/// ACL and a password file for the publisher.
pub struct Mosquitto {
    pub proc: Proc,
    pub port: u16,
    /// From spawn to accepting connections.
    pub ready_after: Duration,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// `extra`: configuration lines appended to pricefeed's (for experiments; none in the tables).
    pub async fn start(extra: &[String]) -> anyhow::Result<Mosquitto> {
        let program = sys::which("mosquitto")
            .context("Debian's mosquitto is required (apt-get install -y mosquitto)")?;
        let dir = tempfile::tempdir()?;
        let passwd = dir.path().join("passwd");
        let acl = dir.path().join("acl");
        std::fs::write(&acl, broker_config::mosquitto::acl_file())?;
        sys::run_output(
            "mosquitto_passwd",
            &[
                "-c".into(),
                "-b".into(),
                passwd.display().to_string(),
                broker_config::PUBLISHER_USER.into(),
                PUBLISHER_PASSWORD.into(),
            ],
            Duration::from_secs(10),
        )
        .await?;
        let mut last = String::new();
        for _ in 0..5 {
            let port = sys::free_port()?;
            let conf = dir.path().join("mosquitto.conf");
            let mut text = broker_config::mosquitto::config("127.0.0.1", port, &passwd, &acl);
            for line in extra {
                text.push_str(line);
                text.push('\n');
            }
            std::fs::write(&conf, text)?;
            let mut proc = Proc::spawn(&program, &["-c".into(), conf.display().to_string()])?;
            if sys::wait_listening(port, Duration::from_secs(5)).await && proc.is_running() {
                let ready_after = proc.started.elapsed();
                return Ok(Mosquitto {
                    proc,
                    port,
                    ready_after,
                    _dir: dir,
                });
            }
            last = proc.log().join("\n");
            proc.stop(Duration::from_secs(1)).await;
        }
        bail!("mosquitto did not start: {last}")
    }
}

/// The server side of a scenario: `pricefeed` with its embedded broker, or Debian's Mosquitto with
/// `pricefeed --broker` publishing to it.
pub struct Server {
    pub feed: Feed,
    pub mosquitto: Option<Mosquitto>,
}

impl Server {
    /// `max_clients`: the embedded broker's session limit; `mosquitto_extra`: lines appended to
    /// Mosquitto's configuration.
    pub async fn start(
        bins: &Bins,
        kind: BrokerKind,
        db: &Path,
        interval: &str,
        max_clients: usize,
        mosquitto_extra: &[String],
    ) -> anyhow::Result<Server> {
        let mosquitto = match kind {
            BrokerKind::Pricefeed => None,
            BrokerKind::Mosquitto => Some(Mosquitto::start(mosquitto_extra).await?),
        };
        let feed = Feed::start(
            bins,
            FeedOptions {
                db,
                interval,
                external_broker: mosquitto.as_ref().map(|m| m.port),
                max_clients,
            },
        )
        .await?;
        Ok(Server { feed, mosquitto })
    }

    /// The process that carries the MQTT traffic.
    pub fn broker_pid(&self) -> u32 {
        self.mosquitto
            .as_ref()
            .map_or(self.feed.proc.pid, |m| m.proc.pid)
    }

    /// `pricefeed` when it only publishes to Mosquitto.
    pub fn publisher_pid(&self) -> Option<u32> {
        self.mosquitto.as_ref().map(|_| self.feed.proc.pid)
    }

    /// Every process of the server.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.feed.proc.pid)
            .chain(self.mosquitto.as_ref().map(|m| m.proc.pid))
            .collect()
    }

    pub async fn stop(self) {
        self.feed.proc.stop(Duration::from_secs(10)).await;
        if let Some(m) = self.mosquitto {
            m.proc.stop(Duration::from_secs(5)).await;
        }
    }
}

/// The standalone `history-api` over a store.
pub struct HistoryApi {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl HistoryApi {
    pub async fn start(bins: &Bins, db: &Path, interval: &str) -> anyhow::Result<HistoryApi> {
        let args = vec![
            "--db".into(),
            db.display().to_string(),
            "--http-listen".into(),
            "127.0.0.1:0".into(),
            "--interval".into(),
            interval.into(),
        ];
        let mut proc = Proc::spawn(&bins.path("history-api")?, &args)?;
        let line = proc
            .wait_for_log("history API listening", Duration::from_secs(30))
            .await?;
        let addr = sys::log_field(&line, "address")
            .context("no address= in the listening line")?
            .parse()?;
        Ok(HistoryApi { proc, addr })
    }
}

/// nginx as a foreground process with its own minimal configuration, serving `root` on a free
/// loopback port, logs and pid in a temporary directory.
pub struct Nginx {
    pub proc: Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub async fn start(root: &Path) -> anyhow::Result<Nginx> {
        let program =
            sys::which("nginx").context("nginx is required (apt-get install -y nginx-light)")?;
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
            let port = sys::free_port()?;
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
            let mut proc = Proc::spawn(
                &program,
                &[
                    "-p".into(),
                    dir.path().display().to_string(),
                    "-e".into(),
                    dir.path().join("error.log").display().to_string(),
                    "-c".into(),
                    path.display().to_string(),
                ],
            )?;
            if sys::wait_listening(port, Duration::from_secs(5)).await && proc.is_running() {
                return Ok(Nginx {
                    proc,
                    port,
                    _dir: dir,
                });
            }
            last = format!(
                "{}\n{}",
                proc.log().join("\n"),
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            proc.stop(Duration::from_secs(1)).await;
        }
        bail!("nginx did not start: {last}")
    }
}

/// A plain HTTP/1.1 GET over loopback; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
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
    let body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("GET {path}: chunked answers are not handled");
    }
    Ok((status, body))
}
