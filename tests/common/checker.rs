//! The guarantees checker, in the spirit of Jepsen's: it records what the clients saw (every producer
//! answer, validity probes through the verification API, redeems) and every change of the codes table
//! (an audit trigger it installs, test-only, on SQLite and PostgreSQL alike), then checks the README's
//! promises against that record and prints them as one line of numbers.

use chrono::{DateTime, NaiveDateTime, Utc};
use codewatch::backends::Queues;
use codewatch::queue::SharedQueue;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SQLITE_AUDIT: &[&str] = &[
    "CREATE TABLE checker_audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, at TEXT NOT NULL,
        issuance_id TEXT NOT NULL, code TEXT NOT NULL, subject TEXT, expires_at TEXT NOT NULL,
        redeemed_at TEXT, revoked_at TEXT)",
    "CREATE TRIGGER checker_audit_insert AFTER INSERT ON valid_codes BEGIN
        INSERT INTO checker_audit (op, at, issuance_id, code, subject, expires_at, redeemed_at, revoked_at)
        VALUES ('I', strftime('%Y-%m-%d %H:%M:%f', 'now'), NEW.issuance_id, NEW.code, NEW.subject,
                NEW.expires_at, NEW.redeemed_at, NEW.revoked_at);
     END",
    "CREATE TRIGGER checker_audit_update AFTER UPDATE ON valid_codes BEGIN
        INSERT INTO checker_audit (op, at, issuance_id, code, subject, expires_at, redeemed_at, revoked_at)
        VALUES ('U', strftime('%Y-%m-%d %H:%M:%f', 'now'), NEW.issuance_id, NEW.code, NEW.subject,
                NEW.expires_at, NEW.redeemed_at, NEW.revoked_at);
     END",
    "CREATE TRIGGER checker_audit_delete AFTER DELETE ON valid_codes BEGIN
        INSERT INTO checker_audit (op, at, issuance_id, code, subject, expires_at, redeemed_at, revoked_at)
        VALUES ('D', strftime('%Y-%m-%d %H:%M:%f', 'now'), OLD.issuance_id, OLD.code, OLD.subject,
                OLD.expires_at, OLD.redeemed_at, OLD.revoked_at);
     END",
];

const POSTGRES_AUDIT: &[&str] = &[
    "CREATE TABLE checker_audit (
        seq bigserial PRIMARY KEY, op text NOT NULL, at timestamptz NOT NULL,
        issuance_id text NOT NULL, code text NOT NULL, subject text, expires_at timestamptz NOT NULL,
        redeemed_at timestamptz, revoked_at timestamptz)",
    "CREATE FUNCTION checker_audit() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO checker_audit (op, at, issuance_id, code, subject, expires_at, redeemed_at, revoked_at)
            VALUES ('D', clock_timestamp(), OLD.issuance_id, OLD.code, OLD.subject, OLD.expires_at,
                    OLD.redeemed_at, OLD.revoked_at);
            RETURN OLD;
        END IF;
        INSERT INTO checker_audit (op, at, issuance_id, code, subject, expires_at, redeemed_at, revoked_at)
        VALUES (left(TG_OP, 1), clock_timestamp(), NEW.issuance_id, NEW.code, NEW.subject, NEW.expires_at,
                NEW.redeemed_at, NEW.revoked_at);
        RETURN NEW;
     END $$",
    "CREATE TRIGGER checker_audit AFTER INSERT OR UPDATE OR DELETE ON valid_codes
     FOR EACH ROW EXECUTE FUNCTION checker_audit()",
];

/// The PostgreSQL `application_name` of the checker's own connections, which fault injection spares.
pub const CHECKER_APPLICATION: &str = "codewatch-checker";

/// The audited database.
enum AuditDb {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// One change of a `valid_codes` row, as the trigger saw it.
#[derive(Clone, Debug)]
struct Change {
    op: char,
    at: DateTime<Utc>,
    issuance_id: String,
    code: String,
    expires_at: DateTime<Utc>,
    ended: bool,
}

impl Change {
    /// Until when this version of the row makes the code valid (`at` itself: not at all).
    fn valid_until(&self) -> DateTime<Utc> {
        if self.op == 'D' || self.ended {
            self.at
        } else {
            self.expires_at.max(self.at)
        }
    }
}

fn sqlite_time(text: &str) -> DateTime<Utc> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .unwrap_or_else(|e| panic!("audit time {text:?}: {e}"))
        .and_utc()
}

impl AuditDb {
    async fn open(url: &str) -> Self {
        if url.starts_with("sqlite:") {
            Self::Sqlite(sqlx::SqlitePool::connect(url).await.unwrap())
        } else {
            let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
            Self::Postgres(
                sqlx::PgPool::connect_with(options.application_name(CHECKER_APPLICATION))
                    .await
                    .unwrap(),
            )
        }
    }

    async fn install(&self) {
        match self {
            Self::Sqlite(pool) => {
                for s in SQLITE_AUDIT {
                    sqlx::query(*s).execute(pool).await.unwrap();
                }
            }
            Self::Postgres(pool) => {
                for s in POSTGRES_AUDIT {
                    sqlx::query(*s).execute(pool).await.unwrap();
                }
            }
        }
    }

    async fn changes(&self) -> Vec<Change> {
        let select = "SELECT op, at, issuance_id, code, expires_at, redeemed_at IS NOT NULL OR revoked_at IS NOT NULL
                      FROM checker_audit ORDER BY seq";
        match self {
            Self::Sqlite(pool) => {
                let rows: Vec<AuditRow<String>> =
                    sqlx::query_as(select).fetch_all(pool).await.unwrap();
                rows.into_iter()
                    .map(|r| change(r, |t| sqlite_time(&t)))
                    .collect()
            }
            Self::Postgres(pool) => {
                let rows: Vec<AuditRow<DateTime<Utc>>> =
                    sqlx::query_as(select).fetch_all(pool).await.unwrap();
                rows.into_iter().map(|r| change(r, |t| t)).collect()
            }
        }
    }
}

/// An audit row (op, at, issuance id, code, expires at, ended) with times as the dialect stores them.
type AuditRow<T> = (String, T, String, String, T, bool);

fn change<T>(
    (op, at, issuance_id, code, expires_at, ended): AuditRow<T>,
    time: impl Fn(T) -> DateTime<Utc>,
) -> Change {
    Change {
        op: op.chars().next().unwrap_or('?'),
        at: time(at),
        issuance_id,
        code,
        expires_at: time(expires_at),
        ended,
    }
}

/// A code a client was handed, and when it must stop being valid.
#[derive(Clone, Debug)]
struct Handed {
    code: String,
    subject: Option<String>,
    expiry: DateTime<Utc>,
    /// Whether it must become valid before its expiry (a foreign message may be meant to fail).
    must_become_valid: bool,
}

/// One validity probe: what the verification API said for a code, and when the request started.
#[derive(Clone, Debug)]
struct Probe {
    code: String,
    started: DateTime<Utc>,
    valid: bool,
}

#[derive(Default)]
struct Record {
    /// Codes answered 200 by a producer.
    issued: Vec<Handed>,
    /// Producer calls answered with an error that hands out no code (number API down, rate limited).
    refused: usize,
    /// Producer calls whose outcome is unknown (the queue failed or the answer was lost): the message
    /// may or may not be on the queue, so such a code may become valid without anybody holding it.
    indeterminate: usize,
    /// Codes carried by injected foreign activations, with their bounded expiry.
    foreign: Vec<Handed>,
    /// Codes a scenario ended on purpose before they could become valid (revoked while queued, or
    /// issued to a backlog the worker reaches after their expiry).
    never_valid_ok: HashSet<String>,
    probes: Vec<Probe>,
    /// Redeem answers per code.
    redeems: HashMap<String, Vec<u16>>,
    /// Malformed messages injected, which must all end on the poison queue.
    bad_injected: usize,
    /// The bodies of every error answer, checked for secrets.
    error_bodies: Vec<String>,
    /// Issuances answered "delivery pending" (no code in the answer): their subject and expiry.
    pending_delivery: HashMap<String, (Option<String>, DateTime<Utc>)>,
    /// Deliveries seen per issuance.
    deliveries: HashMap<String, usize>,
    /// The code of each delivered issuance (a delivery may arrive before its issuing answer).
    delivered_codes: HashMap<String, String>,
    /// Deliveries beyond one the scenario allows for any issuance (1: a worker is killed between
    /// sending and recording deliveries).
    allowed_extra_deliveries: usize,
    /// Every error answer is final: a queue error or a passed deadline hands out no code either (the
    /// embedded queue takes an abandoned send back before it commits).
    errors_are_final: bool,
}

impl Record {
    /// Hands out the code of `issuance_id` once both its issuing answer ("pending") and its first
    /// delivery are in, in either order: a fast worker may deliver before the answer arrives.
    fn hand_out_delivered(&mut self, issuance_id: &str) {
        let (Some((subject, expiry)), Some(code)) = (
            self.pending_delivery.get(issuance_id).cloned(),
            self.delivered_codes.remove(issuance_id),
        ) else {
            return;
        };
        self.issued.push(Handed {
            code,
            subject,
            expiry,
            must_become_valid: true,
        });
    }
}

/// What a scenario came to: every invariant as a number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub issued: usize,
    pub refused: usize,
    pub indeterminate: usize,
    pub foreign: usize,
    pub probes: usize,
    pub changes: usize,
    /// The longest time from a code's issue to its first valid row, in ms (information, no bound).
    pub max_activation_lag_ms: i64,
    /// Codes answered 200 that never became valid before their expiry.
    pub lost: usize,
    /// Valid codes that no producer call issued and no injected message carried (beyond the
    /// indeterminate calls).
    pub unexpected: usize,
    /// Issuances recorded more than once, or codes with more than one issuance.
    pub duplicates: usize,
    /// Codes valid (in the table, or to a probe) at or after their expiry.
    pub valid_after_expiry: usize,
    /// Codes valid again after they had ended (expired, redeemed, revoked or deleted).
    pub resurrected: usize,
    /// Codes redeemed successfully (once or more).
    pub redeemed: usize,
    /// Codes redeemed successfully more than once.
    pub double_redeem: usize,
    /// Visible messages left on the main queue when the scenario ended.
    pub visible_left: usize,
    /// Messages on the poison queues (each counted once, however many copies: a message set aside
    /// whose lease ran out before its delete is set aside again, as at-least-once delivery allows),
    /// and how many bad ones were injected.
    pub poisoned: usize,
    pub bad_injected: usize,
    /// Issuances answered "delivery pending" that were never delivered.
    pub undelivered: usize,
    /// Deliveries beyond the first of an issuance, in all; the most any one issuance had beyond its
    /// first, and how many the scenario allows each.
    pub extra_deliveries: usize,
    pub most_extra_deliveries: usize,
    pub allowed_extra_deliveries: usize,
}

impl Verdict {
    /// Whether every promise held.
    pub fn holds(&self) -> bool {
        self.lost == 0
            && self.unexpected == 0
            && self.duplicates == 0
            && self.valid_after_expiry == 0
            && self.resurrected == 0
            && self.double_redeem == 0
            && self.visible_left == 0
            && self.poisoned == self.bad_injected
            && self.undelivered == 0
            && self.most_extra_deliveries <= self.allowed_extra_deliveries
    }

    /// Panics, with the numbers, unless every promise held.
    pub fn assert_holds(&self, scenario: &str) {
        println!("{scenario}: {self}");
        assert!(self.holds(), "{scenario}: a guarantee broke: {self}");
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "issued={} refused={} indeterminate={} foreign={} probes={} changes={} max_lag_ms={} | lost={} unexpected={} \
             duplicates={} valid_after_expiry={} resurrected={} redeemed={} double_redeem={} visible_left={} poisoned={}/{} \
             undelivered={} extra_deliveries={} (most for one: {}/{})",
            self.issued,
            self.refused,
            self.indeterminate,
            self.foreign,
            self.probes,
            self.changes,
            self.max_activation_lag_ms,
            self.lost,
            self.unexpected,
            self.duplicates,
            self.valid_after_expiry,
            self.resurrected,
            self.redeemed,
            self.double_redeem,
            self.visible_left,
            self.poisoned,
            self.bad_injected,
            self.undelivered,
            self.extra_deliveries,
            self.most_extra_deliveries,
            self.allowed_extra_deliveries
        )
    }
}

/// The checker for one scenario: one database, one code TTL.
pub struct Checker {
    db: AuditDb,
    ttl: chrono::Duration,
    http: reqwest::Client,
    record: Mutex<Record>,
}

/// A producer answer the checker saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200: the code handed out.
    Code(String),
    /// An error that hands out nothing and queued nothing.
    Refused(u16),
    /// The outcome is unknown (a queue error, a timeout, a lost answer).
    Indeterminate,
    /// 201 without a code: codewatch delivers it (the issuance id).
    Pending(String),
}

impl Checker {
    /// Installs the audit trigger in the database at `url` (already migrated).
    pub async fn install(url: &str, ttl: Duration) -> Arc<Self> {
        let db = AuditDb::open(url).await;
        db.install().await;
        Arc::new(Self {
            db,
            ttl: chrono::Duration::from_std(ttl).unwrap(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            record: Mutex::new(Record::default()),
        })
    }

    /// From now on, a producer's error answer means no code at all: none may become valid later.
    pub fn errors_are_final(&self) {
        self.record.lock().unwrap().errors_are_final = true;
    }

    /// Asks the producer at `base` (`http://host:port`) for an unbound code (the public getcode) and
    /// records the answer.
    pub async fn get_code(&self, base: &str) -> Answer {
        let request = self.http.get(format!("{base}/api/v1/getcode"));
        self.issued(request, None).await
    }

    /// Asks the producer's sign-in API at `base` for a code bound to `subject`, with the bearer `key`,
    /// and records the answer.
    pub async fn get_code_for(&self, base: &str, key: &str, subject: &str) -> Answer {
        let request = self
            .http
            .post(format!("{base}/api/v1/codes"))
            .bearer_auth(key)
            .json(&serde_json::json!({ "subject": subject }));
        self.issued(request, Some(subject)).await
    }

    /// [`Checker::get_code_for`] with a destination, from a producer that delivers codes: the answer
    /// names the issuance, and the code becomes known when it is [delivered](Checker::delivered).
    pub async fn get_code_to(
        &self,
        base: &str,
        key: &str,
        subject: &str,
        destination: &str,
    ) -> Answer {
        let request = self
            .http
            .post(format!("{base}/api/v1/codes"))
            .bearer_auth(key)
            .json(&serde_json::json!({ "subject": subject, "destination": destination }));
        self.issued(request, Some(subject)).await
    }

    /// Records a delivery of `code` for `issuance_id` (a receiver saw it); the first makes the code
    /// one the checker knows was handed out.
    pub fn delivered(&self, issuance_id: &str, code: &str) {
        let mut record = self.record.lock().unwrap();
        let count = record.deliveries.entry(issuance_id.to_owned()).or_default();
        *count += 1;
        if *count == 1 {
            record
                .delivered_codes
                .insert(issuance_id.to_owned(), code.to_owned());
            record.hand_out_delivered(issuance_id);
        }
    }

    /// Allows `n` deliveries beyond the first of each issuance in this scenario.
    pub fn allow_extra_deliveries(&self, n: usize) {
        self.record.lock().unwrap().allowed_extra_deliveries = n;
    }

    /// Sends an issuing request and records its answer.
    async fn issued(&self, request: reqwest::RequestBuilder, subject: Option<&str>) -> Answer {
        let answer = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                let answer = match status {
                    201 if body.contains("\"delivery\":\"pending\"") => {
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                        assert!(
                            v.get("code").is_none(),
                            "a delivered code in the answer: {body}"
                        );
                        let id = v["issuance_id"].as_str().unwrap().to_owned();
                        let expiry = v["expires_at"].as_str().unwrap().parse().unwrap();
                        let mut record = self.record.lock().unwrap();
                        record
                            .pending_delivery
                            .insert(id.clone(), (subject.map(str::to_owned), expiry));
                        record.hand_out_delivered(&id);
                        Answer::Pending(id)
                    }
                    200 | 201 => {
                        let v: serde_json::Value = serde_json::from_str(&body)
                            .unwrap_or_else(|e| panic!("getcode answered {body:?}: {e}"));
                        let code = v["code"].as_str().unwrap().to_owned();
                        let issued_at =
                            codewatch::timestamp::parse(v["timestamp"].as_str().unwrap()).unwrap();
                        self.record.lock().unwrap().issued.push(Handed {
                            code: code.clone(),
                            subject: subject.map(str::to_owned),
                            expiry: issued_at + self.ttl,
                            must_become_valid: true,
                        });
                        Answer::Code(code)
                    }
                    503 if (body.contains("queue_unavailable")
                        || body.contains("request_timeout"))
                        && !self.record.lock().unwrap().errors_are_final =>
                    {
                        Answer::Indeterminate
                    }
                    status => Answer::Refused(status),
                };
                if !matches!(status, 200 | 201) {
                    self.record.lock().unwrap().error_bodies.push(body);
                }
                answer
            }
            Err(_) => Answer::Indeterminate,
        };
        let mut record = self.record.lock().unwrap();
        match answer {
            Answer::Refused(_) => record.refused += 1,
            Answer::Indeterminate => record.indeterminate += 1,
            Answer::Code(_) | Answer::Pending(_) => {}
        }
        answer
    }

    /// Asserts that no error answer the producer gave held any of `canaries`.
    pub fn assert_no_secret_in_answers(&self, canaries: &[&str]) {
        let record = self.record.lock().unwrap();
        for body in &record.error_bodies {
            for canary in canaries {
                assert!(
                    !body.contains(canary),
                    "an error answer holds a secret: {body}"
                );
            }
        }
    }

    /// Records a foreign activation of `code` (bound to `subject`), valid until `expiry` at the latest;
    /// `must_become_valid`: it is one the worker must accept (not one dated too far ahead or stale).
    pub fn foreign(
        &self,
        code: &str,
        subject: Option<&str>,
        expiry: DateTime<Utc>,
        must_become_valid: bool,
    ) {
        self.record.lock().unwrap().foreign.push(Handed {
            code: code.to_owned(),
            subject: subject.map(str::to_owned),
            expiry,
            must_become_valid,
        });
    }

    /// Records `n` malformed messages injected: each must end on the poison queue.
    pub fn bad(&self, n: usize) {
        self.record.lock().unwrap().bad_injected += n;
    }

    /// Records that the scenario ended `code` on purpose before it could become valid.
    pub fn never_valid_ok(&self, code: &str) {
        self.record
            .lock()
            .unwrap()
            .never_valid_ok
            .insert(code.to_owned());
    }

    /// Every code handed out or injected so far.
    pub fn codes(&self) -> Vec<(String, Option<String>)> {
        let record = self.record.lock().unwrap();
        record
            .issued
            .iter()
            .chain(&record.foreign)
            .map(|h| (h.code.clone(), h.subject.clone()))
            .collect()
    }

    /// The latest expiry of a code handed out or injected so far that must become valid.
    pub fn last_expiry(&self) -> Option<DateTime<Utc>> {
        let record = self.record.lock().unwrap();
        record
            .issued
            .iter()
            .chain(&record.foreign)
            .filter(|h| h.must_become_valid && !record.never_valid_ok.contains(&h.code))
            .map(|h| h.expiry)
            .max()
    }

    /// The earliest expiry of a code handed out or injected so far.
    pub fn first_expiry(&self) -> Option<DateTime<Utc>> {
        let record = self.record.lock().unwrap();
        record
            .issued
            .iter()
            .chain(&record.foreign)
            .map(|h| h.expiry)
            .min()
    }

    /// Whether the verification API at `base` says `code` (bound to `subject`, if any) is valid now:
    /// `None` when it gave no answer either way.
    pub async fn is_valid(
        &self,
        base: &str,
        key: &str,
        code: &str,
        subject: Option<&str>,
    ) -> Option<bool> {
        let body = match subject {
            Some(s) => serde_json::json!({ "code": code, "subject": s }),
            None => serde_json::json!({ "code": code }),
        };
        let response = self
            .http
            .post(format!("{base}/api/v1/codes/check"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .ok()?;
        match response.status().as_u16() {
            200 => Some(true),
            404 => Some(false),
            _ => None,
        }
    }

    /// Checks every known code once through the verification API at `base` (no code checked twice at
    /// once, so each code's probes are ordered).
    pub async fn probe_all(&self, base: &str, key: &str) {
        let codes = self.codes();
        let probes: Vec<Probe> = futures::stream::iter(codes)
            .map(|(code, subject)| async move {
                let started = Utc::now();
                let valid = self.is_valid(base, key, &code, subject.as_deref()).await?;
                Some(Probe {
                    code,
                    started,
                    valid,
                })
            })
            .buffer_unordered(4)
            .filter_map(|p| async move { p })
            .collect()
            .await;
        self.record.lock().unwrap().probes.extend(probes);
    }

    /// Probes every known code, round after round, until the returned token is cancelled.
    pub fn spawn_prober(self: &Arc<Self>, base: String, key: String) -> ProberGuard {
        let cancel = CancellationToken::new();
        let (checker, stop) = (self.clone(), cancel.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                checker.probe_all(&base, &key).await;
                // Each round probes every code: with dozens of codes that is most of a scenario's
                // CPU, and the database's change log sees every write between rounds anyway.
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        });
        ProberGuard(cancel)
    }

    /// Redeems `code` for `subject` through the verification API at `base`; records the status.
    pub async fn redeem(&self, base: &str, key: &str, code: &str, subject: &str) -> u16 {
        let request = self
            .http
            .post(format!("{base}/api/v1/codes/redeem"))
            .bearer_auth(key)
            .json(&serde_json::json!({ "code": code, "subject": subject }));
        let status = match request.send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        self.record
            .lock()
            .unwrap()
            .redeems
            .entry(code.to_owned())
            .or_default()
            .push(status);
        status
    }

    /// Waits up to `limit` for every shard's main queue to hold no visible message.
    pub async fn wait_drained(&self, shards: &[Queues], limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.visible_left(shards).await == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Visible messages left on the shards' main queues (at most 32 counted per shard).
    async fn visible_left(&self, shards: &[Queues]) -> usize {
        let mut left = 0usize;
        for queues in shards {
            left = left.saturating_add(
                queues
                    .main
                    .peek(32)
                    .await
                    .map(|v| v.len())
                    .unwrap_or(usize::MAX),
            );
        }
        left
    }

    /// Checks every promise against the record, the audit trail and the queues of every shard.
    pub async fn verdict(&self, shards: &[Queues]) -> Verdict {
        let visible_left = self.visible_left(shards).await;
        let mut poisoned = 0usize;
        for queues in shards {
            poisoned = poisoned.saturating_add(poisoned_messages(&queues.poison).await);
        }
        let changes = self.db.changes().await;
        let record = self.record.lock().unwrap();
        judge(&record, &changes, self.ttl, visible_left, poisoned)
    }
}

/// The distinct messages on a poison queue: copies of one body count once (every bad message a
/// scenario injects has a body of its own). More than a peek's 32 copies counts as too many. A call
/// that fails is tried again for a few seconds (Azurite shared by four scenarios has failed a peek
/// once), each error printed.
pub async fn poisoned_messages(poison: &SharedQueue) -> usize {
    let limit = Duration::from_secs(3);
    let len = super::eventually("the poison queue's length", limit, || async {
        answered(poison, poison.approximate_len().await)
    })
    .await;
    if len == 0 {
        return 0;
    }
    let peeked = super::eventually("the poison queue's messages", limit, || async {
        answered(poison, poison.peek(32).await)
    })
    .await;
    if peeked.len() >= 32 {
        return usize::MAX;
    }
    peeked
        .iter()
        .map(|m| m.body.as_str())
        .collect::<HashSet<_>>()
        .len()
}

/// The value of a call to `queue`, or `None` after printing its error.
fn answered<T>(queue: &SharedQueue, result: Result<T, codewatch::queue::QueueError>) -> Option<T> {
    result
        .inspect_err(|e| eprintln!("{}: {e}; trying again", queue.name()))
        .ok()
}

/// Stops the prober when dropped.
pub struct ProberGuard(CancellationToken);

impl Drop for ProberGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn judge(
    record: &Record,
    changes: &[Change],
    ttl: chrono::Duration,
    visible_left: usize,
    poisoned: usize,
) -> Verdict {
    // Known codes and their expiry: the earliest expiry wins if a code was handed out twice.
    let mut expiry: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for h in record.issued.iter().chain(&record.foreign) {
        expiry
            .entry(&h.code)
            .and_modify(|e| *e = (*e).min(h.expiry))
            .or_insert(h.expiry);
    }
    let mut by_issuance: HashMap<&str, Vec<&Change>> = HashMap::new();
    for c in changes {
        by_issuance.entry(&c.issuance_id).or_default().push(c);
    }

    let mut valid_before_expiry: HashSet<&str> = HashSet::new();
    let mut first_valid: HashMap<&str, DateTime<Utc>> = HashMap::new();
    let mut valid_after: HashSet<&str> = HashSet::new();
    let mut resurrected: HashSet<&str> = HashSet::new();
    let mut unexpected: HashSet<&str> = HashSet::new();
    let mut duplicates = 0;
    let mut issuances_per_code: HashMap<&str, usize> = HashMap::new();
    for versions in by_issuance.values() {
        let code = versions[0].code.as_str();
        *issuances_per_code.entry(code).or_default() += 1;
        if versions.iter().filter(|v| v.op == 'I').count() > 1 {
            duplicates += 1;
        }
        let known = expiry.get(code).copied();
        let mut ended: Option<DateTime<Utc>> = None;
        for (i, v) in versions.iter().enumerate() {
            let next = versions.get(i + 1).map(|n| n.at);
            let until = v.valid_until();
            let window_end = next.map_or(until, |n| n.min(until));
            let valid_here = window_end > v.at;
            if valid_here {
                if ended.is_some_and(|e| e <= v.at) {
                    resurrected.insert(code);
                }
                match known {
                    None => {
                        unexpected.insert(code);
                    }
                    Some(x) => {
                        if v.at < x {
                            valid_before_expiry.insert(code);
                            first_valid
                                .entry(code)
                                .and_modify(|t| *t = (*t).min(v.at))
                                .or_insert(v.at);
                        }
                        if window_end > x {
                            valid_after.insert(code);
                        }
                    }
                }
            }
            // The moment this version stops the code's validity, if no later change comes first.
            if next.is_none_or(|n| until < n) {
                ended = Some(ended.map_or(until, |e| e.min(until)));
            }
        }
    }
    duplicates += issuances_per_code.values().filter(|n| **n > 1).count();

    // Probes: valid at or after expiry, and valid again after having been seen valid then invalid.
    let mut by_code: HashMap<&str, Vec<&Probe>> = HashMap::new();
    for p in &record.probes {
        by_code.entry(&p.code).or_default().push(p);
    }
    for (code, probes) in by_code.iter_mut() {
        probes.sort_by_key(|p| p.started);
        if let Some(x) = expiry.get(code)
            && probes.iter().any(|p| p.valid && p.started >= *x)
        {
            valid_after.insert(code);
        }
        let mut seen_valid = false;
        let mut seen_end = false;
        for p in probes.iter() {
            match (p.valid, seen_valid, seen_end) {
                (true, _, true) => {
                    resurrected.insert(code);
                }
                (true, _, _) => seen_valid = true,
                (false, true, _) => seen_end = true,
                _ => {}
            }
        }
    }

    let lost = record
        .issued
        .iter()
        .chain(&record.foreign)
        .filter(|h| h.must_become_valid)
        .filter(|h| !valid_before_expiry.contains(h.code.as_str()))
        .filter(|h| !record.never_valid_ok.contains(&h.code))
        .count();
    let double_redeem = record
        .redeems
        .values()
        .filter(|statuses| statuses.iter().filter(|s| **s == 200).count() > 1)
        .count();
    let max_activation_lag_ms = record
        .issued
        .iter()
        .filter_map(|h| {
            let issued_at = h.expiry - ttl;
            first_valid
                .get(h.code.as_str())
                .map(|t| (*t - issued_at).num_milliseconds())
        })
        .max()
        .unwrap_or(0);
    Verdict {
        max_activation_lag_ms,
        issued: record.issued.len(),
        refused: record.refused,
        indeterminate: record.indeterminate,
        foreign: record.foreign.len(),
        probes: record.probes.len(),
        changes: changes.len(),
        lost,
        unexpected: unexpected.len().saturating_sub(record.indeterminate),
        duplicates,
        valid_after_expiry: valid_after.len(),
        resurrected: resurrected.len(),
        redeemed: record
            .redeems
            .values()
            .filter(|statuses| statuses.contains(&200))
            .count(),
        double_redeem,
        visible_left,
        poisoned,
        bad_injected: record.bad_injected,
        undelivered: record
            .pending_delivery
            .keys()
            .filter(|id| !record.deliveries.contains_key(*id))
            .count(),
        extra_deliveries: record.deliveries.values().map(|n| n - 1).sum(),
        most_extra_deliveries: record.deliveries.values().map(|n| n - 1).max().unwrap_or(0),
        allowed_extra_deliveries: record.allowed_extra_deliveries,
    }
}

/// Asserts that no log holds a panic or an unredacted SAS signature, and none of `canaries` (secret
/// values) appears in any of `texts` (logs, error bodies, command lines); says which and where.
pub fn assert_clean(texts: &[(&str, &str)], canaries: &[&str]) {
    for (name, text) in texts {
        assert!(!text.contains("panicked"), "{name} holds a panic:\n{text}");
        // A SAS signature appears only redacted (the SDK's logging policy writes `sig=REDACTED`).
        for (at, _) in text.match_indices("sig=") {
            assert!(
                text[at + 4..].starts_with("REDACTED"),
                "{name} holds a SAS signature: {}",
                &text[at..text.len().min(at + 60)]
            );
        }
        for canary in canaries {
            assert!(
                !text.contains(canary),
                "{name} holds the secret {canary:?}:\n{text}"
            );
        }
    }
}
