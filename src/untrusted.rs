//! Text from outside (queue messages, HTTP requests, upstream answers) made safe to log: control and
//! format characters escaped, length capped, so one value can neither forge or reorder a log line nor
//! flood the log.

use std::fmt;

/// How many characters of an outside value are kept in a log line or error text.
pub const MAX_LOGGED_CHARS: usize = 128;

/// Displays `text` with control and format characters escaped (`\n`, `\u{1b}`, `\u{202e}`) and at most `max` characters,
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
            if needs_escape(c) {
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

/// Whether `c` is a Unicode format character (general category Cf): the bidirectional overrides,
/// embeddings and isolates (U+202A–202E, U+2066–2069), zero-width characters and joiners, the byte
/// order mark, tag characters and the like. They show nothing themselves but reorder or hide the text
/// around them, so a value holding one can make a screen or a log say something else than it holds.
pub fn is_format_char(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// Whether `c` is shown escaped: a control character or a [format character](is_format_char).
pub fn needs_escape(c: char) -> bool {
    c.is_control() || is_format_char(c)
}

/// `text` with every control and format character escaped (`\n`, `\u{202e}`), uncapped: for operator
/// output, where the whole value is wanted but must show what it holds.
pub fn escape_all(text: &str) -> String {
    Untrusted::capped(text, usize::MAX).to_string()
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
    fn format_characters_are_escaped_so_a_value_cannot_reorder_its_line() {
        assert_eq!(escaped("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(
            escape_all("\u{2066}x\u{200b}\u{feff}"),
            "\\u{2066}x\\u{200b}\\u{feff}"
        );
        for c in [
            '\u{202a}',
            '\u{202e}',
            '\u{2067}',
            '\u{2069}',
            '\u{200d}',
            '\u{e0041}',
        ] {
            assert!(is_format_char(c), "{c:?}");
        }
        for c in ['a', 'é', '中', '\u{1f600}', ' '] {
            assert!(!is_format_char(c), "{c:?}");
        }
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
