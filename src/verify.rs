//! Answers "is this code valid?" for a sign-in service, with NIST SP 800-63B throttling per subject.

use crate::domain::{Code, CodeState, IdempotencyKey, Subject, fingerprint};
use crate::store::{CodeRecord, Gate, KeyedRedeem, RedeemKey, StoreError, VerificationStore};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

/// How failed checks are throttled. Its `Default` is built from the flags' defaults (`config::VerifyArgs`).
#[derive(Clone, Copy, Debug)]
pub struct Throttle {
    /// Consecutive failed checks after which a subject's checks fail.
    pub max_failures: u32,
    /// How long a run of failures counts; the lock ends when its window does.
    pub window: Duration,
    /// Wrong checks for a subject after which each of its valid codes is burned: the user must ask
    /// for a new code (as Twilio Verify allows 5 checks per code).
    pub max_wrong_per_code: u32,
}

/// The answer to a check or redeem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The code is valid (for a redeem: and is now consumed).
    Valid(CodeRecord),
    /// Not valid. The reason is for the log only: callers see one answer for all of them.
    Invalid(&'static str),
}

/// The answer to a redeem sent with an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyedVerdict {
    /// The key was new: this request was judged.
    Judged(Verdict),
    /// The key came with the same code and subject before: the first answer again, nothing counted.
    Replayed(Verdict),
    /// The key came with another code or subject before: refused, nothing done.
    KeyReused,
}

/// Checks and redeems codes against the store.
#[derive(Clone)]
pub struct Verifier {
    store: Arc<dyn VerificationStore>,
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
    pub fn new(store: Arc<dyn VerificationStore>, throttle: Throttle) -> Self {
        Self { store, throttle }
    }

    /// Whether `code` is valid for `subject` (`None`: only unbound codes match) at `now`.
    pub async fn check(
        &self,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
    ) -> Result<Verdict, StoreError> {
        self.verify(code, subject, now, Mode::Check)
            .instrument(crate::telemetry::table_span(
                "check",
                self.store.db_system(),
            ))
            .await
    }

    /// Consumes `code` if it is valid for `subject`; of concurrent redeems exactly one succeeds.
    pub async fn redeem(
        &self,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
    ) -> Result<Verdict, StoreError> {
        self.verify(code, subject, now, Mode::Redeem)
            .instrument(crate::telemetry::table_span(
                "redeem",
                self.store.db_system(),
            ))
            .await
    }

    fn gate(&self, now: DateTime<Utc>) -> Gate {
        Gate {
            window_start: now
                .checked_sub_signed(
                    chrono::Duration::from_std(self.throttle.window)
                        .unwrap_or(chrono::Duration::MAX),
                )
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            max_failures: self.throttle.max_failures,
            max_wrong_per_code: self.throttle.max_wrong_per_code,
        }
    }

    async fn verify(
        &self,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
        mode: Mode,
    ) -> Result<Verdict, StoreError> {
        let gate = self.gate(now);
        // The lock is read in the same statement that finds (or consumes) the code, and a failure is
        // counted by one atomic statement that never passes the cap: concurrent wrong guesses cannot
        // get a right one evaluated past it.
        let found = match (mode, subject) {
            (Mode::Check, Some(s)) => match self.store.check(code, s, now, &gate).await? {
                Some((record, prior)) => {
                    if prior > 0 {
                        self.store.reset_failures(s).await?;
                    }
                    Some(record)
                }
                None => None,
            },
            (Mode::Check, None) => self.store.find_valid(code, None, now).await?,
            (Mode::Redeem, _) => {
                let gate = subject.map(|_| &gate);
                let redeemed = self.store.redeem(code, subject, now, gate).await?;
                return self.concluded(redeemed, code, subject, now).await;
            }
        };
        match found {
            Some(record) => Ok(Verdict::Valid(record)),
            None => self.failed(code, subject, now, mode).await,
        }
    }

    /// Consumes `code` like [`redeem`](Self::redeem), once per `key`: a repeat of the same request with
    /// the same key (a lost answer retried), while the key is remembered, gets the first answer again
    /// without counting a failure. A success is remembered until its code's expiry, a failure for the
    /// lockout window.
    pub async fn redeem_keyed(
        &self,
        key: &IdempotencyKey,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
    ) -> Result<KeyedVerdict, StoreError> {
        let gate = self.gate(now);
        let print = fingerprint(code, subject);
        let remembered = RedeemKey {
            key,
            fingerprint: &print,
            keep_failure_until: now
                .checked_add_signed(
                    chrono::Duration::from_std(self.throttle.window)
                        .unwrap_or(chrono::Duration::MAX),
                )
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        };
        let gate = subject.map(|_| &gate);
        match self
            .store
            .redeem_keyed(remembered, code, subject, now, gate)
            .await?
        {
            KeyedRedeem::First(redeemed) => Ok(KeyedVerdict::Judged(
                self.concluded(redeemed, code, subject, now).await?,
            )),
            KeyedRedeem::Repeat(Some(record)) => Ok(KeyedVerdict::Replayed(Verdict::Valid(record))),
            KeyedRedeem::Repeat(None) => Ok(KeyedVerdict::Replayed(Verdict::Invalid(
                "repeat of a redeem that failed",
            ))),
            KeyedRedeem::Reused => Ok(KeyedVerdict::KeyReused),
        }
    }

    /// A redeem's verdict: a success forgets the subject's failures, a miss counts one.
    async fn concluded(
        &self,
        redeemed: Option<CodeRecord>,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
    ) -> Result<Verdict, StoreError> {
        match redeemed {
            Some(record) => {
                if let Some(subject) = subject {
                    self.store.reset_failures(subject).await?;
                }
                Ok(Verdict::Valid(record))
            }
            None => self.failed(code, subject, now, Mode::Redeem).await,
        }
    }

    /// Counts a failed check or redeem against its subject, and says why it failed (for the log).
    async fn failed(
        &self,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
        mode: Mode,
    ) -> Result<Verdict, StoreError> {
        let gate = self.gate(now);
        let mut reason = self.why_not(code, subject, now).await?;
        match subject {
            Some(subject) => {
                let failures = self.store.record_failure(subject, now, &gate).await?;
                if failures >= self.throttle.max_failures {
                    reason = "subject locked";
                }
                let subject = crate::untrusted::Untrusted::new(subject.as_str());
                tracing::info!(%subject, failures, reason, ?mode, "check failed");
            }
            None => tracing::info!(reason, ?mode, "unbound check failed"),
        }
        Ok(Verdict::Invalid(reason))
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
                CodeState::Valid => "redeemed concurrently",
                state => state.as_str(),
            },
        })
    }
}
