//! Builds the worker's delivery stage from its flags: the channel, its secrets (a value, an owner-only
//! file, or Key Vault), and the refusals that keep delivery from being abused.

use crate::backends::{Database, QueueShards};
use crate::config::{DeliveryArgs, DeliveryChannel};
use crate::delivery::smtp::SmtpChannel;
use crate::delivery::template::MailTemplate;
use crate::delivery::webhook::WebhookChannel;
use crate::delivery::{Channel, Deliverer};
use crate::function_key::KeySource;
use crate::identity::AzureAuth;
use crate::secret::Secret;
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The delivery stage `args` ask for, if any. With an Azure queue, delivery needs message signing:
/// otherwise anyone allowed to send to the queue could make the worker mail codes of their choosing
/// to addresses of their choosing.
pub(super) async fn deliverer(
    args: &DeliveryArgs,
    database: &Database,
    queues: &QueueShards,
    signing: bool,
    auth: &AzureAuth,
    deadline: Duration,
) -> Result<Option<Arc<Deliverer>>> {
    let channel: Arc<dyn Channel> = match args.delivery {
        DeliveryChannel::None => return Ok(None),
        DeliveryChannel::Smtp => Arc::new(smtp(args, auth, deadline).await?),
        DeliveryChannel::Webhook => Arc::new(webhook(args, auth, deadline).await?),
    };
    if !signing && queues.backend() != "embedded" {
        bail!(
            "DELIVERY={} on an Azure queue needs MESSAGE_SIGNING_KEY (or its file or vault) on serve \
             and the worker: without it, anyone with send rights on the queue could have codes sent \
             where they like",
            args.delivery.name()
        );
    }
    tracing::info!(
        channel = args.delivery.name(),
        "delivery on: codes issued with a destination are sent there once activated"
    );
    Ok(Some(Arc::new(Deliverer::new(
        database.store(),
        channel,
        args.settings(),
    ))))
}

async fn smtp(args: &DeliveryArgs, auth: &AzureAuth, deadline: Duration) -> Result<SmtpChannel> {
    let url = args
        .smtp_url
        .as_ref()
        .context("DELIVERY=smtp needs SMTP_URL (e.g. smtps://mail.example.com:465)")?;
    let credentials = match &args.smtp_username {
        Some(user) => {
            let password = secret(
                args.smtp_password.as_ref(),
                args.smtp_password_file.as_deref(),
                args,
                &args.smtp_password_secret_name,
                auth,
                deadline,
                "SMTP_PASSWORD",
            )
            .await?
            .context("SMTP_USERNAME is set: give SMTP_PASSWORD, SMTP_PASSWORD_FILE or DELIVERY_KEY_VAULT_URL")?;
            Some((user.clone(), password))
        }
        None => None,
    };
    let body = match &args.delivery_mail_body_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading DELIVERY_MAIL_BODY_FILE {}", path.display()))?,
        None => crate::delivery::template::DEFAULT_BODY.to_owned(),
    };
    let template = MailTemplate::new(&args.delivery_mail_subject, &body)?;
    Ok(SmtpChannel::new(
        url,
        credentials,
        &args.delivery_mail_from,
        template,
        Duration::from_secs(args.delivery_timeout_seconds),
    )?)
}

async fn webhook(
    args: &DeliveryArgs,
    auth: &AzureAuth,
    deadline: Duration,
) -> Result<WebhookChannel> {
    let url = args
        .delivery_webhook_url
        .clone()
        .context("DELIVERY=webhook needs DELIVERY_WEBHOOK_URL")?;
    let key = secret(
        args.delivery_webhook_secret.as_ref(),
        args.delivery_webhook_secret_file.as_deref(),
        args,
        &args.delivery_webhook_secret_name,
        auth,
        deadline,
        "DELIVERY_WEBHOOK_SECRET",
    )
    .await?
    .context(
        "DELIVERY=webhook needs DELIVERY_WEBHOOK_SECRET, its _FILE, or DELIVERY_KEY_VAULT_URL",
    )?;
    Ok(WebhookChannel::new(
        url,
        key,
        Duration::from_secs(args.delivery_timeout_seconds),
    )?)
}

/// A secret from its value, else its owner-only file, else the Key Vault secret `name`; `None` when
/// none is given. Giving two of them is refused: which one wins would be a guess.
async fn secret(
    value: Option<&Secret>,
    file: Option<&Path>,
    args: &DeliveryArgs,
    name: &str,
    auth: &AzureAuth,
    deadline: Duration,
    what: &str,
) -> Result<Option<Secret>> {
    if value.is_some() && file.is_some() {
        bail!("{what} and {what}_FILE are both set: give one");
    }
    if let Some(value) = value {
        return Ok(Some(value.clone()));
    }
    if let Some(path) = file {
        let text = crate::files::read_key_file(path)
            .with_context(|| format!("reading {what}_FILE {}", path.display()))?;
        return Ok(Some(Secret::new(text.trim())));
    }
    let Some(vault) = &args.delivery_key_vault_url else {
        return Ok(None);
    };
    let source = KeySource::key_vault(vault.as_str(), name, auth, true)?;
    let value = tokio::time::timeout(deadline, source.fetch())
        .await
        .with_context(|| format!("Key Vault {vault} did not answer within {deadline:?}"))?
        .with_context(|| format!("reading {what} from Key Vault secret {name}"))?;
    Ok(Some(value))
}
