//! One issuance of a code: its id, who it is for, when it was issued, and the bound on its expiry.

use super::{Code, Destination, Subject};
use crate::timestamp;
use crate::untrusted::escaped;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::time::Duration;

/// The longest issuance id accepted from a message.
pub const MAX_ID_CHARS: usize = 128;

/// Identifies one issuance of a code. Two issuances may draw the same code; they never share an id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IssuanceId(String);

/// Why a text is not an issuance id (the text is escaped and capped).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("issuance id {0:?} is not 1 to {MAX_ID_CHARS} printable characters")]
pub struct InvalidIssuanceId(pub String);

impl IssuanceId {
    /// A fresh id for a code `serve` issues: a UUID v7, the millisecond then 74 random bits, so that
    /// ids grow with time and new rows land at the end of the table's key index instead of all over it.
    /// No counter within the millisecond (`NoContext`): the next id must not be guessable from one seen,
    /// or a sender could claim it first and have the real activation set aside as a conflict.
    pub fn random() -> Self {
        let now = uuid::Timestamp::now(uuid::NoContext);
        Self(uuid::Uuid::new_v7(now).to_string())
    }

    /// The id of a foreign message that carries none: a hash of its code and time, so its duplicates share it.
    pub fn derived(code: &Code, issued_at: DateTime<Utc>) -> Self {
        let digest = Sha256::digest(format!("{code}|{}", timestamp::format(issued_at)));
        let hex = crate::hex::encode(&digest[..16]);
        Self(format!("derived-{hex}"))
    }

    /// Wraps an id read from the database (written there by codewatch).
    pub fn from_string(id: String) -> Self {
        Self(id)
    }

    /// Reads an id given in a message: 1 to [`MAX_ID_CHARS`] characters without control characters.
    pub fn parse(text: &str) -> Result<Self, InvalidIssuanceId> {
        let text = text.trim();
        if text.is_empty()
            || text.chars().count() > MAX_ID_CHARS
            || text.chars().any(char::is_control)
        {
            return Err(InvalidIssuanceId(escaped(text)));
        }
        Ok(Self(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IssuanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One issued code, as it travels through the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issuance {
    /// Which issuance this is.
    pub id: IssuanceId,
    /// The code handed out.
    pub code: Code,
    /// When `serve` handed it out; the TTL counts from here.
    pub issued_at: DateTime<Utc>,
    /// The user the code is bound to, if any.
    pub subject: Option<Subject>,
    /// Where the worker delivers the code, when the sign-in service named a destination.
    pub destination: Option<Destination>,
}

/// Why an issuance has no expiry codewatch will honour.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExpiryError {
    /// Dated later than the queue took it, beyond the clock allowance: its sender would otherwise
    /// choose how long the code stays valid.
    #[error(
        "activation dated in the future: {ahead_ms} ms after the queue took it (allowed: {allowance_ms} ms)"
    )]
    DatedInFuture {
        /// How far its timestamp lies after its insertion time.
        ahead_ms: i64,
        /// The clock allowance in force.
        allowance_ms: i64,
    },
    /// Its expiry cannot be computed (out of the range of times).
    #[error("message time out of range")]
    OutOfRange,
}

impl Issuance {
    /// When this issuance stops being valid, for an activation the queue took at `queued_at`:
    /// `issued_at + ttl`. The sender's timestamp may lie at most `allowance` after `queued_at` (clock
    /// skew), so a code is never valid past `queued_at + allowance + ttl`, whatever the sender wrote.
    pub fn expiry(
        &self,
        ttl: Duration,
        queued_at: DateTime<Utc>,
        allowance: Duration,
    ) -> Result<DateTime<Utc>, ExpiryError> {
        let ttl = chrono::Duration::from_std(ttl).map_err(|_| ExpiryError::OutOfRange)?;
        let allowance =
            chrono::Duration::from_std(allowance).map_err(|_| ExpiryError::OutOfRange)?;
        let ahead = self.issued_at.signed_duration_since(queued_at);
        if ahead > allowance {
            return Err(ExpiryError::DatedInFuture {
                ahead_ms: ahead.num_milliseconds(),
                allowance_ms: allowance.num_milliseconds(),
            });
        }
        self.issued_at
            .checked_add_signed(ttl)
            .ok_or(ExpiryError::OutOfRange)
    }

    /// The earlier of its timestamp and its queue insertion time: a revocation made at or after this
    /// reaches the issuance, whatever the sender wrote.
    pub fn announced_at(&self, queued_at: DateTime<Utc>) -> DateTime<Utc> {
        self.issued_at.min(queued_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn new_ids_grow_with_time_so_rows_append_to_the_key_index() {
        let ids: Vec<String> = (0..20)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(2));
                IssuanceId::random().0
            })
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "ordered by their millisecond");
    }

    #[test]
    fn ids_of_the_same_millisecond_do_not_follow_from_each_other() {
        let ids: Vec<u128> = (0..200)
            .map(|_| {
                uuid::Uuid::parse_str(IssuanceId::random().as_str())
                    .unwrap()
                    .as_u128()
            })
            .collect();
        // A counter would make most neighbours differ by a small step; 74 random bits make none.
        let close = ids
            .windows(2)
            .filter(|w| w[0] >> 48 == w[1] >> 48 && w[0].abs_diff(w[1]) < 1 << 40)
            .count();
        assert_eq!(close, 0, "consecutive ids are guessable from each other");
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 200);
    }

    #[test]
    fn an_activation_dated_after_its_insertion_beyond_the_allowance_is_refused() {
        let ttl = Duration::from_secs(600);
        let allowance = Duration::from_secs(30);
        let inserted = || Utc.with_ymd_and_hms(2026, 11, 28, 9, 0, 0).unwrap();
        let mut i = Issuance {
            destination: None,
            id: IssuanceId::random(),
            code: Code::parse("ojE-161-pTv").unwrap(),
            issued_at: inserted() + chrono::Duration::seconds(29),
            subject: None,
        };
        assert_eq!(
            i.expiry(ttl, inserted(), allowance),
            Ok(inserted() + chrono::Duration::seconds(629))
        );
        i.issued_at = inserted() + chrono::Duration::minutes(5);
        assert!(matches!(
            i.expiry(ttl, inserted(), allowance),
            Err(ExpiryError::DatedInFuture { .. })
        ));
        i.issued_at = DateTime::<Utc>::MAX_UTC;
        assert!(i.expiry(ttl, DateTime::<Utc>::MAX_UTC, allowance).is_err());
        assert_eq!(i.announced_at(inserted()), inserted());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn expiry_never_panics_and_never_passes_insertion_plus_allowance_plus_ttl(
            issued in any::<i64>(),
            queued in any::<i64>(),
            ttl in 1u64..604_800,
            allowance in 0u64..3600,
        ) {
            let at = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms);
            if let (Some(issued_at), Some(queued_at)) = (at(issued), at(queued)) {
                let i = Issuance {
                    destination: None,
                    id: IssuanceId::random(),
                    code: Code::parse("abc-1-def").unwrap(),
                    issued_at,
                    subject: None,
                };
                let (ttl, allowance) = (Duration::from_secs(ttl), Duration::from_secs(allowance));
                if let Ok(expires_at) = i.expiry(ttl, queued_at, allowance) {
                    let bound = queued_at
                        .checked_add_signed(chrono::Duration::from_std(ttl + allowance).unwrap());
                    prop_assert!(bound.is_none_or(|b| expires_at <= b));
                }
            }
        }
    }
}
