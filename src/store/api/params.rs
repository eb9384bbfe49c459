//! The query API's parameters: the query string as given ([`RawParams`]), read into a
//! [`QueryParams`] once per request; every error is a [`ParamError`], answered as a 400 with
//! its message.

use super::super::query::QueryParams;
use crate::gotime;
use crate::record::{parse_ulid, ulid_ms};
use crate::search::{Matcher, QueryError, Topics};

/// Why a request's parameters are refused (a 400 naming the parameter).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// A count out of its range.
    #[error("parsing '{name}': {value:?}: must be a whole number from {low} to {max}")]
    Count {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: String,
        /// The least accepted.
        low: u64,
        /// The most accepted.
        max: u64,
    },
    /// `from`/`to` neither a ULID nor an RFC 3339 time.
    #[error("parsing '{name}': {value}: can't parse as ULID or RFC3339 time")]
    Time {
        /// `from` or `to`.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// `from`/`to` after the last instant RFC 3339 can write (9999-12-31T23:59:59.999Z): a
    /// ULID reaches the year 10889.
    #[error("parsing '{name}': {value}: times after 9999-12-31 are not supported")]
    AfterLast {
        /// `from` or `to`.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// `from`/`to` before 1970.
    #[error("parsing '{name}': {value}: times before 1970 are not supported")]
    BeforeEpoch {
        /// `from` or `to`.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// `from` after `to`.
    #[error("'from' is after 'to'")]
    FromAfterTo,
    /// A `regex` value that is no boolean.
    #[error("parsing 'regex': {0:?}: must be true, false, 1, 0 or empty")]
    RegexFlag(String),
    /// An `order` other than `asc` or `desc`.
    #[error("parsing 'order': {0:?}: must be asc or desc")]
    Order(String),
    /// A `by` other than `topic`.
    #[error("parsing 'by': {0:?}: only 'topic' is supported")]
    By(String),
    /// `q` or `topic` cannot be searched for.
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// The largest `limit` accepted.
pub const MAX_LIMIT: u64 = 1_000_000;
/// The largest `before`/`after` accepted.
pub const MAX_CONTEXT: u32 = 1000;

/// Query-string parameters in their order, repeated keys kept (`topic=a&topic=b`).
#[derive(Clone, Debug, Default)]
pub struct RawParams(pub Vec<(String, String)>);

impl RawParams {
    /// The value of `key` (the last one when repeated).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for RawParams {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        RawParams(
            iter.into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

/// Read a decimal count parameter in `1..=max` (`0..=max` when `zero` is allowed).
fn parse_count(name: &'static str, value: &str, max: u64, zero: bool) -> Result<u64, ParamError> {
    let low = u64::from(!zero);
    match value.parse::<u64>() {
        Ok(n) if (low..=max).contains(&n) => Ok(n),
        _ => Err(ParamError::Count {
            name,
            value: value.to_string(),
            low,
            max,
        }),
    }
}

/// Read a `from`/`to` value: an RFC 3339 time, a ULID (its millisecond), `now`, or a Go
/// duration meaning that long ago (`2h`, `15m`; the sign is ignored), as the CLI and the UI
/// take them. A time that cannot be written back (a ULID past 9999-12-31) is
/// refused rather than answered as another.
pub fn parse_time(name: &'static str, value: &str) -> Result<u64, ParamError> {
    parse_time_at(name, value, gotime::now_ms().max(0) as u64)
}

/// [`parse_time`] with the current time `now_ms`.
fn parse_time_at(name: &'static str, value: &str, now_ms: u64) -> Result<u64, ParamError> {
    let ms = if let Some(id) = parse_ulid(value) {
        ulid_ms(&id)
    } else if value == "now" {
        now_ms
    } else if let Ok(nanos) = gotime::parse_duration_nanos(value) {
        now_ms.saturating_sub((nanos.unsigned_abs() / 1_000_000) as u64)
    } else {
        let value = value.to_string();
        match gotime::parse_rfc3339_ms(&value) {
            Some(ms) if ms >= 0 => ms as u64,
            Some(_) => return Err(ParamError::BeforeEpoch { name, value }),
            None => return Err(ParamError::Time { name, value }),
        }
    };
    if ms > gotime::MAX_RFC3339_MS as u64 {
        return Err(ParamError::AfterLast {
            name,
            value: value.to_string(),
        });
    }
    Ok(ms)
}

/// Read the `regex` parameter: absent, `false` or `0` → literal; empty, `true` or `1` → regex.
pub fn parse_regex_flag(value: Option<&str>) -> Result<bool, ParamError> {
    match value {
        None | Some("false") | Some("0") => Ok(false),
        Some("") | Some("true") | Some("1") => Ok(true),
        Some(v) => Err(ParamError::RegexFlag(v.to_string())),
    }
}

/// Parse a query's parameters (`from`, `to`, `q`, `regex`, `topic`, `order`, `limit`,
/// `before`, `after`). A missing `to` is now; a missing `from` is an hour before `to`. The
/// topic matcher is built here, once.
pub fn parse_query(params: &RawParams) -> Result<QueryParams, ParamError> {
    let to_ms = match params.get("to") {
        Some(v) => parse_time("to", v)?,
        None => gotime::now_ms().max(0) as u64,
    };
    let from_ms = match params.get("from") {
        Some(v) => parse_time("from", v)?,
        None => to_ms.saturating_sub(3_600_000),
    };
    if from_ms > to_ms {
        // One rule for every endpoint that takes a window (query, hits, their local forms).
        return Err(ParamError::FromAfterTo);
    }
    let topics = Topics::parse(&params.all("topic"))?;
    let desc = match params.get("order") {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(v) => return Err(ParamError::Order(v.to_string())),
    };
    let limit = match params.get("limit") {
        None => None,
        Some(v) => Some(parse_count("limit", v, MAX_LIMIT, false)?),
    };
    let context = |name: &'static str| -> Result<u32, ParamError> {
        match params.get(name) {
            None => Ok(0),
            Some(v) => Ok(parse_count(name, v, u64::from(MAX_CONTEXT), true)? as u32),
        }
    };
    let (before, after) = (context("before")?, context("after")?);
    Ok(QueryParams {
        from_ms,
        to_ms,
        q: params.get("q").unwrap_or_default().to_string(),
        regex: parse_regex_flag(params.get("regex"))?,
        topics,
        desc,
        limit,
        before,
        after,
    })
}

/// The matcher of a live stream's `q`, `regex` and `topic` parameters.
pub fn stream_matcher(raw: &RawParams) -> Result<Matcher, ParamError> {
    let regex = parse_regex_flag(raw.get("regex"))?;
    Ok(Matcher::new(raw.get("q").unwrap_or(""), regex)?
        .with_topics(Topics::parse(&raw.all("topic"))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Result<QueryParams, ParamError> {
        parse_query(&pairs.iter().copied().collect())
    }

    #[test]
    fn times_relative_and_out_of_range() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time_at("from", "2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_time_at("from", "-15m", now), Ok(now - 900_000));
        assert_eq!(parse_time_at("to", "now", now), Ok(now));
        let e = parse_time_at("to", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ", now).unwrap_err();
        assert!(matches!(e, ParamError::AfterLast { .. }), "{e}");
        let last = parse_time_at("to", "9999-12-31T23:59:59.999Z", now).unwrap();
        assert_eq!(
            gotime::rfc3339_utc_millis(last as i64),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            gotime::rfc3339_utc_secs(last as i64),
            "9999-12-31T23:59:59Z"
        );
    }

    #[test]
    fn parameters() {
        let p = params(&[
            ("from", "01BC3NABW20000000000000000"),
            ("to", "2017-03-25T21:18:20.05731891Z"),
            ("q", "a b"),
        ])
        .unwrap();
        assert_eq!(p.from_ms, 1490476674946);
        assert_eq!(p.to_ms, 1490476700057);
        assert!(!p.regex);
        assert!(params(&[("regex", "")]).unwrap().regex);
        assert!(params(&[("regex", "true")]).unwrap().regex);
        assert!(
            !params(&[("regex", "false")]).unwrap().regex,
            "regex=false means false"
        );
        assert!(params(&[("regex", "yes")]).is_err());
        let e = params(&[("from", "yesterday")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "parsing 'from': yesterday: can't parse as ULID or RFC3339 time"
        );
        assert_eq!(
            params(&[("topic", "a b")]).unwrap_err().to_string(),
            "parsing 'topic': \"a b\": a topic or glob is letters, digits, '_', '-', '*' and '?'"
        );
        assert_eq!(
            params(&[("limit", "0")]).unwrap_err(),
            ParamError::Count {
                name: "limit",
                value: "0".into(),
                low: 1,
                max: MAX_LIMIT
            }
        );
        assert!(params(&[("to", "0123456789012345678901234U")]).is_err());
        assert!(
            params(&[("to", "2017-03-25T21:18:20.12345Z")]).is_ok(),
            "26 chars, a time"
        );
    }
}
