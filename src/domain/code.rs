//! The two-factor code: `<3 letters>-<number>-<3 letters>`, for example `ojE-161-pTv`.

use rand::{CryptoRng, RngExt};
use std::fmt;

const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// The longest number part accepted from a message or a request.
const MAX_DIGITS: usize = 6;

/// The number in a code's middle: at most [`MAX_DIGITS`] digits, so that every code built around it
/// parses. The number API's answer becomes one of these or is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeNumber(u32);

impl CodeNumber {
    /// The largest number a code can hold.
    pub const MAX: u32 = 999_999;

    /// `number` if a code can hold it.
    pub fn new(number: u64) -> Option<Self> {
        u32::try_from(number)
            .ok()
            .filter(|n| *n <= Self::MAX)
            .map(Self)
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A well-formed code. Built only by [`Code::parse`] or [`Code::generate`]; compared case-sensitively.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(String);

/// Why a text is not a code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a code of the form ABC-123-xyz (3 letters, 1 to {MAX_DIGITS} digits, 3 letters)")]
pub struct InvalidCode;

impl Code {
    /// Parses a code exactly as issued: three ASCII letters, a dash, 1–6 digits, a dash, three letters.
    pub fn parse(text: &str) -> Result<Self, InvalidCode> {
        let mut parts = text.split('-');
        let (Some(head), Some(number), Some(tail), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InvalidCode);
        };
        let letters = |s: &str| s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic());
        let digits = !number.is_empty()
            && number.len() <= MAX_DIGITS
            && number.bytes().all(|b| b.is_ascii_digit());
        if letters(head) && digits && letters(tail) {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidCode)
        }
    }

    /// Builds a code around `number` with six letters drawn from a cryptographically secure RNG.
    pub fn generate<R: CryptoRng + ?Sized>(number: CodeNumber, rng: &mut R) -> Self {
        let mut letter = || char::from(LETTERS[rng.random_range(0..LETTERS.len())]);
        let head: String = (0..3).map(|_| letter()).collect();
        let tail: String = (0..3).map(|_| letter()).collect();
        Self(format!("{head}-{}-{tail}", number.get()))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_samples_code_parses() {
        assert_eq!(Code::parse("ojE-161-pTv").unwrap().as_str(), "ojE-161-pTv");
        assert!(Code::parse("ABC-1-xyz").is_ok());
        assert!(Code::parse("ABC-999999-xyz").is_ok());
    }

    #[test]
    fn malformed_codes_are_rejected() {
        for bad in [
            "",
            "ojE161pTv",
            "oj-161-pTv",
            "ojEE-161-pTv",
            "ojE--pTv",
            "ojE-16a-pTv",
            "ojE-161-pT1",
            "ojE-161-pTv-",
            "ojE-1234567-pTv",
            "ój-161-pTv",
            " ojE-161-pTv",
        ] {
            assert_eq!(Code::parse(bad), Err(InvalidCode), "{bad:?}");
        }
    }

    #[test]
    fn generated_codes_parse_and_keep_the_number() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for number in [0, 1, 161, 1000, 999_999] {
            let code = Code::generate(CodeNumber::new(number).unwrap(), &mut rng);
            assert_eq!(Code::parse(code.as_str()).as_ref(), Ok(&code));
            assert_eq!(
                code.as_str().split('-').nth(1),
                Some(number.to_string().as_str())
            );
        }
    }

    #[test]
    fn a_number_with_more_digits_than_a_code_holds_is_no_code_number() {
        assert_eq!(CodeNumber::new(999_999).map(CodeNumber::get), Some(999_999));
        for too_big in [
            1_000_000,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            u64::MAX,
        ] {
            assert_eq!(CodeNumber::new(too_big), None, "{too_big}");
        }
    }

    #[test]
    fn generated_letters_cover_both_cases() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let all: String = (0..200)
            .map(|_| Code::generate(CodeNumber::new(5).unwrap(), &mut rng).to_string())
            .collect();
        assert!(all.bytes().any(|b| b.is_ascii_uppercase()));
        assert!(all.bytes().any(|b| b.is_ascii_lowercase()));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_text_parses_or_errors_and_never_panics(text in any::<String>()) {
            if let Ok(code) = Code::parse(&text) {
                prop_assert_eq!(code.as_str(), text.as_str());
            }
        }

        #[test]
        fn every_generated_code_parses_back_to_itself(number in 0u32..=999_999, seed in any::<u64>()) {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            let code = Code::generate(CodeNumber::new(number.into()).unwrap(), &mut rng);
            prop_assert_eq!(Code::parse(code.as_str()), Ok(code.clone()));
            let digits = number.to_string();
            prop_assert_eq!(code.as_str().split('-').nth(1), Some(digits.as_str()));
        }
    }
}
