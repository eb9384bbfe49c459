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

/// Read a `from`/`to` value: an RFC 3339 time or a ULID (its millisecond).
pub fn parse_time(name: &'static str, value: &str) -> Result<u64, ParamError> {
    if let Some(id) = parse_ulid(value) {
        return Ok(ulid_ms(&id));
    }
    let value = value.to_string();
    match gotime::parse_rfc3339_ms(&value) {
        Some(ms) if ms >= 0 => Ok(ms as u64),
        Some(_) => Err(ParamError::BeforeEpoch { name, value }),
        None => Err(ParamError::Time { name, value }),
    }
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
