//! Durations and points in time given on the command line, shared by every command.
//!
//! A duration is a positive whole number and a unit: `90s`, `30m`, `12h`, `7d`, `2w`. A bare
//! number is rejected, because `24` could mean seconds or hours. A point in time is either a
//! duration back from now or a UTC time in RFC 3339 form or a shorter form of it:
//! `2026-12-01` (midnight UTC), `2026-12-01T10:00Z`, `2026-12-01T10:00:00Z`,
//! `2026-12-01T12:00:00+02:00`.

use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

/// Parses a duration such as `90s`, `30m`, `12h`, `7d` or `2w`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration {text:?}: use a positive number and a unit (s, m, h, d or w), e.g. 30m, 24h or 7d"
        )
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(invalid()),
    };
    let too_long = || format!("duration {text:?} is too long: use at most {DURATION_DAYS_MAX}d");
    if number.is_empty() {
        return Err(invalid());
    }
    let number: u64 = match number.parse() {
        Ok(number) => number,
        // Digits only, so the only way to fail is a number beyond u64.
        Err(_) => return Err(too_long()),
    };
    match number.checked_mul(unit_secs) {
        Some(0) => Err(invalid()),
        Some(secs) if secs <= DURATION_DAYS_MAX * 86_400 => Ok(Duration::from_secs(secs)),
        _ => Err(too_long()),
    }
}

/// Maximum duration accepted, in days: about 100 years.
const DURATION_DAYS_MAX: u64 = 36_500;

/// Parses a duration like [`parse_duration`] into whole seconds.
pub fn parse_duration_secs(text: &str) -> Result<i64, String> {
    let duration = parse_duration(text)?;
    i64::try_from(duration.as_secs()).map_err(|_| format!("duration {text:?} is too long"))
}

/// Parses a point in time: a duration back from `now`, or a UTC time (see the module docs).
/// Returns Unix seconds.
pub fn parse_time(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(duration) = parse_duration(text) {
        let secs = i64::try_from(duration.as_secs()).unwrap_or(i64::MAX);
        return Ok(now.saturating_sub(secs));
    }
    if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(time.unix_timestamp());
    }

    // Shorter forms, read as UTC.
    let utc = text
        .strip_suffix(['Z', 'z'])
        .unwrap_or(text)
        .replacen(' ', "T", 1);
    let with_seconds = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let with_minutes = format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let date_only = format_description!("[year]-[month]-[day]");
    let parsed = PrimitiveDateTime::parse(&utc, &with_seconds)
        .or_else(|_| PrimitiveDateTime::parse(&utc, &with_minutes))
        .or_else(|_| Date::parse(&utc, &date_only).map(|date| date.midnight()));
    match parsed {
        Ok(time) => Ok(time.assume_utc().unix_timestamp()),
        Err(_) => Err(format!(
            "invalid time {text:?}: use a duration back from now such as 7d, 12h or 30m, or a \
             UTC time such as 2026-12-01 or 2026-12-01T10:00:00Z"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn duration_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        assert_eq!(parse_duration_secs("2w"), Ok(1_209_600));
    }

    #[test]
    fn duration_rejects_bad_input() {
        for text in [
            "",
            "24",
            "h",
            "0h",
            "-1h",
            "1.5h",
            "24 h",
            "24hours",
            "5 parsecs",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains("e.g. 30m"), "{text:?}: {err}");
            assert!(err.contains(&format!("{text:?}")), "{text:?}: {err}");
        }
    }

    #[test]
    fn duration_rejects_too_long() {
        for text in [
            "99999999999999999999d".to_string(),
            format!("{}w", i64::MAX / 2),
            format!("{}s", u64::MAX),
            "36501d".to_string(),
        ] {
            let err = parse_duration(&text).unwrap_err();
            assert!(err.contains("too long"), "{text:?}: {err}");
            assert!(err.contains("36500d"), "{text:?}: {err}");
        }
        assert_eq!(
            parse_duration("36500d"),
            Ok(Duration::from_secs(36_500 * 86_400))
        );
    }

    #[test]
    fn time_as_duration_counts_back_from_now() {
        assert_eq!(parse_time("7d", NOW), Ok(NOW - 7 * 86_400));
        assert_eq!(parse_time("30m", NOW), Ok(NOW - 1800));
    }

    #[test]
    fn time_forms_read_as_utc() {
        // 2026-12-01T00:00:00Z is 1,796,083,200 seconds after the epoch.
        let midnight = 1_796_083_200;
        assert_eq!(parse_time("2026-12-01", NOW), Ok(midnight));
        assert_eq!(parse_time("2026-12-01T10:00Z", NOW), Ok(midnight + 36_000));
        assert_eq!(
            parse_time("2026-12-01T10:00:00Z", NOW),
            Ok(midnight + 36_000)
        );
        assert_eq!(
            parse_time("2026-12-01 10:00:05", NOW),
            Ok(midnight + 36_005)
        );
        assert_eq!(
            parse_time("2026-12-01T12:00:00+02:00", NOW),
            Ok(midnight + 36_000)
        );
    }

    #[test]
    fn time_rejects_bad_input() {
        for text in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "12/01/2026",
            "7",
        ] {
            let err = parse_time(text, NOW).unwrap_err();
            assert!(err.contains("2026-12-01T10:00:00Z"), "{text:?}: {err}");
        }
    }
}
