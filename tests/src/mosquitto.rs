//! [`Mosquitto`]: Debian's Mosquitto on a free loopback port, with pricefeed's configuration, ACL
//! and a publisher password, and, if asked, a listener for MQTT over WebSocket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::process::{Process, command_stdout, free_port, wait_listening, which};

/// The publisher's password on every Mosquitto the kit starts.
pub const MOSQUITTO_PUBLISHER_PASSWORD: &str = "mosquitto-test-password";

/// A running Mosquitto; killed when dropped.
pub struct Mosquitto {
    pub port: u16,
    /// Its MQTT-over-WebSocket listener, if it was started with one.
    pub ws_port: Option<u16>,
    pub password: String,
    pub process: Process,
    /// From spawn to accepting connections.
    pub ready_after: Duration,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts it and waits until it accepts connections; panics if it cannot.
    pub async fn start() -> Mosquitto {
        Mosquitto::launch(&[])
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts it with `extra` lines appended to pricefeed's configuration (experiments) and waits
    /// until it accepts connections.
    pub async fn launch(extra: &[String]) -> anyhow::Result<Mosquitto> {
        Mosquitto::launch_with(extra, false).await
    }

    /// Starts it with a second listener, for MQTT over WebSocket (pricefeed's configuration with
    /// `broker_config::mosquitto::websockets_listener`), and waits until both accept
    /// connections; panics if it cannot.
    pub async fn start_with_websockets() -> Mosquitto {
        Mosquitto::launch_with(&[], true)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    async fn launch_with(extra: &[String], websockets: bool) -> anyhow::Result<Mosquitto> {
        which("mosquitto_passwd").context(
            "Debian's mosquitto is required (apt-get install mosquitto mosquitto-clients)",
        )?;
        let dir = tempfile::tempdir()?;
        let passwd = dir.path().join("passwd");
        let acl = dir.path().join("acl");
        std::fs::write(&acl, broker_config::mosquitto::acl_file())?;
        let args = [
            "-c".as_ref(),
            "-b".as_ref(),
            passwd.as_os_str(),
            broker_config::PUBLISHER_USER.as_ref(),
            MOSQUITTO_PUBLISHER_PASSWORD.as_ref(),
        ];
        command_stdout("mosquitto_passwd", &args, Duration::from_secs(10)).await?;
        let conf = dir.path().join("mosquitto.conf");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let ws_port = websockets.then(free_port);
            let mut text = broker_config::mosquitto::config("127.0.0.1", port, &passwd, &acl);
            if let Some(ws) = ws_port {
                text.push_str(&broker_config::mosquitto::websockets_listener(
                    "127.0.0.1",
                    ws,
                ));
            }
            for line in extra {
                text.push_str(line);
                text.push('\n');
            }
            std::fs::write(&conf, text)?;
            match spawn(&conf, port, ws_port).await {
                Ok(process) => {
                    return Ok(Mosquitto {
                        port,
                        ws_port,
                        password: MOSQUITTO_PUBLISHER_PASSWORD.to_string(),
                        ready_after: process.started.elapsed(),
                        process,
                        conf,
                        _dir: dir,
                    });
                }
                Err(e) => last = format!("{e:#}"),
            }
        }
        bail!("mosquitto did not start: {last}")
    }

    /// Kills it and starts it again on the same port (a broker restart: connections and retained
    /// messages are lost).
    pub async fn restart(&mut self) {
        let _ = self.process.child.kill().await;
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < Duration::from_secs(5) {
            match spawn(&self.conf, self.port, self.ws_port).await {
                Ok(process) => {
                    self.process = process;
                    return;
                }
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mosquitto did not restart: {last}");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Stops it (SIGKILL); retained messages are lost, as configured (no persistence).
    pub async fn stop(mut self) {
        let _ = self.process.child.kill().await;
    }
}

async fn spawn(conf: &std::path::Path, port: u16, ws_port: Option<u16>) -> anyhow::Result<Process> {
    let program = which("mosquitto").context("Debian's mosquitto is required")?;
    let mut process = Process::start(&program, &["-c".as_ref(), conf.as_os_str()])?;
    let ws_listening = match ws_port {
        Some(ws) => wait_listening(ws, Duration::from_secs(5)).await,
        None => true,
    };
    if wait_listening(port, Duration::from_secs(5)).await && ws_listening && process.is_running() {
        return Ok(process);
    }
    let log = process.log().join("\n");
    let _ = process.child.kill().await;
    bail!("mosquitto did not listen on {port} within 5 s: {log}")
}
