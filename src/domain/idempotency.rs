//! The `Idempotency-Key` a sign-in service sends with a redeem, and the fingerprint of the request it
//! was first used for, so that a repeat can be told from a reuse.

use super::{Code, Subject};
use sha2::{Digest, Sha256};
use std::fmt;

/// The longest key accepted (Stripe allows 255 characters).
const MAX_LEN: usize = 255;

/// A client's name for one redeem: 1 to 255 visible ASCII characters (a UUID is usual).
#[derive(Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

/// Why a header value is not an idempotency key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Idempotency-Key must be 1 to {MAX_LEN} visible ASCII characters (a UUID is usual)")]
pub struct InvalidIdempotencyKey;

impl IdempotencyKey {
    /// Parses a header value.
    pub fn parse(text: &str) -> Result<Self, InvalidIdempotencyKey> {
        let ok =
            !text.is_empty() && text.len() <= MAX_LEN && text.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidIdempotencyKey)
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Keys are the client's and may be guessable; they are not logged in full.
impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({} chars)", self.0.len())
    }
}

/// What a redeem asked for, as a hash (hex SHA-256 of the code and subject): stored beside its key
/// instead of the code, so that a wrong guess is not kept in clear.
pub fn fingerprint(code: &Code, subject: Option<&Subject>) -> String {
    let mut hash = Sha256::new();
    hash.update(code.as_str());
    match subject {
        // A code never holds '\n' and a subject never holds a control character: the parts cannot run together.
        Some(subject) => {
            hash.update(b"\nsubject\n");
            hash.update(subject.as_str());
        }
        None => hash.update(b"\nunbound"),
    }
    crate::hex::encode(&hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_visible_ascii() {
        assert!(IdempotencyKey::parse("0b5f6a9e-3c1d-4a8e-9f00-1234567890ab").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        for bad in ["", " ", "a b", "é", "a\tb"] {
            assert_eq!(
                IdempotencyKey::parse(bad),
                Err(InvalidIdempotencyKey),
                "{bad:?}"
            );
        }
        assert_eq!(
            IdempotencyKey::parse(&"k".repeat(256)),
            Err(InvalidIdempotencyKey)
        );
    }

    #[test]
    fn a_fingerprint_differs_by_code_and_by_subject() {
        let code = Code::parse("ojE-161-pTv").unwrap();
        let other = Code::parse("ojE-162-pTv").unwrap();
        let alice = Subject::parse("alice").unwrap();
        let bob = Subject::parse("bob").unwrap();
        let print = fingerprint(&code, Some(&alice));
        assert_eq!(print, fingerprint(&code, Some(&alice)));
        assert_eq!(print.len(), 64);
        assert!(!print.contains("ojE"));
        for different in [
            fingerprint(&other, Some(&alice)),
            fingerprint(&code, Some(&bob)),
            fingerprint(&code, None),
        ] {
            assert_ne!(print, different);
        }
    }
}
