//! How every pricefeed binary starts and stops, written once.
//!
//! A `main.rs` here is three steps: [`parse`] the flags (a usage error is one line naming what to
//! fix, exit code 2; `--help` and `--version` print and exit 0), [`init_tracing`] (logs to stderr,
//! text or JSON, `RUST_LOG` over the binary's default levels), and [`run`] the binary's async
//! `main` on a tokio runtime, which turns its result into the exit code, a failure printed as one
//! line with its causes. [`shutdown_signal`] is what every long-running binary stops on: Ctrl-C,
//! or the SIGTERM that `docker stop` and systemd send.
//!
//! It holds no configuration of any binary and no business logic.

use std::future::Future;
use std::process::ExitCode;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Reads the command line into `C`. On `--help` or `--version` prints them and returns
/// `Err(ExitCode::SUCCESS)`; on a usage error prints one line, `NAME: what to fix` (clap's usage
/// hints are one `--help` away), and returns `Err(2)`.
pub fn parse<C: clap::Parser>(name: &str) -> Result<C, ExitCode> {
    match C::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{name}: {}", one_line(&e.render().to_string()));
            Err(ExitCode::from(2))
        }
    }
}

/// The first paragraph of a clap error on one line: for a missing argument, the arguments are on
/// the lines after "the following required arguments were not provided:".
fn one_line(rendered: &str) -> String {
    let words: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    words.join(" ").trim_start_matches("error: ").to_string()
}

/// Logs to stderr (stdout is data, for `pricesub`), in `format`, at the levels `RUST_LOG` gives, or
/// `default_filter` (an `EnvFilter` directive such as `info,rmqtt=warn`) when it is unset.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A failure that ends the process: what went wrong and the exit code it ends with.
#[derive(Debug)]
pub struct Fatal {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Fatal {
    /// Exit code 1: the program ran and then failed (as opposed to a start-up or usage problem).
    pub fn runtime(error: impl Into<anyhow::Error>) -> Fatal {
        Fatal {
            code: 1,
            error: error.into(),
        }
    }
}

/// Any error is, unless said otherwise, something the user must fix to start the program: exit
/// code 2, like a usage error.
impl<E: Into<anyhow::Error>> From<E> for Fatal {
    fn from(error: E) -> Fatal {
        Fatal {
            code: 2,
            error: error.into(),
        }
    }
}

/// Which tokio runtime a binary runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// A worker thread per core: the servers.
    MultiThread,
    /// One thread: a client that mostly waits (`pricesub`).
    CurrentThread,
}

/// Runs `main` to completion on a new runtime and returns the process's exit code: 0 on success;
/// on failure the error's code, after printing `NAME: error: cause: cause` as one line. Tasks still
/// running when `main` returns are not waited for.
pub fn run(
    name: &str,
    runtime: Runtime,
    main: impl Future<Output = Result<(), Fatal>>,
) -> ExitCode {
    let built = match runtime {
        Runtime::MultiThread => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(main);
    // Whatever is still running (an MQTT connection mid-handshake, a connection draining past
    // its deadline) was already given its time by `main`.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal { code, error }) => {
            eprintln!("{name}: {error:#}");
            ExitCode::from(code)
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` and systemd send). If a signal cannot be
/// listened for, says so and waits for the other.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[arg(long, requires = "key")]
        cert: Option<String>,
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        port: Option<u16>,
    }

    fn error(args: &[&str]) -> String {
        let e = Cli::try_parse_from(args).unwrap_err();
        super::one_line(&e.render().to_string())
    }

    #[test]
    fn a_usage_error_is_one_line_naming_what_is_wrong() {
        assert_eq!(
            error(&["cli", "--cert", "c.pem"]),
            "the following required arguments were not provided: --key <KEY>"
        );
        assert_eq!(
            error(&["cli", "--port", "x"]),
            "invalid value 'x' for '--port <PORT>': invalid digit found in string"
        );
    }
}
