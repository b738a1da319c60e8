//! The real binary: `codewatch up` on embedded defaults, and `number-api`, `serve` and `worker` as
//! separate processes sharing one Azurite queue and one database.

mod common;

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
    let (api_port, serve_port) = (common::free_port(), common::free_port());
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
                ("NUMBER_API_LISTEN", format!("127.0.0.1:{api_port}")),
            ],
            "api.log",
        )
        .spawn()
        .unwrap(),
    );
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
                ("LISTEN_ADDR", format!("127.0.0.1:{serve_port}")),
            ]),
            "serve.log",
        )
        .spawn()
        .unwrap(),
    );
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
