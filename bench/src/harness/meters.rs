//! What the harness measures, from Linux: CPU time and RSS of processes and of the whole machine
//! from `/proc`, sampled over a run; the file descriptor limit; file sizes. Starting the processes
//! is the test kit's (`testkit::process`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

/// Clock ticks per second of the `utime`/`stime` fields (USER_HZ; 100 on every Linux we run on).
pub fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process (all its threads), in seconds; `None` if it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15); index = field - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clk_tck())
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

pub fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS")
}

/// The direct children of a process (nginx's workers).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                out.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    out
}

/// A process and its direct children, for CPU and RSS sums.
pub fn with_children(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    all.extend(children(pid));
    all
}

/// CPU seconds spent by a set of processes between `start` and `stop`, as a share of one core.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pids: Vec<u32>,
    started: Instant,
    cpu: f64,
}

impl CpuMeter {
    pub fn start(pids: Vec<u32>) -> CpuMeter {
        let cpu = pids.iter().filter_map(|&p| cpu_seconds(p)).sum();
        CpuMeter {
            pids,
            started: Instant::now(),
            cpu,
        }
    }

    /// The harness itself.
    pub fn start_self() -> CpuMeter {
        CpuMeter::start(vec![std::process::id()])
    }

    /// Percent of one core used since `start` (200% = both cores of a 2-core machine).
    pub fn percent(&self) -> f64 {
        let now: f64 = self.pids.iter().filter_map(|&p| cpu_seconds(p)).sum();
        let wall = self.started.elapsed().as_secs_f64();
        if wall <= 0.0 {
            0.0
        } else {
            100.0 * (now - self.cpu) / wall
        }
    }
}

/// Busy CPU of the whole machine (every process, kernel included) since `start`, as a share of one
/// core: what the measured processes did not use of it was used by something else.
#[derive(Debug, Clone)]
pub struct MachineMeter {
    started: Instant,
    busy: f64,
}

fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    // cpu user nice system idle iowait irq softirq steal ...
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle) as f64 / clk_tck()
}

impl MachineMeter {
    pub fn start() -> MachineMeter {
        MachineMeter {
            started: Instant::now(),
            busy: machine_busy_seconds(),
        }
    }

    pub fn percent(&self) -> f64 {
        let wall = self.started.elapsed().as_secs_f64();
        if wall <= 0.0 {
            0.0
        } else {
            100.0 * (machine_busy_seconds() - self.busy) / wall
        }
    }
}

/// CPU seconds and name of every process now running.
fn all_processes() -> std::collections::HashMap<u32, (String, f64)> {
    let mut out = std::collections::HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|n| n.trim().to_string())
                .unwrap_or_default();
            if let Some(cpu) = cpu_seconds(pid) {
                out.insert(pid, (name, cpu));
            }
        }
    }
    out
}

/// Which other processes used the CPU in a window: every process's CPU time at the start and at
/// the end (processes that lived only inside the window are not seen).
pub struct OthersMeter {
    started: Instant,
    before: std::collections::HashMap<u32, (String, f64)>,
}

impl OthersMeter {
    pub fn start() -> OthersMeter {
        OthersMeter {
            started: Instant::now(),
            before: all_processes(),
        }
    }

    /// Percent of a core used by processes other than `ours` and their children.
    pub fn sum(&self, ours: &[u32]) -> f64 {
        self.usage(ours).iter().map(|(pct, _)| pct).sum()
    }

    /// The busiest processes other than `ours` and their children, as "name pid: N%".
    pub fn top(&self, ours: &[u32], n: usize) -> Vec<String> {
        self.usage(ours)
            .into_iter()
            .take(n)
            .map(|(pct, who)| format!("{who}: {pct:.0}%"))
            .collect()
    }

    fn usage(&self, ours: &[u32]) -> Vec<(f64, String)> {
        let wall = self.started.elapsed().as_secs_f64().max(1e-6);
        let mut mine: Vec<u32> = ours.to_vec();
        for &p in ours {
            mine.extend(children(p));
        }
        let mut used: Vec<(f64, String)> = all_processes()
            .into_iter()
            .filter(|(pid, _)| !mine.contains(pid))
            .map(|(pid, (name, cpu))| {
                let before = self.before.get(&pid).map_or(0.0, |(_, c)| *c);
                (100.0 * (cpu - before) / wall, format!("{name} {pid}"))
            })
            .filter(|(pct, _)| *pct >= 1.0)
            .collect();
        used.sort_by(|a, b| b.0.total_cmp(&a.0));
        used
    }
}

/// Peak RSS and peak CPU (over `every` windows) of a set of processes, sampled in the background.
pub struct Sampler {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<SamplerResult>,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SamplerResult {
    pub peak_rss_kb: u64,
    pub peak_cpu_percent: f64,
    pub samples: usize,
}

impl Sampler {
    pub fn start(pids: Vec<u32>, every: Duration) -> Sampler {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut out = SamplerResult::default();
            let mut meter = CpuMeter::start(pids.clone());
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = token.cancelled() => break,
                }
                let rss: u64 = pids.iter().filter_map(|&p| rss_kb(p)).sum();
                out.peak_rss_kb = out.peak_rss_kb.max(rss);
                out.peak_cpu_percent = out.peak_cpu_percent.max(meter.percent());
                out.samples += 1;
                meter = CpuMeter::start(pids.clone());
            }
            out
        });
        Sampler { stop, task }
    }

    pub async fn finish(self) -> SamplerResult {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// Raises the soft (and, if allowed, hard) RLIMIT_NOFILE to at least `want`; returns the soft
/// limit now in force. Children inherit it.
pub fn raise_nofile(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let soft = current.current.unwrap_or(u64::MAX);
    if soft >= want {
        return soft;
    }
    let hard = current.maximum.unwrap_or(u64::MAX);
    // Try raising the hard limit too (root may); otherwise go as far as the hard limit allows.
    let attempts = [
        Rlimit {
            current: Some(want),
            maximum: Some(want.max(hard)),
        },
        Rlimit {
            current: Some(want.min(hard)),
            maximum: current.maximum,
        },
    ];
    for limit in attempts {
        if setrlimit(Resource::Nofile, limit).is_ok() {
            break;
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Checks there are enough descriptors for `connections` sockets plus slack.
pub fn ensure_nofile(connections: usize) -> anyhow::Result<u64> {
    let want = (connections as u64) * 2 + 1024;
    let got = raise_nofile(want);
    if got < connections as u64 + 256 {
        bail!(
            "RLIMIT_NOFILE is {got}, too low for {connections} connections: run `ulimit -n {want}` first"
        );
    }
    Ok(got)
}

/// Size of a file in bytes (0 if absent).
pub fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
