//! One contract, two queues: Azure Queue Storage (against Azurite) and the embedded SQLite queue must
//! behave the same way for everything the worker relies on.

use crate::common;

use codewatch::backends::Queues;
use codewatch::queue::QueueError;
use common::{TestDb, eventually};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

struct Fixture {
    queues: Queues,
    _db: Option<TestDb>,
}

async fn azure() -> Fixture {
    Fixture {
        queues: common::azure_queues().await,
        _db: None,
    }
}

async fn embedded() -> Fixture {
    let db = common::sqlite().await;
    Fixture {
        queues: common::embedded_queues(&db.database),
        _db: Some(db),
    }
}

async fn a_sent_message_is_received_once_with_its_body(f: Fixture) {
    let q = &f.queues.main;
    q.send("hello", Duration::ZERO).await.unwrap();
    let got = q.receive(32, LONG).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "hello");
    assert_eq!(got[0].dequeue_count, 1);
    assert!(
        q.receive(32, LONG).await.unwrap().is_empty(),
        "a leased message must be invisible"
    );
}

async fn a_message_sent_with_a_delay_stays_invisible_until_then(f: Fixture) {
    let q = &f.queues.main;
    q.send("later", Duration::from_secs(2)).await.unwrap();
    assert!(q.receive(32, LONG).await.unwrap().is_empty());
    let got = eventually("the delayed message", Duration::from_secs(10), || async {
        let got = q.receive(32, LONG).await.unwrap();
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(got[0].body, "later");
}

async fn an_undeleted_message_returns_after_its_lease_and_its_old_receipt_is_stale(f: Fixture) {
    let q = &f.queues.main;
    q.send("again", Duration::ZERO).await.unwrap();
    let first = q
        .receive(1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    let second = eventually("the redelivery", Duration::from_secs(10), || async {
        q.receive(1, LONG).await.unwrap().pop()
    })
    .await;
    assert_eq!(second.body, "again");
    assert_eq!(second.dequeue_count, 2);
    assert!(matches!(
        q.delete(&first.receipt).await,
        Err(QueueError::MessageGone)
    ));
    q.delete(&second.receipt).await.unwrap();
}

async fn a_deleted_message_is_gone_and_deleting_twice_says_so(f: Fixture) {
    let q = &f.queues.main;
    q.send("once", Duration::ZERO).await.unwrap();
    let m = q
        .receive(1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    q.delete(&m.receipt).await.unwrap();
    assert!(matches!(
        q.delete(&m.receipt).await,
        Err(QueueError::MessageGone)
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(q.receive(32, LONG).await.unwrap().is_empty());
    assert_eq!(q.approximate_len().await.unwrap(), 0);
}

async fn release_makes_a_message_visible_again_at_once(f: Fixture) {
    let q = &f.queues.main;
    q.send("back", Duration::ZERO).await.unwrap();
    let m = q.receive(1, LONG).await.unwrap().remove(0);
    q.release(&m.receipt, Duration::ZERO).await.unwrap();
    let again = q.receive(1, LONG).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].dequeue_count, 2);
}

async fn update_replaces_the_text_and_the_visibility_keeping_the_message(f: Fixture) {
    let q = &f.queues.main;
    q.send("activate <&>", Duration::ZERO).await.unwrap();
    let first = q.receive(1, LONG).await.unwrap().remove(0);
    q.update(&first.receipt, "expire <&> ü", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        q.receive(32, LONG).await.unwrap().is_empty(),
        "invisible until its new time"
    );
    let again = eventually("the updated message", Duration::from_secs(10), || async {
        let got = q.receive(32, LONG).await.unwrap();
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(again.len(), 1, "updated in place, not copied");
    assert_eq!(again[0].body, "expire <&> ü");
    assert_eq!(again[0].receipt.message_id, first.receipt.message_id);
    assert_eq!(again[0].dequeue_count, 2, "the dequeue count carries on");
    assert!(matches!(
        q.update(&first.receipt, "stale", Duration::ZERO).await,
        Err(QueueError::MessageGone)
    ));
}

async fn receive_takes_at_most_the_batch_size(f: Fixture) {
    let q = &f.queues.main;
    for i in 0..5 {
        q.send(&format!("m{i}"), Duration::ZERO).await.unwrap();
    }
    assert_eq!(q.receive(3, LONG).await.unwrap().len(), 3);
    assert_eq!(q.receive(32, LONG).await.unwrap().len(), 2);
}

async fn peek_does_not_take_and_clear_empties_the_queue(f: Fixture) {
    let q = &f.queues.main;
    q.send("a", Duration::ZERO).await.unwrap();
    q.send("b", Duration::ZERO).await.unwrap();
    let mut peeked: Vec<String> = q
        .peek(32)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    peeked.sort();
    assert_eq!(peeked, ["a", "b"]);
    assert_eq!(q.approximate_len().await.unwrap(), 2);
    assert_eq!(q.receive(32, LONG).await.unwrap().len(), 2);
    q.clear().await.unwrap();
    assert_eq!(q.approximate_len().await.unwrap(), 0);
}

async fn bodies_with_markup_quotes_and_unicode_survive(f: Fixture) {
    let q = &f.queues.main;
    let body = r#"{"code":"<&>'\"", "note":"ünïcödé ✓"}"#;
    q.send(body, Duration::ZERO).await.unwrap();
    assert_eq!(q.receive(1, LONG).await.unwrap()[0].body, body);
}

async fn the_poison_queue_is_a_separate_queue(f: Fixture) {
    f.queues.poison.send("bad", Duration::ZERO).await.unwrap();
    assert!(f.queues.main.receive(32, LONG).await.unwrap().is_empty());
    assert_eq!(
        f.queues.poison.receive(32, LONG).await.unwrap()[0].body,
        "bad"
    );
    assert!(f.queues.poison.name().ends_with("-poison"));
}

/// Many sends and deletes at once (the embedded queue commits them in groups): each message lands
/// once, each delete answers for its own receipt, and a stale receipt among good ones is refused alone.
async fn concurrent_sends_and_deletes_each_answer_for_themselves(f: Fixture) {
    let q = &f.queues.main;
    let sends = (0..64).map(|i| async move { q.send(&format!("m{i}"), Duration::ZERO).await });
    for result in futures::future::join_all(sends).await {
        result.unwrap();
    }
    let mut received = Vec::new();
    while received.len() < 64 {
        let batch = q.receive(32, LONG).await.unwrap();
        assert!(!batch.is_empty(), "only {} of 64 arrived", received.len());
        received.extend(batch);
    }
    let mut bodies: Vec<&str> = received.iter().map(|m| m.body.as_str()).collect();
    bodies.sort_unstable();
    bodies.dedup();
    assert_eq!(bodies.len(), 64, "each once");
    let stale = codewatch::queue::Receipt {
        message_id: received[0].receipt.message_id.clone(),
        pop_receipt: "stale".into(),
    };
    let deletes = received
        .iter()
        .map(|m| m.receipt.clone())
        .chain([stale])
        .map(|r| async move { q.delete(&r).await });
    let results = futures::future::join_all(deletes).await;
    let (last, good) = results.split_last().unwrap();
    assert!(good.iter().all(Result::is_ok), "{good:?}");
    assert!(matches!(last, Err(QueueError::MessageGone)), "{last:?}");
    assert_eq!(q.approximate_len().await.unwrap(), 0);
}

macro_rules! contract {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::$backend().await).await;
                }
            )*
        }
    };
}

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        contract!(azure: $($case),*);
        contract!(embedded: $($case),*);
    };
}

both!(
    a_sent_message_is_received_once_with_its_body,
    a_message_sent_with_a_delay_stays_invisible_until_then,
    an_undeleted_message_returns_after_its_lease_and_its_old_receipt_is_stale,
    a_deleted_message_is_gone_and_deleting_twice_says_so,
    release_makes_a_message_visible_again_at_once,
    update_replaces_the_text_and_the_visibility_keeping_the_message,
    receive_takes_at_most_the_batch_size,
    peek_does_not_take_and_clear_empties_the_queue,
    bodies_with_markup_quotes_and_unicode_survive,
    the_poison_queue_is_a_separate_queue,
    concurrent_sends_and_deletes_each_answer_for_themselves,
);

#[tokio::test]
async fn a_queue_url_carrying_a_sas_works_without_a_key_or_credential() {
    use codewatch::queue::azure::AzureQueueFactory;
    use codewatch::queue::connection_string::ConnectionString;
    let name = common::queue_name();
    let keyed = common::azure_queues_named(&name).await;
    let cs = ConnectionString::parse(&common::connection_string()).unwrap();
    let sas = codewatch::queue::sas::account_sas_for(&cs, chrono::Duration::hours(1)).unwrap();
    let url = format!("{}/{name}?{}", common::azurite_endpoint(), sas.expose());
    let factory =
        AzureQueueFactory::from_queue_url(&url, || panic!("a SAS URL needs no credential"))
            .unwrap();
    assert_eq!(factory.default_queue(), Some(name.as_str()));
    let queue = factory.queue(&name).unwrap();
    use codewatch::queue::QueueSender;
    queue.send("via sas", Duration::ZERO).await.unwrap();
    assert_eq!(
        keyed.main.receive(1, LONG).await.unwrap()[0].body,
        "via sas"
    );
}

/// The embedded queue's writer task lives on the runtime of the first write; when that runtime is
/// gone (a test's, or after a panic in the task), the next write starts a new writer instead of
/// failing for good.
#[test]
fn the_embedded_queue_outlives_the_runtime_that_started_its_writer() {
    let first = tokio::runtime::Runtime::new().unwrap();
    let (db, queues) = first.block_on(async {
        let db = common::sqlite().await;
        let queues = common::embedded_queues(&db.database);
        queues.main.send("before", Duration::ZERO).await.unwrap();
        (db, queues)
    });
    drop(first);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        queues.main.send("after", Duration::ZERO).await.unwrap();
        let mut bodies: Vec<String> = queues
            .main
            .receive(32, LONG)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        bodies.sort();
        assert_eq!(bodies, ["after", "before"]);
    });
    drop(db);
}
