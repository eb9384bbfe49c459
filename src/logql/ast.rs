//! The LogQL syntax tree, as [`super::parse`] builds it.

/// A whole query: a log query or a metric expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// `{selector} | pipeline`: records.
    Log(LogExpr),
    /// `count_over_time({...}[5m])` and the other range functions.
    Range(RangeAgg),
    /// `sum by (a) (...)` and the other aggregations over an instant vector.
    Vector(VectorAgg),
    /// `a + b`, `a > bool 1`, ...
    Binary(Box<Binary>),
    /// A number.
    Number(f64),
    /// `vector(1)`: one sample without labels at every step.
    VectorOf(f64),
    /// `label_replace(v, "dst", "replacement", "src", "regex")`.
    LabelReplace(Box<LabelReplace>),
}

impl Expr {
    /// Whether the query answers records (a log query), not samples.
    pub fn is_log(&self) -> bool {
        matches!(self, Expr::Log(_))
    }
}

/// A stream selector and its pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct LogExpr {
    /// `{a="b", c=~"d"}`.
    pub selector: Vec<Matcher>,
    /// The stages after it, in order.
    pub pipeline: Vec<Stage>,
}

/// One label matcher of a selector or of `drop`/`keep`.
#[derive(Clone, Debug, PartialEq)]
pub struct Matcher {
    /// The label.
    pub name: String,
    /// `=`, `!=`, `=~`, `!~`.
    pub op: MatchOp,
    /// The value or regex.
    pub value: String,
}

/// How a label matcher compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `=~`
    Re,
    /// `!~`
    Nre,
}

/// One pipeline stage.
#[derive(Clone, Debug, PartialEq)]
pub enum Stage {
    /// `|= "a" or "b"`, `!= "a"`, `|~ "re"`, `!~ "re"`, `|> "<_> pattern"`, `!> "..."`.
    Line(LineFilter),
    /// `| json`, `| logfmt`, `| regexp`, `| pattern`, `| unpack`.
    Parser(Parser),
    /// `| status >= 500 and method = "GET"`.
    Label(LabelFilter),
    /// `| line_format "{{.msg}}"`.
    LineFormat(String),
    /// `| label_format a="{{.b}}", c=d`.
    LabelFormat(Vec<LabelFmt>),
    /// `| drop a, b="v"`.
    Drop(Vec<DropKeep>),
    /// `| keep a, b="v"`.
    Keep(Vec<DropKeep>),
    /// `| decolorize`.
    Decolorize,
    /// `| unwrap x`, `| unwrap duration(x)`, `| unwrap bytes(x)` (metric queries only).
    Unwrap(Unwrap),
}

/// A line filter and its `or` alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct LineFilter {
    /// How it compares.
    pub op: LineOp,
    /// The strings (any one matching is a match for the positive operators).
    pub values: Vec<FilterValue>,
}

/// What a line filter looks for.
#[derive(Clone, Debug, PartialEq)]
pub enum FilterValue {
    /// A literal, a regex or a pattern, as the operator says.
    Text(String),
    /// `ip("192.168.0.0/16")`.
    Ip(String),
}

/// How a line filter compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineOp {
    /// `|=`
    Contains,
    /// `!=`
    NotContains,
    /// `|~`
    Match,
    /// `!~`
    NotMatch,
    /// `|>`
    Pattern,
    /// `!>`
    NotPattern,
}

impl LineOp {
    /// Whether the filter keeps lines that do not match.
    pub fn is_negative(self) -> bool {
        matches!(
            self,
            LineOp::NotContains | LineOp::NotMatch | LineOp::NotPattern
        )
    }
}

/// A parser stage.
#[derive(Clone, Debug, PartialEq)]
pub enum Parser {
    /// `| json` or `| json a="x.y", b` (label = JSON path).
    Json(Vec<(String, String)>),
    /// `| logfmt [--strict] [--keep-empty] [a="key", b]`.
    Logfmt {
        /// `--strict`: a malformed line is an error, not what could be read.
        strict: bool,
        /// `--keep-empty`: standalone keys become empty labels.
        keep_empty: bool,
        /// The labels to extract (label = key); none: all.
        params: Vec<(String, String)>,
    },
    /// `| regexp "(?P<name>...)"`.
    Regexp(String),
    /// `| pattern "<ip> - <_> <status>"`.
    Pattern(String),
    /// `| unpack`.
    Unpack,
}

/// A label filter expression.
#[derive(Clone, Debug, PartialEq)]
pub enum LabelFilter {
    /// Both.
    And(Box<LabelFilter>, Box<LabelFilter>),
    /// Either.
    Or(Box<LabelFilter>, Box<LabelFilter>),
    /// `name op value`.
    Compare {
        /// The label.
        name: String,
        /// The comparison.
        op: CmpOp,
        /// What it is compared with.
        value: Value,
    },
    /// `name = ip("10.0.0.0/8")` or `!=`.
    Ip {
        /// The label.
        name: String,
        /// `!=`.
        negate: bool,
        /// The address, range or CIDR.
        pattern: String,
    },
}

/// A comparison in a label filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `=` (strings) or `==`/`=` (numbers).
    Eq,
    /// `!=`
    Ne,
    /// `=~`
    Re,
    /// `!~`
    Nre,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

/// The right side of a label filter.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A string (for `=`, `!=`, `=~`, `!~`).
    Str(String),
    /// A number.
    Number(f64),
    /// A duration, in seconds.
    Duration(f64),
    /// A size, in bytes.
    Bytes(f64),
}

/// One `label_format` assignment.
#[derive(Clone, Debug, PartialEq)]
pub enum LabelFmt {
    /// `dst=src`: rename.
    Rename(String, String),
    /// `dst="{{template}}"`.
    Template(String, String),
}

/// One `drop`/`keep` item: a label name, optionally only when it matches.
#[derive(Clone, Debug, PartialEq)]
pub struct DropKeep {
    /// The label.
    pub name: String,
    /// `name="v"` / `name=~"re"`: only then.
    pub matcher: Option<Matcher>,
}

/// An `unwrap` stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Unwrap {
    /// The label whose value becomes the sample.
    pub label: String,
    /// How the value is read.
    pub conv: Conversion,
}

/// How an unwrapped value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conversion {
    /// A number.
    Number,
    /// `duration(x)` / `duration_seconds(x)`: a Go duration, in seconds.
    Duration,
    /// `bytes(x)`: a size, in bytes.
    Bytes,
}

/// A range function over a log expression.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeAgg {
    /// The function.
    pub op: RangeOp,
    /// `quantile_over_time`'s φ.
    pub param: Option<f64>,
    /// The records.
    pub log: LogExpr,
    /// The window, in nanoseconds.
    pub range_ns: i64,
    /// `offset`, in nanoseconds.
    pub offset_ns: i64,
    /// `by`/`without` after the function (unwrapped range functions).
    pub grouping: Option<Grouping>,
}

impl RangeAgg {
    /// The unwrap stage, if any.
    pub fn unwrap(&self) -> Option<&Unwrap> {
        self.log.pipeline.iter().find_map(|s| match s {
            Stage::Unwrap(u) => Some(u),
            _ => None,
        })
    }
}

/// The range functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeOp {
    /// `count_over_time`
    Count,
    /// `rate`
    Rate,
    /// `rate_counter`
    RateCounter,
    /// `bytes_over_time`
    Bytes,
    /// `bytes_rate`
    BytesRate,
    /// `absent_over_time`
    Absent,
    /// `sum_over_time`
    Sum,
    /// `avg_over_time`
    Avg,
    /// `min_over_time`
    Min,
    /// `max_over_time`
    Max,
    /// `stddev_over_time`
    Stddev,
    /// `stdvar_over_time`
    Stdvar,
    /// `quantile_over_time`
    Quantile,
    /// `first_over_time`
    First,
    /// `last_over_time`
    Last,
}

impl RangeOp {
    /// The function's name.
    pub fn name(self) -> &'static str {
        RANGE_OPS
            .iter()
            .find(|(_, o)| *o == self)
            .map_or("", |(n, _)| n)
    }

    /// Whether the function needs an `unwrap` (`rate` takes one or not).
    pub fn needs_unwrap(self) -> bool {
        !matches!(
            self,
            RangeOp::Count | RangeOp::Rate | RangeOp::Bytes | RangeOp::BytesRate | RangeOp::Absent
        )
    }
}

/// The range functions by name.
pub const RANGE_OPS: [(&str, RangeOp); 15] = [
    ("count_over_time", RangeOp::Count),
    ("rate", RangeOp::Rate),
    ("rate_counter", RangeOp::RateCounter),
    ("bytes_over_time", RangeOp::Bytes),
    ("bytes_rate", RangeOp::BytesRate),
    ("absent_over_time", RangeOp::Absent),
    ("sum_over_time", RangeOp::Sum),
    ("avg_over_time", RangeOp::Avg),
    ("min_over_time", RangeOp::Min),
    ("max_over_time", RangeOp::Max),
    ("stddev_over_time", RangeOp::Stddev),
    ("stdvar_over_time", RangeOp::Stdvar),
    ("quantile_over_time", RangeOp::Quantile),
    ("first_over_time", RangeOp::First),
    ("last_over_time", RangeOp::Last),
];

/// An aggregation over an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorAgg {
    /// The aggregation.
    pub op: AggOp,
    /// `topk`/`bottomk`'s k.
    pub param: Option<f64>,
    /// What it aggregates.
    pub inner: Box<Expr>,
    /// `by (...)` / `without (...)`.
    pub grouping: Option<Grouping>,
}

/// The aggregations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggOp {
    /// `sum`
    Sum,
    /// `avg`
    Avg,
    /// `min`
    Min,
    /// `max`
    Max,
    /// `count`
    Count,
    /// `stddev`
    Stddev,
    /// `stdvar`
    Stdvar,
    /// `topk`
    Topk,
    /// `bottomk`
    Bottomk,
    /// `sort`
    Sort,
    /// `sort_desc`
    SortDesc,
}

/// The aggregations by name.
pub const AGG_OPS: [(&str, AggOp); 11] = [
    ("sum", AggOp::Sum),
    ("avg", AggOp::Avg),
    ("min", AggOp::Min),
    ("max", AggOp::Max),
    ("count", AggOp::Count),
    ("stddev", AggOp::Stddev),
    ("stdvar", AggOp::Stdvar),
    ("topk", AggOp::Topk),
    ("bottomk", AggOp::Bottomk),
    ("sort", AggOp::Sort),
    ("sort_desc", AggOp::SortDesc),
];

/// `by (a, b)` or `without (a, b)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grouping {
    /// `without`.
    pub without: bool,
    /// The labels.
    pub labels: Vec<String>,
}

/// A binary operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Binary {
    /// The operator.
    pub op: BinOp,
    /// Left.
    pub lhs: Expr,
    /// Right.
    pub rhs: Expr,
    /// `bool`: comparisons answer 0 or 1 instead of filtering.
    pub return_bool: bool,
    /// `on (...)` (true) or `ignoring (...)` (false).
    pub matching: Option<(bool, Vec<String>)>,
    /// `group_left (...)` (true) or `group_right (...)` (false).
    pub group: Option<(bool, Vec<String>)>,
}

/// The binary operators, lowest precedence first in [`BinOp::precedence`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `or`
    Or,
    /// `and`
    And,
    /// `unless`
    Unless,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
    /// `^`
    Pow,
}

impl BinOp {
    /// Binding strength: higher binds tighter.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And | BinOp::Unless => 2,
            BinOp::Eq | BinOp::Ne | BinOp::Gt | BinOp::Ge | BinOp::Lt | BinOp::Le => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div | BinOp::Mod => 5,
            BinOp::Pow => 6,
        }
    }

    /// Whether the operator compares (and so takes `bool`).
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Gt | BinOp::Ge | BinOp::Lt | BinOp::Le
        )
    }

    /// Whether the operator works on sets (`and`, `or`, `unless`).
    pub fn is_set(self) -> bool {
        matches!(self, BinOp::Or | BinOp::And | BinOp::Unless)
    }
}

/// `label_replace`'s arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelReplace {
    /// The vector.
    pub inner: Expr,
    /// The label written.
    pub dst: String,
    /// What it is set to (`$1` and `${name}` expanded).
    pub replacement: String,
    /// The label read.
    pub src: String,
    /// The regex the source must match, whole.
    pub regex: String,
}

/// `l op r` for two numbers; comparisons answer 1 or 0. Set operators are not for numbers
/// (the parser never asks).
pub fn apply_scalar(op: BinOp, l: f64, r: f64) -> f64 {
    let truth = |b: bool| if b { 1.0 } else { 0.0 };
    match op {
        BinOp::Add => l + r,
        BinOp::Sub => l - r,
        BinOp::Mul => l * r,
        BinOp::Div => l / r,
        BinOp::Mod => l % r,
        BinOp::Pow => l.powf(r),
        BinOp::Eq => truth(l == r),
        BinOp::Ne => truth(l != r),
        BinOp::Gt => truth(l > r),
        BinOp::Ge => truth(l >= r),
        BinOp::Lt => truth(l < r),
        BinOp::Le => truth(l <= r),
        BinOp::Or | BinOp::And | BinOp::Unless => f64::NAN,
    }
}
