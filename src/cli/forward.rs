//! `oklog forward`: read stdin and send its lines, verbatim, to an ingester.
//!
//! Fixes over the original (DESIGN.md §4): bytes are written verbatim (the original used each
//! record as a printf format); a write that failed is sent again on the next connection; a
//! broken connection is closed; names are resolved again on every reconnect; bare
//! `host:port` works; lines have no length limit. At stdin's EOF the forwarder half-closes and
//! exits 0 only once the ingester's EOF confirms everything arrived (DESIGN.md §10).
//! Resending after a failure may duplicate records (under new ULIDs); nothing is dropped.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::addr::{Addr, parse_addr};
use super::flags::{FlagSet, Kind, flag};
use super::server::{API_PORT, BULK_PORT, FAST_PORT};
use crate::metrics::Metrics;

/// Bytes read from stdin at once (1 MiB).
const READ_BUF: usize = 1 << 20;
/// A line longer than this (16 MiB) is sent in pieces before its end is seen.
const MAX_HELD: usize = 16 << 20;
/// How long to wait for the ingester to confirm the end of input.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect timeout per attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The flags of `oklog forward`.
pub fn flag_set() -> FlagSet {
    FlagSet {
        usage: "oklog forward [flags] <ingester> [<ingester>...]",
        flags: super::logging::flags()
            .into_iter()
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

/// Run the forwarder until stdin's EOF has been confirmed by an ingester.
pub fn run(argv: &[String]) -> anyhow::Result<()> {
    let Some(args) = super::parse_flags(&flag_set(), argv)? else {
        return Ok(());
    };
    super::logging::init(&args.str("log.format"), args.bool("debug"))?;
    if args.positional.is_empty() {
        bail!("specify at least one ingest address as an argument");
    }
    let mut addrs = args
        .positional
        .iter()
        .map(|a| {
            let port = if args.bool("bulk") {
                BULK_PORT
            } else {
                FAST_PORT
            };
            parse_addr(a, port).map_err(|e| anyhow::anyhow!(e))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for a in &addrs {
        if a.base_network() != "tcp" {
            bail!("{a}: only tcp ingest addresses are supported");
        }
    }
    {
        use rand::seq::SliceRandom;
        addrs.shuffle(&mut rand::rng());
    }
    let prefixes = args.list("prefix");
    let prefix = if prefixes.is_empty() {
        Vec::new()
    } else {
        format!("{} ", prefixes.join(" ")).into_bytes()
    };
    let metrics = Metrics::new();
    let api = args.str("api");
    if !api.is_empty() {
        let addr = parse_addr(&api, API_PORT).map_err(|e| anyhow::anyhow!("-api: {e}"))?;
        spawn_api(addr, Arc::clone(&metrics))?;
    }
    if args.bool("bulk") {
        let size = args.int("bulk.size");
        if size <= 0 || size as usize > crate::ingest::bulk::MAX_BATCH {
            bail!(
                "-bulk.size: must be between 1 and {}",
                crate::ingest::bulk::MAX_BATCH
            );
        }
        return super::bulk::forward(
            &mut io::stdin().lock(),
            &prefix,
            addrs,
            size as usize,
            &metrics,
        );
    }
    let mut conn = Conn::new(addrs, Arc::clone(&metrics));
    forward(&mut io::stdin().lock(), &prefix, &mut conn)?;
    conn.confirm()
}

/// Serve `/health` and `/metrics` on a thread of its own.
fn spawn_api(addr: Addr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the API runtime")?;
    let listener = rt.block_on(crate::http::bind("api", &addr.listen_addr()))?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            let (_tx, rx) = tokio::sync::watch::channel(false);
            let router = crate::http::common_routes("forward", metrics, rx.clone());
            let _ = crate::http::serve(listener, router, rx).await;
        })
    });
    Ok(())
}

/// Copy `input` to `conn` as lines, with `prefix` at the start of each line.
fn forward(input: &mut impl Read, prefix: &[u8], conn: &mut Conn) -> anyhow::Result<()> {
    let mut buf = vec![0u8; READ_BUF];
    // Bytes after the last newline, waiting for the rest of their line.
    let mut held: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::with_capacity(READ_BUF * 2);
    let mut at_line_start = true;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading stdin"),
        };
        let data = &buf[..n];
        let Some(last_nl) = memchr::memrchr(b'\n', data) else {
            held.extend_from_slice(data);
            if held.len() >= MAX_HELD {
                emit(&held, prefix, &mut at_line_start, &mut out);
                held.clear();
                conn.send(&out, 0, false)?;
                out.clear();
            }
            continue;
        };
        if !held.is_empty() {
            emit(&held, prefix, &mut at_line_start, &mut out);
            held.clear();
        }
        emit(&data[..=last_nl], prefix, &mut at_line_start, &mut out);
        held.extend_from_slice(&data[last_nl + 1..]);
        let lines = memchr::memchr_iter(b'\n', &out).count() as u64;
        conn.send(&out, lines, true)?;
        out.clear();
    }
    if !held.is_empty() || !at_line_start {
        // A final line without a newline is kept: terminate it.
        emit(&held, prefix, &mut at_line_start, &mut out);
        out.push(b'\n');
        conn.send(&out, 1, true)?;
    }
    Ok(())
}

/// Append `data` to `out`, putting `prefix` at the start of every line.
fn emit(data: &[u8], prefix: &[u8], at_line_start: &mut bool, out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    if prefix.is_empty() {
        out.extend_from_slice(data);
    } else {
        for piece in data.split_inclusive(|&b| b == b'\n') {
            if *at_line_start {
                out.extend_from_slice(prefix);
            }
            out.extend_from_slice(piece);
            *at_line_start = piece.last() == Some(&b'\n');
        }
        return;
    }
    *at_line_start = data.last() == Some(&b'\n');
}

/// A connection to one of the ingesters, re-established (with backoff, rotating through the
/// addresses, resolving names again) whenever it breaks.
///
/// An ingester acknowledges a connection only by closing it after everything it read is written
/// (and, on the durable port, fsynced). So the forwarder keeps every byte sent on the current
/// connection until that acknowledgement: if the connection breaks first, all of it is sent
/// again on the next one (records may then be stored twice, never lost). Every
/// [`REPLAY_MAX`] bytes, at a line boundary, the connection is closed, acknowledged and replaced,
/// which bounds that memory.
struct Conn {
    addrs: Vec<Addr>,
    next: usize,
    stream: Option<TcpStream>,
    backoff: Duration,
    /// Everything written on the current connection and not yet acknowledged.
    replay: Vec<u8>,
    metrics: Arc<Metrics>,
}

/// Unacknowledged bytes kept before a connection is cycled (16 MiB).
const REPLAY_MAX: usize = 16 << 20;

impl Conn {
    fn new(addrs: Vec<Addr>, metrics: Arc<Metrics>) -> Self {
        Conn {
            addrs,
            next: 0,
            stream: None,
            backoff: Duration::ZERO,
            replay: Vec::new(),
            metrics,
        }
    }

    /// Connect (retrying forever, with backoff) if not connected.
    fn connect(&mut self) {
        while self.stream.is_none() {
            let addr = &self.addrs[self.next % self.addrs.len()];
            self.next += 1;
            match dial(addr) {
                Ok(s) => {
                    tracing::debug!(ingester = %addr, "connected");
                    self.stream = Some(s);
                }
                Err(e) => {
                    self.backoff = (self.backoff * 2)
                        .clamp(Duration::from_millis(16), Duration::from_millis(1024));
                    tracing::warn!(ingester = %addr, error = %e, backoff = ?self.backoff, "connecting to ingester failed");
                    std::thread::sleep(self.backoff);
                }
            }
        }
    }

    /// Send `bytes` (holding `records` lines; `line_end` if they end at a line boundary).
    fn send(&mut self, bytes: &[u8], records: u64, line_end: bool) -> anyhow::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.replay.extend_from_slice(bytes);
        self.write_unsent(bytes.len());
        self.metrics.forward_records.inc_by(records);
        self.metrics.forward_bytes.inc_by(bytes.len() as u64);
        if line_end && self.replay.len() >= REPLAY_MAX {
            self.confirm()?;
        }
        Ok(())
    }

    /// Write the last `fresh` bytes of the replay buffer; on a new connection, all of it.
    fn write_unsent(&mut self, fresh: usize) {
        let mut start = self.replay.len() - fresh;
        loop {
            if self.stream.is_none() {
                start = 0;
                self.connect();
            }
            let Conn { stream, replay, .. } = self;
            let Some(stream) = stream.as_mut() else {
                continue;
            };
            match stream.write_all(&replay[start..]) {
                Ok(()) => {
                    self.backoff = Duration::ZERO;
                    return;
                }
                Err(e) => {
                    self.metrics.forward_disconnects.inc();
                    tracing::warn!(error = %e, "write to ingester failed; reconnecting and resending");
                    self.stream = None; // dropping closes it
                }
            }
        }
    }

    /// Half-close and wait for the ingester's EOF, which acknowledges everything sent on this
    /// connection. If the connection breaks instead, send everything again on a new one.
    fn confirm(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if self.replay.is_empty() {
                self.stream = None;
                return Ok(());
            }
            if self.stream.is_none() {
                self.write_unsent(self.replay.len());
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match wait_eof(stream, CONFIRM_TIMEOUT.saturating_sub(started.elapsed())) {
                Ok(()) => {
                    tracing::debug!(bytes = self.replay.len(), "ingester acknowledged");
                    self.replay.clear();
                    self.stream = None;
                    return Ok(());
                }
                Err(e)
                    if e.kind() == io::ErrorKind::TimedOut
                        || e.kind() == io::ErrorKind::WouldBlock =>
                {
                    bail!("the ingester did not acknowledge within {CONFIRM_TIMEOUT:?}");
                }
                Err(e) => {
                    if started.elapsed() >= CONFIRM_TIMEOUT {
                        bail!("the ingester did not acknowledge: {e}");
                    }
                    self.metrics.forward_disconnects.inc();
                    tracing::warn!(error = %e, "acknowledgement failed; sending again");
                    self.stream = None;
                }
            }
        }
    }
}

pub(super) fn dial(addr: &Addr) -> io::Result<TcpStream> {
    let host = if addr.host.is_empty() {
        "127.0.0.1"
    } else {
        addr.host.as_str()
    };
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no addresses", addr.host),
    );
    for sa in (host, addr.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Half-close and read until EOF (the ingester sends nothing else).
fn wait_eof(stream: &mut TcpStream, timeout: Duration) -> io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf)? {
            0 => return Ok(()),
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_go_at_line_starts_only() {
        let mut out = Vec::new();
        let mut at = true;
        emit(b"a\nb", b"p q ", &mut at, &mut out);
        emit(b"c\n\nd\n", b"p q ", &mut at, &mut out);
        assert_eq!(out, b"p q a\np q bc\np q \np q d\n");
        let mut out = Vec::new();
        let mut at = true;
        emit(b"100% %s\n", b"", &mut at, &mut out);
        assert_eq!(out, b"100% %s\n", "verbatim");
    }
}
