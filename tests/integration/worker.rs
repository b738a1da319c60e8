//! The worker against a real Azurite queue and a real SQLite database: activation, expiry, idempotency
//! under redelivery, foreign message shapes, and the poison queue.

use crate::common;

use base64::Engine as _;
use chrono::{Duration as ChronoDuration, Utc};
use codewatch::backends::{Database, Queues};
use codewatch::domain::Code;
use codewatch::domain::{Issuance, IssuanceId};
use codewatch::message::{CodeMessage, MessageEncoding};
use codewatch::store::SharedStore;
use codewatch::timestamp;
use codewatch::worker::{Backoff, BatchReport, PollOutcome, Worker, WorkerSettings};
use common::{TestDb, eventually};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Rig {
    queues: Queues,
    db: TestDb,
    store: SharedStore,
}

async fn rig() -> Rig {
    rig_on(common::sqlite().await).await
}

/// A rig on `db`, with a fresh Azurite queue.
async fn rig_on(db: TestDb) -> Rig {
    let store = db.database.store();
    Rig {
        queues: common::azure_queues().await,
        db,
        store,
    }
}

fn settings(ttl_secs: u64) -> WorkerSettings {
    WorkerSettings {
        code_ttl: Duration::from_secs(ttl_secs),
        lease: Duration::from_secs(2),
        poll_backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(200)).unwrap(),
        ..WorkerSettings::default()
    }
}

impl Rig {
    fn worker(&self, settings: WorkerSettings) -> Worker {
        Worker::new(
            self.queues.main.clone(),
            self.queues.poison.clone(),
            self.store.clone(),
            settings,
        )
    }

    async fn send(&self, body: &str) {
        self.queues.main.send(body, Duration::ZERO).await.unwrap();
    }

    async fn valid(&self, code: &str) -> usize {
        self.valid_at(code, Utc::now()).await
    }

    /// Whether `code` is valid at `at` (1 or 0).
    async fn valid_at(&self, code: &str, at: chrono::DateTime<Utc>) -> usize {
        let found = self
            .store
            .find_valid(&Code::parse(code).unwrap(), None, at)
            .await
            .unwrap();
        usize::from(found.is_some())
    }

    /// Rows whose expiry message has not been processed yet (expired rows stay, marked, for inspection).
    async fn rows(&self) -> usize {
        let all = self.store.list(true, Utc::now(), 1000).await.unwrap();
        all.iter().filter(|r| r.expired_at.is_none()).count()
    }
}

/// Polls until the queue has nothing visible; the sum of what the polls did.
async fn drain(worker: &Worker) -> BatchReport {
    let mut total = BatchReport::default();
    while let PollOutcome::Processed(report) = worker.poll_once().await.unwrap() {
        total += report;
    }
    total
}

/// [`drain`], each batch handled as at `now`: a time past a code's expiry, instead of waiting for it.
async fn drain_at(rig: &Rig, worker: &Worker, now: chrono::DateTime<Utc>) -> BatchReport {
    let mut total = BatchReport::default();
    loop {
        let batch = rig
            .queues
            .main
            .receive(32, Duration::from_secs(30))
            .await
            .unwrap();
        if batch.is_empty() {
            return total;
        }
        total += worker.process_batch(batch, now).await;
    }
}

fn issuance(code: &str, issued_at: chrono::DateTime<Utc>) -> Issuance {
    Issuance {
        destination: None,
        id: IssuanceId::random(),
        code: Code::parse(code).unwrap(),
        issued_at,
        subject: None,
    }
}

fn activation(i: &Issuance) -> String {
    CodeMessage::Activate(i.clone())
        .encode(MessageEncoding::Text)
        .unwrap()
}

#[tokio::test]
async fn a_code_issued_by_serve_becomes_valid_then_expires_after_its_ttl() {
    let rig = rig().await;
    let api = common::number_api("k").await;
    let app = common::producer(
        &api.url("/api/RandomNumber"),
        "k",
        rig.queues.main.clone(),
        MessageEncoding::Text,
    )
    .await;
    let cancel = CancellationToken::new();
    let worker = Arc::new(rig.worker(settings(2)));
    let running = tokio::spawn(worker.run(cancel.clone()));

    let body: serde_json::Value = reqwest::get(app.url("/api/v1/getcode"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let code = body["code"].as_str().unwrap().to_owned();
    let issued_at = timestamp::parse(body["timestamp"].as_str().unwrap()).unwrap();
    eventually(
        "the code to become valid",
        Duration::from_secs(5),
        || async { (rig.valid(&code).await == 1).then_some(()) },
    )
    .await;
    let row = rig
        .store
        .list(true, Utc::now(), 10)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(row.expires_at, issued_at + ChronoDuration::seconds(2));
    assert!(row.activated_at >= issued_at);

    eventually(
        "the row to be removed by its expiry message",
        Duration::from_secs(10),
        || async { (rig.rows().await == 0).then_some(()) },
    )
    .await;
    assert_eq!(rig.valid(&code).await, 0);
    eventually("the queue to be empty", Duration::from_secs(5), || async {
        (rig.queues.main.approximate_len().await.unwrap() == 0).then_some(())
    })
    .await;
    cancel.cancel();
    running.await.unwrap();
}

#[tokio::test]
async fn validity_ends_at_expires_at_even_before_the_expiry_message_is_processed() {
    let rig = rig().await;
    // 3 s, not 1: the code must still be valid when checked after the batch on a loaded machine.
    let worker = rig.worker(settings(3));
    rig.send(&activation(&issuance("abc-1-def", Utc::now())))
        .await;
    drain(&worker).await;
    assert_eq!(rig.valid("abc-1-def").await, 1);
    // No poll has run since: the row is still there, but past its TTL the code is no longer valid.
    assert_eq!(rig.rows().await, 1);
    let later = Utc::now() + ChronoDuration::milliseconds(3100);
    assert_eq!(rig.valid_at("abc-1-def", later).await, 0);
}

/// An update keeps the message's time-to-live: a foreign activation whose queue drops it before its
/// code's expiry gets a new expiry message instead, or its expiry would never be recorded.
#[tokio::test]
async fn re_arming_by_update_never_relies_on_a_foreign_messages_short_time_to_live() {
    let rig = rig().await;
    let recording = common::faults::FaultQueue::recording(rig.queues.main.clone());
    let worker = Worker::new(
        recording.clone(),
        rig.queues.poison.clone(),
        rig.store.clone(),
        WorkerSettings {
            rearm: codewatch::worker::Rearm::Update,
            ..settings(60)
        },
    );
    rig.send(&activation(&issuance("ttl-1-Sht", Utc::now())))
        .await;
    let mut batch = rig
        .queues
        .main
        .receive(32, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(batch.len(), 1);
    // As Azure reports a message sent with a 30-second time-to-live.
    batch[0].expires_at = Some(Utc::now() + ChronoDuration::seconds(30));
    let report = worker.process_batch(batch, Utc::now()).await;
    assert_eq!((report.activated, report.failed), (1, 0), "{report:?}");
    let sent = recording.sent();
    assert_eq!(sent.len(), 1, "the expiry message was sent anew: {sent:?}");
    assert!(matches!(
        CodeMessage::decode(&sent[0], Utc::now()).unwrap(),
        CodeMessage::Expire { .. }
    ));
    assert_eq!(
        rig.queues.main.approximate_len().await.unwrap(),
        1,
        "the activation was deleted"
    );
}

#[tokio::test]
async fn re_arming_by_update_turns_the_activation_into_its_expiry_message_in_one_call() {
    let rig = rig().await;
    // Long enough that the code is still valid when checked after the batch on a loaded machine (a
    // run with 1 s failed so), short enough that the expiry message is visible again soon after.
    let worker = rig.worker(WorkerSettings {
        rearm: codewatch::worker::Rearm::Update,
        ..settings(3)
    });
    rig.send(&activation(&issuance("upd-1-Arm", Utc::now())))
        .await;
    let sent = rig.queues.main.peek(1).await.unwrap().remove(0);
    let report = drain(&worker).await;
    assert_eq!((report.activated, report.failed), (1, 0));
    assert_eq!(rig.valid("upd-1-Arm").await, 1);
    assert_eq!(
        rig.queues.main.approximate_len().await.unwrap(),
        1,
        "the activation became the expiry message: no copy, nothing deleted"
    );
    let expiry = eventually("the expiry message", Duration::from_secs(10), || async {
        rig.queues.main.peek(1).await.unwrap().pop()
    })
    .await;
    assert_eq!(expiry.message_id, sent.message_id);
    assert!(matches!(
        CodeMessage::decode(&expiry.body, Utc::now()).unwrap(),
        CodeMessage::Expire { .. }
    ));
    let mut total = BatchReport::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while total.expired < 1 {
        assert!(std::time::Instant::now() < deadline, "no expiry: {total:?}");
        total += drain(&worker).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((total.failed, total.poisoned), (0, 0));
    assert_eq!(rig.rows().await, 0);
    assert_eq!(rig.queues.main.approximate_len().await.unwrap(), 0);
}

#[tokio::test]
async fn the_same_activation_twice_makes_one_valid_code() {
    let rig = rig().await;
    let worker = rig.worker(settings(60));
    let body = activation(&issuance("dup-1-Act", Utc::now()));
    rig.send(&body).await;
    rig.send(&body).await;
    let report = drain(&worker).await;
    assert_eq!(
        (report.activated, report.duplicates, report.failed),
        (1, 1, 0)
    );
    assert_eq!(rig.rows().await, 1);
    assert_eq!(rig.valid("dup-1-Act").await, 1);
}

#[tokio::test]
async fn the_same_expiry_twice_is_harmless() {
    let rig = rig().await;
    let worker = rig.worker(settings(1));
    let i = issuance("dup-2-Exp", Utc::now());
    rig.send(&activation(&i)).await;
    drain(&worker).await;
    assert_eq!(rig.rows().await, 1);
    let expiry = CodeMessage::Expire {
        expires_at: i.issued_at + ChronoDuration::seconds(1),
        issuance: i,
    }
    .encode(MessageEncoding::Text)
    .unwrap();
    rig.send(&expiry).await;
    rig.send(&expiry).await;
    // Handled as two seconds from now, past the code's expiry: no wait for the clock to get there.
    let later = Utc::now() + ChronoDuration::seconds(2);
    let mut total = BatchReport::default();
    // Two copies sent here plus the one the worker re-armed (the queue hides it for the TTL).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while total.expired < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "three expiries expected, saw {total:?}"
        );
        total += drain_at(&rig, &worker, later).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((total.failed, total.poisoned), (0, 0));
    assert_eq!(rig.rows().await, 0);
}

#[tokio::test]
async fn an_activation_arriving_after_its_expiry_makes_nothing_valid() {
    let rig = rig().await;
    let worker = rig.worker(settings(600));
    rig.send(&activation(&issuance(
        "old-3-Act",
        Utc::now() - ChronoDuration::minutes(20),
    )))
    .await;
    let report = drain(&worker).await;
    assert_eq!((report.stale, report.activated), (1, 0));
    assert_eq!(rig.rows().await, 0);
    assert_eq!(
        rig.queues.main.approximate_len().await.unwrap(),
        0,
        "no expiry message for a stale activation"
    );
}

#[tokio::test]
async fn a_redelivered_activation_after_expiry_does_not_resurrect_the_code() {
    let rig = rig().await;
    let worker = rig.worker(settings(1));
    let body = activation(&issuance("res-4-Urr", Utc::now()));
    rig.send(&body).await;
    drain(&worker).await;
    eventually(
        "the expiry to be processed",
        Duration::from_secs(10),
        || async {
            drain(&worker).await;
            (rig.rows().await == 0).then_some(())
        },
    )
    .await;
    rig.send(&body).await;
    let report = drain(&worker).await;
    assert_eq!(report.stale, 1);
    assert_eq!(rig.rows().await, 0);
    assert_eq!(rig.valid("res-4-Urr").await, 0);
}

#[tokio::test]
async fn an_early_expiry_message_is_put_back_and_removes_nothing() {
    let rig = rig().await;
    let worker = rig.worker(settings(3));
    let i = issuance("ear-5-Lyy", Utc::now());
    rig.send(&activation(&i)).await;
    drain(&worker).await;
    let early = CodeMessage::Expire {
        expires_at: i.issued_at + ChronoDuration::seconds(3),
        issuance: i.clone(),
    };
    rig.send(&early.encode(MessageEncoding::Text).unwrap())
        .await;
    let report = drain(&worker).await;
    assert_eq!(report.early, 1);
    assert_eq!(rig.valid("ear-5-Lyy").await, 1);
    eventually("expiry at its time", Duration::from_secs(10), || async {
        drain(&worker).await;
        (rig.rows().await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn every_foreign_message_shape_activates_its_code_once() {
    let rig = rig().await;
    let worker = rig.worker(settings(60));
    let now = timestamp::format(Utc::now());
    let json = format!(r#"{{"code": "Fjs-11-Onn", "timestamp": "{now}"}}"#);
    let shapes = [
        format!("{{'code': 'Pyt-12-Hon', 'timestamp': '{now}'}}"),
        base64::engine::general_purpose::STANDARD
            .encode(format!(r#"{{"code": "Bas-13-Esx", "timestamp": "{now}"}}"#)),
        "Bar-14-Eco".to_owned(),
        json,
    ];
    for body in &shapes {
        rig.send(body).await;
    }
    // The same foreign messages again, as a redelivery or a retrying producer would send them.
    for body in &shapes[..2] {
        rig.send(body).await;
    }
    rig.send(&shapes[3]).await;
    let report = drain(&worker).await;
    assert_eq!(
        (
            report.activated,
            report.duplicates,
            report.poisoned,
            report.failed
        ),
        (4, 3, 0, 0)
    );
    for code in ["Pyt-12-Hon", "Bas-13-Esx", "Bar-14-Eco", "Fjs-11-Onn"] {
        assert_eq!(rig.valid(code).await, 1, "{code}");
    }
}

#[tokio::test]
async fn an_unusable_message_goes_to_the_poison_queue_unchanged_at_once() {
    let rig = rig().await;
    let worker = rig.worker(settings(60));
    for body in [
        "hello world",
        r#"{"code":"not-a-code"}"#,
        r#"{"code":"ojE-161-pTv","action":"toggle"}"#,
    ] {
        rig.send(body).await;
    }
    rig.send(&activation(&issuance("goo-6-Dok", Utc::now())))
        .await;
    let report = drain(&worker).await;
    assert_eq!(
        (report.poisoned, report.activated, report.failed),
        (3, 1, 0)
    );
    let mut poisoned: Vec<String> = rig
        .queues
        .poison
        .peek(32)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    poisoned.sort();
    assert_eq!(
        poisoned,
        [
            "hello world",
            r#"{"code":"not-a-code"}"#,
            r#"{"code":"ojE-161-pTv","action":"toggle"}"#
        ]
    );
    assert_eq!(rig.valid("goo-6-Dok").await, 1);
}

/// Two receives that never finish, as from a worker that crashed twice mid-message.
async fn receive_twice_and_abandon(rig: &Rig) {
    for attempt in 1..=2 {
        let got = eventually(
            "the message to be visible",
            Duration::from_secs(10),
            || async {
                rig.queues
                    .main
                    .receive(1, Duration::from_secs(1))
                    .await
                    .unwrap()
                    .pop()
            },
        )
        .await;
        assert_eq!(got.dequeue_count, attempt);
    }
}

/// Two abandoned receives, then a worker whose dequeue limit is 2 handles the third delivery.
async fn third_delivery_past_a_limit_of_two(rig: &Rig) -> BatchReport {
    receive_twice_and_abandon(rig).await;
    let worker = rig.worker(WorkerSettings {
        max_dequeue_count: 2,
        ..settings(60)
    });
    eventually("the third delivery", Duration::from_secs(10), || async {
        let r = drain(&worker).await;
        (r.received > 0).then_some(r)
    })
    .await
}

#[tokio::test]
async fn an_expiry_message_that_keeps_failing_goes_to_poison_after_the_dequeue_limit() {
    let rig = rig().await;
    let i = issuance("lim-7-Itt", Utc::now() - ChronoDuration::seconds(120));
    let body = CodeMessage::Expire {
        expires_at: i.issued_at + ChronoDuration::seconds(60),
        issuance: i,
    }
    .encode(MessageEncoding::Text)
    .unwrap();
    rig.send(&body).await;
    let report = third_delivery_past_a_limit_of_two(&rig).await;
    assert_eq!(report.poisoned, 1);
    assert_eq!(rig.queues.poison.peek(32).await.unwrap()[0].body, body);
    assert_eq!(rig.rows().await, 0);
}

/// Setting a live activation aside would lose its code: however often crashed workers or an outage
/// made it come back, it is tried again.
#[tokio::test]
async fn an_activation_past_the_dequeue_limit_is_still_activated_not_poisoned() {
    let rig = rig().await;
    rig.send(&activation(&issuance("lim-8-Act", Utc::now())))
        .await;
    let report = third_delivery_past_a_limit_of_two(&rig).await;
    assert_eq!((report.activated, report.poisoned), (1, 0), "{report:?}");
    assert_eq!(rig.valid("lim-8-Act").await, 1);
    assert!(rig.queues.poison.peek(32).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_database_failure_loses_nothing_the_message_is_retried() {
    let rig = rig().await;
    let i = issuance("dbf-8-Ail", Utc::now());
    rig.send(&activation(&i)).await;
    let broken = common::sqlite().await;
    let Database::Sqlite(pools) = &broken.database else {
        unreachable!("sqlite() opens SQLite")
    };
    pools.close().await;
    let failing = Worker::new(
        rig.queues.main.clone(),
        rig.queues.poison.clone(),
        broken.database.store(),
        settings(60),
    );
    let report = failing.poll_once().await.unwrap();
    assert_eq!(
        report,
        PollOutcome::Processed(BatchReport {
            received: 1,
            failed: 1,
            ..Default::default()
        })
    );
    assert_eq!(rig.rows().await, 0);

    let worker = rig.worker(settings(60));
    eventually(
        "the retried activation",
        Duration::from_secs(10),
        || async {
            drain(&worker).await;
            (rig.valid("dbf-8-Ail").await == 1).then_some(())
        },
    )
    .await;
    let _ = &rig.db;
}

async fn poisoned_bodies(rig: &Rig) -> Vec<String> {
    let mut bodies: Vec<String> = rig
        .queues
        .poison
        .peek(32)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    bodies.sort();
    bodies
}

async fn an_activation_dated_in_the_future_goes_to_poison_and_cannot_choose_its_validity(rig: Rig) {
    let worker = rig.worker(settings(60));
    let far = issuance(
        "far-1-Fut",
        timestamp::parse("2030-01-01 00:00:00").unwrap(),
    );
    let soon = issuance("son-2-Fut", Utc::now() + ChronoDuration::minutes(5));
    let skewed = issuance("ske-3-Wed", Utc::now() + ChronoDuration::seconds(5));
    let sent_at = Utc::now();
    for i in [&far, &soon, &skewed] {
        rig.send(&activation(i)).await;
    }
    let report = drain(&worker).await;
    assert_eq!((report.poisoned, report.activated), (2, 1));
    assert_eq!(
        poisoned_bodies(&rig).await.len(),
        2,
        "both future-dated activations are set aside unchanged"
    );
    assert_eq!(
        rig.valid("far-1-Fut").await + rig.valid("son-2-Fut").await,
        0
    );
    // Within the clock allowance: valid, and never past insertion + allowance + TTL.
    let row = rig
        .store
        .records(&Code::parse("ske-3-Wed").unwrap())
        .await
        .unwrap()
        .remove(0);
    let bound = sent_at + ChronoDuration::seconds(1) + ChronoDuration::seconds(30 + 60);
    assert!(row.expires_at <= bound, "{} > {bound}", row.expires_at);
    assert_eq!(rig.valid("ske-3-Wed").await, 1);
}

#[tokio::test]
async fn a_timestamp_at_the_limit_of_time_is_poisoned_and_the_worker_keeps_activating() {
    let rig = rig().await;
    let cancel = CancellationToken::new();
    let worker = Arc::new(rig.worker(settings(60)));
    let heartbeat = worker.heartbeat();
    let running = tokio::spawn(worker.run(cancel.clone()));
    rig.send(r#"{"code": "end-1-Tim", "timestamp": "+262142-12-31 23:59:59.999999"}"#)
        .await;
    rig.send(r#"{"code": "end-2-Tim", "timestamp": "+262142-12-31 23:59:59.999999", "action": "expire", "expires_at": "+262142-12-31 23:59:59.999999"}"#)
        .await;
    rig.send(&activation(&issuance("aft-3-Ter", Utc::now())))
        .await;
    eventually(
        "the good code to become valid",
        Duration::from_secs(10),
        || async { (rig.valid("aft-3-Ter").await == 1).then_some(()) },
    )
    .await;
    eventually(
        "the activation and the expiry dated at the end of time to be poisoned",
        Duration::from_secs(10),
        || async { (poisoned_bodies(&rig).await.len() == 2).then_some(()) },
    )
    .await;
    assert!(heartbeat.is_alive());
    assert!(!running.is_finished(), "the worker is still running");
    cancel.cancel();
    running.await.unwrap();
}

async fn python_none_binds_no_subject_and_every_such_code_becomes_valid(rig: Rig) {
    let worker = rig.worker(settings(60));
    let now = timestamp::format(Utc::now());
    for code in ["non-1-Eaa", "non-2-Ebb", "non-3-Ecc"] {
        rig.send(&format!(
            "{{'code': '{code}', 'timestamp': '{now}', 'subject': None, 'id': None}}"
        ))
        .await;
    }
    let report = drain(&worker).await;
    assert_eq!(
        (report.activated, report.duplicates, report.poisoned),
        (3, 0, 0)
    );
    for code in ["non-1-Eaa", "non-2-Ebb", "non-3-Ecc"] {
        assert_eq!(
            rig.valid(code).await,
            1,
            "{code} is valid and bound to no subject"
        );
    }
}

async fn an_id_already_used_by_another_code_goes_to_poison(rig: Rig) {
    let worker = rig.worker(settings(60));
    let first = issuance("fir-1-Sta", Utc::now());
    let mut second = issuance("sec-2-Ond", Utc::now());
    second.id = first.id.clone();
    rig.send(&activation(&first)).await;
    drain(&worker).await;
    rig.send(&activation(&second)).await;
    let report = drain(&worker).await;
    assert_eq!((report.poisoned, report.duplicates), (1, 0));
    assert_eq!(poisoned_bodies(&rig).await, [activation(&second)]);
    assert_eq!(rig.valid("fir-1-Sta").await, 1);
}

async fn of_two_activations_sharing_an_id_in_one_batch_only_the_loser_is_set_aside(rig: Rig) {
    let worker = rig.worker(settings(60));
    let first = issuance("fir-3-Sta", Utc::now());
    let mut second = issuance("sec-4-Ond", Utc::now());
    second.id = first.id.clone();
    rig.send(&activation(&first)).await;
    rig.send(&activation(&second)).await;
    let report = drain(&worker).await;
    assert_eq!(
        (
            report.activated,
            report.poisoned,
            report.duplicates,
            report.received
        ),
        (1, 1, 0, 2),
        "the batch's counts add up: {report:?}"
    );
    let first_won = !rig.store.records(&first.code).await.unwrap().is_empty();
    let loser = if first_won { &second } else { &first };
    assert_eq!(
        poisoned_bodies(&rig).await,
        [activation(loser)],
        "only the one not recorded is set aside"
    );
    let valid = rig.valid("fir-3-Sta").await + rig.valid("sec-4-Ond").await;
    assert_eq!(valid, 1, "one of them holds the id and is valid");
}

async fn forged_expiry_messages_are_set_aside_instead_of_coming_back_forever(rig: Rig) {
    let worker = rig.worker(settings(60));
    let real = issuance("rea-5-Lll", Utc::now());
    rig.send(&activation(&real)).await;
    drain(&worker).await;
    // Dated far past any code's lifetime, and an early one for an issuance nobody recorded.
    let far = CodeMessage::Expire {
        expires_at: chrono::DateTime::parse_from_rfc3339("9999-12-31T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc),
        issuance: issuance("far-6-Ooo", Utc::now()),
    }
    .encode(MessageEncoding::Text)
    .unwrap();
    let unknown = CodeMessage::Expire {
        expires_at: Utc::now() + ChronoDuration::seconds(30),
        issuance: issuance("unk-7-Now", Utc::now()),
    }
    .encode(MessageEncoding::Text)
    .unwrap();
    rig.send(&far).await;
    rig.send(&unknown).await;
    let report = drain(&worker).await;
    assert_eq!((report.poisoned, report.early), (2, 0), "{report:?}");
    let mut poisoned = poisoned_bodies(&rig).await;
    poisoned.sort();
    let mut expected = vec![far, unknown];
    expected.sort();
    assert_eq!(poisoned, expected);
    assert_eq!(
        rig.valid("rea-5-Lll").await,
        1,
        "the real code is untouched"
    );
}

/// The real queue, but its first `panics` receives panic: a bug in a poll loop.
struct PanickingQueue {
    inner: codewatch::queue::SharedQueue,
    panics: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl codewatch::queue::QueueSender for PanickingQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn send(&self, body: &str, after: Duration) -> Result<(), codewatch::queue::QueueError> {
        self.inner.send(body, after).await
    }
}

#[async_trait::async_trait]
impl codewatch::queue::QueueConsumer for PanickingQueue {
    async fn receive(
        &self,
        max: u32,
        lease: Duration,
    ) -> Result<Vec<codewatch::queue::ReceivedMessage>, codewatch::queue::QueueError> {
        let left = self.panics.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.panics
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            panic!("injected poll loop bug");
        }
        self.inner.receive(max, lease).await
    }

    async fn delete(
        &self,
        receipt: &codewatch::queue::Receipt,
    ) -> Result<(), codewatch::queue::QueueError> {
        self.inner.delete(receipt).await
    }

    async fn release(
        &self,
        receipt: &codewatch::queue::Receipt,
        after: Duration,
    ) -> Result<(), codewatch::queue::QueueError> {
        self.inner.release(receipt, after).await
    }

    async fn update(
        &self,
        receipt: &codewatch::queue::Receipt,
        body: &str,
        after: Duration,
    ) -> Result<(), codewatch::queue::QueueError> {
        self.inner.update(receipt, body, after).await
    }
}

#[async_trait::async_trait]
impl codewatch::queue::QueueAdmin for PanickingQueue {
    async fn ensure_exists(&self) -> Result<(), codewatch::queue::QueueError> {
        self.inner.ensure_exists().await
    }

    async fn peek(
        &self,
        max: u32,
    ) -> Result<Vec<codewatch::queue::PeekedMessage>, codewatch::queue::QueueError> {
        self.inner.peek(max).await
    }

    async fn approximate_len(&self) -> Result<u64, codewatch::queue::QueueError> {
        self.inner.approximate_len().await
    }

    async fn clear(&self) -> Result<(), codewatch::queue::QueueError> {
        self.inner.clear().await
    }
}

#[tokio::test]
async fn a_poll_loop_that_panics_is_reported_by_liveness_and_restarted() {
    let rig = rig().await;
    let queue = Arc::new(PanickingQueue {
        inner: rig.queues.main.clone(),
        panics: std::sync::atomic::AtomicUsize::new(3),
    });
    let worker = Arc::new(Worker::new(
        queue,
        rig.queues.poison.clone(),
        rig.store.clone(),
        WorkerSettings {
            pollers: std::num::NonZeroUsize::MIN,
            ..settings(60)
        },
    ));
    let heartbeat = worker.heartbeat();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(worker.run(cancel.clone()));
    eventually(
        "liveness to report the dead poll loop",
        Duration::from_secs(5),
        || async { (heartbeat.stalled() == [0]).then_some(()) },
    )
    .await;
    rig.send(&activation(&issuance("sur-1-Viv", Utc::now())))
        .await;
    eventually(
        "the restarted loop to activate the code",
        Duration::from_secs(15),
        || async { (rig.valid("sur-1-Viv").await == 1).then_some(()) },
    )
    .await;
    assert!(heartbeat.is_alive(), "alive again once the loop runs");
    cancel.cancel();
    running.await.unwrap();
}

async fn with_signing_on_only_activations_signed_by_a_current_or_previous_key_become_valid(
    rig: Rig,
) {
    use codewatch::signing::SigningKeys;
    let old = "old-signing-key-0123456789abcdefghijklmnop";
    let new = "new-signing-key-0123456789abcdefghijklmnop";
    let rotating = SigningKeys::parse(&format!("{new}\n{old}")).unwrap();
    let worker = rig.worker(WorkerSettings {
        signing: Some(rotating),
        ..settings(60)
    });
    let sign = |i: &Issuance, key: &str| {
        CodeMessage::Activate(i.clone())
            .encode_signed(
                MessageEncoding::Text,
                Some(&SigningKeys::parse(key).unwrap()),
            )
            .unwrap()
    };
    let by_new = issuance("sig-1-New", Utc::now());
    let by_old = issuance("sig-2-Old", Utc::now());
    rig.send(&sign(&by_new, new)).await;
    rig.send(&sign(&by_old, old)).await;
    rig.send(&activation(&issuance("uns-3-Ign", Utc::now())))
        .await;
    rig.send(&sign(
        &issuance("for-4-Ged", Utc::now()),
        "an-attackers-key-0123456789abcdefghijklmnop",
    ))
    .await;
    let altered = sign(&issuance("alt-5-Erd", Utc::now()), new).replace("alt-5-Erd", "alt-6-Erd");
    rig.send(&altered).await;
    rig.send("uns-7-Bar").await;
    let report = drain(&worker).await;
    assert_eq!((report.activated, report.poisoned), (2, 4));
    assert_eq!(
        rig.valid("sig-1-New").await + rig.valid("sig-2-Old").await,
        2
    );
    for code in [
        "uns-3-Ign",
        "for-4-Ged",
        "alt-5-Erd",
        "alt-6-Erd",
        "uns-7-Bar",
    ] {
        assert_eq!(rig.valid(code).await, 0, "{code}");
    }
    // Both valid codes were re-armed for expiry.
    let rearmed = rig.queues.main.approximate_len().await.unwrap();
    assert_eq!(rearmed, 2);
}

/// Hostile-input cases, on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $case() { super::$case(super::rig().await).await; } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $case() {
                super::$case(super::rig_on(super::common::postgres().await).await).await;
            } )*
        }
    };
}

on_both!(
    an_activation_dated_in_the_future_goes_to_poison_and_cannot_choose_its_validity,
    python_none_binds_no_subject_and_every_such_code_becomes_valid,
    an_id_already_used_by_another_code_goes_to_poison,
    of_two_activations_sharing_an_id_in_one_batch_only_the_loser_is_set_aside,
    forged_expiry_messages_are_set_aside_instead_of_coming_back_forever,
    with_signing_on_only_activations_signed_by_a_current_or_previous_key_become_valid,
);

/// One poll loop over three shards takes one batch from each in turn: a code on a quiet shard is
/// activated while a flooded shard still has batches waiting, not after it drained.
#[tokio::test]
async fn a_worker_polls_every_shard_in_turn_so_a_flooded_one_starves_none() {
    let db = common::sqlite().await;
    let store = db.database.store();
    let shards = [
        common::azure_queues().await,
        common::azure_queues().await,
        common::azure_queues().await,
    ];
    let now = Utc::now();
    let codes = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i}-Shd")).collect()
    };
    let flood = codes("Fld", 96);
    for code in &flood {
        shards[0]
            .main
            .send(&activation(&issuance(code, now)), Duration::ZERO)
            .await
            .unwrap();
    }
    for (shard, code) in [(1, "Qta-1-Shd"), (2, "Qtb-2-Shd")] {
        shards[shard]
            .main
            .send(&activation(&issuance(code, now)), Duration::ZERO)
            .await
            .unwrap();
    }
    let worker = Arc::new(Worker::with_shards(
        shards.iter().map(|q| q.shard()).collect(),
        store.clone(),
        WorkerSettings {
            pollers: std::num::NonZeroUsize::MIN,
            ..settings(60)
        },
    ));
    let cancel = CancellationToken::new();
    let running = tokio::spawn(worker.run(cancel.clone()));
    let rows = eventually("all 98 activated", Duration::from_secs(30), || {
        let store = store.clone();
        async move {
            let rows = store.list(true, Utc::now(), 1000).await.unwrap();
            (rows.len() == 98).then_some(rows)
        }
    })
    .await;
    cancel.cancel();
    running.await.unwrap();
    let activated = |code: &str| {
        rows.iter()
            .find(|r| r.code.to_string() == code)
            .map(|r| r.activated_at)
            .unwrap()
    };
    let quiet = activated("Qtb-2-Shd");
    let flooded_after = flood.iter().filter(|c| activated(c) > quiet).count();
    assert!(
        flooded_after >= 32,
        "the third shard waited for no more than one flooded batch: {flooded_after} of 96 came after it"
    );
}

/// An idle worker costs one receive per poll interval, not one per poll loop: only the first loop
/// polls an empty queue, the others rest until it finds messages, then all of them work.
#[tokio::test]
async fn an_idle_worker_polls_with_one_loop_and_wakes_the_others_for_work() {
    let rig = rig().await;
    let counted = common::faults::FaultQueue::recording(rig.queues.main.clone());
    let settings = WorkerSettings {
        poll_backoff: Backoff::new(Duration::from_millis(100), Duration::from_millis(100)).unwrap(),
        ..settings(60)
    };
    let pollers = settings.pollers.get();
    assert!(pollers >= 4, "the default runs several loops");
    let worker = Arc::new(Worker::new(
        counted.clone(),
        rig.queues.poison.clone(),
        rig.store.clone(),
        settings,
    ));
    let cancel = CancellationToken::new();
    let running = tokio::spawn(worker.run(cancel.clone()));
    // However fast or slow the machine, count who polls: every loop makes its first receive, then
    // only one keeps polling the empty queue while the others rest.
    eventually("20 idle receives", Duration::from_secs(60), || async {
        (counted.receive_calls() >= pollers + 20).then_some(())
    })
    .await;
    let per_loop = counted.receives_per_task();
    assert_eq!(
        per_loop.len(),
        pollers,
        "every loop polled once: {per_loop:?}"
    );
    assert!(
        per_loop[0] >= 20 && per_loop[1..].iter().all(|n| *n == 1),
        "receives per loop while idle: {per_loop:?}; only the first loop may keep polling"
    );
    let now = Utc::now();
    for i in 0..96 {
        rig.send(&activation(&issuance(&format!("Rst-{i}-Wak"), now)))
            .await;
    }
    eventually("all 96 activated", Duration::from_secs(20), || async {
        (rig.rows().await == 96).then_some(())
    })
    .await;
    cancel.cancel();
    running.await.unwrap();
}
