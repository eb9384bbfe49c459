//! LogQL, Grafana Loki's query language, as a library: the lexer, the parser (recursive
//! descent, with precedence climbing for binary operators, as PromQL's), the syntax tree, the
//! pipeline a record goes through and the range and vector functions over samples. No I/O:
//! `loki/` plans a query over the store and feeds records in.
//!
//! Errors carry the position in the query (`parse error at line 1, col 14: ...`), as Loki's do.

pub mod ast;
pub mod eval;
pub mod labels;
pub mod lex;
pub mod parse;
pub mod pipeline;
pub mod record;
pub mod sample;
pub mod template;

pub use ast::Expr;
pub use parse::parse;

/// A query that cannot be parsed or is not supported, with where in the query.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("parse error at line {line}, col {col}: {message}")]
pub struct ParseError {
    /// Line of the error, from 1.
    pub line: usize,
    /// Column of the error in characters, from 1.
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

impl ParseError {
    /// An error at byte offset `at` of `text`.
    pub fn at(text: &str, at: usize, message: impl Into<String>) -> ParseError {
        let mut at = at.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let before = &text[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |n| n + 1);
        ParseError {
            line,
            col: before[line_start..].chars().count() + 1,
            message: message.into(),
        }
    }
}
