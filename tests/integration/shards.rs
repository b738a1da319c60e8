//! Shards: how `STORAGE_QUEUE_URL` lists and `STORAGE_QUEUE_SHARDS` counts become queues, and where the
//! producer's messages land. (Codes through three shards end to end: `tests/guarantees.rs`.)

use crate::common;

use chrono::TimeDelta;
use clap::Parser as _;
use codewatch::backends::QueueShards;
use codewatch::config::QueueArgs;
use codewatch::identity::{AzureAuth, CredentialChoice};
use codewatch::message::MessageEncoding;
use codewatch::queue::connection_string::ConnectionString;
use codewatch::queue::shards::shard_of;
use codewatch::queue::urls::QueueUrls;
use codewatch::secret::Secret;
use std::num::NonZeroUsize;
use std::time::Duration;

fn args(
    url: Option<String>,
    connection_string: Option<String>,
    name: &str,
    shards: usize,
) -> QueueArgs {
    QueueArgs {
        storage_queue_url: url.map(|u| QueueUrls::parse(&u).unwrap()),
        storage_connection_string: connection_string.map(Secret::new),
        queue_name: name.to_owned(),
        queue_shards: NonZeroUsize::new(shards).unwrap(),
        message_encoding: MessageEncoding::Text,
        azure_credential: CredentialChoice::Auto,
    }
}

/// Three queue URLs with a SAS each (as three storage accounts would be given).
fn sas_urls(names: &[String]) -> String {
    let cs = ConnectionString::parse(&common::connection_string()).unwrap();
    let sas = codewatch::queue::sas::account_sas_for(&cs, TimeDelta::minutes(10)).unwrap();
    let urls: Vec<String> = names
        .iter()
        .map(|n| format!("{}/{n}?{}", cs.queue_endpoint, sas.expose()))
        .collect();
    urls.join(", ")
}

#[tokio::test]
async fn a_list_of_queue_urls_is_one_shard_per_url_and_each_issuance_goes_to_its_own() {
    let names: Vec<String> = (0..3).map(|_| common::queue_name()).collect();
    let auth = AzureAuth::new(CredentialChoice::Auto);
    let shards = QueueShards::open(
        &args(Some(sas_urls(&names)), None, "unused", 1),
        None,
        &auth,
    )
    .await
    .unwrap();
    assert_eq!(shards.names(), names.join(", "));
    let spread = shards.spread();
    let ids: Vec<String> = (0..12).map(|i| format!("issuance-{i}")).collect();
    for id in &ids {
        spread.send(id, id, Duration::ZERO).await.unwrap();
    }
    for (index, queues) in shards.iter().enumerate() {
        let mut got: Vec<String> = queues
            .main
            .peek(32)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        got.sort();
        let mut expected: Vec<String> = ids
            .iter()
            .filter(|id| shard_of(id, 3) == index)
            .cloned()
            .collect();
        expected.sort();
        assert_eq!(got, expected, "shard {index}");
        assert_eq!(
            queues.poison.name(),
            format!("{}-poison", names[index]),
            "a poison queue per shard"
        );
    }
    let same = QueueShards::open(
        &args(Some(sas_urls(&names)), None, "unused", 3),
        None,
        &auth,
    )
    .await;
    assert!(same.is_ok(), "a count equal to the list is accepted");
}

#[tokio::test]
async fn a_url_list_with_another_count_a_repeat_or_too_many_queues_is_refused() {
    let names: Vec<String> = (0..3).map(|_| common::queue_name()).collect();
    let auth = AzureAuth::new(CredentialChoice::Auto);
    let refused = QueueShards::open(
        &args(Some(sas_urls(&names)), None, "unused", 2),
        None,
        &auth,
    )
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(
        refused.contains("lists 3 queues") && refused.contains("STORAGE_QUEUE_SHARDS is 2"),
        "{refused}"
    );
    assert!(!refused.contains("sig="), "no SAS in the error: {refused}");

    // A repeat or too many queues is refused as the flags are read, naming the setting and never
    // the SAS (clap's own message would repeat the value).
    let twice = vec![names[0].clone(), names[1].clone(), names[0].clone()];
    let many: Vec<String> = (0..65).map(|i| format!("q{i}")).collect();
    for (list, says) in [
        (sas_urls(&twice), "names the queue".to_owned()),
        (sas_urls(&many), "at most 64".to_owned()),
    ] {
        let refused = codewatch::config::Cli::try_parse_from([
            "codewatch",
            "worker",
            "--storage-queue-url",
            &list,
        ])
        .expect_err("refused")
        .to_string();
        assert!(
            refused.contains("STORAGE_QUEUE_URL") && refused.contains(&says),
            "{refused}"
        );
        assert!(!refused.contains("sig="), "no SAS in the error: {refused}");
    }
}

#[tokio::test]
async fn a_shard_count_names_the_queue_then_numbered_copies_on_azure_and_embedded() {
    let auth = AzureAuth::new(CredentialChoice::Auto);
    let name = common::queue_name();
    let azure = QueueShards::open(
        &args(None, Some(common::connection_string()), &name, 3),
        None,
        &auth,
    )
    .await
    .unwrap();
    assert_eq!(azure.names(), format!("{name}, {name}-1, {name}-2"));
    assert_eq!(azure.backend(), "azure-connection-string");
    for queues in azure.iter() {
        assert_eq!(queues.poison.approximate_len().await.unwrap(), 0, "created");
    }

    let db = common::sqlite().await;
    let embedded = QueueShards::open(&args(None, None, "codes", 2), Some(&db.database), &auth)
        .await
        .unwrap();
    assert_eq!(embedded.names(), "codes, codes-1");
    assert_eq!(embedded.backend(), "embedded");
}
