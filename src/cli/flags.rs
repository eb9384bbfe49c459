//! A small Go-`flag`-style command-line parser, so the original's command lines work unchanged.
//!
//! Accepted: `-name value`, `-name=value`, `--name value`, `--name=value`; booleans as `-x`,
//! `-x=true`, `-x=false` (never a separate value, as in Go); `--` ends the flags; flags and
//! positional arguments may be interleaved. Every flag can also come from the environment as
//! `OKLOG_` + the name upper-cased with `.` and `-` as `_`; the command line wins. Values are
//! checked while parsing, so an error always names the flag.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::gotime;

/// The type of a flag's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `-x`, `-x=true`, `-x=false`.
    Bool,
    /// Any string.
    Str,
    /// A decimal integer.
    Int,
    /// A Go duration such as `3s` or `168h`.
    Duration,
    /// A string that may be repeated (`-peer a -peer b`).
    List,
}

/// One flag's definition.
#[derive(Clone, Debug)]
pub struct Flag {
    /// Name without dashes, e.g. `store.segment-retain`.
    pub name: &'static str,
    /// Value kind.
    pub kind: Kind,
    /// Default, as text (empty for none).
    pub default: &'static str,
    /// One-line help.
    pub help: &'static str,
}

/// Shorthand constructor for [`Flag`].
pub const fn flag(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    help: &'static str,
) -> Flag {
    Flag {
        name,
        kind,
        default,
        help,
    }
}

/// A subcommand's flag definitions.
#[derive(Clone, Debug)]
pub struct FlagSet {
    /// The `USAGE` line, e.g. `oklog forward [flags] <ingester> [<ingester>...]`.
    pub usage: &'static str,
    /// The flags.
    pub flags: Vec<Flag>,
    /// Other spellings: (alias, canonical name).
    pub aliases: Vec<(&'static str, &'static str)>,
}

/// Why parsing stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum FlagError {
    /// `-h` or `-help`: the usage text to print on stdout.
    Help(String),
    /// A bad flag or value: a one-line message naming it.
    Bad(String),
}

/// Parsed, type-checked flag values.
#[derive(Debug, Default)]
pub struct Args {
    values: HashMap<&'static str, Vec<String>>,
    explicit: Vec<&'static str>,
    /// Positional arguments, in order.
    pub positional: Vec<String>,
}

impl Args {
    fn raw(&self, name: &str) -> &str {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
            .unwrap_or_else(|| panic!("flag -{name} is not defined for this command"))
    }

    /// A flag's value as text, if this command defines it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// A string flag's value.
    pub fn str(&self, name: &str) -> String {
        self.raw(name).to_string()
    }

    /// A bool flag's value (checked when parsed).
    pub fn bool(&self, name: &str) -> bool {
        parse_bool(self.raw(name)).unwrap_or(false)
    }

    /// An integer flag's value (checked when parsed).
    pub fn int(&self, name: &str) -> i64 {
        self.raw(name).parse().unwrap_or(0)
    }

    /// A duration flag's value (checked when parsed).
    pub fn duration(&self, name: &str) -> Duration {
        gotime::parse_duration(self.raw(name)).unwrap_or_default()
    }

    /// All values of a repeatable flag.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    /// Whether the flag was given on the command line or in the environment.
    pub fn is_set(&self, name: &str) -> bool {
        self.explicit.contains(&name)
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The environment variable for a flag: `OKLOG_` + name upper-cased, `.` and `-` as `_`.
pub fn env_name(flag: &str) -> String {
    let mut s = String::from("OKLOG_");
    for c in flag.chars() {
        s.push(match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        });
    }
    s
}

impl FlagSet {
    fn find(&self, name: &str) -> Option<&Flag> {
        let name = self
            .aliases
            .iter()
            .find(|(alias, _)| *alias == name)
            .map_or(name, |(_, canonical)| canonical);
        self.flags.iter().find(|f| f.name == name)
    }

    /// The usage text: USAGE, then one aligned line per flag with its default and env name.
    pub fn usage_text(&self) -> String {
        let mut out = format!("USAGE\n  {}\n\nFLAGS\n", self.usage);
        let cols: Vec<(String, &Flag)> = self
            .flags
            .iter()
            .map(|f| {
                let left = match f.kind {
                    Kind::Bool => format!(
                        "-{} {}",
                        f.name,
                        if f.default.is_empty() {
                            "false"
                        } else {
                            f.default
                        }
                    ),
                    _ => format!("-{} {}", f.name, f.default),
                };
                (left, f)
            })
            .collect();
        let width = cols.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (left, f) in cols {
            let _ = writeln!(out, "  {left:width$}  {} (${})", f.help, env_name(f.name));
        }
        for (alias, canonical) in &self.aliases {
            let _ = writeln!(out, "  -{alias} is another spelling of -{canonical}");
        }
        out
    }

    /// Parse `argv` (without the program and mode names) and the environment.
    pub fn parse(&self, argv: &[String]) -> Result<Args, FlagError> {
        self.parse_with_env(argv, |k| std::env::var(k).ok())
    }

    /// [`FlagSet::parse`] with an injectable environment lookup (for tests).
    pub fn parse_with_env(
        &self,
        argv: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Args, FlagError> {
        let mut args = Args::default();
        let mut given: HashMap<&'static str, Vec<String>> = HashMap::new();
        let mut i = 0;
        while i < argv.len() {
            let arg = &argv[i];
            i += 1;
            if arg == "--" {
                args.positional.extend(argv[i..].iter().cloned());
                break;
            }
            let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                args.positional.push(arg.clone());
                continue;
            };
            if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
                return Err(FlagError::Bad(format!("bad flag syntax: {arg}")));
            }
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            if name == "h" || name == "help" {
                return Err(FlagError::Help(self.usage_text()));
            }
            let flag = self
                .find(name)
                .ok_or_else(|| FlagError::Bad(format!("flag provided but not defined: -{name}")))?;
            let value = match (flag.kind, inline) {
                (Kind::Bool, None) => "true".to_string(),
                (_, Some(v)) => v,
                (_, None) => {
                    let v = argv.get(i).ok_or_else(|| {
                        FlagError::Bad(format!("flag needs an argument: -{name}"))
                    })?;
                    i += 1;
                    v.clone()
                }
            };
            check(flag, &value).map_err(|e| {
                FlagError::Bad(format!("invalid value {value:?} for flag -{name}: {e}"))
            })?;
            given.entry(flag.name).or_default().push(value);
        }
        for flag in &self.flags {
            if let Some(values) = given.remove(flag.name) {
                let values = if flag.kind == Kind::List {
                    values
                } else {
                    vec![values.last().cloned().unwrap_or_default()]
                };
                args.values.insert(flag.name, values);
                args.explicit.push(flag.name);
                continue;
            }
            let var = env_name(flag.name);
            if let Some(value) = env(&var) {
                check(flag, &value).map_err(|e| {
                    FlagError::Bad(format!(
                        "invalid value {value:?} for flag -{} (from ${var}): {e}",
                        flag.name
                    ))
                })?;
                let values = if flag.kind == Kind::List {
                    value
                        .split([',', ' '])
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                } else {
                    vec![value]
                };
                args.values.insert(flag.name, values);
                args.explicit.push(flag.name);
                continue;
            }
            let default = match flag.kind {
                Kind::List => vec![],
                Kind::Bool if flag.default.is_empty() => vec!["false".to_string()],
                _ => vec![flag.default.to_string()],
            };
            args.values.insert(flag.name, default);
        }
        Ok(args)
    }
}

fn check(flag: &Flag, value: &str) -> Result<(), String> {
    match flag.kind {
        Kind::Bool => parse_bool(value)
            .map(|_| ())
            .ok_or_else(|| "parse error: not a boolean".to_string()),
        Kind::Int => value
            .parse::<i64>()
            .map(|_| ())
            .map_err(|_| "parse error: not an integer".to_string()),
        Kind::Duration => gotime::parse_duration(value)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Kind::Str | Kind::List => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> FlagSet {
        FlagSet {
            usage: "oklog test [flags]",
            flags: vec![
                flag("debug", Kind::Bool, "", "debug logging"),
                flag("api", Kind::Str, "tcp://0.0.0.0:7650", "listen address"),
                flag("store.segment-retain", Kind::Duration, "168h", "retention"),
                flag("ingest.segment-flush-size", Kind::Int, "16777216", "size"),
                flag("peer", Kind::List, "", "peers"),
                flag("ingest.topic", Kind::Str, "default", "topic"),
            ],
            aliases: vec![("topic", "ingest.topic")],
        }
    }

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn go_spellings() {
        let a = set()
            .parse_with_env(
                &argv(&[
                    "-debug",
                    "--api",
                    "127.0.0.1:0",
                    "-store.segment-retain=3s",
                    "--ingest.segment-flush-size=10",
                    "pos1",
                    "-topic",
                    "web",
                    "--",
                    "-notaflag",
                ]),
                no_env,
            )
            .unwrap();
        assert!(a.bool("debug"));
        assert_eq!(a.str("api"), "127.0.0.1:0");
        assert_eq!(a.duration("store.segment-retain"), Duration::from_secs(3));
        assert_eq!(a.int("ingest.segment-flush-size"), 10);
        assert_eq!(a.str("ingest.topic"), "web");
        assert_eq!(a.positional, argv(&["pos1", "-notaflag"]));
        assert!(a.is_set("api"));
        assert!(!a.is_set("peer"));
    }

    #[test]
    fn defaults_and_bools() {
        let a = set()
            .parse_with_env(&argv(&["-debug=false"]), no_env)
            .unwrap();
        assert!(!a.bool("debug"));
        assert_eq!(
            a.duration("store.segment-retain"),
            Duration::from_secs(168 * 3600)
        );
        assert_eq!(a.str("api"), "tcp://0.0.0.0:7650");
        // A bool never takes a separate value: `true` is positional.
        let a = set()
            .parse_with_env(&argv(&["-debug", "true"]), no_env)
            .unwrap();
        assert!(a.bool("debug"));
        assert_eq!(a.positional, argv(&["true"]));
    }

    #[test]
    fn repeated_flag_accumulates_in_order() {
        // TestStringSlice.
        let a = set()
            .parse_with_env(&argv(&["-peer", "a", "-peer", "a", "-peer=b"]), no_env)
            .unwrap();
        assert_eq!(a.list("peer"), argv(&["a", "a", "b"]));
    }

    #[test]
    fn environment_fills_unset_flags() {
        let env = |k: &str| match k {
            "OKLOG_STORE_SEGMENT_RETAIN" => Some("24h".to_string()),
            "OKLOG_API" => Some("tcp://1.2.3.4:1".to_string()),
            "OKLOG_PEER" => Some("a,b".to_string()),
            _ => None,
        };
        let a = set().parse_with_env(&argv(&["-api", "x"]), env).unwrap();
        assert_eq!(
            a.duration("store.segment-retain"),
            Duration::from_secs(24 * 3600)
        );
        assert_eq!(a.str("api"), "x", "the command line wins");
        assert_eq!(a.list("peer"), argv(&["a", "b"]));
        let bad = |k: &str| (k == "OKLOG_STORE_SEGMENT_RETAIN").then(|| "7d".to_string());
        let err = set().parse_with_env(&[], bad).unwrap_err();
        assert!(
            matches!(&err, FlagError::Bad(m) if m.contains("-store.segment-retain") && m.contains("OKLOG_STORE_SEGMENT_RETAIN")),
            "{err:?}"
        );
    }

    #[test]
    fn errors_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["-nope"], "flag provided but not defined: -nope"),
            (&["-api"], "flag needs an argument: -api"),
            (&["-store.segment-retain", "7d"], "-store.segment-retain"),
            (
                &["-ingest.segment-flush-size=big"],
                "-ingest.segment-flush-size",
            ),
            (&["-debug=maybe"], "-debug"),
        ];
        for (input, want) in cases {
            match set().parse_with_env(&argv(input), no_env) {
                Err(FlagError::Bad(m)) => {
                    assert!(m.contains(want), "{m:?} lacks {want:?}");
                    assert!(!m.contains('\n'), "one line");
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn help_lists_flags_with_env_names() {
        let Err(FlagError::Help(text)) = set().parse_with_env(&argv(&["-h"]), no_env) else {
            panic!("no help");
        };
        assert!(text.starts_with("USAGE\n  oklog test [flags]"));
        assert!(text.contains("-store.segment-retain 168h"));
        assert!(text.contains("$OKLOG_STORE_SEGMENT_RETAIN"));
        assert!(matches!(
            set().parse_with_env(&argv(&["--help"]), no_env),
            Err(FlagError::Help(_))
        ));
    }
}
