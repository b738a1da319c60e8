//! The sign-in service's API on `serve`: check, redeem, subjects, throttling, auth, rate limit, and the
//! OpenAPI document. Against Azurite, on both SQLite and PostgreSQL.

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
    /// Issues a code (bound to `subject` if given) and lets the worker activate it.
    async fn issue(&self, subject: Option<&str>) -> String {
        let mut url = self.app.url("/api/v1/getcode");
        if let Some(s) = subject {
            url += &format!("?subject={s}");
        }
        let body: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        while let PollOutcome::Processed(_) = self.worker.poll_once().await.unwrap() {}
        body["code"].as_str().unwrap().to_owned()
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
        self.call_on(
            app,
            reqwest::Method::GET,
            &format!("/api/v1/codes/{code}"),
            subject,
        )
        .await
    }

    async fn redeem(&self, code: &str, subject: Option<&str>) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/codes/{code}/redeem"),
            subject,
        )
        .await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        subject: Option<&str>,
    ) -> (StatusCode, Value) {
        self.call_on(&self.app, method, path, subject).await
    }

    async fn call_on(
        &self,
        app: &Server,
        method: reqwest::Method,
        path: &str,
        subject: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut url = url::Url::parse(&app.url(path)).unwrap();
        if let Some(s) = subject {
            url.query_pairs_mut().append_pair("subject", s);
        }
        let response = self
            .http
            .request(method, url)
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
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
        (
            body["code"].as_str(),
            body["valid"].as_bool(),
            body["subject"].as_str()
        ),
        (Some(code.as_str()), Some(true), Some("alice"))
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
        )
        .await;
        Self { app, _api: api }
    }

    async fn check(&self, code: &str, subject: &str) -> u16 {
        let url = self
            .app
            .url(&format!("/api/v1/codes/{code}?subject={subject}"));
        reqwest::Client::new()
            .get(url)
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
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

both!(
    five_wrong_checks_burn_the_subjects_code_and_a_new_one_works,
    concurrent_wrong_guesses_never_count_past_the_cap,
    a_bound_code_checks_valid_only_for_its_subject,
    wrong_expired_and_redeemed_codes_all_get_the_same_answer,
    exactly_one_of_many_concurrent_redeems_succeeds,
    failed_checks_lock_a_subject_until_reset_even_across_restarts,
    a_lock_ends_with_its_window,
);

#[tokio::test]
async fn the_endpoints_need_the_bearer_key() {
    let rig = default_rig(common::sqlite().await).await;
    let url = rig.app.url("/api/v1/codes/abc-1-def");
    let none = rig.http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    assert_eq!(none.json::<Value>().await.unwrap()["error"], "unauthorized");
    assert_eq!(
        rig.http
            .get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        rig.http
            .post(format!("{url}/redeem"))
            .send()
            .await
            .unwrap()
            .status(),
        401
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
    let url = rig.app.url("/api/v1/codes/abc-1-def");
    for _ in 0..20 {
        let status = rig
            .http
            .get(&url)
            .bearer_auth("wrong")
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
        .get(&url)
        .header("authorization", format!("bearer {API_KEY}"))
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
    let response = reqwest::Client::new()
        .get(app.url("/api/v1/codes/abc-1-def"))
        .bearer_auth("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "verification_disabled");
    assert!(body["reason"].as_str().unwrap().contains("VERIFY_API_KEY"));
}

#[tokio::test]
async fn malformed_codes_and_subjects_get_400_with_a_reason() {
    let rig = default_rig(common::sqlite().await).await;
    for (code, subject) in [
        ("abc-1-de", None),
        ("abc_1_def", None),
        ("abc-1-def", Some("a\u{7}b")),
    ] {
        let (status, body) = rig.check(code, subject).await;
        assert_eq!(status, 400, "{code:?} {subject:?}");
        assert_eq!(body["error"], "bad_request");
        assert!(!body["reason"].as_str().unwrap().is_empty());
    }
    let response = rig
        .http
        .get(rig.app.url("/api/v1/getcode?subject="))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn clients_past_the_rate_limit_get_429_with_retry_after() {
    let rig = rig(common::sqlite().await, 60, Throttle::default(), (1.0, 2.0)).await;
    assert_eq!(rig.check("abc-1-def", None).await.0, 404);
    assert_eq!(rig.check("abc-1-def", None).await.0, 404);
    let response = rig
        .http
        .get(rig.app.url("/api/v1/codes/abc-1-def"))
        .bearer_auth(API_KEY)
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
async fn the_openapi_document_describes_every_endpoint() {
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
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/getcode",
        "/api/v1/codes/{code}",
        "/api/v1/codes/{code}/redeem",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["ValidCode"].is_object());
    let text = doc.to_string();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling reference to {name}"
        );
    }
    for path in ["/api/v1/codes/{code}", "/api/v1/codes/{code}/redeem"] {
        let operation = doc["paths"][path]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap();
        let mut codes: Vec<&String> = operation["responses"].as_object().unwrap().keys().collect();
        codes.sort();
        assert_eq!(codes, ["200", "400", "401", "404", "429", "503"], "{path}");
    }
}

#[tokio::test]
async fn a_successful_check_writes_nothing_when_there_is_nothing_to_reset() {
    use std::str::FromStr;
    let db = common::sqlite().await;
    let activation = codewatch::store::Activation::new(
        codewatch::domain::Issuance {
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
    let pools = codewatch::store::sqlite::SqlitePools {
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
