//! The mail an operator words: a subject line and a plain-text body with placeholders.

use crate::store::PendingDelivery;
use chrono::{DateTime, Utc};

/// The placeholders a template may use.
const PLACEHOLDERS: [&str; 4] = ["{code}", "{minutes}", "{expires_at}", "{subject}"];

/// The default subject line.
pub const DEFAULT_SUBJECT: &str = "Your sign-in code";

/// The default body.
pub const DEFAULT_BODY: &str = "Your sign-in code is {code}\n\nIt expires in {minutes} minutes \
({expires_at} UTC). If you did not ask for it, ignore this mail: nobody can sign in without it.\n";

/// A subject line and a body, checked once at start.
#[derive(Clone, Debug)]
pub struct MailTemplate {
    subject: String,
    body: String,
}

/// Why a template cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// The body does not show the code.
    #[error("the mail body template must contain {{code}}")]
    NoCode,
    /// A `{…}` that is not one of the placeholders.
    #[error(
        "unknown placeholder {0} in the mail template (known: {{code}}, {{minutes}}, {{expires_at}}, {{subject}})"
    )]
    Unknown(String),
    /// A subject line that would end the header.
    #[error("the mail subject template must be one line")]
    MultiLine,
}

impl MailTemplate {
    /// A template from a subject line and a body, each using only the known placeholders; the body
    /// must show `{code}`.
    pub fn new(subject: &str, body: &str) -> Result<Self, TemplateError> {
        if subject.contains(['\r', '\n']) {
            return Err(TemplateError::MultiLine);
        }
        for text in [subject, body] {
            let mut rest = text;
            while let Some(start) = rest.find('{') {
                let tail = &rest[start..];
                let end = tail.find('}').map_or(tail.len(), |e| e + 1);
                let found = &tail[..end];
                if !PLACEHOLDERS.contains(&found) {
                    return Err(TemplateError::Unknown(crate::untrusted::escaped(found)));
                }
                rest = &tail[end..];
            }
        }
        if !body.contains("{code}") {
            return Err(TemplateError::NoCode);
        }
        Ok(Self {
            subject: subject.to_owned(),
            body: body.to_owned(),
        })
    }

    /// The subject line and body for `delivery` at `now`.
    pub fn render(&self, delivery: &PendingDelivery, now: DateTime<Utc>) -> (String, String) {
        let minutes = ((delivery.expires_at - now).num_seconds().max(0) + 59) / 60;
        let fill = |text: &str| {
            text.replace("{code}", delivery.code.as_str())
                .replace("{minutes}", &minutes.to_string())
                .replace(
                    "{expires_at}",
                    &delivery.expires_at.format("%Y-%m-%d %H:%M").to_string(),
                )
                .replace(
                    "{subject}",
                    delivery.subject.as_ref().map_or("", |s| s.as_str()),
                )
        };
        (fill(&self.subject), fill(&self.body))
    }
}

impl Default for MailTemplate {
    fn default() -> Self {
        Self {
            subject: DEFAULT_SUBJECT.to_owned(),
            body: DEFAULT_BODY.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Code, Destination, IssuanceId};

    fn delivery(now: DateTime<Utc>) -> PendingDelivery {
        PendingDelivery {
            issuance_id: IssuanceId::random(),
            code: Code::parse("ojE-161-pTv").unwrap(),
            subject: None,
            destination: Destination::parse("alice@example.com").unwrap(),
            expires_at: now + chrono::Duration::seconds(590),
            attempt: 1,
        }
    }

    #[test]
    fn the_default_template_shows_the_code_and_the_minutes_left() {
        let now = Utc::now();
        let (subject, body) = MailTemplate::default().render(&delivery(now), now);
        assert_eq!(subject, "Your sign-in code");
        assert!(
            body.starts_with("Your sign-in code is ojE-161-pTv\n"),
            "{body}"
        );
        assert!(body.contains("expires in 10 minutes"), "{body}");
    }

    #[test]
    fn a_template_without_the_code_or_with_unknown_placeholders_is_refused() {
        assert_eq!(
            MailTemplate::new("s", "no code").unwrap_err(),
            TemplateError::NoCode
        );
        assert_eq!(
            MailTemplate::new("s", "{code} {password}").unwrap_err(),
            TemplateError::Unknown("{password}".into())
        );
        assert_eq!(
            MailTemplate::new("a\r\nBcc: x@y", "{code}").unwrap_err(),
            TemplateError::MultiLine
        );
        assert!(MailTemplate::new("Code for {subject}", "{code} ({minutes} min)").is_ok());
    }
}
