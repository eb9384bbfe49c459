//! Time and duration texts in the Go original's formats: Go durations (`3s`, `168h0m0s`,
//! `1.5ms`), RFC 3339 timestamps, and the conversions between wall-clock milliseconds and them.
//!
//! The original's flags, headers and query parameters all use these spellings, so every place
//! that reads or writes one goes through here.

use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// Why a Go duration does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a duration at all, or out of range.
    #[error("invalid duration {0:?}")]
    Invalid(String),
    /// A number without its unit.
    #[error("missing unit in duration {0:?}")]
    MissingUnit(String),
    /// A unit Go does not know.
    #[error("unknown unit {unit:?} in duration {duration:?}")]
    UnknownUnit {
        /// The unit.
        unit: String,
        /// The whole value.
        duration: String,
    },
    /// Below zero where only non-negative durations are allowed.
    #[error("negative duration {0:?}")]
    Negative(String),
}

/// Parse a Go duration: an optional sign, then one or more decimal numbers each with a unit
/// (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `300ms`, `-1.5h`, `2h45m`. A bare `0` is allowed.
/// Returns the signed number of nanoseconds.
pub fn parse_duration_nanos(s: &str) -> Result<i128, DurationError> {
    let orig = s;
    let err = || DurationError::Invalid(orig.to_string());
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| DurationError::MissingUnit(orig.to_string()))?;
        let num = &rest[..num_end];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(err());
        }
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: i128 = match &rest[..unit_end] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(DurationError::MissingUnit(orig.to_string())),
            u => {
                return Err(DurationError::UnknownUnit {
                    unit: u.to_string(),
                    duration: orig.to_string(),
                });
            }
        };
        rest = &rest[unit_end..];
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        let int: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| err())?
        };
        let mut value = int.checked_mul(unit).ok_or_else(err)?;
        // Fractions are kept to the nanosecond, as Go does.
        let mut scale = unit;
        for d in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            value += i128::from(d - b'0') * scale;
        }
        total = total.checked_add(value).ok_or_else(err)?;
        if total > i128::from(i64::MAX) {
            return Err(err());
        }
    }
    Ok(if neg { -total } else { total })
}

/// Parse a non-negative Go duration (flags such as `-ingest.segment-flush-age`).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let nanos = parse_duration_nanos(s)?;
    if nanos < 0 {
        return Err(DurationError::Negative(s.to_string()));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Format a duration the way Go's `time.Duration.String` does: `0s`, `1.5µs`, `12.345ms`,
/// `3s`, `1m30s`, `168h0m0s`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", frac(nanos, scale));
    }
    let hours = nanos / 3_600_000_000_000;
    let mins = (nanos / 60_000_000_000) % 60;
    let secs = frac(nanos % 60_000_000_000, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{mins}m{secs}s")
    } else if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// `value / scale` as a decimal without trailing zeros.
fn frac(value: u128, scale: u128) -> String {
    let int = value / scale;
    let rem = value % scale;
    if rem == 0 {
        return int.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{rem:0width$}");
    format!("{int}.{}", digits.trim_end_matches('0'))
}

/// Parse an RFC 3339 timestamp (any offset, optional fraction) to Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    // jiff accepts a few spellings RFC 3339 does not (e.g. a space separator); require the `T`
    // and an offset, so a bare date or a 26-character ULID-like text is never read as a time.
    let b = s.as_bytes();
    if b.len() < 20 || !(b[10] == b'T' || b[10] == b't') {
        return None;
    }
    // jiff's `Timestamp` ends at 9999-12-30T22:00Z (it must fit any offset) while ULIDs reach
    // the year 10889: take the civil pieces and do the arithmetic here.
    let pieces = jiff::fmt::temporal::Pieces::parse(s).ok()?;
    let offset = pieces.to_numeric_offset()?;
    let time = pieces.time()?;
    if pieces.time_zone_annotation().is_some() {
        return None;
    }
    let date = pieces.date();
    let days = days_from_civil(i64::from(date.year()), date.month(), date.day());
    let ms_of_day = i64::from(time.hour()) * 3_600_000
        + i64::from(time.minute()) * 60_000
        + i64::from(time.second()) * 1000
        + i64::from(time.subsec_nanosecond()) / 1_000_000;
    Some(days * 86_400_000 + ms_of_day - i64::from(offset.seconds()) * 1000)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub(crate) fn days_from_civil(y: i64, m: i8, d: i8) -> i64 {
    let (m, d) = (i64::from(m), i64::from(d));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The current wall-clock time in Unix milliseconds.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// RFC 3339 at second precision in UTC, `Z` suffix: `2017-03-25T21:17:54Z`.
pub fn rfc3339_utc_secs(ms: i64) -> String {
    let (y, mo, d, h, mi, s, _) = civil(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// The last millisecond RFC 3339 can write, 9999-12-31T23:59:59.999Z.
pub const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

/// The UTC calendar date and time of Unix millisecond `ms` (0 to [`MAX_RFC3339_MS`], clamped):
/// year, month, day, hour, minute, second, millisecond. (jiff's timestamps stop a day short of
/// the year's end, at 9999-12-30T22:00Z.)
pub fn civil(ms: i64) -> (i64, i64, i64, i64, i64, i64, i64) {
    let ms = ms.clamp(0, MAX_RFC3339_MS);
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000,
    )
}

/// RFC 3339 at millisecond precision in UTC: `2017-03-25T21:17:54.946Z`.
pub fn rfc3339_utc_millis(ms: i64) -> String {
    let (y, mo, d, h, mi, s, milli) = civil(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// RFC 3339 in UTC at second precision, or millisecond precision when `ms` has a fraction.
pub fn rfc3339_utc_secs_or_millis(ms: i64) -> String {
    if ms % 1000 == 0 {
        rfc3339_utc_secs(ms)
    } else {
        rfc3339_utc_millis(ms)
    }
}

/// RFC 3339 at second precision in the local time zone (Go's `time.RFC3339` on a local time).
pub fn rfc3339_local_secs(ms: i64) -> String {
    let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    let zoned = ts.to_zoned_datetime(TimeZone::system());
    if zoned.offset().seconds() == 0 {
        zoned.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_written_as_jiff_writes_them_and_to_the_last_rfc3339_day() {
        let mut ms: i64 = 0;
        while ms < 253_402_200_000_000 {
            let ts = Timestamp::from_millisecond(ms).unwrap();
            assert_eq!(
                rfc3339_utc_millis(ms),
                ts.strftime("%Y-%m-%dT%H:%M:%S.%3fZ").to_string()
            );
            assert_eq!(
                rfc3339_utc_secs(ms),
                ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
            );
            ms = ms * 3 + 987_654_321_123;
        }
        assert_eq!(
            rfc3339_utc_millis(MAX_RFC3339_MS),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_utc_secs(253_402_214_400_000),
            "9999-12-31T00:00:00Z"
        );
        assert_eq!(
            rfc3339_utc_millis(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn parses_go_durations() {
        let cases: &[(&str, i128)] = &[
            ("0", 0),
            ("3s", 3_000_000_000),
            ("100ms", 100_000_000),
            ("168h", 168 * 3_600_000_000_000),
            ("168h0m0s", 168 * 3_600_000_000_000),
            ("1h30m", 5_400_000_000_000),
            ("1.5h", 5_400_000_000_000),
            ("-5m", -300_000_000_000),
            ("2h45m30.5s", 9_930_500_000_000),
            ("1µs", 1_000),
            ("10us", 10_000),
            ("7ns", 7),
            (".5s", 500_000_000),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration_nanos(input), Ok(*want), "{input}");
        }
        for bad in ["", "3", "1d", "s", "1..5s", "abc", "-", "5 s"] {
            assert!(parse_duration_nanos(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn formats_like_go() {
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (1_234_567, "1.234567ms"),
            (3_000_000_000, "3s"),
            (90_000_000_000, "1m30s"),
            (168 * 3_600_000_000_000, "168h0m0s"),
            (3_600_000_000_000 + 500_000_000, "1h0m0.5s"),
        ];
        for (nanos, want) in cases {
            assert_eq!(format_duration(Duration::from_nanos(*nanos)), *want);
        }
    }

    #[test]
    fn rfc3339_round_trip() {
        let ms = parse_rfc3339_ms("2017-03-25T21:17:54.946Z").unwrap();
        assert_eq!(rfc3339_utc_millis(ms), "2017-03-25T21:17:54.946Z");
        assert_eq!(rfc3339_utc_secs(ms), "2017-03-25T21:17:54Z");
        assert_eq!(
            parse_rfc3339_ms("2017-03-25T22:17:54.946+01:00"),
            Some(ms),
            "offsets are honoured"
        );
        assert_eq!(parse_rfc3339_ms("01BC3NABW20000000000000000"), None);
        assert_eq!(parse_rfc3339_ms("2017-03-25"), None);
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(
            parse_rfc3339_ms("2017-03-25T21:17:54"),
            None,
            "an offset is required"
        );
    }

    #[test]
    fn rfc3339_agrees_with_jiff_and_reaches_the_end_of_year_9999() {
        for s in [
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.5Z",
            "2000-02-29T12:00:00-07:30",
            "2026-11-29T13:29:23.123456789Z",
            "9999-12-30T00:00:00Z",
        ] {
            let want: Timestamp = s.parse().unwrap();
            assert_eq!(parse_rfc3339_ms(s), Some(want.as_millisecond()), "{s}");
        }
        let end = parse_rfc3339_ms("9999-12-31T23:59:59.999Z").unwrap();
        assert_eq!(end, 253_402_300_799_999);
        assert_eq!(
            parse_rfc3339_ms("9999-12-30T23:59:59Z"),
            Some(end - 86_400_999)
        );
    }
}
