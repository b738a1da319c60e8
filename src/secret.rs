//! A string that must never be printed: keys, connection strings, tokens.

use std::fmt;

/// A secret value. `Debug` and `Display` print `[redacted]`; read it only with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself, for the one place that must send or sign with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` (a key a caller sent) is this secret, compared in time that depends only
    /// on the lengths (`subtle`), so that no answer's timing tells how much of a guess was right.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

/// Removes the values of secret-bearing URL query parameters (`sig`, SAS signatures) from a text.
pub fn redact_url_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("sig=") {
        let boundary_ok = pos == 0 || matches!(rest.as_bytes()[pos - 1], b'?' | b'&' | b';' | b' ');
        out.push_str(&rest[..pos + 4]);
        rest = &rest[pos + 4..];
        if boundary_ok {
            let end = rest
                .find(|c: char| {
                    c == '&' || c == ' ' || c == ')' || c == '"' || c == '\'' || c.is_whitespace()
                })
                .unwrap_or(rest.len());
            out.push_str("REDACTED");
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn matches_compares_the_whole_content() {
        let key = Secret::new("abc");
        assert!(key.matches(b"abc"));
        assert!(!key.matches(b"abd"));
        assert!(!key.matches(b"abcd"));
        assert!(!key.matches(b"ab"));
        assert!(!key.matches(b""));
    }

    #[test]
    fn sas_signatures_are_redacted_from_urls() {
        let text = "error sending request for url (http://h/q?sv=2021&sig=abc%2Bdef&se=x)";
        let clean = redact_url_secrets(text);
        assert!(!clean.contains("abc%2Bdef"), "{clean}");
        assert!(clean.contains("sig=REDACTED&se=x"), "{clean}");
        assert_eq!(redact_url_secrets("no secrets"), "no secrets");
        assert_eq!(redact_url_secrets("design=1"), "design=1");
    }
}
