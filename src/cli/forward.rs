//! `oklog forward`: read stdin and send its lines, verbatim, to an ingester.
//!
//! Fixes over the original (DESIGN.md §4): bytes are written verbatim (the original used each
//! record as a printf format); a write that failed is sent again on the next connection; a
//! broken connection is closed; names are resolved again on every reconnect; bare
//! `host:port` works; lines have no length limit. At stdin's EOF the forwarder half-closes and
//! exits 0 only once the ingester confirms everything arrived (DESIGN.md §10). Only bytes the
//! ingester did not acknowledge are sent again after a failure ([`Conn`]); records it stored
//! but had not acknowledged yet when it died are then stored twice (under new ULIDs); nothing
//! is dropped.

use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::addr::Addr;
use super::client::config::ForwardConfig;
use super::dial::{Dialer, LinkIo, LinkRead};
use crate::metrics::Metrics;

/// Bytes read from stdin at once (1 MiB).
const READ_BUF: usize = 1 << 20;
/// A line longer than this (16 MiB) is sent in pieces before its end is seen.
const MAX_HELD: usize = 16 << 20;
/// How long to wait for the ingester to confirm the end of input.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Run the forwarder until stdin's EOF has been confirmed by an ingester.
pub fn run(argv: &[String]) -> anyhow::Result<()> {
    let Some(cfg) = ForwardConfig::parse(argv)? else {
        return Ok(());
    };
    cfg.log.init()?;
    let dialer = super::dial::Dialer::new(&cfg.security, cfg.tls)?;
    let mut addrs = cfg.addrs;
    {
        use rand::seq::SliceRandom;
        addrs.shuffle(&mut rand::rng());
    }
    let metrics = Metrics::new();
    if let Some(addr) = cfg.api {
        spawn_api(addr, Arc::clone(&metrics))?;
    }
    if let Some(size) = cfg.bulk {
        return super::bulk::forward(
            &mut io::stdin().lock(),
            &cfg.prefix,
            addrs,
            dialer,
            size,
            &metrics,
        );
    }
    let mut conn = Conn::new(addrs, dialer, Arc::clone(&metrics));
    forward(&mut io::stdin().lock(), &cfg.prefix, &mut conn)?;
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
            let router = crate::http::common_routes("forward", metrics, rx.clone(), None);
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
/// Every byte sent is kept until the ingester acknowledges it (docs/ingest.md). Our ingesters greet a connection with `OKLOG-ACK/1` and then write the
/// offset up to which they stored its input, as it advances; a thread per connection reads
/// those, and the bytes before the offset are let go. When a connection ends, only what was
/// not acknowledged is sent on the next one, so an ingester that stops gracefully (and
/// acknowledges everything it stored before closing) costs no duplicates, and a killed one at
/// most what it stored in its last [`crate::ingest::conn::ACK_EVERY`]. An ingester that does not
/// greet (the Go original) acknowledges a connection only by closing it after stdin's EOF, so
/// then every [`REPLAY_MAX`] bytes, at a line boundary, the connection is closed, confirmed and
/// replaced, which bounds the bytes kept.
struct Conn {
    addrs: Vec<Addr>,
    dialer: Dialer,
    next: usize,
    link: Option<Link>,
    backoff: Duration,
    /// `replay[head..]`: the bytes not yet acknowledged, from connection offset `replay_at` on
    /// (the acknowledged ones before `head` are dropped once they are half the buffer).
    replay: Vec<u8>,
    head: usize,
    replay_at: u64,
    metrics: Arc<Metrics>,
    /// Why an ingester refused an earlier connection (a token, a certificate): the next
    /// attempt ends the forwarder with it.
    refusal: Option<String>,
}

/// Unacknowledged bytes kept before the forwarder waits for acknowledgements (or, with an
/// ingester that sends none, cycles the connection): 16 MiB.
const REPLAY_MAX: usize = 16 << 20;
/// How long the forwarder waits for an acknowledgement to free room before it gives the
/// ingester up and sends the unacknowledged bytes elsewhere.
const ACK_STALL: Duration = Duration::from_secs(30);
/// The longest pause between connection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One live connection and what its ingester acknowledged.
struct Link {
    stream: LinkIo,
    /// Bytes written on this connection.
    sent: u64,
    acks: Arc<AckState>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// What the reader thread learned from the ingester.
#[derive(Default)]
struct AckState {
    inner: std::sync::Mutex<Acked>,
    changed: std::sync::Condvar,
    /// Why the ingester refused the connection, as the forwarder ends with it (its
    /// `OKLOG-ERR <why>` line, or a TLS alert); empty
    /// while it did not.
    refusal: std::sync::Mutex<String>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Acked {
    /// The ingester greeted with `OKLOG-ACK/1`.
    greeted: bool,
    /// Input bytes of this connection the ingester stored.
    offset: u64,
    /// The ingester closed its side (`Some(true)` gracefully, `Some(false)` with a reset).
    closed: Option<bool>,
}

impl AckState {
    fn get(&self) -> Acked {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Acked)) {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_all();
    }

    /// Wait until `done` holds or `timeout` passes; returns the last state.
    fn wait(&self, timeout: Duration, done: impl Fn(&Acked) -> bool) -> Acked {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |a| !done(a))
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

impl Link {
    /// An error when the ingester refused this connection (a bad token, a certificate it does
    /// not accept): retrying would not help.
    fn refused(&self) -> anyhow::Result<()> {
        match self.refusal() {
            Some(why) => bail!("{why}"),
            None => Ok(()),
        }
    }

    /// What the ingester said when it refused this connection, if it did.
    fn refusal(&self) -> Option<String> {
        let why = self.acks.refusal.lock().unwrap_or_else(|p| p.into_inner());
        (!why.is_empty()).then(|| why.clone())
    }
}

/// Read the ingester's greeting and acknowledged offsets until the connection ends.
fn read_acks(stream: LinkRead, tcp: TcpStream, acks: Arc<AckState>) {
    let mut r = io::BufReader::with_capacity(4096, stream);
    let mut line = Vec::new();
    let mut first = true;
    let graceful = loop {
        line.clear();
        match io::BufRead::read_until(&mut r, b'\n', &mut line) {
            Ok(0) => break true,
            Ok(_) if line.last() != Some(&b'\n') => break true, // EOF mid-line
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // A TLS alert (a refused client certificate) is a refusal too.
                if let Some(why) = super::dial::refusal(&e) {
                    *acks.refusal.lock().unwrap_or_else(|p| p.into_inner()) = why;
                }
                break false;
            }
        }
        if let Some(why) = line.strip_prefix(b"OKLOG-ERR ") {
            let why = String::from_utf8_lossy(why).trim().to_string();
            let why = if why.is_empty() {
                "no reason given".into()
            } else {
                why
            };
            *acks.refusal.lock().unwrap_or_else(|p| p.into_inner()) =
                format!("the ingester refused the connection: {why}");
            continue;
        }
        if std::mem::take(&mut first) {
            if line == crate::ingest::conn::ACK_GREETING {
                acks.update(|a| a.greeted = true);
                continue;
            }
            // Not an ingester of ours: nothing it says is an acknowledgement.
            let _ = io::copy(&mut r, &mut io::sink());
            break true;
        }
        let offset = std::str::from_utf8(&line[..line.len() - 1])
            .ok()
            .and_then(|t| t.parse::<u64>().ok());
        match offset {
            Some(o) => acks.update(|a| a.offset = a.offset.max(o)),
            None => {
                tracing::warn!(line = %String::from_utf8_lossy(&line), "unexpected line from the ingester");
            }
        }
    };
    acks.update(|a| a.closed = Some(graceful));
    // The ingester is done with this connection: make a blocked write fail now.
    let _ = tcp.shutdown(Shutdown::Both);
}

impl Conn {
    fn new(addrs: Vec<Addr>, dialer: Dialer, metrics: Arc<Metrics>) -> Self {
        Conn {
            addrs,
            dialer,
            next: 0,
            link: None,
            backoff: Duration::ZERO,
            replay: Vec::new(),
            head: 0,
            replay_at: 0,
            metrics,
            refusal: None,
        }
    }

    /// Wait for the next attempt: exponential, capped, with jitter (so a fleet of forwarders
    /// facing a refusing ingester does not reconnect in step).
    fn pause(&mut self) {
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(16), BACKOFF_MAX);
        let jitter = rand::random_range(0.5..=1.0);
        std::thread::sleep(self.backoff.mul_f64(jitter));
    }

    /// Connect (retrying forever, with backoff) if not connected, and send every
    /// unacknowledged byte on the new connection. A refusal (by an ingester, or of its
    /// certificate) ends it with the reason: retrying cannot fix it.
    fn connect(&mut self) -> anyhow::Result<()> {
        while self.link.is_none() {
            if let Some(why) = &self.refusal {
                bail!("{why}");
            }
            let addr = &self.addrs[self.next % self.addrs.len()];
            self.next += 1;
            // Ask for acknowledgements, out of band (before TLS starts, if it does): an
            // ingester that does not know them (the original) never sees the request.
            let ask = |stream: &TcpStream| {
                socket2::SockRef::from(stream)
                    .send_out_of_band(&[crate::ingest::conn::ACK_REQUEST])
                    .map(|_| ())
            };
            let link = self.dialer.connect(addr, ask).and_then(|(stream, theirs)| {
                let acks = Arc::new(AckState::default());
                let tcp = stream.tcp().try_clone()?;
                let a = Arc::clone(&acks);
                let reader = std::thread::Builder::new()
                    .name("forward-acks".into())
                    .spawn(move || read_acks(theirs, tcp, a))?;
                Ok(Link {
                    stream,
                    sent: 0,
                    acks,
                    reader: Some(reader),
                })
            });
            match link {
                Ok(mut link) => {
                    tracing::debug!(ingester = %addr, resend = self.unacked(), "connected");
                    match link.stream.write_all(&self.replay[self.head..]) {
                        Ok(()) => {
                            link.sent = self.unacked() as u64;
                            self.replay_at = 0;
                            self.link = Some(link);
                        }
                        Err(e) => {
                            self.metrics.forward_disconnects.inc();
                            tracing::warn!(ingester = %addr, error = %e, "resending to ingester failed");
                            close(link);
                            self.pause();
                        }
                    }
                }
                Err(e) => {
                    if let Some(why) = super::dial::refusal(&e) {
                        bail!("{addr}: {why}");
                    }
                    tracing::warn!(ingester = %addr, error = %e, "connecting to ingester failed");
                    self.pause();
                }
            }
        }
        Ok(())
    }

    /// Let go of the bytes acknowledged on the current connection.
    fn trim(&mut self) {
        if let Some(link) = &self.link {
            let acked = link.acks.get().offset;
            self.trim_to(acked);
        }
    }

    /// Let go of the bytes before connection offset `acked`.
    fn trim_to(&mut self, acked: u64) {
        if acked > self.replay_at {
            let n = ((acked - self.replay_at) as usize).min(self.unacked());
            self.head += n;
            self.replay_at += n as u64;
            if self.head * 2 >= self.replay.len() {
                self.replay.drain(..self.head);
                self.head = 0;
            }
            // Progress: the ingester is healthy again.
            self.backoff = Duration::ZERO;
        }
    }

    /// Bytes sent and not yet acknowledged.
    fn unacked(&self) -> usize {
        self.replay.len() - self.head
    }

    /// The connection is over: wait for its reader (so every acknowledgement that arrived is
    /// counted), let go of what it acknowledged, and close it.
    fn end_link(&mut self) {
        let Some(mut link) = self.link.take() else {
            return;
        };
        link.stream.shutdown_write();
        // A reader that does not finish soon (an ingester that stopped answering) is cut off.
        let (acks, sent) = (Arc::clone(&link.acks), link.sent);
        acks.wait(Duration::from_secs(5), |a| a.closed.is_some());
        if let Some(why) = link.refusal() {
            // Remembered: the next connection attempt ends the forwarder with it.
            self.refusal = Some(why);
        }
        close(link);
        let a = acks.get();
        self.trim_to(a.offset);
        if a.offset == 0 && sent > 0 && a.greeted {
            // A connection that stored nothing: do not hammer it.
            self.pause();
        }
    }

    /// Send `bytes` (holding `records` lines; `line_end` if they end at a line boundary).
    fn send(&mut self, bytes: &[u8], records: u64, line_end: bool) -> anyhow::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if let Some(link) = &self.link {
            link.refused()?;
        }
        self.trim();
        if self
            .link
            .as_ref()
            .is_some_and(|l| l.acks.get().closed.is_some())
        {
            // The ingester closed this connection (it is stopping): go elsewhere.
            self.metrics.forward_disconnects.inc();
            tracing::info!("ingester closed the connection; reconnecting");
            self.end_link();
        }
        self.replay.extend_from_slice(bytes);
        self.write_fresh(bytes.len())?;
        self.metrics.forward_records.inc_by(records);
        self.metrics.forward_bytes.inc_by(bytes.len() as u64);
        if line_end && self.unacked() >= REPLAY_MAX {
            self.make_room()?;
        }
        Ok(())
    }

    /// Write the last `fresh` bytes of the replay buffer (on a new connection, all of it).
    fn write_fresh(&mut self, fresh: usize) -> anyhow::Result<()> {
        loop {
            if self.link.is_none() {
                return self.connect(); // sends the whole replay buffer
            }
            let Conn { link, replay, .. } = self;
            let link = link.as_mut().expect("connected");
            match link.stream.write_all(&replay[replay.len() - fresh..]) {
                Ok(()) => {
                    link.sent += fresh as u64;
                    if !link.acks.get().greeted {
                        self.backoff = Duration::ZERO;
                    }
                    return Ok(());
                }
                Err(e) => {
                    self.metrics.forward_disconnects.inc();
                    tracing::warn!(error = %e, "write to ingester failed; reconnecting and resending what it did not acknowledge");
                    self.end_link();
                }
            }
        }
    }

    /// The replay buffer is full: wait for acknowledgements, or with an ingester that sends
    /// none, confirm the connection by closing it.
    fn make_room(&mut self) -> anyhow::Result<()> {
        let greeted = self.link.as_ref().is_some_and(|l| l.acks.get().greeted);
        if !greeted {
            return self.confirm();
        }
        while self.unacked() >= REPLAY_MAX {
            let Some(link) = &self.link else {
                self.connect()?;
                continue;
            };
            let want = self.replay_at + (self.unacked() - REPLAY_MAX / 2) as u64;
            let a = link
                .acks
                .wait(ACK_STALL, |a| a.offset >= want || a.closed.is_some());
            link.refused()?;
            self.trim();
            if a.closed.is_some() || (a.offset < want && self.unacked() >= REPLAY_MAX) {
                self.metrics.forward_disconnects.inc();
                tracing::warn!("ingester stopped acknowledging; sending to the next one");
                self.end_link();
                self.connect()?;
            }
        }
        Ok(())
    }

    /// Half-close and wait until the ingester has acknowledged everything sent: by its final
    /// offset and EOF, or (an ingester that sends no offsets) by its EOF alone. Whatever was
    /// not acknowledged is sent again on a new connection.
    fn confirm(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            self.trim();
            if self.unacked() == 0 {
                if let Some(link) = self.link.take() {
                    close(link);
                }
                return Ok(());
            }
            if self.link.is_none() {
                self.connect()?;
            }
            let Some(link) = &mut self.link else {
                continue;
            };
            link.stream.shutdown_write();
            let left = CONFIRM_TIMEOUT.saturating_sub(started.elapsed());
            let a = link.acks.wait(left, |a| a.closed.is_some());
            link.refused()?;
            match a.closed {
                None => bail!("the ingester did not acknowledge within {CONFIRM_TIMEOUT:?}"),
                Some(true) if !a.greeted => {
                    // The original's ingester: its close after our EOF acknowledges everything.
                    tracing::debug!(bytes = self.unacked(), "ingester acknowledged");
                    self.replay.clear();
                    self.head = 0;
                }
                Some(_) => {}
            }
            self.end_link();
            if self.unacked() > 0 {
                // Not a tight loop against an ingester that takes nothing.
                self.pause();
                if started.elapsed() >= CONFIRM_TIMEOUT {
                    bail!("the ingester did not acknowledge everything within {CONFIRM_TIMEOUT:?}");
                }
                self.metrics.forward_disconnects.inc();
                tracing::warn!(
                    unacknowledged = self.unacked(),
                    "connection ended before everything was acknowledged; sending the rest again"
                );
            }
        }
    }
}

/// Close a connection and wait for its reader thread to end.
fn close(mut link: Link) {
    link.stream.shutdown_both();
    if let Some(r) = link.reader.take() {
        let _ = r.join();
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
