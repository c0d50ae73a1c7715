//! [`Etcd`]: Debian's etcd (3.4), N members of one cluster on loopback, each killed and restarted
//! by the test.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::process::{Process, free_port_below_ephemeral, run_command, which};

/// How long the members may take to elect a leader (a loaded 2-core machine).
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// One member: fixed ports (every member lists every other), its data directory, its process.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    data: PathBuf,
    process: Option<Process>,
}

/// An etcd cluster on loopback; killed when dropped.
pub struct Etcd {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts `n` members and waits until every one reports healthy.
    pub async fn start(n: usize) -> Etcd {
        Etcd::launch(n).await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Etcd::start`], or why not.
    pub async fn launch(n: usize) -> anyhow::Result<Etcd> {
        which("etcd").context("Debian's etcd-server is required (apt-get install etcd-server)")?;
        let dir = tempfile::tempdir()?;
        let members = (1..=n)
            .map(|i| Member {
                name: format!("etcd{i}"),
                client: free_port_below_ephemeral(),
                peer: free_port_below_ephemeral(),
                data: dir.path().join(format!("etcd{i}")),
                process: None,
            })
            .collect();
        let mut etcd = Etcd { members, _dir: dir };
        for i in 0..n {
            etcd.spawn(i, "new")?;
        }
        etcd.wait_healthy(n).await?;
        Ok(etcd)
    }

    fn spawn(&mut self, i: usize, state: &str) -> anyhow::Result<()> {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let member = &self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client);
        let peer = format!("http://127.0.0.1:{}", member.peer);
        let args: Vec<String> = vec![
            "--name".into(),
            member.name.clone(),
            "--data-dir".into(),
            member.data.display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer,
            "--initial-cluster".into(),
            cluster.join(","),
            "--initial-cluster-state".into(),
            state.into(),
            "--initial-cluster-token".into(),
            "pricefeed-test".into(),
            // etcd's default timing (100 ms heartbeat, 1 s election), as an operator runs it.
            "--log-level".into(),
            "warn".into(),
        ];
        let program = which("etcd").context("etcd")?;
        self.members[i].process = Some(Process::start(&program, &args)?);
        Ok(())
    }

    /// `etcd://127.0.0.1:…,127.0.0.1:…`: every member, for `--elect`.
    pub fn url(&self) -> String {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        format!("etcd://{}", members.join(","))
    }

    /// The running members' client URLs, comma-separated.
    fn endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.process.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until `count` members answer healthy (a leader elected, a majority up).
    async fn wait_healthy(&mut self, count: usize) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < HEALTHY_WITHIN {
            let (status, out, err) = self.etcdctl(&["endpoint", "health"]).await;
            let healthy = format!("{out}{err}").matches("is healthy").count();
            if status.success() && healthy >= count {
                return Ok(());
            }
            last = format!("{out}{err}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let logs: Vec<String> = self
            .members
            .iter()
            .filter_map(|m| {
                Some(format!(
                    "{}: {}",
                    m.name,
                    m.process.as_ref()?.log().join("\n")
                ))
            })
            .collect();
        bail!(
            "etcd not healthy within {HEALTHY_WITHIN:?}: {last}\n{}",
            logs.join("\n")
        )
    }

    /// SIGKILL of member `i` (0-based).
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.members[i].process.take() {
            let _ = process.child.kill().await;
        }
    }

    /// Starts member `i` again on its data; waits until the running members are healthy.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.members[i].process.is_none(), "member {i} is running");
        self.spawn(i, "existing")
            .unwrap_or_else(|e| panic!("{e:#}"));
        let running = self.members.iter().filter(|m| m.process.is_some()).count();
        self.wait_healthy(running)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// `etcdctl` with `args` against the running members: status, stdout, stderr.
    async fn etcdctl(&self, args: &[&str]) -> (std::process::ExitStatus, String, String) {
        let endpoints = self.endpoints();
        let mut all = vec!["--endpoints", endpoints.as_str()];
        all.extend_from_slice(args);
        run_command("etcdctl", &all, Duration::from_secs(10)).await
    }

    /// The index of the member that leads etcd's own raft, if one answers.
    pub async fn leader(&self) -> Option<usize> {
        let (_, out, _) = self.etcdctl(&["endpoint", "status", "-w", "json"]).await;
        let status: serde_json::Value = serde_json::from_str(&out).ok()?;
        for entry in status.as_array()? {
            let member = entry["Status"]["header"]["member_id"].as_u64()?;
            if entry["Status"]["leader"].as_u64() == Some(member) {
                let endpoint = entry["Endpoint"].as_str()?;
                return self
                    .members
                    .iter()
                    .position(|m| endpoint.ends_with(&format!(":{}", m.client)));
            }
        }
        None
    }

    /// The keys under `prefix` (etcdctl get --prefix --keys-only), from any running member.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let (_, out, _) = self
            .etcdctl(&["get", prefix, "--prefix", "--keys-only"])
            .await;
        out.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}
