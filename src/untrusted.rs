//! Text from outside (queue messages, HTTP requests, upstream answers) made safe to log: control
//! characters escaped, length capped, so one value can neither forge a log line nor flood the log.

use std::fmt;

/// How many characters of an outside value are kept in a log line or error text.
pub const MAX_LOGGED_CHARS: usize = 128;

/// Displays `text` with control characters escaped (`\n`, `\u{1b}`) and at most `max` characters,
/// followed by `…(+N chars)` when cut.
#[derive(Clone, Copy, Debug)]
pub struct Untrusted<'a> {
    text: &'a str,
    max: usize,
}

impl<'a> Untrusted<'a> {
    /// `text`, capped at [`MAX_LOGGED_CHARS`].
    pub fn new(text: &'a str) -> Self {
        Self::capped(text, MAX_LOGGED_CHARS)
    }

    /// `text`, capped at `max` characters.
    pub fn capped(text: &'a str, max: usize) -> Self {
        Self { text, max }
    }
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shown, c) in self.text.chars().enumerate() {
            if shown == self.max {
                let rest = self.text.chars().count() - shown;
                return write!(f, "…(+{rest} chars)");
            }
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// [`Untrusted`] as an owned string, for error values that outlive the input.
pub fn escaped(text: &str) -> String {
    Untrusted::new(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_so_a_value_stays_on_its_line() {
        assert_eq!(
            escaped("a\nINFO forged\r\u{1b}[31m"),
            "a\\nINFO forged\\r\\u{1b}[31m"
        );
        assert_eq!(escaped("ojE-161-pTv é"), "ojE-161-pTv é");
    }

    #[test]
    fn long_values_are_cut_and_say_how_much_was_cut() {
        let long = "a".repeat(60_000);
        let shown = escaped(&long);
        assert!(shown.starts_with(&"a".repeat(MAX_LOGGED_CHARS)));
        assert!(shown.ends_with(&format!("…(+{} chars)", 60_000 - MAX_LOGGED_CHARS)));
        assert!(shown.len() < 200);
    }
}
