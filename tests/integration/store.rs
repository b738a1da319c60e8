//! The valid-codes store, every case on both real SQLite and real PostgreSQL: idempotent activation and
//! expiry, validity as `expires_at > now`, atomic redeem, revocation, subjects and failed-check counts.

use crate::common;

use chrono::{DateTime, Duration, Utc};
use codewatch::backends::Database;
use codewatch::domain::Code;
use codewatch::domain::Subject;
use codewatch::domain::{IdempotencyKey, fingerprint};
use codewatch::domain::{Issuance, IssuanceId};
use codewatch::store::{ActivateReport, Activation, Gate, KeyedRedeem, RedeemKey, SharedStore};
use common::TestDb;
use std::slice::from_ref;

fn code(text: &str) -> Code {
    Code::parse(text).unwrap()
}

fn subject(text: &str) -> Subject {
    Subject::parse(text).unwrap()
}

fn activation_at(
    text: &str,
    issued_at: DateTime<Utc>,
    ttl_secs: i64,
    who: Option<&str>,
) -> Activation {
    Activation::new(
        Issuance {
            destination: None,
            id: IssuanceId::random(),
            code: code(text),
            issued_at,
            subject: who.map(subject),
        },
        issued_at + Duration::seconds(ttl_secs),
    )
}

/// Whether a valid issuance of `code` for `who` exists at `at`.
async fn is_valid(
    store: &SharedStore,
    code: &Code,
    who: Option<&Subject>,
    at: DateTime<Utc>,
) -> bool {
    store.find_valid(code, who, at).await.unwrap().is_some()
}

fn gate(window_start: DateTime<Utc>, max_failures: u32) -> Gate {
    Gate {
        window_start,
        max_failures,
        max_wrong_per_code: 5,
    }
}

fn activation(text: &str, ttl_secs: i64) -> Activation {
    activation_at(text, Utc::now(), ttl_secs, None)
}

async fn activating_twice_keeps_one_row_and_reports_the_duplicate(store: SharedStore) {
    let a = activation("abc-1-def", 60);
    let first = store.activate(from_ref(&a), Utc::now()).await.unwrap();
    let second = store
        .activate(&[a.clone(), a.clone()], Utc::now())
        .await
        .unwrap();
    assert_eq!(
        first,
        ActivateReport {
            inserted: 1,
            duplicates: 0,
            stale: 0,
            conflicts: vec![]
        }
    );
    assert_eq!(
        second,
        ActivateReport {
            inserted: 0,
            duplicates: 2,
            stale: 0,
            conflicts: vec![]
        }
    );
    assert_eq!(store.list(true, Utc::now(), 10).await.unwrap().len(), 1);
}

async fn count_valid_counts_what_is_valid_at_that_moment(store: SharedStore) {
    let now = Utc::now();
    let short = activation_at("cnt-3-abc", now, 1, None);
    let rows = [
        activation_at("cnt-1-abc", now, 60, None),
        activation_at("cnt-2-abc", now, 60, Some("user-2")),
        short.clone(),
    ];
    store.activate(&rows, now).await.unwrap();
    assert_eq!(store.count_valid(now).await.unwrap(), 3);
    store.revoke(&code("cnt-1-abc"), now).await.unwrap();
    assert_eq!(store.count_valid(now).await.unwrap(), 2);
    // Validity is `expires_at > now`: at its expiry the short code no longer counts, its row stays.
    assert_eq!(store.count_valid(short.expires_at).await.unwrap(), 1);
    assert_eq!(store.list(true, now, 10).await.unwrap().len(), 3);
}

async fn two_issuances_of_the_same_code_are_two_rows(store: SharedStore) {
    store
        .activate(
            &[activation("abc-1-def", 60), activation("abc-1-def", 60)],
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(store.records(&code("abc-1-def")).await.unwrap().len(), 2);
    assert_eq!(store.list(false, Utc::now(), 10).await.unwrap().len(), 2);
}

async fn an_activation_past_its_expiry_makes_nothing_valid_and_marks_a_leftover_row(
    store: SharedStore,
) {
    let a = activation("abc-2-def", 1);
    let late = a.expires_at + Duration::milliseconds(1);
    assert_eq!(store.activate(from_ref(&a), late).await.unwrap().stale, 1);
    assert!(
        store.records(&a.issuance.code).await.unwrap().is_empty(),
        "nothing inserted"
    );
    store.activate(from_ref(&a), Utc::now()).await.unwrap();
    store.activate(from_ref(&a), late).await.unwrap();
    let rows = store.records(&a.issuance.code).await.unwrap();
    assert_eq!(
        rows[0].expired_at.map(|t| t.timestamp_micros()),
        Some(late.timestamp_micros())
    );
}

async fn expire_marks_only_rows_whose_time_has_come_and_is_idempotent(store: SharedStore) {
    let a = activation("abc-3-def", 60);
    let id = from_ref(&a.issuance.id);
    store.activate(from_ref(&a), Utc::now()).await.unwrap();
    assert_eq!(store.expire(id, Utc::now()).await.unwrap(), 0, "too early");
    assert_eq!(store.expire(id, a.expires_at).await.unwrap(), 1);
    assert_eq!(
        store
            .expire(id, a.expires_at + Duration::seconds(1))
            .await
            .unwrap(),
        0,
        "idempotent"
    );
    assert_eq!(
        store
            .activate(from_ref(&a), a.expires_at)
            .await
            .unwrap()
            .stale,
        1,
        "never resurrected"
    );
    assert!(
        is_valid(
            &store,
            &a.issuance.code,
            None,
            a.expires_at - Duration::seconds(1)
        )
        .await
    );
}

async fn a_code_is_valid_strictly_before_expires_at_and_case_sensitively(store: SharedStore) {
    let a = activation("abc-4-def", 60);
    store.activate(from_ref(&a), Utc::now()).await.unwrap();
    let c = &a.issuance.code;
    let just_before = a.expires_at - Duration::microseconds(1);
    assert!(is_valid(&store, c, None, just_before).await);
    assert!(!is_valid(&store, c, None, a.expires_at).await);
    assert!(!is_valid(&store, &code("abc-4-DEF"), None, just_before).await);
}

async fn a_bound_code_matches_only_its_subject(store: SharedStore) {
    let now = Utc::now();
    store
        .activate(&[activation_at("sub-5-Ect", now, 60, Some("alice"))], now)
        .await
        .unwrap();
    let c = code("sub-5-Ect");
    assert!(is_valid(&store, &c, Some(&subject("alice")), now).await);
    assert!(!is_valid(&store, &c, Some(&subject("bob")), now).await);
    assert!(
        store.find_valid(&c, None, now).await.unwrap().is_none(),
        "an unbound check never matches a bound code"
    );
}

async fn redeem_consumes_a_code_exactly_once_under_concurrency(store: SharedStore) {
    let now = Utc::now();
    store
        .activate(&[activation_at("red-6-Eem", now, 60, Some("alice"))], now)
        .await
        .unwrap();
    let c = code("red-6-Eem");
    let alice = subject("alice");
    let attempts = (0..16).map(|_| {
        let (store, c, alice) = (store.clone(), c.clone(), alice.clone());
        tokio::spawn(async move {
            store
                .redeem(&c, Some(&alice), Utc::now(), None)
                .await
                .unwrap()
        })
    });
    let mut won = 0;
    for attempt in attempts {
        won += usize::from(attempt.await.unwrap().is_some());
    }
    assert_eq!(won, 1);
    assert!(!is_valid(&store, &c, Some(&alice), Utc::now()).await);
    let record = store.records(&c).await.unwrap().remove(0);
    assert!(record.redeemed_at.is_some());
    assert_eq!(store.list(false, Utc::now(), 10).await.unwrap().len(), 0);
}

async fn revoke_is_immediate_idempotent_and_catches_activations_still_queued(store: SharedStore) {
    let now = Utc::now();
    let active = activation_at("rev-7-Oke", now - Duration::seconds(2), 60, None);
    let queued = activation_at("rev-7-Oke", now - Duration::seconds(1), 60, None);
    store.activate(from_ref(&active), now).await.unwrap();
    let c = code("rev-7-Oke");
    assert_eq!(store.revoke(&c, now).await.unwrap(), 1);
    assert_eq!(store.revoke(&c, now).await.unwrap(), 0, "idempotent");
    assert!(store.find_valid(&c, None, now).await.unwrap().is_none());
    // An issuance from before the revocation arrives afterwards: it is recorded, revoked.
    store
        .activate(from_ref(&queued), now + Duration::seconds(1))
        .await
        .unwrap();
    assert!(!is_valid(&store, &c, None, now + Duration::seconds(1)).await);
    // A new issuance of the same code after the revocation is valid.
    let fresh = activation_at("rev-7-Oke", now + Duration::seconds(2), 60, None);
    store
        .activate(from_ref(&fresh), now + Duration::seconds(2))
        .await
        .unwrap();
    assert!(is_valid(&store, &c, None, now + Duration::seconds(3)).await);
    assert_eq!(
        store
            .records(&c)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.revoked_at.is_some())
            .count(),
        2
    );
}

async fn revoke_reaches_issuances_whatever_their_dates(store: SharedStore) {
    let now = Utc::now();
    // Recorded with a timestamp ahead of the clock (a skewed producer, within the allowance).
    let ahead = activation_at("fut-1-Ure", now + Duration::seconds(20), 60, None);
    store.activate(from_ref(&ahead), now).await.unwrap();
    let c = code("fut-1-Ure");
    assert_eq!(store.revoke(&c, now).await.unwrap(), 1);
    assert!(!is_valid(&store, &c, None, now + Duration::seconds(30)).await);
    // Still in the queue at the revocation (announced before it), dated after it: recorded revoked.
    let mut queued = activation_at("fut-1-Ure", now + Duration::seconds(25), 60, None);
    queued.announced_at = now - Duration::seconds(1);
    store
        .activate(from_ref(&queued), now + Duration::seconds(1))
        .await
        .unwrap();
    assert!(!is_valid(&store, &c, None, now + Duration::seconds(30)).await);
}

async fn an_id_recorded_for_another_code_is_a_conflict_not_a_duplicate(store: SharedStore) {
    let first = activation("one-1-Abc", 60);
    let mut other = activation("two-2-Abc", 60);
    other.issuance.id = first.issuance.id.clone();
    store.activate(from_ref(&first), Utc::now()).await.unwrap();
    let report = store
        .activate(&[other.clone(), first.clone()], Utc::now())
        .await
        .unwrap();
    assert_eq!(
        report.conflicts,
        vec![(other.issuance.id.clone(), other.issuance.code.clone())]
    );
    assert_eq!((report.inserted, report.duplicates), (0, 1));
    assert!(!is_valid(&store, &code("two-2-Abc"), None, Utc::now()).await);
}

async fn concurrent_wrong_checks_never_count_past_the_cap_and_a_locked_subject_cannot_pass(
    store: SharedStore,
) {
    let right = activation_at("cap-1-Abc", Utc::now(), 60, Some("carol"));
    store.activate(from_ref(&right), Utc::now()).await.unwrap();
    let carol = subject("carol");
    let g = gate(Utc::now() - Duration::hours(1), 10);
    let wrongs = (0..40).map(|_| {
        let (store, carol) = (store.clone(), carol.clone());
        tokio::spawn(async move { store.record_failure(&carol, Utc::now(), &g).await.unwrap() })
    });
    let mut counts = Vec::new();
    for w in wrongs {
        counts.push(w.await.unwrap());
    }
    assert_eq!(counts.iter().max(), Some(&10), "{counts:?}");
    assert_eq!(store.failures(&carol, g.window_start).await.unwrap(), 10);
    let c = code("cap-1-Abc");
    assert!(
        store
            .check(&c, &carol, Utc::now(), &g)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .redeem(&c, Some(&carol), Utc::now(), Some(&g))
            .await
            .unwrap()
            .is_none()
    );
}

async fn wrong_checks_burn_a_subjects_codes_at_the_per_code_limit(store: SharedStore) {
    let code_text = "bur-1-Ned";
    store
        .activate(
            &[activation_at(code_text, Utc::now(), 60, Some("dave"))],
            Utc::now(),
        )
        .await
        .unwrap();
    let dave = subject("dave");
    let g = gate(Utc::now() - Duration::hours(1), 100);
    for _ in 0..4 {
        store.record_failure(&dave, Utc::now(), &g).await.unwrap();
    }
    let (_, prior) = store
        .check(&code(code_text), &dave, Utc::now(), &g)
        .await
        .unwrap()
        .expect("still valid after 4 wrong checks");
    assert_eq!(prior, 4);
    store.record_failure(&dave, Utc::now(), &g).await.unwrap();
    assert!(
        store
            .check(&code(code_text), &dave, Utc::now(), &g)
            .await
            .unwrap()
            .is_none(),
        "burned after the 5th wrong check"
    );
}

async fn purge_deletes_rows_past_retention_only(store: SharedStore) {
    let (short, long) = (activation("abc-8-def", 1), activation("abc-9-def", 60));
    store
        .activate(&[short.clone(), long], Utc::now())
        .await
        .unwrap();
    assert_eq!(store.purge(short.expires_at).await.unwrap(), 1);
    assert_eq!(store.list(true, Utc::now(), 10).await.unwrap().len(), 1);
}

/// `expired` rows that expired an hour before `cutoff` and three live ones; every code distinct.
async fn many_expired_rows(store: &SharedStore, expired: usize) -> Vec<Activation> {
    let long_ago = Utc::now() - Duration::hours(2);
    let old: Vec<Activation> = (0..expired)
        .map(|i| activation_at(&format!("old-{i}-Row"), long_ago, 60, Some("someone")))
        .collect();
    for chunk in old.chunks(500) {
        store.activate(chunk, long_ago).await.unwrap();
    }
    let live: Vec<Activation> = (0..3)
        .map(|i| activation(&format!("new-{i}-Row"), 600))
        .collect();
    store.activate(&live, Utc::now()).await.unwrap();
    live
}

/// A purge of more rows than one batch deletes exactly those past the cutoff (and their revocations),
/// whatever the number of batches; the live rows stay.
async fn a_purge_of_more_rows_than_a_batch_deletes_exactly_the_expired(store: SharedStore) {
    let expired = 2 * codewatch::store::PURGE_BATCH as usize + 345;
    let live = many_expired_rows(&store, expired).await;
    let cutoff = Utc::now() - Duration::hours(1);
    assert_eq!(store.purge(cutoff).await.unwrap(), expired as u64);
    let left = store.list(true, Utc::now(), 100).await.unwrap();
    let mut left: Vec<String> = left.iter().map(|r| r.code.to_string()).collect();
    left.sort();
    let mut want: Vec<String> = live.iter().map(|a| a.issuance.code.to_string()).collect();
    want.sort();
    assert_eq!(left, want);
    assert_eq!(
        store.purge(cutoff).await.unwrap(),
        0,
        "nothing left to purge"
    );
}

async fn a_redeem_key_keeps_its_first_answer_until_its_time_and_is_purged(store: SharedStore) {
    let now = Utc::now();
    let a = activation_at("idm-1-Pot", now, 60, Some("kim"));
    store.activate(from_ref(&a), now).await.unwrap();
    let kim = subject("kim");
    let g = gate(now - Duration::hours(1), 100);
    let key = IdempotencyKey::parse("key-1").unwrap();
    let print = fingerprint(&a.issuance.code, Some(&kim));
    let keyed = |print: &str, at: DateTime<Utc>| {
        let (store, key, kim, code) = (
            store.clone(),
            key.clone(),
            kim.clone(),
            a.issuance.code.clone(),
        );
        let print = print.to_owned();
        async move {
            let remembered = RedeemKey {
                key: &key,
                fingerprint: &print,
                keep_failure_until: at + Duration::seconds(10),
            };
            store
                .redeem_keyed(remembered, &code, Some(&kim), at, Some(&g))
                .await
                .unwrap()
        }
    };
    let KeyedRedeem::First(Some(first)) = keyed(&print, now).await else {
        panic!("the first redeem consumes the code")
    };
    assert_eq!(
        keyed(&print, now).await,
        KeyedRedeem::Repeat(Some(first.clone()))
    );
    assert_eq!(keyed("another", now).await, KeyedRedeem::Reused);
    assert_eq!(
        keyed("another", a.expires_at + Duration::seconds(1)).await,
        KeyedRedeem::First(None),
        "past the code's expiry the key is forgotten and may be used again"
    );
    // That use failed, so it is remembered for 10 s; a purge past that forgets it at once.
    let later = a.expires_at + Duration::seconds(2);
    assert_eq!(keyed("another", later).await, KeyedRedeem::Repeat(None));
    store.purge(later + Duration::seconds(20)).await.unwrap();
    assert_eq!(keyed("a third", later).await, KeyedRedeem::First(None));
}

async fn failed_checks_count_up_within_a_window_and_reset(store: SharedStore) {
    let alice = subject("alice");
    let now = Utc::now();
    let window_start = now - Duration::hours(1);
    for expected in 1..=3 {
        assert_eq!(
            store
                .record_failure(&alice, now, &gate(window_start, 100))
                .await
                .unwrap(),
            expected
        );
    }
    assert_eq!(store.failures(&alice, window_start).await.unwrap(), 3);
    assert_eq!(
        store.failures(&subject("bob"), window_start).await.unwrap(),
        0
    );
    // An hour later the window has ended: the old count no longer holds, and the next failure starts anew.
    let later = now + Duration::hours(1);
    assert_eq!(
        store
            .failures(&alice, later - Duration::hours(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .record_failure(&alice, later, &gate(later - Duration::hours(1), 100))
            .await
            .unwrap(),
        1
    );
    store.reset_failures(&alice).await.unwrap();
    assert_eq!(store.failures(&alice, window_start).await.unwrap(), 0);
}

/// 40 activations with a destination, each claimed by exactly one of four concurrent claimers (as
/// replicas would), leased until the lease's end, then recorded; a lease that ran out is claimed
/// again; a delivery recorded as made stays so, and its destination goes with the row at the purge.
async fn deliveries_are_claimed_once_under_concurrency_and_again_after_a_lease(store: SharedStore) {
    use codewatch::domain::Destination;
    use codewatch::store::DeliveryOutcome;
    let now = Utc::now();
    let batch: Vec<Activation> = (0..40)
        .map(|i| {
            let mut a = activation(&format!("dlv-{i}-Vue"), 60);
            a.issuance.destination =
                Some(Destination::parse(&format!("user{i}@example.com")).unwrap());
            a
        })
        .collect();
    store.activate(&batch, now).await.unwrap();
    let lease_until = now + Duration::seconds(30);
    let claims = futures::future::join_all((0..4).map(|_| {
        let store = store.clone();
        async move { store.claim_deliveries(now, lease_until, 32).await.unwrap() }
    }))
    .await;
    let mut ids: Vec<String> = claims
        .iter()
        .flatten()
        .map(|d| d.issuance_id.to_string())
        .collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!((before, ids.len()), (40, 40), "every delivery claimed once");
    assert!(claims.iter().flatten().all(|d| d.attempt == 1));
    // Leased: nothing is due until the lease ends; then every one is claimed again.
    assert!(
        store
            .claim_deliveries(now, lease_until, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let later = lease_until + Duration::seconds(1);
    let again = store
        .claim_deliveries(later, later + Duration::seconds(30), 100)
        .await
        .unwrap();
    assert_eq!(again.len(), 40);
    assert!(again.iter().all(|d| d.attempt == 2));
    let first = &again[0];
    store
        .record_delivery(&first.issuance_id, &DeliveryOutcome::Delivered, later)
        .await
        .unwrap();
    // A late failure of an older attempt does not undo it.
    store
        .record_delivery(
            &first.issuance_id,
            &DeliveryOutcome::Failed("late".into()),
            later,
        )
        .await
        .unwrap();
    let record = store.records(&first.code).await.unwrap().remove(0);
    let delivery = record.delivery.unwrap();
    assert_eq!((delivery.state(), delivery.error), ("delivered", None));
    assert_eq!(
        delivery.destination.masked(),
        format!("{}***@example.com", &first.destination.as_str()[..1])
    );
    // Past the codes' expiry the rest are ended, not claimed.
    let expired = now + Duration::seconds(61);
    assert!(
        store
            .claim_deliveries(expired, expired, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.end_undeliverable(expired).await.unwrap(), 39);
    assert_eq!(
        store.end_undeliverable(expired).await.unwrap(),
        0,
        "idempotent"
    );
    store.purge(expired).await.unwrap();
    assert!(
        store.records(&first.code).await.unwrap().is_empty(),
        "destination gone with its row"
    );
}

async fn the_active_codes_view_answers_plain_sql(db: &Database) {
    let store = db.store();
    // Activated five seconds ago, when both were valid; one has expired since.
    let then = Utc::now() - Duration::seconds(5);
    store
        .activate(
            &[
                activation("sql-1-Vue", 60),
                activation_at("old-2-Vue", then, 1, None),
            ],
            then,
        )
        .await
        .unwrap();
    let query = "SELECT code FROM active_codes";
    let codes: Vec<String> = match db {
        Database::Sqlite(pools) => sqlx::query_scalar(query)
            .fetch_all(&pools.read)
            .await
            .unwrap(),
        Database::Postgres(pool) => sqlx::query_scalar(query).fetch_all(pool).await.unwrap(),
    };
    assert_eq!(codes, ["sql-1-Vue"]);
}

macro_rules! on {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $case() {
                    let db: super::TestDb = super::common::$backend().await;
                    super::$case(db.database.store()).await;
                }
            )*

            #[tokio::test]
            async fn the_active_codes_view_answers_plain_sql() {
                let db: super::TestDb = super::common::$backend().await;
                super::the_active_codes_view_answers_plain_sql(&db.database).await;
            }
        }
    };
}

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        on!(sqlite: $($case),*);
        on!(postgres: $($case),*);
    };
}

both!(
    activating_twice_keeps_one_row_and_reports_the_duplicate,
    two_issuances_of_the_same_code_are_two_rows,
    count_valid_counts_what_is_valid_at_that_moment,
    an_activation_past_its_expiry_makes_nothing_valid_and_marks_a_leftover_row,
    expire_marks_only_rows_whose_time_has_come_and_is_idempotent,
    a_code_is_valid_strictly_before_expires_at_and_case_sensitively,
    a_bound_code_matches_only_its_subject,
    redeem_consumes_a_code_exactly_once_under_concurrency,
    revoke_is_immediate_idempotent_and_catches_activations_still_queued,
    revoke_reaches_issuances_whatever_their_dates,
    an_id_recorded_for_another_code_is_a_conflict_not_a_duplicate,
    purge_deletes_rows_past_retention_only,
    a_purge_of_more_rows_than_a_batch_deletes_exactly_the_expired,
    a_redeem_key_keeps_its_first_answer_until_its_time_and_is_purged,
    failed_checks_count_up_within_a_window_and_reset,
    concurrent_wrong_checks_never_count_past_the_cap_and_a_locked_subject_cannot_pass,
    wrong_checks_burn_a_subjects_codes_at_the_per_code_limit,
    deliveries_are_claimed_once_under_concurrency_and_again_after_a_lease,
);

/// `deploy/postgres/roles.sql` as psql would run it, with this test's role names and passwords.
fn roles_script(migrate: &str, app: &str, database: &str) -> Vec<String> {
    let script = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/postgres/roles.sql"),
    )
    .unwrap();
    let sql: String = script
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .map(|l| {
            // psql's \gexec runs what the query returns; here the one GRANT it makes.
            if l.contains("\\gexec") {
                format!("GRANT CONNECT ON DATABASE {database} TO codewatch_migrate, codewatch_app;")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replace("codewatch_migrate", migrate)
        .replace("codewatch_app", app)
        .replace(":'migrate_password'", "'migrate-pw'")
        .replace(":'app_password'", "'app-pw'");
    sql.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_runtime_role_works_every_store_operation_and_cannot_change_the_schema() {
    use codewatch::backends::Database;
    use codewatch::config::DatabaseArgs;
    let db = common::postgres().await;
    let url = url::Url::parse(&db.url).unwrap();
    let database = url.path().trim_start_matches('/').to_owned();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (migrate, app) = (format!("cw_migrate_{suffix}"), format!("cw_app_{suffix}"));
    // A fresh database whose schema only the migration role will create.
    db.database.close().await;
    let admin = sqlx::PgPool::connect(&std::env::var("CODEWATCH_TEST_POSTGRES_URL").unwrap())
        .await
        .unwrap();
    let fresh = format!("{database}_roles");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {fresh}")))
        .execute(&admin)
        .await
        .unwrap();
    let mut in_fresh = url.clone();
    in_fresh.set_path(&fresh);
    let fresh_admin = sqlx::PgPool::connect(in_fresh.as_str()).await.unwrap();
    for statement in roles_script(&migrate, &app, &fresh) {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&fresh_admin)
            .await
            .unwrap();
    }
    let as_role = |role: &str, password: &str| {
        let mut u = in_fresh.clone();
        u.set_username(role).unwrap();
        u.set_password(Some(password)).unwrap();
        u.to_string()
    };
    let mut migration = DatabaseArgs::at(as_role(&migrate, "migrate-pw"));
    migration.force_migrate = true;
    Database::open(&migration)
        .await
        .expect("the migration role migrates");

    let mut runtime = DatabaseArgs::at(as_role(&app, "app-pw"));
    runtime.migrate_on_start = false;
    let database = Database::open(&runtime)
        .await
        .expect("the runtime role starts on a migrated schema");
    let store = database.store();
    let now = Utc::now();
    let a = activation_at("rol-1-Esx", now, 60, Some("roles"));
    store.activate(from_ref(&a), now).await.unwrap();
    let g = gate(now - Duration::hours(1), 100);
    store
        .record_failure(&subject("roles"), now, &g)
        .await
        .unwrap();
    assert!(
        store
            .check(&code("rol-1-Esx"), &subject("roles"), now, &g)
            .await
            .unwrap()
            .is_some()
    );
    store.reset_failures(&subject("roles")).await.unwrap();
    assert!(
        store
            .redeem(&code("rol-1-Esx"), Some(&subject("roles")), now, Some(&g))
            .await
            .unwrap()
            .is_some()
    );
    let key = IdempotencyKey::parse("roles-key").unwrap();
    let remembered = RedeemKey {
        key: &key,
        fingerprint: "f",
        keep_failure_until: now + Duration::hours(1),
    };
    assert_eq!(
        store
            .redeem_keyed(
                remembered,
                &code("rol-1-Esx"),
                Some(&subject("roles")),
                now,
                Some(&g)
            )
            .await
            .unwrap(),
        KeyedRedeem::First(None),
        "the runtime role may remember redeem keys"
    );
    store.revoke(&code("rol-1-Esx"), now).await.unwrap();
    store
        .expire(from_ref(&a.issuance.id), now + Duration::hours(1))
        .await
        .unwrap();
    store.purge(now + Duration::days(2)).await.unwrap();
    store.ping().await.unwrap();

    let Database::Postgres(pool) = &database else {
        panic!()
    };
    assert!(
        sqlx::query("CREATE TABLE intruder (x int)")
            .execute(pool)
            .await
            .is_err(),
        "the runtime role cannot create tables"
    );
    assert!(
        sqlx::query("DROP TABLE valid_codes")
            .execute(pool)
            .await
            .is_err(),
        "nor drop them"
    );
    runtime.migrate_on_start = true;
    let refused = Database::open(&runtime).await.unwrap_err().to_string();
    assert!(!refused.is_empty());
    database.close().await;
}

#[tokio::test]
async fn a_runtime_role_on_an_old_schema_is_told_to_run_migrate() {
    let db = common::postgres().await;
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(match &db.database {
        codewatch::backends::Database::Postgres(pool) => pool,
        codewatch::backends::Database::Sqlite(_) => unreachable!(),
    })
    .await
    .unwrap();
    let mut runtime = codewatch::config::DatabaseArgs::at(db.url.clone());
    runtime.migrate_on_start = false;
    let err = codewatch::backends::Database::open(&runtime)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not up to date") && err.contains("codewatch migrate"),
        "{err}"
    );
}

#[tokio::test]
async fn postgresql_is_reached_over_tls_when_the_url_requires_it() {
    // Azure Database for PostgreSQL refuses connections without TLS: `sslmode=require` must work.
    let db = common::postgres().await;
    let url = format!("{}?sslmode=require", db.url);
    let database = Database::open(&codewatch::config::DatabaseArgs::at(url))
        .await
        .expect("a TLS connection");
    let Database::Postgres(pool) = &database else {
        panic!()
    };
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(encrypted);
    database.store().ping().await.unwrap();
}

/// The statements of the fenced `sql` block of the documentation that follows the line containing `after`.
fn readme_sql(after: &str) -> Vec<String> {
    common::readme_block(after, "sql")
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn some_rows(store: &SharedStore) {
    let now = Utc::now();
    let a = activation_at("ojE-161-pTv", now, 60, Some("alice"));
    let b = activation_at("abc-2-Def", now - Duration::seconds(30), 40, None);
    store.activate(&[a, b], now).await.unwrap();
    store
        .redeem(&code("abc-2-Def"), None, now, None)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_readmes_operator_sql_runs_on_postgresql_and_sqlite() {
    let pg = common::postgres().await;
    some_rows(&pg.database.store()).await;
    let Database::Postgres(pool) = &pg.database else {
        panic!()
    };
    let statements = readme_sql("Ready queries for");
    assert!(statements.len() >= 6);
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("README's PostgreSQL query failed ({e}): {statement}"));
    }
    let lite = common::sqlite().await;
    some_rows(&lite.database.store()).await;
    let Database::Sqlite(pools) = &lite.database else {
        panic!()
    };
    let pool = &pools.write;
    let statements = readme_sql("And for `sqlite3");
    assert!(statements.len() >= 5);
    for statement in statements {
        let rows = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("README's SQLite query failed ({e}): {statement}"));
        if statement.contains("active_codes ORDER BY") {
            assert_eq!(rows.len(), 1, "the one valid code");
        }
    }
}

/// On SQLite the purge deletes in statements of at most one batch, each its own transaction (so the
/// one writer is free between them). A row trigger records `total_changes()`, which grows by one per
/// row a trigger inserts within a statement and jumps by the statement's deleted rows once it ends:
/// each jump past one starts another statement.
#[tokio::test]
async fn on_sqlite_a_purge_deletes_at_most_one_batch_per_statement() {
    let db = common::sqlite().await;
    let store = db.database.store();
    let Database::Sqlite(pools) = &db.database else {
        panic!("a SQLite database")
    };
    for statement in [
        "CREATE TABLE purged (total_changes INTEGER NOT NULL)",
        "CREATE TRIGGER purged AFTER DELETE ON valid_codes BEGIN
            INSERT INTO purged VALUES (total_changes());
         END",
    ] {
        sqlx::query(statement).execute(&pools.write).await.unwrap();
    }
    let expired = 2 * codewatch::store::PURGE_BATCH as usize + 345;
    many_expired_rows(&store, expired).await;
    store.purge(Utc::now() - Duration::hours(1)).await.unwrap();
    let seen: Vec<i64> = sqlx::query_scalar("SELECT total_changes FROM purged ORDER BY rowid")
        .fetch_all(&pools.write)
        .await
        .unwrap();
    assert_eq!(seen.len(), expired);
    let mut batches = vec![1_usize];
    for pair in seen.windows(2) {
        if pair[1] - pair[0] == 1 {
            *batches.last_mut().unwrap() += 1;
        } else {
            batches.push(1);
        }
    }
    let batch = codewatch::store::PURGE_BATCH as usize;
    assert_eq!(batches, [batch, batch, 345], "rows deleted per statement");
}

/// A TCP proxy to `upstream` that holds every answer of the server for `delay`, so that a call
/// abandoned at a given time is cut while a statement (BEGIN among them) waits for its answer.
async fn slow_answers(
    upstream: std::net::SocketAddr,
    delay: std::time::Duration,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                    tokio::time::sleep(delay).await;
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// sqlx 0.9 puts a connection whose `BEGIN` was cancelled back in the pool still inside that
/// transaction: the next statements on it never commit and hold their locks, so every writer of those
/// rows waits for ever (seen as deliveries and expiries stalled in the guarantees). Abandoned at every
/// point, the store's transactions leave no session of the database inside one.
#[tokio::test]
async fn on_postgresql_transactions_abandoned_at_any_point_leave_no_session_inside_one() {
    use sqlx::Connection as _;
    let db = common::postgres().await;
    let mut url = url::Url::parse(&db.url).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let proxy = slow_answers(
        upstream.parse().unwrap(),
        std::time::Duration::from_millis(15),
    )
    .await;
    url.set_port(Some(proxy.port())).unwrap();
    let database = Database::open_existing(&codewatch::config::DatabaseArgs::at(url.to_string()))
        .await
        .unwrap();
    let store = database.store();
    let code = Code::parse("Abn-1-Don").unwrap();
    // Twenty at a time on a pool of ten (so some wait for a connection), cut after 0 to 79 ms: at
    // every step of a revoke, each answer taking 15 ms.
    for round in 0..4 {
        futures::future::join_all((0..20u64).map(|i| {
            tokio::time::timeout(
                std::time::Duration::from_millis(i * 4 + round),
                store.revoke(&code, Utc::now()),
            )
        }))
        .await;
    }
    // An abandoned call's connection goes back to the pool through a task of sqlx's: wait until every
    // connection is idle in the pool again.
    let Database::Postgres(pool) = &database else {
        unreachable!("a PostgreSQL URL")
    };
    common::eventually(
        "every connection back in the pool",
        std::time::Duration::from_secs(10),
        || async { (pool.num_idle() == pool.size() as usize).then_some(()) },
    )
    .await;
    let mut observer = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let inside: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&mut observer)
    .await
    .unwrap();
    assert_eq!(inside, 0, "sessions left inside a transaction");
}
