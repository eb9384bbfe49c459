//! The LogQL lexer: a query's text as tokens, each with its byte position.

use super::ParseError;

/// A token.
#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// A name: a label, a function, a keyword (`by`, `or`, `json`, ...), parsed by context.
    Ident(String),
    /// A string, `"..."` (Go escapes) or `` `...` `` (raw), unquoted.
    Str(String),
    /// A number.
    Number(f64),
    /// A duration (`5m`, `1h30m`, `250ms`), in nanoseconds, with its text.
    Duration(i64, String),
    /// A size (`10KB`, `1.5MiB`), in bytes, with its text.
    Bytes(f64, String),
    /// Punctuation and operators: `{ } ( ) [ ] , | |= |~ |> != !~ !> = =~ == > >= < <= + - * /
    /// % ^`.
    Sym(&'static str),
    /// A `--flag` of `logfmt`.
    Flag(String),
    /// The end of the query.
    End,
}

impl Tok {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("identifier {s:?}"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Number(n) => format!("number {n}"),
            Tok::Duration(_, s) | Tok::Bytes(_, s) => s.clone(),
            Tok::Sym(s) => format!("{s:?}"),
            Tok::Flag(s) => format!("--{s}"),
            Tok::End => "end of query".to_string(),
        }
    }
}

/// Operators, longest first so that `|=` is not read as `|`.
const SYMS: [&str; 27] = [
    "|=", "|~", "|>", "!=", "!~", "!>", "=~", "==", ">=", "<=", "{", "}", "(", ")", "[", "]", ",",
    "|", "=", ">", "<", "+", "-", "*", "/", "%", "^",
];

/// Split `text` into tokens with their byte offsets; the last is [`Tok::End`].
pub fn lex(text: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            // A comment runs to the end of the line.
            i = memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |n| i + n);
            continue;
        }
        let start = i;
        if c == b'"' {
            let (s, end) = quoted(text, i)?;
            out.push((Tok::Str(s), start));
            i = end;
        } else if c == b'`' {
            let end = memchr::memchr(b'`', &b[i + 1..])
                .ok_or_else(|| ParseError::at(text, i, "unterminated raw string (`...`)"))?;
            out.push((Tok::Str(text[i + 1..i + 1 + end].to_string()), start));
            i += end + 2;
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let (tok, end) = number(text, i)?;
            out.push((tok, start));
            i = end;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let end = b[i..]
                .iter()
                .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
                .map_or(b.len(), |n| i + n);
            out.push((Tok::Ident(text[i..end].to_string()), start));
            i = end;
        } else if b[i..].starts_with(b"--") && b.get(i + 2).is_some_and(u8::is_ascii_alphabetic) {
            let end = b[i + 2..]
                .iter()
                .position(|&c| !(c.is_ascii_alphanumeric() || c == b'-' || c == b'_'))
                .map_or(b.len(), |n| i + 2 + n);
            out.push((Tok::Flag(text[i + 2..end].to_string()), start));
            i = end;
        } else if let Some(sym) = SYMS.iter().find(|s| b[i..].starts_with(s.as_bytes())) {
            out.push((Tok::Sym(sym), start));
            i += sym.len();
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            return Err(ParseError::at(
                text,
                i,
                format!("unexpected character {ch:?}"),
            ));
        }
    }
    out.push((Tok::End, b.len()));
    Ok(out)
}

/// A `"..."` string starting at `at`, unescaped as Go does, and the offset after it.
fn quoted(text: &str, at: usize) -> Result<(String, usize), ParseError> {
    let mut out = String::new();
    let mut chars = text[at + 1..].char_indices();
    while let Some((n, c)) = chars.next() {
        match c {
            '"' => return Ok((out, at + 1 + n + 1)),
            '\\' => {
                let Some((m, e)) = chars.next() else { break };
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\x07'),
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'v' => out.push('\x0b'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'x' | 'u' | 'U' => {
                        let len = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let from = at + 1 + m + 1;
                        let hex = text.get(from..from + len).unwrap_or("");
                        let code = u32::from_str_radix(hex, 16)
                            .ok()
                            .filter(|_| hex.len() == len);
                        match code.and_then(char::from_u32) {
                            Some(ch) => out.push(ch),
                            None => {
                                return Err(ParseError::at(
                                    text,
                                    at + 1 + m - 1,
                                    format!("invalid escape \\{e}{hex} in a string"),
                                ));
                            }
                        }
                        for _ in 0..len {
                            chars.next();
                        }
                    }
                    '0'..='7' => {
                        let from = at + 1 + m;
                        let oct = text.get(from..from + 3).unwrap_or("");
                        match u8::from_str_radix(oct, 8) {
                            Ok(v) if oct.len() == 3 => out.push(char::from(v)),
                            _ => {
                                return Err(ParseError::at(
                                    text,
                                    at + 1 + m - 1,
                                    format!("invalid escape \\{oct} in a string"),
                                ));
                            }
                        }
                        chars.next();
                        chars.next();
                    }
                    other => {
                        // Go rejects unknown escapes; so does Loki.
                        return Err(ParseError::at(
                            text,
                            at + 1 + m - 1,
                            format!(
                                "invalid escape \\{other} in a string (a regex's backslash is written \\\\, or use a `raw string`)"
                            ),
                        ));
                    }
                }
            }
            c => out.push(c),
        }
    }
    Err(ParseError::at(text, at, "unterminated string"))
}

/// A number, duration or size at `at`, and the offset after it.
fn number(text: &str, at: usize) -> Result<(Tok, usize), ParseError> {
    let b = text.as_bytes();
    // Hex integers, as Prometheus reads them.
    if b[at..].starts_with(b"0x") || b[at..].starts_with(b"0X") {
        let end = b[at + 2..]
            .iter()
            .position(|c| !c.is_ascii_hexdigit())
            .map_or(b.len(), |n| at + 2 + n);
        let v = i64::from_str_radix(&text[at + 2..end], 16)
            .map_err(|_| ParseError::at(text, at, "bad hexadecimal number"))?;
        return Ok((Tok::Number(v as f64), end));
    }
    // The longest run that can be a number with units: digits, dots, letters, exponents.
    let mut end = at;
    while end < b.len() {
        let c = b[end];
        let exponent_sign = (c == b'+' || c == b'-')
            && end > at
            && matches!(b[end - 1], b'e' | b'E')
            && b[at..end - 1]
                .iter()
                .all(|c| c.is_ascii_digit() || *c == b'.');
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || exponent_sign || c >= 0x80 {
            end += 1;
        } else {
            break;
        }
    }
    let word = &text[at..end];
    if let Ok(v) = word.parse::<f64>() {
        return Ok((Tok::Number(v), end));
    }
    if let Some(ns) = parse_duration(word) {
        return Ok((Tok::Duration(ns, word.to_string()), end));
    }
    if let Some(bytes) = parse_bytes(word) {
        return Ok((Tok::Bytes(bytes, word.to_string()), end));
    }
    Err(ParseError::at(
        text,
        at,
        format!("{word:?} is not a number, a duration (5m, 1h30m) or a size (10KB)"),
    ))
}

/// A duration of units `ns us µs ms s m h d w y` (each after a number, fractions allowed, as
/// Go's and Prometheus' parsers read them together), in nanoseconds.
pub fn parse_duration(text: &str) -> Option<i64> {
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let v: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86_400e9,
            "w" => 7.0 * 86_400e9,
            "y" => 365.0 * 86_400e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += v * unit;
    }
    (total.is_finite() && total < i64::MAX as f64).then_some(total as i64)
}

/// A size like `10KB`, `1.5MiB`, `20B` (units case-insensitive; `KB` is 1000, `KiB` 1024, as
/// Loki reads them), in bytes.
pub fn parse_bytes(text: &str) -> Option<f64> {
    let num_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let v: f64 = text[..num_end].trim().parse().ok()?;
    let unit = text[num_end..].trim().to_ascii_lowercase();
    let mul = match unit.as_str() {
        "b" | "" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "pb" | "p" => 1e15,
        "eb" | "e" => 1e18,
        "kib" | "ki" => 1024.0,
        "mib" | "mi" => 1024f64.powi(2),
        "gib" | "gi" => 1024f64.powi(3),
        "tib" | "ti" => 1024f64.powi(4),
        "pib" | "pi" => 1024f64.powi(5),
        "eib" | "ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some(v * mul)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn tokens() {
        assert_eq!(
            toks(r#"{app="a\"b"} |= `c\d` != "x" [5m]"#),
            [
                Tok::Sym("{"),
                Tok::Ident("app".into()),
                Tok::Sym("="),
                Tok::Str("a\"b".into()),
                Tok::Sym("}"),
                Tok::Sym("|="),
                Tok::Str("c\\d".into()),
                Tok::Sym("!="),
                Tok::Str("x".into()),
                Tok::Sym("["),
                Tok::Duration(300_000_000_000, "5m".into()),
                Tok::Sym("]"),
                Tok::End
            ]
        );
        assert_eq!(
            toks("1.5e3 0x10 1h30m 10KB 2MiB --strict a_b"),
            [
                Tok::Number(1500.0),
                Tok::Number(16.0),
                Tok::Duration(5_400_000_000_000, "1h30m".into()),
                Tok::Bytes(10_000.0, "10KB".into()),
                Tok::Bytes(2_097_152.0, "2MiB".into()),
                Tok::Flag("strict".into()),
                Tok::Ident("a_b".into()),
                Tok::End
            ]
        );
        assert!(lex(r#""unterminated"#).is_err());
        assert!(lex(r#""bad \q escape""#).is_err());
        assert!(lex("5parsecs").is_err());
        assert_eq!(toks("# a comment\n1"), [Tok::Number(1.0), Tok::End]);
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms"), Some(250_000_000));
        assert_eq!(parse_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("1d"), Some(86_400_000_000_000));
        assert_eq!(parse_duration("2w"), Some(14 * 86_400_000_000_000));
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_bytes("1KiB"), Some(1024.0));
        assert_eq!(parse_bytes("20 B"), Some(20.0));
        assert_eq!(parse_bytes("1.5kb"), Some(1500.0));
    }
}
