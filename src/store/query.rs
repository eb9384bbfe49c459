//! Local query execution: select the segments whose names overlap `[from, to]`, map them,
//! search each one's time range, merge overlapping segments by ULID with dedup, and push the
//! matching lines into a sink. Nothing is collected: memory is bounded by the sink's buffer.

use std::collections::HashMap;
use std::io;

use memmap2::Mmap;

use super::log::{Segment, StoreLog};
use crate::gotime;
use crate::merge;
use crate::record::{parse_ulid, ulid_ms};
use crate::search::{MatchSource, Matcher, Matches};

/// A parsed query (the `from`, `to`, `q` and `regex` parameters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryParams {
    /// Lower time bound, inclusive, Unix ms.
    pub from_ms: u64,
    /// Upper time bound, inclusive, Unix ms.
    pub to_ms: u64,
    /// The query expression.
    pub q: String,
    /// Whether `q` is a regex.
    pub regex: bool,
}

/// Read a `from`/`to` value: an RFC 3339 time or a ULID (its millisecond).
pub fn parse_time(name: &str, value: &str) -> Result<u64, String> {
    if let Some(id) = parse_ulid(value) {
        return Ok(ulid_ms(&id));
    }
    match gotime::parse_rfc3339_ms(value) {
        Some(ms) if ms >= 0 => Ok(ms as u64),
        Some(_) => Err(format!(
            "parsing '{name}': {value}: times before 1970 are not supported"
        )),
        None => Err(format!(
            "parsing '{name}': {value}: can't parse as ULID or RFC3339 time"
        )),
    }
}

/// Read the `regex` parameter: absent, `false` or `0` → literal; empty, `true` or `1` → regex.
pub fn parse_regex_flag(value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("false") | Some("0") => Ok(false),
        Some("") | Some("true") | Some("1") => Ok(true),
        Some(v) => Err(format!(
            "parsing 'regex': {v:?}: must be true, false, 1, 0 or empty"
        )),
    }
}

impl QueryParams {
    /// Parse query-string parameters. A missing `to` is now; a missing `from` is an hour
    /// before `to`.
    pub fn parse(params: &HashMap<String, String>) -> Result<QueryParams, String> {
        let to_ms = match params.get("to") {
            Some(v) => parse_time("to", v)?,
            None => gotime::now_ms().max(0) as u64,
        };
        let from_ms = match params.get("from") {
            Some(v) => parse_time("from", v)?,
            None => to_ms.saturating_sub(3_600_000),
        };
        Ok(QueryParams {
            from_ms,
            to_ms,
            q: params.get("q").cloned().unwrap_or_default(),
            regex: parse_regex_flag(params.get("regex").map(String::as_str))?,
        })
    }
}

/// The segments a query will read: named (for planning headers) or also mapped (to search).
#[derive(Debug, Default)]
pub struct Plan {
    /// Selected segments, sorted by low ULID.
    pub segments: Vec<Segment>,
    /// Their mappings, when opened (`None` for an empty file).
    maps: Vec<Option<Mmap>>,
}

impl Plan {
    /// Select the segments of `log` overlapping the query's time range, opening none (HEAD).
    pub fn new(log: &StoreLog, p: &QueryParams) -> io::Result<Plan> {
        Ok(Plan {
            segments: log.overlapping(p.from_ms, p.to_ms)?,
            maps: Vec::new(),
        })
    }

    /// Select and map the segments, under the segment set's read lock, so compaction cannot
    /// remove one between selection and reading.
    pub fn open(log: &StoreLog, p: &QueryParams) -> io::Result<Plan> {
        let (segments, maps) = log
            .open_overlapping(p.from_ms, p.to_ms)?
            .into_iter()
            .unzip();
        Ok(Plan { segments, maps })
    }

    /// Sum of the selected segments' sizes (`X-Oklog-Max-Data-Set-Size`).
    pub fn data_set_size(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Bytes the search will scan: the `[from, to]` range of each opened segment, found by
    /// binary search (`X-Oklog-Bytes-Scanned`).
    pub fn bytes_to_scan(&self, p: &QueryParams) -> u64 {
        self.maps
            .iter()
            .flatten()
            .map(|m| crate::search::time_range(m, p.from_ms, p.to_ms).len() as u64)
            .sum()
    }

    /// Run the search over an opened plan, pushing each matching line (with its `\n`) into
    /// `sink` in ULID order; `sink` returns false to stop (the client went away). Returns bytes
    /// scanned.
    pub fn execute(
        &self,
        p: &QueryParams,
        matcher: &Matcher,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> io::Result<u64> {
        let mut scanned = 0u64;
        for batch in batches(&self.segments) {
            let mut matches: Vec<Matches> = self.maps[batch]
                .iter()
                .flatten()
                .map(|m| Matches::new(m, p.from_ms, p.to_ms, matcher))
                .collect();
            scanned += matches.iter().map(|m| m.range_len() as u64).sum::<u64>();
            if matches.len() == 1 {
                for line in matches.pop().into_iter().flatten() {
                    if !sink(line) {
                        return Ok(scanned);
                    }
                }
            } else {
                let mut sources: Vec<MatchSource> =
                    matches.into_iter().map(MatchSource::new).collect();
                let mut stopped = false;
                merge::merge(&mut sources, |line| {
                    stopped = !sink(line);
                    Ok(!stopped)
                })?;
                if stopped {
                    return Ok(scanned);
                }
            }
        }
        Ok(scanned)
    }
}

/// Split segments sorted by low ULID into batches whose ranges chain-overlap (equal bounds
/// overlap): each batch is merged, consecutive batches are simply concatenated.
pub fn batches(segments: &[Segment]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < segments.len() {
        let mut j = i + 1;
        let mut high = segments[i].high;
        while j < segments.len() && segments[j].low <= high {
            high = high.max(segments[j].high);
            j += 1;
        }
        out.push(i..j);
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Result<QueryParams, String> {
        QueryParams::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn seg(low: &str, high: &str) -> Segment {
        let pad = |s: &str| -> [u8; 26] { format!("{s:0<26}").as_bytes().try_into().unwrap() };
        Segment {
            path: format!("{low}-{high}").into(),
            low: pad(low),
            high: pad(high),
            size: 1,
        }
    }

    #[test]
    fn batch_segments() {
        // TestBatchSegments.
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [(usize, usize)]);
        let cases: &[Case] = &[
            (
                &[("A", "M"), ("N", "R"), ("O", "S"), ("W", "Z")],
                &[(0, 1), (1, 3), (3, 4)],
            ),
            (&[("A", "M"), ("L", "R"), ("O", "S"), ("Q", "Z")], &[(0, 4)]),
            (
                &[("A", "B"), ("B", "C"), ("C", "D"), ("E", "F"), ("F", "G")],
                &[(0, 3), (3, 5)],
            ),
            (&[], &[]),
        ];
        for (input, want) in cases {
            let segs: Vec<Segment> = input.iter().map(|(l, h)| seg(l, h)).collect();
            let want: Vec<_> = want.iter().map(|&(a, b)| a..b).collect();
            assert_eq!(batches(&segs), want, "{input:?}");
        }
    }

    #[test]
    fn overlapping_segments_merge_with_dedup_and_bad_names_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = StoreLog::open(dir.path()).unwrap();
        let write = |name: &str, body: &str| std::fs::write(dir.path().join(name), body).unwrap();
        write(
            "01BB6RQR190000000000000000-01BB6RT5GS0000000000000000.flushed",
            "01BB6RQR190000000000000000 a\n01BB6RT5GS0000000000000000 c\n",
        );
        write(
            "01BB6RRTB70000000000000000-01BB6RT5GS0000000000000000.flushed",
            "01BB6RRTB70000000000000000 b\n01BB6RT5GS0000000000000000 c\n",
        );
        write("01BB6RQR190000000000000000-xxx.flushed", "junk\n");
        let p = params(&[
            ("from", "2017-01-01T00:00:00Z"),
            ("to", "2018-01-01T00:00:00Z"),
        ])
        .unwrap();
        let plan = Plan::open(&log, &p).unwrap();
        assert_eq!(plan.segments.len(), 2, "the malformed name is skipped");
        let m = Matcher::new("", false).unwrap();
        let mut out = Vec::new();
        plan.execute(&p, &m, &mut |l| {
            out.extend_from_slice(l);
            true
        })
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "01BB6RQR190000000000000000 a\n01BB6RRTB70000000000000000 b\n01BB6RT5GS0000000000000000 c\n"
        );
        assert!(
            dir.path()
                .join("01BB6RQR190000000000000000-xxx.flushed")
                .exists(),
            "never deleted"
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
            e,
            "parsing 'from': yesterday: can't parse as ULID or RFC3339 time"
        );
        assert!(params(&[("to", "0123456789012345678901234U")]).is_err());
        assert!(
            params(&[("to", "2017-03-25T21:18:20.12345Z")]).is_ok(),
            "26 chars, a time"
        );
    }
}
