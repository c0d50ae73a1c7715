//! [`Browser`]: Debian's Chromium, headless, driven by `playwright-core` from
//! `tests/browser/live_page.mjs`, one JSON command and answer per line.
//!
//! Chromium, Node and the npm packages are installed by `tests/run.sh`. Missing, the browser tests
//! fail and say what to install, unless `PRICEFEED_SKIP_BROWSER_TESTS=1` asks to skip them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// Set to `1` to skip the browser tests where Chromium or Node is not installed.
pub const SKIP_VAR: &str = "PRICEFEED_SKIP_BROWSER_TESTS";

/// How long one command may take (a page load on a loaded 2-core machine, a debug server).
const COMMAND_WITHIN: Duration = Duration::from_secs(60);

/// A headless Chromium with at most one page open.
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// Where the driver script and its `node_modules` are.
fn driver_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// The Chromium to drive: `PRICEFEED_CHROMIUM`, or `chromium` on the PATH.
fn chromium() -> Option<PathBuf> {
    match std::env::var_os("PRICEFEED_CHROMIUM") {
        Some(path) => Some(PathBuf::from(path)),
        None => crate::process::which("chromium"),
    }
}

impl Browser {
    /// Starts the browser, or returns `None` after saying why when it is not installed and
    /// [`SKIP_VAR`] is `1`; panics, saying what to install, when it is not installed otherwise.
    pub async fn start_or_skip() -> Option<Browser> {
        match Browser::missing() {
            None => Some(Browser::start().await.unwrap_or_else(|e| panic!("{e:#}"))),
            Some(missing) if std::env::var(SKIP_VAR).as_deref() == Ok("1") => {
                eprintln!("SKIPPED: {missing}, and {SKIP_VAR}=1");
                None
            }
            Some(missing) => panic!(
                "{missing}: tests/run.sh installs it (or set {SKIP_VAR}=1 to skip the browser tests)"
            ),
        }
    }

    /// What the browser tests need and this machine lacks, if anything.
    fn missing() -> Option<String> {
        if chromium().is_none_or(|path| !path.exists()) {
            return Some("Chromium is not installed (Debian's chromium)".into());
        }
        if crate::process::which("node").is_none() {
            return Some("Node.js is not installed (Debian's nodejs)".into());
        }
        if !driver_dir().join("node_modules/playwright-core").exists() {
            return Some("playwright-core is not installed (npm ci in tests/browser)".into());
        }
        None
    }

    /// Launches Chromium through the driver script.
    pub async fn start() -> anyhow::Result<Browser> {
        let chromium = chromium().context("no chromium on the PATH")?;
        let mut child = tokio::process::Command::new("node")
            .arg("live_page.mjs")
            .current_dir(driver_dir())
            .env("PRICEFEED_CHROMIUM", &chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start node")?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = child.stderr.take().context("node's stderr")?;
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(lines).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Ok(Browser {
            stdin: child.stdin.take().context("node's stdin")?,
            stdout: BufReader::new(child.stdout.take().context("node's stdout")?).lines(),
            child,
            stderr,
        })
    }

    /// Sends one command and returns its answer's value.
    pub async fn call(&mut self, command: Value) -> anyhow::Result<Value> {
        let line = format!("{command}\n");
        let answer = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await?;
            self.stdout.next_line().await
        };
        let answer = match tokio::time::timeout(COMMAND_WITHIN, answer).await {
            Ok(Ok(Some(answer))) => answer,
            Ok(Ok(None)) => bail!("the browser driver exited; its stderr:\n{}", self.stderr()),
            Ok(Err(e)) => bail!(
                "the browser driver's pipes: {e}; its stderr:\n{}",
                self.stderr()
            ),
            Err(_) => bail!(
                "{command} took longer than {COMMAND_WITHIN:?}; the driver's stderr:\n{}",
                self.stderr()
            ),
        };
        let answer: Value = serde_json::from_str(&answer)
            .with_context(|| format!("the driver answered {answer:?}"))?;
        if answer["ok"] != json!(true) {
            bail!("{command} failed: {}", answer["error"]);
        }
        Ok(answer["value"].clone())
    }

    /// Opens `url` in a new page; returns the response's status and headers.
    pub async fn open(&mut self, url: &str, color_scheme: &str) -> Value {
        self.call(json!({"cmd": "open", "url": url, "colorScheme": color_scheme}))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// What the open page shows, and the errors it logged so far.
    pub async fn page(&mut self) -> Value {
        self.call(json!({"cmd": "page"}))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts a plain `EventSource` on `url` in the open page, keeping every event.
    pub async fn probe(&mut self, url: &str) {
        self.call(json!({"cmd": "probe", "url": url}))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The probe's events so far: `{opens, errors, events: [{type, data, id}]}`.
    pub async fn probe_events(&mut self) -> Value {
        self.call(json!({"cmd": "probe_events"}))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Saves a screenshot of the whole page as PNG.
    pub async fn screenshot(&mut self, path: &Path) {
        let path = path.to_str().expect("a UTF-8 path");
        self.call(json!({"cmd": "screenshot", "path": path}))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Closes Chromium and waits for the driver to exit.
    pub async fn close(mut self) {
        let _ = self.call(json!({"cmd": "close"})).await;
        let _ = tokio::time::timeout(COMMAND_WITHIN, self.child.wait()).await;
    }

    /// The driver's stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}
