//! What the benchmark reads off a process (CPU time and peak memory, from `/proc`) and off a load
//! (requests answered, latency percentiles).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU fields.
fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system) a process has used so far; `None` once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second())
}

/// CPU seconds this benchmark process has used (its load generators and SDK baselines).
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// Peak resident memory of a process in MiB (`VmHWM`).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU used by some processes between two moments.
pub struct CpuMeter {
    pids: Vec<u32>,
    start: f64,
}

impl CpuMeter {
    /// Starts counting the CPU of `pids` (empty: this process).
    pub fn start(pids: &[u32]) -> Self {
        let mut meter = Self {
            pids: pids.to_vec(),
            start: 0.0,
        };
        meter.start = meter.now();
        meter
    }

    fn now(&self) -> f64 {
        if self.pids.is_empty() {
            own_cpu_seconds()
        } else {
            self.pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
        }
    }

    /// CPU seconds used since the start.
    pub fn used(&self) -> f64 {
        self.now() - self.start
    }
}

/// A `perf record` of one process while it is measured, taken only when `BENCH_PERF_DIR` names a
/// folder: `<folder>/<name>.data`, read with `perf report -i` (a flat profile: the release build keeps
/// no frame pointers; build with `CARGO_PROFILE_BENCH_STRIP=false` for symbols).
pub struct Profile(Option<std::process::Child>);

impl Profile {
    /// Starts recording `pid` under `name` (letters and digits kept, the rest `-`), or does nothing.
    pub fn start(pid: u32, name: &str) -> Self {
        let Some(dir) = std::env::var_os("BENCH_PERF_DIR") else {
            return Self(None);
        };
        let file: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let child = std::process::Command::new("perf")
            .args(["record", "-q", "-F", "1999", "-p", &pid.to_string(), "-o"])
            .arg(std::path::Path::new(&dir).join(format!("{file}.data")))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok();
        // perf attaches to every thread of the process before it samples.
        std::thread::sleep(Duration::from_millis(200));
        Self(child)
    }

    /// Stops the recording and waits until perf has written it.
    pub fn stop(mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// What a closed-loop load measured.
#[derive(Debug, Default)]
pub struct Load {
    /// Answers with the expected status.
    pub ok: u64,
    /// Other answers and transport errors.
    pub errors: u64,
    /// Wall time of the load.
    pub elapsed: Duration,
    /// Latency of every good answer.
    pub latencies: Vec<Duration>,
}

impl Load {
    /// Good answers per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`-th percentile latency (0–100), in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies, p)
    }
}

/// The `p`-th percentile (0–100) of `values`, in milliseconds.
pub fn percentile_ms(values: &[Duration], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let index = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// `clients` loops each sending one request at a time for `duration`; `request(i)` builds the `i`-th
/// request, `expected` is the good status.
pub async fn closed_loop<F>(clients: usize, duration: Duration, expected: u16, request: F) -> Load
where
    F: Fn(u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (request, stop, counter) = (request.clone(), stop.clone(), counter.clone());
            tokio::spawn(async move {
                let mut load = Load::default();
                while !stop.load(Ordering::Relaxed) {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    match request(i).send().await {
                        Ok(r) if r.status().as_u16() == expected => {
                            let _ = r.bytes().await;
                            load.ok += 1;
                            load.latencies.push(sent.elapsed());
                        }
                        _ => load.errors += 1,
                    }
                }
                load
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Load::default();
    for task in tasks {
        let load = task.await.expect("load task");
        total.ok += load.ok;
        total.errors += load.errors;
        total.latencies.extend(load.latencies);
    }
    total.elapsed = started.elapsed();
    total
}
