//! Several workers (replicas) on one queue and one PostgreSQL database: three `codewatch worker`
//! processes, a few hundred codes (thousands in the soak), a short TTL. Every code must become valid and then expire, none may
//! be invalidated before its time, and no worker may fail. Runs on an Azurite of its own, so the load
//! does not slow the other tests.

use crate::common;

use codewatch::message::MessageEncoding;
use codewatch::queue::SharedQueue;
use codewatch::queue::azure::AzureQueueFactory;
use codewatch::queue::connection_string::ConnectionString;
use common::process::{Proc, codewatch};
use futures::StreamExt;
use sqlx::Row;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Codes per run: 300 in the gate, `CODEWATCH_REPLICAS_CODES` (3,000 in `scripts/test.sh chaos`) for
/// the soak.
fn codes() -> usize {
    std::env::var("CODEWATCH_REPLICAS_CODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}
const WORKERS: usize = 3;
const TTL_SECS: i64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_share_one_queue_and_one_postgres_database_without_losing_a_code() {
    let endpoint = common::start_azurite();
    let connection_string = common::connection_string_at(&endpoint);
    let db = common::postgres().await;
    let name = common::queue_name();
    let factory = AzureQueueFactory::from_connection_string(
        &ConnectionString::parse(&connection_string).unwrap(),
    )
    .unwrap();
    let queue: SharedQueue = Arc::new(factory.queue(&name).unwrap());
    let poison: SharedQueue = Arc::new(
        factory
            .queue(&codewatch::queue::poison_name(&name))
            .unwrap(),
    );
    queue.ensure_exists().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("AZURE_STORAGE_CONNECTION_STRING", connection_string.clone()),
        ("STORAGE_QUEUE_NAME", name.clone()),
        ("DATABASE_URL", db.url.clone()),
        ("CODE_TTL_SECONDS", TTL_SECS.to_string()),
        ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
    ];
    let mut workers: Vec<Proc> = (0..WORKERS)
        .map(|i| {
            Proc(
                codewatch(dir.path(), &["worker"], &env, &format!("worker-{i}.log"))
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();

    let api = common::number_api("k").await;
    let app = common::producer(
        &api.url("/api/RandomNumber"),
        "k",
        queue.clone(),
        MessageEncoding::Text,
    )
    .await;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let issued: Vec<String> = futures::stream::iter(0..codes())
        .map(|_| {
            let (http, url) = (http.clone(), app.url("/api/v1/getcode"));
            async move {
                let body: serde_json::Value =
                    http.get(url).send().await.unwrap().json().await.unwrap();
                body["code"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let issue_time = started.elapsed();

    let codewatch::backends::Database::Postgres(pool) = &db.database else {
        unreachable!()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM valid_codes WHERE expired_at IS NOT NULL")
                .fetch_one(pool)
                .await
                .unwrap();
        if done as usize == codes() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {} codes expired in time",
            codes()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let total_time = started.elapsed();

    let rows = sqlx::query(
        "SELECT code, issued_at, activated_at, expires_at, expired_at FROM valid_codes",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut stored: Vec<String> = rows.iter().map(|r| r.get::<String, _>("code")).collect();
    let mut expected = issued.clone();
    stored.sort();
    expected.sort();
    assert_eq!(
        stored, expected,
        "every issued code, and only those, was recorded once"
    );
    let mut max_lag = chrono::Duration::zero();
    for row in &rows {
        let issued_at: chrono::DateTime<chrono::Utc> = row.get("issued_at");
        let activated_at: chrono::DateTime<chrono::Utc> = row.get("activated_at");
        let expires_at: chrono::DateTime<chrono::Utc> = row.get("expires_at");
        let expired_at: chrono::DateTime<chrono::Utc> = row.get("expired_at");
        assert!(activated_at < expires_at, "became valid before its expiry");
        assert!(expired_at >= expires_at, "never expired before its time");
        assert_eq!(expires_at - issued_at, chrono::Duration::seconds(TTL_SECS));
        max_lag = max_lag.max(activated_at - issued_at);
    }
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM active_codes")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(active, 0, "nothing valid after its expiry");
    assert_eq!(poison.approximate_len().await.unwrap_or(0), 0);

    let mut batches = Vec::new();
    for (i, worker) in workers.iter_mut().enumerate() {
        assert!(worker.terminate().success(), "worker {i} failed");
        let log = std::fs::read_to_string(dir.path().join(format!("worker-{i}.log"))).unwrap();
        let problems: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
            .collect();
        assert!(
            problems.is_empty(),
            "worker {i} reported problems:\n{}",
            problems.join("\n")
        );
        batches.push(log.matches("batch done").count());
    }
    eprintln!(
        "{} codes, {WORKERS} workers: issued in {issue_time:?}, all expired after {total_time:?}; \
         max activation lag {} ms; batches per worker {batches:?}",
        codes(),
        max_lag.num_milliseconds()
    );
}
