//! Loki's HTTP parameters, read as Loki reads them: times as Unix nanoseconds, seconds (with
//! or without a fraction) or RFC 3339; durations as float seconds or Prometheus durations
//! (`5m`, `1h30m`, `1d`, `2w`, `1y`).

use crate::gotime;

/// A parameter that cannot be read: the 400's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadParam(pub String);

/// Loki's default and largest `limit` for log queries.
pub const DEFAULT_LIMIT: u64 = 100;
/// The most entries one query may ask for (Loki's `max_entries_limit_per_query`).
pub const MAX_LIMIT: u64 = 5000;
/// The most points one series may have (Loki's, and Prometheus', 11,000).
pub const MAX_POINTS: i128 = 11_000;

/// Now, in Unix nanoseconds.
pub fn now_ns() -> i128 {
    i128::from(gotime::now_ms().max(0)) * 1_000_000
}

/// A time parameter (`start`, `end`, `time`): empty or absent is `default`.
pub fn time(name: &str, value: Option<&str>, default: i128) -> Result<i128, BadParam> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    let bad = || {
        BadParam(format!(
            "invalid parameter {name:?}: cannot parse {v:?} to a valid timestamp"
        ))
    };
    if v.contains('.')
        && let Ok(secs) = v.parse::<f64>()
    {
        if !secs.is_finite() {
            return Err(bad());
        }
        // Milliseconds precision, as Loki rounds a fraction of a second.
        let ms = (secs * 1000.0).round();
        return Ok(ms as i128 * 1_000_000);
    }
    if let Ok(n) = v.parse::<i64>() {
        let digits = v.trim_start_matches('-').len();
        return Ok(if digits <= 10 {
            i128::from(n) * 1_000_000_000
        } else {
            i128::from(n)
        });
    }
    match v.parse::<jiff::Timestamp>() {
        Ok(t) => Ok(t.as_nanosecond()),
        Err(_) => Err(bad()),
    }
}

/// A duration parameter (`step`, `interval`, `since`, `delay_for`), in nanoseconds: float
/// seconds, or a Prometheus duration.
pub fn duration(name: &str, value: &str) -> Result<i128, BadParam> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(BadParam(format!(
                "invalid parameter {name:?}: {v:?} is not a duration"
            )));
        }
        return Ok((secs * 1e9).round() as i128);
    }
    match crate::logql::lex::parse_duration(v) {
        Some(ns) if ns >= 0 => Ok(i128::from(ns)),
        _ => Err(BadParam(format!(
            "invalid parameter {name:?}: cannot parse {v:?} to a valid duration"
        ))),
    }
}

/// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub fn limit(value: Option<&str>) -> Result<u64, BadParam> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_LIMIT);
    };
    match v.parse::<i64>() {
        Ok(n) if n <= 0 => Err(BadParam("limit must be a positive value".to_string())),
        Ok(n) if n as u64 > MAX_LIMIT => Err(BadParam(format!(
            "max entries limit per query exceeded, limit > max_entries_limit_per_query ({n} > {MAX_LIMIT})"
        ))),
        Ok(n) => Ok(n as u64),
        Err(_) => Err(BadParam(format!(
            "invalid parameter \"limit\": {v:?} is not a number"
        ))),
    }
}

/// `direction`: `backward` (newest first, the default) or `forward`; `true` is backward.
pub fn backward(value: Option<&str>) -> Result<bool, BadParam> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("backward") => Ok(true),
        Some("forward") => Ok(false),
        Some(v) => Err(BadParam(format!(
            "invalid parameter \"direction\": {v:?} is neither forward nor backward"
        ))),
    }
}

/// Loki's default step for a range: the window over 250, in whole seconds, at least 1 s.
pub fn default_step(start: i128, end: i128) -> i128 {
    let secs = ((end - start) as f64 / 1e9 / 250.0).floor().max(1.0);
    secs as i128 * 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_loki_reads_them() {
        let d = 7;
        assert_eq!(time("start", None, d), Ok(7));
        assert_eq!(time("start", Some(""), d), Ok(7));
        assert_eq!(
            time("start", Some("1700000000"), d),
            Ok(1_700_000_000_000_000_000)
        );
        assert_eq!(
            time("start", Some("1700000000.5"), d),
            Ok(1_700_000_000_500_000_000)
        );
        assert_eq!(
            time("start", Some("1700000000123456789"), d),
            Ok(1_700_000_000_123_456_789)
        );
        assert_eq!(
            time("start", Some("2023-11-14T22:13:20.123456789Z"), d),
            Ok(1_700_000_000_123_456_789)
        );
        assert!(
            time("start", Some("yesterday"), d)
                .unwrap_err()
                .0
                .contains("\"start\"")
        );
    }

    #[test]
    fn durations_steps_limits() {
        assert_eq!(duration("step", "15"), Ok(15_000_000_000));
        assert_eq!(duration("step", "0.5"), Ok(500_000_000));
        assert_eq!(duration("step", "1m"), Ok(60_000_000_000));
        assert_eq!(duration("step", "1d"), Ok(86_400_000_000_000));
        assert_eq!(duration("step", "1h30m"), Ok(5_400_000_000_000));
        assert!(duration("step", "soon").is_err());
        assert_eq!(default_step(0, 3_600_000_000_000), 14_000_000_000);
        assert_eq!(default_step(0, 60_000_000_000), 1_000_000_000);
        assert_eq!(limit(None), Ok(100));
        assert!(limit(Some("0")).is_err());
        assert!(
            limit(Some("5001"))
                .unwrap_err()
                .0
                .contains("max entries limit")
        );
        assert_eq!(backward(Some("FORWARD")), Ok(false));
        assert!(backward(Some("up")).is_err());
    }
}
