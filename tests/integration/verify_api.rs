//! The sign-in service's API on `serve`: issuing for a subject, check and redeem by POST, idempotent
//! redeems, subjects, throttling, auth, rate limit, headers, and the OpenAPI documents. Against
//! Azurite, on both SQLite and PostgreSQL.

use crate::common;

use codewatch::domain::Subject;
use codewatch::verify::Throttle;
use codewatch::worker::{PollOutcome, Worker, WorkerSettings};
use common::{Server, TestDb};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

const KEY: &str = "fn-key";
const API_KEY: &str = "verify-key-for-tests";

struct Rig {
    db: TestDb,
    worker: Worker,
    app: Server,
    _api: Server,
    http: reqwest::Client,
}

async fn rig(db: TestDb, ttl_secs: u64, throttle: Throttle, rate: (f64, f64)) -> Rig {
    rig_with(db, ttl_secs, throttle, rate, true).await
}

/// A rig whose producer answers checks without a subject only if `allow_unbound`.
async fn rig_with(
    db: TestDb,
    ttl_secs: u64,
    throttle: Throttle,
    rate: (f64, f64),
    allow_unbound: bool,
) -> Rig {
    let queues = common::azure_queues().await;
    let api = common::number_api(KEY).await;
    let store = db.database.store();
    let app = common::producer_with_verification(
        &api.url("/api/RandomNumber"),
        KEY,
        queues.main.clone(),
        store.clone(),
        API_KEY,
        throttle,
        rate,
        codewatch::clock::Clock::system(),
        allow_unbound,
    )
    .await;
    let settings = WorkerSettings {
        code_ttl: Duration::from_secs(ttl_secs),
        ..WorkerSettings::default()
    };
    let worker = Worker::new(queues.main, queues.poison, store, settings);
    Rig {
        db,
        worker,
        app,
        _api: api,
        http: reqwest::Client::new(),
    }
}

async fn default_rig(db: TestDb) -> Rig {
    rig(db, 60, Throttle::default(), (1000.0, 1000.0)).await
}

impl Rig {
    /// Issues a code and lets the worker activate it: bound to `subject` through the sign-in API, or
    /// unbound through the public getcode.
    async fn issue(&self, subject: Option<&str>) -> String {
        let request = match subject {
            Some(s) => self
                .http
                .post(self.app.url("/api/v1/codes"))
                .bearer_auth(API_KEY)
                .json(&serde_json::json!({ "subject": s })),
            None => self.http.get(self.app.url("/api/v1/getcode")),
        };
        let body: Value = request.send().await.unwrap().json().await.unwrap();
        while let PollOutcome::Processed(_) = self.worker.poll_once().await.unwrap() {}
        body["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no code issued: {body}"))
            .to_owned()
    }

    async fn check(&self, code: &str, subject: Option<&str>) -> (StatusCode, Value) {
        self.check_on(&self.app, code, subject).await
    }

    /// A check through `app` (a producer on this rig's database, perhaps with its clock ahead).
    async fn check_on(
        &self,
        app: &Server,
        code: &str,
        subject: Option<&str>,
    ) -> (StatusCode, Value) {
        let (status, _, body) = self
            .call_on(app, "/api/v1/codes/check", code, subject, None)
            .await;
        (status, body)
    }

    async fn redeem(&self, code: &str, subject: Option<&str>) -> (StatusCode, Value) {
        let (status, _, body) = self.redeem_keyed(code, subject, None).await;
        (status, body)
    }

    /// A redeem with an `Idempotency-Key`, if given; with the answer's headers.
    async fn redeem_keyed(
        &self,
        code: &str,
        subject: Option<&str>,
        key: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.call_on(&self.app, "/api/v1/codes/redeem", code, subject, key)
            .await
    }

    /// POSTs `{"code", "subject"}` to `path` on `app` with the bearer key (and an idempotency key).
    async fn call_on(
        &self,
        app: &Server,
        path: &str,
        code: &str,
        subject: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .http
            .post(app.url(path))
            .bearer_auth(API_KEY)
            .json(&attempt(code, subject));
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        (
            status,
            headers,
            response.json().await.unwrap_or(Value::Null),
        )
    }
}

/// The body of a check or redeem.
fn attempt(code: &str, subject: Option<&str>) -> Value {
    match subject {
        Some(s) => serde_json::json!({ "code": code, "subject": s }),
        None => serde_json::json!({ "code": code }),
    }
}

fn not_valid() -> Value {
    serde_json::json!({ "valid": false })
}

async fn a_bound_code_checks_valid_only_for_its_subject(db: TestDb) {
    let rig = default_rig(db).await;
    let code = rig.issue(Some("alice")).await;
    let (status, body) = rig.check(&code, Some("alice")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["valid"].as_bool(), body["subject"].as_str()),
        (Some(true), Some("alice"))
    );
    assert!(
        body["issuance_id"].is_string() && !body.to_string().contains(&code),
        "the answer names the issuance, not the code: {body}"
    );
    let issued = chrono::DateTime::parse_from_rfc3339(body["issued_at"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - issued).num_seconds(), 60);
    assert_eq!(
        rig.check(&code, Some("bob")).await,
        (StatusCode::NOT_FOUND, not_valid())
    );
    assert_eq!(
        rig.check(&code, None).await,
        (StatusCode::NOT_FOUND, not_valid())
    );
}

async fn wrong_expired_and_redeemed_codes_all_get_the_same_answer(db: TestDb) {
    let rig = rig(db, 1, Throttle::default(), (1000.0, 1000.0)).await;
    let expired = rig.issue(None).await;
    let redeemed = rig.issue(None).await;
    assert_eq!(rig.redeem(&redeemed, None).await.0, 200);
    // Checked as of two seconds later, past the 1 s TTL. No poll has processed the expiry messages:
    // validity does not wait for the worker.
    let later = Verified::ahead(&rig, Throttle::default(), 2).await;
    let answers = [
        rig.check_on(&later.app, "Wro-123-Ngg", None).await,
        rig.check_on(&later.app, &expired, None).await,
        rig.check_on(&later.app, &redeemed, None).await,
    ];
    for answer in answers {
        assert_eq!(answer, (StatusCode::NOT_FOUND, not_valid()));
    }
}

async fn exactly_one_of_many_concurrent_redeems_succeeds(db: TestDb) {
    let rig = default_rig(db).await;
    let code = rig.issue(Some("carol")).await;
    let redeems = (0..20).map(|_| rig.redeem(&code, Some("carol")));
    let statuses: Vec<u16> = futures::future::join_all(redeems)
        .await
        .into_iter()
        .map(|(s, _)| s.as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 404),
        "{statuses:?}"
    );
    assert_eq!(rig.check(&code, Some("carol")).await.0, 404);
}

async fn failed_checks_lock_a_subject_until_reset_even_across_restarts(db: TestDb) {
    let throttle = Throttle {
        max_failures: 3,
        window: Duration::from_secs(3600),
        max_wrong_per_code: 100,
    };
    let rig = rig(db, 60, throttle, (1000.0, 1000.0)).await;
    let code = rig.issue(Some("dave")).await;
    for _ in 0..3 {
        assert_eq!(rig.check("Bad-000-Gus", Some("dave")).await.0, 404);
    }
    assert_eq!(
        rig.check(&code, Some("dave")).await,
        (StatusCode::NOT_FOUND, not_valid()),
        "locked looks like wrong"
    );
    let fresh = rig.issue(Some("dave")).await;
    assert_eq!(
        rig.check(&fresh, Some("dave")).await.0,
        404,
        "a new code does not reset the count"
    );
    assert_eq!(
        rig.check(&code, Some("erin")).await.0,
        404,
        "other subjects are not affected, but not matched"
    );

    // A restarted producer on the same database: still locked.
    let restarted = Verified::new(&rig, throttle).await;
    assert_eq!(restarted.check(&code, "dave").await, 404);

    rig.db
        .database
        .store()
        .reset_failures(&Subject::parse("dave").unwrap())
        .await
        .unwrap();
    assert_eq!(rig.check(&code, Some("dave")).await.0, 200);
}

async fn a_lock_ends_with_its_window(db: TestDb) {
    let throttle = Throttle {
        max_failures: 2,
        window: Duration::from_secs(2),
        max_wrong_per_code: 100,
    };
    let rig = rig(db, 60, throttle, (1000.0, 1000.0)).await;
    let code = rig.issue(Some("frank")).await;
    for _ in 0..2 {
        rig.check("Bad-000-Gus", Some("frank")).await;
    }
    assert_eq!(rig.check(&code, Some("frank")).await.0, 404);
    // Checked as of three seconds later, when the window has ended.
    let later = Verified::ahead(&rig, throttle, 3).await;
    assert_eq!(later.check(&code, "frank").await, 200);
}

/// A second producer on the same database, as after a restart.
struct Verified {
    app: Server,
    _api: Server,
}

impl Verified {
    async fn new(rig: &Rig, throttle: Throttle) -> Self {
        Self::ahead(rig, throttle, 0).await
    }

    /// A producer whose clock runs `seconds` ahead: it checks codes as of that moment.
    async fn ahead(rig: &Rig, throttle: Throttle, seconds: i64) -> Self {
        let api = common::number_api(KEY).await;
        let queues = common::azure_queues().await;
        let store = rig.db.database.store();
        let app = common::producer_with_verification(
            &api.url("/x"),
            KEY,
            queues.main,
            store,
            API_KEY,
            throttle,
            (1e3, 1e3),
            codewatch::clock::Clock::shifted(chrono::TimeDelta::seconds(seconds)),
            true,
        )
        .await;
        Self { app, _api: api }
    }

    async fn check(&self, code: &str, subject: &str) -> u16 {
        reqwest::Client::new()
            .post(self.app.url("/api/v1/codes/check"))
            .bearer_auth(API_KEY)
            .json(&attempt(code, Some(subject)))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// A redeem with an idempotency key: the status and the body.
    async fn redeem_keyed(&self, code: &str, subject: &str, key: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(self.app.url("/api/v1/codes/redeem"))
            .bearer_auth(API_KEY)
            .header("idempotency-key", key)
            .json(&attempt(code, Some(subject)))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $case() { super::$case(super::common::sqlite().await).await; } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $case() { super::$case(super::common::postgres().await).await; } )*
        }
    };
}

async fn five_wrong_checks_burn_the_subjects_code_and_a_new_one_works(db: TestDb) {
    let rig = rig(db, 60, Throttle::default(), (1000.0, 1000.0)).await;
    let code = rig.issue(Some("gina")).await;
    for _ in 0..5 {
        assert_eq!(rig.check("Bad-000-Gus", Some("gina")).await.0, 404);
    }
    assert_eq!(
        rig.check(&code, Some("gina")).await.0,
        404,
        "burned: the user must ask for a new code"
    );
    let fresh = rig.issue(Some("gina")).await;
    assert_eq!(rig.check(&fresh, Some("gina")).await.0, 200);
}

async fn concurrent_wrong_guesses_never_count_past_the_cap(db: TestDb) {
    let throttle = Throttle {
        max_failures: 10,
        window: Duration::from_secs(3600),
        max_wrong_per_code: 1000,
    };
    let rig = rig(db, 60, throttle, (1000.0, 1000.0)).await;
    let code = rig.issue(Some("hank")).await;
    let guesses = (0..40).map(|i| {
        let rig = &rig;
        async move { rig.check(&format!("Bad-{i}-Gus"), Some("hank")).await.0 }
    });
    let statuses = futures::future::join_all(guesses).await;
    assert!(statuses.iter().all(|s| *s == 404), "{statuses:?}");
    let store = rig.db.database.store();
    let hank = Subject::parse("hank").unwrap();
    let counted = store
        .failures(&hank, chrono::Utc::now() - chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(counted, 10, "failures counted exactly up to the cap");
    assert_eq!(rig.check(&code, Some("hank")).await.0, 404, "locked");
}

async fn a_check_without_a_subject_is_refused_unless_unbound_codes_are_allowed(db: TestDb) {
    let rig = rig_with(db, 60, Throttle::default(), (1000.0, 1000.0), false).await;
    let unbound = rig.issue(None).await;
    for path in ["/api/v1/codes/check", "/api/v1/codes/redeem"] {
        let (status, _, body) = rig.call_on(&rig.app, path, &unbound, None, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["reason"]
                .as_str()
                .unwrap()
                .contains("ALLOW_UNBOUND_CODES")
        );
    }
    let bound = rig.issue(Some("sam")).await;
    assert_eq!(rig.check(&bound, Some("sam")).await.0, 200);
    assert_eq!(rig.check(&unbound, Some("sam")).await.0, 404);
}

async fn a_redeem_whose_answer_was_lost_can_be_retried_with_its_key(db: TestDb) {
    let rig = default_rig(db).await;
    let code = rig.issue(Some("rita")).await;
    let (status, headers, first) = rig.redeem_keyed(&code, Some("rita"), Some("key-1")).await;
    assert_eq!(status, 200, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    assert!(first["redeemed_at"].is_string());
    let (status, headers, again) = rig.redeem_keyed(&code, Some("rita"), Some("key-1")).await;
    assert_eq!(
        (status.as_u16(), &again),
        (200, &first),
        "the first answer again"
    );
    assert_eq!(headers["idempotent-replayed"], "true");
    let store = rig.db.database.store();
    let rita = Subject::parse("rita").unwrap();
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(
        store.failures(&rita, hour_ago).await.unwrap(),
        0,
        "no failure counted"
    );

    for (other_code, other_subject) in [(code.as_str(), "mallory"), ("Oth-1-Cod", "rita")] {
        let (status, _, body) = rig
            .redeem_keyed(other_code, Some(other_subject), Some("key-1"))
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"], "idempotency_key_reused");
    }

    // A restarted producer on the same database gives the same answer.
    let restarted = Verified::new(&rig, Throttle::default()).await;
    assert_eq!(
        restarted.redeem_keyed(&code, "rita", "key-1").await,
        (200, first.clone())
    );

    // A failed redeem is remembered too: its repeat is not counted again.
    for _ in 0..3 {
        let (status, _, body) = rig
            .redeem_keyed("Wro-123-Ngg", Some("rita"), Some("key-2"))
            .await;
        assert_eq!((status, body), (StatusCode::NOT_FOUND, not_valid()));
    }
    assert_eq!(store.failures(&rita, hour_ago).await.unwrap(), 1);
    // Without a key, a repeat is a new redeem of a consumed code.
    assert_eq!(rig.redeem(&code, Some("rita")).await.0, 404);
}

async fn concurrent_redeems_with_one_key_all_get_its_one_answer(db: TestDb) {
    let rig = default_rig(db).await;
    let code = rig.issue(Some("tom")).await;
    let redeems = (0..12).map(|_| rig.redeem_keyed(&code, Some("tom"), Some("same-key")));
    let answers = futures::future::join_all(redeems).await;
    let first = &answers[0].2;
    for (status, _, body) in &answers {
        assert_eq!((status.as_u16(), body), (200, first), "{answers:?}");
    }
    let fresh = answers
        .iter()
        .filter(|(_, headers, _)| headers.get("idempotent-replayed").is_none())
        .count();
    assert_eq!(fresh, 1, "one redeem ran; the others repeat its answer");
    let tom = Subject::parse("tom").unwrap();
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(
        rig.db
            .database
            .store()
            .failures(&tom, hour_ago)
            .await
            .unwrap(),
        0
    );
}

both!(
    five_wrong_checks_burn_the_subjects_code_and_a_new_one_works,
    concurrent_wrong_guesses_never_count_past_the_cap,
    a_bound_code_checks_valid_only_for_its_subject,
    wrong_expired_and_redeemed_codes_all_get_the_same_answer,
    exactly_one_of_many_concurrent_redeems_succeeds,
    failed_checks_lock_a_subject_until_reset_even_across_restarts,
    a_lock_ends_with_its_window,
    a_check_without_a_subject_is_refused_unless_unbound_codes_are_allowed,
    a_redeem_whose_answer_was_lost_can_be_retried_with_its_key,
    concurrent_redeems_with_one_key_all_get_its_one_answer,
);

/// The sign-in API's three calls, each with a body it would accept.
fn signin_calls() -> [(&'static str, Value); 3] {
    [
        ("/api/v1/codes", serde_json::json!({ "subject": "alice" })),
        ("/api/v1/codes/check", attempt("abc-1-def", Some("alice"))),
        ("/api/v1/codes/redeem", attempt("abc-1-def", Some("alice"))),
    ]
}

#[tokio::test]
async fn the_endpoints_need_the_bearer_key() {
    let rig = default_rig(common::sqlite().await).await;
    for (path, body) in signin_calls() {
        let none = rig
            .http
            .post(rig.app.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 401, "{path}");
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        assert_eq!(none.json::<Value>().await.unwrap()["error"], "unauthorized");
        let wrong = rig
            .http
            .post(rig.app.url(path))
            .bearer_auth("wrong")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
    }
}

#[tokio::test]
async fn an_unauthenticated_getcode_that_names_a_subject_gets_no_code() {
    let rig = default_rig(common::sqlite().await).await;
    for query in ["?subject=dave", "?subject=", "?other=1&subject=dave"] {
        let response = rig
            .http
            .get(rig.app.url(&format!("/api/v1/getcode{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{query}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
        assert!(
            body["reason"]
                .as_str()
                .unwrap()
                .contains("POST /api/v1/codes")
        );
        assert!(body.get("code").is_none(), "{body}");
    }
    assert_eq!(
        rig.worker.poll_once().await.unwrap(),
        PollOutcome::Empty,
        "nothing was queued"
    );
    // The sign-in service's call binds, and the check for dave then passes.
    let code = rig.issue(Some("dave")).await;
    assert_eq!(rig.check(&code, Some("dave")).await.0, 200);
}

#[tokio::test]
async fn the_old_get_check_no_longer_answers_and_no_path_takes_a_code() {
    let rig = default_rig(common::sqlite().await).await;
    let code = rig.issue(Some("olga")).await;
    for path in [
        format!("/api/v1/codes/{code}?subject=olga"),
        format!("/api/v1/codes/{code}/redeem?subject=olga"),
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let response = rig
                .http
                .request(method.clone(), rig.app.url(&path))
                .bearer_auth(API_KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "{method} {path}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"], "not_found", "{body}");
        }
    }
    let get_check = rig
        .http
        .get(rig.app.url("/api/v1/codes/check"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(get_check.status(), 405, "a check is a POST");
    assert_eq!(
        get_check.json::<Value>().await.unwrap()["error"],
        "method_not_allowed"
    );
    assert_eq!(
        rig.check(&code, Some("olga")).await.0,
        200,
        "none of it counted as a failure or burned the code"
    );
}

#[tokio::test]
async fn an_unauthenticated_flood_never_spends_the_sign_in_services_budget() {
    let rig = rig(
        common::sqlite().await,
        60,
        Throttle::default(),
        (0.001, 3.0),
    )
    .await;
    let url = rig.app.url("/api/v1/codes/check");
    for _ in 0..20 {
        let status = rig
            .http
            .post(&url)
            .bearer_auth("wrong")
            .json(&attempt("abc-1-def", None))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }
    let (status, _) = rig.check("abc-1-def", None).await;
    assert_eq!(
        status, 404,
        "the authenticated caller still has its whole burst"
    );
    let lower = rig
        .http
        .post(&url)
        .header("authorization", format!("bearer {API_KEY}"))
        .json(&attempt("abc-1-def", None))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 404, "the Bearer scheme is case-insensitive");
}

#[tokio::test]
async fn without_a_key_configured_the_endpoints_are_off_and_say_so() {
    let queues = common::azure_queues().await;
    let app = common::producer(
        "http://127.0.0.1:9/",
        KEY,
        queues.main,
        codewatch::message::MessageEncoding::Text,
    )
    .await;
    for (path, body) in signin_calls() {
        let response = reqwest::Client::new()
            .post(app.url(path))
            .bearer_auth("x")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "verification_disabled");
        assert!(body["reason"].as_str().unwrap().contains("VERIFY_API_KEY"));
    }
}

#[tokio::test]
async fn malformed_codes_subjects_keys_and_bodies_get_400_with_a_reason() {
    let rig = default_rig(common::sqlite().await).await;
    for (code, subject) in [
        ("abc-1-de", None),
        ("abc_1_def", None),
        ("abc-1-def", Some("a\u{7}b")),
        ("abc-1-def", Some("")),
        ("abc-1-def", Some("admin\u{202e}nimda")),
    ] {
        let (status, body) = rig.check(code, subject).await;
        assert_eq!(status, 400, "{code:?} {subject:?}");
        assert_eq!(body["error"], "bad_request");
        assert!(!body["reason"].as_str().unwrap().is_empty());
    }
    for key in ["", "has space", &"k".repeat(256)] {
        let (status, _, body) = rig.redeem_keyed("abc-1-def", Some("a"), Some(key)).await;
        assert_eq!(status, 400, "{key:?}");
        assert!(body["reason"].as_str().unwrap().contains("Idempotency-Key"));
    }
    let bodies: [(&str, &str); 5] = [
        ("application/json", "{\"code\": \"abc-1-def\""),
        ("application/json", "{\"code\": 5}"),
        (
            "application/json",
            "{\"code\": \"abc-1-def\", \"subjet\": \"alice\"}",
        ),
        ("text/plain", "{\"code\": \"abc-1-def\"}"),
        ("application/json", "{\"subject\": \"alice\"}"),
    ];
    for (content_type, body) in bodies {
        let response = rig
            .http
            .post(rig.app.url("/api/v1/codes/check"))
            .bearer_auth(API_KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{content_type} {body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "bad_request", "{answer}");
    }
    let response = rig
        .http
        .post(rig.app.url("/api/v1/codes"))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({ "subject": "" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // A body past the listener's limit is refused as JSON too, not as plain text.
    let huge = serde_json::json!({ "code": "abc-1-def", "subject": "x".repeat(20_000) });
    let response = rig
        .http
        .post(rig.app.url("/api/v1/codes/check"))
        .bearer_auth(API_KEY)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "body_too_large"
    );
    for spoof in ["admin\u{202e}nimda", "\u{2066}bob\u{2069}", "ali\u{200b}ce"] {
        let response = rig
            .http
            .post(rig.app.url("/api/v1/codes"))
            .bearer_auth(API_KEY)
            .json(&serde_json::json!({ "subject": spoof }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{spoof:?}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["reason"]
                .as_str()
                .unwrap()
                .contains("format characters"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn clients_past_the_rate_limit_get_429_with_retry_after() {
    let rig = rig(common::sqlite().await, 60, Throttle::default(), (1.0, 2.0)).await;
    assert_eq!(rig.check("abc-1-def", None).await.0, 404);
    assert_eq!(rig.check("abc-1-def", None).await.0, 404);
    let response = rig
        .http
        .post(rig.app.url("/api/v1/codes/check"))
        .bearer_auth(API_KEY)
        .json(&attempt("abc-1-def", None))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "rate_limited"
    );
}

#[tokio::test]
async fn every_answer_that_may_carry_a_code_is_not_to_be_stored() {
    let rig = default_rig(common::sqlite().await).await;
    let issued = rig
        .http
        .post(rig.app.url("/api/v1/codes"))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({ "subject": "pia" }))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 201);
    let code = issued.json::<Value>().await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    while let PollOutcome::Processed(_) = rig.worker.poll_once().await.unwrap() {}
    let public = rig
        .http
        .get(rig.app.url("/api/v1/getcode"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 200);
    let mut answers = vec![("getcode".to_owned(), public.headers().clone())];
    for (path, key) in [
        ("/api/v1/codes/check", None),
        ("/api/v1/codes/redeem", Some("no-store-1")),
        ("/api/v1/codes/redeem", Some("no-store-1")),
        ("/api/v1/codes/check", None),
    ] {
        let (status, headers, _) = rig.call_on(&rig.app, path, &code, Some("pia"), key).await;
        answers.push((format!("{path} {status}"), headers));
    }
    for (what, headers) in &answers {
        assert_eq!(headers["cache-control"], "no-store", "{what}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    }
    for path in ["/", "/api/openapi.json", "/nowhere"] {
        let response = rig.http.get(rig.app.url(path)).send().await.unwrap();
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{path}"
        );
    }
}

/// The paths a document lists, sorted.
fn paths_of(doc: &Value) -> Vec<String> {
    let mut paths: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    paths.sort();
    paths
}

/// Each operation's answer statuses, sorted, by "METHOD path".
fn statuses_of(doc: &Value) -> Vec<(String, Vec<String>)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let mut codes: Vec<String> = operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            codes.sort();
            all.push((format!("{method} {path}"), codes));
        }
    }
    all.sort();
    all
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint_with_its_answers() {
    let rig = default_rig(common::sqlite().await).await;
    let doc: Value = rig
        .http
        .get(rig.app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["license"]["name"], "MIT");
    assert_eq!(doc["servers"][0]["url"], "/");
    let mut tags: Vec<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, ["getcode", "sign-in"]);
    assert_eq!(
        statuses_of(&doc),
        [
            (
                "get /api/v1/getcode",
                vec!["200", "401", "429", "4XX", "502", "503", "504", "5XX"]
            ),
            (
                "post /api/v1/codes",
                vec!["201", "400", "401", "429", "502", "503", "504"]
            ),
            (
                "post /api/v1/codes/check",
                vec!["200", "400", "401", "404", "429", "503"]
            ),
            (
                "post /api/v1/codes/redeem",
                vec!["200", "400", "401", "404", "422", "429", "503"]
            ),
        ]
        .map(|(op, codes)| (
            op.to_owned(),
            codes.into_iter().map(str::to_owned).collect()
        ))
    );
    let redeem = &doc["paths"]["/api/v1/codes/redeem"]["post"];
    assert_eq!(redeem["parameters"][0]["name"], "Idempotency-Key");
    assert_eq!(redeem["parameters"][0]["in"], "header");
    assert!(redeem["requestBody"]["content"]["application/json"].is_object());
    assert!(redeem["responses"]["401"]["headers"]["WWW-Authenticate"].is_object());
    assert!(redeem["responses"]["429"]["headers"]["Retry-After"].is_object());
    let getcode = &doc["paths"]["/api/v1/getcode"]["get"];
    assert!(getcode["responses"]["5XX"]["content"]["text/plain"].is_object());
    assert!(
        getcode.get("parameters").is_none(),
        "getcode takes no subject"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let text = doc.to_string();
    assert!(!text.contains("super::"), "tags read as module paths");
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling reference to {name}"
        );
    }
}

/// The producer's routes served apart, as with VERIFY_LISTEN_ADDR (and PUBLIC_GETCODE as given).
async fn apart(public_getcode: bool) -> (Server, Server, Server) {
    let queues = common::azure_queues().await;
    let api = common::number_api(KEY).await;
    let db = common::sqlite().await;
    let state = codewatch::http::AppState {
        number_api: codewatch::number_api::NumberApiClient::new(
            api.url("/api/RandomNumber").parse().unwrap(),
            codewatch::function_key::FunctionKey::fixed(codewatch::secret::Secret::new(KEY)),
            Duration::from_secs(5),
        ),
        queue: queues.main.into(),
        encoding: codewatch::message::MessageEncoding::Text,
        verification: Some(codewatch::http::Verification {
            verifier: codewatch::verify::Verifier::new(db.database.store(), Throttle::default()),
            api_key: codewatch::secret::Secret::new(API_KEY),
            limiter: codewatch::http::rate_limit::RateLimiter::new(1e3, 1e3),
            allow_unbound: false,
        }),
        getcode_limiter: None,
        trusted_proxies: Default::default(),
        signing: None,
        clock: Default::default(),
        public_getcode,
        issuing: Default::default(),
    };
    let (public, signin) = codewatch::http::routers(state).apart();
    (
        Server::start(public).await,
        Server::start(signin).await,
        api,
    )
}

#[tokio::test]
async fn each_listener_serves_the_document_of_what_it_exposes_and_nothing_else() {
    let (public, signin, _api) = apart(true).await;
    let http = reqwest::Client::new();
    let doc = |server: &Server| {
        let request = http.get(server.url("/api/openapi.json"));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(paths_of(&doc(&public).await), ["/api/v1/getcode"]);
    assert_eq!(
        paths_of(&doc(&signin).await),
        [
            "/api/v1/codes",
            "/api/v1/codes/check",
            "/api/v1/codes/redeem"
        ]
    );
    let check = http
        .post(public.url("/api/v1/codes/check"))
        .bearer_auth(API_KEY)
        .json(&attempt("abc-1-def", Some("a")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        check.status(),
        404,
        "the public listener has no sign-in API"
    );
    assert_eq!(check.json::<Value>().await.unwrap()["error"], "not_found");
    let getcode = http
        .get(signin.url("/api/v1/getcode"))
        .send()
        .await
        .unwrap();
    assert_eq!(getcode.status(), 404, "the sign-in listener has no getcode");

    let (public, signin, _api) = apart(false).await;
    assert!(
        paths_of(&doc(&public).await).is_empty(),
        "PUBLIC_GETCODE=false"
    );
    assert_eq!(
        http.get(public.url("/api/v1/getcode"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let issued = http
        .post(signin.url("/api/v1/codes"))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({ "subject": "quinn" }))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 201, "issuing for a subject still works");
    let check = http
        .post(signin.url("/api/v1/codes/check"))
        .bearer_auth(API_KEY)
        .json(&attempt("abc-1-def", None))
        .send()
        .await
        .unwrap();
    assert_eq!(
        check.status(),
        400,
        "no subject, and unbound codes not allowed"
    );
    assert!(
        check.json::<Value>().await.unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("subject is required")
    );
}

#[tokio::test]
async fn a_successful_check_writes_nothing_when_there_is_nothing_to_reset() {
    use std::str::FromStr;
    let db = common::sqlite().await;
    let activation = codewatch::store::Activation::new(
        codewatch::domain::Issuance {
            destination: None,
            id: codewatch::domain::IssuanceId::random(),
            code: codewatch::domain::Code::parse("ron-1-Lyy").unwrap(),
            issued_at: chrono::Utc::now(),
            subject: Some(Subject::parse("ivy").unwrap()),
        },
        chrono::Utc::now() + chrono::Duration::seconds(60),
    );
    db.database
        .store()
        .activate(std::slice::from_ref(&activation), chrono::Utc::now())
        .await
        .unwrap();
    // The same database, opened read-only: any write would fail.
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&db.url)
        .unwrap()
        .read_only(true);
    let read_only = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let pools = codewatch::sqlite::SqlitePools {
        read: read_only.clone(),
        write: read_only,
    };
    let verifier = codewatch::verify::Verifier::new(
        std::sync::Arc::new(codewatch::store::sqlite::SqliteStore::new(pools)),
        Throttle::default(),
    );
    let verdict = verifier
        .check(
            &activation.issuance.code,
            activation.issuance.subject.as_ref(),
            chrono::Utc::now(),
        )
        .await
        .expect("a clean success only reads");
    assert!(matches!(verdict, codewatch::verify::Verdict::Valid(_)));
}
