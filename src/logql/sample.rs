//! A range function's samples from stored records: each record through the selector and the
//! pipeline, as `(nanoseconds, series key, value)`: what a store node computes for its own
//! records, and what the node asked merges (each record once) and evaluates.
//!
//! A pipeline of line filters only (the common dashboard query) finds each stream's series
//! once: the record's stream (topic and labels part) is looked up, not read into labels.

use std::collections::HashMap;

use super::ast::{Grouping, RangeAgg, RangeOp};
use super::eval::{EvalError, group_labels};
use super::labels::{ERROR, ERROR_DETAILS, Labels};
use super::pipeline::{Pipeline, Unsupported};
use super::record::{Entry, Selector, agent_ns, detect_level, entry, stream_labels};
use crate::record::{BODY_OFFSET, ULID_LEN, parts, ulid_ms};

/// What one record gives.
#[derive(Debug)]
pub enum Sampled<'a> {
    /// Nothing: outside the window, not selected, filtered out.
    Skip,
    /// A sample.
    Sample {
        /// Its time.
        ns: i128,
        /// Its series: the record's labels reduced by the grouping.
        key: std::borrow::Cow<'a, Labels>,
        /// Its value.
        value: f64,
        /// The number of its stream when its series is its stream's (the same number, the
        /// same series: a caller may keep what it derives from the key by this number).
        stream: Option<usize>,
    },
    /// The query fails (a record with `__error__`, as Loki fails it).
    Error(EvalError),
}

/// The sampler of one range function.
#[derive(Debug)]
pub struct Sampler {
    op: RangeOp,
    unwrapped: bool,
    levels: bool,
    /// `(from, to]`, nanoseconds.
    window: (i128, i128),
    fast: bool,
    pipeline: Pipeline,
    selector: Selector,
    grouping: Option<Grouping>,
    /// Per stream (topic and labels part): its number in `keys`, or `None` when the selector
    /// does not take it.
    streams: HashMap<Vec<u8>, Option<usize>>,
    /// The series keys of the streams taken.
    keys: Vec<Labels>,
    /// A stream's name being looked up.
    scratch: Vec<u8>,
}

/// A record's series key: its labels, without `__error__`, reduced by `grouping`.
pub fn series_key(labels: &Labels, grouping: Option<&Grouping>) -> Labels {
    let mut k = labels.clone();
    k.retain(|l| l.name != ERROR && l.name != ERROR_DETAILS);
    group_labels(&k, grouping)
}

impl Sampler {
    /// The sampler of `agg` for records in `(from, to]`, its series grouped by `grouping`
    /// (an enclosing `sum by` folded in) or the function's own; `levels`: the query names
    /// `detected_level`, so each record gets one before the pipeline.
    pub fn new(
        agg: &RangeAgg,
        window: (i128, i128),
        grouping: Option<Grouping>,
        levels: bool,
    ) -> Result<Sampler, Unsupported> {
        let pipeline = Pipeline::new(&agg.log.pipeline)?;
        Ok(Sampler {
            op: agg.op,
            unwrapped: agg.unwrap().is_some(),
            levels,
            window,
            fast: pipeline.only_line_filters() && !levels,
            pipeline,
            selector: Selector::new(&agg.log.selector)?,
            grouping: grouping.or_else(|| agg.grouping.clone()),
            streams: HashMap::new(),
            keys: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// The sample of one stored record line (without its newline).
    pub fn sample(&mut self, line: &[u8]) -> Sampled<'_> {
        if self.fast
            && let Some((ns, stream, value)) = self.fast_parts(line)
        {
            return match stream {
                None => Sampled::Skip,
                Some(i) => Sampled::Sample {
                    ns,
                    key: std::borrow::Cow::Borrowed(&self.keys[i]),
                    value,
                    stream: Some(i),
                },
            };
        }
        let Some(e) = entry(line) else {
            return Sampled::Skip;
        };
        let (from, to) = self.window;
        if e.ns <= from || e.ns > to || !self.selector.matches(&e.labels) {
            return Sampled::Skip;
        }
        let Entry {
            ns,
            mut line,
            mut labels,
        } = e;
        if self.levels {
            detect_level(&mut labels, &line);
        }
        let mut sample = None;
        if !self.pipeline.run(&mut line, &mut labels, ns, &mut sample) {
            return Sampled::Skip;
        }
        if let Some(e) = labels.get(ERROR) {
            return Sampled::Error(EvalError(format!(
                "pipeline error: '{e}' for series: '{}'. Use a label filter to intentionally skip this error. (e.g | __error__!=\"{e}\"). To skip all errors you can use | __error__=\"\". Details: {}",
                labels.text(),
                labels.get(ERROR_DETAILS).unwrap_or("")
            )));
        }
        let value = self.value(sample, line.len());
        Sampled::Sample {
            ns,
            key: std::borrow::Cow::Owned(series_key(&labels, self.grouping.as_ref())),
            value,
            stream: None,
        }
    }

    /// A record whose series is its stream's: its time, its stream's number (`None`:
    /// skipped) and value; `None` when it must be read whole (metadata the grouping may keep).
    fn fast_parts(&mut self, line: &[u8]) -> Option<(i128, Option<usize>, f64)> {
        if line.len() < BODY_OFFSET {
            return Some((0, None, 0.0));
        }
        let (topic, payload) = crate::record::topic_and_payload(&line[BODY_OFFSET..]);
        let p = parts::split(payload);
        let ms = ulid_ms(&line[..ULID_LEN]);
        let mut ns = i128::from(ms) * 1_000_000;
        if !p.metadata.is_empty() {
            // Metadata is part of a record's series unless the grouping keeps only named
            // labels none of which it holds; the agent's time is read for the nanoseconds.
            let names = match &self.grouping {
                Some(g) if !g.without => &g.labels,
                _ => return None,
            };
            for (k, v) in parts::pairs(p.metadata) {
                if k == b"ts" {
                    if let Some(t) = agent_ns(&v, ms) {
                        ns = t;
                    }
                } else if names.iter().any(|n| n.as_bytes() == k) {
                    return None;
                }
            }
        }
        let (from, to) = self.window;
        if ns <= from || ns > to || !self.pipeline.keeps_line(p.message) {
            return Some((ns, None, 0.0));
        }
        // The stream's name, in a buffer kept between records (no allocation per record).
        self.scratch.clear();
        self.scratch.extend_from_slice(topic);
        self.scratch.push(parts::MARK);
        self.scratch.extend_from_slice(p.labels);
        let taken = match self.streams.get(self.scratch.as_slice()) {
            Some(t) => *t,
            None => {
                let labels = stream_labels(&String::from_utf8_lossy(topic), p.labels);
                let key = self.selector.matches(&labels).then(|| {
                    self.keys.push(series_key(&labels, self.grouping.as_ref()));
                    self.keys.len() - 1
                });
                self.streams.insert(self.scratch.clone(), key);
                key
            }
        };
        let value = self.value(None, p.message.len());
        Some((ns, taken, value))
    }

    fn value(&self, sample: Option<f64>, line_len: usize) -> f64 {
        match (self.op, self.unwrapped) {
            (_, true) => sample.unwrap_or(0.0),
            (RangeOp::Bytes | RangeOp::BytesRate, _) => line_len as f64,
            _ => 1.0,
        }
    }
}
