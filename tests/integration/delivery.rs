//! Delivery by the worker: with a channel, the issuing answer carries no code; the worker sends each
//! activated code once (a signed webhook POST, or a mail through a real SMTP server), retries what
//! fails for now until the code expires, gives up what is refused, and never sends a code that
//! expired, was redeemed or was revoked. Every failure is recorded with a reason that shows neither the
//! code nor the whole destination. The embedded queue (the queue's part is tested elsewhere), on
//! SQLite and PostgreSQL where the store's delivery statements run.

use crate::common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use chrono::{DateTime, Utc};
use codewatch::config::DeliveryChannel;
use codewatch::delivery::smtp::SmtpChannel;
use codewatch::delivery::template::MailTemplate;
use codewatch::delivery::webhook::{SIGNATURE_HEADER, WebhookChannel, signature};
use codewatch::delivery::{Channel, Deliverer, DeliverySettings};
use codewatch::domain::Code;
use codewatch::secret::Secret;
use codewatch::store::{CodeRecord, SharedStore};
use codewatch::worker::{Backoff, Worker, WorkerSettings};
use common::smtp::SmtpSink;
use common::{Server, TestDb};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const KEY: &str = "fn-key";
const API_KEY: &str = "delivery-verify-key";
const WEBHOOK_SECRET: &str = "a-webhook-secret-of-at-least-32-chars";

/// Quick retries, so that the tests see several attempts within a short TTL.
fn quick() -> DeliverySettings {
    DeliverySettings {
        timeout: Duration::from_secs(5),
        retry_min: Duration::from_millis(100),
        retry_max: Duration::from_millis(300),
        interval: Duration::from_millis(100),
        ..DeliverySettings::default()
    }
}

/// One call the receiver got: when, its headers, its body.
type Call = (DateTime<Utc>, HeaderMap, String);

/// A webhook receiver: records each call (its time, headers and body) and answers the next status
/// of its script (200 once the script is used up).
#[derive(Clone, Default)]
struct Receiver {
    calls: Arc<Mutex<Vec<Call>>>,
    script: Arc<Mutex<Vec<u16>>>,
}

impl Receiver {
    async fn start(script: &[u16]) -> (Self, Server) {
        let receiver = Self::default();
        receiver.script.lock().unwrap().extend(script.iter().rev());
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(receiver.clone());
        (receiver, Server::start(router).await)
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> AxumStatus {
    r.calls.lock().unwrap().push((Utc::now(), headers, body));
    let status = r.script.lock().unwrap().pop().unwrap_or(200);
    AxumStatus::from_u16(status).unwrap()
}

struct Rig {
    db: TestDb,
    store: SharedStore,
    producer: Server,
    worker: Arc<Worker>,
    deliverer: Arc<Deliverer>,
    _api: Server,
    http: reqwest::Client,
}

/// A producer issuing with `delivery` (codes valid `ttl`), a worker on the embedded queue, and a
/// delivery stage through `channel` (not running: tests drive it, or [`Rig::run`]).
async fn rig(
    db: TestDb,
    ttl: Duration,
    delivery: DeliveryChannel,
    channel: Arc<dyn Channel>,
) -> Rig {
    // PostgreSQL has no embedded queue: Azurite's then.
    let queues = if db.url.starts_with("postgres") {
        common::azure_queues().await
    } else {
        common::embedded_queues(&db.database)
    };
    let api = common::number_api(KEY).await;
    let store = db.database.store();
    let mut state = common::producer_state(
        &api.url("/api/RandomNumber"),
        KEY,
        queues.main.clone(),
        codewatch::message::MessageEncoding::Text,
        Duration::from_secs(5),
    );
    state.verification = Some(codewatch::http::Verification {
        verifier: codewatch::verify::Verifier::new(store.clone(), Default::default()),
        api_key: Secret::new(API_KEY),
        limiter: codewatch::http::rate_limit::RateLimiter::new(1e6, 1e6),
        allow_unbound: false,
    });
    state.public_getcode = false;
    state.issuing = codewatch::http::Issuing {
        code_ttl: ttl,
        delivery,
    };
    let producer = Server::start(codewatch::http::router(state)).await;
    let deliverer = Arc::new(Deliverer::new(store.clone(), channel, quick()));
    let settings = WorkerSettings {
        code_ttl: ttl,
        poll_backoff: Backoff::new(Duration::from_millis(20), Duration::from_millis(100)).unwrap(),
        ..WorkerSettings::default()
    };
    let worker = Worker::new(queues.main, queues.poison, store.clone(), settings)
        .with_delivery(deliverer.clone());
    Rig {
        db,
        store,
        producer,
        worker: Arc::new(worker),
        deliverer,
        _api: api,
        http: reqwest::Client::new(),
    }
}

impl Rig {
    /// Issues a code for `subject` to `destination`; the answer's JSON.
    async fn issue(&self, subject: &str, destination: Option<&str>) -> (u16, serde_json::Value) {
        let mut body = serde_json::json!({ "subject": subject });
        if let Some(d) = destination {
            body["destination"] = d.into();
        }
        let answer = self
            .http
            .post(self.producer.url("/api/v1/codes"))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.json().await.unwrap())
    }

    /// Runs the worker (poll loops and the delivery stage) until the token is dropped.
    fn run(&self) -> tokio_util::sync::DropGuard {
        let cancel = CancellationToken::new();
        tokio::spawn(self.worker.clone().run(cancel.clone()));
        cancel.drop_guard()
    }

    /// The row of the issuance `id`, if recorded.
    async fn row(&self, id: &str) -> Option<CodeRecord> {
        self.store
            .list(true, Utc::now(), 1000)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.issuance_id.as_str() == id)
    }

    /// The row of the issuance `id`, which must be recorded.
    async fn record(&self, id: &str) -> CodeRecord {
        self.row(id)
            .await
            .unwrap_or_else(|| panic!("no row for {id}"))
    }

    /// Waits until the row of `id` is activated; it.
    async fn activated(&self, id: &str) -> CodeRecord {
        common::eventually("the activation", Duration::from_secs(10), || self.row(id)).await
    }

    /// Waits until the delivery of `id` has ended (delivered or failed); the row.
    async fn delivery_ended(&self, id: &str) -> CodeRecord {
        common::eventually("the delivery to end", Duration::from_secs(15), || async {
            let record = self.row(id).await?;
            let d = record.delivery.as_ref()?;
            (d.delivered_at.is_some() || d.failed_at.is_some()).then_some(record)
        })
        .await
    }

    async fn check(&self, code: &str, subject: &str) -> u16 {
        self.http
            .post(self.producer.url("/api/v1/codes/check"))
            .bearer_auth(API_KEY)
            .json(&serde_json::json!({ "code": code, "subject": subject }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

fn webhook(server: &Server) -> Arc<dyn Channel> {
    Arc::new(
        WebhookChannel::new(
            server.url("/hook").parse().unwrap(),
            Secret::new(WEBHOOK_SECRET),
            Duration::from_secs(5),
        )
        .unwrap(),
    )
}

fn smtp(url: &str) -> Arc<dyn Channel> {
    Arc::new(
        SmtpChannel::new(
            &Secret::new(url),
            None,
            "codewatch <no-reply@example.com>",
            MailTemplate::default(),
            Duration::from_secs(1),
        )
        .unwrap(),
    )
}

async fn the_webhook_gets_each_code_once_signed_and_no_answer_carries_it(db: TestDb) {
    let (receiver, hook) = Receiver::start(&[]).await;
    let rig = rig(
        db,
        Duration::from_secs(60),
        DeliveryChannel::Webhook,
        webhook(&hook),
    )
    .await;
    let _running = rig.run();
    let (status, issued) = rig.issue("alice", Some("+441234567890")).await;
    assert_eq!(status, 201, "{issued}");
    assert!(
        issued.get("code").is_none(),
        "the answer carries the code: {issued}"
    );
    assert_eq!(issued["delivery"], "pending");
    let id = issued["issuance_id"].as_str().unwrap().to_owned();
    let issued_at: DateTime<Utc> = issued["issued_at"].as_str().unwrap().parse().unwrap();
    let expires_at: DateTime<Utc> = issued["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires_at - issued_at, chrono::Duration::seconds(60));

    let record = rig.delivery_ended(&id).await;
    let delivery = record.delivery.as_ref().unwrap();
    assert_eq!(delivery.state(), "delivered", "{delivery:?}");
    assert_eq!(delivery.attempts, 1);
    let calls = receiver.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (_, headers, body) = &calls[0];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["issuance_id"], id.as_str());
    assert_eq!(v["destination"], "+441234567890");
    assert_eq!(v["subject"], "alice");
    assert_eq!(v["code"], record.code.as_str());
    // The signature is Stripe's scheme: t=<unix>,v1=<hex HMAC of "t.body">, recent.
    let header = headers[SIGNATURE_HEADER].to_str().unwrap();
    let t: i64 = header
        .strip_prefix("t=")
        .and_then(|r| r.split(',').next())
        .and_then(|t| t.parse().ok())
        .unwrap();
    assert!((Utc::now().timestamp() - t).abs() < 30);
    assert_eq!(
        header,
        signature(&Secret::new(WEBHOOK_SECRET), t, body.as_bytes())
    );
    assert_ne!(
        header,
        signature(
            &Secret::new("another-secret-of-at-least-32-chars!!"),
            t,
            body.as_bytes()
        )
    );
    // The user types the code that arrived: it is valid.
    assert_eq!(rig.check(record.code.as_str(), "alice").await, 200);
    // Later rounds send nothing more.
    rig.deliverer.deliver_due(Utc::now()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.calls.lock().unwrap().len(), 1);
}

async fn a_failing_webhook_is_retried_and_a_refusing_one_given_up(db: TestDb) {
    let (receiver, hook) = Receiver::start(&[500, 503, 200, 400]).await;
    let rig = rig(
        db,
        Duration::from_secs(60),
        DeliveryChannel::Webhook,
        webhook(&hook),
    )
    .await;
    let _running = rig.run();
    let (_, first) = rig.issue("alice", Some("alice-phone")).await;
    let first = first["issuance_id"].as_str().unwrap().to_owned();
    let record = rig.delivery_ended(&first).await;
    let delivery = record.delivery.unwrap();
    assert_eq!(
        (delivery.state(), delivery.attempts),
        ("delivered", 3),
        "{delivery:?}"
    );
    assert_eq!(delivery.error, None, "a delivered code keeps no error");

    let (_, second) = rig.issue("bob", Some("bob-phone-number")).await;
    let second = second["issuance_id"].as_str().unwrap().to_owned();
    let record = rig.delivery_ended(&second).await;
    let delivery = record.delivery.unwrap();
    assert_eq!(
        (delivery.state(), delivery.attempts),
        ("failed", 1),
        "{delivery:?}"
    );
    assert_eq!(
        delivery.error.as_deref(),
        Some("webhook: webhook answered 400 Bad Request")
    );
    assert_eq!(receiver.calls.lock().unwrap().len(), 4);
}

async fn nothing_is_sent_after_expiry_redeem_or_revocation(db: TestDb) {
    // A receiver that is always busy: the code is retried until it expires, never after.
    let (receiver, hook) = Receiver::start(&[503; 100]).await;
    let busy = rig(
        db,
        Duration::from_secs(2),
        DeliveryChannel::Webhook,
        webhook(&hook),
    )
    .await;
    let _running = busy.run();
    let (_, issued) = busy.issue("alice", Some("alice-phone")).await;
    let id = issued["issuance_id"].as_str().unwrap().to_owned();
    let expires_at: DateTime<Utc> = issued["expires_at"].as_str().unwrap().parse().unwrap();
    let record = busy.delivery_ended(&id).await;
    let delivery = record.delivery.unwrap();
    assert_eq!(delivery.state(), "failed");
    let error = delivery.error.unwrap();
    assert!(error.contains("expire") && error.contains("503"), "{error}");
    let calls = receiver.calls.lock().unwrap().clone();
    assert!(calls.len() >= 2, "retried: {} calls", calls.len());
    assert!(
        calls.iter().all(|(at, _, _)| *at < expires_at),
        "a call after the expiry"
    );
    drop(_running);

    // Redeemed, or revoked, before the stage came round: never sent.
    let (quiet, hook) = Receiver::start(&[]).await;
    let rig2 = rig(
        common::sqlite().await,
        Duration::from_secs(60),
        DeliveryChannel::Webhook,
        webhook(&hook),
    )
    .await;
    let (_, a) = rig2.issue("alice", Some("alice-phone")).await;
    let (_, b) = rig2.issue("bob", Some("bob-phone")).await;
    rig2.worker.poll_once().await.unwrap();
    let a = rig2.activated(a["issuance_id"].as_str().unwrap()).await;
    let b = rig2.activated(b["issuance_id"].as_str().unwrap()).await;
    let redeemed = rig2
        .store
        .redeem(&a.code, a.subject.as_ref(), Utc::now(), None)
        .await
        .unwrap();
    assert!(redeemed.is_some());
    rig2.store.revoke(&b.code, Utc::now()).await.unwrap();
    let report = rig2.deliverer.deliver_due(Utc::now()).await.unwrap();
    assert_eq!((report.delivered, report.ended), (0, 2), "{report:?}");
    assert!(quiet.calls.lock().unwrap().is_empty());
    for (record, why) in [
        (a, "redeemed before delivery"),
        (b, "revoked before delivery"),
    ] {
        let delivery = rig2
            .record(record.issuance_id.as_str())
            .await
            .delivery
            .unwrap();
        assert_eq!(delivery.error.as_deref(), Some(why));
    }
}

mod sqlite {
    use super::*;

    #[tokio::test]
    async fn the_webhook_gets_each_code_once_signed_and_no_answer_carries_it() {
        super::the_webhook_gets_each_code_once_signed_and_no_answer_carries_it(
            common::sqlite().await,
        )
        .await;
    }

    #[tokio::test]
    async fn a_failing_webhook_is_retried_and_a_refusing_one_given_up() {
        super::a_failing_webhook_is_retried_and_a_refusing_one_given_up(common::sqlite().await)
            .await;
    }

    #[tokio::test]
    async fn nothing_is_sent_after_expiry_redeem_or_revocation() {
        super::nothing_is_sent_after_expiry_redeem_or_revocation(common::sqlite().await).await;
    }
}

mod postgres {
    use super::*;

    #[tokio::test]
    async fn the_webhook_gets_each_code_once_signed_and_no_answer_carries_it() {
        super::the_webhook_gets_each_code_once_signed_and_no_answer_carries_it(
            common::postgres().await,
        )
        .await;
    }

    #[tokio::test]
    async fn a_failing_webhook_is_retried_and_a_refusing_one_given_up() {
        super::a_failing_webhook_is_retried_and_a_refusing_one_given_up(common::postgres().await)
            .await;
    }

    #[tokio::test]
    async fn nothing_is_sent_after_expiry_redeem_or_revocation() {
        super::nothing_is_sent_after_expiry_redeem_or_revocation(common::postgres().await).await;
    }
}

/// A channel that holds its first send until released, and records every code it was given.
struct HeldChannel {
    sent: Mutex<Vec<String>>,
    first: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl Channel for HeldChannel {
    fn name(&self) -> &'static str {
        "held"
    }

    async fn deliver(
        &self,
        delivery: &codewatch::store::PendingDelivery,
    ) -> Result<(), codewatch::delivery::DeliveryError> {
        let first = {
            let mut sent = self.sent.lock().unwrap();
            sent.push(delivery.code.to_string());
            sent.len() == 1
        };
        if first {
            self.first.notify_one();
            self.release.notified().await;
        }
        Ok(())
    }
}

/// Two codes claimed in one round, sent one at a time: the second is revoked while the first send
/// hangs, and is then not sent (it was, before the stage looked again just before each send).
#[tokio::test]
async fn a_code_revoked_while_its_claim_waits_behind_another_send_is_not_sent() {
    let db = common::sqlite().await;
    let store = db.database.store();
    let now = Utc::now();
    let codes = ["ojE-161-pTv", "abC-162-dEf"];
    let activations: Vec<codewatch::store::Activation> = codes
        .iter()
        .map(|code| {
            codewatch::store::Activation::new(
                codewatch::domain::Issuance {
                    id: codewatch::domain::IssuanceId::random(),
                    code: Code::parse(code).unwrap(),
                    subject: Some(codewatch::domain::Subject::parse("alice").unwrap()),
                    destination: Some(
                        codewatch::domain::Destination::parse("alice-phone").unwrap(),
                    ),
                    issued_at: now,
                },
                now + chrono::Duration::seconds(60),
            )
        })
        .collect();
    store.activate(&activations, now).await.unwrap();
    let channel = Arc::new(HeldChannel {
        sent: Mutex::default(),
        first: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
    });
    let deliverer = Arc::new(Deliverer::new(
        store.clone(),
        channel.clone(),
        DeliverySettings {
            concurrency: 1,
            ..quick()
        },
    ));
    let round = tokio::spawn({
        let deliverer = deliverer.clone();
        async move { deliverer.deliver_due(Utc::now()).await.unwrap() }
    });
    channel.first.notified().await;
    let held = channel.sent.lock().unwrap()[0].clone();
    let other = codes.iter().find(|c| **c != held).unwrap();
    store
        .revoke(&Code::parse(other).unwrap(), Utc::now())
        .await
        .unwrap();
    channel.release.notify_one();
    let report = round.await.unwrap();
    assert_eq!(*channel.sent.lock().unwrap(), std::slice::from_ref(&held));
    assert_eq!((report.delivered, report.ended), (1, 1), "{report:?}");
    let revoked = store
        .list(true, Utc::now(), 10)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.code.as_str() == *other)
        .unwrap();
    assert_eq!(
        revoked.delivery.unwrap().error.as_deref(),
        Some("revoked before delivery")
    );
    drop(db);
}

/// A code claimed with under half a second left is given up without an attempt (the stage's
/// timeout would end past the expiry); before, computing that timeout panicked the round.
#[tokio::test]
async fn a_code_claimed_with_under_half_a_second_left_is_given_up_unsent() {
    let (receiver, hook) = Receiver::start(&[]).await;
    let db = common::sqlite().await;
    let store = db.database.store();
    let now = Utc::now();
    let issuance = codewatch::domain::Issuance {
        id: codewatch::domain::IssuanceId::random(),
        code: Code::parse("ojE-161-pTv").unwrap(),
        subject: Some(codewatch::domain::Subject::parse("alice").unwrap()),
        destination: Some(codewatch::domain::Destination::parse("alice-phone").unwrap()),
        issued_at: now,
    };
    let id = issuance.id.clone();
    // A quarter of a second left (an attempt needs half a second), on a stopped clock: the attempt
    // sees exactly that much left however long the machine takes to get there.
    let activation =
        codewatch::store::Activation::new(issuance, now + chrono::Duration::milliseconds(250));
    store.activate(&[activation], now).await.unwrap();
    let deliverer = Deliverer::new(store.clone(), webhook(&hook), quick())
        .with_clock(codewatch::clock::Clock::stopped(now));
    let report = deliverer.deliver_due(now).await.unwrap();
    assert_eq!((report.delivered, report.failed), (0, 1), "{report:?}");
    assert!(receiver.calls.lock().unwrap().is_empty());
    let record = store
        .list(true, now, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.issuance_id == id)
        .unwrap();
    let delivery = record.delivery.unwrap();
    assert_eq!(
        (delivery.state(), delivery.error.as_deref()),
        ("failed", Some("expired before delivery"))
    );
    drop(db);
}

#[tokio::test]
async fn the_issuing_call_asks_for_a_destination_exactly_when_codes_are_delivered() {
    let sink = SmtpSink::start();
    let mail = rig(
        common::sqlite().await,
        Duration::from_secs(60),
        DeliveryChannel::Smtp,
        smtp(&sink.url()),
    )
    .await;
    let (status, body) = mail.issue("alice", None).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("destination required"),
        "{body}"
    );
    let (status, body) = mail.issue("alice", Some("not a mail address")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("mail address"),
        "{body}"
    );
    let (status, body) = mail
        .issue("alice", Some("alice@example.com\r\nBcc: eve@example.com"))
        .await;
    assert_eq!(status, 400, "{body}");
    // The sample's public getcode is off: no answer may carry a code.
    let getcode = reqwest::get(mail.producer.url("/api/v1/getcode"))
        .await
        .unwrap();
    assert_eq!(getcode.status(), 404);

    let plain = rig(
        common::sqlite().await,
        Duration::from_secs(60),
        DeliveryChannel::None,
        smtp(&sink.url()),
    )
    .await;
    let (status, body) = plain.issue("alice", Some("alice@example.com")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("does not deliver"),
        "{body}"
    );
    let (status, body) = plain.issue("alice", None).await;
    assert_eq!(status, 201);
    assert!(
        Code::parse(body["code"].as_str().unwrap()).is_ok(),
        "{body}"
    );
}

#[tokio::test]
async fn a_mail_through_a_real_smtp_server_carries_the_code_to_the_user() {
    let sink = SmtpSink::start();
    let rig = rig(
        common::sqlite().await,
        Duration::from_secs(600),
        DeliveryChannel::Smtp,
        smtp(&sink.url()),
    )
    .await;
    let _running = rig.run();
    let (status, issued) = rig.issue("alice", Some("alice@example.com")).await;
    assert_eq!(status, 201, "{issued}");
    let id = issued["issuance_id"].as_str().unwrap().to_owned();
    let record = rig.delivery_ended(&id).await;
    assert_eq!(record.delivery.as_ref().unwrap().state(), "delivered");
    let mails = sink.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, ["alice@example.com"]);
    let data = &mails[0].data;
    assert!(data.contains("Subject: Your sign-in code"), "{data}");
    assert!(
        data.contains(&format!("Your sign-in code is {}", record.code)),
        "{data}"
    );
    assert!(data.contains("expires in 10 minutes"), "{data}");
    assert_eq!(rig.check(record.code.as_str(), "alice").await, 200);
}

/// One activated, undelivered code on a rig whose SMTP server is at `url`; its issuance id.
async fn one_code_for(url: &str) -> (Rig, String) {
    let rig = rig(
        common::sqlite().await,
        Duration::from_secs(600),
        DeliveryChannel::Smtp,
        smtp(url),
    )
    .await;
    let (_, issued) = rig.issue("alice", Some("alice.liddell@example.com")).await;
    let id = issued["issuance_id"].as_str().unwrap().to_owned();
    rig.worker.poll_once().await.unwrap();
    rig.activated(&id).await;
    (rig, id)
}

#[tokio::test]
async fn smtp_failures_are_retried_or_given_up_with_a_reason_that_hides_the_address() {
    // Down: retried.
    let (rig, id) = one_code_for(&common::smtp::nothing_listening()).await;
    let report = rig.deliverer.deliver_due(Utc::now()).await.unwrap();
    assert_eq!(report.retried, 1, "{report:?}");
    let delivery = rig.record(&id).await.delivery.unwrap();
    assert_eq!(delivery.state(), "pending");
    assert!(
        delivery
            .error
            .as_deref()
            .unwrap()
            .starts_with("smtp: SMTP:"),
        "{delivery:?}"
    );

    // Slow (answers after the attempt's 5 s timeout): retried.
    let slow = SmtpSink::start_with(&["--delay", "7"]);
    let (rig, id) = one_code_for(&slow.url()).await;
    let report = rig.deliverer.deliver_due(Utc::now()).await.unwrap();
    assert_eq!(report.retried, 1, "{report:?}");
    let error = rig.record(&id).await.delivery.unwrap().error.unwrap();
    assert!(
        error.contains("timed out") || error.contains("no answer in time"),
        "{error}"
    );

    // Busy (4xx): retried.
    let busy = SmtpSink::start_with(&["--refuse-data", "451 4.3.0 try again later"]);
    let (rig, _) = one_code_for(&busy.url()).await;
    let report = rig.deliverer.deliver_due(Utc::now()).await.unwrap();
    assert_eq!(report.retried, 1, "{report:?}");

    // Refused for good (5xx, the server echoing the address): given up, the address masked.
    let refusing = SmtpSink::start_with(&[
        "--refuse-rcpt",
        "550 5.1.1 <alice.liddell@example.com>: Recipient address rejected",
    ]);
    let (rig, id) = one_code_for(&refusing.url()).await;
    let report = rig.deliverer.deliver_due(Utc::now()).await.unwrap();
    assert_eq!(report.failed, 1, "{report:?}");
    let record = rig.record(&id).await;
    let error = record.delivery.unwrap().error.unwrap();
    assert!(
        error.contains("550") && error.contains("a***@example.com"),
        "{error}"
    );
    assert!(!error.contains("alice.liddell"), "{error}");
    assert!(!error.contains(record.code.as_str()), "{error}");
    assert!(refusing.mails().is_empty());
    drop(rig.db);
}
