//! What a code issuance is at a moment, and the one validity rule.

use chrono::{DateTime, Utc};

/// A code issuance's state at a moment. The one validity rule: valid while before its expiry and
/// neither redeemed nor revoked. The stores' SQL says the same in one place (`store/sql.rs`, `valid!`), and
/// the `active_codes` view of each migration set spells it for operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeState {
    /// Usable: before `expires_at`, not redeemed, not revoked.
    Valid,
    /// Its TTL has passed.
    Expired,
    /// Consumed by a redeem.
    Redeemed,
    /// Revoked by an operator, or burned by too many wrong checks.
    Revoked,
}

impl CodeState {
    /// The state at `now` of an issuance with these dates (revocation and redemption first: they end
    /// a code for good; then validity from `expires_at`, never from a row or a message existing).
    pub fn at(
        expires_at: DateTime<Utc>,
        redeemed_at: Option<DateTime<Utc>>,
        revoked_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Self {
        if revoked_at.is_some() {
            Self::Revoked
        } else if redeemed_at.is_some() {
            Self::Redeemed
        } else if expires_at <= now {
            Self::Expired
        } else {
            Self::Valid
        }
    }

    /// The state's name, as `codewatch codes show` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Expired => "expired",
            Self::Redeemed => "redeemed",
            Self::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for CodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_exactly_while_before_expiry_and_neither_redeemed_nor_revoked() {
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(1);
        assert_eq!(CodeState::at(later, None, None, now), CodeState::Valid);
        assert_eq!(CodeState::at(now, None, None, now), CodeState::Expired);
        assert_eq!(
            CodeState::at(later, Some(now), None, now),
            CodeState::Redeemed
        );
        assert_eq!(
            CodeState::at(later, Some(now), Some(now), now),
            CodeState::Revoked
        );
    }
}
