//! The sample's timestamp format, `YYYY-MM-DD HH:MM:SS.ffffff` in UTC, as Python's `str(datetime)` writes it.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike, Utc};

const FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f";

/// The length of `YYYY-MM-DD HH:MM:SS.ffffff`.
const LEN: usize = 26;

/// Formats a UTC time as `2020-04-15 16:54:48.816549`. Written by hand for years 0–9999 (every time
/// the service stores or answers: it runs on every check and every row read), by chrono otherwise.
pub fn format(time: DateTime<Utc>) -> String {
    let year = time.year();
    let nanos = time.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return time.format(FORMAT).to_string();
    }
    let mut out = [0u8; LEN];
    let mut put = |at: usize, value: u32, digits: usize| {
        let mut value = value;
        for i in (0..digits).rev() {
            out[at + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year as u32, 4);
    put(5, time.month(), 2);
    put(8, time.day(), 2);
    put(11, time.hour(), 2);
    put(14, time.minute(), 2);
    put(17, time.second(), 2);
    put(20, nanos / 1000, 6);
    for (at, separator) in [
        (4, b'-'),
        (7, b'-'),
        (10, b' '),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        out[at] = separator;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// Parses the sample's format (with or without the fraction, as Python omits it at whole seconds),
/// or RFC 3339. A time without a zone is UTC.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Some(t) = parse_stored(text) {
        return Some(t);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .map(|t| t.and_utc())
}

/// The exact form [`format`] writes, read by hand: the common case (every row read from SQLite).
fn parse_stored(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    if b.len() != LEN {
        return None;
    }
    let layout_ok = [
        (4, b'-'),
        (7, b'-'),
        (10, b' '),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ]
    .iter()
    .all(|&(at, c)| b[at] == c);
    if !layout_ok {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let date = NaiveDate::from_ymd_opt(number(0, 4)? as i32, number(5, 7)?, number(8, 10)?)?;
    let time = date.and_hms_micro_opt(
        number(11, 13)?,
        number(14, 16)?,
        number(17, 19)?,
        number(20, 26)?,
    )?;
    Some(time.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike};

    #[test]
    fn round_trips_the_samples_format() {
        let t = parse("2020-04-15 16:54:48.816549").unwrap();
        assert_eq!(t.nanosecond(), 816_549_000);
        assert_eq!(format(t), "2020-04-15 16:54:48.816549");
    }

    proptest::proptest! {
        /// The hand-written format and parse agree with chrono's, to the microsecond.
        #[test]
        fn the_fast_path_matches_chrono(micros in 0i64..253_402_300_799_999_999) {
            let t = DateTime::from_timestamp_micros(micros).unwrap();
            let text = format(t);
            proptest::prop_assert_eq!(&text, &t.format(FORMAT).to_string());
            proptest::prop_assert_eq!(parse(&text), Some(t));
            let chrono = NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f").unwrap().and_utc();
            proptest::prop_assert_eq!(parse_stored(&text), Some(chrono));
        }
    }

    #[test]
    fn the_fast_path_refuses_what_is_not_its_exact_form() {
        for text in [
            "2020-04-15 16:54:48",
            "2020-04-15T16:54:48.816549",
            "2020-13-15 16:54:48.816549",
            "2020-04-15 16:54:48.81654x",
            "+2020-04-15 16:54:48.81654",
        ] {
            assert_eq!(parse_stored(text), None, "{text}");
        }
    }

    #[test]
    fn accepts_whole_seconds_and_rfc3339() {
        let whole = Utc.with_ymd_and_hms(2020, 4, 15, 16, 54, 48).unwrap();
        assert_eq!(parse("2020-04-15 16:54:48"), Some(whole));
        assert_eq!(format(whole), "2020-04-15 16:54:48.000000");
        assert_eq!(parse("2020-04-15T18:54:48+02:00"), Some(whole));
        assert_eq!(parse("yesterday"), None);
    }
}
