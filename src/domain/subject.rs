//! The subject a code is bound to: the user signing in.

use std::fmt;

/// The longest subject accepted.
const MAX_LEN: usize = 256;

/// A non-empty identifier of at most 256 characters without control or Unicode format characters
/// (bidirectional overrides, zero-width characters: they would let a subject look like another on an
/// operator's screen). Compared exactly.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(String);

/// Why a text is not a subject.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "subject must be 1 to {MAX_LEN} characters without control or Unicode format characters \
     (such as the bidirectional overrides U+202A–U+202E and U+2066–U+2069, or zero-width characters)"
)]
pub struct InvalidSubject;

impl Subject {
    /// Parses a subject.
    pub fn parse(text: &str) -> Result<Self, InvalidSubject> {
        let ok = !text.is_empty()
            && text.chars().count() <= MAX_LEN
            && !text.chars().any(crate::untrusted::needs_escape);
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidSubject)
        }
    }

    /// A subject read back from the database, as it was stored: rows written before format characters
    /// were refused stay readable (operator output escapes what they hold).
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    /// The subject as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_bounded_printable_text() {
        assert!(Subject::parse("alice@example.com").is_ok());
        assert!(Subject::parse(&"a".repeat(256)).is_ok());
        assert_eq!(Subject::parse(""), Err(InvalidSubject));
        assert_eq!(Subject::parse(&"a".repeat(257)), Err(InvalidSubject));
        assert_eq!(Subject::parse("al\nice"), Err(InvalidSubject));
        for spoof in [
            "admin\u{202e}nimda",
            "\u{2066}bob\u{2069}",
            "ali\u{200b}ce",
            "\u{feff}eve",
        ] {
            assert_eq!(Subject::parse(spoof), Err(InvalidSubject), "{spoof:?}");
        }
        assert!(Subject::parse("zoë-中文").is_ok());
    }
}
