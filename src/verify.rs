//! Answers "is this code valid?" for a sign-in service, with NIST SP 800-63B throttling per subject.

use crate::code::Code;
use crate::store::{CodeRecord, SharedStore, StoreError};
use crate::subject::Subject;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// How failed checks are throttled.
#[derive(Clone, Copy, Debug)]
pub struct Throttle {
    /// Consecutive failed checks after which a subject's checks fail.
    pub max_failures: u32,
    /// How long a run of failures counts; the lock ends when its window does.
    pub window: Duration,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            max_failures: 100,
            window: Duration::from_secs(3600),
        }
    }
}

/// The answer to a check or redeem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The code is valid (for a redeem: and is now consumed).
    Valid(CodeRecord),
    /// Not valid. The reason is for the log only: callers see one answer for all of them.
    Invalid(&'static str),
}

/// Checks and redeems codes against the store.
#[derive(Clone)]
pub struct Verifier {
    store: SharedStore,
    throttle: Throttle,
}

/// Whether a check only looks or also consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Check,
    Redeem,
}

impl Verifier {
    /// A verifier on `store`.
    pub fn new(store: SharedStore, throttle: Throttle) -> Self {
        Self { store, throttle }
    }

    /// Whether `code` is valid for `subject` (`None`: only unbound codes match) at `now`.
    pub async fn check(
        &self,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
    ) -> Result<Verdict, StoreError> {
        self.verify(code, subject, now, Mode::Check).await
    }

    /// Consumes `code` if it is valid for `subject`; of concurrent redeems exactly one succeeds.
    pub async fn redeem(
        &self,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
    ) -> Result<Verdict, StoreError> {
        self.verify(code, subject, now, Mode::Redeem).await
    }

    fn window_start(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::Duration::from_std(self.throttle.window).unwrap_or(chrono::Duration::MAX)
    }

    async fn verify(
        &self,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
        mode: Mode,
    ) -> Result<Verdict, StoreError> {
        if let Some(subject) = subject
            && self.store.failures(subject, self.window_start(now)).await?
                >= self.throttle.max_failures
        {
            tracing::warn!(%subject, "check refused: subject locked after too many failed checks");
            return Ok(Verdict::Invalid("subject locked"));
        }
        let found = match mode {
            Mode::Check => self.store.find_valid(code, subject, now).await?,
            Mode::Redeem => self.store.redeem(code, subject, now).await?,
        };
        match (found, subject) {
            (Some(record), Some(subject)) => {
                self.store.reset_failures(subject).await?;
                Ok(Verdict::Valid(record))
            }
            (Some(record), None) => Ok(Verdict::Valid(record)),
            (None, _) => {
                let reason = self.why_not(code, subject, now).await?;
                if let Some(subject) = subject {
                    let failures = self
                        .store
                        .record_failure(subject, now, self.window_start(now))
                        .await?;
                    tracing::info!(%subject, failures, reason, ?mode, "check failed");
                } else {
                    tracing::info!(reason, ?mode, "unbound check failed");
                }
                Ok(Verdict::Invalid(reason))
            }
        }
    }

    /// The reason a code did not match, for the log.
    async fn why_not(
        &self,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
    ) -> Result<&'static str, StoreError> {
        let records = self.store.records(code).await?;
        let mine: Vec<&CodeRecord> = records
            .iter()
            .filter(|r| r.subject.as_ref() == subject)
            .collect();
        Ok(match mine.first() {
            None if records.is_empty() => "no such code",
            None => "code bound to another subject",
            Some(r) => match r.state_at(now) {
                "valid" => "redeemed concurrently",
                state => state,
            },
        })
    }
}
