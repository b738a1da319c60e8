//! The real binary: `codewatch up` on embedded defaults, and `number-api`, `serve` and `worker` as
//! separate processes sharing one Azurite queue and one database.

use crate::common;

use codewatch::queue::connection_string::DEV_ACCOUNT_KEY;
use common::eventually;
use common::process::{Proc, codewatch, spawn_up};
use std::path::Path;
use std::time::Duration;

async fn active_codes(db: &Path) -> Vec<String> {
    let url = format!("sqlite:{}", db.display());
    let Ok(pool) = sqlx::SqlitePool::connect(&url).await else {
        return vec![];
    };
    let codes = sqlx::query_scalar("SELECT code FROM active_codes")
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
    pool.close().await;
    codes
}

async fn row_count(db: &Path) -> i64 {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let n = sqlx::query_scalar("SELECT count(*) FROM valid_codes WHERE expired_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

#[tokio::test]
async fn up_runs_everything_in_one_process_on_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, producer) = spawn_up(dir.path(), &[("CODE_TTL_SECONDS", "2".to_owned())]);

    let body: serde_json::Value = reqwest::get(format!("{producer}/api/v1/getcode"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let code = body["code"].as_str().unwrap().to_owned();
    let db = dir.path().join("codewatch.db");
    eventually(
        "the code in active_codes",
        Duration::from_secs(5),
        || async { active_codes(&db).await.contains(&code).then_some(()) },
    )
    .await;
    eventually("the code to expire", Duration::from_secs(10), || async {
        (row_count(&db).await == 0).then_some(())
    })
    .await;
    assert!(proc.terminate().success());
}

#[tokio::test]
async fn number_api_serve_and_worker_run_as_separate_processes_and_never_log_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let key = "function-key-that-must-not-leak".to_owned();
    let db = dir.path().join("shared.db");
    let shared = [
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            common::connection_string(),
        ),
        ("STORAGE_QUEUE_NAME", common::queue_name()),
        ("DATABASE_URL", format!("sqlite:{}", db.display())),
        ("RUST_LOG", "debug".to_owned()),
    ];
    let with = |extra: Vec<(&'static str, String)>| {
        shared.iter().cloned().chain(extra).collect::<Vec<_>>()
    };
    let mut api = Proc(
        codewatch(
            dir.path(),
            &["number-api"],
            &[
                ("NUMBER_API_KEY", key.clone()),
                ("NUMBER_API_LISTEN", "127.0.0.1:0".to_owned()),
            ],
            "api.log",
        )
        .spawn()
        .unwrap(),
    );
    let api_port = common::process::bound_port(&dir.path().join("api.log"), "addr");
    let mut serve = Proc(
        codewatch(
            dir.path(),
            &["serve"],
            &with(vec![
                (
                    "THIRD_PARTY_API_ENDPOINT",
                    format!("http://127.0.0.1:{api_port}/api/RandomNumber"),
                ),
                ("THIRD_PARTY_API_KEY", key.clone()),
                ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
                ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ]),
            "serve.log",
        )
        .spawn()
        .unwrap(),
    );
    let serve_port = common::process::bound_port(&dir.path().join("serve.log"), "addr");
    let mut worker = Proc(
        codewatch(
            dir.path(),
            &["worker"],
            &with(vec![
                ("CODE_TTL_SECONDS", "2".to_owned()),
                ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
                ("LOG_FORMAT", "json".to_owned()),
            ]),
            "worker.log",
        )
        .spawn()
        .unwrap(),
    );

    // Codes issued before the worker polls could pass their 2 s TTL unseen (right, but not this test).
    eventually("the worker to start", Duration::from_secs(30), || async {
        std::fs::read_to_string(dir.path().join("worker.log"))
            .ok()
            .filter(|log| log.contains("worker started"))
            .map(|_| ())
    })
    .await;
    let url = format!("http://127.0.0.1:{serve_port}/api/v1/getcode");
    let mut codes = Vec::new();
    for _ in 0..3 {
        let body: serde_json::Value =
            eventually("serve to answer", Duration::from_secs(15), || async {
                reqwest::get(&url).await.ok()?.json().await.ok()
            })
            .await;
        codes.push(body["code"].as_str().unwrap().to_owned());
    }
    if let Some(status) = worker.0.try_wait().unwrap() {
        let log = std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default();
        panic!("the worker exited ({status}):\n{log}");
    }
    eventually("all codes active", Duration::from_secs(10), || async {
        let active = active_codes(&db).await;
        codes.iter().all(|c| active.contains(c)).then_some(())
    })
    .await;
    eventually("all codes expired", Duration::from_secs(15), || async {
        (row_count(&db).await == 0).then_some(())
    })
    .await;

    for p in [&mut worker, &mut serve, &mut api] {
        assert!(p.terminate().success());
    }
    let mut logs = String::new();
    for name in ["api.log", "serve.log", "worker.log"] {
        logs += &std::fs::read_to_string(dir.path().join(name)).unwrap();
    }
    assert!(logs.contains("batch done"), "the worker logged its batches");
    for line in std::fs::read_to_string(dir.path().join("worker.log"))
        .unwrap()
        .lines()
    {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("LOG_FORMAT=json line is not JSON ({e}): {line}"));
    }
    for secret in [key.as_str(), DEV_ACCOUNT_KEY, &DEV_ACCOUNT_KEY[..20]] {
        assert!(!logs.contains(secret), "a secret appeared in the logs");
    }
    for (i, _) in logs.match_indices("sig=") {
        assert!(
            logs[i..].starts_with("sig=REDACTED"),
            "a SAS signature appeared in the logs: {}",
            &logs[i..i + 30]
        );
    }
}

/// The peak resident memory of process `pid`, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn host_port(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn a_client_that_sends_its_headers_slowly_is_cut_off_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, base) = spawn_up(
        dir.path(),
        &[("HTTP_HEADER_READ_TIMEOUT_SECONDS", "1".to_owned())],
    );
    let mut slow = tokio::net::TcpStream::connect(host_port(&base))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let request = b"GET /api/v1/getcode HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut closed = false;
    for byte in request.iter().chain(std::iter::repeat(&b'a')).take(200) {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await
        {
            // The server answered (408) or closed the connection.
            assert!(
                read.map(|n| n == 0 || buf.starts_with(b"HTTP/1.1 408"))
                    .unwrap_or(true)
            );
            closed = true;
            break;
        }
    }
    assert!(closed, "a one-byte-at-a-time client was held for 40 s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off after {:?}",
        started.elapsed()
    );
    assert!(proc.terminate().success());
}

#[tokio::test]
async fn idle_connections_do_not_starve_a_real_client_under_a_low_descriptor_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, base) = common::process::spawn_up_with_fd_limit(
        dir.path(),
        &[("HTTP_HEADER_READ_TIMEOUT_SECONDS", "1".to_owned())],
        64,
    );
    // More never-speaking connections than the process has descriptors.
    let mut idle = Vec::new();
    for _ in 0..120 {
        idle.push(
            tokio::net::TcpStream::connect(host_port(&base))
                .await
                .unwrap(),
        );
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let answer = client
        .get(format!("{base}/api/v1/getcode"))
        .send()
        .await
        .expect("a real client is served while idle connections are cut off");
    assert_eq!(answer.status(), 200);
    drop(idle);
    assert!(proc.terminate().success());
    let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap();
    let failures = log.matches("accepting connections failed").count();
    assert!(
        (1..=5).contains(&failures),
        "the accept loop logs once per outage, not per attempt: {failures} lines"
    );
}

#[tokio::test]
async fn eight_huge_number_api_answers_leave_serves_memory_bounded() {
    let huge = common::huge_number_api().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, base) = spawn_up(
        dir.path(),
        &[
            ("THIRD_PARTY_API_ENDPOINT", huge.url("/api/RandomNumber")),
            ("THIRD_PARTY_API_KEY", "k".to_owned()),
        ],
    );
    let calls = (0..8).map(|_| {
        let url = format!("{base}/api/v1/getcode");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    });
    let statuses = futures::future::join_all(calls).await;
    assert_eq!(statuses, [502; 8]);
    let peak_mib = peak_rss_kib(proc.0.id()) / 1024;
    assert!(
        peak_mib < 100,
        "peak RSS {peak_mib} MiB after 8 × 100 MB answers"
    );
    assert!(proc.terminate().success());
}

#[tokio::test]
async fn a_forged_line_inside_a_message_stays_inside_its_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, _base) = spawn_up(dir.path(), &[]);
    let db = dir.path().join("codewatch.db");
    let database = codewatch::backends::Database::open(&codewatch::config::DatabaseArgs::at(
        format!("sqlite:{}", db.display()),
    ))
    .await
    .unwrap();
    let queue = database.embedded_queue("code-requests").unwrap();
    let forged = format!(
        r#"{{"code": "abc-1-def\n2026-01-01T00:00:00Z  INFO codewatch: FORGED {}"}}"#,
        "x".repeat(60_000)
    );
    queue.send(&forged, Duration::ZERO).await.unwrap();
    let poison = database.embedded_queue("code-requests-poison").unwrap();
    eventually(
        "the message to be poisoned",
        Duration::from_secs(10),
        || async { (poison.approximate_len().await.unwrap() == 1).then_some(()) },
    )
    .await;
    assert!(proc.terminate().success());
    let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap();
    assert!(log.contains("message set aside"), "{log}");
    for line in log.lines() {
        assert!(
            !line.contains("  INFO codewatch: FORGED") || line.contains("WARN"),
            "{line}"
        );
        assert!(
            !line.trim_start().starts_with("2026-01-01T00:00:00Z"),
            "a forged line: {line}"
        );
        assert!(line.len() < 2_000, "a {}-byte log line", line.len());
    }
}

#[tokio::test]
async fn each_surface_has_its_own_listener_and_the_public_one_serves_only_getcode() {
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, public, admin, verify) = common::process::spawn_up_with_verify(
        dir.path(),
        &[
            ("VERIFY_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("VERIFY_API_KEY", "surface-key".to_owned()),
        ],
    );
    let status = |url: String| async move { reqwest::get(url).await.unwrap().status().as_u16() };
    assert_eq!(status(format!("{public}/api/v1/getcode")).await, 200);
    let post = |url: String| async move {
        reqwest::Client::new()
            .post(url)
            .json(&serde_json::json!({ "code": "abc-1-def", "subject": "a" }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    for path in ["/metrics", "/readyz", "/healthz"] {
        assert_eq!(
            status(format!("{public}{path}")).await,
            404,
            "public {path}"
        );
    }
    for path in [
        "/api/v1/codes",
        "/api/v1/codes/check",
        "/api/v1/codes/redeem",
    ] {
        assert_eq!(post(format!("{public}{path}")).await, 404, "public {path}");
        assert_eq!(
            post(format!("{verify}{path}")).await,
            401,
            "the sign-in API is on its own listener: {path}"
        );
    }
    assert_ne!(verify, public, "the sign-in API is on its own listener");
    assert_eq!(status(format!("{verify}/api/v1/getcode")).await, 404);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(status(format!("{admin}{path}")).await, 200, "admin {path}");
    }
    assert_eq!(status(format!("{admin}/api/v1/getcode")).await, 404);
    assert!(proc.terminate().success());
}

#[tokio::test]
async fn up_with_a_signing_key_file_signs_its_codes_and_poisons_a_forged_activation() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("signing-keys");
    std::fs::write(
        &keys,
        "current-signing-key-0123456789abcdefghij\nprevious-signing-key-0123456789abcdefghij\n",
    )
    .unwrap();
    let (mut proc, base) = spawn_up(
        dir.path(),
        &[("MESSAGE_SIGNING_KEY_FILE", keys.display().to_string())],
    );
    let body: serde_json::Value = reqwest::get(format!("{base}/api/v1/getcode"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let code = body["code"].as_str().unwrap().to_owned();
    let db = dir.path().join("codewatch.db");
    eventually(
        "the signed code to become valid",
        Duration::from_secs(10),
        || async { active_codes(&db).await.contains(&code).then_some(()) },
    )
    .await;
    let database = codewatch::backends::Database::open(&codewatch::config::DatabaseArgs::at(
        format!("sqlite:{}", db.display()),
    ))
    .await
    .unwrap();
    let queue = database.embedded_queue("code-requests").unwrap();
    let now = codewatch::timestamp::format(chrono::Utc::now());
    queue
        .send(
            &format!(r#"{{"code": "for-1-Ged", "timestamp": "{now}"}}"#),
            Duration::ZERO,
        )
        .await
        .unwrap();
    let poison = database.embedded_queue("code-requests-poison").unwrap();
    eventually(
        "the unsigned activation to be poisoned",
        Duration::from_secs(10),
        || async { (poison.approximate_len().await.unwrap() == 1).then_some(()) },
    )
    .await;
    assert!(!active_codes(&db).await.contains(&"for-1-Ged".to_owned()));
    assert!(proc.terminate().success());
    let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap();
    assert!(log.contains("activation is not signed"), "{log}");
    assert!(
        !log.contains("current-signing-key"),
        "a key reached the log"
    );
}

/// The fenced `sh` block of README.md that follows the line containing `after`.
fn readme_snippet(after: &str) -> String {
    common::readme_block(after, "sh")
}

/// Runs a README snippet with bash in a new folder, `codewatch` (the test build) on PATH, within 90 s.
async fn run_snippet(snippet: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    run_snippet_in(snippet, dir.path(), &[], &[], Duration::from_secs(90)).await
}

/// Runs a README snippet with bash in `dir`, with `path_first` and then `codewatch` (the test build)
/// first on PATH and `env` set, within `limit`; it must exit 0 and print no panic.
async fn run_snippet_in(
    snippet: &str,
    dir: &Path,
    path_first: &[&Path],
    env: &[(&str, String)],
    limit: Duration,
) -> (String, String) {
    let bin_dir = Path::new(common::process::BIN).parent().unwrap().to_owned();
    let mut path: Vec<String> = path_first.iter().map(|p| p.display().to_string()).collect();
    path.push(bin_dir.display().to_string());
    path.push(std::env::var("PATH").unwrap_or_default());
    let out = tokio::time::timeout(
        limit,
        tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!("set -e\n{snippet}\nwait"))
            .current_dir(dir)
            .env("PATH", path.join(":"))
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the snippet finishes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !stderr.contains("Address already in use"),
        "every process has its own port:\n{stderr}"
    );
    assert!(
        out.status.success(),
        "the snippet failed ({}):\n{snippet}\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// The README's shell snippets, one after the other (they use the same fixed ports), as pasted but for
/// the build commands: `cargo run --release --` is the test build, and `cargo install` is left out.
#[tokio::test]
async fn the_readmes_snippets_run_as_pasted() {
    let quick_start = readme_snippet("Run everything in one process")
        .replace("cargo run --release --", "codewatch");
    let (stdout, stderr) = run_snippet(&quick_start).await;
    let code = stdout
        .split('"')
        .skip_while(|s| *s != "code")
        .nth(2)
        .unwrap_or_else(|| panic!("getcode answered:\n{stdout}\n{stderr}"))
        .to_owned();
    assert!(
        stdout.lines().any(|l| l.contains(&code) && l.contains('|')),
        "sqlite3 shows {code} in active_codes:\n{stdout}\n{stderr}"
    );

    // The separate processes expect Azurite on its default port.
    if std::net::TcpStream::connect("127.0.0.1:10001").is_err() {
        common::start_azurite_at(10001, "");
    }
    let snippet = readme_snippet("as separate processes")
        .lines()
        .filter(|l| !l.starts_with("cargo install"))
        .collect::<Vec<_>>()
        .join("\n");
    let _ = std::fs::remove_file("/tmp/codewatch.db");
    let (stdout, stderr) = run_snippet(&snippet).await;
    assert!(
        stdout.contains("valid    after"),
        "smoke saw the code become valid:\n{stdout}\n{stderr}"
    );
}

/// The README's PostgreSQL set-up, as pasted, against the test server. The test server trusts loopback,
/// so a `sudo` on PATH that runs the command as `PGUSER=<user>` stands in for becoming the `postgres`
/// OS user; `PGHOST`/`PGPORT` (read by psql, createdb and codewatch alike) point at the test server.
#[tokio::test]
async fn the_readmes_postgresql_setup_runs_as_pasted() {
    let admin_url = std::env::var("CODEWATCH_TEST_POSTGRES_URL")
        .expect("CODEWATCH_TEST_POSTGRES_URL is not set: run the tests through scripts/test.sh");
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    // Rerunnable on one server: forget what an earlier run made.
    for statement in [
        "DROP DATABASE IF EXISTS codewatch WITH (FORCE)",
        "DROP ROLE IF EXISTS codewatch",
    ] {
        sqlx::query(statement).execute(&admin).await.unwrap();
    }
    let shims = tempfile::tempdir().unwrap();
    let sudo = shims.path().join("sudo");
    std::fs::write(
        &sudo,
        "#!/bin/sh\n[ \"$1\" = -u ] || exit 2\nuser=$2; shift 2\nPGUSER=$user exec \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&sudo, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let server = url::Url::parse(&admin_url).unwrap();
    let snippet = readme_snippet("PostgreSQL in three commands");
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("PGHOST", server.host_str().unwrap().to_owned()),
        ("PGPORT", server.port().unwrap_or(5432).to_string()),
    ];
    run_snippet_in(
        &snippet,
        dir.path(),
        &[shims.path()],
        &env,
        Duration::from_secs(60),
    )
    .await;

    // `codewatch migrate` ran as the new role: the schema is there, and it is that role's.
    let mut as_codewatch = server.clone();
    as_codewatch.set_username("codewatch").unwrap();
    as_codewatch.set_password(Some("change-me")).unwrap();
    as_codewatch.set_path("codewatch");
    let pool = sqlx::PgPool::connect(as_codewatch.as_str()).await.unwrap();
    let owner: String = sqlx::query_scalar(
        "SELECT tableowner::text FROM pg_tables WHERE tablename = 'valid_codes'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(owner, "codewatch");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM active_codes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    pool.close().await;
    sqlx::query("DROP DATABASE codewatch WITH (FORCE)")
        .execute(&admin)
        .await
        .unwrap();
}

/// The benchmark command of docs/performance.md, as pasted but in the test build's profile (the release build would
/// take minutes) and at a small scale: every part prints its rows, and the JSON and the chart are written.
#[tokio::test]
#[ignore = "runs cargo: `scripts/test.sh slow` runs it"]
async fn the_readmes_benchmark_runs_as_pasted() {
    let snippet = readme_snippet("Benchmark (not part of the tests");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (stdout, stderr) = run_snippet_in(
        &snippet,
        root,
        &[],
        &[
            ("BENCH_PROFILE", "dev".to_owned()),
            ("BENCH_N", "40".to_owned()),
            ("BENCH_GROWTH_N", "40".to_owned()),
            ("BENCH_SECONDS", "0.3".to_owned()),
            ("BENCH_ROWS", "20".to_owned()),
            ("BENCH_PURGE_ROWS", "1500".to_owned()),
            ("BENCH_TABLE_ROWS", "100,2000".to_owned()),
        ],
        Duration::from_secs(300),
    )
    .await;
    for part in [
        "ceiling",
        "producer",
        "worker",
        "embedded",
        "verification",
        "growth",
        "table",
        "retention",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("| {part} |"))),
            "the benchmark printed a row for {part}:\n{stdout}\n{stderr}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("target/bench/codewatch.json")).unwrap(),
    )
    .unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert!(
        rows.iter().any(|r| r["rate_ratio"].is_number()),
        "rows compared with their baselines: {json}"
    );
    let svg = std::fs::read_to_string(root.join("target/bench/codewatch.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("verification"),
        "{svg}"
    );
}

#[tokio::test]
async fn every_counter_an_alert_watches_exists_at_zero_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, _, admin) = common::process::spawn_up_with_admin(dir.path(), &[]);
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(up.terminate().success());
    for series in [
        r#"codewatch_messages_total{outcome="poisoned"} 0"#,
        r#"codewatch_messages_total{outcome="activated"} 0"#,
        r#"codewatch_worker_loop_restarts_total{loop="poll"} 0"#,
        r#"codewatch_worker_loop_restarts_total{loop="sweep"} 0"#,
        r#"codewatch_number_api_errors_total{kind="status"} 0"#,
        r#"codewatch_number_api_errors_total{kind="unreachable"} 0"#,
        "codewatch_unpolled_shard_messages 0",
        r#"codewatch_deliveries_total{outcome="failed"} 0"#,
        "codewatch_ready 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "{series} missing:\n{metrics}"
        );
    }
    for name in ["codewatch_polls_total", "codewatch_messages_received_total"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} missing:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn behind_a_port_appending_gateway_a_client_cannot_mint_rate_limit_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, base) = spawn_up(
        dir.path(),
        &[
            ("TRUSTED_PROXIES", "127.0.0.0/8".to_owned()),
            ("GETCODE_RATE_LIMIT_PER_SECOND", "0.001".to_owned()),
            ("GETCODE_RATE_LIMIT_BURST", "2".to_owned()),
        ],
    );
    let http = reqwest::Client::new();
    let allowed = |forwarded: Vec<String>| {
        let (http, url) = (http.clone(), format!("{base}/api/v1/getcode"));
        async move {
            let mut n = 0;
            for header in forwarded {
                let response = http
                    .get(&url)
                    .header("x-forwarded-for", header)
                    .send()
                    .await
                    .unwrap();
                n += usize::from(response.status() == 200);
            }
            n
        }
    };
    // Application Gateway appends the client as ip:port; the attacker writes whatever it likes to the left.
    let v4 = (0..60)
        .map(|i| format!("198.51.100.{i}, 203.0.113.9:{}", 40_000 + i))
        .collect();
    assert_eq!(allowed(v4).await, 2, "one client, one burst");
    // One IPv6 host owns a whole /64: 60 of its addresses are one client.
    let v6 = (0..60)
        .map(|i| format!("[2001:db8:1:2::{i:x}]:{}", 40_000 + i))
        .collect();
    assert_eq!(allowed(v6).await, 2, "one /64, one burst");
    // Garbage to the right of a forged entry ends the walk at the gateway: those requests share its bucket.
    let garbage = (0..10)
        .map(|i| format!("198.51.100.{i}, not-an-address"))
        .collect();
    assert_eq!(allowed(garbage).await, 2, "the gateway's own bucket");
    assert!(up.terminate().success());
}

/// A producer with more shards than its worker: the worker sees codes waiting on a shard it does not
/// poll and says it is not ready (with a metric), instead of answering ready while codes are lost.
#[tokio::test]
async fn a_worker_with_fewer_shards_than_the_producer_is_not_ready_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let api = common::number_api("k").await;
    let shared = |shards: &str, extra: Vec<(&'static str, String)>| {
        let mut env = vec![
            ("DATABASE_URL", format!("sqlite:{}", db.display())),
            ("STORAGE_QUEUE_SHARDS", shards.to_owned()),
            ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ];
        env.extend(extra);
        env
    };
    let mut serve = Proc(
        codewatch(
            dir.path(),
            &["serve"],
            &shared(
                "3",
                vec![
                    ("THIRD_PARTY_API_ENDPOINT", api.url("/api/RandomNumber")),
                    ("THIRD_PARTY_API_KEY", "k".to_owned()),
                    ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
                    ("GETCODE_RATE_LIMIT_PER_SECOND", "0".to_owned()),
                ],
            ),
            "serve.log",
        )
        .spawn()
        .unwrap(),
    );
    let serve_port = common::process::bound_port(&dir.path().join("serve.log"), "addr");
    for _ in 0..30 {
        let issued = reqwest::get(format!("http://127.0.0.1:{serve_port}/api/v1/getcode"))
            .await
            .unwrap();
        assert_eq!(issued.status(), 200);
    }
    let start_worker = |shards: &str, log: &str| {
        Proc(
            codewatch(dir.path(), &["worker"], &shared(shards, vec![]), log)
                .spawn()
                .unwrap(),
        )
    };
    let mut one = start_worker("1", "worker-1.log");
    let admin = common::process::bound_port(&dir.path().join("worker-1.log"), "admin");
    // A scrape alone, with nothing probing /readyz, shows it: the alerts read these two series.
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let waiting = metrics
        .lines()
        .find_map(|l| l.strip_prefix("codewatch_unpolled_shard_messages "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_default();
    assert!(waiting > 0.0, "{metrics}");
    assert!(
        metrics.lines().any(|l| l == "codewatch_ready 0"),
        "{metrics}"
    );
    let ready = reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    let reason = body["failing"]["shards"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("code-requests-1") && reason.contains("STORAGE_QUEUE_SHARDS"),
        "{body}"
    );
    assert!(one.terminate().success());

    // With the producer's count, every shard is polled and the worker is ready.
    let mut three = start_worker("3", "worker-3.log");
    let admin = common::process::bound_port(&dir.path().join("worker-3.log"), "admin");
    let ready = reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    assert!(three.terminate().success());
    assert!(serve.terminate().success());
}

/// `up`'s resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The embedded queue's writer stalled (another process holds SQLite's write lock) under a flood of
/// getcodes whose clients give up: `up`'s memory stays bounded, and none of those codes is written
/// once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_while_the_embedded_writer_stalls_keeps_memory_bounded_and_leaves_no_code() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let (mut up, base) = spawn_up(
        dir.path(),
        &[
            ("GETCODE_RATE_LIMIT_PER_SECOND", "0".to_owned()),
            ("HTTP_REQUEST_TIMEOUT_SECONDS", "1".to_owned()),
        ],
    );
    let pid = up.0.id();
    let url = format!("sqlite:{}", dir.path().join("codewatch.db").display());
    let mut holder = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let before = rss_kib(pid);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(6);
    let clients = (0..32).map(|_| {
        let (http, url) = (http.clone(), format!("{base}/api/v1/getcode"));
        tokio::spawn(async move {
            let (mut sent, mut ok) = (0u64, 0u64);
            while std::time::Instant::now() < until {
                sent += 1;
                if let Ok(r) = http.get(&url).send().await {
                    ok += u64::from(r.status() == 200);
                }
            }
            (sent, ok)
        })
    });
    let results = futures::future::join_all(clients).await;
    let (sent, ok) = results
        .into_iter()
        .map(Result::unwrap)
        .fold((0, 0), |(s, o), (a, b)| (s + a, o + b));
    let grown = rss_kib(pid).saturating_sub(before);
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let written: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM queue_messages) + (SELECT count(*) FROM valid_codes)",
    )
    .fetch_one(&mut holder)
    .await
    .unwrap();
    assert!(up.terminate().success());
    assert!(sent > 100, "the flood sent {sent} requests");
    assert_eq!(ok, 0, "no getcode could succeed while the writer stalled");
    assert_eq!(
        written, 0,
        "{written} of {sent} abandoned getcodes were written later"
    );
    assert!(grown < 64 * 1024, "up grew by {grown} KiB during the flood");
}
