//! `codewatch queue stats | peek | clear | requeue-poison`: the on-call engineer's view of the queue.

use super::progress::Progress;
use crate::backends::{Database, QueueShards};
use crate::config::{QueueCommand, QueueToolArgs};
use crate::message::CodeMessage;
use crate::queue::SharedQueue;
use crate::timestamp;
use anyhow::{Context, Result, bail};
use std::io::{BufRead, Write};
use std::time::Duration;

/// Runs a `queue` subcommand.
pub async fn run(args: QueueToolArgs) -> Result<()> {
    let azure =
        args.queue.storage_queue_url.is_some() || args.queue.storage_connection_string.is_some();
    // The database is needed only for the embedded queue; it is never created here.
    let database = match azure {
        true => None,
        false => Some(
            Database::open_existing(&args.database)
                .await
                .context("opening the database")?,
        ),
    };
    let auth = crate::identity::AzureAuth::new(args.queue.azure_credential);
    let shards = QueueShards::open(&args.queue, database.as_ref(), &auth)
        .await
        .context("opening the queue")?;
    // Every command covers every shard, each with its own poison queue.
    match args.command {
        QueueCommand::Stats => {
            for queues in shards.iter() {
                for queue in [&queues.main, &queues.poison] {
                    say!(
                        "{:<40} ~{} messages",
                        queue.name(),
                        queue.approximate_len().await?
                    )?;
                }
            }
        }
        QueueCommand::Peek { count, poison } => {
            for queues in shards.iter() {
                peek(if poison { &queues.poison } else { &queues.main }, count).await?
            }
        }
        QueueCommand::Clear { poison, yes } => {
            let chosen: Vec<&SharedQueue> = shards
                .iter()
                .map(|q| if poison { &q.poison } else { &q.main })
                .collect();
            let names: Vec<&str> = chosen.iter().map(|q| q.name()).collect();
            if !yes && !confirm(&format!("Delete every message in {}?", names.join(", ")))? {
                bail!("not cleared");
            }
            for queue in chosen {
                queue.clear().await?;
                say!("{}: cleared", queue.name())?;
            }
        }
        QueueCommand::RequeuePoison => {
            for queues in shards.iter() {
                let moved = requeue(&queues.poison, &queues.main).await?;
                say!(
                    "moved {moved} message(s) from {} to {}",
                    queues.poison.name(),
                    queues.main.name()
                )?;
            }
        }
    }
    Ok(())
}

async fn peek(queue: &SharedQueue, count: u32) -> Result<()> {
    let messages = queue.peek(count).await?;
    if messages.is_empty() {
        say!(
            "{}: no visible messages (re-armed expiry messages stay invisible until their time)",
            queue.name()
        )?;
    }
    for m in messages {
        let what = match CodeMessage::decode(&m.body, m.inserted_at) {
            Ok(CodeMessage::Activate(i)) => format!(
                "activate {} issued {}{}",
                i.code,
                timestamp::format(i.issued_at),
                i.subject.map(|s| format!(" for {s}")).unwrap_or_default()
            ),
            Ok(CodeMessage::Expire {
                issuance,
                expires_at,
            }) => {
                format!(
                    "expire {} at {}",
                    issuance.code,
                    timestamp::format(expires_at)
                )
            }
            Err(e) => format!(
                "unusable ({e}): {:?}",
                m.body.chars().take(200).collect::<String>()
            ),
        };
        say!(
            "{}  dequeued {}x  inserted {}  {what}",
            m.message_id,
            m.dequeue_count,
            timestamp::format(m.inserted_at)
        )?;
    }
    Ok(())
}

/// Moves every message from `from` to `to`: send the copy, then delete the original, so nothing is lost.
pub async fn requeue(from: &SharedQueue, to: &SharedQueue) -> Result<usize> {
    let mut moved = 0;
    let mut kept = Vec::new();
    let total = from.approximate_len().await.ok();
    let mut progress = Progress::new(&format!("requeueing {}", from.name()), total);
    loop {
        let batch = from
            .receive(crate::queue::MAX_BATCH, Duration::from_secs(60))
            .await?;
        if batch.is_empty() {
            progress.finish();
            break;
        }
        for m in batch {
            if dated_by_insertion(&m.body) {
                kept.push(m.receipt);
                continue;
            }
            to.send(&m.body, Duration::ZERO).await?;
            from.delete(&m.receipt).await?;
            moved += 1;
            progress.inc(1);
        }
    }
    for receipt in &kept {
        from.release(receipt, Duration::ZERO).await?;
    }
    if !kept.is_empty() {
        say!(
            "left {} message(s) in {}: they carry no timestamp (a bare code, or one without \
             \"timestamp\"), so their code is dated by the time it is put on a queue, and requeueing \
             would give an old code a new lifetime; issue a new code instead",
            kept.len(),
            from.name()
        )?;
    }
    Ok(moved)
}

/// Whether a message's code takes its issue time from the queue's insertion time (a bare code, or a
/// message without `timestamp`): decoded as inserted at two different times, it is dated differently.
fn dated_by_insertion(body: &str) -> bool {
    let (a, b) = (
        chrono::DateTime::UNIX_EPOCH,
        chrono::DateTime::UNIX_EPOCH + chrono::Duration::days(1),
    );
    match (CodeMessage::decode(body, a), CodeMessage::decode(body, b)) {
        (Ok(CodeMessage::Activate(x)), Ok(CodeMessage::Activate(y))) => x.issued_at != y.issued_at,
        _ => false,
    }
}

fn confirm(question: &str) -> Result<bool> {
    say_part!("{question} [y/N] ")?;
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
