//! The ceilings: Microsoft's queue SDK alone (no codewatch code between the benchmark and the
//! service), and raw batch inserts into the databases.

use crate::measure::CpuMeter;
use azure_core::http::Url;
use azure_storage_queue::QueueClient;
use azure_storage_queue::models::{
    QueueClientReceiveMessagesOptions, QueueClientSendMessageOptions, QueueMessage,
};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A bare SDK client for one queue in the Azurite at `endpoint`, authorised by an account SAS in
/// the URL (as a deployment with a SAS URL would be).
pub async fn client(endpoint: &str, name: &str) -> QueueClient {
    let cs = codewatch::queue::connection_string::ConnectionString::parse(
        &crate::common::connection_string_at(endpoint),
    )
    .unwrap();
    let sas = codewatch::queue::sas::account_sas_for(&cs, chrono::TimeDelta::hours(2)).unwrap();
    let url = Url::parse(&format!("{endpoint}/{name}?{}", sas.expose())).unwrap();
    let client = QueueClient::new(url, None, None).unwrap();
    client.create(None).await.unwrap();
    client
}

/// One Put Message, as codewatch sends one (never expires).
pub async fn put(client: &QueueClient, body: &str, visible_after_s: i32) {
    let message = QueueMessage {
        message_text: Some(body.to_owned()),
    };
    let options = QueueClientSendMessageOptions {
        visibility_timeout: Some(visible_after_s),
        message_time_to_live: Some(-1),
        ..Default::default()
    };
    client
        .send_message(message.try_into().unwrap(), Some(options))
        .await
        .unwrap();
}

/// Puts `bodies` with 32 in flight.
pub async fn fill(client: &QueueClient, bodies: Vec<String>) {
    futures::stream::iter(bodies)
        .for_each_concurrent(32, |b| async move { put(client, &b, 0).await })
        .await;
}

/// Put Message with `in_flight` at once for `duration`: puts per second and CPU seconds used.
pub async fn put_ceiling(
    client: Arc<QueueClient>,
    in_flight: usize,
    duration: Duration,
) -> (f64, f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let cpu = CpuMeter::start(&[]);
    let started = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let (client, stop, count) = (client.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    put(
                        &client,
                        r#"{"code":"Cei-1-Lng","timestamp":"2026-12-02 00:00:00.000000"}"#,
                        3600,
                    )
                    .await;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let n = count.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    (n as f64 / elapsed, cpu.used(), n)
}

/// The worker's queue calls without the worker: receive 32, then for each message send its expiry
/// message and delete it, 32 in flight, until `n` are done. Messages per second and CPU seconds.
pub async fn mix_ceiling(client: &QueueClient, n: usize) -> (f64, f64) {
    let cpu = CpuMeter::start(&[]);
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(32),
            visibility_timeout: Some(60),
            ..Default::default()
        };
        let batch = client
            .receive_messages(Some(options))
            .await
            .unwrap()
            .into_model()
            .unwrap()
            .items
            .unwrap_or_default();
        done += batch.len();
        futures::stream::iter(batch)
            .for_each_concurrent(32, |m| async move {
                let body = m.message_text.clone().unwrap_or_default();
                put(client, &body, 3600).await;
                client
                    .delete_message(
                        m.message_id.as_deref().unwrap(),
                        m.pop_receipt.as_deref().unwrap(),
                        None,
                    )
                    .await
                    .unwrap();
            })
            .await;
    }
    (n as f64 / started.elapsed().as_secs_f64(), cpu.used())
}

/// Raw inserts of `n` code rows in transactions of 32 on SQLite: rows per second.
pub async fn sqlite_inserts(pool: &sqlx::SqlitePool, n: usize) -> f64 {
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let mut tx = pool.begin().await.unwrap();
        for i in chunk {
            sqlx::query(
                "INSERT INTO valid_codes (issuance_id, code, issued_at, expires_at, activated_at) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(format!("raw-{i}"))
            .bind(format!("Raw-{i}-Ins"))
            .bind("2026-12-02 00:00:00.000000")
            .bind("2099-12-02 00:00:00.000000")
            .bind("2026-12-02 00:00:00.000000")
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Raw inserts of `n` code rows in transactions of 32 on PostgreSQL: rows per second.
pub async fn postgres_inserts(pool: &sqlx::PgPool, n: usize) -> f64 {
    let started = Instant::now();
    let at = chrono::Utc::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let mut tx = pool.begin().await.unwrap();
        for i in chunk {
            sqlx::query(
                "INSERT INTO valid_codes (issuance_id, code, issued_at, expires_at, activated_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(format!("raw-{i}"))
            .bind(format!("Raw-{i}-Ins"))
            .bind(at)
            .bind(at + chrono::TimeDelta::days(1))
            .bind(at)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}
