//! A log query's pipeline, compiled once and run on each record: line filters, parsers,
//! label filters, formats, `drop`/`keep`, and the `unwrap` that makes a record a sample.
//! Loki's semantics throughout: a parser that fails sets `__error__` and keeps the record; a
//! numeric filter on a missing label drops the record (unless it is `!=`), on a value that is
//! not a number keeps it with `__error__=LabelFilterErr`.

use memchr::memmem;

use super::ast::{
    CmpOp, Conversion, DropKeep, FilterValue, LabelFilter, LabelFmt, LineOp, MatchOp, Parser,
    Stage, Value,
};
use super::labels::{Labels, Origin};
use super::lex::{parse_bytes, parse_duration};
use super::template::Template;

/// A construct the query uses that oklog does not run (a 400 naming it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// A compiled pipeline.
#[derive(Debug)]
pub struct Pipeline {
    stages: Vec<Compiled>,
}

#[derive(Debug)]
enum Compiled {
    Line {
        negative: bool,
        any: Vec<LineMatch>,
    },
    Label(LabelTest),
    Logfmt {
        strict: bool,
        keep_empty: bool,
        params: Vec<(String, String)>,
    },
    Json(Vec<(String, Vec<PathPart>)>),
    Regexp(regex::bytes::Regex),
    Pattern(Vec<PatternPart>),
    Unpack,
    LineFormat(Template),
    LabelFormat(Vec<(String, Format)>),
    Drop(Vec<(String, Option<Matcher>)>),
    Keep(Vec<(String, Option<Matcher>)>),
    Decolorize,
    Unwrap(String, Conversion),
}

#[derive(Debug)]
enum Format {
    Rename(String),
    Template(Template),
}

#[derive(Debug)]
enum LineMatch {
    Literal(Box<memmem::Finder<'static>>),
    Regex(regex::bytes::Regex),
}

impl LineMatch {
    fn is_match(&self, line: &[u8]) -> bool {
        match self {
            LineMatch::Literal(f) => f.needle().is_empty() || f.find(line).is_some(),
            LineMatch::Regex(r) => r.is_match(line),
        }
    }
}

/// A label matcher compiled (`drop`/`keep` conditions, string label filters).
#[derive(Debug)]
pub struct Matcher {
    negate: bool,
    test: StrTest,
}

#[derive(Debug)]
enum StrTest {
    Equal(String),
    Regex(regex::Regex),
}

impl Matcher {
    /// Compile `op value`; regexes match the whole value, as in Prometheus.
    pub fn new(op: MatchOp, value: &str) -> Result<Matcher, Unsupported> {
        let (negate, regex) = match op {
            MatchOp::Eq => (false, false),
            MatchOp::Ne => (true, false),
            MatchOp::Re => (false, true),
            MatchOp::Nre => (true, true),
        };
        let test = if regex {
            StrTest::Regex(
                regex::Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| Unsupported(format!("invalid regex {value:?}: {e}")))?,
            )
        } else {
            StrTest::Equal(value.to_string())
        };
        Ok(Matcher { negate, test })
    }

    /// Whether `value` (`""` for a missing label) matches.
    pub fn matches(&self, value: &str) -> bool {
        let m = match &self.test {
            StrTest::Equal(v) => v == value,
            StrTest::Regex(r) => r.is_match(value),
        };
        m != self.negate
    }
}

#[derive(Debug)]
enum LabelTest {
    And(Box<LabelTest>, Box<LabelTest>),
    Or(Box<LabelTest>, Box<LabelTest>),
    Str(String, Matcher),
    Num {
        name: String,
        op: CmpOp,
        value: f64,
        kind: Kind,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Number,
    Duration,
    Bytes,
}

#[derive(Debug, Clone, PartialEq)]
enum PathPart {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum PatternPart {
    Literal(Vec<u8>),
    Capture(Option<String>),
}

impl Pipeline {
    /// Compile `stages`; a construct oklog does not run is refused, named.
    pub fn new(stages: &[Stage]) -> Result<Pipeline, Unsupported> {
        let mut out = Vec::with_capacity(stages.len());
        for s in stages {
            out.push(match s {
                Stage::Line(f) => {
                    let mut any = Vec::new();
                    for v in &f.values {
                        let FilterValue::Text(t) = v else {
                            return Err(Unsupported(
                                "ip() line filters are not supported by oklog yet".into(),
                            ));
                        };
                        any.push(match f.op {
                            LineOp::Contains | LineOp::NotContains => LineMatch::Literal(Box::new(
                                memmem::Finder::new(t.as_bytes()).into_owned(),
                            )),
                            LineOp::Match | LineOp::NotMatch => {
                                LineMatch::Regex(regex::bytes::Regex::new(t).map_err(|e| {
                                    Unsupported(format!("invalid regex {t:?}: {e}"))
                                })?)
                            }
                            LineOp::Pattern | LineOp::NotPattern => {
                                LineMatch::Regex(pattern_filter(t)?)
                            }
                        });
                    }
                    Compiled::Line {
                        negative: f.op.is_negative(),
                        any,
                    }
                }
                Stage::Label(f) => Compiled::Label(label_test(f)?),
                Stage::Parser(Parser::Logfmt {
                    strict,
                    keep_empty,
                    params,
                }) => Compiled::Logfmt {
                    strict: *strict,
                    keep_empty: *keep_empty,
                    params: params.clone(),
                },
                Stage::Parser(Parser::Json(params)) => {
                    let mut paths = Vec::new();
                    for (label, expr) in params {
                        paths.push((label.clone(), json_path(expr)?));
                    }
                    Compiled::Json(paths)
                }
                Stage::Parser(Parser::Regexp(re)) => Compiled::Regexp(
                    regex::bytes::Regex::new(re)
                        .map_err(|e| Unsupported(format!("invalid regexp {re:?}: {e}")))?,
                ),
                Stage::Parser(Parser::Pattern(p)) => Compiled::Pattern(pattern(p)?),
                Stage::Parser(Parser::Unpack) => Compiled::Unpack,
                Stage::LineFormat(t) => {
                    Compiled::LineFormat(Template::new(t).map_err(Unsupported)?)
                }
                Stage::LabelFormat(items) => {
                    let mut fmts = Vec::new();
                    for item in items {
                        fmts.push(match item {
                            LabelFmt::Rename(dst, src) => {
                                (dst.clone(), Format::Rename(src.clone()))
                            }
                            LabelFmt::Template(dst, t) => (
                                dst.clone(),
                                Format::Template(Template::new(t).map_err(Unsupported)?),
                            ),
                        });
                    }
                    Compiled::LabelFormat(fmts)
                }
                Stage::Drop(items) => Compiled::Drop(drop_keep(items)?),
                Stage::Keep(items) => Compiled::Keep(drop_keep(items)?),
                Stage::Decolorize => Compiled::Decolorize,
                Stage::Unwrap(u) => Compiled::Unwrap(u.label.clone(), u.conv),
            });
        }
        Ok(Pipeline { stages: out })
    }

    /// Whether every stage is a line filter (then [`Pipeline::keeps_line`] decides alone,
    /// and a record's labels pass unchanged).
    pub fn only_line_filters(&self) -> bool {
        self.stages
            .iter()
            .all(|s| matches!(s, Compiled::Line { .. }))
    }

    /// Whether the line filters keep `line` (the other stages are not run).
    pub fn keeps_line(&self, line: &[u8]) -> bool {
        self.stages.iter().all(|s| match s {
            Compiled::Line { negative, any } => any.iter().any(|m| m.is_match(line)) != *negative,
            _ => true,
        })
    }

    /// Whether the pipeline has no stage (every record passes as it is).
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Run a record through: `false` when a filter drops it. `line` and `labels` are changed
    /// in place; an `unwrap` sets `sample` (and takes its label out).
    pub fn run(
        &self,
        line: &mut Vec<u8>,
        labels: &mut Labels,
        ns: i128,
        sample: &mut Option<f64>,
    ) -> bool {
        for stage in &self.stages {
            match stage {
                Compiled::Line { negative, any } => {
                    let hit = any.iter().any(|m| m.is_match(line));
                    if hit == *negative {
                        return false;
                    }
                }
                Compiled::Label(t) => {
                    if !t.run(labels) {
                        return false;
                    }
                }
                Compiled::Logfmt {
                    strict,
                    keep_empty,
                    params,
                } => logfmt(line, labels, *strict, *keep_empty, params),
                Compiled::Json(paths) => json(line, labels, paths),
                Compiled::Regexp(re) => {
                    if let Some(c) = re.captures(line) {
                        for (i, name) in re.capture_names().enumerate() {
                            if let (Some(name), Some(m)) = (name, c.get(i)) {
                                labels.set_parsed(name, String::from_utf8_lossy(m.as_bytes()));
                            }
                        }
                    }
                }
                Compiled::Pattern(parts) => run_pattern(parts, line, labels),
                Compiled::Unpack => unpack(line, labels),
                Compiled::LineFormat(t) => {
                    *line = t.render(labels, line, ns).into_bytes();
                }
                Compiled::LabelFormat(fmts) => {
                    // Every template sees the labels as they were before the stage.
                    let before = labels.clone();
                    for (dst, f) in fmts {
                        match f {
                            Format::Rename(src) => {
                                if let Some(v) = before.get(src) {
                                    let v = v.to_string();
                                    labels.remove(src);
                                    labels.set(dst, v, Origin::Parsed);
                                }
                            }
                            Format::Template(t) => {
                                let v = t.render(&before, line, ns);
                                labels.set(dst, v, Origin::Parsed);
                            }
                        }
                    }
                }
                Compiled::Drop(items) => labels.retain(|l| {
                    !items.iter().any(|(name, m)| {
                        *name == l.name && m.as_ref().is_none_or(|m| m.matches(&l.value))
                    })
                }),
                Compiled::Keep(items) => labels.retain(|l| {
                    items.iter().any(|(name, m)| {
                        *name == l.name && m.as_ref().is_none_or(|m| m.matches(&l.value))
                    })
                }),
                Compiled::Decolorize => decolorize(line),
                Compiled::Unwrap(name, conv) => {
                    let Some(v) = labels.get(name) else {
                        // Loki: a record without the label gives no sample.
                        *sample = None;
                        return false;
                    };
                    let parsed = match conv {
                        Conversion::Number => v.trim().parse::<f64>().ok(),
                        Conversion::Duration => parse_duration(v.trim()).map(|ns| ns as f64 / 1e9),
                        Conversion::Bytes => parse_bytes(v.trim()),
                    };
                    match parsed {
                        Some(x) => *sample = Some(x),
                        None => {
                            *sample = Some(0.0);
                            let details = format!("{name}={v:?} is not a {conv:?}");
                            labels.set_error("SampleExtractionErr", details);
                        }
                    }
                    labels.remove(name);
                }
            }
        }
        true
    }
}

impl LabelTest {
    fn run(&self, labels: &mut Labels) -> bool {
        match self {
            LabelTest::And(a, b) => a.run(labels) && b.run(labels),
            LabelTest::Or(a, b) => a.run(labels) || b.run(labels),
            LabelTest::Str(name, m) => m.matches(labels.get(name).unwrap_or("")),
            LabelTest::Num {
                name,
                op,
                value,
                kind,
            } => {
                let Some(text) = labels.get(name) else {
                    return *op == CmpOp::Ne;
                };
                let text = text.trim();
                let got = match kind {
                    Kind::Number => text.parse::<f64>().ok(),
                    Kind::Duration => parse_duration(text).map(|ns| ns as f64 / 1e9),
                    Kind::Bytes => parse_bytes(text),
                };
                let Some(got) = got else {
                    let details = format!("{name}={text:?} is not a {kind:?}");
                    labels.set_error("LabelFilterErr", details);
                    return true;
                };
                match op {
                    CmpOp::Eq => got == *value,
                    CmpOp::Ne => got != *value,
                    CmpOp::Gt => got > *value,
                    CmpOp::Ge => got >= *value,
                    CmpOp::Lt => got < *value,
                    CmpOp::Le => got <= *value,
                    CmpOp::Re | CmpOp::Nre => false,
                }
            }
        }
    }
}

fn label_test(f: &LabelFilter) -> Result<LabelTest, Unsupported> {
    Ok(match f {
        LabelFilter::And(a, b) => {
            LabelTest::And(Box::new(label_test(a)?), Box::new(label_test(b)?))
        }
        LabelFilter::Or(a, b) => LabelTest::Or(Box::new(label_test(a)?), Box::new(label_test(b)?)),
        LabelFilter::Ip { .. } => {
            return Err(Unsupported(
                "ip() label filters are not supported by oklog yet".into(),
            ));
        }
        LabelFilter::Compare { name, op, value } => match value {
            Value::Str(s) => {
                let mop = match op {
                    CmpOp::Eq => MatchOp::Eq,
                    CmpOp::Ne => MatchOp::Ne,
                    CmpOp::Re => MatchOp::Re,
                    CmpOp::Nre => MatchOp::Nre,
                    _ => {
                        return Err(Unsupported(format!(
                            "{name} cannot be compared with a string by {op:?}"
                        )));
                    }
                };
                LabelTest::Str(name.clone(), Matcher::new(mop, s)?)
            }
            Value::Number(v) => LabelTest::Num {
                name: name.clone(),
                op: *op,
                value: *v,
                kind: Kind::Number,
            },
            Value::Duration(v) => LabelTest::Num {
                name: name.clone(),
                op: *op,
                value: *v,
                kind: Kind::Duration,
            },
            Value::Bytes(v) => LabelTest::Num {
                name: name.clone(),
                op: *op,
                value: *v,
                kind: Kind::Bytes,
            },
        },
    })
}

fn drop_keep(items: &[DropKeep]) -> Result<Vec<(String, Option<Matcher>)>, Unsupported> {
    items
        .iter()
        .map(|i| {
            let m = match &i.matcher {
                Some(m) => Some(Matcher::new(m.op, &m.value)?),
                None => None,
            };
            Ok((i.name.clone(), m))
        })
        .collect()
}

/// `|> "<_> error <_>"`: the pattern as a regex matching from the start of the line.
fn pattern_filter(p: &str) -> Result<regex::bytes::Regex, Unsupported> {
    let mut re = String::from("(?s)^");
    for part in pattern(p)? {
        match part {
            PatternPart::Literal(l) => re.push_str(&regex::escape(&String::from_utf8_lossy(&l))),
            PatternPart::Capture(_) => re.push_str(".*?"),
        }
    }
    regex::bytes::Regex::new(&re).map_err(|e| Unsupported(format!("pattern {p:?}: {e}")))
}

/// Split a pattern into literals and `<name>`/`<_>` captures.
fn pattern(p: &str) -> Result<Vec<PatternPart>, Unsupported> {
    let mut out = Vec::new();
    let mut rest = p;
    let mut lit = String::new();
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after.find('>');
        let name = close.map(|c| &after[..c]);
        match name {
            Some(n)
                if n == "_"
                    || (!n.is_empty()
                        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) =>
            {
                lit.push_str(&rest[..open]);
                if !lit.is_empty() {
                    out.push(PatternPart::Literal(std::mem::take(&mut lit).into_bytes()));
                }
                if matches!(out.last(), Some(PatternPart::Capture(_))) {
                    return Err(Unsupported(format!(
                        "pattern {p:?}: two captures side by side (<{n}>) need text between them"
                    )));
                }
                out.push(PatternPart::Capture((n != "_").then(|| n.to_string())));
                rest = &after[n.len() + 1..];
            }
            _ => {
                lit.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        out.push(PatternPart::Literal(lit.into_bytes()));
    }
    if !out
        .iter()
        .any(|p| matches!(p, PatternPart::Capture(Some(_))))
        && !p.contains("<_>")
    {
        return Err(Unsupported(format!(
            "pattern {p:?} has no capture such as <name> or <_>"
        )));
    }
    Ok(out)
}

fn run_pattern(parts: &[PatternPart], line: &[u8], labels: &mut Labels) {
    let mut at = 0;
    let mut found: Vec<(&str, &[u8])> = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        match &parts[i] {
            PatternPart::Literal(l) => {
                if !line[at..].starts_with(l) {
                    return;
                }
                at += l.len();
            }
            PatternPart::Capture(name) => {
                let end = match parts.get(i + 1) {
                    Some(PatternPart::Literal(l)) => match memmem::find(&line[at..], l) {
                        Some(n) => at + n,
                        None => return,
                    },
                    _ => line.len(),
                };
                if let Some(name) = name {
                    found.push((name, &line[at..end]));
                }
                at = end;
            }
        }
        i += 1;
    }
    for (name, v) in found {
        labels.set_parsed(name, String::from_utf8_lossy(v));
    }
}

fn logfmt(
    line: &[u8],
    labels: &mut Labels,
    strict: bool,
    keep_empty: bool,
    params: &[(String, String)],
) {
    if strict && let Err(e) = check_logfmt(line) {
        labels.set_error("LogfmtParserErr", e);
        return;
    }
    for (k, v) in crate::record::parts::pairs(line) {
        if k.is_empty() || (v.is_empty() && !keep_empty) {
            continue;
        }
        let key = String::from_utf8_lossy(k);
        if params.is_empty() {
            labels.set_parsed(&key, String::from_utf8_lossy(&v));
        } else {
            for (label, from) in params {
                if *from == key {
                    labels.set_parsed(label, String::from_utf8_lossy(&v));
                }
            }
        }
    }
}

/// Where a line is not logfmt (`--strict`): a quote left open or a key with a quote in it.
fn check_logfmt(line: &[u8]) -> Result<(), String> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, &c) in line.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if c == b'\\' && in_quote {
            escaped = true;
        } else if c == b'"' {
            if !in_quote && i > 0 && line[i - 1] != b'=' {
                return Err(format!(
                    "logfmt syntax error at pos {}: unexpected '\"'",
                    i + 1
                ));
            }
            in_quote = !in_quote;
        }
    }
    if in_quote {
        return Err(format!(
            "logfmt syntax error at pos {}: unterminated quoted value",
            line.len()
        ));
    }
    Ok(())
}

fn json(line: &[u8], labels: &mut Labels, paths: &[(String, Vec<PathPart>)]) {
    let v: serde_json::Value = match serde_json::from_slice(line) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        Ok(_) => {
            labels.set_error("JSONParserErr", "the line is not a JSON object");
            return;
        }
        Err(e) => {
            labels.set_error("JSONParserErr", e.to_string());
            return;
        }
    };
    if paths.is_empty() {
        flatten("", &v, labels);
        return;
    }
    for (label, path) in paths {
        let mut at = Some(&v);
        for part in path {
            at = match (at, part) {
                (Some(serde_json::Value::Object(m)), PathPart::Key(k)) => m.get(k),
                (Some(serde_json::Value::Array(a)), PathPart::Index(i)) => a.get(*i),
                _ => None,
            };
        }
        let text = match at {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        labels.set_parsed(label, text);
    }
}

fn flatten(prefix: &str, v: &serde_json::Value, labels: &mut Labels) {
    let serde_json::Value::Object(m) = v else {
        return;
    };
    for (k, v) in m {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}_{k}")
        };
        match v {
            serde_json::Value::Object(_) => flatten(&name, v, labels),
            serde_json::Value::Array(_) => {}
            serde_json::Value::String(s) => labels.set_parsed(&name, s.clone()),
            serde_json::Value::Null => labels.set_parsed(&name, ""),
            other => labels.set_parsed(&name, other.to_string()),
        }
    }
}

/// A JSON path of `json` parameters: `a.b`, `a[0]`, `a["b c"]`, `.a`.
fn json_path(expr: &str) -> Result<Vec<PathPart>, Unsupported> {
    let bad = || {
        Unsupported(format!(
            "the json expression {expr:?} is not a path such as a.b[0][\"c\"]"
        ))
    };
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => i += 1,
            b'[' => {
                let close = expr[i..].find(']').ok_or_else(bad)? + i;
                let inner = expr[i + 1..close].trim();
                if let Some(q) = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    out.push(PathPart::Key(q.to_string()));
                } else {
                    out.push(PathPart::Index(inner.parse().map_err(|_| bad())?));
                }
                i = close + 1;
            }
            _ => {
                let end = expr[i..].find(['.', '[']).map_or(b.len(), |n| n + i);
                out.push(PathPart::Key(expr[i..end].to_string()));
                i = end;
            }
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

fn unpack(line: &mut Vec<u8>, labels: &mut Labels) {
    let v: serde_json::Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            labels.set_error("JSONParserErr", e.to_string());
            return;
        }
    };
    let serde_json::Value::Object(m) = v else {
        labels.set_error("JSONParserErr", "the line is not a JSON object");
        return;
    };
    for (k, v) in m {
        if let serde_json::Value::String(s) = v {
            if k == "_entry" {
                *line = s.into_bytes();
            } else {
                labels.set_parsed(&k, s);
            }
        }
    }
}

/// Strip ANSI colour and cursor sequences.
fn decolorize(line: &mut Vec<u8>) {
    if memchr::memchr(0x1b, line).is_none() {
        return;
    }
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        if line[i] == 0x1b && line.get(i + 1) == Some(&b'[') {
            let mut j = i + 2;
            while j < line.len() && (line[j].is_ascii_digit() || line[j] == b';') {
                j += 1;
            }
            if j < line.len() && line[j].is_ascii_alphabetic() {
                i = j + 1;
                continue;
            }
        }
        out.push(line[i]);
        i += 1;
    }
    *line = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logql::parse;

    fn run(query: &str, line: &str) -> Option<(String, String)> {
        let crate::logql::Expr::Log(l) = parse(query).unwrap() else {
            panic!()
        };
        let p = Pipeline::new(&l.pipeline).unwrap();
        let mut labels = Labels::new();
        labels.set("service_name", "api", Origin::Stream);
        labels.set("host", "web-1", Origin::Stream);
        let mut line = line.as_bytes().to_vec();
        let mut sample = None;
        p.run(&mut line, &mut labels, 0, &mut sample)
            .then(|| (String::from_utf8(line).unwrap(), labels.text()))
    }

    #[test]
    fn line_filters() {
        assert!(run(r#"{a="b"} |= "err""#, "an error").is_some());
        assert!(run(r#"{a="b"} |= "err" != "an""#, "an error").is_none());
        assert!(run(r#"{a="b"} |= "x" or "err""#, "an error").is_some());
        assert!(run(r#"{a="b"} != "x" or "err""#, "an error").is_none());
        assert!(run(r#"{a="b"} |~ "(?i)ERR""#, "an error").is_some());
        assert!(run(r#"{a="b"} !~ "^an""#, "an error").is_none());
        assert!(run(r#"{a="b"} |> "<_> error""#, "an error").is_some());
        assert!(run(r#"{a="b"} |> "error <_>""#, "an error").is_none());
        assert!(run(r#"{a="b"} |= ``"#, "anything").is_some());
    }

    #[test]
    fn parsers_and_label_filters() {
        let (_, l) = run(
            r#"{a="b"} | logfmt | status >= 500"#,
            r#"status=503 msg="a b" host=x"#,
        )
        .unwrap();
        assert_eq!(
            l,
            r#"{host="web-1", host_extracted="x", msg="a b", service_name="api", status="503"}"#
        );
        assert!(run(r#"{a="b"} | logfmt | status >= 500"#, "status=200").is_none());
        assert!(
            run(r#"{a="b"} | logfmt | status >= 500"#, "no status").is_none(),
            "missing: dropped"
        );
        assert!(run(r#"{a="b"} | logfmt | status != 500"#, "no status").is_some());
        let (_, l) = run(r#"{a="b"} | logfmt | status > 1"#, "status=abc").unwrap();
        assert!(l.contains(r#"__error__="LabelFilterErr""#), "{l}");
        assert!(run(r#"{a="b"} | logfmt | latency > 1s"#, "latency=1.5s").is_some());
        assert!(run(r#"{a="b"} | logfmt | size > 1KB"#, "size=2KiB").is_some());
        assert!(
            run(
                r#"{a="b"} | logfmt | level=~"err.*" or level="warn""#,
                "level=warn"
            )
            .is_some()
        );
        let (_, l) = run(
            r#"{a="b"} | json | __error__="""#,
            r#"{"a":{"b":1},"c":"d","e":[1],"f":null}"#,
        )
        .unwrap();
        assert_eq!(
            l,
            r#"{a_b="1", c="d", f="", host="web-1", service_name="api"}"#
        );
        assert!(run(r#"{a="b"} | json | __error__="""#, "not json").is_none());
        let (_, l) = run(r#"{a="b"} | json | __error__!="""#, "not json").unwrap();
        assert!(l.contains("JSONParserErr"), "{l}");
        let (_, l) = run(
            r#"{a="b"} | json x="a.b[1]", y="c[\"k\"]""#,
            r#"{"a":{"b":[0,{"z":1}]},"c":{"k":"v"}}"#,
        )
        .unwrap();
        assert!(
            l.contains(r#"x="{\"z\":1}""#) && l.contains(r#"y="v""#),
            "{l}"
        );
        let (_, l) = run(
            r#"{a="b"} | regexp "(?P<method>\\w+) (?P<path>\\S+)""#,
            "GET /a 200",
        )
        .unwrap();
        assert!(
            l.contains(r#"method="GET""#) && l.contains(r#"path="/a""#),
            "{l}"
        );
        let (_, l) = run(
            r#"{a="b"} | pattern "<ip> - <_> \"<method> <uri>\"""#,
            r#"1.2.3.4 - x "GET /a""#,
        )
        .unwrap();
        assert!(
            l.contains(r#"ip="1.2.3.4""#) && l.contains(r#"uri="/a""#),
            "{l}"
        );
        let (line, l) = run(r#"{a="b"} | unpack"#, r#"{"_entry":"the line","pod":"p1"}"#).unwrap();
        assert_eq!(
            (line.as_str(), l.contains(r#"pod="p1""#)),
            ("the line", true)
        );
    }

    #[test]
    fn formats_drop_keep_decolorize() {
        let (line, _) = run(
            r#"{a="b"} | logfmt | line_format "{{.level | ToUpper}}: {{.msg}}""#,
            "level=warn msg=hi",
        )
        .unwrap();
        assert_eq!(line, "WARN: hi");
        let (_, l) = run(
            r#"{a="b"} | logfmt | label_format lvl=level, both="{{.level}}-{{.x}}""#,
            "level=warn x=1",
        )
        .unwrap();
        assert!(
            l.contains(r#"lvl="warn""#) && !l.contains("level=") && l.contains(r#"both="warn-1""#),
            "{l}"
        );
        let (_, l) = run(r#"{a="b"} | logfmt | drop x, host="web-1""#, "x=1 y=2").unwrap();
        assert_eq!(l, r#"{service_name="api", y="2"}"#);
        let (_, l) = run(r#"{a="b"} | logfmt | keep y"#, "x=1 y=2").unwrap();
        assert_eq!(l, r#"{y="2"}"#);
        let (line, _) = run(r#"{a="b"} | decolorize"#, "\x1b[31mred\x1b[0m text").unwrap();
        assert_eq!(line, "red text");
    }
}
