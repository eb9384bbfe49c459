//! The LogQL parser: recursive descent over [`super::lex`]'s tokens, binary operators by
//! precedence climbing (`or` < `and`/`unless` < comparisons < `+ -` < `* / %` < `^`, `^`
//! binding to the right), then the checks Loki makes after parsing (a selector that matches
//! something, `unwrap` only where a function takes it).

use super::ParseError;
use super::ast::*;
use super::lex::{Tok, lex};

/// Parse a whole query.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let mut p = Cursor {
        text,
        toks: lex(text)?,
        i: 0,
    };
    if p.peek() == &Tok::End {
        return Err(p.error("syntax error: empty query"));
    }
    let e = p.expr(0)?;
    if p.peek() != &Tok::End {
        return Err(p.unexpected("an operator or the end of the query"));
    }
    Ok(e)
}

/// Parse a query that must be a log query (a selector and its pipeline): what `tail`,
/// `labels?query=` and `series?match[]=` take.
pub fn parse_log(text: &str) -> Result<LogExpr, ParseError> {
    match parse(text)? {
        Expr::Log(l) => Ok(l),
        _ => Err(ParseError::at(
            text,
            0,
            "a log query ({selector} and line filters) is wanted here, not a metric query",
        )),
    }
}

struct Cursor<'a> {
    text: &'a str,
    toks: Vec<(Tok, usize)>,
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.i].0
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self.toks[(self.i + n).min(self.toks.len() - 1)].0
    }

    fn pos(&self) -> usize {
        self.toks[self.i].1
    }

    fn next(&mut self) -> Tok {
        let t = self.toks[self.i].0.clone();
        if self.i + 1 < self.toks.len() {
            self.i += 1;
        }
        t
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError::at(self.text, self.pos(), message)
    }

    fn error_at(&self, at: usize, message: impl Into<String>) -> ParseError {
        ParseError::at(self.text, at, message)
    }

    fn unexpected(&self, expecting: &str) -> ParseError {
        self.error(format!(
            "syntax error: unexpected {}, expecting {expecting}",
            self.peek().describe()
        ))
    }

    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Sym(t) if *t == s)
    }

    fn is_ident(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Ident(t) if t == s)
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        let yes = self.is_sym(s);
        if yes {
            self.next();
        }
        yes
    }

    fn expect_sym(&mut self, s: &str) -> Result<(), ParseError> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("{s:?}")))
        }
    }

    fn ident(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek() {
            Tok::Ident(s) => {
                let s = s.clone();
                self.next();
                Ok(s)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek() {
            Tok::Str(s) => {
                let s = s.clone();
                self.next();
                Ok(s)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn number(&mut self, what: &str) -> Result<f64, ParseError> {
        let negative = self.eat_sym("-");
        match self.peek() {
            Tok::Number(n) => {
                let n = *n;
                self.next();
                Ok(if negative { -n } else { n })
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn duration(&mut self, what: &str) -> Result<i64, ParseError> {
        match self.peek() {
            Tok::Duration(ns, _) => {
                let ns = *ns;
                self.next();
                Ok(ns)
            }
            // `[5]` is not a range: Loki wants a unit.
            _ => Err(self.unexpected(what)),
        }
    }

    // ----- expressions -----

    fn binop(&self) -> Option<BinOp> {
        Some(match self.peek() {
            Tok::Ident(s) => match s.as_str() {
                "or" => BinOp::Or,
                "and" => BinOp::And,
                "unless" => BinOp::Unless,
                _ => return None,
            },
            Tok::Sym(s) => match *s {
                "==" => BinOp::Eq,
                "!=" => BinOp::Ne,
                ">" => BinOp::Gt,
                ">=" => BinOp::Ge,
                "<" => BinOp::Lt,
                "<=" => BinOp::Le,
                "+" => BinOp::Add,
                "-" => BinOp::Sub,
                "*" => BinOp::Mul,
                "/" => BinOp::Div,
                "%" => BinOp::Mod,
                "^" => BinOp::Pow,
                _ => return None,
            },
            _ => return None,
        })
    }

    fn expr(&mut self, min: u8) -> Result<Expr, ParseError> {
        let mut lhs = self.unary()?;
        while let Some(op) = self.binop() {
            let prec = op.precedence();
            if prec < min {
                break;
            }
            let at = self.pos();
            self.next();
            let mut b = Binary {
                op,
                lhs: Expr::Number(0.0),
                rhs: Expr::Number(0.0),
                return_bool: false,
                matching: None,
                group: None,
            };
            if self.is_ident("bool") {
                if !op.is_comparison() {
                    return Err(
                        self.error("bool modifier can only be used on comparison operators")
                    );
                }
                self.next();
                b.return_bool = true;
            }
            if self.is_ident("on") || self.is_ident("ignoring") {
                let on = self.is_ident("on");
                self.next();
                b.matching = Some((on, self.label_list()?));
                if self.is_ident("group_left") || self.is_ident("group_right") {
                    let left = self.is_ident("group_left");
                    self.next();
                    let labels = if self.is_sym("(") {
                        self.label_list()?
                    } else {
                        Vec::new()
                    };
                    b.group = Some((left, labels));
                }
            }
            let rhs = self.expr(if op == BinOp::Pow { prec } else { prec + 1 })?;
            for side in [&lhs, &rhs] {
                if side.is_log() {
                    return Err(self.error_at(
                        at,
                        "a log query cannot be an operand of a binary operator: wrap it in a range function such as count_over_time({...}[5m])",
                    ));
                }
            }
            b.lhs = lhs;
            b.rhs = rhs;
            lhs = fold(b);
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat_sym("-") {
            return Ok(match self.unary()? {
                Expr::Number(n) => Expr::Number(-n),
                e => Expr::Binary(Box::new(Binary {
                    op: BinOp::Mul,
                    lhs: Expr::Number(-1.0),
                    rhs: e,
                    return_bool: false,
                    matching: None,
                    group: None,
                })),
            });
        }
        if self.eat_sym("+") {
            return self.unary();
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let at = self.pos();
        match self.peek().clone() {
            Tok::Number(n) => {
                self.next();
                Ok(Expr::Number(n))
            }
            Tok::Sym("(") => {
                self.next();
                let e = self.expr(0)?;
                self.expect_sym(")")?;
                self.no_range(&e)?;
                Ok(e)
            }
            Tok::Sym("{") => {
                let log = self.log_expr()?;
                let e = Expr::Log(log);
                self.no_range(&e)?;
                Ok(e)
            }
            Tok::Ident(name) => {
                if let Some((_, op)) = RANGE_OPS.iter().find(|(n, _)| *n == name) {
                    self.next();
                    return self.range_agg(*op, at);
                }
                if let Some((_, op)) = AGG_OPS.iter().find(|(n, _)| *n == name) {
                    self.next();
                    return self.vector_agg(*op);
                }
                match name.as_str() {
                    "vector" => {
                        self.next();
                        self.expect_sym("(")?;
                        let n = self.number("a number")?;
                        self.expect_sym(")")?;
                        Ok(Expr::VectorOf(n))
                    }
                    "label_replace" => {
                        self.next();
                        self.label_replace()
                    }
                    "inf" | "Inf" | "INF" | "nan" | "NaN" | "NAN" => {
                        self.next();
                        Ok(Expr::Number(if name.eq_ignore_ascii_case("nan") {
                            f64::NAN
                        } else {
                            f64::INFINITY
                        }))
                    }
                    _ => Err(self.error(format!(
                        "syntax error: unexpected identifier {name:?}, expecting a stream selector {{...}}, a number or a function (count_over_time, rate, sum, ...); {name} is not a LogQL function oklog knows"
                    ))),
                }
            }
            _ => Err(self.unexpected("a stream selector {...}, a number or a function")),
        }
    }

    /// A range after something that is not the argument of a range function is an error
    /// that says so.
    fn no_range(&self, e: &Expr) -> Result<(), ParseError> {
        if self.is_sym("[") && e.is_log() {
            return Err(self.error(
                "a range [..] needs a range function around it, such as count_over_time({...}[5m]) or rate({...}[5m])",
            ));
        }
        Ok(())
    }

    fn label_list(&mut self) -> Result<Vec<String>, ParseError> {
        self.expect_sym("(")?;
        let mut out = Vec::new();
        while !self.is_sym(")") {
            out.push(self.ident("a label name")?);
            if !self.eat_sym(",") {
                break;
            }
        }
        self.expect_sym(")")?;
        Ok(out)
    }

    fn grouping(&mut self) -> Result<Option<Grouping>, ParseError> {
        if self.is_ident("by") || self.is_ident("without") {
            let without = self.is_ident("without");
            self.next();
            return Ok(Some(Grouping {
                without,
                labels: self.label_list()?,
            }));
        }
        Ok(None)
    }

    fn range_agg(&mut self, op: RangeOp, at: usize) -> Result<Expr, ParseError> {
        self.expect_sym("(")?;
        let param = if op == RangeOp::Quantile {
            let q = self.number("quantile_over_time's quantile, a number")?;
            self.expect_sym(",")?;
            Some(q)
        } else {
            None
        };
        let (log, range_ns) = self.log_range()?;
        let mut offset_ns = 0;
        if self.is_ident("offset") {
            self.next();
            offset_ns = self.duration("a duration after offset")?;
        }
        self.expect_sym(")")?;
        let grouping = self.grouping()?;
        let agg = RangeAgg {
            op,
            param,
            log,
            range_ns,
            offset_ns,
            grouping,
        };
        let name = op.name();
        match (op.needs_unwrap(), agg.unwrap().is_some()) {
            (true, false) => {
                return Err(self.error_at(
                    at,
                    format!("invalid aggregation {name} without unwrap: add | unwrap <label> before the range"),
                ));
            }
            (false, true) if op != RangeOp::Rate => {
                return Err(self.error_at(
                    at,
                    format!("invalid aggregation {name} with unwrap: it counts records or bytes"),
                ));
            }
            _ => {}
        }
        if agg.grouping.is_some() && agg.unwrap().is_none() {
            return Err(self.error_at(
                at,
                format!("grouping (by/without) after {name}(...) is only for unwrapped range functions; group with an aggregation around it: sum by (...) ({name}(...))"),
            ));
        }
        Ok(Expr::Range(agg))
    }

    /// `{sel} | pipeline [5m]`, `{sel}[5m] | pipeline` or `({sel} | pipeline)[5m]`.
    fn log_range(&mut self) -> Result<(LogExpr, i64), ParseError> {
        if self.eat_sym("(") {
            let log = self.log_expr()?;
            self.expect_sym(")")?;
            self.expect_sym("[")?;
            let r = self.duration("a range duration such as 5m")?;
            self.expect_sym("]")?;
            return Ok((log, r));
        }
        if !self.is_sym("{") {
            return Err(self.unexpected("a stream selector {...} and a range [5m]"));
        }
        let selector = self.selector()?;
        let mut pipeline = Vec::new();
        let range = if self.eat_sym("[") {
            let r = self.duration("a range duration such as 5m")?;
            self.expect_sym("]")?;
            self.pipeline(&mut pipeline)?;
            r
        } else {
            self.pipeline(&mut pipeline)?;
            if !self.is_sym("[") {
                return Err(self.unexpected("a range such as [5m]"));
            }
            self.next();
            let r = self.duration("a range duration such as 5m")?;
            self.expect_sym("]")?;
            r
        };
        if range <= 0 {
            return Err(self.error("a range must be longer than 0"));
        }
        Ok((LogExpr { selector, pipeline }, range))
    }

    fn vector_agg(&mut self, op: AggOp) -> Result<Expr, ParseError> {
        let mut grouping = self.grouping()?;
        self.expect_sym("(")?;
        let param = if matches!(op, AggOp::Topk | AggOp::Bottomk) {
            let k = self.number("k, a number")?;
            self.expect_sym(",")?;
            Some(k)
        } else {
            None
        };
        let at = self.pos();
        let inner = self.expr(0)?;
        self.expect_sym(")")?;
        if grouping.is_none() {
            grouping = self.grouping()?;
        }
        if inner.is_log() {
            return Err(self.error_at(
                at,
                "an aggregation takes a metric query, not a log query: count records with count_over_time({...}[5m])",
            ));
        }
        if matches!(op, AggOp::Sort | AggOp::SortDesc) && grouping.is_some() {
            return Err(self.error_at(at, "sort and sort_desc take no grouping"));
        }
        Ok(Expr::Vector(VectorAgg {
            op,
            param,
            inner: Box::new(inner),
            grouping,
        }))
    }

    fn label_replace(&mut self) -> Result<Expr, ParseError> {
        self.expect_sym("(")?;
        let at = self.pos();
        let inner = self.expr(0)?;
        if inner.is_log() {
            return Err(self.error_at(at, "label_replace takes a metric query"));
        }
        let mut args = Vec::new();
        for what in [
            "the destination label",
            "the replacement",
            "the source label",
            "the regex",
        ] {
            self.expect_sym(",")?;
            args.push(self.string(&format!("{what}, a string"))?);
        }
        self.expect_sym(")")?;
        let [dst, replacement, src, regex]: [String; 4] = args.try_into().expect("four");
        if let Err(e) = regex::Regex::new(&format!("^(?s:{regex})$")) {
            return Err(self.error_at(at, format!("label_replace: invalid regex {regex:?}: {e}")));
        }
        Ok(Expr::LabelReplace(Box::new(LabelReplace {
            inner,
            dst,
            replacement,
            src,
            regex,
        })))
    }

    // ----- log queries -----

    fn log_expr(&mut self) -> Result<LogExpr, ParseError> {
        let selector = self.selector()?;
        let mut pipeline = Vec::new();
        self.pipeline(&mut pipeline)?;
        Ok(LogExpr { selector, pipeline })
    }

    fn match_op(&mut self) -> Option<MatchOp> {
        let op = match self.peek() {
            Tok::Sym("=") => MatchOp::Eq,
            Tok::Sym("!=") => MatchOp::Ne,
            Tok::Sym("=~") => MatchOp::Re,
            Tok::Sym("!~") => MatchOp::Nre,
            _ => return None,
        };
        self.next();
        Some(op)
    }

    fn selector(&mut self) -> Result<Vec<Matcher>, ParseError> {
        let at = self.pos();
        self.expect_sym("{")?;
        let mut out = Vec::new();
        while !self.is_sym("}") {
            let name = self.ident("a label name")?;
            let op = self
                .match_op()
                .ok_or_else(|| self.unexpected("=, !=, =~ or !~"))?;
            let value = self.string("a quoted label value")?;
            if matches!(op, MatchOp::Re | MatchOp::Nre)
                && let Err(e) = regex::Regex::new(&value)
            {
                return Err(
                    self.error_at(at, format!("invalid regex {value:?} for label {name}: {e}"))
                );
            }
            out.push(Matcher { name, op, value });
            if !self.eat_sym(",") {
                break;
            }
        }
        self.expect_sym("}")?;
        Ok(out)
    }

    fn pipeline(&mut self, out: &mut Vec<Stage>) -> Result<(), ParseError> {
        loop {
            let line_op = match self.peek() {
                Tok::Sym("|=") => Some(LineOp::Contains),
                Tok::Sym("!=") => Some(LineOp::NotContains),
                Tok::Sym("|~") => Some(LineOp::Match),
                Tok::Sym("!~") => Some(LineOp::NotMatch),
                Tok::Sym("|>") => Some(LineOp::Pattern),
                Tok::Sym("!>") => Some(LineOp::NotPattern),
                _ => None,
            };
            if let Some(op) = line_op {
                self.next();
                let f = self.line_filter(op)?;
                out.push(Stage::Line(f));
                continue;
            }
            if !self.is_sym("|") {
                return Ok(());
            }
            self.next();
            let at = self.pos();
            let stage = match self.peek().clone() {
                Tok::Ident(word) => match word.as_str() {
                    "json" => {
                        self.next();
                        Stage::Parser(Parser::Json(self.extraction_params()?))
                    }
                    "logfmt" => {
                        self.next();
                        let (mut strict, mut keep_empty) = (false, false);
                        while let Tok::Flag(f) = self.peek().clone() {
                            match f.as_str() {
                                "strict" => strict = true,
                                "keep-empty" => keep_empty = true,
                                _ => {
                                    return Err(self.error(format!(
                                        "logfmt takes --strict and --keep-empty, not --{f}"
                                    )));
                                }
                            }
                            self.next();
                        }
                        Stage::Parser(Parser::Logfmt {
                            strict,
                            keep_empty,
                            params: self.extraction_params()?,
                        })
                    }
                    "regexp" => {
                        self.next();
                        let re = self.string("the regexp's expression, a string")?;
                        check_regexp_stage(&re).map_err(|e| self.error_at(at, e))?;
                        Stage::Parser(Parser::Regexp(re))
                    }
                    "pattern" => {
                        self.next();
                        let p = self.string("the pattern, a string")?;
                        Stage::Parser(Parser::Pattern(p))
                    }
                    "unpack" => {
                        self.next();
                        Stage::Parser(Parser::Unpack)
                    }
                    "decolorize" => {
                        self.next();
                        Stage::Decolorize
                    }
                    "line_format" => {
                        self.next();
                        Stage::LineFormat(self.string("line_format's template, a string")?)
                    }
                    "label_format" => {
                        self.next();
                        Stage::LabelFormat(self.label_format()?)
                    }
                    "drop" | "keep" => {
                        self.next();
                        let items = self.drop_keep()?;
                        if word == "drop" {
                            Stage::Drop(items)
                        } else {
                            Stage::Keep(items)
                        }
                    }
                    "unwrap" => {
                        self.next();
                        Stage::Unwrap(self.unwrap_stage()?)
                    }
                    _ => Stage::Label(self.label_filter()?),
                },
                Tok::Sym("(") => Stage::Label(self.label_filter()?),
                _ => {
                    return Err(self.unexpected(
                        "a parser (json, logfmt, regexp, pattern, unpack), a label filter, line_format, label_format, drop, keep, decolorize or unwrap",
                    ));
                }
            };
            out.push(stage);
        }
    }

    fn line_filter(&mut self, op: LineOp) -> Result<LineFilter, ParseError> {
        let mut values = vec![self.filter_value(op)?];
        while self.is_ident("or")
            && (matches!(self.peek_at(1), Tok::Str(_))
                || matches!(self.peek_at(1), Tok::Ident(s) if s == "ip"))
        {
            self.next();
            values.push(self.filter_value(op)?);
        }
        Ok(LineFilter { op, values })
    }

    fn filter_value(&mut self, op: LineOp) -> Result<FilterValue, ParseError> {
        let at = self.pos();
        if self.is_ident("ip") {
            self.next();
            self.expect_sym("(")?;
            let ip = self.string("an address, range or CIDR, a string")?;
            self.expect_sym(")")?;
            if matches!(
                op,
                LineOp::Match | LineOp::NotMatch | LineOp::Pattern | LineOp::NotPattern
            ) {
                return Err(self.error_at(at, "ip() goes with |= or !="));
            }
            return Ok(FilterValue::Ip(ip));
        }
        let s = self.string("a quoted string after the line filter")?;
        if matches!(op, LineOp::Match | LineOp::NotMatch)
            && let Err(e) = regex::Regex::new(&s)
        {
            return Err(self.error_at(at, format!("invalid regex {s:?}: {e}")));
        }
        Ok(FilterValue::Text(s))
    }

    /// `a="path", b` (json, logfmt).
    fn extraction_params(&mut self) -> Result<Vec<(String, String)>, ParseError> {
        let mut out = Vec::new();
        while let Tok::Ident(name) = self.peek().clone() {
            // Not a parameter but the next stage's start (`| json | ...` is handled by the
            // caller; a label filter cannot follow without `|`).
            if self.binop().is_some() && !matches!(self.peek_at(1), Tok::Sym("=") | Tok::Sym(",")) {
                break;
            }
            self.next();
            let value = if self.eat_sym("=") {
                self.string("a quoted expression")?
            } else {
                name.clone()
            };
            out.push((name, value));
            if !self.eat_sym(",") {
                break;
            }
        }
        Ok(out)
    }

    fn label_format(&mut self) -> Result<Vec<LabelFmt>, ParseError> {
        let mut out = Vec::new();
        loop {
            let dst = self.ident("a label name")?;
            self.expect_sym("=")?;
            match self.next() {
                Tok::Str(t) => out.push(LabelFmt::Template(dst, t)),
                Tok::Ident(src) => out.push(LabelFmt::Rename(dst, src)),
                _ => {
                    self.i -= 1;
                    return Err(self.unexpected("a label name or a quoted template"));
                }
            }
            if !self.eat_sym(",") {
                return Ok(out);
            }
        }
    }

    fn drop_keep(&mut self) -> Result<Vec<DropKeep>, ParseError> {
        let mut out = Vec::new();
        loop {
            let name = self.ident("a label name")?;
            let matcher = match self.match_op() {
                Some(op) => Some(Matcher {
                    name: name.clone(),
                    op,
                    value: self.string("a quoted value")?,
                }),
                None => None,
            };
            out.push(DropKeep { name, matcher });
            if !self.eat_sym(",") {
                return Ok(out);
            }
        }
    }

    fn unwrap_stage(&mut self) -> Result<Unwrap, ParseError> {
        let name = self.ident("a label name")?;
        let conv = match name.as_str() {
            "duration" | "duration_seconds" if self.is_sym("(") => Conversion::Duration,
            "bytes" if self.is_sym("(") => Conversion::Bytes,
            _ => {
                return Ok(Unwrap {
                    label: name,
                    conv: Conversion::Number,
                });
            }
        };
        self.expect_sym("(")?;
        let label = self.ident("a label name")?;
        self.expect_sym(")")?;
        Ok(Unwrap { label, conv })
    }

    // ----- label filters -----

    fn label_filter(&mut self) -> Result<LabelFilter, ParseError> {
        let mut lhs = self.label_and()?;
        while self.is_ident("or") {
            self.next();
            let rhs = self.label_and()?;
            lhs = LabelFilter::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn label_and(&mut self) -> Result<LabelFilter, ParseError> {
        let mut lhs = self.label_atom()?;
        loop {
            // `and` or a comma; two filters side by side are an error, as in Grafana's grammar.
            if !(self.is_ident("and") || self.is_sym(",")) {
                return Ok(lhs);
            }
            self.next();
            let rhs = self.label_atom()?;
            lhs = LabelFilter::And(Box::new(lhs), Box::new(rhs));
        }
    }

    fn label_atom(&mut self) -> Result<LabelFilter, ParseError> {
        if self.eat_sym("(") {
            let f = self.label_filter()?;
            self.expect_sym(")")?;
            return Ok(f);
        }
        let at = self.pos();
        let name = self.ident("a label filter such as status >= 500")?;
        let op = match self.next() {
            Tok::Sym("=") => CmpOp::Eq,
            Tok::Sym("==") => CmpOp::Eq,
            Tok::Sym("!=") => CmpOp::Ne,
            Tok::Sym("=~") => CmpOp::Re,
            Tok::Sym("!~") => CmpOp::Nre,
            Tok::Sym(">") => CmpOp::Gt,
            Tok::Sym(">=") => CmpOp::Ge,
            Tok::Sym("<") => CmpOp::Lt,
            Tok::Sym("<=") => CmpOp::Le,
            _ => {
                self.i -= 1;
                return Err(self.unexpected(&format!(
                    "a comparison after {name} (=, !=, =~, !~, ==, >, >=, <, <=)"
                )));
            }
        };
        let string_op = matches!(op, CmpOp::Re | CmpOp::Nre);
        let value = match self.peek().clone() {
            Tok::Str(s) => {
                self.next();
                if !matches!(op, CmpOp::Eq | CmpOp::Ne | CmpOp::Re | CmpOp::Nre) {
                    return Err(self.error_at(
                        at,
                        format!("syntax error: {name} is compared with a string: use =, !=, =~ or !~ (numbers, durations and sizes are written without quotes)"),
                    ));
                }
                if string_op && let Err(e) = regex::Regex::new(&s) {
                    return Err(self.error_at(at, format!("invalid regex {s:?}: {e}")));
                }
                Value::Str(s)
            }
            Tok::Ident(ip) if ip == "ip" && matches!(op, CmpOp::Eq | CmpOp::Ne) => {
                self.next();
                self.expect_sym("(")?;
                let pattern = self.string("an address, range or CIDR, a string")?;
                self.expect_sym(")")?;
                return Ok(LabelFilter::Ip {
                    name,
                    negate: op == CmpOp::Ne,
                    pattern,
                });
            }
            _ if string_op => return Err(self.unexpected("a quoted regex")),
            Tok::Number(_) | Tok::Sym("-") => Value::Number(self.number("a number")?),
            Tok::Duration(ns, _) => {
                self.next();
                Value::Duration(ns as f64 / 1e9)
            }
            Tok::Bytes(b, _) => {
                self.next();
                Value::Bytes(b)
            }
            _ => {
                return Err(self.unexpected("a quoted string, a number, a duration or a size"));
            }
        };
        Ok(LabelFilter::Compare { name, op, value })
    }
}

/// Numbers on both sides are computed at once (`vector(1)+vector(1)` stays: its value is a
/// vector).
fn fold(b: Binary) -> Expr {
    if let (Expr::Number(l), Expr::Number(r)) = (&b.lhs, &b.rhs)
        && !b.op.is_set()
    {
        return Expr::Number(apply_scalar(b.op, *l, *r));
    }
    Expr::Binary(Box::new(b))
}

/// Check what Loki checks before it runs a query (after parsing): a selector must have a
/// matcher that rules out the empty value (`{app=~".*"}` would read everything).
pub fn check_selector(selector: &[Matcher]) -> Result<(), String> {
    if selector.iter().any(matches_something) {
        Ok(())
    } else {
        Err("queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will".to_string())
    }
}

/// Whether a matcher rules out the empty value.
fn matches_something(m: &Matcher) -> bool {
    match m.op {
        MatchOp::Eq => !m.value.is_empty(),
        MatchOp::Re => {
            regex::Regex::new(&format!("^(?:{})$", m.value)).is_ok_and(|r| !r.is_match(""))
        }
        MatchOp::Ne | MatchOp::Nre => false,
    }
}

/// A `regexp` stage needs at least one named group.
fn check_regexp_stage(re: &str) -> Result<(), String> {
    let r = regex::Regex::new(re).map_err(|e| format!("invalid regexp {re:?}: {e}"))?;
    if r.capture_names().flatten().next().is_none() {
        return Err(format!(
            "the regexp {re:?} has no named capture group (?P<name>...): it would extract nothing"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(text: &str) -> impl Iterator<Item = &str> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
    }

    #[test]
    fn the_corpus_grafana_accepts_parses() {
        for q in corpus(include_str!("../../tests/logql/valid.txt")) {
            if let Err(e) = parse(q) {
                panic!("{q}\n{e}");
            }
        }
    }

    #[test]
    fn the_corpus_grafana_rejects_is_refused() {
        for q in corpus(include_str!("../../tests/logql/invalid.txt")) {
            assert!(parse(q).is_err(), "{q} parsed: {:?}", parse(q));
        }
    }

    #[test]
    fn trees() {
        let Expr::Log(l) = parse(r#"{app="a", env!~"dev|test"} |= "x" or `y` | logfmt | status >= 500 and level="error" or (a < 1s)"#).unwrap() else {
            panic!()
        };
        assert_eq!(l.selector.len(), 2);
        assert_eq!(l.selector[1].op, MatchOp::Nre);
        assert_eq!(
            l.pipeline[0],
            Stage::Line(LineFilter {
                op: LineOp::Contains,
                values: vec![FilterValue::Text("x".into()), FilterValue::Text("y".into())]
            })
        );
        let Stage::Label(LabelFilter::Or(and, dur)) = &l.pipeline[2] else {
            panic!("{:?}", l.pipeline[2])
        };
        assert!(matches!(**and, LabelFilter::And(..)));
        assert_eq!(
            **dur,
            LabelFilter::Compare {
                name: "a".into(),
                op: CmpOp::Lt,
                value: Value::Duration(1.0)
            }
        );
        // Precedence: * before +, ^ to the right, numbers folded.
        assert_eq!(parse("1 + 2 * 3").unwrap(), Expr::Number(7.0));
        assert_eq!(parse("2 ^ 3 ^ 2").unwrap(), Expr::Number(512.0));
        assert_eq!(parse("10 - 2 - 3").unwrap(), Expr::Number(5.0));
        let Expr::Binary(b) = parse("vector(1)+vector(1)").unwrap() else {
            panic!()
        };
        assert_eq!(
            (b.op, &b.lhs, &b.rhs),
            (BinOp::Add, &Expr::VectorOf(1.0), &Expr::VectorOf(1.0))
        );
        let Expr::Vector(v) = parse(
            r#"sum by (level) (count_over_time({a="b"} | drop __error__ [$__auto]))"#
                .replace("$__auto", "1m")
                .as_str(),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(v.grouping.unwrap().labels, ["level"]);
        let Expr::Range(r) = *v.inner else { panic!() };
        assert_eq!((r.op, r.range_ns), (RangeOp::Count, 60_000_000_000));
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = parse(r#"{app="foo"} |= "a" | status >"#).unwrap_err();
        assert_eq!((e.line, e.col), (1, 30), "{e}");
        assert!(e.message.contains("unexpected end of query"), "{e}");
        let e = parse("{app=\"foo\"}\n  | logfmt | x ~ 1").unwrap_err();
        assert_eq!((e.line, e.col), (2, 16), "{e}");
        let Expr::Log(l) = parse(r#"{app=~".*", b!="c"}"#).unwrap() else {
            panic!()
        };
        assert!(
            check_selector(&l.selector)
                .unwrap_err()
                .contains("at least one")
        );
        let Expr::Log(l) = parse(r#"{app=~".+", b!="c"}"#).unwrap() else {
            panic!()
        };
        assert!(check_selector(&l.selector).is_ok());
        let e = parse(r#"sum_over_time({app="a"}[5m])"#).unwrap_err();
        assert!(e.message.contains("without unwrap"), "{e}");
        let e = parse(r#"{app="a"} |~ "(""#).unwrap_err();
        assert!(e.message.contains("invalid regex"), "{e}");
        let e = parse(r#"histogram_quantile(0.9, x)"#).unwrap_err();
        assert!(
            e.to_string().starts_with("parse error at line 1, col 1: "),
            "{e}"
        );
    }
}
