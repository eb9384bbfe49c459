//! The process's own logs on stderr, in one of three formats (`-log.format`): `logfmt` (the
//! default, as the original's go-kit logger), `json` (one object per line, fields `ts`,
//! `level`, `msg` and the event's own, e.g. `name` and `addr` of `listening`), or `text`
//! (tracing's human format). `-debug` lowers the level to debug; `RUST_LOG` is not read.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::flags::{Flag, Kind, flag};

/// The `-log.format` values.
pub const FORMATS: &[&str] = &["logfmt", "json", "text"];

/// `-debug` and `-log.format`, which every long-running mode has.
pub fn flags() -> Vec<Flag> {
    vec![
        flag("debug", Kind::Bool, "", "debug logging"),
        flag(
            "log.format",
            Kind::Str,
            "logfmt",
            "format of the process's own logs: logfmt, json or text",
        ),
    ]
}

/// `-log.format` and `-debug`, read once.
#[derive(Clone, Debug, Default)]
pub struct LogConfig {
    /// `logfmt`, `json` or `text`.
    pub format: String,
    /// Debug events too.
    pub debug: bool,
}

impl LogConfig {
    /// Read the flags of [`flags`].
    pub fn from_args(args: &super::flags::Args) -> LogConfig {
        LogConfig {
            format: args.str("log.format"),
            debug: args.bool("debug"),
        }
    }

    /// Install the global logger ([`init`]).
    pub fn init(&self) -> anyhow::Result<()> {
        init(&self.format, self.debug)
    }
}

/// Install the global logger. An unknown format is an error naming the flag.
pub fn init(format: &str, debug: bool) -> anyhow::Result<()> {
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(false)
        .with_target(false);
    // A second init in one process (tests) keeps the first logger.
    let _ = match format {
        "logfmt" => builder.event_format(Logfmt).try_init(),
        "json" => builder.event_format(Json).try_init(),
        "text" => builder.try_init(),
        other => anyhow::bail!(
            "invalid value {other:?} for flag -log.format: must be one of {}",
            FORMATS.join(", ")
        ),
    };
    Ok(())
}

/// `ts=2026-11-25T19:20:00.123Z level=info msg=listening name=api addr=127.0.0.1:7650`.
struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::with_capacity(128);
        line.push_str("ts=");
        line.push_str(&now());
        line.push_str(" level=");
        line.push_str(&event.metadata().level().as_str().to_ascii_lowercase());
        let mut v = LogfmtFields {
            msg: String::new(),
            rest: String::new(),
        };
        event.record(&mut v);
        line.push_str(" msg=");
        push_value(&mut line, &v.msg);
        line.push_str(&v.rest);
        writeln!(w, "{line}")
    }
}

struct LogfmtFields {
    msg: String,
    rest: String,
}

impl Visit for LogfmtFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.rest.push(' ');
            self.rest.push_str(field.name());
            self.rest.push('=');
            push_value(&mut self.rest, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// A logfmt value: bare when it is a plain word, else quoted with `"` and `\` escaped.
fn push_value(out: &mut String, v: &str) {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=');
    if plain {
        out.push_str(v);
    } else {
        out.push('"');
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// One JSON object per event: `{"ts", "level", "msg", <fields>...}`.
struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut obj = serde_json::Map::new();
        obj.insert("ts".into(), now().into());
        obj.insert(
            "level".into(),
            event
                .metadata()
                .level()
                .as_str()
                .to_ascii_lowercase()
                .into(),
        );
        let mut v = JsonFields(&mut obj);
        event.record(&mut v);
        writeln!(w, "{}", serde_json::Value::Object(obj))
    }
}

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let key = if field.name() == "message" {
            "msg"
        } else {
            field.name()
        };
        self.0.insert(key.into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// The current time, RFC 3339 UTC with milliseconds.
fn now() -> String {
    crate::gotime::rfc3339_utc_millis(crate::gotime::now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_values_are_quoted_only_when_needed() {
        let mut s = String::new();
        for v in ["127.0.0.1:7650", "two words", "", "a=b", "say \"hi\"\n"] {
            s.push(' ');
            push_value(&mut s, v);
        }
        assert_eq!(s, r#" 127.0.0.1:7650 "two words" "" "a=b" "say \"hi\"\n""#);
    }

    #[test]
    fn an_unknown_format_names_the_flag() {
        let e = init("xml", false).unwrap_err().to_string();
        assert!(e.contains("-log.format") && e.contains("logfmt"), "{e}");
    }
}
