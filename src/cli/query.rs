//! `oklog query`: run a time-bounded query against a store node and print the records.
//!
//! Exit codes (DESIGN.md §10): 0 records printed, 1 no match, 2 bad flag or failed request,
//! 3 partial result (206) printed with a warning.

use std::io::{self, Write};
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::{Method, StatusCode};

use super::client::config::{Color, Print, QueryConfig};
use crate::gotime;
use crate::http;
use crate::record::{BODY_OFFSET, ULID_LEN, ulid_ms};

/// Run the query; returns the exit code.
pub fn run(argv: &[String]) -> i32 {
    let cfg = match QueryConfig::parse(argv, gotime::now_ms()) {
        Ok(Some(c)) => c,
        Ok(None) => return 0,
        Err(e) => {
            eprintln!("{}", super::one_line(&e.to_string()));
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("starting the async runtime: {e}");
            return 2;
        }
    };
    match runtime.block_on(query(&cfg)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", super::one_line(&format!("{e:#}")));
            2
        }
    }
}

/// Ask the store node, print what it answers; the exit code.
async fn query(cfg: &QueryConfig) -> anyhow::Result<i32> {
    let url = cfg.url();
    let method = if cfg.stats { Method::HEAD } else { Method::GET };
    if cfg.verbose {
        eprintln!("{method} {url}");
    }
    let began = Instant::now();
    let client = http::bulk_client(&cfg.reader.security.http()?);
    let req = hyper::Request::builder()
        .method(method.clone())
        .uri(&url)
        // The answer's trailers say whether anything went missing after the headers.
        .header(hyper::header::TE, "trailers")
        .body(http::empty_body())?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| anyhow::anyhow!("{method} {url}: {}", http::error_chain(&e)))?;
    let (parts, body) = resp.into_parts();
    let (status, headers) = (parts.status, parts.headers);
    if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
        let text = http::body_text(body).await.unwrap_or_default();
        anyhow::bail!("{method} {url}: {status}: {}", text.trim());
    }
    if cfg.verbose {
        print_stats(&headers, began);
    }
    let partial = status == StatusCode::PARTIAL_CONTENT;
    if cfg.stats {
        return Ok(if partial { 3 } else { 0 });
    }
    let (records, late) = match print_records(cfg, body, began).await {
        Ok(printed) => printed,
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            return Ok(0); // the reader went away (`| head`): a success, as in Unix tools
        }
        Err(e) => return Err(e),
    };
    if let Some((errors, corrupt)) = late.filter(|&(e, c)| e + c > 0) {
        eprintln!(
            "warning: partial result: {errors} store node(s) broke off their answer, \
             {corrupt} corrupt block(s) skipped"
        );
        return Ok(3);
    }
    if partial {
        eprintln!(
            "warning: partial result: {} store node(s) failed to answer",
            headers
                .get("X-Oklog-Error-Count")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("some")
        );
        return Ok(3);
    }
    Ok(if records > 0 { 0 } else { 1 })
}

/// The answer's planning statistics, on stderr (`-v`, `-stats`).
fn print_stats(headers: &hyper::HeaderMap, began: Instant) {
    let h = |k: &str| {
        headers
            .get(k)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_else(|| "?".to_string())
    };
    eprintln!("Response in {}", gotime::format_duration(began.elapsed()));
    eprintln!("Queried from {}", h("X-Oklog-From"));
    eprintln!("Queried to {}", h("X-Oklog-To"));
    let kind = if h("X-Oklog-Regex") == "true" {
        "regular expression"
    } else {
        "normal string"
    };
    eprintln!("Queried {kind} {:?}", h("X-Oklog-Q"));
    eprintln!("{} node(s) queried", h("X-Oklog-Nodes-Queried"));
    eprintln!("{} segment(s) queried", h("X-Oklog-Segments-Queried"));
    let size: u64 = h("X-Oklog-Max-Data-Set-Size").parse().unwrap_or(0);
    eprintln!("{size}B ({}MiB) maximum data set size", size / (1 << 20));
    eprintln!("{} error(s)", h("X-Oklog-Error-Count"));
    if headers.contains_key("X-Oklog-Bytes-Scanned") {
        eprintln!("{} bytes scanned", h("X-Oklog-Bytes-Scanned"));
    }
    if headers.contains_key("X-Oklog-Blocks-Skipped") {
        eprintln!(
            "{} block(s) skipped by their needle filter",
            h("X-Oklog-Blocks-Skipped")
        );
    }
    eprintln!("{} server-reported duration", h("X-Oklog-Duration"));
}

/// Whether matches are coloured: `-color`, with `auto` deciding by stdout and the environment.
fn colour(color: Color) -> bool {
    match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => {
            use std::io::IsTerminal;
            io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::env::var("TERM").is_ok_and(|t| t != "dumb")
        }
    }
}

/// Print the answer's records to stdout as they arrive; the records printed, and what the
/// trailers said went missing (store nodes broken off, corrupt blocks), if there were any.
async fn print_records(
    cfg: &QueryConfig,
    mut body: hyper::body::Incoming,
    began: Instant,
) -> anyhow::Result<(u64, Option<(u64, u64)>)> {
    let q = &cfg.reader.q;
    let highlight = if colour(cfg.color) && cfg.print != Print::Json && !q.is_empty() {
        // The server accepted the query, so it compiles here too.
        let pattern = if cfg.reader.regex {
            q.clone()
        } else {
            regex::escape(q)
        };
        regex::bytes::Regex::new(&pattern).ok()
    } else {
        None
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut printer = Printer {
        escape: {
            use std::io::IsTerminal;
            io::stdout().is_terminal()
        },
        context: cfg.before + cfg.after > 0,
        mode: cfg.print,
        copy: cfg.copy,
        highlight,
        partial_line: Vec::new(),
        records: 0,
    };
    let mut progress = Progress::new(began);
    let mut late: Option<(u64, u64)> = None;
    let result: anyhow::Result<()> = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| anyhow::anyhow!("reading the response: {e}"))?;
            match frame.into_data() {
                Ok(data) => {
                    printer.feed(&data, &mut out)?;
                    progress.update(printer.records, data.len() as u64);
                }
                Err(frame) => {
                    if let Some(t) = frame.trailers_ref() {
                        let n = |k: &str| -> u64 {
                            t.get(k)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0)
                        };
                        late = Some((n("X-Oklog-Late-Errors"), n("X-Oklog-Corrupt-Blocks")));
                    }
                }
            }
        }
        printer.finish(&mut out)?;
        out.flush()?;
        Ok(())
    }
    .await;
    progress.clear();
    result.map(|()| (printer.records, late))
}

/// A progress line on stderr for queries that take a while, when stderr is a terminal: records
/// and bytes received so far, redrawn at most 4 times a second, erased at the end.
struct Progress {
    began: Instant,
    last: Instant,
    bytes: u64,
    shown: bool,
    enabled: bool,
}

impl Progress {
    /// Show nothing for queries faster than this.
    const AFTER: std::time::Duration = std::time::Duration::from_millis(700);
    const EVERY: std::time::Duration = std::time::Duration::from_millis(250);

    fn new(began: Instant) -> Progress {
        use std::io::IsTerminal;
        Progress {
            began,
            last: began,
            bytes: 0,
            shown: false,
            enabled: io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, records: u64, bytes: u64) {
        self.bytes += bytes;
        if !self.enabled || self.began.elapsed() < Self::AFTER || self.last.elapsed() < Self::EVERY
        {
            return;
        }
        self.last = Instant::now();
        self.shown = true;
        let line = progress_line(records, self.bytes, self.began.elapsed());
        eprint!("\r\x1b[K{line}");
    }

    fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }
}

/// `12,345 records, 1.2 MB received, 3.4 s`.
fn progress_line(records: u64, bytes: u64, took: std::time::Duration) -> String {
    let mut n = records.to_string();
    let mut i = n.len();
    while i > 3 {
        i -= 3;
        n.insert(i, ',');
    }
    let size = if bytes >= 1_000_000_000 {
        format!("{:.1} GB", bytes as f64 / 1e9)
    } else if bytes >= 1_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} kB", bytes as f64 / 1e3)
    };
    format!(
        "{n} record{} · {size} received · {:.1} s",
        if records == 1 { "" } else { "s" },
        took.as_secs_f64()
    )
}

/// Start and end of a highlighted match (grep's default colour: bold red).
const MATCH_START: &[u8] = b"\x1b[01;31m";
const MATCH_END: &[u8] = b"\x1b[0m";

struct Printer {
    mode: Print,
    copy: bool,
    /// Matches to colour in each printed record's `<topic> <payload>`.
    highlight: Option<regex::bytes::Regex>,
    partial_line: Vec<u8>,
    records: u64,
    /// Whether the answer has context lines (a kind byte after each ULID, see
    /// [`crate::search::context`]): groups are separated by `--`, and JSON says each
    /// record's kind.
    context: bool,
    /// Show control characters in records as `\xNN` (stdout is a terminal: a record must not
    /// move the cursor, clear the screen or retitle the window); raw when piped.
    escape: bool,
}

/// Write `text` with its control characters (but tab) as `\xNN`, and the marker between a
/// pushed record's parts ([`crate::record::parts::MARK`]) as a space.
fn write_escaped(text: &[u8], out: &mut impl Write) -> io::Result<()> {
    let mut at = 0;
    for (i, &b) in text.iter().enumerate() {
        if b == crate::record::parts::MARK {
            out.write_all(&text[at..i])?;
            out.write_all(b" ")?;
            at = i + 1;
        } else if (b < 0x20 && b != b'\t') || b == 0x7f {
            out.write_all(&text[at..i])?;
            write!(out, "\\x{b:02x}")?;
            at = i + 1;
        }
    }
    out.write_all(&text[at..])
}

impl Printer {
    /// Write a record's text, escaped when [`Printer::escape`].
    fn write_text(&self, text: &[u8], out: &mut impl Write) -> io::Result<()> {
        if self.escape {
            write_escaped(text, out)
        } else {
            out.write_all(text)
        }
    }

    /// Write `text` (no newline) with the matches coloured.
    fn write_highlighted(&self, text: &[u8], out: &mut impl Write) -> io::Result<()> {
        let Some(re) = &self.highlight else {
            return self.write_text(text, out);
        };
        let mut at = 0;
        for m in re.find_iter(text).filter(|m| !m.is_empty()) {
            self.write_text(&text[at..m.start()], out)?;
            out.write_all(MATCH_START)?;
            self.write_text(m.as_bytes(), out)?;
            out.write_all(MATCH_END)?;
            at = m.end();
        }
        self.write_text(&text[at..], out)
    }

    /// Write the record's `<topic> <payload>\n`, highlighted.
    fn write_body(&self, line: &[u8], out: &mut impl Write) -> io::Result<()> {
        let body = line.get(BODY_OFFSET..).unwrap_or(b"\n");
        if self.highlight.is_none() && !self.escape {
            return out.write_all(body);
        }
        self.write_highlighted(body.strip_suffix(b"\n").unwrap_or(body), out)?;
        out.write_all(b"\n")
    }

    /// Whether the answer's bytes are printed exactly as they came (`-ulid`, nothing to
    /// colour, escape or separate).
    fn verbatim(&self) -> bool {
        self.mode == Print::Raw && self.highlight.is_none() && !self.context && !self.escape
    }

    fn feed(&mut self, mut data: &[u8], out: &mut impl Write) -> io::Result<()> {
        if self.verbatim() || !self.copy {
            // Whole lines are printed as they came (or not at all): count them, copy the bytes.
            self.records += memchr::memchr_iter(b'\n', data).count() as u64;
            if self.partial_line.is_empty() && data.last() == Some(&b'\n') {
                self.partial_line.clear();
            } else if let Some(last) = memchr::memrchr(b'\n', data) {
                self.partial_line.clear();
                self.partial_line.extend_from_slice(&data[last + 1..]);
            } else {
                self.partial_line.extend_from_slice(data);
            }
            return if self.copy {
                out.write_all(data)
            } else {
                Ok(())
            };
        }
        while let Some(i) = memchr::memchr(b'\n', data) {
            if self.partial_line.is_empty() {
                self.line(&data[..=i], out)?;
            } else {
                self.partial_line.extend_from_slice(&data[..=i]);
                let line = std::mem::take(&mut self.partial_line);
                self.line(&line, out)?;
            }
            data = &data[i + 1..];
        }
        self.partial_line.extend_from_slice(data);
        Ok(())
    }

    fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if (self.verbatim() || !self.copy) && !self.partial_line.is_empty() {
            // Its bytes went out already; end the line.
            self.partial_line.clear();
            self.records += 1;
            return if self.copy {
                out.write_all(b"\n")
            } else {
                Ok(())
            };
        }
        if !self.partial_line.is_empty() {
            let mut line = std::mem::take(&mut self.partial_line);
            line.push(b'\n');
            self.line(&line, out)?;
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8], out: &mut impl Write) -> io::Result<()> {
        use crate::search::context::{is_match_kind, kind, starts_group};
        self.records += 1;
        if !self.copy {
            return Ok(());
        }
        let kind = if self.context { kind(line) } else { None };
        if kind.is_some_and(starts_group) && self.records > 1 && self.mode != Print::Json {
            out.write_all(b"--\n")?;
        }
        match self.mode {
            Print::Raw if line.len() < BODY_OFFSET => self.write_text(line, out),
            Print::Raw => {
                out.write_all(&line[..BODY_OFFSET])?;
                self.write_body(line, out)
            }
            Print::Body => self.write_body(line, out),
            Print::Json => {
                let body = line.strip_suffix(b"\n").unwrap_or(line);
                let rest = body.get(BODY_OFFSET..).unwrap_or_default();
                let (topic, payload) = match memchr::memchr(b' ', rest) {
                    Some(i) => (&rest[..i], &rest[i + 1..]),
                    None => (rest, &b""[..]),
                };
                let ulid = body.get(..ULID_LEN).unwrap_or_default();
                let mut obj = serde_json::json!({
                    "ulid": String::from_utf8_lossy(ulid),
                    "time": gotime::rfc3339_utc_millis(if ulid.len() == ULID_LEN { ulid_ms(ulid) as i64 } else { 0 }),
                    "topic": String::from_utf8_lossy(topic),
                    "line": String::from_utf8_lossy(payload),
                });
                if let Some(k) = kind {
                    obj["kind"] = if is_match_kind(k) { "match" } else { "context" }.into();
                    obj["group_start"] = starts_group(k).into();
                }
                serde_json::to_writer(&mut *out, &obj).map_err(io::Error::other)?;
                out.write_all(b"\n")
            }
            Print::Time => {
                if line.len() > ULID_LEN {
                    let t = gotime::rfc3339_local_secs(ulid_ms(line) as i64);
                    out.write_all(t.as_bytes())?;
                    out.write_all(b" ")?;
                    self.write_body(line, out)
                } else {
                    self.write_text(line, out)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::client::config::{encode, parse_when};

    #[test]
    fn control_characters_are_escaped_on_a_terminal_and_raw_when_piped() {
        let data = b"01BC3NABW20000000000000000 web a\x1b]0;owned\x07 b\r\x00\tc\n";
        for (escape, mode) in [
            (true, Print::Body),
            (true, Print::Raw),
            (false, Print::Body),
        ] {
            let mut p = Printer {
                escape,
                mode,
                copy: true,
                highlight: None,
                partial_line: Vec::new(),
                records: 0,
                context: false,
            };
            let mut out = Vec::new();
            p.feed(data, &mut out).unwrap();
            p.finish(&mut out).unwrap();
            if escape {
                assert!(
                    String::from_utf8_lossy(&out)
                        .ends_with("web a\\x1b]0;owned\\x07 b\\x0d\\x00\tc\n"),
                    "{mode:?}: {}",
                    String::from_utf8_lossy(&out)
                );
                assert!(!out[..out.len() - 1].iter().any(|&b| b < 0x20 && b != b'\t'));
            } else {
                assert_eq!(out, &data[27..], "piped: the bytes as stored");
            }
        }
    }

    #[test]
    fn when_values() {
        let now = gotime::parse_rfc3339_ms("2017-03-25T21:17:54.946Z").unwrap();
        assert_eq!(
            parse_when("to", "now", now).unwrap(),
            "2017-03-25T21:17:54.946Z"
        );
        assert_eq!(
            parse_when("from", "1h", now).unwrap(),
            "2017-03-25T20:17:54.946Z"
        );
        assert_eq!(
            parse_when("from", "-1h", now).unwrap(),
            "2017-03-25T20:17:54.946Z"
        );
        assert_eq!(
            parse_when("from", "2017-03-25T22:00:00+01:00", now).unwrap(),
            "2017-03-25T21:00:00.000Z"
        );
        assert_eq!(
            parse_when("from", "01BC3NABW20000000000000000", now).unwrap(),
            "01BC3NABW20000000000000000"
        );
        assert_eq!(
            parse_when("from", "yesterday", now).unwrap_err(),
            "couldn't parse -from (\"yesterday\") as either duration or time"
        );
    }

    #[test]
    fn printing() {
        let mut out = Vec::new();
        let mut p = Printer {
            escape: false,
            context: false,
            mode: Print::Body,
            copy: true,
            highlight: None,
            partial_line: Vec::new(),
            records: 0,
        };
        let data = b"01BC3NABW20000000000000000 web a\n01BC3NABW20000000000000001 web b\n";
        for piece in data.chunks(5) {
            p.feed(piece, &mut out).unwrap();
        }
        p.finish(&mut out).unwrap();
        assert_eq!(out, b"web a\nweb b\n");
        assert_eq!(p.records, 2);
        let mut out = Vec::new();
        let mut p = Printer {
            escape: false,
            context: false,
            mode: Print::Json,
            copy: true,
            highlight: None,
            partial_line: Vec::new(),
            records: 0,
        };
        p.feed(b"01BC3NABW20000000000000000 web GET \xff/ 200\n", &mut out)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ulid"], "01BC3NABW20000000000000000");
        assert_eq!(v["time"], "2017-03-25T21:17:54.946Z");
        assert_eq!(v["topic"], "web");
        assert_eq!(v["line"], "GET \u{fffd}/ 200");
        for mode in [Print::Raw, Print::Body] {
            for copy in [true, false] {
                let mut out = Vec::new();
                let mut p = Printer {
                    escape: false,
                    context: false,
                    mode,
                    copy,
                    highlight: None,
                    partial_line: Vec::new(),
                    records: 0,
                };
                for piece in data[..data.len() - 1].chunks(7) {
                    p.feed(piece, &mut out).unwrap();
                }
                p.finish(&mut out).unwrap();
                assert_eq!(p.records, 2, "{mode:?} {copy}");
                let want: &[u8] = match (mode, copy) {
                    (_, false) => b"",
                    (Print::Raw, true) => data,
                    _ => b"web a\nweb b\n",
                };
                assert_eq!(out, want, "{mode:?} {copy}");
            }
        }
        assert_eq!(encode("a b+c/é"), "a%20b%2Bc%2F%C3%A9");
    }

    #[test]
    fn matches_are_coloured_in_the_text_only() {
        let error = regex::bytes::Regex::new("error").unwrap();
        let data = b"01BC3NABW20000000000000000 web an error, another error\n\
                     01BC3NABW20000000000000001 err errors\n";
        for (mode, want) in [
            (
                Print::Body,
                "web an \x1b[01;31merror\x1b[0m, another \x1b[01;31merror\x1b[0m\n\
                 err \x1b[01;31merror\x1b[0ms\n",
            ),
            (
                Print::Raw,
                "01BC3NABW20000000000000000 web an \x1b[01;31merror\x1b[0m, another \x1b[01;31merror\x1b[0m\n\
                 01BC3NABW20000000000000001 err \x1b[01;31merror\x1b[0ms\n",
            ),
        ] {
            let mut out = Vec::new();
            let mut p = Printer {
                escape: false,
                context: false,
                mode,
                copy: true,
                highlight: Some(error.clone()),
                partial_line: Vec::new(),
                records: 0,
            };
            for piece in data.chunks(9) {
                p.feed(piece, &mut out).unwrap();
            }
            p.finish(&mut out).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), want, "{mode:?}");
            assert_eq!(p.records, 2);
        }
        // `^` is the start of the topic, as on the server.
        let mut out = Vec::new();
        let mut p = Printer {
            escape: false,
            context: false,
            mode: Print::Body,
            copy: true,
            highlight: Some(regex::bytes::Regex::new("^err").unwrap()),
            partial_line: Vec::new(),
            records: 0,
        };
        p.feed(data, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "web an error, another error\n\x1b[01;31merr\x1b[0m errors\n"
        );
    }

    #[test]
    fn progress_reads_well() {
        assert_eq!(
            progress_line(
                1_234_567,
                12_300_000,
                std::time::Duration::from_millis(3400)
            ),
            "1,234,567 records · 12.3 MB received · 3.4 s"
        );
        assert_eq!(
            progress_line(1, 500, std::time::Duration::from_millis(700)),
            "1 record · 0.5 kB received · 0.7 s"
        );
    }
}
