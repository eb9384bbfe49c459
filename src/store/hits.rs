//! Hits over time: how many records match a query, bucketed by time (`GET /store/hits`, the
//! UI's chart). Store nodes stream the ULIDs of their matches (`/store/_hits`); the gateway
//! merges and deduplicates them like query results and counts them here.
//!
//! Buckets are aligned to multiples of `step` since the Unix epoch and every bucket of the
//! window is present, empty ones included.

use crate::gotime;

/// Most buckets one answer may hold.
pub const MAX_BUCKETS: u64 = 10_000;
/// Buckets the default step aims for at most.
pub const DEFAULT_BUCKETS: u64 = 120;

/// Steps the default is chosen from (ms), smallest first.
const NICE_STEPS: &[u64] = &[
    1_000,
    2_000,
    5_000,
    10_000,
    15_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    172_800_000,
    604_800_000,
];

/// Counts per bucket for a window `[from_ms, to_ms]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buckets {
    /// Bucket width, ms.
    pub step_ms: u64,
    /// Start of the first bucket, ms since the epoch (a multiple of `step_ms`).
    pub start_ms: u64,
    /// Count per bucket.
    pub counts: Vec<u64>,
}

/// Why a `step` is refused (a 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// `from` after `to`.
    #[error("'from' is after 'to'")]
    FromAfterTo,
    /// Not a duration.
    #[error("parsing 'step': {0}")]
    Duration(#[from] gotime::DurationError),
    /// Not whole milliseconds.
    #[error("parsing 'step': {0:?}: must be a whole number of milliseconds, at least 1ms")]
    NotMillis(String),
    /// More buckets than [`MAX_BUCKETS`].
    #[error("step {step} gives {n} buckets over this window; at most {MAX_BUCKETS} are allowed")]
    TooMany {
        /// The step, formatted.
        step: String,
        /// The buckets it gives.
        n: u64,
    },
}

impl Buckets {
    /// Empty buckets covering `[from_ms, to_ms]` with the given step (`None`: the default).
    pub fn new(from_ms: u64, to_ms: u64, step: Option<&str>) -> Result<Buckets, StepError> {
        if to_ms < from_ms {
            return Err(StepError::FromAfterTo);
        }
        let step_ms = match step {
            None | Some("") => default_step(from_ms, to_ms),
            Some(s) => {
                let d = gotime::parse_duration(s).map_err(StepError::Duration)?;
                let ms = d.as_millis() as u64;
                if ms == 0 || d.as_nanos() % 1_000_000 != 0 {
                    return Err(StepError::NotMillis(s.to_string()));
                }
                ms
            }
        };
        let n = count(from_ms, to_ms, step_ms);
        if n > MAX_BUCKETS {
            return Err(StepError::TooMany {
                step: format_step(step_ms),
                n,
            });
        }
        Ok(Buckets {
            step_ms,
            start_ms: from_ms / step_ms * step_ms,
            counts: vec![0; n as usize],
        })
    }

    /// Count one record of time `ms` (outside the window: ignored).
    #[inline]
    pub fn add(&mut self, ms: u64) {
        if let Some(i) = ms.checked_sub(self.start_ms).map(|d| d / self.step_ms)
            && let Some(c) = self.counts.get_mut(i as usize)
        {
            *c += 1;
        }
    }

    /// The JSON answer: `{"step": "1m", "buckets": [{"time": "...", "count": N}]}` (keys in
    /// that order).
    pub fn to_json(&self) -> String {
        #[derive(serde::Serialize)]
        struct Bucket {
            time: String,
            count: u64,
        }
        #[derive(serde::Serialize)]
        struct Answer {
            step: String,
            buckets: Vec<Bucket>,
        }
        let answer = Answer {
            step: format_step(self.step_ms),
            buckets: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, &count)| Bucket {
                    time: gotime::rfc3339_utc_secs_or_millis(
                        (self.start_ms + i as u64 * self.step_ms) as i64,
                    ),
                    count,
                })
                .collect(),
        };
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string(&answer).unwrap_or_default()
    }
}

/// Series drawn one per topic in `by=topic` hits; the rest are summed as "other".
pub const TOP_TOPICS: usize = 10;

/// Hits per topic (`/store/hits?by=topic`): the total buckets and one series per topic.
#[derive(Clone, Debug)]
pub struct TopicBuckets {
    /// Every record.
    pub total: Buckets,
    /// Per topic: its records and its buckets.
    topics: std::collections::HashMap<Vec<u8>, (u64, Vec<u64>)>,
}

impl TopicBuckets {
    /// Empty series over `total`'s buckets.
    pub fn new(total: Buckets) -> Self {
        TopicBuckets {
            total,
            topics: Default::default(),
        }
    }

    /// Count one record of `topic` at `ms`.
    pub fn add(&mut self, topic: &[u8], ms: u64) {
        let b = &self.total;
        let Some(i) = ms
            .checked_sub(b.start_ms)
            .map(|d| (d / b.step_ms) as usize)
            .filter(|&i| i < b.counts.len())
        else {
            return;
        };
        self.total.counts[i] += 1;
        let n = self.total.counts.len();
        let (count, counts) = match self.topics.get_mut(topic) {
            Some(e) => e,
            None => self
                .topics
                .entry(topic.to_vec())
                .or_insert_with(|| (0, vec![0; n])),
        };
        *count += 1;
        counts[i] += 1;
    }

    /// The JSON answer: the total as [`Buckets::to_json`] plus `series`, the [`TOP_TOPICS`]
    /// topics with the most records (most first, then by name), each
    /// `{"topic", "count", "counts": [per bucket]}`, and `other`, the sum of the rest
    /// (`{"topics": N, "count", "counts"}`).
    pub fn to_json(&self) -> String {
        let mut all: Vec<_> = self.topics.iter().collect();
        all.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
        let rest = all.split_off(all.len().min(TOP_TOPICS));
        let mut other = vec![0u64; self.total.counts.len()];
        for (_, (_, counts)) in &rest {
            for (o, c) in other.iter_mut().zip(counts) {
                *o += c;
            }
        }
        let mut v: serde_json::Value =
            serde_json::from_str(&self.total.to_json()).unwrap_or_default();
        v["series"] = all
            .iter()
            .map(|(t, (count, counts))| {
                serde_json::json!({
                    "topic": String::from_utf8_lossy(t),
                    "count": count,
                    "counts": counts,
                })
            })
            .collect();
        v["other"] = serde_json::json!({
            "topics": rest.len(),
            "count": rest.iter().map(|(_, (c, _))| c).sum::<u64>(),
            "counts": other,
        });
        v.to_string()
    }
}

/// Buckets of `step_ms` needed to cover `[from_ms, to_ms]`.
fn count(from_ms: u64, to_ms: u64, step_ms: u64) -> u64 {
    to_ms / step_ms - from_ms / step_ms + 1
}

/// The smallest "nice" step giving at most [`DEFAULT_BUCKETS`] buckets (whole days beyond a
/// week).
pub fn default_step(from_ms: u64, to_ms: u64) -> u64 {
    for &s in NICE_STEPS {
        if count(from_ms, to_ms, s) <= DEFAULT_BUCKETS {
            return s;
        }
    }
    let day = 86_400_000;
    let mut days = (to_ms - from_ms) / day / (DEFAULT_BUCKETS - 1) + 1;
    while count(from_ms, to_ms, days * day) > DEFAULT_BUCKETS {
        days += 1;
    }
    days * day
}

/// A step as a short Go-style duration: `500ms`, `30s`, `1m`, `1m30s`, `24h`.
pub fn format_step(ms: u64) -> String {
    let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    for (v, unit) in [(h, "h"), (m, "m"), (s, "s"), (milli, "ms")] {
        if v > 0 {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    #[test]
    fn default_step_gives_at_most_120_aligned_buckets() {
        let to = 1_700_000_000_123;
        for (span, want) in [
            (60_000, "1s"),
            (H, "1m"),
            (24 * H, "15m"),
            (7 * 24 * H, "2h"),
            (365 * 24 * H, "168h"),
        ] {
            let b = Buckets::new(to - span, to, None).unwrap();
            assert_eq!(format_step(b.step_ms), want, "span {span}");
            assert!(b.counts.len() as u64 <= DEFAULT_BUCKETS);
            assert_eq!(b.start_ms % b.step_ms, 0);
            assert!(b.start_ms <= to - span);
            assert!(b.start_ms + b.counts.len() as u64 * b.step_ms > to);
        }
        // The whole history still gives a usable chart.
        let b = Buckets::new(0, to, None).unwrap();
        assert!(b.counts.len() as u64 <= DEFAULT_BUCKETS);
    }

    #[test]
    fn records_land_in_their_bucket_and_empty_buckets_stay() {
        let mut b = Buckets::new(90_000, 299_999, Some("1m")).unwrap();
        assert_eq!((b.start_ms, b.counts.len()), (60_000, 4));
        for ms in [90_000, 119_999, 120_000, 299_999, 300_000, 10] {
            b.add(ms);
        }
        assert_eq!(b.counts, [2, 1, 0, 1]);
        let text = b.to_json();
        assert!(
            text.starts_with(r#"{"step":"1m","buckets":[{"time":"#),
            "{text}"
        );
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(j["step"], "1m");
        assert_eq!(j["buckets"][0]["time"], "1970-01-01T00:01:00Z");
        assert_eq!(j["buckets"][2]["count"], 0);
    }

    #[test]
    fn bad_steps_are_refused_with_the_reason() {
        let e = Buckets::new(0, 24 * H, Some("1s")).unwrap_err().to_string();
        assert!(e.contains("86401 buckets") && e.contains("10000"), "{e}");
        assert!(Buckets::new(0, H, Some("0s")).is_err());
        assert!(Buckets::new(0, H, Some("1us")).is_err());
        assert!(
            Buckets::new(0, H, Some("soon"))
                .unwrap_err()
                .to_string()
                .contains("'step'")
        );
        assert!(Buckets::new(H, 0, None).is_err());
    }

    #[test]
    fn topic_series_keep_the_ten_largest_and_sum_the_rest() {
        let mut t = TopicBuckets::new(Buckets::new(0, 119_999, Some("1m")).unwrap());
        for k in 0..13u64 {
            for i in 0..=k {
                t.add(format!("t{k:02}").as_bytes(), i * 9_000);
            }
        }
        t.add(b"t00", 500_000); // outside the window
        let j: serde_json::Value = serde_json::from_str(&t.to_json()).unwrap();
        let series = j["series"].as_array().unwrap();
        assert_eq!(series.len(), 10);
        assert_eq!(series[0]["topic"], "t12");
        assert_eq!(series[0]["count"], 13);
        assert_eq!(series[0]["counts"], serde_json::json!([7, 6]));
        assert_eq!(j["other"]["topics"], 3);
        assert_eq!(j["other"]["count"], 1 + 2 + 3);
        let total: u64 = j["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        assert_eq!(total, (1..=13).sum::<u64>());
    }

    #[test]
    fn steps_print_short() {
        assert_eq!(format_step(500), "500ms");
        assert_eq!(format_step(90_000), "1m30s");
        assert_eq!(format_step(86_400_000), "24h");
    }
}
