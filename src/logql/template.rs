//! The part of Go's `text/template` that `line_format` and `label_format` use most: text with
//! `{{ .label }}`, `{{ __line__ }}` and `{{ __timestamp__ }}` actions, each optionally piped
//! through string functions (`ToUpper`, `ToLower`, `upper`, `lower`, `title`, `trim`,
//! `trimSpace`), with `{{-`/`-}}` trimming. Anything else is refused when the query is parsed,
//! naming the construct.

use super::labels::Labels;

/// A compiled template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template(Vec<Piece>);

#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    Action(Source, Vec<Func>),
}

#[derive(Clone, Debug, PartialEq)]
enum Source {
    Label(String),
    Line,
    Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Func {
    Upper,
    Lower,
    Title,
    TrimSpace,
}

impl Template {
    /// Compile `text`.
    pub fn new(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            let mut before = &rest[..open];
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("template {text:?}: an action {{{{ is not closed"))?;
            let mut action = &after[..close];
            if let Some(a) = action.strip_prefix('-') {
                before = before.trim_end();
                action = a;
            }
            let mut next = &after[close + 2..];
            if let Some(a) = action.strip_suffix('-') {
                next = next.trim_start();
                action = a;
            }
            if !before.is_empty() {
                pieces.push(Piece::Text(before.to_string()));
            }
            pieces.push(action_piece(action.trim(), text)?);
            rest = next;
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template(pieces))
    }

    /// The text for a record with `labels`, `line` and time `ns`.
    pub fn render(&self, labels: &Labels, line: &[u8], ns: i128) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Action(src, funcs) => {
                    let mut v = match src {
                        Source::Label(name) => labels.get(name).unwrap_or("").to_string(),
                        Source::Line => String::from_utf8_lossy(line).into_owned(),
                        Source::Timestamp => jiff::Timestamp::from_nanosecond(ns)
                            .map(|t| t.to_string())
                            .unwrap_or_default(),
                    };
                    for f in funcs {
                        v = match f {
                            Func::Upper => v.to_uppercase(),
                            Func::Lower => v.to_lowercase(),
                            Func::TrimSpace => v.trim().to_string(),
                            Func::Title => title(&v),
                        };
                    }
                    out.push_str(&v);
                }
            }
        }
        out
    }
}

fn action_piece(action: &str, text: &str) -> Result<Piece, String> {
    let mut parts = action.split('|').map(str::trim);
    let head = parts.next().unwrap_or("");
    let mut funcs = Vec::new();
    // `{{ ToUpper .a }}` is the function-first spelling of `{{ .a | ToUpper }}`.
    let mut words: Vec<&str> = head.split_whitespace().collect();
    while words.len() > 1 {
        funcs.insert(0, func(words.remove(0), text)?);
    }
    let src = match words.first().copied() {
        Some("__line__") => Source::Line,
        Some("__timestamp__") => Source::Timestamp,
        Some(w) if w.starts_with('.') && w.len() > 1 && !w[1..].contains('.') => {
            Source::Label(w[1..].to_string())
        }
        _ => {
            return Err(format!(
                "template {text:?}: the action {{{{{action}}}}} is not supported (oklog's templates take {{{{.label}}}}, {{{{__line__}}}} and {{{{__timestamp__}}}}, piped through ToUpper, ToLower, title or trimSpace)"
            ));
        }
    };
    for f in parts {
        funcs.push(func(f, text)?);
    }
    Ok(Piece::Action(src, funcs))
}

fn func(name: &str, text: &str) -> Result<Func, String> {
    Ok(match name {
        "ToUpper" | "upper" => Func::Upper,
        "ToLower" | "lower" => Func::Lower,
        "title" | "Title" => Func::Title,
        "trim" | "trimSpace" | "TrimSpace" => Func::TrimSpace,
        _ => {
            return Err(format!(
                "template {text:?}: the function {name} is not supported (ToUpper, ToLower, title, trimSpace are)"
            ));
        }
    })
}

fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = c.is_whitespace();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logql::labels::Origin;

    #[test]
    fn renders_labels_line_and_functions() {
        let mut l = Labels::new();
        l.set("status", "500", Origin::Parsed);
        l.set("method", "get", Origin::Parsed);
        let t = Template::new("{{.status}} {{ .method | ToUpper }} {{- \" \" }}").unwrap_err();
        assert!(t.contains("not supported"), "{t}");
        let t = Template::new("{{.status}} {{ .method | ToUpper }}: {{__line__}} {{.missing}}!")
            .unwrap();
        assert_eq!(t.render(&l, b"the line", 0), "500 GET: the line !");
        let t = Template::new("a  {{- .status -}}  b {{ upper .method }}").unwrap();
        assert_eq!(t.render(&l, b"", 0), "a500b GET");
        assert!(Template::new("{{ .a ").is_err());
        assert!(Template::new("{{ .a | printf \"%d\" }}").is_err());
    }
}
