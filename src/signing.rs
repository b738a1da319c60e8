//! Optional message signing: with a key set, `serve` signs each activation (HMAC-SHA256) and the worker
//! poisons activations that are unsigned or signed with another key. Two keys are accepted at once, so
//! the key can be rotated without a gap: sign with the new one, still accept the old one.

use crate::secret::Secret;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The keys: the current one signs, both verify.
#[derive(Clone)]
pub struct SigningKeys {
    current: Secret,
    previous: Option<Secret>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

/// Why the signing keys cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningKeyError {
    /// A key shorter than 32 bytes: too weak for HMAC-SHA256.
    #[error(
        "a message signing key must be at least 32 characters (e.g. `openssl rand -base64 32`)"
    )]
    TooShort,
    /// More than two keys given.
    #[error("at most two message signing keys (current, previous) may be given")]
    TooMany,
}

/// The smallest key accepted.
const MIN_KEY_LEN: usize = 32;

impl SigningKeys {
    /// `current` signs; `previous` (during a rotation) is still accepted.
    pub fn new(current: Secret, previous: Option<Secret>) -> Result<Self, SigningKeyError> {
        for key in std::iter::once(&current).chain(previous.as_ref()) {
            if key.expose().len() < MIN_KEY_LEN {
                return Err(SigningKeyError::TooShort);
            }
        }
        Ok(Self { current, previous })
    }

    /// Keys from a file or vault value: the current key, optionally followed by the previous one on the
    /// next line (or after a comma).
    pub fn parse(text: &str) -> Result<Self, SigningKeyError> {
        let mut keys = text
            .split(['\n', ','])
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(Secret::new);
        let current = keys.next().ok_or(SigningKeyError::TooShort)?;
        let previous = keys.next();
        if keys.next().is_some() {
            return Err(SigningKeyError::TooMany);
        }
        Self::new(current, previous)
    }

    fn mac(key: &Secret, canonical: &str) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(canonical.as_bytes());
        mac
    }

    /// The signature of `canonical` with the current key, base64.
    pub fn sign(&self, canonical: &str) -> String {
        BASE64.encode(Self::mac(&self.current, canonical).finalize().into_bytes())
    }

    /// Whether `signature` is `canonical`'s under either key (compared in constant time).
    pub fn verify(&self, canonical: &str, signature: &str) -> bool {
        let Ok(given) = BASE64.decode(signature.trim()) else {
            return false;
        };
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .any(|key| Self::mac(key, canonical).verify_slice(&given).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn a_signature_verifies_under_the_current_or_the_previous_key_only() {
        let old = SigningKeys::parse(A).unwrap();
        let rotating = SigningKeys::parse(&format!("{B}\n{A}")).unwrap();
        let new = SigningKeys::parse(B).unwrap();
        let by_old = old.sign("m");
        assert!(
            rotating.verify("m", &by_old),
            "the previous key is still accepted"
        );
        assert!(!new.verify("m", &by_old), "after the rotation it is not");
        assert!(!old.verify("other", &by_old));
        assert!(!old.verify("m", "not base64!"));
        assert_eq!(rotating.sign("m"), new.sign("m"), "the current key signs");
    }

    #[test]
    fn weak_or_too_many_keys_are_refused() {
        assert_eq!(
            SigningKeys::parse("short").unwrap_err(),
            SigningKeyError::TooShort
        );
        assert_eq!(
            SigningKeys::parse(&format!("{A},{B},{A}")).unwrap_err(),
            SigningKeyError::TooMany
        );
        assert!(!format!("{:?}", SigningKeys::parse(A).unwrap()).contains(A));
    }
}
