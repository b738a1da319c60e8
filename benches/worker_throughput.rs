//! Worker throughput against the queue's own ceiling, measured in one run on one Azurite (and on the
//! embedded queue). Azurite is one Node.js thread and slows as it stores more messages, so only the
//! ratio means anything here, never the absolute rate as codewatch's speed.
//!
//!   cargo bench --bench worker_throughput            (starts its own Azurite from tools/azurite)
//!   BENCH_MESSAGES=1000 cargo bench --bench worker_throughput

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use chrono::Utc;
use codewatch::backends::Queues;
use codewatch::cli::progress::Progress;
use codewatch::domain::Code;
use codewatch::domain::{Issuance, IssuanceId};
use codewatch::message::{CodeMessage, MessageEncoding};
use codewatch::queue::SharedQueue;
use codewatch::worker::{PollOutcome, Worker, WorkerSettings};
use futures::StreamExt;
use std::time::{Duration, Instant};

fn body(i: usize) -> String {
    let issuance = Issuance {
        id: IssuanceId::random(),
        code: Code::parse(&format!("Ben-{i}-Chx")).unwrap(),
        issued_at: Utc::now(),
        subject: None,
    };
    CodeMessage::Activate(issuance).encode(MessageEncoding::Text)
}

async fn fill(queue: &SharedQueue, n: usize) {
    let mut progress = Progress::new(&format!("filling {}", queue.name()), Some(n as u64));
    let mut sends = futures::stream::iter(0..n)
        .map(|i| async move { queue.send(&body(i), Duration::ZERO).await.unwrap() })
        .buffer_unordered(32);
    while sends.next().await.is_some() {
        progress.inc(1);
    }
    progress.finish();
}

/// The floor under any worker: per message, the queue operations an activation cannot avoid (receive in
/// batches of 32, send the expiry message, delete), with no parsing and no database.
async fn bare_queue(queues: &Queues, n: usize) -> Duration {
    fill(&queues.main, n).await;
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let batch = queues
            .main
            .receive(32, Duration::from_secs(60))
            .await
            .unwrap();
        done += batch.len();
        futures::stream::iter(batch)
            .map(|m| async move {
                queues
                    .main
                    .send(&m.body, Duration::from_secs(3600))
                    .await
                    .unwrap();
                queues.main.delete(&m.receipt).await.unwrap();
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
    }
    started.elapsed()
}

/// The worker doing the same activations, writing the database too.
async fn worker(queues: &Queues, store: codewatch::store::SharedStore, n: usize) -> Duration {
    fill(&queues.main, n).await;
    let settings = WorkerSettings {
        code_ttl: Duration::from_secs(3600),
        ..WorkerSettings::default()
    };
    let worker = Worker::new(queues.main.clone(), queues.poison.clone(), store, settings);
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        if let PollOutcome::Processed(report) = worker.poll_once().await.unwrap() {
            done += report.activated + report.duplicates;
        }
    }
    started.elapsed()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    println!("worker throughput, {n} activations per measurement");

    // Azurite: a fresh instance, one queue per measurement.
    let endpoint = common::start_azurite();
    let cs = common::connection_string_at(&endpoint);
    let factory = codewatch::queue::azure::AzureQueueFactory::from_connection_string(
        &codewatch::queue::connection_string::ConnectionString::parse(&cs).unwrap(),
    )
    .unwrap();
    let open = |name: String| {
        let main: SharedQueue = std::sync::Arc::new(factory.queue(&name).unwrap());
        let poison: SharedQueue =
            std::sync::Arc::new(factory.queue(&format!("{name}-poison")).unwrap());
        Queues {
            main,
            poison,
            backend: "azure",
        }
    };
    let (baseline_q, worker_q) = (open(common::queue_name()), open(common::queue_name()));
    for q in [&baseline_q, &worker_q] {
        q.main.ensure_exists().await.unwrap();
        q.poison.ensure_exists().await.unwrap();
    }
    let db = common::sqlite().await;
    let baseline = bare_queue(&baseline_q, n).await;
    let measured = worker(&worker_q, db.database.store(), n).await;
    println!(
        "  Azurite  bare queue ops {:>8.1} msg/s | worker + SQLite {:>8.1} msg/s | ratio {:.2}",
        rate(n, baseline),
        rate(n, measured),
        baseline.as_secs_f64() / measured.as_secs_f64()
    );

    // The embedded queue, same shape.
    let db = common::sqlite().await;
    let (baseline_q, worker_q) = (
        common::embedded_queues(&db.database),
        common::embedded_queues(&db.database),
    );
    let baseline = bare_queue(&baseline_q, n).await;
    let measured = worker(&worker_q, db.database.store(), n).await;
    println!(
        "  embedded bare queue ops {:>8.1} msg/s | worker + SQLite {:>8.1} msg/s | ratio {:.2}",
        rate(n, baseline),
        rate(n, measured),
        baseline.as_secs_f64() / measured.as_secs_f64()
    );
    println!(
        "  (ratio = worker rate / bare-queue rate on the same backend in this run; 1.00 means the worker"
    );
    println!("   adds nothing over the queue operations it cannot avoid)");
}
