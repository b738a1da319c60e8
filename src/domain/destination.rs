//! Where a code is delivered: an email address, or an opaque destination a webhook receiver
//! understands (a phone number, a user id). Personal data: shown only [masked](Destination::masked).

use std::fmt;

/// The longest destination accepted (an email address is at most 254 characters).
const MAX_LEN: usize = 320;

/// A non-empty text of at most 320 characters without control or Unicode format characters.
/// `Debug` and `Display` show it masked; [`Destination::as_str`] is the whole text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Destination(String);

/// Why a text is not a destination.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "destination must be 1 to {MAX_LEN} characters without control or Unicode format characters"
)]
pub struct InvalidDestination;

impl Destination {
    /// Parses a destination.
    pub fn parse(text: &str) -> Result<Self, InvalidDestination> {
        let ok = !text.trim().is_empty()
            && text.chars().count() <= MAX_LEN
            && !text.chars().any(crate::untrusted::needs_escape);
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidDestination)
        }
    }

    /// A destination read back from the database, as it was stored.
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    /// The whole destination, for the channel that delivers to it. Never log it: log [`Self::masked`].
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The destination with most of it hidden, for logs and operators: `a***@example.com` for an
    /// email address, the first and last two characters of anything else (`+4***89`).
    pub fn masked(&self) -> String {
        let text = crate::untrusted::escaped(&self.0);
        if let Some((local, domain)) = text.rsplit_once('@') {
            let first: String = local.chars().take(1).collect();
            return format!("{first}***@{domain}");
        }
        let chars: Vec<char> = text.chars().collect();
        if chars.len() < 8 {
            return "***".to_owned();
        }
        let head: String = chars[..2].iter().collect();
        let tail: String = chars[chars.len() - 2..].iter().collect();
        format!("{head}***{tail}")
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Destination({})", self.masked())
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_bounded_printable_text() {
        assert!(Destination::parse("alice@example.com").is_ok());
        assert!(Destination::parse("+441234567890").is_ok());
        assert_eq!(Destination::parse(""), Err(InvalidDestination));
        assert_eq!(Destination::parse("  "), Err(InvalidDestination));
        assert_eq!(
            Destination::parse(&"a".repeat(321)),
            Err(InvalidDestination)
        );
        assert_eq!(
            Destination::parse("a@b\r\nBcc: x@y"),
            Err(InvalidDestination)
        );
        assert_eq!(Destination::parse("a\u{202e}b"), Err(InvalidDestination));
    }

    #[test]
    fn shown_only_masked() {
        let mail = Destination::parse("alice@example.com").unwrap();
        assert_eq!(mail.masked(), "a***@example.com");
        assert_eq!(
            format!("{mail} {mail:?}"),
            "a***@example.com Destination(a***@example.com)"
        );
        assert_eq!(
            Destination::parse("+441234567890").unwrap().masked(),
            "+4***90"
        );
        assert_eq!(Destination::parse("short").unwrap().masked(), "***");
    }
}
