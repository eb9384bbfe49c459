//! The client modes' flags (`query`, `stream`, `forward`, `testsvc`), each mode's parsed once
//! into a typed, checked config, as the server modes' are in `node/config.rs`. Flag names
//! appear here and nowhere else: the modes use the configs.

use std::time::Duration;

use anyhow::bail;

use super::ClientOpts;
use crate::cli::addr::{Addr, parse_addr};
use crate::cli::flags::{Args, Flag, FlagSet, Kind, flag};
use crate::cli::logging::LogConfig;
use crate::cli::node::{API_PORT, BULK_PORT, FAST_PORT};
use crate::gotime;
use crate::record::parse_ulid;

/// The flags every reader (`query`, `stream`) has: where to ask, and what for.
fn reader_flags() -> Vec<Flag> {
    super::flags()
        .into_iter()
        .chain([
            flag(
                "store",
                Kind::Str,
                "localhost:7650",
                "address of store instance to query",
            ),
            flag("q", Kind::Str, "", "query expression"),
            flag("regex", Kind::Bool, "", "parse -q as regular expression"),
            flag(
                "topic",
                Kind::List,
                "",
                "only records of this topic (a name or a * glob; repeatable)",
            ),
        ])
        .collect()
}

/// Where a reader asks, and what for.
#[derive(Clone, Debug)]
pub struct Reader {
    /// `http://host:port` or `https://host:port` of the store node (`-store`).
    pub base: String,
    /// The query expression (`-q`).
    pub q: String,
    /// Whether `q` is a regex (`-regex`).
    pub regex: bool,
    /// Topic names and globs (`-topic`, repeatable).
    pub topics: Vec<String>,
    /// TLS files and token.
    pub security: ClientOpts,
}

impl Reader {
    fn from_args(args: &Args) -> anyhow::Result<Reader> {
        let store =
            parse_addr(&args.str("store"), API_PORT).map_err(|e| anyhow::anyhow!("-store: {e}"))?;
        let host = if store.host.is_empty() {
            format!("localhost:{}", store.port)
        } else {
            store.host_port()
        };
        let scheme = match store.network.as_str() {
            "https" => "https",
            "tcp" | "http" => "http",
            other => bail!("-store: {other}:// is not http or https"),
        };
        Ok(Reader {
            base: format!("{scheme}://{host}"),
            q: args.str("q"),
            regex: args.bool("regex"),
            topics: args.list("topic"),
            security: ClientOpts::from_args(args),
        })
    }

    /// `q=...[&regex=true][&topic=...]...`, encoded.
    pub fn selection(&self) -> String {
        let mut s = format!("q={}", encode(&self.q));
        if self.regex {
            s.push_str("&regex=true");
        }
        for t in &self.topics {
            s.push_str(&format!("&topic={}", encode(t)));
        }
        s
    }
}

/// How `oklog query` prints each record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Print {
    /// `<topic> <payload>` (the default).
    Body,
    /// The whole stored line (`-ulid`).
    Raw,
    /// The ULID replaced by its time (`-time`).
    Time,
    /// One JSON object per record (`-output json`).
    Json,
}

/// When `oklog query` colours matches (`-color`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    /// When stdout is a terminal, `NO_COLOR` is unset and `TERM` is not `dumb`.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// `oklog query`'s settings.
#[derive(Clone, Debug)]
pub struct QueryConfig {
    /// The store node and the selection.
    pub reader: Reader,
    /// `-from`, as the time or ULID to send.
    pub from: String,
    /// `-to`, likewise.
    pub to: String,
    /// Newest first (`-order desc`).
    pub desc: bool,
    /// At most this many records (`-limit`; `None`: all).
    pub limit: Option<u64>,
    /// Context records before each match (`-B`, else `-C`).
    pub before: u64,
    /// Context records after each match (`-A`, else `-C`).
    pub after: u64,
    /// Statistics only (`-stats`, a HEAD request).
    pub stats: bool,
    /// Statistics on stderr (`-v`, or `-stats`).
    pub verbose: bool,
    /// How records are printed.
    pub print: Print,
    /// Whether records are printed at all (not `-nocopy`).
    pub copy: bool,
    /// `-color`.
    pub color: Color,
}

impl QueryConfig {
    /// The flags of `oklog query`.
    pub fn flag_set() -> FlagSet {
        let flags = [
            flag(
                "from",
                Kind::Str,
                "1h",
                "from, as RFC3339 timestamp, ULID, or duration ago",
            ),
            flag(
                "to",
                Kind::Str,
                "now",
                "to, as RFC3339 timestamp, ULID, or duration ago",
            ),
            flag(
                "order",
                Kind::Str,
                "asc",
                "asc (oldest first) or desc (newest first)",
            ),
            flag(
                "limit",
                Kind::Int,
                "0",
                "at most this many records, the first in -order (0: all)",
            ),
            flag(
                "B",
                Kind::Int,
                "0",
                "print this many records of the same topic before each match (as grep)",
            ),
            flag(
                "A",
                Kind::Int,
                "0",
                "print this many records of the same topic after each match (as grep)",
            ),
            flag(
                "C",
                Kind::Int,
                "0",
                "print this many records of the same topic around each match (-B and -A)",
            ),
            flag(
                "stats",
                Kind::Bool,
                "",
                "statistics only, no records (implies -v)",
            ),
            flag("nocopy", Kind::Bool, "", "don't print the records"),
            flag(
                "ulid",
                Kind::Bool,
                "",
                "include ULID prefix with each record",
            ),
            flag(
                "time",
                Kind::Bool,
                "",
                "replace the ULID with its time (RFC3339, local zone)",
            ),
            flag("v", Kind::Bool, "", "verbose output to stderr"),
            flag(
                "output",
                Kind::Str,
                "text",
                "text, or json: one object per record",
            ),
            flag(
                "color",
                Kind::Str,
                "auto",
                "highlight matches: auto (when stdout is a terminal and NO_COLOR is unset), always or never",
            ),
        ];
        FlagSet {
            usage: "oklog query [flags]",
            flags: reader_flags().into_iter().chain(flags).collect(),
            aliases: vec![],
        }
    }

    /// Parse `argv` (`Ok(None)`: help was printed); `from`/`to` durations are taken back from
    /// `now_ms`.
    pub fn parse(argv: &[String], now_ms: i64) -> anyhow::Result<Option<QueryConfig>> {
        let Some(args) = crate::cli::parse_flags(&Self::flag_set(), argv)? else {
            return Ok(None);
        };
        let print = match args.str("output").as_str() {
            "json" => Print::Json,
            "text" if args.bool("ulid") => Print::Raw,
            "text" if args.bool("time") => Print::Time,
            "text" => Print::Body,
            other => bail!("-output: {other:?} is not text or json"),
        };
        let color = match args.str("color").as_str() {
            "always" => Color::Always,
            "never" => Color::Never,
            "auto" => Color::Auto,
            other => bail!("-color: {other:?} is not auto, always or never"),
        };
        let desc = match args.str("order").as_str() {
            "asc" => false,
            "desc" => true,
            other => bail!("-order: {other:?} is not asc or desc"),
        };
        let count = |name: &str, n: i64| -> anyhow::Result<u64> {
            u64::try_from(n).map_err(|_| anyhow::anyhow!("-{name}: {n} is negative"))
        };
        let around = count("C", args.int("C"))?;
        let context = |name: &str| -> anyhow::Result<u64> {
            if args.is_set(name) {
                count(name, args.int(name))
            } else {
                Ok(around)
            }
        };
        let stats = args.bool("stats");
        Ok(Some(QueryConfig {
            reader: Reader::from_args(&args)?,
            from: parse_when("from", &args.str("from"), now_ms).map_err(anyhow::Error::msg)?,
            to: parse_when("to", &args.str("to"), now_ms).map_err(anyhow::Error::msg)?,
            desc,
            limit: Some(count("limit", args.int("limit"))?).filter(|&n| n > 0),
            before: context("B")?,
            after: context("A")?,
            stats,
            verbose: args.bool("v") || stats,
            print,
            copy: !args.bool("nocopy"),
            color,
        }))
    }

    /// The `/store/query` URL this query asks.
    pub fn url(&self) -> String {
        let mut url = format!(
            "{}/store/query?from={}&to={}&{}",
            self.reader.base,
            encode(&self.from),
            encode(&self.to),
            self.reader.selection()
        );
        if self.desc {
            url.push_str("&order=desc");
        }
        if self.before > 0 {
            url.push_str(&format!("&before={}", self.before));
        }
        if self.after > 0 {
            url.push_str(&format!("&after={}", self.after));
        }
        if let Some(n) = self.limit {
            url.push_str(&format!("&limit={n}"));
        }
        url
    }
}

/// `oklog stream`'s settings.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// The store node and the selection.
    pub reader: Reader,
    /// The deduplication window (`-window`).
    pub window: Duration,
    /// Print whole stored lines (`-ulid`).
    pub ulid: bool,
}

impl StreamConfig {
    /// The flags of `oklog stream`.
    pub fn flag_set() -> FlagSet {
        let flags = [
            flag("window", Kind::Duration, "250ms", "deduplication window"),
            flag(
                "ulid",
                Kind::Bool,
                "",
                "include ULID prefix with each record",
            ),
        ];
        FlagSet {
            usage: "oklog stream [flags]",
            flags: reader_flags().into_iter().chain(flags).collect(),
            aliases: vec![],
        }
    }

    /// Parse `argv` (`Ok(None)`: help was printed).
    pub fn parse(argv: &[String]) -> anyhow::Result<Option<StreamConfig>> {
        let Some(args) = crate::cli::parse_flags(&Self::flag_set(), argv)? else {
            return Ok(None);
        };
        Ok(Some(StreamConfig {
            reader: Reader::from_args(&args)?,
            window: args.duration("window"),
            ulid: args.bool("ulid"),
        }))
    }

    /// The `/store/stream` URL.
    pub fn url(&self) -> String {
        format!(
            "{}/store/stream?{}&window={}",
            self.reader.base,
            self.reader.selection(),
            encode(&gotime::format_duration(self.window))
        )
    }
}

/// `oklog forward`'s settings.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// `-log.format`, `-debug`.
    pub log: LogConfig,
    /// The ingesters (positional arguments), at their fast or bulk port by default.
    pub addrs: Vec<Addr>,
    /// Whether to speak TLS (a `tls://` address or a `-tls.*` flag).
    pub tls: bool,
    /// TLS files and token.
    pub security: ClientOpts,
    /// `-prefix` values joined, with a space after them (empty: none).
    pub prefix: Vec<u8>,
    /// Where to serve `/health` and `/metrics` (`-api`).
    pub api: Option<Addr>,
    /// Batch size to send to the bulk port (`-bulk` and `-bulk.size`); `None`: the fast port.
    pub bulk: Option<usize>,
}

impl ForwardConfig {
    /// The flags of `oklog forward`.
    pub fn flag_set() -> FlagSet {
        FlagSet {
            usage: "oklog forward [flags] <ingester> [<ingester>...]",
            flags: crate::cli::logging::flags()
                .into_iter()
                .chain(super::flags())
                .chain([
                    flag(
                        "api",
                        Kind::Str,
                        "",
                        "listen address for forward API (and metrics); empty for none",
                    ),
                    flag(
                        "prefix",
                        Kind::List,
                        "",
                        "prefix prepended to every record (repeatable)",
                    ),
                    flag(
                        "bulk",
                        Kind::Bool,
                        "",
                        "send batches to the bulk port (7653), each acknowledged once stored N ways",
                    ),
                    flag("bulk.size", Kind::Int, "16777216", "bytes per bulk batch"),
                ])
                .collect(),
            aliases: vec![],
        }
    }

    /// Parse `argv` (`Ok(None)`: help was printed).
    pub fn parse(argv: &[String]) -> anyhow::Result<Option<ForwardConfig>> {
        let Some(args) = crate::cli::parse_flags(&Self::flag_set(), argv)? else {
            return Ok(None);
        };
        if args.positional.is_empty() {
            bail!("specify at least one ingest address as an argument");
        }
        let bulk = if args.bool("bulk") {
            let max = crate::ingest::bulk::MAX_BATCH;
            match usize::try_from(args.int("bulk.size")) {
                Ok(n) if (1..=max).contains(&n) => Some(n),
                _ => bail!("-bulk.size: must be between 1 and {max}"),
            }
        } else {
            None
        };
        let port = if bulk.is_some() { BULK_PORT } else { FAST_PORT };
        let addrs = args
            .positional
            .iter()
            .map(|a| parse_addr(a, port).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut tls = false;
        for a in &addrs {
            match a.base_network() {
                "tcp" => {}
                "tls" => tls = true,
                _ => bail!("{a}: only tcp:// and tls:// ingest addresses are supported"),
            }
        }
        let prefixes = args.list("prefix");
        let api = match args.str("api") {
            a if a.is_empty() => None,
            a => Some(parse_addr(&a, API_PORT).map_err(|e| anyhow::anyhow!("-api: {e}"))?),
        };
        Ok(Some(ForwardConfig {
            log: LogConfig::from_args(&args),
            addrs,
            tls,
            security: ClientOpts::from_args(&args),
            prefix: if prefixes.is_empty() {
                Vec::new()
            } else {
                format!("{} ", prefixes.join(" ")).into_bytes()
            },
            api,
            bulk,
        }))
    }
}

/// `oklog testsvc`'s settings.
#[derive(Clone, Debug)]
pub struct TestsvcConfig {
    /// This instance's ID, in every line (`-id`).
    pub id: String,
    /// Bytes per record with its newline (`-size`).
    pub size: usize,
    /// Records per second (`-rate`).
    pub rate: u32,
}

impl TestsvcConfig {
    /// The flags of `oklog testsvc`.
    pub fn flag_set() -> FlagSet {
        FlagSet {
            usage: "oklog testsvc [flags]",
            flags: vec![
                flag("id", Kind::Str, "foo", "ID for this instance"),
                flag("size", Kind::Int, "512", "bytes per record"),
                flag("rate", Kind::Int, "5", "records per second"),
            ],
            aliases: vec![],
        }
    }

    /// Parse `argv` (`Ok(None)`: help was printed).
    pub fn parse(argv: &[String]) -> anyhow::Result<Option<TestsvcConfig>> {
        let Some(args) = crate::cli::parse_flags(&Self::flag_set(), argv)? else {
            return Ok(None);
        };
        let rate = args.int("rate");
        let rate = match u32::try_from(rate) {
            Ok(r) if r > 0 => r,
            _ => bail!("-rate: must be positive, got {rate}"),
        };
        Ok(Some(TestsvcConfig {
            id: args.str("id"),
            size: usize::try_from(args.int("size")).unwrap_or(0),
            rate,
        }))
    }
}

/// Read `-from`/`-to`: `now`, a Go duration meaning "ago" (sign ignored), an RFC 3339 time, or
/// a ULID. Returns the query-string value to send.
pub fn parse_when(flag: &str, value: &str, now_ms: i64) -> Result<String, String> {
    if value == "now" {
        return Ok(gotime::rfc3339_utc_millis(now_ms));
    }
    if let Ok(nanos) = gotime::parse_duration_nanos(value) {
        let ago = (nanos.unsigned_abs() / 1_000_000) as i64;
        return Ok(gotime::rfc3339_utc_millis(now_ms - ago));
    }
    if let Some(ms) = gotime::parse_rfc3339_ms(value) {
        return Ok(gotime::rfc3339_utc_millis(ms));
    }
    if let Some(id) = parse_ulid(value) {
        return Ok(String::from_utf8_lossy(&id).into_owned());
    }
    Err(format!(
        "couldn't parse -{flag} ({value:?}) as either duration or time"
    ))
}

/// Percent-encode a query-string value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    /// Every client mode's defaults parse into a config (a lookup of a flag its mode does not
    /// define would panic), with the original's defaults.
    #[test]
    fn every_client_mode_parses_its_defaults() {
        let q = QueryConfig::parse(&[], 3_600_000).unwrap().unwrap();
        assert_eq!(q.reader.base, "http://localhost:7650");
        assert_eq!(
            (q.from.as_str(), q.to.as_str()),
            ("1970-01-01T00:00:00.000Z", "1970-01-01T01:00:00.000Z")
        );
        assert_eq!((q.desc, q.limit, q.before, q.after), (false, None, 0, 0));
        assert_eq!(
            (q.print, q.color, q.copy, q.verbose),
            (Print::Body, Color::Auto, true, false)
        );
        assert_eq!(
            q.url(),
            "http://localhost:7650/store/query?from=1970-01-01T00%3A00%3A00.000Z&to=1970-01-01T01%3A00%3A00.000Z&q="
        );
        let s = StreamConfig::parse(&[]).unwrap().unwrap();
        assert_eq!(s.window, Duration::from_millis(250));
        assert_eq!(
            s.url(),
            "http://localhost:7650/store/stream?q=&window=250ms"
        );
        let f = ForwardConfig::parse(&argv(&["localhost"]))
            .unwrap()
            .unwrap();
        assert_eq!(f.addrs[0].port, FAST_PORT);
        assert_eq!((f.tls, f.bulk, f.api.is_none()), (false, None, true));
        assert!(f.prefix.is_empty());
        let t = TestsvcConfig::parse(&[]).unwrap().unwrap();
        assert_eq!((t.id.as_str(), t.size, t.rate), ("foo", 512, 5));
    }

    #[test]
    fn a_query_asks_what_its_flags_say() {
        let q = QueryConfig::parse(
            &argv(&[
                "-store",
                "https://s:1",
                "-q",
                "a b",
                "-regex",
                "-topic",
                "x*",
                "-order",
                "desc",
                "-limit",
                "5",
                "-C",
                "2",
                "-A",
                "1",
                "-from",
                "01BC3NABW20000000000000000",
            ]),
            0,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            q.url(),
            "https://s:1/store/query?from=01BC3NABW20000000000000000&to=1970-01-01T00%3A00%3A00.000Z\
             &q=a%20b&regex=true&topic=x%2A&order=desc&before=2&after=1&limit=5"
        );
        let f = ForwardConfig::parse(&argv(&["-bulk", "-prefix", "a", "-prefix", "b", "tls://h"]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (f.addrs[0].port, f.tls, f.bulk),
            (BULK_PORT, true, Some(16 << 20))
        );
        assert_eq!(f.prefix, b"a b ");
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (a, want) in [
            (&["-output", "xml"][..], "-output"),
            (&["-color", "blue"], "-color"),
            (&["-order", "up"], "-order"),
            (&["-B", "-1"], "-B"),
            (&["-limit", "-1"], "-limit"),
            (&["-from", "yesterday"], "-from"),
            (&["-store", "ftp://x"], "-store"),
        ] {
            let e = QueryConfig::parse(&argv(a), 0).unwrap_err();
            assert!(e.to_string().contains(want), "{a:?}: {e}");
        }
        let e = ForwardConfig::parse(&argv(&["-bulk", "-bulk.size", "0", "h"])).unwrap_err();
        assert!(e.to_string().contains("-bulk.size"), "{e}");
        let e = ForwardConfig::parse(&argv(&["udp://h"])).unwrap_err();
        assert!(e.to_string().contains("tcp:// and tls://"), "{e}");
        let e = TestsvcConfig::parse(&argv(&["-rate", "0"])).unwrap_err();
        assert!(e.to_string().contains("-rate"), "{e}");
    }
}
