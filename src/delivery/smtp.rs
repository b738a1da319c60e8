//! The mail channel: each code in a plain-text mail through an SMTP server (`lettre`), with STARTTLS
//! (`smtp://host:587?tls=required`), implicit TLS (`smtps://host:465`), or, for a server on the same
//! host, plain `smtp://localhost:25`.

use super::template::MailTemplate;
use super::{Channel, DeliveryError};
use crate::secret::Secret;
use crate::store::PendingDelivery;
use async_trait::async_trait;
use chrono::Utc;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// Why the mail channel cannot be set up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SmtpSetupError {
    /// The URL is not an SMTP URL lettre understands (never shown: it may hold a password).
    #[error(
        "SMTP_URL is not smtp://host[:port][?tls=required|opportunistic] or smtps://host[:port]"
    )]
    Url,
    /// The sender address is not one.
    #[error("DELIVERY_MAIL_FROM is not a mail address (e.g. `codewatch <no-reply@example.com>`)")]
    From,
}

/// Sends codes by mail.
pub struct SmtpChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    template: MailTemplate,
}

impl SmtpChannel {
    /// A channel through the server at `url`, as `from`, logging in with `credentials` if given,
    /// each exchange bounded by `timeout`.
    pub fn new(
        url: &Secret,
        credentials: Option<(String, Secret)>,
        from: &str,
        template: MailTemplate,
        timeout: Duration,
    ) -> Result<Self, SmtpSetupError> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
            .map_err(|_| SmtpSetupError::Url)?
            .timeout(Some(timeout));
        if let Some((user, password)) = credentials {
            builder = builder.credentials(Credentials::new(user, password.expose().to_owned()));
        }
        Ok(Self {
            transport: builder.build(),
            from: from.parse().map_err(|_| SmtpSetupError::From)?,
            template,
        })
    }
}

#[async_trait]
impl Channel for SmtpChannel {
    fn name(&self) -> &'static str {
        "smtp"
    }

    async fn deliver(&self, delivery: &PendingDelivery) -> Result<(), DeliveryError> {
        let to: Mailbox = delivery.destination.as_str().parse().map_err(|_| {
            DeliveryError::Permanent("the destination is not a mail address".into())
        })?;
        let (subject, body) = self.template.render(delivery, Utc::now());
        let mail = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| DeliveryError::Permanent(format!("cannot write the mail: {e}")))?;
        match self.transport.send(mail).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(DeliveryError::Permanent(format!(
                "SMTP server refused: {e}"
            ))),
            Err(e) => Err(DeliveryError::Transient(format!("SMTP: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_or_sender_is_refused_without_showing_the_url() {
        let template = MailTemplate::default();
        let bad = SmtpChannel::new(
            &Secret::new("http://user:hunter2@mail.example"),
            None,
            "no-reply@example.com",
            template.clone(),
            Duration::from_secs(1),
        );
        let error = bad.err().unwrap();
        assert_eq!(error, SmtpSetupError::Url);
        assert!(!error.to_string().contains("hunter2"));
        let from = SmtpChannel::new(
            &Secret::new("smtp://localhost:2525"),
            None,
            "not an address",
            template,
            Duration::from_secs(1),
        );
        assert_eq!(from.err().unwrap(), SmtpSetupError::From);
    }
}
