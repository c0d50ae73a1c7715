//! Programs run as child processes: our built binaries and third-party ones, with their stderr
//! collected, stopped cleanly or killed, and the small facts about the machine a test or a
//! benchmark needs before it starts one (is it installed, which port is free).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;

/// Stderr lines kept per child, at most (a broker logging every one of 10,000 connections must not
/// grow the harness without bound).
const LOG_LINES: usize = 5000;

/// Where `cargo test` and `cargo build` put this workspace's binaries, seen from the running
/// executable: test executables live in `target/<profile>/deps`, binaries one level up.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable has a path");
    let dir = exe.parent().expect("an executable has a directory");
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The path of binary `name` in `dir`, or why it is not there.
pub fn binary_in(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// The path of a binary of this workspace, as built by `cargo test` / `cargo build`.
pub fn binary(name: &str) -> PathBuf {
    binary_in(&bin_dir(), name).unwrap_or_else(|e| panic!("{e}"))
}

/// The path of a program on the PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

/// Is a program on the PATH?
pub fn have(program: &str) -> bool {
    which(program).is_some()
}

/// A port that was free a moment ago. Only for programs that cannot be told to bind port 0 and
/// report it (Mosquitto, nginx); everything of ours binds port 0 itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A port that was free a moment ago, below the range the kernel takes the local ports of outgoing
/// connections from (`ip_local_port_range`): for a program that binds it seconds after it was
/// picked, or again after a restart. A port from [`free_port`] is in that range, and any
/// connection opened meanwhile (a peer, curl) may be given it as its own local port; a cluster
/// node's raft then failed to bind with "Address already in use".
///
/// No port is given out twice in one test process: a port is free when picked but bound only
/// when its program starts, so two picks for the same cluster or etcd could otherwise return the
/// same port (a node failed to bind its raft port so, once in a CI run).
pub fn free_port_below_ephemeral() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low > 11_000 {
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..1000 {
            let port = fastrand::u16(10_000..low);
            if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return port;
            }
        }
    }
    free_port()
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub async fn wait_listening(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Extracts `key=VALUE` from a text log line (tracing's default format without ANSI colours).
pub fn log_field(line: &str, key: &str) -> Option<String> {
    let needle = format!("{key}=");
    let start = line
        .match_indices(&needle)
        .find(|&(i, _)| i == 0 || line.as_bytes()[i - 1] == b' ')?
        .0
        + needle.len();
    Some(
        line[start..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

/// A child process with its stderr collected; killed when dropped.
pub struct Process {
    pub child: tokio::process::Child,
    pub pid: u32,
    /// When it was spawned.
    pub started: Instant,
    name: String,
    pub(crate) log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `program` with `args`, stdin closed, stdout piped (take `child.stdout` to read it),
    /// stderr collected for [`Process::log`]. `RUST_LOG` is not passed on: our binaries' own
    /// default levels keep the broker quiet (at `info` it logs every connection).
    pub fn start(program: &Path, args: &[impl AsRef<OsStr>]) -> anyhow::Result<Process> {
        let name = program.file_name().map_or_else(
            || program.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let started = Instant::now();
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let pid = child.id().context("the child has no pid")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = log.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut log = sink.lock().unwrap();
                    if log.len() < LOG_LINES {
                        log.push(line);
                    }
                }
            });
        }
        Ok(Process {
            child,
            pid,
            started,
            name,
            log,
        })
    }

    /// Starts the workspace binary `name` (see [`binary`]); panics if it cannot.
    pub fn spawn(name: &str, args: &[&str]) -> Process {
        Process::start(&binary(name), args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The stderr lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a stderr line containing `needle` and returns it; fails, with the log, if the
    /// process exits first or `within` passes.
    pub async fn wait_for_log(&mut self, needle: &str, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.log().into_iter().find(|l| l.contains(needle)) {
                return Ok(line);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // The last lines may still be in the pipe.
                tokio::time::sleep(Duration::from_millis(50)).await;
                bail!(
                    "{} exited ({status}) before logging {needle:?}; log:\n{}",
                    self.name,
                    self.log().join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not log {needle:?} within {within:?}; log:\n{}",
                    self.name,
                    self.log().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM (what systemd and `docker stop` send).
    pub fn signal_term(&self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    /// Sends SIGTERM and waits for the exit status; panics, with the log, if there is none
    /// within `within`.
    pub async fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        self.signal_term();
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("waiting for a child"),
            Err(_) => panic!(
                "{} did not exit within {within:?} of SIGTERM; log:\n{}",
                self.name,
                self.log().join("\n")
            ),
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after `within`.
    pub async fn stop(mut self, within: Duration) {
        self.signal_term();
        if tokio::time::timeout(within, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Runs a command to completion with a time limit; returns (status, stdout, stderr). Panics if it
/// cannot start or does not finish in time.
pub async fn run_command(
    program: &str,
    args: &[&str],
    within: Duration,
) -> (std::process::ExitStatus, String, String) {
    let out = output(program, args, within)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `program` with `args`, which it must refuse at start-up: exit status 2, no panic, and one
/// error line (logs may precede it) prefixed with the program's name and containing `needle`.
pub async fn assert_refused(program: &str, args: &[&str], needle: &str, within: Duration) {
    let (status, _, stderr) = run_command(program, args, within).await;
    assert_eq!(status.code(), Some(2), "{args:?} exits with 2: {stderr}");
    let name = Path::new(program)
        .file_name()
        .map_or(program.into(), |n| n.to_string_lossy());
    let prefix = format!("{name}: ");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(errors.len(), 1, "{args:?}: one error line in {stderr:?}");
    assert!(
        errors[0].contains(needle),
        "{args:?}: {needle:?} not in {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

/// Runs a command to completion with a time limit and returns its stdout; a non-zero exit is an
/// error carrying its stderr.
pub async fn command_stdout(
    program: &str,
    args: &[impl AsRef<OsStr>],
    within: Duration,
) -> anyhow::Result<String> {
    let out = output(program, args, within).await?;
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn output(
    program: &str,
    args: &[impl AsRef<OsStr>],
    within: Duration,
) -> anyhow::Result<std::process::Output> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    tokio::time::timeout(within, child.wait_with_output())
        .await
        .with_context(|| format!("{program} did not finish within {within:?}"))?
        .with_context(|| format!("waiting for {program}"))
}
