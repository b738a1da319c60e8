//! codewatch's benchmark: every path next to its baseline, measured in the same run on the same
//! services, since only ratios survive a noisy machine. It starts what it needs (Azurite from
//! `tools/azurite`, a throwaway PostgreSQL from Debian's binaries) and runs codewatch as the real
//! binary, measuring its processes' CPU and memory from `/proc`.
//!
//!   scripts/bench.sh                      (installs Azurite and PostgreSQL if missing, then runs this)
//!   cargo bench --bench codewatch         BENCH_N=1000 (activations per worker run), BENCH_SECONDS=3
//!
//! It prints one table, and writes `target/bench/codewatch.json` and `target/bench/codewatch.svg`.
//! Azurite is one Node.js thread: its absolute rates are not codewatch's speed, only the ratios are.

mod chart;
mod measure;
mod minimal;
mod minimal_getcode;
mod sdk;

#[path = "../../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use chrono::{DateTime, Utc};
use codewatch::domain::{Code, CodeNumber, Issuance, IssuanceId, Subject};
use codewatch::message::{CodeMessage, MessageEncoding};
use codewatch::store::Activation;
use common::process::{Proc, bound_port, codewatch as codewatch_cmd};
use measure::{CpuMeter, Load, Profile, closed_loop, peak_rss_mib, percentile_ms};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

const NUMBER_KEY: &str = "bench-number-key";
const VERIFY_KEY: &str = "bench-verify-key";

/// How much to measure: `BENCH_N` activations per worker run, `BENCH_SECONDS` per load, verification
/// at `BENCH_ROWS` and 100 × as many rows, the table and growth parts over `BENCH_TABLE_ROWS`.
struct Scale {
    n: usize,
    /// Activations per growth run (BENCH_GROWTH_N, 10,000): the CPU meter reads `/proc` in clock
    /// ticks of 10 ms, and 1,000 activations (~0.15 s of CPU, ~15 ticks) made single runs differ by
    /// ± 20 %.
    growth_n: usize,
    seconds: Duration,
    rows: usize,
    /// Expired rows the retention part purges (BENCH_PURGE_ROWS).
    purge_rows: usize,
    /// The table sizes the table and growth parts measure at (BENCH_TABLE_ROWS).
    table_rows: Vec<usize>,
}

impl Scale {
    fn from_env() -> Self {
        let var = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(default)
        };
        Self {
            n: var("BENCH_N", 1000) as usize,
            growth_n: var("BENCH_GROWTH_N", 10_000) as usize,
            seconds: Duration::from_secs_f64(
                std::env::var("BENCH_SECONDS")
                    .ok()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(3.0)
                    .max(0.2),
            ),
            rows: var("BENCH_ROWS", 1000) as usize,
            purge_rows: var("BENCH_PURGE_ROWS", 100_000) as usize,
            table_rows: std::env::var("BENCH_TABLE_ROWS")
                .unwrap_or_else(|_| "10000,100000,1000000".into())
                .split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect(),
        }
    }
}

/// One measured line: codewatch (or a baseline) on one path.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    /// Ceilings, producer, worker, embedded, verification, growth.
    pub part: &'static str,
    /// What ran, e.g. `getcode, 32 clients`.
    pub case: String,
    /// What one unit is: put, getcode, activation, code, check, row.
    pub unit: &'static str,
    /// Units per second.
    pub rate: f64,
    /// Median latency, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, ms.
    pub p99_ms: Option<f64>,
    /// CPU per unit of the measured process(es), µs.
    pub cpu_us: Option<f64>,
    /// Peak resident memory of the measured process, MiB.
    pub rss_mib: Option<f64>,
    /// The baseline this row is compared with.
    pub baseline: Option<String>,
    /// rate / the baseline's rate.
    pub rate_ratio: Option<f64>,
    /// CPU per unit / the baseline's CPU per unit.
    pub cpu_ratio: Option<f64>,
    /// For the growth chart: the path measured (`up`, `embedded worker`, …) and how many valid
    /// codes the table held before the run.
    pub growth: Option<(&'static str, usize)>,
}

impl Row {
    fn against(mut self, baseline: &Row) -> Self {
        self.baseline = Some(baseline.case.clone());
        self.rate_ratio = Some(self.rate / baseline.rate);
        self.cpu_ratio = match (self.cpu_us, baseline.cpu_us) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        self
    }

    fn with_latency(mut self, load: &Load) -> Self {
        self.p50_ms = Some(load.percentile_ms(50.0));
        self.p99_ms = Some(load.percentile_ms(99.0));
        self
    }
}

/// Everything the benchmark runs against.
struct Bench {
    scale: Scale,
    azurite: String,
    postgres: common::PrivatePostgres,
    number_api: (Proc, String),
    dir: tempfile::TempDir,
    rows: Vec<Row>,
    http: reqwest::Client,
}

fn activation_body(i: usize) -> String {
    CodeMessage::Activate(Issuance {
        destination: None,
        id: IssuanceId::random(),
        code: Code::parse(&format!("Ben-{i}-Chx")).unwrap(),
        issued_at: Utc::now(),
        subject: None,
    })
    .encode(MessageEncoding::Text)
    .unwrap()
}

/// Sends `n` activation messages to `queue`, visible after `visible_after`, 32 at a time.
async fn send_activations(
    queue: &codewatch::queue::SharedQueue,
    n: usize,
    visible_after: Duration,
) {
    futures::StreamExt::for_each_concurrent(futures::stream::iter(0..n), 32, |i| async move {
        queue
            .send(&activation_body(i), visible_after)
            .await
            .unwrap()
    })
    .await;
}

/// Writes `n` valid codes issued at `at` and valid for `ttl_secs` ([`activation_at`]) through the
/// store, a thousand per activation.
async fn preload_codes(
    store: &codewatch::store::SharedStore,
    n: usize,
    at: DateTime<Utc>,
    ttl_secs: i64,
) {
    for start in (0..n).step_by(1000) {
        let chunk: Vec<Activation> = (start..(start + 1000).min(n))
            .map(|i| activation_at(i, at, ttl_secs))
            .collect();
        store.activate(&chunk, at).await.unwrap();
    }
}

/// A running codewatch process and the base URL it serves on (if any).
struct Running {
    proc: Proc,
    base: Option<String>,
}

impl Running {
    fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    fn peak_rss(&self) -> Option<f64> {
        peak_rss_mib(self.pid())
    }
}

impl Bench {
    fn env(&self, extra: &[(&str, String)]) -> Vec<(&'static str, String)> {
        let mut env: Vec<(&'static str, String)> = vec![
            (
                "AZURE_STORAGE_CONNECTION_STRING",
                common::connection_string_at(&self.azurite),
            ),
            (
                "THIRD_PARTY_API_ENDPOINT",
                format!("{}/api/RandomNumber", self.number_api.1),
            ),
            ("THIRD_PARTY_API_KEY", NUMBER_KEY.into()),
            ("VERIFY_API_KEY", VERIFY_KEY.into()),
            ("LISTEN_ADDR", "127.0.0.1:0".into()),
            ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".into()),
            ("GETCODE_RATE_LIMIT_PER_SECOND", "0".into()),
            ("VERIFY_RATE_LIMIT_PER_SECOND", "1000000000".into()),
            ("VERIFY_RATE_LIMIT_BURST", "4000000000".into()),
            ("CODE_TTL_SECONDS", "3600".into()),
            ("RUST_LOG", "info".into()),
        ];
        // An empty value removes the variable (the embedded queue: no connection string).
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            if !v.is_empty() {
                let key: &'static str = Box::leak(k.to_string().into_boxed_str());
                env.push((key, v.clone()));
            }
        }
        env
    }

    /// Starts `codewatch <command>`; with `listens`, waits for its listener and returns its URL.
    fn spawn(&self, command: &str, log: &str, listens: bool, extra: &[(&str, String)]) -> Running {
        let env = self.env(extra);
        let proc = Proc(
            codewatch_cmd(self.dir.path(), &[command], &env, log)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let base = listens.then(|| {
            format!(
                "http://127.0.0.1:{}",
                bound_port(&self.dir.path().join(log), "addr")
            )
        });
        Running { proc, base }
    }

    fn sqlite_url(&self, name: &str) -> String {
        format!(
            "sqlite:{}",
            self.dir.path().join(format!("{name}.db")).display()
        )
    }

    fn push(&mut self, row: Row) {
        eprintln!("  {:<14} {:<44} {:>10.1}/s", row.part, row.case, row.rate);
        self.rows.push(row);
    }

    fn find(&self, case: &str) -> Row {
        self.rows
            .iter()
            .find(|r| r.case == case)
            .cloned()
            .unwrap_or_else(|| panic!("no row {case}"))
    }

    /// `clients` closed loops of `request` against the process `pid` for the run's load time: its
    /// rate, latency, CPU per answer and peak RSS, in a row named `case` (and profiled under that
    /// name with `BENCH_PERF_DIR`).
    async fn load_row<F>(&self, case: String, pid: u32, clients: usize, request: F) -> Row
    where
        F: Fn(u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
    {
        let profile = Profile::start(pid, &case);
        let cpu = CpuMeter::start(&[pid]);
        let load = closed_loop(clients, self.scale.seconds, 200, request).await;
        let used = cpu.used();
        profile.stop();
        Row {
            case,
            rate: load.rate(),
            cpu_us: Some(used / load.ok.max(1) as f64 * 1e6),
            rss_mib: peak_rss_mib(pid),
            ..Row::default()
        }
        .with_latency(&load)
    }

    // --- 1. ceilings ------------------------------------------------------------------------------

    async fn ceilings(&mut self) {
        for in_flight in [1, 8, 32, 64] {
            let client =
                std::sync::Arc::new(sdk::client(&self.azurite, &common::queue_name()).await);
            let (rate, cpu, n) =
                sdk::put_ceiling(client.clone(), in_flight, self.scale.seconds).await;
            client.delete(None).await.unwrap();
            self.push(Row {
                part: "ceiling",
                case: format!("SDK Put, {in_flight} in flight"),
                unit: "put",
                rate,
                cpu_us: Some(cpu / n as f64 * 1e6),
                ..Row::default()
            });
        }
        let n = self.scale.n;
        let sqlite = common::sqlite().await;
        let codewatch::backends::Database::Sqlite(pools) = &sqlite.database else {
            unreachable!()
        };
        let rate = sdk::sqlite_inserts(&pools.write, n).await;
        self.push(Row {
            part: "ceiling",
            case: "SQLite inserts, 32 per transaction".into(),
            unit: "row",
            rate,
            ..Row::default()
        });
        let pg = common::TestDb::postgres_on(&self.postgres.url).await;
        let codewatch::backends::Database::Postgres(pool) = &pg.database else {
            unreachable!()
        };
        let rate = sdk::postgres_inserts(pool, n).await;
        self.push(Row {
            part: "ceiling",
            case: "PostgreSQL inserts, 32 per transaction".into(),
            unit: "row",
            rate,
            ..Row::default()
        });
    }

    /// The bare SDK doing the worker's calls for `n` stored activations.
    async fn mix_ceiling(&mut self, label: &str) -> Row {
        let client = sdk::client(&self.azurite, &common::queue_name()).await;
        sdk::fill(&client, (0..self.scale.n).map(activation_body).collect()).await;
        let (rate, cpu) = sdk::mix_ceiling(&client, self.scale.n).await;
        client.delete(None).await.unwrap();
        let row = Row {
            part: "ceiling",
            case: format!("SDK receive/32 + send + delete ({label})"),
            unit: "activation",
            rate,
            cpu_us: Some(cpu / self.scale.n as f64 * 1e6),
            ..Row::default()
        };
        self.push(row.clone());
        row
    }

    // --- 2. producer ------------------------------------------------------------------------------

    async fn producer(&mut self) {
        let queue = common::queue_name();
        let serve = self.spawn(
            "serve",
            "serve.log",
            true,
            &[
                ("STORAGE_QUEUE_NAME", queue.clone()),
                ("DATABASE_URL", self.sqlite_url("serve")),
            ],
        );
        let url = format!("{}/api/v1/getcode", serve.base.as_deref().unwrap());
        // The fair floor: a bare hyper server doing the same number-API call and Put (against the
        // Put ceiling), then getcode against it, at each load in turn.
        let (floor, floor_base) = spawn_floor(
            minimal_getcode::ROLE_VALUE,
            &[
                ("AZURITE_QUEUE_ENDPOINT", self.azurite.clone()),
                ("STORAGE_QUEUE_NAME", queue.clone()),
                (
                    "THIRD_PARTY_API_ENDPOINT",
                    format!("{}/api/RandomNumber", self.number_api.1),
                ),
                ("THIRD_PARTY_API_KEY", NUMBER_KEY.into()),
            ],
        );
        for clients in [1, 8, 32, 64] {
            let (http, floor_url) = (self.http.clone(), format!("{floor_base}/getcode"));
            let row = self
                .load_row(
                    format!("bare hyper + reqwest + SDK Put, {clients} clients"),
                    floor.0.id(),
                    clients,
                    move |_| http.get(&floor_url),
                )
                .await;
            let ceiling = self.find(&format!("SDK Put, {clients} in flight"));
            let floor_row = Row {
                part: "producer",
                unit: "getcode",
                ..row
            }
            .against(&ceiling);
            self.push(floor_row.clone());
            let (http, url) = (self.http.clone(), url.clone());
            let row = self
                .load_row(
                    format!("getcode, {clients} clients"),
                    serve.pid(),
                    clients,
                    move |_| http.get(&url),
                )
                .await;
            self.push(
                Row {
                    part: "producer",
                    unit: "getcode",
                    ..row
                }
                .against(&floor_row),
            );
        }
        drop(floor);
        drop(serve);
        // As many hosts run it: errors built and discarded on the success path must cost nothing.
        let serve = self.spawn(
            "serve",
            "serve-backtrace.log",
            true,
            &[
                ("STORAGE_QUEUE_NAME", queue.clone()),
                ("DATABASE_URL", self.sqlite_url("serve")),
                ("RUST_BACKTRACE", "1".into()),
            ],
        );
        let url = format!("{}/api/v1/getcode", serve.base.as_deref().unwrap());
        let http = self.http.clone();
        let row = self
            .load_row(
                "getcode, 32 clients, RUST_BACKTRACE=1".into(),
                serve.pid(),
                32,
                move |_| http.get(&url),
            )
            .await;
        let unset = self.find("getcode, 32 clients");
        self.push(
            Row {
                part: "producer",
                unit: "getcode",
                ..row
            }
            .against(&unset),
        );
        let client = sdk::client(&self.azurite, &queue).await;
        client.delete(None).await.unwrap();
    }

    // --- 3. worker drain --------------------------------------------------------------------------

    /// The worker drain runs, between two measurements of the SDK mix ceiling.
    async fn workers(&mut self) {
        let before = self.mix_ceiling("before the worker runs").await;
        let mut ceiling = before.clone();
        for (backend, workers, rearm) in [
            ("SQLite", 1, "send"),
            ("SQLite", 3, "send"),
            ("PostgreSQL", 1, "send"),
            ("PostgreSQL", 3, "send"),
            ("SQLite", 1, "update"),
        ] {
            self.worker_drain(backend, workers, rearm, &ceiling).await;
        }
        let after = self.mix_ceiling("after").await;
        ceiling.rate = (before.rate + after.rate) / 2.0;
        ceiling.cpu_us = Some((before.cpu_us.unwrap() + after.cpu_us.unwrap()) / 2.0);
        ceiling.case = "SDK receive/32 + send + delete (mean)".into();
        self.push(ceiling.clone());
        // The worker rows were compared with the first; compare them with the mean of both.
        for row in self.rows.iter_mut().filter(|r| r.part == "worker") {
            *row = row.clone().against(&ceiling);
        }
    }

    /// `workers` worker processes drain `n` preloaded activations into `backend`.
    async fn worker_drain(&mut self, backend: &str, workers: usize, rearm: &str, ceiling: &Row) {
        let n = self.scale.n;
        let queue = common::queue_name();
        let client = sdk::client(&self.azurite, &queue).await;
        sdk::fill(&client, (0..n).map(activation_body).collect()).await;
        let (url, counter, _db) = self.database(backend, "worker").await;
        let running: Vec<Running> = (0..workers)
            .map(|i| {
                self.spawn(
                    "worker",
                    &format!("worker-{backend}-{workers}-{i}.log"),
                    false,
                    &[
                        ("STORAGE_QUEUE_NAME", queue.clone()),
                        ("DATABASE_URL", url.clone()),
                        ("WORKER_REARM", rearm.to_owned()),
                    ],
                )
            })
            .collect();
        let pids: Vec<u32> = running.iter().map(Running::pid).collect();
        let cpu = CpuMeter::start(&pids);
        let started = Instant::now();
        counter.wait_for(n, Duration::from_secs(300)).await;
        let elapsed = started.elapsed();
        let used = cpu.used();
        let rss = running
            .iter()
            .filter_map(Running::peak_rss)
            .fold(0.0, f64::max);
        drop(running);
        client.delete(None).await.unwrap();
        let rearm_note = if rearm == "update" {
            ", re-arm by update"
        } else {
            ""
        };
        let row = Row {
            part: "worker",
            case: format!("{workers} worker(s), {backend}{rearm_note}"),
            unit: "activation",
            rate: n as f64 / elapsed.as_secs_f64(),
            cpu_us: Some(used / n as f64 * 1e6),
            rss_mib: Some(rss),
            ..Row::default()
        }
        .against(ceiling);
        self.push(row);
    }

    /// A fresh database of `backend` (migrated), its URL, a row counter, and what keeps it alive.
    async fn database(&self, backend: &str, name: &str) -> (String, Counter, common::TestDb) {
        let db = match backend {
            "SQLite" => {
                let url = self.sqlite_url(&format!("{name}-{}", uuid::Uuid::new_v4().simple()));
                let database = codewatch::backends::Database::open(
                    &codewatch::config::DatabaseArgs::at(url.clone()),
                )
                .await
                .unwrap();
                common::TestDb::wrap(database, url)
            }
            _ => common::TestDb::postgres_on(&self.postgres.url).await,
        };
        (db.url.clone(), Counter(db.database.clone()), db)
    }

    // --- 4. embedded mode and verification ----------------------------------------------------------

    async fn embedded(&mut self) {
        let [issued, during, end_to_end] = self.embedded_over(0, false).await;
        self.push(issued);
        self.push(during);
        self.push(end_to_end);
    }

    /// `up` on a SQLite file that holds `preload` valid codes (from earlier, expiring in two hours)
    /// before 32 clients issue codes for a load's time: the issued, activated-while-issuing and
    /// end-to-end rows, of the new codes only.
    async fn embedded_over(&mut self, preload: usize, queued: bool) -> [Row; 3] {
        let url = self.sqlite_url(&format!("up-{preload}-{}", uuid::Uuid::new_v4().simple()));
        if preload > 0 {
            let database = codewatch::backends::Database::open(
                &codewatch::config::DatabaseArgs::at(url.clone()),
            )
            .await
            .unwrap();
            let earlier = Utc::now() - chrono::Duration::hours(1);
            preload_codes(&database.store(), preload, earlier, 3 * 3600).await;
            if queued {
                // Their expiry messages, invisible for the TTL, as the worker leaves them.
                let queue = database.embedded_queue("code-requests").unwrap();
                send_activations(&queue, preload, Duration::from_secs(3 * 3600)).await;
            }
            database.close().await;
        }
        let env = self.env(&[
            ("DATABASE_URL", url.clone()),
            ("CODE_TTL_SECONDS", "600".into()),
            (
                "WORKER_POLLERS",
                std::env::var("BENCH_UP_POLLERS").unwrap_or_default(),
            ),
            ("AZURE_STORAGE_CONNECTION_STRING", String::new()),
            ("THIRD_PARTY_API_ENDPOINT", String::new()),
            ("THIRD_PARTY_API_KEY", String::new()),
        ]);
        let (up, base) = common::process::spawn_up(self.dir.path(), &env);
        let getcode = format!("{base}/api/v1/getcode");
        let cpu = CpuMeter::start(&[up.0.id()]);
        let started = Utc::now();
        let (http, target) = (self.http.clone(), getcode.clone());
        let load = closed_loop(32, self.scale.seconds, 200, move |_| http.get(&target)).await;
        let ended = Utc::now();
        let database =
            codewatch::backends::Database::open_existing(&codewatch::config::DatabaseArgs::at(url))
                .await
                .unwrap();
        let counter = Counter(database.clone());
        counter
            .wait_for(preload + load.ok as usize, Duration::from_secs(300))
            .await;
        let used = cpu.used();
        let rss = peak_rss_mib(up.0.id());
        drop(up);
        let codewatch::backends::Database::Sqlite(pools) = &database else {
            unreachable!()
        };
        let times: Vec<(String, String)> =
            sqlx::query_as("SELECT issued_at, activated_at FROM valid_codes WHERE issued_at >= ?")
                .bind(codewatch::timestamp::format(started))
                .fetch_all(&pools.read)
                .await
                .unwrap();
        let parse = |t: &str| codewatch::timestamp::parse(t).unwrap();
        let lags: Vec<Duration> = times
            .iter()
            .map(|(i, a)| (parse(a) - parse(i)).to_std().unwrap_or_default())
            .collect();
        let last: DateTime<Utc> = times.iter().map(|(_, a)| parse(a)).max().unwrap_or(ended);
        let during = times.iter().filter(|(_, a)| parse(a) <= ended).count();
        let window = (ended - started).as_seconds_f64();
        let over = match (preload, queued) {
            (0, _) => String::new(),
            (_, false) => format!(", {preload} rows before"),
            (_, true) => format!(", {preload} rows and expiry messages before"),
        };
        let issued = Row {
            part: "embedded",
            case: format!("up: codes issued, 32 clients{over}"),
            unit: "code",
            rate: load.rate(),
            cpu_us: Some(used / load.ok.max(1) as f64 * 1e6),
            rss_mib: rss,
            ..Row::default()
        }
        .with_latency(&load);
        database.close().await;
        [
            issued,
            Row {
                part: "embedded",
                case: format!("up: activated while issuing{over}"),
                unit: "code",
                rate: during as f64 / window,
                ..Row::default()
            },
            Row {
                part: "embedded",
                case: format!("up: activated end to end (lag p50/p99){over}"),
                unit: "code",
                rate: times.len() as f64 / (last - started).as_seconds_f64(),
                p50_ms: Some(percentile_ms(&lags, 50.0)),
                p99_ms: Some(percentile_ms(&lags, 99.0)),
                ..Row::default()
            },
        ]
    }

    /// `up` over tables of each size in `sizes` (BENCH_TABLE_ROWS): CPU per code issued and the
    /// activation lag, each against the smallest table's.
    async fn table_growth(&mut self, sizes: &[usize], queued: bool) {
        let mut first: Option<[Row; 3]> = None;
        for &rows in sizes {
            let mut measured = self.embedded_over(rows, queued).await;
            for row in &mut measured {
                row.part = "table";
            }
            if !queued {
                measured[0].growth = Some(("up (issued, activated)", rows));
            }
            match &first {
                None => {
                    for row in &measured {
                        self.push(row.clone());
                    }
                    first = Some(measured);
                }
                Some(base) => {
                    for (row, base) in measured.into_iter().zip(base) {
                        self.push(row.against(base));
                    }
                }
            }
        }
    }

    /// Checks against `rows` valid codes in `backend`: codewatch's endpoint, then the minimal server;
    /// codewatch's row.
    async fn verification(&mut self, backend: &str, rows: usize) -> Row {
        let (url, _, db) = self.database(backend, "verify").await;
        let store = db.database.store();
        let now = Utc::now();
        let activations: Vec<Activation> = (0..rows)
            .map(|i| {
                Activation::new(
                    Issuance {
                        destination: None,
                        id: IssuanceId::random(),
                        code: Code::parse(&format!("Vrf-{i}-Chk")).unwrap(),
                        issued_at: now,
                        subject: Some(Subject::parse(&format!("user-{i}")).unwrap()),
                    },
                    now + chrono::TimeDelta::hours(2),
                )
            })
            .collect();
        for chunk in activations.chunks(1000) {
            store.activate(chunk, now).await.unwrap();
        }
        let label = format!("{backend}, {rows} rows");
        let check = |base: String, http: reqwest::Client| {
            move |i: u64| {
                let i = (i as usize * 7919) % rows;
                http.post(format!("{base}/api/v1/codes/check"))
                    .bearer_auth(VERIFY_KEY)
                    .json(&serde_json::json!({ "code": format!("Vrf-{i}-Chk"), "subject": format!("user-{i}") }))
            }
        };
        let serve = self.spawn(
            "serve",
            &format!("verify-{backend}-{rows}.log"),
            true,
            &[
                ("STORAGE_QUEUE_NAME", common::queue_name()),
                ("DATABASE_URL", url.clone()),
            ],
        );
        let measured = self
            .load_row(
                format!("codewatch check, {label}"),
                serve.pid(),
                32,
                check(serve.base.clone().unwrap(), self.http.clone()),
            )
            .await;
        let codewatch_row = Row {
            part: "verification",
            unit: "check",
            ..measured
        };
        drop(serve);

        let (minimal, base) = spawn_floor(minimal::ROLE_VALUE, &[("DATABASE_URL", url.clone())]);
        let measured = self
            .load_row(
                format!("minimal axum + sqlx, {label}"),
                minimal.0.id(),
                32,
                check(base, self.http.clone()),
            )
            .await;
        let floor = Row {
            part: "verification",
            unit: "check",
            ..measured
        };
        drop(minimal);
        self.push(floor.clone());
        let codewatch_row = codewatch_row.against(&floor);
        self.push(codewatch_row.clone());
        codewatch_row
    }

    // --- 5. growth --------------------------------------------------------------------------------

    /// CPU per unit against the table's size: the embedded worker activating N codes, and
    /// verification on SQLite and PostgreSQL, each over `sizes` valid codes already in the table;
    /// each against its smallest size (`up` is measured the same way by the table part).
    async fn growth(&mut self, sizes: &[usize]) {
        let n = self.scale.growth_n;
        let mut smallest: Vec<Row> = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let measured = [
                ("embedded worker", self.embedded_drain(size, n).await),
                (
                    "verification, SQLite",
                    self.verification("SQLite", size).await,
                ),
                (
                    "verification, PostgreSQL",
                    self.verification("PostgreSQL", size).await,
                ),
            ];
            for (j, (series, row)) in measured.into_iter().enumerate() {
                let row = Row {
                    part: "growth",
                    case: format!("{series}, over {size} rows"),
                    growth: Some((series, size)),
                    baseline: None,
                    rate_ratio: None,
                    cpu_ratio: None,
                    ..row
                };
                if i == 0 {
                    smallest.push(row.clone());
                    self.push(row);
                } else {
                    self.push(row.against(&smallest[j]));
                }
            }
        }
    }

    /// The embedded worker draining `n` activations on a file that already holds `preload` valid
    /// codes: CPU per activation; then its idle CPU.
    async fn embedded_drain(&mut self, preload: usize, n: usize) -> Row {
        let (url, counter, db) = self.database("SQLite", "growth").await;
        let earlier = Utc::now() - chrono::Duration::hours(1);
        preload_codes(&db.database.store(), preload, earlier, 3 * 3600).await;
        let queue = db.database.embedded_queue("code-requests").unwrap();
        send_activations(&queue, n, Duration::ZERO).await;
        let worker = self.spawn(
            "worker",
            &format!("growth-{preload}-{n}.log"),
            false,
            &[
                ("DATABASE_URL", url),
                ("AZURE_STORAGE_CONNECTION_STRING", String::new()),
            ],
        );
        let case = format!("embedded worker, {n} activations over {preload} rows");
        let cpu = CpuMeter::start(&[worker.pid()]);
        let started = Instant::now();
        let profile = Profile::start(worker.pid(), &case);
        counter.wait_for_sent(n, Duration::from_secs(300)).await;
        let elapsed = started.elapsed();
        let used = cpu.used();
        profile.stop();
        let row = Row {
            part: "growth",
            case,
            unit: "activation",
            rate: n as f64 / elapsed.as_secs_f64(),
            cpu_us: Some(used / n as f64 * 1e6),
            rss_mib: worker.peak_rss(),
            ..Row::default()
        };
        // Idle: the queue holds only invisible expiry messages now.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = CpuMeter::start(&[worker.pid()]);
        tokio::time::sleep(self.scale.seconds).await;
        let idle_share = idle.used() / self.scale.seconds.as_secs_f64();
        self.push(Row {
            part: "growth",
            case: format!("idle worker after {n} over {preload} (CPU share in rate column, %)"),
            unit: "%",
            rate: idle_share * 100.0,
            ..Row::default()
        });
        row
    }
}

// --- 6. retention ------------------------------------------------------------------------------

/// An activation of a fresh code issued at `at`, valid for `ttl_secs`: random letters around a number,
/// as getcode makes them, so that the rows spread over the code index as real ones do.
fn activation_at(i: usize, at: DateTime<Utc>, ttl_secs: i64) -> Activation {
    Activation::new(
        Issuance {
            destination: None,
            id: IssuanceId::random(),
            code: Code::generate(
                CodeNumber::new((i % 1000) as u64).expect("below a million"),
                &mut rand::rng(),
            ),
            issued_at: at,
            subject: Some(Subject::parse(&format!("user-{i}")).unwrap()),
        },
        at + chrono::Duration::seconds(ttl_secs),
    )
}

/// Activations of one row each, one every 5 ms, until `stop`: each one's time (the wait for the
/// writer included).
async fn probe_writes(
    store: codewatch::store::SharedStore,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<Duration> {
    let mut waits = Vec::new();
    let mut i = 10_000_000;
    while !stop.is_cancelled() {
        i += 1;
        let started = Instant::now();
        store
            .activate(&[activation_at(i, Utc::now(), 600)], Utc::now())
            .await
            .unwrap();
        waits.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    waits
}

impl Bench {
    /// The retention sweep on `backend` with `rows` expired rows: the purge's rate, and how long a
    /// write made every 5 ms waits meanwhile (p99 and the longest, in the p50 column), against the same
    /// writes with no purge running.
    async fn retention(&mut self, backend: &str, rows: usize) {
        let before = self.purge_with_writes(backend, rows, false).await;
        let store_purge = self.purge_with_writes(backend, rows, true).await;
        self.push(before.0.clone());
        self.push(store_purge.0.against(&before.0));
        self.push(before.1.clone());
        self.push(store_purge.1.against(&before.1));
    }

    /// Purges `rows` expired rows on `backend` while a write is made every 5 ms: the purge's row
    /// (rate) and the writes' row (p99, and the longest in the p50 column). `store_purge`: the store's
    /// purge; else one DELETE statement, as codewatch purged before (on every database).
    async fn purge_with_writes(
        &mut self,
        backend: &str,
        rows: usize,
        store_purge: bool,
    ) -> (Row, Row) {
        let (_url, _counter, db) = self.database(backend, "retention").await;
        let store = db.database.store();
        preload_codes(&store, rows, Utc::now() - chrono::Duration::hours(3), 600).await;
        let probe = |store: codewatch::store::SharedStore| {
            let stop = tokio_util::sync::CancellationToken::new();
            (tokio::spawn(probe_writes(store, stop.clone())), stop)
        };
        let (busy, stop) = probe(store.clone());
        // Let the writes settle first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cutoff = Utc::now() - chrono::Duration::hours(1);
        let started = Instant::now();
        let purged = if store_purge {
            store.purge(cutoff).await.unwrap()
        } else {
            let one = "DELETE FROM valid_codes WHERE expires_at <= ";
            match &db.database {
                codewatch::backends::Database::Sqlite(pools) => {
                    sqlx::query(sqlx::AssertSqlSafe(format!("{one}?")))
                        .bind(codewatch::timestamp::format(cutoff))
                        .execute(&pools.write)
                        .await
                        .map(|done| done.rows_affected())
                }
                codewatch::backends::Database::Postgres(pool) => {
                    sqlx::query(sqlx::AssertSqlSafe(format!("{one}$1")))
                        .bind(cutoff)
                        .execute(pool)
                        .await
                        .map(|done| done.rows_affected())
                }
            }
            .unwrap()
        };
        let elapsed = started.elapsed();
        stop.cancel();
        let busy = busy.await.unwrap();
        assert_eq!(purged as usize, rows, "the purge deleted every expired row");
        let how = if !store_purge {
            "one DELETE, as before".to_owned()
        } else if backend == "SQLite" {
            format!(
                "the store's, in batches of {}",
                codewatch::store::PURGE_BATCH
            )
        } else {
            "the store's, one DELETE per table".to_owned()
        };
        let purge = Row {
            part: "retention",
            case: format!("{backend}: purge of {rows} expired rows, {how}"),
            unit: "row",
            rate: rows as f64 / elapsed.as_secs_f64(),
            ..Row::default()
        };
        let writes = Row {
            part: "retention",
            case: format!("{backend}: a write every 5 ms meanwhile, {how} (longest in p50)"),
            unit: "write",
            rate: busy.len() as f64 / busy.iter().map(|w| w.as_secs_f64() + 0.005).sum::<f64>(),
            p50_ms: busy.iter().max().map(|m| m.as_secs_f64() * 1e3),
            p99_ms: Some(percentile_ms(&busy, 99.0)),
            ..Row::default()
        };
        (purge, writes)
    }
}

/// Counts rows in `valid_codes`.
struct Counter(codewatch::backends::Database);

/// The valid codes that [`activation_body`]'s messages made (`Ben-<i>-Chx`), found through the code
/// index however many other rows the table holds.
const SENT_CODES: &str = " WHERE code >= 'Ben-' AND code < 'Ben.' AND code LIKE '%-Chx'";

impl Counter {
    async fn count(&self, filter: &str) -> usize {
        let sql = format!("SELECT count(*) FROM valid_codes{filter}");
        let n: i64 = match &self.0 {
            codewatch::backends::Database::Sqlite(p) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&p.read)
                    .await
                    .unwrap()
            }
            codewatch::backends::Database::Postgres(p) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(p)
                    .await
                    .unwrap()
            }
        };
        n as usize
    }

    /// Waits until the table holds `n` rows.
    async fn wait_for(&self, n: usize, limit: Duration) {
        self.wait_for_rows("", n, limit).await
    }

    /// Waits until the table holds `n` of the codes [`activation_body`]'s messages make.
    async fn wait_for_sent(&self, n: usize, limit: Duration) {
        self.wait_for_rows(SENT_CODES, n, limit).await
    }

    async fn wait_for_rows(&self, filter: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let count = self.count(filter).await;
            if count >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {count} of {n} rows after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A floor server (the benchmark's binary in `role`, with `env`), and its base URL.
fn spawn_floor(role: &str, env: &[(&str, String)]) -> (Proc, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(minimal::ROLE, role)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port = lines
        .find_map(|l| l.ok()?.strip_prefix("listening on ").map(str::to_owned))
        .expect("the minimal server's port");
    (Proc(child), format!("http://127.0.0.1:{port}"))
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cores} cores, {model}")
}

fn print_table(rows: &[Row]) {
    let opt = |v: Option<f64>, width: usize, digits: usize| match v {
        Some(v) => format!("{v:>width$.digits$}"),
        None => format!("{:>width$}", "–"),
    };
    println!(
        "\n| part | case | rate /s | p50 ms | p99 ms | CPU µs/unit | RSS MiB | × baseline rate | × baseline CPU |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            r.part,
            r.case,
            r.rate,
            opt(r.p50_ms, 1, 2),
            opt(r.p99_ms, 1, 2),
            opt(r.cpu_us, 1, 0),
            opt(r.rss_mib, 1, 1),
            opt(r.rate_ratio, 1, 2),
            opt(r.cpu_ratio, 1, 2),
        );
    }
}

#[tokio::main]
async fn main() {
    match std::env::var(minimal::ROLE).as_deref() {
        Ok(minimal::ROLE_VALUE) => return minimal::serve().await,
        Ok(minimal_getcode::ROLE_VALUE) => return minimal_getcode::serve().await,
        Ok(other) => panic!("no benchmark role {other:?}"),
        Err(_) => {}
    }
    let scale = Scale::from_env();
    let begun = Instant::now();
    eprintln!(
        "codewatch benchmark: N = {}, {} s per load, {} and {} verification rows",
        scale.n,
        scale.seconds.as_secs_f64(),
        scale.rows,
        scale.rows * 100
    );
    let dir = tempfile::tempdir().unwrap();
    let number_api = {
        let proc = Proc(
            codewatch_cmd(
                dir.path(),
                &["number-api", "--listen", "127.0.0.1:0"],
                &[("NUMBER_API_KEY", NUMBER_KEY.into())],
                "number-api.log",
            )
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        );
        let port = bound_port(&dir.path().join("number-api.log"), "addr");
        (proc, format!("http://127.0.0.1:{port}"))
    };
    let mut bench = Bench {
        azurite: common::start_azurite(),
        postgres: common::PrivatePostgres::start(),
        number_api,
        dir,
        rows: Vec::new(),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(128)
            .build()
            .unwrap(),
        scale,
    };

    // BENCH_ONLY=embedded,growth runs some parts only (the Put and insert ceilings run with the
    // producer, which is measured against them; the worker part measures its own).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    if run("producer") || run("ceiling") {
        bench.ceilings().await;
    }
    if run("producer") {
        bench.producer().await;
    }
    if run("worker") {
        bench.workers().await;
    }
    if run("embedded") {
        bench.embedded().await;
    }
    if run("verification") {
        let rows = bench.scale.rows;
        for backend in ["SQLite", "PostgreSQL"] {
            for n in [rows, rows * 100] {
                bench.verification(backend, n).await;
            }
        }
    }
    let n = bench.scale.n;
    let sizes = bench.scale.table_rows.clone();
    if run("table") {
        bench.table_growth(&sizes, false).await;
        bench.table_growth(&sizes, true).await;
    }
    if run("growth") {
        bench.growth(&sizes).await;
    }
    if run("retention") {
        let rows = bench.scale.purge_rows;
        for backend in ["SQLite", "PostgreSQL"] {
            bench.retention(backend, rows).await;
        }
    }

    print_table(&bench.rows);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let result = serde_json::json!({
        "date": Utc::now().to_rfc3339(),
        "machine": machine(),
        "n": n,
        "seconds_per_load": bench.scale.seconds.as_secs_f64(),
        "rows": bench.rows,
    });
    std::fs::write(
        out.join("codewatch.json"),
        serde_json::to_string_pretty(&result).unwrap(),
    )
    .unwrap();
    let title = format!("{} · {}", Utc::now().format("%Y-%m-%d"), machine());
    std::fs::write(out.join("codewatch.svg"), chart::svg(&bench.rows, &title)).unwrap();
    if let Some(growth) = chart::growth_svg(&bench.rows, &title) {
        std::fs::write(out.join("growth.svg"), growth).unwrap();
    }
    println!(
        "\n{} · {} · wrote {}/codewatch.json, codewatch.svg and growth.svg in {:.0} s",
        Utc::now().format("%Y-%m-%d"),
        machine(),
        out.display(),
        begun.elapsed().as_secs_f64()
    );
}
