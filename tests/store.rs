//! The valid-codes store on a real SQLite database: idempotent activation and expiry, and validity
//! as `expires_at > now`.

mod common;

use chrono::{Duration, Utc};
use codewatch::backends::Database;
use codewatch::code::Code;
use codewatch::message::{Issuance, IssuanceId};
use codewatch::store::{ActivateReport, Activation};

fn activation(code: &str, ttl_secs: i64) -> Activation {
    let issued_at = Utc::now();
    Activation {
        issuance: Issuance {
            id: IssuanceId::random(),
            code: Code::parse(code).unwrap(),
            issued_at,
        },
        expires_at: issued_at + Duration::seconds(ttl_secs),
    }
}

#[tokio::test]
async fn activating_twice_keeps_one_row_and_reports_the_duplicate() {
    let db = common::sqlite().await;
    let store = db.database.store();
    let a = activation("abc-1-def", 60);
    let first = store
        .activate(std::slice::from_ref(&a), Utc::now())
        .await
        .unwrap();
    let second = store
        .activate(&[a.clone(), a.clone()], Utc::now())
        .await
        .unwrap();
    assert_eq!(
        first,
        ActivateReport {
            inserted: 1,
            duplicates: 0,
            stale: 0
        }
    );
    assert_eq!(
        second,
        ActivateReport {
            inserted: 0,
            duplicates: 2,
            stale: 0
        }
    );
    assert_eq!(store.list(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn two_issuances_of_the_same_code_are_two_rows() {
    let db = common::sqlite().await;
    let store = db.database.store();
    store
        .activate(
            &[activation("abc-1-def", 60), activation("abc-1-def", 60)],
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .find_valid(&Code::parse("abc-1-def").unwrap(), Utc::now())
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn an_activation_past_its_expiry_inserts_nothing_and_removes_a_leftover_row() {
    let db = common::sqlite().await;
    let store = db.database.store();
    let a = activation("abc-2-def", 1);
    store
        .activate(std::slice::from_ref(&a), Utc::now())
        .await
        .unwrap();
    let later = a.expires_at + Duration::milliseconds(1);
    let report = store
        .activate(std::slice::from_ref(&a), later)
        .await
        .unwrap();
    assert_eq!(
        report,
        ActivateReport {
            inserted: 0,
            duplicates: 0,
            stale: 1
        }
    );
    assert!(store.list(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn expire_removes_only_rows_whose_time_has_come() {
    let db = common::sqlite().await;
    let store = db.database.store();
    let a = activation("abc-3-def", 60);
    store
        .activate(std::slice::from_ref(&a), Utc::now())
        .await
        .unwrap();
    assert_eq!(
        store
            .expire(std::slice::from_ref(&a.issuance.id), Utc::now())
            .await
            .unwrap(),
        0,
        "too early"
    );
    assert_eq!(
        store
            .expire(std::slice::from_ref(&a.issuance.id), a.expires_at)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .expire(std::slice::from_ref(&a.issuance.id), a.expires_at)
            .await
            .unwrap(),
        0,
        "idempotent"
    );
}

#[tokio::test]
async fn a_code_is_valid_strictly_before_expires_at() {
    let db = common::sqlite().await;
    let store = db.database.store();
    let a = activation("abc-4-def", 60);
    store
        .activate(std::slice::from_ref(&a), Utc::now())
        .await
        .unwrap();
    let code = &a.issuance.code;
    let just_before = a.expires_at - Duration::microseconds(1);
    assert_eq!(store.find_valid(code, just_before).await.unwrap().len(), 1);
    assert!(
        store
            .find_valid(code, a.expires_at)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .find_valid(&Code::parse("abc-4-DEF").unwrap(), just_before)
            .await
            .unwrap()
            .is_empty(),
        "case-sensitive"
    );
}

#[tokio::test]
async fn purge_removes_every_row_past_its_expiry() {
    let db = common::sqlite().await;
    let store = db.database.store();
    let (short, long) = (activation("abc-5-def", 1), activation("abc-6-def", 60));
    store
        .activate(&[short.clone(), long], Utc::now())
        .await
        .unwrap();
    assert_eq!(store.purge_expired(short.expires_at).await.unwrap(), 1);
    assert_eq!(store.list(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_active_codes_view_answers_plain_sql() {
    let db = common::sqlite().await;
    let store = db.database.store();
    store
        .activate(
            &[activation("sql-7-Vue", 60), activation("old-8-Vue", 1)],
            Utc::now(),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let Database::Sqlite(pool) = &db.database;
    let codes: Vec<String> = sqlx::query_scalar("SELECT code FROM active_codes")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(codes, ["sql-7-Vue"]);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM valid_codes")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        total, 2,
        "the expired row stays until its expiry message, but is not active"
    );
}
