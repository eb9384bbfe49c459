//! A record's labels as LogQL sees them: name, value and where each came from.

use std::fmt::Write as _;

/// Where a label came from: Loki answers them apart with `categorize-labels`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// A stream label (the topic, and the labels the agent sent with the stream).
    Stream,
    /// Structured metadata the agent sent with the entry.
    Metadata,
    /// Extracted from the line by a parser stage, or set by `label_format`.
    Parsed,
}

/// One label.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// The name (a valid Prometheus label name).
    pub name: String,
    /// The value.
    pub value: String,
    /// Where it came from.
    pub origin: Origin,
}

/// A record's labels, sorted by name, each name once.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Vec<Label>);

/// The label a failed parser or filter sets.
pub const ERROR: &str = "__error__";
/// The label with the failure's details.
pub const ERROR_DETAILS: &str = "__error_details__";

impl Labels {
    /// No labels.
    pub fn new() -> Labels {
        Labels(Vec::new())
    }

    /// The labels in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|l| l.name.as_str().cmp(name))
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.find(name).ok().map(|i| self.0[i].value.as_str())
    }

    /// The label `name`.
    pub fn label(&self, name: &str) -> Option<&Label> {
        self.find(name).ok().map(|i| &self.0[i])
    }

    /// Set `name` to `value` (replacing any value it had, and where it came from).
    pub fn set(&mut self, name: &str, value: impl Into<String>, origin: Origin) {
        let value = value.into();
        match self.find(name) {
            Ok(i) => {
                self.0[i].value = value;
                self.0[i].origin = origin;
            }
            Err(i) => self.0.insert(
                i,
                Label {
                    name: name.to_string(),
                    value,
                    origin,
                },
            ),
        }
    }

    /// Set a label extracted from the line: named `<name>_extracted` when a stream label or
    /// metadata has the name already (as Loki does); an empty name is skipped.
    pub fn set_parsed(&mut self, name: &str, value: impl Into<String>) {
        let name = sanitize(name);
        if name.is_empty() {
            return;
        }
        match self.label(&name) {
            Some(l) if l.origin != Origin::Parsed => {
                let renamed = format!("{name}_extracted");
                self.set(&renamed, value, Origin::Parsed);
            }
            _ => self.set(&name, value, Origin::Parsed),
        }
    }

    /// Remove `name`.
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.find(name) {
            self.0.remove(i);
        }
    }

    /// Keep only the labels `keep` says yes to.
    pub fn retain(&mut self, keep: impl FnMut(&Label) -> bool) {
        self.0.retain(keep);
    }

    /// Mark the record as failed in a stage (the first failure is kept).
    pub fn set_error(&mut self, error: &str, details: impl Into<String>) {
        if self.get(ERROR).is_none() {
            self.set(ERROR, error, Origin::Parsed);
            self.set(ERROR_DETAILS, details, Origin::Parsed);
        }
    }

    /// The labels of one origin.
    pub fn of(&self, origin: Origin) -> impl Iterator<Item = &Label> {
        self.0.iter().filter(move |l| l.origin == origin)
    }

    /// The labels as Prometheus writes them: `{a="1", b="x"}`.
    pub fn text(&self) -> String {
        let mut out = String::from("{");
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}={:?}", l.name, l.value);
        }
        out.push('}');
        out
    }
}

/// A name as a Prometheus label name: characters other than letters, digits and `_` become
/// `_`, and a leading digit gets a `_` before it.
pub fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_sorted_and_parsed_ones_do_not_overwrite() {
        let mut l = Labels::new();
        l.set("service_name", "api", Origin::Stream);
        l.set("host", "web-1", Origin::Stream);
        l.set_parsed("host", "other");
        l.set_parsed("status.code", "500");
        l.set_parsed("1x", "y");
        assert_eq!(
            l.text(),
            r#"{_1x="y", host="web-1", host_extracted="other", service_name="api", status_code="500"}"#
        );
        l.set_error("JSONParserErr", "bad");
        l.set_error("LogfmtParserErr", "later");
        assert_eq!(l.get(ERROR), Some("JSONParserErr"));
        assert_eq!(l.of(Origin::Stream).count(), 2);
    }
}
