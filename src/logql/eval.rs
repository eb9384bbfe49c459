//! Metric queries: range functions over samples that arrive in time order, then
//! aggregations and binary operators step by step, with Loki's (and Prometheus') semantics:
//! a range window at step `t` is `(t − range, t]` (shifted back by `offset`), steps are
//! `start, start+step, … ≤ end`, a window without samples gives no point.
//!
//! Memory: each range function keeps, per series, the samples of one window and one value per
//! step; series are capped ([`MAX_SERIES`]), beyond which the query is refused (a 400 that
//! says to group).

use std::collections::{HashMap, VecDeque};

use super::ast::{
    AggOp, BinOp, Binary, Expr, Grouping, LabelReplace, MatchOp, RangeAgg, RangeOp, VectorAgg,
    apply_scalar,
};
use super::labels::{Labels, Origin};

/// The most series a range function may track, or a result may hold.
pub const MAX_SERIES: usize = 10_000;

/// Why a metric query cannot be answered (a 400 with this text).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

/// The steps a query is evaluated at, in nanoseconds: `start`, `start + step`, … ≤ `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steps {
    /// First step.
    pub start: i128,
    /// Last step at most this.
    pub end: i128,
    /// Between steps (> 0; an instant query has one step whatever this is).
    pub step: i128,
}

impl Steps {
    /// How many steps.
    pub fn len(&self) -> usize {
        if self.end < self.start {
            return 0;
        }
        ((self.end - self.start) / self.step.max(1)) as usize + 1
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The time of step `i`.
    pub fn at(&self, i: usize) -> i128 {
        self.start + self.step * i as i128
    }
}

/// One series: labels and a value (or none) per step.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Its labels.
    pub labels: Labels,
    /// Per step.
    pub points: Vec<Option<f64>>,
}

/// What an expression evaluates to.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A number per step.
    Scalar(Vec<f64>),
    /// Series.
    Vector(Vec<Series>),
}

/// A range function being computed over samples in time order.
#[derive(Debug)]
pub struct RangeEval {
    op: RangeOp,
    param: Option<f64>,
    range: i128,
    offset: i128,
    steps: Steps,
    series: HashMap<Labels, Window>,
    next: usize,
    /// For `absent_over_time`: whether any window had a sample, per step.
    seen: Vec<bool>,
    absent_labels: Labels,
}

#[derive(Debug)]
struct Window {
    samples: VecDeque<(i128, f64)>,
    points: Vec<Option<f64>>,
}

impl RangeEval {
    /// A range function `agg` at `steps`, over samples whose series keys the caller made
    /// (grouped as [`range_aggs`] says, by [`crate::logql::sample::series_key`]).
    pub fn new(agg: &RangeAgg, steps: Steps) -> RangeEval {
        let mut absent_labels = Labels::new();
        for m in &agg.log.selector {
            if m.op == MatchOp::Eq {
                absent_labels.set(&m.name, m.value.clone(), Origin::Stream);
            }
        }
        RangeEval {
            op: agg.op,
            param: agg.param,
            range: i128::from(agg.range_ns),
            offset: i128::from(agg.offset_ns),
            steps,
            series: HashMap::new(),
            next: 0,
            seen: vec![false; steps.len()],
            absent_labels,
        }
    }

    /// The window of records this function reads, in nanoseconds: `(from, to]`.
    pub fn span(agg: &RangeAgg, steps: Steps) -> (i128, i128) {
        let offset = i128::from(agg.offset_ns);
        let last = steps.at(steps.len().saturating_sub(1));
        (
            steps.start - i128::from(agg.range_ns) - offset,
            last - offset,
        )
    }

    /// One sample, in time order: a record at `ns` of the series `key` (its labels reduced by
    /// the grouping: [`crate::logql::sample::series_key`]) with `value` (1 to count, the
    /// line's length for bytes, the unwrapped value).
    pub fn push_key(&mut self, ns: i128, key: &Labels, value: f64) -> Result<(), EvalError> {
        let t = ns + self.offset;
        while self.next < self.steps.len() && self.steps.at(self.next) < t {
            self.emit(self.next);
            self.next += 1;
        }
        if let Some(w) = self.series.get_mut(key) {
            w.samples.push_back((t, value));
            return Ok(());
        }
        self.push_keyed_value(t, key.clone(), value)
    }

    fn push_keyed_value(&mut self, t: i128, key: Labels, value: f64) -> Result<(), EvalError> {
        let n = self.steps.len();
        let len = self.series.len();
        let w = match self.series.get_mut(&key) {
            Some(w) => w,
            None => {
                if len >= MAX_SERIES {
                    return Err(EvalError(format!(
                        "maximum number of series ({MAX_SERIES}) reached for a single query; aggregate them with sum by (...) or narrow the selector"
                    )));
                }
                self.series.entry(key).or_insert_with(|| Window {
                    samples: VecDeque::new(),
                    points: vec![None; n],
                })
            }
        };
        w.samples.push_back((t, value));
        Ok(())
    }

    fn emit(&mut self, i: usize) {
        let t = self.steps.at(i);
        let from = t - self.range;
        let secs = self.range as f64 / 1e9;
        let (op, param) = (self.op, self.param);
        for w in self.series.values_mut() {
            while w.samples.front().is_some_and(|(st, _)| *st <= from) {
                w.samples.pop_front();
            }
            if w.samples.is_empty() {
                continue;
            }
            self.seen[i] = true;
            w.points[i] = Some(fold(op, param, &w.samples, secs));
        }
    }

    /// The series, once every sample was pushed.
    pub fn finish(mut self) -> Vec<Series> {
        while self.next < self.steps.len() {
            self.emit(self.next);
            self.next += 1;
        }
        if self.op == RangeOp::Absent {
            let points: Vec<Option<f64>> = self.seen.iter().map(|s| (!s).then_some(1.0)).collect();
            if points.iter().any(Option::is_some) {
                return vec![Series {
                    labels: self.absent_labels,
                    points,
                }];
            }
            return Vec::new();
        }
        let mut out: Vec<Series> = self
            .series
            .into_iter()
            .filter(|(_, w)| w.points.iter().any(Option::is_some))
            .map(|(labels, w)| Series {
                labels,
                points: w.points,
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}

/// A range function's value over a window's samples.
fn fold(op: RangeOp, param: Option<f64>, s: &VecDeque<(i128, f64)>, secs: f64) -> f64 {
    let n = s.len() as f64;
    let sum = || s.iter().map(|(_, v)| v).sum::<f64>();
    let var = || {
        let mean = sum() / n;
        s.iter().map(|(_, v)| (v - mean).powi(2)).sum::<f64>() / n
    };
    match op {
        RangeOp::Count => n,
        RangeOp::Rate | RangeOp::BytesRate => sum() / secs,
        RangeOp::Bytes | RangeOp::Sum => sum(),
        RangeOp::Avg => sum() / n,
        RangeOp::Min => s.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min),
        RangeOp::Max => s.iter().map(|(_, v)| *v).fold(f64::NEG_INFINITY, f64::max),
        RangeOp::Stdvar => var(),
        RangeOp::Stddev => var().sqrt(),
        RangeOp::Quantile => {
            let mut v: Vec<f64> = s.iter().map(|(_, v)| *v).collect();
            quantile(param.unwrap_or(0.5), &mut v)
        }
        RangeOp::First => s.front().map_or(f64::NAN, |(_, v)| *v),
        RangeOp::Last => s.back().map_or(f64::NAN, |(_, v)| *v),
        RangeOp::RateCounter => {
            // The increase, counting a drop as a reset to 0, per second.
            let mut inc = 0.0;
            let mut prev: Option<f64> = None;
            for (_, v) in s {
                if let Some(p) = prev {
                    inc += if *v < p { *v } else { v - p };
                }
                prev = Some(*v);
            }
            inc / secs
        }
        RangeOp::Absent => 1.0,
    }
}

/// Prometheus' quantile: linear interpolation between the closest ranks; φ outside [0, 1]
/// is ±Inf.
fn quantile(q: f64, v: &mut [f64]) -> f64 {
    if v.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    v.sort_by(f64::total_cmp);
    let rank = q * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    let w = rank - lo as f64;
    v[lo] * (1.0 - w) + v[hi] * w
}

/// `labels` reduced as `by (...)` / `without (...)` says (all of them without a grouping).
pub fn group_labels(labels: &Labels, grouping: Option<&Grouping>) -> Labels {
    let mut out = labels.clone();
    match grouping {
        None => {}
        Some(g) if g.without => out.retain(|l| !g.labels.contains(&l.name)),
        Some(g) => out.retain(|l| g.labels.contains(&l.name)),
    }
    out
}

/// Where each range function's series come from: computed by the caller (a scan per range
/// function, in the order [`range_aggs`] lists them).
pub trait Ranges {
    /// The series of the `n`-th range function.
    fn series(&mut self, n: usize) -> Vec<Series>;
}

/// The range functions of `e` in evaluation order, each with the grouping it is computed
/// with (an enclosing `sum by` folded in).
pub fn range_aggs(e: &Expr) -> Vec<(&RangeAgg, Option<Grouping>)> {
    let mut out = Vec::new();
    collect(e, &mut out);
    out
}

fn collect<'a>(e: &'a Expr, out: &mut Vec<(&'a RangeAgg, Option<Grouping>)>) {
    match e {
        Expr::Range(r) => out.push((r, None)),
        Expr::Vector(v) => match (&*v.inner, folds_into_range(v)) {
            (Expr::Range(r), true) => out.push((r, Some(v.grouping.clone().unwrap_or(ALL)))),
            (inner, _) => collect(inner, out),
        },
        Expr::Binary(b) => {
            collect(&b.lhs, out);
            collect(&b.rhs, out);
        }
        Expr::LabelReplace(l) => collect(&l.inner, out),
        Expr::Log(_) | Expr::Number(_) | Expr::VectorOf(_) => {}
    }
}

/// Whether `sum by (g) (f(...))` can be computed as `f` grouped by `g` directly (the sum of
/// per-series counts, bytes, rates and sums is the count, bytes, rate or sum of the group).
fn folds_into_range(v: &VectorAgg) -> bool {
    matches!(&*v.inner, Expr::Range(r) if r.grouping.is_none()
        && v.op == AggOp::Sum
        && matches!(r.op, RangeOp::Count | RangeOp::Rate | RangeOp::Bytes | RangeOp::BytesRate | RangeOp::Sum))
}

/// Evaluate `e` at `steps`, the range functions' series taken from `ranges` in
/// [`range_aggs`] order.
pub fn evaluate(e: &Expr, steps: Steps, ranges: &mut dyn Ranges) -> Result<Value, EvalError> {
    let mut next = 0;
    let v = eval(e, steps, ranges, &mut next)?;
    if let Value::Vector(s) = &v
        && s.len() > MAX_SERIES
    {
        return Err(EvalError(format!(
            "maximum number of series ({MAX_SERIES}) reached for a single query"
        )));
    }
    Ok(v)
}

fn eval(
    e: &Expr,
    steps: Steps,
    ranges: &mut dyn Ranges,
    next: &mut usize,
) -> Result<Value, EvalError> {
    Ok(match e {
        Expr::Number(n) => Value::Scalar(vec![*n; steps.len()]),
        Expr::VectorOf(n) => Value::Vector(vec![Series {
            labels: Labels::new(),
            points: vec![Some(*n); steps.len()],
        }]),
        Expr::Range(_) => {
            let s = ranges.series(*next);
            *next += 1;
            Value::Vector(s)
        }
        Expr::Vector(v) => {
            if folds_into_range(v) {
                let s = ranges.series(*next);
                *next += 1;
                Value::Vector(s)
            } else {
                let inner = match eval(&v.inner, steps, ranges, next)? {
                    Value::Vector(s) => s,
                    Value::Scalar(_) => {
                        return Err(EvalError(format!(
                            "{:?} takes a vector, not a scalar",
                            v.op
                        )));
                    }
                };
                Value::Vector(aggregate(v, inner, steps.len())?)
            }
        }
        Expr::Binary(b) => {
            let l = eval(&b.lhs, steps, ranges, next)?;
            let r = eval(&b.rhs, steps, ranges, next)?;
            binary(b, l, r)?
        }
        Expr::LabelReplace(l) => match eval(&l.inner, steps, ranges, next)? {
            Value::Vector(s) => Value::Vector(label_replace(l, s)?),
            Value::Scalar(_) => return Err(EvalError("label_replace takes a vector".into())),
        },
        Expr::Log(_) => {
            return Err(EvalError(
                "a log query has no value at a step: count it with count_over_time".into(),
            ));
        }
    })
}

/// `topk`/`bottomk`: per group and step, the k largest (smallest) series' points.
fn top(v: &VectorAgg, inner: Vec<Series>, n: usize) -> Vec<Series> {
    let k = v.param.unwrap_or(1.0);
    if k < 1.0 {
        return Vec::new();
    }
    let k = k as usize;
    let mut groups: HashMap<Labels, Vec<usize>> = HashMap::new();
    for (i, s) in inner.iter().enumerate() {
        groups
            .entry(group_labels(
                &s.labels,
                Some(v.grouping.as_ref().unwrap_or(&ALL)),
            ))
            .or_default()
            .push(i);
    }
    let mut keep = vec![vec![false; n]; inner.len()];
    for members in groups.values() {
        #[allow(clippy::needless_range_loop)]
        for step in 0..n {
            let mut vals: Vec<(f64, usize)> = members
                .iter()
                .filter_map(|&i| inner[i].points[step].map(|p| (p, i)))
                .collect();
            vals.sort_by(|a, b| a.0.total_cmp(&b.0));
            if v.op == AggOp::Topk {
                vals.reverse();
            }
            for (_, i) in vals.into_iter().take(k) {
                keep[i][step] = true;
            }
        }
    }
    inner
        .into_iter()
        .zip(keep)
        .filter_map(|(mut s, k)| {
            for (p, k) in s.points.iter_mut().zip(k) {
                if !k {
                    *p = None;
                }
            }
            s.points.iter().any(Option::is_some).then_some(s)
        })
        .collect()
}

/// An aggregation without `by`/`without`: everything in one group.
const ALL: Grouping = Grouping {
    without: false,
    labels: Vec::new(),
};

fn aggregate(v: &VectorAgg, inner: Vec<Series>, n: usize) -> Result<Vec<Series>, EvalError> {
    match v.op {
        AggOp::Sort | AggOp::SortDesc => {
            let mut s = inner;
            // Ordered by their value at the last step (what an instant query shows).
            let last = |x: &Series| x.points.iter().rev().find_map(|p| *p).unwrap_or(f64::NAN);
            s.sort_by(|a, b| last(a).total_cmp(&last(b)));
            if v.op == AggOp::SortDesc {
                s.reverse();
            }
            return Ok(s);
        }
        AggOp::Topk | AggOp::Bottomk => return Ok(top(v, inner, n)),
        _ => {}
    }
    let mut groups: HashMap<Labels, Vec<Vec<f64>>> = HashMap::new();
    for s in &inner {
        let g = groups
            .entry(group_labels(
                &s.labels,
                Some(v.grouping.as_ref().unwrap_or(&ALL)),
            ))
            .or_insert_with(|| vec![Vec::new(); n]);
        for (step, p) in s.points.iter().enumerate() {
            if let Some(p) = p {
                g[step].push(*p);
            }
        }
    }
    let mut out: Vec<Series> = groups
        .into_iter()
        .map(|(labels, per_step)| Series {
            labels,
            points: per_step
                .into_iter()
                .map(|vals| {
                    if vals.is_empty() {
                        return None;
                    }
                    let n = vals.len() as f64;
                    let sum: f64 = vals.iter().sum();
                    let var = || {
                        let mean = sum / n;
                        vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n
                    };
                    Some(match v.op {
                        AggOp::Sum => sum,
                        AggOp::Avg => sum / n,
                        AggOp::Min => vals.iter().copied().fold(f64::INFINITY, f64::min),
                        AggOp::Max => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        AggOp::Count => n,
                        AggOp::Stdvar => var(),
                        AggOp::Stddev => var().sqrt(),
                        _ => unreachable!("handled above"),
                    })
                })
                .collect(),
        })
        .filter(|s| s.points.iter().any(Option::is_some))
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

/// The labels a vector-vector operation matches on.
fn signature(labels: &Labels, matching: Option<&(bool, Vec<String>)>) -> Labels {
    match matching {
        None => labels.clone(),
        Some((on, names)) => group_labels(
            labels,
            Some(&Grouping {
                without: !on,
                labels: names.clone(),
            }),
        ),
    }
}

fn binary(b: &Binary, l: Value, r: Value) -> Result<Value, EvalError> {
    Ok(match (l, r) {
        (Value::Scalar(x), Value::Scalar(y)) => {
            if b.op.is_set() {
                return Err(EvalError(format!("{:?} is for vectors, not numbers", b.op)));
            }
            Value::Scalar(
                x.iter()
                    .zip(&y)
                    .map(|(a, c)| apply_scalar(b.op, *a, *c))
                    .collect(),
            )
        }
        (Value::Vector(_), Value::Scalar(_)) | (Value::Scalar(_), Value::Vector(_))
            if b.op.is_set() =>
        {
            return Err(EvalError(format!("{:?} is for two vectors", b.op)));
        }
        (Value::Vector(v), Value::Scalar(s)) => {
            Value::Vector(with_scalar(v, &s, true, b.op, b.return_bool))
        }
        (Value::Scalar(s), Value::Vector(v)) => {
            Value::Vector(with_scalar(v, &s, false, b.op, b.return_bool))
        }
        (Value::Vector(l), Value::Vector(r)) => Value::Vector(vectors(b, l, r)?),
    })
}

/// A vector and a scalar per step (the vector on the left when `left`): arithmetic gives the
/// result, a comparison keeps the vector's value where it holds (0 or 1 with `bool`).
fn with_scalar(v: Vec<Series>, s: &[f64], left: bool, op: BinOp, return_bool: bool) -> Vec<Series> {
    v.into_iter()
        .filter_map(|mut series| {
            for (i, p) in series.points.iter_mut().enumerate() {
                if let Some(x) = *p {
                    let r = if left {
                        apply_scalar(op, x, s[i])
                    } else {
                        apply_scalar(op, s[i], x)
                    };
                    *p = if !op.is_comparison() || return_bool {
                        Some(r)
                    } else if r == 1.0 {
                        Some(x)
                    } else {
                        None
                    };
                }
            }
            series.points.iter().any(Option::is_some).then_some(series)
        })
        .collect()
}

/// Per matching signature, the steps at which some series of `v` has a point.
fn presence(v: &[Series], m: Option<&(bool, Vec<String>)>, n: usize) -> HashMap<Labels, Vec<bool>> {
    let mut out: HashMap<Labels, Vec<bool>> = HashMap::new();
    for s in v {
        let e = out
            .entry(signature(&s.labels, m))
            .or_insert_with(|| vec![false; n]);
        for (i, p) in s.points.iter().enumerate() {
            e[i] |= p.is_some();
        }
    }
    out
}

/// `and`, `or`, `unless` between two vectors (by their matching labels, step by step).
fn set_op(b: &Binary, l: Vec<Series>, r: Vec<Series>, n: usize) -> Vec<Series> {
    let m = b.matching.as_ref();
    let rsig = presence(&r, m, n);
    let present = |labels: &Labels, i: usize| rsig.get(&signature(labels, m)).is_some_and(|v| v[i]);
    match b.op {
        BinOp::And | BinOp::Unless => l
            .into_iter()
            .filter_map(|mut s| {
                let want = b.op == BinOp::And;
                let labels = s.labels.clone();
                for (i, p) in s.points.iter_mut().enumerate() {
                    if present(&labels, i) != want {
                        *p = None;
                    }
                }
                s.points.iter().any(Option::is_some).then_some(s)
            })
            .collect(),
        _ => {
            let lsig = presence(&l, m, n);
            let mut out = l;
            for mut s in r {
                let sig = signature(&s.labels, m);
                for (i, p) in s.points.iter_mut().enumerate() {
                    if lsig.get(&sig).is_some_and(|v| v[i]) {
                        *p = None;
                    }
                }
                if s.points.iter().any(Option::is_some) {
                    out.push(s);
                }
            }
            out
        }
    }
}

fn vectors(b: &Binary, l: Vec<Series>, r: Vec<Series>) -> Result<Vec<Series>, EvalError> {
    let m = b.matching.as_ref();
    let n = l.first().or(r.first()).map_or(0, |s| s.points.len());
    if b.op.is_set() {
        return Ok(set_op(b, l, r, n));
    }
    // One-to-one, or many-to-one with group_left (one-to-many with group_right).
    let (many, one, swapped) = match &b.group {
        Some((false, _)) => (r, l, true),
        _ => (l, r, false),
    };
    let mut index: HashMap<Labels, Vec<usize>> = HashMap::new();
    for (i, s) in one.iter().enumerate() {
        index.entry(signature(&s.labels, m)).or_default().push(i);
    }
    let cmp = b.op.is_comparison();
    let mut out: Vec<Series> = Vec::new();
    let mut seen: HashMap<Labels, usize> = HashMap::new();
    for s in many {
        let sig = signature(&s.labels, m);
        let Some(matches) = index.get(&sig) else {
            continue;
        };
        if matches.len() > 1 {
            return Err(EvalError(format!(
                "found duplicate series for the match group {} on the {} hand-side of the operation; many-to-many matching not allowed: matching labels must be unique on one side",
                sig.text(),
                if swapped { "left" } else { "right" }
            )));
        }
        let other = &one[matches[0]];
        let mut labels = match (&b.group, m) {
            (Some(_), _) => s.labels.clone(),
            (None, Some(_)) if !cmp || b.return_bool => sig.clone(),
            (None, _) => s.labels.clone(),
        };
        if let Some((_, extra)) = &b.group {
            for name in extra {
                match other.labels.get(name) {
                    Some(v) => labels.set(name, v.to_string(), Origin::Stream),
                    None => labels.remove(name),
                }
            }
        }
        let mut points = vec![None; n];
        for (i, slot) in points.iter_mut().enumerate() {
            if let (Some(a), Some(c)) = (s.points[i], other.points[i]) {
                let (x, y) = if swapped { (c, a) } else { (a, c) };
                let r = apply_scalar(b.op, x, y);
                *slot = if !cmp || b.return_bool {
                    Some(r)
                } else if r == 1.0 {
                    Some(x)
                } else {
                    None
                };
            }
        }
        if !points.iter().any(Option::is_some) {
            continue;
        }
        if b.group.is_none() && seen.insert(labels.clone(), out.len()).is_some() {
            return Err(EvalError(format!(
                "multiple matches for labels {}: many-to-one matching must be explicit (group_left/group_right)",
                labels.text()
            )));
        }
        out.push(Series { labels, points });
    }
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

fn label_replace(l: &LabelReplace, s: Vec<Series>) -> Result<Vec<Series>, EvalError> {
    let re = regex::Regex::new(&format!("^(?s:{})$", l.regex))
        .map_err(|e| EvalError(format!("label_replace: invalid regex {:?}: {e}", l.regex)))?;
    Ok(s.into_iter()
        .map(|mut series| {
            let src = series.labels.get(&l.src).unwrap_or("").to_string();
            if let Some(c) = re.captures(&src) {
                let mut value = String::new();
                c.expand(&l.replacement, &mut value);
                if value.is_empty() {
                    series.labels.remove(&l.dst);
                } else {
                    series.labels.set(&l.dst, value, Origin::Stream);
                }
            }
            series
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logql::parse;

    struct Fixed(Vec<Vec<Series>>);
    impl Ranges for Fixed {
        fn series(&mut self, n: usize) -> Vec<Series> {
            self.0[n].clone()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        let mut l = Labels::new();
        for (k, v) in pairs {
            l.set(k, v.to_string(), Origin::Stream);
        }
        l
    }

    const S: i128 = 1_000_000_000;

    /// count_over_time over samples at given seconds, steps every 10 s from 10 to 40.
    fn counts(query: &str, samples: &[(i128, &[(&str, &str)])]) -> Vec<Series> {
        let e = parse(query).unwrap();
        let steps = Steps {
            start: 10 * S,
            end: 40 * S,
            step: 10 * S,
        };
        let aggs = range_aggs(&e);
        let (agg, g) = &aggs[0];
        let mut r = RangeEval::new(agg, steps);
        for (t, l) in samples {
            let key =
                crate::logql::sample::series_key(&labels(l), g.as_ref().or(agg.grouping.as_ref()));
            r.push_key(t * S, &key, 1.0).unwrap();
        }
        let mut ranges = Fixed(vec![r.finish()]);
        match evaluate(&e, steps, &mut ranges).unwrap() {
            Value::Vector(v) => v,
            Value::Scalar(_) => panic!(),
        }
    }

    #[test]
    fn windows_are_left_open_right_closed_and_empty_ones_give_no_point() {
        let a: &[(&str, &str)] = &[("app", "a")];
        let b: &[(&str, &str)] = &[("app", "b")];
        let got = counts(
            r#"count_over_time({app=~".+"}[10s])"#,
            &[(0, a), (10, a), (11, a), (20, b), (35, a)],
        );
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].points,
            [Some(1.0), Some(1.0), None, Some(1.0)],
            "(0,10] has t=10 only"
        );
        assert_eq!(got[1].points, [None, Some(1.0), None, None]);
        let got = counts(
            r#"sum by (app) (count_over_time({app=~".+"}[20s]))"#,
            &[(5, a), (10, a), (15, b), (20, b), (25, a)],
        );
        assert_eq!(got[0].labels.text(), r#"{app="a"}"#);
        assert_eq!(got[0].points, [Some(2.0), Some(2.0), Some(1.0), Some(1.0)]);
        assert_eq!(got[1].points, [None, Some(2.0), Some(2.0), None]);
        let got = counts(
            r#"sum(count_over_time({app=~".+"}[20s]))"#,
            &[(5, a), (15, b)],
        );
        assert_eq!(got[0].points, [Some(1.0), Some(2.0), Some(1.0), None]);
        let got = counts(r#"count_over_time({app=~".+"}[10s] offset 10s)"#, &[(5, a)]);
        assert_eq!(got[0].points, [None, Some(1.0), None, None]);
        let got = counts(r#"absent_over_time({app="x"}[10s])"#, &[(15, a)]);
        assert_eq!(got[0].labels.text(), r#"{app="x"}"#);
        assert_eq!(got[0].points, [Some(1.0), None, Some(1.0), Some(1.0)]);
    }

    #[test]
    fn aggregations_and_binary_operators() {
        let steps = Steps {
            start: 0,
            end: 0,
            step: 1,
        };
        let one = |l: &[(&str, &str)], v: f64| Series {
            labels: labels(l),
            points: vec![Some(v)],
        };
        let data = vec![
            one(&[("app", "a"), ("lvl", "x")], 1.0),
            one(&[("app", "a"), ("lvl", "y")], 4.0),
            one(&[("app", "b"), ("lvl", "x")], 2.0),
        ];
        let run = |q: &str| {
            let e = parse(q).unwrap();
            let n = range_aggs(&e).len();
            evaluate(&e, steps, &mut Fixed(vec![data.clone(); n])).unwrap()
        };
        let vals = |v: Value| match v {
            Value::Vector(s) => s
                .iter()
                .map(|s| (s.labels.text(), s.points[0].unwrap()))
                .collect::<Vec<_>>(),
            Value::Scalar(x) => vec![(String::new(), x[0])],
        };
        assert_eq!(vals(run("vector(1)+vector(1)")), [("{}".into(), 2.0)]);
        assert_eq!(vals(run("1 + 1")), [(String::new(), 2.0)]);
        let q = r#"avg by (app) (count_over_time({a="b"}[1m]))"#;
        assert_eq!(
            vals(run(q)),
            [(r#"{app="a"}"#.into(), 2.5), (r#"{app="b"}"#.into(), 2.0)]
        );
        let q = r#"max without (lvl) (count_over_time({a="b"}[1m]))"#;
        assert_eq!(
            vals(run(q)),
            [(r#"{app="a"}"#.into(), 4.0), (r#"{app="b"}"#.into(), 2.0)]
        );
        let q = r#"topk(1, count_over_time({a="b"}[1m]))"#;
        assert_eq!(vals(run(q)), [(r#"{app="a", lvl="y"}"#.into(), 4.0)]);
        let q = r#"count_over_time({a="b"}[1m]) > 1"#;
        assert_eq!(vals(run(q)).len(), 2);
        let q = r#"count_over_time({a="b"}[1m]) > bool 1"#;
        assert_eq!(
            vals(run(q)).iter().map(|x| x.1).collect::<Vec<_>>(),
            [0.0, 1.0, 1.0]
        );
        let q = r#"count_over_time({a="b"}[1m]) * 2"#;
        assert_eq!(
            vals(run(q)).iter().map(|x| x.1).collect::<Vec<_>>(),
            [2.0, 8.0, 4.0]
        );
        let q = r#"count_over_time({a="b"}[1m]) / count_over_time({a="b"}[1m])"#;
        assert_eq!(
            vals(run(q)).iter().map(|x| x.1).collect::<Vec<_>>(),
            [1.0, 1.0, 1.0]
        );
        let q = r#"max by (app) (count_over_time({a="b"}[1m])) / on (app) group_right count_over_time({a="b"}[1m])"#;
        assert_eq!(
            vals(run(q)).iter().map(|x| x.1).collect::<Vec<_>>(),
            [4.0, 1.0, 1.0]
        );
        let q = r#"count_over_time({a="b"}[1m]) and on (lvl) sum by (lvl) (count_over_time({a="b"}[1m])) > 3"#;
        assert_eq!(vals(run(q)).len(), 1, "only lvl=y (4) is over 3");
        let q = r#"label_replace(count_over_time({a="b"}[1m]), "svc", "s-$1", "app", "(.*)")"#;
        assert!(vals(run(q))[0].0.contains(r#"svc="s-a""#));
        let e = parse(r#"count_over_time({a="b"}[1m]) + count_over_time({a="b"}[1m])"#).unwrap();
        let dup = vec![
            one(&[("app", "a")], 1.0),
            one(&[("app", "a"), ("z", "1")], 1.0),
        ];
        let got = evaluate(&e, steps, &mut Fixed(vec![dup.clone(), dup])).unwrap();
        assert!(matches!(got, Value::Vector(ref v) if v.len() == 2));
    }

    #[test]
    fn range_functions_over_unwrapped_values() {
        let mut v: VecDeque<(i128, f64)> = [1.0, 2.0, 3.0, 4.0].iter().map(|x| (0, *x)).collect();
        assert_eq!(fold(RangeOp::Sum, None, &v, 2.0), 10.0);
        assert_eq!(fold(RangeOp::Avg, None, &v, 2.0), 2.5);
        assert_eq!(fold(RangeOp::Rate, None, &v, 2.0), 5.0);
        assert_eq!(fold(RangeOp::Min, None, &v, 2.0), 1.0);
        assert_eq!(fold(RangeOp::Max, None, &v, 2.0), 4.0);
        assert_eq!(fold(RangeOp::Stdvar, None, &v, 2.0), 1.25);
        assert_eq!(fold(RangeOp::Quantile, Some(0.5), &v, 2.0), 2.5);
        assert_eq!(fold(RangeOp::First, None, &v, 2.0), 1.0);
        assert_eq!(fold(RangeOp::Last, None, &v, 2.0), 4.0);
        v.push_back((0, 1.0));
        assert_eq!(
            fold(RangeOp::RateCounter, None, &v, 1.0),
            4.0,
            "a reset counts from 0"
        );
    }
}
