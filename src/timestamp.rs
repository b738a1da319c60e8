//! The sample's timestamp format, `YYYY-MM-DD HH:MM:SS.ffffff` in UTC, as Python's `str(datetime)` writes it.

use chrono::{DateTime, NaiveDateTime, Utc};

const FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f";

/// Formats a UTC time as `2020-04-15 16:54:48.816549`.
pub fn format(time: DateTime<Utc>) -> String {
    time.format(FORMAT).to_string()
}

/// Parses the sample's format (with or without the fraction, as Python omits it at whole seconds),
/// or RFC 3339. A time without a zone is UTC.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .map(|t| t.and_utc())
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

    #[test]
    fn accepts_whole_seconds_and_rfc3339() {
        let whole = Utc.with_ymd_and_hms(2020, 4, 15, 16, 54, 48).unwrap();
        assert_eq!(parse("2020-04-15 16:54:48"), Some(whole));
        assert_eq!(format(whole), "2020-04-15 16:54:48.000000");
        assert_eq!(parse("2020-04-15T18:54:48+02:00"), Some(whole));
        assert_eq!(parse("yesterday"), None);
    }
}
